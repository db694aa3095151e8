"""Differential tests of random programs: compiled (both backends) vs eager vs PyTorch.

Hypothesis draws small programs: a few float32 inputs of small shapes (now and then with a
0-size dimension) and a list of steps taken from `OPS`, a table of (neurenix, torch) function
pairs. The same program is built in both libraries from that description. Every example
compares eager with PyTorch and each compiled backend with eager, for forward values and for
the gradient of every input. It also covers two calls before any backward, a batch size that
changes between calls, and random `nn` models whose state changes between calls. A failing
example prints its `Program` (or `ModelCase`); to reproduce it, paste that into
`_check_program(program, backend)` (or `_check_model_case(case, backend)`).

Programs keep their values bounded (`_Gen` tracks a bound on every value and scales big ones
down) so that float32 rounding, not overflow, is the only difference allowed between runs:
`rtol=1e-4` and `atol=1e-5` times the largest magnitude of the result. NaN and inf must
appear in the same places. Settings are derandomized, so CI always runs the same examples.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import numpy as np
import pytest
import torch
import toy_target
from devices import needs_device
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from neurenix.compiler.kernel.decompose import UNARY_RULES
from neurenix.compiler.kernel.ops import BINARY_OPS, UNARY_OPS
from neurenix.compiler.targets import Target, get_target, register_target

import neurenix as nx
from neurenix import nn

KERNEL_EVAL = toy_target.register().name
# native code for a target that lacks every operation a decomposition exists for (erf,
# sigmoid, the random-number hash): the rewrites run through LLVM
DECOMPOSED = register_target(Target(
    "llvm-decomposed", "cpu",
    lambda: replace(get_target("llvm").capabilities,
                    native_ops=frozenset(UNARY_OPS) - set(UNARY_RULES) | frozenset(BINARY_OPS)),
    "neurenix.compiler.codegen.llvm:generate", "neurenix.runtime.cpu"), replace=True).name

RTOL, ATOL = 1e-4, 1e-5
EPS = 1e-2  # sqrt and log take |x| + EPS: defined, and with bounded gradients, everywhere
MAX_BOUND = 100.0  # a bigger value is scaled down by an extra `mul` step
MAX_INPUTS = 3
MAX_NDIM = 4
MAX_NUMEL = 256


def _settings(n: int):
    """`n` derandomized examples, no deadline: the first call of a program compiles it."""
    return settings(max_examples=n, deadline=None, derandomize=True, database=None,
                    suppress_health_check=list(HealthCheck))


# ---- comparing ------------------------------------------------------------------------------


def assert_matches(got: Any, want: Any, what: str, rtol: float = RTOL,
                   atol: float = ATOL) -> None:
    """Same shape; NaN and +-inf at the same places; finite values within
    `atol * max(1, max |want|) + rtol * |want|`. None reads as zeros of the other's shape."""
    if got is None and want is None:
        return
    got = np.zeros_like(np.asarray(want)) if got is None else np.asarray(got)
    want = np.zeros_like(got) if want is None else np.asarray(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    got, want = got.astype(np.float64), want.astype(np.float64)
    for name, mask in (("NaN", np.isnan), ("+inf", np.isposinf), ("-inf", np.isneginf)):
        differ = mask(got) != mask(want)
        assert not differ.any(), \
            f"{what}: {name} at different places, first {np.argwhere(differ)[0].tolist()}: " \
            f"got {got[differ][0]}, want {want[differ][0]}"
    finite = np.isfinite(want)
    g, w = got[finite], want[finite]
    scale = max(1.0, float(np.abs(w).max(initial=0.0)))
    err = np.abs(g - w)
    bad = err > atol * scale + rtol * np.abs(w)
    if bad.any():
        worst = int(np.argmax(np.where(bad, err, -1.0)))
        raise AssertionError(f"{what}: {int(bad.sum())} of {w.size} values differ, worst "
                             f"got {g[worst]!r} want {w[worst]!r} (scale {scale:g})")


def _numpy(t: Any) -> np.ndarray | None:
    if t is None:
        return None
    return t.detach().numpy()


# ---- the op table: (neurenix function, torch function) --------------------------------------
# Each function takes value operands (an int in a step's args names an earlier value, a float is
# a Python scalar operand) and the step's params as keywords. Neurenix has no sin/cos, so the
# table has none. Most spellings are shared: `_same(f)` makes the pair f(neurenix, ...),
# f(torch, ...).


def _same(f):
    return partial(f, nx), partial(f, torch)


def _binary(f):
    """f(a, b), or f(b, a) with `swap`: scalars then sit on the left (`2.0 / (|x| + 0.5)`)."""
    return _same(lambda L, a, b, swap=False: f(L, b, a) if swap else f(L, a, b))


def _reduce(name):
    def f(L, x, dim=None, keepdim=False):
        return getattr(x, name)() if dim is None else getattr(x, name)(dim, keepdim=keepdim)
    return _same(f)


OPS: dict[str, tuple] = {
    # elementwise unary
    "exp": _same(lambda L, x: L.exp(x)),
    "tanh": _same(lambda L, x: L.tanh(x)),
    "sigmoid": _same(lambda L, x: L.sigmoid(x)),
    "relu": _same(lambda L, x: L.relu(x)),
    "abs": _same(lambda L, x: L.abs(x)),
    "neg": _same(lambda L, x: L.neg(x)),
    "sqrt": _same(lambda L, x: L.sqrt(L.abs(x) + EPS)),
    "log": _same(lambda L, x: L.log(L.abs(x) + EPS)),
    "clamp": _same(lambda L, x, lo=None, hi=None: L.clamp(x, min=lo, max=hi)),
    # binary, broadcasting (b a value or a Python float)
    "add": _binary(lambda L, a, b: a + b),
    "sub": _binary(lambda L, a, b: a - b),
    "mul": _binary(lambda L, a, b: a * b),
    "div": _binary(lambda L, a, b: a / (abs(b) + 0.5)),
    "maximum": _binary(lambda L, a, b: L.maximum(a, b)),
    "minimum": _binary(lambda L, a, b: L.minimum(a, b)),
    "pow": _binary(lambda L, a, b: (abs(a) + 0.5) ** b),
    # reductions, softmax
    "sum": _reduce("sum"),
    "mean": _reduce("mean"),
    "amax": _reduce("amax"),
    "amin": _reduce("amin"),
    "softmax": _same(lambda L, x, dim: L.softmax(x, dim)),
    "log_softmax": _same(lambda L, x, dim: L.log_softmax(x, dim)),
    # products and movement
    "matmul": _same(lambda L, a, b: L.matmul(a, b)),
    "reshape": _same(lambda L, x, shape: x.reshape(shape)),
    "permute": _same(lambda L, x, dims: x.permute(*dims)),
    "transpose": _same(lambda L, x, dims: x.transpose(*dims)),
    "unsqueeze": _same(lambda L, x, dim: x.unsqueeze(dim)),
    "getitem": _same(lambda L, x, index: x[index]),
    "cat": _same(lambda L, *xs, dim: L.cat(list(xs), dim)),
    "where": _same(lambda L, c, a, b: L.where(c > 0, a, b)),  # c: always a graph input
}

UNARY = ("exp", "tanh", "sigmoid", "relu", "abs", "neg", "sqrt", "log")
BINARY = ("add", "sub", "mul", "div", "maximum", "minimum", "pow")
SCALARS = (2.0, -1.5, 0.5, 0.0, 3.0, -0.25)


@dataclass(frozen=True)
class Program:
    """Steps in order; step i makes value i. ("input", (), {"shape": s}) is the next argument;
    (op, args, params) runs `OPS[op]` on earlier values (ints in args) and floats. `outputs`
    name the values returned. Input data come from `seed`: uniform in [-2, 2], or with `ties`
    on a grid of 0.5 (exact zeros, equal entries: relu's kink, maximum's and amax's ties), and
    with `specials` about one entry in six NaN, inf or -inf."""

    steps: tuple
    outputs: tuple[int, ...]
    seed: int = 0
    ties: bool = False
    specials: bool = False  # some input entries NaN, inf or -inf

    @property
    def input_shapes(self) -> list[tuple[int, ...]]:
        return [p["shape"] for op, _, p in self.steps if op == "input"]


def run_program(prog: Program, lib: Any, inputs: Any) -> tuple:
    """The program on `inputs` with `lib` (neurenix or torch); returns its outputs."""
    side = 0 if lib is nx else 1
    args = iter(inputs)
    values: list = []
    for op, refs, params in prog.steps:
        if op == "input":
            values.append(next(args))
            continue
        operands = [values[r] if isinstance(r, int) else r for r in refs]
        values.append(OPS[op][side](*operands, **params))
    return tuple(values[i] for i in prog.outputs)


def input_arrays(prog: Program, seed: int, batch: int | None = None) -> list[np.ndarray]:
    """Input data for `prog` (with a leading batch dimension when `batch` is given)."""
    rng = np.random.default_rng(seed)
    out = []
    for shape in prog.input_shapes:
        shape = shape if batch is None else (batch, *shape)
        if prog.ties:
            arr = rng.integers(-4, 5, size=shape) / 2
        else:
            arr = rng.uniform(-2.0, 2.0, size=shape)
        if prog.specials:
            arr = np.where(rng.random(shape) < 1 / 6, rng.choice([np.nan, np.inf, -np.inf],
                                                                 size=shape), arr)
        out.append(arr.astype(np.float32))
    return out


# ---- drawing programs -----------------------------------------------------------------------

SIZES = (2, 3, 1, 4, 5, 2, 3, 1, 4, 5, 3, 0)  # about one dimension in twelve is empty


def _broadcast(*shapes) -> tuple[int, ...] | None:
    try:
        out = np.broadcast_shapes(*shapes)
    except ValueError:
        return None
    return out if len(out) <= MAX_NDIM and math.prod(out) <= MAX_NUMEL else None


@dataclass
class _Val:
    shape: tuple[int, ...]
    bound: float  # |value| <= bound everywhere (a loose upper bound)
    is_input: bool
    hidden: bool = False  # too big to use again: only its scaled-down copy is an operand


@dataclass
class _Gen:
    """Builds a program step by step, tracking each value's shape and bound."""

    draw: Any
    steps: list = field(default_factory=list)
    vals: list[_Val] = field(default_factory=list)

    # -- helpers

    def inputs(self) -> int:
        return sum(v.is_input for v in self.vals)

    def room(self) -> bool:
        return self.inputs() < MAX_INPUTS

    def add_input(self, shape: tuple[int, ...]) -> int:
        self.steps.append(("input", (), {"shape": tuple(shape)}))
        self.vals.append(_Val(tuple(shape), 2.0, True))
        return len(self.vals) - 1

    def emit(self, op: str, refs: tuple, params: dict, shape, bound: float) -> int:
        self.steps.append((op, tuple(refs), params))
        self.vals.append(_Val(tuple(shape), float(bound), False))
        idx = len(self.vals) - 1
        if bound > MAX_BOUND:  # keep magnitudes modest: scale down by a power of ten
            self.vals[idx].hidden = True
            factor = 10.0 ** -math.ceil(math.log10(bound / MAX_BOUND))
            idx = self.emit("mul", (idx, factor), {}, shape, bound * factor)
        return idx

    def shape(self, ndim_lo: int = 1, ndim_hi: int = 3) -> tuple[int, ...]:
        n = self.draw(st.integers(ndim_lo, ndim_hi))
        return tuple(self.draw(st.sampled_from(SIZES)) for _ in range(n))

    def partner_shape(self, s: tuple[int, ...]) -> tuple[int, ...]:
        """A new input's shape that broadcasts with `s`: a suffix of it with some dims 1,
        perhaps one leading dim more."""
        if not s:
            return self.shape(1, 2)
        k = self.draw(st.integers(1, min(3, len(s))))
        out = [1 if self.draw(st.booleans()) else d for d in s[-k:]]
        if len(out) < 3 and len(s) < MAX_NDIM and self.draw(st.booleans()):
            out.insert(0, self.draw(st.integers(1, 3)))
        return tuple(out)

    def compatible(self, s: tuple[int, ...], inputs_only: bool = False) -> list[int]:
        return [i for i, v in enumerate(self.vals) if not v.hidden and
                (v.is_input or not inputs_only) and _broadcast(s, v.shape) is not None]

    def partner(self, s, inputs_only=False, scalars=(), bound_ok=lambda b: True):
        """An operand for a value of shape `s`: an earlier value, a new input or a scalar."""
        kinds = []
        values = [i for i in self.compatible(s, inputs_only) if bound_ok(self.vals[i].bound)]
        if values:
            kinds.append("value")
        if self.room() and bound_ok(2.0):
            kinds.append("input")
        scalars = [c for c in scalars if bound_ok(abs(c))]
        if scalars:
            kinds.append("scalar")
        kind = self.draw(st.sampled_from(kinds))
        if kind == "value":
            return self.draw(st.sampled_from(values))
        if kind == "input":
            shape = self.partner_shape(s)
            return self.add_input(shape if _broadcast(s, shape) is not None else (1,))
        return self.draw(st.sampled_from(scalars))

    def info(self, ref) -> tuple[tuple[int, ...], float]:
        if isinstance(ref, float):
            return (), abs(ref)
        return self.vals[ref].shape, self.vals[ref].bound

    # -- one step

    def applicable(self, a: int) -> dict[str, list[str]]:
        """The ops that fit value `a`, by kind (a kind is drawn first, then an op of it)."""
        v = self.vals[a]
        nd, shape = len(v.shape), v.shape
        kinds = {"unary": [n for n in UNARY if n != "exp" or v.bound <= 6.0] + ["clamp"],
                 "binary": list(BINARY), "reduce": ["sum", "mean"],
                 "shape": ["reshape", "unsqueeze"] if nd < MAX_NDIM else ["reshape"],
                 "combine": []}
        if math.prod(shape) > 0 or any(shape):
            kinds["reduce"] += ["amax", "amin"]
        if nd:
            kinds["reduce"] += ["softmax", "log_softmax"]
            kinds["shape"].append("getitem")
            kinds["combine"].append("cat")
        if nd >= 2:
            kinds["shape"] += ["permute", "transpose"]
        if 1 <= nd <= 3 and (self.room() or self.matmul_partners(shape)):
            kinds["combine"].append("matmul")
        if self.room() or self.compatible(shape, inputs_only=True):
            kinds["combine"].append("where")
        return {k: v for k, v in kinds.items() if v}

    def step(self) -> int:
        """Append one op (and the inputs it brings); returns the index of its value."""
        visible = [i for i, v in enumerate(self.vals) if not v.hidden]
        back = self.draw(st.integers(0, len(visible) - 1)) if self.draw(st.booleans()) else 0
        a = visible[-1 - back]  # mostly the latest value: deeper chains
        kinds = self.applicable(a)
        name = self.draw(st.sampled_from(kinds[self.draw(st.sampled_from(sorted(kinds)))]))
        v = self.vals[a]
        if name in UNARY:
            bound = {"exp": math.exp(v.bound), "tanh": 1.0, "sigmoid": 1.0,
                     "sqrt": math.sqrt(v.bound + EPS),
                     "log": max(-math.log(EPS), math.log(v.bound + EPS))}.get(name, v.bound)
            return self.emit(name, (a,), {}, v.shape, bound)
        return getattr(self, "gen_" + name, self.gen_binary)(name, a, v)

    def gen_clamp(self, name, a, v):
        lo, hi = self.draw(st.sampled_from([(-0.5, 0.5), (0.0, None), (None, 1.0), (-1.0, 0.0),
                                            (None, 0.5), (-0.5, None)]))
        bound = max(abs(lo), abs(hi)) if lo is not None and hi is not None else \
            max(v.bound, 1.0)
        return self.emit(name, (a,), {"lo": lo, "hi": hi}, v.shape, bound)

    def gen_binary(self, name, a, v):
        if name == "pow":  # base |a| + 0.5 >= 0.5: the result stays below 2**bound(b) or so
            base = max(v.bound + 0.5, 2.0)
            b = self.partner(v.shape, scalars=SCALARS,
                             bound_ok=lambda e: e * math.log(base) <= math.log(1e6))
        else:
            b = self.partner(v.shape, scalars=() if name in ("maximum", "minimum") else SCALARS)
        swap = False
        sb, bb = self.info(b)
        if name != "pow" or isinstance(b, float):
            if name == "pow":  # a scalar base: (|c| + 0.5) ** a
                swap = self.draw(st.booleans()) and max(abs(b) + 0.5, 2.0) ** v.bound <= 1e6
            else:
                swap = self.draw(st.booleans())
        out = _broadcast(v.shape, sb)
        ba = v.bound
        if name == "pow":
            if swap:
                bound = max(abs(b) + 0.5, 2.0) ** ba
            else:
                bound = max(ba + 0.5, 2.0) ** bb
        else:
            x, y = (bb, ba) if swap else (ba, bb)
            bound = {"add": x + y, "sub": x + y, "mul": x * y, "div": 2.0 * x}.get(name,
                                                                                   max(x, y))
        params = {"swap": True} if swap else {}
        return self.emit(name, (a, b), params, out, bound)

    def reduce_dims(self, shape, allow_empty: bool):
        nd = len(shape)
        dims = [d for d in range(nd) if allow_empty or shape[d] > 0]
        can_all = allow_empty or math.prod(shape) > 0
        choices = (["all"] if can_all else []) + (["one", "several"] if dims else [])
        kind = self.draw(st.sampled_from(choices))
        if kind == "all":
            return None, False, tuple(range(nd))
        if kind == "one":
            d = self.draw(st.sampled_from(dims))
            dim = d - nd if self.draw(st.booleans()) else d
            picked = (d,)
        else:
            picked = tuple(sorted(self.draw(st.lists(st.sampled_from(dims), min_size=1,
                                                     max_size=len(dims), unique=True))))
            dim = picked
        return dim, self.draw(st.booleans()), picked

    def gen_sum(self, name, a, v):
        empty_ok = name in ("sum", "mean")
        dim, keepdim, picked = self.reduce_dims(v.shape, empty_ok)
        shape = tuple(1 if i in picked else d for i, d in enumerate(v.shape)) if keepdim else \
            tuple(d for i, d in enumerate(v.shape) if i not in picked)
        count = math.prod(v.shape[i] for i in picked)
        bound = v.bound * max(count, 1) if name == "sum" else v.bound
        params = {} if dim is None else {"dim": dim, "keepdim": keepdim}
        return self.emit(name, (a,), params, shape, bound)

    gen_mean = gen_amax = gen_amin = gen_sum

    def gen_softmax(self, name, a, v):
        nd = len(v.shape)
        dim = self.draw(st.integers(-nd, nd - 1))
        bound = 1.0 if name == "softmax" else 2 * v.bound + math.log(max(v.shape[dim], 1)) + 1
        return self.emit(name, (a,), {"dim": dim}, v.shape, bound)

    gen_log_softmax = gen_softmax

    def matmul_shapes(self, s):
        k = s[-1]
        n = self.draw(st.sampled_from((1, 2, 3, 4, 0)))
        if len(s) == 1:
            return [(k,), (k, n)]
        if len(s) == 2:
            return [(k,), (k, n), (2, k, n)]
        return [(k,), (k, n), (s[0], k, n), (1, k, n)]

    def matmul_partners(self, s) -> list[int]:
        out = []
        for i, v in enumerate(self.vals):
            rows = v.shape[0 if len(v.shape) == 1 else -2] if v.shape else None
            if not v.hidden and 1 <= len(v.shape) <= 3 and rows == s[-1]:
                try:
                    shape = np.matmul(np.zeros(s), np.zeros(v.shape)).shape
                except ValueError:
                    continue
                if len(shape) <= MAX_NDIM and math.prod(shape) <= MAX_NUMEL:
                    out.append(i)
        return out

    def gen_matmul(self, name, a, v):
        existing = self.matmul_partners(v.shape)
        if existing and (not self.room() or self.draw(st.booleans())):
            b = self.draw(st.sampled_from(existing))
        else:
            b = self.add_input(self.draw(st.sampled_from(self.matmul_shapes(v.shape))))
        vb = self.vals[b]
        shape = np.matmul(np.zeros(v.shape), np.zeros(vb.shape)).shape
        return self.emit(name, (a, b), {}, shape, v.bound * vb.bound * max(v.shape[-1], 1))

    def gen_reshape(self, name, a, v):
        s = v.shape
        options = [(math.prod(s),), tuple(reversed(s)), (1, *s)]
        for i in range(len(s) - 1):
            options.append((*s[:i], s[i] * s[i + 1], *s[i + 2:]))
        for i, d in enumerate(s):
            for p in range(2, d):
                if d % p == 0:
                    options.append((*s[:i], p, d // p, *s[i + 1:]))
        options = [o for o in options if len(o) <= MAX_NDIM]
        shape = self.draw(st.sampled_from(options))
        return self.emit(name, (a,), {"shape": shape}, shape, v.bound)

    def gen_permute(self, name, a, v):
        dims = tuple(self.draw(st.permutations(range(len(v.shape)))))
        shape = tuple(v.shape[d] for d in dims)
        return self.emit(name, (a,), {"dims": dims}, shape, v.bound)

    def gen_transpose(self, name, a, v):
        nd = len(v.shape)
        d0, d1 = self.draw(st.integers(-nd, nd - 1)), self.draw(st.integers(-nd, nd - 1))
        shape = list(v.shape)
        shape[d0], shape[d1] = shape[d1], shape[d0]
        return self.emit(name, (a,), {"dims": (d0, d1)}, shape, v.bound)

    def gen_unsqueeze(self, name, a, v):
        nd = len(v.shape)
        dim = self.draw(st.integers(-nd - 1, nd))
        shape = np.expand_dims(np.zeros(v.shape), dim).shape
        return self.emit(name, (a,), {"dim": dim}, shape, v.bound)

    def gen_getitem(self, name, a, v):
        index = []
        for d in v.shape[:self.draw(st.integers(1, len(v.shape)))]:
            kinds = ["full", "slice"] + (["int"] if d else [])
            kind = self.draw(st.sampled_from(kinds))
            if kind == "int":
                index.append(self.draw(st.integers(-d, d - 1)))
            elif kind == "slice":
                bound = st.one_of(st.none(), st.integers(-6, 6))
                index.append(slice(self.draw(bound), self.draw(bound),
                                   self.draw(st.sampled_from((None, 1, 2, 3)))))
            else:
                index.append(slice(None))
        index = tuple(index)
        shape = np.zeros(v.shape)[index].shape
        return self.emit(name, (a,), {"index": index}, shape, v.bound)

    def gen_cat(self, name, a, v):
        nd = len(v.shape)
        d = self.draw(st.integers(0, nd - 1))
        dim = d - nd if self.draw(st.booleans()) else d
        fits = [i for i, w in enumerate(self.vals) if not w.hidden and len(w.shape) == nd and all(
            x == y for j, (x, y) in enumerate(zip(v.shape, w.shape)) if j != d)]
        kinds = ["value"] + (["input"] if self.room() and nd <= 3 else [])
        if self.draw(st.sampled_from(kinds)) == "value":
            b = self.draw(st.sampled_from(fits))
        else:
            shape = list(v.shape)
            shape[d] = self.draw(st.integers(0, 3))
            b = self.add_input(tuple(shape))
        shape = list(v.shape)
        shape[d] += self.vals[b].shape[d]
        if math.prod(shape) > MAX_NUMEL:
            return self.emit("neg", (a,), {}, v.shape, v.bound)
        return self.emit(name, (a, b), {"dim": dim}, shape,
                         max(v.bound, self.vals[b].bound))

    def gen_where(self, name, a, v):
        c = self.partner(v.shape, inputs_only=True)
        other = self.partner(_broadcast(v.shape, self.vals[c].shape), scalars=SCALARS)
        so, bo = self.info(other)
        shape = _broadcast(v.shape, self.vals[c].shape, so)
        if shape is None:  # the three do not broadcast together: compare `a` with itself
            other, so, bo = a, v.shape, v.bound
            shape = _broadcast(v.shape, self.vals[c].shape)
        return self.emit(name, (c, a, other), {}, shape, max(v.bound, bo))


@st.composite
def programs(draw, max_steps: int = 6) -> Program:
    """A random Program: one input to start with, 1..max_steps ops (which may add inputs).
    One in four has NaN and inf among its inputs."""
    ties, specials = draw(st.sampled_from([(False, False), (True, False), (False, False),
                                           (False, True)]))
    g = _Gen(draw)
    g.add_input(g.shape())
    for _ in range(draw(st.integers(1, max_steps))):
        last = g.step()
    made = [i for i, v in enumerate(g.vals) if not (v.is_input or v.hidden) and i != last]
    outputs = (last,)
    if made and draw(st.booleans()):
        outputs = (draw(st.sampled_from(made)), last)
    return Program(tuple(g.steps), outputs, draw(st.integers(0, 2**16)), ties, specials)


# ---- running a program three ways ---------------------------------------------------------------


def _cotangents(outputs, seed: int) -> list[np.ndarray]:
    """One fixed random cotangent per output (by its shape and `seed`)."""
    rng = np.random.default_rng(seed + 7919)
    return [rng.standard_normal(tuple(o.shape)).astype(np.float32) for o in outputs]


def _loss(lib, outputs, seed: int):
    """sum_j (output_j * cotangent_j).sum(): backward sends cotangent_j into output j."""
    total = None
    for out, cot in zip(outputs, _cotangents(outputs, seed)):
        term = (out * lib.tensor(cot)).sum()
        total = term if total is None else total + term
    return total


def _forward_backward(fn, lib, arrays, seed: int):
    """`fn` on fresh leaves made from `arrays`, then backward of `_loss`: outputs, grads."""
    xs = [lib.tensor(a, requires_grad=True) for a in arrays]
    outs = fn(*xs)
    _loss(lib, outs, seed).backward()
    return outs, [x.grad for x in xs]


def _check_outputs(got, want, label, grad=True):
    """Number, shapes, dtypes, requires_grad (none unless `grad`) and values of outputs."""
    assert len(got) == len(want), f"{label}: {len(got)} outputs, want {len(want)}"
    for i, (a, b) in enumerate(zip(got, want)):
        assert tuple(a.shape) == tuple(b.shape), f"{label}: output {i} shape {tuple(a.shape)} " \
                                                 f"!= {tuple(b.shape)}"
        assert str(a.dtype).split(".")[-1] == str(b.dtype).split(".")[-1], \
            f"{label}: output {i} dtype {a.dtype} != {b.dtype}"
        assert a.requires_grad == (grad and b.requires_grad), \
            f"{label}: output {i} requires_grad {a.requires_grad}"
        assert_matches(_numpy(a), _numpy(b), f"{label}: output {i}")


def _check_grads(got, want, label):
    for i, (a, b) in enumerate(zip(got, want)):
        assert_matches(_numpy(a), _numpy(b), f"{label}: grad of input {i}")


def _two_calls(fn, arrays1, arrays2, seed: int, order: str):
    """Two calls before any backward, then backward in `order`; the inputs' gradients."""
    x1 = [nx.tensor(a, requires_grad=True) for a in arrays1]
    x2 = [nx.tensor(a, requires_grad=True) for a in arrays2]
    if order == "shared_first_input":  # like a weight: both calls' gradients accumulate
        x2[0] = x1[0]
    l1, l2 = _loss(nx, fn(*x1), seed), _loss(nx, fn(*x2), seed)
    if order == "first_then_second":
        l1.backward()
        l2.backward()
    elif order == "second_then_first":
        l2.backward()
        l1.backward()
    else:
        (l1 + l2).backward()
    return [x.grad for x in x1] + [x.grad for x in x2]


ORDERS = ("first_then_second", "second_then_first", "sum_of_both", "shared_first_input")


def _check_program(prog: Program, backend: str) -> None:
    """Eager vs torch, then compiled (`backend`) vs eager: one call with its backward, two
    calls before backward in every order, and a call under no_grad."""
    arrays = input_arrays(prog, prog.seed)
    eager_fn = lambda *xs: run_program(prog, nx, xs)  # noqa: E731
    e_out, e_grads = _forward_backward(eager_fn, nx, arrays, prog.seed)
    t_out, t_grads = _forward_backward(lambda *xs: run_program(prog, torch, xs), torch, arrays,
                                       prog.seed)
    _check_outputs(e_out, t_out, "eager vs torch")
    _check_grads(e_grads, t_grads, "eager vs torch")

    compiled = nx.compile(eager_fn, backend=backend)
    c_out, c_grads = _forward_backward(compiled, nx, arrays, prog.seed)
    _check_outputs(c_out, e_out, f"{backend} vs eager")
    _check_grads(c_grads, e_grads, f"{backend} vs eager")

    arrays2 = input_arrays(prog, prog.seed + 1)
    for order in ORDERS:
        want = _two_calls(eager_fn, arrays, arrays2, prog.seed, order)
        got = _two_calls(compiled, arrays, arrays2, prog.seed, order)
        _check_grads(got, want, f"{backend} vs eager, two calls, {order}")
    assert compiled.cache_size == 1, "a call with the same signature compiled again"

    with nx.no_grad():  # the forward-only program
        got = compiled(*(nx.tensor(a) for a in arrays2))
        want = eager_fn(*(nx.tensor(a) for a in arrays2))
    _check_outputs(got, want, f"{backend} no_grad vs eager", grad=False)


# ---- random programs ------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # NaN and inf inputs are deliberate
@_settings(80)
@given(prog=programs())
def test_random_programs_reference(prog):
    """Random programs on the reference backend: values, gradients, repeated calls."""
    _check_program(prog, "reference")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@_settings(25)
@given(prog=programs(max_steps=5))
def test_random_programs_llvm(prog):
    """Random programs as native code (fewer: each costs an LLVM compile or two)."""
    _check_program(prog, "llvm")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@_settings(25)
@given(prog=programs(max_steps=5))
def test_random_programs_kernel_eval(prog):
    """Random programs through the whole pipeline to the kernel evaluator (the toy target:
    32-bit indices, 256-byte alignment, scalar schedules)."""
    _check_program(prog, KERNEL_EVAL)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@_settings(10)
@given(prog=programs(max_steps=5))
def test_random_programs_decomposed(prog):
    """Random programs as native code with erf, sigmoid and the random-number hash
    decomposed (what a target without them gets)."""
    _check_program(prog, DECOMPOSED)


def _check_program_on_device(prog: Program, device: str) -> None:
    """Compiled for `device` (host inputs uploaded, outputs brought back with `to`, whose
    backward sends the cotangents to the device) vs eager on the CPU: values and gradients."""
    needs_device(device)
    arrays = input_arrays(prog, prog.seed)
    eager_fn = lambda *xs: run_program(prog, nx, xs)  # noqa: E731
    e_out, e_grads = _forward_backward(eager_fn, nx, arrays, prog.seed)
    compiled = nx.compile(eager_fn, backend=device)

    def on_device(*xs):
        outs = compiled(*xs)
        assert all(o.device == device for o in outs)
        return tuple(o.to("cpu") for o in outs)

    c_out, c_grads = _forward_backward(on_device, nx, arrays, prog.seed)
    _check_outputs(c_out, e_out, f"{device} vs eager")
    _check_grads(c_grads, e_grads, f"{device} vs eager")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@_settings(4)
@given(prog=programs(max_steps=4))
def test_random_programs_opencl(prog):
    """Random programs on the OpenCL device (few: PoCL builds each kernel on first use)."""
    _check_program_on_device(prog, "opencl")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@_settings(8)
@given(prog=programs(max_steps=4))
def test_random_programs_webgpu(prog):
    """Random programs on the WebGPU device."""
    _check_program_on_device(prog, "webgpu")


# ---- a batch size that changes between calls ------------------------------------------------


def _batched(prog: Program, lib, xs) -> tuple:
    """`prog` on every sample of a batch (leading dimension), its outputs stacked."""
    per = [run_program(prog, lib, [x[i] for x in xs]) for i in range(xs[0].shape[0])]
    return tuple(lib.stack([p[j] for p in per]) for j in range(len(prog.outputs)))


def _check_batch_sizes(prog: Program, backend: str, sizes: tuple[int, ...]) -> None:
    """One compiled function called with batches of `sizes` in turn (the last size again
    after another one): each call's values and gradients equal eager's and torch's."""
    eager_fn = lambda *xs: _batched(prog, nx, xs)  # noqa: E731
    compiled = nx.compile(eager_fn, backend=backend)
    for call, b in enumerate(sizes):
        arrays = input_arrays(prog, prog.seed + call, batch=b)
        label = f"call {call} (batch {b})"
        e_out, e_grads = _forward_backward(eager_fn, nx, arrays, prog.seed)
        t_out, t_grads = _forward_backward(lambda *xs: _batched(prog, torch, xs), torch,
                                           arrays, prog.seed)
        _check_outputs(e_out, t_out, f"{label}: eager vs torch")
        _check_grads(e_grads, t_grads, f"{label}: eager vs torch")
        c_out, c_grads = _forward_backward(compiled, nx, arrays, prog.seed)
        _check_outputs(c_out, e_out, f"{label}: {backend} vs eager")
        _check_grads(c_grads, e_grads, f"{label}: {backend} vs eager")
    assert compiled.cache_size == len(set(sizes))


BATCHES = st.sampled_from([(1, 3, 1), (2, 1, 2), (3, 2, 3), (2, 3, 2)])


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@_settings(30)
@given(prog=programs(max_steps=4), sizes=BATCHES)
def test_batch_size_changes_between_calls_reference(prog, sizes):
    """Batch b1, then b2, then b1 again (its program reused): eager's answer every time."""
    _check_batch_sizes(prog, "reference", sizes)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@_settings(5)
@given(prog=programs(max_steps=3), sizes=BATCHES)
def test_batch_size_changes_between_calls_llvm(prog, sizes):
    """The same on native code."""
    _check_batch_sizes(prog, "llvm", sizes)


# ---- random nn models whose state changes between calls -----------------------------------------


class _Affine(nn.Module):
    """x * scale + offset: `scale` a Python float and `offset` a plain tensor attribute, both
    read by forward (so the trace depends on them: guards must see their changes)."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.scale = 1.5
        self.offset = nx.tensor(np.linspace(-0.5, 0.5, n, dtype=np.float32))

    def forward(self, x):
        return x * self.scale + self.offset


def _make_layer(spec: tuple, seed: int) -> nn.Module:
    """A layer from its spec, initialised from `seed` (the same spec and seed: the same
    layer, so the compiled and the eager model start equal)."""
    nx.manual_seed(seed)
    kind, *size = spec
    return {"linear": lambda: nn.Linear(*size), "batchnorm": lambda: nn.BatchNorm1d(*size),
            "layernorm": lambda: nn.LayerNorm(*size), "tanh": nn.Tanh, "relu": nn.ReLU,
            "dropout": lambda: nn.Dropout(0.0), "affine": lambda: _Affine(*size)}[kind]()


def _make_model(layers: tuple, seed: int) -> nn.Sequential:
    return nn.Sequential(*(_make_layer(s, seed + i) for i, s in enumerate(layers)))


PARAMS_PER_LAYER = {"linear": 2, "batchnorm": 2, "layernorm": 2}
MODEL_BATCHES = (3, 4, 5)


@dataclass(frozen=True)
class ModelCase:
    """A model (layer specs), how it is compiled (`wrap`: the module itself, or a function
    `lambda x: model(x) + shift` with a captured tensor `shift`), the first call's batch size
    and the changes made before each later call (see `_mutate`)."""

    layers: tuple
    wrap: str
    batch: int
    mutations: tuple
    seed: int = 0


@st.composite
def model_cases(draw, max_mutations: int = 5) -> ModelCase:
    """A random ModelCase. Widths and batch sizes are at least 3: BatchNorm over 2 samples or
    LayerNorm over 2 features gives +-1 whatever its input, and its input gradient is then
    nothing but rounding (float32 eager, compiled and torch differ by 1e-3 relative)."""
    width = draw(st.integers(3, 4))
    layers = [("linear", 3, width)]
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(("linear", "batchnorm", "layernorm", "tanh", "relu",
                                     "dropout", "affine")))
        if kind == "linear":
            new = draw(st.integers(3, 4))
            layers.append(("linear", width, new))
            width = new
        elif kind in ("batchnorm", "layernorm", "affine"):
            layers.append((kind, width))
        else:
            layers.append((kind,))
    wrap = draw(st.sampled_from(("module", "function")))
    n_params = sum(PARAMS_PER_LAYER.get(s[0], 0) for s in layers)
    where = {k: [i for i, s in enumerate(layers) if s[0] == k]
             for k in ("affine", "batchnorm", "layernorm")}
    param = st.integers(0, n_params - 1)
    options = [st.tuples(st.just("train"), st.booleans()),
               st.tuples(st.just("requires_grad"), param),
               st.tuples(st.just("replace"), st.integers(0, len(layers) - 1)),
               st.tuples(st.just("weight"), param, st.integers(0, 99)),
               st.tuples(st.just("new_param"), param, st.integers(0, 99)),
               st.tuples(st.just("batch"), st.sampled_from(MODEL_BATCHES)),
               st.tuples(st.just("grad"), st.booleans())]
    if where["affine"]:
        at = st.sampled_from(where["affine"])
        options += [st.tuples(st.just("scale"), at, st.sampled_from((0.5, -2.0, 3.0, 1.5))),
                    st.tuples(st.just("offset"), at, st.integers(0, 99)),
                    st.tuples(st.just("offset_grad"), at)]
    if where["batchnorm"]:
        options.append(st.tuples(st.just("momentum"), st.sampled_from(where["batchnorm"]),
                                 st.sampled_from((0.5, 0.01))))
    if where["batchnorm"] or where["layernorm"]:
        options.append(st.tuples(st.just("eps"), st.sampled_from(where["batchnorm"] +
                                                                 where["layernorm"]),
                                 st.sampled_from((1e-2, 1e-3))))
    if wrap == "function":
        options += [st.tuples(st.just("shift"), st.integers(0, 99)),
                    st.tuples(st.just("shift_grad"))]
    mutations = draw(st.lists(st.one_of(options), min_size=1, max_size=max_mutations))
    return ModelCase(tuple(layers), wrap, draw(st.sampled_from(MODEL_BATCHES)), tuple(mutations),
                     draw(st.integers(0, 2**16)))


def _values(shape, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(-1.0, 1.0, size=shape).astype(np.float32)


def _mutate(m: tuple, model: nn.Sequential, handle, shift, layers: tuple, seed: int) -> None:
    """Apply change `m` to one copy of the model. `handle` gets train/eval: the compiled
    module (which stands in for the module) or the model itself."""
    kind, *arg = m
    named = list(model.named_parameters())
    if kind == "train":
        handle.train(arg[0])
    elif kind == "requires_grad":
        p = named[arg[0]][1]
        p.requires_grad_(not p.requires_grad)
    elif kind == "replace":  # a fresh layer of the same shape, in training mode
        model[arg[0]] = _make_layer(layers[arg[0]], seed + 1000 + arg[0])
    elif kind == "weight":
        with nx.no_grad():
            p = named[arg[0]][1]
            p.copy_(nx.tensor(_values(tuple(p.shape), arg[1])))
    elif kind == "new_param":  # a new Parameter object where the old one was
        name, p = named[arg[0]]
        owner, attr = name.split(".")
        setattr(model[int(owner)], attr, nn.Parameter(nx.tensor(_values(tuple(p.shape),
                                                                        arg[1]))))
    elif kind in ("scale", "momentum", "eps"):
        setattr(model[arg[0]], kind, arg[1])
    elif kind == "offset":
        off = model[arg[0]].offset
        with nx.no_grad():
            off.copy_(nx.tensor(_values(tuple(off.shape), arg[1])))
    elif kind == "offset_grad":
        off = model[arg[0]].offset
        off.requires_grad_(not off.requires_grad)
    elif kind == "shift":
        with nx.no_grad():
            shift.copy_(nx.tensor(_values(tuple(shift.shape), arg[0])))
    elif kind == "shift_grad":
        shift.requires_grad_(not shift.requires_grad)


def _captured(model: nn.Sequential, shift) -> list:
    """The tensors besides parameters that the call reads: `shift` and Affine offsets."""
    return [shift] + [m.offset for m in model if isinstance(m, _Affine)]


def _model_call(f, g, mc, me, shifts, batch: int, grad: bool, seed: int, label: str) -> None:
    """One call of the compiled `f` and the eager `g` on the same batch: the output, the
    gradients of the input, of every parameter and of captured tensors, and the buffers left
    behind must agree."""
    x_arr = _values((batch, 3), seed)
    captured = _captured(mc, shifts[0]), _captured(me, shifts[1])
    for t in [*mc.parameters(), *me.parameters(), *captured[0], *captured[1]]:
        t.grad = None
    xc, xe = nx.tensor(x_arr, requires_grad=True), nx.tensor(x_arr, requires_grad=True)
    with nx.set_grad_enabled(grad):
        oc, oe = f(xc), g(xe)
    _check_outputs((oc,), (oe,), label)
    if oe.requires_grad:
        _loss(nx, (oc,), seed).backward()
        _loss(nx, (oe,), seed).backward()
    assert_matches(_numpy(xc.grad), _numpy(xe.grad), f"{label}: grad of the input")
    for (name, pc), pe in zip(mc.named_parameters(), me.parameters()):
        assert pc.requires_grad == pe.requires_grad, f"{label}: {name}.requires_grad"
        assert_matches(_numpy(pc.grad), _numpy(pe.grad), f"{label}: grad of {name}")
    for i, (tc, te) in enumerate(zip(*captured)):
        assert_matches(_numpy(tc), _numpy(te), f"{label}: captured tensor {i}")
        assert_matches(_numpy(tc.grad), _numpy(te.grad), f"{label}: grad of captured {i}")
    for (name, bc), be in zip(mc.named_buffers(), me.buffers()):
        assert_matches(_numpy(bc), _numpy(be), f"{label}: buffer {name}")


def _check_model_case(case: ModelCase, backend: str) -> Any:
    """Two equal models, one compiled; every change applied to both, then both called."""
    mc, me = _make_model(case.layers, case.seed), _make_model(case.layers, case.seed)
    width = [s[2] for s in case.layers if s[0] == "linear"][-1]
    shift_c = nx.tensor(_values((width,), case.seed))
    shift_e = nx.tensor(shift_c.numpy().copy())
    if case.wrap == "module":
        f, g = nx.compile(mc, backend=backend), me
    else:
        f = nx.compile(lambda x: mc(x) + shift_c, backend=backend)
        g = lambda x: me(x) + shift_e  # noqa: E731
    batch, grad = case.batch, True
    shifts = (shift_c, shift_e)
    _model_call(f, g, mc, me, shifts, batch, grad, case.seed, f"{backend}: call 0")
    for call, m in enumerate(case.mutations, 1):
        _mutate(m, mc, f if case.wrap == "module" else mc, shift_c, case.layers, case.seed)
        _mutate(m, me, me, shift_e, case.layers, case.seed)
        batch = m[1] if m[0] == "batch" else batch
        grad = m[1] if m[0] == "grad" else grad
        _model_call(f, g, mc, me, shifts, batch, grad, case.seed + call,
                    f"{backend}: call {call} after {m}")
    return f


@_settings(40)
@given(case=model_cases())
def test_model_state_changed_between_calls_reference(case):
    """train/eval, requires_grad, a replaced layer, a Python float attribute, tensors changed in
    place, batch size and grad mode, changed between calls: each call equals eager."""
    _check_model_case(case, "reference")


@_settings(7)
@given(case=model_cases(max_mutations=4))
def test_model_state_changed_between_calls_llvm(case):
    """The same on native code (few examples: most changes compile again)."""
    _check_model_case(case, "llvm")


@_settings(7)
@given(case=model_cases(max_mutations=4))
def test_model_state_changed_between_calls_kernel_eval(case):
    """The same through the toy target (the kernel evaluator)."""
    _check_model_case(case, KERNEL_EVAL)


@_settings(8)
@given(case=model_cases(max_mutations=1), b2=st.sampled_from(MODEL_BATCHES))
def test_model_batch_size_changes_and_returns(case, b2):
    """A model called with batch b1, b2, then b1 again: the first program is reused and still
    gives eager's answer (both backends)."""
    b2 = b2 if b2 != case.batch else case.batch + 2
    for backend in ("reference", "llvm"):
        case = ModelCase(case.layers, case.wrap, case.batch,
                         (("batch", b2), ("batch", case.batch)), case.seed)
        assert _check_model_case(case, backend).cache_size == 2


# ---- the harness can fail -------------------------------------------------------------------


def test_assert_matches_detects_differences():
    """The comparison passes within tolerance and fails on a value, a NaN, an inf, a shape."""
    want = np.array([1.0, -2.0, 1e3, 0.0], np.float32)
    assert_matches(want * (1 + 1e-6), want, "close")
    assert_matches(None, np.zeros(3), "None is zero")
    for got, match in ((want * 1.001, "values differ"), (np.r_[want[:3], np.nan], "NaN"),
                       (np.r_[want[:3], np.inf], "inf"), (want[:3], "shape"),
                       (want + 0.1, "values differ")):
        with pytest.raises(AssertionError, match=match):
            assert_matches(got, want, "deliberate")
    with pytest.raises(AssertionError, match="values differ"):
        assert_matches(None, np.ones(2), "missing gradient")


_TANH = Program(steps=(("input", (), {"shape": (2, 3)}), ("tanh", (0,), {}),
                       ("sum", (1,), {"dim": 1, "keepdim": False})), outputs=(2,), seed=3)


def _tanh_after_first_call(later):
    """A neurenix tanh that is right on its first (eager) call and `later(x)` afterwards."""
    calls = []

    def tanh(x):
        calls.append(None)
        return x.tanh() if len(calls) == 1 else later(x)
    return tanh


@pytest.mark.parametrize("later, match", [
    (lambda x: x.tanh() * 1.001, "reference vs eager: output 0"),
    # the same value, twice the gradient
    (lambda x: x.tanh() * 2 - x.tanh().detach(), "reference vs eager: grad of input 0"),
])
def test_check_program_fails_when_compiled_differs(monkeypatch, later, match):
    """`_check_program` fails when the traced program differs from eager, in the values or
    in the gradients alone (the trace sees a different neurenix tanh than the eager run)."""
    monkeypatch.setitem(OPS, "tanh", (_tanh_after_first_call(later), OPS["tanh"][1]))
    with pytest.raises(AssertionError, match=match):
        _check_program(_TANH, "reference")


def test_check_program_fails_when_eager_differs_from_torch(monkeypatch):
    """And when eager disagrees with PyTorch."""
    monkeypatch.setitem(OPS, "tanh", (lambda x: x.tanh() * 1.001, OPS["tanh"][1]))
    with pytest.raises(AssertionError, match="eager vs torch: output 0"):
        _check_program(_TANH, "reference")


def test_check_model_case_fails_when_compiled_differs(monkeypatch):
    """`_check_model_case` fails when the compiled model's state leaves eager's (here a change
    made to the compiled copy only)."""
    real = _mutate

    def compiled_copy_only(m, model, handle, *rest):
        if handle is not model:  # with wrap="module" only the compiled copy has handle != model
            real(m, model, handle, *rest)
    monkeypatch.setitem(globals(), "_mutate", compiled_copy_only)
    case = ModelCase((("linear", 3, 3), ("affine", 3)), "module", 3, (("scale", 1, 3.0),))
    with pytest.raises(AssertionError, match="reference: call 1 after \\('scale'"):
        _check_model_case(case, "reference")
