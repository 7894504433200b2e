"""Hostile surroundings: the terminal goes away, stdout is closed, the disk fills up or turns
read-only, jobs/ is deleted, files are damaged, values are odd. Always against the real
launcher as a subprocess (damaged files also in process, with hypothesis).

What the launcher must do (design of issue 11):

* SIGHUP and failed writes to stdout/stderr change nothing: the search completes, exit 0, and
  hpsearch.log in the search folder has every message.
* An OSError on its own files mid-search (disk full, read-only, jobs/ gone): runs stopped,
  exactly ONE stderr line ``hpsearch: error: cannot write <path>: <cause>; ... continue
  with: <command>``, exit status 3, nothing left running; that command completes the search.
* Damaged journals: lines that cannot be read are skipped with one warning; damaged record
  entries: exit 2 and one line ``... run N of the record is malformed ...``. Never a
  traceback.
* Bad input (lone surrogates, unbalanced quotes, a config calling sys.exit, bad flags): exit 2,
  one line, nothing written.

Every training script here (SCRIPT) keeps a ledger in ``<project>/ledger/`` (outside the
search folder, so a full or read-only search folder never loses it): ``pids.txt``,
``ready.txt`` (its run folder is made), ``done.txt`` (written only after the summary, with
SIGTERM blocked in between) and an attempt counter per configuration. What a run does is its
grid value ``job=<mode>.<n>``: ``ok`` completes at once, ``nap`` after a second, ``hold`` (first
attempt) when the test writes ``ledger/release`` or ``ledger/release_<job>``, ``fill`` (first
attempt) writes to stdout until the disk is full; a summary it cannot write makes it exit 1.
Every process of a test carries MARK=<project folder> in its environment: the autouse fixture
``no_leftovers`` fails a test that left one running (and kills it).

The disk tests mount a small tmpfs (root only). They skip without the permission, but fail
when $CI is set. ``mount -o remount,ro`` of a tmpfs is refused (EBUSY) while any file on it is
open for writing, and the launcher holds its lock file open for its whole life; so "the disk
turns read-only" is a read-only bind mount laid over the mount point: every path looked up
from then on is read-only, exactly as after a remount, while files already open stay open.
"""

import contextlib
import csv
import json
import os
import re
import select
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hpsearch
from conftest import (HPSEARCH, REPO, SCRIPT_TOOLS, SearchDir, ledger, ledger_path, wait_for,
                      make_project, only_search, tree, write_file)

POST = os.path.join(REPO, "hpsearch_postprocessing.py")

SCRIPT = SCRIPT_TOOLS + r'''
import signal


def lines(name):
    try:
        with open(os.path.join(LEDGER, name)) as f:
            return f.read().splitlines()
    except OSError:
        return []


def emit(data):
    """To stdout (a file in the search folder's jobs/); False once it fails (disk full)."""
    try:
        while data:
            data = data[os.write(1, data):]
    except OSError:
        return False
    return True


def main():
    opts = options(sys.argv[1:])
    out = opts["out_dir"]
    job = opts.get("job", "ok.0")
    mode = job.split(".")[0]
    note("pids.txt", "%d %s" % (os.getpid(), job))
    note("attempts_" + job, "x")
    first = len(lines("attempts_" + job)) == 1
    if os.path.exists(out):  # as hypnettorch scripts: never reuse a folder
        sys.exit(3)
    os.makedirs(out)
    emit(("started %s\n" % job).encode())
    note("ready.txt", job)
    if mode == "nap":
        time.sleep(float(opts.get("nap", 1)))
    if mode == "hold" and first:  # until the test says go (to all, or to this job)
        deadline = time.time() + 60
        while time.time() < deadline and not any(os.path.exists(os.path.join(LEDGER, name))
                                                  for name in ("release", "release_" + job)):
            time.sleep(0.02)
    if mode == "fill" and first:
        # Once the launcher has started the other run (its command file is in jobs/), write
        # to stdout until the disk is full.
        jobs = os.path.join(os.path.dirname(os.path.abspath(out)), "jobs")
        deadline = time.time() + 30
        while time.time() < deadline and len(
                [n for n in os.listdir(jobs) if n.endswith(".sh")]) < 2:
            time.sleep(0.02)
        chunk = b"y" * 65535 + b"\n"
        for _ in range(16 * 64):  # at most 64 MB
            if not emit(chunk):
                break
    # Completion: the summary and the ledger line go together (no SIGTERM in between).
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM, signal.SIGINT])
    try:
        with open(os.path.join(out, "performance_overview.txt"), "w") as f:
            f.write("acc %s\n" % job.split(".")[-1])
            if opts.get("note_kib"):
                f.write("note %s\n" % ("n" * (1024 * int(opts["note_kib"]))))
            f.write("finished 1\n")
    except OSError:  # a full or read-only disk
        sys.exit(1)
    note("done.txt", job)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM, signal.SIGINT])


main()
'''

KEYWORDS = ["acc", "finished"]
MARK = "HPSEARCH_HOSTILE_TEST"
CREATED = []   # projects of the current test (their processes are checked at the end)


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------


def new_project(tmp_path, jobs, keywords=KEYWORDS, name="proj", grid=None):
    project = make_project(tmp_path, script_body=SCRIPT, grid=grid or {"job": list(jobs)},
                           summary_keywords=keywords, name=name)
    os.makedirs(ledger_path(project))
    CREATED.append(project)
    return project


def release(project, job=None):
    """Let hold.* runs go on: all, or only ``job``."""
    write_file(ledger_path(project, "release_%s" % job if job else "release"), "")


def environment(project):
    env = dict(os.environ)
    env[MARK] = project.path
    return env


def hpsearch_argv(project, *args):
    return [sys.executable, HPSEARCH, "--grid_module=%s" % project.config, "--visible_gpus=-1",
            "--deterministic_search"] + list(args)


