"""The LSF emulator (tests/lsf_emulator/) itself: that it prints what IBM's documentation says
LSF prints, runs jobs the way LSF does, and that its test knobs work. hpsearch's LSF tests
(test_lsf.py) and the bsub stand-in's (test_vendor_bsub.py) rely on this.
"""

import os
import re
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lsf_helpers as lh  # noqa: E402

FMT = "jobid jobindex stat exit_code exit_reason delimiter='|'"


@pytest.fixture
def lsf(tmp_path):
    emulator = lh.LsfEmulator(tmp_path, LSF_EMULATOR_SECONDS_PER_MINUTE=1,
                              LSF_EMULATOR_TERMINATE_INTERVAL=0.3)
    yield emulator
    emulator.cleanup()


def submit(lsf, *args, **kwargs):
    rc, out, err = lsf.run("bsub", *args, **kwargs)
    assert rc == 0, (out, err)
    m = re.match(r"^Job <(\d+)> is submitted to default queue <normal>\.$", out.strip())
    assert m, out
    return m.group(1)


def rows(lsf, *ids):
    rc, out, err = lsf.run("bjobs", "-a", "-noheader", "-o", FMT, *ids)
    return [line.split("|") for line in out.splitlines() if line.strip()]


def test_bsub_runs_job_and_appends_output_with_report(lsf, tmp_path):
    job = submit(lsf, "-J", "hello", "-o", "out.%J.log", "echo", "hi", "$LSB_JOBNAME")
    lsf.wait_all_finished()
    assert rows(lsf, job) == [[job, "0", "DONE", "0", "-"]]
    log = os.path.join(lsf.dir, "out.%s.log" % job)
    with open(log) as f:
        text = f.read()
    assert text.startswith("hi hello\n")   # one shell command line, run in the cwd
    assert "Successfully completed." in text
    # LSF appends: a second job writing to the same file keeps the first one's output
    job2 = submit(lsf, "-o", log, "-e", log, "sh -c 'echo second; echo oops >&2; exit 4'")
    lsf.wait_all_finished()
    with open(log) as f:
        text = f.read()
    assert text.startswith("hi hello\n") and "second\noops\n" in text
    assert "Exited with exit code 4." in text
    assert rows(lsf, job2) == [[job2, "0", "EXIT", "4", "-"]]
    rc, out, _ = lsf.run("bsub", "-q", "short", "true")
    assert re.match(r"^Job <\d+> is submitted to queue <short>\.$", out.strip())


def test_bsub_rejects_unknown_options_and_bad_values(lsf):
    rc, out, err = lsf.run("bsub", "-Z", "true")
    assert rc != 0 and "illegal option -- Z" in err and out == ""
    rc, out, err = lsf.run("bsub", "-W", "soon", "true")
    assert rc != 0 and err.strip().endswith("Job not submitted.")
    rc, out, err = lsf.run("bsub", "-J", "bad[0-3", "true")
    assert rc != 0 and "Job not submitted." in err
    rc, out, err = lsf.run("bsub")   # no command, nothing on stdin
    assert rc != 0 and "Job not submitted." in err
    assert lsf.jobs() == {}


def test_bsub_reads_job_from_stdin_with_bsub_directives(lsf):
    job = submit(lsf, "-o", "stdin.log", input="#BSUB -J fromstdin\n#BSUB -o ignored.log\n"
                                                "echo one\necho two $LSB_JOBNAME\n")
    lsf.wait_all_finished()
    with open(os.path.join(lsf.dir, "stdin.log")) as f:
        assert f.read().startswith("one\ntwo fromstdin\n")   # command line -o wins
    assert lsf.jobs()[int(job)]["name"] == "fromstdin"


