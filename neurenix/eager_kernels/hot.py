"""Hot eager layers as compiled programs: a layer called again and again with one signature
(the body of a training loop) runs as a cached compiled program, as JAX runs eager operations.

A NumPy kernel makes several passes over memory per layer (copies for im2col, col2im adds, the
bias), where a compiled program makes one; for the spec CNN at batch 8 the convolution's
forward is 3x and its backward 1.8x faster compiled.  Compiling costs a few tenths of a
second, so a signature (layer kind, attributes, each input's shape and dtype) runs its NumPy
kernel for its first `HOT_AFTER - 1` calls and is compiled on call `HOT_AFTER`: a one-off
call never compiles, a loop compiles once.  From then on its forward is one program (the
layer's primitive composition, compiled with static shapes, run under no-grad) and its
backward a second one, compiled on the first backward that wants that set of input
gradients: the composition's `output.backward(g)`, whose forward products the compiler drops
where no gradient reads them.

The autograd node stays the eager kernel's (`record`): versions checked, gradients fresh,
`create_graph=True` differentiating the primitives.  A signature whose forward fails to
compile runs its NumPy kernel from then on (logged at INFO); a backward that fails to compile
differentiates the primitives instead.  Only float32 layers, on a CPU target that compiles:
convolutions (`conv.conv`) and linear layers big enough for threads (`linear.linear`).
`neurenix.backends.eager_compile = False` turns this off.
"""
from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

import numpy as np

from neurenix.compiler.types import DType, float32

from .. import autograd, compile_hook
from ..backends import eager_compile_enabled, target_for
from ..dispatch import wrap
from ..state import enable_grad, no_grad
from ..tensor import Tensor

HOT_AFTER = 3
"""The call of one signature that compiles it (earlier calls run the NumPy kernel)."""
MAX_LAYERS = 64
"""Compiled signatures kept per process (least recently used dropped first)."""
MAX_COUNTED = 4096
"""Signatures counted before the counts start over (a bound for shape-varying callers)."""

log = logging.getLogger("neurenix.compile")

Composite = Callable[..., Sequence[Tensor]]
Backward = Callable[[list[np.ndarray | None]], list[np.ndarray | None]]

_lock = threading.Lock()
_counts: dict[tuple, int] = {}
_layers: OrderedDict[tuple, HotLayer | None] = OrderedDict()  # None: its compile failed


