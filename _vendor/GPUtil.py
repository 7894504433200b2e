"""A stand-in for the ``GPUtil`` package, for training scripts of the hypnettorch era.

Written for hpsearch (no code or text taken from GPUtil); standard library only, CPython 3.6+.
It offers the part of GPUtil's API such scripts call, with the same names, arguments and
defaults, and reads the GPUs through hpsearch.py's own nvidia-smi code (``query_gpus``), so
hpsearch and the scripts it starts see the GPUs the same way.

Put the folder holding this file on the module path (``PYTHONPATH=/path/to/hpsearch/_vendor``)
and keep hpsearch.py in the folder above it::

    import GPUtil
    GPUtil.showUtilization()
    ids = GPUtil.getAvailable(order='memory', limit=2, maxLoad=0.5, maxMemory=0.5)
    first = GPUtil.getFirstAvailable()[0]

Numbers nvidia-smi cannot report (``[N/A]``, ``[Not Supported]``) are NaN, as in GPUtil. When
nvidia-smi is missing or fails, ``getGPUs()`` returns an empty list, as GPUtil does.
"""

import math
import random
import time

__version__ = "1.4.0"
HPSEARCH_STAND_IN = True   # tells this module apart from the PyPI package

__all__ = ["GPU", "getGPUs", "getAvailable", "getAvailability", "getFirstAvailable",
           "showUtilization", "safeFloatCast"]


try:  # imported as _vendor.GPUtil, or with _vendor on the module path
    from ._hpsearch_link import load_hpsearch
except ImportError:
    from _hpsearch_link import load_hpsearch

_hpsearch = load_hpsearch('query_gpus', 'GPUtil')

NAN = float("nan")
_sleep = time.sleep   # getFirstAvailable's pause between attempts (tests replace it)


def safeFloatCast(strNumber):
    """``float(strNumber)``, or NaN when it is not a number (``'[N/A]'``)."""
    try:
        return float(strNumber)
    except (TypeError, ValueError):
        return NAN


def _number(value):
    return NAN if value is None else float(value)


def _isnan(value):
    return isinstance(value, float) and math.isnan(value)


class GPU(object):
    """One GPU: ``id`` (nvidia-smi's index), ``uuid``, ``name``, ``load`` and ``memoryUtil``
    (fractions 0-1), ``memoryTotal``/``memoryUsed``/``memoryFree`` (MiB). Unknown numbers are
    NaN. ``driver``, ``serial``, ``display_mode``, ``display_active`` and ``temperature``
    exist for old code but are not read (empty, or NaN)."""

    def __init__(self, ID, uuid, load, memoryTotal, memoryUsed, memoryFree, driver, gpu_name,
                 serial, display_mode, display_active, temp_gpu):
        self.id = ID
        self.uuid = uuid
        self.load = load
        total, used = _number(memoryTotal), _number(memoryUsed)
        if _isnan(total) or _isnan(used) or total <= 0:
            self.memoryUtil = NAN
        else:
            self.memoryUtil = used / total
        self.memoryTotal = memoryTotal
        self.memoryUsed = memoryUsed
        self.memoryFree = memoryFree
        self.driver = driver
        self.name = gpu_name
        self.serial = serial
        self.display_mode = display_mode
        self.display_active = display_active
        self.temperature = temp_gpu

    def __repr__(self):
        return "GPU(id=%r, uuid=%r, name=%r, load=%r, memoryUtil=%r)" % (
            self.id, self.uuid, self.name, self.load, self.memoryUtil)


def _gpu_from_hpsearch(g):
    total, used = _number(g.memory_total), _number(g.memory_used)
    free = NAN if (_isnan(total) or _isnan(used)) else max(total - used, 0.0)
    load = _number(g.utilization)
    if not _isnan(load):
        load = load / 100.0
    return GPU(g.index, g.uuid, load, total, used, free, "", g.name, "", "", "", NAN)


def getGPUs():
    """Every GPU nvidia-smi lists, as ``GPU`` objects; ``[]`` when nvidia-smi is missing or
    fails."""
    try:
        found = _hpsearch.query_gpus()
    except _hpsearch.GpuError:
        return []
    return [_gpu_from_hpsearch(g) for g in found]


def _within(value, limit, includeNan):
    if _isnan(value):
        return bool(includeNan)
    return value < limit


def _available(gpu, maxLoad, maxMemory, memoryFree, includeNan, excludeID, excludeUUID):
    if gpu.id in excludeID or gpu.uuid in excludeUUID:
        return False
    if _isnan(gpu.memoryFree):
        free_ok = bool(includeNan)
    else:
        free_ok = gpu.memoryFree >= memoryFree
    return (free_ok and _within(gpu.load, maxLoad, includeNan)
            and _within(gpu.memoryUtil, maxMemory, includeNan))


def getAvailability(GPUs, maxLoad=0.5, maxMemory=0.5, memoryFree=0, includeNan=False,
                    excludeID=[], excludeUUID=[]):
    """For each GPU in ``GPUs``: 1 if it is available, else 0. Available: load below
    ``maxLoad``, memory use below ``maxMemory``, at least ``memoryFree`` MiB free, and neither
    its id in ``excludeID`` nor its uuid in ``excludeUUID``. A GPU with unknown (NaN) numbers
    counts only with ``includeNan=True``."""
    return [1 if _available(g, maxLoad, maxMemory, memoryFree, includeNan, excludeID,
                            excludeUUID) else 0
            for g in GPUs]