def run(argv, project, timeout=60, cwd=None):
    """Run ``argv`` to its end with the project's MARK: ``(rc, stdout, stderr)`` (text)."""
    proc = subprocess.Popen(argv, cwd=cwd or project.path, env=environment(project),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError("%s did not end within %ss\n%s\n%s" % (argv, timeout, out, err))
    return (proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))


class Launcher(object):
    """hpsearch in the background, in a session of its own (as a terminal job); stdout and
    stderr go to files."""

    def __init__(self, project, *args):
        self.project = project
        self.out = tempfile.TemporaryFile()
        self.err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen(hpsearch_argv(project, *args), cwd=project.path,
                                     env=environment(project), stdin=subprocess.DEVNULL,
                                     stdout=self.out, stderr=self.err, start_new_session=True)

    def output(self):
        texts = []
        for f in (self.out, self.err):
            f.seek(0)
            texts.append(f.read().decode("utf-8", "replace"))
        return texts

    def await_(self, predicate, timeout=30):
        """Wait until ``predicate()`` while the launcher runs; fail at once if it ended."""
        wait_for(lambda: predicate() or self.proc.poll() is not None, timeout)
        assert predicate(), "hpsearch %s:\n%s" % (
            "ended (exit %s)" % self.proc.returncode if self.proc.poll() is not None
            else "still waiting after %ss" % timeout, "\n".join(self.output()))

    def finish(self, timeout=60):
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("hpsearch did not end within %ss:\n%s"
                                 % (timeout, "\n".join(self.output())))

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _environ(pid):
    try:
        with open("/proc/%s/stat" % pid) as f:
            if f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                return None  # a zombie is gone
        with open("/proc/%s/environ" % pid, "rb") as f:
            return f.read().split(b"\0")
    except (OSError, IndexError):
        return None


def processes_with(entry):
    """Live processes (not zombies, not this one) whose environment holds ``entry``
    (``NAME=value``), or, if ``entry`` ends with '=', a ``NAME=`` entry starting so."""
    entry = entry.encode("utf-8", "surrogateescape")
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        env = _environ(pid)
        if env and any(e == entry or (entry.endswith(b"=") and e.startswith(entry))
                       for e in env):
            found.append(int(pid))
    return found


def leftovers(project, search=None):
    """Processes of ``project`` still running: MARK in their environment, or the search
    folder's HPSEARCH_SEARCH_ID (``<search id>.<inode>``)."""
    pids = set(processes_with("%s=%s" % (MARK, project.path)))
    if search is not None:
        ident = "%s=%s." % (hpsearch.MARKER_VARIABLE, SearchDir(search).record()["search_id"])
        pids.update(processes_with(ident))
    return sorted(pids)


def assert_nothing_left(project, search=None):
    """Stopped processes may take a moment to be reaped: wait up to 5 s."""
    wait_for(lambda: not leftovers(project, search), 5, 0.05)
    left = leftovers(project, search)
    assert not left, "processes of the search are still running: %s" % [
        (pid, _cmdline(pid)) for pid in left]


def _cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return "?"


@pytest.fixture(autouse=True)
def no_leftovers():
    """No process of a test outlives it; one that would fails the test (and is killed)."""
    del CREATED[:]
    yield
    left = []
    for project in CREATED:
        for pid in leftovers(project):
            left.append((pid, _cmdline(pid)))
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    assert not left, "the test left processes running: %s" % left


def journal_entries(search):
    entries = []
    with open(os.path.join(search, "run_journal.jsonl"), "rb") as f:
        for line in f:
            try:
                entries.append(json.loads(line.decode("utf-8")))
            except ValueError:
                pass
    return entries


def read_results(search, name="search_results.csv"):
    """``(header, rows)``; every row must have every column."""
    with open(os.path.join(search, name), newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter=";"))
    header = rows[0]
    for row in rows[1:]:
        assert len(row) == len(header), (header, [c[:80] for c in row])
    return header, [dict(zip(header, row)) for row in rows[1:]]


def assert_complete(project, search, jobs):
    """Every configuration finished exactly once: one finished CSV row each, the journal's
    last word on each run 'finished', and one completion in the ledger each."""
    rows = read_results(search)[1]
    assert sorted(r["job"] for r in rows) == sorted(jobs), [r["job"] for r in rows]
    assert all(r["hpsearch_state"] == "finished" for r in rows), [
        (r["job"], r["hpsearch_state"], r["hpsearch_exit_code"]) for r in rows]
    states = {}
    for entry in journal_entries(search):
        states[entry["run"]] = entry["state"]
    names = [r["name"] for r in SearchDir(search).record()["runs"]]
    assert sorted(states) == sorted(names) and set(states.values()) == {"finished"}, states
    done = sorted(line[0] for line in ledger(project, "done.txt"))
    assert done == sorted(jobs), "a configuration completed twice or never: %s" % done


def one_error_line(err, start="hpsearch: error:"):
    assert "Traceback" not in err, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(start), err
    return lines[0]


def stopped_line(err, cause, search, problems):
    """The line of a launcher that stopped for its own files: ``(path, continue argv)``.
    Other lines on stderr are problems (the design allows exactly one line)."""
    assert "Traceback" not in err, err
    lines = [l for l in err.splitlines() if l.startswith("hpsearch: error: cannot write ")]
    assert len(lines) == 1, err
    line = lines[0]
    if len(err.splitlines()) != 1:
        problems.append("stderr has %d lines, not one:\n%s" % (len(err.splitlines()), err))
    m = re.match(r"hpsearch: error: cannot write (.+?): (.+?); the search stopped \((.+?)\)\. "
                 r".*then continue with: (.+)$", line)
    assert m, line
    path, why, _, command = m.groups()
    assert why == cause, line
    assert path.startswith(search), line
    argv = shlex.split(command)
    assert argv[:2] == [sys.executable, os.path.abspath(HPSEARCH)], argv
    assert argv[-1] == "--resume=%s" % search, argv
    assert "--local_jobs=2" in argv and "--visible_gpus=-1" in argv, argv
    return path, argv


