"""Recurrent layers: `RNN`, `LSTM`, `GRU` and their single-step cells.

Each layer is a composition of tensor operations unrolled over time, so autograd (and the
compiler's tracer) see an ordinary chain of primitives: gradients flow back through every time
step ("backpropagation through time") with no rule of their own.  Per layer and direction the
whole sequence's input projection is one matmul before the time loop; each step then costs one
matmul with the recurrent weight plus the gate arithmetic.

Parameter names, shapes, gate order (LSTM: i, f, g, o; GRU: r, z, n) and registration order are
PyTorch's, so `state_dict()` keys and layouts match `torch.nn.LSTM` etc. one to one.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import Any

from neurenix.compiler.types import DType, float32

from .. import eager_kernels
from .. import elementwise as ew
from ..creation import empty
from ..dispatch import apply
from ..eager_kernels import rnn as rnn_kernels
from ..linalg import matmul
from ..shapes import cat, chunk, reshape, squeeze, stack, transpose, unbind, unsqueeze
from ..state import is_grad_enabled
from ..tensor import Tensor
from . import functional as F
from . import init
from .input_errors import not_a_tensor, wrong_dtype
from .module import Module
from .parameter import Parameter

_GATES = {"RNN_TANH": 1, "RNN_RELU": 1, "LSTM": 4, "GRU": 3}
_NONLINEARITIES = {"tanh": "RNN_TANH", "relu": "RNN_RELU"}

State = tuple[Tensor, ...]  # (h,) for RNN and GRU, (h, c) for LSTM


# ---- the math of one time step -------------------------------------------------------------


def _project(x: Tensor, w_ih: Tensor, b_ih: Tensor | None, b_hh: Tensor | None,
             mode: str) -> Tensor:
    """The input's contribution to the gates, x @ W_ih^T + biases, for rows of x at once.

    For RNN and LSTM the recurrent bias only ever adds to the same pre-activation, so it is
    folded in here, once per sequence. GRU keeps b_hn inside r * (W_hn h + b_hn), so its
    recurrent bias stays in the step.
    """
    gi = matmul(x, transpose(w_ih, 0, 1))
    if b_ih is not None:
        gi = ew.add(gi, b_ih)
        if mode != "GRU":
            gi = ew.add(gi, b_hh)
    return gi


def _rnn_step(act: Callable[[Tensor], Tensor]) -> Callable[..., State]:
    def step(gi: Tensor, state: State, w_hh_t: Tensor, b_hh: Tensor | None) -> State:
        """h' = act(W_ih x + b_ih + W_hh h + b_hh), with x's part precomputed in gi."""
        return (act(ew.add(gi, matmul(state[0], w_hh_t))),)
    return step


def _lstm_step(gi: Tensor, state: State, w_hh_t: Tensor, b_hh: Tensor | None) -> State:
    """c' = f * c + i * g and h' = o * tanh(c'), gates in PyTorch's order i, f, g, o.

    Without gradients the pre-activations are computed gate-major, (4, N, H): one batched
    product of h with the four (H, H) blocks of W_hh, plus gi read through a view.  Each gate
    is then a contiguous slab, so a compiled step's gate arithmetic runs over N * H elements
    in one flat loop (with (N, 4H) rows the four gates interleave and the loop runs row by
    row).  In grad mode the (N, 4H) product is kept: the batched form's backward sums h's
    gradient over the four gates in extra kernels (a compiled training step was 2x slower)."""
    h, c = state
    if is_grad_enabled():
        i, f, g, o = chunk(ew.add(gi, matmul(h, w_hh_t)), 4, 1)
    else:
        hidden = h.shape[-1]
        w_gates = transpose(reshape(w_hh_t, (hidden, 4, hidden)), 0, 1)  # (4, H_in, H_out)
        gi_gates = transpose(reshape(gi, (gi.shape[0], 4, hidden)), 0, 1)
        i, f, g, o = unbind(ew.add(gi_gates, matmul(unsqueeze(h, 0), w_gates)), 0)
    c = ew.add(ew.mul(ew.sigmoid(f), c), ew.mul(ew.sigmoid(i), ew.tanh(g)))
    return ew.mul(ew.sigmoid(o), ew.tanh(c)), c


def _gru_step(gi: Tensor, state: State, w_hh_t: Tensor, b_hh: Tensor | None) -> State:
    """PyTorch's GRU: n = tanh(W_in x + b_in + r * (W_hn h + b_hn)), h' = (1 - z) n + z h."""
    h = state[0]
    gh = matmul(h, w_hh_t)
    if b_hh is not None:
        gh = ew.add(gh, b_hh)
    i_r, i_z, i_n = chunk(gi, 3, 1)
    h_r, h_z, h_n = chunk(gh, 3, 1)
    r = ew.sigmoid(ew.add(i_r, h_r))
    z = ew.sigmoid(ew.add(i_z, h_z))
    n = ew.tanh(ew.add(i_n, ew.mul(r, h_n)))
    # (1 - z) * n + z * h, written with one multiply
    return (ew.add(n, ew.mul(z, ew.sub(h, n))),)


_STEPS: dict[str, Callable[..., State]] = {
    "RNN_TANH": _rnn_step(ew.tanh),
    "RNN_RELU": _rnn_step(ew.relu),
    "LSTM": _lstm_step,
    "GRU": _gru_step,
}


def _direction(mode: str, x: Tensor, state: State, w_ih: Tensor, w_hh: Tensor,
               b_ih: Tensor | None, b_hh: Tensor | None, reverse: bool) -> tuple[Tensor, State]:
    """One layer direction over time-major x (L, N, H_in) as primitives: (outputs, state)."""
    steps, batch, features = x.shape
    gi = _project(reshape(x, (steps * batch, features)), w_ih, b_ih, b_hh, mode)
    gi_steps = unbind(reshape(gi, (steps, batch, gi.shape[-1])), 0)
    w_hh_t = transpose(w_hh, 0, 1)
    step = _STEPS[mode]
    outputs: list[Tensor] = [None] * steps  # type: ignore[list-item]
    for t in range(steps - 1, -1, -1) if reverse else range(steps):
        state = step(gi_steps[t], state, w_hh_t, b_hh)
        outputs[t] = state[0]
    return stack(outputs, 0), state


def _zeros(shape: tuple[int, ...], dtype: DType) -> Tensor:
    """A zero state as a `full` primitive, so a trace records it as a node, not a constant."""
    return apply("full", shape=tuple(shape), value=0.0, dtype=dtype.name)


# ---- argument checks shared by layers and cells ----------------------------------------------


def _check_size(layer: str, name: str, value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{layer}: {name} must be an int, got {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"{layer}: {name} must be positive, got {value}")
    return value


def _check_dtype(layer: str, dtype: DType | None) -> DType:
    dtype = float32 if dtype is None else dtype
    if not isinstance(dtype, DType) or not dtype.is_floating:
        raise TypeError(f"{layer}: dtype must be a floating-point neurenix dtype, got {dtype!r}")
    return dtype


def _new_weight(shape: tuple[int, int] | tuple[int], dtype: DType, device: Any) -> Parameter:
    return Parameter(empty(shape, dtype=dtype, device=device))


def _check_state(layer: str, name: str, value: Any, expected: tuple[int, ...],
                 dtype: DType) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{layer}: expected {name} to be a Tensor, got {type(value).__name__}")
    if tuple(value.shape) != expected:
        raise ValueError(f"{layer}: expected {name} of shape {expected}, got "
                         f"{tuple(value.shape)}")
    if value.dtype != dtype:
        raise TypeError(f"{layer}: expected {name} of dtype {dtype.name} (the input's), got "
                        f"{value.dtype.name}")
    return value


def _split_hx(layer: str, mode: str, hx: Any) -> tuple[Any, ...]:
    """The initial state as a tuple: (h_0,) or, for LSTM, (h_0, c_0)."""
    if mode == "LSTM":
        if not isinstance(hx, (tuple, list)) or len(hx) != 2:
            raise TypeError(f"{layer}: expected the initial state as a tuple (h_0, c_0), got "
                            f"{type(hx).__name__}")
        return tuple(hx)
    return (hx,)


# ---- multi-layer recurrent layers ----------------------------------------------------------


class RNNBase(Module):
    """The shared machinery of RNN, LSTM and GRU: parameters, shape checks and the time loop.

    `mode` is one of 'RNN_TANH', 'RNN_RELU', 'LSTM', 'GRU' (PyTorch's names).
    """

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, dtype: DType | None = None,
                 device: Any = None) -> None:
        super().__init__()
        layer = type(self).__name__
        if mode not in _GATES:
            raise ValueError(f"{layer}: unknown mode {mode!r}, expected one of {list(_GATES)}")
        self.mode = mode
        self.input_size = _check_size(layer, "input_size", input_size)
        self.hidden_size = _check_size(layer, "hidden_size", hidden_size)
        self.num_layers = _check_size(layer, "num_layers", num_layers)
        self.bias = bool(bias)
        self.batch_first = bool(batch_first)
        self.bidirectional = bool(bidirectional)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) \
                or not 0.0 <= dropout <= 1.0:
            raise ValueError(f"{layer}: dropout must be a number in [0, 1] (the probability of "
                             f"zeroing an element), got {dropout!r}")
        self.dropout = float(dropout)
        if self.dropout > 0 and self.num_layers == 1:
            warnings.warn(f"{layer}: dropout adds dropout after all but the last recurrent "
                          f"layer, so non-zero dropout expects num_layers greater than 1, but "
                          f"got dropout={dropout} and num_layers={num_layers}",
                          UserWarning, stacklevel=3)
        dtype = _check_dtype(layer, dtype)
        gates = _GATES[mode] * self.hidden_size
        directions = 2 if self.bidirectional else 1
        self._flat_weights_names: list[str] = []
        for k in range(self.num_layers):
            layer_in = self.input_size if k == 0 else self.hidden_size * directions
            for d in range(directions):
                suffix = f"l{k}" + ("_reverse" if d == 1 else "")
                shapes = [(f"weight_ih_{suffix}", (gates, layer_in)),
                          (f"weight_hh_{suffix}", (gates, self.hidden_size))]
                if self.bias:
                    shapes += [(f"bias_ih_{suffix}", (gates,)), (f"bias_hh_{suffix}", (gates,))]
                for name, shape in shapes:
                    setattr(self, name, _new_weight(shape, dtype, device))
                    self._flat_weights_names.append(name)
        self.reset_parameters()

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def reset_parameters(self) -> None:
        """Draw every weight and bias from U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            init.uniform_(p, -bound, bound)

    @property
    def all_weights(self) -> list[list[Parameter]]:
        """Per layer and direction, [weight_ih, weight_hh(, bias_ih, bias_hh)]."""
        per = 4 if self.bias else 2
        names = self._flat_weights_names
        return [[getattr(self, n) for n in names[i:i + per]] for i in range(0, len(names), per)]

    def _weights(self, k: int, d: int) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        suffix = f"l{k}" + ("_reverse" if d == 1 else "")
        w_ih = getattr(self, f"weight_ih_{suffix}")
        w_hh = getattr(self, f"weight_hh_{suffix}")
        if not self.bias:
            return w_ih, w_hh, None, None
        return w_ih, w_hh, getattr(self, f"bias_ih_{suffix}"), getattr(self, f"bias_hh_{suffix}")

    def _time_major(self, input: Any) -> tuple[Tensor, bool]:
        """The input as (L, N, H_in) and whether it came with a batch dimension."""
        layer = type(self).__name__
        if not isinstance(input, Tensor):
            raise not_a_tensor(layer, input)
        if input.ndim not in (2, 3):
            raise ValueError(f"{layer}: expected input of rank 2 (L, H_in) or 3 "
                             f"({'N, L' if self.batch_first else 'L, N'}, H_in), got shape "
                             f"{tuple(input.shape)}")
        if input.shape[-1] != self.input_size:
            raise ValueError(f"{layer}: expected input with {self.input_size} features "
                             f"(input_size), got {input.shape[-1]} in shape "
                             f"{tuple(input.shape)}")
        dtype = self.weight_ih_l0.dtype
        if input.dtype != dtype:
            raise wrong_dtype(layer, dtype, input.dtype, "the parameters'")
        batched = input.ndim == 3
        if not batched:
            x = unsqueeze(input, 1)
        elif self.batch_first:
            x = transpose(input, 0, 1)
        else:
            x = input
        if x.shape[0] == 0:
            raise ValueError(f"{layer}: expected a sequence of at least one step, got input "
                             f"of shape {tuple(input.shape)}")
        return x, batched

    def _initial_states(self, hx: Any, batch: int, batched: bool,
                        dtype: DType) -> list[State]:
        """One state tuple per (layer, direction), sliced from hx or zero."""
        count = self.num_layers * self.num_directions
        names = ("h_0", "c_0") if self.mode == "LSTM" else ("h_0",)
        if hx is None:
            zero = _zeros((batch, self.hidden_size), dtype)
            return [(zero,) * len(names)] * count
        layer = type(self).__name__
        expected = (count, batch, self.hidden_size) if batched else (count, self.hidden_size)
        parts = []
        for name, value in zip(names, _split_hx(layer, self.mode, hx)):
            value = _check_state(layer, name, value, expected, dtype)
            parts.append(unbind(value if batched else unsqueeze(value, 1), 0))
        return [tuple(p[i] for p in parts) for i in range(count)]

    def _run_direction(self, x: Tensor, state: State, k: int, d: int) -> tuple[Tensor, State]:
        """One layer in one direction over the whole sequence: (outputs (L, N, H), last state),
        as one eager kernel where it may run as one (`neurenix.eager_kernels`)."""
        w_ih, w_hh, b_ih, b_hh = self._weights(k, d)
        mode = self.mode
        if eager_kernels.eligible(x, *state, w_ih, w_hh, b_ih, b_hh):
            def composite(x, h0, c0, w_ih, w_hh, b_ih, b_hh):
                state = (h0, c0) if mode == "LSTM" else (h0,)
                out, last = _direction(mode, x, state, w_ih, w_hh, b_ih, b_hh, d == 1)
                return (out,) + last
            return rnn_kernels.run_direction(mode, x, state, w_ih, w_hh, b_ih, b_hh, d == 1,
                                             composite)
        return _direction(mode, x, state, w_ih, w_hh, b_ih, b_hh, d == 1)

    def forward(self, input: Tensor, hx: Any = None) -> tuple[Tensor, Any]:
        """Run the sequence through every layer: (output, h_n), or (output, (h_n, c_n)).

        output is (L, N, D * hidden_size) ((N, L, ...) with batch_first, (L, ...) unbatched);
        h_n and c_n are (num_layers * D, N, hidden_size), or (num_layers * D, hidden_size)
        for unbatched input, with D = 2 when bidirectional.
        """
        x, batched = self._time_major(input)
        states = self._initial_states(hx, x.shape[1], batched, x.dtype)
        finals: list[State] = []
        for k in range(self.num_layers):
            outs = []
            for d in range(self.num_directions):
                out, last = self._run_direction(x, states[k * self.num_directions + d], k, d)
                outs.append(out)
                finals.append(last)
            x = cat(outs, 2) if len(outs) > 1 else outs[0]
            if self.dropout > 0 and self.training and k < self.num_layers - 1:
                x = F.dropout(x, self.dropout, True)
        final = tuple(stack([s[j] for s in finals], 0) for j in range(len(finals[0])))
        if not batched:
            x = squeeze(x, 1)
            final = tuple(squeeze(f, 1) for f in final)
        elif self.batch_first:
            x = transpose(x, 0, 1)
        return x, (final if self.mode == "LSTM" else final[0])

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.mode == "RNN_RELU":
            s += ", nonlinearity='relu'"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        return s


class RNN(RNNBase):
    """Multi-layer Elman RNN: h_t = act(W_ih x_t + b_ih + W_hh h_(t-1) + b_hh), act tanh or relu.

    forward(input, h_0=None) returns (output, h_n).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str = "tanh", bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, dtype: DType | None = None,
                 device: Any = None) -> None:
        if nonlinearity not in _NONLINEARITIES:
            raise ValueError(f"RNN: unknown nonlinearity {nonlinearity!r}, expected 'tanh' or "
                             f"'relu'")
        super().__init__(_NONLINEARITIES[nonlinearity], input_size, hidden_size, num_layers,
                         bias, batch_first, dropout, bidirectional, dtype, device)
        self.nonlinearity = nonlinearity


class LSTM(RNNBase):
    """Multi-layer long short-term memory network (gates i, f, g, o, as in PyTorch).

    forward(input, (h_0, c_0)=None) returns (output, (h_n, c_n)).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, dtype: DType | None = None,
                 device: Any = None) -> None:
        super().__init__("LSTM", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, dtype, device)


class GRU(RNNBase):
    """Multi-layer gated recurrent unit network (gates r, z, n, PyTorch's formulation).

    forward(input, h_0=None) returns (output, h_n).
    """

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 bias: bool = True, batch_first: bool = False, dropout: float = 0.0,
                 bidirectional: bool = False, dtype: DType | None = None,
                 device: Any = None) -> None:
        super().__init__("GRU", input_size, hidden_size, num_layers, bias, batch_first,
                         dropout, bidirectional, dtype, device)


