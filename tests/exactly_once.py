"""Exactly once on every scheduler, also across ``kill -9`` of the launcher in the submit window.

The harness shared by tests/test_lsf_exactly_once.py (LSF emulator) and
tests/integration/test_exactly_once.py (real Slurm and Grid Engine); not a test module itself.
Python 3.6+ syntax, standard library only.

A ``Bench`` is one test's folder:

* ``proj/train.py``: a training script that refuses an existing output folder (like hypnettorch
  scripts), appends ``start`` / ``end`` events (config id, time, pid, the scheduler's job id)
  to ``ledger.jsonl`` with one O_APPEND write each (a refused start is a ``refused`` event),
  writes the summary ``acc <id>\\nfinished 1\\n`` and exits 0;
* ``proj/hp_config.py``: the grid ``id`` x ``sleep``;
* ``bin/<submit tool>``: a wrapper, first on the launcher's PATH, that logs ``begin`` (pid,
  time, arguments), sleeps ``EXACTLY_ONCE_PRE`` seconds, runs the real tool, logs ``end``
  (pid, time, exit status, its output), sleeps ``EXACTLY_ONCE_POST`` seconds and only then
  prints the real tool's answer: the submit window is wide, before the job exists (pre) and
  after it exists but before the launcher can know its id (post). A killed launcher's
  in-flight submit command goes on, as it would in reality.

A ``KillPoint`` names a moment of a launcher's life by what it can be seen doing: the k-th
submit command it started (``begin``: in the pre-sleep) or that returned from the real tool
(``end``: in the post-sleep), the k-th ``submitting`` line it wrote to the journal, the k-th
new claim (``jobs/<run>.attempt<k>.claimed``: a job starting, or a resume calling an attempt
off), or some time after its first ``submitting`` line; then waits ``delay`` seconds and sends
SIGKILL to the launcher alone. ``plan_kills(seed)`` draws a sequence of them (a new search,
then resumes) from a seeded ``random.Random``: a failure names its seed and its plan, and
``EXACTLY_ONCE_SEEDS`` picks the seeds to run.

``Bench.check()`` then asserts what the issue asks: no config ever ran twice at the same time
(ledger intervals), each started exactly once and never found its folder taken, each has
exactly one row in search_results.csv, in state ``finished``, that agrees with the summary in
its run folder, and the journal ends ``finished`` for each.
"""

import fcntl
import glob
import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time

from conftest import HPSEARCH, SCRIPT_TOOLS, config_source, read_csv, write_file

TRAIN = r'''
LEDGER = %(ledger)r


def job_id():
    for job, task in (("LSB_JOBID", "LSB_JOBINDEX"), ("SLURM_JOB_ID", "SLURM_ARRAY_TASK_ID"),
                      ("JOB_ID", "SGE_TASK_ID")):
        if os.environ.get(job):
            index = os.environ.get(task)
            if index in (None, "", "0", "undefined") or job == "SLURM_JOB_ID":
                return os.environ[job]
            return "%%s[%%s]" %% (os.environ[job], index)
    return None


def note(event, opts):
    append_line(LEDGER, json.dumps({
        "event": event, "id": opts.get("id"), "time": time.time(), "pid": os.getpid(),
        "job": job_id(), "out": os.path.basename(opts.get("out_dir", ""))}))


def main():
    opts = options(sys.argv[1:])
    out_dir = opts["out_dir"]
    if os.path.exists(out_dir):   # as hypnettorch scripts: never reuse a folder
        note("refused", opts)
        sys.exit("train.py: refusing to overwrite %%s" %% out_dir)
    os.makedirs(out_dir)
    note("start", opts)
    time.sleep(float(opts.get("sleep", 0)))
    with open(os.path.join(out_dir, "performance_overview.txt"), "w") as f:
        f.write("acc %%s\nfinished 1\n" %% opts["id"])
    note("end", opts)
    sys.exit(0)


main()
'''

