"""Helpers shared by the benchmark scripts in bench/ (stdlib only, Python 3.6+).

Paths of the project, the ``hpsearch`` module, a config module for ``bench/sleep_train.py``
runs, the environment line printed first and the PASS/FAIL report printed last.
"""

import os
import platform
import shlex
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
HPSEARCH = os.path.join(ROOT, "hpsearch.py")
TRAIN = os.path.join(HERE, "sleep_train.py")

# A config module: ``n`` runs of TRAIN (one per seed), each sleeping ``sleep`` seconds.
CONFIG = """\
grid = {"sleep": [%(sleep)r], "seed": list(range(%(n)d))}
conditions = []
_SCRIPT_NAME = %(script)r
_SUMMARY_FILENAME = "performance_overview.txt"
_SUMMARY_KEYWORDS = ["loss", "finished"]
_OUT_ARG = "out_dir"
_SUMMARY_PARSER_HANDLE = None
_PERFORMANCE_KEY = "loss"
_PERFORMANCE_SORT_ASC = True
"""


def load_hpsearch():
    """The project's ``hpsearch`` module (ROOT put first on sys.path)."""
    if sys.path[:1] != [ROOT]:
        sys.path.insert(0, ROOT)
    import hpsearch
    return hpsearch


def write_config(work, name, n, sleep, script=TRAIN):
    """Write CONFIG for ``n`` runs sleeping ``sleep`` s as ``work/name.py``; its path.
    ``script``: another program in place of TRAIN (it gets the same arguments)."""
    path = os.path.join(work, name + ".py")
    with open(path, "w") as f:
        f.write(CONFIG % {"sleep": sleep, "n": n, "script": shlex.quote(script)})
    return path


def environment(extra=""):
    """One line on the interpreter, the machine, its cores and load (``extra`` appended)."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    load = "load average %.2f %.2f %.2f" % os.getloadavg() if hasattr(os, "getloadavg") else ""
    line = "Python %s (%s) on %s; %s cores (%s usable); %s" % (
        platform.python_version(), sys.executable, platform.platform(), os.cpu_count(), usable,
        load)
    return line + ("; " + extra if extra else "")


def print_load_average():
    """Print the load average at the end (where the platform has one)."""
    if hasattr(os, "getloadavg"):
        print("load average at the end: %.2f %.2f %.2f (other work on the machine skews timings)"
              % os.getloadavg())


def report(checks):
    """Print the load average, then ``PASS|FAIL: name (figure)`` per ``(name, ok, figure)``
    check; the exit status: 1 if any check failed, else 0."""
    print_load_average()
    failed = 0
    for name, ok, figure in checks:
        print("%s: %s (%s)" % ("PASS" if ok else "FAIL", name, figure))
        failed += not ok
    return 1 if failed else 0
