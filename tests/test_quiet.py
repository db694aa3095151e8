"""Quiet by default: compiling writes nothing to stderr (no LLVM remarks), recompiles are
logged at INFO, and a function recompiling past its limit warns once and goes on."""
import logging
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from llvmlite import ir
from neurenix.compiler.codegen.llvm_loops import FunctionBuilder
from neurenix.compiler.codegen.llvm_math import F32, I64, PTR

import neurenix
from neurenix import nn

_MODELS = """
import neurenix as nx
from neurenix import nn, optim

nx.manual_seed(0)
conv = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                     nn.Linear(4 * 3 * 3, 2))
nx.compile(conv)(nx.randn(2, 3, 8, 8)).sum().backward()
# pooling rows 2 wide, a matmul whose last column tile is 2 wide (6 = 4 + 2 outputs), a 3-D
# convolution: loops LLVM finds to run exactly twice
pools = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.MaxPool2d(2),
                      nn.AvgPool2d(2, stride=1), nn.Flatten(), nn.Linear(3 * 3 * 2, 6))
nx.compile(pools)(nx.randn(3, 2, 8, 6)).sum().backward()
conv3d = nn.Conv3d(4, 4, (3, 2, 2), stride=(1, 2, 1), padding=(1, 0, 1), dilation=(1, 1, 2),
                   groups=2)
nx.compile(conv3d)(nx.randn(1, 4, 5, 5, 5)).sum().backward()
# the LSTM's outputs stacked over time steps: a loop picking its source by an outer index
lstm = nn.LSTM(3, 9, batch_first=True)
nx.compile(lstm)(nx.randn(2, 4, 3))[0].sum().backward()
with nx.no_grad():
    nx.compile(lstm)(nx.randn(2, 4, 3))
gru = nn.GRU(3, 4, batch_first=True)
nx.compile(gru)(nx.randn(2, 5, 3))[0].sum().backward()
mlp = nn.Sequential(nn.Linear(30, 64), nn.GELU(), nn.LayerNorm(64), nn.Linear(64, 10))
opt = optim.Adam(mlp.parameters(), lr=1e-3)
crit = nn.CrossEntropyLoss()

@nx.compile
def step(x, y):
    opt.zero_grad()
    loss = crit(mlp(x), y)
    loss.backward()
    opt.step()
    return loss

for n in (16, 7):  # a recompile: logged at INFO, not shown
    step(nx.randn(n, 30), nx.randint(0, 10, (n,)))
with nx.no_grad():
    for n in (1, 5, 33):
        nx.compile(lambda x: (x.softmax(-1) * x).sum(0).max() + x.mean(), backend="llvm")(
            nx.randn(n, 29))
print("done")
"""


@pytest.mark.skipif(neurenix.compiler.targets.default_target() != "llvm",
                    reason="the LLVM backend is not available")
def test_compiling_writes_nothing_to_stderr(tmp_path):
    """Conv, pooling, normalisation, recurrent layers, a training step and reductions,
    forward and backward, in a fresh process with a fresh disk cache (so LLVM runs)."""
    script = tmp_path / "models.py"
    script.write_text(textwrap.dedent(_MODELS))
    env = dict(os.environ, NEURENIX_CACHE_DIR=str(tmp_path / "cache"))
    run = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         env=env, timeout=600)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "done"
    assert run.stderr == ""


# ---- recompiles: INFO, and one warning past the limit -----------------------------------------


def _scaled(limit: int | None = None):
    return neurenix.compile(lambda x: x * 3, backend="reference", recompile_limit=limit)


def test_recompiles_log_their_reason_at_info_only(caplog):
    f = _scaled()
    with caplog.at_level(logging.INFO, logger="neurenix.compile"):
        f(neurenix.randn(4, 2))
        assert not caplog.records  # the first compile is not a recompile
        f(neurenix.randn(5, 2))
    assert [(r.name, r.levelno) for r in caplog.records] == [("neurenix.compile", logging.INFO)]
    assert "input 0 shape changed (4, 2) -> (5, 2)" in caplog.records[0].getMessage()


def test_past_the_recompile_limit_one_warning_and_it_goes_on(caplog, monkeypatch):
    monkeypatch.delenv("NEURENIX_RECOMPILE_LIMIT", raising=False)
    f = _scaled()
    with caplog.at_level(logging.WARNING, logger="neurenix.compile"):
        for n in range(1, 9):  # 8 programs: within the default limit
            f(neurenix.randn(n, 2))
        assert not caplog.records
        x = neurenix.randn(9, 2)
        np.testing.assert_allclose(f(x).numpy(), x.numpy() * 3, rtol=1e-6)  # the 9th warns
        for n in range(10, 20):
            x = neurenix.randn(n, 2)
            np.testing.assert_allclose(f(x).numpy(), x.numpy() * 3, rtol=1e-6)
    assert f.cache_size == 19
    assert len(caplog.records) == 1
    message = caplog.records[0].getMessage()
    assert caplog.records[0].levelno == logging.WARNING
    assert "9 programs" in message and "recompile limit of 8" in message
    assert "input 0 shape changed (8, 2) -> (9, 2)" in message
    assert "pad or bucket" in message and "recompile_limit=" in message
    assert "NEURENIX_RECOMPILE_LIMIT" in message


