"""Clusters at scale (issue 15) against a REAL Slurm: several runs per job, the cluster's own
limits (a per-user submit limit, a small MaxArraySize) and a launcher that outlives its job.

Same set-up and rules as test_slurm.py (its Site: a folder with train.py, whose ledger.jsonl
notes every start and end with the job id it ran in, and bin/ wrappers for sbatch, squeue and
scancel that log each call and run the real tool; skipped without a responding Slurm, a failure
under CI). Here some tests put their own wrappers in bin/, first on the launcher's PATH:

* ``sbatch`` refusing a submission, with Slurm's own message, while ``LIMIT`` jobs this test
  submitted are pending or running (asked of the real squeue, by the ids it handed out), as a
  QOS MaxSubmitJobsPerUser limit does;
* ``scontrol`` answering ``scontrol show config`` with a small ``MaxArraySize`` (the real answer
  otherwise), and ``sbatch`` refusing larger arrays with Slurm's message.

Times on the 2-CPU test cluster (Slurm starts batch jobs on a 1 s tick): about 1 minute for all
but the last test; ``test_launcher_job_outlives_its_time_limit`` alone takes 2-4 minutes (it
waits for Slurm's time-limit warnings, which come up to 30 s early or late).
"""

import hashlib
import os
import re
import shlex
import sys
import time


import test_slurm as ts
from conftest import HPSEARCH, write_file

ACCOUNTING_REFUSAL = ("sbatch: error: Batch job submission failed: Job violates accounting/QOS "
                      "policy (job submit limit, user's size and/or time limits)")
ARRAY_REFUSAL = "sbatch: error: Batch job submission failed: Invalid job array specification"


# test_slurm's fixtures: a real Slurm or a skip (a failure in CI), and a site per test
need_slurm = ts.need_slurm
site = ts.site


# An sbatch that plays a cluster's limits, logging like test_slurm's wrapper (time, exit
# status, output, arguments; a refusal's output is "REFUSED: why"). LIMIT: most of this test's
# jobs pending or running at once (0: none); MAX_ARRAY: most tasks in one array (0: any).
LIMITED_SBATCH = r'''#!/bin/sh
log=%(log)s
refuse() {
    printf '%%s\n' "$2" >&2
    printf '%%s\t1\tREFUSED: %%s\t%%s\n' "$(date +%%s.%%N)" "$1" "$(printf '%%s' "$ARGS" | tr '\n\t' '  ')" >> "$log"
    exit 1
}
ARGS="$*"
if [ %(limit)d -gt 0 ]; then
    ids=$(awk -F'\t' '$2 == 0 { split($3, a, ";"); print a[1] }' "$log" 2>/dev/null | paste -sd, -)
    queued=0
    if [ -n "$ids" ]; then
        queued=$(%(squeue)s -h -t PENDING,RUNNING,CONFIGURING,SUSPENDED -j "$ids" -o %%i | wc -l)
    fi
    [ "$queued" -ge %(limit)d ] && refuse "$queued queued" %(accounting)s
fi
if [ %(max_array)d -gt 0 ]; then
    for a; do
        case $a in
            --array=0-*) r=${a#--array=0-}; size=$((${r%%%%%%*} + 1))
                [ "$size" -gt %(max_array)d ] && refuse "array of $size" %(array)s;;
        esac
    done
fi
out=$(%(real)s "$@")
rc=$?
[ -n "$out" ] && printf '%%s\n' "$out"
printf '%%s\t%%s\t%%s\t%%s\n' "$(date +%%s.%%N)" "$rc" "$(printf '%%s' "$out" | tr '\n\t' '  ')" "$(printf '%%s' "$ARGS" | tr '\n\t' '  ')" >> "$log"
exit $rc
'''

# scontrol with a small MaxArraySize in `scontrol show config` (the rest of the real answer
# kept); every other use goes to the real scontrol. Calls are logged one per line.
SMALL_ARRAY_SCONTROL = r'''#!/bin/sh
printf '%%s\n' "$*" >> %(log)s
if [ "$1" = show ] && [ "$2" = config ]; then
    %(real)s show config | sed 's/^MaxArraySize *=.*/MaxArraySize            = %(max_array)d/'
    exit 0
fi
exec %(real)s "$@"
'''


