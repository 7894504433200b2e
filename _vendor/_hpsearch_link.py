"""How the stand-ins in ``_vendor/`` find hpsearch.py, whose code they are built on.

Standard library only, CPython 3.6+. Not part of any package's API.
"""

import importlib
import importlib.util
import os
import sys

_HPSEARCH_PY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "hpsearch.py")


def load_hpsearch(needed, stand_in):
    """The hpsearch module that has the attribute ``needed``: the one already imported, else
    hpsearch.py from the folder above ``_vendor``, else whatever ``import hpsearch`` finds.
    ``stand_in`` names the package being stood in for, for the error message."""
    module = sys.modules.get("hpsearch")
    if module is not None and hasattr(module, needed):
        return module
    if os.path.isfile(_HPSEARCH_PY):
        # Registered as 'hpsearch' so a later ``import hpsearch`` gets this same module,
        # unless that name is taken by some other module.
        name = "hpsearch" if module is None else "_hpsearch_for_%s" % stand_in.lower()
        spec = importlib.util.spec_from_file_location(name, _HPSEARCH_PY)
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[name] = loaded
        try:
            spec.loader.exec_module(loaded)
        except BaseException:
            del sys.modules[name]
            raise
        return loaded
    try:  # our own hpsearch.py installed elsewhere on the module path (not a PyPI package)
        loaded = importlib.import_module("hpsearch")
    except ImportError:
        loaded = None
    if loaded is None or not hasattr(loaded, needed):
        raise ImportError(
            "the %s stand-in in %s needs hpsearch.py: keep it in the folder above _vendor "
            "(looked for %s) or importable as 'hpsearch'; or install the real %s package and "
            "take _vendor off the module path"
            % (stand_in, os.path.dirname(_HPSEARCH_PY), _HPSEARCH_PY, stand_in))
    return loaded
