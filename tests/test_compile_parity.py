"""The core parity tests again, through `neurenix.compile`: eager vs compiled vs PyTorch.

`check_compiled` runs a function (or a module) eagerly, then compiled with each backend, and
compares forward values, the gradients of every floating input and of every parameter (one
seeded random upstream gradient per output, backpropagated through the compiled backward
program), and the buffers a module updates in place (BatchNorm's running statistics).  Given a
PyTorch twin, it also compares eager with PyTorch, so each case checks all three.
"""
from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch
import toy_target
from devices import GPU_DEVICES, needs_device
from neurenix.compiler.targets import get_target
from op_helpers import assert_close, make_data

import neurenix as nx
import neurenix.nn as nn

# the kernel evaluator as a target (tests/toy_target.py): the same pipeline down to the
# scheduled kernels, which it interprets — the table's second generating target
BACKENDS = ("reference", "llvm", toy_target.register().name)
REFERENCE = ("reference",)
# compiled vs eager: the same math, possibly a different summation order in generated loops
FWD = (1e-5, 1e-6)
GRAD = (1e-5, 1e-5)
# convolutions, normalisations and recurrences sum long products in another order (and their
# backward adds several such reductions), so float32 agreement is one decade looser
LOOSE = (1e-4, 1e-5)
LOOSE_GRAD = (1e-4, 1e-4)


# ---- the harness ----------------------------------------------------------------------------


@dataclass
class _Result:
    outputs: list[nx.Tensor]
    input_grads: list[np.ndarray | None]
    param_grads: dict[str, np.ndarray | None]
    buffers: dict[str, np.ndarray] = field(default_factory=dict)
    devices: dict[str, str] = field(default_factory=dict)  # where each gradient was


def _leaves(value: Any) -> list:
    """The tensors of a (nested) tuple/list result, in order."""
    if isinstance(value, (tuple, list)):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


def _upstream(outputs: Sequence, seed: int) -> list[np.ndarray | None]:
    """One seeded random upstream gradient per floating output that takes part in autograd."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(tuple(o.shape)).astype(np.float64)
            if o.requires_grad else None for o in outputs]


def _run_neurenix(fn: Callable, module: nn.Module | None, arrays: Sequence[np.ndarray],
                  grad: bool, seed: int, arrange: Callable, device: str | None = None) -> _Result:
    """Run `fn` on tensors of `arrays` (on `device`, default the CPU), backpropagate seeded
    upstream gradients, and collect outputs, gradients and the module's buffers."""
    inputs = [nx.tensor(a, requires_grad=grad and a.dtype.kind == "f", device=device)
              for a in arrays]
    params = dict(module.named_parameters()) if module is not None else {}
    for p in params.values():
        p.grad = None
    outputs = _leaves(fn(*arrange(*inputs)))
    loss = None
    for out, up in zip(outputs, _upstream(outputs, seed)):
        if up is not None:
            # on the CPU (eager device operations are not under test here): the gradient
            # reaches the device through `to`'s backward
            host = out.to("cpu") if device is not None else out
            term = (host * nx.tensor(up.astype(out.dtype.np_type))).sum()
            loss = term if loss is None else loss + term
    if loss is not None:
        loss.backward()
    buffers = {}
    if module is not None:
        buffers = {n: b.numpy().copy() for n, b in module.named_buffers()}
    devices = {f"grad of input {i}": t.grad.device.type.value
               for i, t in enumerate(inputs) if t.grad is not None}
    devices.update({f"grad of {n}": p.grad.device.type.value for n, p in params.items()
                    if p.grad is not None})
    return _Result(outputs, [t.grad.numpy().copy() if t.grad is not None else None
                             for t in inputs],
                   {n: p.grad.numpy().copy() if p.grad is not None else None
                    for n, p in params.items()}, buffers, devices)


def _run_torch(fn: Callable, arrays: Sequence[np.ndarray], grad: bool, seed: int,
               arrange: Callable):
    inputs = [torch.tensor(a, requires_grad=grad and a.dtype.kind == "f") for a in arrays]
    outputs = _leaves(fn(*arrange(*inputs)))
    loss = None
    for out, up in zip(outputs, _upstream(outputs, seed)):
        if up is not None:
            term = (out * torch.tensor(up, dtype=out.dtype)).sum()
            loss = term if loss is None else loss + term
    if loss is not None:
        loss.backward()
    return outputs, [t.grad for t in inputs]


def _close(got: np.ndarray | None, want: np.ndarray | None, tol: tuple[float, float],
           what: str) -> None:
    """Two gradients (None reads as zero: a missing gradient and a zero one are the same)."""
    if got is None and want is None:
        return
    if got is None or want is None:
        present = want if got is None else got
        assert not np.any(present), f"{what}: one side has no gradient, the other is nonzero"
        return
    assert got.shape == want.shape and got.dtype == want.dtype, \
        f"{what}: {got.shape} {got.dtype} != {want.shape} {want.dtype}"
    np.testing.assert_allclose(got, want, rtol=tol[0], atol=tol[1], equal_nan=True,
                               err_msg=what)


def _compare(got: _Result, want: _Result, tol, grad_tol, label: str) -> None:
    assert len(got.outputs) == len(want.outputs), f"{label}: number of outputs"
    for i, (a, b) in enumerate(zip(got.outputs, want.outputs)):
        what = f"{label}: output {i}"
        assert a.shape == b.shape, f"{what}: shape {a.shape} != {b.shape}"
        assert a.dtype == b.dtype, f"{what}: dtype {a.dtype} != {b.dtype}"
        assert a.requires_grad == b.requires_grad, f"{what}: requires_grad differs"
        ga, gb = a.detach().numpy(), b.detach().numpy()
        if a.dtype.is_floating:
            np.testing.assert_allclose(ga, gb, rtol=tol[0], atol=tol[1], equal_nan=True,
                                       err_msg=what)
        else:
            np.testing.assert_array_equal(ga, gb, err_msg=what)
    for i, (a, b) in enumerate(zip(got.input_grads, want.input_grads)):
        _close(a, b, grad_tol, f"{label}: grad of input {i}")
    for name in want.param_grads:
        _close(got.param_grads[name], want.param_grads[name], grad_tol, f"{label}: grad of {name}")
    for name in want.buffers:
        np.testing.assert_allclose(got.buffers[name], want.buffers[name], rtol=tol[0],
                                   atol=tol[1], err_msg=f"{label}: buffer {name}")


def check_compiled(fn: Callable, inputs: Sequence[np.ndarray],
                   backends: Sequence[str] = BACKENDS, *, torch_fn: Callable | None = None,
                   module: nn.Module | None = None, torch_module: torch.nn.Module | None = None,
                   arrange: Callable | None = None, grad: bool = True,
                   inference: bool | None = None, tol=FWD, grad_tol=GRAD, torch_tol=None,
                   torch_grads: bool = True, seed: int = 1) -> None:
    """Eager vs `neurenix.compile(fn, backend=b)` for each backend, and eager vs `torch_fn`.

    `fn` is a function of tensors or a Module; floating inputs require grad when `grad`.  The
    parameters of `module` (default: `fn` when it is one) are compared too, and its buffers are
    restored before every run, so each run starts from the same state and the buffers it leaves
    behind are compared.  `torch_fn` is the oracle for the eager run; `torch_module` (default:
    `torch_fn` when it is one) holds parameters and buffers of the same names (with
    `torch_grads=False` only forward values are compared with PyTorch).  `arrange`
    maps the input tensors to the call's arguments (default: one argument each).  With
    `inference` (default: for modules), each backend also runs the call under no_grad (its
    forward-only program).
    """
    arrange = arrange or _as_arguments
    if module is None and isinstance(fn, nn.Module):
        module = fn
    if torch_module is None and isinstance(torch_fn, torch.nn.Module):
        torch_module = torch_fn
    start = {n: b.numpy().copy() for n, b in module.named_buffers()} if module else {}

    def restore() -> None:
        with nx.no_grad():
            for n, b in module.named_buffers():
                b.copy_(nx.tensor(start[n]))

    eager = _run_neurenix(fn, module, inputs, grad, seed, arrange)
    if torch_fn is not None:
        t_tol = torch_tol or (tol, grad_tol)
        outputs, grads = _run_torch(torch_fn, inputs, grad, seed, arrange)
        assert len(outputs) == len(eager.outputs), "number of outputs differs from torch"
        for i, (a, b) in enumerate(zip(eager.outputs, outputs)):
            assert_close(a, b, *t_tol[0], f"torch: output {i}")
        for i, (a, b) in enumerate(zip(eager.input_grads, grads)):
            if torch_grads:
                _close(a, b.numpy() if b is not None else None, t_tol[1], f"torch: grad {i}")
        if torch_module is not None:
            for name, p in torch_module.named_parameters():
                g = p.grad.numpy() if p.grad is not None else None
                _close(eager.param_grads[name], g, t_tol[1], f"torch: grad of {name}")
            for name, b in torch_module.named_buffers():
                np.testing.assert_allclose(eager.buffers[name], b.numpy(), rtol=t_tol[0][0],
                                           atol=t_tol[0][1], err_msg=f"torch: buffer {name}")
    assert backends, "check_compiled: no backend to compare"
    for backend in backends:
        device = _device_of(backend)
        if module is not None:
            restore()
            _move(module, device)
        try:
            compiled = nx.compile(fn, backend=backend)
            got = _run_neurenix(compiled, module, inputs, grad, seed, arrange, device)
            _compare(got, eager, tol, grad_tol, backend)
            if device is not None:
                _assert_on(device, got, backend)
            if grad and (module is not None if inference is None else inference):
                if module is not None:
                    _move(module, None)
                    restore()
                    _move(module, device)
                _check_inference(compiled, module, inputs, arrange, eager, tol, backend, device)
        finally:
            if module is not None:
                _move(module, None)
    if DYNAMIC_BACKEND in backends:
        if module is not None:
            restore()
        _check_dynamic(fn, module, inputs, arrange, grad, seed, tol, grad_tol, eager, restore)


