"""Clusters at scale (issue 15) on LSF, against the LSF emulator in tests/lsf_emulator/: runs that
share a job (--runs_per_job), alone and in job arrays; early stopping of a run inside a shared
job; the cluster's array limit read from ``bparams -a`` (and an array refused all the same);
the per-user pending job threshold (MAX_PEND_JOBS); and the launcher as an LSF job of its own
that is warned before its run limit (``#BSUB -wa USR1 -wt``) and submits itself again
(--resubmit_self).

The training script here notes each start and end in a ledger (JSON lines with the LSB_JOBID
and LSB_JOBINDEX it saw), so a test sees which job ran which run, in what order, and that each
configuration started exactly once. Python 3.6+, stdlib + pytest.

About 40 s on 2 cores.
"""

import json
import os
import re
import signal
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import (SCRIPT_TOOLS, HPSEARCH, killed_if_left, make_project,  # noqa: E402
                      run_hpsearch, write_file)
import lsf_helpers as lh  # noqa: E402

CLUSTER = ("--run_cluster", "--scheduler=lsf", "--poll_interval=0.3", "--deterministic_search")

# Options: --acc, --sleep, --fail_at=X (exit 3 when acc == X), --long_at=X --long=S (sleep S
# instead when acc == X; $TRAIN_SLEEP overrides both). Ledger (JSON lines): starts
# {run, pid, time, LSB_JOBID, LSB_JOBINDEX}, ends {run, time}.
TRAIN = SCRIPT_TOOLS + r'''
opts = options(sys.argv[1:])
out = opts["out_dir"]
name = os.path.basename(out)
if os.path.exists(out):
    sys.exit("train.py: refusing to overwrite %s" % out)
os.makedirs(out)
seen = dict((k, os.environ.get(k, "")) for k in ("LSB_JOBID", "LSB_JOBINDEX"))
note("starts", json.dumps(dict(run=name, pid=os.getpid(), time=time.time(), **seen)))
print("stdout of %s" % name)
sys.stdout.flush()
sys.stderr.write("stderr of %s\n" % name)
sys.stderr.flush()
long_at = opts.get("long_at")
long_run = long_at not in (None, True) and float(long_at) == float(opts["acc"])
# TRAIN_SLEEP, where set, overrides (a resumed search that need not wait as long)
time.sleep(float(os.environ.get("TRAIN_SLEEP", opts["long"] if long_run else opts.get("sleep", 0))))
with open(os.path.join(out, "performance_overview.txt"), "w") as f:
    f.write("acc %s\nloss 1.0\nfinished 1\n" % opts.get("acc", "0.5"))
note("ends", json.dumps(dict(run=name, time=time.time())))
fail_at = opts.get("fail_at")
sys.exit(3 if fail_at not in (None, True) and float(fail_at) == float(opts["acc"]) else 0)
'''

ACCS = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]


@pytest.fixture
def lsf(tmp_path):
    emulator = lh.LsfEmulator(tmp_path, LSF_EMULATOR_TERMINATE_INTERVAL=1)
    yield emulator
    emulator.cleanup()


def project_for(tmp_path, grid, name="proj"):
    project = make_project(tmp_path, script_body=TRAIN, grid=grid, name=name)
    os.makedirs(os.path.join(project.path, "ledger"))
    return project


def search(project, lsf, *args, **kwargs):
    """Run a cluster search; returns ``(rc, stdout, stderr)``. ``env``: extra variables."""
    return lh.cluster_search(project, lsf, CLUSTER + args, **kwargs)


ok = lh.ok


def ledger(project, name):
    try:
        with open(os.path.join(project.path, "ledger", name)) as f:
            return [json.loads(line) for line in f if line.strip()]
    except OSError:
        return []


def last_entries(s):
    last = {}
    for entry in s.journal():
        last[entry["run"]] = entry
    return last


def running_entries(s):
    """``{run: its journal line 'running'}``: the job id (or array task) it ran in."""
    return {e["run"]: e for e in s.journal() if e["state"] == "running"}


def good_bsubs(lsf):
    return [c for c in lsf.calls("bsub") if c["rc"] == 0]


