"""_vendor/GPUtil.py, our GPUtil stand-in, against tests/fake_bin/nvidia-smi: the GPU objects,
availability filters and orders, getFirstAvailable's attempts, showUtilization's table, and
how it finds hpsearch.py."""

import inspect
import math
import os
import random
import shutil
import subprocess
import sys
import textwrap

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gpu_helpers as gh  # noqa: E402

import hpsearch  # noqa: E402


@pytest.fixture
def env(tmp_path, monkeypatch):
    e = gh.Env(tmp_path)
    for key, value in e.env().items():
        monkeypatch.setenv(key, value)
    return e


@pytest.fixture
def GPUtil(monkeypatch):
    monkeypatch.syspath_prepend(gh.VENDOR)
    monkeypatch.delitem(sys.modules, "GPUtil", raising=False)
    import GPUtil as module
    assert getattr(module, "HPSEARCH_STAND_IN", False), module.__file__
    yield module
    sys.modules.pop("GPUtil", None)


@pytest.fixture
def five(env):
    """0-2 available (different load/memory), 3 too loaded, 4 unreadable."""
    env.set_state([
        env.gpu(0, memory_used=0.40 * 16384, utilization=30, name="A"),
        env.gpu(1, memory_used=0.45 * 16384, utilization=10, name="B"),
        env.gpu(2, memory_used=0.10 * 16384, utilization=20, name="C"),
        env.gpu(3, memory_used=0.10 * 16384, utilization=90, name="D"),
        env.gpu(4, memory_used="[N/A]", utilization="[Not Supported]", name="E"),
    ])
    return env


def freeze(GPUtil, monkeypatch):
    """Read the fake GPUs once; later getGPUs() calls return that snapshot (fewer nvidia-smi
    runs: each one starts an interpreter)."""
    snapshot = GPUtil.getGPUs()
    monkeypatch.setattr(GPUtil, "getGPUs", lambda: list(snapshot))
    return snapshot


@pytest.fixture
def cached(five, GPUtil, monkeypatch):
    """``five``, read once."""
    assert len(freeze(GPUtil, monkeypatch)) == 5
    return five


def test_builds_on_hpsearch(GPUtil):
    assert GPUtil._hpsearch is hpsearch


def test_getgpus_attributes(env, GPUtil):
    env.set_state([env.gpu(0, memory_used=4096, utilization=25, name="Tesla T"),
                   env.gpu(1, memory_used="[N/A]", memory_total="[N/A]",
                           utilization="[N/A]")])
    g0, g1 = GPUtil.getGPUs()
    assert g0.id == 0 and isinstance(g0.id, int)
    assert g0.uuid == env.uuid(0)
    assert g0.name == "Tesla T"
    assert g0.load == pytest.approx(0.25)
    assert g0.memoryUtil == pytest.approx(0.25)
    assert g0.memoryTotal == pytest.approx(16384)
    assert g0.memoryUsed == pytest.approx(4096)
    assert g0.memoryFree == pytest.approx(16384 - 4096)
    assert g1.id == 1
    for attr in ("load", "memoryUtil", "memoryTotal", "memoryUsed", "memoryFree"):
        value = getattr(g1, attr)
        assert isinstance(value, float) and math.isnan(value), (attr, value)
    assert "Tesla T" in repr(g0)


@pytest.mark.parametrize("how", ["fail", "missing"])
def test_getgpus_empty_without_nvidia_smi(env, GPUtil, monkeypatch, how):
    env.set_state([env.gpu(0)], fail=(how == "fail"))
    if how == "missing":
        monkeypatch.setenv("PATH", env.pybin)
    assert GPUtil.getGPUs() == []
    assert GPUtil.getAvailable(limit=4) == []
    with pytest.raises(RuntimeError):
        GPUtil.getFirstAvailable()


def test_signatures_match_gputil(GPUtil):
    def defaults(fn):
        return {k: p.default for k, p in inspect.signature(fn).parameters.items()}
    assert defaults(GPUtil.getAvailable) == {
        "order": "first", "limit": 1, "maxLoad": 0.5, "maxMemory": 0.5, "memoryFree": 0,
        "includeNan": False, "excludeID": [], "excludeUUID": []}
    assert defaults(GPUtil.getFirstAvailable) == {
        "order": "first", "maxLoad": 0.5, "maxMemory": 0.5, "attempts": 1, "interval": 900,
        "verbose": False, "includeNan": False, "excludeID": [], "excludeUUID": []}
    assert defaults(GPUtil.showUtilization) == {
        "all": False, "attrList": None, "useOldCode": False}
    d = defaults(GPUtil.getAvailability)
    assert list(d)[0] == "GPUs"
    assert {k: v for k, v in d.items() if k != "GPUs"} == {
        "maxLoad": 0.5, "maxMemory": 0.5, "memoryFree": 0, "includeNan": False,
        "excludeID": [], "excludeUUID": []}


