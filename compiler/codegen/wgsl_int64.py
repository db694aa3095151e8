"""int64 in WGSL, which has no 64-bit integers: a value is a `vec2<u32>` (low word, high
word, two's complement) and every operation is a helper function here, exact and wrapping
as compiler/kernel/eval.py computes int64 (floor division and modulo that never trap, shifts
modulo 64, C's float to int64 rule, NumPy's correctly rounded int64 to float32).  A kernel's
module carries only the helpers its body calls, and what they call (`prelude`).

Bitwise and, or, xor and `select` work on `vec2<u32>` as they are; the renderer calls
`call(op, args)` for the rest.
"""
from __future__ import annotations

import re

from .wgsl_math import helper_prelude

V = "vec2<u32>"
_DIVIDE_STEP = """    {{
      let j = i - {k}i;
      let w = select(n.x, n.y, j >= 32i);
      r = vec2<u32>((r.x << 1u) | ((w >> u32(j & 31i)) & 1u), (r.y << 1u) | (r.x >> 31u));
      if (!i64_ltu(r, d)) {{
        r = i64_sub(r, d);
        if (j >= 32i) {{ q.y = q.y | (1u << u32(j - 32i)); }}
        else {{ q.x = q.x | (1u << u32(j)); }}
      }}
    }}"""
_POWER_STEP = """    if ((e.x & 1u) == 1u) {{ result = i64_mul(result, base); }}
    base = i64_mul(base, base);
    e = vec2<u32>((e.x >> 1u) | (e.y << 31u), e.y >> 1u);"""


def _unrolled(step: str, copies: int) -> str:
    """`copies` copies of a loop body (`{k}`: the copy's number)."""
    return "\n".join(step.format(k=k) for k in range(copies))


HELPERS = {
    "i64_lt": f"""fn i64_lt(a: {V}, b: {V}) -> bool {{
  return select(a.x < b.x, bitcast<i32>(a.y) < bitcast<i32>(b.y), a.y != b.y);
}}""",
    "i64_ltu": f"""fn i64_ltu(a: {V}, b: {V}) -> bool {{
  return select(a.x < b.x, a.y < b.y, a.y != b.y);
}}""",
    "i64_add": f"""fn i64_add(a: {V}, b: {V}) -> {V} {{
  let lo = a.x + b.x;
  return {V}(lo, a.y + b.y + select(0u, 1u, lo < a.x));
}}""",
    "i64_sub": f"""fn i64_sub(a: {V}, b: {V}) -> {V} {{
  return {V}(a.x - b.x, a.y - b.y - select(0u, 1u, a.x < b.x));
}}""",
    "i64_neg": f"""fn i64_neg(a: {V}) -> {V} {{
  return i64_sub({V}(0u, 0u), a);
}}""",
    "i64_abs": f"""fn i64_abs(a: {V}) -> {V} {{
  return select(a, i64_neg(a), bitcast<i32>(a.y) < 0i);
}}""",
    "i64_sign": f"""fn i64_sign(a: {V}) -> {V} {{
  if (bitcast<i32>(a.y) < 0i) {{ return {V}(0xffffffffu, 0xffffffffu); }}
  return {V}(select(0u, 1u, any(a != {V}(0u, 0u))), 0u);
}}""",
    "i64_mul32": f"""fn i64_mul32(a: u32, b: u32) -> {V} {{
  // the full 64-bit product of two words, from 16-bit halves
  let a0 = a & 0xffffu; let a1 = a >> 16u; let b0 = b & 0xffffu; let b1 = b >> 16u;
  let p00 = a0 * b0; let p01 = a0 * b1; let p10 = a1 * b0;
  let mid = (p00 >> 16u) + (p01 & 0xffffu) + (p10 & 0xffffu);
  let hi = a1 * b1 + (p01 >> 16u) + (p10 >> 16u) + (mid >> 16u);
  return {V}((p00 & 0xffffu) | (mid << 16u), hi);
}}""",
    "i64_mul": f"""fn i64_mul(a: {V}, b: {V}) -> {V} {{
  let m = i64_mul32(a.x, b.x);
  return {V}(m.x, m.y + a.x * b.y + a.y * b.x);
}}""",
    "i64_shl": f"""fn i64_shl(a: {V}, c: {V}) -> {V} {{
  let n = c.x & 63u;
  if (n == 0u) {{ return a; }}
  if (n >= 32u) {{ return {V}(0u, a.x << (n - 32u)); }}
  return {V}(a.x << n, (a.y << n) | (a.x >> (32u - n)));
}}""",
    "i64_shr": f"""fn i64_shr(a: {V}, c: {V}) -> {V} {{
  let n = c.x & 63u;
  let hi = bitcast<i32>(a.y);
  if (n == 0u) {{ return a; }}
  if (n >= 32u) {{ return {V}(bitcast<u32>(hi >> (n - 32u)), bitcast<u32>(hi >> 31u)); }}
  return {V}((a.x >> n) | (a.y << (32u - n)), bitcast<u32>(hi >> n));
}}""",
    "i64_divmodu": f"""fn i64_divmodu(n: {V}, d: {V}) -> vec4<u32> {{
  // unsigned n / d and n % d (d != 0) by shift and subtract: (quotient, remainder);
  // eight bits per iteration (lavapipe limits an invocation's loop iterations)
  var q = {V}(0u, 0u);
  var r = {V}(0u, 0u);
  for (var i = 63i; i >= 0i; i -= 8i) {{
{_unrolled(_DIVIDE_STEP, 8)}
  }}
  return vec4<u32>(q, r);
}}""",
    "i64_idiv": f"""fn i64_idiv(a: {V}, b: {V}) -> {V} {{
  // floor division; 0 for b == 0, -a (wrapping) for b == -1
  if (all(b == {V}(0u, 0u))) {{ return b; }}
  if (all(b == {V}(0xffffffffu, 0xffffffffu))) {{ return i64_neg(a); }}
  let qr = i64_divmodu(i64_abs(a), i64_abs(b));
  if ((bitcast<i32>(a.y) < 0i) == (bitcast<i32>(b.y) < 0i)) {{ return qr.xy; }}
  let q = i64_neg(qr.xy);
  return select(q, i64_sub(q, {V}(1u, 0u)), any(qr.zw != {V}(0u, 0u)));
}}""",
    "i64_mod": f"""fn i64_mod(a: {V}, b: {V}) -> {V} {{
  // the remainder with the divisor's sign; 0 for b == 0 and b == -1
  let zero = {V}(0u, 0u);
  if (all(b == zero) || all(b == {V}(0xffffffffu, 0xffffffffu))) {{ return zero; }}
  let m = i64_divmodu(i64_abs(a), i64_abs(b)).zw;
  let r = select(m, i64_neg(m), bitcast<i32>(a.y) < 0i);
  let fix = any(r != {V}(0u, 0u)) && ((bitcast<i32>(r.y) < 0i) != (bitcast<i32>(b.y) < 0i));
  return select(r, i64_add(r, b), fix);
}}""",
    "i64_pow": f"""fn i64_pow(a: {V}, b: {V}) -> {V} {{
  // square and multiply over b's bits (wrapping); b < 0: 1 at 1, +-1 at -1, else 0
  if (bitcast<i32>(b.y) < 0i) {{
    if (all(a == {V}(1u, 0u))) {{ return a; }}
    let odd = (b.x & 1u) == 1u;
    if (all(a == {V}(0xffffffffu, 0xffffffffu))) {{ return select({V}(1u, 0u), a, odd); }}
    return {V}(0u, 0u);
  }}
  var result = {V}(1u, 0u);
  var base = a;
  var e = b;
  for (var i = 0i; i < 64i && any(e != {V}(0u, 0u)); i += 8i) {{
{_unrolled(_POWER_STEP, 8)}
  }}
  return result;
}}""",
    "i64_from_i32": f"""fn i64_from_i32(x: i32) -> {V} {{
  return {V}(bitcast<u32>(x), select(0u, 0xffffffffu, x < 0i));
}}""",
    "i64_from_f32": f"""fn i64_from_f32(x: f32) -> {V} {{
  // toward zero, for |x| < 2**63 (the renderer guards the rest)
  let t = trunc(abs(x));
  let hi = floor(t * 2.3283064365386963e-10f);
  let m = {V}(u32(t - hi * 4294967296.0f), u32(hi));
  return select(m, i64_neg(m), x < 0.0f);
}}""",
    "i64_to_f32": f"""fn i64_to_f32(a: {V}) -> f32 {{
  // correctly rounded (to nearest, ties to even)
  let negative = bitcast<i32>(a.y) < 0i;
  let m = select(a, i64_neg(a), negative);
  var v: f32;
  if (m.y == 0u) {{
    v = f32(m.x);
  }} else {{
    let s = countLeadingZeros(m.y);
    var top = m.y;
    var rest = m.x;
    if (s > 0u) {{ top = (m.y << s) | (m.x >> (32u - s)); rest = m.x << s; }}
    var mant = top >> 8u;
    let low = top & 0xffu;
    if (low > 0x80u || (low == 0x80u && (rest != 0u || (mant & 1u) == 1u))) {{ mant += 1u; }}
    v = ldexp(f32(mant), 40i - i32(s));
  }}
  return select(v, -v, negative);
}}""",
}
"""Helpers by name (each after those it calls)."""