def continue_as_told(project, search, jobs, argv, problems):
    """The cause is fixed: the command the launcher printed completes the search."""
    release(project)
    rc, out, err = run(argv, project)
    assert "Traceback" not in err, err
    if rc != 0:
        problems.append("the continue command failed (exit %s):\n%s%s" % (rc, out, err))
    else:
        assert_complete(project, search, jobs)
    assert_nothing_left(project, search)
    assert not problems, "\n".join(problems)


def check_ends_recorded(search, problems):
    """Design: 'what can be recorded is recorded'. Every run the journal saw start has an
    end there, a row in the CSV and a line in hpsearch.log (for when those files can still
    be written)."""
    last = {}
    for entry in journal_entries(search):
        last[entry["run"]] = entry["state"]
    rows = {r["out_dir"] for r in read_results(search)[1]}
    log = "\n".join(log_lines(search))
    for name, state in sorted(last.items()):
        if state == "running":
            problems.append("%s ran, but its end is not in the journal" % name)
        if name not in rows:
            problems.append("%s ran, but has no row in search_results.csv" % name)
        if not re.search(r"^\S+ \S+ (finished|unfinished|failed|killed) %s " % name, log, re.M):
            problems.append("%s ran, but hpsearch.log has no line on its end" % name)


def log_lines(search):
    with open(os.path.join(search, "hpsearch.log"), encoding="utf-8") as f:
        return f.read().splitlines()


def assert_log_has_everything(search, jobs):
    """hpsearch.log: the start line, a 'started' and a 'finished' line per run, the end."""
    text = "\n".join(log_lines(search))
    names = [r["name"] for r in SearchDir(search).record()["runs"]]
    assert "hpsearch: %d runs in %s" % (len(jobs), search) in text, text
    for name in names:
        assert re.search(r"\bstarted %s\b" % name, text), (name, text)
        assert re.search(r"\bfinished %s\b" % name, text), (name, text)
    assert "hpsearch: done: %d finished" % len(jobs) in text, text


# ------------------------------------------------------------------------------------------
# Disks that fill up or turn read-only: a small tmpfs
# ------------------------------------------------------------------------------------------


def _mount(*args):
    return subprocess.call(["mount"] + list(args), stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)


@contextlib.contextmanager
def tmpfs(path, size):
    """A tmpfs of ``size`` at ``path``; unmounted (every layer) at the end, whatever happens."""
    path = str(path)
    os.makedirs(path)
    rc = -1
    if os.geteuid() == 0 and shutil.which("mount"):
        rc = _mount("-t", "tmpfs", "-o", "size=%s" % size, "hpsearch_test", path)
    if rc != 0:
        reason = "cannot mount a tmpfs here (needs root and mount permission)"
        if os.environ.get("CI"):
            pytest.fail(reason + "; $CI is set, so the disk tests must run")
        pytest.skip(reason)
    try:
        yield path
    finally:
        for _ in range(5):
            if not os.path.ismount(path):
                break
            if subprocess.call(["umount", path], stderr=subprocess.DEVNULL) != 0:
                subprocess.call(["umount", "-l", path], stderr=subprocess.DEVNULL)
        assert not os.path.ismount(path), "could not unmount %s" % path


def make_read_only(path):
    """Every path under ``path`` looked up from now on is read-only (see the docstring)."""
    assert _mount("--bind", path, path) == 0
    assert _mount("-o", "remount,bind,ro", path) == 0


def make_writable(path):
    assert _mount("-o", "remount,bind,rw", path) == 0


def runs_going(project, base, n):
    """``n`` runs have made their folders, and the launcher has started them all and
    written their command files: the search folder's path."""
    searches = project.searches(base)
    if len(ledger(project, "ready.txt")) < n or not searches:
        return None
    try:
        names = os.listdir(os.path.join(searches[0].path, "jobs"))
    except OSError:
        return None
    return searches[0].path if len([f for f in names if f.endswith(".sh")]) >= n else None


# ------------------------------------------------------------------------------------------
# 1. The terminal goes away
# ------------------------------------------------------------------------------------------


def test_sighup_changes_nothing(tmp_path):
    jobs = ["nap.1", "nap.2", "nap.3", "nap.4"]
    project = new_project(tmp_path, jobs)
    launcher = Launcher(project, "--local_jobs=2")
    try:
        launcher.await_(lambda: len(ledger(project, "pids.txt")) >= 2)
        # A hangup goes to the terminal's process group (the launcher's own: its session).
        os.killpg(launcher.proc.pid, signal.SIGHUP)
        time.sleep(0.1)
        os.kill(launcher.proc.pid, signal.SIGHUP)
        rc = launcher.finish(60)
    finally:
        launcher.kill()
    out, err = launcher.output()
    assert rc == 0, (rc, out, err)
    assert err == "", err
    search = only_search(project)
    assert_complete(project, search, jobs)
    assert_log_has_everything(search, jobs)
    assert "hpsearch: done: 4 finished" in out, out
    assert_nothing_left(project, search)