@pytest.mark.parametrize("order,expected", [
    ("first", [0, 1, 2]), ("last", [2, 1, 0]), ("load", [1, 2, 0]), ("memory", [2, 0, 1])])
def test_getavailable_orders(cached, GPUtil, order, expected):
    assert GPUtil.getAvailable(order=order, limit=10) == expected
    assert GPUtil.getAvailable(order=order) == expected[:1]
    assert GPUtil.getAvailable(order=order, limit=2) == expected[:2]


def test_getavailable_random_order(cached, GPUtil):
    seen = set()
    for seed in range(30):
        random.seed(seed)
        ids = GPUtil.getAvailable(order="random", limit=10)
        assert sorted(ids) == [0, 1, 2]
        seen.add(tuple(ids))
    assert len(seen) > 1


def test_getavailable_limits_are_strict(env, GPUtil, monkeypatch):
    env.set_state([env.gpu(0, utilization=50), env.gpu(1, memory_used=8192),
                   env.gpu(2, utilization=49, memory_used=8191)])
    freeze(GPUtil, monkeypatch)
    assert GPUtil.getAvailable(limit=5) == [2]
    assert GPUtil.getAvailable(limit=5, maxLoad=0.51, maxMemory=0.51) == [0, 1, 2]
    assert GPUtil.getAvailable(limit=5, maxLoad=1.0, maxMemory=0.0) == []


def test_getavailable_memory_free(env, GPUtil, monkeypatch):
    env.set_state([env.gpu(0, memory_used=6000), env.gpu(1, memory_used=1000)])
    freeze(GPUtil, monkeypatch)
    assert GPUtil.getAvailable(limit=5, memoryFree=12000) == [1]
    assert GPUtil.getAvailable(limit=5, memoryFree=20000) == []
    assert GPUtil.getAvailable(limit=5, memoryFree=0) == [0, 1]


def test_getavailable_nan_and_exclusions(cached, GPUtil):
    assert 4 not in GPUtil.getAvailable(limit=10)
    assert GPUtil.getAvailable(limit=10, includeNan=True) == [0, 1, 2, 4]
    # NaN sorts last by load and memory
    assert GPUtil.getAvailable(order="load", limit=10, includeNan=True)[-1] == 4
    assert GPUtil.getAvailable(order="memory", limit=10, includeNan=True)[-1] == 4
    assert GPUtil.getAvailable(limit=10, excludeID=[0, 2]) == [1]
    assert GPUtil.getAvailable(limit=10, excludeUUID=[cached.uuid(1)]) == [0, 2]
    assert GPUtil.getAvailable(limit=10, maxLoad=1.0) == [0, 1, 2, 3]


def test_getavailability(five, GPUtil):
    gpus = GPUtil.getGPUs()
    assert GPUtil.getAvailability(gpus) == [1, 1, 1, 0, 0]
    assert GPUtil.getAvailability(gpus, includeNan=True) == [1, 1, 1, 0, 1]
    assert GPUtil.getAvailability(gpus, maxMemory=0.42, excludeID=[2]) == [1, 0, 0, 0, 0]
    assert GPUtil.getAvailability([]) == []


def test_getfirstavailable(cached, GPUtil):
    assert GPUtil.getFirstAvailable() == [0]
    assert GPUtil.getFirstAvailable(order="last") == [2]
    assert GPUtil.getFirstAvailable(order="memory") == [2]
    assert GPUtil.getFirstAvailable(excludeID=[0]) == [1]
    assert GPUtil.getFirstAvailable(maxLoad=0.05, includeNan=True) == [4]


def test_getfirstavailable_attempts_then_error(cached, GPUtil, monkeypatch, capsys):
    sleeps = []
    monkeypatch.setattr(GPUtil, "_sleep", sleeps.append)
    with pytest.raises(RuntimeError) as info:
        GPUtil.getFirstAvailable(maxLoad=0.01, attempts=3, interval=7, verbose=True)
    assert sleeps == [7, 7]
    assert "3" in str(info.value)
    out = capsys.readouterr().out
    assert out.count("\n") >= 3


