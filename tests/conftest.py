"""Test-session settings: compiled programs are cached in a private directory; under
pytest-xdist (`-n auto`) each worker process's thread pool takes its share of the cores."""
import os

import pytest


def _share_the_cores() -> None:
    """With N worker processes on C cores, each pool gets C // N threads (2 at least, so that
    the split kernels still run split), unless NEURENIX_NUM_THREADS says otherwise: a pool of
    every core per worker would have N times as many threads as cores spinning for work."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if workers.isdigit() and int(workers) > 1 and "NEURENIX_NUM_THREADS" not in os.environ:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
            else os.cpu_count() or 1
        os.environ["NEURENIX_NUM_THREADS"] = str(max(2, cores // int(workers)))


_share_the_cores()


@pytest.fixture(autouse=True, scope="session")
def _private_compile_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("NEURENIX_CACHE_DIR", str(tmp_path_factory.mktemp("neurenix-cache")))
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def _restore_thread_pool():
    """The CPU thread pool is process-wide: a test that resizes it leaves it as it found it."""
    from neurenix.runtime import cpu
    before = cpu.num_threads()
    yield
    if cpu.num_threads() != before:
        cpu.set_num_threads(before)


@pytest.fixture(autouse=True)
def _fresh_hot_layers():
    """Hot eager layers count calls per signature process-wide: every test starts counting
    afresh, so which calls run compiled does not depend on the tests before it."""
    from neurenix.eager_kernels import hot
    hot.clear()
    yield
