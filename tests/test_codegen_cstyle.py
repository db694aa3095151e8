"""The C-family GPU renderer (compiler/codegen/cstyle.py) through its OpenCL dialect, against
the kernel evaluator and the graph reference, run on the first OpenCL device (PoCL in CI)
by a minimal pyopencl launcher written here (the runtime module is separate).

Tolerances: float32 results agree with the evaluator within 2e-6 relative (OpenCL's exp, log,
tanh, erf, pow are within a few ulp; division and sqrt are correctly rounded by the build
options); reductions summed in another order (a work-group tree, GEMM inner products) within
1e-5 relative and 1e-5 absolute (2e-4 for 784-term products); integers, bools and the random
numbers exactly.  Kernels are grouped into few programs: PoCL compiles each kernel on first
launch (about 0.1 s each, cold).
"""
from __future__ import annotations

import math
import zlib
from dataclasses import replace

import numpy as np
import pytest
from kernel_helpers import merge, schedule
from neurenix.compiler import GraphBuilder, evaluate
from neurenix.compiler.codegen.cstyle import GridCodegenError
from neurenix.compiler.kernel.decompose import decompose
from neurenix.compiler.kernel.eval import run_schedule
from neurenix.compiler.kernel.index_bits import choose_index_bits
from neurenix.compiler.kernel.ir import (
    Acc,
    Binary,
    BufferArg,
    Cast,
    Const,
    Kernel,
    KernelGraph,
    Load,
    Store,
    Unary,
    Var,
)
from neurenix.compiler.kernel.memory import plan_memory
from neurenix.compiler.kernel.ops import BINARY_OPS, UNARY_OPS
from neurenix.compiler.lowering.lower import lower
from neurenix.compiler.schedule.grid import (
    GRID_RULES,
    GridLoop,
    GroupReduction,
    launch,
)
from neurenix.compiler.schedule.rules import schedule_kernel, schedule_kernels, target_rules
from neurenix.compiler.targets import (
    Capabilities,
    Target,
    get_target,
    register_target,
    unregister_target,
)
from neurenix.compiler.types import KERNEL_DTYPES, bool_, float32, float64, int32, int64, uint32
from test_lower import (
    CASES,
    T,
    conv_graph,
    data_for,
    layer_norm,
    lstm_cell_graph,
    maxpool_graph,
    mlp_graph,
    one_node_graph,
    softmax,
)

N = 67
F32_RTOL = 2e-6
SUM_TOL = 1e-5


# ---- building programs --------------------------------------------------------------------


def gpu_program(kernels: KernelGraph, target: str):
    """The stages after lowering (pipeline.codegen_stages) for `target`."""
    t = get_target(target)
    caps = t.capabilities
    k = decompose(kernels, caps.native_ops)
    k = choose_index_bits(k, caps.index_bits, caps.preferred_index_bits)
    k = schedule_kernels(k, caps, target_rules(t))
    return t.generate()(k, plan_memory(k, caps.alignment, caps.bool_bytes), t)


def sample(d, rng, narrow: bool = False) -> np.ndarray:
    """Edge values then random ones (`narrow`: int64 values that fit 32 bits)."""
    if d.is_floating:
        special = [0.0, -0.0, 1.0, -1.0, 0.5, 3.0, np.inf, -np.inf, np.nan, 1e30, -7.25]
        rest = rng.standard_normal(N) * 4
    elif d == bool_:
        special, rest = [True, False], rng.integers(0, 2, N)
    else:
        info = np.iinfo(np.int32 if narrow and d == int64 else d.np_type)
        special = [0, 1, 2, 7, 31, 32, 33, 63, 64, info.max, info.min, info.max - 1]
        if d.is_signed:
            special += [-1, -2, -31, -32, -33, info.min + 1]
        rest = rng.integers(info.min, int(info.max) + 1, N,
                            dtype=np.int64 if d != uint32 else np.uint64)
    return np.array((special + list(rest))[:N]).astype(d.np_type)


OPS_PER_KERNEL = 24


