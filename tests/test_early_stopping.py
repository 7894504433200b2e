"""Early stopping (--early_stopping=asha, issue 13): the rung table on its own, then searches of
a toy training script with known learning curves, locally and on the LSF emulator.

The toy (TOY below) learns ``val_acc = q * (1 - exp(-epoch / tau))``: every run's ranking is
its ``q`` at every epoch. It writes its summary atomically (temp file + rename) after each
epoch ('epoch k', 'val_acc v', 'finished 0'), 'finished 1' at the end, and notes in its ledger
each start, each epoch reached (with the time the summary was written) and each signal.

The main grid has one clearly best run: q = 1.0, every other q <= 0.6. Since
``1 - exp(-1/tau)`` = 0.63 with tau = 1, the best run's value at ANY epoch >= 1 beats every other
run's value at ANY epoch, so it can never be below a rung's cutoff, however late hpsearch reads
a summary (locally every 0.25 s; an epoch takes 0.1 s, so a summary is often read an epoch or
two past a rung). This keeps "the best survives" exact and the test free of timing luck.

Run order is fixed (--deterministic_search): ASHA's outcome depends on the order in which runs
reach the rungs (the first run at a rung always continues), and a test must not depend on a
shuffle. Python 3.6+, stdlib + pytest; about 16 s in all.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from conftest import SCRIPT_TOOLS, HPSEARCH, ledger, ledger_path, make_project, \
    run_hpsearch, wait_for  # noqa: E402
import lsf_helpers as lh  # noqa: E402
import hpsearch  # noqa: E402

# The toy training script. Options (all --key=value): q (final accuracy), tau (1), epochs (27),
# pause (seconds per epoch, 0.1), late + late_below (a run with q < late_below sleeps `late`
# seconds before its first epoch, on its first start only), burst_below (a run with q below it
# runs all its epochs at once, no pause, and writes only the last one's summary), linger
# (seconds it stays alive after writing 'finished 1'). Ledger files (one line each, words):
# starts "name pid time", epochs "name pid epoch time value", signals "name pid signum time
# last_epoch", ends "name pid time". A signal is held off while a summary and its ledger line
# are written, so the two always agree.
TOY = SCRIPT_TOOLS + r'''
import math
import signal

opts = options(sys.argv[1:])
out = opts["out_dir"]
name = os.path.basename(out)
pid = os.getpid()
q = float(opts["q"])
tau = float(opts.get("tau", 1))
epochs = int(opts.get("epochs", 27))
pause = float(opts.get("pause", 0.1))
burst = q < float(opts.get("burst_below", -1))
reached = [0]


def on_signal(signum, frame):
    note("signals", "%s %d %d %.6f %d" % (name, pid, signum, time.time(), reached[0]))
    signal.signal(signum, signal.SIG_DFL)
    os.kill(pid, signum)   # die of it, as an unprepared script would


signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)


def started_before():
    try:
        with open(os.path.join(LEDGER, "starts")) as f:
            return any(line.split()[0] == name for line in f)
    except OSError:
        return False


def write_summary(epoch, value, finished):
    tmp = os.path.join(out, ".summary.tmp")
    with open(tmp, "w") as f:
        f.write("epoch %d\nval_acc %.6f\nfinished %d\n" % (epoch, value, finished))
    os.rename(tmp, os.path.join(out, "performance_overview.txt"))   # atomic


def report(epoch, value):
    """Summary and ledger line together: a signal is held off until both are written."""
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM, signal.SIGINT])
    if not burst or epoch == epochs:   # a burst: only its last epoch's summary is written
        write_summary(epoch, value, 0)
    reached[0] = epoch
    note("epochs", "%s %d %d %.6f %.6f" % (name, pid, epoch, time.time(), value))
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGTERM, signal.SIGINT])


os.makedirs(out)   # refuses an existing folder, like hypnettorch scripts
late = float(opts.get("late", 0)) if q < float(opts.get("late_below", -1)) and \
    not started_before() else 0.0
note("starts", "%s %d %.6f" % (name, pid, time.time()))
time.sleep(late)
value = 0.0
for epoch in range(1, epochs + 1):
    if not burst:
        time.sleep(pause)
    value = q * (1 - math.exp(-epoch / tau))
    report(epoch, value)
write_summary(epochs, value, 1)
note("ends", "%s %d %.6f" % (name, pid, time.time()))
time.sleep(float(opts.get("linger", 0)))
'''

KEYWORDS = ["epoch", "val_acc", "finished"]
ES = ("--early_stopping=asha", "--es_step_key=epoch")
REASON = re.compile(r"^early stopping at epoch (\d+(?:\.\d+)?): val_acc (\S+) worse than (\S+)$")


def toy_project(tmp_path, grid, name="proj"):
    project = make_project(tmp_path, script_body=TOY, grid=grid, name=name,
                           summary_keywords=KEYWORDS, performance_key="val_acc", sort_asc=False)
    os.makedirs(ledger_path(project))
    return project


ok = lh.ok


def by_q(search):
    """``{q: run name}`` from the search's record."""
    return {r["args"]["q"]: r["name"] for r in search.runs()}