def test_array_throttle_indexes_and_file_patterns(lsf):
    ledger = os.path.join(lsf.dir, "ledger")
    job = submit(lsf, "-J", "arr[1-5]%2", "-o", "arr.%J.%I.log",
                 "echo start $LSB_JOBINDEX $(date +%%s.%%N) >> %s; sleep 0.4; "
                 "echo end $LSB_JOBINDEX $(date +%%s.%%N) >> %s; "
                 "echo $LSB_JOBID $LSB_JOBINDEX $LSB_JOBNAME" % (ledger, ledger))
    lsf.wait_all_finished()
    assert rows(lsf, job) == [[job, str(i), "DONE", "0", "-"] for i in range(1, 6)]
    assert rows(lsf, "%s[3]" % job) == [[job, "3", "DONE", "0", "-"]]
    spans = {}
    with open(ledger) as f:
        for line in f:
            what, index, when = line.split()
            spans.setdefault(index, {})[what] = float(when)
    assert lh.max_overlap([(s["start"], s["end"]) for s in spans.values()]) == 2
    for i in range(1, 6):
        with open(os.path.join(lsf.dir, "arr.%s.%d.log" % (job, i))) as f:
            assert f.readline() == "%s %d arr[%d]\n" % (job, i, i)


def test_bjobs_formats_not_found_and_exit_codes(lsf):
    rc, out, err = lsf.run("bjobs")
    assert (rc, out, err.strip()) == (0, "", "No unfinished job found")
    rc, out, err = lsf.run("bjobs", "12345")
    assert rc == 255 and err.strip() == "Job <12345> is not found"
    job = submit(lsf, "-J", "a_rather_long_job_name", "sleep", "30")
    lsf.wait_for(lambda: lsf.elements()[job]["stat"] == "RUN", what="RUN")
    rc, out, err = lsf.run("bjobs")
    header, line = out.splitlines()
    assert header.split() == ["JOBID", "USER", "STAT", "QUEUE", "FROM_HOST", "EXEC_HOST",
                              "JOB_NAME", "SUBMIT_TIME"]
    cells = line.split()
    assert cells[0] == job and cells[2] == "RUN" and cells[3] == "normal"
    assert "*_job_name" in line and rc == 0          # shortened to 10 characters
    rc, out, err = lsf.run("bjobs", "-w")
    assert "a_rather_long_job_name" in out
    rc, out, err = lsf.run("bjobs", "-o", "id name:8 stat:-6 delimiter=','", job)
    assert out.splitlines() == ["JOBID,JOB_NAME,  STAT", "%s,*ob_name,   RUN" % job]
    # one id found, one not: both reported, exit 0 (255 with CONSISTENT_EXIT_CODE=Y)
    rc, out, err = lsf.run("bjobs", "-noheader", "-o", FMT, job, "99999")
    assert (rc, out, err) == (0, "%s|0|RUN|-|-\n" % job, "Job <99999> is not found\n")
    rc, _, _ = lsf.run("bjobs", job, "99999", env={"LSB_BJOBS_CONSISTENT_EXIT_CODE": "Y"})
    assert rc == 255
    rc, out, err = lsf.run("bjobs", "-o", "jobid nonsense")
    assert rc == 255 and "nonsense" in err
    rc, out, err = lsf.run("bjobs", "-Q")
    assert rc == 255 and "illegal option" in err


def test_run_limit_kills_with_termination_reason(lsf):
    job = submit(lsf, "-W", "24:00", "-W", "1", "-o", "lim.log", "sleep 30")   # later -W wins
    started = time.time()
    lsf.wait_all_finished(timeout=20)
    assert time.time() - started < 15
    assert rows(lsf, job) == [[job, "0", "EXIT", "140",
                               "TERM_RUNLIMIT: job killed after reaching LSF run time limit"]]
    with open(os.path.join(lsf.dir, "lim.log")) as f:
        assert "Exited with exit code 140." in f.read()
    rc, out, err = lsf.run("bjobs", job)    # finished: not shown without -a
    assert out == "" and "No unfinished job found" in err


def test_bkill_running_pending_and_unknown(lsf):
    job = submit(lsf, "-J", "k[1-3]%1", "sleep 30")
    lsf.wait_for(lambda: lsf.elements()["%s[1]" % job]["stat"] == "RUN", what="RUN")
    pid = lsf.elements()["%s[1]" % job]["pid"]
    rc, out, err = lsf.run("bkill", "%s[2]" % job)
    assert (rc, out) == (0, "Job <%s[2]> is being terminated\n" % job)
    rc, out, err = lsf.run("bkill", job, "4242")
    assert out == "Job <%s> is being terminated\n" % job
    assert err == "Job <4242>: No matching job found\n" and rc != 0
    lsf.wait_all_finished()
    assert rows(lsf, job) == [[job, str(i), "EXIT", code, "TERM_OWNER: job killed by owner"]
                              for i, code in ((1, "130"), (2, "-"), (3, "-"))]
    assert not lh.pid_alive(pid)
    rc, out, err = lsf.run("bkill", job)
    assert rc != 0 and err == "Job <%s>: Job has already finished\n" % job


