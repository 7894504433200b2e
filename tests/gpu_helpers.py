"""Helpers for the local-parallel and GPU tests (test_local_parallel.py, test_gpus.py,
test_vendor_gputil.py): a fake-GPU state file for tests/fake_bin/nvidia-smi, a training script
that records what it saw into a shared JSON-lines ledger, and a way to run hpsearch.py in a
subprocess with all of that wired up. Standard library only, Python 3.6+.
"""

import json
import os
import select
import shutil
import subprocess
import sys
import time
import uuid as uuid_module

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS_DIR)
HPSEARCH = os.path.join(REPO, "hpsearch.py")
FAKE_BIN = os.path.join(TESTS_DIR, "fake_bin")
VENDOR = os.path.join(REPO, "_vendor")

if REPO not in sys.path:
    sys.path.insert(0, REPO)

LEDGER_ENV = "HPSEARCH_TEST_LEDGER"

# The training script the tests search over. It appends two JSON lines to the ledger (one when
# it starts, one when it ends; each a single O_APPEND write, so lines of concurrent runs never
# mix), sleeps --sleep seconds, prints a line to stdout and writes a summary with 'finished 1'.
TRAIN_SCRIPT = r'''
import argparse, json, os, sys, time

def record(event, **fields):
    fields.update(event=event, pid=os.getpid(), sid=os.getsid(0), out_dir=ARGS.out_dir,
                  cvd=os.environ.get("CUDA_VISIBLE_DEVICES"),
                  order=os.environ.get("CUDA_DEVICE_ORDER"), idx=ARGS.idx, time=time.time())
    line = (json.dumps(fields) + "\n").encode("utf-8")
    fd = os.open(os.environ["HPSEARCH_TEST_LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)

p = argparse.ArgumentParser()
p.add_argument("--out_dir", required=True)
p.add_argument("--sleep", type=float, default=0.0)
p.add_argument("--idx", type=int, default=0)
p.add_argument("--exit_code", type=int, default=0)
ARGS, _unknown = p.parse_known_args()
record("start")
os.makedirs(ARGS.out_dir)
print("training output of run %d" % ARGS.idx, flush=True)
time.sleep(ARGS.sleep)
with open(os.path.join(ARGS.out_dir, "performance_overview.txt"), "w") as f:
    f.write("acc %f\nfinished 1\n" % (ARGS.idx / 100.0))
record("end")
sys.exit(ARGS.exit_code)
'''

CONFIG_TEMPLATE = '''
grid = %(grid)r
conditions = []
_SCRIPT_NAME = %(script)r
_SUMMARY_FILENAME = "performance_overview.txt"
_SUMMARY_KEYWORDS = ["acc", "finished"]
_OUT_ARG = "out_dir"
_PERFORMANCE_KEY = "acc"
'''


def uuid_for(index, tag):
    """A GPU uuid unique to one test (processes of other tests never match it)."""
    return "GPU-%s-%04d" % (tag, index)


def gpu(index, memory_used=0, memory_total=16384, utilization=0, uuid=None, name="Fake GPU",
        tag="x"):
    """One fake GPU for the state file (strings such as '[N/A]' are printed verbatim)."""
    return {"index": index, "uuid": uuid or uuid_for(index, tag), "name": name,
            "memory_used": memory_used, "memory_total": memory_total,
            "utilization": utilization}


