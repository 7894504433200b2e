"""Sampling (issue 13): distributions in the grid, --sampler=random and --sampler=quasirandom.

What is checked, through the real command line (``--dry_run``, the printed commands parsed back)
and in-process (``hpsearch.GridSpace`` + ``hpsearch.plan_configs``, as ``new_search`` calls them):

* thousands of draws of uniform, loguniform, randint, choice and a plain list stay in range and
  fit their distribution: Kolmogorov-Smirnov for the floats (loguniform on log(value)), chi-square
  per integer / per list entry; randint reaches both ends;
* floats reach the script with full precision (a real search: argv.json == record == CSV ==
  the value drawn in-process, and ``repr(float(text)) == text``);
* draws depend only on --random_seed; --dont_generate_full_grid is --sampler=random, and for grids
  of lists only it gives exactly what hpsearch gave before issue 13 (``old_sample`` below is
  that algorithm, written out plainly);
* quasi-random points are far more even than random ones (L2-star discrepancy, Warnock's
  formula) and split a list evenly;
* conditions apply to drawn configurations (a trigger on a randint value too);
* bad input is one line and exit status 2.

All statistics are written here with the standard library. Every test uses fixed seeds, so it
gives the same answer every time; the thresholds (p >= 1e-4, discrepancy ratios well below the
measured ones) leave a wide margin for a change of the drawing code, while the bugs they are
meant for (an off-by-one at randint's high end, a loguniform that is uniform, a sampler that
ignores the seed) give p-values below 1e-20 or ratios near 1. ``test_statistics_*`` check the
helpers themselves against known values and show that each test rejects such a bug.
"""

import itertools
import json
import math
import random
import os
import shlex
import sys

import pytest

import hpsearch
from conftest import REPO, config_source, make_project, options, write_file

sys.path.insert(0, os.path.join(REPO, "bench"))
from _common import l2_star_discrepancy  # noqa: E402  (one formula for the bench and here)

# ------------------------------------------------------------------------------------------
# Statistics (stdlib only)
# ------------------------------------------------------------------------------------------


def ks_statistic(sample, cdf):
    """Kolmogorov-Smirnov D = sup |F_n(x) - F(x)| of ``sample`` against the continuous ``cdf``."""
    xs = sorted(sample)
    n = float(len(xs))
    d = 0.0
    for i, x in enumerate(xs):
        f = cdf(x)
        d = max(d, (i + 1) / n - f, f - i / n)
    return d


def ks_pvalue(d, n):
    """P(D >= d) for n draws from the right distribution: Kolmogorov's limit with Stephens'
    small-sample correction (good to ~1 % for n >= 35)."""
    root = math.sqrt(n)
    lam = (root + 0.12 + 0.11 / root) * d
    if lam < 0.2:
        return 1.0
    total = 0.0
    for k in range(1, 101):
        term = 2.0 * (-1) ** (k - 1) * math.exp(-2.0 * k * k * lam * lam)
        total += term
        if abs(term) < 1e-16:
            break
    return min(1.0, max(0.0, total))


def _gamma_p_series(a, x):
    term = total = 1.0 / a
    ap = a
    for _ in range(10000):
        ap += 1.0
        term *= x / ap
        total += term
        if abs(term) < abs(total) * 1e-15:
            break
    return total * math.exp(-x + a * math.log(x) - math.lgamma(a))


def _gamma_q_fraction(a, x):
    # Lentz's continued fraction for the upper incomplete gamma function (Numerical Recipes).
    tiny = 1e-300
    b = x + 1.0 - a
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 10000):
        an = -i * (i - a)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return math.exp(-x + a * math.log(x) - math.lgamma(a)) * h


def chi2_sf(x, df):
    """P(X >= x) for a chi-square variable with ``df`` degrees of freedom."""
    if x <= 0:
        return 1.0
    a, half = df / 2.0, x / 2.0
    if half < a + 1.0:
        return 1.0 - _gamma_p_series(a, half)
    return _gamma_q_fraction(a, half)


def chi2_test(observed, expected):
    """``(statistic, p-value)`` of Pearson's goodness-of-fit test, df = categories - 1."""
    stat = sum((o - e) ** 2 / float(e) for o, e in zip(observed, expected))
    return stat, chi2_sf(stat, len(observed) - 1)


def expected_random_l2_star(n, d):
    """The root mean square L2-star discrepancy of n independent uniform points in [0, 1)^d:
    E[D^2] = (2^-d - 3^-d) / n."""
    return math.sqrt((2.0 ** -d - 3.0 ** -d) / n)


def uniform_cdf(low, high):
    return lambda x: min(1.0, max(0.0, (x - low) / float(high - low)))


def log_uniform_cdf(low, high):
    """CDF of log(value) for loguniform(low, high): uniform between log(low) and log(high)."""
    return uniform_cdf(math.log(low), math.log(high))


P_MIN = 1e-4   # a p-value below this fails a goodness-of-fit test


# ------------------------------------------------------------------------------------------
# Configs, dry runs, in-process draws
# ------------------------------------------------------------------------------------------

IMPORT_LINE = "from hpsearch import uniform, loguniform, randint, choice\n"


def sampling_config(grid_src, conditions_src="[]"):
    """The text of a config whose grid (and conditions) are Python source: distributions are
    written as the user writes them, imported from hpsearch."""
    lines = config_source({"placeholder": [0]}).splitlines()
    assert lines[0].startswith("grid = ") and lines[1].startswith("conditions = ")
    lines[0] = "grid = " + grid_src
    lines[1] = "conditions = " + conditions_src
    return IMPORT_LINE + "\n".join(lines) + "\n"


def sampling_project(tmp_path, grid_src, conditions_src="[]", name="proj"):
    project = make_project(tmp_path, name=name)
    write_file(project.config, sampling_config(grid_src, conditions_src))
    return project