def check_every_run_complete(project, s, failing=()):
    """Each run ran once and has its own folder, logs, exit status and CSV row."""
    runs = s.runs()
    starts = ledger(project, "starts")
    assert sorted(e["run"] for e in starts) == sorted(r["name"] for r in runs), starts
    last = last_entries(s)
    header, rows = s.results()
    assert len(rows) == len(runs)
    by_acc = {float(r["acc"]): r for r in rows}
    for run in runs:
        name, run_dir = run["name"], run["out_dir"]
        fails = run["args"]["acc"] in failing
        assert last[name]["state"] == ("failed" if fails else "finished"), last[name]
        assert last[name]["exit_code"] == (3 if fails else 0), last[name]
        row = by_acc[run["args"]["acc"]]
        assert row["hpsearch_state"] == last[name]["state"]
        assert row["hpsearch_exit_code"] == str(last[name]["exit_code"])
        with open(os.path.join(run_dir, "job_%s.out" % name)) as f:
            assert f.read() == "stdout of %s\n" % name   # its own output, nobody else's
        with open(os.path.join(run_dir, "job_%s.err" % name)) as f:
            assert f.read() == "stderr of %s\n" % name
        with open(os.path.join(run_dir, "hpsearch_exit_status")) as f:
            assert f.read().strip() == str(last[name]["exit_code"])
        assert os.path.isfile(os.path.join(run_dir, "hpsearch_command.sh"))
    return runs, last


def jobs_of_runs(project):
    """``{job id (LSB_JOBID[index]): [ledger starts in order]}``."""
    jobs = {}
    for e in sorted(ledger(project, "starts"), key=lambda e: e["time"]):
        key = e["LSB_JOBID"] if e["LSB_JOBINDEX"] in ("", "0") else "%s[%s]" % (
            e["LSB_JOBID"], e["LSB_JOBINDEX"])
        jobs.setdefault(key, []).append(e)
    return jobs


def assert_one_after_another(project, starts):
    """The runs of one job never overlap: each starts after the one before ended."""
    ends = {e["run"]: e["time"] for e in ledger(project, "ends")}
    for before, after in zip(starts, starts[1:]):
        assert after["time"] >= ends[before["run"]], (before, after)


# ----------------------------------------------------------------------------------------------
# --runs_per_job
# ----------------------------------------------------------------------------------------------


def test_runs_per_job_three_runs_share_each_bsub(tmp_path, lsf):
    """7 runs, K=3: 3 jobs (3 + 3 + 1), one bsub each; every run complete on its own, one of
    them failing (exit 3) without stopping the runs after it in its job."""
    project = project_for(tmp_path, {"acc": ACCS, "sleep": [0.2], "fail_at": [0.2]})
    rc, out, err = search(project, lsf, "--runs_per_job=3", "--num_jobs=2")
    assert rc == 1, (out, err)   # ran to its end; one run failed
    s = project.search()
    runs, last = check_every_run_complete(project, s, failing=(0.2,))
    bsubs = good_bsubs(lsf)
    assert len(bsubs) == 3 and len(lsf.calls("bsub")) == 3, [c["argv"] for c in bsubs]
    assert "3 bsub call(s) for 3 job(s)" in out, out
    jobs = jobs_of_runs(project)
    assert sorted(len(v) for v in jobs.values()) == [1, 3, 3], jobs
    assert set(jobs) == {str(c["job_id"]) for c in bsubs}
    for job_id, starts in jobs.items():
        assert_one_after_another(project, starts)
        for e in starts:   # the journal names the job each run ran in
            assert running_entries(s)[e["run"]]["job_id"] == job_id
    # --num_jobs counts jobs: never more than 2 of them at once
    intervals = [(min(e["time"] for e in v), max(e["time"] for e in v)) for v in jobs.values()]
    assert lh.max_overlap(intervals) <= 2
    # the job's scheduler log (LSF's report) goes to its last run; the job went on after the
    # failing run and ended with the status of its last one
    for job_id, starts in jobs.items():
        kept = os.path.join(s.run_dir(starts[-1]["run"]), "hpsearch_scheduler.log")
        lsf.wait_for(lambda: os.path.isfile(kept), what="the job report in %s" % kept)
        with open(kept) as f:
            assert "Successfully completed." in f.read()
    assert lsf.calls("bkill") == []
    left = [f for f in os.listdir(os.path.join(s.path, "jobs"))
            if f.endswith((".out", ".err", ".exit", ".stop"))]
    assert left == [], left


