"""Commands: how a value becomes an argument, and that the script gets exactly that argv."""

import json
import os
import shlex
import stat
import subprocess
import sys

import hpsearch
from conftest import make_project, tree, write_file


# ------------------------------------------------------------------------------------------
# render_token
# ------------------------------------------------------------------------------------------


def test_render_token():
    r = hpsearch.render_token
    assert r("flag", True) == "--flag"
    assert r("flag", False) is None
    assert r("n", 1) == "--n=1"
    assert r("n", 0) == "--n=0"
    assert r("x", 1.0) == "--x=1.0"
    assert r("x", 1e-05) == "--x=1e-05"
    assert r("s", "a b") == "--s=a b"
    assert r("s", "it's") == "--s=it's"
    assert r("s", "'single'") == "--s='single'"
    assert r("s", "") == "--s="
    assert r("v", None) == "--v=None"
    assert r("v", [1, 2]) == "--v=[1, 2]"


def test_render_token_removes_legacy_enclosing_double_quotes():
    r = hpsearch.render_token
    assert r("s", '"example string"') == "--s=example string"
    assert r("s", '""') == "--s="
    assert r("s", '"') == '--s="'            # a lone quote is not a pair
    assert r("s", 'say "hi"') == '--s=say "hi"'  # not enclosing
    assert r("s", '"a') == '--s="a'


def test_arguments_follow_grid_order():
    space = hpsearch.GridSpace({"b": [True], "a": [False], "c": ['"x y"'], "d": [2]}, [])
    (code,) = space.expand()
    assert space.arguments(code) == ["--b", "--c=x y", "--d=2"]


# ------------------------------------------------------------------------------------------
# End to end: the argv the script receives
# ------------------------------------------------------------------------------------------

NASTY = [
    "two words",
    "it's",
    'say "hi"',
    '"legacy quoted string"',
    "$HOME",
    "a;b && echo hacked",
    "`touch {pwned}_backtick`",
    "$(touch {pwned}_dollar)",
    "back\\slash\ttab",
    "*",
    "--not-a-flag",
    "",
]


def expected_token(i, value):
    return hpsearch.render_token("v%02d" % i, value)


def test_arguments_arrive_verbatim_and_nothing_runs(tmp_path):
    pwned = os.path.join(str(tmp_path), "pwned")
    values = [v.replace("{pwned}", pwned) for v in NASTY]
    grid = dict(("v%02d" % i, [v]) for i, v in enumerate(values))
    grid.update({"flag": [True], "off": [False], "n": [3], "x": [0.5]})
    project = make_project(tmp_path, grid=grid)
    rc, out, err = project.hpsearch()
    assert rc == 0, err
    search = project.search()
    (run,) = search.runs()
    with open(os.path.join(run["out_dir"], "argv.json")) as f:
        argv = json.load(f)
    expected = ["--out_dir=%s" % run["out_dir"]]
    expected += ["--v%02d=%s" % (i, v) for i, v in enumerate(values)]
    expected[1 + NASTY.index('"legacy quoted string"')] = "--v03=legacy quoted string"
    expected += ["--flag", "--n=3", "--x=0.5"]
    assert argv == expected
    assert run["argv"][2:] == expected
    assert search.final_states() == {run["name"]: "finished"}
    assert not [f for f in os.listdir(str(tmp_path)) if f.startswith("pwned")]

    # commands.sh and hpsearch_command.sh give the same argv when a shell runs them.
    commands = search.file("commands.sh")
    assert argv_run_by(commands, run["argv"][0], str(tmp_path)) == [run["argv"]]
    command_file = os.path.join(run["out_dir"], "hpsearch_command.sh")
    assert argv_run_by(command_file, run["argv"][0], str(tmp_path)) == [run["argv"]]
    assert not [f for f in os.listdir(str(tmp_path)) if f.startswith("pwned")]


def argv_run_by(script, python, cwd):
    """The argv of each command a shell script runs with ``python`` (it prints them
    instead: a copy of the script beside it, with ``python`` a shell function)."""
    dump = "import json, sys; print(json.dumps(sys.argv[1:]))"
    word = shlex.quote(python) + " "
    with open(script) as f:
        lines = f.read().splitlines()
    assert sum(1 for line in lines if line.startswith(word)) >= 1, lines
    lines = [("args " + line[len(word):]) if line.startswith(word) else line for line in lines]
    lines.insert(1, "args() { %s -c %s %s \"$@\"; }" % (
        shlex.quote(sys.executable), shlex.quote(dump), shlex.quote(python)))
    copy = script + ".argv_test.sh"
    with open(copy, "w") as f:
        f.write("\n".join(lines) + "\n")
    try:
        out = subprocess.check_output(["/bin/sh", copy], universal_newlines=True, cwd=cwd,
                                      timeout=30)
    finally:
        os.remove(copy)
    return [json.loads(line) for line in out.splitlines()]