def limited_sbatch(site, limit=0, max_array=0):
    q = shlex.quote
    path = write_file(os.path.join(site.bin, "sbatch"), LIMITED_SBATCH % {
        "log": q(os.path.join(site.bin, "sbatch.calls")), "limit": limit,
        "max_array": max_array, "squeue": q(ts.REAL["squeue"]), "real": q(ts.REAL["sbatch"]),
        "accounting": q(ACCOUNTING_REFUSAL), "array": q(ARRAY_REFUSAL)})
    os.chmod(path, 0o755)


def small_array_scontrol(site, max_array):
    path = write_file(os.path.join(site.bin, "scontrol"), SMALL_ARRAY_SCONTROL % {
        "log": shlex.quote(os.path.join(site.bin, "scontrol.calls")),
        "real": shlex.quote(ts.REAL["scontrol"]), "max_array": max_array})
    os.chmod(path, 0o755)


def accepted(site):
    """The sbatch calls that made a job: ``[(job id, arguments)]``."""
    return [(out.split(";")[0], args) for _, rc, out, args in site.calls("sbatch")
            if rc == 0 and out.split(";")[0].isdigit()]


def refused(site):
    return [(out, args) for _, rc, out, args in site.calls("sbatch") if rc != 0]


def search_of(site):
    return ts.wait_for("a search folder", lambda: os.path.isdir(
        os.path.join(site.root, "out", "hyperparam_search")) and site.search())


def search_exactly_once(site, *flags, **kwargs):
    """Run a search to its end (exit 0), each config once; its output, folder and run names."""
    rc, out = site.hpsearch(*flags, **kwargs)
    assert rc == 0, out
    search = site.search()
    return out, search, check_exactly_once(site, search)


def check_exactly_once(site, search, states=("finished",)):
    """Every planned config started exactly once (the training script's ledger), ended, and
    has exactly one row in search_results.csv; the journal ends each in ``states``."""
    names = sorted(r["name"] for r in search.runs())
    starts = sorted(e["run"] for e in site.ledger("start"))
    assert starts == names, "configs started (ledger) %s, planned %s" % (starts, names)
    ends = sorted(e["run"] for e in site.ledger("end"))
    assert ends == names, ends
    last = ts.last_entries(search)
    assert sorted(last) == names
    bad = {n: (e["state"], e.get("reason")) for n, e in last.items() if e["state"] not in states}
    assert not bad, bad
    header, rows = search.results()
    assert sorted(os.path.basename(r["out_dir"]) for r in rows) == names, rows
    assert set(r["hpsearch_state"] for r in rows) == set(states), rows
    assert all(r["hpsearch_exit_code"] == "0" for r in rows), rows
    return names


def check_run_folder(search, name):
    """A run's own files, as if it had had a job of its own."""
    folder = search.file(name)
    with open(os.path.join(folder, "job_%s.out" % name)) as f:
        assert "hello from %s" % name in f.read()
    for kept in ("job_%s.err" % name, "hpsearch_command.sh", "hpsearch_exit_status",
                 "performance_overview.txt"):
        assert os.path.isfile(os.path.join(folder, kept)), (name, kept, os.listdir(folder))
    with open(os.path.join(folder, "hpsearch_exit_status")) as f:
        assert f.read().strip() == "0"


# ---------------------------------------------------------------------------------------------
# (a) --runs_per_job


