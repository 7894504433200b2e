"""Tests of hpsearch_postprocessing.py (Python 3.6-3.13, stdlib + pytest).

Search folders come from two places: small real searches run with hpsearch.py (conftest's
``make_project``), and folders written here by ``synth_search`` (damaged summaries, deleted
run folders, runs still going, a hypnettorch-style ``commands.pickle`` folder). The HTML report
is rendered in headless Chromium when it is installed (required when $CI is set).
"""

import json
import math
import os
import pickle
import re
import shlex
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import zlib

import pytest

from conftest import HPSEARCH, REPO, make_project, read_csv, tree, write_file

POST = os.path.join(REPO, "hpsearch_postprocessing.py")
STATES = ("finished", "unfinished", "failed", "killed", "running", "missing", "not_started")
COUNT_LABELS = {
    "finished": "finished",
    "unfinished": "unfinished (stopped before finishing)",
    "failed": "failed",
    "killed": "killed",
    "running": "still running",
    "missing": "run folder missing",
    "not_started": "never started",
}


# ----------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------


def run_post(args, cwd=None, timeout=60):
    """``python hpsearch_postprocessing.py ARGS``; ``(rc, stdout, stderr)``."""
    proc = subprocess.Popen([sys.executable, POST] + [str(a) for a in args],
                            cwd=str(cwd or REPO), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def counts(stdout):
    """``{state: n}`` from the count lines of the report."""
    found = {}
    for state, label in COUNT_LABELS.items():
        m = re.search(r"^  %s +(\d+)" % re.escape(label), stdout, re.M)
        found[state] = int(m.group(1)) if m else 0
    return found


def csv_by_run(path, out_arg="out_dir"):
    header, rows = read_csv(path)
    return header, rows, {os.path.basename(r[out_arg]): r for r in rows}


def rerun_commands(stdout):
    """``{run name: (cd line, argv)}`` of the per-run re-run advice: each run's command (with
    ``    # <run>: <state>`` after it) and the ``cd`` line before it."""
    lines = stdout.splitlines()
    found = {}
    for i, line in enumerate(lines):
        if "    # sim_" in line:
            command, comment = line.strip().split("    # ")
            found[comment.split(":")[0]] = (lines[i - 1].strip(), shlex.split(command))
    return found


def resume_line(stdout):
    """The printed ``... hpsearch.py --resume SEARCH_DIR`` command line."""
    found = [line.strip() for line in stdout.splitlines()
             if "--resume" in line and "hpsearch.py" in line and "(" not in line]
    assert len(found) == 1, stdout
    return found[0]


def with_out_dir(argv, out_dir, out_arg="out_dir"):
    """``argv`` with its ``--out_dir=...`` argument replaced."""
    return [("--%s=%s" % (out_arg, out_dir)) if a.startswith("--%s=" % out_arg) else a
            for a in argv]


def did_not_finish(stdout):
    """``{run name: 'state: reason'}`` of the list of runs that did not finish."""
    part = stdout[stdout.index("runs that did not finish"):].split("\n\n")[0]
    found = {}
    for line in part.splitlines()[1:]:
        name, _, rest = line.strip().partition(": ")
        found[name] = rest
    return found


def assert_one_error_line(rc, out, err, *needles):
    assert rc == 2, (out, err)
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("hpsearch_postprocessing: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, err)


def snapshot(path):
    """``{relative path: (size, mtime, content)}`` of every file under ``path``."""
    found = {}
    for root, dirs, files in os.walk(str(path)):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                content = f.read()
            found[os.path.relpath(full, str(path))] = (os.stat(full).st_mtime, content)
    return found


CONFIG_TEMPLATE = '''
grid = %(grid)r
conditions = []
_SCRIPT_NAME = 'train.py'
_SUMMARY_FILENAME = 'performance_overview.txt'
_SUMMARY_KEYWORDS = %(keywords)r
_OUT_ARG = 'out_dir'
_SUMMARY_PARSER_HANDLE = None
_PERFORMANCE_KEY = %(perf_key)r
_PERFORMANCE_SORT_ASC = %(sort_asc)r
%(extra)s
'''

HANDLE = '''
def _keep(summary, criteria):
    return float(summary['acc']) >= criteria
_PERFORMANCE_EVAL_HANDLE = _keep
'''

# A handle written for hypnettorch, where values were ['0.5'] lists.
OLD_STYLE_HANDLE = '''
def _keep(summary, criteria):
    return float(summary['acc'][0]) >= criteria
_PERFORMANCE_EVAL_HANDLE = _keep
'''


def synth_search(base, runs, keywords=("acc", "loss", "finished"), perf_key="acc",
                 sort_asc=False, extra="", name="search_2024-01-01_00-00-00", journal_tail=""):
    """Write an hpsearch search folder without running anything.

    Each run is a dict: ``args``; ``journal``: list of ``(state, exit_code)`` entries (empty:
    never started); ``summary``: text or bytes written to performance_overview.txt, ``"DIR"``
    for a folder in its place, None for no file; ``folder``: False to leave the run folder out.
    Returns the search folder's path; run k is named ``sim_20240101000000_<k>`` (k from 01).
    """
    path = os.path.join(str(base), name)
    os.makedirs(path)
    arg_keys = []
    for spec in runs:
        arg_keys += [k for k in spec["args"] if k not in arg_keys]
    grid = {k: sorted({repr(s["args"][k]) for s in runs if k in s["args"]}) for k in arg_keys}
    write_file(os.path.join(path, "hp_config.py"), CONFIG_TEMPLATE % {
        "grid": grid, "keywords": list(keywords), "perf_key": perf_key, "sort_asc": sort_asc,
        "extra": extra})
    record_runs, journal = [], []
    for k, spec in enumerate(runs):
        run_name = "sim_20240101000000_%02d" % (k + 1)
        out_dir = os.path.join(path, run_name)
        argv = [sys.executable, "train.py", "--out_dir=%s" % out_dir]
        argv += ["--%s=%s" % (key, v) for key, v in spec["args"].items()]
        record_runs.append({"index": k, "name": run_name, "out_dir": out_dir,
                            "args": spec["args"], "argv": argv})
        for i, entry in enumerate(spec.get("journal", [("finished", 0)])):
            state, code = entry
            line = {"run": run_name, "state": state, "time": 1.0 + i, "attempt": 1}
            if state != "running":
                line["exit_code"] = code
            journal.append(json.dumps(line))
        if spec.get("folder", True):
            os.makedirs(out_dir)
            summary = spec.get("summary", "acc 0.5\nloss 1.0\nfinished 1\n")
            target = os.path.join(out_dir, "performance_overview.txt")
            if summary == "DIR":
                os.makedirs(target)
            elif isinstance(summary, bytes):
                with open(target, "wb") as f:
                    f.write(summary)
            elif summary is not None:
                write_file(target, summary)
    record = {"format": "hpsearch-record-1", "config_file": "/elsewhere/hp_config.py",
              "run_cwd": str(base), "out_arg": "out_dir",
              "summary_filename": "performance_overview.txt",
              "summary_keywords": list(keywords), "performance_key": perf_key,
              "performance_sort_asc": sort_asc, "arg_keys": arg_keys, "runs": record_runs}
    write_file(os.path.join(path, "search_record.json"), json.dumps(record, indent=1))
    write_file(os.path.join(path, "run_journal.jsonl"), "\n".join(journal) + "\n" + journal_tail)
    return path


def summary(acc, loss=1.0, finished=1):
    return "acc %s\nloss %s\nfinished %s\n" % (acc, loss, finished)


def run_name(k):
    return "sim_20240101000000_%02d" % k


# ----------------------------------------------------------------------------------------------
# Real searches made by hpsearch.py
# ----------------------------------------------------------------------------------------------

REAL_GRID = {"acc": [0.25, 0.75, 0.5], "random_seed": [1, 2]}
REAL_CONDITIONS = [({"acc": [0.5]}, {"exit": [1]})]  # acc=0.5 runs write a summary, exit 1


def real_search(tmp_path, extra=""):
    project = make_project(tmp_path, grid=REAL_GRID, conditions=REAL_CONDITIONS,
                           config_extra=extra)
    rc, out, err = project.hpsearch("--deterministic_search")
    assert rc == 1, (out, err)   # the acc=0.5 runs fail
    return project, project.search()


def test_real_search_counts_table_seeds_and_rerun_commands(tmp_path):
    project, search = real_search(tmp_path)
    rc, out, err = run_post([search.path, "--top", "3"])
    assert rc == 0, (out, err)
    assert counts(out) == {"finished": 4, "unfinished": 0, "failed": 2, "killed": 0,
                           "running": 0, "missing": 0, "not_started": 0}
    assert "(exit 1: 2)" in out

    # The CSV: search_results.csv's columns (keywords first, the reason last), every run,
    # finished runs first: the failed runs' 0.5 ranks after every finished run.
    header, rows, by_run = csv_by_run(search.file("postprocessing_results.csv"))
    assert header == search.results()[0]
    assert header == ["acc", "loss", "finished", "random_seed", "exit", "out_dir",
                      "hpsearch_state", "hpsearch_exit_code", "hpsearch_reason"]
    assert [float(r["acc"]) for r in rows] == [0.75, 0.75, 0.25, 0.25, 0.5, 0.5]
    assert [r["hpsearch_state"] for r in rows] == ["finished"] * 4 + ["failed"] * 2
    assert {r["hpsearch_exit_code"] for r in rows if r["hpsearch_state"] == "failed"} == {"1"}
    assert sorted(by_run) == sorted(r["name"] for r in search.runs())
    # The reason: the failed runs' last stderr line, as the launcher recorded it.
    for name, row in by_run.items():
        if row["hpsearch_state"] == "failed":
            assert row["hpsearch_reason"] == "hello stderr from %s" % name
        else:
            assert row["hpsearch_reason"] == ""
    # Row for row what hpsearch itself wrote into search_results.csv, in the same order of
    # states and values.
    theirs = search.results()[1]
    assert [(r["hpsearch_state"], r["acc"]) for r in theirs] == \
        [(r["hpsearch_state"], r["acc"]) for r in rows]
    with open(search.file("search_results.csv")) as f:
        theirs = sorted(f.read().splitlines()[1:])
    with open(search.file("postprocessing_results.csv")) as f:
        assert sorted(f.read().splitlines()[1:]) == theirs

    # The runs that did not finish, each with its reason.
    failed = sorted(n for n, r in by_run.items() if r["hpsearch_state"] == "failed")
    assert did_not_finish(out) == {n: "failed (exit 1): hello stderr from %s" % n
                                   for n in failed}
    # How to run them again: the --resume command, and per run its command with a fresh
    # output folder after a cd into run_cwd.
    argv = {r["name"]: r["argv"] for r in search.runs()}
    listed = rerun_commands(out)
    assert sorted(listed) == failed
    for name, (cd, command) in listed.items():
        assert shlex.split(cd) == ["cd", project.path]
        assert command == with_out_dir(argv[name], search.file(name + "_rerun"))
    assert shlex.split(resume_line(out)) == [sys.executable, HPSEARCH, "--resume", search.path]

    # Seed groups: args equal but for random_seed; statistics over finished runs.
    header, rows = read_csv(search.file("postprocessing_seeds.csv"))
    assert header == ["acc", "exit", "n", "runs", "seeds", "acc_mean", "acc_std", "loss_mean",
                      "loss_std"]
    assert [(r["acc"], r["exit"], r["n"], r["runs"], r["seeds"]) for r in rows] == [
        ("0.75", "", "2", "2", "1,2"), ("0.25", "", "2", "2", "1,2"),
        ("0.5", "1", "0", "2", "")]
    assert [r["acc_mean"] for r in rows] == ["0.75", "0.25", ""]
    assert [r["acc_std"] for r in rows] == ["0.0", "0.0", ""]

    # The top table: random_seed varies, so settings averaged over it, best mean first; the
    # acc=0.5 setting has no finished run.
    table = out[out.index("best 3 settings by the mean of acc over --random_seed"):]
    lines = table.splitlines()[1:]
    assert re.split(r"\s{2,}", lines[0].strip()) == ["#", "acc", "exit", "acc", "loss",
                                                      "finished"]
    assert [re.split(r"\s{2,}", line.strip()) for line in lines[2:4]] == [
        ["1", "0.75", "0.75 +- 0 (2)", "1 +- 0 (2)", "2/2"],
        ["2", "0.25", "0.25 +- 0 (2)", "1 +- 0 (2)", "2/2"]]
    assert not lines[4].strip()

    # With --no_seed_average: single runs, the differing arguments (all three vary here).
    rc, out, err = run_post([search.path, "--top", "3", "--no_seed_average"])
    assert rc == 0, (out, err)
    table = out[out.index("best 3 runs by acc"):]
    lines = table.splitlines()[1:]
    assert lines[0].split() == ["#", "run", "acc", "random_seed", "exit", "acc", "loss",
                                "state"]
    ranks = [line.split() for line in lines[2:5]]
    assert [r[0] for r in ranks] == ["1", "2", "3"]
    assert [r[2] for r in ranks] == ["0.75", "0.75", "0.25"]   # the failed 0.5 after these
    assert [r[-1] for r in ranks] == ["finished"] * 3
    assert "nothing" not in err


def test_performance_criteria_moves_runs_and_a_changed_csv_keeps_the_earlier_one(tmp_path):
    # The handle is hypnettorch style (summary['acc'][0]); it still works.
    project, search = real_search(tmp_path, extra=OLD_STYLE_HANDLE)
    before = snapshot(search.path)
    rc, out, err = run_post([search.path, "--performance_criteria", "0.5"])
    assert rc == 0, (out, err)
    header, rows, by_run = csv_by_run(search.file("postprocessing_results.csv"))
    low = sorted(n for n, r in by_run.items() if float(r["acc"]) < 0.5)
    assert len(low) == 2
    trash = search.file("TO_BE_DELETED")
    assert sorted(os.listdir(trash)) == low
    for name in low:
        assert not os.path.exists(search.file(name))
        assert "  %s" % name in out
        assert by_run[name]["out_dir"] == os.path.join("TO_BE_DELETED", name)
    # Nothing deleted or changed: every file is still there, with the same content.
    after = snapshot(search.path)
    for rel, (mtime, content) in before.items():
        moved = rel
        if rel.split(os.sep)[0] in low:
            moved = os.path.join("TO_BE_DELETED", rel)
        assert after[moved][1] == content, rel
    assert "moved 2 run folder(s)" in out
    first_csv = after["postprocessing_results.csv"][1]

    # Second pass: runs in TO_BE_DELETED are still found; the CSV would be the same, so it
    # is left as it is.
    time.sleep(0.01)
    rc, out, err = run_post([search.path])
    assert rc == 0, (out, err)
    assert counts(out)["finished"] == 4 and counts(out)["failed"] == 2
    assert snapshot(search.path)["postprocessing_results.csv"] == \
        after["postprocessing_results.csv"]
    assert "postprocessing_results.csv is unchanged" in out

    # A third pass after a change (a summary rewritten): the earlier CSV is kept.
    write_file(search.file("TO_BE_DELETED", low[0], "performance_overview.txt"),
               "acc 0.3\nloss 1.0\nfinished 1\n")
    rc, out, err = run_post([search.path])
    assert rc == 0, (out, err)
    kept = [n for n in os.listdir(search.path)
            if re.match(r"postprocessing_results_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d(_\d+)?\.csv$",
                        n)]
    assert len(kept) == 1, os.listdir(search.path)
    with open(search.file(kept[0]), "rb") as f:
        assert f.read() == first_csv
    _, _, by_run = csv_by_run(search.file("postprocessing_results.csv"))
    for name in low:
        assert by_run[name]["out_dir"] == os.path.join("TO_BE_DELETED", name)
        assert by_run[name]["hpsearch_state"] == "finished"
    assert by_run[low[0]]["acc"] == "0.3"
    assert "the earlier one is now %s" % kept[0] in out


def test_a_search_still_going_shows_its_running_run(tmp_path):
    project = make_project(tmp_path, grid={"acc": [0.5], "sleep": [0, 60]})
    proc = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "hpsearch.py"), "--grid_module=%s" % project.config,
         "--visible_gpus=-1", "--local_jobs=2", "--deterministic_search"],
        cwd=project.path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, universal_newlines=True)
    try:
        deadline = time.time() + 30
        states = {}
        while time.time() < deadline:
            found = project.searches()
            if found and os.path.exists(found[0].file("run_journal.jsonl")):
                states = found[0].final_states()
                if sorted(states.values()) == ["finished", "running"]:
                    break
            time.sleep(0.1)
        assert sorted(states.values()) == ["finished", "running"], states
        search = project.search()
        rc, out, err = run_post([search.path])
        assert rc == 0, (out, err)
        assert counts(out)["finished"] == 1 and counts(out)["running"] == 1, out
        _, rows, _ = csv_by_run(search.file("postprocessing_results.csv"))
        assert sorted(r["hpsearch_state"] for r in rows) == ["finished", "running"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)


