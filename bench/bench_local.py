#!/usr/bin/env python3
"""Benchmark: local runs of hpsearch against plain shell tools (stdlib only).

    python3 bench/bench_local.py                 # all cases, ~10 min
    python3 bench/bench_local.py --only b        # one case (a, b, c; repeatable)
    python3 bench/bench_local.py --repeats-b 60  # more repetitions where the machine is noisy

Every run is ``bench/sleep_train.py`` (makes its out_dir, sleeps ``--sleep`` s, writes a
``finished 1`` summary). The other side of each comparison runs the SAME commands: the lines of
the search's ``commands.sh`` with the search folder replaced by a fresh folder (the script refuses
an existing out_dir). Both sides are timed as a whole from outside (start of the process to its
exit), side by side in the same run, alternating which goes first (hp, plain, plain, hp, ...).
The figure is the ratio of the two sides' medians, shown with a 90 % bootstrap interval (each
side resampled) that says how far the machine's noise leaves it uncertain.

(a) 200 configs sleeping 0.2 s on 2 fake GPUs (tests/fake_bin/nvidia-smi, state file in
    $FAKE_NVIDIA_SMI_STATE): ``hpsearch.py --visible_gpus=0,1 --max_num_jobs_per_gpu=2
    --sim_startup_time=0 --allowed_memory=1 --allowed_load=1`` vs ``xargs -P 4 -L 1 [setsid]
    PYTHON SCRIPT`` fed the rest of each command line (no shell in between, as hpsearch;
    setsid, when present, puts each run in its own session as hpsearch does, which matters for
    CPU shares under autogroup scheduling on a busy machine).
    Target: hpsearch wall <= 1.10x xargs wall.
(b) 100 configs that exit at once, ``--visible_gpus=-1`` (one after another) vs ``sh FILE``
    running the same commands one after another (each under setsid, as in (a)).
    Target: <= 1.10x. Each side is ~100 Python start-ups, pure CPU work, and this shared VM's
    CPU speed drifts by up to 1.5x within seconds, differently on each CPU: one pair of
    measurements says little, so (b) is repeated 30 times (a: 5; its runs mostly sleep).
    Also shown, no target: the launch work alone, with runs whose command is ``/bin/true``
    (``--python=/usr/bin/env``), against ``sh`` running the same no-op commands.
(c) Peak memory (ru_maxrss) of an hpsearch process with 10,000 configs queued
    (``--visible_gpus=-1 --local_jobs=2``, runs that exit at once), stopped with SIGINT after
    5 s: all 10,000 runs are planned, written and queued before the first starts, so the peak
    is reached by then. Measured twice by a small parent interpreter as
    ``getrusage(RUSAGE_CHILDREN).ru_maxrss`` after it has waited for hpsearch (the runs, much
    smaller, are included in that maximum), and once with ``/usr/bin/time -v`` when present;
    the largest counts. Target: < 100 MB.

Exit status 1 if a target is missed.
"""

import argparse
import glob
import json
import os
import random
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from _common import HPSEARCH, ROOT, TRAIN, environment, report, write_config

FAKE_BIN = os.path.join(ROOT, "tests", "fake_bin")
REPEATS = {"a": 5, "b": 30, "noop": 7}
BOOTSTRAP_DRAWS = 2000
SETSID = shutil.which("setsid")

TARGET_RATIO = 1.10
TARGET_MEMORY_MB = 100.0
STOP_AFTER_S = 5.0
MEMORY_REPEATS = 2  # memory is not noisy like time; plus one /usr/bin/time -v cross-check


def hpsearch_argv(config, work, out_dir, extra):
    return [sys.executable, HPSEARCH, "--grid_module=" + config, "--run_cwd=" + work,
            "--out_dir=" + out_dir, "--force_out_dir"] + extra