def test_runs_per_job_packs_twelve_runs_into_three_jobs(site):
    site.config({"acc": [round(0.05 * i, 2) for i in range(1, 13)], "sleep": [0.5]})
    rc, out = site.hpsearch("--runs_per_job=4", "--deterministic_search")
    assert rc == 0, out
    search = site.search()
    runs = sorted(search.runs(), key=lambda r: r["index"])
    names = [r["name"] for r in runs]
    assert len(names) == 12
    check_exactly_once(site, search)
    submits = accepted(site)
    assert len(site.calls("sbatch")) == 3 and len(submits) == 3, site.calls("sbatch")
    assert "hpsearch: slurm: 3 sbatch call(s) for 3 job(s)" in out, out
    # runs 1-4, 5-8, 9-12 share a job, named after its first run's attempt
    ids = ts.job_ids(search)
    jobs = search.job_names()
    for k in range(3):
        group = names[4 * k:4 * k + 4]
        assert len({ids[n] for n in group}) == 1, {n: ids[n] for n in group}
        assert {jobs[n] for n in group} == {jobs[group[0]]}
        assert jobs[group[0]].startswith(group[0] + "-a1-"), jobs
        job = ts.show_job(ids[group[0]])
        assert job["JobName"] == jobs[group[0]] and job["JobState"] == "COMPLETED", job
        # one after another in that job: the ledger's job id, no overlap, in table order
        starts = {e["run"]: e for e in site.ledger("start")}
        ends = {e["run"]: e for e in site.ledger("end")}
        assert {starts[n]["job"] for n in group} == {ids[group[0]]}
        for a, b in zip(group, group[1:]):
            assert ends[a]["t"] <= starts[b]["t"], (a, b)
        # the job's own scheduler log goes to its last run
        assert os.path.isfile(os.path.join(search.file(group[-1]), "hpsearch_scheduler.log"))
    assert len(set(ids.values())) == 3
    assert sorted(set(ids.values())) == sorted(i for i, _ in submits)
    for name in names:
        check_run_folder(search, name)
        assert "finished %s (exit 0)" % name in out
    # each run's own journal lines: submitting, running (with the job's id), finished
    for name in names:
        states = [e["state"] for e in ts.journal(search) if e["run"] == name]
        assert states == ["submitting", "running", "finished"], (name, states)


def test_kill_9_mid_job_then_resume_runs_the_rest_exactly_once(site):
    # 8 runs, 4 per job, one job at a time: job 1 holds runs 1-4. The launcher is killed once
    # run 1 has ended and run 2 is running inside job 1; the resume re-attaches job 1 (its
    # ended run kept by its exit status, the rest watched as they run) and submits job 2.
    site.config({"acc": [1, 2, 3, 4, 5, 6, 7, 8], "sleep": [2.5]})
    flags = ["--runs_per_job=4", "--num_jobs=1"]
    proc = site.start(*(flags + ["--deterministic_search"]))
    search = search_of(site)
    names = [r["name"] for r in sorted(search.runs(), key=lambda r: r["index"])]
    ts.wait_for("run 1 to end and run 2 to start in job 1", lambda: (
        names[0] in [e["run"] for e in site.ledger("end")]
        and names[1] in [e["run"] for e in site.ledger("start")]), timeout=90, step=0.05)
    proc.kill()   # SIGKILL: no clean-up at all
    proc.wait()
    killed_at = time.time()
    before = ts.job_ids(search)
    assert sorted(before) == names[:4] and len(set(before.values())) == 1, before
    job1 = before[names[0]]
    assert len(accepted(site)) == 1
    ended_before = [e["run"] for e in site.ledger("end")]
    assert names[0] in ended_before and names[3] not in ended_before, ended_before
    rc, out = site.hpsearch("--resume", search.path, *flags, timeout=120)
    assert rc == 0, out
    assert ts.queue_states([job1]).get(job1) not in ("PENDING", "RUNNING"), "job 1 still runs"
    assert "resuming" in out and "8 runs" in out, out
    # job 1 was followed, not submitted again; job 2 was submitted once, by the resume
    submits = accepted(site)
    assert len(site.calls("sbatch")) == 2 and len(submits) == 2, site.calls("sbatch")
    after = ts.job_ids(search)
    assert {after[n] for n in names[:4]} == {job1}, after
    assert len({after[n] for n in names[4:]}) == 1 and after[names[4]] != job1, after
    check_exactly_once(site, search)
    for name in names:
        check_run_folder(search, name)
    # the resume watched job 1's remaining runs end (they ended after the kill)
    late = [e for e in site.ledger("end") if e["t"] > killed_at]
    assert names[3] in [e["run"] for e in late], late
    assert "hpsearch: slurm: 1 sbatch call(s) for 1 job(s)" in out, out


