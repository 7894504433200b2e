"""Summaries, run states, the results table, logs and the search folder's files."""

import datetime
import json
import math
import os
import re
import shlex
import signal
import subprocess
import sys

import pytest

import hpsearch
from conftest import HPSEARCH, SearchDir, make_project, tree, write_file

# ------------------------------------------------------------------------------------------
# Parsing summaries (in process)
# ------------------------------------------------------------------------------------------


def test_read_summary_file_by_keyword(tmp_path):
    path = write_file(tmp_path / "perf.txt", "\n".join([
        "some header line that is not a keyword",
        "loss 1e-05",
        "acc_final 0.99",
        "finished -1",
        "",
        "acc 0.5",
        "name hello world",
        "gap nan",
        "big inf",
        "neg -3",
        "vals 1 2 3.5",
        "unused 7",
    ]) + "\n")
    keywords = ["acc", "loss", "name", "gap", "big", "neg", "vals", "missing", "finished"]
    summary = hpsearch.read_summary_file(path, keywords)
    assert summary["acc"] == 0.5          # not acc_final's 0.99
    assert summary["loss"] == 1e-05
    assert summary["finished"] == -1
    assert summary["name"] == "hello world"
    assert math.isnan(summary["gap"])
    assert summary["big"] == float("inf")
    assert summary["neg"] == -3
    assert summary["vals"] == [1, 2, 3.5]
    assert "missing" not in summary and "unused" not in summary
    assert not hpsearch.is_finished(summary)


def test_read_summary_file_missing_raises(tmp_path):
    with pytest.raises(OSError):
        hpsearch.read_summary_file(str(tmp_path / "nope.txt"), ["finished"])


@pytest.mark.parametrize("text,value", [
    ("0.5", 0.5), ("-1", -1), ("1e-05", 1e-05), ("-2.5e3", -2500.0), ("inf", float("inf")),
    ("-inf", float("-inf")), ("42", 42), ("diverged", "diverged"), ("n/a yet", "n/a yet"),
    ("1 2", [1, 2]), ("0.1 -0.2", [0.1, -0.2]),
])
def test_parse_summary_value(text, value):
    assert hpsearch.parse_summary_value(text) == value
    assert type(hpsearch.parse_summary_value(text)) is type(value)


def test_parse_summary_value_nan():
    assert math.isnan(hpsearch.parse_summary_value("nan"))


@pytest.mark.parametrize("value", [1, 1.0, "1", ["1"], ("1",), [1], "1.0"])
def test_is_finished_true(value):
    assert hpsearch.is_finished({"finished": value})


@pytest.mark.parametrize("summary", [
    {"finished": 0}, {"finished": -1}, {"finished": "0"}, {"finished": ["0"]}, {"finished": 2},
    {"finished": "yes"}, {"finished": "nan"}, {"finished": [1, 1]}, {"acc": 1}, {}, None,
])
def test_is_finished_false(summary):
    assert not hpsearch.is_finished(summary)


# ------------------------------------------------------------------------------------------
# One search with every kind of outcome (shared by the tests below)
# ------------------------------------------------------------------------------------------

CASES_SCRIPT = r'''
import os
import signal
import sys

opts = dict(a[2:].partition("=")[::2] for a in sys.argv[1:] if a.startswith("--"))
case, out_dir = opts["case"], opts["out_dir"]
if case == "nodir":
    raise RuntimeError("crashed before making the folder: nodir")
if os.path.exists(out_dir):
    sys.exit(3)
os.makedirs(out_dir)
print("stdout of %s" % case)
sys.stdout.flush()
sys.stderr.write("stderr of %s\n" % case)
sys.stderr.flush()
SUMMARIES = {
    "exit1": "acc 0.7\nfinished 1\n",
    "exit255": "acc 0.8\nfinished 1\n",
    "unfinished": "acc 0.6\nfinished 0\n",
    "finished_neg": "acc 0.65\nfinished -1\n",
    "good_hi": "acc 0.9\nloss 0.1\nfinished 1\n",
    "good_lo": "acc 0.1\nloss 0.9\nfinished 1\n",
    "good_neg": "acc -2.5\nfinished 1\n",
    "reordered": "finished 1.0\nnote: an extra line\nloss 1e-05\n\nacc 0.3\nacc_final 0.99\n",
    "acc_nan": "acc nan\nfinished 1\n",
    "acc_inf": "acc inf\nfinished 1\n",
    "acc_text": "acc diverged badly\nfinished 1\n",
    "multi": "acc 0.1 0.2 0.3\nfinished 1\n",
}
if case == "garbage":
    with open(os.path.join(out_dir, "performance_overview.txt"), "wb") as f:
        f.write(b"\x00\xff\xfe garbage ### \x01\nfinished\n")
elif case in SUMMARIES:
    with open(os.path.join(out_dir, "performance_overview.txt"), "w") as f:
        f.write(SUMMARIES[case])
if case == "crash":
    raise ValueError("crashed after making the folder")
if case == "sigkill":
    os.kill(os.getpid(), signal.SIGKILL)
sys.exit({"exit1": 1, "exit255": 255}.get(case, 0))
'''

