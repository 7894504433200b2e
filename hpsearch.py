#!/usr/bin/env python3
"""hpsearch: run a hyperparameter search over a training script, locally or on a cluster.

One file, Python standard library only (CPython 3.6 to 3.13): copy it beside your config and run

    python hpsearch.py --grid_module=my_config --visible_gpus=0,1

A drop-in successor of hypnettorch's ``hpsearch``: the same config modules, flags and output
file names. ``python hpsearch.py --help`` lists the flags; README.rst explains the rest.
"""

import argparse
import atexit
import collections
import csv
import datetime
import difflib
import errno
import fcntl
import hashlib
import importlib
import importlib.util
import io
import itertools
import json
import math
import operator
import os
import pickle
import pwd
import random
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import types
import uuid
from xml.etree import ElementTree

__version__ = "1.0.0"

# ----------------------------------------------------------------------------------------------
# Compatibility and small helpers
# ----------------------------------------------------------------------------------------------

if hasattr(time, "monotonic"):
    now = time.monotonic
else:  # pragma: no cover - every supported Python has it; kept as the one shim place
    now = time.time

# Files that later steps read are written whole (temp + fsync + rename) or appended line by line.
# A crash can leave the temporary file of a whole-file write behind: ``<name>.tmp<pid>``.
TEMP_SUFFIX = ".tmp"


def _raise_csv_field_limit():
    """csv refuses fields over 128 KiB by default; a summary or grid value may be longer."""
    limit = sys.maxsize
    while True:
        try:
            csv.field_size_limit(limit)
            return
        except OverflowError:  # a C long is 32 bits on some platforms
            limit //= 2


_raise_csv_field_limit()


class UsageError(Exception):
    """Bad input from the user: reported as one line and exit status 2, never a traceback."""


def atomic_write_text(path, text, durable=True):
    """Replace ``path`` with ``text`` so that a crash leaves either the old or the new file;
    ``durable``: also on disk before this returns (the record and results, not scratch)."""
    tmp = "%s%s%d" % (path, TEMP_SUFFIX, os.getpid())
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.remove(tmp)  # our own half-written temporary file
        except OSError:
            pass
        if isinstance(exc, OSError):  # a failed write (disk full) names no file: say which
            exc.filename = exc.filename or path
        raise


def append_line(path, line):
    """Append one whole line with a single write, so readers never see half a line."""
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line if line.endswith("\n") else line + "\n")
            f.flush()
    except OSError as exc:  # a failed write (disk full) names no file: say which
        exc.filename = exc.filename or path
        raise


def move_aside(path):
    """Rename ``path`` to a free ``<path>.moved_<time>`` name and return it. Never deletes."""
    stamp = datetime.datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    for n in itertools.count(1):
        target = "%s.moved_%s%s" % (path, stamp, "" if n == 1 else "_%d" % n)
        if not os.path.lexists(target):
            os.rename(path, target)
            return target


def one_line(text):
    """Messages are one line, whatever a user's exception or value held."""
    return text.replace("\r", "\\r").replace("\n", "\\n")


class Console(object):
    """Where the launcher's messages go: stdout/stderr and, once the search folder exists,
    ``hpsearch.log`` in it (every line, with the time).

    A closed terminal, a pipe whose reader left (``| head``) or a full disk never stops the
    search: a stream that fails is given up, the log file still gets every line, and the
    search goes on. While a search shows its live status line on a terminal, messages go
    above it (``status``: the Progress that draws it).
    """

    def __init__(self):
        self.log_path = None
        self.failed = set()   # ids of streams that could not be written
        self.status = None

    def write(self, stream, text):
        """Write to a stream; False once it has failed (never raises)."""
        if id(stream) in self.failed:
            return False
        try:
            stream.write(text)
            stream.flush()
            return True
        except (OSError, ValueError, AttributeError):  # EPIPE, EIO after a hangup, closed
            self.failed.add(id(stream))                 # (a closed fd 1 makes sys.stdout None)
            return False

    def is_terminal(self, stream):
        try:
            return id(stream) not in self.failed and stream.isatty()
        except (AttributeError, ValueError, OSError):
            return False

    def say(self, message, stream=None):
        """One message line (``stream``: sys.stdout by default)."""
        if self.status is not None:
            self.status.clear()
        self.write(stream or sys.stdout, message + "\n")
        self.log(message)
        if self.status is not None:
            self.status.show()

    def log(self, message):
        if self.log_path is None:
            return
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M:%S")
        try:
            append_line(self.log_path, "%s %s" % (stamp, message))
        except OSError:  # a full disk: the journal's own write reports that
            pass

    def close(self):
        """Flush stdout for the last time; if it is gone, point it at /dev/null so that the
        interpreter's own flush at exit cannot fail either."""
        for stream in (sys.stdout, sys.stderr):
            if not self.write(stream, ""):
                try:
                    devnull = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(devnull, stream.fileno())
                    os.close(devnull)
                except (OSError, ValueError, AttributeError):
                    pass


CONSOLE = Console()


def say(message):
    CONSOLE.say(message)


def warn(message):
    """A warning on stderr (and in the search's log); never stops anything."""
    CONSOLE.say("hpsearch: warning: %s" % message, sys.stderr)


# ----------------------------------------------------------------------------------------------
# Configuration: the user's config module (hypnettorch's contract)
# ----------------------------------------------------------------------------------------------

CONFIG_DEFAULTS = {
    "_SCRIPT_NAME": None,
    "_SUMMARY_FILENAME": None,
    "_SUMMARY_KEYWORDS": None,
    "_OUT_ARG": "out_dir",
    "_SUMMARY_PARSER_HANDLE": None,
    "_PERFORMANCE_EVAL_HANDLE": None,
    "_PERFORMANCE_KEY": None,
    "_PERFORMANCE_SORT_ASC": False,
    "_ARGPARSE_HANDLE": None,
}


class SearchConfig(object):
    """What a config module says: the grid, its conditions and the ``_UPPERCASE`` settings.

    ``source`` is the file the module was loaded from; every error names it.
    """

    def __init__(self, source, grid, conditions, settings):
        self.source = source
        self.grid = grid
        self.conditions = conditions
        self.script_name = settings["_SCRIPT_NAME"]
        self.summary_filename = settings["_SUMMARY_FILENAME"]
        self.summary_keywords = list(settings["_SUMMARY_KEYWORDS"])
        self.out_arg = settings["_OUT_ARG"]
        self.summary_parser = settings["_SUMMARY_PARSER_HANDLE"]
        self.performance_eval = settings["_PERFORMANCE_EVAL_HANDLE"]
        self.performance_key = settings["_PERFORMANCE_KEY"] or self.summary_keywords[0]
        self.performance_sort_asc = bool(settings["_PERFORMANCE_SORT_ASC"])
        self.argparse_handle = settings["_ARGPARSE_HANDLE"]


def _import_error_line(source, exc):
    """One line for an exception raised while importing a config: where and what."""
    if isinstance(exc, SyntaxError):
        return "%s:%s: syntax error: %s (fix the config file)" % (
            exc.filename or source, exc.lineno, exc.msg)
    tb = exc.__traceback__
    where = source
    if isinstance(exc, SystemExit):
        what = "it called sys.exit(%s); a config is imported, it must not exit" % (
            "" if exc.code is None else repr(exc.code))
    else:
        what = "importing the config failed: %s: %s" % (type(exc).__name__, exc)
    while tb is not None:  # the innermost frame inside the config file says where it broke
        if os.path.abspath(tb.tb_frame.f_code.co_filename) == os.path.abspath(source):
            where = "%s:%d" % (source, tb.tb_lineno)
        tb = tb.tb_next
    return "%s: %s" % (where, what)


def import_config_module(name_or_path, search_dirs):
    """Import a config given as a dotted module name or a path to a ``.py`` file.

    ``search_dirs`` (the working directory and ``--run_cwd``) go on ``sys.path`` first so that a
    config can import its sibling modules, as it could under hypnettorch.
    """
    for d in reversed(search_dirs):
        d = os.path.abspath(d)
        if d not in sys.path:
            sys.path.insert(0, d)
    looks_like_path = name_or_path.endswith(".py") or os.sep in name_or_path
    if looks_like_path:
        path = os.path.abspath(name_or_path)
        if not os.path.isfile(path):
            raise UsageError("--grid_module: no such file: %s (give a path to a .py file or a "
                             "dotted module name)" % name_or_path)
        folder = os.path.dirname(path)
        if folder not in sys.path:
            sys.path.insert(0, folder)
        module_name = os.path.splitext(os.path.basename(path))[0]
        module = types.ModuleType(module_name)
        module.__file__ = path
        sys.modules[module_name] = module
        try:  # from source, never from a cached .pyc that may predate an edit
            with open(path, "rb") as f:
                exec(compile(f.read(), path, "exec"), module.__dict__)
        except (Exception, SystemExit) as exc:  # any error in user code becomes one line
            del sys.modules[module_name]
            raise UsageError(_import_error_line(path, exc))
        return module, path
    try:
        spec = importlib.util.find_spec(name_or_path)
    except (ImportError, ValueError):
        spec = None
    except (Exception, SystemExit) as exc:  # a parent package that fails to import
        raise UsageError("--grid_module %s: importing it failed: %s: %s"
                         % (name_or_path, type(exc).__name__, exc))
    if spec is None or spec.origin is None:
        raise UsageError("--grid_module: cannot find module %r in %s (give a dotted module name "
                         "importable from there, or a path to a .py file)"
                         % (name_or_path, ", ".join(search_dirs)))
    try:
        module = importlib.import_module(name_or_path)
    except (Exception, SystemExit) as exc:
        raise UsageError(_import_error_line(spec.origin, exc))
    return module, os.path.abspath(spec.origin)


