"""Mutation testing of hpsearch.py and hpsearch_postprocessing.py: a development tool.

Makes one-line mutants of named sections of the two files (a comparison flipped, ``and`` for
``or``, a constant changed, ``+`` for ``-``, an ``if`` negated, a return value dropped, a
statement deleted), runs a fast subset of the unit tests against each mutant in a temporary
copy of the tree (never the working tree), and reports per section how many mutants the tests
killed, which survived (with the changed line) and which timed out.

    python tests/mutation/mutate.py [--section NAME ...] [--seed N] [--max-per-section N]
                                    [--jobs N] [--timeout SECONDS] [--json FILE] [--list]

A section is a set of banner sections (``# ----`` lines around a title) and top-level
functions or classes of one file, and has the tests that cover it (SECTIONS below). Mutants
listed in tests/mutation/equivalent.txt (each with the reason it cannot be killed) are left
out of the score. Standard library only; Python 3.8+ (it needs the AST's end positions); Linux
with ``unshare`` (the tests of each mutant run in a PID namespace of their own: a mutant of the
code that stops process groups could otherwise signal every process on the machine).
"""

import argparse
import ast
import collections
import concurrent.futures
import datetime
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
EQUIVALENT = os.path.join(HERE, "equivalent.txt")

Section = collections.namedtuple("Section", "file banners names skip tests")

# What each section mutates (banner titles, top-level names; ``skip``: names inside them left
# out) and the smallest test subset that covers it.
SECTIONS = collections.OrderedDict([
    ("grid", Section(
        "hpsearch.py", ["Grid expansion"], [], [],
        ["tests/test_grid.py", "tests/test_sampling.py", "tests/test_commands.py",
         "tests/test_config.py"])),
    ("gpu", Section(
        "hpsearch.py", ["GPUs, read with nvidia-smi"], ["GpuSlots", "choose_slots"], [],
        ["tests/test_flags.py::test_gpu_choice_fewest_of_our_runs_first_then_least_memory_used",
         "tests/test_gpus.py", "tests/test_flags.py::test_gpu_choice_in_a_search",
         "tests/test_flags.py::test_gpu_limit_from_the_command_line_is_the_one_used"])),
    ("local", Section(
        "hpsearch.py", ["Backends: where runs execute"], [], ["GpuSlots"],
        ["tests/test_flags.py", "tests/test_local_parallel.py",
         "tests/test_gpus.py::test_slots_startup_hold_cut_short_by_child_of_our_run",
         "tests/test_submit_protocol.py",   # job scripts (write_job_script)
         "tests/test_reliability.py::test_run_timeout_kills_a_hanging_run_and_goes_on",
         "tests/test_reliability.py::test_run_timeout_ends_the_whole_process_group"])),
    ("cluster", Section(
        "hpsearch.py", ["Cluster backends: Slurm and LSF"], [], [],
        ["tests/test_submit_protocol.py", "tests/test_cluster_limits.py",
         "tests/test_cluster_backend.py", "tests/test_flags_cluster.py", "tests/test_lsf.py",
         # the slowest two (12 s of waits): other tests cover submission retries and bjobs
         "--deselect", "tests/test_lsf.py::test_bsub_failing_always_fails_that_run_only",
         "--deselect", "tests/test_lsf.py::test_garbled_bjobs_answer_never_ends_a_job"])),
    ("resume", Section(
        "hpsearch.py", [], ["resume_search", "JournalOwner", "stop_leftover_processes",
                            "reattach_jobs", "restore_states", "earlier_outcome"], [],
        ["tests/test_flags.py::test_resume_stops_a_journaled_pid_only_if_it_is_still_the_run",
         "tests/test_submit_protocol.py", "tests/test_reliability.py"])),
    ("postprocessing", Section(
        "hpsearch_postprocessing.py", ["What became of each run", "--performance_criteria"],
        [], [],
        ["tests/test_flags.py::test_criteria_again_leaves_runs_already_in_to_be_deleted_alone",
         "tests/test_flags.py::test_a_runs_times_are_those_of_its_last_attempt",
         "tests/test_flags.py::test_postprocessing_counts_a_submission_under_way_as_running",
         "tests/test_flags.py::test_postprocessing_tells_a_running_run_whose_process_is_gone",
         "tests/test_flags.py::test_a_gone_process_is_only_told_for_a_search_that_ran_here",
         "tests/test_postprocessing_judging.py", "tests/test_postprocessing.py",
         # run links (has_folder)
         "tests/test_report_html.py::test_seed_averaged_report_structure_links_and_statistics"])),
])


