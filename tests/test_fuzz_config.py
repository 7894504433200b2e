"""Bad input never hurts: property-based tests (hypothesis).

* Malformed configs (random Python literals for grid, conditions and every ``_SETTING``) through
  ``hpsearch.main([... '--dry_run'])`` in process: exit 0 or 2; exit 2 is exactly one stderr line
  starting ``hpsearch: error:``; never another exception, a traceback, a hang, or a file written.
  A few fixed cases run ``python hpsearch.py`` as a subprocess.
* Random summary-file bytes: ``read_summary_file`` / ``collect_summary`` never raise and
  ``is_finished`` returns a bool.

Kept fast for Python 3.6-3.13 on a busy machine: max_examples 60 (HPSEARCH_FUZZ_EXAMPLES
changes it), deadline=None.
"""

import contextlib
import os
import re
import shutil
import signal
import sys
import tempfile

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hpsearch
from conftest import run_hpsearch, write_file

# HPSEARCH_FUZZ_EXAMPLES=1000 for a longer hunt (tox passes HPSEARCH_* through).
FUZZ = settings(max_examples=int(os.environ.get("HPSEARCH_FUZZ_EXAMPLES", 60)), deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                       HealthCheck.function_scoped_fixture])
OMIT = object()


def text(**kwargs):
    """Any text but lone surrogates (those are a case of their own, below). An explicit
    alphabet also spares hypothesis building its utf-8 table, seconds on a slow machine."""
    return st.text(alphabet=st.characters(blacklist_categories=("Cs",)), **kwargs)


# ------------------------------------------------------------------------------------------
# Strategies: Python literals, and configs built from them
# ------------------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-10 ** 6, 10 ** 6),
    st.floats(allow_nan=True, allow_infinity=True), text(max_size=8),
    st.sampled_from(["", " ", '"a b"', "'", '"', "--x", "a;b", "\n", "\t", "finished", "acc",
                     "out_dir", "train.py"]))
literals = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(inner, inner),
        st.sets(st.integers(-3, 3), max_size=3),
        st.dictionaries(st.one_of(text(max_size=5), st.integers(-3, 3)), inner, max_size=3)),
    max_leaves=8)
keys = st.one_of(st.sampled_from(["lr", "bs", "out_dir", "", "a b", "x=y", "finished", "--k"]),
                 text(max_size=6))
value_lists = st.one_of(st.lists(scalars, min_size=0, max_size=3), literals)
grids = st.one_of(literals, st.dictionaries(keys, value_lists, max_size=3),
                  st.dictionaries(st.sampled_from(["lr", "bs"]),
                                  st.lists(scalars, min_size=1, max_size=3), min_size=1,
                                  max_size=2))
part = st.one_of(literals, st.dictionaries(keys, value_lists, max_size=2))
conditions = st.one_of(literals, st.lists(st.one_of(literals, st.tuples(part, part)),
                                          max_size=2))


# Strings made of the characters that shells, shlex and file names treat specially.
tricky_text = st.text(alphabet=" \"'\\-=ab.\n\t\x00/", max_size=10)


def setting(good, extra=()):
    """Omitted, the right value, any literal, or a plausible mistake."""
    return st.one_of(st.just(OMIT), st.just(good), literals, tricky_text,
                     st.sampled_from(list(extra) or [good]))


SETTINGS = {
    "_SCRIPT_NAME": setting("train.py", ['train.py "', "train.py '", "-m mod", "-c", "  ",
                                         "missing.py", "-W ignore train.py", '"tr ain.py"',
                                         "train.py --flag=1 pos", "-X"]),
    "_SUMMARY_FILENAME": setting("performance_overview.txt", ["", "a/b.txt", "../x"]),
    "_SUMMARY_KEYWORDS": st.one_of(setting(["acc", "finished"]),
                                   st.lists(st.one_of(st.just("finished"), text(max_size=5)),
                                            max_size=3)),
    "_OUT_ARG": st.one_of(setting("out_dir", ["", "lr", "bs", "a b"]), keys),
    "_PERFORMANCE_KEY": setting(None, ["acc", "finished", "nope", ""]),
    "_PERFORMANCE_SORT_ASC": setting(False),
    "_SUMMARY_PARSER_HANDLE": setting(None),
    "_PERFORMANCE_EVAL_HANDLE": setting(None),
    "_ARGPARSE_HANDLE": setting(None),
}
FIELDS = dict(grid=st.one_of(st.just(OMIT), grids),
              conditions=st.one_of(st.just(OMIT), conditions), **SETTINGS)
VALID = {"grid": {"lr": [0.1, 0.01], "bs": [16]}, "conditions": [({"bs": [16]}, {"m": [1, 2]})],
         "_SCRIPT_NAME": "train.py", "_SUMMARY_FILENAME": "performance_overview.txt",
         "_SUMMARY_KEYWORDS": ["acc", "finished"], "_OUT_ARG": "out_dir",
         "_PERFORMANCE_KEY": "acc", "_PERFORMANCE_SORT_ASC": False}


