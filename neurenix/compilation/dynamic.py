"""Which tensor dimensions a compiled function treats as dynamic, and the symbols for a trace.

`neurenix.compile(f, dynamic=...)` takes `True` (the leading dimension of every tensor
argument), a declaration `{"x": {0: (1, 4096)}}` (argument name -> {axis: (lo, hi) or None}),
`False` (every shape static) or `None`, the default: *automatic dynamic* — a dimension that
changes size between two calls is made dynamic from then on (PyTorch's default).  A dynamic
dimension of size 0 or 1 stays static (its own program), since broadcasting treats 1
specially.  Dimensions of equal size in the traced call share one symbol (PyTorch's "duck
sizing"); a call whose sizes differ where the trace had them equal does not match the
program.  docs/compiler/dynamic-shapes.md tells the design.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from neurenix.compiler.symbolic import Dim, ShapeEnv
from neurenix.runtime.sizes import bind_sizes, size_from_json, size_value

from ..tensor import Tensor
from .trace_guards import Guard

Bounds = tuple[int, int | None]
DimKey = tuple[int, int]  # (position of the tensor among the call's tensors, axis)
DEFAULT_BOUNDS: Bounds = (2, None)
SEEN_SHAPES = 256
"""How many calls' shapes a symbolic program remembers its verdict for (then forgets all)."""


@dataclass
class DynamicDims:
    """A compiled function's dynamic dimensions: `mode` "auto", "all", "declared" (only the
    named ones) or "off", the dimensions declared or found dynamic so far with their bounds,
    and whether a symbolic compile failed (then the function compiles static programs
    only)."""

    mode: str = "auto"
    named: dict[str, dict[int, Bounds]] = field(default_factory=dict)
    dims: dict[DimKey, Bounds] = field(default_factory=dict)
    failed: str | None = None
    pinned: set[DimKey] = field(default_factory=set)
    """Dimensions a trace needed at one size (`SpecializeSize`): static from then on."""

    def active(self, num_tensors: int, ndims: list[int]) -> dict[DimKey, Bounds]:
        """The dynamic dimensions for a call with tensors of these ranks."""
        if self.failed is not None or self.mode == "off":
            return {}
        out = {k: b for k, b in self.dims.items() if k[0] < num_tensors and k[1] < ndims[k[0]]}
        if self.mode == "all":
            for p in range(num_tensors):
                if ndims[p]:
                    out.setdefault((p, 0), DEFAULT_BOUNDS)
        for k in self.pinned:
            out.pop(k, None)
        return out


def parse_dynamic(dynamic: Any) -> DynamicDims:
    """`compile`'s `dynamic` argument as a `DynamicDims`; a TypeError or ValueError names
    what was expected."""
    if dynamic is None:
        return DynamicDims("auto")
    if dynamic is True or dynamic is False:
        return DynamicDims("all" if dynamic else "off")
    if not isinstance(dynamic, Mapping):
        raise TypeError(f"compile: dynamic must be None, True, False or a dict of argument "
                        f"name -> {{axis: (lo, hi)}}, got {type(dynamic).__name__}")
    named: dict[str, dict[int, Bounds]] = {}
    for name, axes in dynamic.items():
        if not isinstance(name, str) or not isinstance(axes, Mapping):
            raise TypeError(f"compile: dynamic expects argument name -> {{axis: (lo, hi)}}, "
                            f"got {name!r}: {axes!r}")
        named[name] = {}
        for axis, bounds in axes.items():
            if not isinstance(axis, int) or isinstance(axis, bool) or axis < 0:
                raise ValueError(f"compile: dynamic[{name!r}]: axes are non-negative ints, "
                                 f"got {axis!r}")
            named[name][axis] = _bounds(bounds, f"dynamic[{name!r}][{axis}]")
    return DynamicDims("declared", named)


def _bounds(bounds: Any, what: str) -> Bounds:
    if bounds is None:
        return DEFAULT_BOUNDS
    ok = (isinstance(bounds, tuple) and len(bounds) == 2
          and isinstance(bounds[0], int) and not isinstance(bounds[0], bool)
          and (bounds[1] is None or (isinstance(bounds[1], int)
                                     and not isinstance(bounds[1], bool))))
    if not ok:
        raise TypeError(f"compile: {what} must be None or (lo, hi) ints (hi may be None), "
                        f"got {bounds!r}")
    lo, hi = bounds
    if lo < 0 or (hi is not None and hi < max(lo, 2)):
        raise ValueError(f"compile: {what}: expected 0 <= lo and hi >= max(lo, 2), got "
                         f"{bounds!r}")
    return max(lo, 2), hi


def fitting(dims: Mapping[DimKey, Bounds], tensors: list[Tensor]) -> dict[DimKey, Bounds]:
    """The dynamic dimensions whose sizes in this call lie inside their bounds; the others
    (sizes 0 and 1 always) stay static in this call's program."""
    out = {}
    for (p, axis), (lo, hi) in dims.items():
        size = tensors[p].shape[axis]
        if lo <= size and (hi is None or size <= hi):
            out[(p, axis)] = (lo, hi)
    return out


