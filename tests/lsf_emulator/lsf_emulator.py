#!/usr/bin/env python3
"""An IBM Spectrum LSF emulator for tests: ``bsub``, ``bjobs`` and ``bkill`` that run the jobs
on this machine. Python 3.6+, standard library only. README.md in this folder says what is
emulated, which IBM documentation pages the formats follow, and the test-only knobs.

The executables ``bsub``, ``bjobs``, ``bkill`` and ``bparams`` beside this file call
``main_bsub``, ``main_bjobs``, ``main_bkill`` and ``main_bparams``. ``python3 lsf_emulator.py run JOBID`` is the detached runner
that ``bsub`` starts for each job: it dispatches the job's elements (honouring an array's
``%M`` throttle), enforces the run limit, escalates ``bkill`` signals and records how each
element ended, and sends the warning action (``-wa``/``-wt``) before the run limit.

State lives in ``$LSF_EMULATOR_DIR``:

* ``jobs/<id>.json``  one record per job (all elements of an array), replaced atomically
                      (temp file + rename) under ``jobs/<id>.lock``;
* ``next_id``         the next job id, allocated under the lock file ``lock``;
* ``spool/``          an element's output while it runs (LSF copies it to ``-o`` at the end);
* ``calls.jsonl``     one JSON line per command call: tool, argv, time, exit status, and the
                      ``LSB_*`` variables the caller had (tests check what reaches the jobs);
* ``runner.log``      tracebacks of runners, should one fail.
"""

import errno
import fcntl
import getpass
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

QUEUE = "normal"
FIRST_JOB_ID = 101
UNFINISHED = ("PEND", "RUN", "PSUSP", "USUSP", "SSUSP")
FINISHED = ("DONE", "EXIT")
# Termination reasons as ``bjobs -l`` / ``bjobs -o exit_reason`` show them (keyword: text from
# IBM's "Termination reasons displayed by bacct, bhist, and bjobs" table).
REASON_RUNLIMIT = "TERM_RUNLIMIT: job killed after reaching LSF run time limit"
REASON_OWNER = "TERM_OWNER: job killed by owner"
REASON_CWD = ("TERM_CWD_NOTEXIST: current working directory is not accessible or does not "
              "exist on the execution host")
MAX_JOB_ARRAY_SIZE = 1000          # lsb.params default (LSF_EMULATOR_MAX_JOB_ARRAY_SIZE)
SUB_TRY_INTERVAL = 60              # lsb.params default: seconds bsub waits before trying again
RUNLIMIT_GRACE_MINUTES = 10        # SIGUSR2 first, SIGKILL ten minutes later (bsub -W)
TICK = 0.05                        # the runner's loop period, seconds


# ----------------------------------------------------------------------------------------------
# Environment knobs and state files
# ----------------------------------------------------------------------------------------------

def env_float(name, default):
    try:
        return float(os.environ.get(name, ""))
    except ValueError:
        return default


def env_int(name, default):
    try:
        return int(os.environ.get(name, ""))
    except ValueError:
        return default


def max_job_array_size():
    """lsb.params MAX_JOB_ARRAY_SIZE: ``LSF_EMULATOR_MAX_JOB_ARRAY_SIZE`` (default 1000)."""
    value = env_int("LSF_EMULATOR_MAX_JOB_ARRAY_SIZE", MAX_JOB_ARRAY_SIZE)
    return value if value >= 1 else MAX_JOB_ARRAY_SIZE


def state_dir():
    base = os.environ.get("LSF_EMULATOR_DIR") or os.path.join(
        tempfile.gettempdir(), "lsf_emulator-%d" % os.getuid())
    for sub in ("jobs", "spool"):
        try:
            os.makedirs(os.path.join(base, sub))
        except OSError as exc:
            if exc.errno != errno.EEXIST:
                raise
    return base


def state_path(*parts):
    return os.path.join(state_dir(), *parts)


class Lock(object):
    """An exclusive ``flock`` on a file, as a context manager."""

    def __init__(self, path):
        self.path = path
        self.fd = None

    def __enter__(self):
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc):
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def job_lock(job_id):
    return Lock(state_path("jobs", "%d.lock" % job_id))


def write_json_atomic(path, data):
    tmp = "%s.tmp%d" % (path, os.getpid())
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.rename(tmp, path)   # readers see the old record or the new one, never a part