class Terminal(object):
    """A pseudo-terminal that is the launcher's controlling terminal (stdin, stdout, stderr).
    A thread reads what the launcher writes; ``hang_up()`` closes it, as closing a terminal
    window or losing an ssh connection does: the kernel sends SIGHUP to the launcher (the
    session leader) and every later write to the terminal fails with EIO."""

    def __init__(self):
        self.master, self.slave = os.openpty()
        self.data = b""
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        try:
            while not self.stop.is_set():
                ready, _, _ = select.select([self.master], [], [], 0.02)
                if ready:
                    try:
                        chunk = os.read(self.master, 65536)
                    except OSError:
                        break
                    if not chunk:
                        break
                    self.data += chunk
        finally:
            os.close(self.master)

    def start(self, argv, **kwargs):
        import fcntl
        import termios

        def controlling_terminal():  # after setsid (start_new_session) in the child
            fcntl.ioctl(1, termios.TIOCSCTTY, 0)

        proc = subprocess.Popen(argv, stdin=self.slave, stdout=self.slave, stderr=self.slave,
                                start_new_session=True, preexec_fn=controlling_terminal,
                                **kwargs)
        os.close(self.slave)
        return proc

    def hang_up(self):
        self.stop.set()
        self.thread.join()


def test_closed_terminal_changes_nothing(tmp_path):
    jobs = ["nap.1", "nap.2", "nap.3", "nap.4"]
    project = new_project(tmp_path, jobs)
    terminal = Terminal()
    proc = terminal.start(hpsearch_argv(project, "--local_jobs=2"), cwd=project.path,
                          env=environment(project))
    try:
        assert wait_for(lambda: len(ledger(project, "pids.txt")) >= 2 or proc.poll() is not None,
                        30)
        assert proc.poll() is None, terminal.data
        terminal.hang_up()
        rc = proc.wait(timeout=60)
    finally:
        terminal.hang_up()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    shown = terminal.data.decode("utf-8", "replace")
    assert rc == 0, (rc, shown)
    assert "hpsearch: 4 runs in" in shown, shown  # it did write to the terminal before
    assert "hpsearch: done" not in shown, shown  # and could not after the hangup
    assert "Traceback" not in shown
    search = only_search(project)
    assert_complete(project, search, jobs)
    assert_log_has_everything(search, jobs)
    assert_nothing_left(project, search)


# ------------------------------------------------------------------------------------------
# 2. stdout closed
# ------------------------------------------------------------------------------------------


def test_stdout_reader_leaves_early(tmp_path):
    """``hpsearch.py ... | head -1``: head leaves after the first line; the launcher's later
    writes to stdout fail (EPIPE). Its own exit status is read through a wrapper shell."""
    jobs = ["nap.1", "nap.2", "nap.3", "nap.4"]
    project = new_project(tmp_path, jobs)
    status = os.path.join(str(tmp_path), "status")
    argv = hpsearch_argv(project, "--local_jobs=2")
    inner = "%s; echo $? > %s" % (" ".join(shlex.quote(a) for a in argv), shlex.quote(status))
    rc, out, err = run(["/bin/sh", "-c", "sh -c %s | head -1" % shlex.quote(inner)], project,
                       timeout=60)
    assert rc == 0, (rc, out, err)
    assert out.startswith("hpsearch: planned 4 commands") and len(out.splitlines()) == 1, out
    assert err == "", err  # no traceback, no "Exception ignored ... BrokenPipeError"
    with open(status) as f:
        assert f.read().strip() == "0"
    search = only_search(project)
    assert_complete(project, search, jobs)
    assert_log_has_everything(search, jobs)
    assert_nothing_left(project, search)


def test_stdout_closed_from_the_start(tmp_path):
    """``hpsearch.py ... >&-`` (a cron job, a daemon): no stdout at all. Python then has
    sys.stdout None; the search must still run, its messages only in hpsearch.log."""
    jobs = ["ok.1", "ok.2"]
    project = new_project(tmp_path, jobs)
    argv = hpsearch_argv(project)
    rc, out, err = run(["/bin/sh", "-c", " ".join(shlex.quote(a) for a in argv) + " >&-"],
                       project)
    assert "Traceback" not in err, err
    assert rc == 0 and err == "", (rc, err)
    search = only_search(project)
    assert_complete(project, search, jobs)
    assert_log_has_everything(search, jobs)


# ------------------------------------------------------------------------------------------
# 3.-5. The launcher's own files fail mid-search: stop cleanly, exit 3, resume completes
# ------------------------------------------------------------------------------------------


def launcher_stopped_by(project, cause, break_disk=None, base=None):
    """Run a search two at a time until the launcher stops for its own files; it must say
    so in one line naming ``cause``, exit 3 and leave nothing running. ``break_disk(search)``
    is called while hold.1 and hold.2 run, then hold.1 ends. ``base``: --out_dir.
    ``(search, path named, continue argv, problems)``."""
    problems = []
    launcher = Launcher(project, "--local_jobs=2", *(["--out_dir=%s" % base] if base else []))
    try:
        if break_disk is not None:
            launcher.await_(lambda: runs_going(project, base, 2))
            break_disk(only_search(project, base))
            release(project, "hold.1")
        rc = launcher.finish(60)
    finally:
        launcher.kill()
    out, err = launcher.output()
    search = only_search(project, base)
    assert rc == 3, (rc, out, err)
    path, argv = stopped_line(err, cause, search, problems)
    assert_nothing_left(project, search)
    return search, path, argv, problems


def test_disk_full_mid_search(tmp_path):
    """fill.1 writes to stdout (jobs/<run>.out in the search folder) until the disk is full,
    while hold.2 runs; the launcher's next write fails. (tmpfs gives space by the page: the
    journal, CSV and log, each under a page, can still take their lines.)"""
    jobs = ["fill.1", "hold.2", "ok.3", "ok.4"]
    project = new_project(tmp_path, jobs)
    with tmpfs(tmp_path / "disk", "2m") as disk:
        search, _, argv, problems = launcher_stopped_by(
            project, "No space left on device", base=disk)
        assert len(ledger(project, "done.txt")) == 0  # hold.2 never completed
        check_ends_recorded(search, problems)
        assert _mount("-o", "remount,size=64m", disk) == 0  # space again
        continue_as_told(project, search, jobs, argv, problems)


