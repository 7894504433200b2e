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


# Fake Slurm tools. State in the bin folder: next_id, jobs ("<id> <array size or 0>" lines),
# <tool>.calls (one line per call: number of job ids asked about / the arguments).
FAKE_SBATCH = r"""#!/bin/sh
D=$(dirname "$0")
n=$(cat "$D/next_id" 2>/dev/null || echo 1000)
echo $((n + 1)) > "$D/next_id"
size=0
for a; do
  case $a in --array=0-*) r=${a#--array=0-}; size=$((${r%%%*} + 1));; esac
done
echo "$n $size" >> "$D/jobs"
printf '%s\n' "$*" >> "$D/sbatch.calls"
echo "$n"
"""
FAKE_SQUEUE = r"""#!/bin/sh
D=$(dirname "$0")
ids=
for a; do case $a in --jobs=*) ids=${a#--jobs=};; esac; done
printf '%s\n' "$ids" | tr ',' '\n' | grep -c . >> "$D/squeue.calls"
awk -v ids="$ids" 'BEGIN { n = split(ids, a, ","); for (i = 1; i <= n; i++) want[a[i]] = 1 }
  want[$1] { if ($2 > 0) { for (t = 0; t < $2; t++) print $1 "_" t "|PENDING|JobArrayTaskLimit" }
             else print $1 "|PENDING|Priority" }' "$D/jobs"
"""
FAKE_SCANCEL = r"""#!/bin/sh
printf '%s\n' "$*" >> "$(dirname "$0")/scancel.calls"
"""


def write(path, text, mode=None):
    with open(path, "w") as f:
        f.write(text)
    if mode:
        os.chmod(path, mode)
    return path


def lines(path):
    """The non-empty lines of a file; [] if it is not there."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [l.rstrip("\n") for l in f if l.strip()]


def fake_slurm_bin(work, name, **tools):
    """A folder ``work/name`` with fake sbatch, squeue and scancel (``tools``: others, or
    other texts for these, by name)."""
    folder = os.path.join(work, name)
    os.makedirs(folder)
    texts = {"sbatch": FAKE_SBATCH, "squeue": FAKE_SQUEUE, "scancel": FAKE_SCANCEL}
    texts.update(tools)
    for tool, text in texts.items():
        write(os.path.join(folder, tool), text, 0o755)
    return folder


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
