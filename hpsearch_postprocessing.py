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
  per run its command into a fresh output folder), and the best runs as a table (where the
  seed varies: the best settings by their mean over seeds, ``--no_seed_average`` to rank
  single runs);
* with ``--performance_criteria X`` judges every run with the config's
  ``_PERFORMANCE_EVAL_HANDLE``, then moves the folders of runs it rejects into
  ``SEARCH_DIR/TO_BE_DELETED/`` (nothing is deleted); a run it could not judge (its summary
  lacks a key the handle read, or the handle raised) stays; if it could judge none, nothing
  moves (exit status 2);
* with ``--html`` writes ``SEARCH_DIR/report.html``: one self-contained page (inline SVG; an
  optional inline script sorts and filters the tables): which hyperparameters matter, the
  performance key against each, parallel coordinates of the best, learning curves (from
  hpsearch_progress.jsonl, kept with --early_stopping), the settings averaged over seeds and
  every run, each linked to its folder relative to the page.

An output file whose content changes is written anew, the earlier one renamed with a time
stamp (never overwritten); one whose content would be the same is left as it is. Standard
library only (CPython 3.6 to 3.13); ``hpsearch.py`` must sit in the same folder.
"""

import argparse
import bisect
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
import re
import shlex
import shutil
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import hpsearch  # noqa: E402  (the folder above must come first on sys.path)
from hpsearch import (  # noqa: E402
    CONFIG_DEFAULTS, ENDED_STATES, FAILED, FINISHED, KILLED, RUNNING, STOPPED, UNFINISHED,
    ResultsTable, Run, SearchConfig, SearchFolder, UsageError, atomic_write_text, build_argv,
    build_config, collect_summary, command_prefix, format_cell, import_config_module,
    is_finished, last_line_of, one_line, process_start_time, rank_key, render_token,
    sort_number, why_unfinished)

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
    return number_text(value, 4)


def number_text(value, digits):
    """Floats with ``digits`` significant digits, the rest as in the CSV."""
    if isinstance(value, float):
        return "%.*g" % (digits, value)
    return format_cell(value)


def distinguishing_digits(values, least=4):
    """The fewest significant digits (at least ``least``, at most 17, which tells any two
    floats apart) with which neighbouring distinct numbers of ``values``, sorted, still read
    differently: 377.147614 and 377.147619 need 9, where 4 would show both as 377.1."""
    distinct = sorted(set(float(v) for v in values if is_number(v) and math.isfinite(v)))
    digits = least
    for a, b in zip(distinct, distinct[1:]):
        while digits < 17 and "%.*g" % (digits, a) == "%.*g" % (digits, b):
            digits += 1
    return digits


def column_texts(values):
    """A column's values as text, each number with the column's distinguishing_digits."""
    digits = distinguishing_digits(values)
    return [number_text(v, digits) for v in values]


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
    p.add_argument("--no_seed_average", action="store_true",
                   help="Rank and plot single runs even where --seed_key varies. By default "
                        "runs that differ only in the seed are averaged: the best table, the "
                        "HTML plots and the parallel coordinates rank settings by the mean "
                        "of the performance key over their finished runs (mean +- std (n)).")
    p.add_argument("--top", type=int, default=10, metavar="K",
                   help="Show the best K runs (settings, when seeds are averaged).")
    p.add_argument("--html", action="store_true",
                   help="Also write SEARCH_DIR/report.html: one self-contained page (no "
                        "JavaScript needed) with run states, which hyperparameters matter, "
                        "the performance key against each, the best settings, learning "
                        "curves (with --early_stopping), and the tables, each run linked to "
                        "its folder relative to the page.")
    return p


# ----------------------------------------------------------------------------------------------
# Reading a search folder
# ----------------------------------------------------------------------------------------------


class RunStatus(Run):
    """A planned run and what postprocessing found of it.

    ``out_dir`` is where its folder is now (or was planned); ``reason`` why it did not finish
    (as search_results.csv's hpsearch_reason); ``notes`` what else is odd about it;
    ``out_token`` the argument of ``argv`` that names its output folder; ``started`` and
    ``ended`` the journal's times of its last attempt (see run_times).
    """

    __slots__ = ("notes", "in_trash", "out_token", "started", "ended", "has_folder")

    def __init__(self, index, name, args, argv, out_dir):
        Run.__init__(self, index, name, args, argv, out_dir)
        self.notes = []
        self.in_trash = False
        self.out_token = None
        self.started = self.ended = None
        self.has_folder = False


class SearchView(object):
    """Everything postprocessing knows about one search."""

    def __init__(self, path, origin, config, arg_keys, runs, run_cwd, early_stopping=None):
        self.path = path          # absolute path of the search folder
        self.origin = origin      # 'hpsearch' or 'hypnettorch'
        self.config = config      # a hpsearch.SearchConfig
        self.arg_keys = arg_keys  # argument names, in column order
        self.runs = runs          # RunStatus objects, in run order
        self.run_cwd = run_cwd
        self.early_stopping = early_stopping  # the record's --early_stopping flags, or None

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
    early_stopping = record.get("early_stopping")
    return SearchView(folder.path, "hpsearch", config, arg_keys, runs, run_cwd,
                      early_stopping if isinstance(early_stopping, dict) else None)


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
    run.started, run.ended = run_times(entries)
    search = hpsearch.SearchFolder(search_path)
    folder, run.in_trash = search.find_run_dir(run)
    run.has_folder = folder is not None
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


def run_times(entries):
    """``(started, ended)`` of the run's last attempt, as the journal has them: when it was
    launched (on a cluster: submitted, so time in the queue counts) and when it ended; None
    where the journal does not tell (not started, still running, no journal)."""
    if not entries:
        return None, None
    last = entries[-1]
    attempt = last.get("attempt")
    started = next((e.get("time") for e in entries if e.get("attempt") == attempt), None)
    ended = last.get("time") if last.get("state") in ENDED_STATES else None
    return tuple(t if is_number(t) else None for t in (started, ended))


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


class Setting(object):
    """Runs whose arguments are the same but for the seed: ``runs`` (in run order), ``done``
    (those that finished) and ``stats``, ``{keyword: (mean, std)}`` over the finished runs
    (see mean_std)."""

    __slots__ = ("runs", "done", "stats", "counts")

    def __init__(self, runs, keywords):
        self.runs = runs
        self.done = [r for r in runs if r.state == FINISHED]
        self.stats, self.counts = {}, {}
        for kw in keywords:
            values = [r.summary[kw] for r in self.done if is_number(r.summary.get(kw))]
            self.stats[kw], self.counts[kw] = mean_std(values), len(values)

    @property
    def args(self):
        return self.runs[0].args


class SeedTable(object):
    """One row per Setting (runs that differ only in the seed); statistics over the group's
    finished runs; best mean of the performance key first (``settings`` in the same order)."""

    def __init__(self, view, seed_key):
        self.seed_key = seed_key
        self.keys = [k for k in view.arg_keys if k != seed_key]
        self.keywords = numeric_keywords(view.config, view.runs)
        self.header = self.keys + ["n", "runs", "seeds"]
        for kw in self.keywords:
            self.header += [kw + "_mean", kw + "_std"]
        self.settings = [Setting(g, self.keywords)
                         for g in seed_groups(view.runs, view.arg_keys, seed_key)]
        perf = view.config.performance_key
        if perf in self.keywords:
            self.settings = sorted_by(self.settings, lambda s: s.stats[perf][0],
                                      view.config.performance_sort_asc)
        self.rows = [self._row(s) for s in self.settings]

    def _row(self, setting):
        row = [setting.args.get(k) for k in self.keys]
        seeds = sorted((r.args.get(self.seed_key) for r in setting.done), key=value_order)
        row += [len(setting.done), len(setting.runs), ",".join(format_cell(v) for v in seeds)]
        for kw in self.keywords:
            row += list(setting.stats[kw])
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
    columns = ([[str(i) for i in range(1, len(best) + 1)], [r.name for r in best]]
               + [column_texts([r.args.get(a) for r in best]) for a in args]
               + [column_texts([r.summary.get(m) for r in best]) for m in metrics]
               + [[r.state for r in best]])
    return aligned(["#", "run"] + args + metrics + ["state"], [list(r) for r in zip(*columns)])


def stats_texts(settings, kw, plus_minus):
    """``mean +- std (n)`` of ``kw`` per setting (``plus_minus`` between mean and std), the
    means with the column's distinguishing_digits, the std with 2."""
    means = column_texts([s.stats[kw][0] for s in settings])
    texts = []
    for setting, mean in zip(settings, means):
        std = setting.stats[kw][1]
        texts.append("%s%s (%d)" % (mean, "" if std is None else plus_minus + "%.2g" % std,
                                    setting.counts[kw]) if mean else "")
    return texts


def ranked_settings(seeds, key):
    """The settings with a mean for ``key``, best first (SeedTable's order)."""
    return [s for s in seeds.settings if s.stats.get(key, (None,))[0] is not None]


def top_settings_table(view, seeds, k):
    """The best k settings by their mean of the performance key over seeds: the differing
    arguments (not the seed), each metric as ``mean +- std (n)`` and the runs finished."""
    key = view.config.performance_key
    best = ranked_settings(seeds, key)[:k]
    if not best:
        return ["no setting has a finished run with a number for %r yet" % key]
    args = [a for a in differing_keys(view.arg_keys, view.runs) if a != seeds.seed_key]
    metrics = [key] + [kw for kw in seeds.keywords if kw != key]
    columns = ([[str(i) for i in range(1, len(best) + 1)]]
               + [column_texts([s.args.get(a) for s in best]) for a in args]
               + [stats_texts(best, m, " +- ") for m in metrics]
               + [["%d/%d" % (len(s.done), len(s.runs)) for s in best]])
    return aligned(["#"] + args + metrics + ["finished"], [list(r) for r in zip(*columns)])


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


def print_report(view, ranked, k, out=None, seeds=None):
    """Counts, the runs that did not finish with their reasons, how to run them again and
    the best runs (the best settings, averaged over seeds, when ``seeds`` is a SeedTable)."""
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
    if seeds is not None:
        w("\nbest %d settings by the mean of %s over --%s (mean +- std (n finished runs), "
          "%s first):\n" % (k, view.config.performance_key, seeds.seed_key, order))
        table = top_settings_table(view, seeds, k)
    else:
        w("\nbest %d runs by %s (finished runs first, %s first):\n"
          % (k, view.config.performance_key, order))
        table = top_table(view, ranked, k)
    w("".join("  " + line + "\n" for line in table))


# ----------------------------------------------------------------------------------------------
# What the HTML report computes: which hyperparameters matter, learning curves
# ----------------------------------------------------------------------------------------------

IMPORTANCE_BINS = 10  # numbers with more distinct values (drawn, not a grid) go into this many


def arg_value_key(value):
    """value_key, for argument values that may be ABSENT."""
    return ("", ABSENT) if value is ABSENT else value_key(value)


def effect_groups(values):
    """A group label per value for a main effect: the value itself, or, for numbers with more
    than IMPORTANCE_BINS distinct values (drawn from a distribution), its quantile bin (equal
    values share a bin)."""
    numbers = sorted(float(v) for v in values if is_number(v))
    if len(set(numbers)) <= IMPORTANCE_BINS:
        return [arg_value_key(v) for v in values]
    cuts = [numbers[len(numbers) * i // IMPORTANCE_BINS] for i in range(1, IMPORTANCE_BINS)]
    return [("bin", bisect.bisect_right(cuts, float(v))) if is_number(v) else arg_value_key(v)
            for v in values]


def finite_perf_value(run, key):
    y = perf_value(run, key)
    return y if y is not None and math.isfinite(y) else None


def main_effect_shares(runs, keys, perf_key):
    """``(shares, n)``: for each of ``keys``, ``(key, share, groups)``, largest share first,
    over the ``n`` finished runs with a number for ``perf_key``. A key's share is the variance
    of the group means of its values (weighted by group size) over the total variance: the
    part its main effect explains (functional ANOVA). In a full grid the shares add up to at
    most 1; where they add up to more (random draws, conditions: the keys are not
    independent) they are scaled to sum to 1. Empty when fewer than 2 runs or no variance."""
    scored = [(r, finite_perf_value(r, perf_key)) for r in runs if r.state == FINISHED]
    scored = [(r, y) for r, y in scored if y is not None]
    ys = [y for _, y in scored]
    mean = math.fsum(ys) / len(ys) if ys else 0.0
    total = math.fsum((y - mean) ** 2 for y in ys)
    if len(ys) < 2 or not total > 0:
        return [], len(ys)
    shares = []
    for key in keys:
        by_group = collections.defaultdict(list)
        for label, y in zip(effect_groups([r.args.get(key, ABSENT) for r, _ in scored]), ys):
            by_group[label].append(y)
        between = math.fsum(len(g) * (math.fsum(g) / len(g) - mean) ** 2
                            for g in by_group.values())
        shares.append((key, min(1.0, between / total), len(by_group)))
    scale = max(1.0, math.fsum(share for _, share, _ in shares))
    shares = [(key, share / scale, groups) for key, share, groups in shares]
    shares.sort(key=lambda ksg: -ksg[1])
    return shares, len(ys)


PROGRESS_SUFFIX = ".progress.jsonl"  # hpsearch.JOB_FILES: hpsearch_progress.jsonl in the folder


def read_curve(search, run, key):
    """``[(step, value)]`` of ``key`` in the run's summary history, hpsearch_progress.jsonl (in
    its folder; in jobs/ while it goes), in the order seen; damaged lines are skipped."""
    try:
        with open(search.log_of(run, PROGRESS_SUFFIX), "rb") as f:
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return []
    points = []
    for line in lines:
        try:
            entry = json.loads(line)
            step, value = entry["step"], entry["values"][key]
        except (ValueError, KeyError, TypeError):
            continue
        step, value = sort_number(format_cell(step)), sort_number(format_cell(value))
        if step is not None and value is not None and math.isfinite(step + value):
            points.append((step, value))
    return points


def read_curves(view):
    """``[(run, points)]`` in run order, for runs with at least one point (read_curve). hpsearch
    keeps summary histories only with --early_stopping: without it, nothing is read."""
    if not view.early_stopping:
        return []
    search = SearchFolder(view.path)
    key = view.config.performance_key
    found = ((run, read_curve(search, run, key)) for run in view.runs
             if run.state not in (MISSING, NOT_STARTED))
    return [(run, points) for run, points in found if points]


def run_images(run):
    """The image files in the run's folder (the script's plots), by name."""
    try:
        names = os.listdir(run.out_dir)
    except OSError:
        return []
    return sorted(n for n in names if n.lower().endswith(IMAGE_EXTENSIONS))


def run_href(view, run):
    """The run folder as a link relative to the report's folder (so the page works in a
    copied search folder), or None when it has no folder."""
    if not run.has_folder:
        return None
    folder, name = os.path.split(run.out_dir)
    rel = name if folder == view.path else os.path.relpath(run.out_dir, view.path)
    return urllib.parse.quote(rel.replace(os.sep, "/")) + "/"


def duration_text(seconds):
    """Two significant digits below 10 s (a quick run is not '0.0 s'), else minutes, hours."""
    if seconds < 10:
        return "%.2g s" % seconds
    if seconds < 120:
        return "%.0f s" % seconds
    if seconds < 7200:
        return "%.1f min" % (seconds / 60.0)
    return "%.1f h" % (seconds / 3600.0)


def run_duration(run, now):
    """``(seconds, text)`` from the journal's times (run_times): launch to end, or to ``now``
    for a running run ('so far'); ``(None, '')`` when unknown."""
    if run.started is None or (run.ended is None and run.state != RUNNING):
        return None, ""
    if run.ended is None:
        return now - run.started, duration_text(now - run.started) + " so far"
    return run.ended - run.started, duration_text(run.ended - run.started)


# ----------------------------------------------------------------------------------------------
# HTML report: scales
# ----------------------------------------------------------------------------------------------


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
    """Maps values of one variable onto pixels [a, b] (``place`` moves them): linear, log10
    (numbers spanning two decades or more), or categories (bands, for text, lists, flags and
    absent values). Numbers that take at most DISCRETE values (a grid) are marked at those
    values and spread a little."""

    DISCRETE = 10

    def __init__(self, values, a=0.0, b=1.0, discrete=True):
        self.marks = None
        numbers = [float(v) for v in values if is_number(v) and math.isfinite(v)]
        if values and len(numbers) == len(values):
            self._numeric(numbers, discrete)
        else:
            self.kind = "category"
            seen = {}
            for v in values:
                seen.setdefault(arg_value_key(v), v)
            self.categories = sorted(seen.items(), key=lambda kv: value_order(kv[1]))
            self.slot = {k: i for i, (k, _) in enumerate(self.categories)}
        self.place(a, b)

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

    def place(self, a, b):
        """Map onto pixels [a, b]; points of equal value spread less than their gaps."""
        self.a, self.b = a, b
        self.spread = 0.0
        if self.kind == "category":
            self.spread = 0.6 * self.band()
        elif self.marks is not None:
            px = [self(v) for v in self.marks]
            gaps = [abs(q - p) for p, q in zip(px, px[1:])]
            self.spread = min([0.5 * g for g in gaps] + [16.0])
        return self

    def band(self):
        """The pixels of one category (no limit for numbers)."""
        if self.kind != "category":
            return float("inf")
        return abs(self.b - self.a) / float(len(self.categories))

    def __call__(self, value, jitter=0.0):
        """The pixel of ``value``; ``jitter`` in [-0.5, 0.5) spreads points of equal value."""
        if self.kind == "category":
            step = (self.b - self.a) / float(len(self.categories))
            return (self.a + step * (self.slot[arg_value_key(value)] + 0.5)
                    + jitter * self.spread)
        x = float(value)
        if self.kind == "log":
            x = math.log10(x)
        return (self.a + (x - self.lo) / (self.hi - self.lo) * (self.b - self.a)
                + jitter * self.spread)

    def ticks(self):
        """``[(value, label)]`` that may be marked on the axis (see spaced), labels as text."""
        if self.kind == "category":
            return [(v, value_label(v)) for _, v in self.categories]
        if self.marks is not None:
            digits = distinguishing_digits(self.marks)
            return [(v, number_text(v, digits)) for v in self.marks]
        if self.kind == "log":
            lo, hi = int(math.ceil(self.lo)), int(math.floor(self.hi))
            exps = list(range(lo, hi + 1)) or [int(round((self.lo + self.hi) / 2))]
            return [(10.0 ** e, "1e%d" % e) for e in exps]
        return [(t, "%.4g" % t) for t in nice_ticks(self.lo, self.hi)]


def jitter(i):
    """A fixed spread in [-0.5, 0.5) for point i (golden-ratio sequence)."""
    return (i * 0.6180339887498949) % 1.0 - 0.5


def perf_value(run, key):
    return sort_number(format_cell((run.summary or {}).get(key)))


# ----------------------------------------------------------------------------------------------
# HTML report: SVG pieces (text sized so that none is cut)
# ----------------------------------------------------------------------------------------------

STATE_COLORS = {
    FINISHED: "#2ca02c", STOPPED: "#bcbd22", UNFINISHED: "#ff7f0e", FAILED: "#d62728",
    KILLED: "#9467bd",
    RUNNING: "#1f77b4", MISSING: "#7f7f7f", NOT_STARTED: "#c7c7c7",
}
CURVE_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
                "#17becf", "#bcbd22", "#7f7f7f")
TABLE_ROWS = 1000       # rows of a results table shown (the CSVs have all)
POINTS_UP_TO = 3000     # each point a linked element with a title while there are this few runs
FAINT_CURVES = 2000     # learning curves drawn faint behind the best (the best-ranked of the rest)
THUMBNAILS = 4          # images shown small per run, for the best --top runs
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".svg", ".gif")
FONT = {"tl": 10, "al": 12}   # SVG text classes: tick labels, axis titles (see CSS)
PLOT_W, PLOT_H = 440, 300
WIDE, NARROW = set("mwMW@%"), set("ijlftr.,:;|!'()[]{} ")


def text_width(text, size):
    """A generous estimate of the width of ``text`` in a sans-serif font of ``size`` (no
    layout engine here): margins are made from it, so it errs on the wide side."""
    return size * sum(1.0 if c in WIDE else 0.42 if c in NARROW else 0.82 if c.isupper()
                      else 0.68 for c in text)


def svg_text(x, y, text, cls, anchor="start", room=None):
    """A ``<text>`` element; where ``text`` would be wider than ``room``, it is squeezed to
    fit (textLength), so a long axis title stays whole and inside the plot."""
    squeeze = ""
    if room is not None and text_width(text, FONT[cls]) > room:
        squeeze = ' textLength="%.1f" lengthAdjust="spacingAndGlyphs"' % room
    return '<text x="%.1f" y="%.1f" class="%s" text-anchor="%s"%s>%s</text>' % (
        x, y, cls, anchor, squeeze, esc(text))


def fitted_label(text, room, size):
    """``text`` cut to fit ``room`` (ending in an ellipsis), for tick labels."""
    if text_width(text, size) <= room:
        return text
    while text and text_width(text + "\u2026", size) > room:
        text = text[:-1]
    return text + "\u2026"


def tick_label(x, y, text, anchor, room):
    """A tick label cut to ``room``; a cut label carries the whole text as its title."""
    shown = fitted_label(text, room, FONT["tl"])
    title = "<title>%s</title>" % esc(text) if shown != text else ""
    return ('<text x="%.1f" y="%.1f" class="tl" text-anchor="%s">%s%s</text>'
            % (x, y, anchor, esc(shown), title))


def spaced(scale, marks, gap_of):
    """The ``(value, label)`` marks kept so that neighbours are ``gap_of(a, b)`` pixels apart."""
    kept, last = [], None
    for value, label in marks:
        pos = scale(value)
        if last is None or abs(pos - last[0]) >= gap_of(last[1], label):
            kept.append((value, label))
            last = (pos, label)
    return kept


def svg_open(width, height):
    """An SVG that shrinks to its container's width (viewBox, width 100%), never wider than
    ``width`` pixels (text stays at its size on a wide page)."""
    return ('<svg viewBox="0 0 %d %d" width="100%%" class="plot" style="max-width:%dpx" '
            'preserveAspectRatio="xMinYMin meet">' % (width, height, width))


def axes_svg(x_scale, y_scale, width, height, x_title, y_title):
    """Place both scales in a ``width`` x ``height`` plot, then its frame, ticks and titles:
    the y title above the frame, the x title below it, both whole. The margins follow the
    tick labels, so no label sticks out of the plot."""
    top, bottom = 26, height - 40
    y_scale.place(bottom, top)
    y_marks = spaced(y_scale, y_scale.ticks(), lambda a, b: 14)
    x_marks = x_scale.ticks()
    widest_x = max([text_width(label, FONT["tl"]) for _, label in x_marks] + [0])
    left = max([text_width(label, FONT["tl"]) + 14 for _, label in y_marks]
               + [widest_x / 2 + 4, 40])
    right = width - (14 if x_scale.kind == "category" else max(14, widest_x / 2 + 4))
    x_scale.place(left, right)
    room = x_scale.band() - 4
    x_marks = spaced(x_scale, [(v, fitted_label(label, room, FONT["tl"])) for v, label in x_marks],
                     lambda a, b: (text_width(a, FONT["tl"]) + text_width(b, FONT["tl"])) / 2 + 6)
    parts = ['<rect x="%.1f" y="%d" width="%.1f" height="%d" class="frame"/>'
             % (left, top, right - left, bottom - top)]
    for value, label in x_marks:
        x = x_scale(value)
        parts.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" class="tick"/>'
                     % (x, bottom, x, bottom + 4))
        parts.append(tick_label(x, bottom + 15, label, "middle", room + 4))
    for value, label in y_marks:
        y = y_scale(value)
        parts.append('<line x1="%.1f" y1="%.1f" x2="%.1f" y2="%.1f" class="grid"/>'
                     % (left, y, right, y))
        parts.append(tick_label(left - 5, y + 3, label, "end", left - 8))
    parts.append(svg_text(width / 2.0, height - 8, x_title, "al", "middle", width - 8))
    parts.append(svg_text(4, 15, y_title, "al", "start", width - 8))
    return parts