# ----------------------------------------------------------------------------------------------
# Synthesized folders: damage of every kind
# ----------------------------------------------------------------------------------------------

DAMAGED = [
    # 1: fine
    {"args": {"lr": 0.1, "tag": "a"}, "summary": summary(0.9)},
    # 2: binary garbage
    {"args": {"lr": 0.2, "tag": "a"}, "summary": os.urandom(64).replace(b"\n", b"x")},
    # 3: empty
    {"args": {"lr": 0.3, "tag": "a"}, "summary": ""},
    # 4: cut short
    {"args": {"lr": 0.4, "tag": "a"}, "summary": "acc 0.7\nlo"},
    # 5: a folder where the summary file should be
    {"args": {"lr": 0.5, "tag": "a"}, "summary": "DIR"},
    # 6: exit 0 without a summary
    {"args": {"lr": 0.6, "tag": "a"}, "summary": None, "journal": [("running", None),
                                                                  ("unfinished", 0)]},
    # 7: ended, then its folder was deleted by hand
    {"args": {"lr": 0.7, "tag": "a"}, "folder": False},
    # 8: still running, part of a summary written
    {"args": {"lr": 0.8, "tag": "a"}, "summary": "acc 0.3\n", "journal": [("running", None)]},
    # 9: failed with exit 3 after writing a summary
    {"args": {"lr": 0.9, "tag": "a"}, "summary": summary(0.95, finished=0),
     "journal": [("running", None), ("failed", 3)]},
    # 10: killed by signal 9
    {"args": {"lr": 1.0, "tag": "a"}, "summary": None, "journal": [("killed", 137)]},
    # 11: never started
    {"args": {"lr": 1.1, "tag": "b"}, "folder": False, "journal": []},
    # 12: failed before making its folder
    {"args": {"lr": 1.2, "tag": "b"}, "folder": False, "journal": [("failed", 1)]},
    # 13: finished, with bytes that are not UTF-8 after the summary
    {"args": {"lr": 1.3, "tag": "b"}, "summary": b"acc 0.6\nloss 2\nfinished 1\n\xff\xfe\x00"},
    # 14: 'finished 1.0' counts as finished
    {"args": {"lr": 1.4, "tag": "b"}, "summary": "finished 1.0\nacc nan\n"},
]

