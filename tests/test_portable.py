"""Portable search folders: copies, moves, other spellings of the path, hpsearch 1.0 records,
the continue-command, the lock and temp files, hpsearch.log.

A search folder is self-contained (see hpsearch.SearchFolder): a copy is resumed where it is
and never touches the folder it was copied from (nor its still-running processes); a moved
folder, or a symlink to it, is the same folder (its leftover runs are found and stopped).

Every search here runs SCRIPT below, which keeps a ledger in ``<project>/ledger/`` (outside
the search folders, so the original and its copies share it): ``pids.txt`` (pid and job, as
test_reliability's helpers read it), ``attempts_<job>`` (one line per start of the job) and
``events.jsonl`` (``start``, ``done``, ``term``, ``refused`` with the time, pid, attempt,
output folder and the HPSEARCH_SEARCH_ID the run was started with). Grid value ``job=<mode>.<n>``:

* ``ok``: completes at once;
* ``first``: the first attempt of the job (in this project) waits until ``ledger/release``
  exists; later attempts complete at once. SIGTERM ends any run at once, after a ``term`` event.

Leftover processes: the helpers of test_reliability (MARK in the environment, OrphanReaper,
the autouse ``no_leftovers`` teardown) are used as they are.
"""

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile

import pytest

from conftest import (HPSEARCH, REPO, SCRIPT_TOOLS, SearchDir, make_project, only_search,
                      read_csv, write_file)
import test_reliability as rel
from test_reliability import (CREATED, MARK, OrphanReaper, alive, await_launcher, finish,
                              launch, ledger_path, no_leftovers, output, resume,
                              search_with, wait_for)

assert no_leftovers  # the autouse teardown of test_reliability, used here as it is

SCRIPT = SCRIPT_TOOLS + r'''
import signal


OPTS = options(sys.argv[1:])
OUT = OPTS["out_dir"]
JOB = OPTS.get("job", "ok.0")
MODE, _, NUM = JOB.partition(".")
STATE = {"attempt": 0}


def event(kind):
    note("events.jsonl", json.dumps({
        "event": kind, "job": JOB, "time": time.time(), "pid": os.getpid(),
        "attempt": STATE["attempt"], "out_dir": OUT,
        "marker": os.environ.get("HPSEARCH_SEARCH_ID")}))


def on_term(signum, frame):
    event("term")
    os._exit(143)


def main():
    signal.signal(signal.SIGTERM, on_term)
    note("pids.txt", "%d %s" % (os.getpid(), JOB))
    note("attempts_" + JOB, "x")
    with open(os.path.join(LEDGER, "attempts_" + JOB)) as f:
        STATE["attempt"] = len(f.read().splitlines())
    event("start")
    if os.path.exists(OUT):  # as hypnettorch scripts: never reuse a folder
        event("refused")
        sys.exit(3)
    os.makedirs(OUT)
    with open(os.path.join(OUT, "argv.json"), "w") as f:
        json.dump(sys.argv[1:], f)
    if MODE == "first" and STATE["attempt"] == 1:
        while not os.path.exists(os.path.join(LEDGER, "release")):
            time.sleep(0.03)
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
    with open(os.path.join(OUT, "performance_overview.txt"), "w") as f:
        f.write("acc %s\nfinished 1\n" % (int(NUM or 0) / 100.0))
    event("done")
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM])


main()
'''

KEYWORDS = ["acc", "finished"]
STAMPED = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (.*)$")


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------


def new_project(tmp_path, jobs, name="proj"):
    project = make_project(tmp_path, script_body=SCRIPT, grid={"job": list(jobs)},
                           summary_keywords=KEYWORDS, name=name)
    os.makedirs(ledger_path(project))
    CREATED.append(project)  # no_leftovers ends what its runs left running
    return project


def events(project, kind=None):
    try:
        with open(ledger_path(project, "events.jsonl")) as f:
            found = [json.loads(line) for line in f if line.strip()]
    except OSError:
        return []
    return [e for e in found if kind is None or e["event"] == kind]


def release(project):
    write_file(ledger_path(project, "release"), "")


def inside(path, folder):
    """Whether ``path`` is ``folder`` or lies in it (as spelled, no symlinks resolved)."""
    rel_path = os.path.relpath(os.path.abspath(path), os.path.abspath(folder))
    return rel_path != os.pardir and not rel_path.startswith(os.pardir + os.sep)


