"""Grid expansion, conditions, deduplication, ordering and random picks.

The reference below is written plainly from the hypnettorch semantics (facts section 3): the
odometer product, conditions applied one after the other, and duplicates removed by the command
they render to. hpsearch's integer-coded implementation must agree with it.
"""

import random
import shlex
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hpsearch
from conftest import make_project


# ------------------------------------------------------------------------------------------
# Reference implementation
# ------------------------------------------------------------------------------------------


def ref_product(grid):
    """All combinations, first key slowest and last key fastest (an odometer)."""
    keys = list(grid)
    counters = [0] * len(keys)
    out = []
    while True:
        out.append(dict((k, grid[k][i]) for k, i in zip(keys, counters)))
        pos = len(keys) - 1
        while pos >= 0:
            counters[pos] += 1
            if counters[pos] < len(grid[keys[pos]]):
                break
            counters[pos] = 0
            pos -= 1
        if pos < 0:
            return out


def ref_token(key, value):
    if type(value) is bool:
        return "--" + key if value else None
    text = str(value)
    if len(text) >= 2 and text.startswith('"') and text.endswith('"'):
        text = text[1:-1]
    return "--%s=%s" % (key, text)


def ref_key_order(grid, conditions):
    keys = list(grid)
    for trigger, action in conditions:
        if all(k in grid for k in trigger):
            for k in action:
                if k not in keys:
                    keys.append(k)
    return keys


def ref_render(config, keys):
    tokens = [ref_token(k, config[k]) for k in keys if k in config]
    return tuple(t for t in tokens if t is not None)


def ref_expand(grid, conditions):
    """``(configs, rendered commands, indices of skipped conditions)``, duplicates removed
    (the first one kept)."""
    configs = ref_product(grid)
    skipped = []
    for i, (trigger, action) in enumerate(conditions):
        if any(k not in grid for k in trigger):
            skipped.append(i)
            continue
        kept, replacements = [], []
        for config in configs:
            if all(k in config and config[k] in trigger[k] for k in trigger):
                for values in ref_product(action):
                    new = dict(config)
                    new.update(values)
                    replacements.append(new)
            else:
                kept.append(config)
        configs = kept + replacements
    keys = ref_key_order(grid, conditions)
    seen, unique, commands = set(), [], []
    for config in configs:
        cmd = ref_render(config, keys)
        if cmd not in seen:
            seen.add(cmd)
            unique.append(config)
            commands.append(cmd)
    return unique, commands, skipped


def hp_expand(grid, conditions):
    warnings = []
    configs = hpsearch.expand_configs(grid, conditions, warn=warnings.append)
    keys = ref_key_order(grid, conditions)
    return configs, [ref_render(c, keys) for c in configs], warnings


# ------------------------------------------------------------------------------------------
# Property test
# ------------------------------------------------------------------------------------------

values = st.one_of(
    st.integers(min_value=-2, max_value=2),
    st.sampled_from([0.0, -0.0, 0.5, 1.0, 2.0, -1.5, 1e-05]),
    st.booleans(),
    st.text(alphabet="a1 \"'", max_size=3),
    st.sampled_from(["a", '"a"', '"1"', "a b", '"a b"', "1.0"]),  # render like other values
)
value_lists = st.lists(values, min_size=1, max_size=3)
grids = st.dictionaries(st.sampled_from("abcd"), value_lists, min_size=1, max_size=4)
triggers = st.dictionaries(st.sampled_from("abcdfg"), st.lists(values, max_size=3), max_size=2)
actions = st.dictionaries(st.sampled_from("abcxy"), st.lists(values, min_size=1, max_size=2),
                          max_size=2)
condition_lists = st.lists(st.tuples(triggers, actions), max_size=3)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(grids, condition_lists)
def test_expansion_matches_reference(grid, conditions):
    _, expected, skipped = ref_expand(grid, conditions)
    _, got, warnings = hp_expand(grid, conditions)
    assert len(got) == len(set(got)), "duplicate commands"
    assert set(got) == set(expected)
    assert len(warnings) == len(skipped)


def test_expansion_order_is_product_then_conditions():
    # No conditions: the odometer order. With conditions: configurations left alone keep their
    # order and come first, the replacements follow.
    grid = {"a": [1, 2], "b": ["x", "y"], "c": [True, False]}
    assert hpsearch.expand_configs(grid, []) == ref_product(grid)
    conditions = [({"b": ["x"]}, {"c": [True], "d": [5, 6]})]
    configs, _, _ = hp_expand(grid, conditions)
    expected, _, _ = ref_expand(grid, conditions)
    assert configs[:4] == expected[:4] == [c for c in ref_product(grid) if c["b"] == "y"]
    assert sorted(configs[4:], key=repr) == sorted(expected[4:], key=repr)


# ------------------------------------------------------------------------------------------
# Unit tests
# ------------------------------------------------------------------------------------------


def test_true_one_and_one_point_zero_do_not_collide():
    configs = hpsearch.expand_configs({"k": [True, 1, 1.0]}, [])
    assert [c["k"] for c in configs] == [True, 1, 1.0]
    assert [type(c["k"]) for c in configs] == [bool, int, float]


