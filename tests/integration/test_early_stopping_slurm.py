"""Early stopping (--early_stopping=asha) against a REAL Slurm: runs stopped through scancel of
their own job (or array task) alone, recorded as stopped; the best run survives.

Same set-up and rules as test_slurm.py (its Site: a folder with wrapped sbatch/squeue/scancel
that log each call; skipped without a responding Slurm, a failure under CI). The training script
is the toy of tests/test_early_stopping.py: val_acc = q * (1 - exp(-epoch / tau)), 9 epochs,
its summary rewritten each epoch, a ledger of epochs and signals. One clearly best
configuration (q = 1.0; the others q <= 0.3), so which run survives never depends on timing.
About 30 s in all on the test cluster (Slurm starts jobs on a 1 s tick).
"""

import os
import re
import signal

import pytest

import test_slurm as ts
from conftest import config_source, write_file
from test_early_stopping import KEYWORDS, REASON, TOY

ES = ["--early_stopping=asha", "--es_step_key=epoch", "--es_max_step=9",
      "--poll_interval=0.5", "--deterministic_search"]


need_slurm = ts.need_slurm   # a real Slurm or a skip (a failure in CI)


@pytest.fixture
def site(tmp_path):
    s = ts.Site(tmp_path)
    write_file(os.path.join(s.root, "train.py"), TOY)   # the toy replaces test_slurm's script
    os.makedirs(os.path.join(s.root, "ledger"))
    yield s
    s.cleanup()


def configure(site, grid):
    write_file(os.path.join(site.root, "hp_config.py"), config_source(
        grid, summary_keywords=KEYWORDS, performance_key="val_acc", sort_asc=False))


def toy_ledger(site, name):
    try:
        with open(os.path.join(site.root, "ledger", name)) as f:
            return [line.split() for line in f if line.strip()]
    except OSError:
        return []


def check(site, search, out, stopped_qs, best_q):
    """States, reasons, CSV and the toy's ledger; ``({q: run}, {run: job id})``."""
    names = {r["args"]["q"]: r["name"] for r in search.runs()}
    last = ts.last_entries(search)
    ids = ts.job_ids(search)
    epochs = {}
    for words in toy_ledger(site, "epochs"):
        epochs.setdefault(words[0], []).append(int(words[2]))
    # the best survives to its last step
    assert last[names[best_q]]["state"] == "finished", (last, out)
    assert epochs[names[best_q]] == list(range(1, 10))
    assert ts.show_job(ids[names[best_q]])["JobState"] == "COMPLETED"
    for q in stopped_qs:
        name = names[q]
        entry = last[name]
        assert entry["state"] == "stopped", (entry, out)
        match = REASON.match(entry.get("reason", ""))
        assert match and match.group(1) == "1", entry
        assert "stopped %s" % name in out
        assert max(epochs.get(name, [0])) < 9, epochs.get(name)
        assert ts.show_job(ids[name])["JobState"] == "CANCELLED"
        assert os.path.isfile(os.path.join(search.file(name), "hpsearch_progress.jsonl"))
    # scancel's SIGTERM reached the script itself
    got = {w[0]: int(w[2]) for w in toy_ledger(site, "signals")}
    assert got == {names[q]: signal.SIGTERM for q in stopped_qs}, got
    header, rows = search.results()
    assert {float(r["q"]): r["hpsearch_state"] for r in rows} == dict(
        [(q, "stopped") for q in stopped_qs] + [(best_q, "finished")])
    for row in rows:
        if row["hpsearch_state"] == "stopped":
            assert row["hpsearch_reason"] == last[os.path.basename(row["out_dir"])]["reason"]
    assert re.search(r"hpsearch: done: 1 finished, %d stopped early, 0 unfinished"
                     % len(stopped_qs), out), out
    return names, ids


def test_slurm_stops_runs_with_scancel_of_their_own_job(site):
    """One job at a time: q=1.0 runs its 9 epochs, then q=0.3 and q=0.2 are each cancelled at
    the first rung with 'scancel <their job id>'."""
    configure(site, {"q": [1.0, 0.3, 0.2], "epochs": [9], "pause": [0.3]})
    rc, out = site.hpsearch("--num_jobs=1", *ES, timeout=150)
    assert rc == 0, out
    search = site.search()
    names, ids = check(site, search, out, [0.3, 0.2], 1.0)
    cancels = [c[3].split() for c in site.calls("scancel")]
    assert cancels == [[ids[names[0.3]]], [ids[names[0.2]]]], cancels
    assert all(c[1] == 0 for c in site.calls("scancel"))


def test_slurm_array_stops_only_that_task(site):
    """--array --num_jobs=2: tasks 0 (q=1.0) and 1 (q=0.2, first epoch 1.5 s late) run
    together; task 1 is cancelled as 'scancel ARRAY_1' while task 0 trains on, then task 2
    (q=0.15) as 'scancel ARRAY_2'. The array's other tasks are untouched."""
    configure(site, {"q": [1.0, 0.2, 0.15], "epochs": [9], "pause": [0.4],
                     "late": [1.5], "late_below": [0.5]})
    rc, out = site.hpsearch("--array", "--num_jobs=2", *ES, timeout=150)
    assert rc == 0, out
    search = site.search()
    names, ids = check(site, search, out, [0.2, 0.15], 1.0)
    submits = site.calls("sbatch")
    assert len(submits) == 1, submits
    array_id = submits[0][2].split(";")[0]
    assert ids[names[1.0]] == "%s_0" % array_id
    calls = site.calls("scancel")
    cancels = [c[3].split() for c in calls]
    assert cancels == [["%s_1" % array_id], ["%s_2" % array_id]], cancels
    # task 0 was running when task 1 was cancelled, and trained on after it
    after = [w for w in toy_ledger(site, "epochs") if w[0] == names[1.0]
             and float(w[3]) > calls[0][0]]
    assert after, "q=1.0 had ended before the first scancel: the test proves nothing"