def parse_command(line):
    """``{key: text}`` of a printed command's ``--key=value`` arguments (``--flag``: True)."""
    return parse_arguments(shlex.split(line))


def parse_arguments(tokens):
    return options(tokens)


def dry_run(project, *args, **kwargs):
    """``(commands, last line)`` of a successful dry run; commands as printed."""
    rc, out, err = project.hpsearch("--dry_run", *args, **kwargs)
    assert rc == 0, err
    lines = out.strip().splitlines()
    return lines[:-1], lines[-1]


def draw(grid, n, sampler, seed, conditions=()):
    """In-process, as new_search does: ``(space, codes)``."""
    space = hpsearch.GridSpace(grid, list(conditions), warn=lambda m: None,
                               draws=hpsearch.draw_budget(n))
    return space, hpsearch.plan_configs(space, n, sampler, False, seed)


def drawn_dicts(grid, n, sampler, seed, conditions=()):
    space, codes = draw(grid, n, sampler, seed, conditions)
    return [space.as_dict(c) for c in codes]


def drawn_commands(grid, n, sampler, seed, conditions=()):
    space, codes = draw(grid, n, sampler, seed, conditions)
    return [space.arguments(c) for c in codes]


def assert_fits_continuous(values, cdf, what):
    d = ks_statistic(values, cdf)
    p = ks_pvalue(d, len(values))
    assert p >= P_MIN, "%s: KS D=%.4f over %d draws, p=%.2g" % (what, d, len(values), p)
    return d


def assert_fits_categories(values, categories, what):
    counts = [sum(1 for v in values if v == c) for c in categories]
    assert sum(counts) == len(values), "%s: values outside %r" % (what, categories)
    expected = [len(values) / float(len(categories))] * len(categories)
    stat, p = chi2_test(counts, expected)
    assert p >= P_MIN, "%s: chi-square %.1f (df %d), p=%.2g, counts %r" % (
        what, stat, len(categories) - 1, p, counts)
    return counts


# ------------------------------------------------------------------------------------------
# The statistics themselves
# ------------------------------------------------------------------------------------------


def test_statistics_helpers_match_known_values():
    # Textbook critical values at 5 % and 0.1 %.
    assert abs(chi2_sf(3.841, 1) - 0.05) < 5e-4
    assert abs(chi2_sf(18.307, 10) - 0.05) < 5e-4
    assert abs(chi2_sf(29.588, 10) - 0.001) < 5e-5
    assert abs(chi2_sf(2.0, 2) - math.exp(-1.0)) < 1e-9   # df 2: exp(-x/2)
    assert abs(chi2_sf(124.342, 100) - 0.05) < 5e-4
    assert abs(ks_pvalue(1.3581 / math.sqrt(10000), 10000) - 0.05) < 2e-3
    assert abs(ks_pvalue(1.9495 / math.sqrt(10000), 10000) - 0.001) < 2e-4
    assert ks_pvalue(0.0, 100) == 1.0
    # Warnock's formula: one point at x in 1-D has D^2 = 1/3 - (1 - x^2) + (1 - x).
    x = 0.3
    assert abs(l2_star_discrepancy([[x]]) - math.sqrt(1 / 3.0 - (1 - x * x) + (1 - x))) < 1e-12
    # n equally spaced midpoints in 1-D: D^2 = 1 / (12 n^2).
    n = 50
    mid = [[(i + 0.5) / n] for i in range(n)]
    assert abs(l2_star_discrepancy(mid) - math.sqrt(1.0 / (12 * n * n))) < 1e-12


def test_statistics_reject_the_bugs_they_are_for():
    """Each check below fails on the bug it is meant to catch (so a pass means something)."""
    rng = random.Random(2026)
    n = 4000
    # A loguniform that is uniform on the linear scale: its log is far from uniform.
    fake_log = [rng.uniform(1e-5, 0.1) for _ in range(n)]
    d = ks_statistic([math.log(v) for v in fake_log], log_uniform_cdf(1e-5, 0.1))
    assert ks_pvalue(d, n) < 1e-20
    # A uniform drawn over the wrong range (a high end never reached: [low, high - 10 %]).
    short = [rng.uniform(-2.5, 3.35) for _ in range(n)]
    assert ks_pvalue(ks_statistic(short, uniform_cdf(-2.5, 4)), n) < 1e-6
    # randint(-3, 7) with an off-by-one that never reaches 7.
    off = [rng.randint(-3, 6) for _ in range(n)]
    counts = [off.count(k) for k in range(-3, 8)]
    assert chi2_test(counts, [n / 11.0] * 11)[1] < 1e-20
    # A list entry drawn with randrange(len - 1): the last value never comes.
    counts = [0] * 5
    for _ in range(n):
        counts[rng.randrange(4)] += 1
    assert chi2_test(counts, [n / 5.0] * 5)[1] < 1e-20
    # The same checks pass on correct draws.
    good = [rng.uniform(-2.5, 4) for _ in range(n)]
    assert ks_pvalue(ks_statistic(good, uniform_cdf(-2.5, 4)), n) >= P_MIN


# ------------------------------------------------------------------------------------------
# Thousands of draws through the command line
# ------------------------------------------------------------------------------------------

GOF_GRID_SRC = ('{"u": uniform(-2.5, 4), "lu": loguniform(1e-05, 0.1), "ri": randint(-3, 7), '
                '"c": choice(["x", "y", "z"]), "l": [1, 2, 3, 4, 5]}')
GOF_N = 4000
GOF_SEED = 42