# case: (state, exit code, acc cell)
EXPECTED = {
    "nodir": ("failed", "1", ""),
    "crash": ("failed", "1", ""),
    "exit1": ("failed", "1", "0.7"),
    "exit255": ("failed", "255", "0.8"),
    "sigkill": ("killed", None, ""),
    "unfinished": ("unfinished", "0", "0.6"),
    "finished_neg": ("unfinished", "0", "0.65"),
    "garbage": ("unfinished", "0", ""),
    "good_hi": ("finished", "0", "0.9"),
    "good_lo": ("finished", "0", "0.1"),
    "good_neg": ("finished", "0", "-2.5"),
    "reordered": ("finished", "0", "0.3"),
    "acc_nan": ("finished", "0", "nan"),
    "acc_inf": ("finished", "0", "inf"),
    "acc_text": ("finished", "0", "diverged badly"),
    "multi": ("finished", "0", None),
}
CASES = list(EXPECTED)  # failures first: the search must go on after them


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("outcomes"), script_body=CASES_SCRIPT,
                           grid={"case": CASES, "seed": [1]},
                           conditions=[({"case": ["good_hi"]}, {"extra": ["e"]})])
    rc, out, err = project.hpsearch("--deterministic_search", timeout=90)
    assert rc == 1, err   # most cases do not finish, by design
    return project, project.search(), out


def rows_by_case(search):
    header, rows = search.results()
    return header, dict((r["case"], r) for r in rows), rows


def test_every_run_gets_its_state(outcomes):
    project, search, out = outcomes
    by_name = dict((r["name"], r["args"]["case"]) for r in search.runs())
    states = dict((by_name[n], s) for n, s in search.final_states().items())
    assert states == dict((c, e[0]) for c, e in EXPECTED.items())
    assert "done: 8 finished, 3 unfinished, 4 failed, 1 killed" in out


def test_csv_has_one_row_per_run_and_every_column(outcomes):
    project, search, out = outcomes
    header, by_case, rows = rows_by_case(search)
    # the summary keywords first (the performance key among them), then the arguments
    assert header == ["acc", "loss", "finished", "case", "seed", "extra", "out_dir",
                      "hpsearch_state", "hpsearch_exit_code", "hpsearch_reason"]
    assert len(rows) == len(CASES) and sorted(by_case) == sorted(CASES)
    runs = dict((r["args"]["case"], r) for r in search.runs())
    for case, (state, code, acc) in EXPECTED.items():
        row = by_case[case]
        assert row["hpsearch_state"] == state, case
        if code is not None:
            assert row["hpsearch_exit_code"] == code, case
        if acc is not None:
            assert row["acc"] == acc, case
        # the run folder, relative to the search folder (which may be moved or copied)
        assert row["out_dir"] == runs[case]["name"]
        assert os.path.join(search.path, row["out_dir"]) == runs[case]["out_dir"]
        assert row["seed"] == "1"
        assert row["extra"] == ("e" if case == "good_hi" else "")
    assert by_case["reordered"]["loss"] == "1e-05"
    assert by_case["reordered"]["finished"] in ("1.0", "1")
    assert by_case["good_hi"]["loss"] == "0.1"
    assert "0.1" in by_case["multi"]["acc"] and "0.3" in by_case["multi"]["acc"]


def as_number(text):
    try:
        x = float(text)
    except ValueError:
        return None
    return None if math.isnan(x) else x


def test_csv_ranks_finished_runs_first_then_by_performance(outcomes):
    """Best first: every finished run (by acc, highest first), then unfinished, failed and
    killed runs, each group by acc with the rows that have no number in it last; a failed run
    with a high partial value never ranks above a finished one."""
    project, search, out = outcomes
    header, rows = search.results()
    rank = {"finished": 0, "unfinished": 1, "failed": 2, "killed": 3}
    states = [rank[r["hpsearch_state"]] for r in rows]
    assert states == sorted(states), [r["hpsearch_state"] for r in rows]
    for group in set(states):
        numbers = [as_number(r["acc"]) for r, s in zip(rows, states) if s == group]
        count = sum(1 for n in numbers if n is not None)
        assert numbers[count:] == [None] * (len(numbers) - count), numbers
        assert numbers[:count] == sorted(numbers[:count], reverse=True), numbers
    finished = [as_number(r["acc"]) for r in rows if r["hpsearch_state"] == "finished"]
    others = [as_number(r["acc"]) for r in rows if r["hpsearch_state"] != "finished"]
    lowest = min(n for n in finished if n is not None)
    assert any(n is not None and n > lowest for n in others), \
        "the cases should include a run that did not finish with a higher acc than a finished one"