_CALL = re.compile(r"\b(i64_[a-z0-9_]+)\(")


def prelude(body: list[str]) -> list[str]:
    """The helpers `body` calls and those they call, each followed by a blank line."""
    return helper_prelude(body, HELPERS, _CALL)


BINARY = {"add": "i64_add", "sub": "i64_sub", "mul": "i64_mul", "shl": "i64_shl",
          "shr": "i64_shr", "idiv": "i64_idiv", "mod": "i64_mod", "pow": "i64_pow"}
"""Binary ops by helper (comparisons, min and max: `binary`)."""


def binary(op: str, a: str, b: str) -> str:
    """int64 `a op b` (both `vec2<u32>`) for a kernel-IR binary op."""
    if op in BINARY:
        return f"{BINARY[op]}({a}, {b})"
    compare = {"lt": f"i64_lt({a}, {b})", "gt": f"i64_lt({b}, {a})",
               "le": f"(!i64_lt({b}, {a}))", "ge": f"(!i64_lt({a}, {b}))",
               "eq": f"all({a} == {b})", "ne": f"any({a} != {b})"}
    if op in compare:
        return compare[op]
    if op in ("max", "min"):
        return f"select({b}, {a}, i64_lt({b if op == 'max' else a}, {a if op == 'max' else b}))"
    if op in ("bitand", "bitor", "xor"):
        return f"({a} {dict(bitand='&', bitor='|', xor='^')[op]} {b})"
    raise ValueError(f"webgpu: no int64 {op}")


def unary(op: str, x: str) -> str:
    """int64 `op x` for a kernel-IR unary op (neg, abs, sign, floor)."""
    return {"neg": f"i64_neg({x})", "abs": f"i64_abs({x})", "sign": f"i64_sign({x})",
            "floor": x}[op]


def literal(value: int) -> str:
    """The int64 constant `value` (wrapped to 64 bits)."""
    value &= (1 << 64) - 1
    return f"{V}({value & 0xFFFFFFFF:#x}u, {value >> 32:#x}u)"