# ---------------------------------------------------------------------------------------------
# (b) a per-user submit limit


def test_submit_limit_holds_submissions_and_every_run_finishes(site):
    limit = 2
    limited_sbatch(site, limit=limit)
    site.config({"acc": [1, 2, 3, 4, 5, 6], "sleep": [2]})
    started = time.time()
    rc, out = site.hpsearch("--num_jobs=6", timeout=240)
    took = time.time() - started
    assert rc == 0, out
    search = site.search()
    check_exactly_once(site, search)
    assert "done: 6 finished, 0 unfinished, 0 failed, 0 killed" in out, out
    assert not any(e["state"] == "failed" for e in ts.journal(search))
    # the cluster did refuse some (the wrapper never let more than `limit` of ours queue)
    assert refused(site), "the limit was never reached: %s" % site.calls("sbatch")
    assert len(accepted(site)) == 6, site.calls("sbatch")
    holds = re.findall(r"the scheduler takes no more jobs for now \((.*)\); holding", out)
    assert holds and all("job submit limit" in h for h in holds), out
    assert "trying again" not in out and not re.search(r"^failed ", out, re.M), out
    # held until one of our jobs ended, not for the 15 s back-off
    assert took < 60, "6 runs of 2 s took %.0f s under a limit of %d jobs" % (took, limit)


def test_submit_limit_is_announced_once(site):
    # The issue: hpsearch "holds further submissions until one of its jobs ends (or a
    # back-off expires), says so once". Under a limit of 1 job, each of 5 runs after the first
    # is refused once, when the job before it is still queued.
    limited_sbatch(site, limit=1)
    site.config({"acc": [1, 2, 3, 4, 5, 6], "sleep": [0.5]})
    out, _, _ = search_exactly_once(site, "--num_jobs=6", timeout=240)
    holds = re.findall(r"the scheduler takes no more jobs for now \((.*)\); holding", out)
    assert len(holds) == 1, "the hold was announced %d times (%d refusals):\n%s" % (
        len(holds), len(refused(site)), out)


# ---------------------------------------------------------------------------------------------
# (c) a small MaxArraySize


def test_array_larger_than_max_array_size_read_from_scontrol(site):
    small_array_scontrol(site, 4)
    limited_sbatch(site, max_array=4)
    site.config({"acc": list(range(1, 11)), "sleep": [0.2]})
    out, search, _ = search_exactly_once(site, "--array", "--num_jobs=2")
    with open(os.path.join(site.bin, "scontrol.calls")) as f:
        assert [l.strip() for l in f if l.startswith("show config")] == ["show config"]
    # read, not tried: ceil(10 / 4) = 3 arrays of 4, 4 and 2 tasks, none refused
    assert refused(site) == [], site.calls("sbatch")
    arrays = [re.search(r"--array=(\S+)", args).group(1) for _, args in accepted(site)]
    assert arrays == ["0-3%2", "0-3%2", "0-1%2"], arrays
    assert "hpsearch: slurm: 3 sbatch call(s) for 3 job(s)" in out, out
    for name in ts.last_entries(search):
        assert os.path.isfile(os.path.join(search.file(name), "hpsearch_scheduler.log")), name


def test_array_refused_as_too_large_is_split_until_it_fits(site):
    # scontrol says nothing of the small limit (the real MaxArraySize, 1001): the array of 10
    # is refused, then one of 5; arrays of 2 go through, one at a time (--num_jobs=2).
    limited_sbatch(site, max_array=4)
    site.config({"acc": list(range(1, 11)), "sleep": [0.2]})
    out, search, _ = search_exactly_once(site, "--array", "--num_jobs=2")
    sizes = [int(re.search(r"--array=0-(\d+)", args).group(1)) + 1
             for _, _, _, args in site.calls("sbatch")]
    assert sizes == [10, 5, 2, 2, 2, 2, 2], sizes
    assert len(refused(site)) == 2 and len(accepted(site)) == 5, site.calls("sbatch")
    assert out.count("was refused") == 2, out
    assert ARRAY_REFUSAL.split("error: ")[1] in out, out
    assert "hpsearch: slurm: 7 sbatch call(s) for 5 job(s)" in out, out
    assert ts.max_overlap(site) <= 2, "more than --num_jobs=2 runs at once"
    assert "trying again" not in out and not re.search(r"^failed ", out, re.M), out


