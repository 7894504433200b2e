#!/usr/bin/env python3
"""Benchmark: what submitting 10,000 runs costs the scheduler (stdlib only, no Slurm needed).

    python3 bench/bench_scale.py            # ~1-2 min
    python3 bench/bench_scale.py --runs 2000

Method. ``hpsearch.ClusterBackend(hpsearch.Slurm(args), ...)`` is driven directly, as the
search loop drives it (``slot()``, ``start(run)`` for each run, then ``flush()``), with fake
Slurm tools first on PATH (small sh scripts in a temporary bin/, as in bench_cluster.py (a)):
``sbatch`` hands out job ids and remembers each array's size, ``squeue`` reports every job, or
every task of an array, as PENDING, ``scontrol show config`` answers ``MaxArraySize = 1001``
(Slurm's default: task indices 0-1000), ``scancel`` does nothing; each logs its calls (squeue:
how many job ids it was asked about). ``--num_jobs`` is 10,000 so that every run is submitted
at once. After the submission, ``wait()`` is called until 10 poll cycles (poll interval 0.2 s)
have passed; every job stays PENDING. Four modes over the same 10,000 runs:

    one job per run | --array | --runs_per_job=10 | --array --runs_per_job=10

Figures per mode: sbatch calls (and array sizes), the backend's own count of submissions and
jobs, squeue calls per poll cycle and job ids asked per call, the submit time (start + flush of
all runs: job scripts, journal lines, sbatch calls), the median poll cycle (squeue, parsing
its answer, an exit-file check per run) and, apart, the fake squeue's own time for the same
query (median of 3), and the check of every tracked run's exit file (``wait()`` does one on
each call, two per poll cycle; median of 5): what is left is hpsearch's parsing of the answer.

Targets: one job per run: 10,000 sbatch calls; --array: ceil(10,000 / 1,001) = 10 calls, none
larger than MaxArraySize; --runs_per_job=10: 1,000 calls; --array --runs_per_job=10: 1 call for
1,000 tasks; in every mode exactly 1 squeue call per poll cycle, asking about every job (array)
we have queued, and every run tracked. Exit status 1 if a target is missed.

For information, (e) a per-user submit limit: 1,000 runs, one job each, and an sbatch that
refuses (with Slurm's QOS message) while 100 of our jobs are queued; the driver ends the oldest
queued job (writes its exit status, drops it from the fake queue) after each wait(). Reported:
accepted and refused sbatch calls and how often the launcher announced the hold.
"""

import contextlib
import io
import math
import os
import statistics
import sys
import time

from _common import (TRAIN, environment, fake_slurm_bin, lines, load_hpsearch, report,
                     scratch_folder, write)

hpsearch = load_hpsearch()

N_RUNS = 10000
MAX_ARRAY = 1001      # Slurm's default MaxArraySize
CYCLES = 10
POLL = 0.2

# The fake sbatch, squeue and scancel of _common.py (state in the bin folder), and:
FAKE_SCONTROL = r"""#!/bin/sh
D=$(dirname "$0")
printf '%%s\n' "$*" >> "$D/scontrol.calls"
if [ "$1" = show ] && [ "$2" = config ]; then
  echo "MaxArraySize            = %d"
  echo "MaxJobCount             = 100000"
  exit 0
fi
exit 1
"""
# (e): refuses while LIMIT ids are listed in "queued"; the driver empties it as jobs "end".
LIMITED_SBATCH = r"""#!/bin/sh
D=$(dirname "$0")
if [ "$(grep -c . "$D/queued" 2>/dev/null)" -ge %d ]; then
  echo "sbatch: error: Batch job submission failed: Job violates accounting/QOS policy (job submit limit, user's size and/or time limits)" >&2
  echo refused >> "$D/sbatch.calls"
  exit 1
fi
n=$(cat "$D/next_id" 2>/dev/null || echo 1000)
echo $((n + 1)) > "$D/next_id"
echo "$n" >> "$D/queued"
echo accepted >> "$D/sbatch.calls"
echo "$n"
"""
LIMITED_SQUEUE = r"""#!/bin/sh
sed 's/$/|PENDING|Priority/' "$(dirname "$0")/queued"
"""

MODES = [("one job per run", False, 1), ("--array", True, 1),
         ("--runs_per_job=10", False, 10), ("--array --runs_per_job=10", True, 10)]


@contextlib.contextmanager
def on_path(folder):
    """``folder`` first on PATH (the backend's scheduler calls inherit it)."""
    old = os.environ["PATH"]
    os.environ["PATH"] = folder + os.pathsep + old
    try:
        yield
    finally:
        os.environ["PATH"] = old


