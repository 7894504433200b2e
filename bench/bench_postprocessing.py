#!/usr/bin/env python3
"""Benchmark: hpsearch_postprocessing.py on large search folders (stdlib only).

    python3 bench/bench_postprocessing.py [--keep]

Synthesizes two hpsearch search folders, of 10,000 and 20,000 runs, as a finished search
leaves them: the config copy, ``search_record.json``, ``run_journal.jsonl`` (a 'running' and
an end line per run) and one run folder per run with its ``performance_overview.txt`` (3
keywords). 2 % of the runs failed (exit 1), 1 % stopped without 'finished 1', 1 % left no
summary; 5 arguments, one of them ``random_seed`` (so the seeds table is built too).

Each measurement is ``python3 hpsearch_postprocessing.py SEARCH_DIR`` in a fresh interpreter,
timed from outside (start to exit, interpreter start-up included), stdout to /dev/null: it
reads the record, the journal and every summary, writes ``postprocessing_results.csv`` and
``postprocessing_seeds.csv`` and prints the report. The same with ``--html``, side by side:
it also writes ``report.html`` (seeds averaged: 800 settings of 25 seeds; importance, a plot
per varying hyperparameter with a point per run, the settings table and the first 1,000
runs). Wall time is measured by the parent, CPU time (user + system) with
``getrusage(RUSAGE_CHILDREN)``. Each size and mode 5 times, alternating; medians. The folders
are written just before, so the summaries are in the page cache (a warm read).

Targets: 20,000 runs in < 3 s wall, without and with ``--html``; CPU time(20,000) / CPU
time(10,000) <= 2.3 (cost linear in the runs; CPU time, because wall time on a shared machine
also measures the other work there; the wall ratio is printed too). Exit status 1 if a target
is missed.
The folders are made under a temporary folder and removed afterwards (``--keep`` keeps them).
"""

import json
import os
import resource
import statistics
import subprocess
import sys
import time

from _common import ROOT, environment, report, scratch_folder

POST = os.path.join(ROOT, "hpsearch_postprocessing.py")
SIZES = (10000, 20000)
REPEATS = 5
TARGET_S = 3.0
TARGET_RATIO = 2.3

CONFIG = """
grid = {'lr': [0.1], 'batch_size': [16], 'optimizer': ['sgd'], 'dropout': [0.0],
        'random_seed': [1]}
conditions = []
_SCRIPT_NAME = 'train.py'
_SUMMARY_FILENAME = 'performance_overview.txt'
_SUMMARY_KEYWORDS = ['acc', 'loss', 'finished']
_OUT_ARG = 'out_dir'
_SUMMARY_PARSER_HANDLE = None
_PERFORMANCE_KEY = 'acc'
_PERFORMANCE_SORT_ASC = False
"""

OPTIMIZERS = ("sgd", "adam", "adamw", "rmsprop")


