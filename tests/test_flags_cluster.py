"""Cluster flags with fake Slurm commands (no real scheduler): what sbatch is given
(--num_hours, --slurm_*, --scheduler_args, --array's range and throttle), the environment it
runs in (the launcher's own SLURM_* variables scrubbed), --num_jobs without arrays, --detach.

The fake sbatch (a Python script first on PATH) records each call's arguments and Slurm
variables, prints a job id and, while the file ``run_jobs`` is in its folder, starts the job
script in the background as Slurm would (each task of an array with its SLURM_ARRAY_TASK_ID).
The fake squeue lists every job submitted as RUNNING: hpsearch sees a job end by the exit
status its script writes. The fake scancel records its arguments.
"""

import argparse
import json
import os
import subprocess
import sys

import pytest

import hpsearch
from conftest import make_project
from test_flags import interrupt_launcher

FAKE_SBATCH = r'''
import json, os, subprocess, sys
D = os.path.dirname(os.path.abspath(__file__))
args = sys.argv[1:]
with open(os.path.join(D, "next_id"), "a+") as f:
    f.seek(0)
    job = 100 + len(f.read())
    f.write("x")
script = [a for a in args if not a.startswith("--")]
array = [a.split("=", 1)[1] for a in args if a.startswith("--array=")]
slurm = {k: v for k, v in os.environ.items()
         if k.startswith(("SLURM_", "SBATCH_", "SALLOC_", "SRUN_"))}
with open(os.path.join(D, "sbatch.jsonl"), "a") as f:
    f.write(json.dumps({"id": job, "argv": args, "slurm_env": slurm}) + "\n")
if array:
    first, last = array[0].split("%")[0].split("-")
    tasks = [("%d_%d" % (job, k), {"SLURM_ARRAY_TASK_ID": str(k)})
             for k in range(int(first), int(last) + 1)]
else:
    tasks = [(str(job), {})]
with open(os.path.join(D, "queue"), "a") as f:
    f.write("".join(t + "\n" for t, _ in tasks))
if os.path.exists(os.path.join(D, "run_jobs")):
    for _, extra in tasks:
        subprocess.Popen(["/bin/sh"] + script, env=dict(os.environ, **extra),
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
print(job)
'''
FAKE_SQUEUE = r'''
import os, sys
D = os.path.dirname(os.path.abspath(__file__))
with open(os.path.join(D, "queue")) as f:
    sys.stdout.write("".join("%s|RUNNING|None\n" % t for t in f.read().split()))
'''
FAKE_SCANCEL = r'''
import os, sys
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "scancel.args"), "a") as f:
    f.write(" ".join(sys.argv[1:]) + "\n")
'''


class FakeSlurm(object):
    def __init__(self, folder, run_jobs):
        self.bin = str(folder)
        os.makedirs(self.bin)
        for name, text in (("sbatch", FAKE_SBATCH), ("squeue", FAKE_SQUEUE),
                           ("scancel", FAKE_SCANCEL)):
            path = os.path.join(self.bin, name)
            with open(path, "w") as f:
                f.write("#!%s\n%s" % (sys.executable, text))
            os.chmod(path, 0o755)
        if run_jobs:
            open(os.path.join(self.bin, "run_jobs"), "w").close()

    def env(self, **extra):
        env = {"PATH": self.bin + os.pathsep + os.environ["PATH"]}
        # Whatever the test runner has of these must not count as the launcher's own job.
        env.update({k: None for k in os.environ if k.startswith(("SLURM_", "SBATCH_"))})
        env.update(extra)
        return env

    def calls(self):
        path = os.path.join(self.bin, "sbatch.jsonl")
        if not os.path.exists(path):
            return []
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]

    def cancelled(self):
        path = os.path.join(self.bin, "scancel.args")
        return open(path).read().split() if os.path.exists(path) else None


SLURM = ["--run_cluster", "--scheduler=slurm", "--poll_interval=0.2", "--slurm_gres="]


def cluster_search(tmp_path, flags, n=3, run_jobs=True, env=None, sleep=0.0):
    """A search of ``n`` runs through the fake Slurm; ``(project, fake, (rc, out, err))``."""
    project = make_project(tmp_path, grid={"seed": list(range(1, n + 1)), "sleep": [sleep]})
    fake = FakeSlurm(tmp_path / "bin", run_jobs)
    result = project.hpsearch(*(SLURM + list(flags)), visible_gpus=None,
                              env=fake.env(**(env or {})), timeout=60)
    return project, fake, result


def max_in_flight(journal):
    """The most runs the journal has between 'submitting' and their end at one moment."""
    events = []
    for e in journal:
        if e["state"] == "submitting":
            events.append((e["time"], 1))
        elif e["state"] in ("finished", "failed", "killed", "unfinished"):
            events.append((e["time"], -1))
    most = now = 0
    for _, step in sorted(events):
        now += step
        most = max(most, now)
    return most


