"""hpsearch_postprocessing.py: how runs are ranked, judged and re-run (Python 3.6-3.13).

* Ranking: finished runs first (by the performance key), then unfinished, failed and killed
  runs, then running, missing and never started ones, in postprocessing_results.csv, the
  terminal's best-runs table and the HTML report alike (hpsearch.rank_key).
* --performance_criteria moves only runs the handle judged: a handle that reads a key the
  summary lacks (d[key], d.get(key), key in d) or raises gives no verdict; the run stays and is
  listed. If no run could be judged, nothing moves and the exit status is 2.
* The config template's handle reads _PERFORMANCE_KEY in the direction of
  _PERFORMANCE_SORT_ASC.
* The re-run advice works as printed: the --resume command and each run's command (after its
  cd line, into a fresh folder), run with /bin/sh.
* Output CSVs are rewritten (and the earlier one renamed) only when their content changes.
* The hpsearch_reason column: the journal's reason, else what postprocessing can tell.
"""

import json
import os
import re
import shlex
import subprocess
import sys

import pytest

import hpsearch
from conftest import DEFAULT_SCRIPT, HPSEARCH, REPO, make_project, tree, write_file
from test_postprocessing import (assert_one_error_line, csv_by_run, rerun_commands,
                                 resume_line, run_name, run_post, snapshot, summary,
                                 synth_search)

TEMPLATE = os.path.join(REPO, "hpsearch_config_template.py")

# A failed run (exit 1) whose summary holds the best value of all, an unfinished one with the
# second best, a killed and a running one with high values too: all rank after every finished
# run. Then a run whose folder is gone and one never started.
RANKED_RUNS = [
    {"args": {"lr": 0.1}, "summary": summary(0.3)},
    {"args": {"lr": 0.2}, "summary": summary(0.99, finished=0), "journal": [("failed", 1)]},
    {"args": {"lr": 0.3}, "summary": summary(0.5)},
    {"args": {"lr": 0.4}, "summary": summary(0.98, finished=0), "journal": [("unfinished", 0)]},
    {"args": {"lr": 0.5}, "summary": summary(0.4)},
    {"args": {"lr": 0.6}, "summary": summary(0.97), "journal": [("killed", 137)]},
    {"args": {"lr": 0.7}, "summary": "acc 0.96\n", "journal": [("running", None)]},
    {"args": {"lr": 0.8}, "folder": False, "journal": []},
    {"args": {"lr": 0.9}, "folder": False},
]
# Run numbers best first: finished by acc, unfinished, failed, killed, running, missing,
# never started.
RANKED_ORDER = [3, 5, 1, 4, 2, 6, 7, 9, 8]


def test_a_failed_run_with_a_high_partial_value_ranks_after_every_finished_run(tmp_path):
    path = synth_search(tmp_path, RANKED_RUNS)
    rc, out, err = run_post([path, "--html", "--top", "6"])
    assert rc == 0, (out, err)

    # postprocessing_results.csv
    header, rows, by_run = csv_by_run(os.path.join(path, "postprocessing_results.csv"))
    assert [os.path.basename(r["out_dir"]) for r in rows] == \
        [run_name(k) for k in RANKED_ORDER]
    assert [r["hpsearch_state"] for r in rows] == [
        "finished", "finished", "finished", "unfinished", "failed", "killed", "running",
        "missing", "not_started"]
    # The same rule as search_results.csv's (hpsearch.rank_key) for the states it has.
    ended = [r for r in rows if r["hpsearch_state"] in hpsearch.STATE_RANK]
    assert ended == sorted(ended, key=lambda r: hpsearch.rank_key(
        r["hpsearch_state"], r["acc"], False))

    # The terminal's best-runs table: the finished runs first, the failed 0.99 after them.
    table = out[out.index("best 6 runs by acc"):].splitlines()[3:9]
    assert [line.split()[1] for line in table] == [run_name(k) for k in RANKED_ORDER[:6]]
    assert [line.split()[-1] for line in table] == [
        "finished", "finished", "finished", "unfinished", "failed", "killed"]

    # The HTML report: its results table in the same order, and the parallel coordinates of
    # the best runs start with the finished ones.
    with open(os.path.join(path, "report.html"), encoding="utf-8") as f:
        page = f.read()
    table = page[page.index("<h2>Results, best first</h2>"):]
    assert re.findall(r'<tr class="(\w+)">', table) == [r["hpsearch_state"] for r in rows]
    names = re.findall(r'<td>(?:<a href="[^"]*">)?(sim_\d+_\d+)(?:</a>)?</td>', table)
    assert names == [run_name(k) for k in RANKED_ORDER]
    best = dict((int(n), name) for n, name in re.findall(r"<title>#(\d+) (sim_\d+_\d+)</title>",
                                                          page))
    assert [best[n] for n in sorted(best)] == [run_name(k) for k in RANKED_ORDER[:len(best)]]
    assert len(best) == 6