def point_title(run, key, x, perf_key, y):
    return "<title>%s: %s=%s, %s=%s</title>" % (esc(run.name), esc(key), esc(value_label(x)),
                                                esc(perf_key), "%.6g" % y)


def points_svg(singles, xs, scales, key, perf_key, faint, hrefs):
    """One point per run: a linked ``<circle>`` with a title each while ``hrefs`` (run name
    -> link) is given, else one path of dots per state, on whole pixels, a dot drawn once
    however many runs fall on it (a small page for a large search). Finished runs first, so
    that the others are drawn on top."""
    x_scale, y_scale = scales
    order = sorted(range(len(singles)), key=lambda i: singles[i][0].state != FINISHED)
    if hrefs is None:
        dots = collections.OrderedDict()
        for i in order:
            run, y = singles[i]
            dots.setdefault(run.state, set()).add((int(x_scale(xs[i], jitter(run.index))),
                                                   int(y_scale(y))))
        return ['<path class="dots%s" stroke="%s" d="%s"/>'
                % (" faint" if faint else "", STATE_COLORS[state],
                   "".join("M%d %dh0" % xy for xy in sorted(d)))
                for state, d in dots.items()]
    parts = []
    for i in order:
        run, y = singles[i]
        circle = '<circle class="%s" cx="%.1f" cy="%.1f" r="%s" fill="%s">%s</circle>' % (
            "pf" if faint else "pt", x_scale(xs[i], jitter(run.index)), y_scale(y),
            "2.6" if faint else "3.2", STATE_COLORS[run.state],
            point_title(run, key, xs[i], perf_key, y))
        parts.append(link_html(hrefs.get(run.name), circle, False))
    return parts