def load_job(job_id):
    try:
        with open(state_path("jobs", "%d.json" % job_id)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def save_job(job):
    write_json_atomic(state_path("jobs", "%d.json" % job["id"]), job)


def all_jobs():
    jobs = []
    folder = state_path("jobs")
    for name in os.listdir(folder):
        if name.endswith(".json") and name[:-5].isdigit():
            job = load_job(int(name[:-5]))
            if job is not None:
                jobs.append(job)
    return sorted(jobs, key=lambda j: j["id"])


def allocate_job_id():
    with Lock(state_path("lock")):
        path = state_path("next_id")
        try:
            with open(path) as f:
                job_id = int(f.read().strip())
        except (OSError, ValueError):
            job_id = FIRST_JOB_ID
        with open(path + ".tmp", "w") as f:
            f.write("%d\n" % (job_id + 1))
        os.rename(path + ".tmp", path)
    return job_id


def log_call(tool, argv, returncode, **extra):
    """Append one JSON line describing this call to ``calls.jsonl`` (one O_APPEND write)."""
    entry = {"tool": tool, "argv": list(argv), "time": time.time(), "rc": returncode,
             "pid": os.getpid(), "cwd": os.getcwd(),
             "lsb_env": {k: v for k, v in os.environ.items() if k.startswith("LSB_")}}
    entry.update(extra)
    fd = os.open(state_path("calls.jsonl"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(entry) + "\n").encode("utf-8"))
    finally:
        os.close(fd)


def user_name():
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in a container
        return str(os.getuid())


def host_name():
    return socket.gethostname().split(".")[0] or "localhost"


def lsf_time(t):
    """Times as bjobs prints them: ``Oct 22 09:22``."""
    return time.strftime("%b %d %H:%M", time.localtime(t)) if t else "-"


def element_ids(job):
    return sorted(int(i) for i in job["elements"])


def display_id(job, index):
    return "%d[%d]" % (job["id"], index) if job["array"] else "%d" % job["id"]


def display_name(job, index):
    return "%s[%d]" % (job["name"], index) if job["array"] else job["name"]


# ----------------------------------------------------------------------------------------------
# bsub
# ----------------------------------------------------------------------------------------------

BSUB_VALUE_OPTIONS = {"-J", "-o", "-oo", "-e", "-eo", "-W", "-wa", "-wt", "-n", "-R", "-q",
                      "-w", "-P",
                      "-M", "-G", "-m", "-u", "-b", "-t", "-g", "-app", "-sla", "-c", "-We",
                      "-cwd", "-L", "-E", "-Ep", "-gpu"}
BSUB_FLAG_OPTIONS = {"-x", "-N", "-B", "-r", "-rn"}
BSUB_UNSUPPORTED = {"-I", "-Ip", "-Is", "-K", "-H", "-i", "-is", "-pack"}
ARRAY_NAME = re.compile(r"^(?P<name>[^\[\]]*)\[(?P<spec>[^\[\]]+)\](?:%(?P<throttle>\d+))?$")
RUN_LIMIT = re.compile(r"^(?:(?P<h>\d+):)?(?P<m>\d+)(?:/.*)?$")
WARNING_TIME = re.compile(r"^(?:(?P<h>\d+):)?(?P<m>\d+)$")   # -wt: [hour:]minute, no host


class SubmitError(Exception):
    """A message bsub prints before 'Job not submitted.'"""


def bsub_usage():
    return ("Usage: bsub [-h] [-V] [-J job_name[index_list]%%max] [-o out_file] [-e err_file]\n"
            "            [-W [hour:]minute] [-wa signal -wt [hour:]minute] [-n num_tasks]\n"
            "            [-R res_req] [-q queue] [-w dep]\n"
            "            command [argument ...]\n"
            "(LSF emulator; options: %s)\n"
            % " ".join(sorted(BSUB_VALUE_OPTIONS | BSUB_FLAG_OPTIONS)))


def parse_bsub_options(argv, opts, origin="command line"):
    """Fill ``opts`` (option -> value, -R -> list) from ``argv``; return the remaining words
    (the command and its arguments). SubmitError / ValueError for bad input."""
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--":
            return argv[i + 1:]
        if not word.startswith("-") or word == "-":
            return argv[i:]
        if word in BSUB_UNSUPPORTED:
            raise SubmitError("%s: option is not supported by the LSF emulator" % word)
        if word in BSUB_FLAG_OPTIONS:
            opts[word] = True
            i += 1
            continue
        if word in BSUB_VALUE_OPTIONS:
            if i + 1 >= len(argv):
                raise ValueError("option requires an argument -- %s" % word[1:])
            if word == "-R":
                opts.setdefault("-R", []).append(argv[i + 1])
            else:
                opts[word] = argv[i + 1]   # given twice: the later one counts (as getopt)
            i += 2
            continue
        raise ValueError("illegal option -- %s" % word[1:])
    return []


def parse_index_list(spec):
    """``1-10:2,15`` -> sorted indices; ValueError if malformed."""
    indices = set()
    for part in spec.split(","):
        m = re.match(r"^(\d+)(?:-(\d+)(?::(\d+))?)?$", part.strip())
        if not m:
            raise ValueError(part)
        start = int(m.group(1))
        end = int(m.group(2)) if m.group(2) else start
        step = int(m.group(3)) if m.group(3) else 1
        if start < 1 or end < start or step < 1:
            raise ValueError(part)
        indices.update(range(start, end + 1, step))
    return sorted(indices)


def parse_dependency(text):
    """``done(12) && ended("name")`` -> [(condition, job spec)]; SubmitError if malformed."""
    terms = []
    for part in text.split("&&"):
        part = part.strip()
        m = re.match(r"^(done|ended|exit|started|post_done|post_err)\(\s*(.+?)\s*\)$", part)
        if m:
            cond, spec = m.group(1), m.group(2)
        elif re.match(r"^\d+(\[\d+\])?$", part) or re.match(r"^\".*\"$", part):
            cond, spec = "done", part
        else:
            raise SubmitError("Dependency condition syntax error")
        terms.append((cond, spec.strip().strip("'\"")))
    return terms


def resolve_dependency(terms):
    """Job ids for the names/ids in a dependency; SubmitError if one matches no job."""
    resolved = []
    jobs = all_jobs()
    for cond, spec in terms:
        m = re.match(r"^(\d+)(?:\[(\d+)\])?$", spec)
        if m:
            job_id, index = int(m.group(1)), m.group(2)
            if not any(j["id"] == job_id for j in jobs):
                raise SubmitError("%s: No matching job found" % spec)
        else:
            named = [j for j in jobs if j["name"] == spec]
            if not named:
                raise SubmitError("%s: No matching job found" % spec)
            job_id, index = named[-1]["id"], None
        resolved.append([cond, job_id, int(index) if index else None])
    return resolved


def should_fail_bsub(job_name):
    """``LSF_EMULATOR_FAIL_BSUB=N``: the next N bsub calls fail (N < 0: all of them); with
    ``LSF_EMULATOR_FAIL_BSUB_JOBNAME=REGEX`` only calls whose -J name matches count."""
    text = os.environ.get("LSF_EMULATOR_FAIL_BSUB", "").strip()
    if not text:
        return False
    try:
        limit = int(text)
    except ValueError:
        return False
    pattern = os.environ.get("LSF_EMULATOR_FAIL_BSUB_JOBNAME")
    if pattern and not re.search(pattern, job_name or ""):
        return False
    if limit < 0:
        return True
    with Lock(state_path("lock")):
        path = state_path("bsub_failures")
        try:
            with open(path) as f:
                done = int(f.read().strip() or 0)
        except (OSError, ValueError):
            done = 0
        if done >= limit:
            return False
        with open(path, "w") as f:
            f.write("%d\n" % (done + 1))
    return True


def build_job(opts, command, stdin_script):
    """The job record for a submission (without its id); SubmitError for bad options."""
    name_spec = opts.get("-J")
    array = None
    if name_spec is None:
        name = command.split("\n")[0][:4094] if command else "(stdin)"
    else:
        m = ARRAY_NAME.match(name_spec)
        if m:
            try:
                indices = parse_index_list(m.group("spec"))
            except ValueError:
                raise SubmitError("Bad job name")
            # "the maximum job array index can never exceed" MAX_JOB_ARRAY_SIZE (bsub -J);
            # the words are LSF's own (lsberrno LSBE_BIG_IDX)
            if not indices or indices[-1] > max_job_array_size():
                raise SubmitError("Job array index too large")
            throttle = int(m.group("throttle")) if m.group("throttle") else None
            if throttle is not None and throttle < 1:
                raise SubmitError("Bad job name")
            name = m.group("name")
            array = {"spec": m.group("spec"), "indices": indices, "throttle": throttle}
        elif "[" in name_spec or "]" in name_spec:
            raise SubmitError("Bad job name")
        else:
            name = name_spec
    runlimit = None
    if "-W" in opts:
        m = RUN_LIMIT.match(opts["-W"])
        if not m:
            raise SubmitError("Bad RUNLIMIT specification")
        minutes = int(m.group("h") or 0) * 60 + int(m.group("m"))
        runlimit = minutes * env_float("LSF_EMULATOR_SECONDS_PER_MINUTE", 60.0)
    # -wa SIGNAL with -wt [hour:]minute: the warning action, that long before the run limit's
    # action; one without the other takes no effect (bsub -wa, bsub -wt).
    warning_signal = warning_time = None
    if "-wa" in opts:
        try:
            warning_signal = parse_signal(opts["-wa"].strip("'\""))
        except (AttributeError, ValueError):
            raise SubmitError("Bad job warning action specification")
    if "-wt" in opts:
        m = WARNING_TIME.match(opts["-wt"].strip("'\""))
        if not m:
            raise SubmitError("Bad job action warning time specification")
        warning_time = (int(m.group("h") or 0) * 60 + int(m.group("m"))) * env_float(
            "LSF_EMULATOR_SECONDS_PER_MINUTE", 60.0)
    slots = opts.get("-n", "1")
    if not re.match(r"^\d+(,\d+)?$", slots) or int(slots.split(",")[0]) < 1:
        raise SubmitError("Bad argument for option -n")
    depend = None
    if "-w" in opts:
        depend = resolve_dependency(parse_dependency(opts["-w"]))
    out, out_mode = (opts["-oo"], "w") if "-oo" in opts else (opts.get("-o"), "a")
    err, err_mode = (opts["-eo"], "w") if "-eo" in opts else (opts.get("-e"), "a")
    indices = array["indices"] if array else [0]
    return {
        "name": name, "array": array, "user": user_name(), "queue": opts.get("-q", QUEUE),
        "queue_given": "-q" in opts, "from_host": host_name(), "cwd": os.getcwd(),
        "command": command, "stdin_script": stdin_script, "submit_time": time.time(),
        "out": out, "out_mode": out_mode, "err": err, "err_mode": err_mode,
        "runlimit": runlimit, "runlimit_text": opts.get("-W"), "slots": slots,
        "warning_signal": warning_signal, "warning_time": warning_time,
        "max_jobs": env_int("LSF_EMULATOR_MAX_JOBS", 0),
        "resources": opts.get("-R", []), "project": opts.get("-P", "default"),
        "depend": depend, "options": {k: v for k, v in opts.items()},
        "seconds_per_minute": env_float("LSF_EMULATOR_SECONDS_PER_MINUTE", 60.0),
        "terminate_interval": env_float("LSF_EMULATOR_TERMINATE_INTERVAL", 10.0),
        "report_delay": env_float("LSF_EMULATOR_REPORT_DELAY", 0.0),
        "runner_pid": None,
        "elements": {str(i): {"stat": "PEND", "pid": None, "start_time": None,
                              "finish_time": None, "exit_code": None, "exit_reason": None,
                              "kill_requested": None, "kill_signals": 0,
                              "runlimit_hit": None, "warning_sent": None} for i in indices},
    }


def read_stdin_job(opts):
    """No command on the command line: read the job from stdin. ``#BSUB`` lines add options
    (the command line's win); the rest is the script."""
    try:
        text = sys.stdin.read()
    except (OSError, ValueError):
        text = ""
    script_lines = []
    directive_opts = {}
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#BSUB"):
            parse_bsub_options(shlex.split(stripped[len("#BSUB"):]), directive_opts,
                               origin="#BSUB")
        else:
            script_lines.append(line)
    for key, value in directive_opts.items():
        if key == "-R":
            opts["-R"] = value + opts.get("-R", [])
        else:
            opts.setdefault(key, value)
    script = "\n".join(script_lines).strip("\n")
    return script


def main_bsub(argv):
    rc = 255
    job_id = None
    waits = 0
    try:
        if argv[:1] in (["-h"], ["-help"]):
            sys.stdout.write(bsub_usage())
            rc = 0
            return rc
        if argv[:1] == ["-V"]:
            sys.stderr.write("IBM Spectrum LSF 10.1 (LSF emulator for tests)\n")
            rc = 0
            return rc
        opts = {}
        try:
            words = parse_bsub_options(argv, opts)
        except ValueError as exc:
            sys.stderr.write("bsub: %s\n%s" % (exc, bsub_usage()))
            return rc
        stdin_script = None
        if words:
            command = " ".join(words)   # LSF keeps the command line as one string for sh
        else:
            command = stdin_script = read_stdin_job(opts)
            if not command.strip():
                sys.stderr.write("No command is specified. Job not submitted.\n")
                return rc
        job = build_job(opts, command, stdin_script)
        waits, accepted = wait_below_pending_limit(len(job["elements"]))
        if not accepted:
            sys.stderr.write("Pending job threshold reached. Job not submitted.\n")
            return rc
        if should_fail_bsub(opts.get("-J")):
            sys.stderr.write("Failed in an LSF library call: LSF emulator told to fail "
                             "(LSF_EMULATOR_FAIL_BSUB). Job not submitted.\n")
            return rc
        job_id = allocate_job_id()
        job["id"] = job_id
        for key in ("out", "err"):
            if job[key]:
                job[key] = job[key].replace("%J", str(job_id))
        with job_lock(job_id):
            save_job(job)
        start_runner(job_id, job["cwd"])
        if job["queue_given"]:
            sys.stdout.write("Job <%d> is submitted to queue <%s>.\n" % (job_id, job["queue"]))
        else:
            sys.stdout.write("Job <%d> is submitted to default queue <%s>.\n"
                             % (job_id, job["queue"]))
        rc = 0
        return rc
    except SubmitError as exc:
        sys.stderr.write("%s. Job not submitted.\n" % exc)
        return rc
    finally:
        log_call("bsub", argv, rc, job_id=job_id, pend_waits=waits)


def pending_elements(user):
    """How many elements of ``user``'s jobs are pending (each array element counts)."""
    return sum(1 for job in all_jobs() if job["user"] == user
               for el in job["elements"].values() if el["stat"] == "PEND")


def wait_below_pending_limit(new_elements):
    """``LSF_EMULATOR_MAX_PEND_JOBS=N`` (lsb.users MAX_PEND_JOBS): while the user's pending
    elements plus this job's would exceed N, bsub says so on stderr and tries again every
    ``LSF_EMULATOR_SUB_TRY_INTERVAL`` seconds (lsb.params SUB_TRY_INTERVAL, 60), as LSF's bsub
    does, for ever; with ``LSB_NTRIES=T`` it gives up after T tries.
    ``(waits, accepted)``: how often it waited, and False when it gave up."""
    limit = env_int("LSF_EMULATOR_MAX_PEND_JOBS", 0)
    if limit <= 0:
        return 0, True
    interval = env_float("LSF_EMULATOR_SUB_TRY_INTERVAL", SUB_TRY_INTERVAL)
    tries = env_int("LSB_NTRIES", 0)
    user = user_name()
    waits = 0
    while pending_elements(user) + new_elements > limit:
        waits += 1
        if 0 < tries <= waits:
            return waits - 1, False
        sys.stderr.write("User <%s>: Pending job threshold reached. Retrying in %g seconds...\n"
                         % (user, interval))
        sys.stderr.flush()
        time.sleep(interval)
    return waits, True


def start_runner(job_id, cwd):
    """The job's runner: a detached process in its own session, so that neither the caller's
    pipes nor its Ctrl-C reach it."""
    subprocess.Popen([sys.executable, os.path.abspath(__file__), "run", str(job_id)],
                     cwd=cwd if os.path.isdir(cwd) else "/", stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     start_new_session=True, close_fds=True)


# ----------------------------------------------------------------------------------------------
# The runner (one detached process per job)
# ----------------------------------------------------------------------------------------------

def signal_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
        return True
    except OSError:
        return False


def dependency_state(job):
    """'ok' when the job's dependency is satisfied, 'wait' while it may still be, 'never'."""
    for cond, dep_id, index in job.get("depend") or []:
        dep = load_job(dep_id)
        if dep is None:
            return "never"
        keys = [str(index)] if index is not None else list(dep["elements"])
        stats = [dep["elements"][k]["stat"] for k in keys if k in dep["elements"]]
        if not stats:
            return "never"
        finished = all(s in FINISHED for s in stats)
        if cond in ("done", "post_done"):
            if all(s == "DONE" for s in stats):
                continue
            return "never" if finished else "wait"
        if cond in ("exit", "post_err"):
            if finished and any(s == "EXIT" for s in stats):
                continue
            return "never" if finished else "wait"
        if cond == "ended":
            if finished:
                continue
            return "wait"
        if cond == "started":
            if all(s != "PEND" for s in stats):
                continue
            return "wait"
    return "ok"


def spool_paths(job, index):
    base = state_path("spool", "%d.%d" % (job["id"], index))
    return base + ".out", base + ".err"


def job_env(job, index):
    env = dict(os.environ)   # the submission environment, as LSF transfers it
    env.update({
        "LSB_JOBID": str(job["id"]),
        "LSB_JOBINDEX": str(index),
        "LSB_JOBNAME": display_name(job, index),
        "LSB_QUEUE": job["queue"],
        "LSB_HOSTS": host_name(),
        "LSB_BATCH_JID": display_id(job, index),
    })
    if job["out"]:
        env["LSB_OUTPUTFILE"] = job["out"].replace("%I", str(index))
    if job["err"]:
        env["LSB_ERRORFILE"] = job["err"].replace("%I", str(index))
    return env


def start_element(job, index, el):
    out_spool, err_spool = spool_paths(job, index)
    separate_err = bool(job["err"]) and job["err"] != job["out"]
    out_f = open(out_spool, "wb")
    err_f = open(err_spool, "wb") if separate_err else None
    try:
        proc = subprocess.Popen(["/bin/sh", "-c", job["command"]], cwd=job["cwd"],
                                env=job_env(job, index), stdin=subprocess.DEVNULL,
                                stdout=out_f, stderr=err_f if err_f else subprocess.STDOUT,
                                start_new_session=True)
    except OSError:
        el.update(stat="EXIT", exit_code=2, exit_reason=REASON_CWD, start_time=time.time(),
                  finish_time=time.time())
        return None
    finally:
        out_f.close()
        if err_f:
            err_f.close()
    el.update(stat="RUN", pid=proc.pid, start_time=time.time())
    return proc


def _append(path, data, mode):
    try:
        folder = os.path.dirname(path)
        if folder and not os.path.isdir(folder):
            return False   # LSF would mail the output instead
        with open(path, mode + "b") as f:
            f.write(data)
        return True
    except OSError:
        return False


def deliver_output(job, index, el):
    """Copy the spooled output to the -o/-e files and append the job report to -o, as LSF
    does when a job ends (it appends unless -oo/-eo)."""
    out_spool, err_spool = spool_paths(job, index)

    def read(path):
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError:
            return b""

    out_data, err_data = read(out_spool), read(err_spool)
    if el["stat"] == "DONE":
        outcome = "Successfully completed."
    else:
        outcome = "Exited with exit code %s." % el["exit_code"]
        if el["exit_reason"]:
            outcome += "\n" + el["exit_reason"] + "."
    report = "\n".join([
        "",
        "-" * 60,
        "LSF emulator report for job <%s>: <%s>, queue <%s>, host <%s>, user <%s>"
        % (display_id(job, index), display_name(job, index), job["queue"], host_name(),
           job["user"]),
        "Command: %s" % job["command"],
        "Started at %s, ended at %s" % (time.ctime(el["start_time"] or time.time()),
                                        time.ctime(el["finish_time"] or time.time())),
        "",
        outcome,
        "-" * 60,
        "",
    ]).encode("utf-8")
    out_path = job["out"].replace("%I", str(index)) if job["out"] else None
    err_path = job["err"].replace("%I", str(index)) if job["err"] else None
    if out_path:
        _append(out_path, out_data + report, job["out_mode"])
    if err_path and err_path != out_path:
        _append(err_path, err_data, job["err_mode"])
    for path in (out_spool, err_spool):
        try:
            os.unlink(path)
        except OSError:
            pass


def run_job(job_id):
    """Dispatch and watch the elements of one job until all have ended."""
    procs = {}       # index -> Popen
    ending = {}      # index -> (time to finish, exit code) once the process has ended
    while True:
        with job_lock(job_id):
            job = load_job(job_id)
            if job is None:
                return
            before = json.dumps(job, sort_keys=True)
            now = time.time()
            els = job["elements"]
            if job.get("runner_pid") != os.getpid():
                job["runner_pid"] = os.getpid()
            # processes that ended
            for index, proc in list(procs.items()):
                rc = proc.poll()
                if rc is None:
                    continue
                code = rc if rc >= 0 else 128 - rc
                ending[index] = (now + job["report_delay"], code)
                del procs[index]
            # elements whose end is now reported
            for index, (when, code) in list(ending.items()):
                if now < when:
                    continue
                el = els[str(index)]
                if el["kill_requested"] and not el["exit_reason"]:
                    el["exit_reason"] = REASON_OWNER
                el["exit_code"] = code
                el["finish_time"] = now
                el["stat"] = "DONE" if code == 0 and not el["exit_reason"] else "EXIT"
                deliver_output(job, index, el)   # the -o file is complete before DONE/EXIT
                del ending[index]
            # signals: bkill escalation (INT, TERM, KILL), the warning action (-wa, -wt before
            # the run limit) and the run limit (USR2, KILL)
            for index, proc in procs.items():
                el = els[str(index)]
                if job.get("warning_signal") is not None and job.get("warning_time") is not None \
                        and job["runlimit"] is not None and not el.get("warning_sent") \
                        and not el["kill_requested"] \
                        and now - el["start_time"] >= job["runlimit"] - job["warning_time"]:
                    el["warning_sent"] = now
                    signal_group(proc.pid, job["warning_signal"])
                if el["kill_requested"]:
                    step = int((now - el["kill_requested"]) / max(job["terminate_interval"],
                                                                  0.01)) + 1
                    while el["kill_signals"] < min(step, 3):
                        sig = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)[el["kill_signals"]]
                        signal_group(proc.pid, sig)
                        el["kill_signals"] += 1
                elif job["runlimit"] is not None:
                    if el["runlimit_hit"] is None:
                        if now - el["start_time"] >= job["runlimit"]:
                            el["runlimit_hit"] = now
                            el["exit_reason"] = REASON_RUNLIMIT
                            signal_group(proc.pid, signal.SIGUSR2)
                    elif now - el["runlimit_hit"] >= (RUNLIMIT_GRACE_MINUTES
                                                      * job["seconds_per_minute"]):
                        signal_group(proc.pid, signal.SIGKILL)
            # dispatch pending elements
            pending = [i for i in element_ids(job) if els[str(i)]["stat"] == "PEND"]
            dep = dependency_state(job) if pending else "ok"
            if pending and dep == "ok":
                if job.get("max_jobs"):
                    # the user's job slot limit counts the elements of all their jobs: count,
                    # start and record under one lock, so two runners never both take a slot
                    with Lock(state_path("dispatch.lock")):
                        dispatch(job, pending, procs)
                        save_job(job)
                else:
                    dispatch(job, pending, procs)
            if json.dumps(job, sort_keys=True) != before:
                save_job(job)
            waiting = [i for i in element_ids(job) if els[str(i)]["stat"] == "PEND"]
        if not procs and not ending and (not waiting or dep == "never"):
            return   # all ended, or waiting on a dependency that can never be met
        time.sleep(TICK)


