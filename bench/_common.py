"""Helpers shared by the benchmark scripts in bench/ (stdlib only, Python 3.6+).

Paths of the project, the ``hpsearch`` module, a config module for ``bench/sleep_train.py``
runs, the environment line printed first and the PASS/FAIL report printed last.
"""

import contextlib
import os
import platform
import shlex
import shutil
import sys
import tempfile

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


def l2_star_discrepancy(points):
    """L2-star discrepancy of points in [0, 1)^d (Warnock's formula)."""
    n = len(points)
    d = len(points[0])
    single = 0.0
    for p in points:
        prod = 1.0
        for x in p:
            prod *= 1.0 - x * x
        single += prod
    # Pairs: prod_k (1 - max(x_ik, x_jk)) = prod_k min(1 - x_ik, 1 - x_jk); one column at a time.
    cols = [[1.0 - p[k] for p in points] for k in range(d)]
    pairs = 0.0
    for i in range(n):
        prods = None
        for col in cols:
            a = col[i]
            rest = col[i + 1:]
            if prods is None:
                prods = [b if b < a else a for b in rest]
            else:
                prods = [q * (b if b < a else a) for q, b in zip(prods, rest)]
        diag = 1.0
        for col in cols:
            diag *= col[i]
        pairs += diag + 2.0 * sum(prods)
    squared = 3.0 ** -d - 2.0 ** (1 - d) / n * single + pairs / float(n * n)
    return max(squared, 0.0) ** 0.5


@contextlib.contextmanager
def scratch_folder(prefix, keep=False):
    """A temporary folder for one benchmark run, removed afterwards (``keep``: kept, and
    its path printed)."""
    base = tempfile.mkdtemp(prefix=prefix)
    try:
        yield base
    finally:
        if keep:
            print("kept %s" % base)
        else:
            shutil.rmtree(base, ignore_errors=True)
