"""hpsearch against a REAL Grid Engine (``--run_cluster --scheduler=sge``).

Start one first (as root; CI does it in .ci/run)::

    bash tests/cluster/sge-up.sh

Without ``qsub`` or a healthy queue instance these tests are skipped, saying why; with the
environment variable ``CI`` set they FAIL instead, so CI never passes by skipping them.

Every search runs ``python hpsearch.py`` as a process with ``--poll_interval=1``. ``qsub``,
``qstat``, ``qdel`` and ``qacct`` are reached through wrappers on PATH that log each call (time
and argv) and ``exec`` the real command. The training script appends to a ledger (JSON lines:
start and end time, JOB_ID, SGE_TASK_ID and a few environment variables as the job saw them),
which shows how many ran at once and that each configuration ran exactly once. Python 3.6+
syntax, stdlib + pytest; about a minute and a half on a 2-slot queue.
"""

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from conftest import SCRIPT_TOOLS

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HPSEARCH = os.path.join(os.environ.get("HPSEARCH_TEST_IMPORT", REPO), "hpsearch.py")
TOOLS = ("qsub", "qstat", "qdel", "qacct")
LAUNCHER_TIMEOUT = 120   # seconds; a search here takes 3-15 s


def run(argv, timeout=30):
    return subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL, universal_newlines=True, timeout=timeout)


def grid_engine_problem():
    """Why the tests cannot run here, or '' when a healthy Grid Engine answers."""
    hint = "start one as root with: bash tests/cluster/sge-up.sh"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return "Grid Engine's %s not found on PATH; %s" % (", ".join(missing), hint)
    try:
        proc = run(["qstat", "-f"])
    except (OSError, subprocess.TimeoutExpired) as exc:
        return "qstat -f failed (%s); %s" % (exc, hint)
    if proc.returncode != 0:
        return "qstat -f exit %d: %s; %s" % (proc.returncode, proc.stderr.strip()[:300], hint)
    # all.q@vm  BIP  0/0/2  0.49  lx-amd64  [states: u E a d ...]
    instances = [l.split() for l in proc.stdout.splitlines()
                 if len(l.split()) >= 5 and "@" in l.split()[0]
                 and re.match(r"^\d+/\d+/\d+$", l.split()[2])]
    if not any(len(f) == 5 for f in instances):
        return "no healthy queue instance in qstat -f (%s); %s" % (
            ", ".join("%s: %s" % (f[0], f[5] if len(f) > 5 else "ok") for f in instances)
            or "no queue instance at all", hint)
    return ""


@pytest.fixture(scope="module", autouse=True)
def grid_engine():
    problem = grid_engine_problem()
    if problem:
        if os.environ.get("CI"):
            pytest.fail("CI needs a real Grid Engine: " + problem, pytrace=False)
        pytest.skip(problem)


TRAIN = r'''
LEDGER = %(ledger)r
WATCH = %(watch)r


def note(opts, event, **extra):
    entry = {"event": event, "time": time.time(), "id": opts.get("id"), "pid": os.getpid(),
             "job_id": os.environ.get("JOB_ID"), "task": os.environ.get("SGE_TASK_ID")}
    entry.update(extra)
    append_line(LEDGER, json.dumps(entry))


def main():
    opts = options(sys.argv[1:])
    out_dir = opts["out_dir"]
    if os.path.exists(out_dir):
        sys.exit("train.py: refusing to overwrite %%s" %% out_dir)
    os.makedirs(out_dir)
    note(opts, "start", env={k: os.environ.get(k) for k in WATCH})
    print("stdout of config %%s" %% opts.get("id"))
    sys.stdout.flush()
    sys.stderr.write("stderr of config %%s\n" %% opts.get("id"))
    time.sleep(float(opts.get("sleep", 0)))
    with open(os.path.join(out_dir, "performance_overview.txt"), "w") as f:
        f.write("acc %%s\nfinished 1\n" %% opts.get("id"))
    note(opts, "end")
    sys.exit(int(opts.get("exit", 0)))


main()
'''