def dispatch(job, pending, procs):
    """Start the pending elements the array's %M throttle and the user's job slot limit
    (``LSF_EMULATOR_MAX_JOBS``, lsb.users MAX_JOBS) allow; the others stay PEND."""
    els = job["elements"]
    throttle = job["array"]["throttle"] if job["array"] else None
    running = sum(1 for e in els.values() if e["stat"] == "RUN")
    user_running = None
    if job.get("max_jobs"):
        user_running = running + sum(
            1 for other in all_jobs() if other["user"] == job["user"] and other["id"] != job["id"]
            for e in other["elements"].values() if e["stat"] == "RUN")
    for index in pending:
        if throttle is not None and running >= throttle:
            break
        if user_running is not None and user_running >= job["max_jobs"]:
            break
        proc = start_element(job, index, els[str(index)])
        if proc is not None:
            procs[index] = proc
            running += 1
            if user_running is not None:
                user_running += 1
        else:
            deliver_output(job, index, els[str(index)])


def main_runner(argv):
    job_id = int(argv[0])
    # Jobs start with default signal handling, whatever the submitter ignored (a shell's
    # background job ignores SIGINT, and ignored signals are inherited across exec).
    for name in ("SIGINT", "SIGQUIT", "SIGTERM", "SIGHUP", "SIGUSR1", "SIGUSR2"):
        signal.signal(getattr(signal, name), signal.SIG_DFL)
    try:
        run_job(job_id)
    except Exception:
        with open(state_path("runner.log"), "a") as f:
            f.write("runner of job %d failed:\n%s\n" % (job_id, traceback.format_exc()))
        return 1
    return 0