def means_svg(averages, key, scales, perf_key):
    """Each setting's mean (a dark point, linked to its row of the settings table) with an
    error bar of one standard deviation."""
    x_scale, y_scale = scales
    parts = []
    for rank, setting, (mean, std) in averages:
        x_value = setting.args.get(key, ABSENT)
        x, y = x_scale(x_value, jitter(rank)), y_scale(mean)
        if std:
            lo, hi = y_scale(mean - std), y_scale(mean + std)
            parts.append('<path class="eb" d="M%.1f %.1fV%.1fM%.1f %.1fh6M%.1f %.1fh6"/>'
                         % (x, lo, hi, x - 3, lo, x - 3, hi))
        point = ('<circle class="pm" cx="%.1f" cy="%.1f" r="4"><title>setting #%d: %s=%s, '
                 '%s=%s (n=%d)</title></circle>' % (
                     x, y, rank, esc(key), esc(value_label(x_value)), esc(perf_key),
                     esc(mean_std_text(mean, std, "%.6g")), setting.counts[perf_key]))
        parts.append(link_html("#s%d" % rank if rank <= TABLE_ROWS else None, point, False))
    return parts


def scatter_svg(key, singles, averages, perf_key, y_title, hrefs):
    """The performance key against one hyperparameter: a point per run (faint behind the
    means when ``averages``, ``[(rank, setting, (mean, std))]``, are given)."""
    xs = [r.args.get(key, ABSENT) for r, _ in singles]
    ys = [y for _, y in singles]
    for _, _, (mean, std) in averages or ():
        ys += [mean - (std or 0.0), mean + (std or 0.0)]
    scales = (Scale(xs), Scale(ys, discrete=False))
    parts = [svg_open(PLOT_W, PLOT_H)]
    parts += axes_svg(scales[0], scales[1], PLOT_W, PLOT_H, key, y_title)
    parts += points_svg(singles, xs, scales, key, perf_key, bool(averages), hrefs)
    if averages:
        parts += means_svg(averages, key, scales, perf_key)
    parts.append("</svg>")
    return "".join(parts)