def test_getfirstavailable_retries_until_a_gpu_frees_up(env, GPUtil, monkeypatch):
    env.set_state([env.gpu(0, utilization=95)])

    def sleep(seconds):
        env.set_state([env.gpu(0, utilization=5)])
    monkeypatch.setattr(GPUtil, "_sleep", sleep)
    assert GPUtil.getFirstAvailable(attempts=2, interval=1) == [0]


def test_showutilization_default_table(cached, GPUtil, capsys):
    assert GPUtil.showUtilization() is None
    lines = [l for l in capsys.readouterr().out.splitlines() if l.strip()]
    header = lines[0]
    assert "ID" in header and "GPU" in header and "MEM" in header
    rows = [l for l in lines[1:] if any(c.isdigit() for c in l)]
    assert len(rows) == 5
    assert "30%" in rows[0] and "40%" in rows[0]
    assert "nan" in rows[4]


def test_showutilization_all_and_attrlist(cached, GPUtil, capsys):
    GPUtil.showUtilization(all=True)
    out = capsys.readouterr().out
    for text in ("A", "E", cached.uuid(0), cached.uuid(4)):
        assert text in out
    GPUtil.showUtilization(attrList=[[{"attr": "id", "name": "Id"},
                                      {"attr": "memoryFree", "name": "Free", "suffix": " MB",
                                       "precision": 0}],
                                     [{"attr": "load", "name": "Load", "transform":
                                       lambda x: x * 100, "precision": 1, "suffix": "%"}]])
    out = capsys.readouterr().out
    assert "Id" in out and "Free" in out and "Load" in out
    assert "%d MB" % round(16384 * 0.9) in out
    assert "30.0%" in out
    GPUtil.showUtilization(useOldCode=True)
    out = capsys.readouterr().out
    assert "ID" in out and "30%" in out


def test_showutilization_without_gpus(env, GPUtil, capsys):
    env.set_state([], fail=True)
    GPUtil.showUtilization()
    assert "ID" in capsys.readouterr().out


def test_safefloatcast(GPUtil):
    assert GPUtil.safeFloatCast("3.5") == 3.5
    assert math.isnan(GPUtil.safeFloatCast("[N/A]"))


# ----------------------------------------------------------------------------------------------
# Finding hpsearch.py (fresh interpreters)
# ----------------------------------------------------------------------------------------------


def python(env, code, cwd, **extra):
    e = env.env(**extra)
    e.pop("PYTHONPATH", None)
    e.update(extra)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=str(cwd), env=e,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=60)


def test_import_with_vendor_on_sys_path(five, tmp_path):
    res = python(five, """
        import sys
        sys.path.insert(0, %r)
        import GPUtil
        print(GPUtil._hpsearch.__file__)
        print(GPUtil.getAvailable(order='memory', limit=2))
        """ % gh.VENDOR, tmp_path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert os.path.samefile(lines[0], gh.HPSEARCH)
    assert lines[1] == "[2, 0]"


def test_import_with_pythonpath(five, tmp_path):
    res = python(five, "import GPUtil; print(GPUtil.getFirstAvailable()[0])", tmp_path,
                 PYTHONPATH=gh.VENDOR)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "0"


def test_import_as_vendor_package(five, tmp_path):
    res = python(five, """
        import sys
        sys.path.insert(0, %r)
        from _vendor import GPUtil
        print(len(GPUtil.getGPUs()))
        """ % gh.REPO, tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "5"


def test_other_module_named_hpsearch_is_left_alone(five, tmp_path):
    (tmp_path / "hpsearch.py").write_text("MINE = True\n")
    res = python(five, """
        import sys
        import hpsearch
        sys.path.insert(0, %r)
        import GPUtil
        assert sys.modules['hpsearch'].MINE
        print(len(GPUtil.getGPUs()))
        """ % gh.VENDOR, tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "5"


def test_clear_import_error_without_hpsearch(five, tmp_path):
    lonely = tmp_path / "elsewhere" / "_vendor"
    lonely.mkdir(parents=True)
    for name in ("GPUtil.py", "_hpsearch_link.py"):  # _vendor/ without hpsearch.py above it
        shutil.copy(os.path.join(gh.VENDOR, name), str(lonely / name))
    res = python(five, """
        import sys
        sys.path.insert(0, %r)
        try:
            import GPUtil
        except ImportError as exc:
            print("IMPORTERROR", exc)
        """ % str(lonely), tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("IMPORTERROR"), res.stdout
    assert "hpsearch.py" in res.stdout