def test_disk_turns_read_only_mid_search(tmp_path):
    """hold.1 ends after the disk turned read-only (hold.2 still runs): the launcher cannot
    start the next run nor record anything."""
    jobs = ["hold.1", "hold.2", "ok.3", "ok.4"]
    project = new_project(tmp_path, jobs)
    with tmpfs(tmp_path / "disk", "16m") as disk:
        search, _, argv, problems = launcher_stopped_by(
            project, "Read-only file system", lambda search: make_read_only(disk), base=disk)
        make_writable(disk)
        continue_as_told(project, search, jobs, argv, problems)


def test_jobs_folder_deleted_mid_search(tmp_path):
    """jobs/ goes while two runs go; hold.1 ends, and the next start cannot make its log
    file there. The journal, CSV and log are intact: every end can be recorded."""
    jobs = ["hold.1", "hold.2", "ok.3", "ok.4"]
    project = new_project(tmp_path, jobs)
    search, path, argv, problems = launcher_stopped_by(
        project, "No such file or directory",
        lambda search: shutil.rmtree(os.path.join(search, "jobs")))
    assert path.startswith(os.path.join(search, "jobs")), path
    check_ends_recorded(search, problems)
    continue_as_told(project, search, jobs, argv, problems)  # nothing else to fix


# ------------------------------------------------------------------------------------------
# 6. Damaged files
# ------------------------------------------------------------------------------------------

FUZZ = settings(max_examples=int(os.environ.get("HPSEARCH_FUZZ_EXAMPLES", 40)), deadline=None,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def ended_once(tmp_path_factory):
    project = new_project(tmp_path_factory.mktemp("ended"), ["ok.1", "ok.2", "ok.3"])
    CREATED.remove(project)
    rc, out, err = run(hpsearch_argv(project), project)
    assert rc == 0, (rc, out, err)
    return project, only_search(project)


@pytest.fixture
def ended(ended_once):
    """A small search that ran to its end (copied by each test that damages it); the
    processes of its project are checked after each test."""
    CREATED.append(ended_once[0])
    return ended_once


def damaged_copy(ended, tmp_path, journal=None, record=None):
    """A copy of the ended search with its journal (bytes appended, or a function of the
    journal's bytes) or its record (a function changing the loaded record) damaged."""
    project, search = ended
    copy = os.path.join(str(tmp_path), "copy", os.path.basename(search))
    shutil.copytree(search, copy)
    path = os.path.join(copy, "run_journal.jsonl")
    if journal is not None:
        with open(path, "rb") as f:
            data = f.read()
        data = journal(data) if callable(journal) else data + journal
        with open(path, "wb") as f:
            f.write(data)
    if record is not None:
        with open(os.path.join(copy, "search_record.json")) as f:
            loaded = json.load(f)
        record(loaded)
        with open(os.path.join(copy, "search_record.json"), "w") as f:
            json.dump(loaded, f)
    return copy


def resume_and_postprocess(project, search):
    """``--resume`` and hpsearch_postprocessing.py on a folder: their (rc, out, err)."""
    resumed = run([sys.executable, HPSEARCH, "--resume", search, "--visible_gpus=-1"], project)
    post = run([sys.executable, POST, search], project)
    return resumed, post


# Damage appended to (or made of) a journal; the number of lines that cannot be read.
JOURNAL_DAMAGE = {
    "not_utf8": (b'{"run": "sim_x", "state": "finished\xff\xfe"}\n', 1),
    "binary_garbage": (b"\x00\x01\x02\xff\xfe\x80garbage\x1b[31m\r\n" b"\x89PNG\r\x1a\n", 2),
    "json_list": (b'["run", "state"]\n', 1),
    "json_number": (b"42\n", 1),
    "json_string_null": (b'"finished"\nnull\n', 2),
    "attempt_x": (b'{"run": "sim_x", "state": "finished", "attempt": "x"}\n', 1),
    "exit_code_string": (b'{"run": "sim_x", "state": "failed", "exit_code": "3"}\n', 1),
    "missing_run": (b'{"state": "finished", "attempt": 1}\n', 1),
    "unknown_state": (b'{"run": "sim_x", "state": "exploded"}\n', 1),
    "run_not_a_string": (b'{"run": 7, "state": "finished"}\n', 1),
    "cut_line_at_the_end": (b'{"run": "sim_x", "state": "fini', 1),
    "lone_surrogate_escape": (b'{"run": "\\udcff", "state": "finished"}\n', 0),
    "blank_lines": (b"\n  \n\t\n", 0),
}


@pytest.mark.parametrize("case", sorted(JOURNAL_DAMAGE))
def test_damaged_journal_in_process(ended, tmp_path, monkeypatch, capsys, case):
    damage, bad = JOURNAL_DAMAGE[case]
    copy = damaged_copy(ended, tmp_path, journal=damage)
    monkeypatch.setattr(hpsearch, "CONSOLE", hpsearch.Console())
    capsys.readouterr()
    journal = hpsearch.SearchFolder(copy).read_journal()
    err = capsys.readouterr().err
    names = [r["name"] for r in SearchDir(copy).record()["runs"]]
    for name in names:  # the whole lines are all still read
        assert [e["state"] for e in journal[name]] == ["running", "finished"], journal[name]
    check_skip_warning(err, bad)


def check_skip_warning(err, bad, prefix="hpsearch: warning: "):
    assert "Traceback" not in err, err
    lines = err.splitlines()
    if bad == 0:
        assert lines == [], err
    else:
        assert len(lines) == 1, err
        assert lines[0].startswith(prefix), err
        assert lines[0].endswith(": %d line(s) that cannot be read were skipped" % bad), err


@pytest.mark.parametrize("case", ["not_utf8", "binary_garbage", "attempt_x", "exit_code_string",
                                  "missing_run", "cut_line_at_the_end"])
def test_damaged_journal_resume_and_postprocessing(ended, tmp_path, case):
    project = ended[0]
    damage, bad = JOURNAL_DAMAGE[case]
    copy = damaged_copy(ended, tmp_path, journal=damage)
    (rc, out, err), (prc, pout, perr) = resume_and_postprocess(project, copy)
    assert rc == 0, (rc, out, err)
    check_skip_warning(err, bad)
    assert "3 of 3 runs finished before, 0 to run" in out, out
    assert prc == 0, (prc, pout, perr)
    check_skip_warning(perr, bad)
    rows = read_results(copy, "postprocessing_results.csv")[1]
    assert sorted(r["job"] for r in rows) == ["ok.1", "ok.2", "ok.3"]
    assert all(r["hpsearch_state"] == "finished" for r in rows), rows


def test_journal_of_garbage_only(ended, tmp_path):
    """Nothing in the journal can be read: every run's fate comes from its folder. The
    resume records those finished runs; what it writes must be readable itself."""
    project = ended[0]
    copy = damaged_copy(ended, tmp_path, journal=lambda data: bytes(
        (b ^ 0x5A) if b != 0x0A else b for b in data))
    journal = os.path.join(copy, "run_journal.jsonl")
    with open(journal, "rb") as f:
        damaged = f.read()
    bad = len([line for line in damaged.splitlines() if line.strip()])
    (rc, out, err), (prc, pout, perr) = resume_and_postprocess(project, copy)
    assert (rc, prc) == (0, 0), (out, err, pout, perr)
    check_skip_warning(err, bad)
    assert "3 of 3 runs finished before, 0 to run" in out, out
    with open(journal, "rb") as f:
        written = f.read()[len(damaged):].splitlines()
    unreadable = [line for line in written
                  if hpsearch.journal_entry(json.loads(line.decode("utf-8"))) is None]
    assert not unreadable, "the resume wrote journal lines that its own reader skips: %s" % (
        unreadable,)
    check_skip_warning(perr, bad)


# Hypothesis: journals made of good lines and every kind of bad one, in any order.

def _good_entry(names):
    return st.fixed_dictionaries(
        {"run": st.sampled_from(names + ["sim_other"]),
         "state": st.sampled_from(list(hpsearch.JOURNAL_STATES)),
         "attempt": st.integers(1, 5), "time": st.floats(0, 2e9)},
        optional={"exit_code": st.one_of(st.none(), st.integers(-300, 300)),
                  "job_id": st.one_of(st.none(), st.integers(1, 10 ** 6), st.text(max_size=5)),
                  "job_start": st.one_of(st.none(), st.integers(0, 10 ** 9))})


json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False),
              st.text(max_size=6)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=5), inner, max_size=3)),
    max_leaves=6)


