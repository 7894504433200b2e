"""GPU packing of local runs: nvidia-smi parsing, hpsearch.GpuSlots (unit tests with injected
queries and a fake clock) and whole searches against tests/fake_bin/nvidia-smi.

Timing asserts use hpsearch's own start times (run_journal.jsonl) where the question is "when
did hpsearch start it", and the runs' ledger where the question is "what was alive at once";
margins are generous for a busy 2-core machine.
"""

import os
import re
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_helpers as gh  # noqa: E402

import hpsearch  # noqa: E402  (gpu_helpers put the repository on sys.path)


# ----------------------------------------------------------------------------------------------
# nvidia-smi parsing (in process, against the fake)
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def env(tmp_path):
    return gh.Env(tmp_path)


@pytest.fixture
def smi_env(env, monkeypatch):
    """The fake nvidia-smi on PATH of this process (for query_gpus & co)."""
    for key, value in env.env().items():
        monkeypatch.setenv(key, value)
    return env


def test_query_gpus_reads_numbers(smi_env):
    smi_env.set_state([smi_env.gpu(0, memory_used=4096, utilization=25, name="Tesla X"),
                       smi_env.gpu(1)])
    gpus = hpsearch.query_gpus()
    assert [g.index for g in gpus] == [0, 1]
    g = gpus[0]
    assert g.uuid == smi_env.uuid(0)
    assert g.name == "Tesla X"
    assert g.memory_used == 4096 and g.memory_total == 16384
    assert g.memory_fraction == pytest.approx(0.25)
    assert g.load == pytest.approx(0.25)


@pytest.mark.parametrize("na", ["[N/A]", "[Not Supported]", "[Unknown Error]"])
def test_query_gpus_unreadable_values_are_none(smi_env, na):
    smi_env.set_state([smi_env.gpu(0, memory_used=na, utilization=na),
                       smi_env.gpu(1, memory_total=na)])
    g0, g1 = hpsearch.query_gpus()
    assert g0.memory_used is None and g0.utilization is None
    assert g0.memory_fraction is None and g0.load is None
    assert g1.memory_total is None and g1.memory_fraction is None


def test_query_gpus_failing_smi_raises_gpuerror(smi_env):
    smi_env.set_state([smi_env.gpu(0)], fail=True)
    with pytest.raises(hpsearch.GpuError) as info:
        hpsearch.query_gpus()
    assert "nvidia-smi" in str(info.value)


def test_query_gpus_missing_smi_raises_gpuerror(env, monkeypatch):
    monkeypatch.setenv("PATH", env.pybin)  # python3 only, no nvidia-smi
    with pytest.raises(hpsearch.GpuError) as info:
        hpsearch.query_gpus()
    assert "nvidia-smi" in str(info.value)


def test_query_compute_pids(smi_env):
    u0, u1 = smi_env.uuid(0), smi_env.uuid(1)
    smi_env.set_state([smi_env.gpu(0), smi_env.gpu(1)], apps=[
        {"gpu_uuid": u0, "pid": 111, "used_memory": 500},
        {"gpu_uuid": u0, "pid": 112, "used_memory": 1},
        {"gpu_uuid": u1, "pid": 113, "used_memory": "[N/A]"},
        {"gpu_uuid": u1, "pid": 114, "used_memory": 0},   # holds no memory: not counted
    ])
    apps = hpsearch.query_compute_pids()
    assert set(apps[u0]) == {111, 112}
    assert set(apps[u1]) == {113}


def test_query_compute_pids_none(smi_env):
    smi_env.set_state([smi_env.gpu(0)])
    assert not any(hpsearch.query_compute_pids().values())


# ----------------------------------------------------------------------------------------------
# GpuSlots with injected queries and a fake clock
# ----------------------------------------------------------------------------------------------


def G(index, used=0.0, total=1000.0, util=0.0, uuid=None):
    return hpsearch.Gpu(index, uuid or "GPU-unit-%d" % index, "Unit GPU", used, total, util)