def gof_grid():
    return {"u": hpsearch.uniform(-2.5, 4), "lu": hpsearch.loguniform(1e-05, 0.1),
            "ri": hpsearch.randint(-3, 7), "c": hpsearch.choice(["x", "y", "z"]),
            "l": [1, 2, 3, 4, 5]}


@pytest.fixture(scope="module")
def gof_draws(tmp_path_factory):
    """``{sampler: (commands, last line)}``: 4,000 dry-run draws from GOF_GRID_SRC each."""
    project = sampling_project(tmp_path_factory.mktemp("gof"), GOF_GRID_SRC)
    return dict((sampler, dry_run(project, "--sampler=%s" % sampler,
                                  "--num_searches=%d" % GOF_N, "--random_seed=%d" % GOF_SEED))
                for sampler in ("random", "quasirandom"))


def parsed_gof(commands):
    rows = [parse_command(line) for line in commands]
    for row in rows:
        assert sorted(row) == ["c", "l", "lu", "ri", "u"], row
    return rows


@pytest.mark.parametrize("sampler", ["random", "quasirandom"])
def test_cli_draws_are_in_range_and_fit_their_distributions(gof_draws, sampler):
    commands, last = gof_draws[sampler]
    assert last == ("%d commands (drawn %s from lists of 15 combination(s) and 3 distributions, "
                    "0 conditions skipped)" % (GOF_N, "at random" if sampler == "random"
                                               else "quasi-randomly"))
    rows = parsed_gof(commands)
    assert len(rows) == GOF_N
    u = [float(r["u"]) for r in rows]
    lu = [float(r["lu"]) for r in rows]
    ri = [int(r["ri"]) for r in rows]   # an integer as written: int() refuses "3.0"
    assert all(-2.5 <= v <= 4 for v in u)
    assert all(1e-05 <= v <= 0.1 for v in lu)
    assert all(-3 <= v <= 7 for v in ri)
    assert_fits_continuous(u, uniform_cdf(-2.5, 4), "uniform(-2.5, 4), %s" % sampler)
    assert_fits_continuous([math.log(v) for v in lu], log_uniform_cdf(1e-05, 0.1),
                           "log of loguniform(1e-05, 0.1), %s" % sampler)
    counts = assert_fits_categories(ri, list(range(-3, 8)), "randint(-3, 7), %s" % sampler)
    assert counts[0] > 0 and counts[-1] > 0, "randint never reached an end: %r" % counts
    assert min(ri) == -3 and max(ri) == 7
    assert_fits_categories([r["c"] for r in rows], ["x", "y", "z"], "choice, %s" % sampler)
    assert_fits_categories([r["l"] for r in rows], ["1", "2", "3", "4", "5"], "list, %s" % sampler)
    # Decades of the loguniform are equally full (the point of a log scale).
    decades = [int(math.floor(math.log10(v))) for v in lu]
    assert_fits_categories(decades, [-5, -4, -3, -2], "loguniform decades, %s" % sampler)


@pytest.mark.parametrize("sampler", ["random", "quasirandom"])
def test_cli_draws_are_the_in_process_draws(gof_draws, sampler):
    """The dry run prints what GridSpace + plan_configs draw for the same seed (so the
    in-process tests below test what users get)."""
    commands, _ = gof_draws[sampler]
    expected = drawn_commands(gof_grid(), GOF_N, sampler, GOF_SEED)
    assert [shlex.split(line)[2:] for line in commands] == expected


def test_quasirandom_one_dimensional_projections_are_far_more_even(gof_draws):
    """Each coordinate of a quasi-random sequence is itself evenly spread: its KS distance is
    a fraction of what independent draws give (~0.87 / sqrt(n) on average)."""
    random_rows = parsed_gof(gof_draws["random"][0])
    quasi_rows = parsed_gof(gof_draws["quasirandom"][0])
    root = math.sqrt(GOF_N)
    for key, transform, cdf in [("u", float, uniform_cdf(-2.5, 4)),
                                ("lu", lambda t: math.log(float(t)),
                                 log_uniform_cdf(1e-05, 0.1))]:
        quasi = ks_statistic([transform(r[key]) for r in quasi_rows], cdf) * root
        rand = ks_statistic([transform(r[key]) for r in random_rows], cdf) * root
        assert quasi < 0.25, (key, quasi, rand)
        assert quasi * 2 < rand, (key, quasi, rand)


# ------------------------------------------------------------------------------------------
# Thousands of draws in-process, other bounds, both samplers, several seeds
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampler,seed", [("random", 1), ("random", 7), ("quasirandom", 1),
                                          ("quasirandom", 7)])
def test_in_process_draws_fit_their_distributions(sampler, seed):
    n = 3000
    grid = {"lu": hpsearch.loguniform(1e-3, 1e3), "u": hpsearch.uniform(0.25, 0.5),
            "bit": hpsearch.randint(0, 1), "small": hpsearch.randint(10, 12),
            "k": ["a", "b", "c", "d", "e", "f", "g"]}
    rows = drawn_dicts(grid, n, sampler, seed)
    assert len(rows) == n
    what = "%s seed %d" % (sampler, seed)
    assert all(type(r["u"]) is float and 0.25 <= r["u"] <= 0.5 for r in rows)
    assert all(type(r["lu"]) is float and 1e-3 <= r["lu"] <= 1e3 for r in rows)
    assert all(type(r["bit"]) is int and type(r["small"]) is int for r in rows)
    assert_fits_continuous([r["u"] for r in rows], uniform_cdf(0.25, 0.5), "u " + what)
    assert_fits_continuous([math.log(r["lu"]) for r in rows], log_uniform_cdf(1e-3, 1e3),
                           "log lu " + what)
    # Half of a loguniform(1e-3, 1e3) lies below 1 (not 1/10^6 as on a linear scale).
    below_one = sum(1 for r in rows if r["lu"] < 1)
    assert abs(below_one - n / 2.0) < 0.05 * n, below_one
    assert_fits_categories([r["bit"] for r in rows], [0, 1], "randint(0, 1) " + what)
    assert_fits_categories([r["small"] for r in rows], [10, 11, 12], "randint(10, 12) " + what)
    assert_fits_categories([r["k"] for r in rows], list("abcdefg"), "list " + what)