def test_array_with_runs_per_job_keeps_to_max_array_size(site):
    # 10 runs, 2 per task: 5 tasks, read limit 4: one array of 4 tasks and one of 1
    small_array_scontrol(site, 4)
    limited_sbatch(site, max_array=4)
    site.config({"acc": list(range(1, 11)), "sleep": [0.2]})
    out, search, names = search_exactly_once(site, "--array", "--num_jobs=2",
                                             "--runs_per_job=2", "--deterministic_search")
    assert refused(site) == [], site.calls("sbatch")
    arrays = [re.search(r"--array=(\S+)", args).group(1) for _, args in accepted(site)]
    assert arrays == ["0-3%2", "0-0%2"], arrays
    ids = ts.job_ids(search)
    tasks = {}
    for name in names:
        tasks.setdefault(ids[name], []).append(name)
    assert sorted(len(v) for v in tasks.values()) == [2] * 5, tasks
    for name in names:
        check_run_folder(search, name)


def test_arrays_split_for_max_array_size_keep_to_num_jobs_together(site):
    # --num_jobs: "At most N of our jobs queued or running at once"; with --array the
    # scheduler's throttle does it (--array=0-K%N). Split into several arrays (MaxArraySize 2:
    # 3 arrays for 6 configs), each array gets %N of its own: up to 3N tasks at once.
    small_array_scontrol(site, 2)
    limited_sbatch(site, max_array=2)
    site.config({"acc": [1, 2, 3, 4, 5, 6], "sleep": [2]})
    out, _, _ = search_exactly_once(site, "--array", "--num_jobs=1")
    arrays = [re.search(r"--array=(\S+)", args).group(1) for _, args in accepted(site)]
    assert arrays == ["0-1%1", "0-1%1", "0-1%1"], arrays
    assert ts.max_overlap(site) <= 1, "%d runs at once with --num_jobs=1 (arrays %s)" % (
        ts.max_overlap(site), arrays)


# ---------------------------------------------------------------------------------------------
# (d) the launcher as a job of its own. SLOW: 2-4 minutes (waits for Slurm's time-limit
# warnings, which come up to 30 s early or late: the controller checks every 30 s).

LAUNCHER_JOB = """#!/bin/bash
#SBATCH --time=1
#SBATCH --signal=B:USR1@15
#SBATCH --job-name=%(name)s
#SBATCH --output=%(root)s/launcher-%%j.out
#SBATCH --mem=200M
cd %(root)s
export PATH=%(bin)s:$PATH
exec %(python)s %(hpsearch)s --grid_module=hp_config.py %(flags)s --num_jobs=1 --resubmit_self
"""


def submit_launcher_job(site):
    """Submit LAUNCHER_JOB for the site's search; ``(its job name, its job id)``."""
    name = "hpsearch-launcher-%s" % hashlib.sha1(site.root.encode()).hexdigest()[:8]
    q = shlex.quote
    script = write_file(os.path.join(site.root, "launcher.sh"), LAUNCHER_JOB % {
        "name": name, "root": q(site.root), "bin": q(site.bin), "python": q(sys.executable),
        "hpsearch": q(HPSEARCH), "flags": " ".join(q(f) for f in ts.OUR_FLAGS)})
    code, out, err = ts.call([ts.REAL["sbatch"], "--parsable", script])
    assert code == 0, err
    return name, out.strip().split(";")[0]