def test_ranking_lowest_first_keeps_finished_runs_first(tmp_path):
    runs = [
        {"args": {"lr": 0.1}, "summary": summary(0.5, loss=2.0)},
        {"args": {"lr": 0.2}, "summary": summary(0.5, loss=0.01, finished=0),
         "journal": [("failed", 1)]},
        {"args": {"lr": 0.3}, "summary": summary(0.5, loss=1.0)},
    ]
    path = synth_search(tmp_path, runs, perf_key="loss", sort_asc=True)
    rc, out, err = run_post([path])
    assert rc == 0, (out, err)
    _, rows, _ = csv_by_run(os.path.join(path, "postprocessing_results.csv"))
    assert [r["loss"] for r in rows] == ["1.0", "2.0", "0.01"]


# ----------------------------------------------------------------------------------------------
# --performance_criteria
# ----------------------------------------------------------------------------------------------


def template_config(keywords, key, ascending=False):
    """The config template as a user adapts it: other summary keywords and performance key."""
    with open(TEMPLATE) as f:
        text = f.read()
    changes = [
        (r"^_SUMMARY_KEYWORDS = .*$", "_SUMMARY_KEYWORDS = %r" % (list(keywords),)),
        (r"^_PERFORMANCE_KEY = .*$", "_PERFORMANCE_KEY = %r" % (key,)),
        (r"^_PERFORMANCE_SORT_ASC = .*$", "_PERFORMANCE_SORT_ASC = %r" % (ascending,)),
    ]
    for pattern, line in changes:
        text, n = re.subn(pattern, line, text, flags=re.M)
        assert n == 1, pattern
    return text


def moved_and_kept(path, k_range):
    trash = os.path.join(path, "TO_BE_DELETED")
    moved = sorted(os.listdir(trash)) if os.path.isdir(trash) else []
    kept = [run_name(k) for k in k_range if os.path.isdir(os.path.join(path, run_name(k)))]
    return moved, kept


def test_template_handle_uses_the_performance_key_and_keeps_what_it_cannot_judge(tmp_path):
    values = [0.95, 0.9, 0.89, 0.5, 0.91]
    runs = [{"args": {"lr": i}, "summary": "val_acc %s\nfinished 1\n" % v}
            for i, v in enumerate(values)]
    runs.append({"args": {"lr": 9}, "summary": "val_acc 0.2\nfinished 0\n",
                 "journal": [("failed", 1)]})                             # 6: moved
    runs.append({"args": {"lr": 10}, "summary": "finished 1\n"})          # 7: no val_acc
    runs.append({"args": {"lr": 11}, "summary": "val_acc oops\nfinished 1\n"})  # 8: text
    path = synth_search(tmp_path, runs, keywords=("val_acc", "finished"), perf_key="val_acc")
    write_file(os.path.join(path, "hp_config.py"), template_config(["val_acc", "finished"],
                                                                   "val_acc"))
    rc, out, err = run_post([path, "--performance_criteria", "0.9"])
    assert rc == 0, (out, err)
    moved, kept = moved_and_kept(path, range(1, 9))
    assert moved == [run_name(3), run_name(4), run_name(6)]      # 0.89, 0.5, 0.2
    assert kept == [run_name(k) for k in (1, 2, 5, 7, 8)]         # 0.95, 0.9, 0.91, ...
    assert "moved 3 run folder(s)" in out
    listed = out[out.index("could not judge (not judged):"):].splitlines()[1:3]
    assert listed[0] == "  %s: its summary has no 'val_acc'" % run_name(7)
    assert listed[1].startswith("  %s: the handle raised ValueError" % run_name(8))


def test_template_handle_lower_is_better(tmp_path):
    runs = [{"args": {"lr": i}, "summary": "loss %s\nfinished 1\n" % v}
            for i, v in enumerate([0.1, 0.5, 0.6, 2.0])]
    path = synth_search(tmp_path, runs, keywords=("loss", "finished"), perf_key="loss",
                        sort_asc=True)
    write_file(os.path.join(path, "hp_config.py"),
               template_config(["loss", "finished"], "loss", ascending=True))
    rc, out, err = run_post([path, "--performance_criteria", "0.5"])
    assert rc == 0, (out, err)
    moved, kept = moved_and_kept(path, range(1, 5))
    assert moved == [run_name(3), run_name(4)] and kept == [run_name(1), run_name(2)]