def test_logs_move_into_the_run_folder(outcomes):
    project, search, out = outcomes
    for run in search.runs():
        case, name = run["args"]["case"], run["name"]
        if case == "nodir":
            continue
        files = os.listdir(run["out_dir"])
        assert {"hpsearch_command.sh", "job_%s.out" % name, "job_%s.err" % name} <= set(files)
        with open(os.path.join(run["out_dir"], "job_%s.out" % name)) as f:
            assert f.read() == "stdout of %s\n" % case
        with open(os.path.join(run["out_dir"], "job_%s.err" % name)) as f:
            err = f.read()
        assert err.startswith("stderr of %s\n" % case)
        if case == "crash":
            assert "ValueError: crashed after making the folder" in err
        with open(os.path.join(run["out_dir"], "hpsearch_command.sh")) as f:
            command = f.read()
        assert command.startswith("#!/bin/sh\n")
        assert shlex.split(command.strip().splitlines()[-1]) == run["argv"]


def test_logs_stay_in_jobs_when_the_script_made_no_folder(outcomes):
    project, search, out = outcomes
    (run,) = [r for r in search.runs() if r["args"]["case"] == "nodir"]
    assert not os.path.exists(run["out_dir"])
    name = run["name"]
    assert sorted(os.listdir(search.file("jobs"))) == [name + ".err", name + ".out",
                                                     name + ".sh"]
    with open(search.file("jobs", name + ".err")) as f:
        assert "crashed before making the folder: nodir" in f.read()


def test_search_record(outcomes):
    project, search, out = outcomes
    record = search.record()
    assert record["format"] == "hpsearch-record-2"
    assert re.match(r"^[0-9a-f]{12}$", record["search_id"])
    assert record["out_arg"] == "out_dir"
    assert record["summary_keywords"] == ["acc", "loss", "finished"]
    assert record["performance_key"] == "acc"
    assert record["performance_sort_asc"] is False
    assert record["arg_keys"] == ["case", "seed", "extra"]
    # Paths of runs are relative to the search folder; their commands share one prefix.
    assert record["command_prefix"] == [record["command_prefix"][0], "train.py"]
    assert os.path.realpath(record["command_prefix"][0]) == os.path.realpath(sys.executable)
    for raw in record["runs"]:
        assert raw["out_dir"] == raw["name"] and "argv" not in raw
        assert raw["arguments"] == ["--%s=%s" % kv for kv in raw["args"].items()]
    assert search.path not in json.dumps(record["runs"])
    runs = search.runs()   # read back as hpsearch does: absolute folders, full argv
    assert [r["index"] for r in runs] == list(range(len(CASES)))
    # --deterministic_search: grid order; the condition's replacement comes after the others.
    assert [r["args"]["case"] for r in runs] == [c for c in CASES if c != "good_hi"] + [
        "good_hi"]
    stamp = re.match(r"sim_(\d{14})_01$", runs[0]["name"]).group(1)
    for k, run in enumerate(runs):
        assert run["name"] == "sim_%s_%02d" % (stamp, k + 1)
        assert run["out_dir"] == os.path.join(search.path, run["name"])
        args = {"case": run["args"]["case"], "seed": 1}
        if args["case"] == "good_hi":
            args["extra"] = "e"
        assert run["args"] == args
        assert run["argv"][1:] == ["train.py", "--out_dir=%s" % run["out_dir"]] + [
            "--%s=%s" % (k, v) for k, v in args.items()]
        assert os.path.realpath(run["argv"][0]) == os.path.realpath(sys.executable)
    with open(search.file("hp_config.py")) as f, open(project.config) as g:
        assert f.read() == g.read()
    # commands.sh: from the runs' folder, output folders beside the script wherever it is
    with open(search.file("commands.sh")) as f:
        lines = [l for l in f.read().splitlines() if l and not l.startswith("#")]
    assert lines[:2] == ['search_dir=$(cd "$(dirname "$0")" && pwd) || exit',
                         "cd %s || exit" % shlex.quote(project.path)]
    assert [shlex.split(l.replace('"$search_dir"', search.path)) for l in lines[2:]] == [
        r["argv"] for r in runs]
    with open(search.file("commands_wo_dirs.sh")) as f:
        lines = [l for l in f.read().splitlines() if l and not l.startswith("#")]
    assert lines[0] == "cd %s || exit" % shlex.quote(project.path)
    assert [shlex.split(l) for l in lines[1:]] == [
        r["argv"][:2] + r["argv"][3:] for r in runs]