CONFIG = '''
grid = %(grid)r
conditions = []
_SCRIPT_NAME = "train.py"
_SUMMARY_FILENAME = "performance_overview.txt"
_SUMMARY_KEYWORDS = ["acc", "finished"]
_OUT_ARG = "out_dir"
_SUMMARY_PARSER_HANDLE = None
_PERFORMANCE_KEY = "acc"
_PERFORMANCE_SORT_ASC = False
'''

WRAPPER = """#!/bin/sh
# logs one line per call: tool, time, the arguments (separated by \\037); then runs the real one
args=$(printf '%%s\\037' "$@")
printf '%%s\\t%%s\\t%%s\\n' %(tool)s "$(date +%%s.%%N)" "$args" >> %(log)s
exec %(real)s "$@"
"""

# What the job reports from its environment (see test_environment_*).
WATCH = ("JOB_ID", "SGE_TASK_ID", "NSLOTS", "QUEUE", "PE_HOSTFILE", "SGE_O_WORKDIR",
         "RESTARTED", "HPSEARCH_SGE_TEST_VAR", "REQUESTS_CA_BUNDLE", "PERL5LIB", "PEX_ROOT",
         "QUEUE_DEPTH")


class Search(object):
    """A project folder (train.py, cfg.py), wrapped scheduler commands, and the search(es)
    hpsearch makes there."""

    def __init__(self, root, grid):
        self.root = str(root)
        self.proj = os.path.join(self.root, "proj")
        self.bin = os.path.join(self.root, "bin")
        self.ledger_path = os.path.join(self.root, "ledger.jsonl")
        self.calls_path = os.path.join(self.root, "calls.log")
        self.out = os.path.join(self.root, "out")
        os.makedirs(self.proj)
        os.makedirs(self.bin)
        with open(os.path.join(self.proj, "train.py"), "w") as f:
            f.write(SCRIPT_TOOLS + TRAIN % {"ledger": self.ledger_path, "watch": WATCH})
        with open(os.path.join(self.proj, "cfg.py"), "w") as f:
            f.write(CONFIG % {"grid": grid})
        for tool in TOOLS:
            path = os.path.join(self.bin, tool)
            with open(path, "w") as f:
                f.write(WRAPPER % {"tool": tool, "log": self.calls_path,
                                   "real": shutil.which(tool)})
            os.chmod(path, 0o755)

    def env(self, extra=None):
        env = dict(os.environ)
        env["PATH"] = self.bin + os.pathsep + env.get("PATH", "")
        env.update(extra or {})
        return env

    def argv(self, *flags):
        return [sys.executable, HPSEARCH, "--grid_module=cfg.py", "--run_cwd=" + self.proj,
                "--out_dir=" + self.out, "--run_cluster", "--scheduler=sge",
                "--poll_interval=1", "--deterministic_search"] + list(flags)

    def start(self, argv, env_extra=None):
        return subprocess.Popen(argv, cwd=self.proj, env=self.env(env_extra),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, universal_newlines=True)

    def finish(self, proc, timeout=LAUNCHER_TIMEOUT):
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError("hpsearch did not end within %d s (it hangs)\nstdout:\n%s\n"
                                 "stderr:\n%s\nqstat:\n%s" % (timeout, out, err, qstat_text()))
        assert "Traceback" not in err, err
        return proc.returncode, out, err

    def search(self, *flags, **kwargs):
        """Run a whole search; ``(rc, stdout, stderr)``."""
        t0 = time.time()
        result = self.finish(self.start(self.argv(*flags), kwargs.get("env")))
        self.wall = time.time() - t0
        return result

    # -- what happened
    def folder(self):
        found = sorted(glob.glob(os.path.join(self.out, "search_*")))
        assert len(found) == 1, found
        return found[0]

    def journal(self):
        with open(os.path.join(self.folder(), "run_journal.jsonl")) as f:
            return [json.loads(line) for line in f if line.strip()]

    def final(self):
        """``{run name: last journal entry}``."""
        last = {}
        for entry in self.journal():
            last[entry["run"]] = entry
        return last

    def job_ids(self):
        return {e["run"]: e["job_id"] for e in self.journal() if e.get("job_id")}

    def results(self):
        with open(os.path.join(self.folder(), "search_results.csv")) as f:
            lines = [l.rstrip("\n").split(";") for l in f if l.strip()]
        return [dict(zip(lines[0], l)) for l in lines[1:]]

    def ledger(self, event=None):
        if not os.path.exists(self.ledger_path):
            return []
        with open(self.ledger_path) as f:
            entries = [json.loads(line) for line in f if line.strip()]
        return [e for e in entries if event is None or e["event"] == event]

    def calls(self, tool):
        """``[(time, argv)]`` of the calls of one wrapped tool."""
        found = []
        if os.path.exists(self.calls_path):
            with open(self.calls_path) as f:
                for line in f:
                    name, when, args = line.rstrip("\n").split("\t")
                    if name == tool:
                        found.append((float(when), args.split("\037")[:-1]))
        return found

    def wait_for(self, what, condition, timeout=60):
        end = time.time() + timeout
        while not condition():
            assert time.time() < end, "gave up waiting for %s" % what
            time.sleep(0.2)