def op_graph(dtypes, skip=lambda op, d: False, narrow: bool = False):
    """Every (op, dtype) of the op table over `dtypes` and every cast between them, as one
    kernel per operand dtype with a store per op (few kernels: fast to build)."""
    rng = np.random.default_rng(1)
    data = {f"x_{d.short}": sample(d, rng, narrow) for d in dtypes}
    data.update({f"y_{d.short}": np.roll(sample(d, rng, narrow), 3) for d in dtypes})
    kernels = []
    for d in dtypes:
        x, y = Load(f"x_{d.short}", Var(0), d), Load(f"y_{d.short}", Var(0), d)
        stores = []
        for spec in list(UNARY_OPS.values()) + list(BINARY_OPS.values()):
            if d in spec.dtypes and not skip(spec.name, d):
                e = Unary(spec.name, x) if spec.arity == 1 else Binary(spec.name, x, y)
                stores.append((f"op_{spec.name}_{d.short}", spec.result(d), e))
        for dst in dtypes:
            if dst != d and not skip("cast", (d, dst)):
                stores.append((f"cast_{d.short}_{dst.short}", dst, Cast(dst, x)))
        ins = (BufferArg(x.buffer, d, N), BufferArg(y.buffer, d, N))
        # at most OPS_PER_KERNEL stores per kernel: WebGPU binds 32 buffers per kernel
        for part in range(0, len(stores), OPS_PER_KERNEL):
            group = stores[part:part + OPS_PER_KERNEL]
            outs = tuple(BufferArg(n, dt, N) for n, dt, _ in group)
            suffix = f"_{part // OPS_PER_KERNEL}" if part else ""
            kernels.append(Kernel(f"ops_{d.short}{suffix}", ins, outs, (N,),
                                  tuple(Store(n, Var(0), e) for n, _, e in group)))
    outputs = {o.name: ((N,), o.dtype) for k in kernels for o in k.outputs}
    return schedule(kernels, data, outputs), data


def compare(names, got, want, rtol=F32_RTOL, atol=1e-30) -> None:
    for name, g, w in zip(names, got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, name
        if g.dtype.kind == "f":
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol, equal_nan=True, err_msg=name)
        else:
            np.testing.assert_array_equal(g, w, err_msg=name)


def conv_unfold_graph(n, c, h, w, o, k=3):
    """A padded convolution as unfold + matmul (as the frontend writes it), with a bias."""
    b = GraphBuilder("conv")
    x = b.pad(b.input("x", T(n, c, h, w)), lo=(0, 0, 1, 1), hi=(0, 0, 1, 1),
              interior=(0, 0, 0, 0), value=0.0)
    wt = b.input("conv.weight", T(o, c, k, k), "param")
    bias = b.input("conv.bias", T(o), "param")
    cols = b.unfold(x, kernel=(k, k), stride=(1, 1), dilation=(1, 1))
    wins = cols.type.shape[4:]
    cols = b.reshape(cols, shape=(n, c * k * k, wins[0] * wins[1]))
    wm = b.expand(b.reshape(wt, shape=(1, o, c * k * k)), shape=(n, o, c * k * k))
    out = b.reshape(b.matmul(wm, cols), shape=(n, o) + wins)
    return b.build([b.add(out, b.expand(b.reshape(bias, shape=(1, o, 1, 1)),
                                        shape=out.type.shape))])


CORE = ("argmax", "argmin", "concat", "fold", "gather", "scatter_add", "pad", "unfold",
        "rng_uniform", "matmul")
"""Primitives whose every lowering case the graph tests run (masked loads, scatters, the
RNG, argmax ties); `EXTRA` ones only where kernels build fast (WebGPU)."""
EXTRA = ("reduce_sum", "reduce_max", "reduce_min", "reduce_prod", "floordiv", "remainder",
         "slice", "iota", "cast")


