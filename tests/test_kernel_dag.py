"""Kernel expressions are DAGs: printing, hashing and walking them costs their number of
distinct nodes, not the size of the tree they unfold to (`x ** n` unrolled by squaring)."""
import pickle

from neurenix.compiler.kernel.ir import Binary, BufferArg, Kernel, Load, Store, Var, format_kernel
from neurenix.compiler.kernel.memory import inplace_candidates
from neurenix.compiler.types import int64


def _squarings(n: int):
    x = Load("x", Var(0), int64)
    for _ in range(n):
        x = Binary("mul", x, x)  # a tree of 2 ** n loads, n + 1 distinct nodes
    return x


def _kernel(n: int) -> Kernel:
    return Kernel("k", (BufferArg("x", int64, 4),), (BufferArg("y", int64, 4),), (4,),
                  (Store("y", Var(0), _squarings(n)),))


def test_shared_subexpressions_print_once():
    text = format_kernel(_kernel(3))
    assert "e0 = (x[i0] * x[i0])" in text
    assert "e1 = (e0 * e0)" in text
    assert "y[i0] = (e1 * e1)" in text


def test_a_deep_dag_hashes_prints_and_plans_quickly():
    kernel = _kernel(200)  # 2 ** 200 loads as a tree
    assert hash(kernel.stores[0].value) == hash(_squarings(200))
    assert format_kernel(kernel).count("\n") < 220
    assert inplace_candidates(kernel) == [("y", "x")]


def test_the_cached_hash_is_not_pickled():
    e = _squarings(2)
    hash(e)
    copy = pickle.loads(pickle.dumps(e))
    assert "_hash" not in copy.__dict__ and copy == e and hash(copy) == hash(e)


def test_rebuild_keeps_sharing_and_untouched_subtrees():
    """`rebuild` visits a shared node once and the result shares its replacement; a subtree
    the visitor left alone comes back as the same object."""
    from neurenix.compiler.kernel.ir import Binary, Const, Load, Var, rebuild
    from neurenix.compiler.types import float32, int64

    shared = Load("x", Var(0), float32)
    other = Binary("mul", Load("y", Var(0), float32), Const(2.0, float32))
    expr = Binary("add", Binary("mul", shared, shared), other)
    visits = []

    def visit(n):
        visits.append(n)
        return Load("z", n.index, n.dtype) if isinstance(n, Load) and n.buffer == "x" else n

    out = rebuild(expr, visit)
    assert out.a.a is out.a.b and out.a.a.buffer == "z"
    assert out.b is other
    assert sum(1 for n in visits if isinstance(n, Load) and n.buffer == "x") == 1
    assert rebuild(Const(3, int64), lambda n: n) == Const(3, int64)
