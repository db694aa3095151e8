"""Test-session settings: compiled programs are cached in a private directory."""
import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_compile_cache(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("NEURENIX_CACHE_DIR", str(tmp_path_factory.mktemp("neurenix-cache")))
    yield
    mp.undo()