DYNAMIC_BACKEND = "llvm"


def _check_dynamic(fn, module, inputs, arrange, grad, seed, tol, grad_tol, eager: _Result,
                   restore: Callable) -> None:
    """The same case through one shape-polymorphic program (`dynamic=True`: every tensor
    argument's leading dimension symbolic) at two batch sizes: the inputs as given, then each
    input twice over along its leading dimension (where eager accepts that), both through the
    program the first call compiled."""
    compiled = nx.compile(fn, backend=DYNAMIC_BACKEND, dynamic=True)
    got = _run_neurenix(compiled, module, inputs, grad, seed, arrange)
    _compare(got, eager, tol, grad_tol, "dynamic")
    failed = compiled._dynamic.failed
    # a DynamicSizeError is code that needs a size as a Python value (split into n // 3
    # parts, an RNN unrolled over a dynamic length): static programs, by design; anything
    # else is a compiler bug
    assert failed is None or failed.startswith("DynamicSizeError"), \
        f"dynamic: the symbolic compile failed: {failed}"
    if "dynamic" not in compiled.stats():
        return  # nothing stayed dynamic: every leading dimension was needed at its size
    doubled = [np.concatenate([a, a]) if a.ndim and a.shape[0] >= 2 else a for a in inputs]
    if module is not None:
        restore()
    try:
        want = _run_neurenix(fn, module, doubled, grad, seed, arrange)
    except (ValueError, IndexError, RuntimeError, TypeError):
        return  # no second batch size for this case
    if module is not None:
        restore()
    got = _run_neurenix(compiled, module, doubled, grad, seed, arrange)
    _compare(got, want, tol, grad_tol, "dynamic, second batch size")
    assert compiled.cache_size == 1, "dynamic: the second batch size compiled another program"


def _move(module: nn.Module, device: str | None) -> None:
    """Move a module's parameters and buffers to `device` (None: back to the CPU) when it
    runs on a device."""
    held = [*module.parameters(), *module.buffers()]
    if device is not None or any(t.device != "cpu" for t in held):
        module.to(device or "cpu")


def _device_of(backend: str) -> str | None:
    """The device a backend's programs run on (None: the CPU); a test on a device skips where
    it is absent (and fails in CI, which installs them: tests/devices.py)."""
    kind = get_target(backend).device
    if kind == "cpu":
        return None
    needs_device(kind)
    return kind


def _assert_on(device: str, result: _Result, label: str) -> None:
    """Outputs, and gradients of the inputs and parameters, stay on the device."""
    for i, out in enumerate(result.outputs):
        assert out.device == device, f"{label}: output {i} is on {out.device}"
    for what, where in result.devices.items():
        assert where == device, f"{label}: {what} is on {where}"


def _check_inference(compiled, module, inputs, arrange, eager: _Result, tol, backend,
                     device: str | None = None) -> None:
    """The same call under no_grad: the forward-only program gives the same values."""
    with nx.no_grad():
        outputs = _leaves(compiled(*arrange(*(nx.tensor(a, device=device) for a in inputs))))
    label = f"{backend} no_grad"
    assert len(outputs) == len(eager.outputs), f"{label}: number of outputs"
    for i, (a, b) in enumerate(zip(outputs, eager.outputs)):
        assert not a.requires_grad, f"{label}: output {i} requires grad"
        assert_close(a, torch.tensor(b.detach().numpy()), *tol, f"{label}: output {i}")
    if module is not None:
        for name, b in module.named_buffers():
            np.testing.assert_allclose(b.numpy(), eager.buffers[name], rtol=tol[0], atol=tol[1],
                                       err_msg=f"{label}: buffer {name}")


def _as_arguments(*tensors):
    return tensors


def _lib(fn: Callable) -> dict:
    """`fn(lib, *xs)` as a Neurenix function and its torch twin."""
    return dict(fn=lambda *xs: fn(nx, *xs), torch_fn=lambda *xs: fn(torch, *xs))


def _away_from_zero(shape, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mag = rng.uniform(0.5, 2.0, size=shape)
    return (mag * rng.choice([-1.0, 1.0], size=shape)).astype(np.float32)


def _floats(*shapes, seed=0, low=-2.0, high=2.0) -> list[np.ndarray]:
    return make_data(shapes, seed=seed, low=low, high=high)


def test_the_harness_fails_when_compiled_and_eager_differ():
    """A compiled result that differs from eager, here through a Python value read at trace
    time, fails `check_compiled`: in the forward values, and in the gradients alone."""
    calls = []

    def forward_differs(x):
        calls.append(None)
        return x * len(calls)  # eager runs first: x * 1; the trace: x * 2

    with pytest.raises(AssertionError, match="reference: output 0"):
        check_compiled(forward_differs, _floats((3,)), REFERENCE)
    calls.clear()

    def gradient_differs(x):
        calls.append(None)
        k = len(calls)
        return x * k + (x * (1 - k)).detach()  # the value is x either way, the gradient k

    with pytest.raises(AssertionError, match="reference: grad of input 0"):
        check_compiled(gradient_differs, _floats((3,)), REFERENCE)


# ---- tensor operations ----------------------------------------------------------------------

A34, B4 = _floats((3, 4), (4,), seed=3)
POSITIVE = np.abs(_away_from_zero((3, 4), 5))
NONZERO = _away_from_zero((4,), 6)
X234 = _floats((2, 3, 4), seed=4)[0]
TIED = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 1.0], [-1.0, -1.0, -1.0]], np.float32)

BINARY = [
    ("add", operator.add, [A34, B4]),
    ("sub", operator.sub, [B4, A34]),
    ("mul", operator.mul, [A34, B4]),
    ("div", operator.truediv, [A34, NONZERO]),
    ("pow", operator.pow, [POSITIVE, B4]),
    ("maximum", lambda lib, a, b: lib.maximum(a, b), [A34, B4]),
    ("minimum", lambda lib, a, b: lib.minimum(a, b), [A34, B4]),
    ("maximum ties", lambda lib, a, b: lib.maximum(a, b),
     [np.array([1.0, 2.0, 3.0], np.float32), np.array([1.0, 5.0, 0.0], np.float32)]),
    ("broadcast both", operator.mul, _floats((2, 1, 4), (3, 1), seed=7)),
    ("scalar tensor", operator.add, _floats((), (2, 3), seed=8)),
    ("where", lambda lib, a, b: lib.where(a > 0, a, b), [A34, B4]),
    ("where scalar", lambda lib, a: lib.where(a > 0, a, 0.0), [A34]),
    ("float64 promotion", lambda lib, a, b: a * b.double() + a, [A34, B4]),
]


def _binary_fn(op):
    if op in (operator.add, operator.sub, operator.mul, operator.truediv, operator.pow):
        return lambda lib, *xs: op(*xs)
    return op


