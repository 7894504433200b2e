"""The cluster's limits, with fake Slurm commands (small sh scripts first on PATH): the largest
job array read from ``scontrol show config``, an array refused all the same split in two, a
per-user limit that holds submissions instead of failing runs, a submission that fails for good
recorded (never lost), and runs sharing jobs (--runs_per_job). tests/integration/ does the same
against the real Slurm; these pin it where no Slurm runs."""

import argparse
import os
import re
import sys

import pytest

import hpsearch

# sbatch: refuses when the file "refuse" holds a message (printed as Slurm prints it), or an
# array of more than $MAX_TASKS tasks; else hands out an id and logs its arguments.
FAKE_SBATCH = r"""#!/bin/sh
D=$(dirname "$0")
echo "$*" >> "$D/sbatch.calls"
if [ -s "$D/refuse" ]; then
    echo "sbatch: error: Batch job submission failed: $(cat "$D/refuse")" >&2
    exit 1
fi
for a; do
  case "$a" in --array=0-*)
    last=${a#--array=0-}; last=${last%%%*}
    if [ "$last" -ge "${MAX_TASKS:-1000}" ]; then
      echo "sbatch: error: Batch job submission failed: Invalid job array specification" >&2
      exit 1
    fi;;
  esac
done
n=$(cat "$D/next_id" 2>/dev/null || echo 100)
echo $((n + 1)) > "$D/next_id"
echo "$n"
"""
FAKE_SQUEUE = r"""#!/bin/sh
exit 0
"""
FAKE_SCONTROL = r"""#!/bin/sh
[ -n "$MAX_ARRAY" ] || exit 1
echo "MaxArraySize            = $MAX_ARRAY"
echo "MaxJobCount             = 10000"
"""
LIMIT = ("Job violates accounting/QOS policy (job submit limit, user's size and/or time "
         "limits)")


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("squeue", FAKE_SQUEUE),
                       ("scontrol", FAKE_SCONTROL)):
        path = bin_dir / name
        path.write_text(text)
        path.chmod(0o755)
    monkeypatch.setenv("PATH", "%s%s%s" % (bin_dir, os.pathsep, os.environ["PATH"]))
    monkeypatch.delenv("MAX_ARRAY", raising=False)
    monkeypatch.delenv("MAX_TASKS", raising=False)
    return bin_dir


def sbatch_calls(bin_dir):
    path = str(bin_dir / "sbatch.calls")
    return open(path).read().splitlines() if os.path.exists(path) else []


def backend_and_runs(tmp_path, n, num_jobs=100, **kwargs):
    args = hpsearch.build_parser().parse_args([
        "--grid_module=none", "--run_cluster", "--scheduler=slurm", "--slurm_gres="])
    folder = hpsearch.SearchFolder(str(tmp_path / "search"))
    os.makedirs(folder.path)
    folder.prepare()
    backend = hpsearch.ClusterBackend(hpsearch.Slurm(args), folder, str(tmp_path), num_jobs,
                                      0.1, **kwargs)
    runs = []
    for i in range(n):
        name = "sim_test_%02d" % (i + 1)
        out_dir = os.path.join(folder.path, name)
        runs.append(hpsearch.Run(i, name, {"seed": i}, [sys.executable, "train.py",
                                                         "--out_dir=" + out_dir], out_dir))
    return folder, backend, runs


def start_all(backend, runs):
    started = []
    for run in runs:
        if backend.slot() is None:
            break
        backend.start(run, {})
        started.append(run)
    backend.flush()
    return started


def test_the_largest_array_is_read_from_the_cluster(tmp_path, fake_slurm, monkeypatch):
    monkeypatch.setenv("MAX_ARRAY", "4")
    folder, backend, runs = backend_and_runs(tmp_path, 10, use_array=True)
    assert backend.scheduler.array_limit() == 4
    start_all(backend, runs)
    arrays = [re.search(r"--array=0-(\d+)%", c).group(1) for c in sbatch_calls(fake_slurm)]
    assert arrays == ["3", "3", "1"]   # 4 + 4 + 2 tasks
    assert len(backend.active) == 10
    monkeypatch.delenv("MAX_ARRAY")    # the query fails: Slurm's default
    assert backend.scheduler.array_limit() == hpsearch.Slurm.max_array


def test_an_array_refused_all_the_same_is_split_until_it_goes(tmp_path, fake_slurm,
                                                              monkeypatch, capsys):
    monkeypatch.setenv("MAX_TASKS", "3")   # the cluster allows 3, says nothing of it
    folder, backend, runs = backend_and_runs(tmp_path, 10, use_array=True)
    start_all(backend, runs)
    sizes = [int(re.search(r"--array=0-(\d+)%", c).group(1)) + 1
             for c in sbatch_calls(fake_slurm)]
    # refused at 10 and at 5; from then on arrays of at most 2 (half the last refused)
    assert sizes == [10, 5, 2, 2, 2, 2, 2], sizes
    assert len(backend.active) == 10 and not backend.wait(0)
    assert "submitting arrays of at most 2" in capsys.readouterr().err


