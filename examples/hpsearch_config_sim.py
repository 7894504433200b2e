"""Hyperparameter-search configuration for ``examples/train_sim.py``.

This module uses the config format known from hypnettorch's ``hpsearch``:

* ``grid`` maps each command-line option of the training script (without the
  leading ``--``) to the list of values to try. The search runs the
  Cartesian product of all lists.
* ``conditions`` is a list of ``(trigger, action)`` tuples of dicts. A config
  whose values match *every* key of ``trigger`` (value contained in the
  trigger's list) is replaced by the product of the ``action``'s values.
  Here SGD additionally tries heavy-ball momentum, while Adam (which ignores
  ``--momentum``) keeps ``momentum = 0`` only.
* The ``_UPPER_CASE`` attributes tell the search how to start the script and
  how to read and rank its results.

Base grid: 3 lr x 2 batch sizes x 2 optimizers x 2 seeds = 24 configs; after
the SGD momentum condition 36 configs remain (24 SGD, 12 Adam).

Run the search from the repository root with::

    python hpsearch.py --grid_module=examples/hpsearch_config_sim.py \\
        --run_cwd=examples

``_SCRIPT_NAME`` is resolved relative to ``--run_cwd``.
"""

grid = {
    'lr': [0.01, 0.05, 0.2],
    'batch_size': [16, 64],
    'optimizer': ['sgd', 'adam'],
    'momentum': [0.0],
    'random_seed': [1, 2],
}

conditions = [
    ({'optimizer': ['adam']}, {'momentum': [0.0]}),
    ({'optimizer': ['sgd']}, {'momentum': [0.0, 0.9]}),
]

# Training script to launch (relative to --run_cwd).
_SCRIPT_NAME = 'train_sim.py'

# Summary file the script writes into its output folder, and the keywords
# read from it (one ``keyword value`` pair per line).
_SUMMARY_FILENAME = 'performance_overview.txt'
_SUMMARY_KEYWORDS = ['acc_final', 'loss_final', 'epochs', 'finished']

# Name of the script's option that receives the output folder.
_OUT_ARG = 'out_dir'

# None: use the search's default parser for the summary file.
_SUMMARY_PARSER_HANDLE = None

# Runs are ranked by this keyword; higher accuracy is better.
_PERFORMANCE_KEY = 'acc_final'
_PERFORMANCE_SORT_ASC = False


def _performance_criteria(summary_dict, performance_criteria):
    """Return True if a run reached the requested final accuracy.

    Args:
        summary_dict: Parsed summary; ``summary_dict['acc_final']`` may be a
            float or a list of strings (the tokens after the keyword).
        performance_criteria: Threshold for ``acc_final``.

    Returns:
        ``True`` if ``acc_final >= performance_criteria``, otherwise (also
        when the value is missing or unparsable) ``False``.
    """
    value = summary_dict.get('acc_final')
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    try:
        return float(value) >= float(performance_criteria)
    except (TypeError, ValueError):
        return False


_PERFORMANCE_EVAL_HANDLE = _performance_criteria

# None: no handle to the training script's argument parser is given.
_ARGPARSE_HANDLE = None