# ----------------------------------------------------------------------------------------------
# Which lines a section holds
# ----------------------------------------------------------------------------------------------


def banner_ranges(lines):
    """``{title: (first line, last line)}`` (1-based) of the banner sections: a title line
    between two ``# ----`` lines, up to the next banner."""
    starts = [i for i in range(1, len(lines) - 1) if lines[i - 1].startswith("# ---")
              and lines[i + 1].startswith("# ---") and lines[i].startswith("# ")]
    ranges = {}
    for k, i in enumerate(starts):
        end = starts[k + 1] - 2 if k + 1 < len(starts) else len(lines)
        ranges[lines[i][2:].strip()] = (i + 1, end)
    return ranges


def name_ranges(tree, names):
    """``{name: (first line, last line)}`` of top-level functions and classes (also methods
    named ``Class.method``) among ``names``."""
    found = {}
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            if node.name in names:
                found[node.name] = (node.lineno, node.end_lineno)
            if isinstance(node, ast.ClassDef):
                for sub in node.body:
                    qual = "%s.%s" % (node.name, getattr(sub, "name", ""))
                    if qual in names:
                        found[qual] = (sub.lineno, sub.end_lineno)
    return found


def section_lines(section, text, tree):
    """The set of line numbers a section mutates."""
    lines = text.splitlines()
    banners = banner_ranges(lines)
    spans = []
    for title in section.banners:
        matches = [r for t, r in banners.items() if t.startswith(title)]
        if len(matches) != 1:
            raise SystemExit("mutate.py: banner %r: %d matches in %s"
                             % (title, len(matches), section.file))
        spans.append(matches[0])
    named = name_ranges(tree, set(section.names) | set(section.skip))
    missing = (set(section.names) | set(section.skip)) - set(named)
    if missing:
        raise SystemExit("mutate.py: not in %s: %s" % (section.file, ", ".join(sorted(missing))))
    spans.extend(named[n] for n in section.names)
    chosen = {n for first, last in spans for n in range(first, last + 1)}
    for name in section.skip:
        first, last = named[name]
        chosen -= set(range(first, last + 1))
    return chosen


# ----------------------------------------------------------------------------------------------
# Mutants: one changed line each
# ----------------------------------------------------------------------------------------------

Mutant = collections.namedtuple("Mutant", "section file line before after what")

SWAPS = {ast.Lt: "<=", ast.LtE: "<", ast.Gt: ">=", ast.GtE: ">", ast.Eq: "!=", ast.NotEq: "==",
         ast.In: "not in", ast.NotIn: "in", ast.Is: "is not", ast.IsNot: "is",
         ast.Add: "-", ast.Sub: "+", ast.Mult: "/", ast.Div: "*", ast.And: "or", ast.Or: "and"}
SIMPLE_STATEMENTS = (ast.Expr, ast.Assign, ast.AugAssign, ast.Delete, ast.Raise)


