"""Say why: every run that did not finish names its reason and its log, a wait names what it
waits for, the exit status says how the search ended, --status tells how a search stands,
and what is printed never contradicts the limits (issue 12)."""

import os
import re
import shlex
import subprocess
import sys
import time

import pytest

import gpu_helpers as gh
import hpsearch
from conftest import (HPSEARCH, SCRIPT_TOOLS, make_project, only_search, tree, wait_for,
                      write_file)

# A script with a strict argument parser, as research scripts have: an argument it does not
# know ends it with exit 2 and argparse's message on stderr.
STRICT = SCRIPT_TOOLS + r'''
import argparse

p = argparse.ArgumentParser(prog="train.py")
p.add_argument("--out_dir", required=True)
p.add_argument("--lr", type=float, default=0.1)
p.add_argument("--sleep", type=float, default=0.0)
p.add_argument("--finished", default="1")
p.add_argument("--write", default="performance_overview.txt")
args = p.parse_args()
os.makedirs(args.out_dir)
time.sleep(args.sleep)
with open(os.path.join(args.out_dir, args.write), "w") as f:
    f.write("acc %s\n" % args.lr + ("" if args.finished == "none" else
                                    "finished %s\n" % args.finished))
'''


def strict_project(tmp_path, grid, **kwargs):
    return make_project(tmp_path, script_body=STRICT, grid=grid,
                        summary_keywords=["acc", "finished"], **kwargs)


def reasons(search):
    """``{run name: hpsearch_reason}`` of search_results.csv."""
    header, rows = search.results()
    return {os.path.basename(r["out_dir"]): r["hpsearch_reason"] for r in rows}


def test_a_rejected_argument_names_the_scripts_error_and_its_log_and_exits_1(tmp_path):
    project = strict_project(tmp_path, {"lr": [0.5], "weight_decay": [0.0001]})
    rc, out, err = project.hpsearch()
    assert rc == 1, (out, err)
    search = project.search()
    (run,) = search.runs()
    log = os.path.join(run["out_dir"] if os.path.isdir(run["out_dir"])
                       else search.file("jobs"), "job_%s.err" % run["name"]
                       if os.path.isdir(run["out_dir"]) else run["name"] + ".err")
    script_error = "train.py: error: unrecognized arguments: --weight_decay=0.0001"
    line = [l for l in out.splitlines() if l.startswith("failed %s" % run["name"])]
    assert line == ["failed %s (exit 2): %s [log: %s]" % (run["name"], script_error, log)], out
    assert os.path.isfile(log)
    # the same reason in the table and the journal; the last line says how many and where
    assert reasons(search) == {run["name"]: script_error}
    assert search.journal()[-1]["reason"] == script_error
    last = out.splitlines()[-1]
    assert last.startswith("hpsearch: 1 of 1 runs did not finish;") and log in last, last


def test_a_search_whose_runs_all_finish_exits_0_and_names_its_best_run(tmp_path):
    project = strict_project(tmp_path, {"lr": [0.2, 0.9, 0.5]})
    rc, out, err = project.hpsearch()
    assert rc == 0, (out, err)
    search = project.search()
    best = [r for r in search.runs() if r["args"]["lr"] == 0.9][0]
    lines = out.splitlines()
    assert "hpsearch: best run: %s, acc=0.9 (%s)" % (best["name"], best["out_dir"]) in lines
    post = [l for l in lines if l.startswith("hpsearch: tables, seed averages and a report: ")]
    assert len(post) == 1, out
    argv = shlex.split(post[0].split(": ", 2)[2])
    assert argv[:2] == [sys.executable, os.path.join(os.path.dirname(HPSEARCH),
                                                     "hpsearch_postprocessing.py")]
    assert subprocess.call(argv, stdout=subprocess.DEVNULL) == 0   # works as printed
    assert all(r == "" for r in reasons(search).values())


@pytest.mark.parametrize("case, expected", [
    ("misnamed", "no perf.txt in {folder} (it holds: argv.json, performance_overview.txt)"),
    ("finished0", "{folder}/perf.txt says finished 0, not 1"),
    ("no_line", "{folder}/perf.txt has no 'finished' line"),
])
def test_an_unfinished_run_says_which_summary_was_looked_for_and_what_was_found(
        tmp_path, case, expected):
    grid = {"lr": [0.5], "write": ["perf.txt"]}
    if case == "misnamed":   # the script writes the default name: _SUMMARY_FILENAME is wrong
        grid = {"lr": [0.5]}
    elif case == "finished0":
        grid["finished"] = ["0"]
    else:
        grid["finished"] = ["none"]
    project = strict_project(tmp_path, grid, summary_filename="perf.txt")
    if case == "misnamed":   # give the folder a second file, as real runs have
        write_file(project.script, STRICT.replace(
            "os.makedirs(args.out_dir)",
            "os.makedirs(args.out_dir); open(os.path.join(args.out_dir, 'argv.json'), 'w')"))
    rc, out, err = project.hpsearch()
    assert rc == 1, (out, err)
    search = project.search()
    (run,) = search.runs()
    reason = expected.format(folder=run["out_dir"])
    assert "unfinished %s (exit 0): %s" % (run["name"], reason) in out, out
    assert reasons(search) == {run["name"]: reason}