def parallel_svg(keys, lines, perf_key):
    """Parallel coordinates: one axis per hyperparameter, then the performance key; ``lines``
    ``[(title, href, values)]`` best first, each a polyline coloured by rank (a legend says
    how). Axis titles alternate between two rows, the axes as far apart as the longest title
    needs (within reason: the plot shrinks to the page), each title fitted to its room."""
    axes = keys + [perf_key]
    height, top, bottom, side = 360, 44, 340, 70
    longest = max(text_width(axis, FONT["al"]) for axis in axes)
    step = min(260.0, max(120.0, longest / 2 + 8)) if len(axes) > 1 else 0.0
    width = int(max(1000, step * (len(axes) - 1) + 2 * side))   # the page's width at 1,400 px
    if len(axes) > 1:
        step = (width - 2.0 * side) / (len(axes) - 1)
    columns = [[values[j] for _, _, values in lines] for j in range(len(axes))]
    scales = [Scale(col, bottom, top, discrete=(j < len(keys))) for j, col in enumerate(columns)]
    parts = [svg_open(width, height)]
    for i in reversed(range(len(lines))):  # the best drawn last, on top
        title, href, _ = lines[i]
        points = " ".join("%.1f,%.1f" % (side + j * step, scales[j](columns[j][i]))
                          for j in range(len(axes)))
        line = '<polyline class="pc" points="%s" stroke="%s"><title>#%d %s</title></polyline>' % (
            points, rank_color(i, len(lines)), i + 1, esc(title))
        parts.append(link_html(href, line, False))
    for j, (axis, scale) in enumerate(zip(axes, scales)):
        x = side + j * step
        parts.append('<line x1="%.1f" y1="%d" x2="%.1f" y2="%d" class="axis"/>'
                     % (x, top, x, bottom))
        parts.append(axis_title(x, 15 if j % 2 == 0 else 31, axis, step, width))
        for value, label in spaced(scale, scale.ticks(), lambda a, b: 13):
            parts.append(tick_label(x - 4, scale(value) + 3, label, "end", min(step, side) - 8))
    parts.append("</svg>")
    return "".join(parts)