def test_randint_reaches_both_ends_and_a_single_value():
    rows = drawn_dicts({"r": hpsearch.randint(-1, 2), "u": hpsearch.uniform(0, 1)}, 400,
                       "random", 3)
    assert set(r["r"] for r in rows) == {-1, 0, 1, 2}
    rows = drawn_dicts({"r": hpsearch.randint(5, 5), "u": hpsearch.uniform(0, 1)}, 50,
                       "quasirandom", 3)
    assert set(r["r"] for r in rows) == {5}
    # Large ranges: ints, in range, spread over the range.
    rows = drawn_dicts({"r": hpsearch.randint(0, 10 ** 12)}, 2000, "random", 4)
    values = [r["r"] for r in rows]
    assert all(type(v) is int and 0 <= v <= 10 ** 12 for v in values)
    assert_fits_continuous(values, uniform_cdf(0, 10 ** 12), "randint(0, 10**12)")


def test_distribution_values_stay_in_bounds_at_the_ends_of_u():
    """``value(u)`` maps every u in [0, 1) into [low, high] ("floats in [low, high]"), the
    extreme u too: u = 0 is a possible random() draw and the quasi-random sampler clamps u to
    1 - 2**-53."""
    top = 1.0 - 2.0 ** -53
    bounds = [1e-6, 1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.2, 0.3, 0.5, 0.7,
              1, 2, 3, 10, 100, 1e3]
    outside = []
    for low, high in itertools.combinations(bounds, 2):
        for make in (hpsearch.uniform, hpsearch.loguniform):
            dist = make(low, high)
            for u in (0.0, top):
                value = dist.value(u)
                if not low <= value <= high:
                    outside.append("%r.value(%r) = %r" % (dist, u, value))
    for low, high in [(-3, 7), (0, 1), (5, 5), (-(10 ** 12), 10 ** 12)]:
        dist = hpsearch.randint(low, high)
        assert [dist.value(0.0), dist.value(top)] == [low, high]
    assert not outside, "%d outside their bounds, e.g. %s" % (len(outside), outside[:4])


# ------------------------------------------------------------------------------------------
# Full precision: a real search, its script's argv, the record and the CSV
# ------------------------------------------------------------------------------------------


def significant_digits(text):
    """Significant digits of a float's text: '0.000123e-05' -> 3."""
    mantissa = text.lstrip("-").split("e")[0].replace(".", "")
    return len(mantissa.lstrip("0"))


def test_floats_reach_the_script_with_full_precision(tmp_path):
    grid_src = ('{"u": uniform(0, 1), "lu": loguniform(1e-08, 0.001), '
                '"ri": randint(0, 10 ** 15)}')
    project = sampling_project(tmp_path, grid_src)
    n, seed = 6, 5
    rc, out, err = project.hpsearch("--sampler=random", "--num_searches=%d" % n,
                                    "--random_seed=%d" % seed, "--local_jobs=2")
    assert rc == 0, out + err
    search = project.search()
    grid = {"u": hpsearch.uniform(0, 1), "lu": hpsearch.loguniform(1e-08, 0.001),
            "ri": hpsearch.randint(0, 10 ** 15)}
    drawn = drawn_dicts(grid, n, "random", seed)
    _, rows = search.results()
    by_dir = dict((row["out_dir"], row) for row in rows)
    digits = []
    for run, want in zip(search.record()["runs"], drawn):
        with open(search.file(run["name"], "argv.json")) as f:
            argv = json.load(f)
        assert argv[0] == "--out_dir=" + search.file(run["name"])
        assert argv[1:] == run["arguments"]                 # what the record says it ran
        got = parse_arguments(argv[1:])
        assert set(got) == {"u", "lu", "ri"}
        for key in ("u", "lu"):
            text = got[key]
            assert float(text) == want[key], (key, text, want[key])   # exactly, bit for bit
            assert repr(float(text)) == text                           # no digit lost or added
            assert run["args"][key] == want[key]                       # the record (JSON)
            assert float(by_dir[run["name"]][key]) == want[key]        # the results CSV
            digits.append(significant_digits(text))
        assert int(got["ri"]) == want["ri"] and got["ri"] == str(want["ri"])
        assert "--ri=%d" % want["ri"] in run["arguments"]
    # Shortest round-trip reprs of random doubles have ~16-17 significant digits, not 6 (%g)
    # or 12 (str() of Python 2).
    assert sorted(digits)[len(digits) // 2] >= 15, digits


# ------------------------------------------------------------------------------------------
# Seeds
# ------------------------------------------------------------------------------------------

SEED_GRID_SRC = ('{"lr": loguniform(1e-4, 1e-1), "drop": uniform(0, 0.5), "layers": randint(1, 4), '
                 '"opt": ["sgd", "adam"]}')


@pytest.fixture(scope="module")
def seed_project(tmp_path_factory):
    return sampling_project(tmp_path_factory.mktemp("seeds"), SEED_GRID_SRC)


@pytest.mark.parametrize("sampler", ["random", "quasirandom"])
def test_same_seed_same_commands_other_seed_other_commands(seed_project, sampler):
    args = ("--sampler=%s" % sampler, "--num_searches=20")
    first, _ = dry_run(seed_project, *args, env={"PYTHONHASHSEED": "1"})
    again, _ = dry_run(seed_project, *args, env={"PYTHONHASHSEED": "999"})
    default, _ = dry_run(seed_project, "--random_seed=42", *args)
    other, _ = dry_run(seed_project, "--random_seed=43", *args)
    assert len(first) == 20 and len(set(first)) == 20
    assert first == again == default          # the default seed is 42, hashing plays no part
    assert other != first
    # Another seed gives other values everywhere, not the same points reordered.
    first_lr = [parse_command(c)["lr"] for c in first]
    other_lr = [parse_command(c)["lr"] for c in other]
    assert not set(first_lr) & set(other_lr)
    # ... and not nearly the same values either (a quasi-random sequence whose scrambling
    # ignored the seed would differ in the last digits only): the i-th draws of the two seeds
    # lie typically a third of the range apart (on the log scale).
    span = math.log(1e-1) - math.log(1e-4)
    gaps = sorted(abs(math.log(float(a)) - math.log(float(b))) / span
                  for a, b in zip(first_lr, other_lr))
    assert gaps[len(gaps) // 2] > 0.1, gaps
    # The draws are a function of the seed alone: in-process, the same seed, the same values.
    grid = {"lr": hpsearch.loguniform(1e-4, 1e-1), "drop": hpsearch.uniform(0, 0.5),
            "layers": hpsearch.randint(1, 4), "opt": ["sgd", "adam"]}
    assert [shlex.split(c)[2:] for c in first] == drawn_commands(grid, 20, sampler, 42)


def test_quasirandom_and_random_differ(seed_project):
    rand, _ = dry_run(seed_project, "--sampler=random", "--num_searches=20")
    quasi, _ = dry_run(seed_project, "--sampler=quasirandom", "--num_searches=20")
    assert rand != quasi


# ------------------------------------------------------------------------------------------
# --dont_generate_full_grid, and lists only behave as before issue 13
# ------------------------------------------------------------------------------------------


def ref_token(key, value):
    if value is True:
        return "--" + key
    if value is False:
        return None
    text = str(value)
    if len(text) >= 2 and text.startswith('"') and text.endswith('"'):
        text = text[1:-1]
    return "--%s=%s" % (key, text)


def ref_render(config, keys):
    tokens = [ref_token(k, config[k]) for k in keys if k in config]
    return [t for t in tokens if t is not None]


def ref_odometer(grid):
    """All combinations, first key slowest, last fastest (itertools.product's order)."""
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*[grid[k] for k in keys])]