def qstat_text():
    try:
        return run(["qstat", "-u", "*"]).stdout
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)


def queued_job_numbers():
    """Numbers of every job qstat lists (all users)."""
    proc = run(["qstat", "-u", "*"])
    assert proc.returncode == 0, proc.stderr
    return {l.split()[0] for l in proc.stdout.splitlines()[2:] if l.split()}


def ours_in_queue(search):
    numbers = {str(j).split(".")[0] for j in search.job_ids().values()}
    return sorted(numbers & queued_job_numbers())


def delete_leftover_jobs(search):
    """Never leave jobs of ours behind on the shared Grid Engine, whatever the test did."""
    left = ours_in_queue(search) if os.path.isdir(search.out) else []
    if left:
        run(["qdel"] + left)


def interrupt_when(search, proc, what, ready, settle=0.0):
    """Ctrl-C to a launcher once ``ready()`` holds; its (rc, stdout, stderr)."""
    try:
        search.wait_for(what, ready)
        time.sleep(settle)
        proc.send_signal(signal.SIGINT)
        return search.finish(proc, timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()


def assert_queue_drains(search, timeout=15):
    """None of the search's jobs stays in qstat (a job whose exit status hpsearch has read
    may still be listed for a second while Grid Engine reaps it)."""
    end = time.time() + timeout
    while ours_in_queue(search):
        assert time.time() < end, "jobs %s of ours still queued %d s after the search:\n%s" % (
            ours_in_queue(search), timeout, qstat_text())
        time.sleep(0.3)


def max_running(entries):
    """Most runs of the ledger's start/end pairs (by id) running at the same time."""
    events = []
    for e in entries:
        events.append((e["time"], 1 if e["event"] == "start" else -1))
    events.sort(key=lambda ev: (ev[0], ev[1]))   # an end before a start at the same instant
    most = now = 0
    for _, step in events:
        now += step
        most = max(most, now)
    return most


@pytest.fixture
def make_search(tmp_path):
    made = []

    def make(grid, name="s"):
        search = Search(tmp_path / name, grid)
        made.append(search)
        return search

    yield make
    # never leave jobs of ours behind on the shared Grid Engine, whatever the test did
    for search in made:
        try:
            delete_leftover_jobs(search)
        except (AssertionError, OSError, ValueError, subprocess.TimeoutExpired):
            continue


def assert_one_query_per_cycle(search):
    """Each poll cycle (--poll_interval=1) asks qstat once: consecutive qstat calls are about
    a second apart, never two in one cycle."""
    times = [t for t, _ in search.calls("qstat")]
    assert times, "hpsearch never asked qstat"
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert all(g > 0.5 for g in gaps), "qstat called twice within a poll cycle: gaps %s" % gaps
    assert len(times) <= search.wall / 1.0 + 1, (len(times), search.wall)


# ----------------------------------------------------------------------------------------------


def test_plain_jobs_finish_with_rows_logs_and_exit_status(make_search):
    s = make_search({"id": [1, 2, 3], "sleep": [1]})
    rc, out, err = s.search("--num_jobs=2")
    assert rc == 0, (out, err)
    assert len(s.calls("qsub")) == 3
    for _, argv in s.calls("qsub"):   # one plain job each: no array options
        assert "-t" not in argv and "-tc" not in argv, argv
    final = s.final()
    assert sorted(e["state"] for e in final.values()) == ["finished"] * 3, final
    assert all(e["exit_code"] == 0 for e in final.values()), final
    rows = s.results()
    assert len(rows) == 3
    assert {r["hpsearch_state"] for r in rows} == {"finished"}
    assert {r["hpsearch_exit_code"] for r in rows} == {"0"}
    assert [r["acc"] for r in rows] == ["3", "2", "1"]   # sorted by acc, descending
    folder = s.folder()
    for name in final:
        run_dir = os.path.join(folder, name)
        kept = set(os.listdir(run_dir))
        assert {"hpsearch_command.sh", "job_%s.out" % name, "job_%s.err" % name,
                "hpsearch_exit_status", "performance_overview.txt"} <= kept, kept
        with open(os.path.join(run_dir, "job_%s.out" % name)) as f:
            assert f.read().startswith("stdout of config")
        with open(os.path.join(run_dir, "job_%s.err" % name)) as f:
            assert "stderr of config" in f.read()
        with open(os.path.join(run_dir, "hpsearch_exit_status")) as f:
            assert f.read().strip() == "0"
    leftovers = [f for f in os.listdir(os.path.join(folder, "jobs"))
                 if any(f.startswith(n) for n in final)]
    assert leftovers == [], leftovers
    # each job saw its own JOB_ID: the one the journal has for its run
    ids = s.job_ids()
    starts = s.ledger("start")
    assert sorted(e["job_id"] for e in starts) == sorted(ids.values())
    assert max_running(s.ledger()) <= 2
    assert_one_query_per_cycle(s)
    assert_queue_drains(s)


@pytest.mark.parametrize("num_jobs,configs", [(2, 4), (1, 3)])
def test_array_is_one_qsub_throttled_by_tc(make_search, num_jobs, configs):
    s = make_search({"id": list(range(1, configs + 1)), "sleep": [1]})
    rc, out, err = s.search("--array", "--num_jobs=%d" % num_jobs)
    assert rc == 0, (out, err)
    calls = s.calls("qsub")
    assert len(calls) == 1, calls
    argv = calls[0][1]
    joined = " ".join(argv)
    assert " -t 1-%d " % configs in " %s " % joined, argv
    assert " -tc %d " % num_jobs in " %s " % joined, argv
    final = s.final()
    assert sorted(e["state"] for e in final.values()) == ["finished"] * configs, final
    starts = s.ledger("start")
    assert len({e["job_id"] for e in starts}) == 1, starts           # one array job ...
    assert sorted(int(e["task"]) for e in starts) == list(range(1, configs + 1))  # ... N tasks
    assert max_running(s.ledger()) <= num_jobs, s.ledger()
    assert_one_query_per_cycle(s)
    assert_queue_drains(s)


def test_failing_job_is_failed_with_its_exit_status(make_search):
    s = make_search({"id": [1], "exit": [0, 3]})
    rc, out, err = s.search("--num_jobs=2")
    assert rc == 1, (out, err)   # ran to its end; one run failed
    assert re.search(r"^failed sim_\d+_\d \(exit 3\): .* \[log: .*\.err\]$", out, re.M), out
    by_exit = {e["exit_code"]: e["state"] for e in s.final().values()}
    assert by_exit == {0: "finished", 3: "failed"}, s.final()
    rows = {r["exit"]: r for r in s.results()}
    assert rows["3"]["hpsearch_state"] == "failed"
    assert rows["3"]["hpsearch_exit_code"] == "3"
    failed = [n for n, e in s.final().items() if e["state"] == "failed"][0]
    with open(os.path.join(s.folder(), failed, "hpsearch_exit_status")) as f:
        assert f.read().strip() == "3"


def test_h_rt_limit_kills_the_job_with_qaccts_reason(make_search):
    s = make_search({"id": [1], "sleep": [120]})
    t0 = time.time()
    rc, out, err = s.search("--num_jobs=1", "--num_hours=24",
                            "--scheduler_args=-l h_rt=0:0:5")
    assert time.time() - t0 < 60, "the h_rt=5s job was not noticed as ended in time"
    (argv,) = [a for _, a in s.calls("qsub")]
    assert "h_rt=0:0:5" in argv, argv   # after hpsearch's own -l h_rt=24:00:00: it wins
    (entry,) = s.final().values()
    assert entry["state"] == "killed", entry
    assert entry["exit_code"] is None, entry
    reason = entry.get("reason", "")
    assert "h_rt" in reason or "failed 37" in reason, reason
    assert len(s.ledger("start")) == 1 and s.ledger("end") == []
    (row,) = s.results()
    assert row["hpsearch_state"] == "killed"
    assert_queue_drains(s)


@pytest.fixture(scope="module")
def eqw_search(tmp_path_factory):
    """Two configs, one job at a time, every job unable to open its output file: Grid Engine
    puts each into state Eqw, where it would stay forever."""
    s = Search(tmp_path_factory.mktemp("eqw"), {"id": [1, 2]})
    try:
        s.result = s.search("--num_jobs=1", "--scheduler_args=-o /nonexistent/dir/x")
        yield s
    finally:
        delete_leftover_jobs(s)


def test_eqw_job_is_reported_killed_and_the_search_goes_on(eqw_search):
    s = eqw_search
    rc, out, err = s.result   # s.search() asserts that it ended (no hang)
    assert rc == 1, (out, err)   # ran to its end; the Eqw job was killed
    assert len(s.calls("qsub")) == 2   # the second job went in after the first was given up
    final = s.final()
    assert sorted(e["state"] for e in final.values()) == ["killed", "killed"], final
    for entry in final.values():
        assert "Eqw" in entry.get("reason", "") or "error" in entry.get("reason", ""), entry
    assert s.ledger() == []   # no job ever started


def test_eqw_job_given_up_is_deleted_from_the_queue(eqw_search):
    """A job hpsearch records as killed must not stay queued: Eqw lasts until someone qdels
    it, and a `qmod -cj` would still run it behind the search's back."""
    assert_queue_drains(eqw_search, timeout=10)


def test_ctrl_c_deletes_all_our_jobs_with_one_qdel(make_search):
    s = make_search({"id": [1, 2, 3, 4], "sleep": [60]})
    proc = s.start(s.argv("--num_jobs=3"))
    rc, out, err = interrupt_when(
        s, proc, "three jobs submitted and one running",
        lambda: len(s.calls("qsub")) == 3 and len(s.ledger("start")) >= 1, settle=0.5)
    assert rc == 130, (out, err)
    qdels = s.calls("qdel")
    assert len(qdels) == 1, qdels
    submitted = {str(j) for j in s.job_ids().values()}
    assert len(submitted) == 3
    assert set(qdels[0][1]) >= submitted, (qdels, submitted)
    assert len(s.calls("qsub")) == 3   # the 4th config was never submitted
    assert_queue_drains(s, timeout=30)
    final = s.final()
    assert sorted(e["state"] for e in final.values()) == ["killed"] * 3, final
    assert s.ledger("end") == []


@pytest.mark.parametrize("array", [False, True], ids=["jobs", "array"])
def test_detach_then_resume_reattaches_without_resubmitting(make_search, array):
    s = make_search({"id": [1, 2, 3, 4], "sleep": [3]})
    flags = ["--num_jobs=2", "--detach"] + (["--array"] if array else [])
    proc = s.start(s.argv(*flags))
    rc, out, err = interrupt_when(s, proc, "a job running",
                                  lambda: len(s.ledger("start")) >= 1)
    assert rc == 130, (out, err)
    assert "--detach" in out, out
    assert s.calls("qdel") == []
    first_qsubs = len(s.calls("qsub"))
    assert first_qsubs == (1 if array else 2), s.calls("qsub")
    detached = {str(j) for j in s.job_ids().values()}
    assert detached, "nothing was submitted before the stop"

    resume = [sys.executable, HPSEARCH, "--resume", s.folder(), "--poll_interval=1",
              "--num_jobs=2"] + (["--array"] if array else [])
    rc, out, err = s.finish(s.start(resume))
    assert rc == 0, (out, err)
    resumed_qsubs = len(s.calls("qsub")) - first_qsubs
    # only configs never submitted before are submitted now: none for the array
    assert resumed_qsubs == (0 if array else 2), s.calls("qsub")
    assert s.calls("qdel") == []
    starts = sorted(e["id"] for e in s.ledger("start"))
    ends = sorted(e["id"] for e in s.ledger("end"))
    assert starts == ["1", "2", "3", "4"], s.ledger()   # each config ran exactly once
    assert ends == ["1", "2", "3", "4"], s.ledger()
    final = s.final()
    assert sorted(e["state"] for e in final.values()) == ["finished"] * 4, final
    assert len(s.results()) == 4
    assert_queue_drains(s)


# -- environment: the submitter's reaches the job, the launcher's own SGE job settings do not

FAKE_SGE = {"JOB_ID": "999999", "SGE_TASK_ID": "77", "NSLOTS": "42", "QUEUE": "fake.q",
            "PE_HOSTFILE": "/fake/pe_hostfile", "SGE_O_WORKDIR": "/fake/workdir",
            "RESTARTED": "1"}
USER_VARS = {"HPSEARCH_SGE_TEST_VAR": "hello from the submitter"}
# Ordinary user settings whose names merely START like an SGE job variable (PE, QUEUE, REQUEST)
USER_VARS_LOOKALIKE = {"REQUESTS_CA_BUNDLE": "/tmp/hpsearch-test-ca.pem",
                       "PERL5LIB": "/tmp/hpsearch-test-perl", "PEX_ROOT": "/tmp/hpsearch-pex",
                       "QUEUE_DEPTH": "7"}


@pytest.fixture(scope="module")
def env_search(tmp_path_factory):
    """One job, submitted by a launcher that itself looks like it runs inside an SGE job."""
    s = Search(tmp_path_factory.mktemp("env"), {"id": [1]})
    extra = dict(FAKE_SGE)
    extra.update(USER_VARS)
    extra.update(USER_VARS_LOOKALIKE)
    try:
        s.result = s.search("--num_jobs=1", env=extra)
        yield s
    finally:
        delete_leftover_jobs(s)


def test_environment_reaches_the_job_but_not_the_launchers_job_variables(env_search):
    s = env_search
    rc, out, err = s.result
    assert rc == 0, (out, err)
    (start,) = s.ledger("start")
    env = start["env"]
    assert env["HPSEARCH_SGE_TEST_VAR"] == USER_VARS["HPSEARCH_SGE_TEST_VAR"]
    (job_id,) = s.job_ids().values()
    assert env["JOB_ID"] == str(job_id) != FAKE_SGE["JOB_ID"]
    assert env["SGE_TASK_ID"] == "undefined"
    assert env["NSLOTS"] == "1"
    assert env["QUEUE"] != FAKE_SGE["QUEUE"]
    assert env["PE_HOSTFILE"] is None          # not a parallel job: SGE sets none
    assert env["SGE_O_WORKDIR"] != FAKE_SGE["SGE_O_WORKDIR"]
    assert env["RESTARTED"] != FAKE_SGE["RESTARTED"]
    (_, argv), = s.calls("qsub")
    assert "-V" in argv


def test_environment_lookalike_user_variables_reach_the_job(env_search):
    """REQUESTS_CA_BUNDLE, PERL5LIB, PEX_ROOT, QUEUE_DEPTH are not SGE job variables: -V must
    pass them on like any other."""
    (start,) = env_search.ledger("start")
    seen = {k: start["env"][k] for k in USER_VARS_LOOKALIKE}
    assert seen == USER_VARS_LOOKALIKE


def test_jobs_are_found_when_logname_names_another_user(make_search):
    """After `su` (not `su -`) or `sudo -E`, LOGNAME/USER still name the user one came from,
    while Grid Engine records the job under the real uid. Polling must ask about the jobs'
    real owner, or running jobs look gone and are taken for killed."""
    import pwd
    me = pwd.getpwuid(os.getuid()).pw_name
    other = "daemon" if me == "nobody" else "nobody"
    s = make_search({"id": [1], "sleep": [4]})
    rc, out, err = s.search("--num_jobs=1", env={"LOGNAME": other, "USER": other})
    assert rc == 0, (out, err)
    (entry,) = s.final().values()
    assert entry["state"] == "finished", entry
    assert [e["id"] for e in s.ledger("end")] == ["1"]
