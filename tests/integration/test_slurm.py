"""hpsearch --run_cluster --scheduler=slurm against a REAL Slurm (single node, 2 fake GPUs).

Start one with ``sudo bash tests/cluster/slurm-up.sh`` (CI does it in .ci/run); run with
``python3 -m pytest -q tests/integration`` (a few minutes; one test waits ~1-2 min for a
Slurm time limit). Without sbatch or a responding Slurm every test is skipped, except under CI
(env ``CI`` set), where that is a failure. tox runs this folder once, in the env
``integration``; the pyXY envs ignore it.

Each test gets its own folder with a training script that appends start/end events (time,
CUDA_VISIBLE_DEVICES, SBATCH_* variables it sees) to ``ledger.jsonl``, and ``bin/`` wrappers
for sbatch, squeue and scancel, first on the launcher's PATH, that log every call and then run
the real tool. Jobs a test leaves behind are cancelled when it ends.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import HPSEARCH, SearchDir, config_source, read_csv, write_file

TOOLS = ("sbatch", "squeue", "scancel", "scontrol", "sinfo")
REAL = {tool: shutil.which(tool) for tool in TOOLS}
OUR_FLAGS = ["--run_cluster", "--scheduler=slurm", "--slurm_mem=100M", "--slurm_gres=",
             "--poll_interval=1"]


def call(argv, timeout=30):
    """``(returncode, stdout, stderr)`` of a command (Python 3.6: no capture_output)."""
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL, universal_newlines=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def slurm_problem():
    """Why these tests cannot run here, or None."""
    missing = [t for t in TOOLS if not REAL[t]]
    if missing:
        return ("%s not found on PATH: no Slurm here (start a test cluster with "
                "'sudo bash tests/cluster/slurm-up.sh')" % ", ".join(missing))
    try:
        code, out, err = call([REAL["scontrol"], "ping"], timeout=20)
        if "is UP" not in out:
            return ("Slurm is installed but slurmctld does not answer (scontrol ping: %s); "
                    "start it with 'sudo bash tests/cluster/slurm-up.sh'"
                    % (out.strip() or err.strip()))
        code, out, err = call([REAL["sinfo"], "-h", "-o", "%T"], timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "Slurm does not answer: %s" % exc
    states = out.split()
    if not any(s.rstrip("*~#") in ("idle", "mixed", "allocated", "completing") for s in states):
        return ("no Slurm node is up (sinfo says %r); start the test cluster with "
                "'sudo bash tests/cluster/slurm-up.sh'" % (out.strip() or err.strip()))
    return None


PROBLEM = slurm_problem()


def node_gpus():
    """Fake GPUs (GRES gpu) of the node, 0 if none."""
    code, out, _ = call([REAL["sinfo"], "-h", "-o", "%G"])
    found = re.findall(r"gpu(?::[^:,()\s]+)?:(\d+)", out)
    return max([int(n) for n in found] or [0])


@pytest.fixture(autouse=True)
def need_slurm():
    if PROBLEM:
        if os.environ.get("CI"):
            pytest.fail("CI is set but the Slurm tests cannot run: " + PROBLEM)
        pytest.skip(PROBLEM)


TRAIN = r'''
import json, os, sys, time

LEDGER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ledger.jsonl")


def note(**entry):
    with open(LEDGER, "a") as f:
        f.write(json.dumps(entry) + "\n")


opts = {}
for a in sys.argv[1:]:
    key, eq, value = a[2:].partition("=")
    opts[key] = value if eq else True
out = opts["out_dir"]
name = os.path.basename(out)
os.makedirs(out)   # refuses an existing folder, like hypnettorch scripts
note(run=name, event="start", t=time.time(), cuda=os.environ.get("CUDA_VISIBLE_DEVICES"),
     job=os.environ.get("SLURM_JOB_ID"), task=os.environ.get("SLURM_ARRAY_TASK_ID"),
     sbatch_env=sorted(k for k in os.environ if k.startswith("SBATCH_")))
print("hello from %s" % name)
sys.stdout.flush()
time.sleep(float(opts.get("sleep", 0)))
with open(os.path.join(out, "performance_overview.txt"), "w") as f:
    f.write("acc %s\nfinished 1\n" % opts.get("acc", "0.5"))
note(run=name, event="end", t=time.time())
sys.exit(int(opts.get("exit", 0)))
'''

# Logs each call (time, exit status, stdout, arguments; tab-separated) and runs the real tool.
WRAPPER = r'''#!/bin/sh
out=$(%(real)s "$@")
rc=$?
[ -n "$out" ] && printf '%%s\n' "$out"
printf '%%s\t%%s\t%%s\t%%s\n' "$(date +%%s.%%N)" "$rc" "$(printf '%%s' "$out" | tr '\n\t' '  ')" "$*" >> %(log)s
exit $rc
'''


class Site(object):
    """A test's folder: train.py, hp_config.py, bin/ wrappers, the launchers it started."""

    def __init__(self, path):
        self.root = str(path)
        self.bin = os.path.join(self.root, "bin")
        self.ledger_path = os.path.join(self.root, "ledger.jsonl")
        self.launchers = []
        write_file(os.path.join(self.root, "train.py"), TRAIN)
        for tool in ("sbatch", "squeue", "scancel"):
            path = write_file(os.path.join(self.bin, tool), WRAPPER % {
                "real": REAL[tool], "log": os.path.join(self.bin, tool + ".calls")})
            os.chmod(path, 0o755)
        self.env = dict(os.environ)
        self.env["PATH"] = self.bin + os.pathsep + self.env.get("PATH", "")
        for key in list(self.env):   # the test may itself run inside a Slurm job
            if key.startswith(("SLURM_", "SBATCH_")) and key != "SLURM_CONF":
                del self.env[key]

    def config(self, grid):
        write_file(os.path.join(self.root, "hp_config.py"), config_source(
            grid, summary_keywords=["acc", "finished"], performance_key="acc"))

    def start(self, *args, **kwargs):
        """Start ``hpsearch.py`` (a new search unless --resume is among ``args``)."""
        new = not any(str(a).startswith("--resume") for a in args)
        argv = [sys.executable, HPSEARCH] + (["--grid_module=hp_config.py"] if new else [])
        argv += OUR_FLAGS + [str(a) for a in args]
        log = open(os.path.join(self.root, "launcher%d.log" % len(self.launchers)), "w+")
        proc = subprocess.Popen(argv, cwd=self.root, env=self.env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        proc.log = log
        self.launchers.append(proc)
        return proc

    @staticmethod
    def finish(proc, timeout=120):
        """Wait for a launcher; ``(returncode, output)``."""
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            proc.log.seek(0)
            raise AssertionError("hpsearch did not end within %d s; it printed:\n%s"
                                 % (timeout, proc.log.read()))
        proc.log.seek(0)
        return proc.returncode, proc.log.read()

    def hpsearch(self, *args, **kwargs):
        return self.finish(self.start(*args), timeout=kwargs.get("timeout", 120))

    def calls(self, tool):
        """``[(time, returncode, stdout, args)]`` of the wrapped tool."""
        path = os.path.join(self.bin, tool + ".calls")
        if not os.path.exists(path):
            return []
        found = []
        with open(path) as f:
            for line in f:
                t, rc, out, args = line.rstrip("\n").split("\t", 3)
                found.append((float(t), int(rc), out.strip(), args))
        return found

    def ledger(self, event=None):
        if not os.path.exists(self.ledger_path):
            return []
        with open(self.ledger_path) as f:
            entries = [json.loads(l) for l in f if l.strip()]
        return [e for e in entries if event is None or e["event"] == event]

    def search(self):
        base = os.path.join(self.root, "out", "hyperparam_search")
        found = sorted(d for d in os.listdir(base) if d.startswith("search_"))
        assert len(found) == 1, found
        return SearchDir(os.path.join(base, found[0]))

    def cleanup(self):
        for proc in self.launchers:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            proc.log.close()
        ids = set()
        for _, rc, out, _ in self.calls("sbatch"):
            if rc == 0 and out.split(";")[0].isdigit():
                ids.add(out.split(";")[0])
        if ids:
            call([REAL["scancel"]] + sorted(ids))


@pytest.fixture
def site(tmp_path):
    s = Site(tmp_path)
    yield s
    s.cleanup()


def wait_for(what, condition, timeout=90, step=0.2):
    end = time.time() + timeout
    while time.time() < end:
        value = condition()
        if value:
            return value
        time.sleep(step)
    raise AssertionError("waited %d s for %s" % (timeout, what))


def journal(search):
    """The journal's entries so far (none before it exists; a line being written skipped)."""
    try:
        with open(search.file("run_journal.jsonl")) as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    entries = []
    for line in lines:
        try:
            entries.append(json.loads(line))
        except ValueError:
            pass
    return entries


def last_entries(search):
    """``{run: last journal entry}``."""
    last = {}
    for entry in journal(search):
        last[entry["run"]] = entry
    return last


def job_ids(search):
    """``{run: job id}`` from the journal's 'running' entries."""
    return {e["run"]: str(e["job_id"]) for e in journal(search)
            if e["state"] == "running" and e.get("job_id")}


def show_job(job_id):
    """``scontrol show job -o ID`` as a dict (the first record)."""
    code, out, err = call([REAL["scontrol"], "show", "job", "-o", str(job_id)])
    assert code == 0, err
    fields = {}
    for token in out.splitlines()[0].split():
        key, _, value = token.partition("=")
        fields.setdefault(key, value)
    return fields


def queue_states(ids):
    """``{job id: state}`` of jobs squeue still knows (all states)."""
    code, out, err = call([REAL["squeue"], "-h", "--array", "-t", "all", "-o", "%i|%T",
                           "-j", ",".join(sorted({i.split("_")[0] for i in ids}))])
    states = {}
    for line in out.splitlines():
        if "|" in line:
            job, state = line.strip().split("|")
            states[job] = state
    return states


def max_overlap(site):
    """Most runs of the ledger that were running at the same moment."""
    events = []
    starts = {e["run"]: e["t"] for e in site.ledger("start")}
    for e in site.ledger("end"):
        events += [(starts[e["run"]], 1), (e["t"], -1)]
    best = level = 0
    for _, step in sorted(events, key=lambda x: (x[0], x[1])):
        level += step
        best = max(best, level)
    return best


# ---------------------------------------------------------------------------------------------


def test_plain_jobs_finish_and_are_recorded(site):
    site.config({"acc": [0.1, 0.2, 0.3, 0.4], "sleep": [1]})
    rc, out = site.hpsearch("--num_jobs=8")
    assert rc == 0, out
    search = site.search()
    runs = [r["name"] for r in search.runs()]
    assert len(runs) == 4
    assert {n: e["state"] for n, e in last_entries(search).items()} == \
        {n: "finished" for n in runs}, out
    header, rows = search.results()
    assert sorted(r["hpsearch_state"] for r in rows) == ["finished"] * 4
    assert [r["hpsearch_exit_code"] for r in rows] == ["0"] * 4
    assert [r["acc"] for r in rows] == ["0.4", "0.3", "0.2", "0.1"]   # sorted, best first
    ids = job_ids(search)
    assert sorted(ids) == sorted(runs) and all(i.isdigit() for i in ids.values())
    assert len(set(ids.values())) == 4
    assert sorted(o for _, rc, o, _ in site.calls("sbatch")) == sorted(ids.values())
    for name in runs:
        folder = search.file(name)
        with open(os.path.join(folder, "job_%s.out" % name)) as f:
            assert "hello from %s" % name in f.read()
        for kept in ("hpsearch_command.sh", "job_%s.err" % name, "hpsearch_scheduler.log"):
            assert os.path.isfile(os.path.join(folder, kept)), (name, os.listdir(folder))
        job = show_job(ids[name])
        # the job's name is unique to the attempt and to this search folder
        assert job["JobName"] == search.job_names()[name] and job["JobState"] == "COMPLETED"
        assert job["JobName"].startswith(name + "-a1-"), job
        assert job["MinMemoryNode"] == "100M" and job["TimeLimit"] == "1-00:00:00", job
    left = [f for f in os.listdir(search.file("jobs")) if f.startswith(tuple(runs))]
    assert left == [], "run files left in jobs/: %s" % left


def test_array_is_one_submission_throttled_to_num_jobs(site):
    site.config({"acc": [1, 2, 3, 4, 5, 6], "sleep": [2]})
    rc, out = site.hpsearch("--array", "--num_jobs=2")
    assert rc == 0, out
    search = site.search()
    assert set(e["state"] for e in last_entries(search).values()) == {"finished"}, out
    submits = site.calls("sbatch")
    assert len(submits) == 1, submits
    assert "--array=0-5%2" in submits[0][3].split()
    array_id = submits[0][2]
    ids = job_ids(search)
    assert sorted(ids.values()) == ["%s_%d" % (array_id, i) for i in range(6)]
    assert show_job(array_id)["ArrayTaskThrottle"] == "2"
    assert len(site.ledger("start")) == 6 and len(site.ledger("end")) == 6
    assert max_overlap(site) <= 2
    header, rows = search.results()
    assert [r["hpsearch_state"] for r in rows] == ["finished"] * 6


def test_array_search_ends_promptly_with_each_task_log_in_its_run_folder(site):
    # hpsearch waits up to 5 s at the end for each run's jobs/<run>.scheduler.log (late LSF
    # reports); an array task's log must be found too, not waited for in vain.
    site.config({"acc": [1, 2], "sleep": [1]})
    proc = site.start("--array", "--num_jobs=2")
    rc, out = site.finish(proc)
    exited = time.time()
    assert rc == 0, out
    search = site.search()
    last = last_entries(search)
    assert set(e["state"] for e in last.values()) == {"finished"}, out
    lag = exited - max(e["time"] for e in last.values())
    assert lag < 4.0, "the launcher exited %.1f s after the last run ended" % lag
    for name in last:
        folder = search.file(name)
        assert os.path.isfile(os.path.join(folder, "hpsearch_scheduler.log")), \
            (name, sorted(os.listdir(folder)), sorted(os.listdir(search.file("jobs"))))


def test_failing_job_is_failed_with_its_exit_code(site):
    site.config({"exit": [0, 3]})
    rc, out = site.hpsearch()
    assert rc == 1, out   # ran to its end; one run failed
    assert re.search(r"^failed sim_\d+_\d \(exit 3\): hello from sim_\d+_\d \[log: .*\.err\]$",
                     out, re.M), out
    search = site.search()
    by_exit = {}
    for run in search.runs():
        by_exit[run["args"]["exit"]] = last_entries(search)[run["name"]]
    assert by_exit[3]["state"] == "failed" and by_exit[3]["exit_code"] == 3, by_exit
    assert by_exit[0]["state"] == "finished" and by_exit[0]["exit_code"] == 0, by_exit
    header, rows = search.results()
    assert sorted((r["exit"], r["hpsearch_state"], r["hpsearch_exit_code"]) for r in rows) == \
        [("0", "finished", "0"), ("3", "failed", "3")]
    failed = show_job(job_ids(search)[by_exit[3]["run"]])
    assert failed["JobState"] == "FAILED" and failed["ExitCode"] == "3:0", failed


def test_time_limit_kills_the_job(site):
    # --scheduler_args come after --time=<num_hours>: sbatch takes the last, 1 minute
    site.config({"sleep": [300]})
    started = time.time()
    rc, out = site.hpsearch("--scheduler_args=--time=1", timeout=280)
    took = time.time() - started
    assert rc == 1, out   # ran to its end; its run was killed
    assert "killed by the scheduler: TIMEOUT" in out, out
    search = site.search()
    (entry,) = last_entries(search).values()
    assert entry["state"] == "killed", entry
    assert "TIMEOUT" in entry.get("reason", ""), entry
    assert took < 250, took
    header, rows = search.results()
    assert [r["hpsearch_state"] for r in rows] == ["killed"]
    assert show_job(job_ids(search)[entry["run"]])["JobState"] == "TIMEOUT"


def test_ctrl_c_cancels_every_job_with_one_scancel(site):
    site.config({"acc": [1, 2, 3, 4, 5], "sleep": [300]})
    proc = site.start("--num_jobs=8")
    search = wait_for("a search folder", lambda: os.path.isdir(
        os.path.join(site.root, "out", "hyperparam_search")) and site.search())
    wait_for("5 submitted jobs", lambda: len(job_ids(search)) == 5)
    wait_for("jobs to start", lambda: len(site.ledger("start")) >= 1)
    proc.send_signal(signal.SIGINT)
    rc, out = site.finish(proc, timeout=60)
    assert rc == 130, out
    cancels = site.calls("scancel")
    assert len(cancels) == 1, cancels
    ids = sorted(job_ids(search).values())
    assert sorted(cancels[0][3].split()) == ids
    states = wait_for("the jobs to leave the queue", lambda: (lambda s: s if s and all(
        v == "CANCELLED" for v in s.values()) else None)(queue_states(ids)), timeout=60)
    assert sorted(states) == ids
    last = last_entries(search)
    assert set(e["state"] for e in last.values()) == {"killed"}, last
    assert all("cancel" in e.get("reason", "") for e in last.values()), last
    assert len(site.calls("sbatch")) == 5


def test_detach_leaves_jobs_and_resume_reattaches(site):
    site.config({"acc": [1, 2, 3], "sleep": [6]})
    proc = site.start("--detach")
    search = wait_for("a search folder", lambda: os.path.isdir(
        os.path.join(site.root, "out", "hyperparam_search")) and site.search())
    wait_for("3 submitted jobs", lambda: len(job_ids(search)) == 3)
    proc.send_signal(signal.SIGINT)
    rc, out = site.finish(proc, timeout=60)
    assert rc == 130, out
    assert site.calls("scancel") == []
    ids = sorted(job_ids(search).values())
    assert set(queue_states(ids).values()) <= {"PENDING", "RUNNING"}, queue_states(ids)
    assert len(queue_states(ids)) == 3
    rc, out = site.hpsearch("--resume", search.path)
    assert rc == 0, out
    assert len(site.calls("sbatch")) == 3, "resubmitted: %s" % site.calls("sbatch")
    assert sorted(job_ids(search).values()) == ids   # no new job ids in the journal
    last = last_entries(search)
    assert set(e["state"] for e in last.values()) == {"finished"}, last
    starts = [e["run"] for e in site.ledger("start")]
    assert sorted(starts) == sorted(last), starts   # every config ran exactly once
    header, rows = search.results()
    assert [r["hpsearch_state"] for r in rows] == ["finished"] * 3


def test_resume_records_a_job_that_ended_while_no_launcher_watched(site):
    # run 1 (sleep 1) ends while the launcher is detached, run 2 (sleep 8) is re-attached
    site.config({"sleep": [1, 8]})
    proc = site.start("--detach", "--deterministic_search")
    search = wait_for("a search folder", lambda: os.path.isdir(
        os.path.join(site.root, "out", "hyperparam_search")) and site.search())
    wait_for("2 submitted jobs", lambda: len(job_ids(search)) == 2)
    proc.send_signal(signal.SIGINT)
    assert site.finish(proc, timeout=60)[0] == 130
    first = [r["name"] for r in search.runs() if r["args"]["sleep"] == 1][0]
    wait_for("run 1 to end", lambda: os.path.exists(search.file("jobs", first + ".a1.exit")))
    rc, out = site.hpsearch("--resume", search.path)
    assert rc == 0, out
    assert len(site.calls("sbatch")) == 2
    last = last_entries(search)
    assert last[first]["state"] == "finished", \
        "the journal still says %r for %s" % (last[first]["state"], first)
    folder = search.file(first)
    for kept in ("job_%s.out" % first, "hpsearch_command.sh", "hpsearch_exit_status"):
        assert os.path.isfile(os.path.join(folder, kept)), (kept, os.listdir(folder))
    left = [f for f in os.listdir(search.file("jobs")) if f.startswith(first)]
    assert left == [], left
    # the job wrote its exit status (0) to jobs/<run>.exit: it must be recorded, not null
    assert last[first]["exit_code"] == 0, last[first]
    header, rows = search.results()
    row = [r for r in rows if os.path.basename(r["out_dir"]) == first][0]
    assert (row["hpsearch_state"], row["hpsearch_exit_code"]) == ("finished", "0"), row


def test_gres_gpu_gives_each_job_its_own_gpu(site):
    if node_gpus() < 2:
        reason = "the Slurm node has fewer than 2 GPUs (GRES gpu); slurm-up.sh makes 2 fake ones"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    site.config({"acc": [1, 2], "sleep": [4]})
    rc, out = site.hpsearch("--slurm_gres=gpu:1")
    assert rc == 0, out
    starts = site.ledger("start")
    assert len(starts) == 2
    assert max_overlap(site) == 2, "the two jobs did not run at the same time: %s" % starts
    devices = sorted(e["cuda"] for e in starts)
    assert None not in devices and devices[0] != devices[1], devices
    for job_id in job_ids(site.search()).values():
        assert "gpu:1" in show_job(job_id).get("TresPerNode", ""), show_job(job_id)


def test_launcher_inside_a_job_gives_jobs_exactly_the_requested_resources(site):
    # The launcher runs as a Slurm job with --time=10 --mem=200M, so its environment holds
    # SLURM_MEM_PER_NODE=200 and the SBATCH_* variables below; none may reach its jobs.
    site.config({"acc": [1, 2], "sleep": [1]})
    leaks = ["SBATCH_TIMELIMIT=7", "SBATCH_MEM_PER_NODE=300M"]
    if node_gpus() >= 1:
        leaks.append("SBATCH_GRES=gpu:1")
    launcher = write_file(os.path.join(site.root, "launch.sh"), "\n".join(
        ["#!/bin/sh"] + ["export %s" % v for v in leaks] +
        ["cd %s" % site.root,
         "exec %s %s --grid_module=hp_config.py %s --num_hours=2 --num_jobs=2"
         % (sys.executable, HPSEARCH, " ".join("'%s'" % f for f in OUR_FLAGS))]) + "\n")
    code, out, err = call([REAL["sbatch"], "--parsable", "--time=10", "--mem=200M",
                           "--job-name=hpsearch-launcher",
                           "--output=%s" % os.path.join(site.root, "launcher-job.out"),
                           launcher])
    assert code == 0, err
    launcher_id = out.strip().split(";")[0]
    try:
        wait_for("the launcher job to end", lambda: queue_states([launcher_id]).get(
            launcher_id) not in ("PENDING", "RUNNING", "COMPLETING", None), timeout=150)
    finally:
        call([REAL["scancel"], launcher_id])
    with open(os.path.join(site.root, "launcher-job.out")) as f:
        output = f.read()
    me = show_job(launcher_id)
    assert me["JobState"] == "COMPLETED", (me, output)
    assert me["TimeLimit"] == "00:10:00" and me["MinMemoryNode"] == "200M", me
    search = site.search()
    assert set(e["state"] for e in last_entries(search).values()) == {"finished"}, output
    children = job_ids(search).values()
    assert len(children) == 2
    for job_id in children:
        job = show_job(job_id)
        assert job["TimeLimit"] == "02:00:00", job          # --num_hours=2, not SBATCH_TIMELIMIT
        assert job["MinMemoryNode"] == "100M", job          # --slurm_mem, not 200M/300M
        assert "gpu" not in job.get("TresPerNode", ""), job  # --slurm_gres='', not SBATCH_GRES
    for entry in site.ledger("start"):
        assert entry["sbatch_env"] == [], entry


def test_queue_is_asked_once_per_poll_cycle(site):
    site.config({"acc": [1, 2, 3, 4, 5, 6], "sleep": [3]})
    started = time.time()
    rc, out = site.hpsearch("--num_jobs=8")
    elapsed = time.time() - started
    assert rc == 0, out
    queries = site.calls("squeue")
    # poll_interval=1: about one call a second, whatever the number of jobs (6 here)
    assert 1 <= len(queries) <= elapsed / 1.0 + 2, (len(queries), elapsed)
    ids = sorted(job_ids(site.search()).values())
    widest = max(len(re.search(r"--jobs=(\S+)", q[3]).group(1).split(",")) for q in queries)
    assert widest == 6, queries   # all six jobs asked about in one call
    assert all("--jobs=" in q[3] for q in queries)


def test_kill_9_of_the_launcher_then_resume_reattaches(site):
    # deterministic order: run 1 (1 s) ends while no launcher runs, run 2 (8 s) is re-attached,
    # runs 3 and 4 were never submitted and are submitted by the resumed launcher.
    site.config({"sleep": [1, 8, 1.5, 2]})
    proc = site.start("--num_jobs=2", "--deterministic_search")
    search = wait_for("a search folder", lambda: os.path.isdir(
        os.path.join(site.root, "out", "hyperparam_search")) and site.search())
    wait_for("2 submitted jobs", lambda: len(job_ids(search)) == 2, step=0.05)
    proc.kill()   # SIGKILL: no clean-up at all
    proc.wait()
    before = dict(job_ids(search))
    assert len(before) == 2 and len(site.calls("sbatch")) == 2
    names = {r["args"]["sleep"]: r["name"] for r in search.runs()}
    wait_for("run 1 to end", lambda: os.path.exists(search.file("jobs", names[1] + ".a1.exit")))
    assert queue_states([before[names[8]]])[before[names[8]]] in ("PENDING", "RUNNING")
    rc, out = site.hpsearch("--resume", search.path, "--num_jobs=2")
    assert rc == 0, out
    # the job script and the attempt are the last two arguments of each sbatch call
    submitted = [tuple(c[3].split()[-2:]) for c in site.calls("sbatch")]
    assert len(submitted) == 4 and len(set(submitted)) == 4, submitted   # none twice
    after = job_ids(search)
    assert after[names[8]] == before[names[8]]
    starts = sorted(e["run"] for e in site.ledger("start"))
    assert starts == sorted(names.values()), starts   # each config ran exactly once
    header, rows = search.results()
    assert sorted(os.path.basename(r["out_dir"]) for r in rows) == sorted(names.values())
    assert [r["hpsearch_state"] for r in rows] == ["finished"] * 4