def snapshot(folder):
    """``(folders, {file: (bytes, mtime_ns)}, {symlink: target})`` of everything under
    ``folder`` (relative paths)."""
    dirs, files, links = set(), {}, {}
    for root, dnames, fnames in os.walk(folder):
        for name in dnames + fnames:
            path = os.path.join(root, name)
            rel_path = os.path.relpath(path, folder)
            if os.path.islink(path):
                links[rel_path] = os.readlink(path)
            elif os.path.isdir(path):
                dirs.add(rel_path)
            else:
                with open(path, "rb") as f:
                    files[rel_path] = (f.read(), os.stat(path).st_mtime_ns)
    return dirs, files, links


def assert_same_snapshot(before, after, allowed_prefixes=()):
    """Nothing changed, appeared or went away, except under ``allowed_prefixes``."""
    def keep(paths):
        return {p for p in paths
                if not any(p == a or p.startswith(a + os.sep) for a in allowed_prefixes)}

    (dirs0, files0, links0), (dirs1, files1, links1) = before, after
    assert keep(dirs0) == keep(dirs1), (sorted(keep(dirs0) ^ keep(dirs1)))
    assert keep(links0) == keep(links1)
    assert keep(files0) == keep(files1), sorted(keep(files0) ^ keep(files1))
    changed = sorted(p for p in keep(files0) if files0[p][0] != files1[p][0])
    assert not changed, "files changed: %s" % changed
    touched = sorted(p for p in keep(files0) if files0[p][1] != files1[p][1])
    assert not touched, "files rewritten (same bytes, new mtime): %s" % touched


def journal_pids(search):
    entries = rel.journal_entries(os.path.join(search, "run_journal.jsonl"))[0]
    return {e.get("job_id") for e in entries if e["state"] == "running"}


def held_runs_started(project, search, count):
    """``count`` first attempts of 'first' jobs run, and the journal has their pids."""
    def check():
        starts = [e for e in events(project, "start")
                  if e["job"].startswith("first.") and e["attempt"] == 1]
        if len(starts) < count:
            return False
        found = search() if callable(search) else search
        return found is not None and {e["pid"] for e in starts} <= journal_pids(found)
    return check


def maybe_search(project, base=None):
    found = project.searches(base)
    return found[0].path if len(found) == 1 else None


def launch_under(python, project, *args):
    """As test_reliability's ``launch`` (a new search), the launcher run by ``python``."""
    if python == sys.executable:
        return launch(project, *args)
    out = tempfile.TemporaryFile(mode="w+")
    env = dict(os.environ)
    env[MARK] = project.path
    proc = subprocess.Popen([python, HPSEARCH, "--grid_module=%s" % project.config,
                             "--visible_gpus=-1", "--deterministic_search"] + list(args),
                            cwd=project.path, env=env, stdin=subprocess.DEVNULL, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)
    proc.log = out
    CREATED.append(proc)
    return proc


def out_dir_of(args):
    base = None
    for a in args:
        if a.startswith("--out_dir="):
            base = a[len("--out_dir="):]
    return base


def stopped_with_ctrl_c(project, jobs_held, *args, **kwargs):
    """Start a search of ``project``, wait until ``jobs_held`` 'first' runs hold, Ctrl-C it.
    The search folder and the launcher's output. ``python``: the launcher's interpreter."""
    proc = launch_under(kwargs.get("python", sys.executable), project, *args)
    base = out_dir_of(args)
    await_launcher(proc, held_runs_started(project, lambda: maybe_search(project, base),
                                           jobs_held), 60)
    os.kill(proc.pid, signal.SIGINT)
    rc = finish(proc, 30)
    out = output(proc)
    assert rc == 130, out
    return only_search(project, base), out


def killed_with_9(project, jobs_held, *args):
    """Start a search, wait until ``jobs_held`` 'first' runs hold and are journaled, kill -9
    the launcher. The search folder and the pids of the runs left running."""
    proc = launch(project, *args)
    base = out_dir_of(args)
    try:
        await_launcher(proc, held_runs_started(project, lambda: maybe_search(project, base),
                                               jobs_held), 60)
        proc.kill()
        assert proc.wait() == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    leftovers = [e["pid"] for e in events(project, "start") if e["job"].startswith("first.")]
    assert len(leftovers) == jobs_held and all(alive(p) for p in leftovers)
    return only_search(project, base), leftovers