DAMAGED_STATES = {
    1: "finished", 2: "unfinished", 3: "unfinished", 4: "unfinished", 5: "unfinished",
    6: "unfinished", 7: "missing", 8: "running", 9: "failed", 10: "killed", 11: "not_started",
    12: "failed", 13: "finished", 14: "finished",
}


def test_damaged_folder_every_run_listed_with_its_state_nothing_changed(tmp_path):
    path = synth_search(tmp_path, DAMAGED, journal_tail='{"run": "sim_2024010100\n')
    before = snapshot(path)
    rc, out, err = run_post([path, "--top", "20"])
    assert rc == 0, (out, err)
    assert "Traceback" not in err
    header, rows, by_run = csv_by_run(os.path.join(path, "postprocessing_results.csv"))
    assert {n: r["hpsearch_state"] for n, r in by_run.items()} == {
        run_name(k): s for k, s in DAMAGED_STATES.items()}
    expected = {s: 0 for s in STATES}
    for s in DAMAGED_STATES.values():
        expected[s] += 1
    assert counts(out) == expected
    assert "(exit 1: 1, exit 3: 1)" in out and "(exit 137: 1)" in out
    # Why each run did not finish is said, in the list printed and in the CSV's reason column
    # (the journal has no reasons here: what postprocessing can tell).
    summary_file = os.path.join(path, "%s", "performance_overview.txt")
    no_finished = "%s has no 'finished' line"
    reasons = {  # run: (state, reason, what else is odd about it)
        2: ("unfinished (exit 0)", no_finished % (summary_file % run_name(2)),
            "summary empty or garbled"),
        3: ("unfinished (exit 0)", no_finished % (summary_file % run_name(3)),
            "summary empty or garbled"),
        4: ("unfinished (exit 0)", no_finished % (summary_file % run_name(4)), ""),
        5: ("unfinished (exit 0)", "no performance_overview.txt in %s (it holds: "
            "performance_overview.txt)" % os.path.join(path, run_name(5)), "summary unreadable"),
        6: ("unfinished (exit 0)", "no performance_overview.txt in %s (it holds: nothing)"
            % os.path.join(path, run_name(6)), "no summary file"),
        7: ("missing", "run folder deleted (it had ended finished)", ""),
        9: ("failed (exit 3)", "no message on stderr or stdout", ""),
        10: ("killed (exit 137)", "killed by signal 9", "no summary file"),
        11: ("not_started", "never started", ""),
        12: ("failed (exit 1)", "no message on stderr or stdout", ""),
    }
    assert did_not_finish(out) == {
        run_name(k): "%s: %s%s" % (state, reason, " (%s)" % note if note else "")
        for k, (state, reason, note) in reasons.items()}
    for k, (_, reason, _) in reasons.items():
        assert by_run[run_name(k)]["hpsearch_reason"] == reason, k
    for k in (1, 13, 14):
        assert by_run[run_name(k)]["hpsearch_reason"] == ""
    # Partial results are kept. Finished runs first (by acc, nan last), then unfinished,
    # failed and killed runs, then running, missing and never started ones.
    assert by_run[run_name(4)]["acc"] == "0.7"
    assert by_run[run_name(8)]["acc"] == "0.3"
    assert by_run[run_name(9)]["hpsearch_exit_code"] == "3"
    assert [os.path.basename(r["out_dir"]) for r in rows] == \
        [run_name(k) for k in (1, 13, 14, 4, 2, 3, 5, 6, 9, 12, 10, 8, 7, 11)]
    assert [r["acc"] for r in rows][:4] == ["0.9", "0.6", "nan", "0.7"]
    # Re-run commands for every run that did not finish, each into a fresh folder.
    with open(os.path.join(path, "search_record.json")) as f:
        argv = {r["name"]: r["argv"] for r in json.load(f)["runs"]}
    listed = rerun_commands(out)
    assert {n: argv for n, (cd, argv) in listed.items()} == {
        run_name(k): with_out_dir(argv[run_name(k)], os.path.join(path, run_name(k) + "_rerun"))
        for k in reasons}
    assert {cd for cd, _ in listed.values()} == {"cd %s" % shlex.quote(str(tmp_path))}
    assert "once the search's launcher has ended" in out   # run 8 is running
    # Nothing the search had was touched.
    after = snapshot(path)
    for rel, (mtime, content) in before.items():
        assert after[rel] == (mtime, content), rel
    assert set(after) - set(before) == {"postprocessing_results.csv"}  # no 'random_seed' arg
    assert "no postprocessing_seeds.csv" in out


