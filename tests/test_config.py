"""Loading the config: bad input gives one clear line and exit 2; good input in every form
hypnettorch users have works."""

import json
import os
import pickle
import shlex
import shutil
import sys

import pytest

from conftest import DEFAULT_SCRIPT, HPSEARCH, config_source, make_project, run_hpsearch, \
    tree, write_file

GOOD_GRID = {"acc": [0.5]}


def good_config(**kwargs):
    return config_source(GOOD_GRID, **kwargs)


# Each case: (id, config text or None to keep the good one, extra argv, words stderr must name).
BAD_CASES = [
    ("missing_module", None, ["--grid_module=no_such_config_mod"], ["no_such_config_mod"]),
    ("missing_py_file", None, ["--grid_module=nope_config.py"], ["nope_config.py"]),
    ("syntax_error", "grid = {'acc': [0.5]\n_SCRIPT_NAME = 'train.py'\n", [], ["hp_config.py"]),
    ("exception_at_import", good_config() + "raise RuntimeError('boom in config')\n", [],
     ["hp_config.py", "boom in config"]),
    ("missing_grid", good_config().replace("grid = ", "not_grid = ", 1), [],
     ["hp_config.py", "grid"]),
    ("empty_grid", config_source({}), [], ["hp_config.py", "grid"]),
    ("grid_value_not_a_list", config_source({"learning_rate": 0.5}), [],
     ["hp_config.py", "learning_rate"]),
    ("grid_value_empty_list", config_source({"acc": [0.5], "learning_rate": []}), [],
     ["hp_config.py", "learning_rate"]),
    ("conditions_not_pairs", config_source(GOOD_GRID, [({"acc": [0.5]},)]), [],
     ["hp_config.py", "conditions"]),
    ("conditions_not_a_list", good_config(extra="conditions = {'acc': [0.5]}"), [],
     ["hp_config.py", "conditions"]),
    ("condition_trigger_not_a_list", config_source(GOOD_GRID, [({"acc": 0.5}, {"b": [1]})]),
     [], ["hp_config.py", "conditions"]),
    ("out_arg_in_grid", config_source({"acc": [0.5], "out_dir": ["x"]}), [],
     ["hp_config.py", "out_dir"]),
    ("finished_not_a_keyword", good_config(summary_keywords=["acc", "loss"]), [],
     ["hp_config.py", "finished"]),
    ("script_file_missing", good_config(script_name="no_such_train.py"), [],
     ["hp_config.py", "no_such_train.py"]),
    ("script_name_missing", good_config(extra="del _SCRIPT_NAME"), [],
     ["hp_config.py", "_SCRIPT_NAME"]),
    ("performance_key_not_a_keyword", good_config(performance_key="accuracy"), [],
     ["hp_config.py", "accuracy"]),
    ("unknown_scheduler", None, ["--scheduler=pbs"], ["scheduler", "pbs"]),
    # Not built yet, or (now) no scheduler on this machine: either way one clear line.
    ("run_cluster_unavailable", None, ["--run_cluster"], [("run_cluster", "bsub")]),
    ("random_pick_needs_num_searches", None, ["--dont_generate_full_grid"],
     ["num_searches"]),
    ("num_searches_zero", None, ["--num_searches=0"], ["num_searches"]),
    ("grid_config_missing", None, ["--grid_config=no_such_override.pkl"],
     ["no_such_override.pkl"]),
    ("grid_config_not_a_dict", None, ["--grid_config=override.json"], ["override.json"]),
    ("run_cwd_missing", None, ["--run_cwd=no_such_dir"], ["no_such_dir"]),
    ("bad_visible_gpus", None, ["--visible_gpus=zero"], ["visible_gpus"]),
]