# begin/end lines: tab-separated; the real tool's stderr goes where the wrapper's goes. With
# EXACTLY_ONCE_SNAPSHOT set, the job script (the argument naming a .sh file) is copied before
# the sleep and the copy is submitted, as sbatch and qsub read the script at once and spool it:
# a slow answer from the scheduler then no longer depends on the file staying where it is.
WRAPPER = r'''#!/bin/sh
# A slow %(tool)s: log, sleep, the real one, log, sleep, then its answer (see exactly_once.py)
log=%(log)s
printf 'begin\t%%s\t%%s\t%%s\n' "$$" "$(date +%%s.%%N)" "$(printf '%%s' "$*" | tr '\n\t' '  ')" >> "$log"
if [ -n "$EXACTLY_ONCE_SNAPSHOT" ]; then
    i=0
    for a do
        i=$((i + 1))
        [ $i -eq 1 ] && set --
        case "$a" in
            *.sh) if [ -f "$a" ]; then snap="$log.snapshot.$$"; cp "$a" "$snap" && a=$snap; fi;;
        esac
        set -- "$@" "$a"
    done
fi
sleep "${EXACTLY_ONCE_PRE:-0.3}"
out=$(%(real)s "$@")
rc=$?
printf 'end\t%%s\t%%s\t%%s\t%%s\n' "$$" "$(date +%%s.%%N)" "$rc" "$(printf '%%s' "$out" | tr '\n\t' '  ')" >> "$log"
sleep "${EXACTLY_ONCE_POST:-0.3}"
printf '%%s\n' "$out"
exit $rc
'''


def seeds(default):
    """The seeds to run: ``EXACTLY_ONCE_SEEDS`` (``"3,17"``) or ``default``."""
    text = os.environ.get("EXACTLY_ONCE_SEEDS", "").strip()
    return [int(s) for s in text.split(",") if s.strip()] if text else list(default)


def scenarios(jobs, array):
    """``[(seed, array)]``: ``jobs`` seeds without --array, ``array`` seeds with it; both
    replaced by ``EXACTLY_ONCE_SEEDS`` when it is set."""
    return [(s, False) for s in seeds(jobs)] + [(s, True) for s in seeds(array)]


class KillPoint(object):
    """Kill the launcher ``delay`` seconds after its ``k``-th event of ``kind`` (see the
    module's docstring); ``kind`` "after": ``delay`` seconds after its first submitting
    line."""

    KINDS = ("begin", "end", "submitting", "claim", "after")

    def __init__(self, kind, k=1, delay=0.0):
        assert kind in self.KINDS, kind
        self.kind, self.k, self.delay = kind, k, delay

    def __repr__(self):
        return "KillPoint(%r, %d, %.3f)" % (self.kind, self.k, self.delay)


def plan_kills(seed, array=False, resumes=(1, 3)):
    """A seeded plan: ``[(pause before the launcher, KillPoint)]``, a new search first, then
    1-3 resumes (each killed too); the final resume that must end the search is not in it."""
    rng = random.Random(seed)
    plan = []
    for i in range(1 + rng.randint(*resumes)):
        kind = rng.choice(KillPoint.KINDS)
        if kind in ("begin", "end"):
            # one submission per launcher with --array; up to 3 reached in the first pass
            point = KillPoint(kind, 1 if array else rng.randint(1, 3), rng.uniform(0, 0.25))
        elif kind == "submitting":
            point = KillPoint(kind, rng.randint(1, 4), rng.uniform(0, 0.3))
        elif kind == "claim":
            point = KillPoint(kind, rng.randint(1, 2), rng.choice([0.0, rng.uniform(0, 0.3)]))
        else:
            point = KillPoint(kind, 1, rng.uniform(0, 2.5))
        # sometimes give an in-flight submit command the time to land before resuming
        pause = 0.0 if i == 0 else rng.choice([0.0, 0.0, 0.8])
        plan.append((pause, point))
    return plan


