"""Test-session settings: compiled programs are cached in a private directory."""
import pytest


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