def test_ctrl_c_kills_shared_jobs_then_resume_runs_the_rest_once(tmp_path, lsf):
    """K=3, 6 runs: Ctrl-C while each job runs its first run: one bkill for both jobs, those
    two runs killed, the four not begun never start; --resume runs those six, each once."""
    project = project_for(tmp_path, {"acc": ACCS[:6], "sleep": [30]})
    proc = lh.start_hpsearch(["--grid_module=%s" % project.config, "--runs_per_job=3"]
                             + list(CLUSTER), project.path, lsf.full_env({}))
    with killed_if_left(proc):
        lsf.wait_for(lambda: len(ledger(project, "starts")) == 2, what="2 runs started")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (out, err)
    bkills = lsf.calls("bkill")
    assert len(bkills) == 1 and sorted(bkills[0]["argv"]) == sorted(
        str(c["job_id"]) for c in good_bsubs(lsf)), bkills
    lsf.wait_all_finished()
    s = project.search()
    first = sorted(e["run"] for e in ledger(project, "starts"))
    assert [last_entries(s)[r]["state"] for r in first] == ["killed", "killed"], out
    assert len(ledger(project, "starts")) == 2, "a run of a cancelled job started"
    ok(search(project, lsf, "--resume", s.path, "--runs_per_job=3",
              env={"TRAIN_SLEEP": "0.2"}, timeout=120))
    starts = [e["run"] for e in ledger(project, "starts")]
    assert sorted(starts[2:]) == sorted(r["name"] for r in s.runs()), starts
    assert set(e["state"] for e in last_entries(s).values()) == {"finished"}


def test_shared_job_search_ends_soon_after_its_last_run(tmp_path, lsf):
    """At its end the launcher waits up to 5 s for LSF's job reports (LSF appends them to a
    job's log after the job ended). A job of several runs has one report, given to its last
    run; only that run may be waited for (the others never get one: the launcher once waited
    the full 5 s for them). Here: one job of two runs, its report there at once
    (LSF_EMULATOR_REPORT_DELAY 0)."""
    project = project_for(tmp_path, {"acc": [0.1, 0.2]})
    ok(search(project, lsf, "--runs_per_job=2"))
    ended = time.time()
    s = project.search()
    last_end = max(e["time"] for e in s.journal())
    kept = os.path.join(s.run_dir(sorted(last_entries(s))[-1]), "hpsearch_scheduler.log")
    assert os.path.isfile(kept)   # the job's one report, in its last run's folder
    assert ended - last_end < 3.0, "the search ended %.1f s after its last run" % (
        ended - last_end)


def test_array_with_runs_per_job_is_one_bsub_whose_tasks_run_three_each(tmp_path, lsf):
    project = project_for(tmp_path, {"acc": ACCS, "sleep": [0.2]})
    out, err = ok(search(project, lsf, "--array", "--runs_per_job=3", "--num_jobs=2"))
    s = project.search()
    runs, last = check_every_run_complete(project, s)
    (bsub,) = lsf.calls("bsub")
    argv = bsub["argv"]
    assert re.match(r"^.*\[1-3\]%2$", argv[argv.index("-J") + 1]), argv
    jobs = jobs_of_runs(project)
    array_id = str(bsub["job_id"])
    assert sorted(jobs) == ["%s[%d]" % (array_id, i) for i in (1, 2, 3)], jobs
    order = sorted(runs, key=lambda r: r["name"])   # the table's order: the grid's
    for k, task in enumerate(sorted(jobs)):
        starts = jobs[task]
        assert [e["run"] for e in starts] == [r["name"] for r in order[3 * k:3 * k + 3]]
        assert_one_after_another(project, starts)
        for e in starts:
            assert running_entries(s)[e["run"]]["job_id"] == task
    elements = lsf.elements()
    assert all(elements["%s[%d]" % (array_id, i)]["stat"] == "DONE" for i in (1, 2, 3))
    assert "1 bsub call(s) for 1 job(s)" in out, out


# ----------------------------------------------------------------------------------------------
# Early stopping of a run that shares its job
# ----------------------------------------------------------------------------------------------


