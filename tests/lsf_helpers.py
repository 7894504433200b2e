"""Helpers for the LSF tests (test_lsf.py, test_lsf_emulator.py, test_vendor_bsub.py): a
per-test LSF emulator (tests/lsf_emulator/, state in its own LSF_EMULATOR_DIR so that parallel
tox environments never meet), a tiny training script that records what it saw, and ways to run
hpsearch against them. Standard library + pytest, Python 3.6+.
"""

import json
import os
import signal
import subprocess
import sys
import time

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS_DIR)
EMULATOR_BIN = os.path.join(TESTS_DIR, "lsf_emulator")
HPSEARCH = os.path.join(os.environ.get("HPSEARCH_TEST_IMPORT", REPO), "hpsearch.py")

# The training script of these tests: --sleep=S, --exit=N, --acc=X. It makes its --out_dir
# (refusing an existing one), prints a line to stdout and stderr, writes the summary
# (acc, loss, finished 1) and job.json: start/end time, pid and every LSB_* variable it saw.
TRAIN_SCRIPT = r'''
import json, os, sys, time

opts = {}
for a in sys.argv[1:]:
    if a.startswith("--"):
        key, eq, value = a[2:].partition("=")
        opts[key] = value if eq else True
out = opts["out_dir"]
if os.path.exists(out):
    sys.exit("train.py: refusing to overwrite %s" % out)
started = time.time()
os.makedirs(out)
print("hello stdout from %s" % os.path.basename(out))
sys.stdout.flush()
sys.stderr.write("hello stderr from %s\n" % os.path.basename(out))
sys.stderr.flush()
time.sleep(float(opts.get("sleep", 0)))
with open(os.path.join(out, "performance_overview.txt"), "w") as f:
    f.write("acc %s\nloss 1.0\nfinished 1\n" % opts.get("acc", "0.5"))
record = {"start": started, "end": time.time(), "pid": os.getpid(), "argv": sys.argv[1:],
          "lsb": {k: v for k, v in os.environ.items() if k.startswith("LSB_")}}
with open(os.path.join(out, "job.json"), "w") as f:
    json.dump(record, f)
sys.exit(int(opts.get("exit", 0)))
'''


class LsfEmulator(object):
    """One test's LSF emulator: its state folder, the environment that puts it first on PATH,
    and readers for what it recorded."""

    def __init__(self, tmp_path, **knobs):
        self.dir = os.path.join(str(tmp_path), "lsf_state")
        os.makedirs(self.dir)
        # The emulator's '#!/usr/bin/env python3' finds the interpreter running the tests
        # first: the emulator is checked on every Python the tests run on.
        path = [EMULATOR_BIN, os.path.dirname(os.path.abspath(sys.executable)),
                os.environ.get("PATH", "")]
        self.env = {"PATH": os.pathsep.join(path),
                    "LSF_EMULATOR_DIR": self.dir}
        # Never let the surroundings (a real LSF job, another test's knobs) leak in.
        for key in os.environ:
            if key.startswith(("LSB_", "LSF_EMULATOR_")) and key != "LSF_EMULATOR_DIR":
                self.env[key] = None
        self.env.update({k: str(v) for k, v in knobs.items()})

    def full_env(self, extra=None):
        """The environment for a subprocess: os.environ with self.env (and ``extra``) applied;
        a value of None removes the variable."""
        env = dict(os.environ)
        for key, value in list(self.env.items()) + list((extra or {}).items()):
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    def run(self, tool, *args, **kwargs):
        """Run an emulator command; ``(returncode, stdout, stderr)``. Keyword args: env (extra
        variables), input (text for stdin), cwd."""
        proc = subprocess.Popen([os.path.join(EMULATOR_BIN, tool)] + [str(a) for a in args],
                                env=self.full_env(kwargs.get("env")),
                                cwd=str(kwargs.get("cwd", self.dir)),
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, universal_newlines=True)
        out, err = proc.communicate(kwargs.get("input", ""), timeout=30)
        return proc.returncode, out, err

    def calls(self, tool=None):
        """What the emulator commands were called with, in order (dicts: tool, argv, time,
        rc, lsb_env, ...)."""
        path = os.path.join(self.dir, "calls.jsonl")
        if not os.path.exists(path):
            return []
        with open(path) as f:
            entries = [json.loads(line) for line in f if line.strip()]
        return [e for e in entries if tool is None or e["tool"] == tool]

    def jobs(self):
        """``{job id: record}`` of every job the emulator knows."""
        folder = os.path.join(self.dir, "jobs")
        jobs = {}
        if os.path.isdir(folder):
            for name in os.listdir(folder):
                if name.endswith(".json") and name[:-5].isdigit():
                    try:
                        with open(os.path.join(folder, name)) as f:
                            jobs[int(name[:-5])] = json.load(f)
                    except ValueError:   # being replaced right now: read it next time
                        continue
        return jobs

    def elements(self):
        """``{"id" or "id[idx]": element record}`` over all jobs."""
        found = {}
        for job_id, job in self.jobs().items():
            for idx, el in job["elements"].items():
                found["%d[%s]" % (job_id, idx) if job["array"] else str(job_id)] = el
        return found

    def wait_for(self, predicate, timeout=20.0, what="condition"):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError("timed out after %gs waiting for %s; jobs: %s"
                             % (timeout, what, json.dumps(self.elements(), indent=1)))

    def wait_all_finished(self, timeout=20.0):
        return self.wait_for(lambda: self.elements() and all(
            e["stat"] in ("DONE", "EXIT") for e in self.elements().values()), timeout,
            "all jobs to finish")

    def cleanup(self):
        """Kill whatever this test's jobs left running (and their runners)."""
        for job in self.jobs().values():
            for el in job["elements"].values():
                if el.get("stat") == "RUN" and el.get("pid"):
                    try:
                        os.killpg(el["pid"], signal.SIGKILL)
                    except OSError:
                        pass
        time.sleep(0.1)
        for job in self.jobs().values():
            pid = job.get("runner_pid")
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass


def cluster_search(project, lsf, flags, **kwargs):
    """Run ``project``'s search with ``flags`` on the emulator; ``(rc, stdout, stderr)``.
    ``env``: extra variables; ``timeout``: seconds (90)."""
    env = dict(lsf.env)
    env.update(kwargs.pop("env", {}))
    return project.hpsearch(*flags, env=env, timeout=kwargs.pop("timeout", 90), **kwargs)


def ok(res):
    """``(stdout, stderr)`` of a search that exited 0."""
    rc, out, err = res
    assert rc == 0, "exit %s\nstdout:\n%s\nstderr:\n%s" % res
    return out, err


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except OSError:
        return False
    try:   # a zombie waiting for its parent is not alive
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def start_hpsearch(args, cwd, env):
    """Start ``python hpsearch.py ARGS`` without waiting (for Ctrl-C tests)."""
    return subprocess.Popen([sys.executable, HPSEARCH] + [str(a) for a in args], cwd=str(cwd),
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, universal_newlines=True)


def read_journal(search_path):
    with open(os.path.join(search_path, "run_journal.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def max_overlap(intervals):
    """The most intervals ``(start, end)`` that overlap at one moment."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals],
                    key=lambda ev: (ev[0], ev[1]))
    best = now = 0
    for _, step in events:
        now += step
        best = max(best, now)
    return best
