#!/usr/bin/env python3
"""Benchmark: hpsearch's cluster backend against Slurm (stdlib only).

    python3 bench/bench_cluster.py            # (a) and (b) anywhere; (c) needs a Slurm
    python3 bench/bench_cluster.py --no-real  # only (a) and (b)

(a) Scheduler queries per poll cycle with 1,000 jobs queued. Nothing reaches a real Slurm: fake
    ``sbatch``/``squeue``/``scancel`` (small sh scripts in a temporary bin/ first on PATH) hand
    out job ids and report every job PENDING, logging each call and how many job ids it asked
    about.
    (a1) ``hpsearch.ClusterBackend`` with ``hpsearch.Slurm`` driven directly: 1,000 runs
         submitted, then ``wait()`` until 20 poll cycles have passed (poll interval 0.2 s).
    (a2) the whole launcher: ``hpsearch.py --run_cluster --scheduler=slurm --num_jobs=1000
         --poll_interval=1`` over 1,000 configs, SIGINT 6 s after the last submission;
         squeue calls vs poll cycles, and scancel calls for the 1,000 jobs.
    Target: exactly 1 squeue call per cycle, asking about all 1,000 jobs; 1 scancel.
(b) sbatch calls for 1,000 configs with ``--array --num_jobs=2`` (same fakes; SIGINT once all
    1,000 runs are journaled as submitted). Target: 1 call, ``--array=0-999%2``.
(c) Wall time of 20 one-second configs (bench/sleep_train.py) on the REAL test Slurm
    (tests/cluster/slurm-up.sh): ``hpsearch.py --run_cluster --scheduler=slurm --num_jobs=2
    --poll_interval=1`` (timed from outside, start to exit) vs the same 20 job scripts (each
    run's hpsearch_command.sh from the search just run, its folder swapped for a fresh one)
    submitted by hand, all at once: 20 ``sbatch`` calls with hpsearch's options (--mem=100M
    --time=1:00:00), then ``squeue`` every 0.1 s until none of them is listed. 3 repetitions
    alternating which goes first (hpsearch first, so its scripts exist); medians. Informative rows: hpsearch
    ``--array --num_jobs=2`` and ``--num_jobs=20`` (everything queued at once, like by hand).
    No target: reported with the ratio. Skipped when sbatch or a responding Slurm is missing.

Exit status 1 if a target of (a) or (b) is missed.
"""

import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from _common import (HPSEARCH, TRAIN, environment, fake_slurm_bin, lines, load_hpsearch,
                     report, write, write_config)

hpsearch = load_hpsearch()

N_QUEUED = 1000
CYCLES = 20
REPEATS = 3

def journal(search_dir):
    entries = []
    for line in lines(os.path.join(search_dir, "run_journal.jsonl")):
        try:
            entries.append(json.loads(line))
        except ValueError:
            pass
    return entries


def slurm_env(bin_dir):
    env = dict(os.environ)
    env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
    return env


# ---------------------------------------------------------------------------------- (a1)

def bench_backend(work):
    """ClusterBackend + Slurm with 1,000 PENDING jobs: squeue calls per poll cycle."""
    bin_dir = fake_slurm_bin(work, "bin_a1")
    old_path = os.environ["PATH"]
    os.environ["PATH"] = bin_dir + os.pathsep + old_path   # run_scheduler inherits it
    try:
        args = hpsearch.build_parser().parse_args([
            "--grid_module=none", "--run_cluster", "--scheduler=slurm", "--slurm_gres=",
            "--num_jobs=%d" % N_QUEUED, "--poll_interval=0.2"])
        folder = hpsearch.SearchFolder(os.path.join(work, "search_a1"))
        os.makedirs(folder.path)
        folder.prepare()
        backend = hpsearch.ClusterBackend(hpsearch.Slurm(args), folder, work, N_QUEUED, 0.2)
        runs = []
        for i in range(N_QUEUED):
            name = "sim_bench_%04d" % (i + 1)
            out_dir = os.path.join(folder.path, name)
            runs.append(hpsearch.Run(i, name, {"seed": i},
                                     [sys.executable, TRAIN, "--out_dir=" + out_dir], out_dir))
        t0 = time.perf_counter()
        for run in runs:
            assert backend.slot() is not None
            backend.start(run, {})
        backend.flush()
        submit_s = time.perf_counter() - t0
        assert len(backend.active) == N_QUEUED, "not all 1,000 runs were submitted"
        squeue_log = os.path.join(bin_dir, "squeue.calls")
        t0 = time.perf_counter()
        cycle_times = []
        while backend.queries < CYCLES:
            before, c0 = backend.queries, time.perf_counter()
            ended = backend.wait(1.0)
            assert not ended, "a PENDING job was taken for ended: %s" % ended[0].reason
            if backend.queries > before:
                cycle_times.append(time.perf_counter() - c0)
        loop_s = time.perf_counter() - t0
        asked = [int(n) for n in lines(squeue_log)]
    finally:
        os.environ["PATH"] = old_path
    return {"cycles": backend.queries, "calls": len(asked), "ids_per_call": asked,
            "submit_s": submit_s, "loop_s": loop_s,
            "cycle_ms": statistics.median(cycle_times) * 1000 if cycle_times else float("nan"),
            "sbatch_calls": len(lines(os.path.join(bin_dir, "sbatch.calls")))}