def active_conditions(grid, conditions):
    return [(t, a) for t, a in conditions if all(k in grid for k in t)]


def ref_keys(grid, conditions):
    keys = list(grid)
    for _, action in active_conditions(grid, conditions):
        keys.extend(k for k in action if k not in keys)
    return keys


def ref_apply(configs, grid, conditions):
    """hpsearch's condition order: per condition, the configurations it leaves alone first,
    then the replacements, one block per combination of the action's values (first action
    key slowest)."""
    for trigger, action in active_conditions(grid, conditions):
        matches = [c for c in configs if all(c.get(k) in trigger[k] for k in trigger)]
        kept = [c for c in configs if not all(c.get(k) in trigger[k] for k in trigger)]
        out = kept
        for combo in ref_odometer(action):
            for c in matches:
                new = dict(c)
                new.update(combo)
                out.append(new)
        configs = out
    return configs


def ref_full(grid, conditions):
    """Rendered commands of the expansion, duplicates removed (the first kept)."""
    keys = ref_keys(grid, conditions)
    seen, out = set(), []
    for c in ref_apply(ref_odometer(grid), grid, conditions):
        cmd = tuple(ref_render(c, keys))
        if cmd not in seen:
            seen.add(cmd)
            out.append(list(cmd))
    return out


def old_sample(grid, conditions, n, seed):
    """hpsearch's --dont_generate_full_grid before issue 13, for a grid of lists. (Checked
    against hpsearch.py of commit be472b3, before issue 13: the same commands in the same
    order for every case of LISTS_CASES, in-process and through its command line.)"""
    rng = random.Random(seed)
    size = 1
    for values in grid.values():
        size *= len(values)
    if size <= max(4 * n, 10000):   # small: an exact shuffle of the full expansion
        full = ref_full(grid, conditions)
        rng.shuffle(full)
        return full[:n]
    keys = ref_keys(grid, conditions)
    pool, seen, attempts = [], set(), 0
    while len(pool) < n and attempts < 50 * n + 1000:
        attempts += 1
        point = dict((k, grid[k][rng.randrange(len(grid[k]))]) for k in grid)
        expanded = ref_apply([point], grid, conditions)
        pick = expanded[rng.randrange(len(expanded))] if len(expanded) > 1 else expanded[0]
        cmd = tuple(ref_render(pick, keys))
        if cmd not in seen:
            seen.add(cmd)
            pool.append(list(cmd))
    return pool


def old_grid_order(grid, conditions, seed):
    """The default sampler before issue 13: the expansion shuffled with the seed."""
    full = ref_full(grid, conditions)
    random.Random(seed).shuffle(full)
    return full


SMALL_GRID = {"a": [1, 2, 3], "b": ["x", "y"], "c": [True, False]}
SMALL_CONDITIONS = [({"a": [1]}, {"d": [5, 6]}), ({"b": ["y"]}, {"c": [True]}),
                    ({"nokey": [1]}, {"a": [9]})]
LARGE_GRID = dict(("k%d" % i, list(range(7))) for i in range(6))   # 117,649 points
LARGE_CONDITIONS = [({"k0": [0, 1]}, {"k1": [100, 101, 102], "extra": ["e1", "e2"]}),
                    ({"k2": [3]}, {"flag": [True]}),
                    ({"k3": [6], "k4": [0, 6]}, {"k5": [0]}),
                    ({"nokey": [1]}, {"k0": [9]})]