def test_script_name_with_interpreter_flags_and_positional_argument(tmp_path):
    project = make_project(tmp_path, grid={"acc": [0.5]},
                           script_name="-W ignore train.py mode_a")
    rc, out, err = project.hpsearch()
    assert rc == 0, err
    (run,) = project.search().runs()
    assert run["argv"][1:4] == ["-W", "ignore", "train.py"]
    with open(os.path.join(run["out_dir"], "argv.json")) as f:
        assert json.load(f) == ["mode_a", "--out_dir=%s" % run["out_dir"], "--acc=0.5"]
    with open(os.path.join(run["out_dir"], "info.json")) as f:
        info = json.load(f)
    assert info["warnoptions"] == ["ignore"]
    assert project.search().final_states() == {run["name"]: "finished"}


def test_absolute_script_path_with_a_space(tmp_path):
    project = make_project(tmp_path, grid={"acc": [0.5]})
    folder = os.path.join(str(tmp_path), "my scripts")
    os.makedirs(folder)
    script = os.path.join(folder, "train.py")
    os.rename(project.script, script)
    project.write_config({"acc": [0.5]}, script_name=shlex.quote(script))
    elsewhere = os.path.join(str(tmp_path), "elsewhere")
    os.makedirs(elsewhere)
    rc, out, err = project.hpsearch("--run_cwd=%s" % elsewhere)
    assert rc == 0, err
    search = project.search(os.path.join(elsewhere, "out", "hyperparam_search"))
    (run,) = search.runs()
    assert run["argv"][1] == script
    with open(os.path.join(run["out_dir"], "info.json")) as f:
        info = json.load(f)
    assert info["argv0"] == script
    assert os.path.realpath(info["cwd"]) == os.path.realpath(elsewhere)
    assert search.final_states() == {run["name"]: "finished"}


def test_python_flag_chooses_the_interpreter(tmp_path):
    project = make_project(tmp_path, grid={"acc": [0.5]})
    marker = os.path.join(str(tmp_path), "wrapper_called")
    wrapper = write_file(os.path.join(str(tmp_path), "bin", "my python"),
                         '#!/bin/sh\nprintf "%%s\\n" "$@" > %s\nexec %s "$@"\n'
                         % (shlex.quote(marker), shlex.quote(sys.executable)))
    os.chmod(wrapper, os.stat(wrapper).st_mode | stat.S_IXUSR)
    rc, out, err = project.hpsearch("--python=%s" % wrapper)
    assert rc == 0, err
    (run,) = project.search().runs()
    assert run["argv"][0] == wrapper
    with open(marker) as f:
        assert f.read().splitlines()[:2] == ["train.py", "--out_dir=%s" % run["out_dir"]]
    assert project.search().final_states() == {run["name"]: "finished"}


def test_stdin_is_dev_null(tmp_path):
    project = make_project(tmp_path, grid={"read_stdin": [True]})
    rc, out, err = project.hpsearch(timeout=30)
    assert rc == 1, err   # the search ran to its end; its one run failed
    assert "EOFError" in out   # the script's last error line, on the line that reports it
    search = project.search()
    (run,) = search.runs()
    assert search.final_states() == {run["name"]: "failed"}
    with open(os.path.join(run["out_dir"], "job_%s.err" % run["name"])) as f:
        assert "EOFError" in f.read()


def test_run_folder_does_not_exist_when_the_script_starts(tmp_path):
    # The default script exits 3 if its folder exists; every run here must finish.
    project = make_project(tmp_path, grid={"acc": [0.1, 0.2, 0.3]})
    rc, out, err = project.hpsearch()
    assert rc == 0, err
    search = project.search()
    states = search.final_states()
    assert sorted(states.values()) == ["finished"] * 3
    for run in search.runs():
        assert os.path.isfile(os.path.join(run["out_dir"], "argv.json"))
        assert os.path.dirname(run["out_dir"]) == search.path


def test_dry_run_prints_commands_and_writes_nothing(tmp_path):
    project = make_project(tmp_path, grid={"acc": [0.1, 0.2], "s": ["a b", '"q r"']})
    before = tree(tmp_path)
    rc, out, err = project.hpsearch("--dry_run", "--deterministic_search")
    assert rc == 0, err
    assert tree(tmp_path) == before
    lines = out.strip().splitlines()
    assert lines[-1] == "4 commands (4 grid points, 0 duplicates removed, 0 conditions skipped)"
    assert [shlex.split(line) for line in lines[:-1]] == [
        [sys.executable, "train.py"] + args for args in (
            ["--acc=0.1", "--s=a b"], ["--acc=0.1", "--s=q r"],
            ["--acc=0.2", "--s=a b"], ["--acc=0.2", "--s=q r"])]