class Bench(object):
    """One test's project, wrapped submit tool, launchers and what they left."""

    def __init__(self, root, adapter, configs=6, sleep=0.3, pre=0.3, post=0.3,
                 poll_interval=0.5, num_jobs=4, array=False):
        self.root = str(root)
        self.adapter = adapter
        self.configs = configs
        self.array = array
        self.proj = os.path.join(self.root, "proj")
        self.bin = os.path.join(self.root, "bin")
        self.ledger_path = os.path.join(self.root, "ledger.jsonl")
        self.submit_log = os.path.join(self.root, "submit.log")
        self.out = os.path.join(self.proj, "out", "hyperparam_search")
        write_file(os.path.join(self.proj, "train.py"),
                   SCRIPT_TOOLS + TRAIN % {"ledger": self.ledger_path})
        write_file(os.path.join(self.proj, "hp_config.py"), config_source(
            {"id": list(range(1, configs + 1)), "sleep": [sleep]},
            summary_keywords=["acc", "finished"], performance_key="acc"))
        tool = adapter.submit_tool
        path = write_file(os.path.join(self.bin, tool), WRAPPER % {
            "tool": tool, "log": shlex.quote(self.submit_log),
            "real": shlex.quote(adapter.real_submit)})
        os.chmod(path, 0o755)
        self.env = dict(os.environ)
        for key, value in adapter.env().items():
            if value is None:
                self.env.pop(key, None)
            else:
                self.env[key] = value
        self.env["PATH"] = self.bin + os.pathsep + self.env.get("PATH", "")
        self.env["EXACTLY_ONCE_PRE"] = str(pre)
        self.env["EXACTLY_ONCE_POST"] = str(post)
        self.flags = ["--run_cluster", "--num_jobs=%d" % num_jobs,
                      "--poll_interval=%g" % poll_interval] + list(adapter.flags)
        if array:
            self.flags.append("--array")
        self.launchers = []   # dicts: argv, proc, log, point, fired, rc, took
        self.started = time.time()

    # -- launchers
    def start(self, env=None, stdout=None):
        """Start a launcher: a new search, or ``--resume`` once the search folder has its
        record. ``stdout``: a file descriptor for its stdout (default: its log file)."""
        folder = self.folder()
        if folder and os.path.exists(os.path.join(folder, "search_record.json")):
            argv = [sys.executable, HPSEARCH, "--resume=%s" % folder]
        else:
            argv = [sys.executable, HPSEARCH, "--grid_module=hp_config.py"]
        argv += self.flags
        full_env = dict(self.env)
        full_env.update(env or {})
        log_path = os.path.join(self.root, "launcher%d.log" % len(self.launchers))
        log = open(log_path, "w+")
        proc = subprocess.Popen(argv, cwd=self.proj, env=full_env, stdin=subprocess.DEVNULL,
                                stdout=log if stdout is None else stdout, stderr=log,
                                start_new_session=True)
        entry = {"argv": argv, "proc": proc, "log": log, "point": None, "fired": None,
                 "rc": None, "t0": time.time(), "took": None, "baseline": self._counts()}
        self.launchers.append(entry)
        return entry

    def _counts(self):
        return {"begin": len(self.submit_calls("begin")), "end": len(self.submit_calls("end")),
                "submitting": len(self.journal_states("submitting")), "claim": self.claims()}

    def wait(self, entry, timeout):
        """Wait for a launcher to end; its exit status (AssertionError if it hangs)."""
        proc = entry["proc"]
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError("hpsearch did not end within %d s:\n%s\n%s"
                                 % (timeout, self.output(entry), self.story()))
        entry["rc"] = proc.returncode
        entry["took"] = time.time() - entry["t0"]
        return proc.returncode

    def kill_at(self, entry, point, timeout=60):
        """Kill the launcher at ``point``; True if it was killed, False if it ended first."""
        entry["point"] = point
        proc, base = entry["proc"], entry["baseline"]
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                entry["fired"] = False
                self.wait(entry, 1)
                return False
            if self._happened(point, base):
                break
            if time.time() > deadline:
                raise AssertionError("kill point %r never came in %d s\n%s"
                                     % (point, timeout, self.story()))
            time.sleep(0.002)
        seen = time.time()
        while time.time() < seen + point.delay and proc.poll() is None:
            time.sleep(0.002)
        if proc.poll() is not None:
            entry["fired"] = False
            self.wait(entry, 1)
            return False
        os.kill(proc.pid, signal.SIGKILL)   # the launcher only: its submit command goes on
        entry["fired"] = time.time() - entry["t0"]
        self.wait(entry, 10)
        return True

    def _happened(self, point, base):
        if point.kind in ("begin", "end"):
            return len(self.submit_calls(point.kind)) >= base[point.kind] + point.k
        if point.kind == "submitting":
            return len(self.journal_states("submitting")) >= base["submitting"] + point.k
        if point.kind == "claim":
            return len(self.claims() - base["claim"]) >= point.k
        # "after": counted from the launcher's first submitting line, found here once
        if not hasattr(point, "first_seen"):
            if len(self.journal_states("submitting")) > base["submitting"]:
                point.first_seen = time.time()
            return False
        return time.time() >= point.first_seen   # the delay is waited by kill_at

    def run_plan(self, plan, final_timeout=90):
        """Run the plan (a new search, then resumes, each killed at its point), then a final
        --resume that must end the search with exit 0; AssertionError otherwise."""
        for pause, point in plan:
            if pause:
                time.sleep(pause)
            if point.kind == "after":
                point = KillPoint("after", 1, point.delay)   # fresh: no first_seen yet
            entry = self.start()
            if not self.kill_at(entry, point):
                assert entry["rc"] == 0, "launcher %d ended with exit %s before its kill " \
                    "point\n%s" % (len(self.launchers) - 1, entry["rc"], self.story())
        entry = self.start()
        rc = self.wait(entry, final_timeout)
        assert rc == 0, "the final --resume ended with exit %s\n%s" % (rc, self.story())
        return entry

    def output(self, entry):
        entry["log"].flush()
        entry["log"].seek(0)
        return entry["log"].read()

    # -- what happened
    def folder(self):
        found = sorted(glob.glob(os.path.join(self.out, "search_*")))
        assert len(found) <= 1, found
        return found[0] if found else None

    def journal(self):
        """The journal's whole lines (a line being written is skipped)."""
        folder = self.folder()
        entries = []
        try:
            with open(os.path.join(folder or "", "run_journal.jsonl")) as f:
                for line in f:
                    try:
                        entries.append(json.loads(line))
                    except ValueError:
                        pass
        except OSError:
            pass
        return entries

    def journal_states(self, state):
        return [e for e in self.journal() if e.get("state") == state]

    def claims(self):
        folder = self.folder()
        try:
            names = os.listdir(os.path.join(folder or "", "jobs"))
        except OSError:
            return set()
        return {n for n in names if n.endswith(".claimed")}

    def submit_calls(self, kind=None):
        """Lines of the wrapper's log: ``[kind, pid, time, ...]``."""
        try:
            with open(self.submit_log) as f:
                lines = [l.rstrip("\n").split("\t") for l in f if l.endswith("\n")]
        except OSError:
            return []
        return [l for l in lines if kind is None or l[0] == kind]

    def submitted_ids(self):
        """Job ids the real submit tool printed (also for submissions whose launcher died)."""
        ids = []
        for line in self.submit_calls("end"):
            if line[3] == "0":
                job = self.adapter.parse_id(line[4] if len(line) > 4 else "")
                if job:
                    ids.append(job)
        return ids

    def in_flight_submits(self):
        ended = {l[1] for l in self.submit_calls("end")}
        return [l for l in self.submit_calls("begin") if l[1] not in ended]

    def ledger(self, event=None):
        entries = []
        try:
            with open(self.ledger_path) as f:
                for line in f:
                    if line.strip():
                        entries.append(json.loads(line))
        except OSError:
            pass
        return [e for e in entries if event is None or e["event"] == event]

    def drain(self, timeout=30):
        """Wait until no submit command is in flight and none of the jobs ever submitted is
        queued or running (stale jobs of called-off attempts start, refuse and end)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if not self.in_flight_submits() and not self.adapter.active(self.submitted_ids()):
                return True
            time.sleep(0.2)
        return False

    def story(self):
        """Everything a failure needs: the plan as it went, each launcher's output, the
        journal, the wrapper's log, the ledger."""
        parts = ["launchers (elapsed since the bench started):"]
        for i, e in enumerate(self.launchers):
            parts.append("  #%d %s at %.2fs: kill point %r, killed at %s, exit %s" % (
                i, "resume" if any(a.startswith("--resume") for a in e["argv"]) else "new",
                e["t0"] - self.started, e["point"],
                "%.3fs" % e["fired"] if e["fired"] else e["fired"], e["rc"]))
        for i, e in enumerate(self.launchers):
            text = self.output(e).strip()
            parts.append("--- launcher #%d output:\n%s" % (i, "\n".join(text.splitlines()[-25:])))
        parts.append("--- journal:")
        parts += ["  " + json.dumps(e, sort_keys=True) for e in self.journal()]
        parts.append("--- %s calls:" % self.adapter.submit_tool)
        parts += ["  " + " | ".join(l[:2] + ["%.3f" % (float(l[2]) - self.started)] + l[3:])
                  for l in self.submit_calls()]
        parts.append("--- ledger:")
        parts += ["  %.3f %s id=%s job=%s pid=%s" % (e["time"] - self.started, e["event"],
                                                    e["id"], e["job"], e["pid"])
                  for e in self.ledger()]
        return "\n".join(parts)

    def check(self):
        """The issue's assertions; returns a short report (dict) when they all hold."""
        story = self.story()
        drained = self.drain()
        for i, e in enumerate(self.launchers):
            out = self.output(e)
            assert "Traceback" not in out, "launcher #%d:\n%s" % (i, story)
        ids = [str(i) for i in range(1, self.configs + 1)]
        ledger = self.ledger()
        # 1. no config ever ran twice at the same time
        for config in ids:
            events = sorted((e for e in ledger if e["id"] == config and e["event"] in
                             ("start", "end")), key=lambda e: e["time"])
            open_pids = set()
            for e in events:
                if e["event"] == "start":
                    assert not open_pids, "config %s started (pid %s) while pid(s) %s still " \
                        "ran it\n%s" % (config, e["pid"], sorted(open_pids), story)
                    open_pids.add(e["pid"])
                else:
                    open_pids.discard(e["pid"])
        # 2. each config's script started exactly once and never found its folder taken
        starts = {c: len([e for e in ledger if e["id"] == c and e["event"] == "start"])
                  for c in ids}
        refused = [e for e in ledger if e["event"] == "refused"]
        assert not refused, "a config was run again over its own folder: %s\n%s" % (
            refused, story)
        assert starts == {c: 1 for c in ids}, "starts per config: %s\n%s" % (starts, story)
        assert drained, "jobs of ours still queued or a submit command still going 30 s " \
            "after the search ended\n%s" % story
        # 3. exactly one finished row per config, agreeing with the summary in its folder
        folder = self.folder()
        header, rows = read_csv(os.path.join(folder, "search_results.csv"))
        by_id = {}
        for row in rows:
            by_id.setdefault(row["id"], []).append(row)
        assert sorted(by_id, key=int) == ids and all(len(r) == 1 for r in by_id.values()), \
            "rows per config: %s\n%s" % ({k: len(v) for k, v in by_id.items()}, story)
        for config, (row,) in sorted(by_id.items()):
            assert row["hpsearch_state"] == "finished", (row, story)
            assert row["hpsearch_exit_code"] == "0", (row, story)
            with open(os.path.join(folder, row["out_dir"], "performance_overview.txt")) as f:
                summary = dict(line.split(None, 1) for line in f.read().splitlines()
                               if line.strip())
            assert summary == {"acc": config, "finished": "1"}, (row, summary, story)
            assert (row["acc"], row["finished"]) == (config, "1"), (row, story)
        # 4. the journal agrees: every run's last entry says finished
        last = {}
        for entry in self.journal():
            last[entry["run"]] = entry["state"]
        assert sorted(last.values()) == ["finished"] * self.configs, (last, story)
        killed = [e for e in self.launchers if e["fired"]]
        return {"launchers": len(self.launchers), "killed": len(killed),
                "kill_points": [(repr(e["point"]), round(e["fired"], 3)) for e in killed],
                "submit_calls": len(self.submit_calls("begin")),
                "jobs": len(self.submitted_ids()),
                "starts": sum(starts.values()), "seconds": round(time.time() - self.started, 1)}

    def cleanup(self):
        """Kill launchers still going, cancel every job ever submitted, close logs."""
        for e in self.launchers:
            if e["proc"].poll() is None:
                e["proc"].kill()
                e["proc"].wait()
        deadline = time.time() + 5
        while self.in_flight_submits() and time.time() < deadline:
            time.sleep(0.1)
        ids = self.submitted_ids()
        if ids:
            try:
                self.adapter.cancel(ids)
            except (OSError, subprocess.SubprocessError):
                pass
        for e in self.launchers:
            e["log"].close()


