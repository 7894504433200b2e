"""Template for an hpsearch config: copy it, then edit it for your training script.

A config is a plain Python module. ``hpsearch.py`` imports it and reads the names below: the
``grid`` of values to try, optional ``conditions`` between them, and the ``_UPPER_CASE`` settings
that say how to start the training script and how to read its results. Every setting here has a
working example value; the comments above each one say what it means and which values it takes.

Run a search with it (``--grid_module`` takes a path to a ``.py`` file or a dotted module name):

    cp hpsearch_config_template.py my_config.py        # then edit my_config.py
    python3 hpsearch.py --grid_module=my_config.py --run_cwd=path/to/scripts --dry_run
    python3 hpsearch.py --grid_module=my_config.py --run_cwd=path/to/scripts --visible_gpus=0,1

``--dry_run`` prints the commands and their count and writes nothing. Without it, the results
land in ``<run_cwd>/out/hyperparam_search/search_<time>/search_results.csv``.

The training script must:

* accept every grid key as ``--key=value`` (and boolean keys as a bare ``--key`` flag);
* accept ``--<_OUT_ARG>=<folder>`` and create that folder itself (hpsearch does not);
* write ``_SUMMARY_FILENAME`` into that folder with one ``keyword value`` line per keyword of
  ``_SUMMARY_KEYWORDS``, and the line ``finished 1`` as its very last step.

Standard library only; the file must stay valid Python 3.6.
"""

import os

# ----------------------------------------------------------------------------------------------
# grid (required)
# ----------------------------------------------------------------------------------------------
# A dict: argument name of the training script (without the leading '--') -> list of values to
# try. The search runs every combination (the Cartesian product), last key changing fastest.
# Each value becomes one command-line argument:
#
#   * True  -> '--key'            False -> left out (so write a flag as [False, True]);
#   * anything else -> '--key=' + str(value), passed as ONE argument (there is no shell), so a
#     string with spaces needs no extra quotes: 'a b' reaches the script as 'a b'. Configs from
#     hypnettorch wrote '"a b"' for the shell; that still works, the outer double quotes are
#     removed.
#   * A value that is itself a list for the script (e.g. layer sizes) is one string in the
#     format the script parses, e.g. '100,100'.
#
# Do not put _OUT_ARG ('out_dir') in the grid: hpsearch gives each run its own folder.
#
# Instead of a list, an entry may be a distribution to draw from, with --sampler=random or
# --sampler=quasirandom and --num_searches=N (the grid sampler refuses them):
#
#   from hpsearch import uniform, loguniform, randint, choice
#   grid = {'lr': loguniform(1e-5, 1e-1),      # floats, evenly on a log scale
#           'dropout': uniform(0.0, 0.5),      # floats, evenly
#           'layers': randint(1, 4),           # integers 1, 2, 3 or 4
#           'optimizer': choice(['sgd', 'adam'])}  # a list: each value equally likely
grid = {
    'lr': [0.001, 0.01],
    'batch_size': [32, 128],
    'optimizer': ['sgd', 'adam'],
    'use_bn': [False, True],
    'hidden_sizes': ['100,100', '400,400'],
    'note': ['first try'],
}

# ----------------------------------------------------------------------------------------------
# conditions (optional; default [])
# ----------------------------------------------------------------------------------------------
# A list of (trigger_dict, action_dict) pairs; both dicts map keys to lists of values, like the
# grid. A configuration matches a trigger when, for every trigger key, its value is one of the
# listed values (an empty trigger matches every configuration). Each matching configuration is
# replaced by one configuration per combination of the action's values, its other values kept.
#
#   * Conditions are enforced once each, in list order, on the result of the ones before.
#     A later condition may undo an earlier one; an earlier one is never checked again.
#   * An action may add keys that are not in the grid (the argument then appears only in the
#     configurations that matched).
#   * A trigger key that is not in the grid makes hpsearch skip that condition with a warning
#     (this includes keys that only an earlier condition added).
#   * Configurations that end up with the same command are run once.
#
# Example 1: SGD also tries momentum; 'momentum' is not in the grid, so the action adds it and
#            Adam runs never get the argument.
# Example 2: with batch norm, only the larger learning rate is tried.
conditions = [
    ({'optimizer': ['sgd']}, {'momentum': [0.0, 0.9]}),
    ({'use_bn': [True]}, {'lr': [0.01]}),
]

# ----------------------------------------------------------------------------------------------
# _SCRIPT_NAME (required)
# ----------------------------------------------------------------------------------------------
# The training script, relative to --run_cwd (where the runs execute), or an absolute path. It
# is run by the interpreter of --python (default: the one running hpsearch). Split like a shell
# would, so it may carry interpreter flags before the script and positional arguments after it:
#   _SCRIPT_NAME = '-W ignore train.py mode_a'
#   _SCRIPT_NAME = '/home/me/project/train.py'
# hpsearch refuses to start if the script file does not exist.
_SCRIPT_NAME = 'train.py'

# ----------------------------------------------------------------------------------------------
# _SUMMARY_FILENAME (required)
# ----------------------------------------------------------------------------------------------
# The file the script writes into its output folder, one 'keyword value' line per result:
#   acc_final 0.9312
#   loss_final 0.2114
#   finished 1
_SUMMARY_FILENAME = 'performance_overview.txt'