THRESHOLD_GRID = dict(("t%d" % i, list(range(11))) for i in range(4))
# Everything collapses onto 49 commands: the draw budget (50 n + 1000 attempts) runs out.
COLLAPSING_CONDITIONS = [({}, {"k0": [0], "k1": [0], "k2": [0], "k3": [0]})]

LISTS_CASES = [
    ("small", SMALL_GRID, SMALL_CONDITIONS, 5, 1),
    ("small-all", SMALL_GRID, SMALL_CONDITIONS, 100, 7),
    ("large", LARGE_GRID, LARGE_CONDITIONS, 300, 3),
    ("large-other-seed", LARGE_GRID, LARGE_CONDITIONS, 300, 42),
    ("collapsing", LARGE_GRID, COLLAPSING_CONDITIONS, 100, 5),
    # 11^4 = 14,641 points, over 10,000: exact for n >= 14,641 / 4, drawn below.
    ("threshold-exact", THRESHOLD_GRID, [], 3661, 2),
    ("threshold-drawn", THRESHOLD_GRID, [], 3660, 2),
    # 10^4 points: exactly 10,000, still exact (the cut-off is "at most", not "under").
    ("threshold-equal", dict(("e%d" % i, list(range(10))) for i in range(4)), [], 5, 3),
]


def test_reference_exercises_every_path():
    small = old_sample(SMALL_GRID, SMALL_CONDITIONS, 100, 7)
    assert len(small) == len(ref_full(SMALL_GRID, SMALL_CONDITIONS)) == 12
    large = old_sample(LARGE_GRID, LARGE_CONDITIONS, 300, 3)
    assert len(large) == 300
    assert any("--k1=101" in c for c in large) and any("--extra=e2" in c for c in large)
    assert any("--flag" in c for c in large)
    assert len(old_sample(LARGE_GRID, COLLAPSING_CONDITIONS, 100, 5)) == 49


@pytest.mark.parametrize("name,grid,conditions,n,seed", LISTS_CASES,
                         ids=[c[0] for c in LISTS_CASES])
def test_lists_only_random_sampling_is_unchanged_in_process(name, grid, conditions, n, seed):
    expected = old_sample(grid, conditions, n, seed)
    assert drawn_commands(grid, n, "random", seed, conditions) == expected
    # As the old call made it too: a GridSpace without room for draws, sample(n, rng).
    space = hpsearch.GridSpace(grid, conditions, warn=lambda m: None)
    assert [space.arguments(c) for c in space.sample(n, random.Random(seed))] == expected


@pytest.mark.parametrize("name,grid,conditions,n,seed",
                         [LISTS_CASES[0], LISTS_CASES[2], LISTS_CASES[4]],
                         ids=["small", "large", "collapsing"])
def test_lists_only_dont_generate_full_grid_is_unchanged(tmp_path, name, grid, conditions, n,
                                                         seed):
    project = make_project(tmp_path, grid=grid, conditions=conditions)
    expected = old_sample(grid, conditions, n, seed)
    args = ("--num_searches=%d" % n, "--random_seed=%d" % seed)
    old_name, last = dry_run(project, "--dont_generate_full_grid", *args)
    new_name, last_new = dry_run(project, "--sampler=random", *args)
    assert [shlex.split(c)[2:] for c in old_name] == expected
    assert new_name == old_name and last_new == last
    size = 1
    for values in grid.values():
        size *= len(values)
    skipped = sum(1 for t, _ in conditions if not all(k in grid for k in t))
    assert last == "%d commands (drawn at random from %d grid points, %s skipped)" % (
        len(expected), size, "1 condition" if skipped == 1 else "%d conditions" % skipped)


def test_lists_only_default_sampler_is_unchanged(tmp_path):
    project = make_project(tmp_path, grid=SMALL_GRID, conditions=SMALL_CONDITIONS)
    default, _ = dry_run(project, "--random_seed=11")
    grid, _ = dry_run(project, "--random_seed=11", "--sampler=grid")
    assert default == grid
    assert [shlex.split(c)[2:] for c in default] == old_grid_order(SMALL_GRID, SMALL_CONDITIONS,
                                                                   11)


def test_dont_generate_full_grid_is_sampler_random_with_distributions(seed_project):
    old_name, last = dry_run(seed_project, "--dont_generate_full_grid", "--num_searches=30")
    new_name, last_new = dry_run(seed_project, "--sampler=random", "--num_searches=30")
    assert old_name == new_name and last == last_new
    assert last.startswith("30 commands (drawn at random from lists of 2 combination(s) and "
                           "3 distributions")


# ------------------------------------------------------------------------------------------
# Quasi-random: discrepancy and even lists
# ------------------------------------------------------------------------------------------


def unit_cube_grid_src(d):
    return "{%s}" % ", ".join('"x%d": uniform(0, 1)' % i for i in range(d))


def unit_cube_points(commands, d):
    points = []
    for line in commands:
        args = parse_command(line)
        point = [float(args["x%d" % i]) for i in range(d)]
        assert all(0 <= x < 1 for x in point)
        points.append(point)
    return points


@pytest.mark.parametrize("d,margin", [(2, 2.5), (4, 1.5)])
def test_quasirandom_discrepancy_is_clearly_below_random_cli(tmp_path, d, margin):
    """256 points, read from the dry-run commands. Measured (seeds 0-4, in-process): 2-D
    quasi 0.0037-0.0040 vs random 0.013-0.035 (3.3-9.6x); 4-D quasi 0.0048-0.0055 vs random
    0.011-0.015 (2.0-2.9x). Random's root mean square is sqrt((2^-d - 3^-d) / n): 0.0233
    (2-D), 0.0140 (4-D)."""
    n = 256
    project = sampling_project(tmp_path, unit_cube_grid_src(d))
    quasi = l2_star_discrepancy(unit_cube_points(dry_run(
        project, "--sampler=quasirandom", "--num_searches=%d" % n)[0], d))
    rand = l2_star_discrepancy(unit_cube_points(dry_run(
        project, "--sampler=random", "--num_searches=%d" % n)[0], d))
    rms = expected_random_l2_star(n, d)
    assert quasi * margin < rand, (quasi, rand)
    assert quasi * margin < rms, (quasi, rms)


