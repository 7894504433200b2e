"""hpsearch on LSF (--run_cluster --scheduler=lsf), against the LSF emulator in tests/lsf_emulator/
(first on PATH, state in a per-test LSF_EMULATOR_DIR): plain jobs, -R from --resources, job
arrays and their throttle, failing jobs, the run limit, unreadable bjobs answers, bsub failures
and retries, one bjobs call per poll cycle, Ctrl-C (one bkill), and the launcher's own LSB_*
variables. Small grids, a tiny training script, --poll_interval=0.5; no tight timing asserts.
"""

import json
import os
import shlex
import signal
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import killed_if_left, make_project  # noqa: E402
import lsf_helpers as lh  # noqa: E402

CLUSTER = ("--run_cluster", "--scheduler=lsf", "--poll_interval=0.5")


@pytest.fixture
def lsf(tmp_path):
    emulator = lh.LsfEmulator(tmp_path)
    yield emulator
    emulator.cleanup()


def project_for(tmp_path, grid, name="proj"):
    return make_project(tmp_path, script_body=lh.TRAIN_SCRIPT, grid=grid, name=name)


def search(project, lsf, *args, **kwargs):
    """Run a cluster search; returns ``(rc, stdout, stderr)``. ``env``: extra variables."""
    return lh.cluster_search(project, lsf, CLUSTER + args, **kwargs)


ok = lh.ok


def job_record(run_dir):
    with open(os.path.join(run_dir, "job.json")) as f:
        return json.load(f)


def submitted_ids(lsf):
    return [str(c["job_id"]) for c in lsf.calls("bsub") if c["rc"] == 0]


def test_plain_jobs_finish_with_results_and_logs_in_run_folders(tmp_path, lsf):
    project = project_for(tmp_path, {"acc": [0.25, 0.5, 0.75], "sleep": [0.3]})
    ok(search(project, lsf))
    s = project.search()
    runs = s.runs()
    assert len(runs) == 3
    assert s.final_states() == {r["name"]: "finished" for r in runs}
    header, rows = s.results()
    assert len(rows) == 3
    assert {r["hpsearch_state"] for r in rows} == {"finished"}
    assert {r["hpsearch_exit_code"] for r in rows} == {"0"}
    assert [r["acc"] for r in rows] == ["0.75", "0.5", "0.25"]   # sorted, best first

    bsubs = lsf.calls("bsub")
    assert len(bsubs) == 3 and all(c["rc"] == 0 for c in bsubs)
    by_name = {c["argv"][c["argv"].index("-J") + 1]: c for c in bsubs}
    job_names = s.job_names()   # <run>-a<attempt>-<folder tag>
    assert sorted(by_name) == sorted(job_names.values())
    for run in runs:
        name, run_dir = run["name"], run["out_dir"]
        job = job_names[name]
        assert job.startswith(name + "-a1-")
        argv = by_name[job]["argv"]
        log = os.path.join(s.path, "jobs", name + ".a1.scheduler.log")
        assert argv[argv.index("-o") + 1] == log and argv[argv.index("-e") + 1] == log
        assert argv[argv.index("-n") + 1] == "1"
        assert argv[argv.index("-W") + 1] == "24:00"        # --num_hours default
        # --resources default: its enclosing double quotes are not part of -R
        assert argv[argv.index("-R") + 1] == "rusage[mem=8000, ngpus_excl_p=1]"
        # what LSF's shell runs: the job's script (one command line; see test with a space)
        command = lsf.jobs()[by_name[job]["job_id"]]["command"]
        assert shlex.split(command) == ["/bin/sh", os.path.join(s.path, "jobs", name + ".sh"),
                                        "1"]   # the attempt
        # the run's own output, command and exit status went into its folder
        with open(os.path.join(run_dir, "job_%s.out" % name)) as f:
            assert "hello stdout from %s" % name in f.read()
        with open(os.path.join(run_dir, "job_%s.err" % name)) as f:
            assert "hello stderr from %s" % name in f.read()
        assert os.path.isfile(os.path.join(run_dir, "hpsearch_command.sh"))
        # it really ran as the LSF job hpsearch submitted
        lsb = job_record(run_dir)["lsb"]
        assert lsb["LSB_JOBID"] == str(by_name[job]["job_id"])
        assert lsb["LSB_JOBINDEX"] == "0" and lsb["LSB_JOBNAME"] == job
    left = sorted(os.listdir(os.path.join(s.path, "jobs")))
    assert not [f for f in left if f.endswith((".out", ".err", ".sh"))], left
    assert lsf.calls("bkill") == []


