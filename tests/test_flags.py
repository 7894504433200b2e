"""Flags and promises of the README that no other test pinned (issue 16): each test runs
hpsearch (or its GPU policy) with a non-default value and checks the effect, so that breaking
the code behind it turns a test red. tests/README.md maps every flag to its tests.

Local and GPU flags, the signals' grace periods, refused values, resume's pid guard and two
postprocessing rules; the cluster flags are in test_flags_cluster.py.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

import gpu_helpers as gh
import hpsearch
from conftest import (HPSEARCH, REPO, SCRIPT_TOOLS, SearchDir, killed_if_left, ledger,
                      ledger_path, make_project, read_csv, run_hpsearch, wait_for)
from test_gpus import G, Smi, slots

# A training script that notes its pid when it starts and the time of every SIGTERM it gets,
# which it ignores; it would go on for SECONDS seconds.
STUBBORN_SCRIPT = SCRIPT_TOOLS + r'''
import signal

opts = options(sys.argv[1:])
os.makedirs(opts["out_dir"])
signal.signal(signal.SIGTERM, lambda signum, frame: note("term", "%f" % time.time()))
note("started", "%d" % os.getpid())
deadline = time.time() + float(opts.get("seconds", 30))
while time.time() < deadline:
    time.sleep(0.02)
'''

POST = os.path.join(REPO, "hpsearch_postprocessing.py")

# hpsearch.py with a shorter grace between a SIGTERM and its SIGKILL (--run_timeout's, or
# Ctrl-C's: class attributes, not flags): the rule is the same, the test waits less.
SHORT_GRACE = ("import sys; sys.path.insert(0, %r); import hpsearch; "
               "hpsearch.LocalBackend.TIMEOUT_GRACE = %%r; sys.exit(hpsearch.main())" % REPO)
SHORT_STOP_GRACE = SHORT_GRACE.replace("LocalBackend.TIMEOUT_GRACE", "Search.STOP_GRACE")


@pytest.fixture(name="env")
def gpu_env(tmp_path):
    """Fake GPUs for hpsearch (tests/fake_bin/nvidia-smi)."""
    return gh.Env(tmp_path)


@pytest.fixture(name="clock")
def fake_clock(monkeypatch):
    """hpsearch.now under the test's control (GpuSlots' holds and polls)."""
    c = gh.FakeClock()
    monkeypatch.setattr(hpsearch, "now", c)
    return c


def stubborn_project(tmp_path, seconds=30):
    project = make_project(tmp_path, script_body=STUBBORN_SCRIPT, grid={"seconds": [seconds]})
    os.makedirs(ledger_path(project))
    return project


def last_entry(search, state=None):
    """The last journal entry (of ``state``, if given)."""
    return [e for e in search.journal() if state in (None, e["state"])][-1]


def gone(pid):
    """Whether no process (not even a zombie of ours) has this pid any more."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return hpsearch._proc_stat(pid) is None or hpsearch._proc_stat(pid)[0] == "Z"


# ----------------------------------------------------------------------------------------------
# Values hpsearch refuses
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag, words", [
    ("--max_retries=-1", "--max_retries"), ("--run_timeout=-1", "--run_timeout"),
    ("--local_jobs=0", "--local_jobs"), ("--max_num_jobs_per_gpu=0", "--max_num_jobs_per_gpu"),
    ("--gpu_poll_interval=0.05", "--gpu_poll_interval"), ("--num_searches=0", "--num_searches"),
])
def test_refused_values_exit_2_with_one_line_and_write_nothing(tmp_path, flag, words):
    project = make_project(tmp_path)
    rc, out, err = project.hpsearch(flag, timeout=15)
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == hpsearch.EXIT_USAGE == 2, (out, err)
    assert len(lines) == 1 and lines[0].startswith("hpsearch: error: "), err
    assert words in lines[0]
    assert not os.path.exists(project.out_base)


def test_the_lowest_accepted_values_run(tmp_path):
    project = make_project(tmp_path, grid={"acc": [0.5]})
    rc, out, err = project.hpsearch("--max_retries=0", "--run_timeout=0", "--local_jobs=1",
                                    "--gpu_poll_interval=0.1")
    assert rc == 0, (out, err)
    assert list(project.search().final_states().values()) == ["finished"]


