"""Shared helpers for the hpsearch tests (Python 3.6-3.13, stdlib + pytest).

* ``run_hpsearch(args, cwd, env=None, timeout=60)`` runs ``python hpsearch.py ARGS`` as a
  subprocess and returns ``(rc, stdout, stderr)``.
* ``make_project(tmp_path, script_body=None, config_extra='', grid=...)`` writes a tiny training
  script (``train.py``) and a config (``hp_config.py``) into ``tmp_path/proj`` and returns a
  ``Project``; ``project.hpsearch(...)`` runs a search there and ``project.search()`` reads the
  search folder it made (``SearchDir``).

Both are plain functions (``from conftest import ...`` works) and fixtures of the same name.

The default training script takes ``--key=value`` / ``--flag`` arguments (any keys), refuses an
existing output folder like hypnettorch scripts, writes ``argv.json`` (``sys.argv[1:]``) and
``info.json`` (cwd, pid, start/end time, CUDA_* variables, interpreter) into it, prints one line to
stdout and stderr, and writes ``performance_overview.txt`` (``acc``, ``loss``, ``finished``).
Knobs (as grid keys): ``--acc=X`` ``--loss=X`` ``--finished=X`` ``--exit=N`` ``--sleep=S``
``--no_summary`` ``--no_dir`` (fail before making the folder) ``--read_stdin`` (calls input()).
"""

import contextlib
import csv
import inspect
import json
import os
import subprocess
import sys
import time

import pytest

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS_DIR)
HPSEARCH = os.path.join(REPO, "hpsearch.py")
FAKE_BIN = os.path.join(TESTS_DIR, "fake_bin")

if REPO not in sys.path:
    sys.path.insert(0, REPO)

SUMMARY_FILENAME = "performance_overview.txt"
SUMMARY_KEYWORDS = ["acc", "loss", "finished"]
DEFAULT_GRID = {"acc": [0.25, 0.75], "seed": [1, 2]}

def options(argv):
    """``--key=value`` -> {key: 'value'}, ``--flag`` -> {flag: True}."""
    opts = {}
    for a in argv:
        if a.startswith("--"):
            key, eq, value = a[2:].partition("=")
            opts[key] = value if eq else True
    return opts


