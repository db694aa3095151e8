"""Small window reductions over strided elements (max/avg pooling): contiguous masked loads.

A pooling kernel reduces a few taps (a 2 x 2 window) at each output, reading its input with a
stride s >= 2 along the last domain axis: `x[... + 2 * i3 + i5]`.  Vectorised by LLVM along
that axis, every tap becomes a gather (a slow `vgatherdps`, tail-masked when the row is 7 or
14 wide).  Here a chunk of `lanes` outputs is computed with explicit vectors instead:

    for each chunk of up to `lanes` outputs j0.. of the last domain axis:
      for each group of taps whose offsets share one block of s elements (i5 = 0 and 1):
        one masked load of s * lanes contiguous elements (only the lanes a valid output uses)
        per tap: a shuffle picking every s-th lane (deinterleave), combined into the result
      the results go to a stack strip, then the kernel's stores run over it (vectorised)

The mask covers exactly the elements the valid outputs read, so nothing outside the buffer is
touched, whatever the shapes.  Which kernels take this path, their stride, taps and chunk width
are a `Window` schedule (compiler/schedule/window.py).
"""
from __future__ import annotations

from llvmlite import ir

from ..kernel.ir import Kernel
from ..schedule.types import Window
from .llvm_loops import FunctionBuilder
from .llvm_math import I1, I32, I64, PTR, MathLib
from .llvm_ops import ExprEmitter, emit_stores, value_type
from .llvm_reduce import identity


def emit_window(fb: FunctionBuilder, lib: MathLib, kernel: Kernel, buffers: dict, vars: dict,
                m: Window) -> None:
    """Reduce and store every point of the last domain axis at the outer point `vars`."""
    b, s, lanes = fb.b, m.stride, m.lanes
    load = kernel.reduce_value
    last = len(kernel.domain) - 1
    size = kernel.domain[last]
    ftype = value_type(load.dtype)
    vec, wide = ir.VectorType(ftype, lanes), ir.VectorType(ftype, s * lanes)
    mask_type = ir.VectorType(I1, s * lanes)
    masked_load = _masked_load(fb.module, wide, mask_type)
    strip = fb.alloca(vec, align=64, name="window")
    groups: dict[int, set[int]] = {}
    for off in m.offsets:
        groups.setdefault(off - off % s, set()).add(off % s)
    chunks = -(-size // lanes)
    with fb.loop(0, chunks, "window") as c:
        j0 = b.mul(c, ir.Constant(I64, lanes))
        # one chunk: its width is a constant, so that a short row is not forced to vectorize
        valid = (ir.Constant(I64, min(size, lanes)) if chunks == 1
                 else fb.min(b.sub(ir.Constant(I64, size), j0), lanes))
        point = dict(vars)
        point[last] = j0
        for j in range(len(kernel.reduce)):
            point[last + 1 + j] = ir.Constant(I64, 0)
        em = ExprEmitter(b, lib, buffers, point)
        base = em.index(load.index)
        # output l of the chunk reads lanes s * l + residue: valid while l < valid
        outputs = ir.Constant(ir.VectorType(I64, s * lanes), [k // s for k in range(s * lanes)])
        limit = b.insert_element(ir.Constant(ir.VectorType(I64, s * lanes), None), valid,
                                 ir.Constant(I32, 0))
        limit = b.shuffle_vector(limit, ir.Constant(limit.type, None),
                                 ir.Constant(ir.VectorType(I32, s * lanes), [0] * (s * lanes)))
        in_chunk = b.icmp_signed("<", outputs, limit)
        loaded: dict[int, ir.Value] = {}
        for start, residues in groups.items():
            used = ir.Constant(mask_type, [int(k % s in residues) for k in range(s * lanes)])
            ptr = em.element_pointer(load.buffer, b.add(base, ir.Constant(I64, start)))
            loaded[start] = b.call(masked_load, [ptr, ir.Constant(I32, load.dtype.itemsize),
                                                 b.and_(in_chunk, used),
                                                 ir.Constant(wide, None)])
        acc = ir.Constant(vec, [identity(kernel.reduce_op, load.dtype).constant] * lanes)
        for off in m.offsets:
            start, residue = off - off % s, off % s
            pick = ir.Constant(ir.VectorType(I32, lanes), [residue + s * k for k in range(lanes)])
            v = b.shuffle_vector(loaded[start], ir.Constant(wide, None), pick)
            acc = _combine(b, lib, kernel.reduce_op, acc, v)
        b.store(acc, strip, align=64)
        with fb.loop(0, valid, "window_store", vectorize=True) as j:
            here = dict(vars)
            here[last] = b.add(j0, j)
            slot = b.gep(strip, [j], inbounds=True, source_etype=ftype)
            emit_stores(b, lib, kernel, buffers, here, b.load(slot, typ=ftype))


def _combine(b: ir.IRBuilder, lib: MathLib, op: str, acc: ir.Value, v: ir.Value) -> ir.Value:
    if op == "sum":
        return b.fadd(acc, v, flags=("reassoc", "nsz"))
    name = "llvm.maximum" if op == "max" else "llvm.minimum"
    return b.call(lib.intrinsic(name, v.type), [acc, v])


def _masked_load(module: ir.Module, vec: ir.VectorType, mask: ir.VectorType) -> ir.Function:
    """`llvm.masked.load` for `vec`: lanes whose mask bit is clear are not read."""
    name = f"llvm.masked.load.v{vec.count}{vec.element.intrinsic_name}.p0"
    if name in module.globals:
        return module.globals[name]
    return ir.Function(module, ir.FunctionType(vec, [PTR, I32, mask, vec]), name)
