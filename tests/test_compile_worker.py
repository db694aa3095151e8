"""The compile worker: LLVM runs in a child process, so the parent's memory stays bounded.

Same bytes as compiling in-process; the parent's RSS flat over many compiles; the worker
recycled after N compiles or past its RSS limit; a killed worker replaced; a worker failing
twice falls back to in-process compiles with one warning; concurrent compiles from several
threads; `NEURENIX_COMPILE_WORKER=0`; and no hang, zombie or orphan when the parent exits.
"""
import logging
import os
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from neurenix.runtime import compile_worker, cpu
from test_runtime_cpu import axpy_program

TESTS = os.path.dirname(os.path.abspath(__file__))
LINUX = sys.platform.startswith("linux")


@pytest.fixture(autouse=True)
def fresh_worker(monkeypatch):
    """Each test starts without a worker (and with the worker on) and leaves none behind."""
    monkeypatch.delenv(compile_worker.ENV, raising=False)
    compile_worker.shutdown()
    yield
    compile_worker.shutdown()


@pytest.fixture(scope="module")
def sources():
    return [axpy_program(10 * (k + 1)).source for k in range(8)]


def _gone(pid: int, seconds: float = 10.0, reaped: bool = True) -> bool:
    """Whether process `pid` has exited within `seconds` and, with `reaped`, been reaped (an
    orphan's reaping is its new parent's job: whatever runs as PID 1 may never do it)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                    if not reaped:
                        return True
                    time.sleep(0.05)
                    continue
        except FileNotFoundError:
            return True
        time.sleep(0.05)
    return False


def _python(script: str, timeout: float = 60, **env: str) -> subprocess.CompletedProcess:
    environment = dict(os.environ, PYTHONPATH=f"{TESTS}{os.pathsep}"
                       f"{os.environ.get('PYTHONPATH', '')}", **env)
    return subprocess.run([sys.executable, "-c", script], env=environment,
                          capture_output=True, text=True, timeout=timeout)


def test_the_worker_gives_the_bytes_of_an_in_process_compile(sources):
    assert compile_worker.ready()
    eager = compile_worker.STATS["in_process"]
    for kind in compile_worker.KINDS:
        for jit in (False, True):
            assert compile_worker.compile_ir(sources[0], kind, jit) == \
                compile_worker.build(sources[0], kind, jit)
    assert compile_worker.worker_pid() is not None
    assert cpu.compile_object(sources[1]) == compile_worker.build(sources[1])
    assert "neurenix_entry" in cpu.optimized_ir(axpy_program())
    assert compile_worker.STATS["in_process"] == eager  # all of them in the worker


def test_the_first_compiles_run_in_process_and_start_the_worker(sources, monkeypatch):
    monkeypatch.setitem(compile_worker.STATS, "in_process", 0)
    monkeypatch.setattr(compile_worker, "EAGER_LIMIT", 4)
    for source in sources[:2]:  # a process compiling two programs starts no worker
        assert compile_worker.compile_ir(source) == compile_worker.build(source)
    assert compile_worker.worker_pid() is None and compile_worker.STATS["in_process"] == 2
    assert compile_worker.compile_ir(sources[2]) == compile_worker.build(sources[2])
    assert compile_worker.worker_pid() is not None  # starting up during the last ones
    for source in sources[3:6]:
        assert compile_worker.compile_ir(source) == compile_worker.build(source)
    assert compile_worker.STATS["in_process"] in (3, 4)  # then it waits for the worker


def test_executables_compiled_in_the_worker_run():
    assert compile_worker.ready()
    exe = cpu.CpuExecutable(axpy_program())
    assert compile_worker.worker_pid() is not None
    x, z = np.ones((100, 10), np.float32), np.full((100, 10), 3, np.float32)
    np.testing.assert_array_equal(exe.run([x, z])[0], x * 2 + z)


def test_compile_errors_are_raised_as_in_process():
    assert compile_worker.ready()
    with pytest.raises(RuntimeError, match="parsing error"):
        compile_worker.compile_ir("this is not LLVM IR")
    assert compile_worker.STATS["died"] == 0 and compile_worker.worker_pid() is not None
    with pytest.raises(ValueError, match="unknown kind"):
        compile_worker.compile_ir("", "bitcode")


RSS_SCRIPT = """
import os
from test_runtime_cpu import axpy_program
from neurenix.runtime import cpu, compile_worker