def structural_graphs(primitives=CORE + EXTRA):
    """Graphs exercising the renderer's structure: every reduction kind, argmax ties and NaN,
    masked loads (pad, concat, gather, fold, unfold), scatter-add, the RNG, int floor
    division, GEMMs with epilogues (tiled), softmax rows and full sums (work-group
    reductions), layer norm, convolution, pooling, LSTM."""
    graphs = {}
    for name in primitives:
        for k, make in enumerate(CASES[name]):
            rng = np.random.default_rng(zlib.crc32(name.encode()) + k)
            inputs, attrs = make(rng)
            graphs[f"{name}-{k}"] = (one_node_graph(name, inputs, attrs), inputs)
    composites = {"mlp": mlp_graph(), "conv_pad": conv_graph(True), "maxpool": maxpool_graph(),
                  "lstm_cell": lstm_cell_graph()}
    b = GraphBuilder()
    x = b.input("x", T(5, 1000))
    composites["softmax_rows"] = b.build([softmax(b, x, -1)])
    b = GraphBuilder()
    x, w = b.input("x", T(70, 300)), b.input("w", T(96, 300), "param")
    composites["matmul_tiled"] = b.build([b.matmul(x, b.permute(w, perm=(1, 0)))])
    b = GraphBuilder()
    x, y = b.input("x", T(2, 33, 40)), b.input("y", T(2, 40, 17))
    composites["matmul_batched_tiled"] = b.build([b.matmul(x, y)])
    composites["conv_tiled"] = conv_unfold_graph(n=2, c=4, h=12, w=12, o=24)
    b = GraphBuilder()
    x = b.input("x", T(3000))
    composites["full_sum"] = b.build([b.apply("reduce_sum", x, axes=(0,))])
    b = GraphBuilder()
    x = b.input("x", T(2, 3, 40))
    w = b.input("ln.weight", T(40), "param")
    bias = b.input("ln.bias", T(40), "param")
    composites["layer_norm"] = b.build([layer_norm(b, x, w, bias)])
    for i, (name, g) in enumerate(composites.items()):
        graphs[name] = (g, data_for(g, np.random.default_rng(i)))
    rows = np.random.default_rng(7).standard_normal((5, 1000)).astype(np.float32)
    rows[1] = 2.0  # every step ties: the first index
    rows[2, [300, 800]] = np.nan  # the first NaN
    rows[3, [700, 300]] = 9.0  # the first of two extremes
    rows[4, [10, 900]] = -np.inf
    for op in ("argmax", "argmin"):  # a work-group per row, partials combined in a tree
        b = GraphBuilder()
        x = b.input("x", T(5, 1000))
        graphs[f"{op}_rows"] = (b.build([b.apply(op, x, axis=1)]), [rows])
    ints = np.random.default_rng(8).integers(-1000, 1000, (3, 700)).astype(np.int32)
    for op in ("reduce_sum", "reduce_max", "reduce_prod"):
        b = GraphBuilder()
        x = b.input("x", T(3, 700, dtype=int32))
        graphs[f"{op}_int_rows"] = (b.build([b.apply(op, x, axes=(1,))]), [ints])
    return graphs


def graph_results(target: str, run, graphs) -> dict:
    """Every graph lowered for `target`, merged into one program, run once: per graph
    (got, want) against the reference evaluator."""
    caps = get_target(target).capabilities
    schedules = [lower(g, caps=caps) for g, _ in graphs.values()]
    program = gpu_program(merge(schedules), target)
    outputs = iter(run(program, [x for _, inputs in graphs.values() for x in inputs]))
    results = {}
    for (name, (g, inputs)), s in zip(graphs.items(), schedules):
        results[name] = ([next(outputs) for _ in s.outputs], evaluate(g, inputs))
    return results


def check_graph(name, got, want) -> None:
    loose = name.startswith(("matmul", "mlp", "conv", "lstm", "softmax", "full_sum",
                             "layer_norm", "reduce_sum", "fold"))
    # a 3000-term sum in a tree, 300-term products in another order than NumPy's
    tol = SUM_TOL * {"full_sum": 20, "matmul_tiled": 10}.get(name, 1)
    for i, (g, w) in enumerate(zip(got, want)):
        assert g.shape == w.shape and g.dtype == w.dtype, f"{name} output {i}"
        if w.dtype.kind == "f":
            rtol = tol if loose else F32_RTOL
            np.testing.assert_allclose(g, w, rtol=rtol, atol=tol if loose else 1e-30,
                                       equal_nan=True, err_msg=f"{name} output {i}")
        else:
            np.testing.assert_array_equal(g, w, err_msg=f"{name} output {i}")


# ---- a minimal OpenCL launcher ------------------------------------------------------------


def _opencl_context():
    try:
        import pyopencl as cl
        for platform in cl.get_platforms():
            if platform.get_devices():
                return cl.Context([platform.get_devices()[0]])
    except Exception:
        return None
    return None


