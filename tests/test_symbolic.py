"""Symbolic sizes (compiler/symbolic.py, runtime/sizes.py): arithmetic, decisions, guards."""
import math

import pytest
from neurenix.compiler.symbolic import Dim, DynamicSizeError, Guard, ShapeEnv, shape_env
from neurenix.runtime.sizes import Poly, size_from_json, size_to_json, size_value


def test_arithmetic_is_canonical_and_folds_constants():
    env = ShapeEnv()
    n = env.symbol("n", hint=8)
    assert str(n * 4096 + 64) == "64 + 4096*n"
    assert (n + 3) - n == 3 and isinstance((n + 3) - n, int)
    assert n * 2 == 2 * n  # structurally equal: no environment needed
    assert str(n * n * 3) == "3*n*n"
    assert (n * 12) // 4 == n * 3
    assert (n * 256) // n == 256
    assert (n * 12) % 4 == 0
    assert hash(n * 2) == hash(2 * n)


def test_division_by_a_polynomial_that_divides():
    """Exact division by a sum of terms (a padded image's plane, `(2 + h) * (2 + w)`), by
    long division: exact quotients only, anything else is no quotient."""
    env = ShapeEnv()
    h, w = env.symbol("h", hint=9), env.symbol("w", hint=7)
    plane = (2 + h) * (2 + w)
    assert (3 * plane) // plane == 3
    assert plane // (2 + h) == 2 + w and plane % (2 + w) == 0
    assert (h * h - 1) // (h - 1) == h + 1
    assert (h * h - w * w) // (h + w) == h - w
    for bad in (lambda: (plane + 1) // (2 + h), lambda: (h * h + 1) // (h + 1),
                lambda: (2 + h) // (4 + 2 * h)):
        with pytest.raises(DynamicSizeError):
            bad()


def test_inexact_division_and_int_use_raise():
    env = ShapeEnv()
    n = env.symbol("n", hint=8)
    for bad in (lambda: n // 3, lambda: (n + 1) % 2, lambda: int(n), lambda: range(n),
                lambda: 1.0 / n, lambda: 7 // n):
        with pytest.raises(DynamicSizeError):
            bad()


def test_comparisons_decided_by_ranges_record_no_guard():
    env = ShapeEnv()
    n = env.symbol("n", hint=8)
    with shape_env(env):
        assert n != 1 and n != 0 and n >= 2 and n > 1
        assert not (n == 1)
        assert n * 4 > n
    assert env.guards == []


def test_undecided_comparisons_follow_the_hint_and_are_guarded():
    env = ShapeEnv()
    n = env.symbol("n", hint=8)
    m = env.symbol("m", hint=8, lo=2, hi=100)
    with shape_env(env):
        assert n == m
        assert not (n > 10)
    assert [str(g) for g in env.guards] == ["-1*m + n == 0", "-10 + n <= 0"]
    assert env.check({"n": 8, "m": 8}) is None
    assert env.check({"n": 9, "m": 8}) == Guard(Poly(((("m",), -1), (("n",), 1))), "eq")
    assert env.check({"n": 300, "m": 300}) is not None  # m's range
    assert env.check({"n": 1, "m": 1}) is not None  # n >= 2


def test_comparison_outside_an_environment_raises():
    n = ShapeEnv().symbol("n", hint=4)
    with pytest.raises(DynamicSizeError, match="shape environment"):
        bool(n > 3)


def test_bounds():
    env = ShapeEnv()
    n = env.symbol("n", hint=4, lo=2, hi=10)
    m = env.symbol("m", hint=4)
    assert env.bounds(n * 3 - 1) == (5, 29)
    assert env.bounds(m * 2) == (4, math.inf)
    assert env.bounds(-m) == (-math.inf, -2)


def test_json_round_trip_and_evaluation():
    env = ShapeEnv()
    n = env.symbol("n", hint=4)
    size = n * 4096 + 64
    data = size_to_json(size)
    back = size_from_json(data)
    assert back == Poly(size.terms)
    assert size_value(back, {"n": 3}) == 3 * 4096 + 64
    assert size_value(7, {}) == 7
    assert size_from_json(5) == 5
    for bad in (True, "n", {"poly": [[["n"], 1.5]]}, {"poly": [[["1n"], 1]]}):
        with pytest.raises(ValueError):
            size_from_json(bad)


def test_symbols_are_new_identifiers_with_hints_in_range():
    env = ShapeEnv()
    env.symbol("n", hint=4)
    with pytest.raises(ValueError):
        env.symbol("n", hint=4)
    with pytest.raises(ValueError):
        env.symbol("x y", hint=4)
    with pytest.raises(ValueError, match="outside"):
        env.symbol("b", hint=1)
    assert isinstance(Dim((("k",), 1)), Poly)