# ----------------------------------------------------------------------------------------------
# bjobs
# ----------------------------------------------------------------------------------------------

# field name -> (header, recommended width); aliases map onto field names.
BJOBS_FIELDS = {
    "jobid": ("JOBID", 7), "jobindex": ("JOBINDEX", 8), "stat": ("STAT", 5),
    "user": ("USER", 7), "queue": ("QUEUE", 10), "from_host": ("FROM_HOST", 11),
    "exec_host": ("EXEC_HOST", 11), "job_name": ("JOB_NAME", 10),
    "submit_time": ("SUBMIT_TIME", 15), "start_time": ("START_TIME", 15),
    "finish_time": ("FINISH_TIME", 16), "exit_code": ("EXIT_CODE", 10),
    "exit_reason": ("EXIT_REASON", 50), "command": ("COMMAND", 15),
    "run_time": ("RUN_TIME", 15), "slots": ("SLOTS", 5), "project": ("PROJ_NAME", 11),
    "pids": ("PIDS", 20),
}
BJOBS_ALIASES = {"id": "jobid", "name": "job_name", "cmd": "command", "proj": "project",
                 "proj_name": "project"}
BJOBS_FLAGS = {"-a", "-noheader", "-w", "-W", "-l", "-d", "-p", "-r", "-s", "-A", "-UF"}
BJOBS_VALUE_OPTIONS = {"-o", "-u", "-J", "-q", "-m", "-P", "-g"}
DEFAULT_CLEAN_PERIOD = 3600.0    # lsb.params CLEAN_PERIOD: finished jobs are kept this long


