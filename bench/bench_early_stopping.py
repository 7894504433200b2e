#!/usr/bin/env python3
"""Benchmark: early stopping (``--early_stopping=asha``) against the full grid (stdlib only).

    python3 bench/bench_early_stopping.py [--seeds 42,43,44] [--keep]     # ~3.5 min

The training script is a toy with known learning curves: configuration (q, tau) reports
``val_acc = q * (1 - exp(-epoch / tau))`` after each of 27 epochs of 0.3 s (its summary
rewritten atomically: 'epoch k', 'val_acc v', 'finished 0'; 'finished 1' at the end). 27
configurations: q in 0.60, 0.65, ..., 1.00 times tau in 1, 3, 9 (fast, medium and slow
learners; curves of different tau cross, so ASHA may stop a slow learner that would have ended
above a fast one). The best configuration is known: q = 1.0, tau = 1 (val_acc 1.000000 at
epoch 27). The script notes in a ledger the time of each epoch's summary and the time a signal
arrives. Each run first sleeps a random part of an epoch (start-up), so that its epochs are
out of step with the launcher's looks, as real runs are.

(a) Steps used and best value found. The same 27 configurations, the same shuffled order
(``--random_seed``), ``--local_jobs=2``, run twice in one go: the full grid (no early stopping)
and ASHA (``--early_stopping=asha --es_step_key=epoch --es_max_step=27``, eta 3, rungs at epochs
1, 3, 9). Steps used: epochs the scripts ran (ledger lines), also those between a rung report
and the stop. Best: the finished run with the highest val_acc. ASHA is repeated for each seed of
``--seeds`` (ASHA's outcome depends on the order in which runs reach the rungs); the grid's
steps and best do not depend on the order and it is run once.

(b) Latency from a rung report to the run's stop, over all runs ASHA stopped: from the time the
script wrote the summary hpsearch acted on (the first report at or past the rung named in the
reason, found in the run's hpsearch_progress.jsonl) to the time SIGTERM arrived in the script.
Also from the time the script wrote the rung's own epoch (which includes hpsearch reading it
late), and how many epochs past the rung the stopped runs got. Local runs are looked at every
0.25 s, so epochs of 0.3 s are each seen; (c) shows what happens when they are not.

(c) No target, for information: ASHA with epochs of 0.05 s (five per look): a rung's value is
then often that of a later epoch, which favours runs read late (the rule compares whatever
report first reached the rung).

Targets (what a user cares about): ASHA uses <= 40 % of the grid's steps (median over seeds)
and finds the grid's best configuration for every seed; latency median < 0.5 s and max < 1 s
(the issue asks for a look at least once a second); both searches exit 0 with every run
finished or stopped. Exit status 1 if a target is missed.
"""

import collections
import json
import math
import os
import statistics
import subprocess
import sys
import time

from _common import HPSEARCH, environment, report, scratch_folder

QS = [0.60, 0.65, 0.70, 0.75, 0.80, 0.85, 0.90, 0.95, 1.00]
TAUS = [1, 3, 9]
EPOCHS = 27
PAUSE = 0.3
FAST_PAUSE = 0.05
JOBS = 2
TARGET_SHARE = 0.40
TARGET_MEDIAN_S = 0.5
TARGET_MAX_S = 1.0