def timed(argv, env=None, stdin=None, log=None, ok_codes=(0,)):
    """Wall seconds of a command, from outside; fails loudly on an exit status not in
    ``ok_codes``."""
    with open(log or os.devnull, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.run(argv, env=env, stdin=stdin or subprocess.DEVNULL, stdout=out,
                              stderr=subprocess.STDOUT)
        elapsed = time.perf_counter() - t0
    if proc.returncode not in ok_codes:
        tail = open(log).read()[-2000:] if log else ""
        raise SystemExit("bench_local: %s exited %d\n%s" % (argv[0], proc.returncode, tail))
    return elapsed


def search_commands(search_dir):
    """The command lines of a search's commands.sh, in order (its output folders, given
    there as "$search_dir"/..., spelled out; the lines before, which set search_dir and
    change to the runs' folder, left out: the runs here start in that folder already)."""
    with open(os.path.join(search_dir, "commands.sh")) as f:
        lines = [line.rstrip("\n") for line in f if line.strip() and not line.startswith("#")]
    commands = [line for line in lines if not line.startswith(("search_dir=", "cd "))]
    return [c.replace('"$search_dir"', shlex.quote(search_dir)) for c in commands]


def rewrite(commands, search_dir, new_dir):
    """The same commands with the search folder replaced (so the out_dirs are fresh)."""
    out = [c.replace(search_dir, new_dir) for c in commands]
    assert all(new_dir in c for c in out)
    return out


def count_finished(folder):
    return len(glob.glob(os.path.join(folder, "*", "performance_overview.txt")))


def check_search(search_dir, n, log):
    text = open(log).read()
    if "done: %d finished" % n not in text or count_finished(search_dir) != n:
        raise SystemExit("bench_local: the search in %s did not finish all %d runs:\n%s"
                         % (search_dir, n, text[-2000:]))


def compare(work, label, n, sleep, hp_flags, other_tool, env, repeats, script=TRAIN,
            check=True):
    """Alternate hpsearch and the shell tool over the same commands; their wall times."""
    config = write_config(work, label, n, sleep, script)
    hp_times, other_times = [], []
    commands = None
    for rep in range(repeats):
        order = ("hp", "other") if rep % 2 == 0 else ("other", "hp")
        if commands is None:  # the shell side needs the commands of one search first
            order = ("hp", "other")
        for side in order:
            if side == "hp":
                search_dir = os.path.join(work, "%s_hp_%d" % (label, rep))
                log = search_dir + ".log"
                # no-op runs make no folder: hpsearch says they did not finish (exit 1)
                hp_times.append(timed(hpsearch_argv(config, work, search_dir, hp_flags),
                                      env=env, log=log, ok_codes=(0,) if check else (0, 1)))
                if check:
                    check_search(search_dir, n, log)
                commands = (search_dir, search_commands(search_dir))
            else:
                plain_dir = os.path.join(work, "%s_plain_%d" % (label, rep))
                lines = rewrite(commands[1], commands[0], plain_dir)
                cmd_file = plain_dir + ".cmds"
                with open(cmd_file, "w") as f:
                    f.write("".join(line + "\n" for line in lines))
                other_times.append(other_tool(cmd_file, env))
                if check and count_finished(plain_dir) != n:
                    raise SystemExit("bench_local: %s ran %d of %d commands"
                                     % (label, count_finished(plain_dir), n))
    return hp_times, other_times


def run_xargs(cmd_file, env):
    """``xargs -P 4 -L 1 PYTHON SCRIPT < lines``: each line's arguments after the common prefix
    (interpreter and script), executed without a shell, as hpsearch does."""
    with open(cmd_file) as f:
        lines = [shlex.split(line) for line in f if line.strip()]
    prefix = lines[0][:2]
    assert all(argv[:2] == prefix for argv in lines), "the commands differ in their prefix"
    rest = [" ".join(argv[2:]) for argv in lines]
    # xargs has its own quoting rules: the arguments must not need any (checked here).
    assert not any(re.search(r"[\s\"'\\]", a) for argv in lines for a in argv[2:])
    args_file = cmd_file + ".args"
    with open(args_file, "w") as f:
        f.write("".join(r + "\n" for r in rest))
    # hpsearch starts each run in its own session; with the kernel's autogroup scheduling that
    # also gives each run its own CPU share against other work on the machine (on a busy
    # machine a large advantage). setsid(1) does the same for the plain side's runs: it execs in
    # place (no extra process stays around) and costs ~1-2 ms per command, shown in the output.
    setsid = [SETSID] if SETSID else []
    with open(args_file) as stdin:
        return timed(["xargs", "-P", "4", "-L", "1"] + setsid + prefix, env=env, stdin=stdin)


def run_sh(cmd_file, env):
    """``sh FILE``: the commands one after another, each under setsid when present (see
    run_xargs)."""
    if SETSID:
        with open(cmd_file) as f:
            lines = [line for line in f if line.strip()]
        with open(cmd_file, "w") as f:
            f.write("".join("%s %s" % (shlex.quote(SETSID), line) for line in lines))
    return timed(["sh", cmd_file], env=env)


def setsid_cost_ms(n=200):
    """What setsid adds to the plain side: ms per command (``setsid /bin/true`` vs
    ``/bin/true``, n of each, in one sh loop)."""
    if not SETSID or not os.path.exists("/bin/true"):
        return None
    loop = "i=0; while [ $i -lt %d ]; do %%s/bin/true; i=$((i+1)); done" % n
    plain = timed(["sh", "-c", loop % ""])
    wrapped = timed(["sh", "-c", loop % (shlex.quote(SETSID) + " ")])
    return (wrapped - plain) / n * 1000


WRAPPER = r"""
import os, resource, signal, subprocess, sys, time
proc = subprocess.Popen(sys.argv[2:], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
time.sleep(float(sys.argv[1]))
proc.send_signal(signal.SIGINT)
code = proc.wait()
print(code, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def journal_ended(search_dir):
    ended = 0
    with open(os.path.join(search_dir, "run_journal.jsonl")) as f:
        for line in f:
            if json.loads(line)["state"] != "running":
                ended += 1
    return ended


def measure_memory(work, n, env):
    """Peak RSS (MB) of hpsearch with ``n`` configs queued; also runs ended before the stop."""
    config = write_config(work, "memory", n, 0)
    figures = []
    for rep in range(MEMORY_REPEATS):
        search_dir = os.path.join(work, "memory_hp_%d" % rep)
        argv = hpsearch_argv(config, work, search_dir, ["--visible_gpus=-1", "--local_jobs=2"])
        out = subprocess.run([sys.executable, "-c", WRAPPER, str(STOP_AFTER_S)] + argv,
                             env=env, stdout=subprocess.PIPE, universal_newlines=True).stdout
        code, maxrss_kb = map(int, out.split())
        if code != 130:
            raise SystemExit("bench_local: the 10,000-config search exited %d, not 130 (stopped "
                             "by SIGINT)" % code)
        figures.append((maxrss_kb / 1024.0, journal_ended(search_dir)))
    cross = None
    gnu_time = shutil.which("time") or ("/usr/bin/time" if os.path.exists("/usr/bin/time")
                                        else None)
    if gnu_time:
        search_dir = os.path.join(work, "memory_hp_time")
        argv = [gnu_time, "-v"] + hpsearch_argv(config, work, search_dir,
                                                ["--visible_gpus=-1", "--local_jobs=2"])
        # GNU time ignores SIGINT while it waits: signal the whole group, hpsearch stops.
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                universal_newlines=True, start_new_session=True)
        time.sleep(STOP_AFTER_S)
        os.killpg(proc.pid, signal.SIGINT)
        err = proc.communicate()[1]
        m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", err)
        if m:
            cross = int(m.group(1)) / 1024.0
    return figures, cross


def launch_cost(work, n, env, repeats):
    """hpsearch and ``sh`` over ``n`` runs whose command does nothing (``/usr/bin/env
    /bin/true ARGS``): what each launcher itself costs, without the runs' own start-up."""
    if not os.path.exists("/bin/true") or not os.path.exists("/usr/bin/env"):
        return None
    return compare(work, "noop", n, 0, ["--visible_gpus=-1", "--python=/usr/bin/env"], run_sh,
                   env, repeats, script="/bin/true", check=False)


def ratio_interval(hp, plain, draws=BOOTSTRAP_DRAWS):
    """A 90 % bootstrap interval of median(hp) / median(plain) (each side resampled)."""
    rng = random.Random(1)
    med = statistics.median
    ratios = sorted(med([rng.choice(hp) for _ in hp]) / med([rng.choice(plain) for _ in plain])
                    for _ in range(draws))
    return ratios[int(0.05 * draws)], ratios[int(0.95 * draws) - 1]


def parse_args(argv):
    p = argparse.ArgumentParser(description="Local runs: hpsearch against plain shell tools.")
    p.add_argument("--only", action="append", choices=["a", "b", "c"],
                   help="run only this case (repeatable); default: all")
    p.add_argument("--repeats-a", type=int, default=REPEATS["a"], metavar="N")
    p.add_argument("--repeats-b", type=int, default=REPEATS["b"], metavar="N")
    args = p.parse_args(argv)
    args.only = set(args.only or "abc")
    return args


def fake_gpu_env(work):
    """The environment with tests/fake_bin first on PATH and 2 idle fake GPUs."""
    env = dict(os.environ)
    env["PATH"] = FAKE_BIN + os.pathsep + env.get("PATH", "")
    state = os.path.join(work, "gpus.json")
    with open(state, "w") as f:
        json.dump({"gpus": [{"index": i, "uuid": "GPU-bench-%d" % i, "name": "Fake GPU",
                             "memory_total": 16384, "memory_used": 0, "utilization": 0}
                            for i in range(2)]}, f)
    env["FAKE_NVIDIA_SMI_STATE"] = state
    env.pop("FAKE_NVIDIA_SMI_LOG", None)
    return env


def show_timings(label, hp, plain, plain_name):
    """One table row: medians, their ratio with its interval, every measurement; the ratio."""
    med = statistics.median
    ratio = med(hp) / med(plain)
    low, high = ratio_interval(hp, plain)
    fmt = lambda ts: " ".join("%.2f" % t for t in ts)
    print("%-46s %9.2f %9.2f %7.3f  %.3f-%.3f" % (label, med(hp), med(plain), ratio, low, high))
    print("    hpsearch: %s\n    %s: %s" % (fmt(hp), plain_name, fmt(plain)))
    print("    pairwise (same repetition): %s" % " ".join(
        "%.2f" % (h / x) for h, x in zip(hp, plain)))
    return ratio


def main(argv=None):
    args = parse_args(argv)
    print("bench_local: " + environment())
    print("timings: hpsearch and the shell tool alternating; medians; ratio of the medians with "
          "a 90%% bootstrap interval; (a) %d, (b) %d repetitions\n" % (args.repeats_a,
                                                                        args.repeats_b))
    work = tempfile.mkdtemp(prefix="hpsearch_bench_")
    results = {}
    try:
        env = fake_gpu_env(work)
        if "a" in args.only:
            results["a"] = compare(work, "gpu", 200, 0.2, [
                "--visible_gpus=0,1", "--max_num_jobs_per_gpu=2", "--sim_startup_time=0",
                "--allowed_memory=1", "--allowed_load=1"], run_xargs, env, args.repeats_a)
        if "b" in args.only:
            results["b"] = compare(work, "seq", 100, 0, ["--visible_gpus=-1"], run_sh, env,
                                   args.repeats_b)
            results["noop"] = launch_cost(work, 100, env, REPEATS["noop"])
        if "c" in args.only:
            results["c"] = measure_memory(work, 10000, env)
        setsid_ms = setsid_cost_ms()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    med = statistics.median
    checks = []
    print("%-46s %9s %9s %7s  %s" % ("case", "hpsearch", "plain", "ratio", "90% interval"))
    print("-" * 90)
    if "a" in results:
        a_hp, a_x = results["a"]
        ratio = show_timings("(a) 200 x 0.2 s, 2 GPUs x 2 vs xargs -P 4 (s)", a_hp, a_x, "xargs")
        print("    ideal: 200 x 0.2 s / 4 = 10.0 s; per-run overhead over ideal: hpsearch "
              "%.1f ms, xargs %.1f ms" % ((med(a_hp) - 10.0) / 50 * 1000,
                                          (med(a_x) - 10.0) / 50 * 1000))
        checks.append(("(a) hpsearch <= %.2fx xargs -P 4" % TARGET_RATIO,
                       ratio <= TARGET_RATIO, "%.3fx" % ratio))
    if "b" in results:
        b_hp, b_sh = results["b"]
        ratio = show_timings("(b) 100 x exit at once, sequential vs sh (s)", b_hp, b_sh, "sh")
        print("    per run: hpsearch %.1f ms, sh %.1f ms" % (med(b_hp) * 10, med(b_sh) * 10))
        if results["noop"]:
            n_hp, n_sh = results["noop"]
            print("    launch work alone, 100 runs of /bin/true: hpsearch %.3f s, sh %.3f s: "
                  "hpsearch adds %.3f s (start-up included) = %.1f %% of (b)'s sh median"
                  % (med(n_hp), med(n_sh), med(n_hp) - med(n_sh),
                     100.0 * (med(n_hp) - med(n_sh)) / med(b_sh)))
        checks.append(("(b) hpsearch <= %.2fx sh loop" % TARGET_RATIO, ratio <= TARGET_RATIO,
                       "%.3fx" % ratio))
    if "a" in results or "b" in results:
        print("plain side: each command %s" % (
            "under setsid (its own session, as hpsearch does; setsid adds %.1f ms per command)"
            % setsid_ms if SETSID else "without setsid (not found)"))
    if "c" in results:
        mem, cross = results["c"]
        peak = max([m for m, _ in mem] + ([cross] if cross is not None else []))
        print("\n(c) 10,000 configs queued, --local_jobs=2, SIGINT after %.0f s:" % STOP_AFTER_S)
        for i, (m, ended) in enumerate(mem):
            print("    run %d: peak RSS %.1f MB (runs ended before the stop: %d)"
                  % (i + 1, m, ended))
        if cross is not None:
            print("    /usr/bin/time -v: maximum resident set size %.1f MB" % cross)
        checks.append(("(c) peak RSS with 10,000 queued < %.0f MB" % TARGET_MEMORY_MB,
                       peak < TARGET_MEMORY_MB, "%.1f MB" % peak))
    print("")
    return report(checks)


if __name__ == "__main__":
    sys.exit(main())