def test_num_jobs_without_arrays_never_more_jobs_at_once(tmp_path):
    project, fake, (rc, out, err) = cluster_search(tmp_path, ["--num_jobs=2"], n=6,
                                                   sleep=0.4)
    assert rc == 0, (out, err)
    calls = fake.calls()
    assert len(calls) == 6 and not any(a.startswith("--array") for c in calls
                                       for a in c["argv"])
    search = project.search()
    assert set(search.final_states().values()) == {"finished"}
    assert max_in_flight(search.journal()) == 2


def test_sbatch_gets_the_slurm_flags_and_scheduler_args(tmp_path):
    project, fake, (rc, out, err) = cluster_search(tmp_path, [
        "--num_hours=3", "--slurm_mem=2G", "--slurm_gres=gpu:2", "--slurm_partition=short",
        "--slurm_qos=low", "--slurm_constraint=v100", "--scheduler_args=--nice=10 --account=x"],
        n=1)
    assert rc == 0, (out, err)
    (call,) = fake.calls()
    argv = call["argv"]
    for expected in ("--time=3:00:00", "--mem=2G", "--gres=gpu:2", "--partition=short",
                     "--qos=low", "--constraint=v100", "--nice=10", "--account=x"):
        assert expected in argv, argv
    script = argv.index("--account=x") + 1  # --scheduler_args come last before the script
    assert argv[script].endswith(".sh") and argv[:script][-2:] == ["--nice=10", "--account=x"]


def test_empty_slurm_values_are_left_out(tmp_path):
    project, fake, (rc, out, err) = cluster_search(tmp_path, ["--slurm_mem="], n=1)
    assert rc == 0, (out, err)
    argv = fake.calls()[0]["argv"]
    assert not [a for a in argv if a.split("=")[0] in (
        "--mem", "--gres", "--partition", "--qos", "--constraint")], argv
    assert "--time=24:00:00" in argv


def test_array_range_and_throttle(tmp_path):
    project, fake, (rc, out, err) = cluster_search(tmp_path, ["--array", "--num_jobs=3"], n=5)
    assert rc == 0, (out, err)
    (call,) = fake.calls()
    assert [a for a in call["argv"] if a.startswith("--array")] == ["--array=0-4%3"]
    search = project.search()
    assert set(search.final_states().values()) == {"finished"}
    tasks = sorted(e["task"] for e in search.journal() if e["state"] == "running")
    assert tasks == [0, 1, 2, 3, 4]


def test_launcher_slurm_variables_are_scrubbed_from_the_submission(tmp_path):
    own = {"SLURM_JOB_NAME": "launcher", "SLURM_MEM_PER_NODE": "1000", "SBATCH_PARTITION": "x",
           "SRUN_CPUS_PER_TASK": "4", "SALLOC_ACCOUNT": "a", "SLURM_CONF": "/etc/slurm.conf",
           "HPSEARCH_FLAGS_TEST": "kept"}
    project, fake, (rc, out, err) = cluster_search(tmp_path, [], n=1, env=own)
    assert rc == 0, (out, err)
    assert fake.calls()[0]["slurm_env"] == {"SLURM_CONF": "/etc/slurm.conf"}


@pytest.mark.parametrize("detach", [True, False])
def test_ctrl_c_cancels_the_jobs_unless_detach(tmp_path, detach):
    project = make_project(tmp_path, grid={"seed": [1, 2]})
    fake = FakeSlurm(tmp_path / "bin", run_jobs=False)   # jobs stay queued
    search = []

    def both_running():
        search[:] = project.searches()[:1]
        return len(fake.calls()) == 2 and search and list(
            search[0].final_states().values()) == ["running"] * 2
    rc, out, err = interrupt_launcher(
        ["--grid_module=%s" % project.config, "--num_jobs=2"] + SLURM
        + (["--detach"] if detach else []), project.path, both_running, env=fake.env())
    assert rc == 130, (out, err)
    states = search[0].final_states()
    if detach:
        assert fake.cancelled() is None
        assert list(states.values()) == ["running"] * 2
        assert "2 job(s) left to the scheduler" in out + err
    else:
        assert fake.cancelled() == ["100", "101"]
        assert list(states.values()) == ["killed"] * 2
        assert "hpsearch: cancelled 2 job(s) with scancel\n" in out + err   # scancel said 0


