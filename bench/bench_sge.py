#!/usr/bin/env python3
"""Benchmark: hpsearch on Grid Engine (stdlib only).

    python3 bench/bench_sge.py [--repeats N] [--skip-real]

(a) Queue queries per poll cycle with 1,000 of our jobs queued, WITHOUT touching the real Grid
    Engine: ``hpsearch.ClusterBackend`` with the ``Sge`` scheduler follows 1,000 attached jobs;
    ``qstat`` on PATH is a fake that prints a recorded-format ``qstat -xml`` answer listing them
    all as pending (and logs each call). Two shapes: 1,000 separate jobs, and one job array of
    1,000 pending tasks (``<tasks>1-1000:1</tasks>``). 30 poll cycles each at
    ``poll_interval`` 0.02 s. Target: exactly 1 qstat call per cycle, no qacct call (nothing
    ended); the time per cycle (fake qstat process + parsing 1,000 entries) is shown.
(b) 20 one-second configs (``bench/sleep_train.py --sleep=1``) on the REAL Grid Engine
    (``tests/cluster/sge-up.sh``): ``hpsearch.py --run_cluster --scheduler=sge --num_jobs=2
    --poll_interval=1`` vs the same 20 job scripts (hpsearch's own ``hpsearch_command.sh`` of
    each run, with the search folder replaced by a fresh one) submitted by hand, all at once,
    with ``qsub`` and the options hpsearch uses, then ``qstat`` asked every 0.5 s until none of
    them is listed. Both timed from outside, start to end, alternating which goes first;
    the median of ``--repeats`` (default 3) is shown with the ratio. With as many queue slots
    as --num_jobs (2 on a 2-core machine) both sides run 2 at a time; with more slots the
    hand-submitted side runs more at once, and the ratio says so. No pass/fail target: Grid
    Engine dispatches about once a second, which dominates.

Exit status 1 if the (a) target is missed or a search does not finish.
"""

import argparse
import getpass
import glob
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import types

from _common import HPSEARCH, environment, load_hpsearch, print_load_average, write_config

hpsearch = load_hpsearch()

N_QUEUED = 1000
CYCLES = 30
POLL = 0.02
N_REAL = 20
SLEEP_REAL = 1.0

FAKE_QSTAT = """#!/bin/sh
# fake qstat: logs the call, prints a recorded qstat -xml answer
echo "$0 $*" >> %(log)s
cat %(xml)s
"""

XML_HEAD = ("<?xml version='1.0'?>\n<job_info  xmlns:xsd=\"http://arc.liv.ac.uk/repos/darcs/sge/"
            "source/dist/util/resources/schemas/qstat/qstat.xsd\">\n  <queue_info>\n"
            "  </queue_info>\n  <job_info>\n")
XML_JOB = """    <job_list state="pending">
      <JB_job_number>%(number)d</JB_job_number>
      <JAT_prio>0.50000</JAT_prio>
      <JB_name>sim_20261129204000_%(k)04d</JB_name>
      <JB_owner>%(user)s</JB_owner>
      <state>qw</state>
      <JB_submission_time>2026-11-29T20:40:00</JB_submission_time>
      <queue_name></queue_name>
      <slots>1</slots>%(tasks)s
    </job_list>
"""
XML_TAIL = "  </job_info>\n</job_info>\n"


def fake_xml(array):
    user = getpass.getuser()
    if array:
        jobs = XML_JOB % {"number": 5000, "k": 1, "user": user,
                          "tasks": "\n      <tasks>1-%d:1</tasks>" % N_QUEUED}
    else:
        jobs = "".join(XML_JOB % {"number": 5000 + k, "k": k, "user": user, "tasks": ""}
                       for k in range(1, N_QUEUED + 1))
    return XML_HEAD + jobs + XML_TAIL


def count_lines(path):
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return sum(1 for _ in f)