SCALAR = [
    ("x + 2", lambda x: x + 2), ("2 - x", lambda x: 2 - x), ("x * 3", lambda x: x * 3),
    ("2 / x", lambda x: 2 / x), ("x / 2", lambda x: x / 2), ("x ** 2", lambda x: x ** 2),
    ("x ** 3", lambda x: x ** 3), ("x ** -1", lambda x: x ** -1), ("2 ** x", lambda x: 2 ** x),
    ("-x", lambda x: -x), ("abs(x)", lambda x: abs(x)), ("x ** 0.5", lambda x: abs(x) ** 0.5),
]

UNARY = [
    ("exp", -2.0, 2.0), ("log", 0.1, 3.0), ("sqrt", 0.1, 3.0), ("abs", -2.0, 2.0),
    ("tanh", -3.0, 3.0), ("sigmoid", -5.0, 5.0), ("relu", -2.0, 2.0), ("erf", -2.0, 2.0),
    ("neg", -2.0, 2.0), ("reciprocal", 0.5, 2.0), ("rsqrt", 0.5, 2.0), ("square", -2.0, 2.0),
    ("log1p", -0.5, 2.0), ("expm1", -2.0, 2.0), ("sign", -2.0, 2.0), ("floor", -3.0, 3.0),
    ("ceil", -3.0, 3.0),
]

MATH = [
    ("clamp both", lambda lib, x: lib.clamp(x, min=-0.5, max=0.5)),
    ("clamp min", lambda lib, x: x.clamp(-0.5, None)),
    ("clamp max", lambda lib, x: x.clamp(None, 0.5)),
    ("softmax 0", lambda lib, x: lib.softmax(x, 0)),
    ("softmax -1", lambda lib, x: x.softmax(-1)),
    ("log_softmax 1", lambda lib, x: lib.log_softmax(x, 1)),
    ("log_softmax -1", lambda lib, x: x.log_softmax(-1)),
    ("logsumexp", lambda lib, x: x.logsumexp(-1, keepdim=True)),
    ("sigmoid of large", lambda lib, x: (x * 500).sigmoid()),
    ("float64 chain", lambda lib, x: (x.double().exp() * x.double()).tanh()),
    ("diamond", lambda lib, x: (x * x + x.exp()) * x),
    ("clone", lambda lib, x: x.clone() * x),
]

REDUCTIONS = [
    (name, dim, keepdim)
    for name in ("sum", "mean", "amax", "amin")
    for dim, keepdim in ((None, False), (1, True), (-1, False), ((0, 2), False), ((-1, 0), True))
]

OTHER_REDUCTIONS = [
    ("prod dim", lambda lib, x: x.prod(1)),
    ("prod all", lambda lib, x: x.prod()),
    ("max dim", lambda lib, x: x.max(1)),
    ("min dim keepdim", lambda lib, x: x.min(0, keepdim=True)),
    ("max all", lambda lib, x: x.max()),
    ("argmax", lambda lib, x: x.argmax(1)),
    ("argmin keepdim", lambda lib, x: x.argmin(0, keepdim=True)),
    ("var", lambda lib, x: x.var(1)),
    ("var correction 0", lambda lib, x: x.var((0, 2), correction=0)),
    ("std keepdim", lambda lib, x: x.std(-1, keepdim=True)),
    ("std all", lambda lib, x: x.std()),
    ("std unbiased false", lambda lib, x: x.std(1, unbiased=False)),
    ("norm", lambda lib, x: x.norm()),
    ("norm dim", lambda lib, x: x.norm(dim=-1, keepdim=True)),
]

MATMUL = [
    ((3, 4), (4, 5)), ((4,), (4,)), ((4,), (4, 5)), ((3, 4), (4,)), ((2, 3, 4), (4, 5)),
    ((3, 4), (2, 4, 5)), ((2, 3, 4), (2, 4, 5)), ((2, 1, 3, 4), (5, 4, 2)),
]

MOVEMENT = [
    ("view -1", (2, 3, 4), lambda lib, x: x.view(-1)),
    ("view 6,-1", (2, 3, 4), lambda lib, x: x.view(6, -1)),
    ("reshape", (2, 3, 4), lambda lib, x: lib.reshape(x, (3, -1))),
    ("reshape scalar", (1, 1), lambda lib, x: x.reshape(())),
    ("permute", (2, 3, 4), lambda lib, x: x.permute(2, 0, 1)),
    ("transpose", (2, 3, 4), lambda lib, x: x.transpose(0, 2)),
    ("T", (3, 5), lambda lib, x: x.T),
    ("flatten 1", (2, 3, 4), lambda lib, x: x.flatten(1)),
    ("squeeze", (1, 3, 1, 4), lambda lib, x: x.squeeze()),
    ("unsqueeze", (3, 4), lambda lib, x: x.unsqueeze(1)),
    ("expand", (3, 1), lambda lib, x: x.expand(2, -1, 5)),
    ("broadcast_to", (4,), lambda lib, x: lib.broadcast_to(x, (2, 3, 4))),
    ("flip", (2, 3, 4), lambda lib, x: lib.flip(x, (0, 2))),
    ("repeat", (2, 3), lambda lib, x: x.repeat(2, 3)),
    ("repeat new dims", (2, 3), lambda lib, x: x.repeat(2, 1, 2)),
    ("split int", (7, 3), lambda lib, x: x.split(3)),
    ("split sections", (7, 3), lambda lib, x: lib.split(x, [2, 5], 0)),
    ("chunk dim", (2, 6), lambda lib, x: lib.chunk(x, 4, 1)),
    ("unbind", (3, 2), lambda lib, x: x.unbind(1)),
    ("narrow", (5, 3), lambda lib, x: x.narrow(0, 1, 3)),
    ("movedim", (2, 3, 4), lambda lib, x: x.movedim(0, 2)),
]

BASIC_INDICES = [
    ("int", lambda x: x[1]),
    ("neg int", lambda x: x[-1]),
    ("three ints", lambda x: x[1, -2, 3]),
    ("slice", lambda x: x[1:3]),
    ("neg bounds", lambda x: x[-3:-1]),
    ("step", lambda x: x[::2]),
    ("step neg bounds", lambda x: x[:, -4::2, 1:-1:2]),
    ("out of range slice", lambda x: x[1:100]),
    ("None", lambda x: x[None]),
    ("None middle", lambda x: x[:, None, 1:]),
    ("Ellipsis", lambda x: x[..., 1]),
    ("Ellipsis middle", lambda x: x[1, ..., 2:]),
    ("int slice None step", lambda x: x[0, 1:, None, ::2]),
]

ADVANCED_INDICES = [
    ("one tensor", lambda lib, x: x[lib.tensor([0, 2, 2])]),
    ("negative entries", lambda lib, x: x[lib.tensor([-1, 0, -4])]),
    ("2-D index", lambda lib, x: x[lib.tensor([[0, 1], [3, 3]])]),
    ("second dim", lambda lib, x: x[:, lib.tensor([4, 0])]),
    ("two tensors", lambda lib, x: x[lib.tensor([0, 1, 3]), lib.tensor([2, 2, 0])]),
    ("two broadcast", lambda lib, x: x[lib.tensor([[0], [3]]), lib.tensor([1, 2, 4])]),
    ("separated", lambda lib, x: x[lib.tensor([0, 3]), :, lib.tensor([1, 5])]),
    ("with int", lambda lib, x: x[1, lib.tensor([0, 4, 4])]),
    ("with slice", lambda lib, x: x[1:3, lib.tensor([0, 2])]),
    ("list", lambda lib, x: x[[0, 2]]),
]


def _setitem_non_leaf(lib, x, v):
    y = x * 2
    y[1:3] = v * 3
    y[:, 0] = 0.0
    y[lib.tensor([0, 3]), lib.tensor([1, 2])] = v[:2]
    return y.exp()


def _setitem_into_plain(lib, v):
    y = lib.zeros(3, 4)
    y[lib.tensor([0, 2])] = v
    return y * y


