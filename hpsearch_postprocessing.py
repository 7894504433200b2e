#!/usr/bin/env python3
"""hpsearch_postprocessing: what became of a search, in one table and one page.

    python hpsearch_postprocessing.py SEARCH_DIR [--performance_criteria X] [--html]

Reads a search folder (``search_record.json`` and ``run_journal.jsonl`` of hpsearch, or the
``commands.pickle`` of a hypnettorch search) and every run's summary file, then

* writes ``postprocessing_results.csv`` (the columns of ``search_results.csv``, the reason a
  run did not finish included; best first: finished runs by the performance key, then
  unfinished, failed and killed runs, as hpsearch.rank_key ranks them, then running, missing
  and never started runs) and ``postprocessing_seeds.csv`` (runs that differ only in their
  seed, averaged);
* prints how many runs finished, stopped early, failed, are running or never started, each run
  that did not finish with its reason, how to run those again (``hpsearch.py --resume``, and
  per run its command into a fresh output folder), and the best runs as a table;
* with ``--performance_criteria X`` judges every run with the config's
  ``_PERFORMANCE_EVAL_HANDLE``, then moves the folders of runs it rejects into
  ``SEARCH_DIR/TO_BE_DELETED/`` (nothing is deleted); a run it could not judge (its summary
  lacks a key the handle read, or the handle raised) stays; if it could judge none, nothing
  moves (exit status 2);
* with ``--html`` writes ``SEARCH_DIR/report.html``: one self-contained page with plots.

An output file whose content changes is written anew, the earlier one renamed with a time
stamp (never overwritten); one whose content would be the same is left as it is. Standard
library only (CPython 3.6 to 3.13); ``hpsearch.py`` must sit in the same folder.
"""

import argparse
import collections
import csv
import datetime
import html
import io
import itertools
import json
import math
import os
import pickle
import shlex
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import hpsearch  # noqa: E402  (the folder above must come first on sys.path)
from hpsearch import (  # noqa: E402
    CONFIG_DEFAULTS, ENDED_STATES, FAILED, FINISHED, KILLED, RUNNING, STOPPED, UNFINISHED,
    ResultsTable,
    Run, SearchConfig, SearchFolder, UsageError, atomic_write_text, build_argv, build_config,
    collect_summary, command_prefix, format_cell, import_config_module, is_finished,
    last_line_of, one_line, process_start_time, rank_key, render_token, sort_number,
    why_unfinished)

PROG = "hpsearch_postprocessing"

RESULTS_NAME = "postprocessing_results.csv"
SEEDS_NAME = "postprocessing_seeds.csv"
REPORT_NAME = "report.html"
TRASH_DIR = hpsearch.TRASH_DIR
PICKLE_NAME = "commands.pickle"

# States beyond hpsearch's own: a run that ended but whose folder is gone, and one never run.
MISSING = "missing"
NOT_STARTED = "not_started"
STATE_ORDER = (FINISHED, STOPPED, UNFINISHED, FAILED, KILLED, RUNNING, MISSING, NOT_STARTED)
STATE_LABELS = {
    FINISHED: "finished",
    STOPPED: "stopped early (early stopping)",
    UNFINISHED: "unfinished (stopped before finishing)",
    FAILED: "failed",
    KILLED: "killed",
    RUNNING: "still running",
    MISSING: "run folder missing",
    NOT_STARTED: "never started",
}
ALWAYS_SHOWN = (FINISHED, UNFINISHED, FAILED, RUNNING, NOT_STARTED)
LOOK_AT = 50  # unfinished, running and missing runs listed with their notes


def warn(message):
    sys.stderr.write("%s: warning: %s\n" % (PROG, message))
    sys.stderr.flush()


def is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class _Absent(object):
    """The value of an argument a run does not have (keys only some conditions add)."""

    def __str__(self):
        return "(absent)"


ABSENT = _Absent()


def value_order(value):
    """Sort key for argument values: numbers by value, then text, then the absent value."""
    if value is ABSENT:
        return (2, "", 0)
    if is_number(value):
        return (0, "", float(value))
    return (1, format_cell(value), 0)


def short_number(value):
    """A value for a narrow column: floats with 4 significant digits, the rest as in the CSV."""
    if isinstance(value, float):
        return "%.4g" % value
    return format_cell(value)


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def build_parser():
    p = hpsearch.ArgumentParser(
        hint="hpsearch_postprocessing.py SEARCH_DIR [options]",
        prog="hpsearch_postprocessing.py",
        description="Postprocessing of a hyperparameter search made by hpsearch (or by "
                    "hypnettorch): result tables, run states, seed averages, an HTML report.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("out_dir", metavar="SEARCH_DIR",
                   help="The search folder (search_<time>). A relative path not found here is "
                        "looked up under --run_cwd, as hypnettorch did.")
    p.add_argument("--performance_criteria", type=float, default=None, metavar="X",
                   help="Move the folders of runs for which the config's "
                        "_PERFORMANCE_EVAL_HANDLE(summary, X) is false into "
                        "SEARCH_DIR/TO_BE_DELETED/ (nothing is deleted).")
    p.add_argument("--grid_module", type=str, default=None,
                   help="The config (.py path or dotted module name). Default: the search's "
                        "own copy named in search_record.json. Required for hypnettorch "
                        "folders (commands.pickle).")
    p.add_argument("--run_cwd", type=str, default=None,
                   help="The working directory the runs had (default: the one in "
                        "search_record.json, else '.'); relative run folders and config "
                        "imports are resolved there.")
    p.add_argument("--seed_key", type=str, default="random_seed",
                   help="The argument that holds the random seed: runs that differ only in it "
                        "are averaged in postprocessing_seeds.csv.")
    p.add_argument("--top", type=int, default=10, metavar="K",
                   help="Show the best K runs.")
    p.add_argument("--html", action="store_true",
                   help="Also write SEARCH_DIR/report.html (self-contained, with plots).")
    return p


# ----------------------------------------------------------------------------------------------
# Reading a search folder
# ----------------------------------------------------------------------------------------------


class RunStatus(Run):
    """A planned run and what postprocessing found of it.

    ``out_dir`` is where its folder is now (or was planned); ``reason`` why it did not finish
    (as search_results.csv's hpsearch_reason); ``notes`` what else is odd about it;
    ``out_token`` the argument of ``argv`` that names its output folder.
    """

    __slots__ = ("notes", "in_trash", "out_token")

    def __init__(self, index, name, args, argv, out_dir):
        Run.__init__(self, index, name, args, argv, out_dir)
        self.notes = []
        self.in_trash = False
        self.out_token = None


