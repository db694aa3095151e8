"""The kernel-IR verifier (compiler/kernel/verify.py): silent on everything lowering makes,
and a precise message for each rule a hand-broken kernel breaks."""
from __future__ import annotations

import zlib
from dataclasses import replace

import numpy as np
import pytest
from neurenix.compiler import GraphBuilder
from neurenix.compiler.kernel.decompose import decompose
from neurenix.compiler.kernel.index_bits import choose_index_bits
from neurenix.compiler.kernel.ir import (
    Acc,
    Binary,
    BufferArg,
    Const,
    Kernel,
    KernelGraph,
    Load,
    RandomUniform,
    Store,
    Unary,
    Var,
    Where,
)
from neurenix.compiler.kernel.ops import OP_NAMES
from neurenix.compiler.kernel.verify import KernelIRError, verify_kernels
from neurenix.compiler.lowering.lower import lower
from neurenix.compiler.types import bool_, float32, int32, int64
from test_lower import (
    CASES,
    FLAT,
    T,
    conv_graph,
    gelu,
    layer_norm,
    log_softmax,
    lstm_cell_graph,
    maxpool_graph,
    mlp_graph,
    one_node_graph,
    softmax,
)


def composite_graphs():
    out = {"mlp": mlp_graph(), "conv": conv_graph(False), "conv_pad": conv_graph(True),
           "grouped_conv": conv_graph(True, groups=2), "maxpool": maxpool_graph(),
           "lstm_cell": lstm_cell_graph()}
    for name, fn in (("softmax", softmax), ("log_softmax", log_softmax)):
        b = GraphBuilder(name)
        out[name] = b.build([fn(b, b.input("x", T(5, 7)), 0)])
    b = GraphBuilder("layer_norm")
    x = b.input("x", T(2, 3, 8))
    out["layer_norm"] = b.build([layer_norm(b, x, b.input("w", T(8)), b.input("b", T(8)))])
    for approximate in ("none", "tanh"):
        b = GraphBuilder("gelu")
        out[f"gelu_{approximate}"] = b.build([gelu(b, b.input("x", T(4, 9)), approximate)])
    return out


def _everything_lowered(kernels: KernelGraph) -> None:
    verify_kernels(kernels)
    verify_kernels(decompose(kernels, OP_NAMES - {"sigmoid"}))  # and rng_uniform
    verify_kernels(choose_index_bits(kernels, (32, 64), 32))


@pytest.mark.parametrize("fuse", [False, True], ids=["unfused", "fused"])
def test_every_primitive_lowers_to_verified_kernels(fuse):
    for name, case in FLAT:
        rng = np.random.default_rng(zlib.crc32(name.encode()) + case)
        inputs, attrs = CASES[name][case](rng)
        _everything_lowered(lower(one_node_graph(name, inputs, attrs), fuse=fuse))


@pytest.mark.parametrize("fuse", [False, True], ids=["unfused", "fused"])
def test_composite_graphs_lower_to_verified_kernels(fuse):
    for graph in composite_graphs().values():
        _everything_lowered(lower(graph, fuse=fuse))


# ---- one hand-broken kernel per rule --------------------------------------------------------

X = BufferArg("x", float32, 12)
Y = BufferArg("y", float32, 12)
S = BufferArg("s", float32, 3)
ROW = Binary("add", Binary("mul", Var(0), Const(4, int64)), Var(1))  # i0 * 4 + i1
LX = Load("x", ROW, float32)
ONE = Const(1.0, float32)


def good() -> KernelGraph:
    ew = Kernel("k0_add", (X,), (Y,), (3, 4), (Store("y", ROW, Binary("add", LX, ONE)),))
    red = Kernel("k1_sum", (X,), (S,), (3,), (Store("s", Var(0), Acc()),), reduce=(4,),
                 reduce_op="sum", reduce_value=LX)
    return KernelGraph([ew, red], {"x": X, "y": Y, "s": S}, ["x"], ["y", "s"],
                       {"x": (3, 4), "y": (3, 4), "s": (3,)})


def _forced(cls, **fields):
    """An expression built past its constructor's check (as a buggy rewrite might)."""
    e = object.__new__(cls)
    for k, v in fields.items():
        object.__setattr__(e, k, v)
    return e


def with_value(value, kernel: int = 0, index=ROW) -> KernelGraph:
    g = good()
    k = g.kernels[kernel]
    g.kernels[kernel] = replace(k, stores=(replace(k.stores[0], value=value, index=index),))
    return g


def with_kernel(**changes) -> KernelGraph:
    g = good()
    g.kernels[0] = replace(g.kernels[0], **changes)
    return g


def with_reduction(**changes) -> KernelGraph:
    g = good()
    g.kernels[1] = replace(g.kernels[1], **changes)
    return g