# ----------------------------------------------------------------------------------------------
# --allowed_load / --allowed_memory given on the command line
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag, gpu_state, shown", [
    ("--allowed_load", {"utilization": 70}, "load 70% > 65% (--allowed_load)"),
    ("--allowed_memory", {"memory_used": 11469}, "memory 70% > 65% (--allowed_memory)"),
])
def test_gpu_limit_from_the_command_line_is_the_one_used(env, flag, gpu_state, shown):
    """A GPU 70 % busy: over the default 0.5; refused at 0.65 (the wait says why, with the
    given limit), taken at 0.8."""
    env.set_state([env.gpu(0, **gpu_state)])
    env.write_config({"idx": [1]})
    fast = ["--visible_gpus=0", "--sim_startup_time=0", "--gpu_poll_interval=0.1"]
    proc = env.start(flag + "=0.65", *fast)
    try:
        said = wait_for(lambda: shown in open(env._out.name).read()
                        + open(env._err.name).read(), 20)
        assert said, open(env._out.name).read() + open(env._err.name).read()
        assert env.runs() == [], "a run started on a GPU over the given limit"
    finally:
        proc.send_signal(signal.SIGINT)
        env.finish(proc)
    gh.remove_tree(env.out)
    res = env.run(flag + "=0.8", *fast)
    assert res.returncode == 0, (res.stdout, res.stderr)
    assert [r["cvd"] for r in env.runs()] == [env.uuid(0)]


# ----------------------------------------------------------------------------------------------
# Which GPU a run goes to when several could take it
# ----------------------------------------------------------------------------------------------


def test_gpu_choice_fewest_of_our_runs_first_then_least_memory_used(clock):
    smi = Smi([G(0, used=300), G(1, used=100), G(2, used=200), G(3, used=100)])
    s = slots(smi, per_gpu=2)
    order = [s.acquire()["_gpu"] for _ in range(8)]
    # Least memory first (ties: the order nvidia-smi lists them in); each GPU once before
    # any takes a second run.
    assert order == [1, 3, 2, 0, 1, 3, 2, 0]
    assert s.acquire() is None


def test_gpu_choice_goes_by_the_fraction_of_memory_not_mebibytes(clock):
    # GPU 0 uses less in MiB but more of what it has.
    s = slots(Smi([G(0, used=150, total=200), G(1, used=200, total=1000)]), max_memory=0.9)
    assert s.acquire()["_gpu"] == 1


def test_gpu_choice_a_released_gpu_takes_the_next_run(clock):
    s = slots(Smi([G(0, used=100), G(1, used=200)]), per_gpu=2)
    first, second = s.acquire(), s.acquire()
    assert (first["_gpu"], second["_gpu"]) == (0, 1)
    s.release(second)
    assert s.acquire()["_gpu"] == 1


def test_gpu_choice_unknown_memory_counts_as_free(clock):
    s = slots(Smi([G(0, used=100), G(1, used=None)]))
    assert s.acquire()["_gpu"] == 1


def test_gpu_choice_in_a_search(env):
    """End to end: the run goes to the visible GPU with the least memory in use."""
    env.set_state([env.gpu(0, memory_used=4000), env.gpu(1, memory_used=1000),
                   env.gpu(2, memory_used=2000)])
    env.write_config({"idx": [1]})
    res = env.run("--visible_gpus=0,1,2", "--sim_startup_time=0", "--gpu_poll_interval=0.1")
    assert res.returncode == 0, (res.stdout, res.stderr)
    assert [r["cvd"] for r in env.runs()] == [env.uuid(1)]


# ----------------------------------------------------------------------------------------------
# --run_timeout: SIGTERM, then SIGKILL for a run that ignores it
# ----------------------------------------------------------------------------------------------