class Env(object):
    """Everything one test needs: a folder, a fake-GPU state file, a call log, a ledger.

    ``env()`` is the environment for hpsearch (PATH starts with tests/fake_bin, then a folder
    whose ``python3`` is this interpreter, so the fake nvidia-smi starts fast and never
    depends on what ``python3`` on PATH is).
    """

    def __init__(self, tmpdir):
        self.dir = str(tmpdir)
        self.tag = uuid_module.uuid4().hex[:8]
        self.state_path = os.path.join(self.dir, "smi_state.json")
        self.smi_log = os.path.join(self.dir, "smi_calls.jsonl")
        self.ledger = os.path.join(self.dir, "ledger.jsonl")
        self.out = os.path.join(self.dir, "out")
        self.pybin = os.path.join(self.dir, "pybin")
        os.mkdir(self.pybin)
        os.symlink(sys.executable, os.path.join(self.pybin, "python3"))
        self.script = os.path.join(self.dir, "train_ledger.py")
        with open(self.script, "w") as f:
            f.write(TRAIN_SCRIPT)
        self.config = None
        self.extra_env = {}

    # -- fake GPUs -----------------------------------------------------------------------------

    def gpu(self, index, **kw):
        kw.setdefault("tag", self.tag)
        return gpu(index, **kw)

    def uuid(self, index):
        return uuid_for(index, self.tag)

    def set_state(self, gpus=None, apps=None, apps_from_env=False, fail=False):
        state = {"gpus": gpus or [], "apps": apps or [], "apps_from_env": apps_from_env,
                 "fail": fail}
        tmp = self.state_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, self.state_path)

    def smi_calls(self):
        """The argv of every nvidia-smi call so far."""
        return read_jsonl(self.smi_log)

    # -- the search ----------------------------------------------------------------------------

    def write_config(self, grid, name="hp_config.py"):
        self.config = os.path.join(self.dir, name)
        with open(self.config, "w") as f:
            f.write(CONFIG_TEMPLATE % {"grid": grid, "script": self.script})
        return self.config

    def env(self, path_has_fake=True, **extra):
        env = dict(os.environ)
        for k in ("CUDA_VISIBLE_DEVICES", "CUDA_DEVICE_ORDER", "FAKE_GPU_MEM",
                  "FAKE_NVIDIA_SMI_STATE", "FAKE_NVIDIA_SMI_LOG"):
            env.pop(k, None)
        parts = ([FAKE_BIN] if path_has_fake else []) + [self.pybin]
        if path_has_fake:
            parts.append(env.get("PATH", os.defpath))
        env["PATH"] = os.pathsep.join(parts)
        env["FAKE_NVIDIA_SMI_STATE"] = self.state_path
        env["FAKE_NVIDIA_SMI_LOG"] = self.smi_log
        env[LEDGER_ENV] = self.ledger
        env["PYTHONUNBUFFERED"] = "1"
        env.update(self.extra_env)
        env.update(extra)
        return env

    def argv(self, *flags):
        assert self.config, "write_config first"
        return [sys.executable, HPSEARCH, "--grid_module=%s" % self.config,
                "--run_cwd=%s" % self.dir, "--out_dir=%s" % self.out,
                "--deterministic_search"] + list(flags)

    def run(self, *flags, **kw):
        """Run hpsearch to the end; returns a CompletedProcess (stdout/stderr as text)."""
        timeout = kw.pop("timeout", 60)
        env = self.env(**kw)
        return subprocess.run(self.argv(*flags), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, env=env,
                              universal_newlines=True, timeout=timeout, cwd=self.dir)

    def start(self, *flags, **kw):
        """Start hpsearch in the background (stdout/stderr into files); returns the Popen."""
        env = self.env(**kw)
        self._out = open(os.path.join(self.dir, "hpsearch.stdout"), "wb")
        self._err = open(os.path.join(self.dir, "hpsearch.stderr"), "wb")
        return subprocess.Popen(self.argv(*flags), stdout=self._out, stderr=self._err,
                                stdin=subprocess.DEVNULL, env=env, cwd=self.dir)

    def finish(self, proc, timeout=60):
        """Wait for a ``start()`` ed search; returns (exit code, stdout, stderr)."""
        try:
            code = proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        self._out.close()
        self._err.close()
        with open(self._out.name) as f:
            out = f.read()
        with open(self._err.name) as f:
            err = f.read()
        return code, out, err

    def run_in_pty(self, *flags, **kw):
        """Run hpsearch with stdout and stderr on a pseudo-terminal; returns (code, output)."""
        import pty
        timeout = kw.pop("timeout", 60)
        env = self.env(**kw)
        env["TERM"] = "xterm"
        master, slave = pty.openpty()
        try:
            proc = subprocess.Popen(self.argv(*flags), stdout=slave, stderr=slave,
                                    stdin=subprocess.DEVNULL, env=env, cwd=self.dir)
        finally:
            os.close(slave)
        chunks = []
        deadline = time.time() + timeout
        try:
            while time.time() < deadline:
                ready, _, _ = select.select([master], [], [], 0.2)
                if not ready:
                    if proc.poll() is not None:
                        break
                    continue
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the other side is closed
                    break
                if not data:
                    break
                chunks.append(data)
        finally:
            os.close(master)
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        return proc.returncode, b"".join(chunks).decode("utf-8", "replace")

    # -- what happened -------------------------------------------------------------------------

    def search_dirs(self):
        if not os.path.isdir(self.out):
            return []
        return sorted(os.path.join(self.out, d) for d in os.listdir(self.out)
                      if d.startswith("search_"))

    def search_dir(self):
        dirs = self.search_dirs()
        assert len(dirs) == 1, dirs
        return dirs[0]

    def runs(self):
        """Ledger records merged per run: dicts with start, end (None if it never ended), pid,
        cvd, order, idx, name (the run folder's name)."""
        return ledger_runs(self.ledger)

    def journal(self):
        return read_jsonl(os.path.join(self.search_dir(), "run_journal.jsonl"))

    def journal_starts(self):
        """{run name: time hpsearch logged it as running}."""
        return {e["run"]: e["time"] for e in self.journal() if e["state"] == "running"}

    def results_rows(self):
        path = os.path.join(self.search_dir(), "search_results.csv")
        with open(path) as f:
            lines = [l for l in f.read().splitlines() if l.strip()]
        return lines


def read_jsonl(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def ledger_runs(path):
    runs = {}
    for rec in read_jsonl(path):
        key = (rec["pid"], rec["out_dir"])
        run = runs.setdefault(key, {"start": None, "end": None, "pid": rec["pid"],
                                    "sid": rec["sid"], "cvd": rec["cvd"],
                                    "order": rec["order"], "idx": rec["idx"],
                                    "out_dir": rec["out_dir"],
                                    "name": os.path.basename(rec["out_dir"])})
        run[rec["event"]] = rec["time"]
    return sorted(runs.values(), key=lambda r: r["start"])


def max_concurrency(runs):
    """Most runs alive at one moment, from their [start, end] intervals (an end at the same
    moment as a start does not count as overlap)."""
    events = []
    for r in runs:
        events.append((r["start"], 1))
        events.append((r["end"] if r["end"] is not None else float("inf"), -1))
    events.sort(key=lambda e: (e[0], e[1]))
    best = cur = 0
    for _, delta in events:
        cur += delta
        best = max(best, cur)
    return best


def wait_for(predicate, timeout, interval=0.02):
    """Poll ``predicate`` until it is true (returns its value) or ``timeout`` s pass (None)."""
    deadline = time.time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.time() >= deadline:
            return None
        time.sleep(interval)


def error_lines(stderr):
    return [l for l in stderr.splitlines() if l.strip()]


class FakeClock(object):
    """Stands in for ``hpsearch.now`` in GpuSlots unit tests."""

    def __init__(self, start=1000.0):
        self.t = start

    def __call__(self):
        return self.t

    def advance(self, seconds):
        self.t += seconds


def remove_tree(path):
    shutil.rmtree(path, ignore_errors=True)