BROKEN = {
    "unknown op": (with_value(_forced(Unary, op="bogus", x=LX)),
                   r"kernel k0_add: 'bogus' is not a unary kernel op in the store to y"),
    "arity": (with_value(_forced(Unary, op="add", x=LX)), r"'add' is not a unary kernel op"),
    "operand dtypes": (with_value(Binary("add", LX, Const(1, int64))),
                       r"k0_add: add: operands of different dtypes float32, int64"),
    "dtype refused": (with_value(Binary("xor", LX, LX)),
                      r"k0_add: xor: does not accept float32"),
    "where branches": (with_value(Where(Const(True, bool_), LX, Const(1, int32))),
                       r"k0_add: a select's branches are float32 and int32"),
    "where condition": (with_value(Where(LX, LX, LX)),
                        r"k0_add: a select's condition is float32, not bool"),
    "store dtype": (with_value(Binary("lt", LX, ONE)),
                    r"k0_add: the store to y writes bool into a buffer of float32"),
    "store index": (with_value(LX, index=ONE),
                    r"k0_add: the index of the store to y is float32, not an integer"),
    "load index": (with_value(Load("x", ONE, float32)),
                   r"k0_add: the index of a load of x is float32, not an integer"),
    "load mask": (with_value(Load("x", ROW, float32, Const(1, int64))),
                  r"k0_add: the mask of a load of x is int64, not bool"),
    "load dtype": (with_value(Load("x", ROW, int32)),
                   r"k0_add: loads x as int32; the buffer holds float32"),
    "load of a non-input": (with_value(Load("y", ROW, float32)),
                            r"k0_add: loads y in the store to y, which is not one of its inputs"),
    "store to a non-output": (with_kernel(stores=(Store("x", ROW, LX),)),
                              r"k0_add: stores to x, which is not one of its outputs"),
    "undeclared buffer": (with_kernel(inputs=(BufferArg("z", float32, 12),)),
                          r"k0_add: buffer z is not declared by the kernel graph"),
    "buffer dtype": (with_kernel(inputs=(BufferArg("x", float32, 13),)),
                     r"k0_add: buffer x is 13 x float32 here but 12 x float32 in the kernel"),
    "var axis": (with_value(Load("x", Var(2), float32)),
                 r"k0_add: Var\(2\) in the store to y, outside its 2 loop axes"),
    "reduce var in a store": (with_value(Load("x", Var(1), float32), kernel=1, index=Var(0)),
                              r"k1_sum: Var\(1\) in the store to s, outside its 1 loop axes"),
    "acc outside a reduction": (with_value(Acc()),
                                r"k0_add: Acc\(\) in the store to y, which is not a store of a"),
    "acc in the reduce value": (with_reduction(reduce_value=Binary("add", LX, Acc())),
                                r"k1_sum: Acc\(\) in the reduce_value"),
    "reduce op": (with_reduction(reduce_op="mean"),
                  r"k1_sum: reduce_op 'mean' is not one of"),
    "argmax axes": (with_reduction(reduce_op="argmax", reduce=(2, 2)),
                    r"k1_sum: argmax reduces exactly one axis, got 2"),
    "reduce without value": (with_kernel(reduce_op="sum"),
                             r"k0_add: reduce_op or reduce axes without a reduce_value"),
    "index bits": (with_kernel(index_bits=16), r"k0_add: index_bits 16 is not 32 or 64"),
    "load out of range": (with_value(Load("x", Binary("add", ROW, Const(1, int64)), float32)),
                          r"k0_add: a load in the store to y reaches x\[1..12\], outside its "
                          r"12 elements"),
    "store out of range": (with_value(LX, index=Binary("sub", ROW, Const(1, int64))),
                           r"k0_add: the store to y reaches y\[-1..10\], outside its 12"),
    "reduction load out of range": (
        with_reduction(reduce_value=Load("x", Binary("mul", Var(1), Const(4, int64)), float32)),
        r"k1_sum: a load in the reduce_value reaches x\[0..12\]"),
    "rng seed": (with_value(RandomUniform(Const(1, int32), Var(0), float32)),
                 r"k0_add: rng_uniform takes an int64 seed"),
}


@pytest.mark.parametrize("case", list(BROKEN))
def test_broken_kernel_is_named_with_its_problem(case):
    graph, message = BROKEN[case]
    with pytest.raises(KernelIRError, match=message):
        verify_kernels(graph)


def test_the_intact_kernels_pass_and_masked_loads_are_not_bounds_checked():
    verify_kernels(good())
    mask = Binary("lt", Var(1), Const(3, int64))
    shifted = Load("x", Binary("add", ROW, Const(1, int64)), float32, mask)
    verify_kernels(with_value(shifted))


@pytest.mark.parametrize("role, field", [("input", "inputs"), ("output", "outputs")])
def test_undeclared_graph_buffers(role, field):
    g = good()
    getattr(g, field).append("nowhere")
    with pytest.raises(KernelIRError, match=f"kernel graph: {role} 'nowhere' is not a declared"):
        verify_kernels(g)
    g = good()
    g.constants["w"] = np.zeros(2)
    with pytest.raises(KernelIRError, match="constant 'w' is not a declared buffer"):
        verify_kernels(g)