# The handle of the template before: a missing 'acc_final' silently meant "not good enough".
OLD_TEMPLATE_HANDLE = '''
def _performance_eval(summary_dict, performance_criteria):
    """Keep runs whose final accuracy is at least ``performance_criteria``."""
    value = summary_dict.get('acc_final')
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    try:
        return float(value) >= float(performance_criteria)
    except (TypeError, ValueError):  # missing or not a number: not good enough
        return False


_PERFORMANCE_EVAL_HANDLE = _performance_eval
'''


def test_a_handle_that_reads_a_key_no_summary_has_moves_nothing(tmp_path):
    runs = [{"args": {"lr": i}, "summary": summary(acc)} for i, acc in enumerate([0.2, 0.9])]
    runs.append({"args": {"lr": 5}, "summary": None, "journal": [("failed", 1)]})
    path = synth_search(tmp_path, runs, extra=OLD_TEMPLATE_HANDLE)
    before = tree(path)
    rc, out, err = run_post([path, "--performance_criteria", "0.5"])
    assert_one_error_line(rc, out, err, "--performance_criteria", "_PERFORMANCE_EVAL_HANDLE",
                          "_performance_eval", "hp_config.py", "'acc_final'",
                          "nothing was moved")
    assert tree(path) == before


@pytest.mark.parametrize("value", [
    "summary.get('val', 0) if 'val' in summary else None",
    "summary.setdefault('val', None)", "summary.pop('val', None)",
    "summary['val'] if summary.has_key('val') else None"],
    ids=["in-get", "setdefault", "pop", "has_key"])
def test_key_checks_count_as_reads(tmp_path, value):
    # 'in', .get, .setdefault, .pop with a default, has_key on a key only some summaries
    # have: those runs stay.
    handle = '''
def _keep(summary, criteria):
    value = %s
    if value is None:
        return False
    return value >= criteria
_PERFORMANCE_EVAL_HANDLE = _keep
''' % value
    runs = [{"args": {"lr": 1}, "summary": "acc 0.1\nval 0.1\nfinished 1\n"},   # moved
            {"args": {"lr": 2}, "summary": "acc 0.1\nfinished 1\n"},            # not judged
            {"args": {"lr": 3}, "summary": "acc 0.1\nval 0.9\nfinished 1\n"}]   # kept
    path = synth_search(tmp_path, runs, keywords=("acc", "val", "finished"), extra=handle)
    rc, out, err = run_post([path, "--performance_criteria", "0.5"])
    assert rc == 0, (out, err)
    assert moved_and_kept(path, range(1, 4)) == ([run_name(1)], [run_name(2), run_name(3)])
    assert "  %s: its summary has no 'val'" % run_name(2) in out.splitlines()


def test_a_key_no_summary_can_hold_is_a_key_it_lacks():
    """A handle asking for an unhashable key (a list, as hypnettorch-era summaries hold
    values in lists) gets what it gets for any missing key, and the run is not judged."""
    import hpsearch_postprocessing as post
    summary = post.WatchedSummary({"acc": 0.5})
    assert ["acc"] not in summary and summary.get(["acc"], 7) == 7
    assert summary.lacked == [["acc"], ["acc"]]