def field_value(field, job, index):
    el = job["elements"][str(index)]
    started = el["start_time"]
    if field == "jobid":
        return str(job["id"])
    if field == "jobindex":
        return str(index)
    if field == "stat":
        return el["stat"]
    if field == "user":
        return job["user"]
    if field == "queue":
        return job["queue"]
    if field == "from_host":
        return job["from_host"]
    if field == "exec_host":
        return host_name() if started else "-"
    if field == "job_name":
        return display_name(job, index)
    if field == "submit_time":
        return lsf_time(job["submit_time"])
    if field == "start_time":
        return lsf_time(started)
    if field == "finish_time":
        return lsf_time(el["finish_time"]) if el["stat"] in FINISHED else "-"
    if field == "exit_code":
        return str(el["exit_code"]) if el["stat"] in FINISHED and el["exit_code"] is not None \
            else "-"
    if field == "exit_reason":
        return el["exit_reason"] if el["stat"] in FINISHED and el["exit_reason"] else "-"
    if field == "command":
        return job["command"].replace("\n", "; ")
    if field == "run_time":
        if not started:
            return "0 second(s)"
        end = el["finish_time"] if el["stat"] in FINISHED else time.time()
        return "%d second(s)" % int((end or time.time()) - started)
    if field == "slots":
        return job["slots"].split(",")[0]
    if field == "project":
        return job["project"]
    if field == "pids":
        return str(el["pid"]) if el["stat"] == "RUN" and el["pid"] else "-"
    return "-"