class Benches(object):
    """Makes numbered benches under ``root`` (also from several threads at once) and cleans
    them all up: ``adapter_for(n)`` gives bench n's scheduler adapter, ``defaults`` its
    settings (a call's keyword arguments override them)."""

    def __init__(self, root, adapter_for, **defaults):
        self.root, self.adapter_for, self.defaults = str(root), adapter_for, defaults
        self.made, self.lock = [], threading.Lock()

    def __call__(self, **kwargs):
        with self.lock:
            n = len(self.made)
            self.made.append(None)
        settings = dict(self.defaults)
        settings.update(kwargs)
        bench = Bench(os.path.join(self.root, "b%d" % n), self.adapter_for(n), **settings)
        self.made[n] = bench
        return bench

    def cleanup(self):
        for bench in self.made:
            if bench is not None:
                bench.cleanup()


def run_seeds(make_bench, scenarios):
    """Run seeded plans side by side, each on its own bench in a thread (the launchers mostly
    wait on slowed submit commands). ``scenarios``: ``[(seed, array)]``; ``make_bench(array)``
    makes a bench. AssertionError naming every scenario that failed and how to replay it."""
    failures, threads = [], []

    def one(seed, array):
        plan = plan_kills(seed, array=array)
        mode = "array" if array else "jobs"
        try:
            bench = make_bench(array)
            bench.run_plan(plan)
            report(mode, seed, plan, bench.check())
        except BaseException as exc:  # reported below, with the seed that reproduces it
            failures.append("%s seed %d (replay: EXACTLY_ONCE_SEEDS=%d), plan %s:\n%s"
                            % (mode, seed, seed, plan, exc))

    for seed, array in scenarios:
        threads.append(threading.Thread(target=one, args=(seed, array)))
        threads[-1].start()
    for thread in threads:
        thread.join()
    assert not failures, "%d of %d scenarios failed:\n\n%s" % (
        len(failures), len(scenarios), "\n\n".join(failures))