def test_bkill_escalates_to_sigkill_for_jobs_that_ignore_sigint(lsf):
    job = submit(lsf, "trap '' INT TERM; sleep 30 & wait; sleep 30")
    lsf.wait_for(lambda: lsf.elements()[job]["stat"] == "RUN", what="RUN")
    time.sleep(0.2)   # let the shell set its traps
    lsf.run("bkill", job)
    lsf.wait_all_finished(timeout=15)
    assert rows(lsf, job)[0][2:4] == ["EXIT", "137"]


def test_dependency_waits_for_done(lsf):
    first = submit(lsf, "-o", "dep.log", "while [ ! -e go ]; do sleep 0.05; done; echo first")
    second = submit(lsf, "-w", "done(%s)" % first, "-o", "dep.log", "echo second")
    lsf.wait_for(lambda: lsf.elements()[first]["stat"] == "RUN", what="RUN")
    time.sleep(0.3)
    assert lsf.elements()[second]["stat"] == "PEND"
    open(os.path.join(lsf.dir, "go"), "w").close()
    lsf.wait_all_finished()
    with open(os.path.join(lsf.dir, "dep.log")) as f:
        text = f.read()
    assert text.index("first") < text.index("second")


def test_fail_bsub_knob_counts_and_filters_by_job_name(lsf):
    env = {"LSF_EMULATOR_FAIL_BSUB": "2"}
    results = [lsf.run("bsub", "-J", "x", "true", env=env)[0] for _ in range(3)]
    assert results[:2] != [0, 0] and results[2] == 0
    env = {"LSF_EMULATOR_FAIL_BSUB": "-1", "LSF_EMULATOR_FAIL_BSUB_JOBNAME": "_2$"}
    rc, out, err = lsf.run("bsub", "-J", "run_2", "true", env=env)
    assert rc != 0 and "Job not submitted." in err
    assert lsf.run("bsub", "-J", "run_3", "true", env=env)[0] == 0
    assert [c["rc"] == 0 for c in lsf.calls("bsub")] == [False, False, True, False, True]


def test_garbled_bjobs_and_lsb_env_log(lsf):
    rc, out, err = lsf.run("bjobs", "-a", env={"LSF_EMULATOR_GARBLE_BJOBS": "1"})
    assert rc == 0 and out.strip()
    assert not [line for line in out.splitlines() if len(line.split("|")) == 5]
    submit(lsf, "true", env={"LSB_JOBID": "999", "LSB_MCPU_HOSTS": "h 1"})
    call = lsf.calls("bsub")[-1]
    assert call["lsb_env"] == {"LSB_JOBID": "999", "LSB_MCPU_HOSTS": "h 1"}