compile_worker.EAGER_LIMIT = 0

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

sources = [axpy_program(10 * (k + 1)).source for k in range(150)]
for source in sources[:20]:
    cpu.compile_object(source)
before = rss()
for source in sources[20:]:
    cpu.compile_object(source)
print(rss() - before, compile_worker.STATS["started"])
"""


@pytest.mark.skipif(not LINUX, reason="reads /proc/self/statm")
def test_the_parents_rss_stays_flat_over_many_compiles():
    done = _python(RSS_SCRIPT, timeout=120)
    assert done.returncode == 0, done.stderr
    growth, started = map(int, done.stdout.split())
    # in-process, llvmlite's pass manager leaves ~80 KiB per compile: ~10 MiB for these 130
    assert growth < 4 << 20 and started == 1


def test_the_worker_is_recycled_after_n_compiles(sources, monkeypatch):
    monkeypatch.setattr(compile_worker, "RECYCLE_AFTER", 3)
    monkeypatch.setattr(compile_worker, "EAGER_LIMIT", 0)
    started = compile_worker.STATS["started"]
    pids = []
    for source in sources[:7]:
        compile_worker.compile_ir(source)
        pids.append(compile_worker.worker_pid())
    # replaced after every third compile (the next one started at once)
    assert pids[0] == pids[1] != pids[2] == pids[3] == pids[4] != pids[5] == pids[6]
    assert compile_worker.STATS["started"] - started == 3
    if LINUX:
        assert _gone(pids[0]) and _gone(pids[2])  # stopped and reaped: no zombies


def test_the_worker_is_recycled_past_its_rss_limit(sources, monkeypatch):
    monkeypatch.setattr(compile_worker, "RSS_LIMIT", 1)
    monkeypatch.setattr(compile_worker, "EAGER_LIMIT", 0)
    recycled, started = compile_worker.STATS["recycled"], compile_worker.STATS["started"]
    for source in sources[:2]:
        assert compile_worker.compile_ir(source) == compile_worker.build(source)
    assert compile_worker.STATS["recycled"] - recycled == 2
    assert compile_worker.STATS["started"] - started == 3


def test_a_worker_killed_between_compiles_is_replaced(sources, monkeypatch):
    monkeypatch.setattr(compile_worker, "EAGER_LIMIT", 0)
    compile_worker.compile_ir(sources[0])
    pid = compile_worker.worker_pid()
    os.kill(pid, signal.SIGKILL)
    assert compile_worker.compile_ir(sources[1]) == compile_worker.build(sources[1])
    assert compile_worker.worker_pid() not in (None, pid)


def test_a_worker_dying_during_a_compile_is_replaced_and_the_compile_retried(sources,
                                                                             monkeypatch):
    monkeypatch.setattr(compile_worker, "EAGER_LIMIT", 0)
    compile_worker.compile_ir(sources[0])
    pid = compile_worker.worker_pid()
    request = compile_worker.Worker.request

    def killed_first(self, *args):
        if self.pid == pid:
            os.kill(self.pid, signal.SIGKILL)
            self.process.wait()
        return request(self, *args)

    monkeypatch.setattr(compile_worker.Worker, "request", killed_first)
    died = compile_worker.STATS["died"]
    assert compile_worker.compile_ir(sources[1]) == compile_worker.build(sources[1])
    assert compile_worker.STATS["died"] - died == 1
    assert compile_worker.worker_pid() not in (None, pid)


def test_a_worker_failing_twice_falls_back_to_compiling_in_process(sources, monkeypatch,
                                                                   caplog):
    monkeypatch.setattr(compile_worker, "_BOOT", "import sys; sys.exit(3)")
    monkeypatch.setattr(compile_worker, "EAGER_LIMIT", 0)
    with caplog.at_level(logging.WARNING, logger="neurenix.runtime.compile_worker"):
        for source in sources[:3]:
            assert compile_worker.compile_ir(source) == compile_worker.build(source)
    warnings = [r for r in caplog.records if "compile worker failed twice" in r.getMessage()]
    assert len(warnings) == 1 and not compile_worker.enabled()
    assert compile_worker.worker_pid() is None


def test_concurrent_compiles_from_four_threads(sources, monkeypatch):
    monkeypatch.setattr(compile_worker, "EAGER_LIMIT", 0)
    expected = {source: compile_worker.build(source) for source in sources}
    started = compile_worker.STATS["started"]
    results: list[bool] = []
    barrier = threading.Barrier(4)

    def compile_some(k):
        barrier.wait()
        for source in sources[k:] + sources[:k]:
            results.append(compile_worker.compile_ir(source) == expected[source])

    threads = [threading.Thread(target=compile_some, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == 4 * len(sources) and all(results)
    assert compile_worker.STATS["started"] - started == 1


def test_worker_off_compiles_in_process(sources, monkeypatch):
    monkeypatch.setenv(compile_worker.ENV, "0")
    started = compile_worker.STATS["started"]
    assert cpu.compile_object(sources[0]) == compile_worker.build(sources[0])
    assert compile_worker.worker_pid() is None
    assert compile_worker.STATS["started"] == started
    monkeypatch.setenv(compile_worker.ENV, "yes")
    with pytest.raises(ValueError, match=compile_worker.ENV):
        cpu.compile_object(sources[0])


EXIT_SCRIPT = """
import sys, threading
from test_runtime_cpu import axpy_program
from neurenix.runtime import compile_worker
compile_worker.EAGER_LIMIT = 0
source = axpy_program(20).source
compile_worker.compile_ir(source)
print(compile_worker.worker_pid(), flush=True)
if sys.argv[1:] == ["busy"]:  # exit while a daemon thread compiles
    threading.Thread(target=lambda: [compile_worker.compile_ir(source) for _ in range(50)],
                     daemon=True).start()
