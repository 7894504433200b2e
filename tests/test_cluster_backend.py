"""The cluster backend driven directly, with fake Slurm commands (small sh scripts first on
PATH), for orders of events a real scheduler produces only now and then.

Here: on Ctrl-C, a job script that records the SIGTERM of the cancel (exit status 143) before
the launcher looks must still count as killed by us, while a job that had ended on its own
before the cancel keeps its own exit status.
"""

import os
import sys

import pytest

import hpsearch

# sbatch: hands out ids and remembers each job's script; squeue: every job RUNNING; scancel:
# like a job script dying of the cancel's SIGTERM, writes 143 into each cancelled job's exit
# file before it returns.
FAKE_SBATCH = r"""#!/bin/sh
D=$(dirname "$0")
n=$(cat "$D/next_id" 2>/dev/null || echo 100)
echo $((n + 1)) > "$D/next_id"
for a; do case "$a" in *.sh) script=$a;; esac; done
echo "$n $script" >> "$D/jobs"
echo "$n"
"""
FAKE_SQUEUE = r"""#!/bin/sh
awk '{ print $1 "|RUNNING|None" }' "$(dirname "$0")/jobs"
"""
FAKE_SCANCEL = r"""#!/bin/sh
D=$(dirname "$0")
for id; do
  script=$(awk -v id="$id" '$1 == id { print $2 }' "$D/jobs")
  echo 143 > "${script%.sh}.a1.exit"   # what the job script of attempt 1 writes
done
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("squeue", FAKE_SQUEUE),
                       ("scancel", FAKE_SCANCEL)):
        path = bin_dir / name
        path.write_text(text)
        path.chmod(0o755)
    monkeypatch.setenv("PATH", "%s%s%s" % (bin_dir, os.pathsep, os.environ["PATH"]))
    return bin_dir


def submitted_runs(tmp_path, n):
    args = hpsearch.build_parser().parse_args([
        "--grid_module=none", "--run_cluster", "--scheduler=slurm", "--slurm_gres=",
        "--poll_interval=0.1"])
    folder = hpsearch.SearchFolder(str(tmp_path / "search"))
    os.makedirs(folder.path)
    folder.prepare()
    backend = hpsearch.ClusterBackend(hpsearch.Slurm(args), folder, str(tmp_path), n, 0.1)
    runs = []
    for i in range(n):
        name = "sim_test_%d" % (i + 1)
        out_dir = os.path.join(folder.path, name)
        run = hpsearch.Run(i, name, {"seed": i}, [sys.executable, "train.py",
                                                   "--out_dir=" + out_dir], out_dir)
        assert backend.slot() is not None
        backend.start(run, {})
        runs.append(run)
    backend.flush()
    assert len(backend.active) == n
    return folder, backend, runs


def test_job_that_records_the_cancel_counts_as_killed_one_that_ended_before_keeps_its_status(
        tmp_path, fake_slurm):
    folder, backend, (ended_before, cancelled) = submitted_runs(tmp_path, 2)
    with open(folder.job_file(ended_before, ".exit"), "w") as f:
        f.write("0\n")  # finished on its own just before Ctrl-C, not yet noticed
    backend.stop(grace=0)
    assert os.path.exists(folder.job_file(cancelled, ".exit")), "the fake scancel did not run"
    ended = {run.name: run for run in backend.wait(0)}
    assert set(ended) == {ended_before.name, cancelled.name}
    assert (cancelled.killed, cancelled.reason) == (True, "cancelled by hpsearch")
    assert cancelled.exit_code is None
    assert (ended_before.killed, ended_before.exit_code) == (False, 0)