TOY = r'''
import argparse, math, os, random, signal, time

parser = argparse.ArgumentParser()
parser.add_argument("--out_dir")
parser.add_argument("--epochs", type=int)
for real in ("--q", "--tau", "--pause"):
    parser.add_argument(real, type=float)
opts = parser.parse_args()
out = opts.out_dir
name = os.path.basename(out)
LEDGER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ledger")


def note(kind, line):
    fd = os.open(os.path.join(LEDGER, kind), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def on_signal(signum, frame):
    note("signals", "%s %d %.6f" % (name, signum, time.time()))
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


signal.signal(signal.SIGTERM, on_signal)
q, tau, epochs, pause = opts.q, opts.tau, opts.epochs, opts.pause
os.makedirs(out)
time.sleep(random.random() * pause)   # start-up: epochs out of step with hpsearch's looks


def write(epoch, value, finished):
    tmp = os.path.join(out, ".summary.tmp")
    with open(tmp, "w") as f:
        f.write("epoch %d\nval_acc %.6f\nfinished %d\n" % (epoch, value, finished))
    os.rename(tmp, os.path.join(out, "performance_overview.txt"))


for epoch in range(1, epochs + 1):
    time.sleep(pause)
    value = q * (1 - math.exp(-epoch / tau))
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])   # summary and note together
    write(epoch, value, 0)
    note("epochs", "%s %d %.6f" % (name, epoch, time.time()))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])
write(epochs, value, 1)
'''

CONFIG = """\
grid = {"q": %(qs)r, "tau": %(taus)r, "epochs": [%(epochs)d], "pause": [%(pause)r]}
conditions = []
_SCRIPT_NAME = "toy.py"
_SUMMARY_FILENAME = "performance_overview.txt"
_SUMMARY_KEYWORDS = ["epoch", "val_acc", "finished"]
_OUT_ARG = "out_dir"
_SUMMARY_PARSER_HANDLE = None
_PERFORMANCE_KEY = "val_acc"
_PERFORMANCE_SORT_ASC = False
"""


def curve(q, tau, epoch):
    return q * (1 - math.exp(-epoch / float(tau)))


def top3():
    """The three configurations with the highest val_acc at the last epoch."""
    return sorted(((q, t) for q in QS for t in TAUS), key=lambda c: -curve(c[0], c[1], EPOCHS))[:3]


def lines(path):
    try:
        with open(path) as f:
            return [line.split() for line in f if line.strip()]
    except OSError:
        return []


def run_search(base, tag, seed, pause, asha):
    """One search in its own folder; a dict of what it did."""
    work = os.path.join(base, tag)
    os.makedirs(os.path.join(work, "ledger"))
    with open(os.path.join(work, "toy.py"), "w") as f:
        f.write(TOY)
    with open(os.path.join(work, "hp_config.py"), "w") as f:
        f.write(CONFIG % {"qs": QS, "taus": TAUS, "epochs": EPOCHS, "pause": pause})
    argv = [sys.executable, HPSEARCH, "--grid_module=hp_config.py", "--visible_gpus=-1",
            "--local_jobs=%d" % JOBS, "--random_seed=%d" % seed]
    if asha:
        argv += ["--early_stopping=asha", "--es_step_key=epoch", "--es_max_step=%d" % EPOCHS]
    started = time.time()
    proc = subprocess.run(argv, cwd=work, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, universal_newlines=True)
    wall = time.time() - started
    base_out = os.path.join(work, "out", "hyperparam_search")
    search = os.path.join(base_out, sorted(os.listdir(base_out))[0])
    with open(os.path.join(search, "search_record.json")) as f:
        record = json.load(f)
    config_of = {r["name"]: (r["args"]["q"], r["args"]["tau"]) for r in record["runs"]}
    last = {}
    with open(os.path.join(search, "run_journal.jsonl")) as f:
        for line in f:
            if line.strip():
                entry = json.loads(line)
                last[entry["run"]] = entry
    epoch_time = {}
    for name, epoch, t in lines(os.path.join(work, "ledger", "epochs")):
        epoch_time[(name, int(epoch))] = float(t)
    signal_time = {w[0]: float(w[2]) for w in lines(os.path.join(work, "ledger", "signals"))}
    finished = [n for n, e in last.items() if e["state"] == "finished"]
    best_value, best = max((curve(config_of[n][0], config_of[n][1], EPOCHS), n)
                           for n in finished) if finished else (None, None)
    result = {"tag": tag, "seed": seed, "rc": proc.returncode, "wall": wall,
              "steps": len(epoch_time), "output": proc.stdout,
              "states": collections.Counter(e["state"] for e in last.values()),
              "best": config_of.get(best), "best_value": best_value,
              "all_done": len(last) == len(config_of) and
              all(e["state"] in ("finished", "stopped") for e in last.values()),
              "latency": [], "rung_latency": [], "past_rung": [], "read_late": [],
              "rungs": collections.Counter(), "missed_top": []}
    for name, entry in last.items():
        if entry["state"] != "stopped":
            continue
        rung = int(float(entry["reason"].split(":")[0].split()[-1]))
        result["rungs"][rung] += 1
        with open(os.path.join(search, name, "hpsearch_progress.jsonl")) as f:
            history = [json.loads(line) for line in f if line.strip()]
        acted = min(int(e["step"]) for e in history if e["step"] is not None
                    and e["step"] >= rung)
        result["read_late"].append(acted - rung)
        got = signal_time.get(name)
        if got is not None:
            result["latency"].append(got - epoch_time[(name, acted)])
            result["rung_latency"].append(got - epoch_time[(name, rung)])
        result["past_rung"].append(max(e for n, e in epoch_time if n == name) - rung)
    # configurations that would have ended in the grid's top 3 but were stopped
    result["missed_top"] = [config_of[n] for n, e in last.items()
                            if e["state"] == "stopped" and config_of[n] in top3()]
    return result