def abstract_key(key: tuple, dims: Mapping[DimKey, Bounds]) -> tuple | None:
    """`key` with each dynamic dimension's size replaced by "*" (the key a symbolic program
    is cached under), or None when the call has no dynamic dimension (`fitting` left out
    those whose size is outside their bounds: sizes 0 and 1 among them)."""
    if not dims:
        return None
    p = 0
    parts = []
    for part in key[0]:
        if part[0] == "tensor":
            described, p = _abstract(part, p, dims)
            parts.append(described)
        elif part[0] == "tree":
            inner = []
            for d in part[2]:
                described, p = _abstract(d, p, dims)
                inner.append(described)
            parts.append(("tree", part[1], tuple(inner)))
        else:
            parts.append(part)
    return (tuple(parts), *key[1:])


def _abstract(described: tuple, p: int, dims: Mapping[DimKey, Bounds]) -> tuple:
    shape = tuple("*" if (p, axis) in dims else size for axis, size in enumerate(described[1]))
    return (described[0], shape, *described[2:]), p + 1


def changed_dims(old: tuple, new: tuple) -> list[DimKey] | None:
    """The tensor dimensions whose sizes differ between two signatures that are otherwise
    equal (same values, dtypes, ranks, grad mode and device); None when they differ in more
    than sizes."""
    if old[1:] != new[1:] or len(old[0]) != len(new[0]):
        return None
    changed: list[DimKey] = []
    p = 0
    for a, b in zip(old[0], new[0]):
        if a[0] != b[0]:
            return None
        if a[0] == "tensor":
            pairs = [(a, b)]
        elif a[0] == "tree":
            if a[1] != b[1] or len(a[2]) != len(b[2]):
                return None
            pairs = list(zip(a[2], b[2]))
        else:
            if a != b:
                return None
            continue
        for da, db in pairs:
            if da[2:] != db[2:] or len(da[1]) != len(db[1]):
                return None
            changed += [(p, axis) for axis, (x, y) in enumerate(zip(da[1], db[1]))
                        if x != y and x != "*"]
            p += 1
    return changed or None


def symbolic_shapes(tensors: list[Tensor], dims: Mapping[DimKey, Bounds]
                    ) -> tuple[ShapeEnv, list[tuple]]:
    """A shape environment for a trace of `tensors` and each tensor's shape with its dynamic
    dimensions as symbols: s0, s1, ... one per distinct size (duck sizing), each ranged by
    the tightest bounds declared for its dimensions."""
    env = ShapeEnv(specialize=True)
    by_size: dict[int, list[DimKey]] = {}
    for (p, axis) in sorted(dims):
        by_size.setdefault(tensors[p].shape[axis], []).append((p, axis))
    symbol_of: dict[DimKey, Dim] = {}
    for size, keys in by_size.items():
        los = [dims[k][0] for k in keys]
        his = [dims[k][1] for k in keys if dims[k][1] is not None]
        sym = env.symbol(f"s{len(env.symbols)}", hint=size, lo=max(los),
                         hi=min(his) if his else None)
        for k in keys:
            symbol_of[k] = sym
    shapes = [tuple(symbol_of.get((p, axis), size) for axis, size in enumerate(t.shape))
              for p, t in enumerate(tensors)]
    return env, shapes


def shape_guard(env: ShapeEnv, shapes: list[tuple]) -> Guard:
    """The per-call check of a symbolic program: the call's tensors have the traced shapes
    with some values of the symbols (`bind_sizes`), inside their ranges and satisfying every
    guard recorded while tracing and compiling."""

    seen: dict[tuple, bool] = {}  # the verdict per tuple of the call's shapes

    def read(tensors: list[Tensor]) -> bool:
        actual = tuple(t.shape for t in tensors)
        verdict = seen.get(actual)
        if verdict is None:
            try:
                verdict = env.check(bind_sizes(shapes, actual)) is None
            except ValueError:
                verdict = False
            if len(seen) >= SEEN_SHAPES:
                seen.clear()
            seen[actual] = verdict
        return verdict

    def explain(old: Any, new: Any) -> list[str]:
        return ["the sizes do not satisfy the program's symbolic shapes "
                f"({', '.join(str(s) for s in shapes)}) and guards "
                f"({', '.join(str(g) for g in env.guards) or 'none'})"]

    return Guard("dynamic shapes", read, True, explain)


def chosen_variants(executables: list[Any]) -> dict[str, dict]:
    """The latest call's sizes ("sizes": symbol -> value) and, per kernel compiled with
    size-specialised variants (`Program.metadata["choices"]`), the one those sizes picked
    ("variants": kernel -> its code path and the tests that picked it, e.g.
    "dot (s0 <= 167)" for few rows, "tiled, threaded (s0 > 167, 784*s0 > 131071)")."""
    sizes: dict[str, int] = {}
    variants: dict[str, str] = {}
    for exe in executables:
        last = getattr(exe, "last_sizes", None)
        if not last:
            continue
        sizes.update(last)
        for kernel, tree in exe.program.metadata.get("choices", {}).items():
            variants[kernel] = _picked(tree, last)
    return {"sizes": sizes, "variants": variants}


def _picked(tree: dict | str, sizes: Mapping[str, int]) -> str:
    """The variant of a choice tree (`Program.metadata["choices"]`) these sizes run, with
    the tests that picked it."""
    tests = []
    while isinstance(tree, dict):
        size = size_from_json(tree["size"])
        small = size_value(size, sizes) <= tree["limit"]
        tests.append(f"{size} {'<=' if small else '>'} {tree['limit']}")
        tree = tree["small" if small else "large"]
    return f"{tree} ({', '.join(tests)})"