def queries_per_cycle(work, array):
    """(qstat calls, cycles, qacct calls, seconds per cycle) for 1,000 attached jobs."""
    label = "array" if array else "jobs"
    bin_dir = os.path.join(work, "fake_bin_" + label)
    os.makedirs(bin_dir)
    qstat_log = os.path.join(work, "qstat_%s.log" % label)
    qacct_log = os.path.join(work, "qacct_%s.log" % label)
    xml = os.path.join(work, "qstat_%s.xml" % label)
    with open(xml, "w") as f:
        f.write(fake_xml(array))
    for tool, log in (("qstat", qstat_log), ("qacct", qacct_log)):
        path = os.path.join(bin_dir, tool)
        with open(path, "w") as f:
            f.write(FAKE_QSTAT % {"log": shlex.quote(log), "xml": shlex.quote(xml)}
                    if tool == "qstat" else "#!/bin/sh\necho \"$0 $*\" >> %s\nexit 1\n"
                    % shlex.quote(log))
        os.chmod(path, 0o755)

    folder = hpsearch.SearchFolder(os.path.join(work, "search_" + label))
    folder.prepare()
    args = types.SimpleNamespace(scheduler_args="", num_hours=24)
    scheduler = hpsearch.Sge(args)
    backend = hpsearch.ClusterBackend(scheduler, folder, work, num_jobs=N_QUEUED,
                                      poll_interval=POLL, use_array=array)
    for k in range(1, N_QUEUED + 1):
        name = "sim_20261129204000_%04d" % k
        run = hpsearch.Run(k - 1, name, {}, ["true"], os.path.join(folder.path, name))
        backend.attach(run, "5000.%d" % k if array else str(5000 + k))

    cycles = [0]
    real_poll = backend.poll

    def counted_poll():
        cycles[0] += 1
        return real_poll()

    backend.poll = counted_poll
    old_path = os.environ.get("PATH", "")
    os.environ["PATH"] = bin_dir + os.pathsep + old_path
    try:
        t0 = time.perf_counter()
        while cycles[0] < CYCLES:
            ended = backend.wait(POLL)
            if ended:
                raise SystemExit("bench_sge: (a) %d pending job(s) taken for ended: %s"
                                 % (len(ended), ended[0].reason))
        elapsed = time.perf_counter() - t0
    finally:
        os.environ["PATH"] = old_path
    if backend.running() != N_QUEUED:
        raise SystemExit("bench_sge: (a) follows %d jobs, not %d" % (backend.running(), N_QUEUED))
    # the loop also sleeps POLL between cycles; report the work per cycle without it
    per_cycle = max(0.0, elapsed / cycles[0] - POLL)
    return count_lines(qstat_log), cycles[0], count_lines(qacct_log), per_cycle


# ---------------------------------------------------------------------------------------------