def test_missing_config_copy_falls_back_to_the_record(tmp_path):
    path = synth_search(tmp_path, DAMAGED[:1] + DAMAGED[2:3], extra=HANDLE)
    os.remove(os.path.join(path, "hp_config.py"))
    rc, out, err = run_post([path])
    assert rc == 0, (out, err)
    assert "hp_config.py" in err and "warning" in err
    assert counts(out)["finished"] == 1 and counts(out)["unfinished"] == 1
    rc, out, err = run_post([path, "--performance_criteria", "0.5"])
    assert_one_error_line(rc, out, err, "_PERFORMANCE_EVAL_HANDLE", "--grid_module")


@pytest.mark.parametrize("extra", ["", "_PERFORMANCE_EVAL_HANDLE = None"])
def test_criteria_without_a_handle_is_exit_2_and_moves_nothing(tmp_path, extra):
    path = synth_search(tmp_path, [{"args": {"lr": 0.1}, "summary": summary(0.1)},
                                   {"args": {"lr": 0.2}, "summary": summary(0.9)}],
                        extra=extra)
    before = tree(path)
    rc, out, err = run_post([path, "--performance_criteria", "0.5"])
    assert_one_error_line(rc, out, err, "_PERFORMANCE_EVAL_HANDLE", "hp_config.py")
    assert tree(path) == before