# ---------------------------------------------------------------------------------- (a2), (b)

def launcher_with_fakes(work, label, extra, stop_after, wait_journal=N_QUEUED):
    """Run hpsearch.py over 1,000 configs with the fake tools; SIGINT ``stop_after`` s after
    all runs are journaled as submitted. Returns figures and the bin folder."""
    bin_dir = fake_slurm_bin(work, "bin_" + label)
    config = write_config(work, label, N_QUEUED, 0)
    search_dir = os.path.join(work, "search_" + label)
    argv = [sys.executable, HPSEARCH, "--grid_module=" + config, "--run_cwd=" + work,
            "--out_dir=" + search_dir, "--force_out_dir", "--run_cluster", "--scheduler=slurm",
            "--slurm_gres=", "--slurm_mem=100M", "--poll_interval=1"] + extra
    log_path = os.path.join(work, label + ".log")
    with open(log_path, "w") as log:
        t0 = time.time()
        proc = subprocess.Popen(argv, env=slurm_env(bin_dir), stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT)
        submitted_at = None
        while time.time() - t0 < 300 and proc.poll() is None:
            if len(journal(search_dir)) >= wait_journal:
                submitted_at = time.time()
                break
            time.sleep(0.1)
        if submitted_at is None:
            proc.kill()
            raise SystemExit("bench_cluster: (%s) the launcher did not submit all runs:\n%s"
                             % (label, open(log_path).read()[-2000:]))
        squeue_log = os.path.join(bin_dir, "squeue.calls")
        calls_at_submit = len(lines(squeue_log))
        time.sleep(stop_after)
        calls_before_stop = len(lines(squeue_log))
        stopped_at = time.time()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=120)
    if code != 130:
        raise SystemExit("bench_cluster: (%s) hpsearch exited %d, not 130:\n%s"
                         % (label, code, open(log_path).read()[-2000:]))
    return {"bin": bin_dir, "watch_s": stopped_at - submitted_at,
            "squeue": [int(n) for n in lines(squeue_log)],
            "squeue_in_window": calls_before_stop - calls_at_submit,
            "sbatch": lines(os.path.join(bin_dir, "sbatch.calls")),
            "scancel": lines(os.path.join(bin_dir, "scancel.calls"))}


# ---------------------------------------------------------------------------------- (c)

def real_slurm_problem():
    for tool in ("sbatch", "squeue", "scontrol"):
        if not shutil.which(tool):
            return "%s not on PATH" % tool
    try:
        out = subprocess.run(["scontrol", "ping"], stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, universal_newlines=True,
                             timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if "is UP" not in out:
        return "slurmctld does not answer (%s)" % out.strip()
    return None


def wait_queue_empty(ids, poll=0.1, timeout=600):
    """Poll squeue until none of ``ids`` is listed (pending, running or completing)."""
    end = time.time() + timeout
    while time.time() < end:
        out = subprocess.run(["squeue", "-h", "-o", "%i", "-j", ",".join(ids)],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             universal_newlines=True).stdout
        if not out.strip():
            return
        time.sleep(poll)
    raise SystemExit("bench_cluster: jobs %s still queued after %d s" % (ids, timeout))


def count_finished(folder):
    return sum(1 for d in os.listdir(folder)
               if os.path.isfile(os.path.join(folder, d, "performance_overview.txt")))


def hp_real(work, tag, config, extra, n):
    search_dir = os.path.join(work, "real_" + tag)
    argv = [sys.executable, HPSEARCH, "--grid_module=" + config, "--run_cwd=" + work,
            "--out_dir=" + search_dir, "--force_out_dir", "--run_cluster", "--scheduler=slurm",
            "--slurm_gres=", "--slurm_mem=100M", "--num_hours=1", "--poll_interval=1"] + extra
    log = search_dir + ".log"
    with open(log, "w") as out:
        t0 = time.perf_counter()
        code = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out,
                              stderr=subprocess.STDOUT).returncode
        took = time.perf_counter() - t0
    text = open(log).read()
    if code != 0 or "done: %d finished" % n not in text:
        raise SystemExit("bench_cluster: hpsearch (%s) did not finish all %d runs:\n%s"
                         % (tag, n, text[-2000:]))
    return took, search_dir