@pytest.fixture(scope="module")
def run_opencl():
    """Runs a Program on the first OpenCL device: inputs, outputs and constants in their
    own buffers, temporaries as sub-buffers of one arena, kernels in order."""
    ctx = _opencl_context()
    if ctx is None:
        pytest.skip("no OpenCL device")
    import pyopencl as cl
    mf = cl.mem_flags

    def run(program, inputs):
        queue = cl.CommandQueue(ctx)
        built = cl.Program(ctx, program.source).build(
            options=program.metadata["build_options"])

        def upload(array):
            array = np.ascontiguousarray(array)
            if not array.nbytes:
                return cl.Buffer(ctx, mf.READ_WRITE, 4)
            return cl.Buffer(ctx, mf.READ_WRITE | mf.COPY_HOST_PTR, hostbuf=array)

        buffers = {s.name: upload(np.asarray(a, s.dtype))
                   for s, a in zip(program.inputs, inputs)}
        buffers.update({n: upload(a) for n, a in program.constants.items()})
        arena = cl.Buffer(ctx, mf.READ_WRITE, max(256, program.arena_bytes))
        for b in program.buffers:
            if b.kind == "output":
                buffers[b.name] = cl.Buffer(ctx, mf.READ_WRITE, max(4, b.nbytes))
            elif b.kind == "temp":
                buffers[b.name] = arena.get_sub_region(b.offset, b.nbytes) if b.nbytes \
                    else arena
        for k in program.kernels:
            if 0 in k.grid:
                continue
            kernel = getattr(built, k.name)
            kernel.set_args(*[buffers[a] for a in k.args])
            size = tuple(g * b for g, b in zip(k.grid, k.block))
            cl.enqueue_nd_range_kernel(queue, kernel, size, k.block)
        outputs = []
        for o in program.outputs:
            out = np.empty(o.shape, o.dtype)
            if out.nbytes:
                cl.enqueue_copy(queue, out, buffers[o.name])
            outputs.append(out)
        queue.finish()
        return outputs

    return run


# ---- every op and cast --------------------------------------------------------------------


def test_every_op_dtype_and_cast_matches_the_evaluator(run_opencl):
    caps = get_target("opencl").capabilities
    dtypes = [d for d in KERNEL_DTYPES if caps.float64 or d != float64]
    s, data = op_graph(dtypes)
    inputs = [data[n] for n in s.inputs]
    program = gpu_program(s, "opencl")
    assert len(program.kernels) == len(s.kernels)
    with np.errstate(all="ignore"):
        want = run_schedule(s, inputs)
    compare(s.outputs, run_opencl(program, inputs), want)


# ---- graphs -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graphs_opencl(run_opencl):
    return graph_results("opencl", run_opencl, structural_graphs(CORE))


@pytest.mark.parametrize("name", list(structural_graphs(CORE)))
def test_graphs_match_the_reference(graphs_opencl, name):
    check_graph(name, *graphs_opencl[name])


# ---- schedules and launch geometry --------------------------------------------------------


def _kernel(domain, reduce=(), parallel=True, accumulate=False, op="sum"):
    size = math.prod(domain) * math.prod(reduce)
    x = BufferArg("x", float32, max(size, 1))
    out = BufferArg("out", float32, max(math.prod(domain), 1))
    value = Load("x", Const(0, int64), float32)
    if reduce:
        return Kernel("k", (x,), (out,), domain, (Store("out", Const(0, int64), Acc()),),
                      reduce=reduce, reduce_op=op, reduce_value=value)
    return Kernel("k", (x,), (out,), domain, (Store("out", Const(0, int64), value,
                                                    accumulate=accumulate),),
                  parallel=parallel)


def test_grid_rules_choose_a_schedule_for_every_kernel():
    caps = get_target("webgpu").capabilities
    assert isinstance(schedule_kernel(_kernel((1000,)), caps, GRID_RULES), GridLoop)
    serial = schedule_kernel(_kernel((1000,), parallel=False, accumulate=True), caps,
                             GRID_RULES)
    assert serial.serial and serial.grid == (1,) and serial.block == (1,)
    group = schedule_kernel(_kernel((5,), (1000,)), caps, GRID_RULES)
    assert isinstance(group, GroupReduction) and group.grid == (5,)
    short = schedule_kernel(_kernel((5000,), (8,)), caps, GRID_RULES)
    assert isinstance(short, GridLoop)
    assert str(group).startswith("group reduction: 1000 steps per point")
    assert "grid 5 of 256" in str(group)