def _wrong_shape(names):
    """A dict close to an entry with one field wrong, or any JSON value that is no dict."""
    field_wrong = st.tuples(
        _good_entry(names),
        st.sampled_from(["run", "state", "attempt", "exit_code", "job_id", "job_start",
                         "-run", "-state"]),
        json_values)

    def spoil(args):
        entry, field, value = args
        entry = dict(entry)
        if field.startswith("-"):
            del entry[field[1:]]
            return entry
        good = {"run": lambda v: isinstance(v, str),
                "state": lambda v: v in hpsearch.JOURNAL_STATES,
                "attempt": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                "exit_code": lambda v: v is None or (isinstance(v, int)
                                                     and not isinstance(v, bool)),
                # an id: a pid or a scheduler's job id (a bool passes as an int: harmless,
                # it is neither a live pid nor a job id)
                "job_id": lambda v: v is None or isinstance(v, (int, str)),
                "job_start": lambda v: v is None or (isinstance(v, int)
                                                     and not isinstance(v, bool))}[field]
        if good(value):
            value = [value]  # never right for any field
        entry[field] = value
        return entry
    return st.one_of(field_wrong.map(spoil),
                     json_values.filter(lambda v: not isinstance(v, dict)),
                     st.sampled_from([{"run": "sim_x", "state": "finished", "attempt": "x"},
                                      {"run": "sim_x", "state": "failed", "exit_code": "3"},
                                      {"state": "finished"}, {"run": "sim_x"}]))


def journal_lines(names):
    """``(raw line without newline, readable?)`` pairs."""
    def dumped(entry):
        return json.dumps(entry).encode("utf-8")
    good = _good_entry(names).map(lambda e: (dumped(e), True))
    wrong = _wrong_shape(names).map(lambda v: (dumped(v), False))
    garbage = st.binary(max_size=40).map(lambda b: (b.replace(b"\n", b"?"), False))
    not_utf8 = st.tuples(_good_entry(names), st.sampled_from([b"\xff", b"\xc3", b"\xed\xb3\xbf",
                                                              b"\x80\x80"])).map(
        lambda p: (dumped(p[0])[:-1] + b', "x": "' + p[1] + b'"}', False))
    cut = st.tuples(_good_entry(names), st.floats(0, 0.99)).map(
        lambda p: (dumped(p[0])[:int(len(dumped(p[0])) * p[1])], False))
    return st.one_of(good, good, wrong, garbage, not_utf8, cut)