def parse_output_format(text):
    """``-o "jobid stat:5 exit_code:-8 delimiter='|'"`` -> ([(field, width, right)], delim).
    ValueError names an unknown field."""
    delimiter = " "
    m = re.search(r"delimiter=(['\"])(.)\1", text)
    if m:
        delimiter = m.group(2)
        text = text[:m.start()] + text[m.end():]
    columns = []
    for token in text.split():
        parts = token.split(":")
        name = parts[0].lower()
        name = BJOBS_ALIASES.get(name, name)
        if name == "all":
            for f in sorted(BJOBS_FIELDS):
                columns.append((f, None, False))
            continue
        if name not in BJOBS_FIELDS:
            raise ValueError(parts[0])
        width, right = None, False
        if len(parts) > 1:
            spec = parts[1]
            if spec.startswith("-"):
                right, spec = True, spec[1:]
            width = int(spec) if spec.isdigit() else BJOBS_FIELDS[name][1]
        columns.append((name, width, right))
    return columns, delimiter


def fit(value, width, right, field):
    if width is None:
        return value
    if len(value) > width:
        value = ("*" + value[-(width - 1):]) if field == "job_name" else value[:width]
    return value.rjust(width) if right else value.ljust(width)


def bjobs_usage():
    return ("Usage: bjobs [-a] [-d] [-p] [-r] [-l] [-w] [-noheader] [-o \"fields ... "
            "[delimiter='c']\"]\n             [-u user] [-J name] [-q queue] "
            "[job_ID | \"job_ID[index]\" ...]\n")


def main_bjobs(argv):
    rc = 0
    try:
        rc = _bjobs(argv)
        return rc
    finally:
        log_call("bjobs", argv, rc)