def test_launch_stays_within_max_grid():
    assert launch(0, 256, 65535) == ((0,), (256,))
    assert launch(100, 64, 65535) == ((100,), (64,))
    grid, block = launch(70000, 256, 65535)
    assert grid == (65535, 2) and block == (256, 1)
    grid, _ = launch(10 ** 12, 256, 65535)
    assert all(g <= 65535 for g in grid)


def test_a_small_max_grid_takes_a_2d_grid_and_a_stride_loop(run_opencl):
    """A target whose grid is at most 3 work-groups per dimension: a 2-D grid and the
    grid-stride loop cover 5000 points."""
    base = get_target("opencl").capabilities
    caps = Capabilities(**{**base.__dict__, "max_grid": 3, "max_workgroup_size": 32})
    target = register_target(Target("opencl-small-grid", "opencl", lambda: caps,
                                    "neurenix.compiler.codegen.opencl:generate", None,
                                    rules="neurenix.compiler.schedule.grid:GRID_RULES"),
                             replace=True)
    try:
        b = GraphBuilder()
        x = b.input("x", T(50, 100))
        g = b.build([b.apply("exp", x), b.apply("reduce_sum", x, axes=(1,))])
        data = data_for(g, np.random.default_rng(0))
        program = gpu_program(lower(g, caps=caps), target.name)
        assert all(max(k.grid) <= 3 for k in program.kernels)
        assert any(len(k.grid) == 2 for k in program.kernels)
        for got, want in zip(run_opencl(program, data), evaluate(g, data)):
            np.testing.assert_allclose(got, want, rtol=SUM_TOL, atol=SUM_TOL)
    finally:
        unregister_target(target.name)


def test_program_follows_the_gpu_contract():
    b = GraphBuilder()
    x = b.input("x", T(4, 6))
    y = b.input("y", T(4, 6, dtype=float64))
    g = b.build([b.apply("gt", x, b.apply("exp", x)), b.apply("reduce_sum", y, axes=(1,))])
    program = gpu_program(lower(g), "opencl")
    assert program.target == "opencl" and program.entry == "kernels"
    assert program.metadata["build_options"] == "-cl-fp32-correctly-rounded-divide-sqrt"
    assert program.source.startswith("#pragma OPENCL EXTENSION cl_khr_fp64 : enable")
    assert "__global uchar*" in program.source  # bool buffers are bytes
    for k in program.kernels:
        assert f"void {k.name}(" in k.source and k.source in program.source
        assert k.source.startswith("// schedule: ")
        assert len(k.grid) == len(k.block)


def test_too_many_buffers_is_refused_naming_the_limit():
    base = get_target("opencl").capabilities
    caps = Capabilities(**{**base.__dict__, "max_kernel_buffers": 2})
    target = register_target(Target("opencl-two-buffers", "opencl", lambda: caps,
                                    "neurenix.compiler.codegen.opencl:generate", None,
                                    rules="neurenix.compiler.schedule.grid:GRID_RULES"),
                             replace=True)
    try:
        b = GraphBuilder()
        x, y = b.input("x", T(4)), b.input("y", T(4))
        g = b.build([b.apply("add", x, y)])
        with pytest.raises(GridCodegenError, match="binds 3 buffers, more than the limit of 2"):
            gpu_program(lower(g), target.name)
    finally:
        unregister_target(target.name)


def test_every_op_renders_or_decomposes_on_opencl():
    """Source generation alone (no device): every (op, dtype) of the table."""
    s, _ = op_graph(list(KERNEL_DTYPES))
    program = gpu_program(s, "opencl")
    for d in KERNEL_DTYPES:
        assert f"void ops_{d.short}(" in program.source



@pytest.mark.parametrize("target", ["opencl", "webgpu"])
def test_contractions_are_tiled_and_long_reductions_take_work_groups(target):
    graphs = structural_graphs()
    caps = get_target(target).capabilities
    expect = {"matmul_tiled": "tiled contraction", "matmul_batched_tiled": "tiled contraction",
              "conv_tiled": "tiled contraction", "softmax_rows": "group reduction",
              "full_sum": "group reduction", "argmax_rows": "group reduction",
              "mlp": "grid loop", "scatter_add-0": "grid loop: one work-item"}
    for name, path in expect.items():
        program = gpu_program(lower(graphs[name][0], caps=caps), target)
        schedules = list(program.metadata["schedules"].values())
        assert any(s.startswith(path) for s in schedules), (name, schedules)
        for k in program.kernels:
            assert k.source.startswith(f"// schedule: {program.metadata['schedules'][k.name]}")
        if target == "webgpu" and not path.startswith("grid loop"):  # local memory used
            assert program.metadata["required_limits"]["max_compute_workgroup_storage_size"]


