"""Clusters at scale (issue 15) on a REAL Grid Engine: runs sharing a job (--runs_per_job), and
the launcher as a Grid Engine job of its own that is warned before its time limit and submits
itself again (--resubmit_self).

Start a Grid Engine first (as root; CI does it in .ci/run): ``bash tests/cluster/sge-up.sh``.
Without one these tests are skipped, saying why; with ``CI`` set they fail instead.

What this Grid Engine (Son of Grid Engine 8.1.9, 2 slots) does with a soft run-time limit,
checked by hand before these tests were written:

* ``-l s_rt=0:0:5,h_rt=...``: SIGUSR1 comes about a second after s_rt, to the job's whole
  process group (a child of the job got it too), once. A job that catches it goes on.
* JOB_SCRIPT is set in the job (``/var/spool/gridengine/execd/<host>/job_scripts/<id>``), is
  readable, and holds the script as submitted, ``#$`` lines included.
* Once s_rt has fired, execd enforces neither h_rt nor the queue's ``notify`` time (60 s): a job
  with s_rt=5,h_rt=20 that caught SIGUSR1 ran on to its own end at 70 s (exit 0); one with
  s_rt=5,h_rt=15 was killed at 97 s, by qmaster ("failed 37: qmaster enforced h_rt"), which
  looks like qmaster's fallback of h_rt plus twice load_report_time (40 s). Without s_rt, h_rt
  kills on time (h_rt=10: killed after 11 s). So a launcher warned by s_rt must leave by
  itself; h_rt is no reliable backstop here.

The launcher test needs several launcher lifetimes of about 7 s each: on a 2-slot queue the
launcher holds one slot, so the runs go one at a time. Python 3.6+, stdlib + pytest; about a
minute in all.
"""

import glob
import os
import re
import subprocess
import sys
import time


sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import test_sge  # noqa: E402
from test_sge import HPSEARCH, assert_queue_drains, qstat_text, run  # noqa: E402

# test_sge's fixtures: a real Grid Engine or a skip (a failure in CI), and searches whose
# jobs are deleted afterwards whatever the test did
grid_engine = test_sge.grid_engine
make_search = test_sge.make_search


def running_entries(s):
    return {e["run"]: e for e in s.journal() if e["state"] == "running"}


# ----------------------------------------------------------------------------------------------


def test_runs_per_job_six_runs_in_two_qsubs_each_run_complete(make_search):
    s = make_search({"id": [1, 2, 3, 4, 5, 6], "sleep": [1]})
    rc, out, err = s.search("--num_jobs=2", "--runs_per_job=3")
    assert rc == 0, (out, err)
    qsubs = s.calls("qsub")
    assert len(qsubs) == 2, qsubs
    assert "2 qsub call(s) for 2 job(s)" in out, out
    final = s.final()
    assert sorted(e["state"] for e in final.values()) == ["finished"] * 6, final
    assert all(e["exit_code"] == 0 for e in final.values()), final
    # each configuration ran once, three to a job, one after another
    starts = sorted(s.ledger("start"), key=lambda e: e["time"])
    assert sorted(e["id"] for e in starts) == ["1", "2", "3", "4", "5", "6"], starts
    ends = {e["id"]: e["time"] for e in s.ledger("end")}
    by_job = {}
    for e in starts:
        by_job.setdefault(e["job_id"], []).append(e)
    assert sorted(len(v) for v in by_job.values()) == [3, 3], by_job
    for job_id, runs in by_job.items():
        for before, after in zip(runs, runs[1:]):
            assert after["time"] >= ends[before["id"]], (before, after)
        assert all(e["task"] == "undefined" for e in runs)   # plain jobs, no array
    # the journal names each run's job; each run has its own folder, logs and exit status
    folder = s.folder()
    running = running_entries(s)
    for name, entry in final.items():
        run_dir = os.path.join(folder, name)
        with open(os.path.join(run_dir, "job_%s.out" % name)) as f:
            text = f.read()
        config = re.match(r"^stdout of config (\d+)\n$", text)
        assert config, text   # its own output, nobody else's
        (start,) = [e for e in starts if e["id"] == config.group(1)]
        assert str(running[name]["job_id"]) == start["job_id"]
        with open(os.path.join(run_dir, "job_%s.err" % name)) as f:
            assert f.read() == "stderr of config %s\n" % config.group(1)
        with open(os.path.join(run_dir, "hpsearch_exit_status")) as f:
            assert f.read().strip() == "0"
    rows = s.results()
    assert len(rows) == 6 and {r["hpsearch_state"] for r in rows} == {"finished"}
    # the job's Grid Engine log goes to its last run
    last_runs = [n for n in final if os.path.isfile(os.path.join(folder, n,
                                                                 "hpsearch_scheduler.log"))]
    assert len(last_runs) == 2, last_runs
    assert_queue_drains(s)


