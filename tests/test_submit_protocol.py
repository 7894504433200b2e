"""Exactly once on a cluster, step by step, with fake scheduler commands: the job script's
claim of its attempt, the journal line before each submission, and what --resume does with a
submission the launcher did not live to see through. (tests/test_lsf_exactly_once.py and
tests/integration/test_exactly_once.py kill real launchers at random moments.)
"""

import json
import os
import subprocess
import sys

import pytest

import hpsearch

# sbatch: hands out ids and remembers each job's name; it runs nothing. squeue --name=...:
# the jobs of those names that the file "listed" names (one "id name" line each).
FAKE_SBATCH = r"""#!/bin/sh
D=$(dirname "$0")
n=$(cat "$D/next_id" 2>/dev/null || echo 100)
echo $((n + 1)) > "$D/next_id"
for a; do case "$a" in --job-name=*) name=${a#--job-name=};; esac; done
echo "$n $name" >> "$D/submitted"
echo "$n"
"""
FAKE_SQUEUE = r"""#!/bin/sh
D=$(dirname "$0")
echo "$*" >> "$D/squeue.calls"
[ -f "$D/listed" ] && awk '{ print $1 "|" $2 }' "$D/listed"
exit 0
"""

TRAIN = "import os, sys; open(os.path.join(%r, 'ran'), 'a').write('x'); os.makedirs(%r)\n"


@pytest.fixture
def cluster(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("sbatch", FAKE_SBATCH), ("squeue", FAKE_SQUEUE)):
        path = bin_dir / name
        path.write_text(text)
        path.chmod(0o755)
    monkeypatch.setenv("PATH", "%s%s%s" % (bin_dir, os.pathsep, os.environ["PATH"]))
    args = hpsearch.build_parser().parse_args([
        "--grid_module=none", "--run_cluster", "--scheduler=slurm", "--slurm_gres="])
    folder = hpsearch.SearchFolder(str(tmp_path / "search"))
    os.makedirs(folder.path)
    folder.prepare()
    folder.search_id = "0123456789ab"
    scheduler = hpsearch.Slurm(args)
    out_dir = os.path.join(folder.path, "sim_test_1")
    script = tmp_path / "train.py"
    script.write_text(TRAIN % (str(tmp_path), out_dir))
    run = hpsearch.Run(0, "sim_test_1", {}, [sys.executable, str(script),
                                             "--out_dir=" + out_dir], out_dir)

    class Cluster(object):
        pass
    c = Cluster()
    c.bin, c.folder, c.scheduler, c.run, c.tmp = str(bin_dir), folder, scheduler, run, tmp_path
    c.backend = lambda **kw: hpsearch.ClusterBackend(scheduler, folder, str(tmp_path), 4, 30,
                                                     **kw)
    return c


def run_job_script(cluster, *args):
    """Run the job script as the scheduler would; ``(exit status, stderr)``."""
    proc = subprocess.Popen(["/bin/sh", cluster.folder.job_file(cluster.run, ".sh")] + list(args),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            universal_newlines=True)
    _, err = proc.communicate(timeout=30)
    return proc.returncode, err


def times_ran(cluster):
    path = str(cluster.tmp / "ran")
    return len(open(path).read()) if os.path.exists(path) else 0


def journal(folder):
    with open(folder.journal) as f:
        return [json.loads(line) for line in f]


def test_the_journal_names_the_job_before_it_is_submitted(cluster):
    backend = cluster.backend()
    backend.start(cluster.run, {})
    first, second = journal(cluster.folder)
    name = "sim_test_1-a1-" + hpsearch.job_name_tag(cluster.folder.identity())
    assert first["state"] == "submitting" and "job_id" not in first
    assert (first["job_name"], first["attempt"]) == (name, 1)
    assert first["folder"] == cluster.folder.identity()
    assert (second["state"], second["job_id"], second["job_name"]) == ("running", "100", name)
    with open(os.path.join(cluster.bin, "submitted")) as f:
        assert f.read().split() == ["100", name]


def test_a_job_runs_its_attempt_once_and_never_again(cluster):
    cluster.backend().start(cluster.run, {})
    assert run_job_script(cluster)[0] == 0
    assert times_ran(cluster) == 1
    assert cluster.folder.recorded_exit_status(cluster.run) == 0
    code, err = run_job_script(cluster)   # the same job started again (a requeue)
    assert (code, times_ran(cluster)) == (0, 1)
    assert "already started" in err


def test_a_called_off_attempt_never_starts(cluster):
    cluster.backend().start(cluster.run, {})
    assert cluster.folder.call_off(cluster.run, 1)
    code, err = run_job_script(cluster)
    assert (code, times_ran(cluster)) == (0, 0)
    assert "called off" in err
    assert cluster.folder.recorded_exit_status(cluster.run) is None


def test_a_stale_array_task_of_an_earlier_attempt_does_not_run_the_new_one(cluster):
    backend = cluster.backend(use_array=True)
    backend.start(cluster.run, {})
    backend.flush()
    cluster.run.attempt = 2          # tried again: attempt 1 is called off as it starts
    backend.start(cluster.run, {})
    assert cluster.folder.called_off(cluster.run, 1)
    code, err = run_job_script(cluster, "1")   # attempt 1's array task, starting late
    assert (code, times_ran(cluster)) == (0, 0)
    assert run_job_script(cluster, "2")[0] == 0
    assert times_ran(cluster) == 1


def test_an_exit_status_of_another_attempt_is_not_taken(cluster):
    run = cluster.run
    with open(cluster.folder.job_file(run, ".exit"), "w") as f:
        f.write("3\n")
    run.attempt = 2
    assert cluster.folder.recorded_exit_status(run) is None
    run.attempt = 1
    assert cluster.folder.recorded_exit_status(run) == 3