def test_criteria_leaves_running_and_summaryless_runs_alone(tmp_path):
    runs = [
        {"args": {"lr": 0.1}, "summary": summary(0.1)},                      # moved
        {"args": {"lr": 0.2}, "summary": summary(0.9)},                      # kept
        {"args": {"lr": 0.3}, "summary": "acc 0.1\n", "journal": [("running", None)]},
        {"args": {"lr": 0.4}, "summary": None, "journal": [("failed", 1)]},  # not judged
        {"args": {"lr": 0.5}, "summary": summary(0.2), "journal": [("failed", 2)]},  # moved
        {"args": {"lr": 0.6}, "summary": "loss 1\nfinished 1\n"},  # no 'acc': not judged
    ]
    path = synth_search(tmp_path, runs, extra=HANDLE)
    os.makedirs(os.path.join(path, "TO_BE_DELETED", run_name(1)))  # a name already taken
    rc, out, err = run_post([path, "--performance_criteria", "0.5"])
    assert rc == 0, (out, err)
    trash = os.path.join(path, "TO_BE_DELETED")
    assert sorted(os.listdir(trash)) == [run_name(1), run_name(1) + "_2", run_name(5)]
    for k in (2, 3, 4, 6):
        assert os.path.isdir(os.path.join(path, run_name(k)))
    assert re.search(r"^kept 2 run folder\(s\) that _PERFORMANCE_EVAL_HANDLE \(_keep in "
                     r".*hp_config.py\) could not judge \(not judged\):\n"
                     r"  %s: no readable summary\n"
                     r"  %s: its summary has no 'acc'$" % (run_name(4), run_name(6)),
                     out, re.M), out