def axis_title(x, y, text, step, width):
    """A parallel axis' title, centred on its axis, or from the plot's edge for the first
    and last axis; it may reach as far as the neighbouring titles in its row leave room."""
    half = step - 4 if step else width / 2.0 - 4
    if x - half < 2:
        return svg_text(2, y, text, "al", "start", x + half - 2)
    if x + half > width - 2:
        return svg_text(width - 2, y, text, "al", "end", width - 2 - (x - half))
    return svg_text(x, y, text, "al", "middle", 2 * half)


def rank_color(i, n):
    """Dark blue for the best, fading to light blue for the n-th."""
    shade = 0.8 * i / max(1, n - 1)
    return "rgb(%d,%d,%d)" % (int(20 + 190 * shade), int(60 + 170 * shade), int(170 + 70 * shade))


def status_svg(counts):
    """One bar per state, its count beside it."""
    width, row, label_right, bar = 620, 24, 250, 300
    most = max([n for _, n in counts] + [1])
    parts = [svg_open(width, row * len(counts) + 8)]
    for i, (state, n) in enumerate(counts):
        y = 4 + i * row
        parts.append(svg_text(label_right, y + 15, STATE_LABELS[state], "tl", "end",
                              label_right - 4))
        length = float(bar) * n / most
        parts.append('<rect class="bar" x="%d" y="%d" width="%.1f" height="%d" fill="%s"/>'
                     % (label_right + 8, y + 3, length, row - 6, STATE_COLORS[state]))
        parts.append(svg_text(label_right + 14 + length, y + 15, str(n), "tl"))
    parts.append("</svg>")
    return "".join(parts)


def importance_svg(shares):
    """A bar per hyperparameter, largest share first, and one for what no main effect
    explains (interactions between hyperparameters, seeds, noise)."""
    rest = max(0.0, 1.0 - math.fsum(share for _, share, _ in shares))
    rows = [(key, share, "imp") for key, share, _ in shares]
    rows.append(("rest: interactions, seeds, noise", rest, "imp rest"))
    label_right = min(280, max(text_width(key, FONT["tl"]) for key, _, _ in rows) + 10)
    width, row, bar = 640, 22, 280
    parts = [svg_open(width, row * len(rows) + 8)]
    for i, (key, share, cls) in enumerate(rows):
        y = 4 + i * row
        parts.append(tick_label(label_right - 6, y + 14, key, "end", label_right - 10))
        parts.append('<rect class="%s" x="%.1f" y="%d" width="%.1f" height="%d" '
                     'data-share="%r"/>' % (cls, label_right, y + 3, bar * share, row - 6, share))
        parts.append(svg_text(label_right + bar * share + 6, y + 14, "%.1f %%" % (100 * share),
                              "tl"))
    parts.append("</svg>")
    return "".join(parts)


def curves_svg(best, others, step_key, y_title):
    """The performance key against the step: ``best`` ``[(run, points, colour, href)]`` in
    colour, ``others`` ``[(run, points)]`` faint behind them; where a run was stopped early a
    cross, where it still runs an open circle, at its last point."""
    steps = [s for _, points in others for s, _ in points]
    steps += [s for _, points, _, _ in best for s, _ in points]
    values = [v for _, points in others for _, v in points]
    values += [v for _, points, _, _ in best for _, v in points]
    x_scale, y_scale = Scale(steps, discrete=False), Scale(values, discrete=False)
    parts = [svg_open(2 * PLOT_W, PLOT_H)]
    parts += axes_svg(x_scale, y_scale, 2 * PLOT_W, PLOT_H, step_key, y_title)

    def line(points, cls, color="", title=""):
        return '<polyline class="%s" points="%s"%s>%s</polyline>' % (cls, " ".join(
            "%.1f,%.1f" % (x_scale(s), y_scale(v)) for s, v in points),
            ' stroke="%s"' % color if color else "", title)

    def end_mark(run, points, color):
        x, y = x_scale(points[-1][0]), y_scale(points[-1][1])
        if run.state == STOPPED:
            return '<path class="stop" d="M%.1f %.1fl8 8m0 -8l-8 8" stroke="%s"/>' % (
                x - 4, y - 4, color)
        if run.state == RUNNING:
            return '<circle class="going" cx="%.1f" cy="%.1f" r="4" stroke="%s"/>' % (
                x, y, color)
        return ""

    for run, points in others:
        parts += [line(points, "cf"), end_mark(run, points, "#999")]
    for run, points, color, href in reversed(best):
        drawn = line(points, "cb", color, "<title>%s</title>" % esc(run.name))
        parts += [link_html(href, drawn, False),
                  end_mark(run, points, color)]
    parts.append("</svg>")
    return "".join(parts)


# ----------------------------------------------------------------------------------------------
# HTML report: tables and the page
# ----------------------------------------------------------------------------------------------


def value_label(value, digits=4, items=2):
    """A value for a cell or a tick: numbers with ``digits`` significant digits; a list (per
    task values) as its first ``items`` and an ellipsis."""
    if isinstance(value, (list, tuple)):
        shown = ", ".join(value_label(v, digits) for v in value[:items])
        return "[%s%s]" % (shown, ", \u2026" if len(value) > items else "")
    return str(value) if value is ABSENT else number_text(value, digits)