def sge_ready():
    if shutil.which("qsub") is None:
        return "qsub not found (start Grid Engine: sudo bash tests/cluster/sge-up.sh)"
    proc = subprocess.run(["qstat", "-f"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True)
    healthy = [l for l in proc.stdout.splitlines()
               if "@" in (l.split() or [""])[0] and len(l.split()) == 5]
    if proc.returncode != 0 or not healthy:
        return "no healthy queue instance in qstat -f (run tests/cluster/sge-up.sh)"
    return ""


def queue_slots():
    proc = subprocess.run(["qstat", "-f"], stdout=subprocess.PIPE, universal_newlines=True)
    total = 0
    for line in proc.stdout.splitlines():
        f = line.split()
        if len(f) == 5 and "@" in f[0] and f[2].count("/") == 2:
            total += int(f[2].split("/")[2])
    return total


def run_hpsearch(work, rep):
    config = write_config(work, "real_config", N_REAL, SLEEP_REAL)
    search_dir = os.path.join(work, "real_hp_%d" % rep)
    argv = [sys.executable, HPSEARCH, "--grid_module=" + config, "--run_cwd=" + work,
            "--out_dir=" + search_dir, "--force_out_dir", "--run_cluster", "--scheduler=sge",
            "--num_jobs=2", "--poll_interval=1"]
    log = search_dir + ".log"
    with open(log, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=out,
                              stderr=subprocess.STDOUT)
        elapsed = time.perf_counter() - t0
    text = open(log).read()
    if proc.returncode != 0 or "done: %d finished" % N_REAL not in text:
        raise SystemExit("bench_sge: the hpsearch search did not finish all %d runs:\n%s"
                         % (N_REAL, text[-2000:]))
    return elapsed, search_dir


def run_by_hand(template_dir, work, rep):
    """Submit the template search's 20 job scripts (search folder replaced) with qsub, all at
    once, and wait until qstat lists none of them."""
    hand_dir = os.path.join(work, "real_hand_%d" % rep)
    jobs = os.path.join(hand_dir, "jobs")
    os.makedirs(jobs)
    scripts = []
    for script in sorted(glob.glob(os.path.join(template_dir, "sim_*", "hpsearch_command.sh"))):
        name = os.path.basename(os.path.dirname(script))
        with open(script) as f:
            text = f.read().replace(template_dir, hand_dir)
        path = os.path.join(jobs, name + ".sh")
        with open(path, "w") as f:
            f.write(text)
        scripts.append((name, path))
    if len(scripts) != N_REAL:
        raise SystemExit("bench_sge: found %d job scripts in %s" % (len(scripts), template_dir))
    t0 = time.perf_counter()
    ids = set()
    for name, path in scripts:   # the options hpsearch gives qsub
        proc = subprocess.run(["qsub", "-terse", "-N", name, "-o",
                               os.path.join(jobs, name + ".scheduler.log"), "-j", "y", "-V",
                               "-S", "/bin/sh", "-l", "h_rt=24:00:00", path],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True)
        if proc.returncode != 0:
            raise SystemExit("bench_sge: qsub failed: %s" % proc.stderr)
        ids.add(proc.stdout.strip().split(".")[0])
    while True:
        proc = subprocess.run(["qstat"], stdout=subprocess.PIPE, universal_newlines=True)
        listed = {l.split()[0] for l in proc.stdout.splitlines()[2:] if l.split()}
        if proc.returncode == 0 and not ids & listed:
            break
        time.sleep(0.5)
    elapsed = time.perf_counter() - t0
    done = len(glob.glob(os.path.join(hand_dir, "sim_*", "performance_overview.txt")))
    if done != N_REAL:
        raise SystemExit("bench_sge: by hand, %d of %d jobs finished" % (done, N_REAL))
    return elapsed


def compare_real(work, repeats):
    hp, hand = [], []
    template = None
    for rep in range(repeats):
        order = ("hp", "hand") if rep % 2 == 0 or template is None else ("hand", "hp")
        for side in order:
            if side == "hp":
                elapsed, template = run_hpsearch(work, rep)
                hp.append(elapsed)
            else:
                hand.append(run_by_hand(template, work, rep))
    return hp, hand


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-real", action="store_true",
                        help="only (a): no real Grid Engine needed")
    opts = parser.parse_args()
    print("bench_sge: " + environment())
    work = tempfile.mkdtemp(prefix="hpsearch_bench_sge_")
    failed = 0
    try:
        print("\n(a) %d of our jobs queued, fake qstat -xml, %d poll cycles:" % (N_QUEUED, CYCLES))
        for array in (False, True):
            calls, cycles, qacct, per_cycle = queries_per_cycle(work, array)
            ok = calls == cycles and qacct == 0
            failed += not ok
            print("    %-28s qstat calls %3d / cycles %3d = %.2f per cycle, qacct calls %d, "
                  "%.1f ms per cycle  %s" % (
                      "1 array of %d tasks:" % N_QUEUED if array else "%d jobs:" % N_QUEUED,
                      calls, cycles, calls / float(cycles), qacct, per_cycle * 1000,
                      "PASS" if ok else "FAIL (target: 1 per cycle, no qacct)"))
        if opts.skip_real:
            return 1 if failed else 0
        problem = sge_ready()
        if problem:
            print("\n(b) skipped: " + problem)
            return 1 if failed else 0
        slots = queue_slots()
        print("\n(b) %d x %.0f s configs on the real Grid Engine (%d queue slots), median of %d,"
              " alternating:" % (N_REAL, SLEEP_REAL, slots, opts.repeats))
        hp, hand = compare_real(work, opts.repeats)
        med = statistics.median
        fmt = lambda ts: " ".join("%.2f" % t for t in ts)
        print("    %-42s %6.2f s   (%s)" % ("hpsearch --num_jobs=2 --poll_interval=1:",
                                              med(hp), fmt(hp)))
        print("    %-42s %6.2f s   (%s)" % ("qsub x %d by hand + qstat until empty:" % N_REAL,
                                              med(hand), fmt(hand)))
        print("    %-42s %6.3f" % ("ratio hpsearch / by hand:", med(hp) / med(hand)))
        width = min(2, slots) or 1
        print("    %-42s %6.2f s" % ("ideal (%d x %.0f s, %d at a time):" % (N_REAL, SLEEP_REAL, width),
                                    N_REAL * SLEEP_REAL / width))
        print("")
        print_load_average()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
