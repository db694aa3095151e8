"""The frontend's ambient state: grad mode and the active trace.

This module imports nothing else of Neurenix, so every layer can ask it: `dispatch.apply` asks
for the current trace and, when there is one, hands the operation to it
(`trace.process_primitive`, JAX's `bind`); autograd asks whether gradients are recorded.
Both live in `contextvars.ContextVar`s: each thread starts with grad mode on and no trace
(a new thread runs in a fresh context), and a `with` block changes them for its own thread
(or asyncio task) only.  Nothing assigns another module's globals: a trace is entered with
`use_trace(trace)` and the layers below call the methods of `Trace`.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, Protocol

_GRAD: ContextVar[bool] = ContextVar("neurenix_grad_enabled", default=True)
_TRACE: ContextVar[Trace | None] = ContextVar("neurenix_trace", default=None)
# which trace a tensor was made in: bumped when a trace starts and when it ends, so a tensor
# whose `_born` equals the trace's epoch was made inside that trace (a constant of the traced
# function); process-wide, as tensors move between threads
EPOCH = [0]  # read directly by Tensor construction (hot); bumped only by use_trace


# ---- grad mode -------------------------------------------------------------------------------

def is_grad_enabled() -> bool:
    """Whether operations are being recorded for autograd."""
    return _GRAD.get()


read_grad_mode: Callable[[], bool] = _GRAD.get
"""`is_grad_enabled` without the Python call around it (the dispatch hot path)."""


class set_grad_enabled(contextlib.ContextDecorator):
    """Turn gradient recording on or off inside a `with` block (or a decorated function)."""

    def __init__(self, mode: bool) -> None:
        self.mode = bool(mode)
        self.tokens: list[Any] = []

    def __enter__(self) -> None:
        self.tokens.append(_GRAD.set(self.mode))

    def __exit__(self, *exc: Any) -> None:
        _GRAD.reset(self.tokens.pop())


class no_grad(set_grad_enabled):
    """Context manager and decorator: run without recording gradients."""

    def __init__(self) -> None:
        super().__init__(False)


class inference_mode(set_grad_enabled):
    """Context manager and decorator (with or without parentheses): run without recording
    gradients, as `no_grad` (PyTorch's inference mode; Neurenix has no separate inference
    tensors).  `inference_mode(False)` leaves grad mode as it is."""

    def __new__(cls, mode: Any = True) -> Any:
        if callable(mode):  # @inference_mode without parentheses
            return cls()(mode)
        return super().__new__(cls)

    def __init__(self, mode: bool = True) -> None:
        if not isinstance(mode, bool):
            raise TypeError(f"inference_mode: mode must be a bool, got {type(mode).__name__}")
        super().__init__(False)
        self.enabled = mode

    def __enter__(self) -> None:
        self.tokens.append(_GRAD.set(False if self.enabled else _GRAD.get()))


class enable_grad(set_grad_enabled):
    """Context manager and decorator: record gradients even inside `no_grad`."""

    def __init__(self) -> None:
        super().__init__(True)


# ---- the active trace ------------------------------------------------------------------------

class Trace(Protocol):
    """What an active trace (`neurenix.compilation.tracing.TraceState`) does for the layers
    below it.  Tensors are `neurenix.Tensor`s; symbolic ones hold a graph value."""

    def process_primitive(self, op: str, inputs: tuple[Any, ...], attrs: dict) -> Any:
        """Append primitive `op` to the graph; the symbolic result."""

    def made_here(self, tensor: Any) -> bool:
        """Whether `tensor` is an eager tensor the traced function made itself."""

    def detached(self, tensor: Any, counted: bool = True) -> Any:
        """`tensor.detach()` in the trace: its value, cut from autodiff, as a view of it
        (`counted` False for `.data`: writes through it bump no version of `tensor`)."""

    def value_of(self, tensor: Any) -> Any:
        """A symbolic tensor for `tensor`'s value in the trace now."""

    def write(self, target: Any, value: Any) -> bool:
        """An in-place write of `value` into `target`; False when it is an eager one."""

    def read_grad(self, tensor: Any) -> Any:
        """`tensor.grad` inside the trace."""

    def write_grad(self, tensor: Any, value: Any) -> None:
        """`tensor.grad = value` inside the trace."""

    def reset_grad(self, tensor: Any, set_to_none: bool) -> None:
        """`zero_grad` of `tensor` inside the trace: None, or zeros where a gradient exists."""

    def backward(self, root: Any, gradient: Any) -> None:
        """`root.backward(gradient)` for a symbolic `root`: the backward joins the graph."""

    def seed(self) -> Any:
        """An int64 seed for a random primitive: a per-call input of the program."""

    def check_values(self, values: tuple[Any, ...], test: Callable[..., None]) -> None:
        """Run `test` on `values` after every call of the compiled program."""

    def enter_module(self, module: Any) -> None:
        """A Module is called inside the trace: its parameters and buffers become inputs."""

    def host_values(self, compute: Callable[[], tuple], like: Any, count: int,
                    commit: Callable[[], None] | None) -> tuple:
        """`count` scalars `compute()` gives before every call, as 0-d inputs."""

    def lift(self, tensor: Any, name: str) -> None:
        """Make an eager tensor an input read (and written back) on every call."""

    def guard(self, what: str, read: Callable[[list[Any]], Any]) -> None:
        """Reuse the program only while `read(args)` gives what it gives now."""

    def store_item(self, container: dict, key: Any, value: Any) -> None:
        """`container[key] = value`, assigned the computed value after every call."""


def current_trace() -> Trace | None:
    """The trace tensor operations in this thread go to, or None when running eagerly."""
    return _TRACE.get()


read_trace: Callable[[], Trace | None] = _TRACE.get
"""`current_trace` without the Python call around it (the dispatch hot path)."""


def is_tracing() -> bool:
    """Whether tensor operations in this thread are being traced."""
    return _TRACE.get() is not None


@contextlib.contextmanager
def use_trace(trace: Trace) -> Iterator[Trace]:
    """Route tensor operations in this thread to `trace`; tensors made meanwhile belong to
    the epoch `trace_epoch()` returns inside the block."""
    token = _TRACE.set(trace)
    EPOCH[0] += 1
    try:
        yield trace
    finally:
        _TRACE.reset(token)
        EPOCH[0] += 1


@contextlib.contextmanager
def suspended() -> Iterator[None]:
    """Run eagerly inside a trace (for values that are plain data, e.g. index positions)."""
    token = _TRACE.set(None)
    try:
        yield
    finally:
        _TRACE.reset(token)


def trace_epoch() -> int:
    """The current trace epoch (see `use_trace`): what a new tensor records as its birth."""
    return EPOCH[0]