def identity(folder):
    return "%s.%d" % (SearchDir(folder).record()["search_id"], os.stat(folder).st_ino)


def check_completed_in(folder, jobs):
    """The search in ``folder`` completed: every job once in search_results.csv, finished,
    its run folder named relative to ``folder`` and there; the journal agrees."""
    header, rows = rel.read_results(folder)
    assert sorted(r["job"] for r in rows) == sorted(jobs), rows
    for row in rows:
        assert row["hpsearch_state"] == "finished", row
        name = row["out_dir"]
        assert name and not os.path.isabs(name), row
        assert os.path.isdir(os.path.join(folder, name)), (name, sorted(os.listdir(folder)))
        with open(os.path.join(folder, name, "performance_overview.txt")) as f:
            assert "finished 1" in f.read()
    states = rel.final_states(folder)
    runs = SearchDir(folder).runs()
    assert len(runs) == len(jobs)
    for run in runs:
        assert inside(run["out_dir"], folder), run["out_dir"]
        assert states[run["name"]]["state"] == "finished", states[run["name"]]


def ran_since(project, count_before):
    """Events after the first ``count_before``."""
    return events(project)[count_before:]


def check_runs_lived_in(new_events, folder, marker=None):
    """Every run in ``new_events`` had its output folder in ``folder`` (its argv.json says
    so too) and, where given, the marker of that folder's identity."""
    starts = [e for e in new_events if e["event"] == "start"]
    assert starts, "nothing ran"
    for e in starts:
        assert inside(e["out_dir"], folder), e
        if marker is not None:
            assert e["marker"] == marker, e
        with open(os.path.join(e["out_dir"], "argv.json")) as f:
            argv = json.load(f)
        assert "--out_dir=%s" % e["out_dir"] in argv, argv


def check_each_finished_once(done_events, jobs):
    done = sorted(e["job"] for e in done_events)
    assert done == sorted(jobs), "jobs completed %s, expected each of %s once" % (done, jobs)


def check_never_twice_at_once(project):
    """From the ledger: no job ran in two processes at the same time. A process's end is
    its done or term event; one without an end never ended (fails if anything came after)."""
    spans = {}
    for e in events(project):
        if e["event"] == "start":
            spans[e["pid"]] = [e["job"], e["time"], None]
        elif e["event"] in ("done", "term", "refused") and e["pid"] in spans \
                and spans[e["pid"]][2] is None:
            spans[e["pid"]][2] = e["time"]
    by_job = {}
    for pid, (job, start, end) in spans.items():
        by_job.setdefault(job, []).append((start, end, pid))
    for job, runs in by_job.items():
        runs.sort()
        for (s0, e0, p0), (s1, e1, p1) in zip(runs, runs[1:]):
            assert e0 is not None and e0 <= s1, (
                "%s ran twice at once: pid %d (%.3f-%s) and pid %d (from %.3f)"
                % (job, p0, s0, e0, p1, s1))


# ------------------------------------------------------------------------------------------
# 1. A copy of a stopped search folder, resumed, never touches the original
# ------------------------------------------------------------------------------------------

JOBS = ["ok.1", "ok.2", "first.3", "first.4", "first.5"]


def test_copy_of_a_search_stopped_with_ctrl_c_resumes_on_its_own(tmp_path):
    project = new_project(tmp_path, JOBS)
    with OrphanReaper(project):
        search, _ = stopped_with_ctrl_c(project, 2, "--local_jobs=2")
        assert not os.path.exists(os.path.join(search, ".hpsearch.lock"))
        done_in_original = events(project, "done")
        assert sorted(e["job"] for e in done_in_original) == ["ok.1", "ok.2"]
        assert all(inside(e["out_dir"], search) for e in done_in_original)
        before = snapshot(search)
        copy = os.path.join(str(tmp_path), "else where", "copy of search")
        shutil.copytree(search, copy, symlinks=True)
        seen = len(events(project))
        release(project)  # first.5 never started: its first attempt runs in the copy

        rc, out, err = resume(project, copy, "--local_jobs=2")
        assert rc == 0, out + err
    assert_same_snapshot(before, snapshot(search))
    new = ran_since(project, seen)
    check_runs_lived_in(new, copy, marker=identity(copy))
    assert identity(copy) != identity(search)
    check_each_finished_once(done_in_original + [e for e in new if e["event"] == "done"], JOBS)
    check_completed_in(copy, JOBS)
    # What the original finished is kept in the copy, not run again; the killed attempts
    # are set aside there.
    assert sorted(e["job"] for e in new if e["event"] == "start") == [
        "first.3", "first.4", "first.5"]
    runs = {r["args"]["job"]: r for r in SearchDir(copy).runs()}
    for job in ("first.3", "first.4"):
        assert os.path.isdir(runs[job]["out_dir"] + "_attempt1"), sorted(os.listdir(copy))
    assert not any(inside(e["out_dir"], search) for e in new)


