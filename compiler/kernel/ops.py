"""The closed set of kernel-IR operations: every `Unary`/`Binary` op name, declared once.

Lowering, the kernel evaluator, the verifier, the decompositions and every code generator
read this table; a name outside it cannot be built (`Unary`/`Binary` reject it), and tests
check that the evaluator and each generator implement every (op, dtype) it allows, so an
operation cannot be half added.  Binary operands share one dtype; the result has that dtype,
or is bool for comparisons and logical ops (`predicate`).

Integer arithmetic wraps (two's complement, as NumPy).  The bit operations work on the
integers' bits: `shl`/`shr` take the shift count modulo the bit width (its low bits, as x86,
WGSL and Java do), `shr` is arithmetic on signed and logical on unsigned integers.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..types import DType, bool_, float32, float64, int32, int64, uint32

FLOATS = frozenset({float32, float64})
SIGNED = frozenset({int32, int64})
INTEGERS = SIGNED | {uint32}
NUMBERS = FLOATS | SIGNED
ANY = NUMBERS | INTEGERS | {bool_}


@dataclass(frozen=True)
class OpSpec:
    """One kernel-IR operation: its arity, the operand dtypes it accepts, whether its result
    is bool, and the graph primitive lowering maps to it (None: kernel-only)."""

    name: str
    arity: int
    dtypes: frozenset[DType]
    predicate: bool = False
    primitive: str | None = None

    def result(self, operand: DType) -> DType:
        """The result dtype for operands of `operand`."""
        return bool_ if self.predicate else operand


def _ops(arity: int, *specs: tuple) -> dict[str, OpSpec]:
    return {s[0]: OpSpec(s[0], arity, *s[1:]) for s in specs}


UNARY_OPS: dict[str, OpSpec] = _ops(
    1,
    ("neg", NUMBERS, False, "neg"),
    ("exp", FLOATS, False, "exp"),
    ("log", FLOATS, False, "log"),
    ("sqrt", FLOATS, False, "sqrt"),
    ("tanh", FLOATS, False, "tanh"),
    ("sin", FLOATS, False, "sin"),
    ("cos", FLOATS, False, "cos"),
    ("sigmoid", FLOATS, False, "sigmoid"),
    ("erf", FLOATS, False, "erf"),
    ("abs", NUMBERS, False, "abs"),
    ("sign", NUMBERS, False, "sign"),
    ("floor", NUMBERS, False, "floor"),
    ("reciprocal", FLOATS, False, "reciprocal"),
    ("not", frozenset({bool_}), True, "logical_not"),
)

BINARY_OPS: dict[str, OpSpec] = _ops(
    2,
    ("add", NUMBERS | INTEGERS, False, "add"),
    ("sub", NUMBERS | INTEGERS, False, "sub"),
    ("mul", NUMBERS | INTEGERS, False, "mul"),
    ("div", FLOATS, False, "div"),
    ("pow", NUMBERS, False, "pow"),
    ("max", ANY, False, "maximum"),
    ("min", ANY, False, "minimum"),
    ("eq", ANY, True, "eq"),
    ("ne", ANY, True, "ne"),
    ("lt", ANY, True, "lt"),
    ("le", ANY, True, "le"),
    ("gt", ANY, True, "gt"),
    ("ge", ANY, True, "ge"),
    ("and", frozenset({bool_}), True, "logical_and"),
    ("or", frozenset({bool_}), True, "logical_or"),
    ("idiv", NUMBERS, False, "floordiv"),
    ("mod", NUMBERS, False, "remainder"),
    ("bitand", INTEGERS),
    ("bitor", INTEGERS),
    ("xor", INTEGERS),
    ("shl", INTEGERS),
    ("shr", INTEGERS),
)

REDUCE_OPS = frozenset({"sum", "max", "min", "prod", "argmax", "argmin"})

OP_NAMES = frozenset(UNARY_OPS) | frozenset(BINARY_OPS)
"""Every expression op name (what `Capabilities.native_ops` lists); `RandomUniform` is the
op "rng_uniform", which has no name field of its own."""
RNG = "rng_uniform"

UNARY_PRIMITIVES = {s.primitive: s.name for s in UNARY_OPS.values() if s.primitive}
BINARY_PRIMITIVES = {s.primitive: s.name for s in BINARY_OPS.values() if s.primitive}
"""Graph primitive -> kernel op, what lowering maps one to one."""


def check_operands(op: str, dtypes: tuple[DType, ...]) -> DType:
    """The result dtype of `op` on operands of `dtypes`; ValueError naming the op when the
    op is unknown, the arity wrong, the operands of different dtypes or a dtype refused."""
    spec = UNARY_OPS.get(op) if len(dtypes) == 1 else BINARY_OPS.get(op)
    if spec is None:
        arity = "unary" if len(dtypes) == 1 else "binary"
        raise ValueError(f"{op!r} is not a {arity} kernel op")
    if len(set(dtypes)) != 1:
        raise ValueError(f"{op}: operands of different dtypes "
                         f"{', '.join(d.name for d in dtypes)}")
    if dtypes[0] not in spec.dtypes:
        allowed = ", ".join(sorted(d.name for d in spec.dtypes))
        raise ValueError(f"{op}: does not accept {dtypes[0].name} (accepts {allowed})")
    return spec.result(dtypes[0])