def test_run_journal(outcomes):
    project, search, out = outcomes
    journal = search.journal()
    names = [r["name"] for r in search.runs()]
    assert sorted(set(e["run"] for e in journal)) == sorted(names)
    times = [e["time"] for e in journal]
    assert times == sorted(times)
    for name in names:
        entries = [e for e in journal if e["run"] == name]
        assert [e["state"] for e in entries][0] == "running"
        assert len(entries) == 2, entries
        end = entries[-1]
        assert end["state"] in ("finished", "unfinished", "failed", "killed")
        assert end["attempt"] == 1 and "exit_code" in end
    # Runs start in order, each after the previous one ended (one at a time).
    starts = [e["run"] for e in journal if e["state"] == "running"]
    assert starts == names
    by_name = dict((r["name"], r["args"]["case"]) for r in search.runs())
    ends = dict((by_name[e["run"]], e) for e in journal if e["state"] != "running")
    assert ends["exit1"]["exit_code"] == 1
    assert ends["good_hi"]["exit_code"] == 0
    assert "9" in ends["sigkill"].get("reason", "")


def test_search_folder_name(outcomes):
    project, search, out = outcomes
    name = os.path.basename(search.path)
    assert re.match(r"search_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d$", name), name
    assert os.path.dirname(search.path) == project.out_base


# ------------------------------------------------------------------------------------------
# Sorting ascending, custom parsers
# ------------------------------------------------------------------------------------------


def test_csv_sorted_ascending_by_chosen_key(tmp_path):
    project = make_project(tmp_path, grid={"loss": [0.5, "nan", -1, 2, "oops"]},
                           performance_key="loss", sort_asc=True)
    rc, out, err = project.hpsearch()
    assert rc == 0, err
    header, rows = project.search().results()
    assert [r["loss"] for r in rows[:3]] == ["-1", "0.5", "2"]
    assert sorted(r["loss"] for r in rows[3:]) == ["nan", "oops"]


CUSTOM_PARSER = '''
import json
import os


def parse(out_dir, cmd_ident):
    with open(os.path.join(out_dir, "handle_call.json"), "w") as f:
        json.dump({"out_dir": out_dir, "cmd_ident": cmd_ident,
                   "type": type(cmd_ident).__name__}, f)
    with open(os.path.join(out_dir, "argv.json")) as f:
        argv = json.load(f)
    if "--mode=raise" in argv:
        raise IOError("no results")
    finished = "0" if "--mode=zero" in argv else "1"
    return {"acc": ["0.25"], "loss": ["-3"], "finished": [finished]}


_SUMMARY_PARSER_HANDLE = parse
'''


def test_custom_summary_parser(tmp_path):
    project = make_project(tmp_path, grid={"mode": ["ok", "raise", "zero"]},
                           config_extra=CUSTOM_PARSER)
    rc, out, err = project.hpsearch()
    assert rc == 1, err   # "raise" and "zero" are not finished
    search = project.search()
    header, rows = search.results()
    by_mode = dict((r["mode"], r) for r in rows)
    assert by_mode["ok"]["hpsearch_state"] == "finished"
    assert by_mode["ok"]["acc"] == "0.25" and by_mode["ok"]["loss"] == "-3"
    assert by_mode["raise"]["hpsearch_state"] == "unfinished"
    assert by_mode["zero"]["hpsearch_state"] == "unfinished"
    for run in search.runs():
        with open(os.path.join(run["out_dir"], "handle_call.json")) as f:
            call = json.load(f)
        assert call == {"out_dir": run["out_dir"], "cmd_ident": run["index"], "type": "int"}


# ------------------------------------------------------------------------------------------
# The search folder: naming, concurrency, --force_out_dir
# ------------------------------------------------------------------------------------------


