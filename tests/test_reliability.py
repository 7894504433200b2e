"""Reliability: resume after any crash, retries, clean cancellation, bad input never hurts.

Every search here runs a training script of its own (SCRIPT below) that keeps a ledger in
``<project>/ledger/``: ``pids.txt`` (every process it starts: the run, its child, the child's
child), ``done.txt`` (a line written only AFTER the summary says ``finished 1``, with SIGTERM
blocked in between so the two always go together), ``terms.txt`` (SIGTERMs a stubborn run
ignored) and a per-configuration attempt counter. What a run does is named by its grid value
``job=<mode>.<n>`` (see ``main()`` of SCRIPT).

Processes are "gone" when /proc says so or they are zombies: pid 1 of some VMs and containers
reaps orphans only now and then, or never. ``OrphanReaper`` makes this test process the child
subreaper while a search runs and reaps the processes the scripts recorded, as a prompt init
would (hpsearch waits for zombie-only process groups until they are reaped or its grace ends).

Every process of a test carries MARK=<project folder> in its environment; the autouse fixture
``no_leftovers`` kills what a failed test left running (only processes with that mark).

Timing margins are generous: this runs beside other tests on a busy 2-core machine.
"""

import csv
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest

import hpsearch
from conftest import (HPSEARCH, SCRIPT_TOOLS, SearchDir, ledger, ledger_path, make_project,
                      only_search, run_hpsearch, tree, wait_for, write_file)

SCRIPT = SCRIPT_TOOLS + r'''
import signal
import subprocess


def count_attempt(job):
    path = os.path.join(LEDGER, "attempts_" + job)
    note("attempts_" + job, "x")
    with open(path) as f:
        return len(f.read().splitlines())


CHILD = """
import os, signal, subprocess, sys
if sys.argv[2] == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # inherited by the sleep below
p = subprocess.Popen(["sleep", "300"])
with open(sys.argv[1], "a") as f:
    f.write("%d child\\n%d grandchild\\n" % (os.getpid(), p.pid))
p.wait()
"""


def summary(out, text):
    with open(os.path.join(out, "performance_overview.txt"), "wb") as f:
        f.write(text if isinstance(text, bytes) else text.encode())


def main():
    opts = options(sys.argv[1:])
    out = opts["out_dir"]
    job = opts.get("job", "ok.0")
    mode, _, num = job.partition(".")
    note("pids.txt", "%d leader %s" % (os.getpid(), job))
    if mode == "stubborn":
        signal.signal(signal.SIGTERM,
                      lambda s, f: note("terms.txt", "%d %s" % (os.getpid(), job)))
    if mode == "graceful":  # as many frameworks do: exit cleanly (status 1) on SIGTERM
        signal.signal(signal.SIGTERM, lambda s, f: sys.exit(1))
    if os.path.exists(out):  # as hypnettorch scripts: never reuse a folder
        sys.stderr.write("refusing to overwrite existing %s\n" % out)
        sys.exit(3)
    os.makedirs(out)
    attempt = count_attempt(job)
    note("starts.txt", "%s %s" % (job, out))
    print("started %s attempt %d" % (job, attempt))
    sys.stdout.flush()
    released = os.path.exists(os.path.join(LEDGER, "release"))
    if mode in ("children", "stubborn", "stubkids") or (mode == "hold" and not released):
        # stubkids: the run itself dies on SIGTERM, its child and grandchild ignore it
        subprocess.Popen([sys.executable, "-c", CHILD, os.path.join(LEDGER, "pids.txt"),
                          "stubborn" if mode == "stubkids" else mode])
        while True:
            time.sleep(1)
    if mode == "graceful":
        while True:
            time.sleep(1)
    if mode == "wait":  # until the test says go
        while not released:
            time.sleep(0.05)
            released = os.path.exists(os.path.join(LEDGER, "release"))
    if mode == "hang":
        while True:
            time.sleep(1)
    if mode == "flood":  # 300 MB to stdout, as fast as it goes
        chunk = b"y" * ((1 << 20) - 1) + b"\n"
        for _ in range(300):
            sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
    if mode == "exit1":
        summary(out, "acc 0.3\n")
        sys.exit(1)
    if mode == "crash":
        raise RuntimeError("crashing before writing a summary")
    if mode == "finished0":
        summary(out, "acc 0.4\nfinished 0\n")
        return
    if mode == "garbage":
        summary(out, b"acc \x00\xff\xfe;\"'\x1b[31m\r\nfinished \x00\x01\n\x80\x81\xc3 ;;\n")
        return
    if mode == "hugenum":
        summary(out, "acc 0.5\nfinished 1" + "0" * 400 + "\n")
        return
    if (mode == "flaky" and not released) or mode == "alwaysfail" \
            or (mode == "failfirst" and attempt <= 1) or (mode == "failtwice" and attempt <= 2):
        sys.exit(1)
    if mode == "unfinfirst" and attempt <= 1:
        summary(out, "acc 0.1\nfinished 0\n")
        return
    if mode == "sleepy":
        time.sleep(0.5 + (int(num) % 3) * 0.25)
    # Completion: the summary and the ledger line go together (no SIGTERM in between).
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM, signal.SIGINT])
    summary(out, "acc %s\nfinished 1\n" % (int(num or 0) / 100.0))
    note("done.txt", "%s %s" % (job, out))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM, signal.SIGINT])


main()
'''