def test_early_stopping_ends_the_run_through_its_stop_file_and_the_job_goes_on(tmp_path, lsf):
    """One job holds the three runs (q=1.0, then 0.3, then 0.2). The two poor ones are stopped
    at the first rung: the launcher leaves their stop files, the job script's watcher sends
    SIGTERM to the training script, and the job goes on with its next run; no bkill at all."""
    from test_early_stopping import toy_project, epochs_of, ES
    from conftest import ledger as toy_ledger   # the toy's ledger: lines of words
    project = toy_project(tmp_path, {"q": [1.0, 0.3, 0.2], "epochs": [9], "pause": [0.25]})
    rc, out, err = project.hpsearch(*(CLUSTER + ES + ("--es_max_step=9", "--runs_per_job=3",
                                                      "--num_jobs=1")),
                                    env=dict(lsf.env), timeout=90)
    assert rc == 0, (out, err)
    s = project.search()
    names = {r["args"]["q"]: r["name"] for r in s.runs()}
    last = last_entries(s)
    assert last[names[1.0]]["state"] == "finished", last
    assert epochs_of(project, names[1.0]) == list(range(1, 10))
    for q in (0.3, 0.2):
        assert last[names[q]]["state"] == "stopped", last[names[q]]
        assert last[names[q]]["reason"].startswith("early stopping at epoch"), last[names[q]]
        assert max(epochs_of(project, names[q])) < 9
    # the script died of the watcher's SIGTERM (bkill would have sent SIGINT first)
    got = {w[0]: int(w[2]) for w in toy_ledger(project, "signals")}
    assert got == {names[0.3]: signal.SIGTERM, names[0.2]: signal.SIGTERM}, got
    (bsub,) = lsf.calls("bsub")
    assert lsf.calls("bkill") == []
    (job,) = lsf.jobs().values()
    assert job["elements"]["0"]["stat"] in ("DONE", "EXIT")
    # one job, runs one after another: 0.3 started after 1.0 ended, 0.2 after 0.3 was stopped
    starts = {w[0]: float(w[2]) for w in toy_ledger(project, "starts")}
    ends = {w[0]: float(w[2]) for w in toy_ledger(project, "ends")}
    signals = {w[0]: float(w[3]) for w in toy_ledger(project, "signals")}
    assert ends[names[1.0]] <= starts[names[0.3]]
    assert signals[names[0.3]] <= starts[names[0.2]]
    _, rows = s.results()
    assert sorted(r["hpsearch_state"] for r in rows) == ["finished", "stopped", "stopped"]
    assert "2 stopped early" in out
    assert not [f for f in os.listdir(os.path.join(s.path, "jobs")) if f.endswith(".stop")]


# ----------------------------------------------------------------------------------------------
# The cluster's array limit
# ----------------------------------------------------------------------------------------------


def test_array_limit_read_from_bparams_splits_the_runs_into_arrays(tmp_path, lsf):
    """MAX_JOB_ARRAY_SIZE = 3 (bparams -a says so): 7 runs go as arrays of 3, 3 and 1, none
    refused."""
    project = project_for(tmp_path, {"acc": ACCS})
    out, err = ok(search(project, lsf, "--array", "--num_jobs=2",
                         env={"LSF_EMULATOR_MAX_JOB_ARRAY_SIZE": "3"}))
    s = project.search()
    check_every_run_complete(project, s)
    assert [c["argv"] for c in lsf.calls("bparams")] == [["-a"]]
    bsubs = lsf.calls("bsub")
    assert all(c["rc"] == 0 for c in bsubs), bsubs
    sizes = [re.search(r"\[1-(\d+)\]", c["argv"][c["argv"].index("-J") + 1]).group(1)
             for c in bsubs]
    assert sorted(sizes) == ["1", "3", "3"], sizes


def test_array_refused_as_too_large_is_split_and_every_config_runs(tmp_path, lsf):
    """bparams does not answer (the default, 1000, is assumed) while the cluster takes arrays
    of 2 at most: bsub refuses with LSF's 'Job array index too large'; hpsearch halves the array
    until it is taken, and every configuration runs once (with --runs_per_job=2: 4 tasks)."""
    project = project_for(tmp_path, {"acc": ACCS})
    out, err = ok(search(project, lsf, "--array", "--num_jobs=2", "--runs_per_job=2",
                         env={"LSF_EMULATOR_MAX_JOB_ARRAY_SIZE": "2",
                              "LSF_EMULATOR_FAIL_BPARAMS": "1"}))
    s = project.search()
    check_every_run_complete(project, s)
    refused = [c for c in lsf.calls("bsub") if c["rc"] != 0]
    assert refused, "no array was refused: the test proves nothing"
    assert "Job array index too large" in err, err
    assert sum(len(array_tasks(c)) for c in good_bsubs(lsf)) == 4   # 7 runs, 2 per task
    assert all(len(array_tasks(c)) <= 2 for c in good_bsubs(lsf))