def test_squeue_lines_of_folded_array_tasks_are_each_task():
    """squeue folds the pending tasks of an array into one line (``12_[2-9%3]``, steps, lists):
    hpsearch reads one answer per task, so no task counts as gone while it waits."""
    slurm = hpsearch.Slurm(argparse.Namespace(scheduler_args=""))
    jobs = slurm.parse_query(0, "12_[2-5%3]|PENDING|JobArrayTaskLimit\n12_1|RUNNING|None\n"
                                "13_[1-5:2,8]|PENDING|None\n\n14|COMPLETED|None\n", "")
    pending = (hpsearch.JOB_ACTIVE, "PENDING (JobArrayTaskLimit)")
    assert jobs == {"12_2": pending, "12_3": pending, "12_4": pending, "12_5": pending,
                    "12_1": (hpsearch.JOB_ACTIVE, "RUNNING"),
                    "13_1": (hpsearch.JOB_ACTIVE, "PENDING"),
                    "13_3": (hpsearch.JOB_ACTIVE, "PENDING"),
                    "13_5": (hpsearch.JOB_ACTIVE, "PENDING"),
                    "13_8": (hpsearch.JOB_ACTIVE, "PENDING"),
                    "14": (hpsearch.JOB_ENDED, "COMPLETED")}


@pytest.mark.parametrize("code,stderr,fails", [
    (255, "Job <7> is not found\n", False),                       # purged: its exit file tells
    (255, "", True),                                              # failed, no word why
    (255, "Job <7> is not found\nLSF is down; try later\n", True),
    (0, "Job <7> is not found\n", False)])
def test_bjobs_failing_is_a_failed_query_not_jobs_gone(code, stderr, fails):
    """bjobs exits non-zero both when it lists no job still known and when LSF cannot answer:
    only the first is an answer; the second must not count the jobs as gone."""
    lsf = hpsearch.Lsf(argparse.Namespace(scheduler_args="", resources=""))
    if fails:
        with pytest.raises(hpsearch.SchedulerError):
            lsf.parse_query(code, "", stderr)
    else:
        assert lsf.parse_query(code, "", stderr) == {}


@pytest.mark.parametrize("line", ["7|0|RUN|-", "x7|0|RUN|-|-", "7|0|RUN|-|-|-"])
def test_a_garbled_bjobs_line_is_a_failed_query(line):
    lsf = hpsearch.Lsf(argparse.Namespace(scheduler_args="", resources=""))
    assert lsf.parse_query(0, "7|2|RUN|-|-\n", "") == {"7[2]": (hpsearch.JOB_ACTIVE, "RUN")}
    with pytest.raises(hpsearch.SchedulerError):
        lsf.parse_query(0, "7|0|RUN|-|-\n%s\n" % line, "")


@pytest.mark.parametrize("name,first_index", [("slurm", 0), ("lsf", 1), ("sge", 1)])
def test_array_tasks_count_from_the_schedulers_first_index(name, first_index):
    """Slurm numbers a job array's tasks from 0, LSF and Grid Engine from 1: the first task
    runs the first --runs_per_job lines of the job's table, and logs under its own index."""
    scheduler = hpsearch.SCHEDULERS[name](argparse.Namespace(scheduler_args="", resources=""))
    script = hpsearch.unit_script("/s/jobs/a.runs", "/s/jobs", 3, scheduler)
    (first,) = [line for line in script.splitlines() if line.startswith("first=")]
    for k in range(2):
        out = subprocess.run(["sh", "-c", first + '; echo "$first"'], universal_newlines=True,
                             env={scheduler.task_variable: str(first_index + k)},
                             stdout=subprocess.PIPE).stdout
        assert out.strip() == str(3 * k + 1)
    log = hpsearch.array_task_log(argparse.Namespace(jobs="/s/jobs"), scheduler, "a", 1)
    assert log == "/s/jobs/a.task%d.scheduler.log" % (first_index + 1)


def test_qstat_xml_jobs_tasks_and_error_states():
    sge = hpsearch.Sge(argparse.Namespace(scheduler_args=""))
    xml = ("<?xml version='1.0'?><job_info><queue_info><job_list state='running'>"
           "<JB_job_number>12</JB_job_number><state>r</state><tasks>1</tasks></job_list>"
           "</queue_info><job_info><job_list state='pending'><JB_job_number>13</JB_job_number>"
           "<state>qw</state><tasks>2-6:2</tasks></job_list><job_list state='pending'>"
           "<JB_job_number>14</JB_job_number><state>Eqw</state></job_list></job_info>"
           "</job_info>")
    running, waiting = (hpsearch.JOB_ACTIVE, "r"), (hpsearch.JOB_ACTIVE, "qw")
    assert sge.parse_query(0, xml, "") == {
        "12": running, "12.1": running, "13": waiting, "13.2": waiting, "13.4": waiting,
        "13.6": waiting, "14": (hpsearch.JOB_STUCK, "error state Eqw")}
    # Ctrl-C: one qdel for every job, an array whole
    assert sge.cancel_argv(["13.4", "12", "13.2"]) == ["qdel", "12", "13"]