def test_run_timeout_sigkills_a_run_that_ignores_sigterm_after_the_grace(tmp_path):
    project = stubborn_project(tmp_path)
    grace = 1.5
    rc, out, err = run_hpsearch(
        ["--grid_module=%s" % project.config, "--visible_gpus=-1", "--run_timeout=0.5"],
        project.path, timeout=20, prefix=[sys.executable, "-c", SHORT_GRACE % grace])
    assert rc == hpsearch.EXIT_RUNS_MISSED, (out, err)
    search = project.search()
    end = last_entry(search)
    assert end["state"] == "killed" and end["exit_code"] == 128 + signal.SIGKILL, end
    assert "--run_timeout=0.5s" in end["reason"]
    terms = [float(t) for (t,) in ledger(project, "term")]
    assert len(terms) == 1, terms
    assert terms[0] - last_entry(search, "running")["time"] >= 0.4
    assert end["time"] - terms[0] >= grace - 0.1, "SIGKILL came before the grace was over"
    (pid,), = ledger(project, "started")
    assert wait_for(lambda: gone(int(pid)), 5)


# ----------------------------------------------------------------------------------------------
# Ctrl-C: SIGTERM to the runs, SIGKILL 5 s later (at once on a second Ctrl-C)
# ----------------------------------------------------------------------------------------------


def interrupt_launcher(argv, cwd, ready, env=None, again=None, launcher=(HPSEARCH,)):
    """Start ``hpsearch.py ARGV`` in ``cwd`` (``env`` updates the environment; None removes a
    variable), send it SIGINT once ``ready()`` holds and a second one once ``again()`` holds
    (if given); ``(exit status, stdout, stderr)``. ``launcher``: what runs in place of
    hpsearch.py (python's arguments)."""
    full_env = {k: v for k, v in dict(os.environ, **(env or {})).items() if v is not None}
    proc = subprocess.Popen([sys.executable] + list(launcher) + argv, cwd=cwd, env=full_env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True)
    with killed_if_left(proc):
        for condition in [ready] + ([again] if again else []):
            assert wait_for(condition, 30), "hpsearch did not get as far as the test wanted"
            proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    return proc.returncode, out, err


def start_and_interrupt(project, times, grace=None):
    """Search with the stubborn script, Ctrl-C ``times`` (1 or 2) once the run is going
    (``grace``: Ctrl-C's grace instead of 5 s);
    ``(exit status, output, time of its SIGTERM, time the launcher ended, the run's pid)``."""
    rc, out, err = interrupt_launcher(
        ["--grid_module=%s" % project.config, "--visible_gpus=-1"], project.path,
        lambda: ledger(project, "started"),
        again=(lambda: ledger(project, "term")) if times == 2 else None,
        launcher=(HPSEARCH,) if grace is None else ("-c", SHORT_STOP_GRACE % grace))
    ended = time.time()
    (term,), = ledger(project, "term")
    (pid,), = ledger(project, "started")
    return rc, out + err, float(term), ended, int(pid)


def test_ctrl_c_sigkills_a_run_that_ignores_sigterm_5_seconds_later(tmp_path):
    assert hpsearch.Search.STOP_GRACE == 5.0   # the README's 5 s; the test waits a shorter one
    project = stubborn_project(tmp_path)
    grace = 1.5
    rc, err, term, ended, pid = start_and_interrupt(project, 1, grace)
    assert rc == hpsearch.EXIT_INTERRUPTED == 130, err
    assert "press Ctrl-C again" in err
    assert grace - 0.1 <= ended - term < grace + 3, "SIGKILL %.1f s after SIGTERM, not %g" % (
        ended - term, grace)
    assert gone(pid)
    end = last_entry(project.search())
    assert end["state"] == "killed" and end["exit_code"] == 128 + signal.SIGKILL, end


def test_a_second_ctrl_c_kills_at_once(tmp_path):
    project = stubborn_project(tmp_path)
    rc, err, term, ended, pid = start_and_interrupt(project, 2)
    assert rc == 130, err
    assert ended - term < 3, "a second Ctrl-C waited %.1f s" % (ended - term)
    assert wait_for(lambda: gone(pid), 5)


