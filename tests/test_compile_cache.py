"""The on-disk compile cache: hits, corrupt entries rebuilt, and switching it off."""
import numpy as np
import pytest
from neurenix.compiler import pipeline

import neurenix
from neurenix import nn

pytestmark = pytest.mark.skipif(pipeline.default_backend() != "llvm",
                                reason="the disk cache holds LLVM machine code")


def _run(model, x):
    compiled = neurenix.compile(model)
    with neurenix.no_grad():
        return compiled(x).numpy().copy(), compiled.stats()["cache"]


def _model():
    neurenix.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 2)).eval()


def test_second_compile_hits_and_agrees(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURENIX_CACHE_DIR", str(tmp_path))
    model, x = _model(), neurenix.randn(3, 5)
    first, state = _run(model, x)
    assert state == "miss" and list(tmp_path.glob("*.bin"))
    second, state = _run(model, x)
    assert state == "hit"
    np.testing.assert_array_equal(first, second)
    with neurenix.no_grad():
        np.testing.assert_allclose(second, model(x).numpy(), rtol=1e-5, atol=1e-6)


def test_a_different_graph_does_not_hit(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURENIX_CACHE_DIR", str(tmp_path))
    _run(_model(), neurenix.randn(3, 5))
    assert _run(_model(), neurenix.randn(4, 5))[1] == "miss"


def test_corrupt_entry_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURENIX_CACHE_DIR", str(tmp_path))
    model, x = _model(), neurenix.randn(3, 5)
    want, _ = _run(model, x)
    (entry,) = tmp_path.glob("*.bin")
    entry.write_bytes(entry.read_bytes()[:40] + b"garbage")
    got, state = _run(model, x)
    assert state == "miss"
    np.testing.assert_array_equal(got, want)


def test_cache_can_be_switched_off(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURENIX_CACHE_DIR", "off")
    assert _run(_model(), neurenix.randn(3, 5))[1] == "miss"
    assert _run(_model(), neurenix.randn(3, 5))[1] == "miss"