def full_pipe():
    """``(read end, write end)`` of a pipe already full: a process writing to it blocks."""
    r, w = os.pipe()
    flags = fcntl.fcntl(w, fcntl.F_GETFL)
    fcntl.fcntl(w, fcntl.F_SETFL, flags | os.O_NONBLOCK)
    try:
        while True:
            os.write(w, b"x" * 4096)
    except OSError:   # BlockingIOError: full
        pass
    fcntl.fcntl(w, fcntl.F_SETFL, flags)
    return r, w


def blocked_writing(pid):
    """True when the process sleeps in a pipe write (None if /proc cannot say)."""
    try:
        with open("/proc/%d/wchan" % pid) as f:
            wchan = f.read()
    except OSError:
        return None
    return "pipe_write" in wchan if wchan not in ("", "0") else None


def run_resume_killed_after_call_off(bench, final_timeout=90, pre=1.0):
    """The submit window of a resume, taken at its narrowest moment:

    1. launcher A is killed while its first submit command sleeps before the real tool
       (``EXACTLY_ONCE_PRE=pre``): the journal says ``submitting`` attempt 1, no job exists
       yet, and the command goes on;
    2. resume B asks the scheduler for that job name, does not find it, calls attempt 1 off
       (``mkdir jobs/<run>.attempt1.claimed``) and would submit attempt 2; it is held right
       there -- its stdout is a full pipe and its first message comes after the call-off --
       and killed with SIGKILL, before its journal says anything of attempt 2;
    3. A's submit command lands: a job of attempt 1 exists (it refuses to start: called off);
    4. a final --resume must still run every config exactly once and end with exit 0.
    """
    first = bench.start(env={"EXACTLY_ONCE_PRE": str(pre)})
    assert bench.kill_at(first, KillPoint("begin", 1, 0.05)), bench.story()
    (stale,) = bench.in_flight_submits()
    cut_short = bench.journal_states("submitting")
    assert len(cut_short) == 1, bench.story()
    run, attempt = cut_short[0]["run"], cut_short[0]["attempt"]
    claim = "%s.attempt%d.claimed" % (run, attempt)

    r, w = full_pipe()
    try:
        second = bench.start(stdout=w)
        os.close(w)
        w = None
        deadline = time.time() + 20
        while True:
            held = blocked_writing(second["proc"].pid)
            if held or (held is None and claim in bench.claims()
                        and time.time() > second["t0"] + 0.5):
                break
            assert second["proc"].poll() is None and time.time() < deadline, \
                "resume B was never held at its first message\n%s" % bench.story()
            time.sleep(0.01)
        second["point"] = "held writing its first message (after reattach_jobs)"
        assert claim in bench.claims(), "B did not call %s off\n%s" % (claim, bench.story())
        assert len(bench.journal()) == len(bench.journal_states("submitting")), \
            "B wrote to the journal before its first message\n%s" % bench.story()
        os.kill(second["proc"].pid, signal.SIGKILL)
        second["fired"] = time.time() - second["t0"]
        bench.wait(second, 10)
    finally:
        os.close(r)
        if w is not None:
            os.close(w)

    deadline = time.time() + 30
    while bench.in_flight_submits():
        assert time.time() < deadline, "A's submit command never ended\n%s" % bench.story()
        time.sleep(0.01)
    landed = [l for l in bench.submit_calls("end") if l[1] == stale[1]]
    assert landed and landed[0][3] == "0", "A's submit command failed\n%s" % bench.story()

    final = bench.start()
    rc = bench.wait(final, final_timeout)
    assert rc == 0, "the final --resume ended with exit %s\n%s" % (rc, bench.story())
    return bench.check()