def constant_swap(value):
    """Another value for a constant, or None."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return {0: 1, 1: 0}.get(value, value + 1)
    if isinstance(value, float):
        return 0.0 if value else 1.0
    return None


def one_line(node):
    return getattr(node, "end_lineno", None) == node.lineno


def between(line, left, right, old, new):
    """``line`` with ``old`` between the end of node ``left`` and the start of ``right``
    replaced by ``new`` (same line), or None."""
    if not (one_line(left) and right.lineno == left.lineno):
        return None
    gap = line[left.end_col_offset:right.col_offset]
    if gap.count(old) != 1:
        return None
    return line[:left.end_col_offset] + gap.replace(old, new) + line[right.col_offset:]


def replace_span(line, node, new):
    if not one_line(node):
        return None
    return line[:node.col_offset] + new + line[node.end_col_offset:]


OPERATOR_TEXT = {v: k for k, v in {
    "<": ast.Lt, "<=": ast.LtE, ">": ast.Gt, ">=": ast.GtE, "==": ast.Eq, "!=": ast.NotEq,
    "not in": ast.NotIn, "is not": ast.IsNot, "+": ast.Add, "-": ast.Sub, "*": ast.Mult,
    "/": ast.Div, "and": ast.And, "or": ast.Or}.items()}
OPERATOR_TEXT.update({ast.In: " in ", ast.Is: " is "})


def mutations_of(node, line):
    """``(new line, description)`` for the one-line mutations of ``node``."""
    out = []
    if isinstance(node, ast.Compare) and len(node.ops) == 1:
        op = type(node.ops[0])
        if op in SWAPS:
            old = OPERATOR_TEXT[op]
            new = " %s " % SWAPS[op] if op in (ast.In, ast.Is) else SWAPS[op]
            out.append((between(line, node.left, node.comparators[0], old, new),
                        "%s -> %s" % (old.strip(), SWAPS[op])))
    elif isinstance(node, ast.BinOp) and type(node.op) in (ast.Add, ast.Sub, ast.Mult, ast.Div):
        if not isinstance(node.left, ast.Str) and not isinstance(node.left, ast.JoinedStr):
            old = OPERATOR_TEXT[type(node.op)]
            out.append((between(line, node.left, node.right, old, SWAPS[type(node.op)]),
                        "%s -> %s" % (old, SWAPS[type(node.op)])))
    elif isinstance(node, ast.BoolOp) and len(node.values) == 2:
        old = OPERATOR_TEXT[type(node.op)]
        out.append((between(line, node.values[0], node.values[1], " %s " % old,
                            " %s " % SWAPS[type(node.op)]),
                    "%s -> %s" % (old, SWAPS[type(node.op)])))
    elif isinstance(node, ast.Constant) and not isinstance(node.value, (str, bytes)):
        new = constant_swap(node.value)
        if new is not None:
            out.append((replace_span(line, node, repr(new)), "%r -> %r" % (node.value, new)))
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        inner = node.operand
        if one_line(node) and inner.lineno == node.lineno:
            out.append((line[:node.col_offset] + "(" + line[inner.col_offset:
                                                            inner.end_col_offset]
                        + ")" + line[node.end_col_offset:], "not x -> x"))
    elif isinstance(node, (ast.If, ast.While)) and one_line(node.test):
        if node.test.lineno == node.lineno:
            out.append((replace_span(line, node.test, "not (%s)" % line[
                node.test.col_offset:node.test.end_col_offset]), "negate condition"))
    elif isinstance(node, ast.Return) and node.value is not None and one_line(node):
        out.append((line[:node.col_offset] + "return None" + line[node.end_col_offset:],
                    "return value dropped"))
    if isinstance(node, SIMPLE_STATEMENTS) and one_line(node) \
            and line[:node.col_offset].strip() == "" \
            and line[node.end_col_offset:].split("#")[0].strip() == "":
        out.append((line[:node.col_offset] + "pass", "statement deleted"))
    return [(new, what) for new, what in out if new is not None and new != line]


def docstring_lines(tree):
    """Lines of docstrings (constants there are no code)."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) \
                    and isinstance(first.value.value, str):
                lines.update(range(first.lineno, first.end_lineno + 1))
    return lines


def make_mutants(name, section, root=REPO):
    path = os.path.join(root, section.file)
    with open(path) as f:
        text = f.read()
    tree = ast.parse(text)
    wanted = section_lines(section, text, tree) - docstring_lines(tree)
    lines = text.splitlines()
    mutants = []
    for node in ast.walk(tree):
        lineno = getattr(node, "lineno", None)
        if lineno not in wanted:
            continue
        line = lines[lineno - 1]
        for new, what in mutations_of(node, line):
            mutants.append(Mutant(name, section.file, lineno, line, new, what))
    return sorted(set(mutants), key=lambda m: (m.line, m.after))


def compiles(mutant, root):
    """Whether the file with this mutant is still Python."""
    with open(os.path.join(root, mutant.file)) as f:
        lines = f.read().split("\n")
    lines[mutant.line - 1] = mutant.after
    try:
        ast.parse("\n".join(lines))
    except SyntaxError:
        return False
    return True


def read_equivalent():
    """``{(file, line before, line after)}`` of mutants the tests cannot kill (stripped)."""
    found = set()
    if not os.path.exists(EQUIVALENT):
        return found
    with open(EQUIVALENT) as f:
        entries = [l.rstrip("\n") for l in f if l.strip() and not l.startswith("#")]
    for i in range(0, len(entries) - 2, 3):
        found.add((entries[i].strip(), entries[i + 1].strip()[2:].strip(),
                   entries[i + 2].strip()[2:].strip()))
    return found