def test_scheduler_log_with_lsf_job_report_ends_in_run_folder(tmp_path, lsf):
    """LSF appends the job's -o file (its job report) when the job ends, which is after the
    job script wrote its exit status. The emulator delays that by 0.5 s
    (LSF_EMULATOR_REPORT_DELAY), well within one --poll_interval; the report must still end
    up in the run's folder as hpsearch_scheduler.log, not be left behind in jobs/."""
    project = project_for(tmp_path, {"acc": [0.25, 0.75]})
    ok(search(project, lsf, "--poll_interval=2", env={"LSF_EMULATOR_REPORT_DELAY": "0.5"}))
    lsf.wait_all_finished()   # LSF has written every job report by now
    s = project.search()
    for run in s.runs():
        kept = os.path.join(run["out_dir"], "hpsearch_scheduler.log")
        assert os.path.isfile(kept), "no LSF job report in %s; jobs/ holds %s" % (
            run["out_dir"], sorted(os.listdir(os.path.join(s.path, "jobs"))))
        with open(kept) as f:
            assert "Successfully completed." in f.read()
    assert not [f for f in os.listdir(os.path.join(s.path, "jobs"))
                if f.endswith(".scheduler.log")]


def test_array_is_one_submission_throttled_to_num_jobs(tmp_path, lsf):
    project = project_for(tmp_path, {"acc": [0.1, 0.2, 0.3, 0.4, 0.5], "sleep": [0.4]})
    ok(search(project, lsf, "--array", "--num_jobs=2"))
    s = project.search()
    runs = s.runs()
    assert s.final_states() == {r["name"]: "finished" for r in runs}
    bsubs = lsf.calls("bsub")
    assert len(bsubs) == 1, [c["argv"] for c in bsubs]
    argv = bsubs[0]["argv"]
    first = sorted(r["name"] for r in runs)[0]
    assert argv[argv.index("-J") + 1] == "%s[1-5]%%2" % s.job_names()[first]
    array_id = str(bsubs[0]["job_id"])
    # every run got its own configuration (the script refuses an existing folder) and ran
    # as one element of the array
    intervals, indexes = [], set()
    for run in runs:
        rec = job_record(run["out_dir"])
        assert rec["lsb"]["LSB_JOBID"] == array_id
        indexes.add(rec["lsb"]["LSB_JOBINDEX"])
        assert "--acc=%s" % run["args"]["acc"] in rec["argv"]
        intervals.append((rec["start"], rec["end"]))
    assert indexes == {"1", "2", "3", "4", "5"}
    assert lh.max_overlap(intervals) <= 2
    # bjobs is asked about the array, not about each element
    for call in lsf.calls("bjobs"):
        assert [a for a in call["argv"] if a.isdigit()] == [array_id]


def test_failing_job_is_failed_with_its_exit_code(tmp_path, lsf):
    project = project_for(tmp_path, {"exit": [0, 3]})
    rc, out, err = search(project, lsf)
    s = project.search()
    states = {r["args"]["exit"]: s.final_states()[r["name"]] for r in s.runs()}
    assert states == {0: "finished", 3: "failed"}, (out, err)
    _, rows = s.results()
    codes = {r["exit"]: (r["hpsearch_state"], r["hpsearch_exit_code"]) for r in rows}
    assert codes == {"0": ("finished", "0"), "3": ("failed", "3")}
    failed = [e for e in s.journal() if e["state"] == "failed"]
    assert len(failed) == 1 and failed[0]["exit_code"] == 3


def test_run_limit_kill_is_recorded_with_the_reason_from_bjobs(tmp_path, lsf):
    """-W counts minutes; LSF_EMULATOR_SECONDS_PER_MINUTE=1 makes '-W 1' one second. The
    later -W (from --scheduler_args) wins over hpsearch's own '-W 24:00'."""
    project = project_for(tmp_path, {"sleep": [0.1, 30]})
    t0 = time.time()
    res = search(project, lsf, "--scheduler_args=-W 1",
                 env={"LSF_EMULATOR_SECONDS_PER_MINUTE": "1"})
    assert time.time() - t0 < 25
    s = project.search()
    states = {r["args"]["sleep"]: s.final_states()[r["name"]] for r in s.runs()}
    assert states == {0.1: "finished", 30: "killed"}, res
    killed = [e for e in s.journal() if e["state"] == "killed"]
    assert len(killed) == 1
    assert "TERM_RUNLIMIT" in killed[0]["reason"], killed[0]
    _, rows = s.results()
    assert {r["sleep"]: r["hpsearch_state"] for r in rows} == {"0.1": "finished",
                                                                 "30": "killed"}
    argv = lsf.calls("bsub")[0]["argv"]
    assert argv.count("-W") == 2 and argv[argv.index("-W", argv.index("-W") + 1) + 1] == "1"