elif sys.argv[1:] == ["killed"]:
    threading.Event().wait()
"""


@pytest.mark.skipif(not LINUX, reason="reads /proc")
@pytest.mark.parametrize("how", ["idle", "busy"])
def test_exiting_with_a_live_worker_does_not_hang(how):
    environment = dict(os.environ, PYTHONPATH=f"{TESTS}{os.pathsep}"
                       f"{os.environ.get('PYTHONPATH', '')}")
    done = subprocess.run([sys.executable, "-c", EXIT_SCRIPT, how], env=environment,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert _gone(int(done.stdout.split()[0]))


@pytest.mark.skipif(not LINUX, reason="reads /proc")
def test_a_killed_parents_worker_exits_by_itself():
    environment = dict(os.environ, PYTHONPATH=f"{TESTS}{os.pathsep}"
                       f"{os.environ.get('PYTHONPATH', '')}")
    parent = subprocess.Popen([sys.executable, "-c", EXIT_SCRIPT, "killed"], env=environment,
                              stdout=subprocess.PIPE, text=True)
    try:
        pid = int(parent.stdout.readline())
    finally:
        parent.kill()
        parent.wait()
        parent.stdout.close()
    assert _gone(pid, reaped=False)


FORK_SCRIPT = """
import os
from test_runtime_cpu import axpy_program
from neurenix.runtime import compile_worker
compile_worker.EAGER_LIMIT = 0
sources = [axpy_program(10 * k).source for k in (1, 2, 3)]
compile_worker.compile_ir(sources[0])
pid = compile_worker.worker_pid()
child = os.fork()
if child == 0:
    ok = compile_worker.compile_ir(sources[1]) == compile_worker.build(sources[1])
    ok = ok and compile_worker.worker_pid() not in (None, pid)
    compile_worker.shutdown()
    os._exit(0 if ok else 1)
_, status = os.waitpid(child, 0)
assert compile_worker.compile_ir(sources[2]) == compile_worker.build(sources[2])
print(os.waitstatus_to_exitcode(status), compile_worker.worker_pid() == pid)
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_starts_its_own_worker():
    done = _python(FORK_SCRIPT)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "True"]