class SearchView(object):
    """Everything postprocessing knows about one search."""

    def __init__(self, path, origin, config, arg_keys, runs, run_cwd):
        self.path = path          # absolute path of the search folder
        self.origin = origin      # 'hpsearch' or 'hypnettorch'
        self.config = config      # a hpsearch.SearchConfig
        self.arg_keys = arg_keys  # argument names, in column order
        self.runs = runs          # RunStatus objects, in run order
        self.run_cwd = run_cwd

    def file(self, *names):
        return os.path.join(self.path, *names)


def find_search_dir(text, run_cwd):
    candidates = [text]
    if run_cwd and not os.path.isabs(text):
        candidates.append(os.path.join(run_cwd, text))
    for candidate in candidates:
        if os.path.isdir(candidate):
            return os.path.abspath(candidate)
    raise UsageError("%s: no such folder (give the search_<time> folder of a search)" % text)


def open_search(args):
    """Read the search folder named on the command line into a SearchView."""
    path = find_search_dir(args.out_dir, args.run_cwd)
    folder = SearchFolder(path)
    if os.path.lexists(folder.record):
        return search_from_record(folder, args)
    if os.path.lexists(os.path.join(path, PICKLE_NAME)):
        return search_from_pickle(path, args)
    raise UsageError("%s holds neither %s (hpsearch) nor %s (hypnettorch); is it a search "
                     "folder?" % (path, hpsearch.RECORD_FILE, PICKLE_NAME))


def load_config(name_or_path, run_cwd):
    """Import and check a config module. Postprocessing never runs the training script, so
    the script need not exist here."""
    dont_write = sys.dont_write_bytecode
    sys.dont_write_bytecode = True  # no __pycache__ in the search folder
    try:
        module, source = import_config_module(name_or_path, [os.getcwd(), run_cwd])
    finally:
        sys.dont_write_bytecode = dont_write
    return build_config(module, source, {}, run_cwd, check_script=False)


def config_from_record(record, where):
    """The settings the record keeps, for when the config itself cannot be loaded: the
    built-in summary reader, no _PERFORMANCE_EVAL_HANDLE."""
    settings = dict(CONFIG_DEFAULTS)
    keywords = record.get("summary_keywords")
    if not isinstance(keywords, list) or not keywords or not record.get("summary_filename"):
        raise UsageError("%s: no summary file or keywords recorded; give --grid_module" % where)
    settings.update({
        "_SCRIPT_NAME": "",
        "_SUMMARY_FILENAME": record["summary_filename"],
        "_SUMMARY_KEYWORDS": keywords,
        "_OUT_ARG": record.get("out_arg") or "out_dir",
        "_PERFORMANCE_KEY": record.get("performance_key"),
        "_PERFORMANCE_SORT_ASC": record.get("performance_sort_asc", False),
    })
    return SearchConfig(where, {}, [], settings)


def record_config(folder, record, args, run_cwd):
    """The config for an hpsearch folder: --grid_module, else the search's own copy, else the
    settings in the record (with a warning; not enough for --performance_criteria)."""
    if args.grid_module:
        return load_config(args.grid_module, run_cwd)
    original = record.get("config_file") or ""
    copy = folder.file(os.path.basename(original)) if original else ""
    why = "its copy of the config (%s) is missing" % (os.path.basename(original) or "?")
    if copy and os.path.isfile(copy):
        try:
            return load_config(copy, run_cwd)
        except UsageError as exc:
            why = str(exc)
    if args.performance_criteria is not None:
        raise UsageError("--performance_criteria needs the config's _PERFORMANCE_EVAL_HANDLE, "
                         "but %s; give --grid_module" % why)
    warn("%s; using the settings in %s (built-in summary reader); give --grid_module to use "
         "a config" % (why, hpsearch.RECORD_FILE))
    return config_from_record(record, folder.record)


def search_from_record(folder, args):
    record = folder.read_record(context="search folder")
    run_cwd = os.path.abspath(args.run_cwd or record.get("run_cwd") or ".")
    config = record_config(folder, record, args, run_cwd)
    runs = hpsearch.runs_from_record(record, folder, run_class=RunStatus)
    out_arg = record.get("out_arg") or "out_dir"
    for run in runs:  # runs_from_record put the planned folder into argv as it is
        run.out_token = "--%s=%s" % (out_arg, run.out_dir)
    arg_keys = record.get("arg_keys") or keys_in_order(r.args for r in runs)
    journal = read_journal(folder)
    local = not record.get("scheduler")  # job ids are process ids: their end can be seen
    owner = hpsearch.JournalOwner(folder, record)
    for run in runs:
        survey_run(run, config, folder.path, journal.get(run.name) or [], local, owner)
    return SearchView(folder.path, "hpsearch", config, arg_keys, runs, run_cwd)


def read_journal(folder):
    """``{run name: [entries in order]}`` as SearchFolder.read_journal gives it. Fast path: the
    whole journal decoded as one JSON array (one decoder call instead of one per line); if any
    line is damaged, hpsearch's line-by-line reader, which skips such lines with a warning."""
    try:
        with open(folder.journal, "rb") as f:
            lines = [line for line in f.read().decode("utf-8").splitlines() if line.strip()]
        entries = json.loads("[%s]" % ",".join(lines))
    except (OSError, ValueError):  # UnicodeDecodeError is a ValueError
        return folder.read_journal()
    journal = collections.defaultdict(list)
    for entry in entries:
        if hpsearch.journal_entry(entry) is None:
            return folder.read_journal()
        journal[entry["run"]].append(entry)
    return journal


def read_commands_pickle(path):
    try:
        with open(path, "rb") as f:
            commands = pickle.load(f)
    except Exception as exc:  # unpickling can raise nearly anything
        raise UsageError("cannot read %s (%s: %s)" % (path, type(exc).__name__, exc))
    if not isinstance(commands, list) or not all(isinstance(c, dict) for c in commands):
        raise UsageError("%s does not hold a list of command dicts" % path)
    return commands


def search_from_pickle(path, args):
    """A folder written by hypnettorch: commands.pickle lists the runs, no journal."""
    pickle_path = os.path.join(path, PICKLE_NAME)
    if not args.grid_module:
        copies = sorted(n for n in os.listdir(path) if n.endswith(".py"))
        hint = (" (this folder has %s)" % ", ".join(copies)) if copies else ""
        raise UsageError("%s was made by hypnettorch (%s, no %s): give --grid_module=CONFIG "
                         "for its summary keywords and parser%s"
                         % (path, PICKLE_NAME, hpsearch.RECORD_FILE, hint))
    run_cwd = os.path.abspath(args.run_cwd or ".")
    config = load_config(args.grid_module, run_cwd)
    prefix = command_prefix("python3", config.script_name)
    runs = []
    for i, command in enumerate(read_commands_pickle(pickle_path)):
        cmd = dict(command)
        out = cmd.pop(config.out_arg, None)
        if not isinstance(out, str) or not out:
            raise UsageError("%s: command %d has no %r (the config's _OUT_ARG); is "
                             "--grid_module the config of this search?"
                             % (pickle_path, i, config.out_arg))
        tokens = [t for t in (render_token(k, v) for k, v in cmd.items()) if t is not None]
        argv = build_argv(prefix, config.out_arg, out, tokens)
        out_dir = os.path.normpath(os.path.join(run_cwd, out))
        run = RunStatus(i, os.path.basename(out_dir), cmd, argv, out_dir)
        run.out_token = "--%s=%s" % (config.out_arg, out)
        runs.append(run)
    arg_keys = keys_in_order(r.args for r in runs)
    for run in runs:
        survey_run(run, config, path, [], journaled=False)
    return SearchView(path, "hypnettorch", config, arg_keys, runs, run_cwd)