def test_a_handle_that_raises_for_some_runs_keeps_them(tmp_path):
    handle = '''
def _keep(summary, criteria):
    if summary['loss'] > 5:
        raise ValueError('cannot tell with a loss of %s' % summary['loss'])
    return summary['acc'] >= criteria
_PERFORMANCE_EVAL_HANDLE = _keep
'''
    runs = [{"args": {"lr": 1}, "summary": summary(0.1, loss=1)},    # moved
            {"args": {"lr": 2}, "summary": summary(0.1, loss=9)},    # raises: kept
            {"args": {"lr": 3}, "summary": summary(0.9, loss=1)},    # kept
            {"args": {"lr": 4}, "summary": summary(0.2, loss=7)}]    # raises: kept
    path = synth_search(tmp_path, runs, extra=handle)
    rc, out, err = run_post([path, "--performance_criteria", "0.5"])
    assert rc == 0, (out, err)
    assert moved_and_kept(path, range(1, 5)) == (
        [run_name(1)], [run_name(2), run_name(3), run_name(4)])
    lines = out.splitlines()
    at = [i for i, line in enumerate(lines) if "could not judge (not judged):" in line]
    assert len(at) == 1 and lines[at[0]].startswith("kept 2 run folder(s)"), out
    assert lines[at[0] + 1:at[0] + 3] == [
        "  %s: the handle raised ValueError: cannot tell with a loss of 9" % run_name(2),
        "  %s: the handle raised ValueError: cannot tell with a loss of 7" % run_name(4)]

    # If it raises for every run, nothing moves: exit 2, the handle and its error named.
    path = synth_search(tmp_path, runs[1::3], extra=handle, name="search_all_raise")
    before = tree(path)
    rc, out, err = run_post([path, "--performance_criteria", "0.5"])
    assert_one_error_line(rc, out, err, "_keep", "ValueError", "nothing was moved")
    assert tree(path) == before


# ----------------------------------------------------------------------------------------------
# Re-run advice, run as printed
# ----------------------------------------------------------------------------------------------

# acc=0.5 runs fail (exit 1) while the file BROKEN exists in --run_cwd, after writing a summary.
FLAKY_SCRIPT = DEFAULT_SCRIPT.replace('    sys.exit(int(opts.get("exit", 0)))\n', '''\
    if opts.get("fail_while") and os.path.exists(opts["fail_while"]):
        sys.stderr.write("train.py: %s is there\\n" % opts["fail_while"])
        sys.exit(1)
    sys.exit(int(opts.get("exit", 0)))
''')
assert FLAKY_SCRIPT != DEFAULT_SCRIPT


def sh(text, env=None, timeout=60):
    proc = subprocess.Popen(["/bin/sh", "-c", text], stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True, env=env, cwd="/")
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def test_rerun_advice_works_as_printed(tmp_path):
    project = make_project(tmp_path, script_body=FLAKY_SCRIPT,
                           grid={"acc": [0.25, 0.5, 0.75], "random_seed": [1, 2]},
                           conditions=[({"acc": [0.5]}, {"fail_while": ["BROKEN"]})])
    broken = write_file(os.path.join(project.path, "BROKEN"), "")
    rc, out, err = project.hpsearch("--deterministic_search")
    assert rc == 1, (out, err)
    search = project.search()
    rc, out, err = run_post([search.path])
    assert rc == 0, (out, err)
    failed = sorted(n for n, s in search.final_states().items() if s == "failed")
    assert len(failed) == 2

    # The reason column and the list: the last line the failed runs wrote to stderr.
    _, _, by_run = csv_by_run(search.file("postprocessing_results.csv"))
    for name in failed:
        assert by_run[name]["hpsearch_reason"] == "train.py: BROKEN is there"
        assert "  %s: failed (exit 1): train.py: BROKEN is there" % name in out.splitlines()

    # Each run's two lines, pasted into /bin/sh: a fresh folder, no refusal.
    os.remove(broken)
    listed = rerun_commands(out)
    assert sorted(listed) == failed
    for name, (cd, argv) in listed.items():
        text = "%s\n%s\n" % (cd, " ".join(shlex.quote(a) for a in argv))
        rc, sh_out, sh_err = sh(text)
        assert rc == 0, (text, sh_out, sh_err)
        assert "refusing" not in sh_err
        with open(search.file(name + "_rerun", "performance_overview.txt")) as f:
            assert f.read().endswith("finished 1\n")
    # Now that <run>_rerun is taken, the advice names <run>_rerun2.
    rc, out, err = run_post([search.path])
    assert rc == 0, (out, err)
    for name, (cd, argv) in rerun_commands(out).items():
        assert "--out_dir=%s" % search.file(name + "_rerun2") in argv

    # The --resume command, pasted into /bin/sh (a failing nvidia-smi first on PATH: no GPUs
    # here, whatever this machine has): the failed runs run again, and finish.
    fake_bin = os.path.join(str(tmp_path), "bin")
    write_file(os.path.join(fake_bin, "nvidia-smi"), "#!/bin/sh\nexit 1\n")
    os.chmod(os.path.join(fake_bin, "nvidia-smi"), 0o755)
    env = dict(os.environ, PATH=fake_bin + os.pathsep + os.environ.get("PATH", ""))
    command = resume_line(out)
    assert shlex.split(command) == [sys.executable, HPSEARCH, "--resume", search.path]
    rc, sh_out, sh_err = sh(command, env=env)
    assert rc == 0, (command, sh_out, sh_err)
    assert set(search.final_states().values()) == {"finished"}
    for name in failed:
        with open(search.file(name, "job_%s.err" % name)) as f:
            assert "refusing" not in f.read()
    rc, out, err = run_post([search.path])
    assert rc == 0, (out, err)
    assert "runs that did not finish" not in out and "--resume" not in out
    _, rows, _ = csv_by_run(search.file("postprocessing_results.csv"))
    assert {r["hpsearch_state"] for r in rows} == {"finished"}
    assert {r["hpsearch_reason"] for r in rows} == {""}


