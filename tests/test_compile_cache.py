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


def _corrupt_every_entry(directory):
    entries = list(directory.glob("*.bin"))
    assert len(entries) == 2  # the program, and the record of what the traced graph built
    for entry in entries:
        entry.write_bytes(entry.read_bytes()[:40] + b"garbage")


def _remove_the_program(directory):
    # the program entry is the larger one (it holds machine code)
    max(directory.glob("*.bin"), key=lambda p: p.stat().st_size).unlink()


@pytest.mark.parametrize("damage", [_corrupt_every_entry, _remove_the_program],
                         ids=["corrupt-entries", "program-gone"])
def test_a_damaged_cache_compiles_again(tmp_path, monkeypatch, damage):
    monkeypatch.setenv("NEURENIX_CACHE_DIR", str(tmp_path))
    model, x = _model(), neurenix.randn(3, 5)
    want, _ = _run(model, x)
    damage(tmp_path)
    got, state = _run(model, x)
    assert state == "miss"
    np.testing.assert_array_equal(got, want)


def test_a_hit_skips_the_passes_and_code_generation(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURENIX_CACHE_DIR", str(tmp_path))
    model, x = _model(), neurenix.randn(3, 5)
    for _ in range(2):  # the same call site: graphs carry the user's file:line
        compiled = neurenix.compile(model)
        with neurenix.no_grad():
            compiled(x)
    stats = compiled.stats()
    assert stats["cache"] == "hit"
    assert set(stats["seconds"]) == {"trace_and_passes", "cache_load"}
    assert stats["kernels"] > 0 and compiled.graph is not None


def test_a_training_step_hits_and_trains_the_same(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURENIX_CACHE_DIR", str(tmp_path))
    x, y = neurenix.randn(4, 5), neurenix.randint(0, 2, (4,))
    results = []
    for _ in range(2):
        model = _model()
        opt = neurenix.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        crit = nn.CrossEntropyLoss()

        def step(x, y, model=model, opt=opt, crit=crit):
            opt.zero_grad()
            loss = crit(model(x), y)
            loss.backward()
            opt.step()
            return loss

        compiled = neurenix.compile(step)
        losses = [compiled(x, y).item() for _ in range(3)]
        results.append((losses, compiled.stats()["cache"]))
    assert [r[1] for r in results] == ["miss", "hit"]
    assert results[0][0] == results[1][0]


def test_cache_can_be_switched_off(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURENIX_CACHE_DIR", "off")
    assert _run(_model(), neurenix.randn(3, 5))[1] == "miss"
    assert _run(_model(), neurenix.randn(3, 5))[1] == "miss"


def test_a_changed_compiler_does_not_reuse_old_programs(tmp_path, monkeypatch):
    """The key holds a digest of Neurenix's source: an edited compiler compiles again."""
    from neurenix import compile_cache
    monkeypatch.setenv("NEURENIX_CACHE_DIR", str(tmp_path))
    model, x = _model(), neurenix.randn(3, 5)
    assert _run(model, x)[1] == "miss"
    assert _run(model, x)[1] == "hit"
    monkeypatch.setattr(compile_cache, "_CODE", ["an edited compiler"])
    assert _run(model, x)[1] == "miss"


HIT_SCRIPT = """
import sys, neurenix
from neurenix import nn
neurenix.manual_seed(0)
model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 2)).eval()
compiled = neurenix.compile(model)
with neurenix.no_grad():
    compiled(neurenix.ones(3, 5))
print(compiled.stats()["cache"], "llvmlite.binding" in sys.modules)
"""


def test_a_hit_in_a_new_process_does_not_load_llvm(tmp_path):
    """With a system linker a cached program is a shared library: a hit needs no LLVM."""
    import subprocess
    import sys

    from neurenix.runtime import cpu
    if cpu.linker() is None:
        pytest.skip("no system linker (ld) here")
    env = dict(__import__("os").environ, NEURENIX_CACHE_DIR=str(tmp_path))
    runs = [subprocess.run([sys.executable, "-c", HIT_SCRIPT], env=env, capture_output=True,
                           text=True, check=True).stdout.split() for _ in range(2)]
    assert runs == [["miss", "True"], ["hit", "False"]]