def test_values_rendering_alike_are_duplicates():
    # 1 and '1' render to --k=1; '"a"' and 'a' to --k=a: one command each.
    configs = hpsearch.expand_configs({"k": [1, "1", '"a"', "a"]}, [])
    assert len(configs) == 2


def test_false_equals_absent():
    # {a: 1} and {a: 1, z: False} are the same command.
    configs = hpsearch.expand_configs({"a": [1, 2]}, [({"a": [2]}, {"a": [1], "z": [False]})])
    assert len(configs) == 1
    assert configs[0]["a"] == 1


def test_quoted_and_plain_strings_match_triggers_separately():
    # '"a"' renders like 'a', but a trigger compares values: only 'a' is in ['a'].
    _, expected, _ = ref_expand({"k": ['"a"', "a"]}, [({"k": ["a"]}, {"z": [1]})])
    _, got, _ = hp_expand({"k": ['"a"', "a"]}, [({"k": ["a"]}, {"z": [1]})])
    assert set(expected) == {("--k=a",), ("--k=a", "--z=1")}
    assert set(got) == set(expected)


def test_trigger_on_absent_key_warns_and_is_skipped():
    warnings = []
    grid = {"a": [1, 2]}
    conditions = [({"nokey": [1]}, {"a": [9]}), ({"a": [2]}, {"b": ["x"]}),
                  ({"a": [1], "no1": [1], "no2": [2]}, {"a": [8]})]
    configs = hpsearch.expand_configs(grid, conditions, warn=warnings.append)
    assert configs == [{"a": 1}, {"a": 2, "b": "x"}]
    assert warnings == [
        "condition 0 is skipped: its trigger names 'nokey', which is not in the grid",
        "condition 2 is skipped: its trigger names 'no1', 'no2', which are not in the grid"]


def test_action_adds_a_key():
    space = hpsearch.GridSpace({"a": [1, 2]}, [({"a": [2]}, {"new": ["x", "y z"]})])
    assert space.keys == ["a", "new"]
    codes = space.expand()
    assert [space.as_dict(c) for c in codes] == [
        {"a": 1}, {"a": 2, "new": "x"}, {"a": 2, "new": "y z"}]
    assert [space.arguments(c) for c in codes] == [
        ["--a=1"], ["--a=2", "--new=x"], ["--a=2", "--new=y z"]]


def test_empty_trigger_matches_all():
    configs = hpsearch.expand_configs({"a": [1, 2], "b": [3]}, [({}, {"b": [5], "c": [True]})])
    assert configs == [{"a": 1, "b": 5, "c": True}, {"a": 2, "b": 5, "c": True}]


def test_conditions_apply_in_sequence():
    # The second condition sees what the first made (b=1 only exists after it).
    conditions = [({"a": [1]}, {"b": [1]}), ({"b": [1]}, {"c": ["yes"]})]
    configs = hpsearch.expand_configs({"a": [1, 2], "b": [0]}, conditions)
    assert sorted(configs, key=repr) == sorted([{"a": 2, "b": 0},
                                                {"a": 1, "b": 1, "c": "yes"}], key=repr)


def test_trigger_matching_uses_equality():
    # As hypnettorch's ``in``: True == 1, so a trigger [1] matches True too.
    configs = hpsearch.expand_configs({"f": [True, False]}, [({"f": [1]}, {"g": [7]})])
    assert configs == [{"f": False}, {"f": True, "g": 7}]


def test_plan_configs_deterministic_and_capped():
    grid = {"a": [1, 2, 3], "b": ["x", "y"]}
    space = hpsearch.GridSpace(grid, [])
    full = [space.as_dict(c) for c in hpsearch.plan_configs(space, -1, False, True, 42)]
    assert full == ref_product(grid)
    capped = hpsearch.plan_configs(space, 4, False, True, 42)
    assert [space.as_dict(c) for c in capped] == ref_product(grid)[:4]
    assert len(hpsearch.plan_configs(space, 100, False, True, 42)) == 6
    shuffled = hpsearch.plan_configs(space, -1, False, False, 1)
    assert sorted(shuffled) == sorted(space.expand())
    assert shuffled == hpsearch.plan_configs(space, -1, False, False, 1)


# ------------------------------------------------------------------------------------------
# Order across processes (dry runs)
# ------------------------------------------------------------------------------------------

ORDER_GRID = {"name": ["alpha", "beta", "gamma", "delta"], "opt": ["sgd", "adam"],
              "lr": [0.1, 0.01, 0.001]}


@pytest.fixture(scope="module")
def order_project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("order"), grid=ORDER_GRID)


def dry_commands(project, *args, **kwargs):
    rc, out, err = project.hpsearch("--dry_run", *args, **kwargs)
    assert rc == 0, err
    lines = out.strip().splitlines()
    return lines[:-1], lines[-1]


