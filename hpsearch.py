#!/usr/bin/env python3
"""hpsearch: run a hyperparameter search over a training script, locally or on a cluster.

One file, Python standard library only (CPython 3.6 to 3.13): copy it beside your config and run

    python hpsearch.py --grid_module=my_config --visible_gpus=0,1

A drop-in successor of hypnettorch's ``hpsearch``: the same config modules, flags and output
file names. ``python hpsearch.py --help`` lists the flags; README.rst explains the rest.
"""

import argparse
import collections
import csv
import datetime
import fcntl
import pwd
import importlib
import importlib.util
import io
import itertools
import json
import math
import operator
import os
import pickle
import random
import select
import shlex
import shutil
import signal
import subprocess
import sys
import time
import types
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


class UsageError(Exception):
    """Bad input from the user: reported as one line and exit status 2, never a traceback."""


def atomic_write_text(path, text, durable=True):
    """Replace ``path`` with ``text`` so that a crash leaves either the old or the new file;
    ``durable``: also on disk before this returns (the record and results, not scratch)."""
    tmp = "%s.tmp%d" % (path, os.getpid())
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)  # our own half-written temporary file
        raise


def append_line(path, line):
    """Append one whole line with a single write, so readers never see half a line."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(line if line.endswith("\n") else line + "\n")
        f.flush()


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


def warn(message):
    """A warning on stderr; during a search it goes above the live status line."""
    if Progress.active is not None:
        Progress.active.above_status(sys.stderr, "hpsearch: warning: %s" % message)
    else:
        sys.stderr.write("hpsearch: warning: %s\n" % message)
        sys.stderr.flush()


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
    while tb is not None:  # the innermost frame inside the config file says where it broke
        if os.path.abspath(tb.tb_frame.f_code.co_filename) == os.path.abspath(source):
            where = "%s:%d" % (source, tb.tb_lineno)
        tb = tb.tb_next
    return "%s: importing the config failed: %s: %s" % (where, type(exc).__name__, exc)


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
        except Exception as exc:  # any error in user code becomes one clear line
            del sys.modules[module_name]
            raise UsageError(_import_error_line(path, exc))
        return module, path
    try:
        spec = importlib.util.find_spec(name_or_path)
    except (ImportError, ValueError):
        spec = None
    except Exception as exc:  # a parent package that fails to import
        raise UsageError("--grid_module %s: importing it failed: %s: %s"
                         % (name_or_path, type(exc).__name__, exc))
    if spec is None or spec.origin is None:
        raise UsageError("--grid_module: cannot find module %r in %s (give a dotted module name "
                         "importable from there, or a path to a .py file)"
                         % (name_or_path, ", ".join(search_dirs)))
    try:
        module = importlib.import_module(name_or_path)
    except Exception as exc:
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


def _check_argument(text, where):
    """An argument must reach the script as it is: no NUL byte, encodable for the OS."""
    problem = None
    if "\0" in text:
        problem = "holds a NUL character"
    else:
        try:
            text.encode(sys.getfilesystemencoding(), "surrogateescape")
        except UnicodeEncodeError:
            problem = "cannot be encoded as a command-line argument"
    if problem:
        raise UsageError("%s: %r %s; change that value" % (where, text[:60], problem))


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
        if not isinstance(values, (list, tuple)) or len(values) == 0:
            raise UsageError("%s: grid[%r] must be a non-empty list of values, not %r"
                             % (where, key, values))
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
    script = _script_path(settings["_SCRIPT_NAME"], run_cwd) if check_script else None
    if script is not None and not os.path.isfile(script):
        raise UsageError("%s: _SCRIPT_NAME %r: no such file %s (check --run_cwd, which the "
                         "script name is relative to)" % (where, settings["_SCRIPT_NAME"], script))
    return SearchConfig(source, grid, conditions, settings)


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

    def __init__(self, grid, conditions, warn=warn):
        self.keys = list(grid)
        self.n_grid = len(self.keys)
        active = []
        for i, (trigger, action) in enumerate(conditions):
            missing = [k for k in trigger if k not in grid]
            if missing:
                warn("condition %d is skipped: its trigger names %s, which %s not in the grid"
                     % (i, ", ".join(map(repr, missing)), "is" if len(missing) == 1 else "are"))
                continue
            active.append((trigger, action))
            self.keys.extend(k for k in action if k not in self.keys)
        self.tables = [ValueTable(k, grid[k], False) for k in self.keys[:self.n_grid]]
        self.tables.extend(ValueTable(k, [], True) for k in self.keys[self.n_grid:])
        # The product runs over grid values only, not over values conditions add below.
        self.grid_sizes = [len(t.values) for t in self.tables[:self.n_grid]]
        self.position = {k: i for i, k in enumerate(self.keys)}
        # Every value a condition adds is known before the digits are laid out.
        actions = [{k: [self._table(k).index_of(v) for v in vals] for k, vals in a.items()}
                   for _, a in active]
        self.digits = self._layout()
        self.conditions = [self._compile(trigger, indices)
                           for (trigger, _), indices in zip(active, actions)]
        self._canon = [t.canonical_indices() for t in self.tables]
        self._needs_canon = any(c != list(range(len(c))) for c in self._canon)

    def _table(self, key):
        return self.tables[self.position[key]]

    def _layout(self):
        """Last grid key fastest (as hypnettorch's product); added keys are the top digits."""
        digits = [None] * len(self.keys)
        stride = 1
        order = list(range(self.n_grid - 1, -1, -1)) + list(range(self.n_grid, len(self.keys)))
        for p in order:
            digits[p] = Digit(stride, len(self.tables[p].values))
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
        return sum(self._canon[p][d.of(code)] * d.stride for p, d in enumerate(self.digits))

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
        return self.dedup(self._enforce(self._initial_product()))

    def size_of_product(self):
        return _product(self.grid_sizes)

    def sample(self, n, rng):
        """``n`` distinct configurations drawn at random (fewer if the space is smaller)."""
        if self.size_of_product() <= max(4 * n, 10000):  # small: exact and cheap to build
            codes = self.expand()
            rng.shuffle(codes)
            return codes[:n]
        grid_digits = [(self.digits[p].stride, self.grid_sizes[p]) for p in range(self.n_grid)]
        pool = collections.OrderedDict()
        attempts = 0
        while len(pool) < n and attempts < 50 * n + 1000:
            attempts += 1
            point = sum(rng.randrange(size) * stride for stride, size in grid_digits)
            expanded = self._enforce([point])
            pick = expanded[rng.randrange(len(expanded))] if len(expanded) > 1 else expanded[0]
            pool.setdefault(self._dedup_key(pick), pick)
        return list(pool.values())

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


def plan_configs(space, num_searches, random_pick, deterministic, seed):
    """The configurations to run, in run order."""
    rng = random.Random(seed)
    if random_pick:
        return space.sample(num_searches, rng)
    configs = space.expand()
    if not deterministic:
        rng.shuffle(configs)
    if num_searches is not None and 0 <= num_searches < len(configs):
        configs = configs[:num_searches]
    return configs


# ----------------------------------------------------------------------------------------------
# Runs and their commands
# ----------------------------------------------------------------------------------------------

PENDING, RUNNING, FINISHED, UNFINISHED, FAILED, KILLED = (
    "pending", "running", "finished", "unfinished", "failed", "killed")
ENDED_STATES = (FINISHED, UNFINISHED, FAILED, KILLED)


class Run(object):
    """One configuration of the search and what became of it.

    ``argv`` is executed as it is, without a shell: each argument reaches the script verbatim.
    """

    __slots__ = ("index", "name", "args", "argv", "out_dir", "state", "exit_code", "reason",
                 "summary", "started", "ended", "attempt", "process", "job_id", "killed")

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


class ResultsTable(object):
    """``search_results.csv``: ``;``-separated, a row appended as each run ends, sorted at the end.

    Columns: every argument, every summary keyword, the output folder, the run's state and exit
    code.
    """

    def __init__(self, path, arg_keys, keywords, out_arg):
        self.path = path
        self.columns = list(arg_keys) + [k for k in keywords if k not in arg_keys]
        self.columns += [out_arg, STATE_COLUMN, EXIT_COLUMN]
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
        row[self.out_arg] = run.out_dir
        row[STATE_COLUMN] = run.state
        row[EXIT_COLUMN] = run.exit_code
        return [format_cell(row.get(c)) for c in self.columns]

    def append(self, run):
        append_line(self.path, self._line(self._cells(run)))

    def sort(self, key, ascending):
        """Rewrite the file sorted by ``key``; rows without a number in it go last."""
        with open(self.path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter=";"))
        if not rows:
            return
        header, body = rows[0], rows[1:]
        if key not in header:
            return
        col = header.index(key)
        numbered = [(sort_number(r[col]) if col < len(r) else None, r) for r in body]
        sign = 1 if ascending else -1
        numbered.sort(key=lambda nr: (nr[0] is None, sign * nr[0] if nr[0] is not None else 0))
        buf = io.StringIO()
        writer = csv.writer(buf, delimiter=";", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(r for _, r in numbered)
        atomic_write_text(self.path, buf.getvalue())


# ----------------------------------------------------------------------------------------------
# The search folder
# ----------------------------------------------------------------------------------------------

RECORD_FILE = "search_record.json"
JOURNAL_FILE = "run_journal.jsonl"
RESULTS_FILE = "search_results.csv"
JOBS_DIR = "jobs"
TRASH_DIR = "TO_BE_DELETED"   # where hpsearch_postprocessing.py moves runs it rejects
LOCK_FILE = ".hpsearch.lock"
# A run's files in jobs/ while it goes, and their names in its folder afterwards.
JOB_FILES = collections.OrderedDict([
    (".sh", "hpsearch_command.sh"), (".out", "job_<run>.out"), (".err", "job_<run>.err"),
    (".scheduler.log", "hpsearch_scheduler.log"), (".exit", "hpsearch_exit_status")])


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


class SearchFolder(object):
    """Where a search keeps everything: the record of runs, the journal, logs, results."""

    def __init__(self, path):
        self.path = path
        self.record = os.path.join(path, RECORD_FILE)
        self.journal = os.path.join(path, JOURNAL_FILE)
        self.results = os.path.join(path, RESULTS_FILE)
        self.jobs = os.path.join(path, JOBS_DIR)

    def file(self, name):
        return os.path.join(self.path, name)

    def lock(self):
        """Hold the folder for this launcher's lifetime, so a second launcher (say a
        --resume while the search still runs) is refused. The kernel drops the lock when
        the process ends, however it ends."""
        handle = open(self.file(LOCK_FILE), "a+")
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "?"
            handle.close()
            raise UsageError("%s is in use by another hpsearch launcher (pid %s); let it "
                             "finish or stop it first" % (self.path, holder))
        handle.seek(0)
        handle.truncate()
        handle.write("%d\n" % os.getpid())
        handle.flush()
        self._lock = handle

    def unlock(self):
        lock, self._lock = getattr(self, "_lock", None), None
        if lock is not None:
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
        """Files of a run kept here while it goes: ``<name>.sh``, ``.out``, ``.err``."""
        return os.path.join(self.jobs, run.name + suffix)

    def prepare(self):
        os.makedirs(self.jobs, exist_ok=True)
        for name in (RECORD_FILE, JOURNAL_FILE, RESULTS_FILE, "commands.sh",
                     "commands_wo_dirs.sh"):
            if os.path.exists(self.file(name)):  # --dont_force_new_dir: keep what was there
                move_aside(self.file(name))

    def write_plan(self, runs, config, args, arg_keys, commands_wo_dirs):
        shebang = "#!/bin/sh\n"
        body = "".join(r.shell_command() + "\n" for r in runs)
        atomic_write_text(self.file("commands.sh"), shebang + "# %d commands, in the order they "
                          "are run.\n\n%s" % (len(runs), body))
        atomic_write_text(self.file("commands_wo_dirs.sh"), shebang + "# %d commands, in the "
                          "order they are run; output folders left out (see commands.sh).\n%s"
                          % (len(runs), "".join(c + "\n" for c in commands_wo_dirs)))
        record = {
            "format": "hpsearch-record-1",
            "hpsearch_version": __version__,
            "created": datetime.datetime.now().isoformat(),
            "argv": [sys.argv[0]] + args.given_argv,
            "config_file": config.source,
            "run_cwd": os.path.abspath(args.run_cwd),
            "out_arg": config.out_arg,
            "summary_filename": config.summary_filename,
            "summary_keywords": config.summary_keywords,
            "performance_key": config.performance_key,
            "performance_sort_asc": config.performance_sort_asc,
            "arg_keys": list(arg_keys),
            "scheduler": args.scheduler if args.run_cluster else None,
            "runs": [{"index": r.index, "name": r.name, "out_dir": r.out_dir,
                      "args": json_safe(r.args), "argv": r.argv} for r in runs],
        }
        atomic_write_text(self.record, json.dumps(record, indent=1) + "\n")

    def log_state(self, run, **extra):
        entry = {"run": run.name, "state": run.state, "time": round(time.time(), 3),
                 "attempt": run.attempt}
        if run.state in ENDED_STATES:
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
        """The search's record of runs; UsageError (starting with ``context``) if it is
        missing or unreadable."""
        try:
            with open(self.record, encoding="utf-8") as f:
                record = json.load(f)
        except (OSError, ValueError) as exc:
            raise UsageError("%s %s: cannot read %s (%s); is this a search folder made by "
                             "hpsearch?" % (context, self.path, RECORD_FILE, exc))
        if not isinstance(record, dict) or not isinstance(record.get("runs"), list):
            raise UsageError("%s %s: %s has no list of runs" % (context, self.path, RECORD_FILE))
        return record

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
        """``{run name: [entries in order]}``; a line cut short by a crash is skipped."""
        entries = collections.defaultdict(list)
        try:
            with open(self.journal, encoding="utf-8") as f:
                for line in f:
                    try:
                        entry = json.loads(line)
                        entries[entry["run"]].append(entry)
                    except (ValueError, KeyError, TypeError):
                        continue
        except OSError:
            pass
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
        """The exit status a cluster job wrote when it ended, or None."""
        try:
            with open(self.job_file(run, ".exit")) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def keep_run_files(self, run):
        """Move a run's command and logs into its folder, if the script made one."""
        if not os.path.isdir(run.out_dir):
            return
        for suffix, name in JOB_FILES.items():
            src = self.job_file(run, suffix)
            dst = os.path.join(run.out_dir, name.replace("<run>", run.name))
            if os.path.exists(src):
                if os.path.exists(dst):
                    move_aside(dst)
                os.rename(src, dst)


def _rename_free(src, dst):
    """Rename ``src`` to ``dst``, or to ``dst.2``, ``dst.3``, ... if that is taken."""
    target = dst
    for n in itertools.count(2):
        if not os.path.lexists(target):
            os.rename(src, target)
            return target
        target = "%s.%d" % (dst, n)


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
    ``start(run, tok)`` starts it; ``wait(timeout)`` returns the runs that ended (their
                        ``exit_code``/``reason`` set), waiting at most ``timeout`` seconds;
    ``recheck_in()``    seconds until ``slot()`` may change without a run ending (None: never);
    ``running()``       how many runs it has going; ``stop()`` ends every run still going;
    ``attach(run, id)`` (clusters) follows a job an earlier launcher submitted.
    """

    def describe(self):
        return ""

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

    def _free_of_hold(self, i):
        h = self.hold.get(i)
        if h is None:
            return True
        if now() >= h[0]:
            del self.hold[i]
            return True
        return False

    def _fits(self, gpu):
        mem, load = gpu.memory_fraction, gpu.load
        return ((mem is None or mem <= self.max_memory)
                and (load is None or load <= self.max_load))

    def acquire(self):
        open_gpus = [i for i in self.order if self.ours[i] < self.per_gpu]
        if not open_gpus:
            return None
        self._refresh()  # rate-limited; also ends holds whose process has appeared
        candidates = [i for i in open_gpus if self._free_of_hold(i) and self._fits(self.gpus[i])]
        if not candidates:
            return None
        best = min(candidates, key=lambda i: (self.ours[i], self.gpus[i].memory_fraction or 0))
        self.ours[best] += 1
        gpu = self.gpus[best]
        return {"CUDA_VISIBLE_DEVICES": gpu.uuid or str(gpu.index),
                "CUDA_DEVICE_ORDER": "PCI_BUS_ID", "_gpu": best}

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


def groups_marked(marker):
    """Process groups with a process whose environment holds ``marker`` (Linux /proc)."""
    wanted = marker.encode("utf-8", "surrogateescape") + b"\0"
    groups = set()
    for pid, state, pgid in _processes():
        if pid == os.getpid() or state == "Z":
            continue
        try:
            with open("/proc/%d/environ" % pid, "rb") as f:
                if wanted in f.read() + b"\0":
                    groups.add(pgid)
        except OSError:
            continue
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
        self.cwd = cwd
        self.run_timeout = run_timeout
        self.alarm = ChildExitAlarm()
        self.failed_starts = []   # runs whose command could not be started
        self.active = {}
        self.deadlines = {}       # run name -> when to send the next signal

    def slot(self):
        return self.slots.acquire()

    def recheck_in(self):
        waits = [w for w in [self.slots.recheck_in()] if w is not None]
        waits.extend(max(0.0, d - now()) for d in self.deadlines.values())
        return min(waits) if waits else None

    def describe(self):
        return self.slots.describe()

    def start(self, run, token):
        env = dict(os.environ)
        env.update({k: v for k, v in token.items() if not k.startswith("_")})
        env[MARKER_VARIABLE] = self.folder.path  # lets a resume find this run's processes
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
                return
        # The run is under way; what follows overlaps its start-up instead of delaying it.
        run.process = proc
        run.job_id = proc.pid
        self.active[run.name] = (run, token)
        if self.run_timeout:
            self.deadlines[run.name] = now() + self.run_timeout
        self.slots.started(token, proc.pid)
        write_command_file(self.folder.job_file(run, ".sh"), run, self.cwd, token)

    def _enforce_timeouts(self):
        """SIGTERM to runs past --run_timeout, SIGKILL to those still there after a grace."""
        for name, deadline in list(self.deadlines.items()):
            if now() < deadline:
                continue
            run = self.active[name][0]
            if not run.killed:
                run.killed = True
                run.reason = "ran longer than --run_timeout=%gs" % self.run_timeout
                signal_group(run.job_id, signal.SIGTERM)
                self.deadlines[name] = now() + self.TIMEOUT_GRACE
            else:
                signal_group(run.job_id, signal.SIGKILL)
                del self.deadlines[name]

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

    def finish_up(self):
        self.alarm.close()


MARKER_VARIABLE = "HPSEARCH_SEARCH_DIR"


def run_marker(folder):
    return "%s=%s" % (MARKER_VARIABLE, folder.path)


def write_command_file(path, run, cwd, env, job_files=None):
    """The run as a shell script. For a cluster job (``job_files``: paths for ``.out``,
    ``.err``, ``.exit``) it also keeps the output and records the exit status when it ends."""
    q = shlex.quote
    lines = ["#!/bin/sh"]
    lines += ["export %s=%s" % (k, q(v)) for k, v in sorted(env.items()) if not k.startswith("_")]
    if not job_files:
        lines += ["cd %s" % q(cwd), run.shell_command()]
    else:
        exit_file = job_files[".exit"]
        lines += ["cd %s && %s < /dev/null > %s 2> %s" % (
                      q(cwd), run.shell_command(), q(job_files[".out"]), q(job_files[".err"])),
                  "status=$?",
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


def run_scheduler(argv, env=None, timeout=120):
    """Run a scheduler command; ``(returncode, stdout, stderr)``. SchedulerError if it cannot
    be run at all."""
    try:
        proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              stdin=subprocess.DEVNULL, env=env, timeout=timeout,
                              universal_newlines=True)
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

    def clean_env(self):
        env = dict(os.environ)
        for key in list(env):
            ours = key in self.job_env_names or key.startswith(self.job_env_prefixes)
            if ours and key not in self.job_env_keep:
                del env[key]
        return env

    def submit_argv(self, script, name, log, array=None):
        """Command line submitting ``script``; ``array``: (size, throttle) for a job array."""
        raise NotImplementedError

    def parse_submit(self, stdout):
        """The job id in the submit command's output; ValueError if there is none."""
        raise NotImplementedError

    def task_ids(self, array_id, size):
        """Job ids of the tasks of an array, in order."""
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
        raise NotImplementedError

    def explain(self, job_id):
        """Why a job left the queue without an exit status, where the scheduler can say."""
        return ""


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
        return argv + self.extra + [script]

    def parse_submit(self, stdout):
        first = _first_line(stdout).split(";")[0]  # --parsable: "id" or "id;cluster"
        if not first.isdigit():
            raise ValueError("sbatch printed %r instead of a job id" % _first_line(stdout))
        return first

    def task_ids(self, array_id, size):
        return ["%s_%d" % (array_id, i) for i in range(size)]

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


class Lsf(Scheduler):
    name = "lsf"
    submit_tool = "bsub"
    max_array = 1000   # MAX_JOB_ARRAY_SIZE defaults to 1000
    job_env_prefixes = ("LSB_",)
    task_variable = "LSB_JOBINDEX"
    task_pattern = "%I"
    first_task = 1
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
        return argv + self.extra + ["/bin/sh " + shlex.quote(script)]

    def parse_submit(self, stdout):
        for line in stdout.splitlines():  # Job <123> is submitted to default queue <normal>.
            if line.startswith("Job <") and "> is submitted" in line:
                job_id = line[len("Job <"):line.index(">")]
                if job_id.isdigit():
                    return job_id
        raise ValueError("bsub printed %r instead of 'Job <id> is submitted ...'"
                         % _first_line(stdout))

    def task_ids(self, array_id, size):
        return ["%s[%d]" % (array_id, i) for i in range(1, size + 1)]

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

    def submit_argv(self, script, name, log, array=None):
        argv = ["qsub", "-terse", "-N", name, "-o", log, "-j", "y", "-V", "-S", "/bin/sh",
                "-l", "h_rt=%d:00:00" % self.args.num_hours]
        if array:
            argv += ["-t", "1-%d" % array[0], "-tc", str(array[1])]
        return argv + self.extra + [script]

    def parse_submit(self, stdout):
        first = _first_line(stdout).split(".")[0]  # -terse: "54", or "56.1-3:1" for arrays
        if not first.isdigit():
            raise ValueError("qsub printed %r instead of a job id" % _first_line(stdout))
        return first

    def task_ids(self, array_id, size):
        return ["%s.%d" % (array_id, i) for i in range(1, size + 1)]

    def query_argv(self, job_ids):
        # The real uid's name: $USER/$LOGNAME may name someone else after su or sudo -E.
        return ["qstat", "-xml", "-u", pwd.getpwuid(os.getuid()).pw_name]

    def parse_query(self, returncode, stdout, stderr):
        if returncode != 0:
            raise SchedulerError("qstat failed (exit %d): %s" % (returncode, _first_line(stderr)))
        try:
            root = ElementTree.fromstring(stdout)
        except ElementTree.ParseError as exc:
            raise SchedulerError("cannot read qstat -xml: %s" % exc)
        jobs = {}
        for job in root.iter("job_list"):
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
    """Runs as jobs on a scheduler: throttled to ``--num_jobs`` queued or running (or left to
    the scheduler's array throttle with ``--array``), polled in one call per cycle."""

    SUBMIT_TRIES = 4

    def __init__(self, scheduler, folder, cwd, num_jobs, poll_interval, use_array=False,
                 detach=False):
        self.scheduler = scheduler
        self.folder = folder
        self.cwd = cwd
        self.num_jobs = num_jobs
        self.poll_interval = poll_interval
        self.use_array = use_array
        self.detach = detach
        self.active = {}          # job id -> run
        self.to_submit = []       # runs waiting for the next array submission
        self.ended = []
        self.vanished = {}        # job id -> polls seen gone without an exit file
        self.late_logs = {}       # run name -> ended run whose scheduler log may come later
        self.task_logs = {}       # run name -> where the scheduler logs its array task
        self.next_poll = now() + poll_interval
        self.queries = 0
        self.submissions = 0
        self.env = scheduler.clean_env()

    def describe(self):
        return "%s jobs, at most %d at once%s" % (
            self.scheduler.name, self.num_jobs, ", as job arrays" if self.use_array else "")

    def running(self):
        return len(self.active) + len(self.to_submit)

    def slot(self):
        if self.use_array or len(self.active) + len(self.to_submit) < self.num_jobs:
            return {}
        return None

    def recheck_in(self):
        return None

    def _write_script(self, run):
        files = {s: self.folder.job_file(run, s) for s in (".out", ".err", ".exit")}
        write_command_file(self.folder.job_file(run, ".sh"), run, self.cwd, {}, files)

    def start(self, run, token):
        self._write_script(run)
        if self.use_array:
            self.to_submit.append(run)
            return
        log = self.folder.job_file(run, ".scheduler.log")
        argv = self.scheduler.submit_argv(self.folder.job_file(run, ".sh"), run.name, log)
        job_id = self._submit(argv, [run])
        if job_id is not None:
            self._track(run, job_id)

    def flush(self):
        """Submit the runs gathered for a job array (one submission per chunk)."""
        runs, self.to_submit = self.to_submit, []
        for first in range(0, len(runs), self.scheduler.max_array):
            chunk = runs[first:first + self.scheduler.max_array]
            table = os.path.join(self.folder.jobs, "%s.array" % chunk[0].name)
            atomic_write_text(table, "".join(r.name + "\n" for r in chunk))
            script = os.path.join(self.folder.jobs, "%s.array.sh" % chunk[0].name)
            atomic_write_text(script, array_script(self.scheduler, table, self.folder.jobs))
            log = os.path.join(self.folder.jobs, "%s.array_task%s.scheduler.log"
                               % (chunk[0].name, self.scheduler.task_pattern))
            argv = self.scheduler.submit_argv(script, chunk[0].name, log,
                                              array=(len(chunk), self.num_jobs))
            array_id = self._submit(argv, chunk)
            if array_id is not None:
                for k, (run, job_id) in enumerate(
                        zip(chunk, self.scheduler.task_ids(array_id, len(chunk)))):
                    self._track(run, job_id)
                    self.task_logs[run.name] = log.replace(
                        self.scheduler.task_pattern, str(self.scheduler.first_task + k))

    def _submit(self, argv, runs):
        """Submit with back-off; on a final failure the runs end as failed. The job id or
        None."""
        delay, problem = 1.0, ""
        for attempt in range(self.SUBMIT_TRIES):
            self.submissions += 1
            try:
                code, out, err = run_scheduler(argv, env=self.env)
                if code == 0:
                    return self.scheduler.parse_submit(out)
                problem = "%s exit %d: %s" % (argv[0], code, _first_line(err or out))
            except (SchedulerError, ValueError) as exc:
                problem = str(exc)
            if attempt + 1 < self.SUBMIT_TRIES:
                warn("submitting %s failed (%s); trying again in %gs"
                     % (runs[0].name, problem, delay))
                time.sleep(delay)
                delay *= 2
        for run in runs:
            run.exit_code, run.reason = None, "submission failed: %s" % problem
            self.ended.append(run)
        return None

    def _track(self, run, job_id):
        run.job_id = job_id
        self.active[job_id] = run

    def attach(self, run, job_id):
        """Follow a job submitted by an earlier launcher (--resume)."""
        run.state = RUNNING
        self._track(run, job_id)

    def _collect_exit_files(self):
        for job_id, run in list(self.active.items()):
            code = self.folder.recorded_exit_status(run)
            if code is not None:
                run.exit_code = code
                if code > 128:  # the job shell's way of saying "ended by signal code-128"
                    run.killed, run.reason = True, "killed by signal %d" % (code - 128)
                self._end(job_id)

    def _end(self, job_id):
        self.vanished.pop(job_id, None)
        run = self.active.pop(job_id)
        self.ended.append(run)
        self._claim_task_log(run)
        if self.scheduler.late_log:
            self.late_logs[run.name] = run

    def _claim_task_log(self, run):
        """Give an array task's log the run's own name, so it goes into the run folder."""
        task_log = self.task_logs.get(run.name)
        if task_log and os.path.exists(task_log):
            _rename_free(task_log, self.folder.job_file(run, ".scheduler.log"))
            del self.task_logs[run.name]

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
        """Give late scheduler logs a few seconds to arrive."""
        deadline = now() + 5.0
        while True:
            self._sweep_late_logs()
            if not self.late_logs or now() >= deadline:
                return
            time.sleep(0.2)

    def poll(self):
        """Ask the queue once about all our jobs; a job gone from it without an exit status
        (after one more cycle for slow file systems) was killed."""
        self.next_poll = now() + self.poll_interval
        self._sweep_late_logs()
        ids = list(self.active)
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
            if self.vanished[job_id] >= 2:
                if state == JOB_STUCK:
                    given_up.append(job_id)
                run = self.active[job_id]
                why = self.scheduler.explain(job_id)
                run.exit_code, run.killed = None, True
                run.reason = "killed by the scheduler: %s%s" % (detail, "; " + why if why else "")
                self._end(job_id)
        if given_up:  # a job that can never run would otherwise stay queued for good
            run_scheduler(self.scheduler.cancel_argv(given_up), env=self.env)

    def wait(self, timeout):
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

    def stop(self, grace, hurry=lambda: False):
        """Cancel every queued or running job in one call, or leave them (--detach)."""
        jobs = list(self.active)
        self.to_submit = []
        if self.detach:
            print("hpsearch: --detach: %d job(s) left to the scheduler" % len(jobs))
            self.active = {}
            return
        # Exit statuses written before the cancel are the jobs' own; one written after it
        # (a job script recording the SIGTERM it got) still means we killed that job.
        own_ends = {job_id: self.folder.recorded_exit_status(self.active[job_id])
                    for job_id in jobs}
        if jobs:
            code, _, err = run_scheduler(self.scheduler.cancel_argv(jobs), env=self.env)
            print("hpsearch: cancelled %d job(s) with %s%s" % (
                len(jobs), self.scheduler.cancel_argv([])[0],
                "" if code == 0 else " (it said: %s)" % _first_line(err)))
        for job_id in jobs:
            run = self.active[job_id]
            run.exit_code = own_ends[job_id]
            if run.exit_code is None:
                run.killed, run.reason = True, "cancelled by hpsearch"
            self._end(job_id)


def array_script(scheduler, table, jobs_dir):
    """A job array's script: task i runs the i-th run's own job script."""
    return "\n".join([
        "#!/bin/sh",
        "# hpsearch job array: task i runs line i of %s" % os.path.basename(table),
        "line=$((${%s} - %d + 1))" % (scheduler.task_variable, scheduler.first_task),
        "name=$(sed -n \"${line}p\" %s)" % shlex.quote(table),
        "exec /bin/sh %s/\"$name\".sh" % shlex.quote(jobs_dir),
    ]) + "\n"


# ----------------------------------------------------------------------------------------------
# Progress display
# ----------------------------------------------------------------------------------------------


class Progress(object):
    """One live status line on a terminal; plain log lines otherwise. The search tells it
    when runs start and end, so the line always agrees with the log above it."""

    active = None  # the Progress of the search under way: warnings go above its line

    def __init__(self, total, stream=None):
        self.total = total
        self.stream = stream or sys.stdout
        self.live = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.start = now()
        self.counts = collections.Counter()
        self.running = 0
        self._shown = False
        Progress.active = self

    def run_started(self):
        self.running += 1

    def run_ended(self, state):
        """``state`` None: the run goes back to waiting (a retry)."""
        self.running -= 1
        if state is not None:
            self.counts[state] += 1

    def above_status(self, stream, message):
        """Write a line, keeping the status line below it."""
        if self.live and self._shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._shown = False
        stream.write(message + "\n")
        stream.flush()
        self.show()

    def log(self, message):
        self.above_status(self.stream, message)

    def _eta(self, done):
        if not done:
            return "?"
        left = (now() - self.start) / done * (self.total - done)
        return _duration(left)

    def status_line(self):
        done = sum(self.counts[s] for s in ENDED_STATES)
        failed = done - self.counts[FINISHED]
        waiting = self.total - done - self.running
        return "[%d/%d done, %d running, %d failed, %d waiting | %s elapsed, ETA %s]" % (
            done, self.total, self.running, failed, waiting, _duration(now() - self.start),
            self._eta(done))

    def show(self):
        if self.live:
            self.stream.write("\r\033[K" + self.status_line())
            self._shown = True
        self.stream.flush()

    def close(self):
        if self.live and self._shown:
            self.stream.write("\n")
            self.stream.flush()
            self._shown = False
        Progress.active = None


def _duration(seconds):
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return "%d:%02d:%02d" % (h, m, s) if h else "%d:%02d" % (m, s)


# ----------------------------------------------------------------------------------------------
# The search loop
# ----------------------------------------------------------------------------------------------


class StopSignals(object):
    """Ctrl-C and SIGTERM set a flag the loop checks (nothing is raised mid-write). The first
    stops the search gracefully; a second one kills the runs at once."""

    def __init__(self):
        self.count = 0
        self.name = ""

    def install(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.count += 1
        self.name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"

    def __bool__(self):
        return self.count > 0

    __nonzero__ = __bool__


class Search(object):
    """Runs every planned run on a backend and records each as it ends."""

    # Longest wait for an event before the loop looks at the stop flag again.
    SIGNAL_CHECK = 0.5

    def __init__(self, config, folder, runs, backend, results, progress, signals,
                 max_retries=0):
        self.config = config
        self.folder = folder
        self.runs = runs
        self.backend = backend
        self.results = results
        self.progress = progress
        self.signals = signals
        self.max_retries = max_retries
        self.pending = collections.deque(r for r in runs if r.state == PENDING)

    def execute(self):
        """Run everything; False if a stop signal cut the search short."""
        pending, ended = self.pending, []
        while (pending or ended or self.backend.running()) and not self.signals:
            started = []
            while pending:
                token = self.backend.slot()
                if token is None:
                    break
                started.append(self._start(pending.popleft(), token))
            self.backend.flush()
            for run in started:  # job ids are known now (an array gets them on flush)
                self.folder.log_state(run, job_id=run.job_id, job_start=process_start_time(
                    run.job_id) if isinstance(run.job_id, int) else None)
            # Runs that ended are recorded after their slots were refilled: that work then
            # overlaps the next runs' start-up instead of delaying it.
            for run in ended:
                self._finish(run)
            ended = []
            if pending or self.backend.running():
                timeout = self.backend.recheck_in()
                timeout = self.SIGNAL_CHECK if timeout is None else min(timeout,
                                                                         self.SIGNAL_CHECK)
                ended = self.backend.wait(timeout)
            self.progress.show()
        for run in ended:
            self._finish(run)
        if not self.signals:
            return True
        self._stop_running()
        return False

    def _stop_running(self):
        """Stop our runs (SIGTERM, then SIGKILL) and record each as it ends."""
        self.progress.close()
        if self.backend.running():
            print("hpsearch: %s: stopping %d running run(s); press Ctrl-C again to kill them "
                  "at once" % (self.signals.name, self.backend.running()))
        self.backend.stop(grace=5.0, hurry=lambda: self.signals.count > 1)
        while True:
            for run in self.backend.wait(self.SIGNAL_CHECK):
                run.reason = run.reason or "stopped by hpsearch"
                self._finish(run)
            if not self.backend.running():
                break

    def _start(self, run, token):
        run.state, run.started = RUNNING, time.time()
        run.exit_code, run.reason, run.killed = None, "", False
        self.progress.run_started()
        gpu = token.get("CUDA_VISIBLE_DEVICES")
        self.progress.log("started %s (run %d/%d%s%s)" % (
            run.name, run.index + 1, len(self.runs), ", GPU %s" % token["_gpu"] if gpu else "",
            ", attempt %d" % run.attempt if run.attempt > 1 else ""))
        self.backend.start(run, token)
        return run

    def _finish(self, run):
        run.ended = time.time()
        run.summary = collect_summary(self.config, run) if os.path.isdir(run.out_dir) else None
        if run.killed:
            run.state = KILLED
        elif run.exit_code == 0:
            run.state = FINISHED if is_finished(run.summary) else UNFINISHED
        else:
            run.state = FAILED
        self.folder.keep_run_files(run)
        self.folder.log_state(run)
        if run.state != FINISHED and run.attempt <= self.max_retries and not self.signals:
            self.progress.log("%s %s (exit %s%s); trying again (%d of %d retries)" % (
                run.state, run.name, run.exit_code, ", " + run.reason if run.reason else "",
                run.attempt, self.max_retries))
            self.folder.set_aside(run)
            run.attempt += 1
            run.state = PENDING
            self.pending.append(run)
            self.progress.run_ended(None)
            return
        self.results.append(run)
        self.progress.run_ended(run.state)
        self.progress.log("%s %s (exit %s%s)%s" % (
            run.state, run.name, run.exit_code, ", " + run.reason if run.reason else "",
            self._headline(run)))

    def _headline(self, run):
        key = self.config.performance_key
        if run.summary and key in run.summary:
            return " %s=%s" % (key, format_cell(run.summary[key]))
        return ""


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag gives one short line and a usage hint, exit status 2."""

    def __init__(self, hint, **kwargs):
        argparse.ArgumentParser.__init__(self, **kwargs)
        self.hint = hint

    def error(self, message):
        sys.stderr.write("%s: error: %s\n" % (self.prog, message))
        sys.stderr.write("usage hint: %s; see %s --help\n" % (self.hint, self.prog))
        sys.exit(2)


def build_parser():
    p = ArgumentParser(
        hint="hpsearch.py --grid_module=CONFIG [options]",
        prog="hpsearch.py",
        description="hpsearch - run a hyperparameter search over a training script, one run "
                    "after another, packed onto local GPUs, or as cluster jobs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s = p.add_argument_group("search")
    s.add_argument("--grid_module", type=str, default=None,
                   help="The config: a dotted module name (importable from the working "
                        "directory or --run_cwd) or a path to a .py file. See "
                        "hpsearch_config_template.py.")
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
    s.add_argument("--dont_generate_full_grid", action="store_true",
                   help="Draw --num_searches distinct random configurations instead of "
                        "building the full product of the grid.")
    s.add_argument("--deterministic_search", action="store_true",
                   help="Run configurations in grid order instead of shuffling them.")
    s.add_argument("--random_seed", type=int, default=42, metavar="N",
                   help="Seed for the shuffle and the random picks.")
    s.add_argument("--run_cwd", type=str, default=".",
                   help="The working directory of the runs; _SCRIPT_NAME is relative to it.")
    s.add_argument("--python", type=str, default=sys.executable,
                   help="The interpreter that runs the training script.")
    s.add_argument("--dry_run", action="store_true",
                   help="Print the commands and their count; run and write nothing.")
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
    cl.add_argument("--array", action="store_true",
                    help="Submit the runs as job arrays (throttled to --num_jobs at once by "
                         "the scheduler) instead of one job each.")
    cl.add_argument("--poll_interval", type=float, default=30, metavar="SECONDS",
                    help="How often the queue is asked (one call for all our jobs). A job's "
                         "end is noticed sooner through the exit status it writes.")
    cl.add_argument("--scheduler_args", type=str, default="", metavar="ARGS",
                    help="Further options for sbatch/bsub/qsub, as one string "
                         "('--account=x --nice=10').")
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
    lsf = p.add_argument_group("LSF")
    lsf.add_argument("--resources", type=str, default='"rusage[mem=8000, ngpus_excl_p=1]"',
                     help="bsub -R resource requirement (an enclosing pair of double quotes "
                          "is removed).")
    return p


def check_flags(args):
    if args.scheduler not in SCHEDULERS:
        raise UsageError("--scheduler=%s is unknown; use one of: %s"
                         % (args.scheduler, ", ".join(sorted(SCHEDULERS))))
    if args.num_jobs < 1 or args.num_hours < 1 or args.poll_interval <= 0:
        raise UsageError("--num_jobs and --num_hours must be at least 1, --poll_interval "
                         "positive")
    if not args.grid_module and not args.resume:
        raise UsageError("--grid_module is required: the config module or .py file of your "
                         "search (start from hpsearch_config_template.py)")
    if args.num_searches == 0 or args.num_searches < -1:
        raise UsageError("--num_searches=%d: give a positive number, or -1 for all"
                         % args.num_searches)
    if args.dont_generate_full_grid and args.num_searches < 0:
        raise UsageError("--dont_generate_full_grid needs --num_searches N (how many random "
                         "configurations to draw)")
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
    prefix = command_prefix(args.python, config.script_name)
    width = len(str(len(configs)))
    runs, wo_dirs = [], []
    for k, c in enumerate(configs):
        name = "sim_%s_%0*d" % (stamp, width, k + 1)
        out_dir = os.path.join(folder_path, name)
        arguments = space.arguments(c)
        run = Run(k, name, space.as_dict(c), build_argv(prefix, config.out_arg, out_dir,
                                                          arguments), out_dir)
        runs.append(run)
        wo_dirs.append(" ".join(shlex.quote(a) for a in prefix + arguments))
    return runs, wo_dirs


def main(argv=None):
    sys.dont_write_bytecode = True  # leave no __pycache__ beside the user's config
    try:
        return _main(argv)
    except UsageError as exc:
        sys.stderr.write("hpsearch: error: %s\n" % one_line(str(exc)))
        return 2
    except OSError as exc:  # an unwritable --out_dir, a full disk: say which file
        sys.stderr.write("hpsearch: error: %s: %s (check the path and its permissions)\n"
                         % (exc.strerror or exc, exc.filename or ""))
        return 2
    except KeyboardInterrupt:  # before the runs started: nothing to stop
        sys.stderr.write("hpsearch: interrupted\n")
        return 130


def _main(argv):
    args = build_parser().parse_args(argv)
    args.given_argv = list(sys.argv[1:] if argv is None else argv)
    check_flags(args)
    prepared = resume_search(args) if args.resume else new_search(args)
    return 0 if prepared is None else run_search(args, *prepared)


def new_search(args):
    """Plan a new search and lay out its folder; None after --dry_run."""
    run_cwd = os.path.abspath(args.run_cwd)
    module, source = import_config_module(args.grid_module, [os.getcwd(), run_cwd])
    override = load_grid_override(args.grid_config) if args.grid_config else {}
    config = build_config(module, source, override, run_cwd)
    space = GridSpace(config.grid, config.conditions)
    configs = plan_configs(space, args.num_searches, args.dont_generate_full_grid,
                           args.deterministic_search, args.random_seed)
    if args.dry_run:
        prefix = command_prefix(args.python, config.script_name)
        for c in configs:
            print(" ".join(shlex.quote(a) for a in prefix + space.arguments(c)))
        print("%d commands" % len(configs))
        return None
    if not args.run_cluster:
        check_interpreter(args.python, run_cwd, "--python:")
    slots = choose_place(args)  # before anything is written: a GPU problem stops us here
    folder_path, stamp = create_search_dir(resolve_out_dir(args), args.force_out_dir,
                                           args.dont_force_new_dir)
    folder = SearchFolder(folder_path)
    folder.lock()
    folder.prepare()
    runs, wo_dirs = make_runs(space, configs, config, args, folder_path, stamp)
    for path in [source] + ([args.grid_config] if args.grid_config else []):
        folder.keep_copy(path)
    folder.write_plan(runs, config, args, space.keys, wo_dirs)
    results = ResultsTable(folder.results, space.keys, config.summary_keywords, config.out_arg)
    results.create()
    return config, folder, runs, results, slots, run_cwd


def resume_search(args):
    """Pick up a search from its folder: its own copy of the config, its planned runs, and
    what the journal and the run folders say became of them."""
    folder = SearchFolder(os.path.abspath(args.resume))
    record = folder.read_record()
    if not args.dry_run:
        folder.lock()
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
    runs = [Run(r["index"], r["name"], r.get("args", {}), r["argv"], r["out_dir"])
            for r in record["runs"]]
    if record.get("scheduler") and not args.run_cluster:  # a cluster search stays one
        args.run_cluster, args.scheduler = True, record["scheduler"]
    journal = folder.read_journal()
    attached = jobs_to_reattach(runs, journal, folder) if args.run_cluster else {}
    if args.dry_run:  # what would run again, touching nothing
        again = [r for r in runs if r.name not in attached and not earlier_outcome(
            config, folder, r, journal.get(r.name) or [])[0]]
        for run in again:
            print(run.shell_command())
        print("%d commands" % len(again))
        return None
    if not args.run_cluster and runs:
        check_interpreter(runs[0].argv[0], run_cwd, "--resume %s: the search's interpreter"
                          % folder.path)
    slots = choose_place(args)
    folder.end_cut_line()
    if not args.run_cluster:
        stop_leftover_processes(folder, runs, journal)
    kept = restore_states(config, folder, runs, journal, attached)
    results = ResultsTable(folder.results, record.get("arg_keys") or [],
                           config.summary_keywords, config.out_arg)
    results.create(kept)
    print("hpsearch: resuming %s: %d of %d runs finished before, %d to run"
          % (folder.path, len(kept), len(runs), len(runs) - len(kept)))
    return config, folder, runs, results, slots, run_cwd


def _same_content(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        return fa.read() == fb.read()


def stop_leftover_processes(folder, runs, journal):
    """Runs of a killed launcher may still be alive: end them (and their children) before
    they are run again. Found by the marker in their environment (even one killed before
    the journal got its pid), and by the pids the journal has."""
    journaled = []
    for run in runs:
        entries = journal.get(run.name)
        last = entries[-1] if entries else None
        if last and last.get("state") == RUNNING and last.get("job_id"):
            pid = last["job_id"]
            if last.get("job_start") in (None, process_start_time(pid)):
                journaled.append(pid)
    leftovers = sorted(groups_marked(run_marker(folder)) | alive_groups(journaled))
    if leftovers:
        print("hpsearch: stopping %d run(s) left over from the interrupted launcher"
              % len(leftovers))
        terminate_groups(leftovers, grace=5.0)


def jobs_to_reattach(runs, journal, folder):
    """``{run name: job id}`` of cluster jobs an earlier launcher left queued or running
    (journal says running, no exit status written yet)."""
    attached = {}
    for run in runs:
        entries = journal.get(run.name)
        last = entries[-1] if entries else None
        if (last and last.get("state") == RUNNING and last.get("job_id")
                and not os.path.exists(folder.job_file(run, ".exit"))):
            attached[run.name] = str(last["job_id"])
    return attached


def earlier_outcome(config, folder, run, entries):
    """What an earlier launcher left of ``run``, touching nothing: ``(finished, folder,
    summary, exit_code, watched)``. ``watched``: the journal saw it end; otherwise a cluster
    job that ended unwatched may have left its exit status in jobs/. Finished means a summary
    saying 'finished 1' and no failing exit, wherever the folder now is (TO_BE_DELETED too)."""
    found, _ = folder.find_run_dir(run)
    summary = collect_summary(config, run, found) if found else None
    watched = bool(entries) and entries[-1].get("state") in ENDED_STATES
    exit_code = entries[-1].get("exit_code") if watched else folder.recorded_exit_status(run)
    finished = is_finished(summary) and exit_code in (0, None)
    return finished, found, summary, exit_code, watched


def restore_states(config, folder, runs, journal, attached):
    """Mark runs that finished as kept and cluster jobs still going as running; set the rest
    up to run again, renaming what their earlier attempt left. Returns the kept runs."""
    kept = []
    for run in runs:
        entries = journal.get(run.name) or []
        run.attempt = max([e.get("attempt", 1) for e in entries] or [0])
        if run.name in attached:
            run.state, run.job_id = RUNNING, attached[run.name]
            continue
        finished, found, summary, exit_code, watched = earlier_outcome(
            config, folder, run, entries)
        if finished:  # kept where it is
            run.state, run.out_dir, run.summary, run.exit_code = FINISHED, found, summary, exit_code
            if not watched:  # it finished after the launcher died: record that now
                folder.keep_run_files(run)
                folder.log_state(run, noticed_on_resume=True)
            kept.append(run)
            continue
        if os.path.lexists(run.out_dir) or run.attempt > 0:  # it runs again, as planned
            run.attempt = max(run.attempt, 1)
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
                              use_array=args.array, detach=args.detach)
    return LocalBackend(place, folder, run_cwd, run_timeout=args.run_timeout or None)


def run_search(args, config, folder, runs, results, place, run_cwd):
    """Run the search's pending runs and report; the exit status."""
    try:
        return _run_search(args, config, folder, runs, results, place, run_cwd)
    finally:
        folder.unlock()


def _run_search(args, config, folder, runs, results, place, run_cwd):
    backend = make_backend(args, place, folder, run_cwd)
    for run in runs:
        if run.state == RUNNING:  # a cluster job an earlier launcher submitted
            backend.attach(run, run.job_id)
    progress = Progress(len(runs))
    progress.counts[FINISHED] = sum(1 for r in runs if r.state == FINISHED)
    print("hpsearch: %d runs in %s (%s)" % (len(runs), folder.path, backend.describe()))
    signals = StopSignals()
    signals.install()
    search = Search(config, folder, runs, backend, results, progress, signals,
                    max_retries=args.max_retries)
    completed = search.execute()
    backend.finish_up()
    progress.close()
    results.sort(config.performance_key, config.performance_sort_asc)
    counts = progress.counts
    print("hpsearch: %s: %d finished, %d unfinished, %d failed, %d killed. Results: %s" % (
        "done" if completed else "stopped", counts[FINISHED], counts[UNFINISHED],
        counts[FAILED], counts[KILLED], folder.results))
    if not completed:
        print("hpsearch: to continue this search: %s %s --resume %s" % (
            os.path.basename(sys.executable), sys.argv[0], folder.path))
    return 0 if completed else 130


if __name__ == "__main__":
    sys.exit(main())