@pytest.mark.parametrize("d,margin", [(2, 2.5), (4, 1.5)])
def test_quasirandom_discrepancy_is_below_random_for_every_seed(d, margin):
    """In-process, 5 seeds each: the worst quasi-random set beats the random sets' median by
    the margin, and every quasi-random set beats the random set of the same seed."""
    n = 256
    grid = dict(("x%d" % i, hpsearch.uniform(0, 1)) for i in range(d))
    keys = sorted(grid)
    quasi, rand = [], []
    for seed in range(5):
        for sampler, out in (("quasirandom", quasi), ("random", rand)):
            rows = drawn_dicts(grid, n, sampler, seed)
            out.append(l2_star_discrepancy([[r[k] for k in keys] for r in rows]))
    assert all(q < r for q, r in zip(quasi, rand)), (quasi, rand)
    assert max(quasi) * margin < sorted(rand)[2], (quasi, rand)


def test_quasirandom_discrepancy_shrinks_faster_than_random():
    """Random's discrepancy falls like n^-1/2; quasi-random's close to n^-1: from 64 to 1024
    points (16x) in 2-D it falls by far more than 4x."""
    grid = {"x0": hpsearch.uniform(0, 1), "x1": hpsearch.uniform(0, 1)}
    small = l2_star_discrepancy([[r["x0"], r["x1"]] for r in
                                 drawn_dicts(grid, 64, "quasirandom", 1)])
    large = l2_star_discrepancy([[r["x0"], r["x1"]] for r in
                                 drawn_dicts(grid, 1024, "quasirandom", 1)])
    assert small / large > 6, (small, large)


@pytest.mark.parametrize("grid_src", [
    '{"l": ["a", "b", "c", "d"], "u": uniform(0, 1)}',                 # first coordinate
    '{"u": uniform(0, 1), "l": ["a", "b", "c", "d"]}',                 # second (base 3)
    '{"u": uniform(0, 1), "v": randint(0, 9), "l": ["a", "b", "c", "d"]}',  # third (base 5)
], ids=["first", "second", "third"])
def test_quasirandom_splits_a_list_evenly(tmp_path, grid_src):
    """400 quasi-random draws of a 4-value list: each value 100 +- 3 (random draws: +- 8.7
    standard deviation; measured 87-116)."""
    project = sampling_project(tmp_path, grid_src)
    commands, _ = dry_run(project, "--sampler=quasirandom", "--num_searches=400")
    values = [parse_command(c)["l"] for c in commands]
    counts = dict((v, values.count(v)) for v in "abcd")
    assert sum(counts.values()) == 400
    assert all(abs(c - 100) <= 3 for c in counts.values()), counts


def test_quasirandom_splits_lists_and_randint_evenly_in_process():
    grid = {"l3": ["a", "b", "c"], "r": hpsearch.randint(1, 6), "l5": list(range(5)),
            "u": hpsearch.uniform(0, 1)}
    for seed in (1, 2, 3):
        rows = drawn_dicts(grid, 600, "quasirandom", seed)
        for key, values in (("l3", "abc"), ("r", range(1, 7)), ("l5", range(5))):
            counts = [sum(1 for r in rows if r[key] == v) for v in values]
            share = 600.0 / len(counts)
            assert all(abs(c - share) <= 4 for c in counts), (key, seed, counts)


def test_sampled_lists_only_give_every_combination_once():
    grid = {"a": [1, 2, 3], "b": ["x", "y"]}
    full = sorted(ref_full(grid, []))
    for sampler in ("random", "quasirandom"):
        for n, want in ((6, 6), (50, 6), (4, 4)):
            commands = drawn_commands(grid, n, sampler, 3)
            assert len(commands) == want and len(set(map(tuple, commands))) == want
            assert all(c in full for c in commands)
    assert sorted(drawn_commands(grid, 6, "quasirandom", 3)) == full


# ------------------------------------------------------------------------------------------
# Conditions on drawn configurations
# ------------------------------------------------------------------------------------------

COND_GRID_SRC = ('{"layers": randint(1, 4), "opt": ["sgd", "adam"], '
                 '"lr": loguniform(1e-4, 1e-1), "drop": uniform(0, 0.5)}')
COND_SRC = ('[({"layers": [4]}, {"wide": [True]}), '
            '({"opt": ["sgd"]}, {"lr": [0.1], "momentum": [0.5, 0.9]}), '
            '({"layers": [1], "opt": ["adam"]}, {"drop": [0.0]}), '
            '({"nokey": [1]}, {"layers": [99]})]')