def value_cell(value, digits, cls=""):
    """A ``<td>``: value_label with ``digits``, the whole value as its title where it is
    shortened, a number's exact value in data-v (for sorting)."""
    text, whole = value_label(value, digits), format_cell(value)
    attrs = ' class="%s"' % cls if cls else ""
    if is_number(value) and math.isfinite(value):
        attrs += ' data-v="%r"' % value
    if text != whole:
        attrs += ' title="%s"' % esc(whole)
    return "<td%s>%s</td>" % (attrs, esc(text))


def value_cells(values, cls=""):
    """A column's cells, each number with the column's distinguishing_digits."""
    digits = distinguishing_digits(values)
    return [value_cell(v, digits, cls) for v in values]


def mean_std_text(mean, std, number_format):
    return (number_format % mean) + ("" if std is None else " \u00b1 %.2g" % std)


def stats_cells(settings, kw, cls=""):
    """``mean ± std (n)`` cells of ``kw``, the mean in data-v (empty where no finished run
    has a number for it)."""
    stats = [s.stats.get(kw, (None, None)) for s in settings]
    digits = distinguishing_digits([mean for mean, _ in stats])
    cells = []
    for s, (mean, std) in zip(settings, stats):
        if mean is None:
            cells.append('<td class="%s"></td>' % cls)
            continue
        cells.append('<td class="%s" data-v="%r">%s (%d)</td>' % (
            cls, mean, esc(mean_std_text(mean, std, "%%.%dg" % digits)), s.counts[kw]))
    return cells


EMPTY_CELL = re.compile(r"<td[^>]*></td>\Z")


def table_html(header, columns, row_attrs, key_column, optional=()):
    """A sortable table from cell columns, column ``key_column`` (the performance key)
    highlighted; a column named in ``optional`` is left out when all its cells are empty."""
    keep = [j for j, col in enumerate(columns)
            if header[j] not in optional or not all(EMPTY_CELL.match(c) for c in col)]
    head = "".join('<th%s>%s</th>' % (' class="key"' if j == key_column else "",
                                      esc(header[j])) for j in keep)
    body = "".join("<tr%s>%s</tr>" % (attrs, "".join(columns[j][i] for j in keep))
                   for i, attrs in enumerate(row_attrs))
    return ('<div class="scroll"><table class="sortable"><thead><tr>%s</tr></thead>'
            "<tbody>%s</tbody></table></div>" % (head, body))


def link_cell(href, text):
    return "<td>%s</td>" % link_html(href, text)


def files_cell(href, images, thumbnails):
    """Links to the run's images; the first THUMBNAILS shown small when ``thumbnails``."""
    links = []
    for i, name in enumerate(images):
        src = href + urllib.parse.quote(name)
        if thumbnails and i < THUMBNAILS:
            links.append('<a href="%s"><img src="%s" alt="%s" title="%s" loading="lazy" '
                         'class="thumb"></a>' % (src, src, esc(name), esc(name)))
        else:
            links.append(link_html(src, name))
    return "<td>%s</td>" % " ".join(links)


def runs_table_html(view, ranked, hrefs, varying, top_k):
    """Every run (the first TABLE_ROWS), best first: its folder (linked), the performance key
    (highlighted), the other keywords, the arguments that vary, state, reason, duration and
    the images in its folder (thumbnails for the best ``top_k``)."""
    rows = ranked[:TABLE_ROWS]
    key = view.config.performance_key
    metrics = [key] + [kw for kw in view.config.summary_keywords if kw not in (key, "finished")]
    now = time.time()
    durations = [run_duration(run, now) for run in rows]
    header = ["#", "run"] + metrics + varying + ["state", "reason", "duration", "files"]
    columns = [["<td>%d</td>" % i for i in range(1, len(rows) + 1)],
               [link_cell(hrefs.get(r.name), r.name) for r in rows]]
    columns += [value_cells([(r.summary or {}).get(m) for r in rows], "key" if m == key else "")
                for m in metrics]
    columns += [value_cells([r.args.get(a, ABSENT) for r in rows]) for a in varying]
    columns += [["<td>%s</td>" % esc(state_text(r)) for r in rows],
                [reason_cell(r.reason) for r in rows],
                ['<td data-v="%r">%s</td>' % (s, t) if s is not None else "<td></td>"
                 for s, t in durations],
                [files_cell(hrefs.get(r.name), run_images(r) if hrefs.get(r.name) else [],
                            i < top_k) for i, r in enumerate(rows)]]
    return (table_html(header, columns, [' class="%s"' % r.state for r in rows], 2,
                       ("reason", "duration", "files"))
            + more_rows(len(ranked), "runs", RESULTS_NAME))


def more_rows(total, what, csv_name):
    """A line under a table that shows only the first TABLE_ROWS rows."""
    if total <= TABLE_ROWS:
        return ""
    return "<p>The first %d of %d %s; %s has them all.</p>" % (TABLE_ROWS, total, what, csv_name)


def settings_table_html(view, seeds, hrefs, varying):
    """One row per setting (runs that differ only in the seed), best mean first:
    ``mean ± std (n)`` of each keyword (the performance key first, highlighted), the
    arguments that vary and a link to each run, named by its seed. Row ``s<rank>`` is where
    a mean's point in the plots links to."""
    settings = seeds.settings[:TABLE_ROWS]
    key = view.config.performance_key
    metrics = [key] + [kw for kw in seeds.keywords if kw != key]
    header = ["#"] + metrics + varying + ["runs (by %s)" % seeds.seed_key]
    columns = [["<td>%d</td>" % i for i in range(1, len(settings) + 1)]]
    columns += [stats_cells(settings, m, "key" if m == key else "") for m in metrics]
    columns += [value_cells([s.args.get(a, ABSENT) for s in settings]) for a in varying]
    columns.append(["<td>%s</td>" % " ".join(seed_link(r, hrefs.get(r.name), seeds.seed_key)
                                             for r in s.runs) for s in settings])
    attrs = [' id="s%d"' % i for i in range(1, len(settings) + 1)]
    return (table_html(header, columns, attrs, 1)
            + more_rows(len(seeds.settings), "settings", SEEDS_NAME))


def seed_link(run, href, seed_key):
    """The run's seed, linked to its folder; a run that did not finish is marked by its
    colour and says its state in a title (a search of many runs keeps its page small)."""
    seed = esc(value_label(run.args.get(seed_key, ABSENT)))
    if run.state != FINISHED:
        seed = '<span class="%s" title="%s">%s</span>' % (run.state, esc(state_text(run)), seed)
    return link_html(href, seed, False)


def reason_cell(reason, most=80):
    """The reason, cut to ``most`` characters; the whole of a cut one as its title."""
    if len(reason) <= most:
        return "<td>%s</td>" % esc(reason)
    return '<td title="%s">%s\u2026</td>' % (esc(reason), esc(reason[:most - 1]))


def swatch(color, label, shape="dot"):
    return '<span class="%s" style="background:%s"></span> %s' % (shape, color, label)


