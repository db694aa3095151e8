"""Issue 13: a tiled contraction over dynamic rows cuts its rows per call as the static rules
cut that many static rows, so that a shape-polymorphic program hands the thread pool the same
parts (range points, row blocks of the same length) as the static program at that size.

With fixed row blocks sized as for 1024 rows (before), an LSTM's gate GEMMs at batch 100 ran in
28 blocks of 54 rows (84 range points) where the static program runs 21 blocks of 72 (63), and
its recurrent GEMMs in blocks of 66 + 34 rows where the static one has 54 + 46."""
from __future__ import annotations

from dataclasses import replace

import pytest
from neurenix.compiler.kernel.specialize import specialize_graph
from neurenix.compiler.schedule import Choice, Contraction, schedule_kernel
from neurenix.compiler.schedule.sizes import Blocks
from neurenix.compiler.symbolic import shape_env
from neurenix.compiler.targets import get_target
from neurenix.runtime import cpu as runtime_cpu
from test_dynamic_codegen import check, compile_symbolic, matmul_graph, randn

SIZES = (9, 17, 48, 97, 100, 200, 513, 1500, 3001)


def _large(plan):
    """The variant of a `Choice` chain that runs for many rows."""
    while isinstance(plan, Choice):
        plan = plan.large
    return plan


def _schedules(kg, env, n: int) -> tuple[Contraction, Contraction]:
    """The dynamic program's schedule for many rows and the static schedule at `n` rows (for
    a 1 MiB L2, whatever the host's)."""
    caps = replace(get_target("llvm").capabilities, l2_bytes=1 << 20)
    with shape_env(env):
        dynamic = _large(schedule_kernel(kg.kernels[0], caps))
    static = _large(schedule_kernel(specialize_graph(kg, {"n": n}).kernels[0], caps))
    assert isinstance(dynamic, Contraction) and isinstance(static, Contraction)
    return dynamic, static


@pytest.mark.parametrize("k,m,hint", [(10, 80, 7), (20, 80, 64), (64, 96, 1000), (20, 20, 3),
                                      (784, 512, 7)])
def test_dynamic_rows_are_cut_as_the_static_program_cuts_them(k, m, hint):
    """At every size the same row blocks of the same length, so the same range points for the
    pool, as the static program compiled at that size; but never more blocks than blocks as
    for `DYNAMIC_ROWS` rows make (each packs `b` again), and those equal, not a short last
    one, and never longer than a scratch of partial sums holds."""
    kg, env = matmul_graph(k, m, hint=hint)
    same = 0
    for n in SIZES:
        dynamic, static = _schedules(kg, env, n)
        rows = dynamic.blocking.row_blocks
        assert isinstance(rows, Blocks), dynamic
        env_n = {"n": n}
        blocks, block = rows.evaluate(env_n), rows.block().evaluate(env_n)
        tiles = -(-n // dynamic.mr)
        assert dynamic.count.evaluate(env_n) == blocks * dynamic.blocking.col_tiles
        assert blocks == -(-tiles // block) and (blocks - 1) * block < tiles <= blocks * block
        assert blocks <= -(-tiles // rows.fixed), (n, dynamic)
        assert block - (-(-tiles // blocks)) == 0  # equal blocks, the last shorter
        if dynamic.blocking.scratch_bytes:
            assert block <= dynamic.blocking.block
        if static.mr != dynamic.mr:  # static rows may take a taller tile that clamps fewer
            continue
        if (static.blocking.row_blocks <= -(-tiles // rows.fixed)
                and static.blocking.block <= rows.most):
            same += 1
            assert (blocks, block) == (static.blocking.row_blocks, static.blocking.block), (
                n, dynamic, static)
            assert dynamic.count.evaluate(env_n) == static.count
    assert same >= 2


def test_lstm_gate_gemms_at_batch_100_get_the_static_parts():
    """The issue's case: x (n * 15, 10) @ w (10, 80) traced at batch 7 (105 rows) and the
    recurrent (4 gates, n, 20) x (20, 20), at batch 100: 21 blocks of 12 tiles (63 range
    points) and 2 blocks of 9 tiles (8), as the static program (was 28 x 9 and 66 + 34 rows)."""
    kg, env = matmul_graph(10, 80, hint=105)
    dynamic, static = _schedules(kg, env, 1500)
    rows = dynamic.blocking.row_blocks
    assert (rows.evaluate({"n": 1500}), rows.block().evaluate({"n": 1500})) == (21, 12)
    assert dynamic.count.evaluate({"n": 1500}) == static.count == 63
    kg, env = matmul_graph(20, 20, hint=7)
    dynamic, _ = _schedules(kg, env, 100)
    rows = dynamic.blocking.row_blocks
    assert (rows.evaluate({"n": 100}), rows.block().evaluate({"n": 100})) == (2, 9)


def test_dynamic_rows_with_partial_sums_pack_b_no_more_often():
    """784 -> 512 (several K blocks: each row block packs 784 x 512 of `b`): at 200 rows one
    row block, as before, where the static rules cut two (for 32 range points: `b`, 1.6 MB, is
    larger than L2)."""
    kg, env = matmul_graph(784, 512, hint=7)
    dynamic, static = _schedules(kg, env, 200)
    assert dynamic.blocking.row_blocks.evaluate({"n": 200}) == 1
    assert static.blocking.row_blocks == 2


def test_row_blocks_cut_per_call_compute_the_same_on_threads():
    """The program over sizes whose rows split unevenly, on the pool's threads and alone."""
    kg, env = matmul_graph(10, 80, bias=True, hint=7)
    _, exe = compile_symbolic(kg, env)
    before = runtime_cpu.num_threads()
    try:
        for threads in (2, 1):
            runtime_cpu.set_num_threads(threads)
            check(kg, exe, lambda rng, v: [randn(rng, v, 10), randn(rng, 10, 80),
                                           randn(rng, 80)],
                  (2, 9, 97, 1501, 3001), rtol=1e-4, atol=1e-4)
    finally:
        runtime_cpu.set_num_threads(before)


def test_blocks_cut():
    """`Blocks.cut`: at least `want` blocks of `least` tiles each, at most `most` tiles per
    block, no more blocks than `fixed` tiles each make, equal blocks."""
    assert Blocks.cut(17, 1092, 16, 8, 11) == (2, 9)
    assert Blocks.cut(250, 2184, 22, 8, 9) == (21, 12)
    assert Blocks.cut(250, 2184, 22, 8, 30) == (9, 28)
    assert Blocks.cut(7, 1092, 16, 8, 11) == (1, 7)
    assert Blocks.cut(1000, 100, 4, 8, 100) == (10, 100)
    assert Blocks.cut(0, 10, 4, 8, 10) == (0, 1)
    for tiles in range(1, 400):
        blocks, block = Blocks.cut(tiles, 40, 16, 8, 20)
        assert (blocks - 1) * block < tiles <= blocks * block and block <= 40
        assert blocks <= max(1, -(-tiles // 20))