@pytest.mark.parametrize("name,text,args,words", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(tmp_path, name, text, args, words):
    project = make_project(tmp_path, grid=GOOD_GRID)
    if text is not None:
        write_file(project.config, text)
    write_file(os.path.join(project.path, "override.json"), json.dumps([["grid", 1]]))
    before = tree(project.path)
    extra = {}
    if any(a.startswith("--visible_gpus") for a in args):
        extra["visible_gpus"] = None
    rc, out, err = project.hpsearch(*args, **extra)
    assert rc == 2, (out, err)
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("hpsearch: error: "), err
    for word in words:  # a tuple: any one of them
        assert any(w in lines[0] for w in (word if isinstance(word, tuple) else (word,))), err
    assert tree(project.path) == before
    assert not os.path.exists(os.path.join(project.path, "out"))


def test_unknown_flag_gives_error_and_usage_hint(tmp_path):
    project = make_project(tmp_path)
    rc, out, err = project.hpsearch("--bogus_flag=1")
    assert rc == 2
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("hpsearch: error: ") and "--bogus_flag" in lines[0]
    assert "usage: hpsearch.py --grid_module=CONFIG" in lines[0]
    assert not os.path.exists(os.path.join(project.path, "out"))


def test_grid_module_is_required(tmp_path):
    rc, out, err = run_hpsearch(["--visible_gpus=-1"], tmp_path)
    assert rc == 2
    lines = err.splitlines()
    assert len(lines) == 1 and "--grid_module" in lines[0], err
    assert os.listdir(str(tmp_path)) == []


# ------------------------------------------------------------------------------------------
# Good input
# ------------------------------------------------------------------------------------------


def assert_finished_search(project, base=None, count=1):
    search = project.search(base)
    states = search.final_states()
    assert sorted(states.values()) == ["finished"] * count, states
    return search


def test_dotted_module_name_from_cwd(tmp_path):
    project = make_project(tmp_path, grid={"acc": [0.5]})
    write_file(os.path.join(project.path, "cfgs", "__init__.py"), "")
    shutil.move(project.config, os.path.join(project.path, "cfgs", "hp_config.py"))
    rc, out, err = project.hpsearch(grid_module="cfgs.hp_config")
    assert rc == 0, err
    search = assert_finished_search(project)
    assert os.path.isfile(search.file("hp_config.py"))


def test_module_name_importable_from_run_cwd(tmp_path):
    project = make_project(tmp_path, grid={"acc": [0.5]})
    elsewhere = os.path.join(str(tmp_path), "elsewhere")
    os.makedirs(elsewhere)
    rc, out, err = project.hpsearch("--run_cwd=%s" % project.path, "--out_dir=results",
                                    grid_module="hp_config", cwd=elsewhere)
    assert rc == 0, err
    # A relative --out_dir is relative to --run_cwd, as in hypnettorch.
    assert_finished_search(project, os.path.join(project.path, "results"))
    assert os.listdir(elsewhere) == []


def test_config_importing_a_sibling_module(tmp_path):
    project = make_project(tmp_path)
    confdir = os.path.join(str(tmp_path), "confdir")
    write_file(os.path.join(confdir, "hp_common.py"), "SHARED_GRID = {'acc': [0.1, 0.9]}\n")
    write_file(os.path.join(confdir, "sib_config.py"),
               "from hp_common import SHARED_GRID\n"
               + config_source({}, script_name=project.script).replace(
                   "grid = {}", "grid = dict(SHARED_GRID)"))
    elsewhere = os.path.join(str(tmp_path), "elsewhere")
    os.makedirs(elsewhere)
    rc, out, err = project.hpsearch("--run_cwd=%s" % project.path, cwd=elsewhere,
                                    grid_module=os.path.join(confdir, "sib_config.py"))
    assert rc == 0, err
    assert_finished_search(project, count=2)


def test_relative_path_to_py_file(tmp_path):
    project = make_project(tmp_path, grid={"acc": [0.5]})
    rc, out, err = project.hpsearch(grid_module="hp_config.py")
    assert rc == 0, err
    assert_finished_search(project)


def dry_run_args(project, *args):
    rc, out, err = project.hpsearch("--dry_run", "--deterministic_search", *args)
    assert rc == 0, err
    lines = out.strip().splitlines()
    return [" ".join(shlex.split(line)[2:]) for line in lines[:-1]]


def test_grid_config_pickle_overrides_grid(tmp_path):
    project = make_project(tmp_path, grid={"acc": [0.5]},
                           conditions=[({"acc": [0.7]}, {"seed": [3]})])
    path = os.path.join(project.path, "override.pkl")
    with open(path, "wb") as f:
        pickle.dump({"grid": {"acc": [0.7, 0.8]}}, f)
    assert dry_run_args(project, "--grid_config=%s" % path) == [
        "--acc=0.8", "--acc=0.7 --seed=3"]
    rc, out, err = project.hpsearch("--grid_config=override.pkl")
    assert rc == 0, err
    search = assert_finished_search(project, count=2)
    assert os.path.isfile(search.file("override.pkl"))


def test_grid_config_json_overrides_conditions_and_both(tmp_path):
    project = make_project(tmp_path, grid={"acc": [0.1, 0.2]},
                           conditions=[({"acc": [0.1]}, {"seed": [3]})])
    only_conditions = write_file(os.path.join(project.path, "conds.json"), json.dumps(
        {"conditions": [[{"acc": [0.2]}, {"seed": [7, 8]}]]}))
    assert dry_run_args(project, "--grid_config=%s" % only_conditions) == [
        "--acc=0.1", "--acc=0.2 --seed=7", "--acc=0.2 --seed=8"]
    both = write_file(os.path.join(project.path, "both.json"), json.dumps(
        {"grid": {"acc": [0.3]}, "conditions": []}))
    assert dry_run_args(project, "--grid_config=%s" % both) == ["--acc=0.3"]


HYPNETTORCH_CONFIG = '''
"""A config as written for hypnettorch's hpsearch."""
import argparse
import os

grid = {
    'acc': [0.25, 0.75],
    'name': ['"example string"'],
    'use_bn': [False, True],
}

conditions = [
    ({'use_bn': [True]}, {'epochs': [3]}),
]

_SCRIPT_NAME = 'train.py'
_SUMMARY_FILENAME = 'performance_overview.txt'
_SUMMARY_KEYWORDS = ['acc', 'loss', 'finished']
_OUT_ARG = 'out_dir'


def _get_performance_summary(out_dir, cmd_ident):
    """Hypnettorch style: each value a one-element list of strings."""
    params = dict()
    with open(os.path.join(out_dir, _SUMMARY_FILENAME), 'r') as f:
        for line in f:
            words = line.split(' ')
            params[words[0]] = [words[1].strip()]
    return params


_SUMMARY_PARSER_HANDLE = _get_performance_summary


def _performance_criteria(summary_dict, performance_criteria):
    return float(summary_dict['acc'][0]) > performance_criteria


_PERFORMANCE_EVAL_HANDLE = _performance_criteria
_PERFORMANCE_KEY = None
_PERFORMANCE_SORT_ASC = False


def _argparse_handle(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument('--out_dir', type=str)
    parser.add_argument('--acc', type=float)
    return parser.parse_known_args(args=argv)[0]


_ARGPARSE_HANDLE = _argparse_handle

if __name__ == '__main__':
    pass
'''


def test_hypnettorch_config_loads_unchanged(tmp_path):
    project = make_project(tmp_path)
    write_file(project.config, HYPNETTORCH_CONFIG)
    rc, out, err = project.hpsearch("--deterministic_search")
    assert rc == 0, err
    search = assert_finished_search(project, count=4)
    header, rows = search.results()
    # the summary keywords first, then the arguments not among them
    assert header[:6] == ["acc", "loss", "finished", "name", "use_bn", "epochs"]
    assert sorted(r["acc"] for r in rows) == ["0.25", "0.25", "0.75", "0.75"]
    with open(os.path.join(search.runs()[0]["out_dir"], "argv.json")) as f:
        assert "--name=example string" in json.load(f)


def test_python_dash_m_hpsearch(tmp_path):
    project = make_project(tmp_path, grid={"acc": [0.5]})
    rc, out, err = run_hpsearch(
        ["--grid_module=hp_config", "--visible_gpus=-1"], project.path,
        env={"PYTHONPATH": os.path.dirname(HPSEARCH)}, prefix=[sys.executable, "-m", "hpsearch"])
    assert rc == 0, err
    assert_finished_search(project)


def test_hpsearch_copied_alone_into_a_folder(tmp_path):
    folder = os.path.join(str(tmp_path), "standalone")
    os.makedirs(folder)
    shutil.copy(HPSEARCH, os.path.join(folder, "hpsearch.py"))
    write_file(os.path.join(folder, "train.py"), DEFAULT_SCRIPT)
    write_file(os.path.join(folder, "my_search.py"), config_source({"acc": [0.1, 0.2]}))
    rc, out, err = run_hpsearch(
        ["--grid_module=my_search", "--visible_gpus=-1"], folder,
        env={"PYTHONPATH": None}, prefix=[sys.executable, os.path.join(folder, "hpsearch.py")])
    assert rc == 0, err
    base = os.path.join(folder, "out", "hyperparam_search")
    (search,) = os.listdir(base)
    with open(os.path.join(base, search, "run_journal.jsonl")) as f:
        states = [json.loads(line)["state"] for line in f]
    assert states.count("finished") == 2