def test_copy_after_kill_9_leaves_the_originals_runs_alone(tmp_path):
    jobs = ["ok.1", "first.2", "first.3"]
    project = new_project(tmp_path, jobs)
    with OrphanReaper(project):
        search, leftovers = killed_with_9(project, 2, "--local_jobs=2")
        before = snapshot(search)
        copy = os.path.join(str(tmp_path), "copies", "search copy")
        shutil.copytree(search, copy, symlinks=True)
        seen = len(events(project))

        rc, out, err = resume(project, copy, "--local_jobs=2")
        assert rc == 0, out + err
        # The original's runs still go: the copy's resume neither stopped nor counted them.
        still = [p for p in leftovers if alive(p)]
        terms = events(project, "term")
        assert still == leftovers and not terms, (still, terms, out)
        assert "left over" not in out, out
        release(project)  # now the original's runs complete, in the original
        assert wait_for(lambda: not any(alive(p) for p in leftovers), 15)
    new = ran_since(project, seen)
    leftover_done = [e for e in new if e["event"] == "done" and e["pid"] in leftovers]
    assert sorted(e["job"] for e in leftover_done) == ["first.2", "first.3"]
    assert all(inside(e["out_dir"], search) for e in leftover_done)
    # Only the original's own runs wrote into it (into their own run folders).
    leftover_dirs = [os.path.relpath(e["out_dir"], search) for e in leftover_done]
    assert_same_snapshot(before, snapshot(search), allowed_prefixes=leftover_dirs)
    copy_events = [e for e in new if e["pid"] not in leftovers]
    check_runs_lived_in(copy_events, copy, marker=identity(copy))
    copy_done = [e for e in copy_events if e["event"] == "done"]
    ok_done = [e for e in events(project, "done") if e["job"] == "ok.1"]
    check_each_finished_once(ok_done + copy_done, jobs)
    check_completed_in(copy, jobs)
    assert not os.path.exists(os.path.join(copy, ".hpsearch.lock"))
    # The original, resumed in turn, finds what its own runs did (nothing runs again).
    seen = len(events(project))
    rc, out, err = resume(project, search, "--local_jobs=2")
    assert rc == 0, out + err
    assert events(project)[seen:] == [], out
    check_completed_in(search, jobs)


# ------------------------------------------------------------------------------------------
# 2. A moved search folder is resumed where it is now
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["ctrl_c", "kill_9"])
def test_moved_search_folder_resumes_at_its_new_place(tmp_path, how):
    jobs = ["ok.1", "first.2", "first.3"]
    project = new_project(tmp_path, jobs)
    with OrphanReaper(project):
        if how == "ctrl_c":
            search, _ = stopped_with_ctrl_c(project, 2, "--local_jobs=2")
            leftovers = []
        else:  # its runs still go: a move is the same folder, so the resume stops them
            search, leftovers = killed_with_9(project, 2, "--local_jobs=2")
        moved = os.path.join(str(tmp_path), "moved", "the search")
        os.makedirs(os.path.dirname(moved))
        os.rename(search, moved)
        seen = len(events(project))

        rc, out, err = resume(project, moved, "--local_jobs=2")
        assert rc == 0, out + err
        if leftovers:
            assert "left over" in out, out
            assert wait_for(lambda: not any(alive(p) for p in leftovers), 10)
            assert sorted(e["pid"] for e in events(project, "term")) == sorted(leftovers)
    assert not os.path.lexists(search), "the old place was made again"
    assert os.listdir(os.path.dirname(search)) == []
    new = ran_since(project, seen)
    check_runs_lived_in(new, moved)
    check_completed_in(moved, jobs)
    check_each_finished_once(events(project, "done"), jobs)
    check_never_twice_at_once(project)
    assert not os.path.exists(os.path.join(moved, ".hpsearch.lock"))