KEYWORDS = ["acc", "finished"]


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------


# Every process of a test's searches carries MARK=<project folder> in its environment, so the
# teardown can tell them from processes that got a recorded pid later.
MARK = "HPSEARCH_RELIABILITY_TEST"
CREATED = []  # projects and launchers of the current test


def new_project(tmp_path, jobs, name="proj"):
    project = make_project(tmp_path, script_body=SCRIPT, grid={"job": list(jobs)},
                           summary_keywords=KEYWORDS, name=name)
    os.makedirs(ledger_path(project))
    CREATED.append(project)
    return project


def search_with(project, *args, **kwargs):
    """``project.hpsearch(...)`` (a new search, waited for) with the MARK set."""
    kwargs["env"] = {MARK: project.path}
    return project.hpsearch(*args, **kwargs)


def recorded_pids(project):
    return [int(parts[0]) for parts in ledger(project, "pids.txt")]


def alive(pid):
    """Whether ``pid`` is a live process (zombies count as gone)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except OSError:
        if os.path.isdir("/proc/self"):
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def journal_entries(path):
    """Every whole JSON line of a journal; the others are counted in ``bad``."""
    entries, bad = [], 0
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                entries.append(json.loads(line))
            except ValueError:
                bad += 1
    return entries, bad


def final_states(search):
    states = {}
    for entry in journal_entries(os.path.join(search, "run_journal.jsonl"))[0]:
        states[entry["run"]] = entry
    return states


def read_results(search):
    """``(header, rows)`` of search_results.csv, checking every row has every column."""
    with open(os.path.join(search, "search_results.csv"), newline="", encoding="utf-8") as f:
        text = f.read()
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter=";"))
    header = rows[0]
    for row in rows[1:]:
        assert len(row) == len(header), (header, row)
    return header, [dict(zip(header, row)) for row in rows[1:]]


def record_runs(search):
    """The record's runs by their ``job`` argument, their ``out_dir`` absolute."""
    return {r["args"]["job"]: r for r in SearchDir(search).runs()}