def test_a_killed_run_names_the_signal(tmp_path):
    project = strict_project(tmp_path, {"lr": [0.5], "sleep": [30]})
    rc, out, err = project.hpsearch("--run_timeout=0.5")
    assert rc == 1, (out, err)
    assert re.search(r"^killed sim_\d+_1 \(exit 143\): ran longer than --run_timeout=0.5s",
                     out, re.M), out


# ------------------------------------------------------------------------------------------
# Waiting, said once per change; what is printed agrees with the limits
# ------------------------------------------------------------------------------------------


def test_busy_gpus_are_named_with_their_reason_within_seconds(tmp_path):
    env = gh.Env(tmp_path)
    env.set_state([env.gpu(0, memory_used=12000), env.gpu(1, utilization=90)])
    env.write_config({"sleep": [0.1], "idx": [0, 1]})
    proc = env.start("--visible_gpus=0,1", "--sim_startup_time=0", "--gpu_poll_interval=0.1")
    stdout = os.path.join(env.dir, "hpsearch.stdout")

    def printed():
        with open(stdout) as f:
            return f.read()
    try:
        said = ("waiting for a GPU: GPU 0: memory 73% > 50% (--allowed_memory); "
                "GPU 1: load 90% > 50% (--allowed_load)")
        assert wait_for(lambda: said in printed(), 5), printed()
        time.sleep(1.0)   # ten more looks at the same GPUs: nothing new to say
        assert printed().count("waiting for a GPU") == 1, printed()
        env.set_state([env.gpu(0), env.gpu(1, utilization=90)])   # GPU 0 frees up
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == 0, printed()
    log = open(os.path.join(env.search_dir(), "hpsearch.log")).read()
    assert said in log   # a log file says it too


def test_why_waiting_names_each_blocking_gpu(monkeypatch):
    clock = gh.FakeClock()
    monkeypatch.setattr(hpsearch, "now", clock)
    gpus = [hpsearch.Gpu(i, "GPU-w-%d" % i, "W", used, 1000.0, util)
            for i, used, util in ((0, 0, 0), (1, 730, 0), (2, 0, 0))]
    slots = hpsearch.GpuSlots(gpus, 1, 0.5, 0.5, 60, 2.0, query=lambda: gpus,
                              query_apps=lambda: {})
    first = slots.acquire()                   # GPU 0 (or 2) takes a run and holds
    slots.started(first, 4242)
    second = slots.acquire()
    slots.started(second, 4343)
    assert slots.acquire() is None
    clock.advance(18)
    texts = sorted(t for _, t, _ in slots.why_waiting())
    assert texts == [
        "GPU 0: 1 run(s), --max_num_jobs_per_gpu=1",
        "GPU 1: memory 73% > 50% (--allowed_memory)",
        "GPU 2: 1 run(s), --max_num_jobs_per_gpu=1"]
    slots.per_gpu = 2
    assert sorted(t for _, t, _ in slots.why_waiting())[0] == \
        "GPU 0: start-up hold, 42 s left (--sim_startup_time)"


def test_the_log_never_shows_more_runs_going_than_slots(tmp_path):
    """Parse the printed lines: a run's end comes before the start of the run that takes
    its slot, so at no line do more than --local_jobs runs go; retries included."""
    project = strict_project(tmp_path, {"lr": [0.1, 0.2, 0.3], "sleep": [0.05, 0.3],
                                        "finished": ["1", "0"]})
    rc, out, err = project.hpsearch("--local_jobs=2", "--max_retries=1")
    assert rc == 1, (out, err)   # the finished-0 runs never finish
    going, most, starts = set(), 0, 0
    for line in open(os.path.join(only_search(project), "hpsearch.log")):
        words = line.split()
        if len(words) > 3 and words[2] == "started":
            going.add(words[3])
            starts += 1
        elif len(words) > 3 and words[2] in ("finished", "unfinished", "failed", "killed"):
            going.discard(words[3])
        most = max(most, len(going))
    assert most <= 2 and starts == 12 + 6 and not going, (most, starts)   # 6 retried


# ------------------------------------------------------------------------------------------
# --status
# ------------------------------------------------------------------------------------------