def test_seed_groups_n_mean_std_and_order(tmp_path):
    def run(lr, seed, acc, loss, journal=None):
        spec = {"args": {"lr": lr, "seed": seed, "opt": "sgd"}, "summary": summary(acc, loss)}
        if journal:
            spec["journal"] = journal
        return spec

    runs = [
        run(0.1, 1, 0.5, 3.0), run(0.1, 2, 0.6, 2.0), run(0.1, 3, 0.7, 1.0),
        run(0.2, 2, 0.8, 1.0), run(0.2, 1, 0.9, 2.0),
        run(0.3, 1, 0.95, 0.5),
        run(0.4, 1, 0.99, 0.1, journal=[("failed", 1)]),
    ]
    path = synth_search(tmp_path, runs)
    rc, out, err = run_post([path, "--seed_key", "seed"])
    assert rc == 0, (out, err)
    header, rows = read_csv(os.path.join(path, "postprocessing_seeds.csv"))
    assert header == ["lr", "opt", "n", "runs", "seeds", "acc_mean", "acc_std", "loss_mean",
                      "loss_std"]
    assert [r["lr"] for r in rows] == ["0.3", "0.2", "0.1", "0.4"]
    got = {r["lr"]: r for r in rows}
    assert (got["0.1"]["n"], got["0.1"]["runs"], got["0.1"]["seeds"]) == ("3", "3", "1,2,3")
    assert math.isclose(float(got["0.1"]["acc_mean"]), 0.6)
    assert math.isclose(float(got["0.1"]["acc_std"]), 0.1)
    assert math.isclose(float(got["0.1"]["loss_mean"]), 2.0)
    assert math.isclose(float(got["0.1"]["loss_std"]), 1.0)
    assert got["0.2"]["seeds"] == "1,2"
    assert math.isclose(float(got["0.2"]["acc_mean"]), 0.85)
    assert math.isclose(float(got["0.2"]["acc_std"]), math.sqrt(0.005))
    assert (got["0.3"]["n"], got["0.3"]["acc_mean"], got["0.3"]["acc_std"]) == \
        ("1", "0.95", "")
    assert (got["0.4"]["n"], got["0.4"]["runs"], got["0.4"]["acc_mean"]) == ("0", "1", "")

    # Lowest first when the config asks for it (here: by loss).
    path = synth_search(tmp_path, runs, perf_key="loss", sort_asc=True, name="search_asc")
    rc, out, err = run_post([path, "--seed_key", "seed"])
    assert rc == 0, (out, err)
    _, rows = read_csv(os.path.join(path, "postprocessing_seeds.csv"))
    assert [r["lr"] for r in rows] == ["0.3", "0.2", "0.1", "0.4"]  # 0.5, 1.5, 2.0, none
    _, rows = read_csv(os.path.join(path, "postprocessing_results.csv"))
    # Finished runs by loss, lowest first; the failed run (loss 0.1) after them.
    assert [r["hpsearch_state"] for r in rows] == ["finished"] * 6 + ["failed"]
    losses = [float(r["loss"]) for r in rows[:-1]]
    assert losses == sorted(losses) and rows[-1]["loss"] == "0.1"


def test_top_table_shows_only_differing_arguments(tmp_path):
    runs = [{"args": {"lr": lr, "const": "same", "flag": lr > 0.25},
             "summary": summary(acc, loss=1 - acc)}
            for lr, acc in ((0.1, 0.3), (0.2, 0.8), (0.3, 0.5), (0.4, 0.9))]
    path = synth_search(tmp_path, runs)
    rc, out, err = run_post([path, "--top", "2"])
    assert rc == 0, (out, err)
    lines = out[out.index("best 2 runs by acc (finished runs first, highest first):"):
                ].splitlines()
    assert lines[1].split() == ["#", "run", "lr", "flag", "acc", "loss", "state"]
    assert set(lines[2].replace(" ", "")) == {"-"}
    body = [line.split() for line in lines[3:5]]
    assert body == [["1", run_name(4), "0.4", "True", "0.9", "0.1", "finished"],
                    ["2", run_name(2), "0.2", "False", "0.8", "0.2", "finished"]]
    assert not lines[5].strip()
    # Aligned: every column starts at the same place in every line.
    starts = [m.start() for m in re.finditer(r"\S+", lines[1])]
    for line in lines[3:5]:
        assert line[starts[1]] == "s" and line[starts[1] - 1] == " "


# ----------------------------------------------------------------------------------------------
# A folder written by hypnettorch: commands.pickle, no record, no journal
# ----------------------------------------------------------------------------------------------


def hypnettorch_folder(tmp_path):
    """run_cwd/out/hs/search_x with commands.pickle holding relative run paths."""
    run_cwd = os.path.join(str(tmp_path), "work")
    search = os.path.join(run_cwd, "out", "hs", "search_2020-01-01_00-00-00")
    os.makedirs(search)
    rel = os.path.join(".", "out", "hs", "search_2020-01-01_00-00-00")
    commands = []
    for k, (lr, opt) in enumerate([(0.1, "sgd"), (0.2, "adam"), (0.3, "sgd"), (0.4, "adam")]):
        commands.append({"lr": lr, "opt": opt, "use_bn": k % 2 == 0,
                         "out_dir": os.path.join(rel, "sim_20200101000000_%d" % (k + 1))})
    with open(os.path.join(search, "commands.pickle"), "wb") as f:
        pickle.dump(commands, f)
    texts = ["acc 0.61\nloss 0.5\nfinished 1\n", "acc 0.82\nloss 0.4\nfinished 1\n",
             "acc 0.3\nloss 0.9\nfinished 0\n"]
    for k, text in enumerate(texts):
        write_file(os.path.join(search, "sim_20200101000000_%d" % (k + 1),
                                "performance_overview.txt"), text)
    config = write_file(os.path.join(search, "hpsearch_config_old.py"), CONFIG_TEMPLATE % {
        "grid": {"lr": [0.1, 0.2, 0.3, 0.4], "opt": ["sgd", "adam"], "use_bn": [True, False]},
        "keywords": ["acc", "loss", "finished"], "perf_key": "acc", "sort_asc": False,
        "extra": ""})
    return run_cwd, search, config