def launch(project, *args, **kwargs):
    """Start hpsearch in the background; output goes to a file (read with ``output()``).
    ``resume=SEARCH`` continues that search instead of starting one."""
    out = tempfile.TemporaryFile(mode="w+")
    if kwargs.get("resume"):
        cmd = [sys.executable, HPSEARCH, "--resume", kwargs["resume"], "--visible_gpus=-1"]
    else:
        cmd = [sys.executable, HPSEARCH, "--grid_module=%s" % project.config,
               "--visible_gpus=-1", "--deterministic_search"]
    cmd += list(args)
    env = dict(os.environ)
    env[MARK] = project.path
    proc = subprocess.Popen(cmd, cwd=project.path, env=env, stdin=subprocess.DEVNULL,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log = out
    CREATED.append(proc)
    return proc


def output(proc):
    proc.log.seek(0)
    return proc.log.read()


def await_launcher(proc, predicate, timeout, interval=0.05):
    """Wait until ``predicate()`` while the launcher runs; fail at once if it ended."""
    wait_for(lambda: predicate() or proc.poll() is not None, timeout, interval)
    assert predicate(), "hpsearch %s:\n%s" % (
        "ended (exit %s)" % proc.returncode if proc.poll() is not None
        else "still waiting after %ss" % timeout, output(proc))


def finish(proc, timeout):
    """Wait for the launcher; its exit status, or an assertion with its output."""
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError("hpsearch did not end within %ss:\n%s" % (timeout, output(proc)))


def resume(project, search, *args, **kwargs):
    return run_hpsearch(["--resume", search, "--visible_gpus=-1"] + list(args), project.path,
                        env={MARK: project.path}, timeout=kwargs.get("timeout", 90))


class OrphanReaper(object):
    """Reap the processes ``project``'s scripts record, as a reaping init would.

    This process becomes the child subreaper (Linux prctl), so orphans of the search come here
    and become our zombies; a thread reaps the recorded ones. Without prctl it does nothing.
    """

    PR_SET_CHILD_SUBREAPER = 36

    def __init__(self, project):
        self.project = project
        self.stop = threading.Event()
        self.active = False

    def _prctl(self, value):
        try:
            import ctypes
            libc = ctypes.CDLL(None, use_errno=True)
            return libc.prctl(self.PR_SET_CHILD_SUBREAPER, value, 0, 0, 0) == 0
        except Exception:
            return False

    def _reap_once(self):
        for pid in recorded_pids(self.project):
            try:
                os.waitpid(pid, os.WNOHANG)
            except OSError:  # not (or no longer) our child
                pass

    def _loop(self):
        while not self.stop.wait(0.02):
            self._reap_once()

    def __enter__(self):
        self.active = self._prctl(1)
        if self.active:
            self.thread = threading.Thread(target=self._loop, daemon=True)
            self.thread.start()
        return self

    def __exit__(self, *exc):
        if self.active:
            self.stop.set()
            self.thread.join()
            self._reap_once()
            self._prctl(0)


def marked(pid, project):
    """Whether ``pid`` runs with this project's MARK in its environment (a recorded pid may
    belong to somebody else by now)."""
    try:
        with open("/proc/%d/environ" % pid, "rb") as f:
            env = f.read().split(b"\0")
    except OSError:
        return False
    return ("%s=%s" % (MARK, project.path)).encode() in env


@pytest.fixture(autouse=True)
def no_leftovers():
    """Teardown: no launcher or run of a test outlives it, whatever happened."""
    del CREATED[:]
    yield
    for item in CREATED:
        if isinstance(item, subprocess.Popen):
            if item.poll() is None:
                item.kill()
                item.wait()
            continue
        for pid in recorded_pids(item):
            if alive(pid) and marked(pid, item):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass


# ------------------------------------------------------------------------------------------
# 1. kill -9 of the launcher, then --resume
# ------------------------------------------------------------------------------------------


def test_resume_after_kill_9_of_a_parallel_search(tmp_path):
    jobs = ["sleepy.%d" % i for i in range(12)]
    project = new_project(tmp_path, jobs)
    with OrphanReaper(project):
        proc = launch(project, "--local_jobs=3")
        try:
            # Kill right after a run started, once the journal has it (the moment between a
            # start and its journal line is test_kill_9_right_after_a_run_started): several
            # runs are mid-sleep then.
            await_launcher(proc, lambda: len(ledger(project, "done.txt")) >= 3, 60)
            seen = len(ledger(project, "pids.txt"))
            journal = os.path.join(only_search(project), "run_journal.jsonl")

            def new_start_logged():
                pids = set(recorded_pids(project))
                logged = {e.get("job_id") for e in journal_entries(journal)[0]}
                return len(pids) > seen and pids <= logged

            await_launcher(proc, new_start_logged, 30, interval=0.01)
            proc.kill()
            assert proc.wait() == -signal.SIGKILL, "the search ended before it was killed"
        finally:
            proc.kill()
            proc.wait()
        search = only_search(project)
        folders_at_kill = sorted(n for n in os.listdir(search) if n.startswith("sim_"))
        done_at_kill = len(ledger(project, "done.txt"))
        assert 3 <= done_at_kill < len(jobs)

        rc, out, err = resume(project, search, "--local_jobs=3")
        assert rc == 0, out + err
        assert "resuming" in out
        # Leftovers of the killed launcher are gone.
        assert wait_for(lambda: not any(alive(p) for p in recorded_pids(project)), 10), \
            [p for p in recorded_pids(project) if alive(p)]

    done = [parts[0] for parts in ledger(project, "done.txt")]
    assert sorted(done) == sorted(jobs), "a configuration completed twice or never: %s" % done
    # No run folder is lost: each one there at the kill is still there, or renamed aside.
    for name in folders_at_kill:
        path = os.path.join(search, name)
        moved = [n for n in os.listdir(search) if n.startswith(name + "_attempt")]
        assert os.path.isdir(path) or moved, name
    runs = record_runs(search)
    header, rows = read_results(search)
    assert sorted(r["job"] for r in rows) == sorted(jobs)
    assert all(r["hpsearch_state"] == "finished" for r in rows), rows
    for job, run in runs.items():
        summary = hpsearch.read_summary_file(
            os.path.join(run["out_dir"], "performance_overview.txt"), KEYWORDS)
        assert hpsearch.is_finished(summary), job
    # The journal agrees with the CSV: a run that finished while no launcher watched it is
    # recorded as finished by the resume (not left 'running' forever).
    states = final_states(search)
    wrong = {job: states.get(run["name"]) for job, run in runs.items()
             if states.get(run["name"], {}).get("state") != "finished"}
    assert not wrong, wrong


CRASH_AFTER_START = r"""
import os, signal, subprocess, sys
sys.path.insert(0, os.path.dirname(sys.argv[1]))
import hpsearch

RealPopen = subprocess.Popen


class CrashingPopen(RealPopen):
    # The launcher dies (kill -9) the moment the run has started, before it records it.
    def __init__(self, *args, **kwargs):
        RealPopen.__init__(self, *args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)

subprocess.Popen = CrashingPopen
sys.exit(hpsearch.main(sys.argv[2:]))
"""


def test_kill_9_right_after_a_run_started(tmp_path):
    """kill -9 between a run's start and its journal line: resume must still find and stop
    that run (not run the configuration a second time beside it)."""
    project = new_project(tmp_path, ["wait.1"])
    driver = write_file(os.path.join(str(tmp_path), "crash_after_start.py"), CRASH_AFTER_START)
    with OrphanReaper(project):
        env = dict(os.environ)
        env[MARK] = project.path
        crashed = subprocess.call(
            [sys.executable, driver, HPSEARCH, "--grid_module=%s" % project.config,
             "--visible_gpus=-1"], cwd=project.path, env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        assert crashed == -signal.SIGKILL
        assert wait_for(lambda: ledger(project, "pids.txt"), 30)
        orphan = recorded_pids(project)[0]
        search = only_search(project)
        resumer = launch(project, resume=search)
        try:  # the resume runs wait.1 again (a second process) or ends: then let runs finish
            wait_for(lambda: len(ledger(project, "pids.txt")) > 1 or resumer.poll() is not None,
                     30)
            time.sleep(0.3)
            write_file(ledger_path(project, "release"), "")
            assert finish(resumer, 60) == 0, output(resumer)
            wait_for(lambda: not alive(orphan), 10)
        finally:
            if resumer.poll() is None:
                resumer.kill()
                resumer.wait()
    done = ledger(project, "done.txt")
    assert [d[0] for d in done] == ["wait.1"], "wait.1 completed %d times: %s\n%s" % (
        len(done), done, output(resumer))
    assert not alive(orphan)
    rows = read_results(search)[1]
    assert [(r["job"], r["hpsearch_state"]) for r in rows] == [("wait.1", "finished")]


def test_resume_stops_runs_left_over_by_a_killed_launcher(tmp_path):
    project = new_project(tmp_path, ["hold.1", "hold.2"])
    with OrphanReaper(project):
        proc = launch(project, "--local_jobs=2")
        try:  # each run: the script, its child and a grandchild (sleep 300)
            await_launcher(proc, lambda: len(ledger(project, "pids.txt")) >= 6, 60)
        finally:
            proc.kill()
            proc.wait()
        leftovers = recorded_pids(project)
        assert all(alive(p) for p in leftovers)
        search = only_search(project)
        write_file(ledger_path(project, "release"), "")

        rc, out, err = resume(project, search, "--local_jobs=2")
        assert rc == 0, out + err
        assert "left over" in out
        assert wait_for(lambda: not any(alive(p) for p in leftovers), 10), \
            [p for p in leftovers if alive(p)]
    runs = record_runs(search)
    for job, run in runs.items():
        assert os.path.isdir(run["out_dir"] + "_attempt1"), os.listdir(search)
        assert final_states(search)[run["name"]]["state"] == "finished"
    assert sorted(p[0] for p in ledger(project, "done.txt")) == ["hold.1", "hold.2"]
    assert len(read_results(search)[1]) == 2


def test_resume_records_a_run_that_finished_after_the_launcher_died(tmp_path):
    project = new_project(tmp_path, ["wait.1", "ok.2"])
    with OrphanReaper(project):
        proc = launch(project)
        try:
            await_launcher(proc, lambda: ledger(project, "pids.txt"), 60)
        finally:
            proc.kill()
            proc.wait()
        search = only_search(project)
        write_file(ledger_path(project, "release"), "")  # the orphaned run completes
        assert wait_for(lambda: ledger(project, "done.txt"), 30)
        assert wait_for(lambda: not any(alive(p) for p in recorded_pids(project)), 10)
        rc, out, err = resume(project, search)
        assert rc == 0, out + err
    with open(os.path.join(search, "hpsearch.log")) as f:   # the resume's output goes on there
        log = f.read()
    said = [line for line in (out + err).splitlines() if line.startswith("hpsearch:")]
    assert said and all(line in log for line in said), (said, log)
    assert sorted(p[0] for p in ledger(project, "done.txt")) == ["ok.2", "wait.1"]
    rows = read_results(search)[1]
    assert sorted((r["job"], r["hpsearch_state"]) for r in rows) == [
        ("ok.2", "finished"), ("wait.1", "finished")]
    runs = record_runs(search)
    states = final_states(search)
    # The journal agrees with the CSV (hpsearch_postprocessing reads the journal): not
    # 'running' forever for the run that finished while no launcher watched it.
    assert states[runs["wait.1"]["name"]]["state"] == "finished", states[runs["wait.1"]["name"]]
    assert states[runs["ok.2"]["name"]]["state"] == "finished"


def test_resume_of_a_search_that_is_still_running_is_refused(tmp_path):
    """A second launcher on a live search would stop its runs and run them a second time."""
    project = new_project(tmp_path, ["wait.1"])
    with OrphanReaper(project):
        proc = launch(project)
        resumer = None
        try:
            await_launcher(proc, lambda: ledger(project, "pids.txt"), 60)
            first = recorded_pids(project)
            search = only_search(project)
            resumer = launch(project, resume=search)
            refused = wait_for(lambda: resumer.poll() is not None, 5)
            untouched = all(alive(p) for p in first)
            write_file(ledger_path(project, "release"), "")
            finish(resumer, 60)
            assert finish(proc, 60) == 0, output(proc)
        finally:
            for p in (proc, resumer):
                if p is not None and p.poll() is None:
                    p.kill()
                    p.wait()
    out = output(resumer)
    assert refused and resumer.returncode == 2, (
        "a second launcher ran the live search (exit %s):\n%s" % (resumer.returncode, out))
    lines = out.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpsearch: error:"), out
    assert untouched, "the resume stopped the live search's run"
    assert [p[0] for p in ledger(project, "done.txt")] == ["wait.1"]
    assert [p[2] for p in ledger(project, "pids.txt")] == ["wait.1"]
    rows = read_results(search)[1]
    assert [(r["job"], r["hpsearch_state"]) for r in rows] == [("wait.1", "finished")]


# ------------------------------------------------------------------------------------------
# 2. Ctrl-C and SIGTERM
# ------------------------------------------------------------------------------------------


def _stop_with(tmp_path, sig, jobs, local_jobs):
    project = new_project(tmp_path, jobs)
    with OrphanReaper(project):
        proc = launch(project, "--local_jobs=%d" % local_jobs)
        want = 3 * min(local_jobs, len(jobs))
        await_launcher(proc, lambda: len(ledger(project, "pids.txt")) >= want, 60)
        pids = recorded_pids(project)
        sent = time.time()
        os.kill(proc.pid, sig)
        rc = finish(proc, 30)
        took = time.time() - sent
        gone = wait_for(lambda: not any(alive(p) for p in pids), 2)
    return project, proc, rc, took, pids, gone


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_stop_signal_ends_every_process_of_the_search(tmp_path, sig):
    jobs = ["children.1", "children.2", "children.3"]
    project, proc, rc, took, pids, gone = _stop_with(tmp_path, sig, jobs, 2)
    out = output(proc)
    assert took < 10, "the launcher took %.1fs to stop:\n%s" % (took, out)
    assert gone, "processes survived: %s" % [p for p in pids if alive(p)]
    assert rc != 0
    search = only_search(project)
    assert "--resume" in out and search in out, out
    runs = record_runs(search)
    states = final_states(search)
    started = [job for job in jobs if runs[job]["name"] in states]
    assert len(started) == 2, states
    for job in started:
        assert states[runs[job]["name"]]["state"] == "killed", states[runs[job]["name"]]
    header, rows = read_results(search)
    assert sorted(r["job"] for r in rows) == sorted(started)
    assert all(r["hpsearch_state"] == "killed" for r in rows)


def test_second_ctrl_c_kills_at_once(tmp_path):
    project = new_project(tmp_path, ["stubborn.1"])  # ignores SIGTERM, and so do its children
    with OrphanReaper(project):
        proc = launch(project)
        await_launcher(proc, lambda: len(ledger(project, "pids.txt")) >= 3, 60)
        pids = recorded_pids(project)
        first = time.time()
        os.kill(proc.pid, signal.SIGINT)
        # The run got its SIGTERM (and ignored it): the launcher is in its 5 s grace now.
        await_launcher(proc, lambda: ledger(project, "terms.txt"), 10)
        second = time.time()
        os.kill(proc.pid, signal.SIGINT)
        rc = finish(proc, 30)
        ended = time.time()
        gone = wait_for(lambda: not any(alive(p) for p in pids), 2)
    out = output(proc)
    assert ended - second < 2.5 and ended - first < 4.5, (
        "exited %.1fs after the second Ctrl-C, %.1fs after the first\n%s"
        % (ended - second, ended - first, out))
    assert gone, "processes survived: %s" % [p for p in pids if alive(p)]
    assert rc != 0
    search = only_search(project)
    assert "--resume" in out
    run = record_runs(search)["stubborn.1"]
    assert final_states(search)[run["name"]]["state"] == "killed"


def test_a_run_that_exits_cleanly_on_sigterm_is_recorded_as_killed(tmp_path):
    """Stopped by hpsearch is 'killed' (as --run_timeout records it), also when the script
    catches SIGTERM and exits with a status of its own."""
    project = new_project(tmp_path, ["graceful.1"])
    with OrphanReaper(project):
        proc = launch(project)
        await_launcher(proc, lambda: ledger(project, "pids.txt"), 60)
        time.sleep(0.3)  # its SIGTERM handler is in place
        os.kill(proc.pid, signal.SIGINT)
        assert finish(proc, 30) != 0
    search = only_search(project)
    run = record_runs(search)["graceful.1"]
    entry = final_states(search)[run["name"]]
    assert entry["state"] == "killed", entry
    assert [r["hpsearch_state"] for r in read_results(search)[1]] == ["killed"]


# ------------------------------------------------------------------------------------------
# 3. --max_retries
# ------------------------------------------------------------------------------------------


def test_max_retries_keeps_every_attempt(tmp_path):
    jobs = ["failfirst.1", "failtwice.2", "unfinfirst.3", "alwaysfail.4", "ok.5"]
    project = new_project(tmp_path, jobs)
    rc, out, err = search_with(project, "--max_retries=2", "--local_jobs=2", timeout=90)
    assert rc == 1, out + err   # alwaysfail.4 never finishes
    search = only_search(project)
    runs = record_runs(search)
    header, rows = read_results(search)
    by_job = {r["job"]: r for r in rows}
    assert sorted(by_job) == sorted(jobs) and len(rows) == len(jobs)
    expect = {"failfirst.1": ("finished", 2), "failtwice.2": ("finished", 3),
              "unfinfirst.3": ("finished", 2), "alwaysfail.4": ("failed", 3),
              "ok.5": ("finished", 1)}
    entries = journal_entries(os.path.join(search, "run_journal.jsonl"))[0]
    for job, (state, attempts) in expect.items():
        run = runs[job]
        assert by_job[job]["hpsearch_state"] == state, by_job[job]
        assert len(ledger(project, "attempts_" + job)) == attempts, job
        ended = [e for e in entries if e["run"] == run["name"] and e["state"] != "running"]
        assert [e["attempt"] for e in ended] == list(range(1, attempts + 1)), ended
        assert ended[-1]["state"] == state
        # Every earlier attempt's folder is kept, with its logs; the last one is the run folder.
        for k in range(1, attempts):
            kept = run["out_dir"] + "_attempt%d" % k
            assert os.path.isdir(kept), (job, sorted(os.listdir(search)))
            logs = os.listdir(kept)
            assert "job_%s.out" % run["name"] in logs and "job_%s.err" % run["name"] in logs, logs
        assert not os.path.exists(run["out_dir"] + "_attempt%d" % attempts)
        assert os.path.isdir(run["out_dir"])
    assert by_job["alwaysfail.4"]["hpsearch_exit_code"] == "1"


# ------------------------------------------------------------------------------------------
# 4. Runs that never end or flood their output
# ------------------------------------------------------------------------------------------


def test_run_timeout_kills_a_hanging_run_and_goes_on(tmp_path):
    project = new_project(tmp_path, ["hang.1", "ok.2", "ok.3"])
    started = time.time()
    rc, out, err = search_with(project, "--run_timeout=1", "--deterministic_search", timeout=60)
    assert rc == 1, out + err   # hang.1 was killed
    assert time.time() - started < 30
    search = only_search(project)
    runs = record_runs(search)
    states = final_states(search)
    hang = states[runs["hang.1"]["name"]]
    assert hang["state"] == "killed", hang
    assert "run_timeout" in hang.get("reason", ""), hang
    assert states[runs["ok.2"]["name"]]["state"] == "finished"
    assert states[runs["ok.3"]["name"]]["state"] == "finished"
    by_job = {r["job"]: r for r in read_results(search)[1]}
    assert by_job["hang.1"]["hpsearch_state"] == "killed"
    assert "killed" in out and "run_timeout" in out
    assert wait_for(lambda: not any(alive(p) for p in recorded_pids(project)), 5)


def test_run_timeout_ends_the_whole_process_group(tmp_path):
    """The run dies on SIGTERM, its child and grandchild ignore it: they must not outlive the
    search (SIGKILL after the grace, as on Ctrl-C)."""
    project = new_project(tmp_path, ["stubkids.1"])
    with OrphanReaper(project):
        rc, out, err = search_with(project, "--run_timeout=1", timeout=60)
        pids = recorded_pids(project)
        gone = wait_for(lambda: not any(alive(p) for p in pids), 2)
    assert rc == 1, out + err   # the run was killed
    assert len(pids) == 3, ledger(project, "pids.txt")
    assert gone, "processes of the timed-out run survived: %s" % [
        " ".join(line) for line in ledger(project, "pids.txt") if alive(int(line[0]))]
    search = only_search(project)
    entry = final_states(search)[record_runs(search)["stubkids.1"]["name"]]
    assert entry["state"] == "killed" and "run_timeout" in entry.get("reason", ""), entry


def test_a_run_flooding_stdout_does_not_stall_the_launcher(tmp_path):
    free = shutil.disk_usage(str(tmp_path)).free
    if free < 2 * 1024 ** 3:
        pytest.skip("needs 2 GB free for 300 MB of test output")
    project = new_project(tmp_path, ["flood.1", "ok.2"])
    log = None
    try:
        rc, out, err = search_with(project, "--local_jobs=2", timeout=120)
        assert rc == 0, out + err
        search = only_search(project)
        run = record_runs(search)["flood.1"]
        log = os.path.join(run["out_dir"], "job_%s.out" % run["name"])
        size = os.path.getsize(log)
        assert size >= 300 * 1024 ** 2, size
        with open(log, "rb") as f:
            assert f.readline().startswith(b"started flood.1")
        states = final_states(search)
        assert {s["state"] for s in states.values()} == {"finished"}
        assert len(read_results(search)[1]) == 2
    finally:  # 300 MB of test data: never leave it behind
        for root, _, files in os.walk(project.path):
            for name in files:
                if name.endswith(".out"):
                    os.remove(os.path.join(root, name))


# ------------------------------------------------------------------------------------------
# 5. Two searches at once
# ------------------------------------------------------------------------------------------


def test_two_searches_at_once_into_one_out_dir(tmp_path):
    project = new_project(tmp_path, ["ok.1", "ok.2"])
    shared = os.path.join(str(tmp_path), "shared_out")
    procs = [launch(project, "--out_dir=%s" % shared) for _ in range(2)]
    for p in procs:
        assert finish(p, 90) == 0, output(p)
    searches = sorted(os.path.join(shared, d) for d in os.listdir(shared))
    assert len(searches) == 2, searches
    for search in searches:
        rows = read_results(search)[1]
        assert sorted(r["job"] for r in rows) == ["ok.1", "ok.2"]
        assert all(r["hpsearch_state"] == "finished" for r in rows)
        # run folders are named relative to the search folder, and lie in it
        assert all(os.path.isdir(os.path.join(search, r["out_dir"])) for r in rows)
    assert sorted(p[0] for p in ledger(project, "done.txt")) == ["ok.1", "ok.1", "ok.2", "ok.2"]


# ------------------------------------------------------------------------------------------
# 6. --resume: changed config, a folder that is no search, nothing left to do, --dry_run
# ------------------------------------------------------------------------------------------


def test_resume_uses_the_searchs_own_config_and_warns_if_it_changed(tmp_path):
    project, search, _, _ = ended_search(tmp_path, ["ok.1", "flaky.2"])
    runs = record_runs(search)
    assert final_states(search)[runs["flaky.2"]["name"]]["state"] == "failed"
    # The config changes (a new value, a script that does not exist): the search keeps its own.
    project.write_config({"job": ["ok.1", "flaky.2", "ok.99"]}, summary_keywords=KEYWORDS,
                         script_name="gone.py")
    write_file(ledger_path(project, "release"), "")
    rc, out, err = resume(project, search)
    assert rc == 0, out + err
    assert "changed" in err and os.path.basename(project.config) in err, err
    assert sorted(p[0] for p in ledger(project, "done.txt")) == ["flaky.2", "ok.1"]
    rows = read_results(search)[1]
    assert sorted(r["job"] for r in rows) == ["flaky.2", "ok.1"]
    assert all(r["hpsearch_state"] == "finished" for r in rows)
    assert os.path.isdir(runs["flaky.2"]["out_dir"] + "_attempt1")


def ended_search(tmp_path, jobs):
    """A search of ``jobs`` that has run to its end: (project, folder, its tree, its journal)."""
    project = new_project(tmp_path, jobs)
    rc, out, err = search_with(project)
    assert rc == (0 if all(j.startswith("ok.") for j in jobs) else 1), out + err
    search = only_search(project)
    with open(os.path.join(search, "run_journal.jsonl")) as f:
        journal = f.read()
    return project, search, tree(search), journal


def test_resume_of_a_finished_search_runs_nothing(tmp_path):
    project, search, before, journal = ended_search(tmp_path, ["ok.1", "ok.2"])
    rc, out, err = resume(project, search)
    assert rc == 0, out + err
    assert len(ledger(project, "pids.txt")) == 2, "a finished run was started again"
    assert tree(search) == before
    with open(os.path.join(search, "run_journal.jsonl")) as f:
        assert f.read() == journal
    rows = read_results(search)[1]
    assert sorted(r["job"] for r in rows) == ["ok.1", "ok.2"]
    assert all(r["hpsearch_state"] == "finished" for r in rows)


def _one_error_line(rc, out, err):
    assert rc == 2, (rc, out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpsearch: error:"), err
    assert "Traceback" not in out + err


def test_resume_keeps_a_finished_run_that_postprocessing_moved_away(tmp_path):
    """hpsearch_postprocessing.py --performance_criteria moves rejected runs into
    TO_BE_DELETED/: they ran, so a resume must not run them again."""
    project = new_project(tmp_path, ["ok.1", "ok.2"])
    rc, out, err = search_with(project)
    assert rc == 0, out + err
    search = only_search(project)
    moved = sorted(r["out_dir"] for r in record_runs(search).values())[0]
    trash = os.path.join(search, "TO_BE_DELETED")
    os.makedirs(trash)
    os.rename(moved, os.path.join(trash, os.path.basename(moved)))
    rc, out, err = resume(project, search)
    assert rc == 0, out + err
    assert len(ledger(project, "pids.txt")) == 2, "a run moved to TO_BE_DELETED ran again"
    assert not os.path.exists(moved)
    rows = read_results(search)[1]
    assert sorted(r["job"] for r in rows) == ["ok.1", "ok.2"]
    assert all(r["hpsearch_state"] == "finished" for r in rows)
    # its row names the folder where it is now
    where = os.path.join("TO_BE_DELETED", os.path.basename(moved))
    assert sorted(r["out_dir"] for r in rows)[0] == where, rows


@pytest.mark.parametrize("content", ["empty", "garbage_record", "record_without_runs"])
def test_resume_of_a_folder_that_is_no_search(tmp_path, content):
    project = new_project(tmp_path, ["ok.1"])
    folder = os.path.join(str(tmp_path), "not_a_search")
    os.makedirs(folder)
    if content == "garbage_record":
        write_file(os.path.join(folder, "search_record.json"), '{"runs": [{"name": "x"')
    elif content == "record_without_runs":
        write_file(os.path.join(folder, "search_record.json"), '{"format": "x"}')
    before = tree(folder)
    rc, out, err = resume(project, folder)
    _one_error_line(rc, out, err)
    assert "--resume" in err
    assert tree(folder) == before


def test_resume_with_dry_run_runs_and_writes_nothing(tmp_path):
    project, search, before, journal = ended_search(tmp_path, ["ok.1", "flaky.2"])
    rc, out, err = resume(project, search, "--dry_run")
    assert rc == 0, out + err
    assert len(ledger(project, "pids.txt")) == 2, "--dry_run started a run:\n" + out
    assert tree(search) == before
    with open(os.path.join(search, "run_journal.jsonl")) as f:
        assert f.read() == journal


# ------------------------------------------------------------------------------------------
# 7. Runs that fail in every way; the CSV stays valid
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def failures(tmp_path_factory):
    """One search whose runs fail in every way (run once for the tests below)."""
    jobs = ["exit1.1", "crash.2", "finished0.3", "garbage.4", "ok.5"]
    project = new_project(tmp_path_factory.mktemp("failures"), jobs)
    rc, out, err = search_with(project, "--local_jobs=2", timeout=90)
    return project, jobs, rc, out, err


def test_every_kind_of_failure_is_recorded_and_the_search_goes_on(failures):
    project, jobs, rc, out, err = failures
    assert rc == 1, out + err   # it ran to its end; four runs did not finish
    assert out.splitlines()[-1].startswith("hpsearch: 4 of 5 runs did not finish;")
    assert "Traceback" not in out + err
    search = only_search(project)
    runs = record_runs(search)
    expect = {"exit1.1": ("failed", "1"), "crash.2": ("failed", "1"),
              "finished0.3": ("unfinished", "0"), "garbage.4": ("unfinished", "0"),
              "ok.5": ("finished", "0")}
    header, rows = read_results(search)  # every row has every column
    assert header[-3:] == ["hpsearch_state", "hpsearch_exit_code", "hpsearch_reason"]
    by_job = {r["job"]: r for r in rows}
    assert sorted(by_job) == sorted(jobs) and len(rows) == len(jobs)
    states = final_states(search)
    for job, (state, code) in expect.items():
        assert by_job[job]["hpsearch_state"] == state, by_job[job]
        assert by_job[job]["hpsearch_exit_code"] == code, by_job[job]
        entry = states[runs[job]["name"]]
        assert entry["state"] == state and str(entry["exit_code"]) == code, entry
    assert by_job["exit1.1"]["acc"] == "0.3"
    assert by_job["ok.5"]["acc"] == "0.05"


def test_garbage_summary_leaves_no_nul_byte_in_the_csv(failures):
    """csv.reader before Python 3.11 refuses a NUL ('line contains NUL'; 3.10's writer even
    raises 'need to escape'): a garbage summary must not make the CSV unreadable there."""
    project, jobs, rc, out, err = failures
    with open(os.path.join(only_search(project), "search_results.csv"), "rb") as f:
        raw = f.read()
    assert b"\x00" not in raw, [line for line in raw.splitlines() if b"\x00" in line]


def test_huge_number_after_finished_is_not_a_crash(tmp_path):
    """'finished 1000...0' (400 digits) parses as an int too big for float()."""
    project = new_project(tmp_path, ["hugenum.1", "ok.2"])
    rc, out, err = search_with(project, "--deterministic_search")
    assert rc == 1, out + err   # hugenum.1 is not finished
    assert "Traceback" not in out + err
    search = only_search(project)
    by_job = {r["job"]: r for r in read_results(search)[1]}
    assert by_job["hugenum.1"]["hpsearch_state"] == "unfinished"
    assert by_job["ok.2"]["hpsearch_state"] == "finished"


# ------------------------------------------------------------------------------------------
# 8. Atomic files
# ------------------------------------------------------------------------------------------


def test_resume_after_a_journal_line_cut_short(tmp_path):
    project, search, _, _ = ended_search(tmp_path, ["ok.1", "flaky.2"])
    runs = record_runs(search)
    journal = os.path.join(search, "run_journal.jsonl")
    whole, bad = journal_entries(journal)
    assert bad == 0
    with open(journal, "a") as f:  # a crash in the middle of a write
        f.write('{"run": "%s", "state": "fini' % runs["ok.1"]["name"])
    read = hpsearch.SearchFolder(search).read_journal()
    assert sum(len(v) for v in read.values()) == len(whole)
    assert read[runs["ok.1"]["name"]][-1]["state"] == "finished"

    write_file(ledger_path(project, "release"), "")
    rc, out, err = resume(project, search)
    assert rc == 0, out + err
    assert sorted(p[0] for p in ledger(project, "done.txt")) == ["flaky.2", "ok.1"]
    entries, bad = journal_entries(journal)
    assert bad == 1, "only the line cut short may be unreadable"
    flaky = [e for e in entries if e["run"] == runs["flaky.2"]["name"]]
    # The resumed launcher's entries are whole lines: 'running' (with the pid a later resume
    # needs to stop a leftover) and 'finished', both of attempt 2.
    assert [(e["state"], e["attempt"]) for e in flaky] == [
        ("running", 1), ("failed", 1), ("running", 2), ("finished", 2)], flaky
    assert all(r["hpsearch_state"] == "finished" for r in read_results(search)[1])


def test_atomic_write_keeps_the_old_file_when_the_rename_fails(tmp_path, monkeypatch):
    path = str(tmp_path / "search_record.json")
    hpsearch.atomic_write_text(path, '{"old": true}\n')

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device", dst)

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError):
        hpsearch.atomic_write_text(path, '{"new": ' + "x" * 100000)
    monkeypatch.undo()
    with open(path) as f:
        assert json.load(f) == {"old": True}


def test_failed_rewrite_leaves_record_and_results_intact(tmp_path, monkeypatch, capsys):
    project = new_project(tmp_path, ["ok.1", "flaky.2"])
    rc, out, err = search_with(project)
    assert rc == 1, out + err   # flaky.2 fails its first attempt
    search = only_search(project)
    files = {}
    for name in ("search_record.json", "search_results.csv", "run_journal.jsonl"):
        with open(os.path.join(search, name), "rb") as f:
            files[name] = f.read()

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device", dst)

    saved_path, saved_modules = list(sys.path), set(sys.modules)
    monkeypatch.setattr(os, "replace", broken_replace)
    monkeypatch.chdir(project.path)
    try:
        rc = hpsearch.main(["--resume", search, "--visible_gpus=-1"])
    finally:
        monkeypatch.undo()
        sys.path[:] = saved_path
        for name in set(sys.modules) - saved_modules:
            del sys.modules[name]
    captured = capsys.readouterr()
    assert rc == 2, captured
    assert captured.err.startswith("hpsearch: error:") and len(captured.err.splitlines()) == 1
    for name, content in files.items():
        with open(os.path.join(search, name), "rb") as f:
            assert f.read() == content, name
    assert len(ledger(project, "pids.txt")) == 2, "a run started although the CSV was not made"