def _valid_but(bad):
    config = dict(VALID)
    config.update(bad)
    return config


# A valid config with one field drawn at random (so every check down to the script name is
# reached), with two or three, or everything random (most of those stop at the grid).
one_bad = st.one_of([st.fixed_dictionaries({name: FIELDS[name]}).map(_valid_but)
                     for name in sorted(FIELDS)])
some_bad = st.tuples(st.sets(st.sampled_from(sorted(FIELDS)), min_size=2, max_size=3),
                     st.fixed_dictionaries(FIELDS)).map(
    lambda pair: _valid_but({name: pair[1][name] for name in pair[0]}))
configs = st.one_of(one_bad, one_bad, one_bad, some_bad, st.fixed_dictionaries(FIELDS))


def config_text(values):
    """The config module: each value as its repr (nan and inf defined so they load)."""
    lines = ["nan = float('nan')", "inf = float('inf')"]
    lines += ["%s = %r" % (name, value) for name, value in values.items() if value is not OMIT]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------
# In-process runs of main()
# ------------------------------------------------------------------------------------------


class Hang(Exception):
    pass


@contextlib.contextmanager
def time_limit(seconds):
    """Turn a hang into a failure (SIGALRM; the main thread only)."""
    def alarm(signum, frame):
        raise Hang("hpsearch did not return within %ss" % seconds)
    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@contextlib.contextmanager
def isolated_imports():
    """main() puts folders on sys.path and imports the config: undo that afterwards."""
    path, modules, bytecode = list(sys.path), set(sys.modules), sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        yield
    finally:
        sys.path[:] = path
        for name in set(sys.modules) - modules:
            del sys.modules[name]
        sys.dont_write_bytecode = bytecode


def files_in(folder):
    found = set()
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        found.update(os.path.relpath(os.path.join(root, n), folder) for n in dirs + files)
    return found


def dry_run_in_process(capsys, text):
    """Write ``text`` as a config and run ``main([... --dry_run])``: (rc, stdout, stderr)."""
    folder = tempfile.mkdtemp(prefix="hpsearch_fuzz_")
    try:
        write_file(os.path.join(folder, "train.py"), "print('train')\n")
        config = write_file(os.path.join(folder, "fuzz_cfg.py"), text)
        before = files_in(folder)
        capsys.readouterr()
        with isolated_imports(), time_limit(30):
            try:
                rc = hpsearch.main(["--grid_module=%s" % config, "--dry_run",
                                    "--run_cwd=%s" % folder, "--visible_gpus=-1"])
            except SystemExit as exc:  # argparse only; not expected here
                rc = exc.code
            except Hang:
                raise
            except BaseException as exc:
                raise AssertionError("main() raised %s: %s\nconfig:\n%s"
                                     % (type(exc).__name__, exc, text))
        out, err = capsys.readouterr()
        assert files_in(folder) == before, "--dry_run wrote %s" % (files_in(folder) - before)
        return rc, out, err
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def check_outcome(rc, out, err, text):
    assert rc in (0, 2), (rc, out, err, text)
    assert "Traceback" not in out + err, (err, text)
    lines = err.splitlines()
    if rc == 2:
        assert len(lines) == 1 and lines[0].startswith("hpsearch: error:"), (err, text)
    else:
        assert all(line.startswith("hpsearch: warning:") for line in lines), (err, text)
        assert re.search(r"(^|\n)\d+ commands? \(\d+ grid points?, .*\)\n$", out), (
            out[-200:], text)


@FUZZ
@given(values=configs)
def test_malformed_config_dry_run_exits_0_or_2_with_one_line(capsys, values):
    text = config_text(values)
    rc, out, err = dry_run_in_process(capsys, text)
    check_outcome(rc, out, err, text)


@FUZZ
@given(grid=st.dictionaries(keys, st.lists(scalars, min_size=1, max_size=3), min_size=1,
                            max_size=3),
       conds=st.lists(st.tuples(st.dictionaries(keys, value_lists, max_size=2),
                                st.dictionaries(keys, st.lists(scalars, min_size=1,
                                                               max_size=2), max_size=2)),
                      max_size=2))
def test_nearly_valid_config_dry_run_exits_0_or_2_with_one_line(capsys, grid, conds):
    """Well-formed settings, odd grids and conditions: most of these reach the commands."""
    text = config_text({"grid": grid, "conditions": conds, "_SCRIPT_NAME": "train.py",
                        "_SUMMARY_FILENAME": "p.txt", "_SUMMARY_KEYWORDS": ["finished"]})
    rc, out, err = dry_run_in_process(capsys, text)
    check_outcome(rc, out, err, text)


