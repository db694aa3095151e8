"""Function scaffolding for the LLVM backend: entry-block allocas and counted loops.

Loops are emitted in the canonical shape LLVM's loop passes expect (a guarded body block with
one induction phi and one latch) and may carry `llvm.loop.vectorize.enable` metadata, a
self-referential loop ID as LLVM requires.  A forced loop LLVM cannot vectorize makes it print
a remark on stderr, so short loops are not forced: once LLVM knows a loop runs exactly twice it
rewrites its exit test into a phi the vectorizer does not recognise ("value that could not be
identified as reduction is used outside the loop").  That happens to a loop with a constant
trip count, and to one whose bound `FunctionBuilder.min` caps at a few iterations (an edge
tile's columns) wherever LLVM specialises the bound to a constant.  Nor is a loop that
branches on a condition that does not depend on its index and that it tests again (in a
second branch or a select): a concatenation along an outer axis loads each source under its
region's condition, then picks by the same conditions.  LLVM threads those branches into a
`switch`, which its vectorizer cannot handle ("Loop contains an unsupported switch").
"""
from __future__ import annotations

from contextlib import contextmanager

from llvmlite import ir

from ...runtime.sizes import Poly
from ..schedule.sizes import Blocks, Ceil
from .llvm_math import I1, I64, PTR

SHORTEST_FORCED = 4  # a loop with a constant trip count below this is left to the cost model
SHORTEST_FORCED_BOUND = 8  # so is one that `min` caps below this (it may be 2 at an edge)


def loop_metadata(module: ir.Module, vectorize: bool,
                  fold_tail: bool = False) -> ir.values.MDValue:
    """A fresh loop ID `!N = !{!N, !{"llvm.loop.vectorize.enable", i1 1}}`; with `fold_tail`
    also `llvm.loop.vectorize.predicate.enable`: the remainder runs as one masked vector
    iteration instead of a scalar loop (for short loops, 14 or 28 iterations)."""
    hints = []
    names = ["llvm.loop.vectorize.enable"] if vectorize else []
    if vectorize and fold_tail:
        names.append("llvm.loop.vectorize.predicate.enable")
    for name in names:
        hints.append(module.add_metadata([ir.MetaDataString(module, name), ir.Constant(I1, 1)]))
    md = ir.values.MDValue(module, hints, name=str(len(module.metadata)))
    md.operands = (md,) + md.operands  # loop IDs refer to themselves
    return md