# ----------------------------------------------------------------------------------------------
# The launcher as a Grid Engine job: s_rt's SIGUSR1, then qsub -hold_jid of $JOB_SCRIPT
# ----------------------------------------------------------------------------------------------

LAUNCHER_SCRIPT = """#!/bin/sh
#$ -S /bin/sh
#$ -N %(name)s
#$ -V
#$ -wd %(proj)s
#$ -o %(logs)s/launcher.$JOB_ID.log
#$ -j y
#$ -l s_rt=0:0:7,h_rt=0:3:0
exec %(python)s %(hpsearch)s --grid_module=cfg.py --run_cwd=%(proj)s --out_dir=%(out)s \\
    --run_cluster --scheduler=sge --poll_interval=1 --deterministic_search --num_jobs=2 \\
    --resubmit_self
"""


def launcher_logs(logs):
    """``{job id: log text}`` of the launchers so far."""
    found = {}
    for path in glob.glob(os.path.join(logs, "launcher.*.log")):
        with open(path) as f:
            found[int(path.split(".")[-2])] = f.read()
    return found


def qacct_fields(job_id):
    proc = run(["qacct", "-j", str(job_id)])
    fields = {}
    for line in proc.stdout.splitlines():
        key, _, value = line.partition(" ")
        fields[key] = value.strip()
    return fields


def test_launcher_job_warned_by_s_rt_submits_itself_again_until_done(make_search, tmp_path):
    """`qsub launcher.sge`, nothing else: each launcher gets s_rt's SIGUSR1 after 7 s, detaches,
    and submits $JOB_SCRIPT again with qsub -hold_jid <its own id> and HPSEARCH_RESUME; the
    next one resumes the search. It completes, every configuration started exactly once, and
    every launcher ended by itself with exit status 0."""
    s = make_search({"id": [1, 2, 3, 4, 5, 6], "sleep": [3]})
    logs = str(tmp_path / "logs")
    os.makedirs(logs)
    name = "hps_launcher_%d" % os.getpid()
    script = str(tmp_path / "launcher.sge")
    text = LAUNCHER_SCRIPT % {"name": name, "proj": s.proj, "logs": logs, "out": s.out,
                              "python": sys.executable, "hpsearch": HPSEARCH}
    with open(script, "w") as f:
        f.write(text)
    proc = subprocess.run([os.path.join(s.bin, "qsub"), "-terse", script], env=s.env(),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    first = int(proc.stdout.strip())
    try:
        deadline = time.time() + 150
        while True:
            done = [t for t in launcher_logs(logs).values() if "hpsearch: done:" in t]
            queued = name in run(["qstat", "-u", "*"]).stdout
            if done and not queued:
                break
            assert time.time() < deadline, "the search did not end within 150 s:\n%s\n%s" % (
                qstat_text(), "\n----\n".join(launcher_logs(logs).values()))
            time.sleep(1)
    finally:
        run(["qdel", name])   # whatever is left of the launchers
    texts = launcher_logs(logs)
    ids = sorted(texts)
    assert ids[0] == first
    assert len(ids) >= 2, "the search fitted into one launcher: the test proves nothing"
    for job_id in ids[:-1]:   # warned, detached, submitted again
        t = texts[job_id]
        assert "SIGUSR1: the launcher's own job nears its time limit; detaching" in t, t
        assert "--resubmit_self: submitted the launcher again as job" in t, t
    assert "hpsearch: done: 6 finished" in texts[ids[-1]], texts[ids[-1]]
    for job_id in ids[1:]:
        assert "--resubmit_self: resuming" in texts[job_id], texts[job_id]
    # each new launcher was held until the one before it ended: qsub -hold_jid <its id>
    holds = [argv for _, argv in s.calls("qsub") if "-hold_jid" in argv]
    assert [int(a[a.index("-hold_jid") + 1]) for a in holds] == ids[:-1], holds
    for argv in holds:
        assert "HPSEARCH_RESUME=%s" % s.folder() in argv, argv
    # every launcher ended by itself: exit status 0, not killed at h_rt
    for job_id in ids:
        fields = qacct_fields(job_id)
        assert fields.get("exit_status", "").split()[:1] == ["0"], (job_id, fields)
        assert fields.get("failed", "").split()[:1] == ["0"], (job_id, fields)
    # what was submitted again is the script as written (Grid Engine's $JOB_SCRIPT copy)
    with open(os.path.join(s.folder(), "hpsearch_launcher_job.sh")) as f:
        assert f.read() == text
    # the search: complete, each configuration started exactly once
    starts = sorted(e["id"] for e in s.ledger("start"))
    assert starts == ["1", "2", "3", "4", "5", "6"], s.ledger()
    final = s.final()
    assert sorted(e["state"] for e in final.values()) == ["finished"] * 6, final
    assert len(s.results()) == 6
    assert s.calls("qdel") == []
    assert_queue_drains(s)