def keys_in_order(dicts):
    seen = collections.OrderedDict()
    for d in dicts:
        for key in d:
            seen[key] = None
    return list(seen)


# ----------------------------------------------------------------------------------------------
# What became of each run
# ----------------------------------------------------------------------------------------------


def read_summary(config, run):
    """The run's summary (one read of its file) and a note when something is wrong with it."""
    summary = collect_summary(config, run)
    if summary is None:
        if config.summary_parser is None and not os.path.lexists(
                os.path.join(run.out_dir, config.summary_filename)):
            return None, "no summary file"
        return None, "summary unreadable"
    if not summary:
        return summary, "summary empty or garbled"
    return summary, ""


def process_gone(entry):
    """True when a 'running' entry names a local process that no longer exists."""
    pid, start = entry.get("job_id"), entry.get("job_start")
    if not isinstance(pid, int) or not isinstance(start, int):
        return False
    return process_start_time(pid) != start


def survey_run(run, config, search_path, entries, local=False, owner=None, journaled=True):
    """Set the run's state, exit code, summary, reason and notes from its journal entries
    (hpsearch) and its folder; never raises for anything a run left behind. ``local``: the
    search ran here, so a running run whose process is gone can be told. ``owner``: tells a
    copied folder's runs from those its original was running when it was copied.
    ``journaled``: false for hypnettorch folders, which have no journal."""
    last = entries[-1] if entries else {}
    logged = last.get("state")
    if logged == hpsearch.SUBMITTING:
        logged = RUNNING
    if logged == RUNNING and owner is not None and not owner.owns(last):
        run.notes.append("was running in the folder this one was copied from")
        logged = None
    if logged in ENDED_STATES:
        run.exit_code = last.get("exit_code")
    recorded = one_line(format_cell(last.get("reason"))) if logged in ENDED_STATES else ""
    run.attempt = last.get("attempt") or 1
    search = hpsearch.SearchFolder(search_path)
    folder, run.in_trash = search.find_run_dir(run)
    if folder is not None:
        run.out_dir = folder
        run.summary, problem = read_summary(config, run)
        if run.in_trash:
            run.notes.append("in %s" % TRASH_DIR)
    else:
        problem = ""
    if logged == RUNNING:
        run.state = RUNNING
        if local and process_gone(last):
            run.notes.append("its process is gone (launcher stopped? hpsearch.py --resume)")
    elif logged in (STOPPED, FAILED, KILLED):
        run.state = logged
    elif folder is None:
        run.state = MISSING if logged in (FINISHED, UNFINISHED) else NOT_STARTED
    else:
        run.state = FINISHED if is_finished(run.summary) else UNFINISHED
    if problem and run.state not in (FINISHED, RUNNING):  # a running run is not done yet
        run.notes.append(problem)
    run.reason = reason_of(run, config, search, logged, recorded, journaled)


def reason_of(run, config, search, logged, recorded, journaled):
    """Why the run did not finish, for the hpsearch_reason column: what the launcher recorded
    in the journal's ended entry (the last line of stderr for a failure, what the summary
    lacked for an unfinished run), else what its files tell, in the same words."""
    state = run.state
    if state == FINISHED:
        return ""
    if state == RUNNING:
        return "; ".join(run.notes)
    if recorded and state in (STOPPED, UNFINISHED, FAILED, KILLED) and logged == state:
        return recorded
    if state == UNFINISHED:
        return why_unfinished(config, run)
    code = run.exit_code
    if state == KILLED and isinstance(code, int) and code > 128:
        return "killed by signal %d" % (code - 128)
    if state in (FAILED, KILLED):
        return (last_line_of(search.log_of(run, ".err"))
                or last_line_of(search.log_of(run, ".out")) or "no message on stderr or stdout")
    if state == MISSING:
        return "run folder deleted (it had ended %s%s)" % (
            logged, ": " + recorded if recorded else "")
    if not journaled:  # hypnettorch: no journal, only the folder tells
        return "no run folder %s (never started, or ended before making it)" % run.out_dir
    return "never started"


def count_states(runs):
    counts = collections.Counter(r.state for r in runs)
    return [(s, counts.get(s, 0)) for s in STATE_ORDER]


# ----------------------------------------------------------------------------------------------
# --performance_criteria: move runs that miss it into TO_BE_DELETED
# ----------------------------------------------------------------------------------------------


def check_criteria_handle(config, criteria):
    if criteria is not None and config.performance_eval is None:
        raise UsageError("--performance_criteria needs _PERFORMANCE_EVAL_HANDLE in %s (a "
                         "function (summary_dict, criteria) -> bool); it is missing or None"
                         % config.source)


def hypnettorch_summary(summary):
    """The summary as hypnettorch-era handles expect it: ``{key: ['text']}``."""
    return {k: [format_cell(v)] for k, v in summary.items()}


class WatchedSummary(dict):
    """A summary that notes every key a handle asks for and it lacks (``d[key]``,
    ``d.get(key)``, ``key in d``, ...): a verdict on a value that is not there is no verdict."""

    def __init__(self, values):
        dict.__init__(self, values)
        self.lacked = []

    def _ask(self, key):
        try:
            found = dict.__contains__(self, key)
        except TypeError:  # an unhashable key
            found = False
        if not found:
            self.lacked.append(key)
        return found

    def __getitem__(self, key):
        self._ask(key)
        return dict.__getitem__(self, key)

    def __contains__(self, key):
        return self._ask(key)

    def get(self, key, default=None):
        return dict.get(self, key, default) if self._ask(key) else default

    def setdefault(self, key, default=None):
        self._ask(key)
        return dict.setdefault(self, key, default)

    def pop(self, key, *default):
        self._ask(key)
        return dict.pop(self, key, *default)

    def has_key(self, key):  # a Python 2 habit some old handles keep
        return self._ask(key)


def handle_name(config):
    """The handle as a message names it: ``_PERFORMANCE_EVAL_HANDLE (name in config)``."""
    name = getattr(config.performance_eval, "__name__", None) or repr(config.performance_eval)
    return "_PERFORMANCE_EVAL_HANDLE (%s in %s)" % (name, config.source)