def test_a_launcher_that_cannot_go_on_stops_local_runs_with_the_ctrl_c_grace():
    """SIGUSR1 near the launcher's time limit, or its own files failing: local runs, which
    cannot outlive it, are stopped as on Ctrl-C (SIGTERM, SIGKILL 5 s later) and counted."""
    graces = []

    class Backend(hpsearch.LocalBackend):
        def __init__(self):   # no runs: only what abandon() asks of them
            pass

        def running(self):
            return 2

        def stop(self, grace, hurry=None):
            graces.append(grace)
    assert Backend().abandon() == "2 run(s) stopped"
    assert graces == [hpsearch.Search.STOP_GRACE]


# ----------------------------------------------------------------------------------------------
# --resume: a journaled pid that now belongs to another process is left alone
# ----------------------------------------------------------------------------------------------


def decoy():
    """A process of its own group that is no run of ours."""
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"],
                            start_new_session=True)


def journal_as_if_running(search, run_name, pid, job_start):
    """The journal of a launcher killed while ``run_name`` ran as process ``pid``."""
    started = [e for e in search.journal() if e["run"] == run_name and e["state"] == "running"]
    entry = dict(started[-1], job_id=pid, job_start=job_start, time=time.time())
    with open(search.file("run_journal.jsonl"), "a") as f:
        f.write(json.dumps(entry) + "\n")


@pytest.mark.parametrize("same_process", [False, True])
def test_resume_stops_a_journaled_pid_only_if_it_is_still_the_run(tmp_path, same_process):
    project = make_project(tmp_path, grid={"acc": [0.5, 0.75]})
    rc, out, err = project.hpsearch("--deterministic_search")
    assert rc == 0, (out, err)
    search = project.search()
    name = sorted(search.final_states())[0]
    other = decoy()
    try:
        started = hpsearch.process_start_time(other.pid)
        assert started is not None
        # The pid was the run's; a new process has it now (another start time) or not.
        journal_as_if_running(search, name, other.pid,
                              started if same_process else started + 1000)
        rc, out, err = run_hpsearch(["--resume", search.path, "--visible_gpus=-1"],
                                    project.path)
        assert rc == 0, (out, err)
        if same_process:
            assert other.wait(10) == -signal.SIGTERM
            assert "stopping 1 run(s) left over" in out
        else:
            assert other.poll() is None, "resume killed a process that is not a run"
            assert "left over" not in out
        assert search.final_states()[name] == "finished"
    finally:
        if other.poll() is None:
            other.kill()
        other.wait()


# ----------------------------------------------------------------------------------------------
# Postprocessing: runs in TO_BE_DELETED are not judged again; a running run's process gone
# ----------------------------------------------------------------------------------------------

KEEP_ABOVE = '''
def _keep(summary, criteria):
    return float(summary['acc']) >= criteria
_PERFORMANCE_EVAL_HANDLE = _keep
'''