def entries_after_a_crash_in_the_submit_window(cluster):
    """The journal as a launcher killed while ``sbatch`` ran leaves it."""
    run, folder = cluster.run, cluster.folder
    name = "sim_test_1-a1-" + hpsearch.job_name_tag(folder.identity())
    folder.log_state(run, hpsearch.SUBMITTING, job_name=name, folder=folder.identity())
    return name, folder.read_journal()


def reattach(cluster, journal_entries):
    record = {"format": hpsearch.RECORD_FORMAT, "runs": []}
    owner = hpsearch.JournalOwner(cluster.folder, record)
    return hpsearch.reattach_jobs(cluster.scheduler, cluster.folder, [cluster.run],
                                  journal_entries, owner)


def test_resume_reattaches_a_submission_it_finds_by_name(cluster):
    name, entries = entries_after_a_crash_in_the_submit_window(cluster)
    with open(os.path.join(cluster.bin, "listed"), "w") as f:
        f.write("4242 %s\n4243 someone-elses-job\n" % name)
    assert reattach(cluster, entries) == {cluster.run.name: "4242"}
    assert not os.path.exists(cluster.folder.claim_path(cluster.run, 1))
    with open(os.path.join(cluster.bin, "squeue.calls")) as f:
        assert "--name=%s" % name in f.read()


def test_resume_follows_the_attempt_the_journal_names(cluster):
    run, folder = cluster.run, cluster.folder
    run.attempt = 2                      # the launcher died submitting the second attempt
    _, entries = entries_after_a_crash_in_the_submit_window(cluster)
    run.attempt = 1                      # as the resume's plan has it before the journal
    assert reattach(cluster, entries) == {}
    assert run.attempt == 2 and folder.called_off(run, 2) and not folder.called_off(run, 1)


def test_resume_tells_a_reattached_run_where_its_job_logs(cluster):
    """The scheduler's log of a job still going reaches its run's folder after a resume as it
    would have without one: the resumed launcher looks in the same place."""
    run = cluster.run
    cluster.backend().start(run, {})
    submitted_with, run.task_log = run.task_log, None
    assert submitted_with
    assert reattach(cluster, cluster.folder.read_journal()) == {run.name: "100"}
    assert run.task_log == submitted_with


def test_a_job_attached_on_resume_is_followed_and_journaled(cluster):
    backend = cluster.backend()
    backend.attach(cluster.run, "4242")
    assert backend.running() == 1 and cluster.run.state == "running"
    assert [r.name for r in backend.going()] == [cluster.run.name]
    last = journal(cluster.folder)[-1]
    assert (last["state"], last["job_id"], last["folder"]) == (
        "running", "4242", cluster.folder.identity())


def test_resume_calls_off_a_submission_the_scheduler_does_not_know(cluster):
    _, entries = entries_after_a_crash_in_the_submit_window(cluster)
    assert reattach(cluster, entries) == {}
    assert cluster.folder.called_off(cluster.run, 1)
    # should the lost submission still go through, its job exits without running
    cluster.backend().start(cluster.run, {})  # writes attempt 1's job script
    assert run_job_script(cluster)[0] == 0 and times_ran(cluster) == 0


def test_resume_keeps_the_claim_of_an_attempt_it_called_off(cluster, monkeypatch):
    """The called-off attempt runs again as the next one; its claim stays, so that its lost
    submission, should it still appear, never starts."""
    _, entries = entries_after_a_crash_in_the_submit_window(cluster)
    assert reattach(cluster, entries) == {}
    monkeypatch.setattr(hpsearch, "earlier_outcome", lambda *a: (False, None, None, None, False))
    assert hpsearch.restore_states(None, cluster.folder, [cluster.run], entries, {}) == []
    assert cluster.run.attempt == 2 and cluster.folder.called_off(cluster.run, 1)


def test_a_later_resume_does_not_attach_to_an_attempt_called_off_before(cluster):
    name, entries = entries_after_a_crash_in_the_submit_window(cluster)
    assert reattach(cluster, entries) == {}        # a resume calls it off, then dies
    with open(os.path.join(cluster.bin, "listed"), "w") as f:
        f.write("4242 %s\n" % name)              # the lost submission went through after all
    assert reattach(cluster, entries) == {}        # its job will refuse to start: not ours


def test_resume_asks_again_when_the_job_started_after_the_first_look(cluster, monkeypatch):
    name, entries = entries_after_a_crash_in_the_submit_window(cluster)
    # not listed at the first look; then the submission went through and the job claimed
    # its attempt before the launcher could call it off
    os.mkdir(cluster.folder.claim_path(cluster.run, 1))
    calls = []

    def find_later(scheduler, names):
        calls.append(sorted(names))
        return {} if len(calls) == 1 else {name: "777"}
    monkeypatch.setattr(hpsearch, "find_jobs", find_later)
    assert reattach(cluster, entries) == {cluster.run.name: "777"}
    assert calls == [[name], [name]]


def test_a_copied_folder_leaves_the_originals_jobs_alone(cluster):
    run, folder = cluster.run, cluster.folder
    folder.log_state(run, hpsearch.RUNNING, job_id="555", job_name="sim_test_1-a1-abcdef",
                     folder="other-search.1234")
    assert reattach(cluster, folder.read_journal()) == {}
    assert not os.path.exists(os.path.join(cluster.bin, "squeue.calls"))
    assert not os.path.exists(folder.claim_path(run, 1))
