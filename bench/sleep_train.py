#!/usr/bin/env python3
"""A tiny stand-in training script for the benchmarks (stdlib only, kept cheap to start).

    python3 bench/sleep_train.py --out_dir=DIR [--sleep=SECONDS] [--any_other=value ...]

Makes ``DIR`` (refusing one that exists, as hypnettorch-era scripts do), sleeps ``--sleep``
seconds (0: exits at once), writes ``performance_overview.txt`` with ``loss`` and ``finished 1``.
Other ``--key=value`` arguments are accepted and ignored.
"""

import os
import sys


def main(argv):
    opts = {}
    for arg in argv:
        if arg.startswith("--"):
            key, _, value = arg[2:].partition("=")
            opts[key] = value
    out_dir = opts.get("out_dir")
    if not out_dir:
        sys.stderr.write("sleep_train.py: --out_dir=DIR is required\n")
        return 2
    try:
        os.makedirs(out_dir)
    except OSError:
        sys.stderr.write("sleep_train.py: %s exists, refusing to overwrite\n" % out_dir)
        return 1
    seconds = float(opts.get("sleep") or 0)
    if seconds > 0:
        import time
        time.sleep(seconds)
    with open(os.path.join(out_dir, "performance_overview.txt"), "w") as f:
        f.write("loss %s\nfinished 1\n" % opts.get("seed", "0"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