# Fixed cases, as a subprocess (the real entry point): each once broke the one-line contract.
GOOD = ("grid = {'a': [1, 2]}\nconditions = []\n_SUMMARY_FILENAME = 'p.txt'\n"
        "_SUMMARY_KEYWORDS = ['finished']\n")
SUBPROCESS_CASES = {
    "unbalanced_quote_in_script_name": GOOD + "_SCRIPT_NAME = 'train.py \"'\n",
    "nul_in_script_name": GOOD + "_SCRIPT_NAME = 'train.py\\x00'\n",
    "newline_in_quoted_script_name": GOOD + "_SCRIPT_NAME = '\"tra\\nin.py\"'\n",
    "lone_surrogate_in_a_value": GOOD.replace("[1, 2]", "['\\ud800']")
                                 + "_SCRIPT_NAME = 'train.py'\n",
    "multi_line_exception_at_import": "raise ValueError('first line\\nsecond line')\n",
    "grid_none": GOOD.replace("{'a': [1, 2]}", "None") + "_SCRIPT_NAME = 'train.py'\n",
    "keywords_without_finished": GOOD.replace("['finished']", "['acc']")
                                 + "_SCRIPT_NAME = 'train.py'\n",
    "conditions_not_pairs": GOOD.replace("conditions = []", "conditions = [1, (2,)]")
                            + "_SCRIPT_NAME = 'train.py'\n",
}


@pytest.mark.parametrize("case", sorted(SUBPROCESS_CASES))
def test_bad_config_as_a_subprocess(tmp_path, case):
    folder = str(tmp_path)
    write_file(os.path.join(folder, "train.py"), "print('train')\n")
    write_file(os.path.join(folder, "cfg.py"), SUBPROCESS_CASES[case])
    before = files_in(folder)
    rc, out, err = run_hpsearch(["--grid_module=cfg.py", "--dry_run", "--visible_gpus=-1"],
                                folder, timeout=60)
    assert rc in (0, 2), (rc, out, err)
    assert "Traceback" not in out + err, err
    if rc == 2:
        lines = err.splitlines()
        assert len(lines) == 1 and lines[0].startswith("hpsearch: error:"), err
    assert files_in(folder) - before <= {"__pycache__"}, files_in(folder) - before


# ------------------------------------------------------------------------------------------
# Summary files: whatever a run writes, reading it never raises
# ------------------------------------------------------------------------------------------

summary_pieces = st.sampled_from([
    b"finished", b"acc", b"loss", b" ", b"\t", b"1", b"0", b"1.0", b"-1", b"1e999", b"nan",
    b"inf", b"1" + b"0" * 400, b"9" * 5000, b"\n", b"\r", b"\r\n", b"\x00", b"\xff\xfe",
    b"\xc3", b";", b'"', b"finished 1\n", b"[1]"])
summary_bytes = st.one_of(st.binary(max_size=200), st.lists(summary_pieces, max_size=12).map(
    b"".join))
keywords = st.lists(st.one_of(st.sampled_from(["acc", "loss", "finished"]), text(max_size=5)),
                    max_size=4).map(lambda k: k + ["finished"])


class FakeConfig(object):
    def __init__(self, keywords, parser=None):
        self.summary_filename = "performance_overview.txt"
        self.summary_keywords = keywords
        self.summary_parser = parser


@FUZZ
@given(data=summary_bytes, kws=keywords)
def test_random_summary_bytes_never_raise(tmp_path, data, kws):
    out_dir = tempfile.mkdtemp(dir=str(tmp_path))
    path = os.path.join(out_dir, "performance_overview.txt")
    with open(path, "wb") as f:
        f.write(data)
    summary = hpsearch.read_summary_file(path, kws)
    assert isinstance(summary, dict) and set(summary) <= set(kws)
    run = hpsearch.Run(0, "sim_x_1", {}, [], out_dir)
    collected = hpsearch.collect_summary(FakeConfig(kws), run)
    assert collected is None or isinstance(collected, dict)
    assert isinstance(hpsearch.is_finished(summary), bool), summary
    assert isinstance(hpsearch.is_finished(collected), bool), collected
    for value in summary.values():
        hpsearch.format_cell(value)
        hpsearch.sort_number(hpsearch.format_cell(value))


@FUZZ
@given(result=literals, raises=st.booleans())
def test_custom_summary_parser_results_never_raise(tmp_path, result, raises):
    def parser(out_dir, index):
        if raises:
            raise ValueError("broken parser")
        return result
    run = hpsearch.Run(0, "sim_x_1", {}, [], str(tmp_path))
    collected = hpsearch.collect_summary(FakeConfig(["finished"], parser), run)
    assert collected is None or isinstance(collected, dict)
    assert isinstance(hpsearch.is_finished(collected), bool), collected


@FUZZ
@given(finished=st.one_of(literals, st.integers(), st.just(10 ** 400)))
def test_is_finished_always_a_bool(finished):
    assert isinstance(hpsearch.is_finished({"finished": finished}), bool)