@FUZZ
@given(data=st.data())
def test_any_journal_is_read_with_one_warning(ended, monkeypatch, capsys, data):
    import hpsearch_postprocessing
    names = [r["name"] for r in SearchDir(ended[1]).record()["runs"]]
    lines = data.draw(st.lists(journal_lines(names), max_size=12), label="lines")
    ends_cut = data.draw(st.booleans(), label="last line without newline")
    raw = b"".join(line + b"\n" for line, _ in lines)
    if ends_cut and raw:
        raw = raw[:-1]
    bad = sum(1 for line, ok in lines if not ok and line.strip())
    want = {}
    for line, ok in lines:
        if ok:
            want.setdefault(json.loads(line.decode("utf-8"))["run"], []).append(
                json.loads(line.decode("utf-8")))
    folder = tempfile.mkdtemp(prefix="hpsearch_journal_")
    try:
        with open(os.path.join(folder, "run_journal.jsonl"), "wb") as f:
            f.write(raw)
        monkeypatch.setattr(hpsearch, "CONSOLE", hpsearch.Console())
        for reader in (hpsearch.SearchFolder(folder).read_journal,
                       lambda: hpsearch_postprocessing.read_journal(
                           hpsearch.SearchFolder(folder))):
            capsys.readouterr()
            got = reader()
            err = capsys.readouterr().err
            assert dict(got) == want, (raw, dict(got))
            check_skip_warning(err, bad)
    finally:
        shutil.rmtree(folder)


# Records with a run entry of the wrong shape.

def _set_run(i, value):
    def change(record):
        record["runs"][i] = value
    return i, change


def _set_field(i, field, value):
    def change(record):
        if value is DELETE:
            del record["runs"][i][field]
        else:
            record["runs"][i][field] = value
    return i, change


DELETE = object()
RECORD_DAMAGE = {
    "entry_is_a_number": _set_run(1, 5),
    "entry_is_a_list": _set_run(1, ["sim_x", "sim_x"]),
    "entry_is_null": _set_run(2, None),
    "no_name": _set_field(0, "name", DELETE),
    "name_is_a_number": _set_field(1, "name", 12),
    "name_is_empty": _set_field(1, "name", ""),
    "name_with_a_slash": _set_field(1, "name", "../sim_x"),
    "no_out_dir": _set_field(2, "out_dir", DELETE),
    "out_dir_is_a_list": _set_field(2, "out_dir", ["a"]),
    "arguments_not_a_list": _set_field(0, "arguments", 3),
    "arguments_of_numbers": _set_field(0, "arguments", [1, 2]),
    "arguments_a_string": _set_field(1, "arguments", "--job=ok.2"),
    "index_a_string": _set_field(1, "index", "1"),
    "args_a_list": _set_field(1, "args", ["job"]),
    "nul_in_an_argument": _set_field(0, "arguments", ["--job=ok\u0000.1"]),
    "nul_in_the_name": _set_field(0, "name", "sim\u0000x"),
    "out_dir_is_the_search_folder": _set_field(0, "out_dir", "."),
    "out_dir_is_the_parent_folder": _set_field(0, "out_dir", ".."),
}


def never_run_copy(ended, tmp_path, record):
    """A copy of the ended search as if none of its runs had run yet (empty journal, no run
    folders, no results): a resume would run every run. ``record`` damages its record."""
    copy = damaged_copy(ended, tmp_path, record=record)
    with open(os.path.join(copy, "run_journal.jsonl"), "w"):
        pass
    for name in os.listdir(copy):
        if name.startswith("sim_"):
            shutil.rmtree(os.path.join(copy, name))
    os.remove(os.path.join(copy, "search_results.csv"))
    return copy


@pytest.mark.parametrize("case", sorted(RECORD_DAMAGE))
def test_malformed_record_entry(ended, tmp_path, case):
    project = ended[0]
    index, damage = RECORD_DAMAGE[case]
    copy = never_run_copy(ended, tmp_path, damage)
    starts = len(ledger(project, "pids.txt"))
    before = tree(os.path.dirname(copy))
    (rc, out, err), (prc, pout, perr) = resume_and_postprocess(project, copy)
    assert rc == 2, (rc, out, err)
    line = one_error_line(err)
    assert re.search(r"search_record\.json: run %d of the record is malformed" % index,
                     line), line
    assert prc == 2, (prc, pout, perr)
    line = one_error_line(perr, "hpsearch_postprocessing: error:")
    assert re.search(r"run %d of the record is malformed" % index, line), line
    assert len(ledger(project, "pids.txt")) == starts, "a run started"
    assert tree(os.path.dirname(copy)) == before  # nothing renamed or written


def test_refused_resume_leaves_no_lock_file(ended, tmp_path):
    """Design: .hpsearch.lock is removed when the launcher ends, also when --resume refuses
    the folder (here: a malformed record entry)."""
    copy = never_run_copy(ended, tmp_path, RECORD_DAMAGE["name_is_a_number"][1])
    before = tree(copy)
    rc, out, err = run([sys.executable, HPSEARCH, "--resume", copy, "--visible_gpus=-1"],
                       ended[0])
    assert rc == 2, (rc, out, err)
    one_error_line(err)
    assert tree(copy) == before, "left behind: %s" % sorted(tree(copy) - before)


@FUZZ
@given(data=st.data())
def test_any_record_entry_is_read_or_refused(ended, data):
    """runs_from_record on a record whose run ``i`` is anything: runs with string argv and
    names whose folders are in the search folder, or UsageError naming run ``i``; never
    another exception. (NUL bytes, '.' and '..' are cases of test_malformed_record_entry.)"""
    search = ended[1]
    record = SearchDir(search).record()
    i = data.draw(st.integers(0, len(record["runs"]) - 1), label="i")
    entry = dict(record["runs"][i])
    how = data.draw(st.sampled_from(["replace", "field", "drop"]), label="how")
    if how == "replace":
        record["runs"][i] = data.draw(json_values, label="entry")
    elif how == "drop":
        del entry[data.draw(st.sampled_from(sorted(entry)), label="field")]
        record["runs"][i] = entry
    else:
        field = data.draw(st.sampled_from(sorted(entry)), label="field")
        entry[field] = data.draw(st.one_of(json_values, st.sampled_from(
            ["", "a/b", "../sim_x", ["--a", 1], [], {}, "--x"])),
            label="value")
        record["runs"][i] = entry
    folder = hpsearch.SearchFolder(search)
    try:
        runs = hpsearch.runs_from_record(record, folder)
    except hpsearch.UsageError as exc:
        assert "run %d of the record is malformed" % i in str(exc), exc
        return
    for run in runs:
        assert all(isinstance(a, str) for a in run.argv), run.argv
        assert os.path.dirname(run.out_dir) == search, run.out_dir
        assert isinstance(run.name, str) and run.name, run.name