def last_journal(search):
    last = {}
    for entry in search.journal():
        last[entry["run"]] = entry
    return last


def epochs_of(project, name):
    """The epochs a run reached (all its attempts), in order."""
    return [int(w[2]) for w in ledger(project, "epochs") if w[0] == name]


def progress(search, name):
    with open(os.path.join(search.run_dir(name), "hpsearch_progress.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def rung_value(history, rung):
    """The value a history recorded for ``rung``: that of its first report at or past it."""
    for entry in history:
        if entry["step"] is not None and entry["step"] >= rung:
            return entry["values"]["val_acc"]
    return None


# ---------------------------------------------------------------------------------------------
# RungTable: the rule, without any process
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("min_step, max_step, eta, rungs", [
    (1, 27, 3, [1, 3, 9]),         # 27 is the last step, not a rung
    (1, 28, 3, [1, 3, 9, 27]),
    (1, 9, 3, [1, 3]),
    (2, 50, 2, [2, 4, 8, 16, 32]),
    (0.5, 4, 2, [0.5, 1, 2]),
    (5, 6, 3, [5]),
    (1, 100, 10, [1, 10]),
])
def test_rungs_are_r_times_powers_of_eta_below_max_step(min_step, max_step, eta, rungs):
    assert hpsearch.rung_steps(min_step, max_step, eta) == rungs
    assert hpsearch.RungTable(min_step, max_step, eta, False).rungs == rungs


def test_quantile_rule_small_example_higher_is_better():
    """eta = 3: a value is stopped when below the 2/3 quantile (linear interpolation) of the
    values recorded at that rung so far, its own included; equal to it continues."""
    t = hpsearch.RungTable(1, 27, 3, ascending=False)
    assert t.report("a", 1, 0.5) is None      # the first run at a rung always continues
    rung, cutoff = t.report("b", 1, 0.4)      # [0.4, 0.5]: 0.4 + 0.1 * 2/3
    assert rung == 1 and cutoff == pytest.approx(0.4 + 0.1 * 2 / 3)
    assert t.report("c", 1, 0.6) is None      # [0.4, 0.5, 0.6]: cutoff 0.5333
    assert t.report("d", 1, 0.55) is None     # [0.4, 0.5, 0.55, 0.6]: cutoff exactly 0.55
    rung, cutoff = t.report("e", 1, 0.45)     # [.4 .45 .5 .55 .6]: position 8/3 -> 0.5333
    assert rung == 1 and cutoff == pytest.approx(0.5 + 0.05 * 2 / 3)
    assert sorted(t.scores[1]) == pytest.approx([0.4, 0.45, 0.5, 0.55, 0.6])
    assert t.scores[3] == [] and t.scores[9] == []


def test_first_run_at_each_rung_continues_even_when_worst():
    t = hpsearch.RungTable(1, 27, 3, ascending=False)
    for step in (1, 2, 3):
        t.report("good", step, 0.9)
    assert t.report("bad", 1, 0.1) is not None     # rung 1 has 'good': stopped
    # rung 9: nobody reached it yet; a bad value there is the first, it continues
    t2 = hpsearch.RungTable(9, 27, 3, ascending=False)
    assert t2.report("bad", 9, 0.0) is None


def test_lower_is_better_direction():
    """_PERFORMANCE_SORT_ASC = True (a loss): lower continues; the cutoff is reported as a loss."""
    t = hpsearch.RungTable(1, 27, 3, ascending=True)
    assert t.report("a", 1, 0.5) is None
    assert t.report("low", 1, 0.3) is None           # better than 0.5: continues
    rung, cutoff = t.report("high", 1, 0.9)          # losses [.3 .5 .9]: cutoff at 1/3 -> 0.4333
    assert rung == 1 and cutoff == pytest.approx(0.3 + 0.2 * 2 / 3)
    assert 0.3 < cutoff < 0.9                         # reported in the metric's own units


def quantile_oracle(values, q):
    """Independent of hpsearch.quantile: numpy's 'linear' method written out."""
    xs = sorted(values)
    h = (len(xs) - 1) * q
    below = int(h)
    if below + 1 >= len(xs):
        return xs[-1]
    return xs[below] + (h - below) * (xs[below + 1] - xs[below])


@pytest.mark.parametrize("ascending", [False, True])
def test_quantile_rule_against_an_oracle_and_about_a_third_continues(ascending):
    """Random values in random order: every verdict is what the rule says, and once the rung
    has many values only about 1/eta of the newcomers continue."""
    import random
    rng = random.Random(7)
    eta = 3.0
    t = hpsearch.RungTable(1, 27, eta, ascending=ascending)
    seen, continued = [], []
    for i in range(600):
        value = rng.random()
        verdict = t.report("r%d" % i, 1, value)
        seen.append(-value if ascending else value)
        cutoff = quantile_oracle(seen, 1 - 1 / eta)
        expected_stop = seen[-1] < cutoff
        assert (verdict is not None) == expected_stop, (i, value, verdict)
        if verdict is not None:
            assert verdict[0] == 1
            assert verdict[1] == pytest.approx(-cutoff if ascending else cutoff)
        if i >= 100:
            continued.append(verdict is None)
    share = sum(continued) / float(len(continued))
    assert 0.25 <= share <= 0.42, share   # 1/3 expected (slightly more: early leniency)


def test_report_jumping_several_rungs_is_recorded_at_each():
    t = hpsearch.RungTable(1, 81, 3, ascending=False)     # rungs 1 3 9 27
    assert t.report("a", 10, 0.8) is None                  # first seen at step 10: rungs 1 3 9
    assert t.reached["a"] == {1, 3, 9}
    assert [len(t.scores[r]) for r in (1, 3, 9, 27)] == [1, 1, 1, 0]
    assert t.report("a", 12, 0.1) is None                  # no new rung: nothing recorded
    assert [len(t.scores[r]) for r in (1, 3, 9, 27)] == [1, 1, 1, 0]
    # a bad run jumping to 9 is recorded at 1, 3 and 9; the verdict names the first rung
    verdict = t.report("b", 9, 0.2)
    assert verdict is not None and verdict[0] == 1
    assert [len(t.scores[r]) for r in (1, 3, 9, 27)] == [2, 2, 2, 0]
    # a good run jumping to 27: recorded at every rung, continues
    assert t.report("c", 27, 0.9) is None
    assert [len(t.scores[r]) for r in (1, 3, 9, 27)] == [3, 3, 3, 1]


def test_asynchronous_no_waiting_for_other_runs():
    """A verdict comes with the report itself: nothing waits for a rung to fill. The first
    run reaches every rung alone and continues; a worse one is stopped the moment it reports,
    with a single other value at the rung."""
    t = hpsearch.RungTable(1, 27, 3, ascending=False)
    for step in range(1, 27):
        assert t.report("first", step, 0.5 + step / 100.0) is None
    assert t.report("second", 1, 0.1) == (1, pytest.approx(0.1 + (0.51 - 0.1) * 2 / 3))


def test_run_reaching_max_step_is_never_stopped():
    """--es_max_step M is the script's last step: "runs that reach it are never stopped"
    (issue 13). A run first seen at M (e.g. a short script on a cluster polled every 30 s, or
    one that writes 'finished 1' and then saves a checkpoint) must not get a verdict, however
    bad its value; nor one first seen past the last rung."""
    t = hpsearch.RungTable(1, 27, 3, ascending=False)
    for i in range(5):
        for step in (1, 3, 9, 27):
            t.report("good%d" % i, step, 0.9 + i / 100.0)
    assert t.report("late", 27, 0.1) is None
    assert t.report("later", 30, 0.1) is None


# ---------------------------------------------------------------------------------------------
# A local search with early stopping
# ---------------------------------------------------------------------------------------------

# Twelve configurations: one best (q = 1.0, third), the rest q <= 0.6, in a fixed mixed order.
MAIN_QS = [0.45, 0.3, 1.0, 0.6, 0.2, 0.55, 0.35, 0.5, 0.25, 0.4, 0.15, 0.1]
MAX_STEP = 27
# Epochs run with ASHA, of the 12 * 27 = 324 of the full grid. A simulation of this order
# (summaries read every 0.25 s, epochs of 0.1 s) gives 23-26 %; measured 22-24 % (also with
# three such searches at once on 2 cores). The worst plausible case, 0.45 and 0.3 read first at
# every rung and both finishing, is ~33 %. Asserted: at most 40 %.
MAX_SHARE = 0.40


def check_progress_files(search, project, names, states):
    for name in names:
        history = progress(search, name)
        assert history, name
        times = [e["time"] for e in history]
        steps = [e["step"] for e in history]
        assert times == sorted(times) and steps == sorted(steps), (name, history)
        for entry in history:
            assert sorted(entry) == ["step", "time", "values"], entry
            assert entry["step"] == entry["values"]["epoch"], entry
            assert 0 <= entry["values"]["val_acc"] <= 1
        # the last report hpsearch saw is the run's last epoch, as the CSV has it
        assert steps[-1] == max(epochs_of(project, name)), (name, steps)
        if states[name] == "finished":
            assert steps[-1] == MAX_STEP and history[-1]["values"]["finished"] == 1
    leftovers = [f for f in os.listdir(search.file("jobs")) if f.endswith(".progress.jsonl")]
    assert leftovers == [], leftovers


@pytest.fixture(scope="module")
def main_search(tmp_path_factory):
    """The main search, run once for the tests that read it: (project, search, out, time)."""
    project = toy_project(tmp_path_factory.mktemp("es_main"),
                          {"q": MAIN_QS, "epochs": [MAX_STEP], "pause": [0.1]})
    started = time.time()
    out, err = ok(project.hpsearch("--local_jobs=3", "--deterministic_search",
                                   "--es_max_step=%d" % MAX_STEP, *ES, timeout=120))
    return project, project.search(), out + err, time.time() - started


def test_local_search_stops_most_runs_early_and_keeps_the_best(main_search):
    project, search, output, took = main_search
    names = by_q(search)
    last = last_journal(search)
    states = {name: last[name]["state"] for name in names.values()}
    assert set(states.values()) <= {"finished", "stopped"}, states
    stopped = sorted(n for n, s in states.items() if s == "stopped")
    finished = sorted(n for n, s in states.items() if s == "finished")
    assert re.search(r"hpsearch: done: %d finished, %d stopped early, 0 unfinished, 0 failed, "
                     r"0 killed" % (len(finished), len(stopped)), output), output

    # the best configuration survives to the last step, and is the search's best run
    best = names[1.0]
    assert states[best] == "finished"
    assert epochs_of(project, best) == list(range(1, MAX_STEP + 1))
    assert [w[0] for w in ledger(project, "ends")].count(best) == 1
    assert "hpsearch: best run: %s, val_acc=" % best in output

    # most runs are stopped, at low rungs, for the stated reason
    rungs = {}
    for name in stopped:
        reason = last[name]["reason"]
        match = REASON.match(reason)
        assert match, reason
        rung, value, cutoff = float(match.group(1)), float(match.group(2)), float(match.group(3))
        assert value < cutoff, reason
        rungs[name] = rung
        assert "stopped %s (exit 143): %s" % (name, reason) in output
    low = [n for n, r in rungs.items() if r in (1, 3)]
    assert len(stopped) >= 8 and len(low) >= 7, (rungs, states)

    # stopped runs got SIGTERM (and died of it); finished ones got no signal at all
    signals = {}
    for words in ledger(project, "signals"):
        signals.setdefault(words[0], []).append(int(words[2]))
    assert sorted(signals) == stopped and all(s == [signal.SIGTERM] for s in signals.values()), \
        signals
    for name in stopped:
        assert last[name]["exit_code"] == 143
        assert max(epochs_of(project, name)) < MAX_STEP

    # the budget: total epochs run, against the full grid's
    used = len(ledger(project, "epochs"))
    full = len(MAIN_QS) * MAX_STEP
    assert used <= MAX_SHARE * full, "%d of %d epochs (%.0f %%)" % (used, full, 100.0 * used / full)

    # a stopped run is stopped soon after it reports at the rung it failed (read every 0.25 s)
    for name in stopped:
        pid_epochs = {int(w[2]): float(w[3]) for w in ledger(project, "epochs") if w[0] == name}
        reported = min(t for e, t in pid_epochs.items() if e >= rungs[name])
        got = [float(w[3]) for w in ledger(project, "signals") if w[0] == name][0]
        assert 0 <= got - reported < 2.0, (name, got - reported)

    check_progress_files(search, project, names.values(), states)


def test_stopped_runs_in_the_csv_with_reason_and_their_last_values(main_search):
    project, search, output, _ = main_search
    last = last_journal(search)
    header, rows = search.results()
    assert len(rows) == len(MAIN_QS)
    assert header[:3] == KEYWORDS
    for row in rows:
        name = os.path.basename(row["out_dir"])
        entry = last[name]
        assert row["hpsearch_state"] == entry["state"]
        assert row["hpsearch_exit_code"] == str(entry["exit_code"])
        if entry["state"] == "stopped":
            assert row["hpsearch_reason"] == entry["reason"] != ""
            assert row["finished"] == "0"
            # its last summary: the last epoch it wrote before it died
            assert int(row["epoch"]) == max(epochs_of(project, name))
        else:
            assert row["hpsearch_reason"] == "" and row["epoch"] == str(MAX_STEP)
    # ranking: finished runs first (best first), then stopped ones
    states = [r["hpsearch_state"] for r in rows]
    assert states == sorted(states, key=lambda s: s != "finished"), states
    assert rows[0]["q"] == "1.0"
    finished_acc = [float(r["val_acc"]) for r in rows if r["hpsearch_state"] == "finished"]
    assert finished_acc == sorted(finished_acc, reverse=True)


def test_resume_of_a_search_with_stopped_runs_starts_none_of_them(main_search):
    project, search, _, _ = main_search
    starts_before = ledger(project, "starts")
    journal_before = search.journal()
    out, err = ok(run_hpsearch(["--resume", search.path, "--visible_gpus=-1", "--local_jobs=3",
                                "--es_max_step=%d" % MAX_STEP] + list(ES), project.path))
    n = len(MAIN_QS)
    assert "%d of %d runs finished before, 0 to run" % (n, n) in out, out + err
    assert ledger(project, "starts") == starts_before
    assert search.journal() == journal_before     # no new entry: nothing was started
    header, rows = search.results()
    assert sorted(r["hpsearch_state"] for r in rows) == \
        sorted(e["state"] for e in last_journal(search).values())
    # the same without --early_stopping: stopped runs are done, whatever the flags
    ok(run_hpsearch(["--resume", search.path, "--visible_gpus=-1"], project.path))
    assert ledger(project, "starts") == starts_before


def test_kill_9_then_resume_rebuilds_the_rungs_and_stops_a_hopeless_run(tmp_path):
    """Runs in order (one at a time): q=1.0 finishes, q=0.2 is stopped at the first rung,
    q=0.1 starts (its first epoch 3 s late) and the launcher is killed with SIGKILL. The resumed
    launcher must not start q=0.2 again, ends the leftover q=0.1 process, runs q=0.1 again, and
    stops it at the first rung: there it is the only run going, and the first run at a rung
    always continues, so only the rung values rebuilt from the histories of the earlier runs
    can stop it. The cutoff in its reason is exactly the 2/3 quantile of those values."""
    project = toy_project(tmp_path, {"q": [1.0, 0.2, 0.1], "epochs": [9], "pause": [0.1],
                                     "late": [3], "late_below": [0.15]})
    flags = ["--es_max_step=9"] + list(ES)
    proc = subprocess.Popen([sys.executable, HPSEARCH, "--grid_module=%s" % project.config,
                             "--visible_gpus=-1", "--deterministic_search"] + flags,
                            cwd=project.path, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        assert wait_for(lambda: len(ledger(project, "starts")) >= 3 or proc.poll() is not None,
                        30), "no third start"
        assert proc.poll() is None, proc.communicate()[0]
        proc.kill()
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    search = project.search()
    names = by_q(search)
    last = last_journal(search)
    assert last[names[1.0]]["state"] == "finished"
    assert last[names[0.2]]["state"] == "stopped"
    assert last[names[0.1]]["state"] == "running"
    assert epochs_of(project, names[0.1]) == []      # killed while it waited to begin

    out, err = ok(run_hpsearch(["--resume", search.path, "--visible_gpus=-1"] + flags,
                               project.path, timeout=60))
    assert "2 of 3 runs finished before, 1 to run" in out, out + err
    starts = [w[0] for w in ledger(project, "starts")]
    assert starts.count(names[1.0]) == 1 and starts.count(names[0.2]) == 1, starts
    assert starts.count(names[0.1]) == 2, starts    # the leftover, and the resumed attempt
    entry = last_journal(search)[names[0.1]]
    assert entry["state"] == "stopped" and entry["attempt"] == 2, entry
    match = REASON.match(entry["reason"])
    assert match and match.group(1) == "1", entry["reason"]
    # stopped right at the first rung of its second attempt, not trained on
    second_pid = [w[1] for w in ledger(project, "starts") if w[0] == names[0.1]][1]
    second = [int(w[2]) for w in ledger(project, "epochs") if w[1] == second_pid]
    assert second and max(second) <= 4, second
    # the cutoff comes from the three runs' rung-1 values, as their histories have them
    values = [rung_value(progress(search, names[q]), 1) for q in (1.0, 0.2, 0.1)]
    assert float(match.group(3)) == pytest.approx(hpsearch.quantile(values, 2 / 3.0),
                                                  abs=2e-6), (values, entry["reason"])
    header, rows = search.results()
    assert {r["q"]: r["hpsearch_state"] for r in rows} == \
        {"1.0": "finished", "0.2": "stopped", "0.1": "stopped"}


def test_run_that_reaches_max_step_is_not_stopped_end_to_end(tmp_path):
    """q=0.2 runs its 9 epochs at once, writing only epoch 9's summary and then 'finished 1',
    and stays alive 1.5 s more (saving a checkpoint, say). hpsearch first sees it at epoch 9 =
    --es_max_step: it reached the last step and must be recorded finished, not stopped (nor
    signalled). A RungTable that recorded the value at rungs 1 and 3 stopped such a run
    ("early stopping at epoch 1")."""
    project = toy_project(tmp_path, {"q": [1.0, 0.2], "epochs": [9], "pause": [0.1],
                                     "burst_below": [0.5], "linger": [1.5]})
    rc, out, err = project.hpsearch("--deterministic_search", "--es_max_step=9", *ES)
    search = project.search()
    names = by_q(search)
    assert epochs_of(project, names[0.2]) == list(range(1, 10))
    entry = last_journal(search)[names[0.2]]
    assert entry["state"] == "finished", (entry, out)
    assert ledger(project, "signals") == []
    assert rc == 0, out + err


# ---------------------------------------------------------------------------------------------
# On the LSF emulator: bkill of that one job, or of that one array element
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def lsf(tmp_path):
    emulator = lh.LsfEmulator(tmp_path, LSF_EMULATOR_TERMINATE_INTERVAL=1)
    yield emulator
    emulator.cleanup()


def lsf_search(project, lsf, *args):
    env = dict(lsf.env)
    return project.hpsearch("--run_cluster", "--scheduler=lsf", "--poll_interval=0.3",
                            "--deterministic_search", *(ES + args), env=env, timeout=90)


def check_stopped_on_cluster(project, search, stopped_qs, finished_qs):
    names = by_q(search)
    last = last_journal(search)
    for q in stopped_qs:
        entry = last[names[q]]
        assert entry["state"] == "stopped", entry
        assert REASON.match(entry["reason"]).group(1) == "1", entry
        assert max(epochs_of(project, names[q])) < 9
    for q in finished_qs:
        assert last[names[q]]["state"] == "finished", last[names[q]]
        assert epochs_of(project, names[q]) == list(range(1, 10))
    header, rows = search.results()
    assert {float(r["q"]): r["hpsearch_state"] for r in rows} == dict(
        [(q, "stopped") for q in stopped_qs] + [(q, "finished") for q in finished_qs])
    for q in stopped_qs:
        row = [r for r in rows if float(r["q"]) == q][0]
        assert row["hpsearch_reason"] == last[names[q]]["reason"]
        assert os.path.isfile(os.path.join(search.run_dir(names[q]), "hpsearch_progress.jsonl"))
    # LSF's bkill sends SIGINT first: the script died of it
    got = {w[0]: int(w[2]) for w in ledger(project, "signals")}
    assert got == {names[q]: signal.SIGINT for q in stopped_qs}, got
    return names, last


def test_lsf_stops_a_run_with_bkill_of_its_job_alone(tmp_path, lsf):
    project = toy_project(tmp_path, {"q": [1.0, 0.3, 0.2], "epochs": [9], "pause": [0.15]})
    out, err = ok(lsf_search(project, lsf, "--num_jobs=1", "--es_max_step=9"))
    search = project.search()
    names, last = check_stopped_on_cluster(project, search, [0.3, 0.2], [1.0])
    ids = {name: str(e["job_id"]) for e in search.journal() if e["state"] == "running"
           for name in [e["run"]]}
    bkills = lsf.calls("bkill")
    assert sorted(c["argv"] for c in bkills) == sorted([[ids[names[0.3]]], [ids[names[0.2]]]])
    jobs = lsf.elements()
    assert jobs[ids[names[1.0]]]["stat"] == "DONE"
    for q in (0.3, 0.2):
        assert jobs[ids[names[q]]]["stat"] == "EXIT"
        assert jobs[ids[names[q]]]["exit_reason"].startswith("TERM_OWNER")
    assert "2 stopped early" in out


def test_lsf_array_stops_only_that_element(tmp_path, lsf):
    """--array --num_jobs=2: elements 1 (q=1.0) and 2 (q=0.2, first epoch 0.6 s late) run
    together; element 2 is cancelled as 'ID[2]' while element 1 goes on to its last step, then
    element 3 (q=0.15) as 'ID[3]'."""
    project = toy_project(tmp_path, {"q": [1.0, 0.2, 0.15], "epochs": [9], "pause": [0.3],
                                     "late": [0.6], "late_below": [0.5]})
    ok(lsf_search(project, lsf, "--array", "--num_jobs=2", "--es_max_step=9"))
    search = project.search()
    names, last = check_stopped_on_cluster(project, search, [0.2, 0.15], [1.0])
    bsubs = lsf.calls("bsub")
    assert len(bsubs) == 1
    array_id = str(bsubs[0]["job_id"])
    tasks = {e["run"]: e["job_id"] for e in search.journal() if e["state"] == "running"}
    assert tasks[names[0.2]] == "%s[2]" % array_id and tasks[names[0.15]] == "%s[3]" % array_id
    bkills = lsf.calls("bkill")
    assert [c["argv"] for c in bkills] == [[tasks[names[0.2]]], [tasks[names[0.15]]]], bkills
    elements = lsf.elements()
    assert elements["%s[1]" % array_id]["stat"] == "DONE"
    assert elements["%s[2]" % array_id]["stat"] == "EXIT"
    assert elements["%s[3]" % array_id]["stat"] == "EXIT"
    # element 1 was running when element 2 was cancelled, and went on training
    first_kill = bkills[0]["time"]
    after = [float(w[3]) for w in ledger(project, "epochs") if w[0] == names[1.0]
             and float(w[3]) > first_kill]
    assert after, "q=1.0 had ended before the first bkill: the test proves nothing"


# ---------------------------------------------------------------------------------------------
# Bad flags: exit 2, one line, nothing started
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flags, words", [
    (["--early_stopping=asha", "--es_max_step=9"], "--es_step_key"),
    (["--early_stopping=asha", "--es_step_key=epoch"], "--es_max_step"),
    (["--early_stopping=asha", "--es_step_key=epoch", "--es_max_step=9", "--es_eta=1"],
     "--es_eta"),
    (["--early_stopping=asha", "--es_step_key=epoch", "--es_max_step=9", "--es_eta=0.5"],
     "--es_eta"),
    (["--early_stopping=asha", "--es_step_key=epoch", "--es_max_step=9", "--es_min_step=9"],
     "--es_min_step"),
    (["--early_stopping=asha", "--es_step_key=epoch", "--es_max_step=9", "--es_min_step=0"],
     "--es_min_step"),
    (["--early_stopping=asha", "--es_step_key=step", "--es_max_step=9"], "_SUMMARY_KEYWORDS"),
    (["--early_stopping=hyperband", "--es_step_key=epoch", "--es_max_step=9"], "asha"),
])
def test_bad_early_stopping_flags_exit_2_with_one_line(tmp_path, flags, words):
    project = toy_project(tmp_path, {"q": [1.0, 0.5], "epochs": [9]})
    rc, out, err = project.hpsearch(*flags)
    assert rc == 2, (rc, out, err)
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert words in lines[0], lines[0]
    assert ledger(project, "starts") == []
    assert not os.path.exists(project.out_base) or project.searches() == []