def describe(r):
    return ("%s seed %d: exit %d, %.1f s, %d epochs, %s; best %s val_acc %s%s" % (
        r["tag"], r["seed"], r["rc"], r["wall"], r["steps"],
        ", ".join("%d %s" % (v, k) for k, v in sorted(r["states"].items())),
        "q=%s tau=%s" % r["best"] if r["best"] else "none",
        "%.6f" % r["best_value"] if r["best_value"] is not None else "-",
        "; stopped at rungs %s" % dict(sorted(r["rungs"].items())) if r["rungs"] else ""))


def stats(values):
    return (statistics.median(values), max(values)) if values else (float("nan"),) * 2


def main():
    args = sys.argv[1:]
    keep = "--keep" in args
    seeds = [42, 43, 44]
    if "--seeds" in args:
        seeds = [int(s) for s in args[args.index("--seeds") + 1].split(",")]
    print("bench_early_stopping: " + environment("%d configs x %d epochs of %.2f s, "
                                                  "--local_jobs=%d" % (len(QS) * len(TAUS),
                                                                       EPOCHS, PAUSE, JOBS)))
    full_budget = len(QS) * len(TAUS) * EPOCHS
    expected = max(((q, t) for q in QS for t in TAUS), key=lambda c: curve(c[0], c[1], EPOCHS))
    print("full budget %d epochs; best configuration q=%s tau=%s (val_acc %.6f at epoch %d)"
          % (full_budget, expected[0], expected[1], curve(expected[0], expected[1], EPOCHS),
             EPOCHS))
    with scratch_folder("bench_early_stopping_", keep) as base:
        grid = run_search(base, "grid", seeds[0], PAUSE, asha=False)
        print(describe(grid))
        ashas = []
        for seed in seeds:
            ashas.append(run_search(base, "asha_%d" % seed, seed, PAUSE, asha=True))
            print(describe(ashas[-1]))
        fast = run_search(base, "asha_fast", seeds[0], FAST_PAUSE, asha=True)
        print(describe(fast))
        for r in [grid] + ashas + [fast]:
            if r["rc"] != 0 or not r["all_done"]:
                print("---- %s output:\n%s" % (r["tag"], r["output"]))

        shares = [a["steps"] / float(grid["steps"]) for a in ashas]
        latency = [x for a in ashas for x in a["latency"]]
        rung_latency = [x for a in ashas for x in a["rung_latency"]]
        past = [x for a in ashas for x in a["past_rung"]]
        late = [x for a in ashas for x in a["read_late"]]
        lat_med, lat_max = stats(latency)
        rl_med, rl_max = stats(rung_latency)
        print("")
        print("%-44s %12s %12s" % ("", "full grid", "ASHA"))
        print("-" * 70)
        print("%-44s %12d %12s" % ("epochs run (of %d)" % full_budget, grid["steps"],
                                   " ".join("%d" % a["steps"] for a in ashas)))
        print("%-44s %12s %12s" % ("share of the grid's epochs", "100 %",
                                   " ".join("%.0f %%" % (100 * s) for s in shares)))
        print("%-44s %12.1f %12s" % ("wall time, s", grid["wall"],
                                     " ".join("%.1f" % a["wall"] for a in ashas)))
        print("%-44s %12s %12s" % ("best val_acc found", "%.6f" % grid["best_value"],
                                   " ".join("%.6f" % a["best_value"] for a in ashas)))
        print("%-44s %12s %12s" % ("top-3 configurations stopped", "", " ".join(
            str(len(a["missed_top"])) for a in ashas)))
        print("top 3 at epoch %d: %s; stopped by ASHA: %s" % (EPOCHS, ", ".join(
            "q=%s tau=%s (%.6f)" % (c[0], c[1], curve(c[0], c[1], EPOCHS)) for c in top3()),
            "; ".join("seed %d: %s" % (a["seed"], ", ".join(
                "q=%s tau=%s" % c for c in sorted(a["missed_top"])) or "none") for a in ashas)))
        print("report -> stop latency, s (median / max)    %.3f / %.3f over %d stopped runs"
              % (lat_med, lat_max, len(latency)))
        print("rung epoch written -> stop, s (median / max) %.3f / %.3f" % (rl_med, rl_max))
        print("epochs read past the rung (median / max)     %s / %s; epochs run past the rung "
              "before the stop: %s / %s" % (stats(late)[0], stats(late)[1], stats(past)[0],
                                           stats(past)[1]))
        print("(c) epochs of %.2f s: %d epochs (%.0f %%), best q=%s tau=%s (%s), rung values "
              "read %s epochs late (median), top-3 stopped: %d" % (
                  FAST_PAUSE, fast["steps"], 100.0 * fast["steps"] / grid["steps"],
                  fast["best"][0] if fast["best"] else "-", fast["best"][1] if fast["best"]
                  else "-", "the best" if fast["best"] == expected else "NOT the best",
                  stats(fast["read_late"])[0], len(fast["missed_top"])))
        checks = [
            ("both searches exit 0, every run finished or stopped",
             all(r["rc"] == 0 and r["all_done"] for r in [grid] + ashas),
             "exits %s" % [r["rc"] for r in [grid] + ashas]),
            ("the full grid finds the known best configuration", grid["best"] == expected,
             "q=%s tau=%s" % grid["best"] if grid["best"] else "none"),
            ("ASHA uses <= %.0f %% of the grid's epochs (median over seeds)"
             % (100 * TARGET_SHARE), statistics.median(shares) <= TARGET_SHARE,
             "%s; median %.0f %%" % (", ".join("%.0f %%" % (100 * s) for s in shares),
                                     100 * statistics.median(shares))),
            ("ASHA finds the grid's best configuration (every seed)",
             all(a["best"] == grid["best"] and a["best_value"] == grid["best_value"]
                 for a in ashas),
             ", ".join("q=%s tau=%s" % a["best"] if a["best"] else "none" for a in ashas)),
            ("report -> stop latency median < %.1f s" % TARGET_MEDIAN_S,
             lat_med < TARGET_MEDIAN_S, "%.3f s over %d stops" % (lat_med, len(latency))),
            ("report -> stop latency max < %.1f s" % TARGET_MAX_S, lat_max < TARGET_MAX_S,
             "%.3f s" % lat_max),
        ]
        return report(checks)


if __name__ == "__main__":
    sys.exit(main())