def test_scancel_of_the_launcher_job_still_stops_the_search(site):
    # scancel is no time-limit warning: the launcher cancels its jobs and ends, and is not
    # submitted again although it runs with --resubmit_self
    site.config({"acc": [1, 2, 3], "sleep": [60]})
    name, launcher = submit_launcher_job(site)
    try:
        ts.wait_for("a run to start", lambda: site.ledger("start"), timeout=60)
        ts.call([ts.REAL["scancel"], launcher])
        ts.wait_for("the launcher to end", lambda: ts.queue_states([launcher]).get(
            launcher) not in ("PENDING", "RUNNING", "COMPLETING"), timeout=60)
        search = site.search()
        jobs = [str(e["job_id"]) for e in ts.journal(search) if e.get("job_id")]
        ts.wait_for("its jobs to leave the queue", lambda: not any(
            s in ("PENDING", "RUNNING", "COMPLETING")
            for s in ts.queue_states(jobs).values()), timeout=60)
    finally:
        ts.call([ts.REAL["scancel"], "--name=" + name])
    with open(os.path.join(site.root, "launcher-%s.out" % launcher)) as f:
        output = f.read()
    assert "SIGTERM" in output and "submitted the launcher again" not in output, output
    assert [c for c in site.calls("sbatch") if "--dependency" in c[3]] == [], output
    states = {e["state"] for e in ts.last_entries(search).values()}
    assert states <= {"killed", "pending"} and "killed" in states, (states, output)
    assert len(site.ledger("start")) == 1, output


def test_launcher_job_outlives_its_time_limit(site):
    # 9 runs of 8 s, one job at a time: ~80 s of runs, more than one launcher's minute. The
    # test submits the launcher's job script once, then only waits and reads files.
    site.config({"acc": list(range(1, 10)), "sleep": [8]})
    name, first = submit_launcher_job(site)
    launchers = [first]
    started = time.time()

    def launcher_jobs():
        code, out, err = ts.call([ts.REAL["squeue"], "-h", "-t", "all", "--name=" + name,
                                  "-o", "%i|%T"])
        return dict(l.strip().split("|") for l in out.splitlines() if "|" in l)

    try:
        def settled():
            jobs = launcher_jobs()
            going = [j for j, s in jobs.items() if s in ("PENDING", "RUNNING", "COMPLETING",
                                                           "CONFIGURING")]
            return jobs if jobs and not going else None
        jobs = ts.wait_for("the launcher jobs to end", settled, timeout=300, step=1)
        launchers = sorted(jobs, key=int)
    finally:
        ts.call([ts.REAL["scancel"]] + launchers)
    took = time.time() - started
    outputs = {}
    for job in launchers:
        path = os.path.join(site.root, "launcher-%s.out" % job)
        with open(path) as f:
            outputs[job] = f.read()
    story = "\n".join("--- launcher job %s (%s) ---\n%s" % (j, jobs[j], outputs[j])
                      for j in launchers)
    assert len(launchers) >= 2, "one launcher did it all in %.0f s:\n%s" % (took, story)
    for job in launchers:
        info = ts.show_job(job)
        assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", (info, story)
    # every launcher but the last detached and submitted the next; the last ended the search
    calls = site.calls("sbatch")
    for job, following in zip(launchers, launchers[1:]):
        text = outputs[job]
        assert "SIGUSR1: the launcher's own job nears its time limit; detaching" in text, story
        assert "submitted the launcher again as job %s" % following in text, story
        # to start once this job has ended, whatever its end
        assert [c[2] for c in calls if "--dependency=afterany:%s " % job in c[3]] == \
            [following], calls
    for job in launchers[1:]:
        assert "--resubmit_self: resuming" in outputs[job], story
    assert "done: 9 finished, 0 unfinished, 0 failed, 0 killed" in outputs[launchers[-1]], story
    search = site.search()
    check_exactly_once(site, search)
    # runs went through the wrapper: one sbatch per run plus one per resubmitted launcher
    again = [c for c in calls if "--dependency=afterany:" in c[3]]
    assert len(again) == len(launchers) - 1 and all(c[1] == 0 for c in again), calls
    runs = [c for c in calls if "--dependency=afterany:" not in c[3]]
    assert len(runs) == 9 and all(c[1] == 0 for c in runs), calls
    print("launcher lifetimes: %d launcher jobs in %.0f s" % (len(launchers), took))