TENSOR_CASES = (
    [pytest.param(_binary_fn(op), data, {}, id=f"binary-{name}") for name, op, data in BINARY]
    + [pytest.param(lambda lib, x, f=f: f(x), [_away_from_zero((3, 5), 7)], {},
                    id=f"scalar-{name}") for name, f in SCALAR]
    + [pytest.param(lambda lib, x, n=name: getattr(lib, n)(x), _floats((3, 4), low=lo, high=hi),
                    {}, id=f"unary-{name}") for name, lo, hi in UNARY]
    + [pytest.param(lambda lib, x, n=name: getattr(x, n)(),
                    make_data([(2, 3)], nx.float64, low=lo, high=hi), {},
                    id=f"unary-float64-{name}") for name, lo, hi in UNARY[:6]]
    + [pytest.param(fn, [X234], {}, id=f"math-{name}") for name, fn in MATH]
    + [pytest.param(lambda lib, x, n=name, d=dim, k=keep:
                    getattr(x, n)() if d is None else getattr(x, n)(d, keepdim=k),
                    [X234], {}, id=f"reduce-{name}-{dim}-{keep}")
       for name, dim, keep in REDUCTIONS]
    + [pytest.param(fn, [X234], {}, id=f"reduce-{name}") for name, fn in OTHER_REDUCTIONS]
    + [pytest.param(fn, [TIED], {}, id=f"ties-{name}") for name, fn in
       [("max", lambda lib, x: x.max(1)), ("amax", lambda lib, x: x.amax(1)),
        ("min all", lambda lib, x: x.min())]]
    + [pytest.param(lambda lib, a, b: a @ b, _floats(*shapes, seed=9), {},
                    id=f"matmul-{shapes}") for shapes in MATMUL]
    + [pytest.param(lambda lib, a, b: lib.bmm(a, b), _floats((2, 3, 4), (2, 4, 5)), {},
                    id="bmm"),
       pytest.param(lambda lib, a, b: lib.dot(a, b), _floats((4,), (4,)), {}, id="dot"),
       pytest.param(lambda lib, a, b: a @ b, make_data([(3, 4), (4, 2)], nx.float64), {},
                    id="matmul-float64")]
    + [pytest.param(fn, _floats(shape), {}, id=f"movement-{name}")
       for name, shape, fn in MOVEMENT]
    + [pytest.param(lambda lib, a, b, c, d=dim: lib.cat([a, b, c], d),
                    _floats((2, 3), (2 + (dim == 0), 3 + (dim != 0)), (2, 3)), {},
                    id=f"cat-{dim}") for dim in (0, -1)]
    + [pytest.param(lambda lib, a, b, c, d=dim: lib.stack([a, b, c], d), _floats(*[(2, 3)] * 3),
                    {}, id=f"stack-{dim}") for dim in (0, 2)]
    + [pytest.param(lambda lib, x, f=f: f(x), [_floats((4, 5, 6))[0]], {}, id=f"index-{name}")
       for name, f in BASIC_INDICES]
    + [pytest.param(fn, [_floats((4, 5, 6))[0]], {}, id=f"index-{name}")
       for name, fn in ADVANCED_INDICES]
    + [pytest.param(_setitem_non_leaf, _floats((4, 3), (3,)), {}, id="setitem-non-leaf"),
       pytest.param(_setitem_into_plain, _floats((4,)), {}, id="setitem-into-plain")]
)


@pytest.mark.parametrize("fn, data, options", TENSOR_CASES)
def test_tensor_op(fn, data, options):
    check_compiled(**_lib(fn), inputs=data, **options)


def _views_of_dead_tensors(lib, x):
    """Views outliving their bases, then writes to new tensors (which reuse the dead bases'
    ids): a write is refused only for a tensor with a live view of itself."""
    outputs = []
    for i in range(20):
        t = x * (i + 1)
        outputs.append(t.view(-1))
        del t
        u = x + i
        u[0] = 0.0
        outputs.append(u)
    return tuple(outputs)


def test_writes_after_views_of_dead_tensors():
    check_compiled(**_lib(_views_of_dead_tensors), inputs=_floats((2, 3)), backends=REFERENCE)


INT_A = np.array([[7, -7, 5, -5, 0, 9]], np.int64)
INT_B = np.array([[2], [-3]], np.int64)
FLOATS_TIED = np.array([[0.0, 0.5, 1.0], [1.5, -1.0, 1.0]], np.float32)
BOOLS = make_data([(3, 4), (4,)], nx.bool)