@pytest.mark.parametrize("sampler", ["random", "quasirandom"])
def test_conditions_apply_to_drawn_configurations(tmp_path, sampler):
    project = sampling_project(tmp_path, COND_GRID_SRC, COND_SRC)
    commands, last = dry_run(project, "--sampler=%s" % sampler, "--num_searches=400")
    assert len(commands) == 400
    assert last.endswith("1 condition skipped)"), last
    rows = [parse_command(c) for c in commands]
    seen_momentum = set()
    for r in rows:
        layers = int(r["layers"])
        assert 1 <= layers <= 4          # the skipped condition never set 99
        assert ("wide" in r) == (layers == 4), r    # a trigger on a randint value
        assert r.get("wide") in (None, True)
        if r["opt"] == "sgd":
            assert r["lr"] == "0.1", r
            seen_momentum.add(r["momentum"])
        else:
            assert "momentum" not in r and 1e-4 <= float(r["lr"]) <= 1e-1, r
        if layers == 1 and r["opt"] == "adam":
            assert r["drop"] == "0.0", r
        else:
            assert 0 <= float(r["drop"]) <= 0.5
    assert seen_momentum == {"0.5", "0.9"}
    # Every trigger fired and every case came up.
    assert sum(1 for r in rows if "wide" in r) > 40
    assert sum(1 for r in rows if r["opt"] == "adam" and r["layers"] == "1") > 20
    # Drawn sgd configurations that differ only in lr, now fixed, are duplicates: none kept.
    assert len(set(commands)) == len(commands)


def test_trigger_on_a_randint_uses_equality_like_grid_values():
    """A trigger compares values as on a grid of lists (``value in trigger_list``, so 3.0 and
    True match the drawn ints 3 and 1, as they match 3 and 1 in a list)."""
    grid_lists = {"r": [0, 1, 2, 3]}
    conditions = [({"r": [3.0]}, {"extra": ["yes"]}), ({"r": [True]}, {"one": ["yes"]})]
    listed = hpsearch.expand_configs(grid_lists, conditions)
    assert {"r": 3, "extra": "yes"} in listed and {"r": 1, "one": "yes"} in listed
    rows = drawn_dicts({"r": hpsearch.randint(0, 3), "u": hpsearch.uniform(0, 1)}, 200,
                       "random", 1, conditions)
    threes = [r for r in rows if r["r"] == 3]
    ones = [r for r in rows if r["r"] == 1]
    assert threes and ones
    assert all(r.get("extra") == "yes" for r in threes), threes[:2]
    assert all(r.get("one") == "yes" for r in ones), ones[:2]


def test_action_values_for_a_distribution_key_come_out_as_given():
    grid = {"opt": ["sgd", "adam"], "lr": hpsearch.loguniform(1e-4, 1e-2),
            "u": hpsearch.uniform(0, 1)}
    conditions = [({"opt": ["sgd"]}, {"lr": [0.5, 1]})]   # outside the distribution's range
    for sampler in ("random", "quasirandom"):
        rows = drawn_dicts(grid, 300, sampler, 2, conditions)
        sgd = [r for r in rows if r["opt"] == "sgd"]
        adam = [r for r in rows if r["opt"] == "adam"]
        assert sgd and adam
        assert set(r["lr"] for r in sgd) == {0.5, 1}
        assert set(type(r["lr"]) for r in sgd if r["lr"] == 1) == {int}
        assert all(1e-4 <= r["lr"] <= 1e-2 for r in adam)


# ------------------------------------------------------------------------------------------
# Bad input: one line, exit status 2
# ------------------------------------------------------------------------------------------


def assert_one_line_usage_error(rc, out, err):
    assert rc == 2, (rc, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("hpsearch: error: "), err
    assert "Traceback" not in err and out == "", (out, err)
    return lines[0]


@pytest.mark.parametrize("args", [(), ("--num_searches=10",), ("--sampler=grid",)],
                         ids=["plain", "num_searches", "sampler-grid"])
def test_distribution_with_the_grid_sampler_is_a_usage_error(seed_project, args):
    line = assert_one_line_usage_error(*seed_project.hpsearch("--dry_run", *args))
    assert "--sampler=random" in line and "--sampler=quasirandom" in line, line
    assert seed_project.config in line
    assert "lr" in line   # the entry that is a distribution
    # Without --dry_run too, and nothing is made.
    line = assert_one_line_usage_error(*seed_project.hpsearch(*args))
    assert "--sampler=random" in line
    assert seed_project.searches() == []


@pytest.mark.parametrize("entry", ["uniform(1, 0)", "loguniform(0, 1)", "randint(1.5, 3)",
                                   "uniform(0, float('inf'))", "randint(3, 1)",
                                   "loguniform(-1, 1)", "uniform(2, 2)", "choice([])",
                                   "uniform('a', 1)", "randint(True, 3)"])
def test_bad_distribution_in_a_config_is_one_line_naming_the_config(tmp_path, entry):
    project = sampling_project(tmp_path, '{"a": [1, 2], "x": %s}' % entry)
    for args in (("--sampler=random", "--num_searches=5", "--dry_run"),
                 ("--sampler=quasirandom", "--num_searches=5")):
        line = assert_one_line_usage_error(*project.hpsearch(*args))
        assert project.config in line, line
        assert entry.split("(")[0] in line, line     # names the distribution
    assert project.searches() == []


@pytest.mark.parametrize("args", [("--sampler=random",), ("--sampler=quasirandom",),
                                  ("--dont_generate_full_grid",),
                                  ("--sampler=random", "--num_searches=-1")],
                         ids=["random", "quasirandom", "old-name", "minus-one"])
def test_sampled_modes_need_num_searches(seed_project, args):
    line = assert_one_line_usage_error(*seed_project.hpsearch("--dry_run", *args))
    assert "--num_searches" in line, line


def test_dont_generate_full_grid_with_quasirandom_is_refused(seed_project):
    line = assert_one_line_usage_error(*seed_project.hpsearch(
        "--dry_run", "--dont_generate_full_grid", "--sampler=quasirandom", "--num_searches=5"))
    assert "--dont_generate_full_grid" in line and "--sampler" in line, line


def test_unknown_sampler_is_refused(seed_project):
    rc, out, err = seed_project.hpsearch("--dry_run", "--sampler=sobol", "--num_searches=5")
    assert rc == 2 and "quasirandom" in err, err