def load_grid_override(path):
    """Read a ``--grid_config`` file: a pickled dict (as hypnettorch) or JSON, with optional
    ``grid`` and ``conditions`` keys that replace the module's."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise UsageError("--grid_config: cannot read %s: %s" % (path, exc.strerror))
    data = None
    if path.endswith(".json") or raw[:1] in (b"{", b"[", b" ", b"\n"):
        try:
            data = json.loads(raw.decode("utf-8"))
        except ValueError as exc:
            if path.endswith(".json"):
                raise UsageError("--grid_config: %s is not valid JSON: %s" % (path, exc))
    if data is None:
        try:
            data = pickle.loads(raw)
        except Exception as exc:
            raise UsageError("--grid_config: %s is neither JSON nor a pickle (%s: %s)"
                             % (path, type(exc).__name__, exc))
    if not isinstance(data, dict) or not set(data) <= {"grid", "conditions"}:
        raise UsageError("--grid_config: %s must hold a dict with the keys 'grid' and/or "
                         "'conditions'" % path)
    return data


def argument_problem(text):
    """Why ``text`` cannot be an argument of a run, or None. An argument must reach the script
    as it is and be written into hpsearch's UTF-8 files (record, commands.sh): no NUL byte,
    no lone surrogate (a byte that is not UTF-8)."""
    if "\0" in text:
        return "holds a NUL character"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8 (it holds a byte or lone surrogate hpsearch cannot write " \
               "into its files)"
    try:
        text.encode(sys.getfilesystemencoding(), "surrogateescape")
    except UnicodeEncodeError:
        return "cannot be encoded as a command-line argument here (%s)" \
            % sys.getfilesystemencoding()
    return None


def _check_argument(text, where):
    problem = argument_problem(text)
    if problem:
        raise UsageError("%s: %s %s; change that value" % (where, ascii(text[:60]), problem))


def _check_values(where, key, values):
    for value in values:
        token = render_token(key, value)
        if token is not None:
            _check_argument(token, "%s: %s" % (where, key))


def _check_grid(grid, where):
    if not isinstance(grid, dict):
        raise UsageError("%s: 'grid' must be a dict mapping argument names to lists of values, "
                         "not %s" % (where, type(grid).__name__))
    if not grid:
        raise UsageError("%s: 'grid' is empty; give at least one argument with a list of values"
                         % where)
    for key, values in grid.items():
        if not isinstance(key, str) or not key:
            raise UsageError("%s: grid key %r must be a non-empty string" % (where, key))
        if isinstance(values, Distribution):
            continue
        if not isinstance(values, (list, tuple)) or len(values) == 0:
            raise UsageError("%s: grid[%r] must be a non-empty list of values or a distribution "
                             "(uniform, loguniform, randint), not %r" % (where, key, values))
        _check_values(where, key, values)


def _check_conditions(conditions, where):
    if not isinstance(conditions, (list, tuple)):
        raise UsageError("%s: 'conditions' must be a list of (trigger_dict, action_dict) pairs"
                         % where)
    for i, cond in enumerate(conditions):
        if (not isinstance(cond, (list, tuple)) or len(cond) != 2
                or not all(isinstance(part, dict) for part in cond)):
            raise UsageError("%s: conditions[%d] must be a pair (trigger_dict, action_dict), "
                             "got %r" % (where, i, cond))
        for part_name, part in zip(("trigger", "action"), cond):
            for key, values in part.items():
                if not isinstance(key, str) or not isinstance(values, (list, tuple)) \
                        or (part_name == "action" and len(values) == 0):
                    raise UsageError("%s: conditions[%d] %s: %r must map to a non-empty list "
                                     "of values" % (where, i, part_name, key))
                if part_name == "action":
                    _check_values(where, key, values)


def _script_path(script_name, run_cwd):
    """The training script named in ``_SCRIPT_NAME`` (which may carry interpreter flags and
    positional arguments), resolved against ``run_cwd``; None for ``-m module`` or ``-c``."""
    tokens = shlex.split(script_name)
    takes_value = {"-W", "-X", "-Q"}
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok in ("-m", "-c"):
            return None
        if tok in takes_value:
            i += 2
            continue
        if tok.startswith("-"):
            i += 1
            continue
        return tok if os.path.isabs(tok) else os.path.join(run_cwd, tok)
    return None


def build_config(module, source, override, run_cwd, check_script=True):
    """Validate a loaded config module (plus a ``--grid_config`` override) into a SearchConfig.
    ``check_script``: the training script must exist (not needed to read results)."""
    where = source
    if not hasattr(module, "grid") and "grid" not in override:
        raise UsageError("%s: no 'grid' defined (add grid = {'arg': [values, ...]})" % where)
    grid = override.get("grid", getattr(module, "grid", None))
    conditions = override.get("conditions", getattr(module, "conditions", []))
    if conditions is None:
        conditions = []
    _check_grid(grid, where)
    _check_conditions(conditions, where)
    settings = {key: getattr(module, key, default) for key, default in CONFIG_DEFAULTS.items()}
    if not settings["_SCRIPT_NAME"] or not isinstance(settings["_SCRIPT_NAME"], str):
        raise UsageError("%s: _SCRIPT_NAME is missing (set it to your training script, e.g. "
                         "_SCRIPT_NAME = 'train.py')" % where)
    _check_argument(settings["_SCRIPT_NAME"], "%s: _SCRIPT_NAME" % where)
    try:
        shlex.split(settings["_SCRIPT_NAME"])
    except ValueError as exc:
        raise UsageError("%s: _SCRIPT_NAME %r: %s (it is split like a shell line)"
                         % (where, settings["_SCRIPT_NAME"], exc))
    if not settings["_SUMMARY_FILENAME"] or not isinstance(settings["_SUMMARY_FILENAME"], str):
        raise UsageError("%s: _SUMMARY_FILENAME is missing (the summary file your script writes, "
                         "e.g. 'performance_overview.txt')" % where)
    keywords = settings["_SUMMARY_KEYWORDS"]
    if not isinstance(keywords, (list, tuple)) or not all(isinstance(k, str) for k in keywords):
        raise UsageError("%s: _SUMMARY_KEYWORDS must be a list of keyword strings ending with "
                         "'finished'" % where)
    if "finished" not in keywords:
        raise UsageError("%s: _SUMMARY_KEYWORDS must contain 'finished' (your script writes "
                         "'finished 1' when it completes)" % where)
    out_arg = settings["_OUT_ARG"]
    if not isinstance(out_arg, str) or not out_arg:
        raise UsageError("%s: _OUT_ARG must be the name of your script's output-folder "
                         "argument, e.g. 'out_dir'" % where)
    if out_arg in grid:
        raise UsageError("%s: grid[%r] sets the output folder argument (_OUT_ARG); remove it, "
                         "hpsearch gives each run its own folder" % (where, out_arg))
    for i, (_, action) in enumerate(conditions):
        if out_arg in action:
            raise UsageError("%s: conditions[%d] sets the output folder argument %r; remove it"
                             % (where, i, out_arg))
    perf_key = settings["_PERFORMANCE_KEY"]
    if perf_key is not None and perf_key not in keywords:
        raise UsageError("%s: _PERFORMANCE_KEY %r is not one of _SUMMARY_KEYWORDS %r"
                         % (where, perf_key, list(keywords)))
    for handle in ("_SUMMARY_PARSER_HANDLE", "_PERFORMANCE_EVAL_HANDLE", "_ARGPARSE_HANDLE"):
        if settings[handle] is not None and not callable(settings[handle]):
            raise UsageError("%s: %s must be a function or None" % (where, handle))
    config = SearchConfig(source, grid, conditions, settings)
    problem = missing_script(config, run_cwd) if check_script else None
    if problem:
        raise UsageError(problem)
    return config


def missing_script(config, run_cwd):
    """What is wrong when the training script is not there, else None."""
    script = _script_path(config.script_name, run_cwd)
    if script is not None and not os.path.isfile(script):
        return ("%s: _SCRIPT_NAME %r: no such file %s (check --run_cwd, which the script name "
                "is relative to)" % (config.source, config.script_name, script))
    return None


# ----------------------------------------------------------------------------------------------
# Grid expansion (pure functions; a configuration is one integer)
# ----------------------------------------------------------------------------------------------
#
# Every argument has a table of the values it can take. A configuration is a mixed-radix number
# whose digits index into those tables, so a million configurations are a million small ints
# (not dicts), deduplication hashes ints, and a condition's action is integer arithmetic. Keys
# only conditions add have an "absent" value at digit 0. Two configurations are duplicates when
# they render to the same command.


def render_token(key, value):
    """The one command-line argument for ``key=value``, or None when it is left out.

    As hypnettorch: True is a bare ``--key``, False is omitted, anything else is
    ``--key=str(value)``. An enclosing pair of double quotes (written for /bin/sh under
    hypnettorch, e.g. ``'"a b"'``) is removed, so the script gets the argv it got there.
    """
    if value is True:
        return "--%s" % key
    if value is False:
        return None
    text = str(value)
    if len(text) >= 2 and text[0] == '"' and text[-1] == '"':
        text = text[1:-1]
    return "--%s=%s" % (key, text)


class ValueTable(object):
    """The values one argument can take: grid values, then values that conditions add."""

    ABSENT = object()

    def __init__(self, key, values, may_be_absent):
        self.key = key
        self.values = []
        self.tokens = []
        self._index = {}
        if may_be_absent:
            self.index_of(self.ABSENT)
        for v in values:
            self.index_of(v)

    def index_of(self, value):
        """Index of ``value``, added if new. Only values of one type with one repr share an
        index: '"a"' and 'a' render alike but a trigger tells them apart."""
        token = None if value is self.ABSENT else render_token(self.key, value)
        ident = (type(value), token, repr(value))
        try:
            return self._index[ident]
        except KeyError:
            self.values.append(value)
            self.tokens.append(token)
            self._index[ident] = len(self.values) - 1
            return len(self.values) - 1

    def canonical_indices(self):
        """Map each index to the first index rendering the same way (True and 1 stay apart;
        False and 'absent' both render as nothing)."""
        first = {}
        return [first.setdefault(tok, i) for i, tok in enumerate(self.tokens)]


class Digit(object):
    """Where one argument's value index sits in a configuration number."""

    __slots__ = ("stride", "radix")

    def __init__(self, stride, radix):
        self.stride = stride
        self.radix = radix

    def of(self, code):
        return code // self.stride % self.radix

    def set_all(self, codes, index):
        """``codes`` with this digit set to ``index``."""
        s, r, new = self.stride, self.radix, index * self.stride
        return [c - (c // s % r) * s + new for c in codes]


class Condition(object):
    """One ``(trigger, action)`` pair: configurations whose trigger digits are all allowed are
    replaced by one configuration per combination of the action's values."""

    def __init__(self, trigger, action_digits, action_choices):
        self.trigger = trigger                # [(Digit, set of matching indices)]
        self.action_digits = action_digits
        self.action_choices = action_choices  # product of the action's value indices

    def _mask(self, codes):
        mask = None
        for d, allowed in self.trigger:
            s, r = d.stride, d.radix
            if mask is None:
                mask = [c // s % r in allowed for c in codes]
            else:
                mask = [m and c // s % r in allowed for m, c in zip(mask, codes)]
        return mask

    def apply(self, codes):
        """Hypnettorch's order: configurations left alone first, then the replacements."""
        if self.trigger:
            mask = self._mask(codes)
            matched = list(itertools.compress(codes, mask))
            if not matched:
                return codes
            out = list(itertools.compress(codes, map(operator.not_, mask)))
        else:  # an empty trigger matches everything
            matched, out = codes, []
        for combo in self.action_choices:
            replaced = matched
            for digit, index in zip(self.action_digits, combo):
                replaced = digit.set_all(replaced, index)
            out.extend(replaced)
        return out


class GridSpace(object):
    """The search space of a config: value tables, compiled conditions, rendering.

    ``expand()`` gives the full product with conditions enforced and duplicates removed;
    ``sample(n, rng)`` draws ``n`` distinct configurations without building the product.
    """

    def __init__(self, grid, conditions, warn=warn, draws=0):
        self.keys = list(grid)
        self.n_grid = len(self.keys)
        # Grid entries that are distributions get the values drawn from them as they come:
        # room for ``draws`` of them (see draw_budget), after the values conditions name.
        self.distributions = {p: grid[k] for p, k in enumerate(self.keys)
                              if isinstance(grid[k], Distribution)}
        self.draws = (draws or draw_budget(1000)) if self.distributions else 0
        self.skipped_conditions = 0
        self.after_conditions = None   # configurations expand() made before removing duplicates
        self.unique = None             # ... and after
        active = []
        for i, (trigger, action) in enumerate(conditions):
            missing = [k for k in trigger if k not in grid]
            if missing:
                self.skipped_conditions += 1
                warn("condition %d is skipped: its trigger names %s, which %s not in the grid"
                     % (i, ", ".join(map(repr, missing)), "is" if len(missing) == 1 else "are"))
                continue
            active.append((trigger, action))
            self.keys.extend(k for k in action if k not in self.keys)
        self.tables = [ValueTable(k, [] if p in self.distributions else grid[k], False)
                       for p, k in enumerate(self.keys[:self.n_grid])]
        self.tables.extend(ValueTable(k, [], True) for k in self.keys[self.n_grid:])
        # The product runs over grid values only, not over values conditions add below.
        self.grid_sizes = [len(t.values) for t in self.tables[:self.n_grid]]
        self.position = {k: i for i, k in enumerate(self.keys)}
        # Every value a condition adds or (for a distribution) names in its trigger is known
        # before the digits are laid out: a drawn value equal to it shares its index.
        actions = [{k: [self._table(k).index_of(v) for v in vals] for k, vals in a.items()}
                   for _, a in active]
        for trigger, _ in active:
            for key in (k for k in trigger if self.position[k] in self.distributions):
                for value in trigger[key]:
                    self._table(key).index_of(value)
        self.digits = self._layout()
        self.conditions = [self._compile(trigger, indices)
                           for (trigger, _), indices in zip(active, actions)]
        # A value drawn later that equals a trigger's value (3 and 3.0 too) must match it.
        self._open_triggers = collections.defaultdict(list)   # position -> [(indices, values)]
        for (trigger, _), condition in zip(active, self.conditions):
            for (_, allowed), key in zip(condition.trigger, trigger):
                if self.position[key] in self.distributions:
                    self._open_triggers[self.position[key]].append((allowed, trigger[key]))
        # Drawn values render uniquely: their tables need no canonical indices (None).
        self._canon = [None if p in self.distributions else t.canonical_indices()
                       for p, t in enumerate(self.tables)]
        self._needs_canon = any(c is not None and c != list(range(len(c))) for c in self._canon)

    def _table(self, key):
        return self.tables[self.position[key]]

    def _layout(self):
        """Last grid key fastest (as hypnettorch's product); added keys are the top digits."""
        digits = [None] * len(self.keys)
        stride = 1
        order = list(range(self.n_grid - 1, -1, -1)) + list(range(self.n_grid, len(self.keys)))
        for p in order:
            room = self.draws if p in self.distributions else 0
            digits[p] = Digit(stride, len(self.tables[p].values) + room)
            stride *= digits[p].radix
        return digits

    def _compile(self, trigger, action_indices):
        matching = []
        for key, trigger_values in trigger.items():
            table = self._table(key)
            # Equality as hypnettorch's ``value in trigger_list`` (so 1 matches True there too).
            allowed = {i for i, v in enumerate(table.values)
                       if v is not ValueTable.ABSENT and _contains(trigger_values, v)}
            matching.append((self.digits[self.position[key]], allowed))
        action_digits = [self.digits[self.position[k]] for k in action_indices]
        choices = list(itertools.product(*action_indices.values()))
        return Condition(matching, action_digits, choices)

    def _initial_product(self):
        codes = [0]
        for p in range(self.n_grid):
            s = self.digits[p].stride
            steps = [i * s for i in range(self.grid_sizes[p])]
            codes = [c + step for c in codes for step in steps]
        return codes

    def _enforce(self, codes):
        for cond in self.conditions:
            codes = cond.apply(codes)
        return codes

    def _dedup_key(self, code):
        if not self._needs_canon:
            return code
        return sum((d.of(code) if c is None else c[d.of(code)]) * d.stride
                   for c, d in zip(self._canon, self.digits))

    def dedup(self, codes):
        """Remove configurations that render to the same command, keeping the first."""
        if not self._needs_canon:
            return list(dict.fromkeys(codes))
        seen, out = set(), []
        for c in codes:
            key = self._dedup_key(c)
            if key not in seen:
                seen.add(key)
                out.append(c)
        return out

    def expand(self):
        """All configurations: product, conditions in order, duplicates removed."""
        codes = self._enforce(self._initial_product())
        self.after_conditions = len(codes)
        codes = self.dedup(codes)
        self.unique = len(codes)
        return codes

    def size_of_product(self):
        """How many grid points the lists make (None when the grid has distributions)."""
        return None if self.distributions else _product(self.grid_sizes)

    def sample(self, n, rng, points=None):
        """``n`` distinct configurations drawn without building the product (fewer if the
        space is smaller). ``points`` (default: RandomPoints(rng)) gives each draw a
        coordinate per grid entry: an index into a list, a number in [0, 1) for a
        distribution, whose value is then drawn. Conditions apply to each drawn point as to a
        grid point; of the configurations they make, one is taken at random."""
        if self.distributions and draw_budget(n) > self.draws:
            raise ValueError("GridSpace(..., draws=%d) has room for fewer draws than %d "
                             "configurations may need (draws=draw_budget(%d))" % (
                                 self.draws, n, n))
        if points is None:
            points = RandomPoints(rng)
            size = self.size_of_product()
            if size is not None and size <= max(4 * n, 10000):  # small: exact, cheap to build
                codes = self.expand()
                rng.shuffle(codes)
                return codes[:n]
        sizes = [0 if p in self.distributions else self.grid_sizes[p] for p in range(self.n_grid)]
        pool = collections.OrderedDict()
        attempts = 0
        while len(pool) < n and attempts < draw_budget(n):
            attempts += 1
            point = sum(self._index_of(p, c) * self.digits[p].stride
                        for p, c in enumerate(points.point(sizes)))
            expanded = self._enforce([point])
            pick = expanded[rng.randrange(len(expanded))] if len(expanded) > 1 else expanded[0]
            pool.setdefault(self._dedup_key(pick), pick)
        return list(pool.values())

    def _index_of(self, p, coordinate):
        """A list entry's coordinate is its index; a distribution's is the number it maps to
        a value, whose index in the table of drawn values is taken (added if new)."""
        if p not in self.distributions:
            return coordinate
        table = self.tables[p]
        known = len(table.values)
        value = self.distributions[p].value(coordinate)
        index = table.index_of(value)
        if index == known:  # a new value: does a trigger name it (by equality)?
            for allowed, trigger_values in self._open_triggers.get(p, ()):
                if _contains(trigger_values, value):
                    allowed.add(index)
        return index

    def indices(self, code):
        return [d.of(code) for d in self.digits]

    def as_dict(self, code):
        """The configuration as ``{key: value}`` (keys absent from it left out)."""
        out = {}
        for key, table, i in zip(self.keys, self.tables, self.indices(code)):
            if table.values[i] is not ValueTable.ABSENT:
                out[key] = table.values[i]
        return out

    def arguments(self, code):
        """The command-line arguments for a configuration (without the output folder)."""
        tokens = (t.tokens[i] for t, i in zip(self.tables, self.indices(code)))
        return [tok for tok in tokens if tok is not None]


def draw_budget(n):
    """How many draws may go into finding ``n`` distinct configurations."""
    return 50 * n + 1000


def _product(numbers):
    total = 1
    for n in numbers:
        total *= n
    return total


def _contains(values, value):
    try:
        return value in values
    except Exception:  # an exotic __eq__ in user values: treat as no match
        return False


def expand_configs(grid, conditions=(), warn=warn):
    """Convenience for scripts and tests: the full search as a list of ``{key: value}`` dicts."""
    space = GridSpace(grid, list(conditions), warn=warn)
    return [space.as_dict(c) for c in space.expand()]


def plural(n, word):
    return "%d %s%s" % (n, word, "" if n == 1 else "s")


def exit_text(code):
    return "no exit status" if code is None else "exit %s" % code


def describe_plan(space, configs, sampler):
    """``N commands (G grid points, D duplicates removed, C conditions skipped)``: how the
    grid became the commands (duplicate removal and skipped conditions are never silent)."""
    size = space.size_of_product()
    parts = [plural(size, "grid point") if size is not None else "lists of %d combination(s) "
             "and %s" % (_product(space.grid_sizes[p] for p in range(space.n_grid)
                                  if p not in space.distributions),
                         plural(len(space.distributions), "distribution"))]
    random_pick = sampler != "grid"
    if random_pick:
        parts[0] = "drawn %s from %s" % ("at random" if sampler == "random" else
                                         "quasi-randomly", parts[0])
    else:
        if space.after_conditions != space.size_of_product():
            parts.append("%d after conditions" % space.after_conditions)
        parts.append(plural(space.after_conditions - space.unique, "duplicate") + " removed")
    parts.append(plural(space.skipped_conditions, "condition") + " skipped")
    if not random_pick and len(configs) < space.unique:
        parts.append("the first %d of %d, --num_searches" % (len(configs), space.unique))
    return "%s (%s)" % (plural(len(configs), "command"), ", ".join(parts))


def plan_configs(space, num_searches, sampler, deterministic, seed):
    """The configurations to run, in run order: the grid's product (``sampler`` "grid"), or
    ``num_searches`` distinct draws ("random", "quasirandom"); draws depend only on ``seed``."""
    rng = random.Random(seed)
    if sampler == "random":
        return space.sample(num_searches, rng)
    if sampler == "quasirandom":
        return space.sample(num_searches, rng, QuasiRandomPoints(space.n_grid, rng))
    configs = space.expand()
    if not deterministic:
        rng.shuffle(configs)
    if num_searches is not None and 0 <= num_searches < len(configs):
        configs = configs[:num_searches]
    return configs


# ----------------------------------------------------------------------------------------------
# Sampling: distributions in the grid, random and quasi-random points
# ----------------------------------------------------------------------------------------------
#
# A config may give a grid entry as a distribution instead of a list (``from hpsearch import
# uniform, loguniform, randint, choice``; hpsearch is importable under that name while it runs).
# A sampler draws points: per grid entry an index into its list, or a number u in [0, 1) that
# the distribution maps to a value (the inverse of its CDF), so random and quasi-random draws
# share one path through GridSpace.sample. Distributions are data; drawing is the sampler's job.


class Distribution(object):
    """A grid entry to draw from: ``value(u)`` maps u in [0, 1) to a value."""

    __slots__ = ("low", "high")
    name = ""

    def __init__(self, low, high):
        for bound in (low, high):
            if not isinstance(bound, (int, float)) or isinstance(bound, bool) \
                    or not math.isfinite(bound):
                raise ValueError("%s(%r, %r): the bounds must be finite numbers"
                                 % (self.name, low, high))
        if not low < high:
            raise ValueError("%s(%r, %r): low must be below high" % (self.name, low, high))
        self.low, self.high = low, high

    def __repr__(self):
        return "%s(%r, %r)" % (self.name, self.low, self.high)


class Uniform(Distribution):
    """Floats spread evenly over [low, high]."""

    name = "uniform"

    def value(self, u):
        # (Written so that even the widest float range cannot overflow.)
        return min(max((1.0 - u) * self.low + u * self.high, self.low), self.high)


class LogUniform(Distribution):
    """Floats in [low, high] whose logarithm is spread evenly (learning rates, weight decay):
    as many between 1e-5 and 1e-4 as between 1e-2 and 1e-1."""

    name = "loguniform"

    def __init__(self, low, high):
        Distribution.__init__(self, low, high)
        if low <= 0:
            raise ValueError("loguniform(%r, %r): low must be above 0" % (low, high))

    def value(self, u):
        x = math.exp(math.log(self.low) + u * (math.log(self.high) - math.log(self.low)))
        return min(max(x, self.low), self.high)  # exp(log(low)) may miss low by a rounding


class RandInt(Distribution):
    """Integers from low to high, both included, each equally likely."""

    name = "randint"

    def __init__(self, low, high):
        if not all(isinstance(b, int) and not isinstance(b, bool) for b in (low, high)):
            raise ValueError("randint(%r, %r): the bounds must be integers" % (low, high))
        if low > high:
            raise ValueError("randint(%r, %r): low must not be above high" % (low, high))
        self.low, self.high = low, high

    def value(self, u):
        return self.low + min(int(u * (self.high - self.low + 1)), self.high - self.low)


def uniform(low, high):
    """Grid entry: floats in [low, high], evenly."""
    return Uniform(low, high)


def loguniform(low, high):
    """Grid entry: floats in [low, high], evenly on a log scale (0 < low)."""
    return LogUniform(low, high)


def randint(low, high):
    """Grid entry: integers from low to high, both included."""
    return RandInt(low, high)


def choice(values):
    """Grid entry: one of ``values``, each equally likely (a list, as any grid entry)."""
    values = list(values)
    if not values:
        raise ValueError("choice(): give at least one value")
    return values


class RandomPoints(object):
    """Independent random draws from Python's seeded generator: per entry ``randrange(size)``
    for a list (as hpsearch always drew), ``random()`` for a distribution."""

    def __init__(self, rng):
        self.rng = rng

    def point(self, sizes):
        """Coordinates for entries of these sizes (0: a distribution)."""
        return [self.rng.randrange(size) if size else self.rng.random() for size in sizes]


class QuasiRandomPoints(object):
    """Points of a scrambled Halton sequence: a list of n values is split evenly along its
    coordinate (index = floor(u * n)), a distribution maps u to its value."""

    def __init__(self, dimensions, rng):
        self.sequence = ScrambledHalton(dimensions, rng)

    def point(self, sizes):
        return [min(int(u * size), size - 1) if size else u
                for u, size in zip(self.sequence.next(), sizes)]


class ScrambledHalton(object):
    """Halton's low-discrepancy sequence in ``d`` dimensions: coordinate j of point i is i's
    digits in the j-th prime base, mirrored behind the radix point. Scrambled as Owen does
    it: each digit goes through a permutation of the base's digits that depends on the
    digits before it (a random linear one, a*digit + c mod base, chosen by hashing the
    digits so far with a seed per dimension from ``rng``, so from --random_seed). This keeps
    Halton's even spread (every interval of b^-k holds its share of points) while placing the
    points at random inside their intervals, and removes the correlation between dimensions
    that plain Halton shows for small n. ``next()`` gives the next point; ``fast_forward(n)``
    skips n."""

    STRATIFIED_BITS = 30   # digits stratified this deep; below that, a hashed uniform fill

    def __init__(self, d, rng):
        self.bases = first_primes(d)
        self.seeds = [rng.getrandbits(64) for _ in self.bases]
        self.places = [int(math.ceil(self.STRATIFIED_BITS / math.log(b, 2)))
                       for b in self.bases]
        self.index = 0

    def next(self):
        i, self.index = self.index, self.index + 1
        return [self._scrambled_inverse(i, b, seed, places)
                for b, seed, places in zip(self.bases, self.seeds, self.places)]

    def fast_forward(self, n):
        self.index += n

    @staticmethod
    def _scrambled_inverse(i, base, seed, places):
        x, scale, prefix = 0.0, 1.0 / base, 1
        for _ in range(places):  # every place, leading zeros too: they are scrambled as well
            i, digit = divmod(i, base)
            h = _mix64(seed ^ prefix)
            a = 1 + h % (base - 1) if base > 2 else 1
            x += ((a * digit + (h >> 32) % base) % base) * scale
            prefix = prefix * base + digit
            scale /= base
        x += scale * base * (_mix64(seed ^ prefix ^ 0x5BD1E995) / 2.0 ** 64)
        return min(x, 1.0 - 2.0 ** -53)


def _mix64(x):
    """SplitMix64's finaliser: 64 well-mixed bits from an integer."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def first_primes(n):
    primes = []
    candidate = 2
    while len(primes) < n:
        if all(candidate % p for p in primes if p * p <= candidate):
            primes.append(candidate)
        candidate += 1
    return primes


SAMPLERS = ("grid", "random", "quasirandom")


# ----------------------------------------------------------------------------------------------
# Runs and their commands
# ----------------------------------------------------------------------------------------------

PENDING, RUNNING, FINISHED, UNFINISHED, FAILED, KILLED, STOPPED = (
    "pending", "running", "finished", "unfinished", "failed", "killed", "stopped")
# STOPPED: ended by early stopping; like FINISHED, never run again (retry, resume).
ENDED_STATES = (FINISHED, STOPPED, UNFINISHED, FAILED, KILLED)
DONE_STATES = (FINISHED, STOPPED)
# Journal only: a cluster submission under way (written before the submit command runs).
SUBMITTING = "submitting"
JOURNAL_STATES = (SUBMITTING, RUNNING) + ENDED_STATES


class Run(object):
    """One configuration of the search and what became of it.

    ``argv`` is executed as it is, without a shell: each argument reaches the script verbatim.
    """

    __slots__ = ("index", "name", "args", "argv", "out_dir", "state", "exit_code", "reason",
                 "summary", "started", "ended", "attempt", "process", "job_id", "killed",
                 "task_log", "early_stopped")

    def __init__(self, index, name, args, argv, out_dir):
        self.index = index        # 0-based position in the run order
        self.name = name          # folder name, sim_<stamp>_<k>
        self.args = args          # {key: value} of the configuration
        self.argv = argv
        self.out_dir = out_dir
        self.state = PENDING
        self.exit_code = None
        self.reason = ""
        self.summary = None
        self.started = None
        self.ended = None
        self.attempt = 1
        self.process = None
        self.job_id = None        # the process id locally, the scheduler's job id on a cluster
        self.killed = False
        self.task_log = None      # where the scheduler logs the run's job array task
        self.early_stopped = False  # ended by early stopping (state STOPPED)

    def shell_command(self):
        """The command as one line a POSIX shell runs identically."""
        return " ".join(shlex.quote(a) for a in self.argv)


def command_prefix(python, script_name):
    return [python] + shlex.split(script_name)


def build_argv(prefix, out_arg, out_dir, arguments):
    return prefix + ["--%s=%s" % (out_arg, out_dir)] + arguments


def check_interpreter(python, run_cwd, origin):
    """Local runs: ``python`` must be a program they can start (a path is taken from
    ``run_cwd``, as the runs start there; a bare name is looked up on PATH). ``origin`` names
    where the value came from, for the message."""
    if os.path.dirname(python):
        path = os.path.join(run_cwd, python)
        found = os.path.isfile(path) and os.access(path, os.X_OK)
    else:
        found = shutil.which(python) is not None
    if not found:
        raise UsageError("%s %s was not found (looked up from the runs' folder %s); give the "
                         "interpreter that runs the training script with --python=PATH"
                         % (origin, python, run_cwd))


# ----------------------------------------------------------------------------------------------
# Summaries and the results table
# ----------------------------------------------------------------------------------------------


def parse_summary_value(text):
    """``'0.5'`` -> 0.5, ``'-1'`` -> -1, ``'1e-05'`` -> 1e-05, ``'nan'`` -> nan, several numbers ->
    a list of numbers, anything else stays text."""
    parts = text.split()
    numbers = []
    for p in parts:
        try:
            numbers.append(int(p))
        except ValueError:
            try:
                numbers.append(float(p))
            except ValueError:
                return text.strip()
    if len(numbers) == 1:
        return numbers[0]
    return numbers if numbers else ""


def read_summary_file(path, keywords):
    """Parse ``keyword value [value ...]`` lines by keyword (order and other lines don't matter).

    Raises OSError if the file cannot be read.
    """
    wanted = set(keywords)
    summary = {}
    with open(path, "r", encoding="utf-8", errors="replace") as f:
        for line in f:
            parts = line.strip().split(None, 1)
            if parts and parts[0] in wanted:
                summary[parts[0]] = parse_summary_value(parts[1] if len(parts) > 1 else "")
    return summary


def unwrap(value):
    """Custom parsers return hypnettorch style ``[value]`` lists; take the value out."""
    if isinstance(value, (list, tuple)) and len(value) == 1:
        return value[0]
    return value


def is_finished(summary):
    """True when the summary says ``finished 1`` (``1.0`` and ``'1'`` count too)."""
    if not summary:
        return False
    try:
        return float(unwrap(summary.get("finished"))) == 1
    except (TypeError, ValueError, OverflowError):
        return False


def collect_summary(config, run, out_dir=None):
    """The run's summary dict, or None when there is none (missing, unreadable, parser error).
    ``out_dir``: where the run's folder is, when no longer at ``run.out_dir``."""
    out_dir = out_dir or run.out_dir
    try:
        if config.summary_parser is not None:
            summary = config.summary_parser(out_dir, run.index)
            if not isinstance(summary, dict):
                return None
            return {k: unwrap(v) for k, v in summary.items()}
        return read_summary_file(os.path.join(out_dir, config.summary_filename),
                                 config.summary_keywords)
    except Exception:  # the script's output is not ours to trust: no summary, run recorded
        return None


def why_unfinished(config, run):
    """Why a run that exited 0 is not finished: which summary was looked for, and what was
    found instead (the usual cause is a misnamed _SUMMARY_FILENAME)."""
    if not os.path.isdir(run.out_dir):
        return "the script made no run folder %s" % run.out_dir
    if config.summary_parser is not None:
        return "_SUMMARY_PARSER_HANDLE gave no 'finished 1' for %s" % run.out_dir
    path = os.path.join(run.out_dir, config.summary_filename)
    if not os.path.isfile(path):
        found = sorted(n for n in _listdir(run.out_dir) if not n.startswith(("job_", "hpsearch_")))
        holds = ", ".join(found[:5]) + (", ..." if len(found) > 5 else "") if found else "nothing"
        return "no %s in %s (it holds: %s)" % (config.summary_filename, run.out_dir, holds)
    finished = (run.summary or {}).get("finished")
    if finished is None:
        return "%s has no 'finished' line" % path
    return "%s says finished %s, not 1" % (path, format_cell(finished))


def last_line_of(path, width=160):
    """The last non-empty line of a text file (from its last 4 KiB), shortened to ``width``;
    '' if there is none."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            tail = f.read().decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.strip() for line in tail.splitlines() if line.strip()]
    line = one_line(lines[-1]) if lines else ""
    return line if len(line) <= width else line[:width - 3] + "..."


def format_cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value).replace("\0", "\ufffd")  # a NUL makes the CSV unreadable to csv


def sort_number(text):
    """Sort key for a CSV cell: numbers by value; text, empty and nan at the end."""
    try:
        x = float(text)
    except (TypeError, ValueError, OverflowError):
        return None
    return None if math.isnan(x) else x


STATE_COLUMN = "hpsearch_state"
EXIT_COLUMN = "hpsearch_exit_code"
REASON_COLUMN = "hpsearch_reason"
# Best first: finished runs, then those that did not finish. States of postprocessing that no
# launcher writes (running, never started, ...) come after all of these.
STATE_RANK = {FINISHED: 0, STOPPED: 1, UNFINISHED: 2, FAILED: 3, KILLED: 4}


def rank_key(state, value, ascending):
    """Sort key of a run: its state's rank, then the performance value (best first; a run
    without a number in it last within its state)."""
    number = sort_number(format_cell(value))
    return (STATE_RANK.get(state, len(STATE_RANK)), number is None,
            0 if number is None else (number if ascending else -number))


class ResultsTable(object):
    """``search_results.csv``: ``;``-separated, a row appended as each run ends, sorted at the end
    (finished runs first, by the performance key).

    Columns: every summary keyword (in ``_SUMMARY_KEYWORDS`` order), every argument, the output
    folder (relative to the search folder, so the table stays right when the folder is copied
    or moved), the run's state, exit code and the reason it did not finish.
    """

    def __init__(self, path, arg_keys, keywords, out_arg):
        self.path = path
        self.columns = list(keywords) + [k for k in arg_keys if k not in keywords]
        self.columns += [out_arg, STATE_COLUMN, EXIT_COLUMN, REASON_COLUMN]
        self.out_arg = out_arg

    def create(self, kept_runs=()):
        """Start the file: the header and a row for each run kept from earlier (resume)."""
        atomic_write_text(self.path, self._line(self.columns)
                          + "".join(self._line(self._cells(r)) for r in kept_runs))

    def _line(self, cells):
        buf = io.StringIO()
        csv.writer(buf, delimiter=";", lineterminator="\n").writerow(cells)
        return buf.getvalue()

    def _cells(self, run):
        row = dict(run.args)
        row.update(run.summary or {})
        row[self.out_arg] = relative_to(os.path.dirname(self.path), run.out_dir)
        row[STATE_COLUMN] = run.state
        row[EXIT_COLUMN] = run.exit_code
        row[REASON_COLUMN] = run.reason if run.state != FINISHED else ""
        return [format_cell(row.get(c)) for c in self.columns]

    def append(self, run):
        append_line(self.path, self._line(self._cells(run)))

    def sort(self, key, ascending):
        """Rewrite the file best first (see rank_key)."""
        with open(self.path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter=";"))
        if not rows:
            return
        header, body = rows[0], rows[1:]
        if key not in header or STATE_COLUMN not in header:
            return
        cell = {name: header.index(name) for name in (key, STATE_COLUMN)}

        def row_key(row):
            value, state = (row[cell[c]] if cell[c] < len(row) else "" for c in (key,
                                                                                    STATE_COLUMN))
            return rank_key(state, value, ascending)
        body.sort(key=row_key)
        buf = io.StringIO()
        writer = csv.writer(buf, delimiter=";", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(body)
        atomic_write_text(self.path, buf.getvalue())


# ----------------------------------------------------------------------------------------------
# The search folder
# ----------------------------------------------------------------------------------------------

RECORD_FILE = "search_record.json"
RECORD_FORMAT = "hpsearch-record-2"
JOURNAL_FILE = "run_journal.jsonl"
RESULTS_FILE = "search_results.csv"
LOG_FILE = "hpsearch.log"
JOBS_DIR = "jobs"
TRASH_DIR = "TO_BE_DELETED"   # where hpsearch_postprocessing.py moves runs it rejects
LOCK_FILE = ".hpsearch.lock"
# A run's files in jobs/ while it goes, and their names in its folder afterwards.
JOB_FILES = collections.OrderedDict([
    (".sh", "hpsearch_command.sh"), (".out", "job_<run>.out"), (".err", "job_<run>.err"),
    (".scheduler.log", "hpsearch_scheduler.log"), (".exit", "hpsearch_exit_status"),
    (".progress.jsonl", "hpsearch_progress.jsonl")])
PER_ATTEMPT_FILES = (".scheduler.log", ".exit")
# Errors that say the disk under the search folder fails (not that one run's folder does).
LAUNCHER_DISK_ERRORS = (errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EIO)
# Files hpsearch writes whole into the search folder (their temporary files are ours).
WHOLE_FILES = (RECORD_FILE, RESULTS_FILE, "commands.sh", "commands_wo_dirs.sh")


def create_search_dir(out_dir, force_out_dir, allow_existing):
    """Make the search folder and return ``(path, stamp)``. A new ``search_<time>`` folder is
    created with ``mkdir``, which is atomic, so two searches never share one."""
    moment = datetime.datetime.now()
    stamp = moment.strftime("%Y%m%d%H%M%S")
    if force_out_dir:
        if os.path.exists(out_dir) and not allow_existing:
            raise UsageError("--out_dir %s exists; choose a new folder, or add "
                             "--dont_force_new_dir to write into it" % out_dir)
        os.makedirs(out_dir, exist_ok=True)
        return out_dir, _unused_stamp(out_dir, stamp)
    os.makedirs(out_dir, exist_ok=True)
    base = os.path.join(out_dir, "search_" + moment.strftime("%Y-%m-%d_%H-%M-%S"))
    for n in itertools.count(1):
        path = base if n == 1 else "%s_%d" % (base, n)
        try:
            os.mkdir(path)
        except FileExistsError:
            continue
        return path, stamp + ("" if n == 1 else "_%d" % n)


def _unused_stamp(folder, stamp):
    """``stamp``, or ``stamp_2``, ... so no run folder name of an earlier search is reused."""
    taken = {name[len("sim_"):].rsplit("_", 1)[0] for name in os.listdir(folder)
             if name.startswith("sim_")}
    candidate = stamp
    for n in itertools.count(2):
        if candidate not in taken:
            return candidate
        candidate = "%s_%d" % (stamp, n)


def journal_entry(obj):
    """``obj`` if it is a journal entry hpsearch can act on, else None: a dict naming a run
    and a known state, with an integer attempt and exit code where given."""
    if not isinstance(obj, dict) or not isinstance(obj.get("run"), str) \
            or obj.get("state") not in JOURNAL_STATES:
        return None
    attempt, code = obj.get("attempt", 1), obj.get("exit_code")
    if not _is_int(attempt) or attempt < 1 or not (code is None or _is_int(code)):
        return None
    if not isinstance(obj.get("job_id"), (type(None), int, str)) or _is_int(obj.get(
            "job_start"), none_ok=True) is False:
        return None
    return obj


def _is_int(value, none_ok=False):
    if value is None and none_ok:
        return True
    return isinstance(value, int) and not isinstance(value, bool)


class SearchFolder(object):
    """Where a search keeps everything: the record of runs, the journal, logs, results.

    A search folder is self-contained: the record and the journal name runs and their folders
    relative to it, so a copied or moved folder is read and resumed where it is now, and
    never touches the folder it was copied from. ``identity()`` tells this folder from its
    copies (a copy is a new folder; a move or another spelling of the path is the same).
    """

    def __init__(self, path):
        self.path = path
        self.record = os.path.join(path, RECORD_FILE)
        self.journal = os.path.join(path, JOURNAL_FILE)
        self.results = os.path.join(path, RESULTS_FILE)
        self.jobs = os.path.join(path, JOBS_DIR)
        self.search_id = ""   # from the record: the same in every copy of the folder
        self._lock = None

    def file(self, name):
        return os.path.join(self.path, name)

    def identity(self):
        """``<search id>.<inode>``: which search, and which copy of its folder. The inode
        is the same from every machine that mounts the folder and for every path to it."""
        return "%s.%d" % (self.search_id, os.stat(self.path).st_ino)

    def relative(self, path):
        return relative_to(self.path, path)

    def lock(self):
        """Hold the folder for this launcher's lifetime, so a second launcher (say a
        --resume while the search still runs) is refused. The kernel drops the lock when
        the process ends, however it ends; ``unlock`` also removes the file."""
        path = self.file(LOCK_FILE)
        while True:
            handle = open(path, "a+")
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                handle.seek(0)
                holder = handle.read().strip() or "?"
                handle.close()
                raise UsageError("%s is in use by another hpsearch launcher (pid and host: %s); "
                                 "let it finish or stop it first" % (self.path, holder))
            try:  # the launcher before us may have removed the file we locked: lock anew
                if os.fstat(handle.fileno()).st_ino == os.stat(path).st_ino:
                    break
            except OSError:
                pass
            handle.close()
        handle.seek(0)
        handle.truncate()
        handle.write("%d %s\n" % (os.getpid(), socket.gethostname()))
        handle.flush()
        self._lock = handle
        atexit.register(self.unlock)  # also when the launcher stops before its search runs

    def unlock(self):
        lock, self._lock = self._lock, None
        if lock is not None:
            try:
                os.remove(self.file(LOCK_FILE))
            except OSError:
                pass
            lock.close()  # closing the file releases the lock

    def find_run_dir(self, run):
        """Where the run's folder is now: in the search folder (which may have moved since),
        where the record says, or in TO_BE_DELETED. ``(path, in_trash)``; path None if gone."""
        name = os.path.basename(run.out_dir.rstrip(os.sep)) or run.name
        here = os.path.join(self.path, name)
        if os.path.isdir(here):
            return here, False
        if run.out_dir != here and os.path.isdir(run.out_dir):
            return run.out_dir, False
        trash = os.path.join(self.path, TRASH_DIR, name)
        if os.path.isdir(trash):
            return trash, True
        return None, False

    def job_file(self, run, suffix):
        """Files of a run kept here while it goes: ``<name>.sh``, ``.out``, ``.err``, ...
        A cluster job's exit status and the scheduler's log are one per attempt
        (``<name>.a<k>.exit``): a stale job of another attempt never writes this
        attempt's files (the scheduler opens its log even for a job that then refuses to
        start)."""
        if suffix in PER_ATTEMPT_FILES:
            return os.path.join(self.jobs, "%s.a%d%s" % (run.name, run.attempt, suffix))
        return os.path.join(self.jobs, run.name + suffix)

    def stop_path(self, run):
        """The file that ends a run sharing its job with others (its job script watches)."""
        return os.path.join(self.jobs, "%s.a%d.stop" % (run.name, run.attempt))

    def claim_stem(self, run):
        """Claims are ``<claim_stem><attempt>.claimed``."""
        return os.path.join(self.jobs, "%s.attempt" % run.name)

    def claim_path(self, run, attempt):
        return "%s%d.claimed" % (self.claim_stem(run), attempt)

    def call_off(self, run, attempt):
        """Make sure ``attempt`` of ``run`` never starts: True when it had not started.
        A cluster job claims its attempt (``mkdir``, atomic even on NFS) before it runs
        anything; whoever creates the claim first wins. The launcher's claim is a symbolic
        link (as atomic, and the job's ``mkdir`` fails on it too), so that a later resume
        can tell an attempt it called off from one whose job has started."""
        try:
            os.symlink("called-off-by-hpsearch", self.claim_path(run, attempt))
            return True
        except FileExistsError:
            return False

    def called_off(self, run, attempt):
        return os.path.islink(self.claim_path(run, attempt))

    def drop_claim(self, run):
        """The job of the run's attempt is over for good: its claim has done its work. (An
        attempt called off keeps its link: its job may still appear.)"""
        try:
            os.rmdir(self.claim_path(run, run.attempt))
        except OSError:
            pass

    def prepare(self):
        os.makedirs(self.jobs, exist_ok=True)
        for name in (RECORD_FILE, JOURNAL_FILE, RESULTS_FILE, LOG_FILE, "commands.sh",
                     "commands_wo_dirs.sh"):
            if os.path.exists(self.file(name)):  # --dont_force_new_dir: keep what was there
                move_aside(self.file(name))

    def write_plan(self, runs, config, args, arg_keys, prefix):
        """The record, and commands.sh / commands_wo_dirs.sh: shell scripts that run every
        command from the runs' folder, with the output folders inside this search folder
        wherever it is when they run."""
        q = shlex.quote
        run_cwd = os.path.abspath(args.run_cwd)

        def script(comment, first_lines, commands):
            return "".join(line + "\n" for line in [
                "#!/bin/sh", "# %d command(s), in the order hpsearch runs them%s."
                % (len(runs), comment)] + first_lines + ["cd %s || exit" % q(run_cwd)]
                + commands)

        def arguments(run):
            return "".join(" " + q(a) for a in run.argv[len(prefix) + 1:])

        head = " ".join(q(a) for a in prefix)
        atomic_write_text(self.file("commands.sh"), script(
            "; output folders in the folder of this file",
            ['search_dir=$(cd "$(dirname "$0")" && pwd) || exit'],
            ["%s %s\"$search_dir\"%s%s" % (head, q("--%s=" % config.out_arg), q("/" + r.name),
                                           arguments(r)) for r in runs]))
        atomic_write_text(self.file("commands_wo_dirs.sh"), script(
            "; output folders left out (see commands.sh)", [],
            [head + arguments(r) for r in runs]))
        self.search_id = uuid.uuid4().hex[:12]
        record = {
            "format": RECORD_FORMAT,
            "hpsearch_version": __version__,
            "search_id": self.search_id,
            "created": datetime.datetime.now().isoformat(),
            "argv": [sys.argv[0]] + args.given_argv,
            "config_file": config.source,
            "run_cwd": run_cwd,
            "out_arg": config.out_arg,
            "summary_filename": config.summary_filename,
            "summary_keywords": config.summary_keywords,
            "performance_key": config.performance_key,
            "performance_sort_asc": config.performance_sort_asc,
            "arg_keys": list(arg_keys),
            "scheduler": args.scheduler if args.run_cluster else None,
            "early_stopping": {name: getattr(args, name) for name in EARLY_STOPPING_FLAGS}
            if args.early_stopping != "none" else None,
            "command_prefix": prefix,
            "runs": [{"index": r.index, "name": r.name, "out_dir": r.name,
                      "args": json_safe(r.args), "arguments": r.argv[len(prefix) + 1:]}
                     for r in runs],
        }
        atomic_write_text(self.record, json.dumps(record, indent=1) + "\n")

    def log_state(self, run, state=None, **extra):
        """A journal line for ``run`` (in ``state``, by default the run's own)."""
        entry = {"run": run.name, "state": state or run.state, "time": round(time.time(), 3),
                 "attempt": run.attempt}
        if entry["state"] in ENDED_STATES:
            entry["exit_code"] = run.exit_code
            if run.reason:
                entry["reason"] = run.reason
        entry.update(extra)
        append_line(self.journal, json.dumps(entry))

    def keep_copy(self, path):
        """Copy a config file in; an earlier, different copy there is renamed first."""
        target = self.file(os.path.basename(path))
        if os.path.exists(target) and not _same_content(path, target):
            move_aside(target)
        shutil.copy2(path, target)

    def read_record(self, context="--resume"):
        """The search's record; UsageError (starting with ``context``) if it is missing,
        unreadable or of the wrong shape. Sets ``search_id``."""
        try:
            with open(self.record, "rb") as f:
                record = json.loads(f.read().decode("utf-8"))
        except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
            raise UsageError("%s %s: cannot read %s (%s); is this a search folder made by "
                             "hpsearch?" % (context, self.path, RECORD_FILE, exc))
        if not isinstance(record, dict) or not isinstance(record.get("runs"), list):
            raise UsageError("%s %s: %s has no list of runs" % (context, self.path, RECORD_FILE))
        # Records of hpsearch 1.0 have no search id; the time they were made stands in.
        self.search_id = str(record.get("search_id") or record.get("created") or "")
        return record

    def tidy(self):
        """Before a resume, mend what a crash or a user may have left half done: jobs/ is
        there again, the journal's last line is ended, temporary files are gone."""
        os.makedirs(self.jobs, exist_ok=True)
        self.end_cut_line()
        self.remove_temp_files()

    def end_cut_line(self):
        """A crash mid-write can leave the journal's last line without its newline: end it,
        so the next entry starts a line of its own."""
        try:
            with open(self.journal, "rb") as f:
                f.seek(0, os.SEEK_END)
                if f.tell() == 0:
                    return
                f.seek(-1, os.SEEK_END)
                if f.read(1) == b"\n":
                    return
        except OSError:
            return
        append_line(self.journal, "")

    def read_journal(self):
        """``{run name: [entries in order]}``. Lines that cannot be read (cut short by a
        crash, damaged, not UTF-8, of the wrong shape) are skipped with one warning."""
        entries = collections.defaultdict(list)
        skipped = 0
        try:
            with open(self.journal, "rb") as f:
                for raw in f:
                    try:
                        entry = journal_entry(json.loads(raw.decode("utf-8")))
                    except ValueError:
                        entry = None
                    if entry is not None:
                        entries[entry["run"]].append(entry)
                    elif raw.strip():
                        skipped += 1
        except OSError:
            pass
        if skipped:
            warn("%s: %d line(s) that cannot be read were skipped" % (self.journal, skipped))
        return entries

    def set_aside(self, run):
        """Rename what an attempt left (its folder, or its logs here) to ``..._attempt<k>`` so
        the next attempt starts clean; training scripts refuse an existing folder."""
        tag = "_attempt%d" % run.attempt
        if os.path.lexists(run.out_dir):
            _rename_free(run.out_dir, run.out_dir + tag)
        for suffix in JOB_FILES:
            src = self.job_file(run, suffix)
            if os.path.exists(src):
                _rename_free(src, os.path.join(self.jobs, run.name + tag + suffix))

    def recorded_exit_status(self, run):
        """The exit status the cluster job of the run's current attempt wrote when it ended,
        or None. (A job of hpsearch 1.0 wrote ``<name>.exit``, for whichever attempt.)"""
        for path in (self.job_file(run, ".exit"), os.path.join(self.jobs, run.name + ".exit")):
            try:
                with open(path, "rb") as f:
                    return int(f.read().strip())
            except (OSError, ValueError):
                continue
        return None

    def log_of(self, run, suffix):
        """Where a run's ``.out`` or ``.err`` is now: in its folder, or still in jobs/."""
        kept = os.path.join(run.out_dir, JOB_FILES[suffix].replace("<run>", run.name))
        return kept if os.path.exists(kept) else self.job_file(run, suffix)

    def keep_run_files(self, run):
        """Move a run's command and logs into its folder, if the script made one. Where that
        fails (a folder the script made read-only), they stay in jobs/ with a warning."""
        if not os.path.isdir(run.out_dir):
            return
        for suffix, name in JOB_FILES.items():
            src = self.job_file(run, suffix)
            dst = os.path.join(run.out_dir, name.replace("<run>", run.name))
            if not os.path.exists(src):
                continue
            try:
                if os.path.lexists(dst):
                    move_aside(dst)
                os.rename(src, dst)
            except OSError as exc:
                if exc.errno in LAUNCHER_DISK_ERRORS or not os.path.isdir(self.jobs):
                    raise  # the search's own disk is failing: the launcher stops
                warn("%s stays in %s: cannot move it into %s (%s)"
                     % (os.path.basename(src), self.jobs, run.out_dir, exc.strerror or exc))

    def remove_temp_files(self):
        """Temporary files of the launcher's whole-file writes cut short by a crash
        (``<file>.tmp<pid>``). A cluster job's ``<run>.a<k>.exit.tmp`` stays: its job may
        still be about to rename it."""
        candidates = [(self.path, n) for n in _listdir(self.path)
                      if n.split(TEMP_SUFFIX)[0] in WHOLE_FILES]
        candidates += [(self.jobs, n) for n in _listdir(self.jobs)]
        for folder, name in candidates:
            stem, sep, pid = name.rpartition(TEMP_SUFFIX)
            if sep and stem and pid.isdigit():
                try:
                    os.remove(os.path.join(folder, name))
                except OSError:
                    pass


def relative_to(folder, path):
    """``path`` relative to ``folder`` when it is inside it, else as it is."""
    rel = os.path.relpath(path, folder)
    return path if rel == os.pardir or rel.startswith(os.pardir + os.sep) else rel


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _listdir(path):
    try:
        return os.listdir(path)
    except OSError:
        return []


def _rename_free(src, dst):
    """Rename ``src`` to ``dst``, or to ``dst.2``, ``dst.3``, ... if that is taken."""
    target = dst
    for n in itertools.count(2):
        if not os.path.lexists(target):
            os.rename(src, target)
            return target
        target = "%s.%d" % (dst, n)


def runs_from_record(record, folder, run_class=None):
    """The record's planned runs, their folders in the search folder where it is now (which
    may have been copied or moved since). Reads hpsearch 1.0 records (absolute paths, full
    argv) too. UsageError naming the run when an entry is of the wrong shape."""
    run_class = run_class or Run
    out_arg = record.get("out_arg") or "out_dir"
    prefix = record.get("command_prefix")
    runs = []
    for i, entry in enumerate(record["runs"]):
        try:
            name, planned = entry["name"], entry["out_dir"]
            if "arguments" in entry:
                head, arguments = list(prefix), list(entry["arguments"])
            else:  # hpsearch 1.0: the argv holds the planned (absolute) output folder
                argv = list(entry["argv"])
                at = argv.index("--%s=%s" % (out_arg, planned))
                head, arguments = argv[:at], argv[at + 1:]
            folder_name = os.path.basename(planned.rstrip(os.sep))
            index = entry.get("index", i)
            args = entry.get("args") or {}
            texts = [name, folder_name] + head + arguments
            if not (isinstance(entry.get("arguments", entry.get("argv")), list)
                    and isinstance(prefix if "arguments" in entry else head, list)
                    and all(isinstance(t, str) and not argument_problem(t) for t in texts)
                    and _is_int(index) and isinstance(args, dict) and head
                    and all(_plain_name(n) for n in (name, folder_name))):
                raise TypeError
        except (KeyError, TypeError, ValueError, AttributeError):
            raise UsageError("%s: run %d of the record is malformed (it needs a 'name', an "
                             "'out_dir' and its command); restore the file from a copy"
                             % (folder.record, i))
        out_dir = os.path.join(folder.path, folder_name)
        runs.append(run_class(index, name, args, build_argv(head, out_arg, out_dir, arguments),
                              out_dir))
    return runs


def _plain_name(name):
    """A run's (folder) name: one path component that is no folder above or itself."""
    return bool(name) and os.sep not in name and name not in (os.curdir, os.pardir)


def planned_folder(record):
    """Where an hpsearch 1.0 record planned its run folders (absolute), or None."""
    runs = record.get("runs") or []
    if record.get("format") == RECORD_FORMAT or not runs or not isinstance(runs[0], dict):
        return None
    planned = runs[0].get("out_dir")
    return os.path.dirname(planned.rstrip(os.sep)) if isinstance(planned, str) else None


def json_safe(value):
    """Values as JSON can hold them; anything else as its ``repr``."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    return repr(value)


# ----------------------------------------------------------------------------------------------
# GPUs, read with nvidia-smi
# ----------------------------------------------------------------------------------------------

GPU_FIELDS = ("index", "uuid", "name", "memory.used", "memory.total", "utilization.gpu")


class GpuError(Exception):
    """nvidia-smi is missing or failed."""


class Gpu(object):
    """One GPU as nvidia-smi reports it. Numbers it cannot report (``[N/A]``) are None."""

    __slots__ = ("index", "uuid", "name", "memory_used", "memory_total", "utilization")

    def __init__(self, index, uuid, name, memory_used, memory_total, utilization):
        self.index = index
        self.uuid = uuid
        self.name = name
        self.memory_used = memory_used      # MiB
        self.memory_total = memory_total    # MiB
        self.utilization = utilization      # percent

    @property
    def memory_fraction(self):
        if self.memory_used is None or not self.memory_total:
            return None
        return self.memory_used / float(self.memory_total)

    @property
    def load(self):
        return None if self.utilization is None else self.utilization / 100.0


def _smi_number(text):
    try:
        return float(text)
    except ValueError:  # [N/A], [Not Supported], [Unknown Error], ...
        return None


def run_nvidia_smi(args, timeout=30):
    """Run nvidia-smi with ``args`` and return its stdout lines; GpuError if it cannot."""
    try:
        proc = subprocess.run(["nvidia-smi"] + args, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, timeout=timeout,
                              universal_newlines=True)
    except OSError:
        raise GpuError("nvidia-smi was not found on PATH (install the NVIDIA driver, or run "
                       "without GPUs: --visible_gpus=-1)")
    except subprocess.TimeoutExpired:
        raise GpuError("nvidia-smi did not answer within %d s" % timeout)
    if proc.returncode != 0:
        detail = (proc.stdout.strip() or proc.stderr.strip()).splitlines()
        raise GpuError("nvidia-smi failed (exit %d): %s" % (
            proc.returncode, detail[0] if detail else "no output"))
    return [line for line in proc.stdout.splitlines() if line.strip()]


def query_gpus():
    """All GPUs nvidia-smi sees, in its numbering."""
    lines = run_nvidia_smi(["--query-gpu=" + ",".join(GPU_FIELDS),
                            "--format=csv,noheader,nounits"])
    gpus = []
    for line in lines:
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != len(GPU_FIELDS):
            raise GpuError("cannot read nvidia-smi's line %r" % line)
        index = _smi_number(cells[0])
        if index is None:
            raise GpuError("cannot read nvidia-smi's line %r" % line)
        gpus.append(Gpu(int(index), cells[1], cells[2], _smi_number(cells[3]),
                        _smi_number(cells[4]), _smi_number(cells[5])))
    return gpus


def query_compute_pids():
    """``{gpu_uuid: {pid, ...}}`` of processes holding memory on each GPU."""
    lines = run_nvidia_smi(["--query-compute-apps=gpu_uuid,pid,used_memory",
                            "--format=csv,noheader,nounits"])
    apps = collections.defaultdict(set)
    for line in lines:
        cells = [c.strip() for c in line.split(",")]
        if len(cells) < 2 or "No running" in line:
            continue
        pid, mem = _smi_number(cells[1]), _smi_number(cells[2]) if len(cells) > 2 else None
        if pid is not None and (mem is None or mem > 0):
            apps[cells[0]].add(int(pid))
    return apps


def parse_gpu_list(text):
    """``--visible_gpus``: '' -> all (None), '-1' -> no GPUs ([]), '0,1' -> [0, 1]."""
    text = text.strip().strip('"').strip()
    if text == "":
        return None
    if text == "-1":
        return []
    try:
        ids = [int(t) for t in text.split(",") if t.strip() != ""]
    except ValueError:
        raise UsageError("--visible_gpus=%s: give GPU indices like 0,1,3 (as nvidia-smi numbers "
                         "them), nothing for all GPUs, or -1 for none" % text)
    if any(i < 0 for i in ids):
        raise UsageError("--visible_gpus=%s: -1 stands alone (no GPUs)" % text)
    return ids


# ----------------------------------------------------------------------------------------------
# Backends: where runs execute (one interface, one class per place)
# ----------------------------------------------------------------------------------------------


class Backend(object):
    """Starts runs and reports when they end. The search loop asks:

    ``slot()``          a token if another run may start now, else None;
    ``start(run, tok)`` starts it (False: it could not, and ``wait`` reports it ended);
    ``wait(timeout)``   returns the runs that ended (their ``exit_code``/``reason`` set),
                        waiting at most ``timeout`` seconds;
    ``recheck_in()``    seconds until ``slot()`` may change without a run ending (None: never);
    ``running()``       how many runs it has going; ``stop()`` ends every run still going;
    ``abandon()``       the launcher cannot go on: end what must not run unwatched;
    ``going()``         the runs under way; ``end_run(run, why)`` ends one of them now;
    ``attach(run, id)`` (clusters) follows a job an earlier launcher submitted.

    A backend writes a run's start into the journal itself, as soon as it knows how to find
    the run again (a process id, a job id, or, before a submission, the job's name).
    """

    started_word = "started"   # how the log says that a run began

    def describe(self):
        return ""

    def why_waiting(self):
        """Why no run can start although runs wait: ``[(kind, text, short text)]``; [] when
        only the backend's own limit (slots, --num_jobs) holds them."""
        return []

    def going(self):
        """The runs under way (started or submitted)."""
        raise NotImplementedError

    def end_run(self, run, reason):
        """End one run early (early stopping): it is reported by ``wait`` as it ends."""
        raise NotImplementedError

    def abandon(self):
        """What the user must know: which runs were stopped or left going."""
        count = self.running()
        self.stop(grace=5.0)
        return "%d run(s) stopped" % count

    def close(self):
        """Release what the backend holds (after the search, however it ended)."""

    def flush(self):
        """Hand over runs started since the last call (a job array submits them together)."""

    def finish_up(self):
        """Last chores once the search loop is done."""


class CpuSlots(object):
    """Up to ``n`` runs at once, no GPU assignment."""

    def __init__(self, n):
        self.n = n
        self.busy = 0

    def acquire(self):
        if self.busy < self.n:
            self.busy += 1
            return {}
        return None

    def started(self, env, pid):
        pass

    def release(self, env):
        self.busy -= 1

    def recheck_in(self):
        return None

    def why_waiting(self):
        return []  # all N slots busy: only a run's end frees one, as --local_jobs says

    def describe(self):
        return "%d run%s at a time, no GPU assignment" % (self.n, "" if self.n == 1 else "s")


class GpuSlots(object):
    """Packs runs onto GPUs by free memory, load and our own count per GPU.

    A GPU takes a run when fewer than ``per_gpu`` of ours are on it, its memory use and load are
    within the limits, and it is not holding after its last start: a hold lasts ``startup``
    seconds or until the started process shows up in nvidia-smi holding memory. nvidia-smi is
    asked at most every ``poll`` seconds, and only while a run waits for a GPU.
    """

    def __init__(self, gpus, per_gpu, max_memory, max_load, startup, poll, query=query_gpus,
                 query_apps=query_compute_pids):
        self.gpus = {g.index: g for g in gpus}
        self.order = [g.index for g in gpus]
        self.per_gpu = per_gpu
        self.max_memory = max_memory
        self.max_load = max_load
        self.startup = startup
        self.poll = poll
        self.query = query
        self.query_apps = query_apps
        self.ours = dict.fromkeys(self.order, 0)
        self.hold = {}           # gpu index -> (hold end time, pid we started)
        self.snapshot_time = now()
        self.outage = False      # nvidia-smi failing: warned once, until it answers again

    def _refresh(self):
        if now() - self.snapshot_time < self.poll:
            return
        self.snapshot_time = now()
        try:
            seen = {g.index: g for g in self.query()}
            if self.hold:
                self._release_holds_of_started_processes()
        except GpuError as exc:  # a driver hiccup mid-search: keep the last view, ask later
            if not self.outage:
                warn("%s; asking again every %gs" % (exc, self.poll))
                self.outage = True
            return
        if self.outage:
            warn("nvidia-smi answers again")
            self.outage = False
        for i in self.order:
            if i in seen:
                self.gpus[i] = seen[i]

    def _release_holds_of_started_processes(self):
        apps = self.query_apps()
        for i, (until, pid) in list(self.hold.items()):
            pids = apps.get(self.gpus[i].uuid, ())
            if any(_in_session(p, pid) for p in pids):
                del self.hold[i]

    def _hold_left(self, i):
        """Seconds GPU i still holds after its last start (0: no hold)."""
        h = self.hold.get(i)
        if h is not None and now() >= h[0]:
            del self.hold[i]
            h = None
        return 0 if h is None else h[0] - now()

    def _blocker(self, i):
        """Why GPU i cannot take a run now, as ``(kind, text, short text)``; None if it can."""
        gpu = self.gpus[i]
        if self.ours[i] >= self.per_gpu:
            return ("full", "GPU %d: %d run(s), --max_num_jobs_per_gpu=%d"
                    % (i, self.ours[i], self.per_gpu), "GPU%d full" % i)
        held = self._hold_left(i)
        if held > 0:
            return ("hold", "GPU %d: start-up hold, %d s left (--sim_startup_time)"
                    % (i, math.ceil(held)), "GPU%d hold %ds" % (i, math.ceil(held)))
        over = [(name, flag, value, limit) for name, flag, value, limit in (
            ("memory", "--allowed_memory", gpu.memory_fraction, self.max_memory),
            ("load", "--allowed_load", gpu.load, self.max_load))
            if value is not None and value > limit]
        if over:
            return ("/".join(o[0] for o in over), "GPU %d: %s" % (i, ", ".join(
                "%s %d%% > %d%% (%s)" % (name, round(100 * value), round(100 * limit), flag)
                for name, flag, value, limit in over)), "GPU%d %s" % (i, " ".join(
                    "%s %d%%>%d%%" % (name[:3], round(100 * value), round(100 * limit))
                    for name, _, value, limit in over)))
        return None

    def acquire(self):
        if all(self.ours[i] >= self.per_gpu for i in self.order):
            return None
        self._refresh()  # rate-limited; also ends holds whose process has appeared
        candidates = [i for i in self.order if self._blocker(i) is None]
        if not candidates:
            return None
        best = min(candidates, key=lambda i: (self.ours[i], self.gpus[i].memory_fraction or 0))
        self.ours[best] += 1
        gpu = self.gpus[best]
        return {"CUDA_VISIBLE_DEVICES": gpu.uuid or str(gpu.index),
                "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "_gpu": best}

    def why_waiting(self):
        """What keeps each GPU from taking a run: ``[(kind, text, short text)]``."""
        return [b for b in (self._blocker(i) for i in self.order) if b is not None]

    def started(self, env, pid):
        env["_pid"] = pid
        if self.startup > 0:
            self.hold[env["_gpu"]] = (now() + self.startup, pid)

    def release(self, env):
        gpu = env["_gpu"]
        self.ours[gpu] -= 1
        if gpu in self.hold and self.hold[gpu][1] == env.get("_pid"):
            del self.hold[gpu]  # its run has ended: nothing left to wait for on that GPU

    def recheck_in(self):
        if all(self.ours[i] >= self.per_gpu for i in self.order):
            return None  # only a run ending can free a slot, and that wakes the loop
        waits = [self.poll - (now() - self.snapshot_time)]
        waits.extend(until - now() for until, _ in self.hold.values())
        return max(0.05, min(waits))

    def describe(self):
        return "GPUs %s" % ", ".join(
            "%d (%s, %s)" % (i, self.gpus[i].name, self.gpus[i].uuid) for i in self.order)


def _proc_stat(pid):
    """``(state, process group)`` from /proc/<pid>/stat; None if it cannot be read."""
    try:
        with open("/proc/%s/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[2])
    except (OSError, IndexError, ValueError):
        return None


def _processes():
    """``(pid, state, process group)`` of every process (Linux /proc; none elsewhere)."""
    for pid in os.listdir("/proc") if os.path.isdir("/proc/self") else ():
        if pid.isdigit():
            stat = _proc_stat(pid)
            if stat:
                yield int(pid), stat[0], stat[1]


def alive_groups(pgids):
    """Those of the process groups ``pgids`` in which a process still runs, in one look at
    /proc for all of them. Zombies do not count: an orphan's zombie waits for pid 1 to reap
    it, which can take seconds."""
    existing = set()
    for pgid in pgids:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            continue
        except OSError:  # exists but not ours to signal
            pass
        existing.add(pgid)
    if not existing or not os.path.isdir("/proc/self"):
        return existing
    return existing & {pgid for _, state, pgid in _processes() if state != "Z"}


def groups_marked(markers):
    """Process groups with a process whose environment holds one of ``markers``
    (``NAME=value`` entries; Linux /proc)."""
    wanted = [b"\0" + m.encode("utf-8", "surrogateescape") + b"\0" for m in markers]
    groups = set()
    for pid, state, pgid in _processes():
        if pid == os.getpid() or state == "Z":
            continue
        try:
            with open("/proc/%d/environ" % pid, "rb") as f:
                environ = b"\0" + f.read() + b"\0"
        except OSError:
            continue
        if any(w in environ for w in wanted):
            groups.add(pgid)
    return groups


def signal_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except OSError:
        pass


def terminate_groups(pgids, grace, hurry=lambda: False):
    """SIGTERM to each process group, SIGKILL to what is left after ``grace`` seconds (at once
    when ``hurry()`` turns true). A run and every child it started go together."""
    for pgid in pgids:
        signal_group(pgid, signal.SIGTERM)
    deadline = now() + grace
    while now() < deadline and not hurry() and alive_groups(pgids):
        time.sleep(0.05)
    for pgid in alive_groups(pgids):
        signal_group(pgid, signal.SIGKILL)


def process_start_time(pid):
    """The kernel's start time of ``pid`` (Linux), to tell it from a later process with the
    same id; None where it cannot be read."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _in_session(pid, session_leader):
    """Whether ``pid`` belongs to the process session we started (the run and its children)."""
    if pid == session_leader:
        return True
    try:
        return os.getsid(pid) == session_leader
    except OSError:
        return False


class ChildExitAlarm(object):
    """Wakes a waiting loop the moment a child process ends, without a thread per child.

    SIGCHLD gets a (no-op) Python handler, so Python writes a byte for it into the signal
    wake-up pipe; ``wait`` sleeps in select() on that pipe. Ctrl-C and SIGTERM write there too,
    so they wake the loop at once as well. Works from the main thread only (Python's rule for
    signal handlers); ``close`` puts back what was there before.
    """

    def __init__(self):
        self.read_fd, self.write_fd = os.pipe()
        for fd in (self.read_fd, self.write_fd):
            os.set_blocking(fd, False)
        self.old_wakeup_fd = signal.set_wakeup_fd(self.write_fd)
        self.old_handler = signal.signal(signal.SIGCHLD, _no_op_handler)

    def clear(self):
        """Forget the signals so far; call before looking at the children, so that one ending
        after the look still wakes the next ``wait``."""
        try:
            while os.read(self.read_fd, 4096):
                pass
        except OSError:  # empty (EAGAIN)
            pass

    def wait(self, timeout):
        """Sleep until a signal arrives or ``timeout`` seconds pass."""
        select.select([self.read_fd], [], [], max(0.0, timeout))

    def close(self):
        signal.set_wakeup_fd(self.old_wakeup_fd)
        signal.signal(signal.SIGCHLD, self.old_handler)
        os.close(self.read_fd)
        os.close(self.write_fd)


def _no_op_handler(signum, frame):
    pass


class LocalBackend(Backend):
    """Runs on this machine, each in its own process session so it can be stopped whole.

    The loop sleeps on a ChildExitAlarm and wakes the moment a run ends; the main thread itself
    then reaps it (the next run starts from the thread that saw the end, with no hand-over
    between threads). Output goes straight into files, so no pipe needs draining.
    """

    # Seconds between SIGTERM and SIGKILL for a run that outlived --run_timeout.
    TIMEOUT_GRACE = 10.0

    def __init__(self, slots, folder, cwd, run_timeout=None):
        self.slots = slots
        self.folder = folder
        self.identity = folder.identity()
        self.cwd = cwd
        self.run_timeout = run_timeout
        self.alarm = ChildExitAlarm()
        self.failed_starts = []   # runs whose command could not be started
        self.active = {}
        self.deadlines = {}       # run name -> when to send the next signal

    def slot(self):
        return self.slots.acquire()

    def why_waiting(self):
        return self.slots.why_waiting()

    def recheck_in(self):
        waits = [w for w in [self.slots.recheck_in()] if w is not None]
        waits.extend(max(0.0, d - now()) for d in self.deadlines.values())
        return min(waits) if waits else None

    def describe(self):
        return self.slots.describe()

    def start(self, run, token):
        env = dict(os.environ)
        env.update({k: v for k, v in token.items() if not k.startswith("_")})
        env[MARKER_VARIABLE] = self.identity  # lets a resume find this run's processes
        with open(self.folder.job_file(run, ".out"), "wb") as out, \
                open(self.folder.job_file(run, ".err"), "wb") as err:
            try:
                proc = subprocess.Popen(run.argv, cwd=self.cwd, env=env,
                                        stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                        start_new_session=True)
            except OSError as exc:
                self.slots.release(token)
                run.exit_code, run.reason = 127, "could not start: %s" % exc
                self.failed_starts.append(run)
                return False
        # The run is under way; what follows overlaps its start-up instead of delaying it.
        run.process = proc
        run.job_id = proc.pid
        self.active[run.name] = (run, token)
        if self.run_timeout:
            self.deadlines[run.name] = now() + self.run_timeout
        gpu = {"gpu": token["_gpu"]} if "_gpu" in token else {}
        self.folder.log_state(run, job_id=proc.pid, job_start=process_start_time(proc.pid),
                              folder=self.identity, **gpu)
        self.slots.started(token, proc.pid)
        write_command_file(self.folder.job_file(run, ".sh"), run, self.cwd, token)
        return True

    def end_run(self, run, reason):
        """End one run: SIGTERM to its process group now, SIGKILL after a grace."""
        if run.killed or run.name not in self.active:
            return
        run.killed, run.reason = True, reason
        signal_group(run.job_id, signal.SIGTERM)
        self.deadlines[run.name] = now() + self.TIMEOUT_GRACE

    def _enforce_timeouts(self):
        """End runs past --run_timeout; SIGKILL to those still there after the grace."""
        for name, deadline in list(self.deadlines.items()):
            if now() < deadline:
                continue
            run = self.active[name][0]
            if not run.killed:
                self.end_run(run, "ran longer than --run_timeout=%gs" % self.run_timeout)
            else:
                signal_group(run.job_id, signal.SIGKILL)
                del self.deadlines[name]

    def going(self):
        return [run for run, _ in self.active.values()]

    def _reap(self):
        """Runs that ended (their processes reaped), including those that never started."""
        self.alarm.clear()
        ended, self.failed_starts = self.failed_starts, []
        ended.extend(run for run, _ in self.active.values() if run.process.poll() is not None)
        return ended

    def wait(self, timeout):
        ended = self._reap()
        if not ended:
            self.alarm.wait(timeout)
            ended = self._reap()
        for run in ended:
            self.deadlines.pop(run.name, None)
            if run.killed and run.job_id:  # its children may ignore SIGTERM: end them too
                signal_group(run.job_id, signal.SIGKILL)
            if run.process is not None:
                _, token = self.active.pop(run.name)
                self.slots.release(token)
                code = run.process.returncode
                run.exit_code = code if code >= 0 else 128 - code
                if code < 0:
                    run.killed = True
                    run.reason = run.reason or "killed by signal %d" % -code
                run.process = None
        self._enforce_timeouts()
        return ended

    def stop(self, grace, hurry=lambda: False):
        """End every run and the processes it started."""
        for run, _ in self.active.values():
            run.killed, run.reason = True, run.reason or "stopped by hpsearch"
        terminate_groups([run.job_id for run, _ in self.active.values()], grace, hurry)

    def running(self):
        return len(self.active) + len(self.failed_starts)

    def close(self):
        self.alarm.close()


# A run's processes carry the search folder's identity in their environment, so that a
# --resume finds the runs a killed launcher left, whatever path it was started under.
MARKER_VARIABLE = "HPSEARCH_SEARCH_ID"
LEGACY_MARKER_VARIABLE = "HPSEARCH_SEARCH_DIR"   # hpsearch 1.0: the folder's path


def run_marker(identity):
    return "%s=%s" % (MARKER_VARIABLE, identity)


def write_command_file(path, run, cwd, env):
    """The run as a shell script that repeats exactly what hpsearch ran."""
    q = shlex.quote
    lines = ["#!/bin/sh"]
    lines += ["export %s=%s" % (k, q(v)) for k, v in sorted(env.items()) if not k.startswith("_")]
    lines += ["cd %s" % q(cwd), run.shell_command()]
    atomic_write_text(path, "\n".join(lines) + "\n", durable=False)


def write_job_script(path, run, cwd, files, claim_stem, stop_file=None):
    """A cluster job's script: it claims its attempt first (``mkdir <claim_stem><k>.claimed``,
    k given as $1 by a job array, else this attempt), so a stale job of an attempt that was
    called off or has already run exits without starting anything; then it runs the command
    with its output in ``files['.out']``/``['.err']`` and writes its exit status to
    ``files['.exit']``. ``stop_file``: for a run that shares its job with others (no job of
    its own to cancel), the command is ended (SIGTERM, SIGKILL 10 s later) when that file
    appears; the job then goes on with its next run."""
    q = shlex.quote
    exit_file = files[".exit"]
    claim = q(claim_stem) + '"$attempt"' + q(".claimed")
    command = "%s < /dev/null > %s 2> %s" % (run.shell_command(), q(files[".out"]),
                                             q(files[".err"]))
    lines = [
        "#!/bin/sh",
        "# hpsearch: run %s, attempt %d (a job array passes the attempt as $1)"
        % (run.name, run.attempt),
        "attempt=${1:-%d}" % run.attempt,
        "if ! mkdir %s 2>/dev/null; then" % claim,
        "    echo \"hpsearch: attempt $attempt of %s was called off or has already started; "
        "not starting it (again)\" >&2" % run.name,
        "    exit 0",
        "fi"]
    if stop_file is None:
        lines += ["cd %s && %s" % (q(cwd), command), "status=$?"]
    else:
        stop = q(stop_file)
        lines += [
            "if cd %s; then" % q(cwd),
            "    %s &" % command,
            "    pid=$!",
            "    (while kill -0 \"$pid\" 2>/dev/null; do",
            "        if [ -e %s ]; then" % stop,
            "            kill -TERM \"$pid\"; sleep 10; kill -KILL \"$pid\" 2>/dev/null; exit 0",
            "        fi",
            "        sleep 1",
            "    done) &",
            "    watcher=$!",
            "    wait \"$pid\"",
            "    status=$?",
            "    kill \"$watcher\" 2>/dev/null",
            "else",
            "    status=1",
            "fi"]
    lines += [
        "echo \"$status\" > %s && mv -f %s %s" % (
            q(exit_file + ".tmp"), q(exit_file + ".tmp"), q(exit_file)),
        "exit \"$status\""]
    atomic_write_text(path, "\n".join(lines) + "\n", durable=False)


# ----------------------------------------------------------------------------------------------
# Cluster backends: Slurm and LSF
# ----------------------------------------------------------------------------------------------
#
# Each run is a job whose script (jobs/<run>.sh, in the search folder) runs the command with its
# output in jobs/<run>.out/.err and writes the exit status to jobs/<run>.exit when it ends. A
# run has ended when that file appears (checked on every tick, no scheduler call) or when the
# queue no longer lists the job (asked in ONE call for all our jobs every --poll_interval); a
# job that leaves the queue without an exit file was killed, and the queue's reason is kept.


class SchedulerError(Exception):
    """A scheduler command failed or said something we cannot read."""


# What the queue says of a job: still going, gone, or held there but never going to run.
JOB_ACTIVE, JOB_ENDED, JOB_STUCK = "active", "ended", "stuck"


def run_scheduler(argv, env=None, timeout=120, stdin_text=None):
    """Run a scheduler command (``stdin_text``: what it reads); ``(returncode, stdout,
    stderr)``. SchedulerError if it cannot be run at all."""
    try:
        # In a session of its own: a signal to the launcher's job (LSF -wa, Grid Engine's
        # s_rt warning go to its whole process group) must not kill a submission midway.
        # Python 3.6 refuses stdin= beside input=, even stdin=None
        feed = {"input": stdin_text} if stdin_text is not None else {"stdin": subprocess.DEVNULL}
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                              timeout=timeout, universal_newlines=True, start_new_session=True,
                              **feed)
    except OSError as exc:
        raise SchedulerError("cannot run %s: %s" % (argv[0], exc.strerror))
    except subprocess.TimeoutExpired:
        raise SchedulerError("%s did not answer within %d s" % (argv[0], timeout))
    return proc.returncode, proc.stdout, proc.stderr


def _first_line(text):
    lines = [l for l in text.strip().splitlines() if l.strip()]
    return lines[0].strip() if lines else ""


class Scheduler(object):
    """What differs between schedulers: how to submit, ask the queue, cancel. Subclasses only
    build command lines and parse answers; ClusterBackend does the rest."""

    name = ""
    submit_tool = ""
    max_array = 1000
    # The launcher's own job settings that must not leak into the jobs it submits.
    job_env_prefixes = ()
    job_env_names = frozenset()
    job_env_keep = ()

    def __init__(self, args):
        self.args = args
        self.extra = shlex.split(args.scheduler_args)

    # Set for the submit command only (a scheduler that would otherwise wait inside it).
    submit_env = {}

    def clean_env(self):
        env = dict(os.environ)
        env.pop(RESUME_VARIABLE, None)   # for the launcher, not for the jobs it submits
        for key in list(env):
            ours = key in self.job_env_names or key.startswith(self.job_env_prefixes)
            if ours and key not in self.job_env_keep:
                del env[key]
        return env

    def submit_argv(self, script, name, log, array=None):
        """Command line submitting ``script`` (a list: the job script and its arguments);
        ``array``: (size, throttle) for a job array."""
        raise NotImplementedError

    def parse_submit(self, stdout):
        """The job id in the submit command's output; ValueError if there is none."""
        raise NotImplementedError

    def task_id(self, array_id, k):
        """Job id of the k-th task (from 0) of an array."""
        raise NotImplementedError

    task_variable = ""   # environment variable holding an array task's index in the job
    task_pattern = ""    # placeholder for that index in an output file name
    first_task = 0
    late_log = False     # whether the scheduler writes its log only after the job ended

    def query_argv(self, job_ids):
        raise NotImplementedError

    def parse_query(self, returncode, stdout, stderr):
        """``{job_id: (JOB_ACTIVE, JOB_ENDED or JOB_STUCK, detail)}`` for the jobs the queue
        lists; SchedulerError when the answer cannot be trusted."""
        raise NotImplementedError

    def cancel_argv(self, job_ids):
        """One command cancelling all these jobs (an array task cancels its whole array)."""
        raise NotImplementedError

    def cancel_one_argv(self, job_id):
        """A command cancelling this one job or array task alone."""
        return [self.cancel_argv([])[0], job_id]

    def find_argv(self, names):
        """Command line listing our jobs with their names (queued, running or just ended)."""
        raise NotImplementedError

    def parse_find(self, returncode, stdout, stderr):
        """``{job name: job id}`` (an array's id for its tasks); SchedulerError when the answer
        cannot be trusted."""
        raise NotImplementedError

    def explain(self, job_id):
        """Why a job left the queue without an exit status, where the scheduler can say."""
        return ""

    # The cluster's own limits, read, not assumed.
    limit_argv = ()            # the command that prints the largest job array allowed
    limit_pattern = ""         # a regular expression whose group 1 is that number
    # Refusals that mean "not now" (a per-user or per-account limit), not "never".
    limit_refusals = ()

    def array_limit(self):
        """The most tasks one job array may have here: read from the cluster, or the
        scheduler's default when it does not say."""
        try:
            code, out, _ = run_scheduler(list(self.limit_argv), timeout=30)
            found = re.search(self.limit_pattern, out, re.M) if code == 0 else None
            number = int(found.group(1)) if found else 0
        except (SchedulerError, ValueError):
            number = 0
        return number if number > 0 else self.max_array

    def limit_refusal(self, message):
        """Whether a refused submission only means "too many of your jobs right now"."""
        text = message.lower()
        return any(words in text for words in self.limit_refusals)


def _parse_id_name_lines(stdout, tool):
    """``{name: id}`` from ``id|name`` lines."""
    found = {}
    for line in stdout.splitlines():
        if not line.strip():
            continue
        job_id, sep, name = line.strip().partition("|")
        if not sep or not job_id.isdigit():
            raise SchedulerError("cannot read %s's line %r" % (tool, line))
        found[name] = job_id
    return found


def expand_task_range(text):
    """Task indices of a folded range: ``'2-9%3'``, ``'1-6:1'``, ``'1,3,5'`` or ``'4'``."""
    indices = []
    for part in text.split("%")[0].split(","):
        bounds, _, step = part.partition(":")
        first, _, last = bounds.partition("-")
        indices.extend(range(int(first), int(last or first) + 1, int(step or 1)))
    return indices


class Slurm(Scheduler):
    name = "slurm"
    submit_tool = "sbatch"
    max_array = 1000   # MaxArraySize defaults to 1001: indices 0..1000
    job_env_prefixes = ("SLURM_", "SBATCH_", "SALLOC_", "SRUN_")
    job_env_keep = ("SLURM_CONF",)
    task_variable = "SLURM_ARRAY_TASK_ID"
    task_pattern = "%a"
    first_task = 0
    limit_argv = ("scontrol", "show", "config")
    limit_pattern = r"^MaxArraySize\s*=\s*(\d+)"   # indices 0 to N-1: N tasks
    limit_refusals = ("qosmaxsubmitjob", "assocmaxsubmitjob", "job submit limit",
                      "maxsubmitjobs", "grpsubmitjobs")
    ACTIVE_STATES = {"PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED",
                     "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESIZING", "SIGNALING",
                     "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD"}

    def submit_argv(self, script, name, log, array=None):
        a = self.args
        argv = ["sbatch", "--parsable", "--job-name=%s" % name, "--output=%s" % log,
                "--time=%d:00:00" % a.num_hours]
        for flag, value in (("--mem", a.slurm_mem), ("--gres", a.slurm_gres),
                            ("--partition", a.slurm_partition), ("--qos", a.slurm_qos),
                            ("--constraint", a.slurm_constraint)):
            if value:
                argv.append("%s=%s" % (flag, value))
        if array:
            argv.append("--array=0-%d%%%d" % (array[0] - 1, array[1]))
        return argv + self.extra + script

    def parse_submit(self, stdout):
        first = _first_line(stdout).split(";")[0]  # --parsable: "id" or "id;cluster"
        if not first.isdigit():
            raise ValueError("sbatch printed %r instead of a job id" % _first_line(stdout))
        return first

    def task_id(self, array_id, k):
        return "%s_%d" % (array_id, k)

    def query_argv(self, job_ids):
        arrays = sorted({j.split("_")[0] for j in job_ids})
        return ["squeue", "--noheader", "--array", "--states=all",
                "--jobs=" + ",".join(arrays), "--format=%i|%T|%r"]

    def parse_query(self, returncode, stdout, stderr):
        if returncode != 0:
            if "Invalid job id" in stderr:  # every id asked for has been purged already
                return {}
            raise SchedulerError("squeue failed (exit %d): %s" % (returncode,
                                                                  _first_line(stderr)))
        jobs = {}
        for line in stdout.splitlines():
            if not line.strip():
                continue
            parts = line.strip().split("|")
            if len(parts) != 3 or not parts[0][:1].isdigit():
                raise SchedulerError("cannot read squeue's line %r" % line)
            job_id, state, reason = parts
            state = state.split()[0]
            answer = (JOB_ACTIVE if state in self.ACTIVE_STATES else JOB_ENDED,
                      "%s (%s)" % (state, reason) if reason not in ("", "None") else state)
            if "_[" in job_id:  # array tasks still folded into one line: 12_[2-9%3]
                array_id, folded = job_id.rstrip("]").split("_[")
                for i in expand_task_range(folded):
                    jobs["%s_%d" % (array_id, i)] = answer
            else:
                jobs[job_id] = answer
        return jobs

    def cancel_argv(self, job_ids):
        return ["scancel"] + sorted({j.split("_")[0] for j in job_ids})

    def find_argv(self, names):
        return ["squeue", "--noheader", "--states=all", "--name=" + ",".join(names),
                "--format=%F|%j"]

    def parse_find(self, returncode, stdout, stderr):
        if returncode != 0:
            raise SchedulerError("squeue failed (exit %d): %s" % (returncode,
                                                                  _first_line(stderr)))
        return _parse_id_name_lines(stdout, "squeue")


class Lsf(Scheduler):
    name = "lsf"
    submit_tool = "bsub"
    max_array = 1000   # MAX_JOB_ARRAY_SIZE defaults to 1000
    job_env_prefixes = ("LSB_",)
    task_variable = "LSB_JOBINDEX"
    task_pattern = "%I"
    first_task = 1
    limit_argv = ("bparams", "-a")
    limit_pattern = r"MAX_JOB_ARRAY_SIZE\s*=\s*(\d+)"
    limit_refusals = ("pending job threshold", "max_pend_jobs", "too many jobs")
    # At a pending job threshold bsub tries again every SUB_TRY_INTERVAL, for ever unless
    # LSB_NTRIES bounds it: one try, and the refusal holds our submissions instead.
    submit_env = {"LSB_NTRIES": "1"}
    late_log = True      # LSF appends its job report once the job is over
    ACTIVE_STATES = {"PEND", "RUN", "PSUSP", "USUSP", "SSUSP", "WAIT", "PROV", "UNKWN",
                     "ZOMBI"}

    def submit_argv(self, script, name, log, array=None):
        a = self.args
        job_name = name if not array else "%s[1-%d]%%%d" % (name, array[0], array[1])
        argv = ["bsub", "-J", job_name, "-o", log, "-e", log, "-n", "1",
                "-W", "%d:00" % a.num_hours]
        resources = strip_shell_quotes(a.resources)
        if resources:
            argv += ["-R", resources]
        # LSF runs "command [args]" as one Bourne-shell line: quote the script's path.
        return argv + self.extra + [" ".join(shlex.quote(a) for a in ["/bin/sh"] + script)]

    def parse_submit(self, stdout):
        for line in stdout.splitlines():  # Job <123> is submitted to default queue <normal>.
            if line.startswith("Job <") and "> is submitted" in line:
                job_id = line[len("Job <"):line.index(">")]
                if job_id.isdigit():
                    return job_id
        raise ValueError("bsub printed %r instead of 'Job <id> is submitted ...'"
                         % _first_line(stdout))

    def task_id(self, array_id, k):
        return "%s[%d]" % (array_id, k + 1)

    def query_argv(self, job_ids):
        arrays = sorted({j.split("[")[0] for j in job_ids})
        return ["bjobs", "-a", "-noheader", "-o",
                "jobid jobindex stat exit_code exit_reason delimiter='|'"] + arrays

    def parse_query(self, returncode, stdout, stderr):
        not_found = [l for l in stderr.splitlines() if l.strip().endswith("is not found")]
        other_errors = [l for l in stderr.splitlines() if l.strip() and l not in not_found]
        if returncode != 0 and (other_errors or not not_found):
            raise SchedulerError("bjobs failed (exit %d): %s" % (returncode,
                                                                 _first_line(stderr)))
        jobs = {}
        for line in stdout.splitlines():
            if not line.strip():
                continue
            parts = [p.strip() for p in line.split("|")]
            if len(parts) != 5 or not parts[0].isdigit():
                raise SchedulerError("cannot read bjobs' line %r" % line)
            job_id, index, state, code, reason = parts
            if index not in ("", "0", "-"):
                job_id = "%s[%s]" % (job_id, index)
            detail = state if reason in ("", "-") else "%s (%s)" % (state, reason)
            if code not in ("", "-"):
                detail += ", exit code %s" % code
            jobs[job_id] = (JOB_ACTIVE if state in self.ACTIVE_STATES else JOB_ENDED, detail)
        return jobs

    def cancel_argv(self, job_ids):
        return ["bkill"] + sorted({j.split("[")[0] for j in job_ids})

    def find_argv(self, names):
        return ["bjobs", "-a", "-noheader", "-o", "jobid job_name delimiter='|'"]

    def parse_find(self, returncode, stdout, stderr):
        if returncode != 0 and "No job found" not in stderr:
            raise SchedulerError("bjobs failed (exit %d): %s" % (returncode,
                                                                 _first_line(stderr)))
        # "No job found" goes to stderr; an array's element is listed as name[index].
        found = _parse_id_name_lines(stdout, "bjobs")
        return {name.split("[")[0]: job for name, job in found.items()}


class Sge(Scheduler):
    name = "sge"
    submit_tool = "qsub"
    max_array = 75000   # max_aj_tasks defaults to 75000
    job_env_prefixes = ("SGE_TASK_", "SGE_O_", "SGE_STD", "SGE_JOB_")
    job_env_names = frozenset((
        "SGE_CWD_PATH", "SGE_ACCOUNT", "SGE_BINARY_PATH", "JOB_ID", "JOB_NAME", "JOB_SCRIPT",
        "NSLOTS", "NHOSTS", "NQUEUES", "QUEUE", "PE_HOSTFILE", "PE", "RESTARTED", "REQNAME",
        "REQUEST", "ENVIRONMENT"))
    task_variable = "SGE_TASK_ID"
    task_pattern = "$TASK_ID"
    first_task = 1
    limit_argv = ("qconf", "-sconf")
    limit_pattern = r"^max_aj_tasks\s+(\d+)"       # 0: no limit (the default stands)
    limit_refusals = ("are allowed per user", "max_u_jobs", "jobs per user")

    def submit_argv(self, script, name, log, array=None):
        argv = ["qsub", "-terse", "-N", name, "-o", log, "-j", "y", "-V", "-S", "/bin/sh",
                "-l", "h_rt=%d:00:00" % self.args.num_hours]
        if array:
            argv += ["-t", "1-%d" % array[0], "-tc", str(array[1])]
        return argv + self.extra + script

    def parse_submit(self, stdout):
        first = _first_line(stdout).split(".")[0]  # -terse: "54", or "56.1-3:1" for arrays
        if not first.isdigit():
            raise ValueError("qsub printed %r instead of a job id" % _first_line(stdout))
        return first

    def task_id(self, array_id, k):
        return "%s.%d" % (array_id, k + 1)

    def query_argv(self, job_ids):
        # The real uid's name: $USER/$LOGNAME may name someone else after su or sudo -E.
        return ["qstat", "-xml", "-u", pwd.getpwuid(os.getuid()).pw_name]

    def _qstat_jobs(self, returncode, stdout, stderr):
        if returncode != 0:
            raise SchedulerError("qstat failed (exit %d): %s" % (returncode, _first_line(stderr)))
        try:
            return ElementTree.fromstring(stdout).iter("job_list")
        except ElementTree.ParseError as exc:
            raise SchedulerError("cannot read qstat -xml: %s" % exc)

    def find_argv(self, names):
        return self.query_argv([])

    def parse_find(self, returncode, stdout, stderr):
        return {(job.findtext("JB_name") or "").strip(): (job.findtext("JB_job_number") or "")
                .strip() for job in self._qstat_jobs(returncode, stdout, stderr)}

    def parse_query(self, returncode, stdout, stderr):
        jobs = {}
        for job in self._qstat_jobs(returncode, stdout, stderr):
            number = (job.findtext("JB_job_number") or "").strip()
            state = (job.findtext("state") or "").strip()
            if not number.isdigit():
                raise SchedulerError("qstat -xml lists a job without a number")
            # Eqw: the job can never start; it stays in qstat until someone deletes it.
            answer = ((JOB_STUCK, "error state %s" % state) if "E" in state
                      else (JOB_ACTIVE, state))
            tasks = (job.findtext("tasks") or "").strip()
            jobs[number] = answer
            for i in expand_task_range(tasks) if tasks else ():
                jobs["%s.%d" % (number, i)] = answer
        return jobs

    def cancel_argv(self, job_ids):
        return ["qdel"] + sorted({j.split(".")[0] for j in job_ids})

    def cancel_one_argv(self, job_id):
        number, _, task = job_id.partition(".")
        return ["qdel", number] + (["-t", task] if task else [])

    def explain(self, job_id):
        number, _, task = job_id.partition(".")
        argv = ["qacct", "-j", number] + (["-t", task] if task else [])
        try:
            code, out, _ = run_scheduler(argv)
        except SchedulerError:
            return ""
        fields = dict(line.split(None, 1) for line in out.splitlines() if len(line.split()) > 1)
        if code != 0 or "failed" not in fields:
            return "deleted before it started (no accounting record)"
        return "failed %s, exit_status %s" % (" ".join(fields["failed"].split()),
                                               " ".join(fields.get("exit_status", "?").split()))


SCHEDULERS = {"slurm": Slurm, "lsf": Lsf, "sge": Sge}


def strip_shell_quotes(text):
    """``'"rusage[mem=8000]"'`` -> ``rusage[mem=8000]``: values once written for a shell."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    return text


class ClusterBackend(Backend):
    """Runs as jobs on a scheduler. ``runs_per_job`` runs go one after another in one job
    (each with its own folder, logs, exit status, journal lines and CSV row); at most
    ``--num_jobs`` jobs are queued or running (or the scheduler's array throttle does it with
    ``--array``); the queue is asked in one call per cycle. A submission refused for a
    per-user limit is held, not failed, until one of our jobs ends or a back-off expires; a
    job array refused makes later arrays at most half its size."""

    SUBMIT_TRIES = 4
    HOLD_BACKOFF = (15.0, 300.0)   # first and longest wait after a limit refusal, seconds
    started_word = "submitted"

    def __init__(self, scheduler, folder, cwd, num_jobs, poll_interval, use_array=False,
                 detach=False, runs_per_job=1):
        self.scheduler = scheduler
        self.folder = folder
        self.identity = folder.identity()
        self.name_tag = job_name_tag(self.identity)
        self.cwd = cwd
        self.num_jobs = num_jobs
        self.poll_interval = poll_interval
        self.use_array = use_array
        self.detach = detach
        self.per_job = runs_per_job
        self.active = {}          # run name -> run whose job is queued or running
        self.filling = []         # runs gathered for the next job (fewer than runs_per_job)
        self.units = []           # runs of one job each, waiting to be submitted
        self.hold_until = None    # a limit refusal: submit no more before then (or a job ends)
        self.limit_seen = (0, 0.0)  # our jobs going at the last limit refusal, until when
        self.holds_told = 0
        self.hold_delay = self.HOLD_BACKOFF[0]
        self.ended = []
        self.vanished = {}        # job id -> polls seen gone without an exit file
        self.late_logs = {}       # run name -> ended run whose scheduler log may come later
        self.next_poll = now() + poll_interval
        self.queries = 0          # queue queries
        self.submissions = 0      # calls of the submit command
        self.jobs_submitted = 0
        self.max_array = None     # read from the cluster when first needed
        self.env = scheduler.clean_env()
        self.submit_env = dict(self.env, **scheduler.submit_env)

    def describe(self):
        return "%s jobs, at most %d at once%s%s" % (
            self.scheduler.name, self.num_jobs, ", as job arrays" if self.use_array else "",
            ", %d runs per job" % self.per_job if self.per_job > 1 else "")

    def running(self):
        waiting = len(self.filling) + sum(len(unit) for unit in self.units)
        return len(self.active) + waiting + len(self.ended)

    def _jobs_in_use(self):
        """Jobs going, and those gathered or held that will be."""
        return self._jobs_going() + len(self.units) + (1 if self.filling else 0)

    def slot(self):
        if self.hold_until is not None:
            return None
        if self.use_array or 0 < len(self.filling) < self.per_job \
                or self._jobs_in_use() < self.num_jobs:
            return {}
        return None

    def recheck_in(self):
        return None if self.hold_until is None else max(0.0, self.hold_until - now())

    def job_name(self, run):
        """The scheduler's name for this attempt of the run (the first run of a job that
        holds several): unique to the attempt and to this copy of the search folder, so a
        resume finds a submission cut short by name."""
        return "%s-a%d-%s" % (run.name, run.attempt, self.name_tag)

    def start(self, run, token):
        if run.attempt > 1:  # an earlier attempt's job, should one still be queued, never runs
            self.folder.call_off(run, run.attempt - 1)
        files = {s: self.folder.job_file(run, s) for s in (".out", ".err", ".exit")}
        write_job_script(self.folder.job_file(run, ".sh"), run, self.cwd, files,
                         self.folder.claim_stem(run),
                         self.folder.stop_path(run) if self.per_job > 1 else None)
        self.filling.append(run)
        if len(self.filling) == self.per_job:
            self.units.append(self.filling)
            self.filling = []
            if not self.use_array:  # a full job goes at once; an array waits for flush
                self._submit_units()
        return True

    def flush(self):
        """Submit what was gathered: a job not yet full, and every job array."""
        if self.filling:
            self.units.append(self.filling)
            self.filling = []
        self._submit_units()

    def _submit_units(self):
        while self.units and self.hold_until is None:
            if not self.use_array:
                if self._at_seen_limit():
                    return   # the scheduler would refuse it: wait for one of ours to end
                self._submit_job(self.units.pop(0))
                continue
            chunk = self.units[:self._array_limit()]
            if not self._array_fits(len(chunk)):
                return   # the next one goes when enough of ours have ended
            del self.units[:len(chunk)]
            self._submit_array(chunk)

    def _array_fits(self, tasks):
        """An array runs up to min(tasks, --num_jobs) tasks at once (its throttle). Where the
        search needs several arrays (the cluster's largest is smaller), the next one waits
        until, together with our tasks still queued or running, that keeps to --num_jobs."""
        return self._jobs_going() + min(tasks, self.num_jobs) <= self.num_jobs

    def _jobs_going(self):
        """Our jobs (array tasks) queued or running."""
        return len({run.job_id for run in self.active.values()})

    def _array_limit(self):
        if self.max_array is None:
            self.max_array = self.scheduler.array_limit()
        return self.max_array

    def _submit_job(self, unit):
        """One job for the runs of ``unit``: a run's own job script, or a script running
        several one after another."""
        name = self.job_name(unit[0])
        if len(unit) == 1:
            run = unit[0]
            # The attempt goes with the job: a scheduler that reads the script only when
            # the job starts (LSF) may find a later attempt's script there by then.
            script = [self.folder.job_file(run, ".sh"), str(run.attempt)]
        else:
            script = [self._unit_table_and_script(name, unit, array=False)]
        log = job_log(self.folder, unit[0], name, len(unit) > 1)
        unit[-1].task_log = log   # the job's log goes to its (last) run
        for run in unit:
            self.folder.log_state(run, SUBMITTING, job_name=name, folder=self.identity)
        job_id = self._submit(self.scheduler.submit_argv(script, name, log), [unit])
        if job_id is not None:
            for run in unit:
                self._track(run, job_id, job_name=name)

    def _submit_array(self, units):
        """One job array, task k running ``units[k]``; if the scheduler refuses it (an
        array larger than it allows), its units wait for arrays of at most half its size."""
        name = self.job_name(units[0][0])
        script = self._unit_table_and_script(name, [r for unit in units for r in unit],
                                             array=True)
        for k, unit in enumerate(units):
            unit[-1].task_log = array_task_log(self.folder, self.scheduler, name, k)
            for run in unit:
                self.folder.log_state(run, SUBMITTING, job_name=name, task=k,
                                      folder=self.identity)
        argv = self.scheduler.submit_argv(
            [script], name, array_task_log(self.folder, self.scheduler, name, None),
            array=(len(units), self.num_jobs))
        array_id = self._submit(argv, units, split=len(units) > 1)
        if array_id is not None:
            for k, unit in enumerate(units):
                for run in unit:
                    self._track(run, self.scheduler.task_id(array_id, k), job_name=name, task=k)

    def _unit_table_and_script(self, name, runs, array):
        table = job_table_path(self.folder, name)
        atomic_write_text(table, "".join("%s %d\n" % (r.name, r.attempt) for r in runs))
        script = os.path.join(self.folder.jobs, "%s.job.sh" % name)
        atomic_write_text(script, unit_script(table, self.folder.jobs, self.per_job,
                                              self.scheduler if array else None))
        return script

    def _submit(self, argv, units, split=False):
        """Submit with back-off; the job id, or None. A refusal for a per-user limit holds
        the units for later; a refused array (``split``) is halved; otherwise, after the
        last try, their runs end as failed with the scheduler's reason."""
        delay, problem = 1.0, ""
        for attempt in range(self.SUBMIT_TRIES):
            self.submissions += 1
            try:
                code, out, err = run_scheduler(argv, env=self.submit_env)
                if code == 0:
                    self.jobs_submitted += 1
                    self.hold_delay = self.HOLD_BACKOFF[0]
                    return self.scheduler.parse_submit(out)
                problem = "%s exit %d: %s" % (argv[0], code, _first_line(err or out))
            except (SchedulerError, ValueError) as exc:
                problem = str(exc)
            if self.scheduler.limit_refusal(problem):
                self._hold(units, problem)
                return None
            if split:   # too large for this cluster, whatever it said its limit was
                self.max_array = len(units) // 2
                warn("the job array of %d tasks was refused (%s); submitting arrays of at "
                     "most %d" % (len(units), problem, self.max_array))
                self.units[:0] = units
                return None
            if attempt + 1 < self.SUBMIT_TRIES:
                warn("submitting %s failed (%s); trying again in %gs"
                     % (units[0][0].name, problem, delay))
                time.sleep(delay)
                delay *= 2
        for run in (r for unit in units for r in unit):
            run.exit_code, run.reason = None, "submission failed: %s" % problem
            self.ended.append(run)
        return None

    def _hold(self, units, problem):
        """The scheduler takes no more jobs from us for now: keep these for later and stop
        submitting until one of our jobs ends or the back-off expires (said once; the log
        has every hold)."""
        self.units[:0] = units
        if self.hold_until is None:
            message = ("the scheduler takes no more jobs for now (%s); holding %d run(s) until "
                       "one of our jobs ends or %gs pass" % (
                           problem, sum(len(u) for u in self.units), self.hold_delay))
            if self.holds_told:   # a limit met again and again: the log has each
                CONSOLE.log("hpsearch: %s" % message)
            else:
                warn(message + " (said once; hpsearch.log has every hold)")
            self.holds_told += 1
        self.hold_until = now() + self.hold_delay
        self.hold_delay = min(2 * self.hold_delay, self.HOLD_BACKOFF[1])
        self.limit_seen = (self._jobs_going(), self.hold_until)

    def _at_seen_limit(self):
        """As many of our jobs going as when the scheduler last refused one for a limit.
        That limit may count jobs not ours: the guess holds only until the back-off
        expires, then a submission tries again."""
        going, until = self.limit_seen
        return 0 < going <= self._jobs_going() and now() < until

    def _release_hold(self, job_ended=False):
        """Submit what waits: held runs once a job of ours ended (up to as many as the
        scheduler took) or the back-off expired, an array once there is room for it."""
        if self.hold_until is not None and (job_ended or now() >= self.hold_until):
            self.hold_until = None
        self._submit_units()

    def _track(self, run, job_id, job_name=None, task=None):
        """Follow the run's job, and say so in the journal at once (for an array task:
        the array's name and the task's place in it)."""
        run.job_id = job_id
        self.active[run.name] = run
        where = {} if task is None else {"task": task}
        self.folder.log_state(run, RUNNING, job_id=job_id, job_name=job_name or
                              self.job_name(run), folder=self.identity, **where)

    def attach(self, run, job_id):
        """Follow a job submitted by an earlier launcher (--resume)."""
        run.state = RUNNING
        self._track(run, job_id)

    def _collect_exit_files(self):
        for run in list(self.active.values()):
            code = self.folder.recorded_exit_status(run)
            if code is not None:
                run.exit_code = code
                if code > 128:  # the job shell's way of saying "ended by signal code-128"
                    run.killed = True
                    run.reason = run.reason or "killed by signal %d" % (code - 128)
                self._end(run)

    def going(self):
        return list(self.active.values())

    def end_run(self, run, reason):
        """End one run early (early stopping): cancel its job, or, when it shares its job
        with other runs, leave the stop file its job script watches for."""
        if run.killed or run.name not in self.active:
            return
        run.killed, run.reason = True, reason
        if self.per_job > 1:
            atomic_write_text(self.folder.stop_path(run), reason + "\n", durable=False)
            return
        code, _, err = run_scheduler(self.scheduler.cancel_one_argv(run.job_id), env=self.env)
        if code != 0:
            warn("cancelling job %s of %s: %s" % (run.job_id, run.name, _first_line(err)))

    def _end(self, run):
        del self.active[run.name]
        if not any(r.job_id == run.job_id for r in self.active.values()):
            self.vanished.pop(run.job_id, None)
            self._release_hold(job_ended=True)
        self.ended.append(run)
        self.folder.drop_claim(run)
        _remove(self.folder.stop_path(run))
        # Only the run that receives its job's log waits for LSF's late report: the
        # other runs of a shared job never get one.
        if self.scheduler.late_log and run.task_log:
            self.late_logs[run.name] = run
        self._claim_task_log(run)

    def _claim_task_log(self, run):
        """Give a job's (or array task's) log the name of its run, so it goes into the run
        folder (a job of several runs gives it to its last)."""
        own = self.folder.job_file(run, ".scheduler.log")
        if run.task_log == own:
            run.task_log = None
        elif run.task_log and os.path.exists(run.task_log):
            _rename_free(run.task_log, own)
            run.task_log = None

    def _sweep_late_logs(self):
        """LSF writes its job report to the log after the job has ended (and after we moved
        the run's files): bring such logs into the run folder when they appear."""
        for name, run in list(self.late_logs.items()):
            self._claim_task_log(run)
            src = self.folder.job_file(run, ".scheduler.log")
            dst = os.path.join(run.out_dir, JOB_FILES[".scheduler.log"])
            if os.path.exists(src) and os.path.isdir(run.out_dir) and run.state in ENDED_STATES:
                _rename_free(src, dst)
                del self.late_logs[name]
            elif os.path.exists(dst) or not os.path.isdir(run.out_dir):
                if run.state in ENDED_STATES:
                    del self.late_logs[name]

    def finish_up(self):
        """Give late scheduler logs a few seconds to arrive; say what the scheduler was asked."""
        deadline = now() + 5.0
        while True:
            self._sweep_late_logs()
            if not self.late_logs or now() >= deadline:
                break
            time.sleep(0.2)
        say("hpsearch: %s: %d %s call(s) for %d job(s), %d queue quer%s" % (
            self.scheduler.name, self.submissions, self.scheduler.submit_tool,
            self.jobs_submitted, self.queries, "y" if self.queries == 1 else "ies"))

    def poll(self):
        """Ask the queue once about all our jobs; a job gone from it without an exit status
        (after one more cycle for slow file systems) was killed, and so were its runs that
        had not ended."""
        self.next_poll = now() + self.poll_interval
        self._sweep_late_logs()
        ids = sorted({run.job_id for run in self.active.values()})
        if not ids:
            return
        self.queries += 1
        try:
            code, out, err = run_scheduler(self.scheduler.query_argv(ids))
            listed = self.scheduler.parse_query(code, out, err)
        except SchedulerError as exc:  # never take a failed query for an answer
            warn("%s; asking again in %gs" % (exc, self.poll_interval))
            return
        given_up = []
        for job_id in ids:
            state, detail = listed.get(job_id, (JOB_ENDED, "no longer listed by the scheduler"))
            if state == JOB_ACTIVE:
                self.vanished.pop(job_id, None)
                continue
            self.vanished[job_id] = self.vanished.get(job_id, 0) + 1
            if self.vanished[job_id] < 2:
                continue
            if state == JOB_STUCK:
                given_up.append(job_id)
            why = None
            for run in [r for r in self.active.values() if r.job_id == job_id]:
                run.exit_code = None
                if not run.killed:  # not ended by us (early stopping): the scheduler did it
                    why = self.scheduler.explain(job_id) if why is None else why
                    run.killed = True
                    run.reason = "killed by the scheduler: %s%s" % (
                        detail, "; " + why if why else "")
                self._end(run)
        if given_up:  # a job that can never run would otherwise stay queued for good
            run_scheduler(self.scheduler.cancel_argv(given_up), env=self.env)

    def wait(self, timeout):
        self._release_hold()
        if not self.ended:
            self._collect_exit_files()
        if not self.ended:
            if now() >= self.next_poll:
                self.poll()
                self._collect_exit_files()
            elif timeout:
                time.sleep(min(timeout, max(0.0, self.next_poll - now())))
        ended, self.ended = self.ended, []
        return ended

    def _unsubmitted(self):
        """Forget the runs gathered but not submitted (they run again on --resume)."""
        self.filling, self.units, self.hold_until = [], [], None

    def stop(self, grace, hurry=lambda: False):
        """Cancel every queued or running job in one call, or leave them (--detach)."""
        self._unsubmitted()
        jobs = sorted({run.job_id for run in self.active.values()})
        if self.detach:
            say("hpsearch: %d job(s) left to the scheduler (--resume re-attaches to them)"
                % len(jobs))
            self.active = {}
            return
        # Exit statuses written before the cancel are the jobs' own; one written after it
        # (a job script recording the SIGTERM it got) still means we killed that job.
        own_ends = {name: self.folder.recorded_exit_status(run)
                    for name, run in self.active.items()}
        if jobs:
            code, _, err = run_scheduler(self.scheduler.cancel_argv(jobs), env=self.env)
            say("hpsearch: cancelled %d job(s) with %s%s" % (
                len(jobs), self.scheduler.cancel_argv([])[0],
                "" if code == 0 else " (it said: %s)" % _first_line(err)))
        for name, run in list(self.active.items()):
            run.exit_code = own_ends[name]
            if run.exit_code is None:
                run.killed, run.reason = True, "cancelled by hpsearch"
            self._end(run)

    def abandon(self):
        """Jobs run and record their exit status without the launcher: leave them queued."""
        self._unsubmitted()
        count = len({run.job_id for run in self.active.values()})
        self.active = {}
        return "%d job(s) left to the scheduler, --resume re-attaches to them" % count


def unit_script(table, jobs_dir, per_job, scheduler=None):
    """The script of a job that runs several runs one after another: the lines of ``table``
    (``<run> <attempt>``), each through the run's own job script. For a job array
    (``scheduler``: whose task variable to read) task i runs lines i*per_job+1 to
    (i+1)*per_job; a plain job runs them all."""
    q = shlex.quote
    first = ("$(( (${%s} - %d) * %d + 1 ))" % (scheduler.task_variable, scheduler.first_task,
                                               per_job)) if scheduler else "1"
    return "\n".join([
        "#!/bin/sh",
        "# hpsearch: runs one after another, %d per job, from %s (lines: <run> <attempt>)"
        % (per_job, os.path.basename(table)),
        "first=%s" % first,
        "sed -n \"${first},$((first + %d))p\" %s | while read -r name attempt; do"
        % (per_job - 1, q(table)),
        "    /bin/sh %s/\"$name\".sh \"$attempt\" < /dev/null" % q(jobs_dir),
        "done",
    ]) + "\n"


def job_log(folder, run, job_name, shared):
    """Where the scheduler logs a job: a run's own job beside the run's files, a job of
    several runs under its job name."""
    if shared:
        return os.path.join(folder.jobs, "%s.job.scheduler.log" % job_name)
    return folder.job_file(run, ".scheduler.log")


def array_task_log(folder, scheduler, array_name, k):
    """Where the scheduler logs task k (from 0) of a job array; k None: the pattern given
    to the scheduler."""
    task = scheduler.task_pattern if k is None else str(scheduler.first_task + k)
    return os.path.join(folder.jobs, "%s.task%s.scheduler.log" % (array_name, task))


def job_name_tag(identity):
    """Six letters and digits standing for a search folder's identity in job names."""
    return hashlib.sha1(identity.encode("utf-8")).hexdigest()[:6]


def find_jobs(scheduler, names):
    """``{job name: job id}`` of the jobs with these names that the scheduler still lists,
    in one call; SchedulerError if it cannot say."""
    if not names:
        return {}
    code, out, err = run_scheduler(scheduler.find_argv(sorted(names)))
    found = scheduler.parse_find(code, out, err)
    return {name: job for name, job in found.items() if name in names}


# ----------------------------------------------------------------------------------------------
# The launcher as a job of its own: warned before its time limit, submitted again
# ----------------------------------------------------------------------------------------------
#
# A search of many days outlives any one job's wall time. Run as a job, the launcher detaches on
# the scheduler's warning (SIGUSR1, see StopSignals); with --resubmit_self it then submits its
# own job script again, to start once this job has ended, with HPSEARCH_RESUME naming the
# search folder: the new launcher, started with --resubmit_self and that variable, resumes it.

RESUME_VARIABLE = "HPSEARCH_RESUME"
# (scheduler, variable holding the launcher's job id) of the job the launcher may run in.
LAUNCHER_JOB_VARIABLES = (("slurm", "SLURM_JOB_ID"), ("lsf", "LSB_JOBID"), ("sge", "JOB_ID"))


def launcher_job():
    """``(scheduler name, job id)`` of the job the launcher runs in, or None."""
    for name, variable in LAUNCHER_JOB_VARIABLES:
        if os.environ.get(variable):
            return name, os.environ[variable]
    return None


def launcher_script(name, job_id, given):
    """The text of the launcher's own job script: the file ``given`` (--resubmit_self=FILE),
    else what the scheduler keeps of it (Slurm: scontrol write batch_script; Grid Engine:
    $JOB_SCRIPT). LSF keeps no copy a user can submit again: there ``given`` is needed."""
    if given:
        path = given
    elif name == "slurm":
        code, out, err = run_scheduler(["scontrol", "write", "batch_script", job_id, "-"])
        if code != 0 or not out.strip():
            raise SchedulerError("scontrol write batch_script %s: %s" % (
                job_id, _first_line(err) or "no script"))
        return out
    elif name == "sge" and os.environ.get("JOB_SCRIPT"):
        path = os.environ["JOB_SCRIPT"]
    else:
        raise SchedulerError("the scheduler keeps no copy of the launcher's job script; give "
                             "it: --resubmit_self=<your job script>")
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return f.read()
    except OSError as exc:
        raise SchedulerError("cannot read the launcher's job script %s: %s"
                             % (path, exc.strerror))


def resubmit_launcher(args, folder):
    """Submit the launcher's job script again, to start after this job ends, resuming
    ``folder``; the new job's id (SchedulerError if it cannot be done)."""
    job = launcher_job()
    if job is None:
        raise SchedulerError("the launcher does not run as a Slurm, LSF or Grid Engine job")
    name, job_id = job
    scheduler = SCHEDULERS[name](args)
    text = launcher_script(name, job_id, args.resubmit_self)
    path = folder.file("hpsearch_launcher_job.sh")   # what was submitted, kept to look at
    atomic_write_text(path, text, durable=False)
    env = scheduler.clean_env()
    env[RESUME_VARIABLE] = folder.path
    after = {"slurm": ["sbatch", "--parsable", "--dependency=afterany:%s" % job_id, path],
             "sge": ["qsub", "-terse", "-hold_jid", job_id, "-v",
                     "%s=%s" % (RESUME_VARIABLE, folder.path), path],
             "lsf": ["bsub", "-w", "ended(%s)" % job_id]}[name]
    code, out, err = run_scheduler(after, env=env, stdin_text=text if name == "lsf" else None)
    if code != 0:
        raise SchedulerError("%s exit %d: %s" % (after[0], code, _first_line(err or out)))
    try:
        return scheduler.parse_submit(out)
    except ValueError as exc:
        raise SchedulerError(str(exc))


def check_resubmit_self(args):
    """--resubmit_self: a launcher started by its earlier self resumes that search; one that
    cannot submit itself again says so before it starts."""
    if args.resubmit_self is None:
        return
    if os.environ.get(RESUME_VARIABLE) and not args.resume:
        args.resume = os.environ[RESUME_VARIABLE]
        say("hpsearch: --resubmit_self: resuming %s (%s names it)" % (args.resume,
                                                                    RESUME_VARIABLE))
    job = launcher_job()
    if job is None:
        warn("--resubmit_self: the launcher does not run as a Slurm, LSF or Grid Engine job; "
             "SIGUSR1 will stop it, but it cannot submit itself again")
    elif job[0] == "lsf" and not args.resubmit_self:
        raise UsageError("--resubmit_self under LSF needs the launcher's job script: "
                         "--resubmit_self=<the file you submitted with bsub < FILE>")


# ----------------------------------------------------------------------------------------------
# Progress display
# ----------------------------------------------------------------------------------------------


class Progress(object):
    """Counts runs as they start and end; on a terminal, one live status line below the
    messages. The search tells it when runs start and end, so the line always agrees with
    the log above it."""

    def __init__(self, total, stream=None):
        self.total = total
        self.stream = stream or sys.stdout
        self.live = CONSOLE.is_terminal(self.stream)
        self.start = now()
        self.counts = collections.Counter()
        self.running = 0
        self.waiting_for = ""   # in short, what keeps waiting runs from starting
        self._shown = False
        if self.live:
            CONSOLE.status = self  # messages go above the status line

    def run_started(self):
        self.running += 1

    def run_ended(self, state):
        """``state`` None: the run goes back to waiting (a retry)."""
        self.running -= 1
        if state is not None:
            self.counts[state] += 1

    def log(self, message):
        CONSOLE.say(message, self.stream)

    def _eta(self, done):
        if not done:
            return "?"
        left = (now() - self.start) / done * (self.total - done)
        return _duration(left)

    def status_line(self):
        done = sum(self.counts[s] for s in ENDED_STATES)
        waiting = self.total - done - self.running
        return "[%d/%d done (%s) | %d running, %d waiting%s | %s elapsed, ETA %s]" % (
            done, self.total, ", ".join("%d %s" % (self.counts[s], s) for s in ENDED_STATES
                                        if self.counts[s] or s in (FINISHED, FAILED)),
            self.running, waiting, ": " + self.waiting_for if waiting and self.waiting_for
            else "", _duration(now() - self.start), self._eta(done))

    def clear(self):
        if self._shown:
            CONSOLE.write(self.stream, "\r\033[K")
            self._shown = False

    def show(self):
        if self.live:
            self._shown = CONSOLE.write(self.stream, "\r\033[K" + self.status_line())

    def close(self):
        if self._shown:
            CONSOLE.write(self.stream, "\n")
            self._shown = False
        if CONSOLE.status is self:
            CONSOLE.status = None


def _duration(seconds):
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return "%d:%02d:%02d" % (h, m, s) if h else "%d:%02d" % (m, s)


# ----------------------------------------------------------------------------------------------
# Early stopping: asynchronous successive halving (--early_stopping=asha)
# ----------------------------------------------------------------------------------------------
#
# Training scripts written for hypnettorch rewrite their summary file while they train
# ('finished 0' and the values so far, with the step in --es_step_key). hpsearch reads a running
# run's summary when it changes, keeps what it saw (hpsearch_progress.jsonl), and at the rungs
# R, R*eta, R*eta^2, ... below --es_max_step compares the run with every run that reached that
# rung so far: a run worse than their (1 - 1/eta) quantile is stopped. Nothing ever waits for
# other runs (Li et al., "A system for massively parallel hyperparameter tuning", MLSys 2020).
# RungTable decides from what was recorded; EarlyStopping watches the runs and feeds it.


def rung_steps(min_step, max_step, eta):
    """R, R*eta, R*eta^2, ... below ``max_step`` (runs that reach it are never stopped)."""
    rungs, step = [], min_step
    while step < max_step:
        rungs.append(step)
        step *= eta
    return rungs


def quantile(values, q):
    """The q-quantile of ``values`` (linear between the two nearest, as numpy's default)."""
    ordered = sorted(values)
    at = (len(ordered) - 1) * q
    low = int(math.floor(at))
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (at - low)


class RungTable(object):
    """The values recorded at each rung, and one verdict per report: a pure function of what
    was recorded, so it can be tested (and rebuilt on --resume) without any process."""

    def __init__(self, min_step, max_step, eta, ascending):
        self.rungs = rung_steps(min_step, max_step, eta)
        self.max_step = max_step
        self.keep_share = 1.0 / eta
        self.sign = -1.0 if ascending else 1.0   # scores: higher is better
        self.scores = {rung: [] for rung in self.rungs}
        self.reached = collections.defaultdict(set)   # run name -> rungs recorded

    def report(self, name, step, value):
        """Run ``name`` reports ``value`` at ``step``. Its value is recorded at each rung it
        reaches for the first time (its own value included in the comparison); returns
        ``(rung, cutoff)`` when it is worse than the cutoff of one of them, else None. A run
        that has reached the last step is never stopped."""
        verdict = None
        score = self.sign * value
        for rung in self.rungs:
            if step < rung or rung in self.reached[name]:
                continue
            self.reached[name].add(rung)
            self.scores[rung].append(score)
            cutoff = quantile(self.scores[rung], 1.0 - self.keep_share)
            if verdict is None and score < cutoff:
                verdict = (rung, self.sign * cutoff)
        return None if step >= self.max_step else verdict


class EarlyStopping(object):
    """Watches the summaries of running runs (a look every ``interval`` seconds; a file is
    read only when it changed), keeps each run's history in jobs/<run>.progress.jsonl (it
    moves into the run folder with the logs) and says which runs to stop."""

    def __init__(self, config, folder, table, step_key, interval):
        self.config = config
        self.folder = folder
        self.table = table
        self.step_key = step_key
        self.interval = interval
        self.next_look = now()
        self.seen = {}   # run name -> what its summary looked like when last read

    def recheck_in(self):
        return max(0.0, self.next_look - now())

    def review(self, runs):
        """``[(run, reason)]``: the runs whose latest report puts them below a rung's cutoff."""
        if now() < self.next_look:
            return []
        self.next_look = now() + self.interval
        stops = []
        for run in runs:
            reason = self.look(run)
            if reason and not run.killed:
                stops.append((run, reason))
        return stops

    def look(self, run, summary=None):
        """Read the run's summary if it changed (or take ``summary``, its last one), keep it
        in the history and report it to the table; the reason to stop it, or None."""
        if summary is None:
            summary = self._changed_summary(run)
            if summary is None:
                return None
        step = _number(summary.get(self.step_key))
        value = _number(summary.get(self.config.performance_key))
        append_line(self.folder.job_file(run, ".progress.jsonl"), json.dumps(
            {"time": round(time.time(), 3), "step": step, "values": json_safe(summary)}))
        verdict = None if step is None or value is None \
            else self.table.report(run.name, step, value)
        if verdict is None:
            return None
        rung, cutoff = verdict
        return "early stopping at %s %s: %s %s worse than %s" % (
            self.step_key, "%g" % rung, self.config.performance_key, "%.6g" % value,
            "%.6g" % cutoff)

    def _changed_summary(self, run):
        """The run's summary when it changed since the last look, else None."""
        path = os.path.join(run.out_dir, self.config.summary_filename)
        try:
            st = os.stat(path)
            stamp = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = None
        if self.config.summary_parser is None and (stamp is None or
                                                   self.seen.get(run.name) == stamp):
            return None
        summary = collect_summary(self.config, run)
        mark = stamp if self.config.summary_parser is None else summary
        if not summary or self.seen.get(run.name) == mark:
            return None
        self.seen[run.name] = mark
        return summary

    def rebuild(self, runs):
        """--resume: the rungs as the runs' histories fill them (wherever each run's history
        is now: its folder, TO_BE_DELETED or jobs/)."""
        for run in runs:
            found, _ = self.folder.find_run_dir(run)
            places = [os.path.join(found, JOB_FILES[".progress.jsonl"])] if found else []
            places.append(self.folder.job_file(run, ".progress.jsonl"))
            for line in _read_lines(next((p for p in places if os.path.isfile(p)), None)):
                try:
                    entry = json.loads(line)
                    step = _number(entry["step"])
                    value = _number(entry["values"].get(self.config.performance_key))
                except (ValueError, KeyError, TypeError, AttributeError):
                    continue
                if step is not None and value is not None:
                    self.table.report(run.name, step, value)


def _number(value):
    """A summary value as a finite number, or None."""
    try:
        x = float(unwrap(value))
    except (TypeError, ValueError, OverflowError):
        return None
    return x if math.isfinite(x) else None


def _read_lines(path):
    if path is None:
        return []
    try:
        with open(path, "rb") as f:
            return [line.decode("utf-8", "replace") for line in f]
    except OSError:
        return []


# ----------------------------------------------------------------------------------------------
# The search loop
# ----------------------------------------------------------------------------------------------


class StopSignals(object):
    """Ctrl-C and SIGTERM set a flag the loop checks (nothing is raised mid-write). The first
    stops the search gracefully; a second one kills the runs at once. SIGUSR1 is the
    scheduler's warning that the launcher's own job nears its time limit (Slurm
    --signal=B:USR1@..., LSF -wa USR1, Grid Engine s_rt): the launcher detaches (``time_up``).
    A hangup (terminal closed, ssh connection lost) changes nothing: the search goes on, its
    messages go on into hpsearch.log, and the runs, each in its own session, never see it."""

    def __init__(self):
        self.count = 0
        self.name = ""
        self.time_up = False

    def install(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)
        signal.signal(signal.SIGUSR1, self._time_up)
        # A handler rather than SIG_IGN, which the runs would inherit.
        signal.signal(signal.SIGHUP, _no_op_handler)

    def _handle(self, signum, frame):
        self.count += 1
        self.name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"

    def _time_up(self, signum, frame):
        self.time_up = True

    def __bool__(self):
        return self.count > 0 or self.time_up

    __nonzero__ = __bool__


class Search(object):
    """Runs every planned run on a backend and records each as it ends."""

    # Longest wait for an event before the loop looks at the stop flag again.
    SIGNAL_CHECK = 0.5
    # Seconds between Ctrl-C's SIGTERM to the runs and their SIGKILL (a second Ctrl-C: at once).
    STOP_GRACE = 5.0

    def __init__(self, config, folder, runs, backend, results, progress, signals,
                 max_retries=0, early_stopping=None):
        self.config = config
        self.early_stopping = early_stopping   # an EarlyStopping, or None
        self.folder = folder
        self.runs = runs
        self.backend = backend
        self.results = results
        self.progress = progress
        self.signals = signals
        self.max_retries = max_retries
        self.stopping = False     # no retries once the search is being stopped
        self.unrecorded = []      # runs the backend reported ended, not yet recorded
        self.told_wait = None     # what blocked waiting runs when last said
        self.pending = collections.deque(r for r in runs if r.state == PENDING)

    def execute(self):
        """Run everything; False if a stop signal cut the search short."""
        pending = self.pending
        while (pending or self.unrecorded or self.backend.running()) and not self.signals:
            # Ends first: a run's end is told before the start of the run taking its slot.
            self._record_ended()
            self._start_what_fits()
            if pending or self.backend.running():
                waits = [self.SIGNAL_CHECK, self.backend.recheck_in()]
                if self.early_stopping is not None:
                    waits.append(self.early_stopping.recheck_in())
                self.unrecorded = self.backend.wait(min(w for w in waits if w is not None))
            self._stop_the_hopeless()
            self.progress.show()
        self._record_ended()
        if not self.signals:
            return True
        self._stop_running()
        return False

    def _stop_the_hopeless(self):
        """Early stopping: end the runs whose latest report puts them below a rung's cutoff."""
        if self.early_stopping is None:
            return
        for run, reason in self.early_stopping.review(self.backend.going()):
            run.early_stopped = True
            self.backend.end_run(run, reason)

    def _start_what_fits(self):
        while self.pending:
            token = self.backend.slot()
            if token is None:
                self._explain_wait()
                break
            self._start(self.pending.popleft(), token)
        self.backend.flush()

    def _explain_wait(self):
        """Runs wait, and not only for our own runs to end: say which GPU blocks for what
        reason, once per change (the live status line shows it in short)."""
        blockers = self.backend.why_waiting()
        if all(kind == "full" for kind, _, _ in blockers):  # only our own limit: as it should
            self.progress.waiting_for, self.told_wait = "", None
            return
        self.progress.waiting_for = ", ".join(short for _, _, short in blockers)
        kinds = [(text.split(":")[0], kind) for kind, text, _ in blockers]
        if kinds != self.told_wait:
            self.progress.log("waiting for a GPU: %s" % "; ".join(t for _, t, _ in blockers))
        self.told_wait = kinds

    def _record_ended(self, on_error=None):
        """Record the runs the backend reported ended. ``on_error="skip"``: an OSError while
        recording one (the launcher's own disk failing) skips it; by default it is raised."""
        while self.unrecorded:
            run = self.unrecorded.pop(0)
            try:
                self._finish(run)
            except OSError:
                if on_error is None:
                    self.unrecorded.insert(0, run)  # abandon() tries once more
                    raise

    def _stop_running(self):
        """Stop our runs (SIGTERM, then SIGKILL) and record each as it ends. Near the end of
        the launcher's own job, detach instead: cluster jobs stay queued and record their
        exit status themselves; local runs, which cannot outlive it, are stopped."""
        self.stopping = True
        self.progress.close()
        if self.signals.time_up and not self.signals.count:
            say("hpsearch: SIGUSR1: the launcher's own job nears its time limit; detaching (%s)"
                % self.backend.abandon())
            self._record_the_rest()
            return
        if self.backend.running():
            say("hpsearch: %s: stopping %d running run(s); press Ctrl-C again to kill them "
                "at once" % (self.signals.name, self.backend.running()))
        self.backend.stop(grace=self.STOP_GRACE, hurry=lambda: self.signals.count > 1)
        self._record_the_rest()

    def _record_the_rest(self, on_error=None):
        """Record runs as the backend reports their end, until none is left."""
        while True:
            self._record_ended(on_error)
            self.unrecorded = self.backend.wait(self.SIGNAL_CHECK)
            self._record_ended(on_error)
            if not self.backend.running():
                return

    def abandon(self, exc, continue_with):
        """The launcher's own files failed (disk full, read-only, folder removed): stop the
        runs that must not go on unwatched, record what can still be recorded, and say what
        happened and how to go on. The exit status."""
        self.stopping = True
        self.progress.close()
        left = self.backend.abandon()
        self._record_the_rest(on_error="skip")
        self.progress.close()
        CONSOLE.say("hpsearch: error: cannot write %s: %s; the search stopped (%s). Fix that "
                    "(free space, permissions, the folder), then continue with: %s"
                    % (exc.filename or self.folder.path, exc.strerror or exc, left,
                       continue_with), sys.stderr)
        return EXIT_LAUNCHER_FAILED

    def _start(self, run, token):
        run.state, run.started = RUNNING, time.time()
        run.exit_code, run.reason, run.killed, run.early_stopped = None, "", False, False
        self.progress.run_started()
        self.progress.waiting_for = ""
        if self.backend.start(run, token):
            self.progress.log("%s %s (run %d/%d%s%s)" % (
                self.backend.started_word, run.name, run.index + 1, len(self.runs),
                ", GPU %s" % token["_gpu"] if "_gpu" in token else "",
                ", attempt %d" % run.attempt if run.attempt > 1 else ""))

    def _finish(self, run):
        run.ended = time.time()
        run.summary = collect_summary(self.config, run) if os.path.isdir(run.out_dir) else None
        if self.early_stopping is not None and run.summary:
            self.early_stopping.look(run, run.summary)  # its last report, into its history
        if run.early_stopped and not (run.exit_code == 0 and is_finished(run.summary)):
            run.state = STOPPED   # (one that finished as it was being stopped stays finished)
        elif run.killed and not run.early_stopped:
            run.state = KILLED
        elif run.exit_code == 0:
            run.state = FINISHED if is_finished(run.summary) else UNFINISHED
        else:
            run.state = FAILED
        if run.state == FINISHED:
            run.reason = ""
        self.folder.keep_run_files(run)
        log = self._explain_end(run)
        self.folder.log_state(run)
        if (run.state not in DONE_STATES and run.attempt <= self.max_retries
                and not self.signals and not self.stopping):
            self.progress.log("%s; trying again (%d of %d retries)" % (
                self._end_line(run, log), run.attempt, self.max_retries))
            self.folder.set_aside(run)
            run.attempt += 1
            run.state = PENDING
            self.pending.append(run)
            self.progress.run_ended(None)
            return
        self.results.append(run)
        self.progress.run_ended(run.state)
        self.progress.log(self._end_line(run, log))

    def _explain_end(self, run):
        """Give a run that did not finish its reason (unless the backend gave one): the last
        line of its stderr (or stdout) for a failure, what the summary lacked for an
        unfinished run. Returns the log to look at (None for a finished run)."""
        if run.state in DONE_STATES:
            return None
        err = self.folder.log_of(run, ".err")
        if run.state == UNFINISHED:
            run.reason = run.reason or why_unfinished(self.config, run)
        elif run.state == FAILED and not run.reason:
            run.reason = (last_line_of(err) or last_line_of(self.folder.log_of(run, ".out"))
                          or "no message on stderr or stdout")
        return err if os.path.exists(err) else None

    def _end_line(self, run, log):
        """``<state> <run> (exit N): <reason> [log: <path>]`` or, for a finished run, its
        performance."""
        line = "%s %s (%s)" % (run.state, run.name, exit_text(run.exit_code))
        key = self.config.performance_key
        if run.state == FINISHED:
            if run.summary and key in run.summary:
                line += " %s=%s" % (key, format_cell(run.summary[key]))
            return line
        return line + ": %s%s" % (run.reason, " [log: %s]" % log if log else "")

    def best_run(self):
        """The best finished run so far (by the performance key), or None."""
        finished = [r for r in self.runs if r.state == FINISHED and r.summary
                    and sort_number(format_cell(r.summary.get(self.config.performance_key)))
                    is not None]
        if not finished:
            return None
        return min(finished, key=lambda r: rank_key(
            r.state, r.summary[self.config.performance_key], self.config.performance_sort_asc))


# ----------------------------------------------------------------------------------------------
# Status of a search (--status): from its files alone
# ----------------------------------------------------------------------------------------------


class SearchStatus(object):
    """How a search stands, read from its record, journal, results table and lock file only:
    nothing is locked or written, so it can be asked from any shell (another login node of
    the same file system too), while the search runs or after it ended."""

    SHOWN = 10   # runs listed per section at the most

    def __init__(self, folder):
        self.folder = folder
        record = folder.read_record(context="--status")
        self.runs = runs_from_record(record, folder)
        self.key = record.get("performance_key") or ""
        self.ascending = bool(record.get("performance_sort_asc"))
        self.journal = folder.read_journal()
        self.rows = self._results(record.get("out_arg") or "out_dir")
        self.now = time.time()

    def _results(self, out_arg):
        """``{run name: row}`` of search_results.csv (the runs the launcher recorded)."""
        try:
            with open(self.folder.results, newline="", encoding="utf-8",
                      errors="replace") as f:
                rows = list(csv.DictReader(f, delimiter=";"))
        except (OSError, csv.Error):
            return {}
        return {os.path.basename((r.get(out_arg) or "").rstrip(os.sep)): r for r in rows}

    def state_of(self, run):
        """``(state, last journal entry)``; a run that ended but waits for a retry (no row in
        the results table yet) and one never started are ``waiting``."""
        entries = self.journal.get(run.name)
        last = entries[-1] if entries else None
        if last is None:
            return "waiting", None
        state = RUNNING if last["state"] == SUBMITTING else last["state"]
        if state in ENDED_STATES and run.name not in self.rows:
            return "waiting", last
        return state, last

    def launcher(self):
        """One line on the launcher that holds the folder, from the lock file it keeps."""
        try:
            with open(self.folder.file(LOCK_FILE)) as f:
                words = f.read().split()
            pid, host = int(words[0]), words[1] if len(words) > 1 else ""
        except (OSError, ValueError, IndexError):
            return "no launcher (the search ended or was stopped)"
        if host and host != socket.gethostname():
            return "launcher pid %d on %s" % (pid, host)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return "no launcher: pid %d has gone (continue with --resume)" % pid
        except OSError:
            pass
        return "launcher running (pid %d)" % pid

    def text(self):
        states = collections.OrderedDict((r.name, self.state_of(r)) for r in self.runs)
        counts = collections.Counter(state for state, _ in states.values())
        order = [FINISHED, RUNNING, "waiting", STOPPED, UNFINISHED, FAILED, KILLED]
        lines = ["search %s: %s; %s" % (self.folder.path, plural(len(self.runs), "run"),
                                        self.launcher()),
                 "  " + ", ".join("%s %d" % (s, counts[s]) for s in order)]
        going = [(name, last) for name, (state, last) in states.items() if state == RUNNING]
        if going:
            lines.append("  running:")
            lines += ["    %s  %s  %s" % (name, _duration(self.now - last["time"]),
                                          self._where(last)) for name, last in going[:self.SHOWN]]
            lines += self._more(going)
        lines += self._best()
        missed = [(name, last) for name, (state, last) in states.items()
                  if state in (UNFINISHED, FAILED, KILLED)]
        if missed:
            lines.append("  did not finish:")
            lines += ["    %s %s (%s): %s" % (name, last["state"], exit_text(last.get("exit_code")),
                                              last.get("reason") or "no reason recorded")
                      for name, last in missed[:self.SHOWN]]
            lines += self._more(missed)
        lines.append("  " + self._time_left(counts, going))
        return "\n".join(lines)

    def _more(self, items):
        return ["    ... and %d more" % (len(items) - self.SHOWN)] if len(items) > self.SHOWN \
            else []

    @staticmethod
    def _where(entry):
        if "gpu" in entry:
            return "GPU %s" % entry["gpu"]
        if entry.get("job_id") is None:
            return "being submitted"
        return ("job %s" if entry.get("job_name") else "pid %s") % entry["job_id"]

    def _best(self):
        finished = [(name, row) for name, row in self.rows.items()
                    if row.get(STATE_COLUMN) == FINISHED
                    and sort_number(row.get(self.key)) is not None]
        if not finished:
            return []
        name, row = min(finished, key=lambda nr: rank_key(FINISHED, nr[1][self.key],
                                                          self.ascending))
        return ["  best so far: %s, %s=%s (%s)" % (name, self.key, row[self.key],
                                                   os.path.join(self.folder.path, name))]

    def _time_left(self, counts, going):
        """From the mean duration of the runs that ended and how many run at once."""
        durations = []
        for entries in self.journal.values():
            starts = [e["time"] for e in entries if e["state"] == RUNNING]
            ends = [e["time"] for e in entries if e["state"] in ENDED_STATES]
            if starts and ends and _is_number(starts[-1]) and _is_number(ends[-1]):
                durations.append(max(0.0, ends[-1] - starts[-1]))
        left = counts["waiting"]
        if not left and not going:
            return "time left: none, nothing waits or runs"
        if not durations:
            return "time left: unknown until a run has ended"
        mean = sum(durations) / len(durations)
        at_once = max(1, len(going))
        busy = sum(max(0.0, mean - (self.now - last["time"])) for _, last in going)
        return "time left: about %s (runs take %s on average, %d at a time)" % (
            _duration((left * mean + busy) / at_once), _duration(mean), at_once)


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def show_status(args):
    """--status [--watch]: print how the search stands (again every --watch seconds)."""
    folder = SearchFolder(os.path.abspath(args.status))
    while True:
        text = SearchStatus(folder).text()
        if args.watch is None:
            say(text)
            return EXIT_OK
        if CONSOLE.is_terminal(sys.stdout):
            CONSOLE.write(sys.stdout, "\033[H\033[2J")
        say("%s  (every %gs; Ctrl-C ends this)\n%s" % (
            time.strftime("%H:%M:%S"), args.watch, text))
        try:
            time.sleep(args.watch)
        except KeyboardInterrupt:
            return EXIT_OK


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag gives one line, ``<name>: error: ...`` with a usage hint, and
    exit status 2."""

    def __init__(self, hint, **kwargs):
        kwargs.setdefault("allow_abbrev", False)  # --local_job=2 is a typo, not --local_jobs
        argparse.ArgumentParser.__init__(self, **kwargs)
        self.hint = hint

    def error(self, message):
        CONSOLE.say("%s: error: %s%s (usage: %s; see %s --help)" % (
            os.path.splitext(self.prog)[0], one_line(message), self._near_misses(message),
            self.hint, self.prog), sys.stderr)
        sys.exit(EXIT_USAGE)

    def _near_misses(self, message):
        """``; did you mean --local_jobs?`` for flags argparse did not know."""
        if not message.startswith("unrecognized arguments:"):
            return ""
        known = [o for o in self._option_string_actions if o.startswith("--")]
        guesses = []
        for word in message.split(":", 1)[1].split():
            flag = word.split("=", 1)[0]
            if flag.startswith("--"):
                guesses += difflib.get_close_matches(flag, known, n=1, cutoff=0.6)
        return "; did you mean %s?" % " ".join(guesses) if guesses else ""


def build_parser():
    p = ArgumentParser(
        hint="hpsearch.py --grid_module=CONFIG [options]",
        prog="hpsearch.py",
        usage="%(prog)s --grid_module=CONFIG [options]\n"
              "       %(prog)s --resume SEARCH_DIR [options]\n"
              "       %(prog)s --status SEARCH_DIR [--watch [SECONDS]]",
        description="hpsearch - run a hyperparameter search over a training script, one run "
                    "after another, packed onto local GPUs, or as cluster jobs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s = p.add_argument_group("search")
    s.add_argument("--grid_module", type=str, default=None,
                   help="REQUIRED (except with --resume or --status). The config: a dotted "
                        "module name (importable from the working directory or --run_cwd) or "
                        "a path to a .py file. See hpsearch_config_template.py.")
    s.add_argument("--grid_config", type=str, default="",
                   help="A file (pickle as in hypnettorch, or JSON) holding a dict with 'grid' "
                        "and/or 'conditions' that replace those of the config module.")
    s.add_argument("--out_dir", type=str, default="./out/hyperparam_search",
                   help="Where the search folder 'search_<time>' is made. A relative path is "
                        "relative to --run_cwd, as in hypnettorch.")
    s.add_argument("--force_out_dir", action="store_true",
                   help="Use --out_dir itself as the search folder (refused if it exists).")
    s.add_argument("--dont_force_new_dir", action="store_true",
                   help="With --force_out_dir: allow an existing folder (files of an earlier "
                        "search there are renamed, never deleted).")
    s.add_argument("--num_searches", type=int, default=-1, metavar="N",
                   help="Run at most N configurations (-1: all).")
    s.add_argument("--sampler", type=str, default="grid", choices=SAMPLERS,
                   help="How configurations are chosen: 'grid' the full product of the grid's "
                        "lists; 'random' --num_searches distinct random draws; 'quasirandom' "
                        "--num_searches draws of a scrambled Halton sequence (evener than "
                        "random). Grid entries that are distributions (uniform, loguniform, "
                        "randint) need one of the last two.")
    s.add_argument("--dont_generate_full_grid", action="store_true",
                   help="The old name of --sampler=random.")
    s.add_argument("--deterministic_search", action="store_true",
                   help="Run configurations in grid order instead of shuffling them.")
    s.add_argument("--random_seed", type=int, default=42, metavar="N",
                   help="Seed for the shuffle and the random picks.")
    s.add_argument("--run_cwd", type=str, default=".",
                   help="The working directory of the runs; _SCRIPT_NAME is relative to it.")
    s.add_argument("--python", type=str, default=sys.executable,
                   help="The interpreter that runs the training script.")
    s.add_argument("--dry_run", action="store_true",
                   help="Print the commands, how many there are and how the grid became them "
                        "(duplicates removed, conditions skipped); run and write nothing. "
                        "With --resume: the commands that would run again.")
    s.add_argument("--resume", type=str, default="", metavar="SEARCH_DIR",
                   help="Continue the search in SEARCH_DIR: finished runs are kept, the others "
                        "run again (their partial folders renamed, never deleted). The config "
                        "and commands come from SEARCH_DIR; run flags from this command line.")
    s.add_argument("--max_retries", type=int, default=0, metavar="N",
                   help="Try a run that fails or does not report 'finished 1' up to N more "
                        "times; each attempt's folder is kept as <run>_attempt<k>.")
    s.add_argument("--run_timeout", type=float, default=0, metavar="SECONDS",
                   help="End runs that take longer (0: no limit); they are recorded as killed.")
    loc = p.add_argument_group("local runs")
    loc.add_argument("--visible_gpus", type=str, default="",
                     help="GPUs to use, as nvidia-smi numbers them ('0,1,3'); empty: all "
                          "GPUs; -1: no GPUs, runs one after another in the foreground "
                          "(or --local_jobs at once).")
    loc.add_argument("--local_jobs", type=int, default=1, metavar="N",
                     help="Without GPUs: run N configurations at once.")
    loc.add_argument("--max_num_jobs_per_gpu", type=int, default=1, metavar="N",
                     help="At most N of our runs on one GPU at once.")
    loc.add_argument("--allowed_memory", type=float, default=0.5,
                     help="A GPU takes a new run only while at most this fraction of its "
                          "memory is in use.")
    loc.add_argument("--allowed_load", type=float, default=0.5,
                     help="A GPU takes a new run only while its utilisation is at most this "
                          "(0-1).")
    loc.add_argument("--sim_startup_time", type=float, default=60, metavar="SECONDS",
                     help="After a run starts on a GPU, the GPU takes no other run for this "
                          "long, or until the run shows up in nvidia-smi holding memory.")
    loc.add_argument("--gpu_poll_interval", type=float, default=2.0, metavar="SECONDS",
                     help="How often nvidia-smi is asked while a run waits for a GPU.")
    cl = p.add_argument_group("cluster")
    cl.add_argument("--run_cluster", action="store_true",
                    help="Submit runs as jobs to a cluster scheduler (see --scheduler).")
    cl.add_argument("--scheduler", type=str, default="lsf",
                    help="The cluster's scheduler: lsf, slurm or sge (Grid Engine).")
    cl.add_argument("--num_jobs", type=int, default=8, metavar="N",
                    help="At most N of our jobs queued or running at once.")
    cl.add_argument("--num_hours", type=int, default=24, metavar="N",
                    help="Wall-time limit of each job, in hours.")
    cl.add_argument("--runs_per_job", type=int, default=1, metavar="K",
                    help="K runs share one job and run one after another in it, each with its "
                         "own folder, logs and exit status (fewer, longer jobs: --num_hours is "
                         "the job's limit, so K times a run's time must fit in it).")
    cl.add_argument("--array", action="store_true",
                    help="Submit the runs as job arrays (throttled to --num_jobs at once by "
                         "the scheduler) instead of one job each.")
    cl.add_argument("--poll_interval", type=float, default=30, metavar="SECONDS",
                    help="How often the queue is asked (one call for all our jobs). A job's "
                         "end is noticed sooner through the exit status it writes.")
    cl.add_argument("--scheduler_args", type=str, default="", metavar="ARGS",
                    help="Further options for sbatch/bsub/qsub, as one string "
                         "('--account=x --nice=10').")
    cl.add_argument("--resubmit_self", type=str, nargs="?", const="", default=None,
                    metavar="JOB_SCRIPT",
                    help="For a launcher that runs as a job itself: when the scheduler warns "
                         "that its time limit nears (SIGUSR1), detach and submit its own job "
                         "script again (Slurm and Grid Engine keep a copy; under LSF give the "
                         "file) to start when this job ends and resume the search.")
    cl.add_argument("--detach", action="store_true",
                    help="On Ctrl-C or SIGTERM leave queued and running jobs to the scheduler "
                         "(re-attach with --resume) instead of cancelling them.")
    sl = p.add_argument_group("Slurm")
    sl.add_argument("--slurm_mem", type=str, default="8G", help="sbatch --mem ('' leaves it out).")
    sl.add_argument("--slurm_gres", type=str, default="gpu:1",
                    help="sbatch --gres ('' leaves it out).")
    sl.add_argument("--slurm_partition", type=str, default="",
                    help="sbatch --partition ('' leaves it out).")
    sl.add_argument("--slurm_qos", type=str, default="", help="sbatch --qos ('' leaves it out).")
    sl.add_argument("--slurm_constraint", type=str, default="",
                    help="sbatch --constraint ('' leaves it out).")
    es = p.add_argument_group("early stopping")
    es.add_argument("--early_stopping", type=str, default="none", choices=("none", "asha"),
                    help="'asha': asynchronous successive halving. A running run's summary is "
                         "read as it changes; at the rungs R, R*eta, R*eta^2, ... below "
                         "--es_max_step a run worse than the (1 - 1/eta) quantile of the runs "
                         "that reached that rung is stopped (state 'stopped'). The metric is "
                         "_PERFORMANCE_KEY in the direction of _PERFORMANCE_SORT_ASC.")
    es.add_argument("--es_step_key", type=str, default="", metavar="KEY",
                    help="The summary keyword in which the script reports its current step "
                         "or epoch (one of _SUMMARY_KEYWORDS).")
    es.add_argument("--es_min_step", type=float, default=1, metavar="R",
                    help="The first rung.")
    es.add_argument("--es_max_step", type=float, default=None, metavar="M",
                    help="The script's last step: runs that reach it are never stopped.")
    es.add_argument("--es_eta", type=float, default=3, metavar="ETA",
                    help="Each rung keeps the best 1/ETA of the runs that reach it; the next "
                         "rung is ETA times further.")
    st = p.add_argument_group("status of a search")
    st.add_argument("--status", type=str, default="", metavar="SEARCH_DIR",
                    help="Print how the search in SEARCH_DIR stands and exit: runs by state, "
                         "each running run with its time and GPU or job, the best run so far, "
                         "why runs did not finish, the time left. Reads files only: works "
                         "from any shell, while the search runs or after.")
    st.add_argument("--watch", type=float, nargs="?", const=2.0, default=None,
                    metavar="SECONDS", help="With --status: print it again every SECONDS "
                                            "(2 if not given) until Ctrl-C.")
    lsf = p.add_argument_group("LSF")
    lsf.add_argument("--resources", type=str, default='"rusage[mem=8000, ngpus_excl_p=1]"',
                     help="bsub -R resource requirement (an enclosing pair of double quotes "
                          "is removed).")
    return p


# Flags naming files or handed to other programs: hpsearch writes them into UTF-8 files.
TEXT_FLAGS = ("grid_module", "grid_config", "out_dir", "run_cwd", "python", "resume", "status",
              "scheduler_args", "resources", "slurm_mem", "slurm_gres", "slurm_partition",
              "slurm_qos", "slurm_constraint")


def check_flags(args):
    for name in TEXT_FLAGS:
        if getattr(args, name):
            _check_argument(getattr(args, name), "--%s" % name)
    try:
        shlex.split(args.scheduler_args)
    except ValueError as exc:
        raise UsageError("--scheduler_args=%s: %s (it is split like a shell line: balance "
                         "its quotes)" % (args.scheduler_args, exc))
    if args.scheduler not in SCHEDULERS:
        raise UsageError("--scheduler=%s is unknown; use one of: %s"
                         % (args.scheduler, ", ".join(sorted(SCHEDULERS))))
    if args.runs_per_job < 1 or (args.runs_per_job > 1 and not args.run_cluster
                                 and not args.resume):
        raise UsageError("--runs_per_job=%d: give a number of at least 1, for cluster jobs "
                         "(--run_cluster)" % args.runs_per_job)
    if args.num_jobs < 1 or args.num_hours < 1 or args.poll_interval <= 0:
        raise UsageError("--num_jobs and --num_hours must be at least 1, --poll_interval "
                         "positive")
    if args.watch is not None and (not args.status or args.watch <= 0):
        raise UsageError("--watch needs --status SEARCH_DIR and a positive number of seconds")
    if args.status and not os.path.isdir(args.status):
        raise UsageError("--status %s: no such folder (give the search_<time> folder of a "
                         "search)" % args.status)
    if not args.grid_module and not args.resume and not args.status:
        raise UsageError("--grid_module is required: the config module or .py file of your "
                         "search (start from hpsearch_config_template.py)")
    if args.num_searches == 0 or args.num_searches < -1:
        raise UsageError("--num_searches=%d: give a positive number, or -1 for all"
                         % args.num_searches)
    if args.dont_generate_full_grid:
        if args.sampler == "quasirandom":
            raise UsageError("--dont_generate_full_grid is the old name of --sampler=random; "
                             "give one of them, not --sampler=quasirandom as well")
        args.sampler = "random"
    if args.sampler != "grid" and args.num_searches < 0:
        raise UsageError("%s needs --num_searches N (how many configurations to draw)" % (
            "--dont_generate_full_grid" if args.dont_generate_full_grid
            else "--sampler=%s" % args.sampler))
    check_early_stopping_flags(args)
    if args.max_retries < 0 or args.run_timeout < 0:
        raise UsageError("--max_retries and --run_timeout cannot be negative")
    if args.resume and not os.path.isdir(args.resume):
        raise UsageError("--resume %s: no such folder (give the search_<time> folder of the "
                         "search to continue)" % args.resume)
    if args.gpu_poll_interval < 0.1:
        raise UsageError("--gpu_poll_interval=%g: give at least 0.1 seconds"
                         % args.gpu_poll_interval)
    if args.local_jobs < 1 or args.max_num_jobs_per_gpu < 1:
        raise UsageError("--local_jobs and --max_num_jobs_per_gpu must be at least 1")
    if not os.path.isdir(args.run_cwd):
        raise UsageError("--run_cwd %s is not a folder" % args.run_cwd)
    if args.grid_config and not os.path.isfile(args.grid_config):
        raise UsageError("--grid_config: no such file: %s" % args.grid_config)


EARLY_STOPPING_FLAGS = ("early_stopping", "es_step_key", "es_min_step", "es_max_step", "es_eta")


def check_early_stopping_flags(args):
    if args.early_stopping == "none":
        return
    if not args.es_step_key or args.es_max_step is None:
        raise UsageError("--early_stopping=asha needs --es_step_key=KEY (the summary keyword "
                         "holding the step or epoch) and --es_max_step=M (the last step)")
    if not 0 < args.es_min_step < args.es_max_step or args.es_eta <= 1:
        raise UsageError("--early_stopping=asha needs 0 < --es_min_step < --es_max_step and "
                         "--es_eta above 1 (got %g, %g, %g)" % (args.es_min_step,
                                                                args.es_max_step, args.es_eta))


def check_step_key(config, args):
    """The step keyword must be one the summary reader reads."""
    if args.early_stopping != "none" and config.summary_parser is None \
            and args.es_step_key not in config.summary_keywords:
        raise UsageError("--es_step_key=%s is not one of _SUMMARY_KEYWORDS %r in %s; add it "
                         "there (and write '%s <step>' into the summary as the run goes)"
                         % (args.es_step_key, config.summary_keywords, config.source,
                            args.es_step_key))


def choose_slots(args):
    """The local backend's slot policy from --visible_gpus / --local_jobs."""
    wanted = parse_gpu_list(args.visible_gpus)
    if wanted == [] or (wanted is None and args.local_jobs > 1):
        return CpuSlots(args.local_jobs)
    if args.local_jobs > 1:
        raise UsageError("--local_jobs runs without GPUs; use it with --visible_gpus=-1, or "
                         "--max_num_jobs_per_gpu to put several runs on a GPU")
    try:
        gpus = query_gpus()
    except GpuError as exc:
        if wanted is None:  # the default (all GPUs) on a machine without any: run one by one
            warn("no GPUs (%s); running one configuration at a time without GPUs" % exc)
            return CpuSlots(1)
        raise UsageError("--visible_gpus=%s: %s" % (args.visible_gpus, exc))
    if wanted is None:
        chosen = gpus
    else:
        known = {g.index: g for g in gpus}
        unknown = [i for i in wanted if i not in known]
        if unknown:
            raise UsageError("--visible_gpus=%s: no GPU %s; nvidia-smi lists %s" % (
                args.visible_gpus, ",".join(map(str, unknown)),
                ",".join(str(g.index) for g in gpus) or "none"))
        chosen = [known[i] for i in wanted]
    if not chosen:
        warn("nvidia-smi lists no GPUs; running one configuration at a time without GPUs")
        return CpuSlots(1)
    return GpuSlots(chosen, args.max_num_jobs_per_gpu, args.allowed_memory, args.allowed_load,
                    args.sim_startup_time, args.gpu_poll_interval)


def resolve_out_dir(args):
    """A relative --out_dir is relative to --run_cwd, as hypnettorch had it."""
    return os.path.abspath(os.path.join(args.run_cwd, args.out_dir))


def make_runs(space, configs, config, args, folder_path, stamp):
    """The planned runs, and the command prefix (interpreter and script) they share."""
    prefix = command_prefix(args.python, config.script_name)
    width = len(str(len(configs)))
    runs = []
    for k, c in enumerate(configs):
        name = "sim_%s_%0*d" % (stamp, width, k + 1)
        out_dir = os.path.join(folder_path, name)
        runs.append(Run(k, name, space.as_dict(c), build_argv(
            prefix, config.out_arg, out_dir, space.arguments(c)), out_dir))
    return runs, prefix


# Exit statuses.
EXIT_OK, EXIT_RUNS_MISSED, EXIT_USAGE, EXIT_LAUNCHER_FAILED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
POSTPROCESSING_SCRIPT = "hpsearch_postprocessing.py"   # expected beside hpsearch.py


def main(argv=None):
    sys.dont_write_bytecode = True  # leave no __pycache__ beside the user's config
    try:
        return _main(argv)
    except UsageError as exc:
        CONSOLE.say("hpsearch: error: %s" % one_line(str(exc)), sys.stderr)
        return EXIT_USAGE
    except OSError as exc:  # an unwritable --out_dir, a full disk: say which file
        CONSOLE.say("hpsearch: error: %s: %s (check the path, its permissions and the free "
                    "space)" % (exc.filename or "a file", exc.strerror or exc), sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # before the runs started: nothing to stop
        CONSOLE.say("hpsearch: interrupted", sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        CONSOLE.close()


def _main(argv):
    args = build_parser().parse_args(argv)
    args.given_argv = list(sys.argv[1:] if argv is None else argv)
    check_resubmit_self(args)
    check_flags(args)
    if args.status:
        return show_status(args)
    prepared = resume_search(args) if args.resume else new_search(args)
    return EXIT_OK if prepared is None else run_search(args, *prepared)


def check_sampler(config, args):
    """Distributions are drawn from, never enumerated: they need a sampler that draws."""
    if args.sampler != "grid":
        return
    drawn = [k for k, v in config.grid.items() if isinstance(v, Distribution)]
    if drawn:
        raise UsageError("%s: grid[%r] is a distribution (%r), which the grid sampler cannot "
                         "enumerate; add --sampler=random or --sampler=quasirandom and "
                         "--num_searches=N" % (config.source, drawn[0], config.grid[drawn[0]]))


def new_search(args):
    """Plan a new search and lay out its folder; None after --dry_run."""
    run_cwd = os.path.abspath(args.run_cwd)
    module, source = import_config_module(args.grid_module, [os.getcwd(), run_cwd])
    override = load_grid_override(args.grid_config) if args.grid_config else {}
    config = build_config(module, source, override, run_cwd, check_script=not args.dry_run)
    check_sampler(config, args)
    check_step_key(config, args)
    space = GridSpace(config.grid, config.conditions, draws=draw_budget(args.num_searches)
                      if args.sampler != "grid" else 0)
    configs = plan_configs(space, args.num_searches, args.sampler, args.deterministic_search,
                           args.random_seed)
    plan = describe_plan(space, configs, args.sampler)
    if args.dry_run:
        if missing_script(config, run_cwd):  # commands can be looked at all the same
            warn(missing_script(config, run_cwd))
        prefix = command_prefix(args.python, config.script_name)
        for c in configs:
            say(" ".join(shlex.quote(a) for a in prefix + space.arguments(c)))
        say(plan)
        return None
    if not args.run_cluster:
        check_interpreter(args.python, run_cwd, "--python:")
    slots = choose_place(args)  # before anything is written: a GPU problem stops us here
    folder_path, stamp = create_search_dir(resolve_out_dir(args), args.force_out_dir,
                                           args.dont_force_new_dir)
    folder = SearchFolder(folder_path)
    folder.lock()
    folder.prepare()
    CONSOLE.log_path = folder.file(LOG_FILE)
    runs, prefix = make_runs(space, configs, config, args, folder_path, stamp)
    for path in [source] + ([args.grid_config] if args.grid_config else []):
        folder.keep_copy(path)
    folder.write_plan(runs, config, args, space.keys, prefix)
    results = ResultsTable(folder.results, space.keys, config.summary_keywords, config.out_arg)
    results.create()
    say("hpsearch: planned %s" % plan)
    return config, folder, runs, results, slots, run_cwd


def resume_search(args):
    """Pick up a search from its folder, wherever it is now: its own copy of the config, its
    planned runs, and what the journal and the run folders say became of them."""
    folder = SearchFolder(os.path.abspath(args.resume))
    record = folder.read_record()
    if not args.dry_run:
        folder.lock()
        CONSOLE.log_path = folder.file(LOG_FILE)
    run_cwd = record.get("run_cwd") or os.path.abspath(args.run_cwd)
    original = record.get("config_file") or ""
    copy = folder.file(os.path.basename(original))
    if not os.path.isfile(copy):
        raise UsageError("--resume %s: the search's copy of its config (%s) is missing"
                         % (folder.path, os.path.basename(original)))
    if os.path.isfile(original) and not _same_content(original, copy):
        warn("%s changed since the search started; resuming with the search's own copy %s"
             % (original, copy))
    module, source = import_config_module(copy, [os.getcwd(), run_cwd])
    config = build_config(module, source, {}, run_cwd)
    check_step_key(config, args)
    runs = runs_from_record(record, folder)
    if record.get("scheduler") and not args.run_cluster:  # a cluster search stays one
        args.run_cluster, args.scheduler = True, record["scheduler"]
    if args.early_stopping == "none" and isinstance(record.get("early_stopping"), dict):
        for name in EARLY_STOPPING_FLAGS:  # the search's own early stopping goes on
            setattr(args, name, record["early_stopping"].get(name, getattr(args, name)))
        check_early_stopping_flags(args)
    journal = folder.read_journal()
    owner = JournalOwner(folder, record)
    if args.dry_run:  # what would run again, touching nothing
        again = [r for r in runs if not owner.still_going(journal.get(r.name))
                 and not earlier_outcome(config, folder, r, journal.get(r.name) or [])[0]]
        for run in again:
            say(run.shell_command())
        say("%s to run again (of %d planned)" % (plural(len(again), "command"), len(runs)))
        return None
    if not args.run_cluster and runs:
        check_interpreter(runs[0].argv[0], run_cwd, "--resume %s: the search's interpreter"
                          % folder.path)
    place = choose_place(args)
    folder.tidy()
    if args.run_cluster:
        attached = reattach_jobs(place, folder, runs, journal, owner)
    else:
        attached = {}
        stop_leftover_processes(journal, owner)
    kept = restore_states(config, folder, runs, journal, attached)
    results = ResultsTable(folder.results, record.get("arg_keys") or [],
                           config.summary_keywords, config.out_arg)
    results.create(kept)
    say("hpsearch: resuming %s: %d of %d runs finished before, %d to run"
        % (folder.path, len(kept), len(runs), len(runs) - len(kept)))
    return config, folder, runs, results, place, run_cwd


def _same_content(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


class JournalOwner(object):
    """Tells which journal entries were written for this copy of the search folder: a copied
    folder holds its original's journal, whose processes and jobs are not its own."""

    def __init__(self, folder, record):
        self.identity = folder.identity()
        planned = planned_folder(record)
        self.legacy_here = planned is not None and _same_folder(planned, folder.path)
        # hpsearch 1.0 marked run processes with the folder's path as it was spelled then.
        self.legacy_marker = "%s=%s" % (LEGACY_MARKER_VARIABLE, planned) \
            if self.legacy_here else None

    def owns(self, entry):
        if "folder" in entry:
            return entry["folder"] == self.identity
        return self.legacy_here  # hpsearch 1.0 entries: only in the folder that wrote them

    def in_flight(self, entries):
        """The last entry if it says the run was submitted or running here, else None."""
        last = entries[-1] if entries else None
        if last and last["state"] in (SUBMITTING, RUNNING) and self.owns(last):
            return last
        return None

    def still_going(self, entries):
        return self.in_flight(entries) is not None


def _same_folder(a, b):
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def stop_leftover_processes(journal, owner):
    """Runs of a killed launcher may still be alive: end them (and their children) before
    they are run again. Found by the folder's identity in their environment (even one killed
    before the journal got its pid), and by the pids the journal has for this folder."""
    journaled = []
    for entries in journal.values():
        last = owner.in_flight(entries)
        if last and _is_int(last.get("job_id")):
            pid = last["job_id"]
            if last.get("job_start") in (None, process_start_time(pid)):
                journaled.append(pid)
    markers = [run_marker(owner.identity)] + [m for m in [owner.legacy_marker] if m]
    leftovers = sorted(groups_marked(markers) | alive_groups(journaled))
    if leftovers:
        say("hpsearch: stopping %d run(s) left over from the interrupted launcher"
            % len(leftovers))
        terminate_groups(leftovers, grace=5.0)


def reattach_jobs(scheduler, folder, runs, journal, owner):
    """``{run name: job id}`` of cluster jobs an earlier launcher left queued or running: by
    the job id the journal has, or, for a submission the launcher did not live to see
    through, by the job name it was submitted under. A submission the scheduler does not
    know is called off (its job, should it still appear, never starts) and runs again."""
    going, cut_short, in_flight = {}, [], []
    for run in runs:
        last = owner.in_flight(journal.get(run.name))
        if last is None:
            continue
        run.attempt = last.get("attempt", 1)
        if folder.recorded_exit_status(run) is not None:
            continue  # it ended while no launcher watched: its exit status tells
        in_flight.append((run, last))
    give_job_logs(folder, scheduler, in_flight)
    for run, last in in_flight:
        task = last.get("task")
        if last["state"] == RUNNING and last.get("job_id"):
            going[run.name] = str(last["job_id"])
        elif last.get("job_name") and not folder.called_off(run, run.attempt):
            cut_short.append((run, last["job_name"], task))
    try:
        found = find_jobs(scheduler, {name for _, name, _ in cut_short})
        for run, name, task in cut_short:
            if name not in found and not folder.call_off(run, run.attempt):
                found.update(find_jobs(scheduler, {name}))  # it started after we asked
            if name in found:
                going[run.name] = found[name] if task is None \
                    else scheduler.task_id(found[name], task)
    except SchedulerError as exc:
        raise UsageError("--resume %s: cannot ask the scheduler which of the search's "
                         "submissions went through (%s); try again when it answers"
                         % (folder.path, exc))
    return going


def give_job_logs(folder, scheduler, in_flight):
    """Tell the last run of each job still going (the run that receives the job's log)
    where the scheduler logs that job. ``in_flight``: ``[(run, its last journal line)]``."""
    tables, owners = {}, {}   # job name -> {run name: line}; (job name, task) -> run
    for run, last in in_flight:
        job = (last.get("job_name"), last.get("task"))
        if job[0] is None:
            continue
        if job[0] not in tables:
            tables[job[0]] = job_table_lines(folder, job[0])
        place = tables[job[0]].get
        if job not in owners or place(run.name, 0) > place(owners[job].name, 0):
            owners[job] = run
    for (name, task), run in owners.items():
        run.task_log = (array_task_log(folder, scheduler, name, task) if _is_int(task)
                        else job_log(folder, run, name, shared=bool(tables[name])))


def job_table_path(folder, job_name):
    """The table of a job of several runs: a line ``<run> <attempt>`` for each, in order."""
    return os.path.join(folder.jobs, "%s.runs" % job_name)


def job_table_lines(folder, job_name):
    """``{run name: line number}`` of the table of a job of several runs; {} for a run's
    own job (no table) or a table that cannot be read."""
    try:
        with open(job_table_path(folder, job_name)) as table:
            return {line.split()[0]: k for k, line in enumerate(table) if line.strip()}
    except (OSError, IOError, UnicodeDecodeError):
        return {}


def earlier_outcome(config, folder, run, entries):
    """What an earlier launcher left of ``run``, touching nothing: ``(done, folder,
    summary, exit_code, watched)``. ``watched``: the journal saw it end; otherwise a cluster
    job that ended unwatched may have left its exit status in jobs/. Done means finished (a
    summary saying 'finished 1' and no failing exit, wherever the folder now is, TO_BE_DELETED
    too) or stopped by early stopping."""
    found, _ = folder.find_run_dir(run)
    summary = collect_summary(config, run, found) if found else None
    watched = bool(entries) and entries[-1].get("state") in ENDED_STATES
    exit_code = entries[-1].get("exit_code") if watched else folder.recorded_exit_status(run)
    finished = is_finished(summary) and exit_code in (0, None)
    stopped = watched and entries[-1]["state"] == STOPPED  # done: never run again
    return finished or stopped, found, summary, exit_code, watched


def restore_states(config, folder, runs, journal, attached):
    """Mark runs that finished as kept and cluster jobs still going as running; set the rest
    up to run again, renaming what their earlier attempt left. Returns the kept runs."""
    kept = []
    for run in runs:
        entries = journal.get(run.name) or []
        tried = max([e.get("attempt", 1) for e in entries] or [0])  # attempts begun so far
        run.attempt = max(tried, 1)
        if run.name in attached:
            run.state, run.job_id = RUNNING, attached[run.name]
            continue
        finished, found, summary, exit_code, watched = earlier_outcome(
            config, folder, run, entries)
        if not watched and exit_code is not None:  # a cluster job that ended unwatched
            folder.drop_claim(run)
        if finished:  # kept where it is (finished, or stopped early)
            run.state = STOPPED if watched and entries[-1]["state"] == STOPPED else FINISHED
            run.out_dir, run.summary, run.exit_code = found or run.out_dir, summary, exit_code
            run.reason = entries[-1].get("reason", "") if run.state == STOPPED else ""
            if not watched:  # it finished after the launcher died: record that now
                folder.keep_run_files(run)
                folder.log_state(run, noticed_on_resume=True)
            kept.append(run)
            continue
        if os.path.lexists(run.out_dir) or tried > 0:  # it runs again, as planned
            folder.set_aside(run)
            run.attempt += 1
        run.state = PENDING
    return kept


def choose_place(args):
    """Where runs go: the scheduler for --run_cluster (its tool must exist), else the local
    slot policy from --visible_gpus / --local_jobs."""
    if not args.run_cluster:
        return choose_slots(args)
    scheduler = SCHEDULERS[args.scheduler](args)
    if shutil.which(scheduler.submit_tool) is None:
        raise UsageError("--scheduler=%s: %s was not found on PATH (run hpsearch on a node "
                         "of the cluster where it is)" % (args.scheduler, scheduler.submit_tool))
    return scheduler


def make_backend(args, place, folder, run_cwd):
    if isinstance(place, Scheduler):
        return ClusterBackend(place, folder, run_cwd, args.num_jobs, args.poll_interval,
                              use_array=args.array, detach=args.detach,
                              runs_per_job=args.runs_per_job)
    return LocalBackend(place, folder, run_cwd, run_timeout=args.run_timeout or None)


def run_search(args, config, folder, runs, results, place, run_cwd):
    """Run the search's pending runs and report; the exit status."""
    backend = None
    try:
        backend = make_backend(args, place, folder, run_cwd)
        return _run_search(args, config, folder, runs, results, backend)
    finally:
        if backend is not None:
            backend.close()
        folder.unlock()


def make_early_stopping(args, config, folder, runs, backend):
    """The EarlyStopping for --early_stopping=asha (None without it): local runs are looked
    at four times a second, cluster jobs once per --poll_interval (a shared file system)."""
    if args.early_stopping == "none":
        return None
    table = RungTable(args.es_min_step, args.es_max_step, args.es_eta,
                      config.performance_sort_asc)
    interval = args.poll_interval if isinstance(backend, ClusterBackend) else 0.25
    watcher = EarlyStopping(config, folder, table, args.es_step_key, interval)
    watcher.rebuild(r for r in runs if r.state != PENDING)  # --resume: what was seen before
    return watcher


def _run_search(args, config, folder, runs, results, backend):
    progress = Progress(len(runs))
    for state in DONE_STATES:
        progress.counts[state] = sum(1 for r in runs if r.state == state)
    signals = StopSignals()
    signals.install()
    search = Search(config, folder, runs, backend, results, progress, signals,
                    max_retries=args.max_retries,
                    early_stopping=make_early_stopping(args, config, folder, runs, backend))
    try:
        for run in runs:
            if run.state == RUNNING:  # a cluster job an earlier launcher submitted
                backend.attach(run, run.job_id)
        say("hpsearch: %d runs in %s (%s)" % (len(runs), folder.path, backend.describe()))
        completed = search.execute()
        backend.finish_up()
        progress.close()
        results.sort(config.performance_key, config.performance_sort_asc)
    except OSError as exc:  # the launcher's own files: disk full, read-only, folder gone
        return search.abandon(exc, continue_command(args, folder))
    counts = progress.counts
    say("hpsearch: %s: %d finished, %s%d unfinished, %d failed, %d killed. Results: %s" % (
        "done" if completed else "stopped", counts[FINISHED], "%d stopped early, " %
        counts[STOPPED] if counts[STOPPED] else "", counts[UNFINISHED], counts[FAILED],
        counts[KILLED], folder.results))
    if not completed:
        return tell_the_stop(args, folder, signals)
    return tell_the_end(config, folder, search)


def tell_the_stop(args, folder, signals):
    """A search stopped before its end: how it goes on. Near the end of the launcher's own
    job with --resubmit_self, it goes on by itself (exit status 0)."""
    if signals.time_up and not signals.count and args.resubmit_self is not None:
        try:
            job_id = resubmit_launcher(args, folder)
        except SchedulerError as exc:
            CONSOLE.say("hpsearch: error: --resubmit_self: %s; continue with: %s" % (
                exc, continue_command(args, folder)), sys.stderr)
            return EXIT_INTERRUPTED
        say("hpsearch: --resubmit_self: submitted the launcher again as job %s; it starts "
            "when this job ends and resumes the search" % job_id)
        return EXIT_OK
    say("hpsearch: to continue this search: %s" % continue_command(args, folder))
    return EXIT_INTERRUPTED


def tell_the_end(config, folder, search):
    """The last lines of a search that ran to its end: its best run, what to run next, and,
    last, how many runs did not finish and where to look. The exit status."""
    best = search.best_run()
    if best is not None:
        say("hpsearch: best run: %s, %s=%s (%s)" % (best.name, config.performance_key,
                                                    format_cell(best.summary[
                                                        config.performance_key]), best.out_dir))
    post = os.path.join(os.path.dirname(os.path.abspath(__file__)), POSTPROCESSING_SCRIPT)
    if os.path.isfile(post):
        say("hpsearch: tables, seed averages and a report: %s" % " ".join(
            shlex.quote(a) for a in (sys.executable or "python3", post, folder.path)))
    missed = [r for r in search.runs if r.state not in DONE_STATES]
    if not missed:
        return EXIT_OK
    say("hpsearch: %d of %d runs did not finish; each one's reason is above, in %s and in the "
        "%s column of %s; their logs are job_<run>.out/.err in their run folders (in %s when "
        "the script made none), e.g. %s" % (
            len(missed), len(search.runs), LOG_FILE, REASON_COLUMN, RESULTS_FILE,
            folder.jobs, search.folder.log_of(missed[0], ".err")))
    return EXIT_RUNS_MISSED


# Flags that say where and how runs go rather than what runs: a resume needs them again.
HOW_TO_RUN_FLAGS = (
    "visible_gpus", "local_jobs", "max_num_jobs_per_gpu", "allowed_memory", "allowed_load",
    "sim_startup_time", "gpu_poll_interval", "max_retries", "run_timeout", "run_cluster",
    "scheduler", "num_jobs", "num_hours", "runs_per_job", "array", "poll_interval",
    "scheduler_args",
    "detach", "slurm_mem", "slurm_gres", "slurm_partition", "slurm_qos", "slurm_constraint",
    "resources", "early_stopping", "es_step_key", "es_min_step", "es_max_step", "es_eta",
    "resubmit_self")


def continue_command(args, folder):
    """The command that continues this search, to paste into a shell as it is: this
    interpreter, this script, and the flags that said where and how the search ran."""
    defaults = build_parser()
    argv = [sys.executable or "python3", os.path.abspath(__file__)]
    for name in HOW_TO_RUN_FLAGS:
        value = getattr(args, name)
        if value != defaults.get_default(name):
            argv.append("--" + name if value is True else "--%s=%s" % (name, value))
    argv.append("--resume=%s" % folder.path)
    return " ".join(shlex.quote(a) for a in argv)


if __name__ == "__main__":
    # A config's "from hpsearch import uniform" gets this very module, not a second copy.
    sys.modules.setdefault("hpsearch", sys.modules[__name__])
    sys.exit(main())
