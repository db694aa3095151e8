"""`neurenix.state`: grad mode and the active trace, per thread, and how dispatch asks for them."""
from __future__ import annotations

import ast
import threading
from pathlib import Path

import numpy as np

import neurenix
from neurenix import state
from neurenix.dispatch import apply


def _in_thread(fn):
    """fn() run in a new thread; its result (or the exception it raised)."""
    out = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            out["value"] = e

    t = threading.Thread(target=run)
    t.start()
    t.join()
    return out["value"]


class _RecordingTrace:
    """A stand-in trace: records what dispatch hands it."""

    def __init__(self):
        self.calls = []

    def process_primitive(self, op, inputs, attrs):
        self.calls.append((op, len(inputs), attrs))
        return "symbolic"


def test_state_imports_nothing_of_neurenix():
    tree = ast.parse(Path(state.__file__).read_text())
    names = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
             for alias in node.names]
    names += [node.module or "." for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom)]
    names += ["." for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and node.level]
    assert not [n for n in names if n.startswith(("neurenix", "."))], names


def test_grad_mode_nests_and_restores():
    assert neurenix.is_grad_enabled()
    with neurenix.no_grad():
        assert not neurenix.is_grad_enabled()
        with neurenix.enable_grad():
            assert neurenix.is_grad_enabled()
        assert not neurenix.is_grad_enabled()
    assert neurenix.is_grad_enabled()

    @neurenix.no_grad()
    def f():
        return neurenix.is_grad_enabled()

    assert f() is False and neurenix.is_grad_enabled()


def test_grad_mode_is_per_thread():
    with neurenix.no_grad():
        # a new thread starts with grad mode on, whatever this thread set
        assert _in_thread(neurenix.is_grad_enabled) is True
        x = neurenix.ones(2, requires_grad=True)
        y = _in_thread(lambda: x * 2)
        assert y.requires_grad and not (x * 2).requires_grad

    def turn_off():
        neurenix.set_grad_enabled(False).__enter__()  # left switched off in that thread
        return neurenix.is_grad_enabled()

    assert _in_thread(turn_off) is False
    assert neurenix.is_grad_enabled()


def test_dispatch_hands_operations_to_the_current_trace():
    trace = _RecordingTrace()
    x = neurenix.ones(3)
    with state.use_trace(trace):
        assert state.current_trace() is trace and state.is_tracing()
        assert apply("add", x, x) == "symbolic"
        # another thread is not tracing: it computes eagerly meanwhile
        other = _in_thread(lambda: (state.current_trace(), (x + x).numpy()))
        with state.suspended():
            eager = apply("mul", x, x)
    assert trace.calls == [("add", 2, {})]
    assert other[0] is None
    np.testing.assert_array_equal(other[1], [2.0, 2.0, 2.0])
    np.testing.assert_array_equal(eager.numpy(), [1.0, 1.0, 1.0])
    assert state.current_trace() is None and not state.is_tracing()


def test_a_trace_epoch_marks_tensors_made_inside_it():
    before = neurenix.ones(1)
    with state.use_trace(_RecordingTrace()):
        epoch = state.trace_epoch()
        with state.suspended():
            inside = neurenix.ones(1)
    after = neurenix.ones(1)
    assert inside._born == epoch
    assert before._born != epoch and after._born != epoch
