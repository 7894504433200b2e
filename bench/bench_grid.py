#!/usr/bin/env python3
"""Benchmark: grid expansion and random draws of hpsearch (stdlib only).

    python3 bench/bench_grid.py

(a) ``GridSpace(grid, conditions).expand()`` on a 10^6-configuration grid (6 keys x 10 values of
    mixed types) with 3 conditions (one adds a key, one has a 2-key trigger, one has a
    multi-value action) and deduplication.
    Targets: <= 3 s wall and <= 300 MB peak memory (delta over the bare interpreter).
    For comparison only (no target), a naive reference in the style of hypnettorch: the full
    product as a list of dicts with itertools.product, no conditions.
(b) ``--dont_generate_full_grid``: ``GridSpace.sample(1000, random.Random(1))`` from a grid of
    10^15 configurations (15 keys x 10 values) with 2 conditions. Target: <= 0.5 s ("well under
    1 s").

Every measurement runs in its own fresh interpreter (``sys.executable``), 3 times; the table
shows the median time and the largest peak memory. Peak memory is ``ru_maxrss`` of that
interpreter (``resource.getrusage(RUSAGE_SELF)``); the baseline is the same interpreter after the
imports and before any work (bare interpreter + ``import hpsearch``), and the delta is what the
work added. Exit status 1 if a target is missed.
"""

import json
import statistics
import subprocess
import sys

from _common import ROOT, environment, report

REPEATS = 3

TARGET_EXPAND_S = 3.0
TARGET_EXPAND_MB = 300.0
TARGET_SAMPLE_S = 0.5

# The work each fresh interpreter does. The header imports what every variant needs, then the
# baseline is taken; the body is the measured work.
HEADER = r"""
import json, resource, sys, time, itertools, random
sys.path.insert(0, %(root)r)
import hpsearch

def maxrss_mb():
    # Linux reports kilobytes, macOS bytes.
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024.0 * 1024.0) if sys.platform == "darwin" else r / 1024.0

def big_grid():
    # 6 keys x 10 values, mixed types: floats, ints, strings, bools, None, a quoted string.
    return {
        "lr": [1e-1, 5e-2, 1e-2, 5e-3, 1e-3, 5e-4, 1e-4, 5e-5, 1e-5, 5e-6],
        "batch_size": [8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096],
        "optimizer": ["sgd", "adam", "adamw", "rmsprop", "adagrad", "adadelta", "nadam",
                      "lamb", "lars", "sgd_nesterov"],
        "activation": ["relu", "tanh", "sigmoid", "elu", "selu", "gelu", "swish", "mish",
                       "leaky_relu", "softplus"],
        "dropout": [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6],
        "extra": [None, True, False, 0, 3, 2.5, "x", '"a b"', "1,2,3", -7],
    }

def big_conditions():
    return [
        # adds a key that is not in the grid
        ({"optimizer": ["sgd", "rmsprop", "sgd_nesterov"]}, {"momentum": [0.9]}),
        # a 2-key trigger (fixes lr: creates duplicates that dedup removes)
        ({"optimizer": ["adam", "adamw"], "batch_size": [8, 16]}, {"lr": [1e-3]}),
        # a multi-value action on a grid key
        ({"activation": ["relu"]}, {"dropout": [0.0, 0.25, 0.5]}),
    ]

def huge_grid():
    # 15 keys x 10 values = 10^15 configurations.
    grid = {"k%%02d" %% i: [j * (i + 1) for j in range(10)] for i in range(15)}
    grid["k03"] = ["v%%d" %% j for j in range(10)]
    grid["k07"] = [j / 10.0 for j in range(10)]
    return grid

def huge_conditions():
    return [
        ({"k03": ["v1", "v2"]}, {"extra": [1, 2, 3]}),
        ({"k00": [0, 1], "k07": [0.5]}, {"k08": [8, 16]}),
    ]

baseline = maxrss_mb()
"""