# ------------------------------------------------------------------------------------------
# 3. Another spelling of the same folder: a symlink
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["resumed_via_link", "started_via_link"])
def test_resume_through_a_symlink_stops_the_killed_launchers_runs(tmp_path, spelling):
    """resumed_via_link: started at the real path, resumed through a symlink to the search
    folder; started_via_link: --out_dir through a symlink, resumed at the real path."""
    jobs = ["first.1", "first.2", "ok.3"]
    project = new_project(tmp_path, jobs)
    with OrphanReaper(project):
        if spelling == "resumed_via_link":
            search, leftovers = killed_with_9(project, 2, "--local_jobs=2")
            link = os.path.join(str(tmp_path), "link to the search")
            os.symlink(search, link)
            again = link
        else:
            real = os.path.join(str(tmp_path), "real out")
            os.makedirs(real)
            link = os.path.join(str(tmp_path), "linked out")
            os.symlink(real, link)
            linked, leftovers = killed_with_9(project, 2, "--local_jobs=2", "--out_dir=%s" % link)
            assert inside(linked, link)
            search = os.path.join(real, os.path.basename(linked))
            again = search

        rc, out, err = resume(project, again, "--local_jobs=2")
        assert rc == 0, out + err
        assert "left over" in out, out
        assert wait_for(lambda: not any(alive(p) for p in leftovers), 10), \
            [p for p in leftovers if alive(p)]
    assert sorted(e["pid"] for e in events(project, "term")) == sorted(leftovers)
    check_never_twice_at_once(project)
    check_each_finished_once(events(project, "done"), jobs)
    check_completed_in(search, jobs)
    assert os.path.islink(link)
    assert not os.path.exists(os.path.join(search, ".hpsearch.lock"))


# ------------------------------------------------------------------------------------------
# 4. Records of hpsearch 1.0
# ------------------------------------------------------------------------------------------


def to_format_1(search):
    """Rewrite a search folder's record and journal as hpsearch 1.0 wrote them."""
    sd = SearchDir(search)
    record = sd.record()
    expected = [(r["out_dir"], r["argv"]) for r in sd.runs()]
    prefix = record.pop("command_prefix")
    record.pop("search_id")
    record["format"] = "hpsearch-record-1"
    out_arg = record["out_arg"]
    for entry in record["runs"]:
        out_dir = os.path.join(search, entry["out_dir"])
        entry["out_dir"] = out_dir
        entry["argv"] = prefix + ["--%s=%s" % (out_arg, out_dir)] + entry.pop("arguments")
    write_file(sd.file("search_record.json"), json.dumps(record, indent=1) + "\n")
    lines = []
    for entry in sd.journal():
        entry.pop("folder", None)
        lines.append(json.dumps(entry) + "\n")
    write_file(sd.file("run_journal.jsonl"), "".join(lines))
    # hpsearch reads it back as the same runs
    assert [(r["out_dir"], r["argv"]) for r in sd.runs()] == expected
    return record