def test_hypnettorch_folder_needs_grid_module(tmp_path):
    run_cwd, search, config = hypnettorch_folder(tmp_path)
    rc, out, err = run_post([search])
    assert_one_error_line(rc, out, err, "--grid_module", "commands.pickle",
                          "hpsearch_config_old.py")


def test_hypnettorch_folder_is_read(tmp_path):
    run_cwd, search, config = hypnettorch_folder(tmp_path)
    relative = os.path.relpath(search, run_cwd)
    rc, out, err = run_post([relative, "--grid_module", config, "--run_cwd", run_cwd],
                            cwd=str(tmp_path))
    assert rc == 0, (out, err)
    assert "hypnettorch search, 4 runs" in out
    assert counts(out) == {"finished": 2, "unfinished": 1, "failed": 0, "killed": 0,
                           "running": 0, "missing": 0, "not_started": 1}
    header, rows, by_run = csv_by_run(os.path.join(search, "postprocessing_results.csv"))
    assert header == ["acc", "loss", "finished", "lr", "opt", "use_bn", "out_dir",
                      "hpsearch_state", "hpsearch_exit_code", "hpsearch_reason"]
    assert [r["acc"] for r in rows] == ["0.82", "0.61", "0.3", ""]
    assert by_run["sim_20200101000000_4"]["hpsearch_state"] == "not_started"
    assert by_run["sim_20200101000000_1"]["out_dir"] == "sim_20200101000000_1"
    # No journal: the reasons are what postprocessing tells from the folders.
    run_3 = os.path.join(search, "sim_20200101000000_3")
    assert by_run["sim_20200101000000_3"]["hpsearch_reason"] == \
        "%s says finished 0, not 1" % os.path.join(run_3, "performance_overview.txt")
    assert by_run["sim_20200101000000_4"]["hpsearch_reason"] == \
        "no run folder %s (never started, or ended before making it)" \
        % os.path.join(search, "sim_20200101000000_4")
    # The runs that did not finish, as commands like hypnettorch's (flags rendered the same
    # way) with a fresh output folder, after a cd into run_cwd; no --resume.
    listed = rerun_commands(out)
    assert sorted(listed) == ["sim_20200101000000_3", "sim_20200101000000_4"]
    cd, argv = listed["sim_20200101000000_4"]
    assert argv == ["python3", "train.py",
                    "--out_dir=./out/hs/search_2020-01-01_00-00-00/sim_20200101000000_4_rerun",
                    "--lr=0.4", "--opt=adam"]
    assert shlex.split(cd) == ["cd", run_cwd]
    assert "hpsearch.py" not in out and "a hypnettorch search has no --resume" in out


def test_hypnettorch_pickle_that_does_not_match_the_config(tmp_path):
    run_cwd, search, config = hypnettorch_folder(tmp_path)
    with open(os.path.join(search, "commands.pickle"), "wb") as f:
        pickle.dump([{"lr": 0.1, "results_dir": "x"}], f)
    rc, out, err = run_post([search, "--grid_module", config])
    assert_one_error_line(rc, out, err, "'out_dir'", "--grid_module")
    with open(os.path.join(search, "commands.pickle"), "wb") as f:
        f.write(b"not a pickle")
    rc, out, err = run_post([search, "--grid_module", config])
    assert_one_error_line(rc, out, err, "commands.pickle")


# ----------------------------------------------------------------------------------------------
# Bad input: exit 2, one line
# ----------------------------------------------------------------------------------------------


def test_usage_errors(tmp_path):
    rc, out, err = run_post([os.path.join(str(tmp_path), "nope")])
    assert_one_error_line(rc, out, err, "nope", "no such folder")
    empty = os.path.join(str(tmp_path), "empty")
    os.makedirs(empty)
    rc, out, err = run_post([empty])
    assert_one_error_line(rc, out, err, "search_record.json", "commands.pickle")
    write_file(os.path.join(empty, "search_record.json"), '{"format": "hpsearch-rec')
    rc, out, err = run_post([empty])
    assert_one_error_line(rc, out, err, "search_record.json")
    write_file(os.path.join(empty, "search_record.json"), '{"runs": 3}')
    rc, out, err = run_post([empty])
    assert_one_error_line(rc, out, err, "no list of runs")
    assert os.listdir(empty) == ["search_record.json"]
    path = synth_search(tmp_path, DAMAGED[:2])
    rc, out, err = run_post([path, "--top", "0"])
    assert_one_error_line(rc, out, err, "--top")
    rc, out, err = run_post([path, "--no_such_flag"])
    assert rc == 2 and "Traceback" not in err and "--no_such_flag" in err
    rc, out, err = run_post([path, "--grid_module", os.path.join(path, "missing.py")])
    assert_one_error_line(rc, out, err, "missing.py")


# ----------------------------------------------------------------------------------------------
# HTML report, checked in a real browser
# ----------------------------------------------------------------------------------------------


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    message = ("headless Chromium is not installed (apt-get install chromium); the HTML "
               "report is not checked in a browser")
    if os.environ.get("CI"):
        pytest.fail(message + " -- it is required when CI is set")
    pytest.skip(message)