def append_line(path, line):
    """One line, appended with one O_APPEND write: lines of processes writing at once never
    mix, and a line is whole or absent."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode("utf-8"))
    finally:
        os.close(fd)


# What the tests' training scripts share: a script's text starts with SCRIPT_TOOLS (the two
# functions above, as source, and note(), which writes into the ledger folder beside the script).
SCRIPT_TOOLS = "\n".join([
    "import json", "import os", "import sys", "import time", "", ""]
    + [inspect.getsource(f) + "\n" for f in (options, append_line)] + [
    "HERE = os.path.dirname(os.path.abspath(__file__))",
    "LEDGER = os.path.join(HERE, 'ledger')   # what a script notes for its test",
    "", "", "def note(name, line):", "    append_line(os.path.join(LEDGER, name), line)", ""])

DEFAULT_SCRIPT = SCRIPT_TOOLS + r'''
OUT_ARG = "out_dir"


def main():
    started = time.time()
    opts = options(sys.argv[1:])
    out_dir = opts.get(OUT_ARG)
    if not isinstance(out_dir, str) or not out_dir:
        sys.exit("train.py: no --%s given" % OUT_ARG)
    if opts.get("no_dir"):
        raise RuntimeError("failing before making the output folder")
    if os.path.exists(out_dir):  # as hypnettorch scripts: never reuse a folder
        sys.stderr.write("train.py: refusing to overwrite existing %s\n" % out_dir)
        sys.exit(3)
    os.makedirs(out_dir)
    with open(os.path.join(out_dir, "argv.json"), "w") as f:
        json.dump(sys.argv[1:], f)
    print("hello stdout from %s" % os.path.basename(out_dir))
    sys.stdout.flush()
    sys.stderr.write("hello stderr from %s\n" % os.path.basename(out_dir))
    if opts.get("read_stdin"):
        input()
    if "sleep" in opts:
        time.sleep(float(opts["sleep"]))
    if not opts.get("no_summary"):
        with open(os.path.join(out_dir, "performance_overview.txt"), "w") as f:
            f.write("acc %s\nloss %s\nfinished %s\n" % (
                opts.get("acc", "0.5"), opts.get("loss", "1.0"), opts.get("finished", "1")))
    info = {"argv0": sys.argv[0], "cwd": os.getcwd(), "pid": os.getpid(),
            "executable": sys.executable, "warnoptions": list(sys.warnoptions),
            "start": started, "end": time.time(),
            "env": {k: v for k, v in os.environ.items() if k.startswith("CUDA")}}
    with open(os.path.join(out_dir, "info.json"), "w") as f:
        json.dump(info, f)
    sys.exit(int(opts.get("exit", 0)))


main()
'''


def config_source(grid, conditions=None, script_name="train.py",
                  summary_filename=SUMMARY_FILENAME, summary_keywords=SUMMARY_KEYWORDS,
                  performance_key="acc", sort_asc=False, out_arg="out_dir", extra=""):
    """The text of a hypnettorch-style config module."""
    lines = [
        "grid = %r" % (grid,),
        "conditions = %r" % (list(conditions or []),),
        "_SCRIPT_NAME = %r" % (script_name,),
        "_SUMMARY_FILENAME = %r" % (summary_filename,),
        "_SUMMARY_KEYWORDS = %r" % (list(summary_keywords),),
        "_OUT_ARG = %r" % (out_arg,),
        "_SUMMARY_PARSER_HANDLE = None",
        "_PERFORMANCE_KEY = %r" % (performance_key,),
        "_PERFORMANCE_SORT_ASC = %r" % (sort_asc,),
        extra,
    ]
    return "\n".join(lines) + "\n"


def write_file(path, text):
    path = str(path)
    folder = os.path.dirname(path)
    if folder and not os.path.isdir(folder):
        os.makedirs(folder)
    with open(path, "w") as f:
        f.write(text)
    return path


def run_hpsearch(args, cwd, env=None, timeout=60, prefix=None):
    """Run ``python hpsearch.py ARGS`` in ``cwd``; return ``(rc, stdout, stderr)``.

    ``env`` updates the inherited environment (a value of None removes the variable);
    ``prefix`` replaces ``[sys.executable, HPSEARCH]`` (e.g. ``[sys.executable, '-m',
    'hpsearch']``).
    """
    full_env = dict(os.environ)
    for key, value in (env or {}).items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    cmd = list(prefix or [sys.executable, HPSEARCH]) + [str(a) for a in args]
    proc = subprocess.Popen(cmd, cwd=str(cwd), env=full_env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError("hpsearch %s did not end within %s s\nstdout:\n%s\nstderr:\n%s"
                             % (" ".join(cmd), timeout, out, err))
    return proc.returncode, out, err


def read_csv(path):
    """``(header, rows)`` of a ``;``-separated file; rows as dicts."""
    with open(str(path), newline="") as f:
        rows = list(csv.reader(f, delimiter=";"))
    header = rows[0]
    return header, [dict(zip(header, r)) for r in rows[1:]]


class SearchDir(object):
    """Read access to one search folder."""

    def __init__(self, path):
        self.path = str(path)

    def file(self, *parts):
        return os.path.join(self.path, *parts)

    def record(self):
        with open(self.file("search_record.json")) as f:
            return json.load(f)

    def journal(self):
        with open(self.file("run_journal.jsonl")) as f:
            return [json.loads(line) for line in f if line.strip()]

    def final_states(self):
        """``{run name: last journal state}``."""
        states = {}
        for entry in self.journal():
            states[entry["run"]] = entry["state"]
        return states

    def job_names(self):
        """``{run name: scheduler job name}`` of each run's latest submission (journal)."""
        return {e["run"]: e["job_name"] for e in self.journal() if e.get("job_name")}

    def results(self):
        return read_csv(self.file("search_results.csv"))

    def runs(self):
        """The record's runs as hpsearch reads them back: ``out_dir`` (the record keeps it
        relative to the search folder) as an absolute path here, and the full ``argv``."""
        import hpsearch
        record = self.record()
        planned = hpsearch.runs_from_record(record, hpsearch.SearchFolder(self.path))
        return [dict(entry, out_dir=run.out_dir, argv=run.argv)
                for entry, run in zip(record["runs"], planned)]

    def run_dir(self, name):
        return self.file(name)