class Unjudged(object):
    """A run the handle gave no verdict on, and why (``lacked``: the key it asked for and the
    summary lacks, if that was it)."""

    def __init__(self, run, why, lacked=None):
        self.run, self.why, self.lacked = run, why, lacked


def judge(handle, run, criteria):
    """True (keep) or False (move): the handle's verdict on the run's summary; an Unjudged
    when it gave none: it asked for a key the summary lacks (whatever it then returned), or it
    raised. Handles written for hypnettorch index ``d[key][0]`` on text, so a handle that
    raises gets a second try with the values in that form."""
    first = None
    for values in (run.summary, hypnettorch_summary(run.summary)):
        watched = WatchedSummary(values)
        try:
            keep = bool(handle(watched, criteria))
        except Exception as exc:
            keep, error = None, "%s: %s" % (type(exc).__name__, one_line(str(exc)))
        if watched.lacked:
            key = watched.lacked[0]
            return Unjudged(run, "its summary has no %s" % format_key(key), key)
        if keep is not None:
            return keep
        first = first or "the handle raised %s" % error
    return Unjudged(run, first)


def format_key(key):
    return repr(key) if isinstance(key, str) else one_line(repr(key))


def judge_runs(view, criteria):
    """Judge every run the criteria apply to, moving nothing: ``(verdicts, unjudged)``, lists
    of ``(run, keep)`` and of Unjudged; UsageError when it could judge none. Running runs,
    runs never started or whose folder is gone and runs already in TO_BE_DELETED are not
    looked at; a run without a readable summary is not judged."""
    handle = view.config.performance_eval
    verdicts, unjudged = [], []
    for run in view.runs:
        if run.state in (RUNNING, MISSING, NOT_STARTED) or run.in_trash:
            continue
        if not run.summary:
            unjudged.append(Unjudged(run, "no readable summary"))
            continue
        verdict = judge(handle, run, criteria)
        if isinstance(verdict, Unjudged):
            unjudged.append(verdict)
        else:
            verdicts.append((run, verdict))
    if unjudged and not verdicts:
        raise UsageError(no_verdict_message(view.config, unjudged))
    return verdicts, unjudged


def no_verdict_message(config, unjudged):
    """One line: why the handle judged no run (the key most summaries lacked, else the first
    reason), and that nothing moved."""
    lacked = collections.Counter(u.lacked for u in unjudged if u.lacked is not None)
    if lacked:
        key, n = lacked.most_common(1)[0]
        example = next(u.run.summary for u in unjudged if u.lacked == key)
        summaries = sum(1 for u in unjudged if u.run.summary)
        why = "it reads %s, which %s (a summary has: %s)" % (
            format_key(key), "no summary has" if n == summaries else "%d summaries lack" % n,
            ", ".join(sorted(map(str, example))) or "nothing")
    else:
        why = "%s: %s" % (unjudged[0].run.name, unjudged[0].why)
    return ("--performance_criteria: %s could judge none of the %d run(s) it was given: %s; "
            "nothing was moved" % (handle_name(config), len(unjudged), why))


def free_path(path):
    """``path``, or ``path_2``, ``path_3``, ... if it is taken."""
    candidate = path
    for n in itertools.count(2):
        if not os.path.lexists(candidate):
            return candidate
        candidate = "%s_%d" % (path, n)


def apply_criteria(view, criteria):
    """Judge every run first (see judge_runs), then move the folders of those the handle
    rejects into TO_BE_DELETED. Returns ``(moved, unjudged)``; unjudged runs stay."""
    verdicts, unjudged = judge_runs(view, criteria)
    trash = view.file(TRASH_DIR)
    moved = []
    for run, keep in verdicts:
        if keep:
            continue
        if not os.path.isdir(trash):
            os.makedirs(trash)
        target = free_path(os.path.join(trash, os.path.basename(run.out_dir)))
        shutil.move(run.out_dir, target)
        run.out_dir, run.in_trash = target, True
        run.notes.append("moved to %s" % TRASH_DIR)
        moved.append(run)
    return moved, unjudged


# ----------------------------------------------------------------------------------------------
# Result tables: postprocessing_results.csv and postprocessing_seeds.csv
# ----------------------------------------------------------------------------------------------


def keep_earlier(path):
    """Rename an earlier output ``name.ext`` to ``name_<time>.ext`` (never overwrite it)."""
    if not os.path.lexists(path):
        return None
    stem, ext = os.path.splitext(path)
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    for n in itertools.count(1):
        target = "%s_%s%s%s" % (stem, stamp, "" if n == 1 else "_%d" % n, ext)
        if not os.path.lexists(target):
            os.rename(path, target)
            return target


def sorted_by(items, value_of, ascending):
    """Items sorted as search_results.csv is: by the number in the cell, rows without one
    last, ties in their original order."""
    keyed = [(sort_number(format_cell(value_of(item))), item) for item in items]
    sign = 1 if ascending else -1
    keyed.sort(key=lambda ki: (ki[0] is None, sign * ki[0] if ki[0] is not None else 0))
    return [item for _, item in keyed]


# After the states search_results.csv has (hpsearch.STATE_RANK), those only postprocessing
# tells: running, then run folder missing, then never started.
EXTRA_RANK = {RUNNING: 1, MISSING: 2, NOT_STARTED: 3}


def run_rank(run, key, ascending):
    """Sort key of a run, best first: hpsearch.rank_key (finished runs by the performance key,
    then unfinished, failed and killed runs, as search_results.csv is sorted), then running,
    missing and never started runs."""
    rank = rank_key(run.state, (run.summary or {}).get(key), ascending)
    return (rank[0], EXTRA_RANK.get(run.state, 0)) + tuple(rank[1:])


def sort_runs(view):
    """Every run, best first (see run_rank); ties in run order."""
    key, ascending = view.config.performance_key, view.config.performance_sort_asc
    return sorted(view.runs, key=lambda r: run_rank(r, key, ascending))


def result_cells(columns, out_arg, run, search_path):
    """A run's row as ResultsTable writes it in search_results.csv (the cells unformatted:
    csv writes None as '' and numbers by repr, as format_cell does; the run folder relative
    to the search folder)."""
    row = dict(run.args)
    row.update(run.summary or {})
    row[out_arg] = hpsearch.relative_to(search_path, run.out_dir)
    row[hpsearch.STATE_COLUMN] = run.state
    row[hpsearch.EXIT_COLUMN] = run.exit_code
    row[hpsearch.REASON_COLUMN] = run.reason
    return [row.get(c) for c in columns]


def result_columns(view):
    """search_results.csv's columns: summary keywords, arguments, run folder, state, exit
    code, reason."""
    return ResultsTable("", view.arg_keys, view.config.summary_keywords,
                        view.config.out_arg).columns