def test_hpsearch_1_0_record_resumes_in_place_and_postprocesses_in_a_copy(tmp_path):
    jobs = ["ok.1", "first.2", "first.3"]
    project = new_project(tmp_path, jobs)
    with OrphanReaper(project):
        search, _ = stopped_with_ctrl_c(project, 2, "--local_jobs=2")
        record = to_format_1(search)
        assert "search_id" not in record and all("arguments" not in r for r in record["runs"])
        with open(os.path.join(search, "run_journal.jsonl")) as f:
            assert '"folder"' not in f.read()
        # A copy of the stopped 1.0 folder resumes on its own, leaving the original as it is.
        early_copy = os.path.join(str(tmp_path), "early copy of 1.0", "search")
        shutil.copytree(search, early_copy, symlinks=True)
        before = snapshot(search)
        seen = len(events(project))
        rc, out, err = resume(project, early_copy, "--local_jobs=2")
        assert rc == 0, out + err
        assert_same_snapshot(before, snapshot(search))
        check_runs_lived_in(ran_since(project, seen), early_copy)
        check_completed_in(early_copy, jobs)
        assert SearchDir(early_copy).record()["format"] == "hpsearch-record-1"

        seen = len(events(project))
        rc, out, err = resume(project, search, "--local_jobs=2")
        assert rc == 0, out + err
    new = ran_since(project, seen)
    check_runs_lived_in(new, search)
    check_completed_in(search, jobs)
    ok_done = [e for e in events(project, "done") if e["job"] == "ok.1"]
    check_each_finished_once(ok_done + [e for e in new if e["event"] == "done"], jobs)
    assert SearchDir(search).record()["format"] == "hpsearch-record-1"

    # Postprocessing of a copy reads the copy's own run folders (one summary there differs).
    copy = os.path.join(str(tmp_path), "copy of 1.0", "search")
    shutil.copytree(search, copy, symlinks=True)
    before = snapshot(search)
    ok_run = [r for r in SearchDir(copy).runs() if r["args"]["job"] == "ok.1"][0]
    write_file(os.path.join(ok_run["out_dir"], "performance_overview.txt"),
               "acc 0.93\nfinished 1\n")
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "hpsearch_postprocessing.py"),
                             copy], cwd=str(tmp_path), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    assert_same_snapshot(before, snapshot(search))
    header, rows = read_csv(os.path.join(copy, "postprocessing_results.csv"))
    assert sorted(r["job"] for r in rows) == sorted(jobs)
    for row in rows:
        assert row["hpsearch_state"] == "finished", row
        assert not os.path.isabs(row["out_dir"]), row
        assert os.path.isdir(os.path.join(copy, row["out_dir"])), row
    by_job = {r["job"]: r for r in rows}
    assert float(by_job["ok.1"]["acc"]) == 0.93, by_job["ok.1"]


# ------------------------------------------------------------------------------------------
# 5. The command printed to continue a stopped search
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("interpreter", ["sys.executable", "path_with_space"])
def test_continue_command_after_ctrl_c_runs_as_printed(tmp_path, interpreter):
    """path_with_space: the launcher runs under a symlink to this interpreter whose path has
    a space and a quote (and so do the runs: --python defaults to the launcher's)."""
    jobs = ["first.1", "first.2", "ok.3"]
    project = new_project(tmp_path, jobs)
    base = os.path.join(str(tmp_path), "it's a \"search\" place", "out dir")
    python = sys.executable
    if interpreter == "path_with_space":
        python = os.path.join(str(tmp_path), "my py's bin", "python 3")
        os.makedirs(os.path.dirname(python))
        os.symlink(os.path.realpath(sys.executable), python)
    with OrphanReaper(project):
        search, out = stopped_with_ctrl_c(project, 2, "--out_dir=%s" % base, "--local_jobs=2",
                                          "--max_retries=1", python=python)
        assert " " in search and "'" in search
        prefix = "hpsearch: to continue this search: "
        lines = [line[len(prefix):] for line in out.splitlines() if line.startswith(prefix)]
        assert len(lines) == 1, out
        command = lines[0]
        assert command.startswith(shlex.quote(python) + " "), command
        words = shlex.split(command)
        assert words[:2] == [python, HPSEARCH], words
        assert "--local_jobs=2" in words and "--max_retries=1" in words, words
        assert words[-1] == "--resume=%s" % search, words

        env = dict(os.environ)
        env[MARK] = project.path
        elsewhere = os.path.join(str(tmp_path), "elsewhere")
        os.makedirs(elsewhere)
        proc = subprocess.Popen(["/bin/sh", "-c", command], cwd=elsewhere, env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, universal_newlines=True)
        CREATED.append(proc)
        text = proc.communicate(timeout=60)[0]
        assert proc.returncode == 0, text
    assert "resuming" in text, text
    check_completed_in(search, jobs)
    check_each_finished_once(events(project, "done"), jobs)
    assert not os.path.exists(os.path.join(search, ".hpsearch.lock"))


# ------------------------------------------------------------------------------------------
# 6. The lock file and temporary files
# ------------------------------------------------------------------------------------------


def test_lock_file_is_gone_after_a_search_ends(tmp_path):
    project = new_project(tmp_path, ["ok.1", "ok.2"])
    rc, out, err = search_with(project, "--local_jobs=2")
    assert rc == 0, out + err
    search = only_search(project)
    assert not os.path.lexists(os.path.join(search, ".hpsearch.lock"))
    check_completed_in(search, ["ok.1", "ok.2"])