class Project(object):
    """A folder with ``train.py`` and ``hp_config.py``; runs hpsearch there."""

    def __init__(self, path, config_name="hp_config", script_name="train.py"):
        self.path = str(path)
        self.config = os.path.join(self.path, config_name + ".py")
        self.config_name = config_name
        self.script = os.path.join(self.path, script_name)
        self.out_base = os.path.join(self.path, "out", "hyperparam_search")

    def write_config(self, grid, conditions=None, **kwargs):
        write_file(self.config, config_source(grid, conditions, **kwargs))

    def hpsearch(self, *args, **kwargs):
        """Run a search with this config (``--visible_gpus=-1`` unless ``visible_gpus`` is
        given; None leaves the flag out). Keyword args: cwd, env, timeout, grid_module."""
        visible_gpus = kwargs.pop("visible_gpus", "-1")
        grid_module = kwargs.pop("grid_module", self.config)
        cwd = kwargs.pop("cwd", self.path)
        argv = ["--grid_module=%s" % grid_module]
        if visible_gpus is not None:
            argv.append("--visible_gpus=%s" % visible_gpus)
        argv.extend(args)
        return run_hpsearch(argv, cwd, **kwargs)

    def searches(self, base=None):
        base = base or self.out_base
        if not os.path.isdir(base):
            return []
        return [SearchDir(os.path.join(base, d)) for d in sorted(os.listdir(base))
                if d.startswith("search_")]

    def search(self, base=None):
        """The only search folder under ``base`` (default: ``out/hyperparam_search``)."""
        found = self.searches(base)
        assert len(found) == 1, [s.path for s in found]
        return found[0]


def make_project(tmp_path, script_body=None, config_extra="", grid=None, conditions=None,
                 name="proj", **config_kwargs):
    """Write ``train.py`` (``script_body`` or the default script) and ``hp_config.py``."""
    project = Project(os.path.join(str(tmp_path), name))
    write_file(project.script, DEFAULT_SCRIPT if script_body is None else script_body)
    project.write_config(DEFAULT_GRID if grid is None else grid, conditions,
                         extra=config_extra, **config_kwargs)
    return project


def ledger_path(project, name=""):
    """A file a script's note() writes (SCRIPT_TOOLS), or the folder of them."""
    return os.path.join(project.path, "ledger", name)


def ledger(project, name):
    """The lines a script noted in ``name``, split into words."""
    try:
        with open(ledger_path(project, name)) as f:
            return [line.split() for line in f.read().splitlines() if line.strip()]
    except OSError:
        return []


def wait_for(predicate, timeout, interval=0.05):
    """Poll ``predicate`` until it is true or ``timeout`` seconds pass; its last value."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def only_search(project, base=None):
    """The path of the only search folder of ``project`` under ``base``."""
    return project.search(base).path


def tree(path):
    """Every file and folder under ``path`` (relative), ignoring ``__pycache__``."""
    found = set()
    for root, dirs, files in os.walk(str(path)):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in dirs + files:
            found.add(os.path.relpath(os.path.join(root, name), str(path)))
    return found


@pytest.fixture(name="run_hpsearch")
def run_hpsearch_fixture():
    return run_hpsearch


@pytest.fixture(name="make_project")
def make_project_fixture():
    return make_project


@pytest.fixture
def project(tmp_path):
    """The default project: 4 configurations (acc x seed), all finishing."""
    return make_project(tmp_path)


@contextlib.contextmanager
def killed_if_left(proc):
    """Kill and reap ``proc`` if it is still going when the block ends (a failed wait)."""
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