class Smi(object):
    """Injected query/query_apps for GpuSlots; counts calls."""

    def __init__(self, gpus, apps=None):
        self.gpus = list(gpus)
        self.apps = apps or {}
        self.gpu_calls = 0
        self.app_calls = 0

    def query(self):
        self.gpu_calls += 1
        return list(self.gpus)

    def query_apps(self):
        self.app_calls += 1
        return {k: set(v) for k, v in self.apps.items()}


@pytest.fixture
def clock(monkeypatch):
    c = gh.FakeClock()
    monkeypatch.setattr(hpsearch, "now", c)
    return c


def slots(smi, per_gpu=1, max_memory=0.5, max_load=0.5, startup=0.0, poll=2.0):
    return hpsearch.GpuSlots(list(smi.gpus), per_gpu, max_memory, max_load, startup, poll,
                             query=smi.query, query_apps=smi.query_apps)


def test_slots_token_names_the_gpu_by_uuid(clock):
    s = slots(Smi([G(3, uuid="GPU-aaaa")]))
    tok = s.acquire()
    assert tok["CUDA_VISIBLE_DEVICES"] == "GPU-aaaa"
    assert tok["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"


def test_slots_skip_gpus_over_memory_or_load(clock):
    smi = Smi([G(0, used=900), G(1, util=90), G(2, used=100, util=10)])
    s = slots(smi, per_gpu=3)
    got = []
    for _ in range(5):
        tok = s.acquire()
        if tok is None:
            break
        got.append(tok["CUDA_VISIBLE_DEVICES"])
    assert got == ["GPU-unit-2"] * 3


def test_slots_limits_are_inclusive(clock):
    """'at most --allowed_memory / --allowed_load': exactly at the limit still takes a run."""
    s = slots(Smi([G(0, used=500, util=50)]))
    assert s.acquire() is not None


def test_slots_max_jobs_per_gpu(clock):
    s = slots(Smi([G(0)]), per_gpu=2)
    a, b = s.acquire(), s.acquire()
    assert a is not None and b is not None
    assert s.acquire() is None
    s.release(a)
    c = s.acquire()
    assert c is not None and c["CUDA_VISIBLE_DEVICES"] == "GPU-unit-0"
    assert s.acquire() is None


def test_slots_spread_one_per_gpu(clock):
    s = slots(Smi([G(0), G(1), G(2)]), per_gpu=1)
    toks = [s.acquire() for _ in range(3)]
    assert sorted(t["CUDA_VISIBLE_DEVICES"] for t in toks) == [
        "GPU-unit-0", "GPU-unit-1", "GPU-unit-2"]
    assert s.acquire() is None


def test_slots_startup_hold_lasts_startup_time(clock):
    smi = Smi([G(0)])
    s = slots(smi, per_gpu=2, startup=10.0, poll=1.0)
    tok = s.acquire()
    s.started(tok, 4242)
    assert s.acquire() is None
    for _ in range(9):
        clock.advance(1.0)
        assert s.acquire() is None, "GPU took a run %.0f s into a 10 s startup hold" % (
            clock.t - 1000.0)
    clock.advance(1.01)
    assert s.acquire() is not None


def test_slots_startup_hold_only_blocks_that_gpu(clock):
    s = slots(Smi([G(0), G(1)]), per_gpu=2, startup=10.0)
    first = s.acquire()
    s.started(first, 4242)
    second = s.acquire()
    assert second is not None
    assert second["CUDA_VISIBLE_DEVICES"] != first["CUDA_VISIBLE_DEVICES"]


def test_slots_startup_hold_cut_short_when_process_shows_up(clock):
    smi = Smi([G(0)])
    s = slots(smi, per_gpu=2, startup=60.0, poll=1.0)
    tok = s.acquire()
    s.started(tok, 4242)
    assert s.acquire() is None
    smi.apps = {"GPU-unit-0": {4242}}   # our process now holds memory on GPU 0
    clock.advance(1.0)
    assert s.acquire() is not None, "hold not cut short although our process showed up"
    assert smi.app_calls >= 1


def test_slots_startup_hold_cut_short_by_child_of_our_run(clock):
    """A run's child (same session) holding memory counts as the run showing up."""
    smi = Smi([G(0)])
    s = slots(smi, per_gpu=2, startup=60.0, poll=1.0)
    tok = s.acquire()
    leader = os.getsid(0)  # this test process's session stands in for the run's session
    s.started(tok, leader)
    smi.apps = {"GPU-unit-0": {os.getpid()}}
    clock.advance(1.0)
    assert s.acquire() is not None


def test_slots_startup_hold_not_cut_by_other_processes(clock):
    smi = Smi([G(0)], apps={"GPU-unit-0": {os.getpid()}})  # a process not of our run's session
    s = slots(smi, per_gpu=2, startup=10.0, poll=1.0)
    tok = s.acquire()
    pid = 4242 if os.getsid(0) != 4242 else 4243
    s.started(tok, pid)
    clock.advance(1.0)
    assert s.acquire() is None
    clock.advance(5.0)
    assert s.acquire() is None


def test_slots_no_query_within_poll_interval(clock):
    smi = Smi([G(0), G(1)])
    s = slots(smi, per_gpu=10, poll=2.0)
    for _ in range(8):
        assert s.acquire() is not None
    assert smi.gpu_calls == 0, "the snapshot from start-up is fresh: no nvidia-smi call needed"
    clock.advance(2.0)
    for _ in range(8):
        assert s.acquire() is not None
    assert smi.gpu_calls == 1


def test_slots_no_query_while_all_gpus_full_of_our_runs(clock):
    smi = Smi([G(0), G(1)])
    s = slots(smi, per_gpu=1, poll=0.5)
    s.acquire(), s.acquire()
    for _ in range(20):
        clock.advance(1.0)
        assert s.acquire() is None
    assert smi.gpu_calls == 0 and smi.app_calls == 0


def test_slots_follow_changing_load(clock):
    smi = Smi([G(0)])
    s = slots(smi, per_gpu=5, poll=1.0)
    assert s.acquire() is not None
    smi.gpus = [G(0, used=800)]   # someone else fills the GPU
    clock.advance(1.0)
    assert s.acquire() is None
    smi.gpus = [G(0, used=100)]
    clock.advance(1.0)
    assert s.acquire() is not None


@pytest.mark.parametrize("used,total,util", [(None, 1000.0, 10.0), (100.0, None, None),
                                             (None, None, None), (100.0, 0.0, None)])
def test_slots_unknown_numbers_do_not_crash(clock, used, total, util):
    smi = Smi([hpsearch.Gpu(0, "GPU-na", "NA GPU", used, total, util)])
    s = slots(smi, per_gpu=2, poll=1.0)
    assert s.acquire() is not None
    clock.advance(1.0)
    s.acquire()  # a refresh with the same unknown numbers
    s.recheck_in()
    s.describe()


def test_slots_recheck_in_no_busy_wait_while_all_slots_are_ours(clock):
    """Only a run ending can free a slot when every GPU holds --max_num_jobs_per_gpu of our
    runs: recheck_in must not ask the loop to wake every 50 ms (Backend contract: None)."""
    s = slots(Smi([G(0), G(1)]), per_gpu=1, poll=2.0)
    s.acquire(), s.acquire()
    clock.advance(30.0)
    wait = s.recheck_in()
    assert wait is None or wait >= 1.0, wait


def test_slots_recheck_in_bounded_by_hold_and_poll(clock):
    s = slots(Smi([G(0)]), per_gpu=2, startup=10.0, poll=2.0)
    tok = s.acquire()
    s.started(tok, 4242)
    wait = s.recheck_in()
    assert 0 < wait <= 2.0
    assert wait == pytest.approx(2.0)   # the next nvidia-smi look is due in --poll seconds
    clock.advance(1.5)
    assert s.recheck_in() == pytest.approx(0.5)
    clock.advance(0.49)
    assert 0 < s.recheck_in() <= 2.0
    held = slots(Smi([G(0)]), per_gpu=2, startup=1.0, poll=2.0)
    held.started(held.acquire(), 4243)
    assert held.recheck_in() == pytest.approx(1.0)   # the hold ends first


def test_slots_smi_failing_is_warned_once_and_its_return_once(clock, monkeypatch):
    """nvidia-smi failing mid-search: one warning for the whole outage (not one per look),
    one line when it answers again; the GPUs' last known numbers are used meanwhile."""
    said = []
    monkeypatch.setattr(hpsearch, "warn", said.append)
    smi = Smi([G(0)])
    s = slots(smi, per_gpu=9, poll=1.0)

    def failing():
        raise hpsearch.GpuError("nvidia-smi failed (exit 9): boom")
    s.query = failing
    for _ in range(3):
        clock.advance(1.0)
        assert s.acquire() is not None
    assert said == ["nvidia-smi failed (exit 9): boom; asking again every 1s"]
    s.query = smi.query
    for _ in range(2):
        clock.advance(1.0)
        s.acquire()
    assert said[1:] == ["nvidia-smi answers again"]


# ----------------------------------------------------------------------------------------------
# Whole searches on fake GPUs
# ----------------------------------------------------------------------------------------------

FAST = ["--sim_startup_time=0", "--gpu_poll_interval=0.1"]


def assert_ok(res):
    assert res.returncode == 0, "exit %s\nstdout:\n%s\nstderr:\n%s" % (
        res.returncode, res.stdout, res.stderr)


def test_thresholds_and_visible_gpus(env):
    env.set_state([env.gpu(0, memory_used=12000),     # 73 % memory: over --allowed_memory
                   env.gpu(1, utilization=80),        # over --allowed_load
                   env.gpu(2, memory_used=2000, utilization=10),
                   env.gpu(3)])                       # fine, but not in --visible_gpus
    env.write_config({"sleep": [0.05], "idx": list(range(2))})
    res = env.run("--visible_gpus=0,1,2", *FAST)
    assert_ok(res)
    runs = env.runs()
    assert len(runs) == 2
    assert {r["cvd"] for r in runs} == {env.uuid(2)}
    assert all(r["end"] is not None for r in runs)
    assert gh.max_concurrency(runs) == 1


def test_all_gpus_when_visible_gpus_empty(env):
    env.set_state([env.gpu(0, memory_used=15000), env.gpu(1), env.gpu(2)])
    env.write_config({"sleep": [0.3], "idx": list(range(2))})
    res = env.run(*FAST)
    assert_ok(res)
    cvds = [r["cvd"] for r in env.runs()]
    assert set(cvds) == {env.uuid(1), env.uuid(2)}, cvds


def test_noncontiguous_visible_gpus(env):
    env.set_state([env.gpu(i) for i in (0, 1, 2, 7)])
    env.write_config({"sleep": [0.3], "idx": list(range(3))})
    res = env.run("--visible_gpus=0,2,7", *FAST)
    assert_ok(res)
    runs = env.runs()
    assert {r["cvd"] for r in runs} == {env.uuid(0), env.uuid(2), env.uuid(7)}
    for u in (env.uuid(0), env.uuid(2), env.uuid(7)):
        assert gh.max_concurrency([r for r in runs if r["cvd"] == u]) == 1


def test_each_run_sees_only_its_gpu_and_gpus_are_printed(env):
    env.set_state([env.gpu(0), env.gpu(1), env.gpu(2)])
    env.write_config({"sleep": [0.3], "idx": list(range(2))})
    res = env.run("--visible_gpus=1,2", *FAST)
    assert_ok(res)
    runs = env.runs()
    assert len(runs) == 2
    for r in runs:
        assert r["cvd"] in (env.uuid(1), env.uuid(2))
        assert r["order"] == "PCI_BUS_ID"
    # the GPUs in use are named before the first run starts
    head = res.stdout.split("started", 1)[0]
    assert env.uuid(1) in head and env.uuid(2) in head, res.stdout
    assert env.uuid(0) not in res.stdout


def test_max_num_jobs_per_gpu(env):
    env.set_state([env.gpu(0), env.gpu(1)])
    env.write_config({"sleep": [0.6], "idx": list(range(6))})
    res = env.run("--max_num_jobs_per_gpu=2", *FAST)
    assert_ok(res)
    runs = env.runs()
    assert len(runs) == 6
    per_gpu = {}
    for r in runs:
        per_gpu.setdefault(r["cvd"], []).append(r)
    assert set(per_gpu) == {env.uuid(0), env.uuid(1)}
    for u, rs in per_gpu.items():
        assert gh.max_concurrency(rs) <= 2, (u, rs)
    assert max(gh.max_concurrency(rs) for rs in per_gpu.values()) == 2, \
        "two runs never shared a GPU although --max_num_jobs_per_gpu=2"


def test_startup_time_respected_when_process_does_not_appear(env):
    env.set_state([env.gpu(0)])
    env.write_config({"sleep": [1.6, 0.1], "idx": [0]})   # the first run sleeps 1.6 s
    res = env.run("--max_num_jobs_per_gpu=2", "--sim_startup_time=0.7",
                  "--gpu_poll_interval=0.1")
    assert_ok(res)
    starts = sorted(env.journal_starts().values())
    assert len(starts) == 2
    gap = starts[1] - starts[0]
    assert gap >= 0.7 - 0.05, "GPU took a second run %.2f s into a 0.7 s startup hold" % gap
    # ... and took it once the hold was over, while the first run still went
    assert gap < 1.5, gap


def test_startup_time_cut_short_when_process_appears(env):
    env.set_state([env.gpu(0)], apps_from_env=True)
    env.write_config({"sleep": [1.5, 0.1], "idx": [0]})
    startup = 8.0
    res = env.run("--max_num_jobs_per_gpu=2", "--sim_startup_time=%g" % startup,
                  "--gpu_poll_interval=0.1", FAKE_GPU_MEM="100")
    assert_ok(res)
    starts = sorted(env.journal_starts().values())
    assert len(starts) == 2
    gap = starts[1] - starts[0]
    assert gap < 2.0, "second run started %.2f s after the first; the hold (%g s) should end " \
                      "once the first run shows up in nvidia-smi" % (gap, startup)


def test_unreadable_values_do_not_crash_a_search(env):
    env.set_state([env.gpu(0, memory_used="[N/A]", utilization="[Not Supported]"),
                   env.gpu(1, memory_total="[N/A]", utilization="[N/A]")])
    env.write_config({"sleep": [0.1], "idx": list(range(3))})
    res = env.run(*FAST)
    assert_ok(res)
    runs = env.runs()
    assert len(runs) == 3
    assert {r["cvd"] for r in runs} <= {env.uuid(0), env.uuid(1)}
    assert "Traceback" not in res.stderr


def assert_one_line_error(res, env, *words):
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = gh.error_lines(res.stderr)
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("hpsearch: error:"), lines
    for w in words:
        assert w in lines[0], lines
    assert "Traceback" not in res.stderr
    assert not os.path.exists(env.out), "a failed start must not write a search folder"


def test_failing_smi_with_explicit_gpus_exits_2(env):
    env.set_state([env.gpu(0)], fail=True)
    env.write_config({"sleep": [0.0], "idx": [0]})
    res = env.run("--visible_gpus=0")
    assert_one_line_error(res, env, "nvidia-smi")
    assert env.runs() == []


def test_missing_smi_with_explicit_gpus_exits_2(env):
    env.write_config({"sleep": [0.0], "idx": [0]})
    res = env.run("--visible_gpus=0", path_has_fake=False)
    assert_one_line_error(res, env, "nvidia-smi")


@pytest.mark.parametrize("flag,word", [("0,7", "7"), ("zero", "--visible_gpus"),
                                       ("-1,0", "--visible_gpus")])
def test_bad_visible_gpus_exit_2(env, flag, word):
    env.set_state([env.gpu(0), env.gpu(1)])
    env.write_config({"sleep": [0.0], "idx": [0]})
    res = env.run("--visible_gpus=%s" % flag)
    assert_one_line_error(res, env, word)


@pytest.mark.parametrize("state", ["fail", "missing"])
def test_default_gpus_without_smi_warns_and_runs_sequentially(env, state):
    env.set_state([env.gpu(0)], fail=True)
    env.write_config({"sleep": [0.1], "idx": [0, 1]})
    res = env.run(path_has_fake=(state == "fail"))
    assert_ok(res)
    assert "warning" in res.stderr
    runs = env.runs()
    assert len(runs) == 2 and gh.max_concurrency(runs) == 1


def test_few_nvidia_smi_calls(env):
    """20 short runs on 2 GPUs x 2 slots: nvidia-smi is asked at most once per poll interval
    while runs wait, never once per finished run."""
    env.set_state([env.gpu(0), env.gpu(1)])
    env.write_config({"sleep": [0.0], "idx": list(range(20))})
    import time
    t0 = time.time()
    res = env.run("--max_num_jobs_per_gpu=2", "--sim_startup_time=0", "--gpu_poll_interval=2")
    elapsed = time.time() - t0
    assert_ok(res)
    assert len(env.runs()) == 20
    calls = len(env.smi_calls())
    assert calls <= 3 + elapsed / 2.0, "%d nvidia-smi calls in %.1f s" % (calls, elapsed)
    assert calls < 10, calls


def test_no_smi_calls_without_gpus(env):
    env.set_state([env.gpu(0)])
    env.write_config({"sleep": [0.05], "idx": list(range(2))})
    assert_ok(env.run("--visible_gpus=-1"))
    assert_ok(env.run("--local_jobs=2"))
    assert env.smi_calls() == []


def test_smi_failing_mid_search_does_not_kill_the_search(env):
    """nvidia-smi failing for a moment while runs wait for a GPU: hpsearch keeps its runs
    going (or waits) instead of dying with a traceback and leaving orphans."""
    env.set_state([env.gpu(0)])
    env.write_config({"sleep": [0.3], "idx": [0, 1]})
    proc = env.start(*FAST)
    try:
        assert gh.wait_for(lambda: env.runs(), 20), "first run never started"
        env.set_state([env.gpu(0)], fail=True)
        first_end = gh.wait_for(lambda: [r for r in env.runs() if r["end"]], 20)
        assert first_end, "first run never ended"
        gh.wait_for(lambda: proc.poll() is not None, 1.0)
    finally:
        env.set_state([env.gpu(0)])
    code, out, err = env.finish(proc)
    assert "Traceback" not in err, err
    assert code == 0, (code, out, err)
    runs = env.runs()
    assert len(runs) == 2 and all(r["end"] for r in runs)


def test_warning_does_not_run_into_the_status_line(env):
    """On a terminal, a warning printed while the live status line is shown (here: nvidia-smi
    failing for a moment) starts on a line of its own."""
    import threading
    import time
    env.set_state([env.gpu(0)])
    env.write_config({"sleep": [0.4], "idx": [0, 1]})

    def flip():
        if gh.wait_for(lambda: env.runs(), 20):
            env.set_state([env.gpu(0)], fail=True)
            time.sleep(1.0)
        env.set_state([env.gpu(0)])
    t = threading.Thread(target=flip)
    t.start()
    try:
        code, output = env.run_in_pty(*FAST)
    finally:
        t.join()
    assert code == 0, output
    segments = [re.sub(r"^(\x1b\[K)+", "", s) for s in re.split(r"[\r\n]", output)]
    warnings = [s for s in segments if "hpsearch: warning" in s]
    assert warnings, output
    for s in warnings:
        assert s.startswith("hpsearch: warning:"), "warning glued to the status line: %r" % s