def test_garbled_bjobs_answer_never_ends_a_job(tmp_path, lsf):
    """While bjobs prints garbage, a job that was killed (no exit status written) stays
    running in hpsearch's eyes, and one that wrote its exit status ends normally; once bjobs
    answers again the killed one is recorded killed, with the queue's reason."""
    garble = os.path.join(lsf.dir, "garble_bjobs")   # same as LSF_EMULATOR_GARBLE_BJOBS=1
    open(garble, "w").close()
    project = project_for(tmp_path, {"sleep": [0.2, 30]})
    env = lsf.full_env({"LSF_EMULATOR_SECONDS_PER_MINUTE": "1"})
    proc = lh.start_hpsearch(["--grid_module=%s" % project.config, "--run_cluster",
                              "--scheduler=lsf", "--poll_interval=0.5",
                              "--scheduler_args=-W 1"], project.path, env)
    with killed_if_left(proc):
        lsf.wait_for(lambda: [e for e in lsf.elements().values() if e["stat"] == "EXIT"],
                     what="the run limit to kill the long job")
        polls_before = len(lsf.calls("bjobs"))
        lsf.wait_for(lambda: len(lsf.calls("bjobs")) >= polls_before + 4,
                     what="four more (garbled) bjobs calls")
        assert proc.poll() is None, proc.communicate()
        s = project.search()
        by_sleep = {r["args"]["sleep"]: r["name"] for r in s.runs()}
        states = s.final_states()
        assert states == {by_sleep[0.2]: "finished", by_sleep[30]: "running"}
        os.unlink(garble)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 1, (out, err)   # ran to its end; one run was killed
    assert "cannot read bjobs" in err
    killed = [e for e in s.journal() if e["state"] == "killed"]
    assert len(killed) == 1 and killed[0]["run"] == by_sleep[30]
    assert "TERM_RUNLIMIT" in killed[0]["reason"]


def test_bsub_failing_twice_is_retried_and_the_search_goes_on(tmp_path, lsf):
    project = project_for(tmp_path, {"acc": [0.1, 0.2, 0.3]})
    out, err = ok(search(project, lsf, env={"LSF_EMULATOR_FAIL_BSUB": "2"}))
    s = project.search()
    assert set(s.final_states().values()) == {"finished"}
    assert len(s.final_states()) == 3
    rcs = [c["rc"] for c in lsf.calls("bsub")]
    assert rcs[:2] != [0, 0] and rcs.count(0) == 3 and len(rcs) == 5, rcs
    assert "trying again" in err


def test_bsub_failing_always_fails_that_run_only(tmp_path, lsf):
    project = project_for(tmp_path, {"acc": [0.1, 0.2, 0.3]})
    rc, out, err = search(project, lsf, env={"LSF_EMULATOR_FAIL_BSUB": "-1",
                                             "LSF_EMULATOR_FAIL_BSUB_JOBNAME": "_2-a"})
    s = project.search()
    names = sorted(s.final_states())
    states = s.final_states()
    assert states[names[1]] == "failed"
    assert states[names[0]] == states[names[2]] == "finished", (out, err)
    failed = [e for e in s.journal() if e["state"] == "failed"]
    assert len(failed) == 1 and failed[0]["reason"].startswith("submission failed")
    attempts = [c for c in lsf.calls("bsub") if c["argv"][c["argv"].index("-J") + 1]
                == s.job_names()[names[1]]]
    assert len(attempts) >= 2 and all(c["rc"] != 0 for c in attempts)
    _, rows = s.results()
    assert sorted(r["hpsearch_state"] for r in rows) == ["failed", "finished", "finished"]


