"""Exactly once on a REAL Slurm and a REAL Grid Engine, also across kill -9 of the launcher in
the submit window (tests/exactly_once.py has the harness; tests/test_lsf_exactly_once.py runs
the same tests on the LSF emulator, where each is described).

Start the schedulers first (as root; CI does it in .ci/run): ``bash tests/cluster/slurm-up.sh``
and ``bash tests/cluster/sge-up.sh``. Without one, its tests are skipped saying why; with the
environment variable ``CI`` set they FAIL instead. About 50 s for both schedulers.

Each test gets its own folders: a training script that appends start/end events (config id,
time, pid, job id) to a ledger, writes its summary and refuses an existing output folder, and a
wrapper for sbatch / qsub first on the launcher's PATH that copies the script at once (as the
real tools read and spool it), then sleeps 0.4 s before and 0.4 s after the real tool.
hpsearch --run_cluster --num_jobs=4 --poll_interval=1 (plain jobs, and --array) runs six
configs; the launcher alone is killed with SIGKILL (its submit command goes on), resumed (and
killed again), and a final --resume must end the search with exit 0. Asserted: no config ever
ran twice at the same time, each started exactly once, each has exactly one finished row
(exit code 0) agreeing with the summary in its folder. Replay one random scenario:
``EXACTLY_ONCE_SEEDS=<seed> python3 -m pytest tests/integration/test_exactly_once.py -k
'across and slurm' -s``. Every job ever submitted (ids from the wrapper's log) is cancelled
when a test ends.
"""

import os
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import exactly_once as eo  # noqa: E402
from test_sge import grid_engine_problem  # noqa: E402
from test_slurm import slurm_problem  # noqa: E402


def call(argv, timeout=30):
    """``(returncode, stdout, stderr)`` (Python 3.6: no capture_output)."""
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          stdin=subprocess.DEVNULL, universal_newlines=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


class SlurmAdapter(object):
    submit_tool = "sbatch"
    flags = ["--scheduler=slurm", "--slurm_mem=100M", "--slurm_gres="]
    ACTIVE = ("PENDING", "RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "REQUEUED",
              "RESIZING", "SIGNALING", "STAGE_OUT")

    def __init__(self):
        self.real_submit = shutil.which("sbatch")

    @staticmethod
    def env():
        # the test may itself run inside a Slurm job: none of that may reach hpsearch's jobs
        env = {k: None for k in os.environ
               if k.startswith(("SLURM_", "SBATCH_")) and k != "SLURM_CONF"}
        env["EXACTLY_ONCE_SNAPSHOT"] = "1"   # sbatch reads the script at once
        return env

    @staticmethod
    def parse_id(out):
        first = out.strip().split(";")[0]
        return first if first.isdigit() else None

    def active(self, ids):
        if not ids:
            return []
        code, out, err = call(["squeue", "--noheader", "--array", "--states=all",
                               "--jobs=" + ",".join(sorted(set(ids))), "--format=%i|%T"])
        if code != 0:
            return [] if "Invalid job id" in err else ["squeue failed: %s" % err.strip()]
        return [l for l in out.split() if "|" in l and l.split("|")[1] in self.ACTIVE]

    @staticmethod
    def cancel(ids):
        call(["scancel"] + sorted(set(ids)))


class SgeAdapter(object):
    submit_tool = "qsub"
    flags = ["--scheduler=sge"]

    def __init__(self):
        self.real_submit = shutil.which("qsub")

    @staticmethod
    def env():
        return {"EXACTLY_ONCE_SNAPSHOT": "1"}   # qsub reads (spools) the script at once

    @staticmethod
    def parse_id(out):
        first = out.strip().split(".")[0]   # -terse: "54", or "56.1-6:1" for an array
        return first if first.isdigit() else None

    @staticmethod
    def active(ids):
        if not ids:
            return []
        code, out, err = call(["qstat", "-u", "*"])
        if code != 0:
            return ["qstat failed: %s" % err.strip()]
        listed = {l.split()[0] for l in out.splitlines()[2:] if l.split()}
        return sorted(listed & set(ids))

    @staticmethod
    def cancel(ids):
        call(["qdel"] + sorted(set(ids)))


ADAPTERS = {"slurm": (SlurmAdapter, lambda: slurm_problem()),
            "sge": (SgeAdapter, lambda: grid_engine_problem())}
SETTINGS = dict(configs=6, sleep=0.5, pre=0.4, post=0.4, poll_interval=1)


@pytest.fixture(params=sorted(ADAPTERS))
def scheduler(request):
    adapter, problem = ADAPTERS[request.param]
    why = problem()
    if why:
        if os.environ.get("CI"):
            pytest.fail("CI is set but the %s tests cannot run: %s" % (request.param, why),
                        pytrace=False)
        pytest.skip(why)
    return request.param


@pytest.fixture
def bench_for(tmp_path, scheduler):
    benches = eo.Benches(tmp_path, lambda n: ADAPTERS[scheduler][0](), **SETTINGS)
    yield benches
    benches.cleanup()   # never leave jobs of ours behind on the shared scheduler


def test_exactly_once_across_kill_9_in_the_submit_window(bench_for, scheduler):
    """Plain jobs (seeds 4, 101) and --array (seeds 4, 2), side by side on the one cluster."""
    eo.run_seeds(lambda array: bench_for(array=array),
                 eo.scenarios(jobs=[4, 101], array=[4, 2]))


def test_resume_killed_right_after_it_called_off_a_cut_short_submission(bench_for, scheduler):
    bench = bench_for(configs=3)
    eo.report("%s called-off" % scheduler, None, "A killed in the first submit, B held after "
              "its call-off", eo.run_resume_killed_after_call_off(bench, final_timeout=150))


def test_stale_job_of_a_called_off_attempt_never_runs_its_config(bench_for, scheduler):
    bench = bench_for(configs=2, sleep=1.5)
    eo.report("%s stale-attempt" % scheduler, None, "A killed in the first submit, its job "
              "lands while B submits attempt 2",
              eo.run_stale_job_of_an_earlier_attempt(bench, final_timeout=150))


def test_resume_while_a_job_writes_its_exit_status(bench_for, scheduler):
    bench = bench_for(configs=2, sleep=0.2)
    eo.report("%s exit-status" % scheduler, None, "A killed while a job's mv of its exit status "
              "is slow", eo.run_resume_while_a_job_writes_its_exit_status(bench,
                                                                          final_timeout=150))