def _nan_last(value):
    return (1, 0.0) if _isnan(value) else (0, value)


def _ordered(gpus, order):
    if order == "first":
        return sorted(gpus, key=lambda g: g.id)
    if order == "last":
        return sorted(gpus, key=lambda g: g.id, reverse=True)
    if order == "random":
        return random.sample(gpus, len(gpus))
    if order == "load":
        return sorted(gpus, key=lambda g: _nan_last(g.load))
    if order == "memory":
        return sorted(gpus, key=lambda g: _nan_last(g.memoryUtil))
    return list(gpus)  # an unknown order keeps nvidia-smi's order, as GPUtil does


def getAvailable(order="first", limit=1, maxLoad=0.5, maxMemory=0.5, memoryFree=0,
                 includeNan=False, excludeID=[], excludeUUID=[]):
    """The ids of up to ``limit`` available GPUs (see ``getAvailability``), ordered by
    ``order``: 'first' (lowest id first), 'last' (highest id first), 'random', 'load' (least
    loaded first) or 'memory' (least memory used first; NaN last)."""
    gpus = getGPUs()
    flags = getAvailability(gpus, maxLoad=maxLoad, maxMemory=maxMemory, memoryFree=memoryFree,
                            includeNan=includeNan, excludeID=excludeID, excludeUUID=excludeUUID)
    chosen = _ordered([g for g, ok in zip(gpus, flags) if ok], order)
    if limit is not None:
        chosen = chosen[:max(int(limit), 0)]
    return [g.id for g in chosen]


def getFirstAvailable(order="first", maxLoad=0.5, maxMemory=0.5, attempts=1, interval=900,
                      verbose=False, includeNan=False, excludeID=[], excludeUUID=[]):
    """``[id]`` of the first available GPU by ``order``. Looks ``attempts`` times,
    ``interval`` seconds apart; RuntimeError when none was found."""
    for attempt in range(1, attempts + 1):
        if verbose:
            print("GPUtil: looking for an available GPU (attempt %d of %d)"
                  % (attempt, attempts))
        found = getAvailable(order=order, limit=1, maxLoad=maxLoad, maxMemory=maxMemory,
                             includeNan=includeNan, excludeID=excludeID, excludeUUID=excludeUUID)
        if found:
            if verbose:
                print("GPUtil: GPU %s is available" % found[0])
            return found
        if attempt < attempts:
            _sleep(interval)
    raise RuntimeError(
        "no GPU available (load < %s, memory use < %s) after %d attempt(s), %s s apart"
        % (maxLoad, maxMemory, attempts, interval))


# ----------------------------------------------------------------------------------------------
# showUtilization
# ----------------------------------------------------------------------------------------------


def _percent(value):
    return "nan" if _isnan(value) else "%.0f%%" % (100.0 * value)


def _mib(value):
    return "nan" if _isnan(value) else "%.0fMB" % value


_SHORT = [("ID", lambda g: str(g.id)), ("GPU", lambda g: _percent(g.load)),
          ("MEM", lambda g: _percent(g.memoryUtil))]
_ALL = [("ID", lambda g: str(g.id)), ("Name", lambda g: str(g.name)),
        ("UUID", lambda g: str(g.uuid)), ("GPU util.", lambda g: _percent(g.load)),
        ("Memory util.", lambda g: _percent(g.memoryUtil)),
        ("Memory total", lambda g: _mib(g.memoryTotal)),
        ("Memory used", lambda g: _mib(g.memoryUsed)),
        ("Memory free", lambda g: _mib(g.memoryFree))]


def _columns_from_attr_list(attrList):
    """``attrList``: a list of groups, each a list of dicts with 'attr' (a GPU attribute),
    optional 'name' (the heading), 'suffix', 'transform' (a function applied to the value) and
    'precision' (digits after the point for numbers)."""
    columns = []
    for group in attrList:
        for spec in (group if isinstance(group, (list, tuple)) else [group]):
            columns.append((spec.get("name", spec["attr"]), _cell_maker(spec)))
    return columns


def _cell_maker(spec):
    def cell(gpu):
        value = getattr(gpu, spec["attr"])
        if spec.get("transform") is not None:
            value = spec["transform"](value)
        if isinstance(value, float) and not math.isnan(value) and "precision" in spec:
            text = "%.*f" % (int(spec["precision"]), value)
        else:
            text = str(value)
        return text + str(spec.get("suffix", ""))
    return cell


def showUtilization(all=False, attrList=None, useOldCode=False):
    """Print a table of the GPUs: id, load and memory use (``all=True``: also name, uuid and
    memory in MiB; ``attrList``: columns of your choice). ``useOldCode`` prints the same
    values without the table rules."""
    gpus = getGPUs()
    if attrList is not None:
        columns = _columns_from_attr_list(attrList)
    else:
        columns = _ALL if all else _SHORT
    rows = [[title for title, _ in columns]]
    rows += [[cell(g) for _, cell in columns] for g in gpus]
    widths = [max(len(r[i]) for r in rows) for i in range(len(columns))]
    if useOldCode:
        for r in rows:
            print("  ".join(text.rjust(w) for text, w in zip(r, widths)))
        return
    lines = ["| " + " | ".join(text.rjust(w) for text, w in zip(r, widths)) + " |"
             for r in rows]
    rule = "-" * len(lines[0])
    print(lines[0])
    print(rule)
    for line in lines[1:]:
        print(line)