def write_results(view, runs):
    """postprocessing_results.csv: search_results.csv's columns, one row per run, written in
    one go (one csv writer for all rows). ``(path, earlier, changed)`` (see write_output)."""
    path = view.file(RESULTS_NAME)
    out_arg = view.config.out_arg
    columns = result_columns(view)
    text = csv_text(columns, (result_cells(columns, out_arg, r, view.path) for r in runs))
    return (path,) + write_output(path, text)


def write_output(path, text):
    """Write an output file unless it already holds ``text``: ``(earlier, changed)``. An
    earlier file with other content is first renamed (keep_earlier; ``earlier`` is its new
    name); one with the same content is left as it is (``changed`` False)."""
    try:
        with open(path, "rb") as f:
            if f.read() == text.encode("utf-8"):
                return None, False
    except OSError:
        pass
    earlier = keep_earlier(path)
    atomic_write_text(path, text)
    return earlier, True


def csv_text(header, rows):
    buf = io.StringIO()
    writer = csv.writer(buf, delimiter=";", lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buf.getvalue()


def value_key(value):
    """A hashable key under which equal argument values meet (1, True and '1' do not)."""
    if isinstance(value, (str, int)):  # the common case, cheap (bool is an int, kept apart)
        return (type(value), value)
    return (type(value), format_cell(value))


def seed_groups(runs, arg_keys, seed_key):
    """Runs whose arguments are the same apart from ``seed_key``, in order of first run."""
    others = [k for k in arg_keys if k != seed_key]
    groups = collections.OrderedDict()
    for run in runs:
        args = run.args
        key = tuple([(type(args[k]), args[k]) if k in args else None for k in others])
        try:
            hash(key)
        except TypeError:  # a list or dict among the values
            key = tuple(value_key(args[k]) if k in args else None for k in others)
        groups.setdefault(key, []).append(run)
    return list(groups.values())


def numeric_keywords(config, runs):
    """Summary keywords (but 'finished') that hold a number in at least one finished run."""
    found = []
    for kw in config.summary_keywords:
        if kw != "finished" and any(r.state == FINISHED and is_number(r.summary.get(kw))
                                    for r in runs):
            found.append(kw)
    return found


def mean_std(values):
    """Mean and sample standard deviation (n - 1); None where undefined."""
    if not values:
        return None, None
    mean = math.fsum(values) / len(values)
    if len(values) < 2:
        return mean, None
    var = math.fsum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)


class SeedTable(object):
    """One row per group of runs that differ only in the seed; statistics over the group's
    finished runs."""

    def __init__(self, view, seed_key):
        self.seed_key = seed_key
        self.keys = [k for k in view.arg_keys if k != seed_key]
        self.keywords = numeric_keywords(view.config, view.runs)
        self.header = self.keys + ["n", "runs", "seeds"]
        for kw in self.keywords:
            self.header += [kw + "_mean", kw + "_std"]
        self.rows = [self._row(g) for g in seed_groups(view.runs, view.arg_keys, seed_key)]
        perf = view.config.performance_key
        col = self.header.index(perf + "_mean") if perf in self.keywords else None
        if col is not None:
            self.rows = sorted_by(self.rows, lambda row: row[col],
                                  view.config.performance_sort_asc)

    def _row(self, group):
        done = [r for r in group if r.state == FINISHED]
        first = group[0].args
        row = [first.get(k) for k in self.keys]
        seeds = sorted((r.args.get(self.seed_key) for r in done), key=value_order)
        row += [len(done), len(group), ",".join(format_cell(v) for v in seeds)]
        for kw in self.keywords:
            row += list(mean_std([r.summary[kw] for r in done if is_number(r.summary.get(kw))]))
        return row

    def write(self, path):
        """``(earlier, changed)``, see write_output."""
        return write_output(path, csv_text(self.header, self.rows))


# ----------------------------------------------------------------------------------------------
# Terminal report
# ----------------------------------------------------------------------------------------------


def differing_keys(arg_keys, runs):
    """The arguments whose value is not the same in every run (absent counts as a value)."""
    found = []
    for key in arg_keys:
        seen = set()
        for run in runs:
            seen.add(value_key(run.args[key]) if key in run.args else None)
            if len(seen) > 1:
                found.append(key)
                break
    return found