def _wait(bench, what, condition, timeout=30):
    deadline = time.time() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.time() < deadline, "waited %d s for %s\n%s" % (timeout, what, bench.story())
        time.sleep(0.002)


def _final_resume(bench, timeout):
    final = bench.start()
    rc = bench.wait(final, timeout)
    assert rc == 0, "the final --resume ended with exit %s\n%s" % (rc, bench.story())
    return bench.check()


def run_stale_job_of_an_earlier_attempt(bench, final_timeout=90, pre=0.6, pre_b=2.0):
    """A job of attempt 1 that starts after a resume prepared attempt 2 (the bench's
    training script should sleep ~2 s):

    1. launcher A is killed while its first submit command sleeps before the real tool
       (``EXACTLY_ONCE_PRE=pre``): journal ``submitting`` attempt 1, no job yet;
    2. resume B finds no such job, calls attempt 1 off, prepares attempt 2 and submits it
       with a slower submit command (``EXACTLY_ONCE_PRE=pre_b``);
    3. A's submit command lands meanwhile and its job (attempt 1) starts: it must refuse
       (attempt 1 was called off); B is killed as soon as the job has started (and at the
       latest 1 s after the command landed), while its own submission of attempt 2 still
       sleeps;
    4. a final --resume must run each config exactly once, never two at once.
    """
    first = bench.start(env={"EXACTLY_ONCE_PRE": str(pre)})
    assert bench.kill_at(first, KillPoint("begin", 1, 0.05)), bench.story()
    (stale,) = bench.in_flight_submits()
    second = bench.start(env={"EXACTLY_ONCE_PRE": str(pre_b)})
    _wait(bench, "resume B to submit attempt 2", lambda: len(bench.submit_calls("begin")) >= 2)
    landed = _wait(bench, "A's submit command to land",
                   lambda: [l for l in bench.submit_calls("end") if l[1] == stale[1]])
    since = time.time()
    _wait(bench, "A's job to start or refuse",
          lambda: bench.ledger("start") or time.time() > since + 1.0)
    assert second["proc"].poll() is None, "B ended early\n%s" % bench.story()
    os.kill(second["proc"].pid, signal.SIGKILL)
    second["point"] = "A's job %s started (or 1 s passed)" % landed[0][4]
    second["fired"] = time.time() - second["t0"]
    bench.wait(second, 10)
    return _final_resume(bench, final_timeout)