def test_warning_action_signals_the_job_wt_minutes_before_its_run_limit(lsf):
    """bsub -W 4 -wa USR1 -wt 2 (LSF minutes of a second here): SIGUSR1 to the job's process
    group 2 minutes before the limit, once; the job goes on until the limit's SIGUSR2."""
    job = submit(lsf, "-W", "4", "-wa", "'USR1'", "-wt", "'2'", "-o", "warn.log",
                 "trap 'echo warned' USR1; i=0; while [ $i -lt 80 ]; do sleep 0.1; "
                 "i=$((i+1)); done; echo never")
    lsf.wait_all_finished(timeout=20)
    el = lsf.elements()[job]
    assert el["warning_sent"] is not None
    assert 1.5 <= el["warning_sent"] - el["start_time"] <= 3.0, el
    assert el["runlimit_hit"] - el["start_time"] >= 3.9, el
    assert rows(lsf, job)[0][2:5] == ["EXIT", "140", "TERM_RUNLIMIT: job killed after reaching "
                                      "LSF run time limit"]
    with open(os.path.join(lsf.dir, "warn.log")) as f:
        text = f.read()
    assert text.splitlines().count("warned") == 1 and "never" not in text.splitlines()
    # from #BSUB lines, two options on one line; -wa alone, or without -W, does nothing
    job2 = submit(lsf, input="#BSUB -W 2\n#BSUB -wa SIGUSR1 -wt 1\nsleep 3\n")
    job3 = submit(lsf, "-W", "2", "-wa", "USR1", "sleep 3")
    job4 = submit(lsf, "-wa", "USR1", "-wt", "1", "sleep 3")
    lsf.wait_all_finished(timeout=20)
    els = lsf.elements()
    assert els[job2]["warning_sent"] and rows(lsf, job2)[0][3] == str(128 + 10)  # USR1 kills
    assert not els[job3]["warning_sent"] and not els[job4]["warning_sent"]
    assert rows(lsf, job4)[0][2] == "DONE"
    rc, out, err = lsf.run("bsub", "-wa", "NOSUCHSIG", "-wt", "1", "true")
    assert rc == 255 and err.strip().endswith("Job not submitted.")
    rc, out, err = lsf.run("bsub", "-wa", "USR1", "-wt", "1:xx", "true")
    assert rc == 255 and err.strip().endswith("Job not submitted.")


def test_bparams_shows_max_job_array_size_and_bsub_enforces_it(lsf):
    rc, out, err = lsf.run("bparams", "-a")
    assert rc == 0 and re.search(r"^\s*MAX_JOB_ARRAY_SIZE = 1000$", out, re.M), out
    rc, out, err = lsf.run("bparams")
    assert rc == 0 and out.startswith("Default Queues:  normal\n")
    env = {"LSF_EMULATOR_MAX_JOB_ARRAY_SIZE": "4"}
    rc, out, err = lsf.run("bparams", "-a", env=env)
    assert re.search(r"^\s*MAX_JOB_ARRAY_SIZE = 4$", out, re.M), out
    submit(lsf, "-J", "ok[1-4]", "true", env=env)
    rc, out, err = lsf.run("bsub", "-J", "big[1-5]", "true", env=env)
    assert (rc, out, err) == (255, "", "Job array index too large. Job not submitted.\n")
    rc, out, err = lsf.run("bsub", "-J", "big[5]", "true", env=env)   # the index counts
    assert rc == 255
    rc, out, err = lsf.run("bparams", "-a", env={"LSF_EMULATOR_FAIL_BPARAMS": "1"})
    assert rc == 255 and out == ""
    assert [c["argv"] for c in lsf.calls("bparams")] == [["-a"], [], ["-a"], ["-a"]]


def test_job_slot_limit_and_pending_job_threshold(lsf):
    """MAX_JOBS=1: one element runs, the rest pend. MAX_PEND_JOBS=1: a bsub that would make
    two pending waits ('Pending job threshold reached. Retrying in ...') until one started;
    with SUB_TRIES it gives up instead."""
    env = {"LSF_EMULATOR_MAX_JOBS": "1", "LSF_EMULATOR_MAX_PEND_JOBS": "1",
           "LSF_EMULATOR_SUB_TRY_INTERVAL": "0.2"}
    first = submit(lsf, "sleep 1.5", env=env)
    second = submit(lsf, "sleep 0.2", env=env)
    lsf.wait_for(lambda: lsf.elements()[first]["stat"] == "RUN", what="RUN")
    time.sleep(0.3)
    assert lsf.elements()[second]["stat"] == "PEND"
    rc, out, err = lsf.run("bsub", "true", env=dict(env, LSB_NTRIES="2"))
    assert rc == 255 and err.endswith("Pending job threshold reached. Job not submitted.\n")
    assert re.match(r"^User <[^>]+>: Pending job threshold reached\. Retrying in 0\.2 "
                    r"seconds\.\.\.$", err.splitlines()[0]), err
    started = time.time()
    third = submit(lsf, "true", env=env)   # waits until the second job runs
    assert time.time() - started >= 0.5
    assert lsf.calls("bsub")[-1]["pend_waits"] >= 2
    lsf.wait_all_finished()
    els = lsf.elements()
    assert els[second]["start_time"] >= els[first]["finish_time"]
    assert els[third]["start_time"] >= els[second]["finish_time"]