# ----------------------------------------------------------------------------------------------
# Output files and the reason column
# ----------------------------------------------------------------------------------------------


def test_an_unchanged_second_pass_renames_and_rewrites_nothing(tmp_path):
    runs = [{"args": {"lr": lr, "random_seed": seed}, "summary": summary(lr + seed / 10.0)}
            for lr in (0.1, 0.2) for seed in (1, 2)]
    runs[1]["journal"] = [("failed", 1)]
    path = synth_search(tmp_path, runs)
    rc, out, err = run_post([path])
    assert rc == 0, (out, err)
    first = snapshot(path)
    names = set(os.listdir(path))
    assert {"postprocessing_results.csv", "postprocessing_seeds.csv"} <= set(first)
    rc, out, err = run_post([path])
    assert rc == 0, (out, err)
    assert snapshot(path) == first      # same files, same content, same modification times
    assert "postprocessing_results.csv is unchanged" in out
    assert "postprocessing_seeds.csv is unchanged" in out

    # A change: both files are rewritten, the earlier ones kept under a time-stamped name.
    write_file(os.path.join(path, run_name(1), "performance_overview.txt"), summary(0.7))
    rc, out, err = run_post([path])
    assert rc == 0, (out, err)
    renamed = sorted(re.sub(r"_\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d(_\d+)?\.csv$", ".csv", n)
                     for n in set(os.listdir(path)) - names)
    assert renamed == ["postprocessing_results.csv", "postprocessing_seeds.csv"]


def test_reason_column_from_the_journal_else_from_the_folder(tmp_path):
    runs = [
        {"args": {"lr": 0.1}, "summary": summary(0.5)},                               # 1
        {"args": {"lr": 0.2}, "summary": None, "journal": [("failed", 1)]},           # 2
        {"args": {"lr": 0.3}, "summary": "acc 0.4\n", "journal": [("unfinished", 0)]},  # 3
        {"args": {"lr": 0.4}, "summary": None, "journal": [("killed", 137)]},         # 4
        {"args": {"lr": 0.5}, "summary": None, "journal": [("failed", 2)]},           # 5
        {"args": {"lr": 0.6}, "summary": summary(0.5, finished=0)},                   # 6
    ]
    path = synth_search(tmp_path, runs)
    reasons = {2: "RuntimeError: CUDA out of memory", 3: "no summary.txt in sim_x",
               4: "ended by signal 9 (the scheduler's time limit)"}
    with open(os.path.join(path, "run_journal.jsonl"), "a") as f:
        for k, reason in reasons.items():
            state, code = runs[k - 1]["journal"][-1]
            f.write(json.dumps({"run": run_name(k), "state": state, "time": 5.0, "attempt": 1,
                                "exit_code": code, "reason": reason}) + "\n")
    # Run 5's stderr, where hpsearch leaves it when the run made a folder.
    write_file(os.path.join(path, run_name(5), "job_%s.err" % run_name(5)),
               "Traceback (most recent call last):\nValueError: bad lr\n\n")
    rc, out, err = run_post([path])
    assert rc == 0, (out, err)
    header, rows, by_run = csv_by_run(os.path.join(path, "postprocessing_results.csv"))
    assert header[-1] == "hpsearch_reason"
    got = {k: by_run[run_name(k)]["hpsearch_reason"] for k in range(1, 7)}
    assert got == {
        1: "", 2: reasons[2], 3: reasons[3], 4: reasons[4], 5: "ValueError: bad lr",
        6: "%s says finished 0, not 1" % os.path.join(path, run_name(6),
                                                     "performance_overview.txt")}
    for k in range(2, 7):
        assert re.search(r"^  %s: \w+ \(exit \d+\): %s( \(no summary file\))?$"
                         % (run_name(k), re.escape(got[k])), out, re.M), (k, out)