class FunctionBuilder:
    """An IRBuilder over a function whose allocas all sit in the entry block (so that mem2reg
    turns them into registers), with a `loop` context manager.

    In a function of a kernel with dynamic sizes, `sizes` is its `const int64_t *sizes`
    parameter and `symbols` the names of its entries: each symbol is loaded once in the entry
    block, and `value` turns a size (an int, a polynomial, a `Ceil`) into an i64 there.
    """

    def __init__(self, fn: ir.Function, masked_vectors: bool = True,
                 sizes: ir.Value | None = None, symbols: tuple[str, ...] = ()) -> None:
        self.fn = fn
        self.masked_vectors = masked_vectors
        self._caps: dict[int, int] = {}  # id(value of `min`) -> its constant upper bound
        entry = fn.append_basic_block("entry")
        body = fn.append_basic_block("start")
        self._entry = ir.IRBuilder(entry)
        self._entry.branch(body)
        self.b = ir.IRBuilder(body)
        self._values: dict[object, ir.Value] = {}
        self.symbols: dict[str, ir.Value] = {}
        if sizes is not None:
            self._entry.position_before(self._entry.block.terminator)
            for j, name in enumerate(symbols):
                slot = self._entry.gep(sizes, [ir.Constant(I64, j)], inbounds=True,
                                       source_etype=I64)
                self.symbols[name] = self._entry.load(slot, typ=I64, name=name, align=8)
        fn.neurenix_symbols = self.symbols  # how `ExprEmitter` finds a `Sym`'s value

    def value(self, size: int | Poly | Ceil | Blocks) -> ir.Value:
        """A size as an i64: a constant, or computed once from the symbols in the entry
        block."""
        if isinstance(size, int):
            return ir.Constant(I64, size)
        key = size if isinstance(size, (Ceil, Blocks)) else ("poly", size.terms)
        if key not in self._values:
            self._entry.position_before(self._entry.block.terminator)
            self._values[key] = size_value(self._entry, self.symbols, size)
        return self._values[key]

    def ceil_div(self, size: int | Poly, divisor: int) -> ir.Value:
        """ceil(size / divisor) as an i64 (size >= 0)."""
        if isinstance(size, int):
            return ir.Constant(I64, -(-size // divisor))
        return self.value(Ceil(size, divisor))

    @property
    def module(self) -> ir.Module:
        return self.fn.module

    def alloca(self, typ: ir.Type, count: int | None = None, align: int | None = None,
               name: str = "") -> ir.Value:
        """A stack slot in the entry block."""
        self._entry.position_before(self._entry.block.terminator)
        slot = self._entry.alloca(typ, size=None if count is None else ir.Constant(I64, count),
                                  name=name)
        slot.type = PTR  # llvmlite types allocas as typed pointers; we use opaque ones only
        if align:
            slot.align = align
        return slot

    @contextmanager
    def loop(self, lo: ir.Value | int, hi: ir.Value | int, name: str, vectorize: bool = False,
             fold_tail: bool = False):
        """for i in range(lo, hi): yields i (an i64); the builder ends after the loop."""
        b = self.b
        lo = ir.Constant(I64, lo) if isinstance(lo, int) else lo
        hi = ir.Constant(I64, hi) if isinstance(hi, int) else hi
        before = b.block
        body = self.fn.append_basic_block(f"{name}.body")
        done = self.fn.append_basic_block(f"{name}.done")
        b.cbranch(b.icmp_signed("<", lo, hi), body, done)
        b.position_at_end(body)
        i = b.phi(I64, name=name)
        i.add_incoming(lo, before)
        yield i
        nxt = b.add(i, ir.Constant(I64, 1), flags=("nuw", "nsw"))
        i.add_incoming(nxt, b.block)
        latch = b.cbranch(b.icmp_signed("<", nxt, hi), body, done)
        vectorize = (vectorize and self._long_enough(lo, hi)
                     and self._vectorizable(body, i, latch))
        latch.set_metadata("llvm.loop", loop_metadata(self.module, vectorize, fold_tail))
        b.position_at_end(done)

    def _cap(self, value: ir.Value) -> int | None:
        """A constant upper bound of an i64 value (a constant, or a `min` with one)."""
        if isinstance(value, ir.Constant):
            return int(value.constant)
        return self._caps.get(id(value))

    def _long_enough(self, lo: ir.Value, hi: ir.Value) -> bool:
        """Whether a loop over [lo, hi) may run often enough to be forced to vectorize (see
        the module docstring); `lo` is never negative."""
        top = self._cap(hi)
        if top is None:
            return True
        exact = isinstance(hi, ir.Constant) and isinstance(lo, ir.Constant)
        trips = top - (int(lo.constant) if isinstance(lo, ir.Constant) else 0)
        return trips >= (SHORTEST_FORCED if exact else SHORTEST_FORCED_BOUND)

    def _vectorizable(self, body: ir.Block, i: ir.Value, latch: ir.Instruction) -> bool:
        """Whether a loop starting at `body`, with index `i`, may be forced to vectorize: it
        calls no external function (a C library call would make LLVM refuse, and say so on
        stderr), it has no conditional load unless the target has masked vector loads, and no
        condition that ignores `i` is both branched on and tested again (see the module
        docstring)."""
        blocks = self.fn.blocks
        loop = blocks[blocks.index(body):]
        if not self.masked_vectors and len(loop) > 2:
            return False
        varying = {id(i)}  # the values computed from `i`
        tests: dict[int, int] = {}  # id(condition) -> how many branches and selects test it
        branched: set[int] = set()  # conditions of branches that ignore `i`
        for block in loop:
            for ins in block.instructions:
                if isinstance(ins, ir.CallInstr) and isinstance(ins.callee, ir.Function):
                    callee = ins.callee
                    if callee.is_declaration and not callee.name.startswith("llvm."):
                        return False
                operands = ([v for v, _ in ins.incomings] if isinstance(ins, ir.PhiInstr)
                            else ins.operands)
                if any(id(v) in varying for v in operands):
                    varying.add(id(ins))
                if isinstance(ins, (ir.SelectInstr, ir.ConditionalBranch)) and ins is not latch:
                    cond = id(ins.operands[0])
                    tests[cond] = tests.get(cond, 0) + 1
                    if isinstance(ins, ir.ConditionalBranch) and cond not in varying:
                        branched.add(cond)
        return all(tests[cond] < 2 for cond in branched)

    def min(self, a: ir.Value, c: ir.Value | int) -> ir.Value:
        """Signed minimum of two i64 values."""
        c = ir.Constant(I64, c) if isinstance(c, int) else c
        result = self.b.select(self.b.icmp_signed("<", a, c), a, c)
        caps = [cap for cap in (self._cap(a), self._cap(c)) if cap is not None]
        if caps:
            self._caps[id(result)] = min(caps)
        return result


def size_value(b: ir.IRBuilder, symbols: dict[str, ir.Value],
               size: int | Poly | Ceil | Blocks) -> ir.Value:
    """Emit a size with `b`, given its symbols' i64 values: a polynomial term by term, a
    `Ceil` by an unsigned division (sizes are never negative), `Blocks` as it evaluates."""
    if isinstance(size, int):
        return ir.Constant(I64, size)
    if isinstance(size, Blocks):
        return _blocks_value(b, symbols, size)
    if isinstance(size, Ceil):
        top = size_value(b, symbols, size.size)
        blocks = top if size.divisor == 1 else b.udiv(
            b.add(top, ir.Constant(I64, size.divisor - 1)), ir.Constant(I64, size.divisor))
        if isinstance(size.times, int) and size.times == 1:
            return blocks
        return b.mul(blocks, size_value(b, symbols, size.times))
    total = None
    for monomial, coefficient in size.terms:
        term = None if coefficient == 1 and monomial else ir.Constant(I64, coefficient)
        for name in monomial:
            term = symbols[name] if term is None else b.mul(term, symbols[name])
        total = term if total is None else b.add(total, term)
    return total


def _blocks_value(b: ir.IRBuilder, symbols: dict[str, ir.Value], size: Blocks) -> ir.Value:
    """`Blocks.evaluate` in i64 arithmetic (every value non-negative)."""
    def const(v: int) -> ir.Constant:
        return ir.Constant(I64, v)

    def ceil(top: ir.Value, divisor: ir.Value | int) -> ir.Value:
        d = const(divisor) if isinstance(divisor, int) else divisor
        return b.udiv(b.sub(b.add(top, d), const(1)), d)

    def most(x: ir.Value, y: ir.Value) -> ir.Value:
        return b.select(b.icmp_signed(">", x, y), x, y)

    tiles = ceil(size_value(b, symbols, size.size), size.tile)
    wanted = b.udiv(tiles, const(size.least))
    wanted = b.select(b.icmp_signed("<", wanted, const(size.want)), wanted, const(size.want))
    blocks = most(ceil(tiles, size.most), wanted)
    fixed = ceil(tiles, size.fixed)
    blocks = most(b.select(b.icmp_signed("<", blocks, fixed), blocks, fixed), const(1))
    block = most(ceil(tiles, blocks), const(1))
    if size.per_block:
        return block
    count = ceil(tiles, block)
    if isinstance(size.times, int) and size.times == 1:
        return count
    return b.mul(count, size_value(b, symbols, size.times))