# ----------------------------------------------------------------------------------------------
# _SUMMARY_KEYWORDS (required; must contain 'finished')
# ----------------------------------------------------------------------------------------------
# The keywords read from the summary file; each becomes a column of search_results.csv. Lines
# are found by keyword, in any order; other lines are ignored. A value is read as a number when
# it is one (several numbers on a line give a list), else kept as text. The script writes
# 'finished 1' at its very end: a run that exits 0 without it is recorded as 'unfinished'.
_SUMMARY_KEYWORDS = ['acc_final', 'loss_final', 'finished']

# ----------------------------------------------------------------------------------------------
# _OUT_ARG (optional; default 'out_dir')
# ----------------------------------------------------------------------------------------------
# The script's argument that receives the run folder: each run gets '--out_dir=<search>/sim_...'.
# The folder does not exist yet; the script must create it (and may refuse an existing one).
_OUT_ARG = 'out_dir'

# ----------------------------------------------------------------------------------------------
# _SUMMARY_PARSER_HANDLE (optional; default None)
# ----------------------------------------------------------------------------------------------
# None: hpsearch reads _SUMMARY_FILENAME itself, as described above. Otherwise a function
# (out_dir, cmd_ident) -> dict, called when a run ends: out_dir is the run folder, cmd_ident
# the run's 0-based index. It returns {keyword: value}; values may also be hypnettorch-style
# one-element lists ([value] or ['0.93']). Include 'finished'. If it raises, the run is recorded
# without results. The example below reads a summary in the same format; to use it, set
#   _SUMMARY_PARSER_HANDLE = _parse_summary


def _parse_summary(out_dir, cmd_ident):
    """Example parser: {keyword: [value]} from the summary file in ``out_dir``."""
    results = {}
    with open(os.path.join(out_dir, _SUMMARY_FILENAME)) as f:
        for line in f:
            parts = line.split(None, 1)
            if len(parts) == 2 and parts[0] in _SUMMARY_KEYWORDS:
                results[parts[0]] = [parts[1].strip()]
    return results


_SUMMARY_PARSER_HANDLE = None

# ----------------------------------------------------------------------------------------------
# _PERFORMANCE_EVAL_HANDLE (optional; default None)
# ----------------------------------------------------------------------------------------------
# A function (summary_dict, performance_criteria) -> bool: True if a run is good enough to keep.
# hpsearch_postprocessing.py --performance_criteria=X calls it for every run that ended and has
# a summary, and moves the folders of runs where it returns False into
# <search folder>/TO_BE_DELETED/ (nothing is deleted). summary_dict holds numbers from the
# built-in parser, or [value] lists (often strings such as ['0.5']) from hypnettorch-era
# parsers, so the example accepts both.
#
# A run the handle cannot judge stays where it is and is listed as not judged: the handle
# read a key its summary lacks (summary_dict[key], .get(key), key in summary_dict, ...), or
# raised. So read the value with summary_dict[key] and let a missing one fail; do not answer
# False for it (that would move a run nobody judged). If no run can be judged at all (e.g. the
# handle reads a keyword the script never writes), nothing moves and postprocessing stops
# with exit status 2, naming the handle and the key.
#
# The example reads _PERFORMANCE_KEY (below) and keeps runs whose value is at least X, or at
# most X when _PERFORMANCE_SORT_ASC is True (lower is better, e.g. a loss).


def _performance_eval(summary_dict, performance_criteria):
    """Keep runs whose _PERFORMANCE_KEY value is at least ``performance_criteria`` (at most,
    when _PERFORMANCE_SORT_ASC is True)."""
    key = _PERFORMANCE_KEY or _SUMMARY_KEYWORDS[0]
    value = summary_dict[key]  # a missing value raises KeyError: the run is not judged
    if isinstance(value, (list, tuple)):
        value = value[0]
    if _PERFORMANCE_SORT_ASC:
        return float(value) <= float(performance_criteria)
    return float(value) >= float(performance_criteria)


_PERFORMANCE_EVAL_HANDLE = _performance_eval

# ----------------------------------------------------------------------------------------------
# _PERFORMANCE_KEY (optional; default None = the first of _SUMMARY_KEYWORDS)
# ----------------------------------------------------------------------------------------------
# The keyword that says how good a run is. When the search ends, search_results.csv is sorted
# finished runs first, best first by this keyword, then the unfinished, failed and killed runs
# (within each state, rows without a number in that column go last); hpsearch_postprocessing.py
# ranks runs the same way, and the example _PERFORMANCE_EVAL_HANDLE above reads it. Must be one
# of _SUMMARY_KEYWORDS.
_PERFORMANCE_KEY = 'acc_final'

# ----------------------------------------------------------------------------------------------
# _PERFORMANCE_SORT_ASC (optional; default False)
# ----------------------------------------------------------------------------------------------
# False: best = highest first (accuracy). True: lowest first (e.g. for a loss).
_PERFORMANCE_SORT_ASC = False

# ----------------------------------------------------------------------------------------------
# _ARGPARSE_HANDLE (optional; default None)
# ----------------------------------------------------------------------------------------------
# Only for hpsearch_postprocessing.py on search folders written by hypnettorch (which match run
# folders to commands by re-parsing the arguments). A function called as handle(argv=[...]) with
# a command's arguments (without interpreter and script) that returns the training script's
# argparse.Namespace. Usually the script exposes its parser, e.g.:
#
#   def _parse_train_args(argv):
#       import train                  # the training script, importable from --run_cwd
#       return train.build_parser().parse_args(argv)
#
#   _ARGPARSE_HANDLE = _parse_train_args
_ARGPARSE_HANDLE = None