@pytest.mark.parametrize("target", ["opencl", "webgpu"])
def test_an_empty_domain_launches_nothing(target):
    x, out = BufferArg("x", float32, 0), BufferArg("out", float32, 0)
    kernel = Kernel("empty", (x,), (out,), (0, 3),
                    (Store("out", Var(0), Load("x", Var(0), float32)),))
    s = schedule([kernel], {"x": np.zeros(0, np.float32)}, {"out": ((0, 3), float32)})
    (info,) = gpu_program(s, target).kernels
    assert info.grid == (0,) and len(info.block) == 1


def inplace_chain():
    """x -> t0 = exp(x) -> t1 = floor-cast of t0 in t0's storage (another dtype) -> t2 =
    t1 * 3 in place again -> out: temporaries the memory plan reuses in place."""
    n = 40
    x = Load("x", Var(0), float32)
    t0 = Load("t0", Var(0), float32)
    t1 = Load("t1", Var(0), int32)
    t2 = Load("t2", Var(0), int32)
    kernels = [
        Kernel("k0", (BufferArg("x", float32, n),), (BufferArg("t0", float32, n),), (n,),
               (Store("t0", Var(0), Unary("exp", x)),)),
        Kernel("k1", (BufferArg("t0", float32, n),), (BufferArg("t1", int32, n),), (n,),
               (Store("t1", Var(0), Cast(int32, Binary("mul", t0, Const(8.0, float32)))),)),
        Kernel("k2", (BufferArg("t1", int32, n),), (BufferArg("t2", int32, n),), (n,),
               (Store("t2", Var(0), Binary("mul", t1, Const(3, int32))),)),
        Kernel("k3", (BufferArg("t2", int32, n),), (BufferArg("out", int32, n),), (n,),
               (Store("out", Var(0), Binary("add", t2, Const(1, int32))),)),
    ]
    data = {"x": np.linspace(-2, 2, n).astype(np.float32)}
    return schedule(kernels, data, {"out": ((n,), int32)}), data


def test_buffers_sharing_storage_are_one_parameter(run_opencl):
    s, data = inplace_chain()
    program = gpu_program(s, "opencl")
    assert [k.args for k in program.kernels[1:3]] == [("t0",), ("t1",)]
    assert "as_float(" in program.kernels[1].source  # an int stored in float storage
    np.testing.assert_array_equal(run_opencl(program, [data["x"]])[0],
                                  run_schedule(s, [data["x"]])[0])


def test_float64_is_refused_where_the_device_lacks_it():
    caps = Capabilities(**{**get_target("opencl").capabilities.__dict__, "float64": False})
    target = register_target(Target("opencl-no-fp64", "opencl", lambda: caps,
                                    "neurenix.compiler.codegen.opencl:generate", None,
                                    rules="neurenix.compiler.schedule.grid:GRID_RULES"),
                             replace=True)
    try:
        b = GraphBuilder()
        g = b.build([b.exp(b.input("x", T(4, dtype=float64)))])
        with pytest.raises(ValueError, match="^opencl: float64 is not supported by this "
                                             "device"):
            gpu_program(lower(g, caps=caps), target.name)
    finally:
        unregister_target(target.name)


def test_64_bit_index_arithmetic_runs_the_same(run_opencl):
    """Kernels whose index arithmetic is 64-bit (spans the 32-bit choice cannot bound)."""
    s, data = op_graph([float32, int64])
    wide = s.with_kernels([replace(k, index_bits=64) for k in s.kernels])
    t = get_target("opencl")
    caps = t.capabilities
    k = schedule_kernels(decompose(wide, caps.native_ops), caps, target_rules(t))
    program = t.generate()(k, plan_memory(k, caps.alignment, caps.bool_bytes), t)
    assert all("for (long p" in info.source for info in program.kernels)
    inputs = [data[n] for n in s.inputs]
    with np.errstate(all="ignore"):
        want = run_schedule(s, inputs)
    compare(s.outputs, run_opencl(program, inputs), want)