def backend_for(work, label, use_array, per_job, num_jobs, poll):
    args = hpsearch.build_parser().parse_args([
        "--grid_module=none", "--run_cluster", "--scheduler=slurm", "--slurm_gres=",
        "--num_jobs=%d" % num_jobs, "--poll_interval=%g" % poll])
    folder = hpsearch.SearchFolder(os.path.join(work, "search_" + label))
    os.makedirs(folder.path)
    folder.prepare()
    backend = hpsearch.ClusterBackend(hpsearch.Slurm(args), folder, work, num_jobs, poll,
                                      use_array=use_array, runs_per_job=per_job)
    return backend, folder


def make_runs(folder, n):
    runs = []
    for i in range(n):
        name = "sim_scale_%05d" % (i + 1)
        out_dir = os.path.join(folder.path, name)
        runs.append(hpsearch.Run(i, name, {"seed": i},
                                 [sys.executable, TRAIN, "--out_dir=" + out_dir], out_dir))
    return runs


def measure(work, label, use_array, per_job, n):
    """Submit ``n`` runs in one mode, then watch ``CYCLES`` poll cycles; the figures."""
    bin_dir = fake_slurm_bin(work, "bin_" + label, scontrol=FAKE_SCONTROL % MAX_ARRAY)
    with on_path(bin_dir):
        backend, folder = backend_for(work, label, use_array, per_job, n, POLL)
        runs = make_runs(folder, n)
        t0 = time.perf_counter()
        for run in runs:
            if backend.slot() is None:
                raise SystemExit("bench_scale: (%s) no slot for run %d" % (label, run.index))
            backend.start(run, {})
        backend.flush()
        submit_s = time.perf_counter() - t0
        tracked = len(backend.active)
        cycle_times = []
        t0 = time.perf_counter()
        while backend.queries < CYCLES:
            before, c0 = backend.queries, time.perf_counter()
            ended = backend.wait(1.0)
            if ended:
                raise SystemExit("bench_scale: (%s) a PENDING job was taken for ended: %s"
                                 % (label, ended[0].reason))
            if backend.queries > before:
                cycle_times.append(time.perf_counter() - c0)
        loop_s = time.perf_counter() - t0
        asked = [int(x) for x in lines(os.path.join(bin_dir, "squeue.calls"))]
        # the fake squeue's own share of a cycle: the same query alone, 3 times
        argv = backend.scheduler.query_argv(sorted({r.job_id for r in backend.active.values()}))
        tool_times = []
        for _ in range(3):
            c0 = time.perf_counter()
            hpsearch.run_scheduler(argv)
            tool_times.append(time.perf_counter() - c0)
        # and the exit-file check of every tracked run (once per wait(), twice per cycle)
        check_times = []
        for _ in range(5):
            c0 = time.perf_counter()
            backend._collect_exit_files()
            check_times.append(time.perf_counter() - c0)
    calls = lines(os.path.join(bin_dir, "sbatch.calls"))
    sizes = []
    for call in calls:
        flag = [a for a in call.split() if a.startswith("--array=0-")]
        if flag:
            sizes.append(int(flag[0][len("--array=0-"):].split("%")[0]) + 1)
    jobs_queued = len({run.job_id.split("_")[0] for run in backend.active.values()})
    return {"sbatch": len(calls), "sizes": sizes, "submissions": backend.submissions,
            "jobs": backend.jobs_submitted, "tracked": tracked, "queued_ids": jobs_queued,
            "cycles": backend.queries, "squeue": len(asked), "asked": asked,
            "submit_s": submit_s, "loop_s": loop_s,
            "scontrol": lines(os.path.join(bin_dir, "scontrol.calls")),
            "tool_ms": statistics.median(tool_times) * 1000,
            "check_ms": statistics.median(check_times) * 1000,
            "cycle_ms": statistics.median(cycle_times) * 1000 if cycle_times else float("nan")}