def test_a_per_user_limit_holds_submissions_and_never_fails_a_run(tmp_path, fake_slurm,
                                                                  capsys):
    folder, backend, runs = backend_and_runs(tmp_path, 4)
    (fake_slurm / "refuse").write_text(LIMIT)
    start_all(backend, runs[:1])
    assert backend.hold_until is not None and backend.slot() is None
    assert not backend.wait(0)                      # nothing ended: nothing failed
    assert backend.running() == 1
    err = capsys.readouterr().err
    assert err.count("takes no more jobs for now") == 1 and "job submit limit" in err
    (fake_slurm / "refuse").write_text("")          # room again; the back-off expires
    backend.hold_until = hpsearch.now()
    assert not backend.wait(0)
    assert [r.name for r in backend.active.values()] == [runs[0].name]
    assert backend.slot() is not None


def test_a_submission_that_fails_for_good_is_recorded_not_lost(tmp_path, fake_slurm,
                                                               monkeypatch):
    monkeypatch.setattr(hpsearch.ClusterBackend, "SUBMIT_TRIES", 1)
    folder, backend, runs = backend_and_runs(tmp_path, 1)
    (fake_slurm / "refuse").write_text("Invalid account or account/partition combination")
    start_all(backend, runs)
    assert backend.running() == 1                   # the search loop goes on for it
    (ended,) = backend.wait(0)
    assert ended.reason.startswith("submission failed: sbatch exit 1: sbatch: error: ")
    assert "Invalid account" in ended.reason and backend.running() == 0


def test_a_failing_submission_is_tried_again_with_back_off_and_no_wait_after_the_last(
        tmp_path, fake_slurm, monkeypatch, capsys):
    waits = []
    monkeypatch.setattr(hpsearch.ClusterBackend, "SUBMIT_TRIES", 3)
    # time.sleep is the time module's: subprocess's own short polls (Python 3.7) land here too
    monkeypatch.setattr(hpsearch.time, "sleep", waits.append)
    folder, backend, runs = backend_and_runs(tmp_path, 1)
    (fake_slurm / "refuse").write_text("Invalid account or account/partition combination")
    start_all(backend, runs)
    assert len(sbatch_calls(fake_slurm)) == 3 and [w for w in waits if w >= 0.5] == [1.0, 2.0]
    assert capsys.readouterr().err.count("trying again in") == 2
    (ended,) = backend.wait(0)
    assert ended.reason.startswith("submission failed: sbatch exit 1: ")


def test_runs_per_job_shares_one_job_per_k_runs(tmp_path, fake_slurm):
    folder, backend, runs = backend_and_runs(tmp_path, 7, num_jobs=2, runs_per_job=3)
    started = start_all(backend, runs)
    assert len(started) == 6                        # 2 jobs of 3: --num_jobs counts jobs
    assert len(sbatch_calls(fake_slurm)) == 2
    assert [r.job_id for r in started] == ["100"] * 3 + ["101"] * 3
    script = sbatch_calls(fake_slurm)[0].split()[-1]
    assert script.endswith(".job.sh")
    with open(script) as f:
        text = f.read()
    assert "while read -r name attempt" in text
    with open(os.path.join(folder.jobs, os.path.basename(script)[:-len(".job.sh")] + ".runs")) \
            as f:
        assert f.read().split() == [w for r in started[:3] for w in (r.name, "1")]
    with open(folder.job_file(started[0], ".sh")) as f:
        assert hpsearch.shlex.quote(folder.stop_path(started[0])) in f.read()


@pytest.mark.parametrize("runs_per_job", [1, 2])
def test_early_stopping_cancels_a_job_of_its_own_and_leaves_a_stop_file_in_a_shared_one(
        tmp_path, fake_slurm, monkeypatch, runs_per_job):
    folder, backend, runs = backend_and_runs(tmp_path, 2, runs_per_job=runs_per_job)
    started = start_all(backend, runs)
    asked = []
    monkeypatch.setattr(hpsearch, "run_scheduler", lambda argv, **kw: asked.append(argv) or (
        0, "", ""))
    backend.end_run(started[0], "early stopping at step 3")
    stop_file = folder.stop_path(started[0])
    if runs_per_job == 1:   # its own job: cancelled, nothing else touched
        assert asked == [["scancel", started[0].job_id]] and not os.path.exists(stop_file)
    else:                   # the job goes on with its next run
        assert asked == [] and open(stop_file).read() == "early stopping at step 3\n"
    assert started[0].killed and started[0].reason == "early stopping at step 3"