def array_tasks(call):
    spec = re.search(r"\[([^\]]+)\]", call["argv"][call["argv"].index("-J") + 1]).group(1)
    first, last = spec.split("-")
    return list(range(int(first), int(last) + 1))


# ----------------------------------------------------------------------------------------------
# The per-user pending job threshold
# ----------------------------------------------------------------------------------------------

# One job runs at a time (MAX_JOBS=1) and one may pend (MAX_PEND_JOBS=1): a third submission
# finds the threshold reached.
PEND_LIMIT = {"LSF_EMULATOR_MAX_JOBS": "1", "LSF_EMULATOR_MAX_PEND_JOBS": "1",
              "LSF_EMULATOR_SUB_TRY_INTERVAL": "0.2"}


def test_pending_threshold_refusal_holds_submissions_and_no_run_fails(tmp_path, lsf):
    """A bsub that gives up at the threshold (LSB_NTRIES=1, 'Pending job threshold
    reached. Job not submitted.'): hpsearch holds the runs until one of its jobs ends, says
    so, and every run finishes."""
    project = project_for(tmp_path, {"acc": ACCS[:4], "sleep": [0.5]})
    env = dict(PEND_LIMIT, LSB_NTRIES="1")
    out, err = ok(search(project, lsf, "--num_jobs=4", env=env))
    s = project.search()
    check_every_run_complete(project, s)
    refused = [c for c in lsf.calls("bsub") if c["rc"] != 0]
    assert refused, "no bsub met the threshold: the test proves nothing"
    assert "the scheduler takes no more jobs for now" in err, err
    assert "failed" not in {e["state"] for e in s.journal()}
    assert len(good_bsubs(lsf)) == 4


def test_bsub_never_waits_at_the_threshold_it_comes_back_and_holds(tmp_path, lsf):
    """LSF's bsub at the threshold waits and tries again for ever unless LSB_NTRIES bounds it,
    and a launcher blocked in bsub neither polls nor stops runs. hpsearch submits with
    LSB_NTRIES=1: the refusal comes back at once and holds the runs instead."""
    project = project_for(tmp_path, {"acc": ACCS[:4], "sleep": [0.5]})
    ok(search(project, lsf, "--num_jobs=4", env=PEND_LIMIT))
    s = project.search()
    check_every_run_complete(project, s)
    bsubs = lsf.calls("bsub")
    assert [c for c in bsubs if c["rc"] != 0], "no bsub met the threshold: proves nothing"
    assert not any(c["pend_waits"] for c in bsubs), "a bsub waited inside"
    assert len(good_bsubs(lsf)) == 4


# A launcher whose scheduler calls time out after TIMEOUT s (hpsearch's own is 120 s) and that
# tries a failed submission TRIES times (hpsearch: 4): the same code, a shorter clock.
SHORT_CLOCK = r'''
import importlib.util, sys
spec = importlib.util.spec_from_file_location("hpsearch", %(hpsearch)r)
hpsearch = importlib.util.module_from_spec(spec)
sys.modules["hpsearch"] = hpsearch
spec.loader.exec_module(hpsearch)
real = hpsearch.run_scheduler
def run_scheduler(argv, env=None, timeout=120, stdin_text=None):
    return real(argv, env=env, timeout=min(timeout, %(timeout)r), stdin_text=stdin_text)
hpsearch.run_scheduler = run_scheduler
hpsearch.ClusterBackend.SUBMIT_TRIES = %(tries)d
sys.exit(hpsearch.main())
'''