class FrozenDatetime(datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return cls(2030, 1, 2, 3, 4, 5)


def test_same_second_gets_a_new_search_folder(tmp_path, monkeypatch):
    monkeypatch.setattr(datetime, "datetime", FrozenDatetime)
    base = str(tmp_path / "out")
    first, stamp1 = hpsearch.create_search_dir(base, False, False)
    second, stamp2 = hpsearch.create_search_dir(base, False, False)
    assert os.path.basename(first) == "search_2030-01-02_03-04-05"
    assert second != first and second.startswith(first)
    assert os.path.isdir(first) and os.path.isdir(second)


def test_two_searches_started_at_once_get_different_folders(tmp_path):
    project = make_project(tmp_path, grid={"acc": [0.1, 0.2]})
    cmd = [sys.executable, HPSEARCH, "--grid_module=%s" % project.config, "--visible_gpus=-1"]
    procs = [subprocess.Popen(cmd, cwd=project.path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                              universal_newlines=True) for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
    searches = project.searches()
    assert len(searches) == 2
    for search in searches:
        assert sorted(search.final_states().values()) == ["finished", "finished"]
        assert all(r["out_dir"].startswith(search.path + os.sep) for r in search.runs())


def test_force_out_dir_refuses_an_existing_folder(tmp_path):
    project = make_project(tmp_path, grid={"acc": [0.1]})
    target = os.path.join(project.path, "fixed")
    write_file(os.path.join(target, "keep.txt"), "precious")
    before = tree(project.path)
    rc, out, err = project.hpsearch("--force_out_dir", "--out_dir=%s" % target)
    assert rc == 2
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("hpsearch: error:") and target in lines[0]
    assert "Traceback" not in err
    assert tree(project.path) == before


def file_contents(folder):
    """``{content: relative path}`` of every file under ``folder``."""
    found = {}
    for root, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as f:
                found[f.read()] = os.path.relpath(os.path.join(root, name), folder)
    return found


def run_main_in_process(argv):
    handlers = dict((s, signal.getsignal(s)) for s in (signal.SIGINT, signal.SIGTERM))
    try:
        return hpsearch.main(argv)
    finally:
        for s, h in handlers.items():
            signal.signal(s, h)


class LaterDatetime(datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return cls(2030, 1, 2, 3, 4, 9)


def two_forced_searches(tmp_path, monkeypatch, second_clock):
    """A search with --force_out_dir, then one with --dont_force_new_dir into the same folder
    (with a changed config) at ``second_clock``. Returns (folder, first runs, earlier files)."""
    monkeypatch.setattr(datetime, "datetime", FrozenDatetime)
    project = make_project(tmp_path, grid={"acc": [0.1, 0.2]})
    target = os.path.join(project.path, "fixed")
    argv = ["--grid_module=%s" % project.config, "--visible_gpus=-1", "--force_out_dir",
            "--out_dir=%s" % target, "--run_cwd=%s" % project.path]
    assert run_main_in_process(argv) == 0
    search = SearchDir(target)
    assert sorted(search.final_states().values()) == ["finished", "finished"]
    first_runs = search.runs()
    earlier = file_contents(target)
    project.write_config({"acc": [0.3, 0.4]})
    monkeypatch.setattr(datetime, "datetime", second_clock)
    assert run_main_in_process(argv + ["--dont_force_new_dir"]) == 0
    return search, first_runs, earlier


def check_second_search(search, first_runs):
    assert sorted(search.final_states().values()) == ["finished", "finished"]
    header, rows = search.results()
    assert sorted(r["acc"] for r in rows) == ["0.3", "0.4"]
    assert [r["hpsearch_state"] for r in rows] == ["finished", "finished"]
    assert not set(r["out_dir"] for r in first_runs) & set(r["out_dir"] for r in search.runs())
    for run in first_runs:  # the first search's run folders are untouched
        with open(os.path.join(run["out_dir"], "argv.json")) as f:
            assert json.load(f)[0] == "--out_dir=%s" % run["out_dir"]
        assert not [n for n in os.listdir(run["out_dir"]) if ".moved_" in n]


def test_force_out_dir_reuse_renames_earlier_files(tmp_path, monkeypatch, capsys):
    search, first_runs, earlier = two_forced_searches(tmp_path, monkeypatch, LaterDatetime)
    check_second_search(search, first_runs)
    # Nothing of the first search was deleted or overwritten (its config copy included).
    now = file_contents(search.path)
    lost = sorted(path for content, path in earlier.items() if content not in now)
    assert lost == [], "files of the first search overwritten or deleted"
    names = os.listdir(search.path)
    for name in ("search_results.csv", "search_record.json", "run_journal.jsonl",
                 "commands.sh"):
        assert any(n.startswith(name + ".") for n in names), name


def test_force_out_dir_reuse_in_the_same_second(tmp_path, monkeypatch, capsys):
    # Same clock: the second search must still not reuse the first one's run folder names.
    search, first_runs, earlier = two_forced_searches(tmp_path, monkeypatch, FrozenDatetime)
    check_second_search(search, first_runs)