NO_GRAD_CASES = [
    pytest.param(lambda lib, a, b: a // b, [INT_A, INT_B], id="floordiv-int"),
    pytest.param(lambda lib, a, b: a % b, [INT_A, INT_B], id="mod-int"),
    pytest.param(lambda lib, a, b: a // b, [INT_A.astype(np.float32), INT_B.astype(np.float32)],
                 id="floordiv-float"),
    pytest.param(lambda lib, a: a % 3, [INT_A.astype(np.float32)], id="mod-float-scalar"),
    pytest.param(lambda lib, a: (a == 1.0, a != 1.0, a < 0.5, a <= 0.5, a > 1, a >= 1),
                 [FLOATS_TIED], id="comparisons"),
    pytest.param(lambda lib, a, b: (a & b, a | b, ~a, a + b, a * b), BOOLS, id="logical"),
    pytest.param(lambda lib, a, b: (a + b, a * 2, a / 2, a @ b.T), [INT_A, INT_A], id="int-math"),
    pytest.param(lambda lib, a: (a.sum(), a.sum(0), a.prod(1), a.argmax(1)), [INT_A],
                 id="int-reductions"),
    pytest.param(lambda lib, a: (a.int(), a.long(), a.bool(), a.double()), [FLOATS_TIED],
                 id="casts"),
    pytest.param(lambda lib, a: (a.exp(), a.sqrt()), [np.abs(INT_A)], id="unary-of-int"),
    pytest.param(lambda lib, a: (a.all(), a.any(1), a.sum(1)), BOOLS[:1], id="bool-reductions"),
    pytest.param(lambda lib, i: lib.nn.functional.one_hot(i, 10), [np.abs(INT_A)],
                 id="one_hot"),
]


@pytest.mark.parametrize("fn, data", NO_GRAD_CASES)
def test_tensor_op_without_gradients(fn, data):
    check_compiled(**_lib(fn), inputs=data, grad=False)


# ---- layers ---------------------------------------------------------------------------------


def _pair(make: Callable, *args, **kwargs):
    """A torch layer and a neurenix layer holding its weights."""
    torch.manual_seed(0)
    th = make(torch.nn)(*args, **kwargs)
    mine = make(nn)(*args, **kwargs)
    mine.load_state_dict(th.state_dict())
    return mine, th


def _layer(make, args, kwargs, shape, **options):
    return pytest.param(make, args, kwargs, shape, options,
                        id=f"{make(nn).__name__}-{args}-{kwargs}-{shape}")


LAYER_CASES = [
    _layer(lambda m: m.Linear, (10, 5), {}, (4, 10)),
    _layer(lambda m: m.Linear, (10, 5), {"bias": False}, (2, 3, 10)),
    _layer(lambda m: m.Linear, (10, 5), {}, (10,)),
    _layer(lambda m: m.Conv1d, (3, 4, 3), {}, (2, 3, 9), tol=LOOSE, grad_tol=LOOSE_GRAD),
    _layer(lambda m: m.Conv1d, (4, 6, 5), dict(stride=2, padding=2, dilation=2, groups=2),
           (2, 4, 13), tol=LOOSE, grad_tol=LOOSE_GRAD),
    _layer(lambda m: m.Conv1d, (2, 3, 4), dict(padding="same"), (2, 2, 7), tol=LOOSE,
           grad_tol=LOOSE_GRAD),
    _layer(lambda m: m.Conv2d, (3, 4, 3), dict(padding=1), (2, 3, 6, 5), tol=LOOSE,
           grad_tol=LOOSE_GRAD),
    _layer(lambda m: m.Conv2d, (4, 6, (3, 2)), dict(stride=(2, 1), padding=(1, 0),
                                                   dilation=(1, 2), groups=2, bias=False),
           (2, 4, 7, 6), tol=LOOSE, grad_tol=LOOSE_GRAD),
    _layer(lambda m: m.Conv2d, (2, 3, 2), dict(padding="same", dilation=2), (2, 2, 6, 5),
           tol=LOOSE, grad_tol=LOOSE_GRAD),
    _layer(lambda m: m.Conv2d, (4, 8, 3), dict(groups=4, padding=1), (2, 4, 5, 5), tol=LOOSE,
           grad_tol=LOOSE_GRAD),
    _layer(lambda m: m.Conv2d, (2, 3, 3), dict(padding=1, padding_mode="reflect"), (2, 2, 5, 4),
           tol=LOOSE, grad_tol=LOOSE_GRAD),
    _layer(lambda m: m.Conv3d, (4, 4, (3, 2, 2)), dict(stride=(1, 2, 1), padding=(1, 0, 1),
                                                      dilation=(1, 1, 2), groups=2),
           (1, 4, 5, 5, 5), tol=LOOSE, grad_tol=LOOSE_GRAD),
    _layer(lambda m: m.Conv3d, (2, 2, 3), dict(padding="same"), (2, 2, 4, 4, 3), tol=LOOSE,
           grad_tol=LOOSE_GRAD),
    _layer(lambda m: m.Conv2d, (2, 3, 3), dict(padding=1, padding_mode="circular", stride=2),
           (2, 5, 6), tol=LOOSE, grad_tol=LOOSE_GRAD),
    _layer(lambda m: m.MaxPool1d, (3,), {}, (2, 3, 10)),
    _layer(lambda m: m.MaxPool1d, (3,), dict(stride=2, dilation=2, ceil_mode=True), (1, 2, 12)),
    _layer(lambda m: m.MaxPool2d, (2,), {}, (2, 3, 6, 6)),
    _layer(lambda m: m.MaxPool2d, (3,), dict(stride=2, padding=1, ceil_mode=True), (2, 2, 6, 6)),
    _layer(lambda m: m.MaxPool2d, ((2, 3),), dict(stride=(1, 2), dilation=(2, 1)), (1, 2, 7, 8)),
    _layer(lambda m: m.AvgPool2d, (2,), {}, (2, 3, 6, 6)),
    _layer(lambda m: m.AvgPool2d, (3,), dict(stride=2, padding=1, count_include_pad=False),
           (2, 3, 7, 6)),
    _layer(lambda m: m.AvgPool2d, ((3, 2),), dict(stride=2, padding=(1, 1), ceil_mode=True),
           (3, 6, 5)),
    _layer(lambda m: m.AdaptiveAvgPool2d, ((3, 2),), {}, (2, 3, 6, 6)),
    _layer(lambda m: m.AdaptiveAvgPool2d, ((4, 3),), {}, (2, 3, 7, 5)),
    _layer(lambda m: m.AdaptiveAvgPool2d, (1,), {}, (2, 3, 5, 4)),
    _layer(lambda m: m.LayerNorm, (6,), {}, (4, 6), tol=LOOSE, grad_tol=LOOSE_GRAD),
    _layer(lambda m: m.LayerNorm, ((5, 6),), {}, (2, 3, 5, 6), tol=LOOSE, grad_tol=LOOSE_GRAD),
    _layer(lambda m: m.LayerNorm, (8,), {"bias": False}, (3, 8), tol=LOOSE, grad_tol=LOOSE_GRAD),
    _layer(lambda m: m.LayerNorm, (8,), {"elementwise_affine": False}, (3, 8), tol=LOOSE,
           grad_tol=LOOSE_GRAD),
    _layer(lambda m: m.Flatten, (), {}, (2, 3, 4, 5)),
    _layer(lambda m: m.Flatten, (2, 3), {}, (2, 3, 4, 5)),
    _layer(lambda m: m.ReLU, (), {}, (4, 5, 6)),
    _layer(lambda m: m.Sigmoid, (), {}, (4, 5, 6)),
    _layer(lambda m: m.Tanh, (), {}, (4, 5, 6)),
    _layer(lambda m: m.LeakyReLU, (0.2,), {}, (4, 5, 6)),
    _layer(lambda m: m.ELU, (), {"alpha": 0.5}, (4, 5, 6)),
    _layer(lambda m: m.SELU, (), {}, (4, 5, 6)),
    _layer(lambda m: m.GELU, (), {}, (4, 5, 6)),
    _layer(lambda m: m.GELU, (), {"approximate": "tanh"}, (4, 5, 6)),
    _layer(lambda m: m.Softmax, (), {"dim": 1}, (4, 5, 6)),
    _layer(lambda m: m.LogSoftmax, (), {"dim": -1}, (4, 5, 6)),
]


def _kinked(shape, seed=0) -> np.ndarray:
    """Data in [-3, 3) with exact zeros, where piecewise activations have a kink."""
    x = _floats(shape, seed=seed, low=-3.0, high=3.0)[0]
    x.reshape(-1)[::5] = 0.0
    return x


@pytest.mark.parametrize("make, args, kwargs, shape, options", LAYER_CASES)
def test_layer(make, args, kwargs, shape, options):
    mine, th = _pair(make, *args, **kwargs)
    x = np.round(_kinked(shape) * 2) / 2  # a coarse grid: pooling windows hold ties
    check_compiled(mine, [x], torch_fn=th, **options)


BATCHNORM_CASES = [
    ("BatchNorm1d", (6, 4, 5), dict(momentum=0.3)),
    ("BatchNorm1d", (8, 4), dict(momentum=None)),
    ("BatchNorm2d", (3, 4, 5, 6), dict(momentum=0.3)),
    ("BatchNorm2d", (3, 4, 2, 2), dict(affine=False, track_running_stats=False)),
]


@pytest.mark.parametrize("cls, shape, kwargs", BATCHNORM_CASES, ids=str)
@pytest.mark.parametrize("train", [True, False])
def test_batchnorm(cls, shape, kwargs, train):
    mine, th, x = _batchnorm(cls, shape, kwargs, train)
    check_compiled(mine, [x], torch_fn=th, tol=LOOSE, grad_tol=LOOSE_GRAD)


def _batchnorm(cls, shape, kwargs, train):
    """A BatchNorm layer and its torch twin, with statistics away from the defaults, and an
    input."""
    mine, th = _pair(lambda m: getattr(m, cls), 4, **kwargs)
    with torch.no_grad():
        for tensor, low, high in ((th.weight, 0.5, 1.5), (th.bias, -0.5, 0.5),
                                  (th.running_mean, -0.5, 0.5), (th.running_var, 0.5, 1.5)):
            if tensor is not None:
                tensor.uniform_(low, high)
    mine.load_state_dict(th.state_dict())
    mine.train(train)
    th.train(train)
    return mine, th, _floats(shape)[0] * 1.5 + 1


def test_batchnorm_running_statistics_follow_eager_over_steps():
    """Three training calls then eval: the compiled module's buffers track eager's."""
    for backend in BACKENDS:
        eager = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5))
        compiled_model = nn.Sequential(nn.Linear(4, 5), nn.BatchNorm1d(5))
        compiled_model.load_state_dict(eager.state_dict())
        compiled = nx.compile(compiled_model, backend=backend)
        for step in range(3):
            x = nx.tensor(_floats((8, 4), seed=step)[0] * (1 + step) + step)
            want = eager(x)
            got = compiled(x)
            np.testing.assert_allclose(got.detach().numpy(), want.detach().numpy(),
                                       *LOOSE)
            for (name, a), (_, b) in zip(compiled_model.named_buffers(),
                                         eager.named_buffers()):
                np.testing.assert_allclose(a.numpy(), b.numpy(), *LOOSE, err_msg=name)
        assert compiled_model[1].num_batches_tracked.item() == 3
        eager.eval()
        compiled_model.eval()
        x = nx.tensor(_floats((8, 4), seed=9)[0])
        np.testing.assert_allclose(compiled(x).detach().numpy(), eager(x).detach().numpy(),
                                   *LOOSE)


@pytest.mark.parametrize("padding_idx, dtype", [(None, np.int64), (3, np.int64),
                                                (-1, np.int32)])
def test_embedding(padding_idx, dtype):
    mine, th = _pair(lambda m: m.Embedding, 10, 4, padding_idx=padding_idx)
    idx = np.array([[0, 3, 3, 9], [1, 0, 9, 3]], dtype=dtype)  # repeats accumulate
    check_compiled(mine, [idx], torch_fn=th)


def test_dropout_in_eval_is_the_identity():
    layer = nn.Dropout(0.5).eval()
    check_compiled(nn.Sequential(nn.Linear(6, 4), layer).eval(), _floats((3, 6)))


@pytest.mark.parametrize("backend", BACKENDS + GPU_DEVICES)
def test_dropout_in_train_has_the_right_statistics_and_a_fresh_mask_per_call(backend):
    p = 0.3
    device = _device_of(backend)
    cdrop = nx.compile(nn.Dropout(p), backend=backend)
    x = nx.ones(200, 100, requires_grad=True, device=device)
    first = cdrop(x)
    second = cdrop(x)
    assert first.device == x.device
    (first.to("cpu") * 2).sum().backward()
    assert x.grad.device == x.device
    a, b = first.detach().numpy(), second.detach().numpy()
    assert not np.array_equal(a == 0, b == 0), "the same mask twice"
    for y in (a, b):
        # 20k Bernoulli draws: the standard error of the fraction is about 0.003
        assert abs(float(np.mean(y == 0)) - p) < 0.02
        np.testing.assert_allclose(y[y != 0], 1 / (1 - p), rtol=1e-6)
    # the gradient is the same mask, scaled
    np.testing.assert_allclose(x.grad.numpy(), np.where(a != 0, 2 / (1 - p), 0.0), rtol=1e-6)
    assert cdrop.cache_size == 1