SLOW_MV = r"""#!/bin/sh
# mv, slowed down: a job writing its exit status (tmp file, then mv) takes %(delay)s s
sleep %(delay)s
exec %(real)s "$@"
"""


def run_resume_while_a_job_writes_its_exit_status(bench, final_timeout=90, delay=1.0):
    """A job's exit status is written as ``<run>.a<k>.exit.tmp`` then renamed (``mv``); here
    ``mv`` (first on PATH, which the jobs inherit) takes ``delay`` seconds. Launcher A is
    killed while the first job sits in that mv, and a resume starts at once: the job's exit
    status (0) must not be lost, the run must end finished, with exit code 0."""
    path = write_file(os.path.join(bench.bin, "mv"), SLOW_MV % {
        "delay": delay, "real": shutil.which("mv")})
    os.chmod(path, 0o755)
    first = bench.start()

    def writing():
        folder = bench.folder()
        try:
            return [n for n in os.listdir(os.path.join(folder or "", "jobs"))
                    if n.endswith(".exit.tmp")]
        except OSError:
            return []

    tmp = _wait(bench, "a job to write its exit status", writing)
    assert first["proc"].poll() is None, bench.story()
    os.kill(first["proc"].pid, signal.SIGKILL)
    first["point"] = "a job writing %s" % tmp[0]
    first["fired"] = time.time() - first["t0"]
    bench.wait(first, 10)
    return _final_resume(bench, final_timeout)


def report(name, seed, plan, result):
    """One line per scenario on stdout (pytest -s, or shown with a failure)."""
    print("exactly-once %s seed=%s plan=%s -> %s" % (name, seed, plan, json.dumps(result)))