def chromium(binary, url, *args):
    profile = tempfile.mkdtemp(prefix="pp_chromium_")
    try:
        cmd = [binary, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
               "--no-first-run", "--disable-background-networking",
               "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
               "--user-data-dir=%s" % profile] + list(args) + [url]
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, universal_newlines=True)
        out, err = proc.communicate(timeout=90)
        return proc.returncode, out, err
    finally:
        shutil.rmtree(profile, ignore_errors=True)


def png_pixels(path):
    """``(width, height, rows)`` of an 8-bit RGB or RGBA PNG; each row a list of pixels."""
    with open(path, "rb") as f:
        data = f.read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, []
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        chunk = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color, _, _, interlace = struct.unpack(">IIBBBBB", chunk)
        elif kind == b"IDAT":
            idat.append(chunk)
        pos += 12 + length
    assert depth == 8 and interlace == 0 and color in (2, 6), (depth, color, interlace)
    bpp = 3 if color == 2 else 4
    raw = zlib.decompress(b"".join(idat))
    stride = width * bpp
    prev = bytearray(stride)
    rows = []
    for y in range(height):
        start = y * (stride + 1)
        kind, line = raw[start], bytearray(raw[start + 1:start + 1 + stride])
        if kind == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif kind == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, prev))
        elif kind == 3:
            for i in range(stride):
                left = line[i - bpp] if i >= bpp else 0
                line[i] = (line[i] + ((left + prev[i]) >> 1)) & 255
        elif kind == 4:
            for i in range(stride):
                a = line[i - bpp] if i >= bpp else 0
                b = prev[i]
                c = prev[i - bpp] if i >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) \
                    & 255
        rows.append([tuple(line[i:i + 3]) for i in range(0, stride, bpp)])
        prev = line
    return width, height, rows


HTML_RUNS = [
    {"args": {"lr": lr, "opt": opt, "bn": bn, "note": "<x&y>"},
     "summary": summary(round(0.3 + lr + (0.1 if opt == "adam" else 0), 3), loss=1 - lr)}
    for lr in (0.01, 0.1, 0.5) for opt in ("sgd", "adam") for bn in (True, False)
] + [
    {"args": {"lr": 0.2, "opt": "sgd", "bn": True, "note": "<x&y>"}, "summary": "acc 0.4\n",
     "journal": [("running", None)]},
    {"args": {"lr": 0.2, "opt": "adam", "bn": True, "note": "<x&y>"}, "summary": None,
     "journal": [("failed", 1)]},
    {"args": {"lr": 0.3, "opt": "adam", "bn": True, "note": "<x&y>"}, "folder": False,
     "journal": []},
]
# Points: every run with a number for acc (12 + the running one), once per varying argument
# (lr, opt, bn; 'note' is the same everywhere).
HTML_POINTS = 13 * 3


def test_html_report_is_self_contained(tmp_path):
    path = synth_search(tmp_path, HTML_RUNS)
    rc, out, err = run_post([path, "--html", "--top", "5"])
    assert rc == 0, (out, err)
    with open(os.path.join(path, "report.html"), encoding="utf-8") as f:
        text = f.read()
    # One inline script at most (sorting and filtering the tables), nothing loaded.
    assert re.findall(r"<script[^>]*>", text.lower()) == ["<script>"]
    assert "http:" not in text and "https:" not in text and "url(" not in text
    assert len(re.findall(r'class="pt"', text)) == HTML_POINTS
    assert len(re.findall(r'class="pc"', text)) == 5
    assert "<x&y>" not in text and "&lt;x&amp;y&gt;" in text
    # A second report keeps the first under a time-stamped name.
    rc, out, err = run_post([path, "--html"])
    assert rc == 0, (out, err)
    assert [n for n in os.listdir(path) if re.match(r"report_[-_\d]+\.html$", n)]


def test_html_report_renders_in_chromium(tmp_path):
    binary = find_chromium()
    path = synth_search(tmp_path, HTML_RUNS)
    rc, out, err = run_post([path, "--html"])
    assert rc == 0, (out, err)
    url = "file://" + os.path.join(path, "report.html")

    rc, dom, err = chromium(binary, url, "--dump-dom")
    assert rc == 0, err[-2000:]
    assert dom.count('class="pt"') == HTML_POINTS, dom[:2000]
    assert dom.count('class="bar"') == len(STATES) + 1   # a bar per state, 'stopped' too

    png = os.path.join(str(tmp_path), "report.png")
    # The full page layout (1200 x 2000 CSS pixels) at half scale: quick to decode here.
    rc, _, err = chromium(binary, url, "--screenshot=%s" % png, "--window-size=1200,2000",
                          "--force-device-scale-factor=0.5", "--hide-scrollbars")
    assert rc == 0 and os.path.isfile(png), err[-2000:]
    width, height, rows = png_pixels(png)
    assert width >= 500 and height >= 800
    pixels = [p for row in rows for p in row]
    non_white = sum(1 for p in pixels if p != (255, 255, 255))
    colors = set(pixels)
    assert non_white > 0.02 * len(pixels), non_white
    assert len(colors) > 50, len(colors)
    # The status bars are drawn in the state colours (solid rectangles).
    assert (0x2c, 0xa0, 0x2c) in colors   # finished
    assert (0xd6, 0x27, 0x28) in colors   # failed