NAN_AND_LARGE = np.array([[np.nan, 0.0, -80.0, 80.0, 1.0]], np.float32)

FUNCTIONAL_CASES = [
    pytest.param(lambda lib, x: lib.nn.functional.pad(x, (1, 2, 0, 3), value=-1.5),
                 _floats((2, 3, 4, 5)), {}, id="pad-constant"),
    pytest.param(lambda lib, x: lib.nn.functional.pad(x, (-1, 2, 1, -2)),
                 _floats((2, 3, 4, 5)), {}, id="pad-negative-crops"),
    pytest.param(lambda lib, x: lib.nn.functional.pad(x, (2, 1, 1, 3), mode="reflect"),
                 _floats((2, 3, 4, 5)), {}, id="pad-reflect"),
    pytest.param(lambda lib, x: lib.nn.functional.pad(x, (3, 0, 1, 2), mode="replicate"),
                 _floats((2, 3, 4, 5)), {}, id="pad-replicate"),
    pytest.param(lambda lib, x: lib.nn.functional.pad(x, (2, 4, 3, 1), mode="circular"),
                 _floats((2, 3, 4, 5)), {}, id="pad-circular"),
    pytest.param(lambda lib, x: lib.nn.functional.max_pool2d(x, 3, stride=2, padding=1,
                                                            return_indices=True),
                 [np.round(_floats((2, 2, 7, 6))[0] * 2) / 2], {}, id="max_pool2d-indices"),
    pytest.param(lambda lib, x: lib.nn.functional.avg_pool2d(x, 2, stride=1, padding=1,
                                                            divisor_override=3),
                 _floats((2, 3, 5, 4)), {}, id="avg_pool2d-divisor"),
    pytest.param(lambda lib, x: lib.nn.functional.conv2d(x[:, :2], x[:3, 2:], padding="same"),
                 _floats((4, 4, 5, 5)), dict(tol=LOOSE, grad_tol=LOOSE_GRAD),
                 id="conv2d-weight-from-input"),
] + [
    pytest.param(lambda lib, x, n=name: getattr(lib.nn.functional, n)(x), [NAN_AND_LARGE], {},
                 id=f"nan-{name}")
    for name in ("relu", "leaky_relu", "gelu", "elu", "selu", "sigmoid", "tanh")
]


@pytest.mark.parametrize("fn, data, options", FUNCTIONAL_CASES)
def test_functional(fn, data, options):
    check_compiled(**_lib(fn), inputs=data, **options)


# ---- recurrent layers -----------------------------------------------------------------------

# short sequences: every time step of every layer and direction is unrolled into the graph
SEQ, BATCH, IN, HID = 2, 2, 3, 4

GRU_BACKENDS = BACKENDS

RNN_CASES = [
    ("RNN", dict(num_layers=2, bidirectional=True, batch_first=True), True, BACKENDS),
    ("RNN", dict(nonlinearity="relu"), False, BACKENDS),
    ("LSTM", dict(num_layers=2, bidirectional=True, batch_first=True), True, BACKENDS),
    ("LSTM", dict(bias=False), False, BACKENDS),
    ("GRU", dict(num_layers=2, bidirectional=True), True, GRU_BACKENDS),
    ("GRU", dict(batch_first=True), False, GRU_BACKENDS),
]


@pytest.mark.parametrize("cls, kwargs, with_state, backends", RNN_CASES, ids=str)
def test_recurrent_layer(cls, kwargs, with_state, backends):
    mine, th = _pair(lambda m: getattr(m, cls), IN, HID, **kwargs)
    rng = np.random.default_rng(1)
    shape = (BATCH, SEQ, IN) if kwargs.get("batch_first") else (SEQ, BATCH, IN)
    data = [rng.uniform(-1, 1, shape).astype(np.float32)]
    count = kwargs.get("num_layers", 1) * (2 if kwargs.get("bidirectional") else 1)
    arrange = None
    if with_state:
        data += [rng.uniform(-1, 1, (count, BATCH, HID)).astype(np.float32)
                 for _ in range(2 if cls == "LSTM" else 1)]
        if cls == "LSTM":
            def arrange(x, h, c):
                return x, (h, c)  # the state pair: tensors nested in an argument
    check_compiled(mine, data, backends, torch_fn=th, arrange=arrange, tol=LOOSE,
                   grad_tol=LOOSE_GRAD)


@pytest.mark.parametrize("backend", BACKENDS)
def test_lstm_state_tensors_are_inputs_not_constants(backend):
    """Tensors nested in an argument are graph inputs: new values, same program."""
    lstm = nn.LSTM(IN, HID)
    compiled = nx.compile(lstm, backend=backend)
    x = nx.randn(SEQ, BATCH, IN)
    with nx.no_grad():
        for _ in range(2):
            state = (nx.randn(1, BATCH, HID), nx.randn(1, BATCH, HID))
            got, (h, c) = compiled(x, state)
            want, (h_want, c_want) = lstm(x, state)
            for a, b in ((got, want), (h, h_want), (c, c_want)):
                np.testing.assert_allclose(a.numpy(), b.numpy(), *LOOSE)
    assert compiled.cache_size == 1


# ---- losses ---------------------------------------------------------------------------------

WEIGHT = np.array([0.5, 2.0, 1.0, 0.25, 1.5], np.float32)
TARGETS = np.array([1, -100, 4, 2, 0, 2])
PROBS = np.random.default_rng(3).dirichlet(np.ones(5), size=6).astype(np.float32)


def _loss(name, make, data, **options):
    return pytest.param(make, data, options, id=name)


def _ce(**kw):
    weight = kw.pop("weight", None)

    def make(lib):
        w = None if weight is None else lib.tensor(weight)
        return lambda x, t: lib.nn.functional.cross_entropy(x, t, w, **kw)

    return make


LOSS_CASES = [
    _loss(f"{name}-{reduction}", lambda lib, n=name, r=reduction:
          lambda x, t: getattr(lib.nn.functional, n)(x, t, reduction=r),
          _floats((4, 3, 2), (4, 3, 2), seed=1))
    for name in ("mse_loss", "l1_loss") for reduction in ("mean", "sum", "none")
] + [
    _loss("ce", _ce(), [_floats((6, 5))[0], TARGETS]),
    _loss("ce-weight-sum", _ce(weight=WEIGHT, reduction="sum"), [_floats((6, 5))[0], TARGETS]),
    _loss("ce-weight-mean-smoothing", _ce(weight=WEIGHT, label_smoothing=0.2),
          [_floats((6, 5))[0], TARGETS]),
    _loss("ce-ignore-2-none", _ce(ignore_index=2, reduction="none"),
          [_floats((6, 5))[0], np.abs(TARGETS) % 5]),
    _loss("ce-k-dim", _ce(weight=WEIGHT, label_smoothing=0.1),
          [_floats((2, 5, 3, 4))[0], np.random.default_rng(2).integers(0, 5, (2, 3, 4))]),
    _loss("ce-probabilities", _ce(weight=WEIGHT, label_smoothing=0.3),
          [_floats((6, 5))[0], PROBS]),
    _loss("ce-unbatched", _ce(), [_floats((5,))[0], np.array(3)]),
    _loss("ce-all-ignored-mean-is-nan", _ce(weight=WEIGHT),
          [_floats((3, 5))[0], np.full((3,), -100)]),
    _loss("ce-all-ignored-sum", _ce(reduction="sum", label_smoothing=0.2),
          [_floats((3, 5))[0], np.full((3,), -100)]),
    _loss("ce-int32-targets", lambda lib: lambda x, t: lib.nn.functional.cross_entropy(
        x, t if lib is nx else t.long(), reduction="none"),  # torch wants int64 targets
        [_floats((4, 5))[0], np.array([0, 4, 1, 1], np.int32)]),
    _loss("nll-weight-ignore", lambda lib: lambda x, t: lib.nn.functional.nll_loss(
        x, t, lib.tensor(WEIGHT), ignore_index=4),
        [_floats((6, 5, 2), low=-4.0, high=0.0)[0],
         np.random.default_rng(2).integers(0, 5, (6, 2))]),
    _loss("nll-sum", lambda lib: lambda x, t: lib.nn.functional.nll_loss(x, t, reduction="sum"),
          [_floats((6, 5), low=-4.0, high=0.0)[0], np.abs(TARGETS) % 5]),
    _loss("bce-weight", lambda lib: lambda x, t: lib.nn.functional.binary_cross_entropy(
        x, t, lib.tensor(WEIGHT[:3])),
        [_floats((4, 3), low=0.02, high=0.98)[0], _floats((4, 3), seed=1, low=0.0, high=1.0)[0]]),
    _loss("bce-none", lambda lib: lambda x, t: lib.nn.functional.binary_cross_entropy(
        x, t, reduction="none"),
        [_floats((4, 3), low=0.02, high=0.98)[0], _floats((4, 3), seed=1, low=0.0, high=1.0)[0]]),
    # at exactly 0 and 1 the gradients of the clamped log differ from torch's (both finite)
    _loss("bce-log-clamped-at-minus-100", lambda lib: lambda x, t:
          lib.nn.functional.binary_cross_entropy(x, t, reduction="none"),
          [np.array([0.0, 1.0, 0.0, 1.0, 0.5], np.float32),
           np.array([1.0, 0.0, 0.0, 1.0, 0.3], np.float32)], torch_grads=False),
    _loss("bce-logits-huge", lambda lib: lambda x, t:
          lib.nn.functional.binary_cross_entropy_with_logits(x, t, reduction="none"),
          [np.array([-200.0, -50.0, 0.0, 50.0, 200.0, np.nan], np.float32),
           np.array([1.0, 0.0, 1.0, 1.0, 0.0, 1.0], np.float32)]),
    _loss("bce-logits-weight-pos-weight", lambda lib: lambda x, t:
          lib.nn.functional.binary_cross_entropy_with_logits(
              x, t, lib.tensor(WEIGHT[:4, None]), pos_weight=lib.tensor(WEIGHT[:3])),
          [_floats((4, 3), low=-6.0, high=6.0)[0], _floats((4, 3), seed=1, low=0.0, high=1.0)[0]]),
    _loss("bce-logits-sum", lambda lib: lambda x, t:
          lib.nn.functional.binary_cross_entropy_with_logits(x, t, reduction="sum"),
          [_floats((4, 3), low=-6.0, high=6.0)[0], _floats((4, 3), seed=1, low=0.0, high=1.0)[0]]),
]