def test_pending_threshold_longer_than_bsubs_timeout_is_held_not_failed(tmp_path, lsf):
    """LSF's bsub at the pending job threshold does not exit by default: it prints 'User <u>:
    Pending job threshold reached. Retrying in 60 seconds...' and waits for as long as the
    threshold holds. A launcher that waited for it up to its timeout (120 s) and took that for
    an ordinary failure marked the runs failed after 4 tries (about 8 minutes of neither
    polling nor stopping runs), although the refusal only meant "not now". hpsearch submits
    with LSB_NTRIES=1: held, never failed. Here the same code runs on a shorter clock (1 s
    timeout, 2 tries) against a first job of 4.5 s: longer than that timeout."""
    # the first run's job holds the only slot for 4.5 s while the second one pends
    project = project_for(tmp_path, {"acc": [0.1, 0.2, 0.3], "sleep": [0.3], "long_at": [0.1],
                                     "long": [4.5]})
    wrapper = write_file(os.path.join(str(tmp_path), "short_clock.py"), SHORT_CLOCK % {
        "hpsearch": HPSEARCH, "timeout": 1.0, "tries": 2})
    env = dict(lsf.env)
    env.update(PEND_LIMIT)
    rc, out, err = run_hpsearch(["--grid_module=%s" % project.config, "--visible_gpus=-1"]
                                + list(CLUSTER) + ["--num_jobs=3"],
                                project.path, env=env, timeout=90,
                                prefix=[sys.executable, wrapper])
    s = project.search()
    states = {e["run"]: e["state"] for e in s.journal()}
    failed = [e for e in s.journal() if e["state"] == "failed"]
    assert failed == [], "a run was failed for a per-user limit: %s\nstderr:\n%s" % (
        failed[0].get("reason"), err)
    assert set(states.values()) == {"finished"}, states
    assert rc == 0, (out, err)


# ----------------------------------------------------------------------------------------------
# The launcher as an LSF job of its own
# ----------------------------------------------------------------------------------------------

SECONDS_PER_MINUTE = 3   # -W 2: 6 s; -wt 1: warned 3 s after the start

LAUNCHER_SCRIPT = """#!/bin/sh
#BSUB -J hps_launcher
#BSUB -W 2
#BSUB -wa USR1 -wt 1
#BSUB -o %(logs)s/launcher.%%J.log
exec %(python)s %(hpsearch)s --grid_module=%(config)s --visible_gpus=-1 --run_cluster \\
    --scheduler=lsf --poll_interval=0.3 --deterministic_search --num_jobs=2 \\
    --resubmit_self=%(script)s
"""


def test_launcher_job_warned_before_its_run_limit_submits_itself_again(tmp_path, lsf):
    """`bsub < launcher.lsf`, nothing else: each launcher is warned (SIGUSR1) one LSF minute
    before its -W limit, detaches and submits its own script again (bsub -w 'ended(ID)' <
    script); the next one resumes the search. The search completes, every configuration
    started exactly once, and every launcher job ended by itself (DONE), none at its limit."""
    project = project_for(tmp_path, {"acc": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
                                     "sleep": [1.2]})
    logs = os.path.join(str(tmp_path), "logs")
    os.makedirs(logs)
    script = os.path.join(str(tmp_path), "launcher.lsf")
    write_file(script, LAUNCHER_SCRIPT % {"logs": logs, "python": sys.executable,
                                          "hpsearch": HPSEARCH, "config": project.config,
                                          "script": script})
    env = {"LSF_EMULATOR_SECONDS_PER_MINUTE": str(SECONDS_PER_MINUTE)}
    with open(script) as f:
        rc, out, err = lsf.run("bsub", input=f.read(), env=env, cwd=project.path)
    assert rc == 0, err

    def launchers():
        return [j for j in lsf.jobs().values() if j["name"] == "hps_launcher"]

    def all_done():
        found = launchers()
        return found and all(j["elements"]["0"]["stat"] in ("DONE", "EXIT") for j in found) \
            and any("hpsearch: done:" in read(log_of(j)) for j in found)

    lsf.wait_for(all_done, timeout=60, what="the search to end in a launcher job")
    found = sorted(launchers(), key=lambda j: j["id"])
    texts = [read(log_of(j)) for j in found]
    assert len(found) >= 2, "the search fitted into one launcher: the test proves nothing"
    for job, text in zip(found, texts):
        el = job["elements"]["0"]
        assert el["stat"] == "DONE" and el["exit_code"] == 0, (el, text)
        assert el["runlimit_hit"] is None, text
    for text in texts[:-1]:   # every launcher but the last was warned and went on by itself
        assert "SIGUSR1: the launcher's own job nears its time limit; detaching" in text, text
        assert "--resubmit_self: submitted the launcher again as job" in text, text
    assert "hpsearch: done: 8 finished" in texts[-1], texts[-1]
    # each resubmission waits for the job before it: bsub -w 'ended(<previous id>)'
    resubmits = [c for c in lsf.calls("bsub") if "-w" in c["argv"]]
    assert [c["argv"][c["argv"].index("-w") + 1] for c in resubmits] == [
        "ended(%d)" % j["id"] for j in found[:-1]]
    s = project.search()
    starts = [e["run"] for e in ledger(project, "starts")]
    assert sorted(starts) == sorted(r["name"] for r in s.runs()), starts   # each once
    assert set(e["state"] for e in last_entries(s).values()) == {"finished"}
    assert lsf.calls("bkill") == []