def job_scripts(search_dir):
    """``{run name: text of its hpsearch_command.sh}`` of a finished search."""
    scripts = {}
    for name in sorted(os.listdir(search_dir)):
        path = os.path.join(search_dir, name, "hpsearch_command.sh")
        if os.path.isfile(path):
            with open(path) as f:
                scripts[name] = f.read()
    return scripts


def by_hand(work, tag, search_dir):
    """The search's own job scripts (its folder swapped for a fresh one), one sbatch each with
    the options hpsearch gave them; then squeue every 0.1 s until none is listed."""
    plain = os.path.join(work, "hand_" + tag)
    os.makedirs(os.path.join(plain, "jobs"))
    scripts = []
    for name, text in job_scripts(search_dir).items():
        scripts.append((name, write(os.path.join(plain, "jobs", name + ".sh"),
                                    text.replace(search_dir, plain))))
    ids = []
    t0 = time.perf_counter()
    for name, script in scripts:
        proc = subprocess.run(["sbatch", "--parsable", "--job-name=" + name,
                               "--output=" + os.path.join(plain, "jobs", name + ".log"),
                               "--time=1:00:00", "--mem=100M", script],
                              stdout=subprocess.PIPE, universal_newlines=True)
        if proc.returncode != 0:
            raise SystemExit("bench_cluster: sbatch failed for %s" % script)
        ids.append(proc.stdout.strip().split(";")[0])
    wait_queue_empty(ids)
    took = time.perf_counter() - t0
    if count_finished(plain) != len(scripts):
        raise SystemExit("bench_cluster: by hand ran %d of %d" % (count_finished(plain),
                                                                  len(scripts)))
    return took


def bench_real(work, n=20, sleep=1.0):
    config = write_config(work, "real", n, sleep)
    hp_times, hand_times = [], []
    search_dir = None
    for rep in range(REPEATS):
        order = ("hp", "hand") if rep % 2 == 0 else ("hand", "hp")
        for side in order:
            if side == "hp":
                took, search_dir = hp_real(work, "nj2_%d" % rep, config, ["--num_jobs=2"], n)
                hp_times.append(took)
            else:
                hand_times.append(by_hand(work, "%d" % rep, search_dir))
    array_t = hp_real(work, "array", config, ["--array", "--num_jobs=2"], n)[0]
    all_t = hp_real(work, "nj20", config, ["--num_jobs=%d" % n], n)[0]
    return hp_times, hand_times, array_t, all_t


def slurm_info():
    """What sinfo says about the Slurm on PATH (nodes, CPUs, gres, state), or 'none'."""
    slurm = ""
    if shutil.which("sinfo"):
        slurm = subprocess.run(["sinfo", "-h", "-o", "%D node(s), %c CPUs, gres %G, %T"],
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                               universal_newlines=True).stdout.strip()
    return slurm or "none"