def _bjobs(argv):
    flags, values, ids = set(), {}, []
    i = 0
    while i < len(argv):
        word = argv[i]
        if word in BJOBS_FLAGS:
            flags.add(word)
        elif word in BJOBS_VALUE_OPTIONS:
            if i + 1 >= len(argv):
                sys.stderr.write("bjobs: option requires an argument -- %s\n%s"
                                 % (word[1:], bjobs_usage()))
                return 255
            values[word] = argv[i + 1]
            i += 1
        elif word in ("-h", "-help"):
            sys.stdout.write(bjobs_usage())
            return 0
        elif word.startswith("-") and word != "-":
            sys.stderr.write("bjobs: illegal option -- %s\n%s" % (word[1:], bjobs_usage()))
            return 255
        else:
            ids.append(word)
        i += 1
    if os.environ.get("LSF_EMULATOR_GARBLE_BJOBS", "") not in ("", "0") or os.path.exists(
            state_path("garble_bjobs")):
        sys.stdout.write("LSF is processing your request. Please wait ...\n"
                         "#@!%& garbled bjobs output &%!@#\n\x00\x7f~~ 10?|R\n")
        return 0
    columns = delimiter = None
    if "-o" in values:
        try:
            columns, delimiter = parse_output_format(values["-o"])
        except ValueError as exc:
            sys.stderr.write("bjobs: Output format error: <%s> is not a valid field name.\n"
                             % exc)
            return 255
    clean_period = env_float("LSF_EMULATOR_CLEAN_PERIOD", DEFAULT_CLEAN_PERIOD)
    now = time.time()
    jobs = {}
    for job in all_jobs():
        finish_times = [e["finish_time"] or now for e in job["elements"].values()]
        if all(e["stat"] in FINISHED for e in job["elements"].values()) and \
                now - max(finish_times) > clean_period:
            continue   # cleaned from mbatchd's memory
        jobs[job["id"]] = job

    # Which states to show.
    if "-a" in flags:
        wanted = UNFINISHED + FINISHED
    elif "-d" in flags:
        wanted = FINISHED
    elif "-p" in flags:
        wanted = ("PEND", "PSUSP")
    elif "-r" in flags:
        wanted = ("RUN",)
    elif "-s" in flags:
        wanted = ("PSUSP", "USUSP", "SSUSP")
    else:
        wanted = UNFINISHED

    selected, not_found, valid_ids = [], [], 0
    user = values.get("-u", user_name())
    if ids:
        for spec in ids:
            m = re.match(r"^(\d+)(?:\[(\d+)\])?$", spec.strip())
            job = jobs.get(int(m.group(1))) if m else None
            if job is None or (m.group(2) and m.group(2) not in job["elements"]):
                not_found.append(spec)
                continue
            valid_ids += 1
            indexes = [int(m.group(2))] if m.group(2) else element_ids(job)
            selected.extend((job, k) for k in indexes)
    else:
        for job in jobs.values():
            if user != "all" and job["user"] != user:
                continue
            selected.extend((job, k) for k in element_ids(job))
    rows = []
    seen = set()
    for job, index in selected:
        key = (job["id"], index)
        if key in seen:
            continue
        seen.add(key)
        el = job["elements"][str(index)]
        if el["stat"] not in wanted:
            continue
        if "-J" in values and display_name(job, index) != values["-J"] and \
                job["name"] != values["-J"]:
            continue
        if "-q" in values and job["queue"] != values["-q"]:
            continue
        rows.append((job, index))
    order = {"RUN": 0, "SSUSP": 0, "USUSP": 0, "PSUSP": 1, "PEND": 1, "DONE": 2, "EXIT": 2}
    rows.sort(key=lambda r: (order[r[0]["elements"][str(r[1])]["stat"]], r[0]["id"], r[1]))

    out = []
    if rows:
        if "-l" in flags:
            out.extend(long_format(job, index) for job, index in rows)
        elif columns is not None:
            if "-noheader" not in flags:
                out.append(delimiter.join(fit(BJOBS_FIELDS[f][0], w, r, f)
                                          for f, w, r in columns))
            for job, index in rows:
                out.append(delimiter.join(fit(field_value(f, job, index), w, r, f)
                                          for f, w, r in columns))
        else:
            wide = "-w" in flags or "-W" in flags
            enh = os.environ.get("LSB_BJOBS_DISPLAY_ENH", "N").upper().startswith("Y")
            cols = [("jobid", 7), ("user", 7), ("stat", 5), ("queue", 10), ("from_host", 11),
                    ("exec_host", 11), ("job_name", 10), ("submit_time", None)]
            if "-noheader" not in flags:
                out.append(" ".join(fit(BJOBS_FIELDS[f][0], w, False, f) for f, w in cols))
            for job, index in rows:
                cells = []
                for f, w in cols:
                    value = field_value(f, job, index)
                    if f == "jobid" and enh:
                        value = display_id(job, index)
                    if f == "exec_host" and value == "-":
                        value = ""
                    if wide:
                        cells.append(value.ljust(w) if w else value)
                    else:
                        cells.append(fit(value, w, False, f))
                out.append(" ".join(cells))
    if out:
        sys.stdout.write("\n".join(out) + "\n")
    for spec in not_found:
        sys.stderr.write("Job <%s> is not found\n" % spec)
    if not rows and not not_found:
        message = {"-a": "No job found", "-d": "No done job found",
                   "-p": "No pending job found", "-r": "No running job found",
                   "-s": "No suspended job found"}
        chosen = [message[f] for f in ("-a", "-d", "-p", "-r", "-s") if f in flags]
        sys.stderr.write("%s\n" % (chosen[0] if chosen else "No unfinished job found"))
    consistent = os.environ.get("LSB_BJOBS_CONSISTENT_EXIT_CODE", "N").upper().startswith("Y")
    if consistent:
        return 0 if rows and not not_found else 255
    return 255 if not_found and not valid_ids else 0


def long_format(job, index):
    el = job["elements"][str(index)]
    lines = ["", "Job <%s>, Job Name <%s>, User <%s>, Project <%s>, Status <%s>, Queue <%s>, "
             "Command <%s>" % (display_id(job, index), display_name(job, index), job["user"],
                               job["project"], el["stat"], job["queue"], job["command"]),
             "%s: Submitted from host <%s>, CWD <%s>%s%s;" % (
                 time.ctime(job["submit_time"]), job["from_host"], job["cwd"],
                 ", Output File <%s>" % job["out"] if job["out"] else "",
                 ", Error File <%s>" % job["err"] if job["err"] else "")]
    if job["runlimit"] is not None:
        lines.append(" RUNLIMIT\n %s min" % job["runlimit_text"])
    if el["start_time"]:
        lines.append("%s: Started on <%s>, Execution CWD <%s>;" % (
            time.ctime(el["start_time"]), host_name(), job["cwd"]))
    if el["stat"] == "DONE":
        lines.append("%s: Done successfully." % time.ctime(el["finish_time"]))
    elif el["stat"] == "EXIT":
        lines.append("%s: Exited with exit code %s." % (time.ctime(el["finish_time"]),
                                                         el["exit_code"]))
        if el["exit_reason"]:
            lines.append("%s." % el["exit_reason"])
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# bkill
# ----------------------------------------------------------------------------------------------

def parse_signal(text):
    name = text.upper()
    if name.isdigit():
        return int(name)
    if not name.startswith("SIG"):
        name = "SIG" + name
    return int(getattr(signal, name))


def main_bkill(argv):
    rc = 0
    try:
        rc = _bkill(argv)
        return rc
    finally:
        log_call("bkill", argv, rc)