# ----------------------------------------------------------------------------------------------
# Running the tests against each mutant
# ----------------------------------------------------------------------------------------------


def copy_tree(target):
    """The tree's files (tracked, and untracked ones git does not ignore) into ``target``."""
    names = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           stdout=subprocess.PIPE, check=True).stdout.decode().split("\0")
    for name in filter(None, names):
        src = os.path.join(REPO, name)
        if not os.path.isfile(src) or "__pycache__" in name:
            continue
        dst = os.path.join(target, name)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copy2(src, dst)


# A mutant of the code that finds and stops process groups (groups_marked, alive_groups, ...)
# can signal every process it sees: the tests run in a PID namespace of their own, where
# there are only theirs (a shell, not pytest, is its pid 1, and reaps orphans as init does).
SANDBOX = ["unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
           "sh", "-c", '"$@"; exit $?', "sh"]


def sandbox():
    """SANDBOX if it works here; else exit: without it a mutant may kill any process."""
    try:
        ok = subprocess.run(SANDBOX + ["true"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL).returncode == 0
    except OSError:
        ok = False
    if not ok:
        raise SystemExit("mutate.py: needs `unshare --pid --fork --mount-proc` (Linux, root or "
                         "user namespaces): a mutant could signal processes outside its tests")
    return SANDBOX


def run_tests(tree, tests, timeout, first_failure=True):
    """``(outcome, output)`` of pytest on ``tests`` in ``tree``, in the sandbox; outcome
    ``"passed"``, ``"failed"`` or ``"timeout"``."""
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    argv = sandbox() + [sys.executable, "-m", "pytest", "-q", "-rf", "-p", "no:cacheprovider"] + (
        ["-x"] if first_failure else []) + tests
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(argv, cwd=tree, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            return "timeout", ""
        out.seek(0)
        return ("passed" if code == 0 else "failed"), out.read().decode("utf-8", "replace")


def baseline(name, tree):
    """The section's tests as they run on the unmutated tree: ``(argv, seconds)``. Tests that
    fail already (someone's work in progress) are deselected, and said so."""
    tests = list(SECTIONS[name].tests)
    started = time.time()
    outcome, output = run_tests(tree, tests, 1800, first_failure=False)
    seconds = time.time() - started
    failing = re.findall(r"^FAILED (\S+)", output, re.M)
    if outcome != "passed" and not failing:
        raise SystemExit("mutate.py: the tests of section %s fail without a mutant:\n%s"
                         % (name, output[-3000:]))
    for test in failing:
        print("mutate.py: %s: deselected, fails without a mutant: %s" % (name, test))
        tests += ["--deselect", test]
    return tests, seconds


class Worker(object):
    """A copy of the tree in which one mutant at a time is applied."""

    def __init__(self, base):
        self.tree = tempfile.mkdtemp(prefix="hpsearch_mutant_")
        shutil.rmtree(self.tree)
        shutil.copytree(base, self.tree)

    def try_mutant(self, mutant, tests, timeout):
        path = os.path.join(self.tree, mutant.file)
        with open(path) as f:
            original = f.read()
        lines = original.split("\n")
        assert lines[mutant.line - 1] == mutant.before
        lines[mutant.line - 1] = mutant.after
        try:
            with open(path, "w") as f:
                f.write("\n".join(lines))
            return run_tests(self.tree, tests, timeout)[0]
        finally:
            with open(path, "w") as f:
                f.write(original)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--section", action="append", choices=list(SECTIONS),
                   help="a section to mutate (repeat; default: all)")
    p.add_argument("--seed", type=int, default=16, help="seed of the sample of mutants")
    p.add_argument("--max-per-section", type=int, default=22, metavar="N",
                   help="at most N mutants per section (a seeded sample)")
    p.add_argument("--jobs", type=int, default=1, help="mutants tested at once")
    p.add_argument("--timeout", type=float, default=0,
                   help="seconds per mutant (a slower one counts as killed: 'timeout'); "
                        "default: twice the section's tests without a mutant, plus 5, at least 20")
    p.add_argument("--json", help="also write the results into this file")
    p.add_argument("--list", action="store_true", help="list the mutants only")
    args = p.parse_args(argv)
    started = time.time()
    equivalent = read_equivalent()
    names = args.section or list(SECTIONS)
    base = tempfile.mkdtemp(prefix="hpsearch_mutation_base_")
    try:
        copy_tree(base)   # the files as they are now: others may edit the working tree
        chosen, excluded = sample_mutants(names, base, args, equivalent)
        if args.list:
            for m in chosen:
                print("%s %s:%d %s\n  - %s\n  + %s" % (m.section, m.file, m.line, m.what,
                                                      m.before.strip(), m.after.strip()))
            return 0
        outcome = run_mutants(names, chosen, base, args)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return report(names, chosen, excluded, outcome, args, time.time() - started)


def sample_mutants(names, base, args, equivalent):
    """The seeded sample of at most --max-per-section mutants of each section, and per section
    how many mutants of equivalent.txt it passed over (left out of the score). The order is
    drawn before equivalents are left out, so listing one does not change the rest."""
    chosen, excluded = [], collections.Counter()
    for name in names:
        mutants = make_mutants(name, SECTIONS[name], base)
        random.Random("%s/%s" % (args.seed, name)).shuffle(mutants)
        sample = []
        for m in mutants:   # the first N that compile, in a seeded order
            if len(sample) == args.max_per_section:
                break
            if (m.file, m.before.strip(), m.after.strip()) in equivalent:
                excluded[name] += 1
            elif compiles(m, base):
                sample.append(m)
        chosen.extend(sorted(sample, key=lambda m: m.line))
        print("%s: %d mutants, %d sampled, %d equivalent passed over"
              % (name, len(mutants), len(sample), excluded[name]))
    return chosen, excluded


def run_mutants(names, chosen, base, args):
    """``{mutant: 'killed', 'survived' or 'timeout'}``, ``--jobs`` at a time."""
    subsets = {}
    for name in names:
        tests, seconds = baseline(name, base)
        # A mutant may make a search hang: give up at a few times the unmutated time.
        subsets[name] = tests, args.timeout or max(20.0, 2 * seconds + 5)
        print("%s: tests take %.0f s unmutated; a mutant gets %.0f s" % (
            name, seconds, subsets[name][1]), flush=True)
    workers = [Worker(base) for _ in range(args.jobs)]
    free, outcome, pending, queue = list(workers), {}, {}, list(chosen)
    try:
        with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
            while queue or pending:
                while queue and free:
                    m, w = queue.pop(0), free.pop()
                    pending[pool.submit(w.try_mutant, m, *subsets[m.section])] = (m, w)
                done, _ = concurrent.futures.wait(
                    pending, return_when=concurrent.futures.FIRST_COMPLETED)
                for fut in done:
                    m, w = pending.pop(fut)
                    free.append(w)
                    outcome[m] = {"passed": "survived", "failed": "killed"}.get(
                        fut.result(), fut.result())
                    print("  %-8s %s %s:%d %s" % (outcome[m], m.section, m.file, m.line,
                                                  m.what), flush=True)
    finally:
        for w in workers:
            shutil.rmtree(w.tree, ignore_errors=True)
    return outcome


def report(names, chosen, excluded, outcome, args, seconds):
    summary = {"date": datetime.date.today().isoformat(), "seconds": round(seconds),
               "command": "python tests/mutation/mutate.py " + " ".join(
                   sys.argv[1:]), "sections": {}}
    print("\nsection          mutants  killed  timeout  survived  equivalent  score")
    for name in names:
        mine = [m for m in chosen if m.section == name]
        counts = collections.Counter(outcome[m] for m in mine)
        dead = counts["killed"] + counts["timeout"]
        score = 100.0 * dead / len(mine) if mine else 100.0
        print("%-16s %7d %7d %8d %9d %11d  %5.1f%%" % (
            name, len(mine), counts["killed"], counts["timeout"], counts["survived"],
            excluded[name], score))
        summary["sections"][name] = {
            "mutants": len(mine), "killed": counts["killed"], "timeout": counts["timeout"],
            "survived": counts["survived"], "equivalent": excluded[name],
            "score": round(score, 1),
            "survivors": ["%s:%d: - %s | + %s" % (m.file, m.line, m.before.strip(),
                                                  m.after.strip())
                          for m in mine if outcome[m] == "survived"]}
    for name in names:
        for line in summary["sections"][name]["survivors"]:
            print("survived (%s) %s" % (name, line))
    print("%d s" % seconds)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