def direction_text(config):
    return "lower is better" if config.performance_sort_asc else "higher is better"


class ReportData(object):
    """What the page shows, computed once: the runs with a number for the performance key
    (``singles``, best first), the settings' means when seeds are averaged (``averages``,
    ``[(rank, setting, (mean, std))]``), the varying arguments and the links to run folders
    (``hrefs``, run name -> relative link: all runs of the tables, every run of the plots
    while there are at most POINTS_UP_TO). ``varying``: the arguments that vary, but the
    seed when seeds are averaged; ``run_keys``: all that vary."""

    def __init__(self, view, ranked, seeds, top_k):
        self.key = key = view.config.performance_key
        self.seeds = seeds
        self.top_k = top_k
        self.singles = [(r, y) for r, y in ((r, finite_perf_value(r, key)) for r in ranked)
                        if y is not None]
        self.run_keys = differing_keys(view.arg_keys, view.runs)  # the seed too
        self.varying = [k for k in self.run_keys if seeds is None or k != seeds.seed_key]
        self.constant = [k for k in view.arg_keys if k not in self.varying
                         and (seeds is None or k != seeds.seed_key)]
        self.averages = None
        if seeds is not None:
            self.averages = [(i, s, s.stats[key]) for i, s in
                             enumerate(ranked_settings(seeds, key), 1)]
        linked = list(ranked[:TABLE_ROWS])
        if seeds is not None:
            linked += [r for s in seeds.settings[:TABLE_ROWS] for r in s.runs]
        self.points_linked = len(view.runs) <= POINTS_UP_TO
        if self.points_linked:
            linked = view.runs
        self.hrefs = {r.name: run_href(view, r) for r in linked}
        self.y_title = "%s (%s)" % (key, direction_text(view.config))


def state_legend(states):
    return ", ".join(swatch(STATE_COLORS[st], esc(STATE_LABELS[st])) for st in STATE_ORDER
                     if st in states)


def scatter_section(data):
    body = ["<h2>%s against each hyperparameter</h2>" % esc(data.key)]
    if not data.singles:
        return body + ["<p>No run has a number for %s yet.</p>" % esc(data.key)]
    if not data.varying:
        return body + ["<p>No hyperparameter varies in this search.</p>"]
    states = set(r.state for r, _ in data.singles)
    if data.averages:
        body.append('<p class="legend">%s mean of a setting\'s finished runs (linked to its '
                    'row), bar: &plusmn; 1 standard deviation; faint behind: single runs, '
                    'by state: %s. Points of equal value are spread sideways.</p>'
                    % (swatch("#222", ""), state_legend(states)))
    else:
        body.append('<p class="legend">One point per run with a number for %s (linked to '
                    'its folder), by state: %s. Points of equal value are spread sideways.</p>'
                    % (esc(data.key), state_legend(states)))
    hrefs = data.hrefs if data.points_linked else None
    body.append('<div class="plots">%s</div>' % "".join(
        scatter_svg(k, data.singles, data.averages, data.key, data.y_title, hrefs)
        for k in data.varying))
    return body


def importance_section(view, data):
    shares, n = main_effect_shares(view.runs, data.varying, data.key)
    body = ["<h2>Which hyperparameters matter</h2>"]
    if not shares:
        return body + ["<p>Needs at least two finished runs with different values of %s and "
                       "a hyperparameter that varies.</p>" % esc(data.key)]
    body.append("<p>The share of the variance of %s over the %d finished runs that each "
                "hyperparameter's main effect explains: the variance of the means per value "
                "(numbers with more than %d values: per quantile bin), weighted by the runs "
                "per value, over the total variance; shares are scaled to sum to at most 1. "
                "With few runs per value, noise alone gives a share of about (values - 1) / "
                "(runs - 1).</p>" % (esc(data.key), n, IMPORTANCE_BINS))
    body.append(importance_svg(shares))
    return body


def parallel_section(data):
    best_settings = data.averages[:data.top_k] if data.averages else None
    if not data.varying or not (best_settings or data.singles):
        return []
    if best_settings:
        lines = [(", ".join("%s=%s" % (k, value_label(s.args.get(k, ABSENT)))
                            for k in data.varying), "#s%d" % rank,
                  [s.args.get(k, ABSENT) for k in data.varying] + [stats[0]])
                 for rank, s, stats in best_settings]
        what, noun = "settings (means over seeds)", "setting"
    else:
        lines = [(r.name, data.hrefs.get(r.name), [r.args.get(k, ABSENT) for k in data.varying]
                  + [y]) for r, y in data.singles[:data.top_k]]
        what, noun = "runs", "run"
    legend = ('<p class="legend">One line per %s, linked; colour by rank: '
              '<span class="ramp"></span> from #1 (dark) to #%d (light). %s.</p>'
              % (noun, len(lines), esc(data.y_title)))
    return ["<h2>The best %d %s, parallel coordinates</h2>" % (len(lines), what), legend,
            parallel_svg(data.varying, lines, data.key)]


def curves_section(view, data, ranked):
    body = ["<h2>Learning curves</h2>"]
    curves = read_curves(view)
    if not curves:
        return body + ["<p>No learning curves: hpsearch keeps each run's summary history "
                       "(hpsearch_progress.jsonl in its folder) only with --early_stopping%s."
                       "</p>" % (", and no run has one yet" if view.early_stopping else "")]
    by_name = dict((run.name, points) for run, points in curves)
    order = [r for r in ranked if r.name in by_name]
    colored = order[:min(data.top_k, len(CURVE_COLORS))]
    best = [(r, by_name[r.name], CURVE_COLORS[i], data.hrefs.get(r.name))
            for i, r in enumerate(colored)]
    others = [(r, by_name[r.name]) for r in order[len(colored):][:FAINT_CURVES]]
    step_key = view.early_stopping.get("es_step_key") or "step"
    shown = len(order) - len(colored)
    legend = ["%s %s" % (swatch(color, "", "line"), link_html(href, r.name))
              for r, _, color, href in best]
    legend.append("%s the other %d run(s)%s" % (
        swatch("#bbb", "", "line"), shown,
        " (the best %d of them)" % FAINT_CURVES if shown > FAINT_CURVES else ""))
    legend.append("&times; stopped by early stopping, &#9675; still running")
    body.append('<p class="legend">%s against %s as each run reported it, the best %d runs '
                'in colour: %s.</p>' % (esc(data.y_title), esc(step_key), len(best),
                                        "; ".join(legend)))
    body.append('<div>%s</div>' % curves_svg(best, others, step_key, data.y_title))
    return body


def link_html(href, content, text=True):
    """``content`` linked to ``href`` (when there is one); ``text``: content to escape."""
    content = esc(content) if text else content
    return '<a href="%s">%s</a>' % (href, content) if href else content


def constant_settings(view, keys):
    return ", ".join('<span title="%s">%s=%s</span>' % (
        esc(format_cell(view.runs[0].args.get(k))), esc(k),
        esc(value_label(view.runs[0].args.get(k, ABSENT)))) for k in keys)


