#!/usr/bin/env python3
"""Benchmark: ``hpsearch.py --resume`` of large finished searches (stdlib only).

    python3 bench/bench_resume.py [--keep]

What a resume does before it can run anything, on search folders of 10,000 and 20,000
finished runs: read the record and the journal (line by line, every entry checked), tell this
folder's entries from a copy's, look for processes a dead launcher left (one scan of /proc),
read every run's summary, write the results table and sort it. That is the price of the
reliability work (portable folders, a journal that survives damage, leftovers found by the
folder's identity), paid once per resume.

Each folder is synthesized as a finished search leaves it: the config copy, the record
(format 2: paths relative to the folder), the journal (a 'running' and a 'finished' line per
run) and a run folder with its summary per run. The 20,000-run folder is also resumed as an
hpsearch 1.0 folder (format 1: absolute paths, full argv per run) and as a copy made with
``cp -a`` elsewhere. Each measurement is ``python3 hpsearch.py --resume DIR --visible_gpus=-1``
in a fresh interpreter, timed from outside (start to exit), stdout to /dev/null; CPU time from
``getrusage(RUSAGE_CHILDREN)``. 5 repetitions, the cases alternated; medians.

Targets: 20,000 runs in < 3 s wall; CPU time(20,000) / CPU time(10,000) <= 2.3 (linear);
the format-2 folder and its copy within 1.15x of the format-1 folder's CPU time (portability
costs nothing worth noting). Exit status 1 if a target is missed.
"""

import csv
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import time

from _common import HPSEARCH, environment, report, scratch_folder

SIZES = (10000, 20000)
REPEATS = 5
TARGET_S = 3.0
TARGET_LINEAR = 2.3
TARGET_FORMAT = 1.15

CONFIG = """
grid = {'lr': [0.1], 'random_seed': [1]}
conditions = []
_SCRIPT_NAME = 'train.py'
_SUMMARY_FILENAME = 'performance_overview.txt'
_SUMMARY_KEYWORDS = ['acc', 'finished']
_OUT_ARG = 'out_dir'
_PERFORMANCE_KEY = 'acc'
"""