def main(argv):
    print("bench_cluster: " + environment("Slurm: " + slurm_info()))
    work = tempfile.mkdtemp(prefix="hpsearch_bench_cluster_")
    checks = []
    try:
        a1 = bench_backend(work)
        per_cycle = a1["calls"] / float(a1["cycles"])
        print("\n(a1) ClusterBackend + Slurm, %d jobs PENDING (fake squeue), poll 0.2 s:"
              % N_QUEUED)
        print("     %d sbatch calls to submit (%.2f s); %d poll cycles in %.2f s: %d squeue calls"
              " = %.2f per cycle; job ids per call: min %d, max %d; median cycle %.1f ms "
              "(query + parse %d lines + %d exit-file checks)"
              % (a1["sbatch_calls"], a1["submit_s"], a1["cycles"], a1["loop_s"], a1["calls"],
                 per_cycle, min(a1["ids_per_call"]), max(a1["ids_per_call"]), a1["cycle_ms"],
                 N_QUEUED, N_QUEUED))
        checks.append(("(a1) 1 squeue call per poll cycle with %d jobs queued" % N_QUEUED,
                       a1["calls"] == a1["cycles"] and set(a1["ids_per_call"]) == {N_QUEUED},
                       "%.2f calls/cycle, %s ids/call" % (per_cycle,
                                                           sorted(set(a1["ids_per_call"])))))

        a2 = launcher_with_fakes(work, "a2", ["--num_jobs=%d" % N_QUEUED], stop_after=6.0)
        expected = a2["watch_s"] / 1.0
        print("\n(a2) hpsearch.py, %d configs, --num_jobs=%d --poll_interval=1, fake Slurm:"
              % (N_QUEUED, N_QUEUED))
        print("     %d sbatch calls; in the %.1f s between the last submission and SIGINT: %d "
              "squeue calls (%.1f poll intervals); job ids per call: max %d; scancel calls on "
              "SIGINT: %d (%d ids)" % (len(a2["sbatch"]), a2["watch_s"], a2["squeue_in_window"],
                                       expected, max(a2["squeue"] or [0]), len(a2["scancel"]),
                                       len(a2["scancel"][0].split()) if a2["scancel"] else 0))
        checks.append(("(a2) squeue calls ~ 1 per poll interval, each about all %d jobs"
                       % N_QUEUED,
                       expected - 2 <= a2["squeue_in_window"] <= expected + 2
                       and max(a2["squeue"] or [0]) == N_QUEUED,
                       "%d calls in %.1f intervals" % (a2["squeue_in_window"], expected)))
        checks.append(("(a2) one scancel for %d jobs" % N_QUEUED,
                       len(a2["scancel"]) == 1 and len(a2["scancel"][0].split()) == N_QUEUED,
                       "%d call(s)" % len(a2["scancel"])))

        b = launcher_with_fakes(work, "b", ["--array", "--num_jobs=2"], stop_after=2.0)
        array_flags = [a for c in b["sbatch"] for a in c.split() if a.startswith("--array")]
        print("\n(b) hpsearch.py, %d configs, --array --num_jobs=2, fake Slurm: %d sbatch "
              "call(s), %s; squeue calls while watching: %d in %.1f s, %s array id(s) asked per call"
              % (N_QUEUED, len(b["sbatch"]), " ".join(array_flags), b["squeue_in_window"],
                 b["watch_s"], max(b["squeue"] or [0])))
        checks.append(("(b) 1 sbatch call for %d configs with --array" % N_QUEUED,
                       len(b["sbatch"]) == 1 and array_flags == ["--array=0-999%2"],
                       "%d call(s): %s" % (len(b["sbatch"]), " ".join(array_flags))))

        problem = None if "--no-real" not in argv else "--no-real given"
        problem = problem or real_slurm_problem()
        if problem:
            print("\n(c) skipped: %s (start one with: sudo bash tests/cluster/slurm-up.sh)"
                  % problem)
        else:
            hp, hand, array_t, all_t = bench_real(work)
            med = statistics.median
            fmt = lambda ts: " ".join("%.1f" % t for t in ts)
            print("\n(c) real Slurm, 20 configs x 1 s (bench/sleep_train.py), median of %d:"
                  % REPEATS)
            print("     %-50s %7.1f s   (%s)" % ("hpsearch --num_jobs=2", med(hp), fmt(hp)))
            print("     %-50s %7.1f s   (%s)" % ("by hand: 20 sbatch, wait until squeue is empty",
                                                 med(hand), fmt(hand)))
            print("     %-50s %7.2fx" % ("ratio hpsearch / by hand", med(hp) / med(hand)))
            print("     %-50s %7.1f s   (1 run)" % ("hpsearch --array --num_jobs=2", array_t))
            print("     %-50s %7.1f s   (1 run)" % ("hpsearch --num_jobs=20 (all queued)", all_t))
            print("     ideal with 2 CPUs: 20 x 1 s / 2 = 10 s (Slurm starts batch jobs on its "
                  "1 s scheduling tick)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("")
    return report(checks)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