def aligned(header, rows):
    """Text table lines: columns padded, numbers right-aligned."""
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]
    numeric = [bool(rows) and all(sort_number(r[i]) is not None or r[i] == "" for r in rows)
               for i in range(len(header))]
    lines = []
    for cells in [header] + rows:
        out = [c.rjust(w) if num else c.ljust(w) for c, w, num in zip(cells, widths, numeric)]
        lines.append("  ".join(out).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return lines


def top_table(view, ranked, k):
    """The best k runs with a number in the performance key: differing args and metrics."""
    key = view.config.performance_key
    best = [r for r in ranked if r.summary and sort_number(format_cell(r.summary.get(key)))
            is not None][:k]
    if not best:
        return ["no run has a number for %r yet" % key]
    args = differing_keys(view.arg_keys, view.runs)
    metrics = [kw for kw in view.config.summary_keywords if kw != "finished"]
    header = ["#", "run"] + args + metrics + ["state"]
    rows = []
    for i, run in enumerate(best, 1):
        rows.append([str(i), run.name] + [short_number(run.args.get(a)) for a in args]
                    + [short_number(run.summary.get(m)) for m in metrics] + [run.state])
    return aligned(header, rows)


def not_finished(runs):
    """The runs that ended without finishing or never ran (running runs are not done yet;
    runs stopped early are done: never run again)."""
    return [r for r in runs if r.state not in (FINISHED, STOPPED, RUNNING)]


def state_text(run):
    """``failed (exit 1)``: the state and, for a run that ended, its exit code."""
    if run.exit_code is None or run.state not in (STOPPED, UNFINISHED, FAILED, KILLED):
        return run.state
    return "%s (exit %s)" % (run.state, format_cell(run.exit_code))


def fresh_argv(run, run_cwd):
    """The run's command with a new output folder: ``<folder>_rerun`` (``_rerun2``, ... if
    taken; training scripts refuse an existing folder). None when the command is unknown."""
    token = run.out_token
    if not run.argv or not token or token not in run.argv:
        return None
    name, _, planned = token.partition("=")
    planned = planned.rstrip("/") or planned
    for n in itertools.count(1):
        candidate = "%s_rerun%s" % (planned, "" if n == 1 else n)
        if not os.path.lexists(os.path.join(run_cwd, candidate)):
            break
    argv = list(run.argv)
    argv[argv.index(token)] = "%s=%s" % (name, candidate)
    return argv


def sh_line(argv):
    return " ".join(shlex.quote(a) for a in argv)


def resume_argv(view):
    """The command that continues the search with hpsearch.py --resume: this interpreter and
    the hpsearch.py beside this script."""
    return [sys.executable or "python3", os.path.abspath(hpsearch.__file__), "--resume",
            view.path]


def rerun_lines(view, runs):
    """How to run ``runs`` again, each line to paste into /bin/sh: the --resume command
    (hpsearch folders), then per run ``cd <run_cwd>`` and its command with a fresh folder."""
    lines = []
    if view.origin == "hpsearch":
        going = any(r.state == RUNNING for r in view.runs)
        lines += ["  all of them, through hpsearch%s (--resume runs every run that did not "
                  "finish once more; add --max_retries=N to try each one up to N more times, "
                  "and the flags that say where to run, e.g. --local_jobs=N):"
                  % (", once the search's launcher has ended" if going else ""),
                  "    " + sh_line(resume_argv(view)),
                  "  or one at a time, each into a fresh output folder (a run's two lines work "
                  "when pasted into a shell):"]
    else:
        lines.append("  one at a time, each into a fresh output folder (a run's two lines work "
                     "when pasted into a shell; a hypnettorch search has no --resume):")
    cd = "    cd %s" % shlex.quote(view.run_cwd)
    for run in runs:
        argv = fresh_argv(run, view.run_cwd)
        if argv is None:
            lines.append("    # %s: no command recorded" % run.name)
            continue
        lines += [cd, "    %s    # %s: %s" % (sh_line(argv), run.name, state_text(run))]
    return lines


def exit_codes(runs):
    codes = collections.Counter(r.exit_code for r in runs if r.state in (FAILED, KILLED))
    order = sorted(codes.items(), key=lambda cn: value_order(cn[0]))
    return ", ".join("exit %s: %d" % (c, n) for c, n in order)


def print_report(view, ranked, k, out=None):
    """Counts, the runs that did not finish with their reasons, how to run them again and
    the best runs."""
    w = (out or sys.stdout).write
    w("%s: %s (%s search, %d runs)\n" % (PROG, view.path, view.origin, len(view.runs)))
    for state, n in count_states(view.runs):
        if n or state in ALWAYS_SHOWN:
            extra = ""
            if state in (FAILED, KILLED) and n:
                extra = "   (%s)" % exit_codes([r for r in view.runs if r.state == state])
            w("  %-40s %6d%s\n" % (STATE_LABELS[state], n, extra))
    missed = not_finished(view.runs)
    if missed:
        w("\nruns that did not finish (%d), each with its reason:\n" % len(missed))
        for run in missed[:LOOK_AT]:
            notes = [n for n in run.notes if n not in run.reason]
            w("  %s: %s: %s%s\n" % (run.name, state_text(run), run.reason or "no reason known",
                                    " (%s)" % ", ".join(notes) if notes else ""))
        if len(missed) > LOOK_AT:
            w("  ... and %d more (the %s column of %s has them all)\n"
              % (len(missed) - LOOK_AT, hpsearch.REASON_COLUMN, RESULTS_NAME))
    odd = [r for r in view.runs if r.state == RUNNING and r.notes]
    if odd:
        w("\nstill running, to look at:\n")
        for run in odd[:LOOK_AT]:
            w("  %s: %s\n" % (run.name, ", ".join(run.notes)))
        if len(odd) > LOOK_AT:
            w("  ... and %d more\n" % (len(odd) - LOOK_AT))
    if missed:
        w("\nto run again the %d run(s) that did not finish:\n" % len(missed))
        w("".join(line + "\n" for line in rerun_lines(view, missed)))
    order = "lowest" if view.config.performance_sort_asc else "highest"
    w("\nbest %d runs by %s (finished runs first, %s first):\n"
      % (k, view.config.performance_key, order))
    w("".join("  " + line + "\n" for line in top_table(view, ranked, k)))


# ----------------------------------------------------------------------------------------------
# HTML report: one page, inline SVG, no script
# ----------------------------------------------------------------------------------------------

STATE_COLORS = {
    FINISHED: "#2ca02c", STOPPED: "#bcbd22", UNFINISHED: "#ff7f0e", FAILED: "#d62728",
    KILLED: "#9467bd",
    RUNNING: "#1f77b4", MISSING: "#7f7f7f", NOT_STARTED: "#c7c7c7",
}
TABLE_ROWS = 1000       # rows of the results table shown (the CSV has all)
TITLES_UP_TO = 3000     # points get hover titles while the search is at most this big


def esc(value):
    """A value as HTML text."""
    return html.escape(format_cell(value) if not isinstance(value, str) else value, quote=True)


def nice_ticks(lo, hi, count=5):
    """Round tick values covering [lo, hi]."""
    span = hi - lo
    if span <= 0:
        return [lo]
    raw = span / count
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    ticks = []
    t = first
    while t <= hi + step * 1e-9:
        ticks.append(0.0 if abs(t) < step * 1e-9 else t)
        t = first + len(ticks) * step
    return ticks


class Scale(object):
    """Maps values of one variable onto pixels [a, b]: linear, log10 (numbers spanning two
    decades or more), or categories (bands, for text, flags and absent values). Numbers that
    take at most DISCRETE values (a grid) are marked at those values and spread a little."""

    DISCRETE = 10

    def __init__(self, values, a, b, discrete=True):
        self.a, self.b = a, b
        self.spread = 0.0
        self.marks = None
        numbers = [float(v) for v in values if is_number(v) and math.isfinite(v)]
        if values and len(numbers) == len(values):
            self._numeric(numbers, discrete)
        else:
            self.kind = "category"
            seen = {}
            for v in values:
                seen.setdefault(self._key(v), v)
            self.categories = sorted(seen.items(), key=lambda kv: value_order(kv[1]))
            self.slot = {k: i for i, (k, _) in enumerate(self.categories)}
            self.spread = 0.6 * abs(b - a) / len(self.categories)

    def _numeric(self, numbers, discrete):
        lo, hi = min(numbers), max(numbers)
        self.kind = "log" if lo > 0 and hi / lo >= 100 else "linear"
        if self.kind == "log":
            lo, hi = math.log10(lo), math.log10(hi)
        if hi == lo:
            lo, hi = lo - 1, hi + 1
        pad = (hi - lo) * 0.05
        self.lo, self.hi = lo - pad, hi + pad
        distinct = sorted(set(numbers))
        if discrete and len(distinct) <= self.DISCRETE:
            self.marks = distinct
            px = [self(v) for v in distinct]
            gaps = [abs(q - p) for p, q in zip(px, px[1:])]
            self.spread = min([0.5 * g for g in gaps] + [16.0])

    @staticmethod
    def _key(value):
        return ("", ABSENT) if value is ABSENT else value_key(value)

    def __call__(self, value, jitter=0.0):
        """The pixel of ``value``; ``jitter`` in [-0.5, 0.5) spreads points of equal value."""
        if self.kind == "category":
            step = (self.b - self.a) / float(len(self.categories))
            return self.a + step * (self.slot[self._key(value)] + 0.5) + jitter * self.spread
        x = float(value)
        if self.kind == "log":
            x = math.log10(x)
        return (self.a + (x - self.lo) / (self.hi - self.lo) * (self.b - self.a)
                + jitter * self.spread)

    def ticks(self, min_gap=12.0):
        """``[(value, label)]`` to mark on the axis, at least ``min_gap`` pixels apart."""
        if self.kind == "category":
            marks = [(v, esc(v)) for _, v in self.categories]
        elif self.marks is not None:
            marks = [(v, "%.4g" % v) for v in self.marks]
        elif self.kind == "log":
            lo, hi = int(math.ceil(self.lo)), int(math.floor(self.hi))
            exps = list(range(lo, hi + 1)) or [int(round((self.lo + self.hi) / 2))]
            marks = [(10.0 ** e, "1e%d" % e) for e in exps]
        else:
            marks = [(t, "%.4g" % t) for t in nice_ticks(self.lo, self.hi)]
        kept, last = [], None
        for value, label in marks:
            pos = self(value)
            if last is None or abs(pos - last) >= min_gap:
                kept.append((value, label))
                last = pos
        return kept


def jitter(i):
    """A fixed spread in [-0.5, 0.5) for point i (golden-ratio sequence)."""
    return (i * 0.6180339887498949) % 1.0 - 0.5


def perf_value(run, key):
    return sort_number(format_cell((run.summary or {}).get(key)))


def svg_axes(x_scale, y_scale, box, x_label, y_label):
    """Frame, ticks and labels of a plot; ``box`` = (left, top, right, bottom)."""
    left, top, right, bottom = box
    parts = ['<rect x="%d" y="%d" width="%d" height="%d" class="frame"/>'
             % (left, top, right - left, bottom - top)]
    for value, label in x_scale.ticks(min_gap=36):
        x = x_scale(value)
        parts.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" class="tick"/>'
                     % (x, bottom, x, bottom + 4))
        parts.append('<text x="%.1f" y="%d" class="tl" text-anchor="middle">%s</text>'
                     % (x, bottom + 15, label))
    for value, label in y_scale.ticks(min_gap=14):
        y = y_scale(value)
        parts.append('<line x1="%d" y1="%.1f" x2="%d" y2="%.1f" class="grid"/>'
                     % (left, y, right, y))
        parts.append('<text x="%d" y="%.1f" class="tl" text-anchor="end">%s</text>'
                     % (left - 5, y + 3, label))
    parts.append('<text x="%d" y="%d" class="al" text-anchor="middle">%s</text>'
                 % ((left + right) // 2, bottom + 32, esc(x_label)))
    parts.append('<text x="12" y="%d" class="al" text-anchor="middle" '
                 'transform="rotate(-90 12 %d)">%s</text>'
                 % ((top + bottom) // 2, (top + bottom) // 2, esc(y_label)))
    return parts


def scatter_svg(key, plotted, perf_key, titles):
    """The performance key against one hyperparameter; one ``class="pt"`` circle per run."""
    width, height = 400, 270
    box = (60, 12, width - 14, height - 44)
    xs = [r.args.get(key, ABSENT) for r, _ in plotted]
    x_scale = Scale(xs, box[0], box[2])
    y_scale = Scale([y for _, y in plotted], box[3], box[1], discrete=False)
    parts = ['<svg width="%d" height="%d" class="plot">' % (width, height)]
    parts += svg_axes(x_scale, y_scale, box, key, perf_key)
    order = sorted(range(len(plotted)), key=lambda i: plotted[i][0].state != FINISHED)
    for i in order:  # finished runs first, so that the others are drawn on top
        run, y = plotted[i]
        cx = x_scale(xs[i], jitter(run.index))
        title = ("<title>%s: %s=%s, %s=%s</title>" % (esc(run.name), esc(key), esc(xs[i]),
                                                      esc(perf_key), "%.6g" % y)
                 if titles else "")
        parts.append('<circle class="pt" cx="%.1f" cy="%.1f" r="3.2" fill="%s">%s</circle>'
                     % (cx, y_scale(y), STATE_COLORS[run.state], title))
    parts.append("</svg>")
    return "".join(parts)


def parallel_svg(keys, best, perf_key):
    """Parallel coordinates of the best runs: one axis per hyperparameter, then the key."""
    width, height = max(520, 140 * (len(keys) + 1)), 340
    top, bottom, left, right = 30, height - 30, 70, width - 70
    axes = keys + [perf_key]
    step = (right - left) / float(max(1, len(axes) - 1))
    columns = [[r.args.get(k, ABSENT) for r in best] for k in keys]
    columns.append([perf_value(r, perf_key) for r in best])
    scales = [Scale(col, bottom, top) for col in columns[:-1]]
    scales.append(Scale(columns[-1], bottom, top, discrete=False))
    parts = ['<svg width="%d" height="%d" class="plot">' % (width, height)]
    for i, run in reversed(list(enumerate(best))):  # the best run drawn last, on top
        shade = 0.15 + 0.7 * i / max(1, len(best) - 1)
        points = " ".join("%.1f,%.1f" % (left + j * step, scales[j](columns[j][i]))
                          for j in range(len(axes)))
        color = "rgb(%d,%d,%d)" % (int(30 + 200 * shade), int(80 + 150 * shade), 200)
        parts.append('<polyline class="pc" points="%s" stroke="%s"><title>#%d %s</title>'
                     '</polyline>' % (points, color, i + 1, esc(run.name)))
    for j, (axis, scale) in enumerate(zip(axes, scales)):
        x = left + j * step
        parts.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" class="axis"/>'
                     % (x, top, x, bottom))
        parts.append('<text x="%.1f" y="%d" class="al" text-anchor="middle">%s</text>'
                     % (x, top - 12, esc(axis)))
        for value, label in scale.ticks():
            parts.append('<text x="%.1f" y="%.1f" class="tl" text-anchor="end">%s</text>'
                         % (x - 4, scale(value) + 3, label))
    parts.append("</svg>")
    return "".join(parts)


def status_svg(counts):
    """One bar per state."""
    width, row = 560, 24
    most = max([n for _, n in counts] + [1])
    parts = ['<svg width="%d" height="%d" class="plot">' % (width, row * len(counts) + 8)]
    for i, (state, n) in enumerate(counts):
        y = 4 + i * row
        parts.append('<text x="200" y="%d" class="tl" text-anchor="end">%s</text>'
                     % (y + 15, esc(STATE_LABELS[state])))
        parts.append('<rect class="bar" x="208" y="%d" width="%.1f" height="%d" fill="%s"/>'
                     % (y + 3, 300.0 * n / most, row - 6, STATE_COLORS[state]))
        parts.append('<text x="%.1f" y="%d" class="tl">%d</text>'
                     % (214 + 300.0 * n / most, y + 15, n))
    parts.append("</svg>")
    return "".join(parts)


def results_table_html(view, ranked):
    columns = result_columns(view)
    out_arg = view.config.out_arg
    rows = []
    for run in ranked[:TABLE_ROWS]:
        cells = dict(run.args)
        cells.update(run.summary or {})
        cells[out_arg] = os.path.relpath(run.out_dir, view.path)
        cells[hpsearch.STATE_COLUMN] = run.state
        cells[hpsearch.EXIT_COLUMN] = run.exit_code
        cells[hpsearch.REASON_COLUMN] = run.reason
        rows.append("<tr class=\"%s\">%s</tr>" % (run.state, "".join(
            "<td>%s</td>" % esc(short_number(cells.get(c))) for c in columns)))
    more = ""
    if len(ranked) > TABLE_ROWS:
        more = "<p>The first %d of %d runs; %s has them all.</p>" % (
            TABLE_ROWS, len(ranked), RESULTS_NAME)
    return ("<table><thead><tr>%s</tr></thead><tbody>%s</tbody></table>%s"
            % ("".join("<th>%s</th>" % esc(c) for c in columns), "".join(rows), more))


CSS = """
body { font-family: sans-serif; margin: 24px; color: #222; background: #fff; }
h1 { font-size: 20px; } h2 { font-size: 17px; margin-top: 28px; }
.plots { display: flex; flex-wrap: wrap; gap: 10px; }
.plot { background: #fff; }
.frame { fill: #fafafa; stroke: #999; }
.grid { stroke: #e4e4e4; } .tick, .axis { stroke: #777; }
.tl { font-size: 10px; fill: #444; } .al { font-size: 12px; fill: #000; }
.pt { fill-opacity: 0.75; stroke: #333; stroke-width: 0.4; }
.key { display: inline-block; width: 10px; height: 10px; border-radius: 5px; }
.pc { fill: none; stroke-width: 2; stroke-opacity: 0.85; }
table { border-collapse: collapse; font-size: 12px; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
th { background: #eee; }
tr.failed td, tr.killed td { background: #fde2e2; } tr.unfinished td { background: #fff0dd; }
tr.running td { background: #e2eefd; } tr.missing td, tr.not_started td { color: #888; }
"""


def report_html(view, ranked, top_k):
    """The whole page: states, one scatter plot per varying argument, parallel coordinates
    of the best ``top_k`` runs, the results table."""
    key = view.config.performance_key
    plotted = [(r, y) for r, y in ((r, perf_value(r, key)) for r in ranked) if y is not None]
    varying = differing_keys(view.arg_keys, view.runs)
    constant = [k for k in view.arg_keys if k not in varying]
    titles = len(view.runs) <= TITLES_UP_TO
    body = ["<h1>Search %s</h1>" % esc(os.path.basename(view.path)),
            "<p>%s &middot; %s search &middot; %d runs &middot; report written %s</p>"
            % (esc(view.path), view.origin, len(view.runs),
               datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")),
            "<h2>Run states</h2>", status_svg(count_states(view.runs))]
    body.append("<h2>%s against each hyperparameter</h2>" % esc(key))
    if not plotted:
        body.append("<p>No run has a number for %s yet.</p>" % esc(key))
    elif not varying:
        body.append("<p>No hyperparameter varies in this search.</p>")
    else:
        states = [st for st in STATE_ORDER if any(r.state == st for r, _ in plotted)]
        body.append('<p>One point per run with a number for %s, coloured by state: %s. '
                    'Points of equal value are spread sideways.</p>' % (esc(key), ", ".join(
                        '<span class="key" style="background:%s"></span> %s'
                        % (STATE_COLORS[st], esc(STATE_LABELS[st])) for st in states)))
        body.append('<div class="plots">%s</div>' % "".join(
            scatter_svg(k, plotted, key, titles) for k in varying))
    if constant:
        body.append("<p>The same in every run: %s</p>" % ", ".join(
            "%s=%s" % (esc(k), esc(short_number(view.runs[0].args.get(k)))) for k in constant))
    best = [r for r, _ in plotted[:top_k]]
    if best and varying:
        body.append("<h2>The best %d runs, parallel coordinates</h2>" % len(best))
        body.append(parallel_svg(varying, best, key))
    body.append("<h2>Results, best first</h2>")
    body.append(results_table_html(view, ranked))
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>%s</title><style>%s"
            "</style></head><body>\n%s\n</body></html>\n"
            % (esc(os.path.basename(view.path)), CSS, "\n".join(body)))


def write_report(view, ranked, top_k):
    path = view.file(REPORT_NAME)
    return (path,) + write_output(path, report_html(view, ranked, top_k))


# ----------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------


def main(argv=None):
    try:
        return _main(argv)
    except UsageError as exc:
        sys.stderr.write("%s: error: %s\n" % (PROG, exc))
        return 2
    except OSError as exc:  # e.g. a read-only search folder
        sys.stderr.write("%s: error: %s: %s\n" % (PROG, exc.filename or "", exc.strerror or exc))
        return 1


def wrote(path, earlier, changed=True, what=""):
    if not changed:
        return "%s is unchanged%s (left as it was)" % (path, what)
    return "wrote %s%s%s" % (path, what, " (the earlier one is now %s)"
                             % os.path.basename(earlier) if earlier else "")


def criteria_notices(view, criteria, moved, unjudged):
    lines = ["moved %d run folder(s) that miss --performance_criteria=%s into %s (nothing "
             "deleted)%s" % (len(moved), criteria, view.file(TRASH_DIR), ":" if moved else "")]
    lines += ["  %s" % r.name for r in moved]
    if unjudged:
        lines.append("kept %d run folder(s) that %s could not judge (not judged):"
                     % (len(unjudged), handle_name(view.config)))
        lines += ["  %s: %s" % (u.run.name, u.why) for u in unjudged]
    return lines


def _main(argv):
    args = build_parser().parse_args(argv)
    if args.top < 1:
        raise UsageError("--top must be at least 1")
    view = open_search(args)
    check_criteria_handle(view.config, args.performance_criteria)  # before anything moves
    notices = []
    if args.performance_criteria is not None:
        moved, unjudged = apply_criteria(view, args.performance_criteria)
        notices += criteria_notices(view, args.performance_criteria, moved, unjudged)
    ranked = sort_runs(view)
    notices.append(wrote(*write_results(view, ranked)))
    if args.seed_key in view.arg_keys:
        seeds = SeedTable(view, args.seed_key)
        earlier, changed = seeds.write(view.file(SEEDS_NAME))
        notices.append(wrote(view.file(SEEDS_NAME), earlier, changed, ": %d groups of runs "
                             "that differ only in --%s" % (len(seeds.rows), args.seed_key)))
    else:
        notices.append("no argument %r in this search (see --seed_key): no %s"
                       % (args.seed_key, SEEDS_NAME))
    if args.html:
        notices.append(wrote(*write_report(view, ranked, args.top)))
    print_report(view, ranked, args.top)
    print("")
    print("\n".join(notices))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