# ---- single-step cells ---------------------------------------------------------------------


class RNNCellBase(Module):
    """One time step of a recurrent layer, for loops the user writes (PyTorch's cells)."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, bias: bool = True,
                 dtype: DType | None = None, device: Any = None) -> None:
        super().__init__()
        layer = type(self).__name__
        self.mode = mode
        self.input_size = _check_size(layer, "input_size", input_size)
        self.hidden_size = _check_size(layer, "hidden_size", hidden_size)
        self.bias = bool(bias)
        dtype = _check_dtype(layer, dtype)
        gates = _GATES[mode] * self.hidden_size
        self.weight_ih = _new_weight((gates, self.input_size), dtype, device)
        self.weight_hh = _new_weight((gates, self.hidden_size), dtype, device)
        if self.bias:
            self.bias_ih = _new_weight((gates,), dtype, device)
            self.bias_hh = _new_weight((gates,), dtype, device)
        else:
            self.register_parameter("bias_ih", None)
            self.register_parameter("bias_hh", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Draw every weight and bias from U(-1/sqrt(hidden_size), 1/sqrt(hidden_size))."""
        bound = 1.0 / math.sqrt(self.hidden_size)
        for p in self.parameters():
            init.uniform_(p, -bound, bound)

    def forward(self, input: Tensor, hx: Any = None) -> Any:
        """One step: input (N, H_in) or (H_in,), state (N, H) or (H,); returns the new state."""
        layer = type(self).__name__
        if not isinstance(input, Tensor):
            raise not_a_tensor(layer, input)
        if input.ndim not in (1, 2):
            raise ValueError(f"{layer}: expected input of rank 1 (H_in) or 2 (N, H_in), got "
                             f"shape {tuple(input.shape)}")
        if input.shape[-1] != self.input_size:
            raise ValueError(f"{layer}: expected input with {self.input_size} features "
                             f"(input_size), got {input.shape[-1]} in shape "
                             f"{tuple(input.shape)}")
        if input.dtype != self.weight_ih.dtype:
            raise wrong_dtype(layer, self.weight_ih.dtype, input.dtype, "the parameters'")
        batched = input.ndim == 2
        x = input if batched else unsqueeze(input, 0)
        names = ("h_0", "c_0") if self.mode == "LSTM" else ("h_0",)
        if hx is None:
            zero = _zeros((x.shape[0], self.hidden_size), x.dtype)
            state: State = (zero,) * len(names)
        else:
            expected = (x.shape[0], self.hidden_size) if batched else (self.hidden_size,)
            state = tuple(
                _check_state(layer, name, value, expected, x.dtype)
                for name, value in zip(names, _split_hx(layer, self.mode, hx)))
            if not batched:
                state = tuple(unsqueeze(s, 0) for s in state)
        gi = _project(x, self.weight_ih, self.bias_ih, self.bias_hh, self.mode)
        new = _STEPS[self.mode](gi, state, transpose(self.weight_hh, 0, 1), self.bias_hh)
        if not batched:
            new = tuple(squeeze(s, 0) for s in new)
        return new if self.mode == "LSTM" else new[0]

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        if self.mode == "RNN_RELU":
            s += ", nonlinearity='relu'"
        return s


class RNNCell(RNNCellBase):
    """One Elman RNN step: h' = act(W_ih x + b_ih + W_hh h + b_hh), act tanh or relu."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 nonlinearity: str = "tanh", dtype: DType | None = None,
                 device: Any = None) -> None:
        if nonlinearity not in _NONLINEARITIES:
            raise ValueError(f"RNNCell: unknown nonlinearity {nonlinearity!r}, expected 'tanh' "
                             f"or 'relu'")
        super().__init__(_NONLINEARITIES[nonlinearity], input_size, hidden_size, bias, dtype,
                         device)
        self.nonlinearity = nonlinearity


class LSTMCell(RNNCellBase):
    """One LSTM step: forward(input, (h, c)=None) returns (h', c')."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 dtype: DType | None = None, device: Any = None) -> None:
        super().__init__("LSTM", input_size, hidden_size, bias, dtype, device)


class GRUCell(RNNCellBase):
    """One GRU step (PyTorch's formulation): forward(input, h=None) returns h'."""

    def __init__(self, input_size: int, hidden_size: int, bias: bool = True,
                 dtype: DType | None = None, device: Any = None) -> None:
        super().__init__("GRU", input_size, hidden_size, bias, dtype, device)
