"""Exactly once on LSF (emulator), also across kill -9 of the launcher in the submit window.

The harness is tests/exactly_once.py (tests/integration/test_exactly_once.py runs the same on
real Slurm and Grid Engine). Each bench: six configs (a training script that logs start/end to
a ledger and refuses an existing folder), hpsearch --run_cluster --scheduler=lsf --num_jobs=4
--poll_interval=0.5, and a bsub that sleeps 0.3 s before and 0.3 s after the real (emulated)
one. Asserted at the end of every test: no config ever ran twice at the same time, each
started exactly once, each has exactly one ``finished`` row (exit code 0) agreeing with the
summary in its folder, and the final --resume exited 0.

* test_exactly_once_across_kill_9_in_the_submit_window: seeded random kill plans (a new
  search, then 1-3 resumes, each killed with SIGKILL at a moment drawn from the seed), plain
  jobs and --array, all side by side. Replay one: ``EXACTLY_ONCE_SEEDS=<seed> python -m pytest
  tests/test_lsf_exactly_once.py -k across -s`` (the plan and what happened are printed).
* test_resume_killed_right_after_it_called_off_a_cut_short_submission: a resume is killed just
  after it called off a submission that a killed launcher cut short, whose bsub then lands
  (the resume is held there by a full stdout pipe: its first message comes right after).
* test_stale_job_of_a_called_off_attempt_never_runs_its_config: the cut-short submission of
  attempt 1 lands and its job starts while a resume submits attempt 2 (LSF runs the job's
  command line, so the job reads jobs/<run>.sh only when it starts).
* test_resume_while_a_job_writes_its_exit_status: a resume starts while a job is between
  writing <run>.a<k>.exit.tmp and renaming it (``mv`` slowed down on the jobs' PATH).
"""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import exactly_once as eo  # noqa: E402
import lsf_helpers as lh  # noqa: E402


class LsfAdapter(object):
    """The emulator as exactly_once.Bench needs it."""

    submit_tool = "bsub"
    real_submit = os.path.join(lh.EMULATOR_BIN, "bsub")
    flags = ["--scheduler=lsf"]

    def __init__(self, tmp_path):
        self.emulator = lh.LsfEmulator(tmp_path)

    def env(self):
        return dict(self.emulator.env)

    @staticmethod
    def parse_id(out):
        if out.startswith("Job <") and ">" in out:
            job = out[len("Job <"):out.index(">")]
            return job if job.isdigit() else None
        return None

    def active(self, ids):
        ids = {int(i) for i in ids}
        return [key for key, el in self.emulator.elements().items()
                if int(key.split("[")[0]) in ids and el["stat"] not in ("DONE", "EXIT")]

    def cancel(self, ids):
        if self.active(ids):
            self.emulator.run("bkill", "-r", *sorted(set(ids)))
        self.emulator.cleanup()


@pytest.fixture
def bench_for(tmp_path):
    benches = eo.Benches(tmp_path, lambda n: LsfAdapter(os.path.join(str(tmp_path), "e%d" % n)))
    yield benches
    benches.cleanup()


def test_exactly_once_across_kill_9_in_the_submit_window(bench_for):
    """Plain jobs (seeds 4, 101, 103) and --array (seeds 4, 2, 101), all side by side."""
    eo.run_seeds(lambda array: bench_for(configs=6, sleep=0.3, pre=0.3, post=0.3, array=array),
                 eo.scenarios(jobs=[4, 101, 103], array=[4, 2, 101]))


def test_resume_killed_right_after_it_called_off_a_cut_short_submission(bench_for):
    bench = bench_for(configs=3, sleep=0.3, pre=0.3, post=0.3)
    eo.report("lsf called-off", None, "A killed in bsub #1, B held after call-off",
              eo.run_resume_killed_after_call_off(bench))


def test_stale_job_of_a_called_off_attempt_never_runs_its_config(bench_for):
    bench = bench_for(configs=2, sleep=1.5, pre=0.3, post=0.3)
    eo.report("lsf stale-attempt", None, "A killed in bsub #1, its job lands while B submits "
              "attempt 2", eo.run_stale_job_of_an_earlier_attempt(bench))


def test_resume_while_a_job_writes_its_exit_status(bench_for):
    bench = bench_for(configs=2, sleep=0.2, pre=0.2, post=0.2)
    eo.report("lsf exit-status", None, "A killed while a job's mv of its exit status is slow",
              eo.run_resume_while_a_job_writes_its_exit_status(bench))
