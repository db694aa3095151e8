"""Issue 13: a kernel whose index divides its range's row by a dynamic size (a permute +
reshape over a dynamic batch: the LSTM's input (n, 15, 10) as (15 * n, 10) rows, row r
reading x[r % n, r // n]) keeps the quotient and remainder as counters stepped with the row,
not a 64-bit division (and its floor corrections) per row, which made the dynamic program's
copy 4x the static one's (a division by a constant is a multiplication)."""
from __future__ import annotations

import re

from neurenix.compiler.kernel.ir import Binary, Kernel, Load, Store, Sym, Var
from neurenix.compiler.symbolic import ShapeEnv
from neurenix.compiler.types import float32
from neurenix.runtime import cpu as runtime_cpu
from test_dynamic_codegen import add, buf, c64, check, compile_symbolic, graph, mul, randn


def _time_major(steps: int = 15, width: int = 10, hint: int = 7):
    """y[r, j] = x[r % n, r // n, j] over rows r < steps * n: x (n, steps, width) read time
    major."""
    env = ShapeEnv()
    n = env.symbol("n", hint)
    d = Sym("n")
    x, y = buf("x", (n, steps, width)), buf("y", (n * steps, width))
    row = Var(0)
    load = Load("x", add(Var(1), mul(Binary("mod", row, d), c64(steps * width)),
                         mul(Binary("idiv", row, d), c64(width))), float32)
    k = Kernel("k0", (x,), (y,), (n * steps, width),
               (Store("y", add(mul(row, c64(width)), Var(1)), load),))
    kg = graph([k], {"x": ((n, steps, width), float32)}, {"y": ((n * steps, width), float32)})
    return kg, env


def _function(source: str, name: str) -> str:
    start = source.index(f'define void @"{name}"(')
    return source[start:source.index("\n}\n", start)]


def test_row_divided_by_a_dynamic_size_is_counted_not_divided():
    kg, env = _time_major()
    program, exe = compile_symbolic(kg, env)
    body = _function(program.source, "neurenix_k0")
    # one division and remainder at the start of the part [start, end), none per row
    assert not re.search(r"\b(sdiv|srem)\b", body), body
    loop = body[body.index("outer.body:"):]
    assert not re.search(r"\b(udiv|urem) i64 %\"outer\", %\"n\"", loop), loop
    assert len(re.findall(r"\budiv\b", body[:body.index("outer.body:")])) == 1
    before = runtime_cpu.num_threads()
    try:
        for threads in (2, 1):  # parts of the range start mid-way through a row of x
            runtime_cpu.set_num_threads(threads)
            check(kg, exe, lambda rng, v: [randn(rng, v, 15, 10)],
                  (2, 3, 7, 64, 100, 997, 1500))
    finally:
        runtime_cpu.set_num_threads(before)


def test_rows_divided_by_a_product_of_sizes_and_constants():
    """A divisor 2 * n, also positive for every call, also counted: y[r] = x[(r % 2n) * 3 +
    r // 2n] over r < 6 n (a (3, 2n) -> (2n, 3) transpose, flat)."""
    env = ShapeEnv()
    n = env.symbol("n", 5)
    d = mul(c64(2), Sym("n"))
    x, y = buf("x", (n, 6, 4)), buf("y", (n * 6, 4))
    row = Var(0)
    source = add(mul(Binary("mod", row, d), c64(3)), Binary("idiv", row, d))
    k = Kernel("k0", (x,), (y,), (n * 6, 4),
               (Store("y", add(mul(row, c64(4)), Var(1)),
                      Load("x", add(mul(source, c64(4)), Var(1)), float32)),))
    kg = graph([k], {"x": ((n, 6, 4), float32)}, {"y": ((n * 6, 4), float32)})
    program, exe = compile_symbolic(kg, env)
    assert not re.search(r"\b(sdiv|srem)\b", _function(program.source, "neurenix_k0"))
    check(kg, exe, lambda rng, v: [randn(rng, v, 6, 4)], (2, 3, 7, 50, 301))