def run_post(*args):
    proc = subprocess.Popen([sys.executable, POST] + list(args), cwd=REPO,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out, err


def test_criteria_again_leaves_runs_already_in_to_be_deleted_alone(tmp_path):
    project = make_project(tmp_path, grid={"acc": [0.25, 0.5, 0.75, 0.9]},
                           config_extra=KEEP_ABOVE)
    rc, out, err = project.hpsearch("--deterministic_search")
    assert rc == 0, (out, err)
    search = project.search()
    trash = search.file("TO_BE_DELETED")
    rc, out, err = run_post(search.path, "--performance_criteria", "0.6")
    assert rc == 0, (out, err)
    assert "moved 2 run folder(s)" in out
    first = sorted(os.listdir(trash))
    # Stricter: only the two runs still in place are judged, and the 0.75 one moves; those in
    # TO_BE_DELETED stay as they are (judged again, they would move to <name>_2 there).
    rc, out, err = run_post(search.path, "--performance_criteria", "0.8")
    assert rc == 0, (out, err)
    assert "moved 1 run folder(s)" in out, out
    added = sorted(set(os.listdir(trash)) - set(first))
    assert len(added) == 1 and set(first) <= set(os.listdir(trash)), os.listdir(trash)
    with open(os.path.join(trash, added[0], "argv.json")) as f:
        assert "--acc=0.75" in json.load(f)


def test_a_runs_times_are_those_of_its_last_attempt():
    """The duration postprocessing shows runs from the last attempt's launch to its end."""
    import hpsearch_postprocessing as post
    entries = [{"attempt": 1, "state": "running", "time": 10.0},
               {"attempt": 1, "state": "failed", "time": 20.0},
               {"attempt": 2, "state": "running", "time": 30.0},
               {"attempt": 2, "state": "finished", "time": 45.0}]
    assert post.run_times(entries) == (30.0, 45.0)
    assert post.run_times(entries[:3]) == (30.0, None)   # still going


def test_postprocessing_counts_a_submission_under_way_as_running(tmp_path):
    """The journal's last line for a run is 'submitting' (a cluster launcher writes it before
    the submit command runs): the run is going, whatever an earlier attempt left."""
    project = make_project(tmp_path, grid={"acc": [0.5]})
    rc, out, err = project.hpsearch()
    assert rc == 0, (out, err)
    search = project.search()
    (name,) = search.final_states()
    started = [e for e in search.journal() if e["run"] == name and e["state"] == "running"]
    entry = dict(started[-1], state="submitting", job_name=name + "-a1-tag", time=time.time())
    del entry["job_id"]
    with open(search.file("run_journal.jsonl"), "a") as f:
        f.write(json.dumps(entry) + "\n")
    rc, out, err = run_post(search.path)
    assert rc == 0, (out, err)
    _, rows = read_csv(search.file("postprocessing_results.csv"))
    assert [r["hpsearch_state"] for r in rows] == ["running"]


@pytest.mark.parametrize("alive", [True, False])
def test_postprocessing_tells_a_running_run_whose_process_is_gone(tmp_path, alive):
    project = make_project(tmp_path, grid={"acc": [0.5]})
    rc, out, err = project.hpsearch()
    assert rc == 0, (out, err)
    search = project.search()
    (name,) = search.final_states()
    proc = decoy()
    try:
        journal_as_if_running(search, name, proc.pid, hpsearch.process_start_time(proc.pid))
        if not alive:
            proc.kill()
            proc.wait()
        rc, out, err = run_post(search.path)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert rc == 0, (out, err)
    _, rows = read_csv(search.file("postprocessing_results.csv"))
    assert [r["hpsearch_state"] for r in rows] == ["running"]
    reason = rows[0]["hpsearch_reason"]
    if alive:
        assert "process is gone" not in reason + out
    else:
        assert "its process is gone" in reason and "its process is gone" in out


def test_a_gone_process_is_only_told_for_a_search_that_ran_here(tmp_path):
    """A cluster search's job ids are no process ids: no 'process is gone' for them."""
    project = make_project(tmp_path, grid={"acc": [0.5]})
    rc, out, err = project.hpsearch()
    assert rc == 0, (out, err)
    search = SearchDir(project.search().path)
    (name,) = search.final_states()
    journal_as_if_running(search, name, 999999999, 1)
    record = search.record()
    record["scheduler"] = "slurm"
    with open(search.file("search_record.json"), "w") as f:
        json.dump(record, f)
    rc, out, err = run_post(search.path)
    assert rc == 0, (out, err)
    assert "process is gone" not in out


# ----------------------------------------------------------------------------------------------
# --es_min_step, --es_max_step, --es_eta, --es_step_key: the rungs the search uses
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags, rungs, keep", [
    (["--es_min_step=2", "--es_max_step=18", "--es_eta=3"], [2, 6], 1 / 3.0),
    (["--es_min_step=1", "--es_max_step=9", "--es_eta=2"], [1, 2, 4, 8], 0.5),
])
def test_early_stopping_flags_make_the_rungs(flags, rungs, keep):
    args = hpsearch.build_parser().parse_args(
        ["--grid_module=x", "--early_stopping=asha", "--es_step_key=epoch"] + flags)
    config = type("Config", (), {"performance_sort_asc": True})
    watcher = hpsearch.make_early_stopping(args, config, None, [], None)
    assert watcher.step_key == "epoch"
    assert watcher.table.rungs == rungs
    assert watcher.table.keep_share == pytest.approx(keep)
    assert watcher.table.sign == -1.0   # _PERFORMANCE_SORT_ASC: lower is better