@pytest.mark.parametrize("make, data, options", LOSS_CASES)
def test_loss_function(make, data, options):
    check_compiled(make(nx), data, torch_fn=make(torch), **options)


MODULE_LOSSES = [
    ("MSELoss", dict(reduction="sum"), "regression"),
    ("L1Loss", {}, "regression"),
    ("CrossEntropyLoss", dict(weight=WEIGHT, ignore_index=2, label_smoothing=0.1), "classes"),
    ("NLLLoss", dict(weight=WEIGHT, reduction="sum"), "classes"),
    ("BCELoss", dict(weight=WEIGHT[:3]), "probabilities"),
    ("BCEWithLogitsLoss", dict(pos_weight=WEIGHT[:3], reduction="none"), "logits"),
]


@pytest.mark.parametrize("cls, kwargs, kind", MODULE_LOSSES, ids=[m[0] for m in MODULE_LOSSES])
def test_loss_module(cls, kwargs, kind):
    """The loss modules compiled as modules: their weights are buffers (graph inputs)."""
    def make(lib):
        args = {k: lib.tensor(v) if isinstance(v, np.ndarray) else v for k, v in kwargs.items()}
        return getattr(lib.nn, cls)(**args)

    x = {"regression": _floats((4, 3))[0], "classes": _floats((6, 5))[0],
         "probabilities": _floats((4, 3), low=0.02, high=0.98)[0],
         "logits": _floats((4, 3), low=-6.0, high=6.0)[0]}[kind]
    t = {"classes": np.abs(TARGETS) % 5}.get(kind, _floats((4, 3), seed=1, low=0.0, high=1.0)[0])
    check_compiled(make(nx), [x, t], torch_fn=make(torch))


# ---- optimizers on a compiled model ---------------------------------------------------------


def _make_opt(name, lib, params):
    if name == "SGD":
        return lib.optim.SGD(params, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    return lib.optim.Adam(params, lr=0.01, weight_decay=0.01)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("opt", ["SGD", "Adam"])
def test_optimizer_trajectory_through_a_compiled_model(opt, backend):
    """Three steps: the compiled model's parameters follow eager's and PyTorch's."""
    def build(lib):
        return lib.nn.Sequential(lib.nn.Linear(6, 8), lib.nn.Tanh(), lib.nn.Linear(8, 3))

    torch.manual_seed(0)
    th = build(torch)
    eager, target = build(nx), build(nx)
    eager.load_state_dict(th.state_dict())
    target.load_state_dict(th.state_dict())
    compiled = nx.compile(target, backend=backend)
    calls = [eager, compiled]
    opts = [_make_opt(opt, nx, m.parameters()) for m in (eager, target)]
    th_opt = _make_opt(opt, torch, th.parameters())
    x, y = _floats((5, 6), (5, 3), seed=4)
    for _ in range(3):
        for call, o in zip(calls, opts):
            o.zero_grad()
            nn.MSELoss()(call(nx.tensor(x)), nx.tensor(y)).backward()
            o.step()
        th_opt.zero_grad()
        torch.nn.MSELoss()(th(torch.tensor(x)), torch.tensor(y)).backward()
        th_opt.step()
        th_params = dict(th.named_parameters())
        for (name, p), (_, q) in zip(target.named_parameters(), eager.named_parameters()):
            np.testing.assert_allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-5,
                                       atol=1e-6, err_msg=name)
            np.testing.assert_allclose(q.detach().numpy(), th_params[name].detach().numpy(),
                                       rtol=1e-5, atol=1e-6, err_msg=name)
    assert compiled.cache_size == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradients_accumulate_over_two_backward_calls(backend):
    eager = nn.Sequential(nn.Linear(4, 3), nn.Tanh())
    twin = nn.Sequential(nn.Linear(4, 3), nn.Tanh())
    twin.load_state_dict(eager.state_dict())
    compiled = nx.compile(twin, backend=backend)
    for seed in (1, 2):
        x = nx.tensor(_floats((2, 4), seed=seed)[0])
        eager(x).sum().backward()
        compiled(x).sum().backward()
    for (name, p), (_, q) in zip(twin.named_parameters(), eager.named_parameters()):
        np.testing.assert_allclose(p.grad.numpy(), q.grad.numpy(), *FWD, err_msg=name)


# ---- on the devices -------------------------------------------------------------------------
#
# The OpenCL (PoCL) and WebGPU (lavapipe) targets run the same harness: inputs, parameters and
# upstream gradients on the device, outputs and gradients compared with eager on the CPU, and
# checked to stay on the device.  A kernel costs PoCL 0.1-0.3 s to build and link on first
# use, so rather than every case above, each op family runs once per device as ONE program
# computing a selection of the family's cases (each case's outputs are outputs of it), and
# the layers, losses and recurrent layers as one case each — CI (2 cores, the whole suite
# within ~15 minutes) stays in budget.  WGSL has no 64-bit floats: float64 cases do not run on
# webgpu, whose generator refuses them with a message naming the target (tested below).

NO_FLOAT64 = frozenset({"webgpu"})  # devices whose target refuses float64
# WGSL computes int64 in 32 bits; its generator refuses int64 arithmetic on loaded values
# (sums, products, divisions) and int64 sum reductions, so these cases do not run on webgpu
# (the refusal is tested below):
# Tolerances per family, (rtol, atol) of values and of gradients.  Device math is the device
# library's (PoCL's OpenCL built-ins, lavapipe's WGSL), and reductions sum in another order
# (work-group trees); on these inputs both agree with NumPy within the CPU targets' float32
# tolerances, which the families keep (a device that needs more must say so here):
DEVICE_TOL = {
    "exact": (FWD, GRAD),  # movement, indexing, integers, comparisons: the same values
    "arithmetic": (FWD, GRAD),  # + - * /, matmul (short sums), float64
    "math": (FWD, GRAD),  # exp, log, tanh, erf, pow, sigmoid, softmax, reductions
    "layer": (LOOSE, LOOSE_GRAD),  # convolutions, normalisations, recurrences, losses
}