def measure_limit(work, n=1000, limit=100):
    """(e) A per-user submit limit: refused and accepted sbatch calls, hold announcements."""
    bin_dir = fake_slurm_bin(work, "bin_limit", sbatch=LIMITED_SBATCH % limit,
                             squeue=LIMITED_SQUEUE, scontrol=FAKE_SCONTROL % MAX_ARRAY)
    queued = write(os.path.join(bin_dir, "queued"), "")
    warnings = io.StringIO()
    with on_path(bin_dir), contextlib.redirect_stderr(warnings):
        backend, folder = backend_for(work, "limit", False, 1, n, 1.0)
        pending, done = make_runs(folder, n), 0
        t0 = time.perf_counter()
        while done < n and time.perf_counter() - t0 < 600:
            while pending and backend.slot() is not None:
                backend.start(pending.pop(0), {})
            backend.flush()
            ids = lines(queued)
            if ids:   # the oldest queued job ends
                for run in list(backend.active.values()):
                    if run.job_id == ids[0]:
                        write(backend.folder.job_file(run, ".exit"), "0\n")
                write(queued, "".join(i + "\n" for i in ids[1:]))
            done += len(backend.wait(0.01))
        took = time.perf_counter() - t0
    calls = lines(os.path.join(bin_dir, "sbatch.calls"))
    return {"n": n, "limit": limit, "ended": done, "took": took,
            "accepted": calls.count("accepted"), "refused": calls.count("refused"),
            "announced": warnings.getvalue().count("the scheduler takes no more jobs"),
            "submissions": backend.submissions}


def main(argv):
    n = N_RUNS
    if "--runs" in argv:
        n = int(argv[argv.index("--runs") + 1])
    print("bench_scale: " + environment("%d runs, fake sbatch/squeue/scontrol (MaxArraySize "
                                        "= %d), poll interval %g s" % (n, MAX_ARRAY, POLL)))
    checks = []
    expected = {"one job per run": n, "--array": int(math.ceil(n / float(MAX_ARRAY))),
                "--runs_per_job=10": int(math.ceil(n / 10.0)),
                "--array --runs_per_job=10": int(math.ceil(n / 10.0 / MAX_ARRAY))}
    with scratch_folder("hpsearch_bench_scale_") as work:
        print("\n%-27s %7s %6s %10s %8s %7s %9s %9s %9s %9s" % (
            "mode", "sbatch", "jobs", "squeue/cyc", "ids/call", "tracked", "submit s",
            "cycle ms", "squeue ms", "exits ms"))
        for i, (label, use_array, per_job) in enumerate(MODES):
            r = measure(work, "m%d" % i, use_array, per_job, n)
            per_cycle = r["squeue"] / float(r["cycles"])
            ids = sorted(set(r["asked"]))
            print("%-27s %7d %6d %10.2f %8s %7d %9.2f %9.1f %9.1f %9.1f" % (
                label, r["sbatch"], r["jobs"], per_cycle, ",".join(map(str, ids)),
                r["tracked"], r["submit_s"], r["cycle_ms"], r["tool_ms"], r["check_ms"]))
            if r["sizes"]:
                print("%27s array sizes: %s, each throttled to --num_jobs (%%%d)"
                      % ("", summarize(r["sizes"]), n))
            want = expected[label]
            size_ok = all(s <= MAX_ARRAY for s in r["sizes"]) and \
                (not use_array or sum(r["sizes"]) == int(math.ceil(n / float(per_job))))
            checks.append(("%s: %d sbatch call(s) for %d runs" % (label, want, n),
                           r["sbatch"] == want == r["submissions"] == r["jobs"] and size_ok,
                           "%d call(s)%s" % (r["sbatch"], ", arrays of %s" % summarize(
                               r["sizes"]) if r["sizes"] else "")))
            checks.append(("%s: 1 squeue call per poll cycle, about all %d queued job id(s)"
                           % (label, r["queued_ids"]),
                           r["squeue"] == r["cycles"] and ids == [r["queued_ids"]]
                           and r["tracked"] == n,
                           "%.2f calls/cycle, %s ids/call, %d runs tracked"
                           % (per_cycle, ids, r["tracked"])))
            if use_array:
                checks.append(("%s: MaxArraySize read once (scontrol show config)" % label,
                               r["scontrol"] == ["show config"], "%s" % r["scontrol"]))
        e = measure_limit(work)
        print("\n(e) per-user submit limit of %d jobs, %d runs one job each (information): "
              "%d ended in %.1f s; sbatch calls: %d accepted, %d refused; hold announced %d "
              "time(s)" % (e["limit"], e["n"], e["ended"], e["took"], e["accepted"],
                           e["refused"], e["announced"]))
        print("")
    return report(checks)


def summarize(sizes):
    """``[1001, 1001, 991]`` -> ``2 x 1001 + 991``."""
    parts, i = [], 0
    while i < len(sizes):
        j = i
        while j < len(sizes) and sizes[j] == sizes[i]:
            j += 1
        parts.append("%d x %d" % (j - i, sizes[i]) if j - i > 1 else "%d" % sizes[i])
        i = j
    return " + ".join(parts)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