def status(path, *flags):
    proc = subprocess.run([sys.executable, HPSEARCH, "--status", path] + list(flags),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=30)
    return proc.returncode, proc.stdout, proc.stderr


def snapshot(path):
    """Every file under ``path`` with its size and modification time."""
    found = {}
    for root, _, files in os.walk(path):
        for name in files:
            st = os.stat(os.path.join(root, name))
            found[os.path.join(root, name)] = (st.st_size, st.st_mtime_ns)
    return found


def test_status_of_a_running_search_and_of_an_ended_one(tmp_path):
    # run 1 (lr 0.9) ends at once; then two runs go for 30 s while two wait
    # (conditions put the runs they change last: lr 0.9 is run 1)
    project = strict_project(tmp_path, {"lr": [0.9, 0.1, 0.2, 0.3, 0.4]},
                             conditions=[({"lr": [0.1, 0.2, 0.3, 0.4]}, {"sleep": [30]})])
    proc = subprocess.Popen([sys.executable, HPSEARCH, "--grid_module=" + project.config,
                             "--visible_gpus=-1", "--local_jobs=2", "--deterministic_search"],
                            cwd=project.path, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        assert wait_for(lambda: project.searches() and os.path.exists(os.path.join(
            only_search(project), "search_results.csv")), 20)
        search = only_search(project)

        def two_long_runs_going():
            rc, out, err = status(search)
            return "running 2" in out and "finished 1" in out and out
        out = wait_for(two_long_runs_going, 30)
        assert out, status(search)
        before = snapshot(search)
        rc, out, err = status(search)
        assert rc == 0 and err == "", err
        assert snapshot(search) == before   # reads files only
        lines = out.splitlines()
        assert lines[0].startswith("search %s: 5 runs; launcher running (pid %d)"
                                   % (search, proc.pid)), out
        assert lines[1] == ("  finished 1, running 2, waiting 2, stopped 0, unfinished 0, "
                            "failed 0, killed 0"), out
        going = [l for l in lines if re.match(r"    sim_\d+_\d  0:\d\d  pid \d+$", l)]
        assert len(going) == 2, out
        assert re.search(r"  best so far: sim_\d+_1, acc=0.9 \(%s/sim_\d+_1\)" % re.escape(
            search), out), out
        assert re.search(r"  time left: about \d+:\d\d \(runs take 0:0\d on average, 2 at a "
                         r"time\)", out), out
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    rc, out, err = status(search)
    assert rc == 0, err
    assert "no launcher (the search ended or was stopped)" in out.splitlines()[0]
    assert "  killed 2" in out or "killed 2" in out.splitlines()[1], out
    assert out.count("stopped by hpsearch") == 2, out   # the reasons of the runs that did not


def test_status_watch_and_bad_folders(tmp_path):
    rc, out, err = status(str(tmp_path / "nope"))
    assert rc == 2 and err.startswith("hpsearch: error: --status") and len(err.splitlines()) == 1
    proc = subprocess.run([sys.executable, HPSEARCH, "--watch", "1"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, universal_newlines=True, timeout=30)
    assert proc.returncode == 2 and "--watch needs --status" in proc.stderr


# ------------------------------------------------------------------------------------------
# Flags, dry runs, counts
# ------------------------------------------------------------------------------------------


def test_flags_are_not_taken_by_prefix_and_a_near_miss_is_named(tmp_path):
    project = make_project(tmp_path)
    rc, out, err = project.hpsearch("--local_job=2")
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("hpsearch: error: unrecognized arguments: --local_job=2; did you "
                          "mean --local_jobs?"), err
    assert not os.path.exists(project.out_base)


def test_dry_run_counts_duplicates_and_skipped_conditions_and_needs_no_script(tmp_path):
    project = make_project(tmp_path, grid={"a": [1, 2, 3], "b": ["x", "y"]},
                           conditions=[({"a": [2, 3]}, {"b": ["x"]}),
                                       ({"missing": [1]}, {"b": ["y"]})])
    os.remove(project.script)
    before = tree(tmp_path)
    rc, out, err = project.hpsearch("--dry_run")
    assert rc == 0, err
    assert tree(tmp_path) == before
    lines = out.splitlines()
    assert lines[-1] == ("4 commands (6 grid points, 2 duplicates removed, 1 condition "
                         "skipped)"), out
    assert len(lines) == 5
    assert "no such file" in err and "train.py" in err   # a warning, not an error
    rc, out, err = make_project(tmp_path, grid={"a": [1]}, name="one").hpsearch("--dry_run")
    assert out.splitlines()[-1] == "1 command (1 grid point, 0 duplicates removed, " \
                                   "0 conditions skipped)"
