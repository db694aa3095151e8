"""Function scaffolding for the LLVM backend: entry-block allocas and counted loops.

Loops are emitted in the canonical shape LLVM's loop passes expect (a guarded body block with
one induction phi and one latch) and may carry `llvm.loop.vectorize.enable` metadata, a
self-referential loop ID as LLVM requires.
"""
from __future__ import annotations

from contextlib import contextmanager

from llvmlite import ir

from .llvm_math import I1, I64, PTR


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
    turns them into registers), with a `loop` context manager."""

    def __init__(self, fn: ir.Function, masked_vectors: bool = True) -> None:
        self.fn = fn
        self.masked_vectors = masked_vectors
        entry = fn.append_basic_block("entry")
        body = fn.append_basic_block("start")
        self._entry = ir.IRBuilder(entry)
        self._entry.branch(body)
        self.b = ir.IRBuilder(body)

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
        vectorize = vectorize and self._vectorizable(body)
        latch.set_metadata("llvm.loop", loop_metadata(self.module, vectorize, fold_tail))
        b.position_at_end(done)

    def _vectorizable(self, body: ir.Block) -> bool:
        """Whether a loop starting at `body` may be forced to vectorize: it calls no external
        function (a C library call would make LLVM refuse, and say so on stderr), and it has
        no conditional load unless the target has masked vector loads."""
        blocks = self.fn.blocks
        loop = blocks[blocks.index(body):]
        if not self.masked_vectors and len(loop) > 2:
            return False
        for block in loop:
            for ins in block.instructions:
                if isinstance(ins, ir.CallInstr) and isinstance(ins.callee, ir.Function):
                    callee = ins.callee
                    if callee.is_declaration and not callee.name.startswith("llvm."):
                        return False
        return True

    def min(self, a: ir.Value, c: ir.Value | int) -> ir.Value:
        """Signed minimum of two i64 values."""
        c = ir.Constant(I64, c) if isinstance(c, int) else c
        return self.b.select(self.b.icmp_signed("<", a, c), a, c)