def test_only_the_run_that_gets_its_jobs_log_waits_for_a_late_one(tmp_path, fake_slurm,
                                                                  monkeypatch):
    """LSF writes a job's report after the job ends, into the log of the job's last run:
    only that run waits for it; the others of a shared job never get one."""
    folder, backend, runs = backend_and_runs(tmp_path, 2, runs_per_job=2)
    monkeypatch.setattr(backend.scheduler, "late_log", True)
    started = start_all(backend, runs)
    assert started[0].task_log is None and started[1].task_log
    for run in started:
        with open(folder.job_file(run, ".exit"), "w") as f:
            f.write("0\n")
    assert sorted(r.name for r in backend.wait(0)) == [r.name for r in started]
    assert list(backend.late_logs) == [started[1].name]


@pytest.mark.parametrize("queries,said", [(1, "1 queue query"), (2, "2 queue queries")])
def test_the_scheduler_calls_are_said_at_the_end(tmp_path, fake_slurm, capsys, queries, said):
    folder, backend, runs = backend_and_runs(tmp_path, 1)
    start_all(backend, runs)
    backend.queries = queries
    backend.finish_up()
    assert "hpsearch: slurm: 1 sbatch call(s) for 1 job(s), %s\n" % said in capsys.readouterr().out


def test_several_arrays_keep_to_num_jobs_together(tmp_path, fake_slurm, monkeypatch):
    """Each array runs up to --num_jobs tasks at once (its %N throttle); where the cluster's
    largest array makes the search several, the next waits for room."""
    monkeypatch.setenv("MAX_ARRAY", "2")
    folder, backend, runs = backend_and_runs(tmp_path, 5, num_jobs=2, use_array=True)
    start_all(backend, runs)
    arrays = lambda: re.findall(r"--array=(\S+)", " ".join(sbatch_calls(fake_slurm)))
    assert arrays() == ["0-1%2"]
    assert backend.running() == 5 and not backend.wait(0)
    hpsearch.atomic_write_text(folder.job_file(runs[0], ".exit"), "0\n")
    assert [r.name for r in backend.wait(0)] == [runs[0].name]
    assert arrays() == ["0-1%2"]                    # one task of the first array still going
    hpsearch.atomic_write_text(folder.job_file(runs[1], ".exit"), "0\n")
    backend.wait(0)
    assert arrays() == ["0-1%2"] * 2
    assert backend.running() == 3


def test_after_a_limit_refusal_no_more_are_tried_than_the_scheduler_took(tmp_path, fake_slurm):
    """Refused with 2 of ours queued: from then on at most 2 at once (no sbatch call that
    would only be refused again) until the back-off expires and a submission tries more."""
    folder, backend, runs = backend_and_runs(tmp_path, 5)
    start_all(backend, runs[:2])
    (fake_slurm / "refuse").write_text(LIMIT)
    start_all(backend, runs[2:3])
    (fake_slurm / "refuse").write_text("")
    calls = len(sbatch_calls(fake_slurm))
    hpsearch.atomic_write_text(folder.job_file(runs[0], ".exit"), "0\n")
    assert [r.name for r in backend.wait(0)] == [runs[0].name]
    assert len(sbatch_calls(fake_slurm)) == calls + 1      # the held run, as one ended
    start_all(backend, runs[3:])
    assert len(sbatch_calls(fake_slurm)) == calls + 1      # 2 going: the limit seen
    assert backend.running() == 4
    backend.limit_seen = (2, hpsearch.now())               # the back-off expires
    backend.wait(0)
    assert len(sbatch_calls(fake_slurm)) == calls + 3
    assert len(backend.active) == 4


@pytest.mark.parametrize("scheduler,answer,limit", [
    (hpsearch.Slurm, "MaxArraySize            = 5001\nMaxJobCount = 9\n", 5001),
    (hpsearch.Lsf, "MAX_JOB_ARRAY_SIZE = 2000\n", 2000),
    (hpsearch.Sge, "max_aj_instances             2000\nmax_aj_tasks                 3000\n", 3000),
    (hpsearch.Sge, "max_aj_tasks                 0\n", hpsearch.Sge.max_array),   # no limit
], ids=["slurm", "lsf", "sge", "sge-unlimited"])
def test_each_scheduler_reads_its_own_array_limit(monkeypatch, scheduler, answer, limit):
    asked = []

    def run_scheduler(argv, **kw):
        asked.append(argv)
        return 0, answer, ""
    monkeypatch.setattr(hpsearch, "run_scheduler", run_scheduler)
    assert scheduler(argparse.Namespace(scheduler_args="")).array_limit() == limit
    assert asked == [list(scheduler.limit_argv)]