def report_html(view, ranked, top_k, seeds=None):
    """The whole page: states, which hyperparameters matter, the performance key against
    each of them, parallel coordinates of the best, learning curves, then the tables (the
    settings averaged over seeds when ``seeds`` is a SeedTable, and every run)."""
    data = ReportData(view, ranked, seeds, top_k)
    body = ["<h1>Search %s</h1>" % esc(os.path.basename(view.path)),
            "<p>%s &middot; %s search &middot; %d runs &middot; report written %s</p>"
            % (esc(view.path), view.origin, len(view.runs),
               datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")),
            '<p>Performance key: <b class="key">%s</b>, %s.</p>'
            % (esc(data.key), direction_text(view.config))]
    if seeds is not None:
        body.append("<p>Runs that differ only in %s are averaged: %d settings; plots and "
                    "tables rank settings by the mean of %s over their finished runs, shown "
                    "as mean &plusmn; standard deviation (n runs).</p>"
                    % (esc(seeds.seed_key), len(seeds.settings), esc(data.key)))
    if data.constant:
        body.append('<p class="constant">The same in every run: %s</p>'
                    % constant_settings(view, data.constant))
    sections = [("states", ["<h2>Run states</h2>", status_svg(count_states(view.runs))]),
                ("importance", importance_section(view, data)),
                ("plots", scatter_section(data)),
                ("parallel", parallel_section(data)),
                ("curves", curves_section(view, data, ranked))]
    if seeds is not None:
        sections.append(("settings", [
            "<h2>Settings, averaged over %s, best mean first</h2>" % esc(seeds.seed_key),
            settings_table_html(view, seeds, data.hrefs, data.varying)]))
    sections.append(("runs", ["<h2>Results, best first</h2>",
                              runs_table_html(view, ranked, data.hrefs, data.run_keys, top_k)]))
    body += ['<section id="%s">\n%s\n</section>' % (name, "\n".join(parts))
             for name, parts in sections if parts]
    return ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><meta name=\"viewport\" "
            "content=\"width=device-width\"><title>%s</title><style>%s</style></head><body>\n"
            "%s\n<script>%s</script>\n</body></html>\n"
            % (esc(os.path.basename(view.path)), CSS, "\n".join(body), SCRIPT))


def write_report(view, ranked, top_k, seeds=None):
    path = view.file(REPORT_NAME)
    return (path,) + write_output(path, report_html(view, ranked, top_k, seeds))


CSS = """
body { font-family: sans-serif; margin: 24px; color: #222; background: #fff; }
h1 { font-size: 20px; } h2 { font-size: 17px; margin-top: 28px; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(380px, 1fr));
         gap: 12px; }
.plot { display: block; background: #fff; height: auto; }
.frame { fill: #fafafa; stroke: #999; }
.grid { stroke: #e4e4e4; } .tick, .axis { stroke: #777; }
.tl { font-size: 10px; fill: #444; paint-order: stroke; stroke: #fff; stroke-width: 2px;
      stroke-linejoin: round; } .al { font-size: 12px; fill: #000; }
.pt { fill-opacity: 0.75; stroke: #333; stroke-width: 0.4; }
.pf { fill-opacity: 0.25; stroke: none; }
.pm { fill: #222; stroke: #fff; stroke-width: 1; } .eb { stroke: #222; stroke-width: 1.2; }
.dots { fill: none; stroke-width: 6; stroke-linecap: round; stroke-opacity: 0.6; }
.dots.faint { stroke-width: 5; stroke-opacity: 0.2; }
.pc { fill: none; stroke-width: 2; stroke-opacity: 0.85; }
.cf { fill: none; stroke: #bbb; stroke-opacity: 0.5; stroke-width: 1; }
.cb { fill: none; stroke-width: 2; } .stop { stroke-width: 2; fill: none; }
.going { fill: #fff; stroke-width: 2; }
.imp { fill: #4c72b0; } .imp.rest { fill: #ccc; }
.dot { display: inline-block; width: 10px; height: 10px; border-radius: 5px; }
.line { display: inline-block; width: 18px; height: 3px; vertical-align: middle; }
.ramp { display: inline-block; width: 80px; height: 8px;
        background: linear-gradient(to right, rgb(20,60,170), rgb(172,196,226)); }
.legend { font-size: 13px; }
b.key, th.key { background: #ffe27a; } td.key { background: #fff4c2; font-weight: bold; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 12px; }
th, td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
th { background: #eee; } img.thumb { height: 48px; vertical-align: middle; }
tr.failed td, tr.killed td { background: #fde2e2; } tr.unfinished td { background: #fff0dd; }
tr.stopped td { background: #f6f6d8; }
tr.running td { background: #e2eefd; } tr.missing td, tr.not_started td { color: #888; }
span.failed, span.killed { color: #c00; } span.unfinished, span.stopped { color: #b60; }
span.running, span.missing, span.not_started { color: #888; }
input.filter { margin: 6px 0; }
"""

# Optional: click a header to sort, type to filter the rows. The page is whole without it.
SCRIPT = """
(function () {
  function value(row, i) {
    var cell = row.cells[i], v = cell.getAttribute("data-v");
    return v !== null ? parseFloat(v) : cell.textContent.toLowerCase();
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    var body = table.tBodies[0];
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (th, i) {
      th.title = "click to sort";
      th.style.cursor = "pointer";
      th.addEventListener("click", function () {
        var up = th.getAttribute("data-up") !== "1", rows = [].slice.call(body.rows);
        th.setAttribute("data-up", up ? "1" : "0");
        rows.sort(function (a, b) {
          var x = value(a, i), y = value(b, i);
          if (typeof x !== typeof y) { return typeof x === "number" ? -1 : 1; }
          return (x < y ? -1 : x > y ? 1 : 0) * (up ? 1 : -1);
        });
        rows.forEach(function (row) { body.appendChild(row); });
      });
    });
    var box = document.createElement("input");
    box.type = "search";
    box.placeholder = "filter rows";
    box.className = "filter";
    box.addEventListener("input", function () {
      var q = box.value.toLowerCase();
      Array.prototype.forEach.call(body.rows, function (row) {
        row.style.display = row.textContent.toLowerCase().indexOf(q) < 0 ? "none" : "";
      });
    });
    table.parentNode.insertBefore(box, table);
  });
})();
"""


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
    seeds = None
    if args.seed_key in view.arg_keys:
        seeds = SeedTable(view, args.seed_key)
        earlier, changed = seeds.write(view.file(SEEDS_NAME))
        notices.append(wrote(view.file(SEEDS_NAME), earlier, changed, ": %d groups of runs "
                             "that differ only in --%s" % (len(seeds.rows), args.seed_key)))
    else:
        notices.append("no argument %r in this search (see --seed_key): no %s"
                       % (args.seed_key, SEEDS_NAME))
    if args.no_seed_average or args.seed_key not in differing_keys(view.arg_keys, view.runs):
        seeds = None  # nothing to average: rank single runs
    if args.html:
        notices.append(wrote(*write_report(view, ranked, args.top, seeds)))
    print_report(view, ranked, args.top, seeds=seeds)
    print("")
    print("\n".join(notices))
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