def _bkill(argv):
    sig, force, name_filter, ids = None, False, None, []
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "-s" and i + 1 < len(argv):
            try:
                sig = parse_signal(argv[i + 1])
            except (AttributeError, ValueError):
                sys.stderr.write("bkill: Illegal signal value <%s>\n" % argv[i + 1])
                return 255
            i += 1
        elif word == "-r":
            force = True
        elif word == "-J" and i + 1 < len(argv):
            name_filter = argv[i + 1]
            i += 1
        elif word in ("-u", "-q", "-m", "-g", "-C") and i + 1 < len(argv):
            i += 1   # accepted, not used: all jobs here are the user's
        elif word.startswith("-"):
            sys.stderr.write("bkill: illegal option -- %s\nUsage: bkill [-s signal] [-r] "
                             "[-J job_name] [job_ID ... | 0 | \"job_ID[index]\" ...]\n"
                             % word[1:])
            return 255
        else:
            ids.append(word)
        i += 1
    jobs = {j["id"]: j for j in all_jobs()}
    targets = []
    if ids == ["0"] or (name_filter and not ids):
        targets = [(j["id"], None) for j in jobs.values()
                   if j["user"] == user_name()
                   and (name_filter is None or j["name"] == name_filter)
                   and any(e["stat"] in UNFINISHED for e in j["elements"].values())]
        if not targets:
            sys.stderr.write("No unfinished job found\n")
            return 255
    elif not ids:
        mine = [j for j in jobs.values() if j["user"] == user_name()]
        if not mine:
            sys.stderr.write("No unfinished job found\n")
            return 255
        targets = [(mine[-1]["id"], None)]   # the last job the user submitted
    else:
        for spec in ids:
            m = re.match(r"^(\d+)(?:\[(\d+)\])?$", spec.strip())
            if not m:
                sys.stderr.write("%s: Illegal job ID.\n" % spec)
                targets.append((None, spec))
                continue
            targets.append((int(m.group(1)), m.group(2)))
    rc = 0
    for job_id, index in targets:
        if job_id is None:
            rc = 255
            continue
        label = "%d[%s]" % (job_id, index) if index else "%d" % job_id
        if job_id not in jobs or (index and index not in jobs[job_id]["elements"]):
            sys.stderr.write("Job <%s>: No matching job found\n" % label)
            rc = 255
            continue
        outcome = kill_job(job_id, index, sig, force)
        if outcome == "finished":
            sys.stderr.write("Job <%s>: Job has already finished\n" % label)
            rc = 255
        elif sig is not None:
            sys.stdout.write("Job <%s> is being signaled\n" % label)
        else:
            sys.stdout.write("Job <%s> is being terminated\n" % label)
    return rc


def kill_job(job_id, index, sig, force):
    """Kill (or signal) a job's unfinished elements; 'finished' if none was left."""
    with job_lock(job_id):
        job = load_job(job_id)
        keys = [index] if index else [str(i) for i in element_ids(job)]
        live = [k for k in keys if job["elements"][k]["stat"] in UNFINISHED]
        if not live:
            return "finished"
        now = time.time()
        for k in live:
            el = job["elements"][k]
            if sig is not None:
                if el["stat"] == "RUN" and el["pid"]:
                    signal_group(el["pid"], sig)
                continue
            if el["stat"] == "PEND":
                el.update(stat="EXIT", exit_reason=REASON_OWNER, finish_time=now)
            elif el["stat"] == "RUN" and not el["kill_requested"]:
                el["kill_requested"] = now
                el["exit_reason"] = REASON_OWNER
                if el["pid"]:
                    signal_group(el["pid"], signal.SIGKILL if force else signal.SIGINT)
                    el["kill_signals"] = 3 if force else 1
        save_job(job)
    return "killed"


# ----------------------------------------------------------------------------------------------
# bparams
# ----------------------------------------------------------------------------------------------

MBD_SLEEP_TIME = 10          # the values lsb.params is installed with for a test cluster
SBD_SLEEP_TIME = 7
JOB_ACCEPT_INTERVAL = 1


def lsb_params():
    """The emulated cluster's lsb.params, as ``[(name, value)]``."""
    return [
        ("DEFAULT_QUEUE", QUEUE),
        ("MBD_SLEEP_TIME", MBD_SLEEP_TIME),
        ("SBD_SLEEP_TIME", SBD_SLEEP_TIME),
        ("JOB_ACCEPT_INTERVAL", JOB_ACCEPT_INTERVAL),
        ("CLEAN_PERIOD", int(env_float("LSF_EMULATOR_CLEAN_PERIOD", DEFAULT_CLEAN_PERIOD))),
        ("JOB_TERMINATE_INTERVAL",
         "%g" % env_float("LSF_EMULATOR_TERMINATE_INTERVAL", 10.0)),
        ("MAX_JOB_ARRAY_SIZE", max_job_array_size()),
        ("SUB_TRY_INTERVAL", "%g" % env_float("LSF_EMULATOR_SUB_TRY_INTERVAL",
                                               SUB_TRY_INTERVAL)),
    ]


def main_bparams(argv):
    rc = 0
    try:
        rc = _bparams(argv)
        return rc
    finally:
        log_call("bparams", argv, rc)


def _bparams(argv):
    usage = "Usage: bparams [-a] [-l]\n       bparams [-h | -V]\n"
    flags = set()
    for word in argv:
        if word in ("-h", "-help"):
            sys.stderr.write(usage)
            return 0
        if word == "-V":
            sys.stderr.write("IBM Spectrum LSF 10.1 (LSF emulator for tests)\n")
            return 0
        if word not in ("-a", "-l"):
            sys.stderr.write("bparams: illegal option -- %s\n%s" % (word.lstrip("-"), usage))
            return 255
        flags.add(word)
    if os.environ.get("LSF_EMULATOR_FAIL_BPARAMS", "") not in ("", "0"):
        sys.stderr.write("LSF is down. Please wait...\nbatch daemon not responding\n")
        return 255
    if "-a" in flags or "-l" in flags:
        # every parameter as NAME = value, one a line (the MAX_JOB_ARRAY_SIZE = 1000 line
        # is what tools read from "bparams -a")
        lines = ["lsb.params configuration at %s" % time.ctime()]
        lines += ["    %s = %s" % (name, value) for name, value in lsb_params()]
    else:
        lines = ["Default Queues:  %s" % QUEUE,
                 "MBD_SLEEP_TIME used for calculations:  %d seconds" % MBD_SLEEP_TIME,
                 "Job Checking Interval:  %d seconds" % SBD_SLEEP_TIME,
                 "Job Accepting Interval:  %d seconds" % (JOB_ACCEPT_INTERVAL
                                                          * MBD_SLEEP_TIME)]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0


# ----------------------------------------------------------------------------------------------

def main():
    tool = os.path.basename(sys.argv[0])
    args = sys.argv[1:]
    if tool == "lsf_emulator.py":
        if args[:1] == ["run"] and len(args) == 2:
            return main_runner(args[1:])
        tool, args = (args[0], args[1:]) if args else ("", [])
    entry = {"bsub": main_bsub, "bjobs": main_bjobs, "bkill": main_bkill,
             "bparams": main_bparams}.get(tool)
    if entry is None:
        sys.stderr.write("usage: lsf_emulator.py bsub|bjobs|bkill|bparams ARGS  (or run JOBID)\n")
        return 2
    return entry(args)


if __name__ == "__main__":
    sys.exit(main())