def test_one_bjobs_call_per_poll_cycle_for_all_jobs(tmp_path, lsf):
    project = project_for(tmp_path, {"acc": [0.1, 0.2, 0.3, 0.4], "sleep": [1.5]})
    ok(search(project, lsf))
    ids = submitted_ids(lsf)
    assert len(ids) == 4
    bjobs = lsf.calls("bjobs")
    assert bjobs, "the queue was never asked"
    first_submit = min(c["time"] for c in lsf.calls("bsub"))
    span = bjobs[-1]["time"] - first_submit
    # one call per --poll_interval=0.5 at most, never one per job
    assert len(bjobs) <= span / 0.5 + 2, (len(bjobs), span)
    # each call asks about exactly the jobs going at that moment: submitted (journal
    # 'running') before it, ended after it (hpsearch writes no journal line during a call)
    journal = project.search().journal()
    spans = {}
    for entry in journal:
        spans.setdefault(entry["run"], {})[entry["state"] == "running"] = entry
    going = [(e[True]["time"], e[False]["time"], e[True]["job_id"]) for e in spans.values()]
    assert any(len([a for a in c["argv"] if a.isdigit()]) > 1 for c in bjobs)
    for call in bjobs:
        asked = sorted(a for a in call["argv"] if a.isdigit())
        assert asked == sorted(j for start, end, j in going if start < call["time"] < end)
    for call in bjobs:
        assert call["argv"][:4] == ["-a", "-noheader", "-o",
                                    "jobid jobindex stat exit_code exit_reason "
                                    "delimiter='|'"]


def test_ctrl_c_cancels_all_jobs_with_one_bkill(tmp_path, lsf):
    project = project_for(tmp_path, {"acc": [0.1, 0.2, 0.3], "sleep": [30]})
    env = lsf.full_env({"LSF_EMULATOR_TERMINATE_INTERVAL": "0.5"})
    proc = lh.start_hpsearch(["--grid_module=%s" % project.config] + list(CLUSTER),
                             project.path, env)
    with killed_if_left(proc):
        lsf.wait_for(lambda: len(lsf.elements()) == 3 and all(
            e["stat"] == "RUN" for e in lsf.elements().values()), what="3 running jobs")
        s = lsf.wait_for(lambda: project.searches() and project.search(), what="search")
        lsf.wait_for(lambda: all(os.path.isdir(r["out_dir"]) for r in s.runs()),
                     what="the training scripts to start")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130, (out, err)
    bkills = lsf.calls("bkill")
    assert len(bkills) == 1, bkills
    assert sorted(bkills[0]["argv"]) == sorted(submitted_ids(lsf))
    assert bkills[0]["lsb_env"] == {}
    lsf.wait_all_finished()
    for el in lsf.elements().values():
        assert el["stat"] == "EXIT" and el["exit_reason"].startswith("TERM_OWNER")
        assert not lh.pid_alive(el["pid"])
    states = s.final_states()
    assert set(states.values()) == {"killed"} and len(states) == 3
    assert "--resume" in out


def test_launcher_lsb_variables_do_not_reach_jobs(tmp_path, lsf):
    """hpsearch itself may run inside an LSF job: its LSB_* settings must not leak into the
    jobs it submits (LSF copies the submission environment into the job)."""
    project = project_for(tmp_path, {"acc": [0.1, 0.2]})
    leak = {"LSB_JOBID": "999", "LSB_JOBINDEX": "3", "LSB_JOBNAME": "launcher",
            "LSB_MCPU_HOSTS": "fakehost 4", "LSB_DJOB_HOSTFILE": "/nonexistent/hostfile"}
    ok(search(project, lsf, '--resources="select[mem>100] rusage[mem=100]"', env=leak))
    s = project.search()
    assert set(s.final_states().values()) == {"finished"}
    for call in lsf.calls("bsub"):
        # the launcher's own LSB_* stay behind; LSB_NTRIES=1 is hpsearch's (one try at a
        # pending job threshold, the refusal holds the runs instead of blocking in bsub)
        assert call["lsb_env"] == {"LSB_NTRIES": "1"}, call["lsb_env"]
        argv = call["argv"]
        assert argv[argv.index("-R") + 1] == "select[mem>100] rusage[mem=100]"
    ids = dict(zip([c["argv"][c["argv"].index("-J") + 1] for c in lsf.calls("bsub")],
                   submitted_ids(lsf)))
    for run in s.runs():
        lsb = job_record(run["out_dir"])["lsb"]
        assert lsb["LSB_JOBID"] == ids[s.job_names()[run["name"]]] != "999"
        assert lsb["LSB_JOBINDEX"] == "0"
        assert "LSB_MCPU_HOSTS" not in lsb and "LSB_DJOB_HOSTFILE" not in lsb, lsb


def test_search_folder_path_with_a_space(tmp_path, lsf):
    """LSF runs 'command [arguments]' as one line through /bin/sh, so the job's script path
    must reach it quoted."""
    project = project_for(tmp_path, {"acc": [0.1, 0.2]}, name="my project")
    res = search(project, lsf)
    s = project.search()
    assert set(s.final_states().values()) == {"finished"}, res
    assert res[0] == 0
