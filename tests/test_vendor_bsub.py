"""_vendor/bsub.py, our stand-in for the PyPI bsub package, against the LSF emulator
(tests/lsf_emulator/): submitting with hypnettorch-style options, job ids, running_jobs(),
poll(), then(), bkill/kill, the '<' and '|' short forms, script files, failures, and how it
finds hpsearch.py."""

import os
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import lsf_helpers as lh  # noqa: E402

import hpsearch  # noqa: E402

VENDOR = os.path.join(lh.REPO, "_vendor")


@pytest.fixture
def lsf(tmp_path, monkeypatch):
    emulator = lh.LsfEmulator(tmp_path, LSF_EMULATOR_TERMINATE_INTERVAL=0.3)
    for key, value in emulator.env.items():
        if value is None:
            monkeypatch.delenv(key, raising=False)
        else:
            monkeypatch.setenv(key, value)
    yield emulator
    emulator.cleanup()


@pytest.fixture
def bsub_module(monkeypatch):
    monkeypatch.syspath_prepend(VENDOR)
    monkeypatch.delitem(sys.modules, "bsub", raising=False)
    import bsub as module
    assert getattr(module, "HPSEARCH_STAND_IN", False), module.__file__
    yield module
    sys.modules.pop("bsub", None)


@pytest.fixture
def bsub(bsub_module):
    return bsub_module.bsub


def test_submit_with_hypnettorch_options(lsf, bsub, tmp_path, capsys):
    out, err = str(tmp_path / "job_x.out"), str(tmp_path / "job_x.err")
    job = bsub(job_name="job_x", R='"rusage[mem=8000, ngpus_excl_p=1]"', n=1, W="4:00",
               e=err, o=out, verbose=True)
    assert job.job_id is None
    same = job("echo to stdout; echo to stderr >&2")
    assert same is job and job.job_id.isdigit()
    call = lsf.calls("bsub")[-1]
    assert call["argv"] == ["-J", "job_x", "-R", "rusage[mem=8000, ngpus_excl_p=1]", "-n", "1",
                            "-W", "4:00", "-e", err, "-o", out,
                            "echo to stdout; echo to stderr >&2"]
    assert call["job_id"] == int(job.job_id)
    shown = capsys.readouterr().err
    assert "bsub -J job_x -R 'rusage[mem=8000, ngpus_excl_p=1]'" in shown
    assert job.job_id in shown
    assert bsub.poll(job.job_id, interval=0.2, timeout=20) is True
    with open(out) as f:
        assert f.read().startswith("to stdout\n")
    with open(err) as f:
        assert f.read() == "to stderr\n"
    assert lsf.elements()[job.job_id]["stat"] == "DONE"
    # the object submits again with the same options; job_id follows the newest job
    first = job.job_id
    job("true")
    assert job.job_id != first and str(job).endswith(" true")


def test_running_jobs_poll_and_kill(lsf, bsub, tmp_path):
    go = str(tmp_path / "go")   # the array's elements wait for this file
    long_job = bsub("long")("sleep 30")
    array = bsub("arr[1-3]%1")("while [ ! -e %s ]; do sleep 0.05; done" % go)
    lsf.wait_for(lambda: lsf.elements()[long_job.job_id]["stat"] == "RUN", what="RUN")
    running = bsub.running_jobs()
    assert long_job.job_id in running and array.job_id in running
    assert len(running) == 2
    elements = bsub.running_jobs(elements=True)
    assert sorted(elements) == sorted([long_job.job_id] + ["%s[%d]" % (array.job_id, i)
                                                           for i in (1, 2, 3)])
    assert bsub.poll(long_job.job_id, interval=0.1, timeout=0.5) is False
    assert bsub.poll(array.job_id, interval=0.1, timeout=0.3) is False
    open(go, "w").close()
    assert bsub.poll(array.job_id, interval=0.2, timeout=20) is True
    assert array.job_id not in bsub.running_jobs()
    assert long_job.kill() is True
    assert bsub.poll([long_job.job_id, array.job_id], interval=0.2, timeout=20) is True
    assert bsub.running_jobs() == []
    assert lsf.elements()[long_job.job_id]["exit_reason"].startswith("TERM_OWNER")
    assert bsub.bkill(long_job.job_id) is False        # already finished
    assert [c["argv"] for c in lsf.calls("bkill")] == [[long_job.job_id]] * 2
    assert bsub.poll("424242", interval=0.1, timeout=5) is True   # unknown: not running