@pytest.mark.parametrize("why", ["config_copy_missing", "interpreter_missing"])
def test_lock_file_is_gone_after_a_refused_resume(tmp_path, why):
    """The design: .hpsearch.lock is removed when the launcher ends, however it ends; a
    --resume refused (exit 2) after it took the lock ends too."""
    project = new_project(tmp_path, ["ok.1"])
    rc, out, err = search_with(project)
    assert rc == 0, out + err
    search = only_search(project)
    sd = SearchDir(search)
    if why == "config_copy_missing":
        os.rename(sd.file("hp_config.py"), sd.file("hp_config.py.away"))
    else:  # a folder copied to a machine without the search's interpreter, a run to redo
        record = sd.record()
        record["command_prefix"][0] = os.path.join(str(tmp_path), "no such python")
        write_file(sd.file("search_record.json"), json.dumps(record, indent=1) + "\n")
        os.remove(os.path.join(sd.runs()[0]["out_dir"], "performance_overview.txt"))
    rc, out, err = resume(project, search)
    assert rc == 2 and err.startswith("hpsearch: error:"), (rc, out, err)
    assert not os.path.lexists(sd.file(".hpsearch.lock")), \
        "a refused --resume left %s behind" % sd.file(".hpsearch.lock")


TEMP_FILES_OF_HPSEARCH = ["search_results.csv.tmp12345", "search_record.json.tmp4242",
                          "commands.sh.tmp77", "commands_wo_dirs.sh.tmp78",
                          os.path.join("jobs", "x.sh.tmp999")]
USER_FILES = ["notes.tmp1", "search_results.csv.tmp_mine", "search_results.csv.tmp12.bak",
              "my_search_record.json.tmp5", "data.tmp"]


def test_resume_removes_leftover_temp_files_only(tmp_path):
    jobs = ["ok.1", "first.2", "first.3"]
    project = new_project(tmp_path, jobs)
    with OrphanReaper(project):
        search, _ = stopped_with_ctrl_c(project, 2, "--local_jobs=2")
        assert not os.path.lexists(os.path.join(search, ".hpsearch.lock"))
        ok_dir = [r for r in SearchDir(search).runs() if r["args"]["job"] == "ok.1"][0]["out_dir"]
        planted_own = [os.path.join(search, n) for n in TEMP_FILES_OF_HPSEARCH]
        planted_user = [os.path.join(search, n) for n in USER_FILES]
        planted_user.append(os.path.join(ok_dir, "model.pt.tmp123"))
        for path in planted_own + planted_user:
            write_file(path, "planted %s\n" % os.path.basename(path))
        rc, out, err = resume(project, search, "--local_jobs=2")
        assert rc == 0, out + err
    left = [p for p in planted_own if os.path.lexists(p)]
    assert not left, left
    for path in planted_user:
        with open(path) as f:
            assert f.read() == "planted %s\n" % os.path.basename(path), path
    assert not os.path.lexists(os.path.join(search, ".hpsearch.lock"))
    check_completed_in(search, jobs)


# ------------------------------------------------------------------------------------------
# 7. hpsearch.log
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stdout", ["pipe", "closed_pipe"])
def test_hpsearch_log_has_every_message_with_its_time(tmp_path, stdout):
    jobs = ["ok.1", "ok.2"]
    project = new_project(tmp_path, jobs)
    env = dict(os.environ)
    env[MARK] = project.path
    proc = subprocess.Popen([sys.executable, HPSEARCH, "--grid_module=%s" % project.config,
                             "--visible_gpus=-1"], cwd=project.path, env=env,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True)
    CREATED.append(proc)
    if stdout == "closed_pipe":  # the reader left (as '| head -0'): writes fail with EPIPE
        proc.stdout.close()   # (Python 3.6's communicate() cannot take a closed pipe)
        err = proc.stderr.read()
        proc.wait(timeout=60)
        out = ""
    else:
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out + err
    search = only_search(project)
    check_completed_in(search, jobs)
    with open(os.path.join(search, "hpsearch.log")) as f:
        lines = f.read().splitlines()
    messages = []
    for line in lines:
        m = STAMPED.match(line)
        assert m, "a line without its time: %r" % line
        messages.append(m.group(1))
    for run in SearchDir(search).runs():
        assert any(m.startswith("started %s" % run["name"]) for m in messages), messages
        assert any(m.startswith("finished %s" % run["name"]) for m in messages), messages
    assert any(m.startswith("hpsearch: done") for m in messages), messages
    for line in out.splitlines():
        assert line in messages, (line, messages)