# ------------------------------------------------------------------------------------------
# 7. Odd values
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", [b"--out_dir=out/\xff", b"--out_dir=\xffx",
                                  b"--run_cwd=\xff"])
def test_non_utf8_flag_is_refused_before_anything_is_written(tmp_path, flag):
    project = new_project(tmp_path, ["ok.1"])
    before = tree(project.path)
    argv = [a.encode() for a in hpsearch_argv(project)] + [flag]
    rc, out, err = run(argv, project)
    assert rc == 2, (rc, out, err)
    line = one_error_line(err)
    assert flag.split(b"=")[0].decode() in line and "UTF-8" in line, line
    assert tree(project.path) == before
    assert not os.path.exists(os.path.join(project.path, "out"))
    assert not ledger(project, "pids.txt")


def test_lone_surrogate_in_a_grid_value_is_refused_before_anything_is_written(tmp_path):
    project = new_project(tmp_path, ["ok.1"])
    with open(project.config, "a") as f:  # the escape, not the character: the file is UTF-8
        f.write('grid = {"job": ["ok.1", "bad\\udcff"]}\n')
    before = tree(project.path)
    rc, out, err = run(hpsearch_argv(project), project)
    assert rc == 2, (rc, out, err)
    line = one_error_line(err)
    assert "UTF-8" in line, line
    assert tree(project.path) == before
    assert not os.path.exists(os.path.join(project.path, "out"))
    assert not ledger(project, "pids.txt")


def test_huge_summary_and_grid_values(tmp_path):
    """A summary value of 300 KiB and a grid value of 210 KiB. (No single argument over
    128 KiB can be passed to a program on Linux: the run with the big grid value cannot start
    there and is recorded as failed, exit 127; its row still holds the whole value.)"""
    big = "g" * (210 * 1024)
    project = new_project(tmp_path, ["ok.1", "ok.2"])
    project.write_config({"job": ["ok.1", "ok.2"], "note_kib": [300]},
                         conditions=[({"job": ["ok.2"]}, {"big": [big]})],
                         summary_keywords=["acc", "note", "finished"])
    rc, out, err = run(hpsearch_argv(project), project)
    assert rc == 1, (rc, out[-2000:], err[-2000:])   # ok.2 cannot start (see above)
    assert "Traceback" not in err
    search = only_search(project)
    header, rows = read_results(search)
    by_job = {r["job"]: r for r in rows}
    assert sorted(by_job) == ["ok.1", "ok.2"], rows
    assert by_job["ok.1"]["hpsearch_state"] == "finished"
    assert by_job["ok.1"]["note"] == "n" * (300 * 1024)
    assert by_job["ok.2"]["big"] == big
    if by_job["ok.2"]["hpsearch_state"] != "finished":
        assert (by_job["ok.2"]["hpsearch_state"], by_job["ok.2"]["hpsearch_exit_code"]) == (
            "failed", "127"), by_job["ok.2"]

    rc, out, err = run([sys.executable, HPSEARCH, "--resume", search, "--visible_gpus=-1"],
                       project)
    # ok.2 still cannot start: the resumed search ends with it unfinished (exit 1)
    assert rc == 1 and "Traceback" not in err, (rc, out[-2000:], err[-2000:])
    rows = read_results(search)[1]
    assert sorted(r["job"] for r in rows) == ["ok.1", "ok.2"]
    assert {r["job"]: r for r in rows}["ok.1"]["note"] == "n" * (300 * 1024)
    assert {r["job"]: r for r in rows}["ok.2"]["big"] == big

    rc, out, err = run([sys.executable, POST, search], project)
    assert rc == 0 and "Traceback" not in err, (rc, out[-2000:], err[-2000:])
    rows = read_results(search, "postprocessing_results.csv")[1]
    by_job = {r["job"]: r for r in rows}
    assert by_job["ok.1"]["note"] == "n" * (300 * 1024)
    assert by_job["ok.2"]["big"] == big


def test_unbalanced_quote_in_scheduler_args(tmp_path):
    project = new_project(tmp_path, ["ok.1"])
    before = tree(project.path)
    rc, out, err = run(hpsearch_argv(project, "--scheduler_args=--account='x"), project)
    assert rc == 2, (rc, out, err)
    assert "--scheduler_args" in one_error_line(err)
    assert tree(project.path) == before


@pytest.mark.parametrize("code", ["0", "None", "'bye'"])
def test_config_calling_sys_exit(tmp_path, code):
    project = new_project(tmp_path, ["ok.1"])
    with open(project.config, "a") as f:
        f.write("import sys\nsys.exit(%s)\n" % code)
    before = tree(project.path)
    rc, out, err = run(hpsearch_argv(project), project)
    assert rc == 2, (rc, out, err)
    line = one_error_line(err)
    assert project.config in line and "sys.exit" in line, line
    assert tree(project.path) == before


@pytest.mark.parametrize("flags", [["--no_such_flag"], ["--local_jobs=many"], ["--out_dir"],
                                   ["--grid_module"], ["--resume"], ["extra_positional"],
                                   ["--max_retries=1.5"], ["--deterministic_search=yes"]])
def test_bad_flags_give_one_line(tmp_path, flags):
    project = new_project(tmp_path, ["ok.1"])
    before = tree(project.path)
    rc, out, err = run(hpsearch_argv(project, *flags), project)
    assert rc == 2, (rc, out, err)
    one_error_line(err)
    assert out == ""
    assert tree(project.path) == before