class HotLayer:
    """One signature's compiled forward and, per set of wanted input gradients, backward."""

    def __init__(self, key: tuple, name: str, composite: Composite,
                 present: tuple[bool, ...]) -> None:
        self.key = key
        self._name = name
        self._composite = composite
        self._present = present
        self._forward: Callable[..., Tensor] | None = None
        self._backward: dict[tuple[bool, ...], Callable[..., tuple[Tensor, ...]] | None] = {}
        self.compiled = False  # the forward compiled and ran

    def _full(self, given: Sequence[Tensor]) -> list[Tensor | None]:
        """The composition's arguments: the present inputs, None where an input is absent."""
        it = iter(given)
        return [next(it) if p else None for p in self._present]

    def _output(self, *given: Tensor) -> Tensor:
        """The composition's one output (it may return it bare or in a sequence)."""
        made = self._composite(*self._full(given))
        return made if isinstance(made, Tensor) else made[0]

    def _compile(self, fn: Callable[..., object], part: str) -> Callable[..., object]:
        def program(*args: Tensor) -> object:
            return fn(*args)

        program.__name__ = program.__qualname__ = f"{self._name}[eager {part}]"
        return compile_hook.compiler()(program, dynamic=False)

    def _failed(self, e: Exception, part: str, instead: str) -> None:
        log.info("eager %s %s: not compiled (%s: %s); %s", self._name, part,
                 type(e).__name__, e, instead)

    def run(self, inputs: Sequence[Tensor | None], wanted: Sequence[bool]
            ) -> tuple[np.ndarray, Backward] | None:
        """The layer's output array and its backward on arrays, as `record` takes them;
        None when the forward failed to compile (the caller runs its NumPy kernel)."""
        arrays = [np.asarray(t._data) for t in inputs if t is not None]
        dtype = next(t._dtype for t in inputs if t is not None)
        given = [wrap(a, dtype) for a in arrays]
        if self.compiled:
            with no_grad():
                out = self._forward(*given)
        else:  # the first call compiles: a failure leaves the NumPy kernel
            try:
                if self._forward is None:
                    self._forward = self._compile(self._output, "forward")
                with no_grad():
                    out = self._forward(*given)
            except Exception as e:  # noqa: BLE001 - the NumPy kernel computes it as well
                self._failed(e, "forward", "its NumPy kernel runs")
                return None
            self.compiled = True
        want = tuple(w for w, t in zip(wanted, inputs) if t is not None)

        def backward(grads: list[np.ndarray | None]) -> list[np.ndarray | None]:
            if grads[0] is None or not any(want):
                return [None] * len(inputs)
            found = iter(self._gradients(arrays, dtype, want, grads[0]))
            per_present = iter([next(found) if w else None for w in want])
            return [next(per_present) if t is not None else None for t in inputs]

        return out._data, backward

    def _gradients(self, arrays: list[np.ndarray], dtype: DType, want: tuple[bool, ...],
                   g: np.ndarray) -> list[np.ndarray]:
        """The wanted inputs' gradients for output gradient g: the backward program, or the
        primitives' where it did not compile."""
        leaves = []
        for a, w in zip(arrays, want):
            t = wrap(a, dtype)
            t.requires_grad = w
            leaves.append(t)
        out_grad = wrap(np.asarray(g, arrays[0].dtype), dtype)
        if want in self._backward:
            program = self._backward[want]
            if program is None:
                return self._primitive_gradients(leaves, want, out_grad)
            with enable_grad():
                return [t._data for t in program(out_grad, *leaves)]

        def gradients(out_grad: Tensor, *given: Tensor) -> tuple[Tensor, ...]:
            self._output(*given).backward(out_grad)
            found = tuple(t.grad for t, w in zip(given, want) if w)
            for t in given:  # the leaves are this call's own: no second copy into .grad
                t.grad = None
            return found

        try:  # the first backward for this set of gradients compiles
            program = self._compile(gradients, "backward")
            with enable_grad():
                found = [t._data for t in program(out_grad, *leaves)]
        except Exception as e:  # noqa: BLE001 - the primitives compute it as well
            self._failed(e, "backward", "the primitives' gradients instead")
            self._backward[want] = None
            for t in leaves:
                t.grad = None
            return self._primitive_gradients(leaves, want, out_grad)
        self._backward[want] = program
        return found

    def _primitive_gradients(self, leaves: list[Tensor], want: tuple[bool, ...],
                             out_grad: Tensor) -> list[np.ndarray]:
        """The wanted gradients through the primitives."""
        with enable_grad():
            y = self._output(*leaves)
            found = autograd.grad([y], [t for t, w in zip(leaves, want) if w], [out_grad])
        return [np.ascontiguousarray(t._data) for t in found]


def layer(name: str, attrs: tuple, inputs: Sequence[Tensor | None],
          composite: Composite) -> HotLayer | None:
    """The compiled layer for this call, when its signature is hot (this is at least its
    `HOT_AFTER`-th call) and compiles; None: run the NumPy kernel.  `attrs` is everything
    besides the inputs that `composite` bakes in (stride, padding, ...)."""
    if not eager_compile_enabled() or target_for("cpu") == "reference":
        return None
    if any(t is not None and t._dtype is not float32 for t in inputs):
        return None
    key = (name, attrs) + tuple(None if t is None else tuple(t._data.shape) for t in inputs)
    with _lock:
        if key in _layers:
            _layers.move_to_end(key)
            return _layers[key]
        count = _counts.get(key, 0) + 1
        if count < HOT_AFTER:
            if len(_counts) >= MAX_COUNTED:
                _counts.clear()
            _counts[key] = count
            return None
        _counts.pop(key, None)
    made = HotLayer(key, name, composite, tuple(t is not None for t in inputs))
    with _lock:
        _layers[key] = made
        while len(_layers) > MAX_LAYERS:
            _layers.popitem(last=False)
    return made


def run(name: str, attrs: tuple, inputs: Sequence[Tensor | None], wanted: Sequence[bool],
        composite: Composite) -> tuple[np.ndarray, Backward] | None:
    """`layer(...).run(inputs, wanted)` when the signature is hot and compiles, else None
    (the signature then runs its NumPy kernel from now on)."""
    found = layer(name, attrs, inputs, composite)
    if found is None:
        return None
    ran = found.run(inputs, wanted)
    if ran is None:
        with _lock:
            if _layers.get(found.key) is found:
                _layers[found.key] = None
    return ran


def clear() -> None:
    """Forget every compiled layer and call count (the next calls start counting again)."""
    with _lock:
        _counts.clear()
        _layers.clear()