def synthesize(base, n):
    """Write a search folder of ``n`` runs under ``base``; its path."""
    path = os.path.join(base, "search_%d" % n)
    os.makedirs(path)
    with open(os.path.join(path, "bench_config.py"), "w") as f:
        f.write(CONFIG)
    runs, journal = [], []
    width = len(str(n))
    for k in range(n):
        name = "sim_20240101000000_%0*d" % (width, k + 1)
        out_dir = os.path.join(path, name)
        args = {"lr": [0.1, 0.05, 0.01, 0.005, 0.001][k % 5],
                "batch_size": [16, 32, 64, 128][(k // 5) % 4],
                "optimizer": OPTIMIZERS[(k // 20) % 4],
                "dropout": round(0.05 * ((k // 80) % 10), 2),
                "random_seed": k // 800 + 1}
        argv = [sys.executable, "train.py", "--out_dir=%s" % out_dir]
        argv += ["--%s=%s" % (key, v) for key, v in args.items()]
        runs.append({"index": k, "name": name, "out_dir": out_dir, "args": args, "argv": argv})
        fate = k % 100
        state, code = ("failed", 1) if fate < 2 else (
            ("unfinished", 0) if fate < 4 else ("finished", 0))
        journal.append('{"run": "%s", "state": "running", "time": 1.0, "attempt": 1, '
                       '"job_id": %d, "job_start": 1}' % (name, 100000 + k))
        journal.append('{"run": "%s", "state": "%s", "time": 2.0, "attempt": 1, '
                       '"exit_code": %d}' % (name, state, code))
        os.mkdir(out_dir)
        if fate == 3:
            continue  # no summary at all
        acc = ((k * 7919) % 10007) / 10007.0
        with open(os.path.join(out_dir, "performance_overview.txt"), "w") as f:
            f.write("acc %r\nloss %r\nfinished %d\n" % (acc, 1.0 - acc, 0 if fate == 2 else 1))
    record = {"format": "hpsearch-record-1", "config_file": "/elsewhere/bench_config.py",
              "run_cwd": base, "out_arg": "out_dir",
              "summary_filename": "performance_overview.txt",
              "summary_keywords": ["acc", "loss", "finished"], "performance_key": "acc",
              "performance_sort_asc": False,
              "arg_keys": ["lr", "batch_size", "optimizer", "dropout", "random_seed"],
              "runs": runs}
    with open(os.path.join(path, "search_record.json"), "w") as f:
        json.dump(record, f, indent=1)
    with open(os.path.join(path, "run_journal.jsonl"), "w") as f:
        f.write("\n".join(journal) + "\n")
    return path


def measure(path, *flags):
    """``(wall seconds, CPU seconds)`` of one postprocessing run, from outside."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(os.devnull, "w") as sink:
        t0 = time.perf_counter()
        rc = subprocess.call([sys.executable, POST, path] + list(flags), stdout=sink)
        elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if rc != 0:
        raise SystemExit("bench_postprocessing: postprocessing of %s failed (exit %d)"
                         % (path, rc))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def check_output(path, n):
    """The CSV has a row per run (a quick sanity check of what was timed)."""
    with open(os.path.join(path, "postprocessing_results.csv")) as f:
        rows = sum(1 for _ in f) - 1
    if rows != n:
        raise SystemExit("bench_postprocessing: %s has %d rows, expected %d" % (path, rows, n))


def main():
    keep = "--keep" in sys.argv[1:]
    print("bench_postprocessing: " + environment())
    with scratch_folder("bench_postprocessing_", keep) as base:
        paths = {}
        for n in SIZES:
            t0 = time.perf_counter()
            paths[n] = synthesize(base, n)
            print("synthesized %d runs in %.1f s: %s" % (n, time.perf_counter() - t0, paths[n]))
        cases = [(n, flags) for n in SIZES for flags in ((), ("--html",))]
        walls = {case: [] for case in cases}
        cpus = {case: [] for case in cases}
        for i in range(REPEATS):
            for case in (cases if i % 2 == 0 else list(reversed(cases))):
                wall, cpu = measure(paths[case[0]], *case[1])
                walls[case].append(wall)
                cpus[case].append(cpu)
        for n in SIZES:
            check_output(paths[n], n)
        print("")
        print("%-8s %-7s %10s %10s  %-30s" % ("runs", "", "wall s", "CPU s", "all walls s"))
        print("-" * 70)
        for case in cases:
            print("%-8d %-7s %10.3f %10.3f  %-30s" % (
                case[0], " ".join(case[1]), statistics.median(walls[case]),
                statistics.median(cpus[case]), " ".join("%.2f" % t for t in walls[case])))
        html_large = statistics.median(walls[(SIZES[1], ("--html",))])
        wall_small, wall_large = (statistics.median(walls[(n, ())]) for n in SIZES)
        cpu_small, cpu_large = (statistics.median(cpus[(n, ())]) for n in SIZES)
        ratio = cpu_large / cpu_small
        print("")
        print("wall ratio %d/%d: %.2f (for information: wall time also measures the other work "
              "on the machine)" % (SIZES[1], SIZES[0], wall_large / wall_small))
        checks = [
            ("%d runs: median wall < %.1f s" % (SIZES[1], TARGET_S), wall_large < TARGET_S,
             "%.3f s" % wall_large),
            ("%d runs with --html: median wall < %.1f s" % (SIZES[1], TARGET_S),
             html_large < TARGET_S, "%.3f s" % html_large),
            ("CPU time(%d) / CPU time(%d) <= %.1f" % (SIZES[1], SIZES[0], TARGET_RATIO),
             ratio <= TARGET_RATIO, "%.2f" % ratio),
        ]
        return report(checks)


if __name__ == "__main__":
    sys.exit(main())