def test_deterministic_search_is_grid_order(order_project):
    lines, count = dry_commands(order_project, "--deterministic_search",
                                env={"PYTHONHASHSEED": "1"})
    assert count == "24 commands (24 grid points, 0 duplicates removed, 0 conditions skipped)"
    expected = [[ref_token(k, v) for k, v in c.items()] for c in ref_product(ORDER_GRID)]
    assert [shlex.split(line)[2:] for line in lines] == expected
    again, _ = dry_commands(order_project, "--deterministic_search",
                            env={"PYTHONHASHSEED": "2"})
    assert again == lines


def test_shuffle_is_reproducible_across_processes(order_project):
    first, _ = dry_commands(order_project, env={"PYTHONHASHSEED": "11"})
    second, _ = dry_commands(order_project, env={"PYTHONHASHSEED": "12345"})
    grid_order, _ = dry_commands(order_project, "--deterministic_search")
    other_seed, _ = dry_commands(order_project, "--random_seed=7")
    assert first == second
    assert sorted(first) == sorted(grid_order)
    assert first != grid_order
    assert other_seed != first and sorted(other_seed) == sorted(first)


def test_num_searches_caps(order_project):
    lines, count = dry_commands(order_project, "--num_searches=5")
    assert count == ("5 commands (24 grid points, 0 duplicates removed, 0 conditions skipped, "
                     "the first 5 of 24, --num_searches)") and len(lines) == 5
    all_lines, _ = dry_commands(order_project)
    assert lines == all_lines[:5]
    lines, count = dry_commands(order_project, "--num_searches=500")
    assert count.startswith("24 commands (")


def test_random_pick_from_cli(order_project):
    lines, count = dry_commands(order_project, "--dont_generate_full_grid", "--num_searches=7")
    assert count == ("7 commands (drawn at random from 24 grid points, 0 conditions "
                     "skipped)")
    assert len(set(lines)) == 7
    all_lines, _ = dry_commands(order_project)
    assert set(lines) <= set(all_lines)


# ------------------------------------------------------------------------------------------
# Random pick (GridSpace.sample)
# ------------------------------------------------------------------------------------------

SAMPLE_CONDITIONS = [
    ({"a": [0, 1]}, {"b": [5, 6], "extra": ["e1", "e2"]}),  # adds values to b
    ({"c": [2]}, {"d": [True]}),
    ({"zzz": [1]}, {"a": [3]}),  # skipped: zzz is not in the grid
]

# Conditions that only add keys or pick values the grid already has.
PLAIN_CONDITIONS = [
    ({"a": [0, 1]}, {"b": [2, 3], "extra": ["e1", "e2"]}),
    ({"c": [2]}, {"d": [4]}),
]


def check_sample(grid, conditions, n, seed, full=None):
    space = hpsearch.GridSpace(grid, conditions, warn=lambda m: None)
    picked = space.sample(n, random.Random(seed))
    if full is None:
        _, full, _ = ref_expand(grid, conditions)
    commands = [tuple(space.arguments(c)) for c in picked]
    assert len(set(commands)) == len(commands), "sample returned duplicates"
    assert set(commands) <= set(full)
    return commands, full


def test_sample_small_grid_is_distinct_and_conditioned():
    grid = {"a": [0, 1, 2], "b": [1, 2], "c": [1, 2, 3], "d": [False]}
    commands, full = check_sample(grid, SAMPLE_CONDITIONS, 10, 3)
    assert len(commands) == 10
    everything, full = check_sample(grid, SAMPLE_CONDITIONS, 10000, 3)
    assert set(everything) == set(full)


def test_sample_large_grid_is_distinct_and_conditioned():
    # 7**5 = 16807 grid points: more than sample's exact-path bound, so it draws at random.
    grid = dict((k, list(range(7))) for k in "abcde")
    commands, full = check_sample(grid, PLAIN_CONDITIONS, 300, 5)
    assert len(commands) == 300
    assert any("--extra=e1" in c or "--extra=e2" in c for c in commands)
    again, _ = check_sample(grid, PLAIN_CONDITIONS, 300, 5, full)
    assert again == commands
    other, _ = check_sample(grid, PLAIN_CONDITIONS, 300, 6, full)
    assert other != commands


def test_sample_large_grid_draws_only_grid_values():
    # A value only a condition's action names must not be drawn where the trigger fails.
    grid = dict((k, list(range(7))) for k in "abcde")
    conditions = [({"a": [99]}, {"b": [1000]}), ({"nokey": [1]}, {"c": [2000]})]
    commands, _ = check_sample(grid, conditions, 500, 8)
    assert len(commands) == 500


def test_sample_from_huge_grid_is_fast():
    grid = dict(("key%02d" % i, list(range(10))) for i in range(15))  # 10**15 points
    space = hpsearch.GridSpace(grid, [])
    start = time.time()
    picked = space.sample(1000, random.Random(0))
    elapsed = time.time() - start
    assert len(picked) == 1000
    assert len(set(tuple(space.arguments(c)) for c in picked)) == 1000
    assert all(len(space.arguments(c)) == 15 for c in picked)
    assert elapsed < 5.0, elapsed