def test_the_limit_from_the_argument_and_from_the_environment(caplog, monkeypatch):
    monkeypatch.setenv("NEURENIX_RECOMPILE_LIMIT", "2")
    with caplog.at_level(logging.WARNING, logger="neurenix.compile"):
        f = _scaled()
        for n in range(1, 4):
            f(neurenix.randn(n, 2))
        assert len(caplog.records) == 1 and "limit of 2" in caplog.text
        caplog.clear()
        g = _scaled(limit=3)  # the argument wins
        for n in range(1, 5):
            g(neurenix.randn(n, 2))
        assert len(caplog.records) == 1 and "limit of 3" in caplog.text
    for bad in (0, -1, 2.5):
        with pytest.raises(ValueError, match="recompile_limit"):
            _scaled(limit=bad)
    monkeypatch.setenv("NEURENIX_RECOMPILE_LIMIT", "lots")
    with pytest.raises(ValueError, match="NEURENIX_RECOMPILE_LIMIT"):
        _scaled()(neurenix.randn(1, 2))


def test_guard_recompiles_are_info_too(caplog):
    model = nn.Sequential(nn.Linear(3, 2), nn.Dropout(0.5))
    f = neurenix.compile(model, backend="reference")
    x = neurenix.randn(2, 3)
    with neurenix.no_grad(), caplog.at_level(logging.INFO, logger="neurenix.compile"):
        f(x)
        model.eval()
        f(x)
    assert [r.levelno for r in caplog.records] == [logging.INFO]
    assert "training True -> False" in caplog.text


def test_a_symbolic_programs_failed_guard_is_the_reason_given(caplog):
    """A call whose sizes fit a program for every batch size but whose guards fail (the
    parameters' gradients now exist) names those guards, not its sizes against the symbolic
    signature ("shape changed ('*', 3) -> (4, 3)")."""
    model = nn.Linear(3, 2)

    def step(x):
        loss = model(x).sum()
        loss.backward()
        return loss

    f = neurenix.compile(step, dynamic=True)
    with caplog.at_level(logging.INFO, logger="neurenix.compile"):
        f(neurenix.randn(4, 3))
        f(neurenix.randn(4, 3))
    (message,) = [r.getMessage() for r in caplog.records]
    assert "weight.grad is None: True -> False" in message, message
    assert "shape changed" not in message, message


# ---- which loops are forced to vectorize ------------------------------------------------------


def _forced(emit) -> bool:
    """Whether the one loop `emit(fb, x_pointer, n)` builds carries the forced hint."""
    module = ir.Module()
    fn = ir.Function(module, ir.FunctionType(ir.VoidType(), [PTR, I64]), "f")
    fb = FunctionBuilder(fn)
    emit(fb, *fn.args)
    fb.b.ret_void()
    return "llvm.loop.vectorize.enable" in str(module)


def _store_loop(fb, x, lo, hi, value=None):
    with fb.loop(lo, hi, "i", vectorize=True) as i:
        ptr = fb.b.gep(x, [i], inbounds=True, source_etype=F32)
        fb.b.store(value(fb, i) if value else ir.Constant(F32, 1.0), ptr)


def test_short_loops_are_not_forced_to_vectorize():
    """A loop LLVM may find to run twice is left to its cost model (forcing it prints
    'loop not vectorized' on stderr); longer and unbounded loops stay forced."""
    assert not _forced(lambda fb, x, n: _store_loop(fb, x, 0, 2))
    assert _forced(lambda fb, x, n: _store_loop(fb, x, 0, 4))
    assert _forced(lambda fb, x, n: _store_loop(fb, x, 0, n))
    assert not _forced(lambda fb, x, n: _store_loop(fb, x, 0, fb.min(n, 4)))  # an edge tile
    assert _forced(lambda fb, x, n: _store_loop(fb, x, 0, fb.min(n, 16)))
    assert not _forced(lambda fb, x, n: _store_loop(fb, x, 0, fb.min(fb.min(n, 64), 4)))


def test_loops_picking_by_an_outer_condition_are_not_forced():
    """A branch on a condition the loop index does not change, tested again by a select
    (a concatenation along an outer axis), becomes a switch LLVM cannot vectorize."""
    def pick(reuse: bool, outer_condition: bool):
        def value(fb, i):
            b = fb.b
            n = fb.fn.args[1]
            cond = b.icmp_signed("<", n if outer_condition else i, ir.Constant(I64, 3))
            with b.if_then(cond):
                pass
            one, two = ir.Constant(F32, 1.0), ir.Constant(F32, 2.0)
            return b.select(cond, one, two) if reuse else one
        return lambda fb, x, n: _store_loop(fb, x, 0, n, value)

    assert not _forced(pick(reuse=True, outer_condition=True))
    assert _forced(pick(reuse=False, outer_condition=True))  # one test: no switch
    assert _forced(pick(reuse=True, outer_condition=False))  # the index's own condition