# family -> (tolerance, the ids of its cases computed together)
DEVICE_FAMILIES = {
    "elementwise": ("math", [
        "binary-add", "binary-div", "binary-pow", "binary-maximum ties", "binary-broadcast both",
        "binary-where scalar", "scalar-2 / x", "scalar-x ** -1", "scalar-2 ** x",
        *(f"unary-{name}" for name in ("exp", "log", "sqrt", "tanh", "sigmoid", "erf", "rsqrt",
                                       "log1p", "expm1", "sign", "floor")),
        "math-clamp both", "math-sigmoid of large"]),
    "reductions": ("math", [
        "reduce-sum-None-False", "reduce-mean-1-True", "reduce-amax--1-False",
        "reduce-prod dim", "reduce-max dim", "reduce-argmin keepdim", "reduce-var correction 0",
        "reduce-norm dim", "math-softmax -1", "math-log_softmax 1", "math-logsumexp"]),
    "movement": ("exact", [
        "movement-view 6,-1", "movement-permute", "movement-expand", "movement-flip",
        "movement-repeat new dims", "movement-split sections", "cat-0", "stack-2"]),
    "indexing": ("exact", [
        "index-three ints", "index-step neg bounds", "index-None middle",
        "index-negative entries", "index-two broadcast", "index-separated", "setitem-non-leaf"]),
    "matmul": ("arithmetic", [
        "matmul-((3, 4), (4, 5))", "matmul-((4,), (4,))", "matmul-((2, 1, 3, 4), (5, 4, 2))"]),
    "float64": ("arithmetic", [
        "binary-float64 promotion", "math-float64 chain", "matmul-float64"]),
}


def _together(cases: list) -> tuple[Callable, list[np.ndarray], list[str]]:
    """One function computing every (fn, data) case on its own inputs, its inputs, and the
    name of each of its outputs (the case it comes from)."""
    counts = [len(c.values[1]) for c in cases]
    names: list[str] = []

    def fn(lib, *xs):
        outputs, k = [], 0
        names.clear()
        for case, n in zip(cases, counts):
            result = _leaves(case.values[0](lib, *xs[k:k + n]))
            outputs += result
            names.extend(f"{case.id}[{j}]" for j in range(len(result)))
            k += n
        return tuple(outputs)

    return fn, [a for c in cases for a in c.values[1]], names


def _runs_on(device: str, case_id: str) -> bool:
    """Whether a case runs on `device` (see NO_FLOAT64)."""
    return not (device in NO_FLOAT64 and _float64(case_id))


def _float64(case_id: str) -> bool:
    return "float64" in case_id or case_id == "casts"


def _family(device: str, ids: list[str], pool: list) -> list:
    """The cases of `pool` named by `ids` that run on `device`."""
    by_id = {c.id: c for c in pool}
    missing = [i for i in ids if i not in by_id]
    assert not missing, f"no such cases: {missing}"
    return [by_id[i] for i in ids if _runs_on(device, i)]


def _device_check(device: str, fn: Callable, data, family: str, names: list[str] | None = None,
                  **options) -> None:
    """`check_compiled` on `device` with the family's tolerances (a module's forward-only
    program is not built again: the CPU targets cover that path); a failure names the case
    of each output."""
    tol, grad_tol = DEVICE_TOL[family]
    options = {k: v for k, v in options.items() if k not in ("tol", "grad_tol", "torch_tol",
                                                             "torch_grads")}
    options.setdefault("inference", False)
    try:
        check_compiled(fn, data, (device,), tol=tol, grad_tol=grad_tol, **options)
    except AssertionError as e:
        if not names:
            raise
        listed = ", ".join(f"{i}: {n}" for i, n in enumerate(names))
        raise AssertionError(f"{e}\noutputs: {listed}") from None


@pytest.mark.parametrize("device, family", [
    (d, f) for f, (_, ids) in DEVICE_FAMILIES.items() for d in GPU_DEVICES
    if any(_runs_on(d, i) for i in ids)])
def test_op_family_on_device(device, family):
    tol, ids = DEVICE_FAMILIES[family]
    fn, data, names = _together(_family(device, ids, TENSOR_CASES))
    _device_check(device, lambda *xs: fn(nx, *xs), data, tol, names)


@pytest.mark.parametrize("device", GPU_DEVICES)
def test_integer_and_bool_ops_on_device(device):
    """The cases without gradients (integer division, comparisons, logic, integer math and
    reductions, casts, one_hot) in one program (int64 is emulated exactly on webgpu)."""
    fn, data, names = _together(_family(device, [c.id for c in NO_GRAD_CASES], NO_GRAD_CASES))
    _device_check(device, lambda *xs: fn(nx, *xs), data, "exact", names, grad=False)


@pytest.mark.parametrize("device", GPU_DEVICES)
@pytest.mark.parametrize("layer", [
    "Conv2d-(4, 6, (3, 2))-{'stride': (2, 1), 'padding': (1, 0), 'dilation': (1, 2), "
    "'groups': 2, 'bias': False}-(2, 4, 7, 6)",
    "MaxPool2d-(3,)-{'stride': 2, 'padding': 1, 'ceil_mode': True}-(2, 2, 6, 6)",
    "LayerNorm-(6,)-{}-(4, 6)"])
def test_layer_on_device(device, layer):
    make, args, kwargs, shape, _ = {c.id: c for c in LAYER_CASES}[layer].values
    mine, _ = _pair(make, *args, **kwargs)
    _device_check(device, mine, [np.round(_kinked(shape) * 2) / 2], "layer")


@pytest.mark.parametrize("train", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("device", GPU_DEVICES)
def test_batchnorm_on_device(device, train):
    """In training mode the running statistics are updated on the device."""
    mine, _, x = _batchnorm("BatchNorm2d", (3, 4, 5, 6), dict(momentum=0.3), train)
    _device_check(device, mine, [x], "layer")


@pytest.mark.parametrize("device", GPU_DEVICES)
def test_embedding_on_device(device):
    mine, _ = _pair(lambda m: m.Embedding, 10, 4, padding_idx=3)
    idx = np.array([[0, 3, 3, 9], [1, 0, 9, 3]], dtype=np.int64)  # repeats accumulate
    _device_check(device, mine, [idx], "arithmetic")


@pytest.mark.parametrize("device", GPU_DEVICES)
@pytest.mark.parametrize("cls, kwargs", [c[:2] for c in RNN_CASES if not c[2]], ids=str)
def test_recurrent_layer_on_device(device, cls, kwargs):
    """RNN, LSTM and GRU at one configuration each (every time step is unrolled: kernels)."""
    mine, _ = _pair(lambda m: getattr(m, cls), IN, HID, **kwargs)
    rng = np.random.default_rng(1)
    shape = (BATCH, SEQ, IN) if kwargs.get("batch_first") else (SEQ, BATCH, IN)
    _device_check(device, mine, [rng.uniform(-1, 1, shape).astype(np.float32)], "layer")


@pytest.mark.parametrize("device", GPU_DEVICES)
def test_losses_on_device(device):
    """Cross-entropy (smoothing, class weights: a buffer moved with the module), NLL (ignored
    classes) and BCE with logits (huge and NaN logits) in one program."""
    cases = _family(device, ["nll-weight-ignore", "bce-logits-huge"], LOSS_CASES)
    fns = [c.values[0](nx) for c in cases]
    loss = nn.CrossEntropyLoss(weight=nx.tensor(WEIGHT), label_smoothing=0.1)

    class Losses(nn.Module):
        def __init__(self):
            super().__init__()
            self.loss = loss

        def forward(self, x, t, a, b, c, d):
            return (self.loss(x, t), fns[0](a, b), fns[1](c, d))

    data = [_floats((6, 5))[0], np.abs(TARGETS) % 5] + [a for c in cases for a in c.values[1]]
    _device_check(device, Losses(), data, "layer")


def test_webgpu_refuses_float64():
    """WGSL has no 64-bit floats: a float64 program is refused when compiling, with a message
    naming the target and the way out (int64 is emulated, exactly: test_wgsl_int64.py)."""
    needs_device("webgpu")
    x = nx.tensor(np.arange(3), dtype=nx.float64, device="cpu")
    with pytest.raises(ValueError, match=r"webgpu: float64 is not supported \(WGSL has no "
                                         r"64-bit floats\); use float32"):
        nx.compile(lambda x: (x * 2).exp(), backend="webgpu")(x)


def test_webgpu_computes_int64_in_64_bits():
    """Products and sums past int32 (regression: refused as 64-bit arithmetic)."""
    needs_device("webgpu")
    x = nx.tensor([3_000_000_000, -5, 7], device="webgpu")
    got = nx.compile(lambda x: (x * x, (x > 1).sum(), x.sum()))(x)
    products, positives, total = (g.cpu().tolist() for g in got)
    assert products == [9_000_000_000_000_000_000, 25, 49]  # past int32, below int64's max
    assert (positives, total) == (2, 3_000_000_002)