def log_of(job):
    return job["out"].replace("%I", "0")


def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


# bsub for the runs' jobs (those with -J) that answers 2 s after LSF took the job, as a busy
# cluster's bsub may; it notes a signal that reaches it. The launcher's own bsub (no -J) is the
# real one.
SLOW_BSUB = """#!/bin/sh
case " $* " in *" -J "*) ;; *) exec %(real)s "$@";; esac
trap 'echo "$$ got SIGUSR1" >> %(marks)s; exit 138' USR1
out=$(%(real)s "$@"); rc=$?
sleep 2
echo "$out"
exit $rc
"""


def test_launcher_warning_does_not_reach_its_scheduler_commands(tmp_path, lsf):
    """LSF sends the warning action to the job, that is to its processes, and so does Grid
    Engine with s_rt's SIGUSR1 (a child of the job got it too); the emulator signals the job's
    process group. Were bsub/bjobs in the launcher's process group, the warning would kill the
    scheduler command it is running: here a slow bsub whose job LSF had already taken; the
    launcher would see 'bsub exit 138', submit the run again and, with the retry's pause, be
    killed at its run limit before it could submit itself again. hpsearch starts scheduler
    commands in a session of their own, so the warning (and a terminal's Ctrl-C) reaches the
    launcher alone."""
    bin_dir = os.path.join(str(tmp_path), "slow_bin")
    os.makedirs(bin_dir)
    marks = os.path.join(str(tmp_path), "bsub_signals")
    write_file(os.path.join(bin_dir, "bsub"), SLOW_BSUB % {
        "real": os.path.join(lh.EMULATOR_BIN, "bsub"), "marks": marks})
    os.chmod(os.path.join(bin_dir, "bsub"), 0o755)
    lsf.env["PATH"] = bin_dir + os.pathsep + lsf.env["PATH"]
    project = project_for(tmp_path, {"acc": [0.1, 0.2], "sleep": [0.5]})
    logs = os.path.join(str(tmp_path), "logs")
    os.makedirs(logs)
    script = os.path.join(str(tmp_path), "launcher.lsf")
    text = LAUNCHER_SCRIPT % {"logs": logs, "python": sys.executable, "hpsearch": HPSEARCH,
                              "config": project.config, "script": script}
    write_file(script, text.replace("--num_jobs=2", "--num_jobs=1"))
    with open(script) as f:   # -W 2 is 4 s: warned 2 s after the start
        rc, out, err = lsf.run("bsub", input=f.read(), cwd=project.path,
                               env={"LSF_EMULATOR_SECONDS_PER_MINUTE": "2"})
    assert rc == 0, err

    def settled():
        found = [j for j in lsf.jobs().values() if j["name"] == "hps_launcher"]
        if not found or not all(j["elements"]["0"]["stat"] in ("DONE", "EXIT") for j in found):
            return False
        return any("hpsearch: done:" in read(log_of(j)) for j in found) or \
            found[-1]["elements"]["0"]["stat"] == "EXIT"

    lsf.wait_for(settled, timeout=40, what="the launchers to finish or fail")
    found = sorted((j for j in lsf.jobs().values() if j["name"] == "hps_launcher"),
                   key=lambda j: j["id"])
    texts = "\n----\n".join(read(log_of(j)) for j in found)
    assert not os.path.exists(marks), "the launcher's warning killed its bsub:\n%s" % texts
    for job in found:
        assert job["elements"]["0"]["stat"] == "DONE", texts
    assert "hpsearch: done: 2 finished" in texts, texts