def test_bkill_of_one_array_element(lsf, bsub):
    array = bsub("arr[1-2]")("sleep 30")
    lsf.wait_for(lambda: len(lsf.elements()) == 2 and all(
        e["stat"] == "RUN" for e in lsf.elements().values()), what="RUN")
    assert bsub.bkill("%s[2]" % array.job_id) is True
    lsf.wait_for(lambda: lsf.elements()["%s[2]" % array.job_id]["stat"] == "EXIT",
                 what="element 2 killed")
    assert lsf.elements()["%s[1]" % array.job_id]["stat"] == "RUN"
    assert bsub.bkill([array.job_id]) is True
    assert bsub.poll(array.job_id, interval=0.2, timeout=20) is True


def test_then_starts_after_the_first_is_done(lsf, bsub, tmp_path):
    log = str(tmp_path / "chain.log")
    first = bsub("chain", o=log)("sleep 0.5; echo one")
    last = first.then("echo two").then("echo three", job_name="third")
    assert last.job_id != first.job_id
    assert lsf.calls("bsub")[-1]["argv"][:2] == ["-J", "third"]
    assert "-w" in lsf.calls("bsub")[-1]["argv"]
    assert bsub.poll(last.job_id, interval=0.2, timeout=20) is True
    with open(log) as f:
        text = f.read()
    assert text.index("one") < text.index("two") < text.index("three")


def test_script_file_and_short_forms(lsf, bsub, tmp_path):
    script = tmp_path / "run.sh"
    script.write_text("#BSUB -o %s\necho from script $LSB_JOBNAME\n" % (tmp_path / "s.log"))
    a = bsub("from_file", str(script))()
    b = bsub("from_lt") < str(script)
    c = "echo piped" | bsub("piped", o=str(tmp_path / "p.log"))
    assert str(b).endswith("< %s" % script)
    assert bsub.poll([a.job_id, b.job_id, c.job_id], interval=0.2, timeout=20)
    with open(str(tmp_path / "s.log")) as f:
        text = f.read()
    assert "from script from_file\n" in text and "from script from_lt\n" in text
    with open(str(tmp_path / "p.log")) as f:
        assert f.read().startswith("piped\n")
    with pytest.raises(ValueError):
        bsub("nothing")()


def test_failures_raise_scheduler_error(lsf, bsub, bsub_module, monkeypatch):
    assert bsub_module.SchedulerError is hpsearch.SchedulerError
    monkeypatch.setenv("LSF_EMULATOR_FAIL_BSUB", "1")
    job = bsub("fails")
    with pytest.raises(hpsearch.SchedulerError, match="bsub failed"):
        job("true")
    assert job.job_id is None
    assert job("true").job_id.isdigit()          # the next call goes through
    monkeypatch.setenv("LSF_EMULATOR_GARBLE_BJOBS", "1")
    with pytest.raises(hpsearch.SchedulerError):
        bsub.running_jobs()
    # an unreadable answer never counts as 'ended'
    assert bsub.poll(job.job_id, interval=0.1, timeout=0.5) is False


def test_own_lsb_variables_stay_out_of_submitted_jobs(lsf, bsub, monkeypatch):
    monkeypatch.setenv("LSB_JOBID", "999")
    monkeypatch.setenv("LSB_MCPU_HOSTS", "fakehost 4")
    job = bsub("clean")("true")
    assert lsf.calls("bsub")[-1]["lsb_env"] == {}
    assert bsub.poll(job.job_id, interval=0.2, timeout=20)


def test_python_m_bsub_waits_for_jobs(lsf, bsub):
    job = bsub("waited")("sleep 1")
    env = lsf.full_env({"PYTHONPATH": VENDOR})
    started = time.time()
    proc = subprocess.Popen([sys.executable, "-m", "bsub", job.job_id], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert lsf.elements()[job.job_id]["stat"] == "DONE"
    assert time.time() - started < 30


def test_finds_hpsearch_in_the_folder_above_vendor(tmp_path):
    code = ("import sys; sys.path.insert(0, %r); import bsub, hpsearch; "
            "print(bsub._hpsearch.__file__); print(hpsearch is bsub._hpsearch)" % VENDOR)
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=str(tmp_path), env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    path, same = out.split()
    assert os.path.samefile(path, os.path.join(lh.REPO, "hpsearch.py")) and same == "True"