BODIES = {
    "baseline": "",
    "expand": r"""
t0 = time.perf_counter()
space = hpsearch.GridSpace(big_grid(), big_conditions())
codes = space.expand()
elapsed = time.perf_counter() - t0
result["count"] = len(codes)
result["first"] = space.as_dict(codes[0])
""",
    "naive": r"""
t0 = time.perf_counter()
grid = big_grid()
keys = list(grid)
configs = [dict(zip(keys, combo)) for combo in itertools.product(*grid.values())]
elapsed = time.perf_counter() - t0
result["count"] = len(configs)
""",
    "sample": r"""
t0 = time.perf_counter()
space = hpsearch.GridSpace(huge_grid(), huge_conditions())
codes = space.sample(1000, random.Random(1))
elapsed = time.perf_counter() - t0
result["count"] = len(codes)
result["distinct"] = len(set(tuple(space.arguments(c)) for c in codes))
result["product"] = space.size_of_product()
""",
}

FOOTER = r"""
peak = maxrss_mb()
result.update(seconds=elapsed, peak_mb=peak, baseline_mb=baseline, delta_mb=peak - baseline)
print("RESULT " + json.dumps(result))
"""


def measure(kind):
    """Run one variant in a fresh interpreter; its result dict."""
    code = (HEADER % {"root": ROOT}) + "result = {}\nelapsed = 0.0\n" + BODIES[kind] + FOOTER
    proc = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, cwd=ROOT)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr)
        raise SystemExit("bench_grid: the %s worker failed (exit %d)" % (kind, proc.returncode))
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT "):])
    raise SystemExit("bench_grid: the %s worker printed no result" % kind)


def main():
    print("bench_grid: " + environment())
    print("each figure: %d runs, each in a fresh interpreter; time = median, peak = max\n"
          % REPEATS)
    results = {}
    # Interleave the variants so that a slow moment of the machine hits them alike.
    for _ in range(REPEATS):
        for kind in ("baseline", "expand", "naive", "sample"):
            results.setdefault(kind, []).append(measure(kind))

    def row(name, kind):
        rs = results[kind]
        return "%-44s %9d %9.3f %9.1f %9.1f %9.1f" % (
            name, rs[0]["count"], statistics.median(r["seconds"] for r in rs),
            max(r["peak_mb"] for r in rs), max(r["baseline_mb"] for r in rs),
            max(r["delta_mb"] for r in rs))

    print("%-44s %9s %9s %9s %9s %9s" % ("case", "configs", "time s", "peak MB", "base MB",
                                         "delta MB"))
    print("-" * 89)
    base = results["baseline"]
    print("%-44s %9s %9s %9.1f %9s %9s" % ("bare interpreter + import hpsearch", "-", "-",
                                           max(r["peak_mb"] for r in base), "-", "-"))
    print(row("(a) GridSpace.expand, 10^6 grid, 3 conditions", "expand"))
    print(row("(a) naive list of dicts (reference)", "naive"))
    print(row("(b) GridSpace.sample(1000), 10^15 grid", "sample"))
    print("")
    s = results["sample"][0]
    print("(b) product %d; %d drawn, %d distinct commands" % (s["product"], s["count"],
                                                               s["distinct"]))
    print("(a) first expanded config: %s\n" % results["expand"][0]["first"])

    t_expand = statistics.median(r["seconds"] for r in results["expand"])
    m_expand = max(r["delta_mb"] for r in results["expand"])
    t_naive = statistics.median(r["seconds"] for r in results["naive"])
    t_sample = statistics.median(r["seconds"] for r in results["sample"])
    print("(a) expand vs naive reference (no conditions, no dedup): %.2fx the time, "
          "%.2fx the memory delta" % (t_expand / t_naive, m_expand / max(
              max(r["delta_mb"] for r in results["naive"]), 1e-9)))
    checks = [
        ("(a) expand wall <= %.1f s" % TARGET_EXPAND_S, t_expand <= TARGET_EXPAND_S,
         "%.3f s" % t_expand),
        ("(a) expand peak delta <= %.0f MB" % TARGET_EXPAND_MB, m_expand <= TARGET_EXPAND_MB,
         "%.1f MB" % m_expand),
        ("(b) sample(1000) wall <= %.1f s" % TARGET_SAMPLE_S, t_sample <= TARGET_SAMPLE_S,
         "%.3f s" % t_sample),
        ("(b) 1000 distinct draws", s["count"] == 1000 and s["distinct"] == 1000,
         "%d/%d" % (s["distinct"], s["count"])),
    ]
    return report(checks)


if __name__ == "__main__":
    sys.exit(main())