def synthesize(base, n, record_format):
    """A finished search of ``n`` runs in record format 1 or 2 under ``base``; its path."""
    path = os.path.join(base, "search_%d_v%d" % (n, record_format))
    os.makedirs(os.path.join(path, "jobs"))
    with open(os.path.join(path, "bench_config.py"), "w") as f:
        f.write(CONFIG)
    with open(os.path.join(base, "train.py"), "w") as f:
        f.write("raise SystemExit('never run: every run has finished')\n")
    prefix = [sys.executable, "train.py"]
    runs, journal = [], []
    width = len(str(n))
    for k in range(n):
        name = "sim_20240101000000_%0*d" % (width, k + 1)
        args = {"lr": [0.1, 0.01, 0.001][k % 3], "random_seed": k // 3}
        arguments = ["--%s=%s" % kv for kv in args.items()]
        if record_format == 1:
            out_dir = os.path.join(path, name)
            runs.append({"index": k, "name": name, "out_dir": out_dir, "args": args,
                         "argv": prefix + ["--out_dir=" + out_dir] + arguments})
            where = ""
        else:
            runs.append({"index": k, "name": name, "out_dir": name, "args": args,
                         "arguments": arguments})
            where = ', "folder": "bench.1"'
        journal.append('{"run": "%s", "state": "running", "time": 1.0, "attempt": 1, '
                       '"job_id": %d, "job_start": 1%s}' % (name, 4000000 + k, where))
        journal.append('{"run": "%s", "state": "finished", "time": 2.0, "attempt": 1, '
                       '"exit_code": 0}' % name)
        os.mkdir(os.path.join(path, name))
        with open(os.path.join(path, name, "performance_overview.txt"), "w") as f:
            f.write("acc %r\nfinished 1\n" % (((k * 7919) % 10007) / 10007.0))
    record = {"format": "hpsearch-record-%d" % record_format,
              "config_file": "/elsewhere/bench_config.py", "run_cwd": base,
              "out_arg": "out_dir", "summary_filename": "performance_overview.txt",
              "summary_keywords": ["acc", "finished"], "performance_key": "acc",
              "performance_sort_asc": False, "arg_keys": ["lr", "random_seed"],
              "scheduler": None, "runs": runs}
    if record_format == 2:
        record.update({"search_id": "bench", "command_prefix": prefix})
    with open(os.path.join(path, "search_record.json"), "w") as f:
        json.dump(record, f, indent=1)
    with open(os.path.join(path, "run_journal.jsonl"), "w") as f:
        f.write("\n".join(journal) + "\n")
    return path


def measure(path):
    """``(wall seconds, CPU seconds)`` of one resume, from outside."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(os.devnull, "w") as sink:
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, HPSEARCH, "--resume", path, "--visible_gpus=-1"],
                             stdout=sink)
        elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc != 0:
        raise SystemExit("bench_resume: --resume %s failed (exit %d)" % (path, rc))
    return elapsed, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def check_table(path, n):
    """The resumed search's table has a finished row per run (what was timed did the work)."""
    with open(os.path.join(path, "search_results.csv"), newline="") as f:
        rows = [r for r in csv.DictReader(f, delimiter=";") if r["hpsearch_state"] == "finished"]
    if len(rows) != n:
        raise SystemExit("bench_resume: %s has %d finished rows, expected %d"
                         % (path, len(rows), n))


def main():
    keep = "--keep" in sys.argv[1:]
    print("bench_resume: " + environment())
    with scratch_folder("bench_resume_", keep) as base:
        cases = {"%d runs, format 2" % n: (n, synthesize(base, n, 2)) for n in SIZES}
        big = SIZES[-1]
        cases["%d runs, format 1" % big] = (big, synthesize(base, big, 1))
        copy = os.path.join(base, "elsewhere", "copy of search_%d_v2" % big)
        shutil.copytree(cases["%d runs, format 2" % big][1], copy, symlinks=True)
        cases["%d runs, format 2, a copy" % big] = (big, copy)
        names = list(cases)
        walls = {name: [] for name in names}
        cpus = {name: [] for name in names}
        for i in range(REPEATS):
            for name in (names if i % 2 == 0 else list(reversed(names))):
                wall, cpu = measure(cases[name][1])
                walls[name].append(wall)
                cpus[name].append(cpu)
        for name in names:
            check_table(cases[name][1], cases[name][0])
        print("")
        print("%-30s %9s %9s  %s" % ("case", "wall s", "CPU s", "all walls s"))
        print("-" * 78)
        wall = {name: statistics.median(walls[name]) for name in names}
        cpu = {name: statistics.median(cpus[name]) for name in names}
        for name in names:
            print("%-30s %9.3f %9.3f  %s" % (name, wall[name], cpu[name],
                                              " ".join("%.2f" % t for t in walls[name])))
        small, large = ("%d runs, format 2" % n for n in SIZES)
        old, moved = "%d runs, format 1" % big, "%d runs, format 2, a copy" % big
        checks = [
            ("%d runs: median wall < %.1f s" % (big, TARGET_S), wall[large] < TARGET_S,
             "%.3f s" % wall[large]),
            ("CPU time(%d) / CPU time(%d) <= %.1f" % (SIZES[1], SIZES[0], TARGET_LINEAR),
             cpu[large] / cpu[small] <= TARGET_LINEAR, "%.2f" % (cpu[large] / cpu[small])),
            ("format 2 / format 1 CPU time <= %.2f" % TARGET_FORMAT,
             cpu[large] / cpu[old] <= TARGET_FORMAT, "%.2f" % (cpu[large] / cpu[old])),
            ("a copy / format 1 CPU time <= %.2f" % TARGET_FORMAT,
             cpu[moved] / cpu[old] <= TARGET_FORMAT, "%.2f" % (cpu[moved] / cpu[old])),
        ]
        return report(checks)


if __name__ == "__main__":
    sys.exit(main())
