"""WGSL helper functions for what WGSL's builtins get wrong or lack (compiler/kernel/eval.py
is the meaning): an exact `fmod`, C's `pow` at every special value, an accurate `tanh` and
`sign`, and `sin`/`cos` with an exact range reduction (WGSL's are only specified on
[-pi, pi]).  A kernel's module carries only the helpers its body calls (`prelude`).

Bit manipulation where signed zeros matter: lavapipe compiles floats without signed zeros
(a select between the constants 0.0 and -1.0 becomes a negation, giving -0.0), so zeros whose
sign is the result are built from integer bits.
"""
from __future__ import annotations

import re

FMOD_PROLOGUE = """  var ux = bitcast<u32>(x);
  var uy = bitcast<u32>(y);
  let sx = ux & 0x80000000u;
  var ex = i32((ux >> 23u) & 0xffu);
  var ey = i32((uy >> 23u) & 0xffu);
  let ax = ux & 0x7fffffffu;
  let ay = uy & 0x7fffffffu;
  if (ay == 0u || ay > 0x7f800000u || ex == 0xff) { return nx_f32(0x7fc00000u); }
  if (ax < ay) { return x; }
  if (ax == ay) { return bitcast<f32>(sx); }
  if (ex == 0) { ex = 9 - i32(countLeadingZeros(ax)); ux = ax << u32(1 - ex); }
  else { ux = (ux & 0x7fffffu) | 0x800000u; }
  if (ey == 0) { ey = 9 - i32(countLeadingZeros(ay)); uy = ay << u32(1 - ey); }
  else { uy = (uy & 0x7fffffu) | 0x800000u; }
"""
"""fmod's special cases and its operands' mantissas and exponents (`nx_fmod` and the
loop-free `nx_fmod_flat` of wgsl.py go on from there)."""

_FMOD_STEP = """    if (ex > ey) {
      if (ux >= uy) { ux -= uy; if (ux == 0u) { return bitcast<f32>(sx); } }
      ux = ux << 1u;
      ex -= 1;
    }
"""
"""One step of fmod's reduction, repeated in its loop (lavapipe caps loop iterations)."""

HELPERS = {
    "nx_f32": """fn nx_f32(bits: u32) -> f32 {
  // the float with these bits, at run time: WebGPU makes a constant expression that is
  // infinite or NaN a shader-creation error (Chrome enforces it)
  return bitcast<f32>(bits);
}""",
    "nx_trig": """fn nx_trig(x: f32, cosine: u32) -> f32 {
  // sin (cosine = 0u) or cos (1u) of x, exact range reduction for every f32 (Payne-Hanek
  // with 2/pi to 256 bits, 32-bit words), then fdlibm's polynomials on [-pi/4, pi/4]
  let ux = bitcast<u32>(x);
  let ax = ux & 0x7fffffffu;
  if (ax >= 0x7f800000u) { return nx_f32(0x7fc00000u); }
  // |x| < 2^-12: sin x rounds to x (its bits: -0.0 stays -0.0), cos x to 1
  if (ax < 0x39800000u) { return select(bitcast<f32>(ux), 1.0, cosine == 1u); }
  var q = 0u;
  var r = x;
  if (ax > 0x3f490fdau) {
    var t = array<u32, 10>(0u, 0xa2f9836eu, 0x4e441529u, 0xfc2757d1u, 0xf534ddc0u,
                           0xdb629599u, 0x3c439041u, 0xfe5163abu, 0xdebbc561u, 0u);
    let e = i32(ax >> 23u) - 127;
    let m = (ax & 0x7fffffu) | 0x800000u;
    // x * 2/pi mod 4 = m * W * 2^-94, W the 96 bits of 2/pi from bit e - 24 (t[0]: bits <= 0)
    let p = u32(e + 7);
    let k = p >> 5u;
    let sh = p & 31u;
    var w: array<u32, 3>;
    for (var j = 0u; j < 3u; j += 1u) {
      let a = t[k + j];
      let b = t[k + j + 1u];
      w[j] = select((a << sh) | (b >> (32u - sh)), a, sh == 0u);
    }
    let p2 = nx_mul64(m, w[2]);
    let p1 = nx_mul64(m, w[1]);
    let lo = p1.x + p2.y;
    let hi = p1.y + m * w[0] + select(0u, 1u, lo < p1.x);
    q = hi >> 30u;
    // the fraction's 62 bits as (fh, fl); from 1/2 on, its distance below 1 (negated in
    // integers, so a result near a multiple of pi/2 keeps its bits)
    var fh = (hi << 2u) | (lo >> 30u);
    var fl = lo << 2u;
    var sign = 1.0;
    if (fh >= 0x80000000u) {
      q += 1u;
      sign = -1.0;
      fl = 0u - fl;
      fh = ~fh + select(0u, 1u, fl == 0u);
    }
    r = sign * (f32(fh) * 2.3283064365386963e-10 + f32(fl) * 5.421010862427522e-20)
        * 1.5707963267948966;
    if ((ux & 0x80000000u) != 0u) { r = -r; q = 0u - q; }
  }
  q = (q + cosine) & 3u;
  let z = r * r;
  let s = r + r * z * (-1.6666667163e-01 + z * (8.3333337680e-03 + z * (-1.9841270114e-04
          + z * (2.7557314297e-06 + z * (-2.5050759689e-08 + z * 1.5896910177e-10)))));
  let c = 1.0 - 0.5 * z + z * z * (4.1666667908e-02 + z * (-1.3888889225e-03
          + z * (2.4801587642e-05 + z * (-2.7557314297e-07 + z * (2.0875723372e-09
          + z * -1.1359647598e-11)))));
  if (q == 0u) { return s; }
  if (q == 1u) { return c; }
  if (q == 2u) { return -s; }
  return -c;
}

fn nx_mul64(a: u32, b: u32) -> vec2<u32> {
  // the 64-bit product of two u32 as (low, high) words
  let al = a & 0xffffu;
  let ah = a >> 16u;
  let bl = b & 0xffffu;
  let bh = b >> 16u;
  let p0 = al * bl;
  let p1 = al * bh;
  let p2 = ah * bl;
  let mid = (p0 >> 16u) + (p1 & 0xffffu) + (p2 & 0xffffu);
  return vec2<u32>((p0 & 0xffffu) | (mid << 16u), ah * bh + (p1 >> 16u) + (p2 >> 16u)
                   + (mid >> 16u));
}""",
    "nx_fmod": """fn nx_fmod(x: f32, y: f32) -> f32 {
  // C's fmod, exact: the shift-subtract reduction of the mantissas (musl's fmodf)
""" + FMOD_PROLOGUE + """  while (ex > ey) {  """ \
        """// four steps per iteration (lavapipe limits loop iterations)
""" + _FMOD_STEP * 4 + """  }
  if (ux >= uy) { ux -= uy; if (ux == 0u) { return bitcast<f32>(sx); } }
  let shift = i32(countLeadingZeros(ux)) - 8;
  ux = ux << u32(shift);
  ex -= shift;
  if (ex > 0) { ux = (ux - 0x800000u) | (u32(ex) << 23u); } else { ux = ux >> u32(1 - ex); }
  return bitcast<f32>(ux | sx);
}""",
    "nx_pow": """fn nx_pow(a: f32, b: f32) -> f32 {
  // C's pow: WGSL's is exp2(b * log2(a)), undefined for a <= 0 and at the special values
  let m = abs(a);
  let mb = abs(b);
  let inf = nx_f32(0x7f800000u);
  if (b == 0.0f || a == 1.0f) { return 1.0f; }
  if ((bitcast<u32>(a) & 0x7fffffffu) > 0x7f800000u ||
      (bitcast<u32>(b) & 0x7fffffffu) > 0x7f800000u) { return a + b; }
  let integer = floor(b) == b;
  let odd = integer && mb < 16777216.0f && fract(b * 0.5f) != 0.0f;
  var p: f32;
  if (mb == inf) {
    if (m == 1.0f) { return 1.0f; }
    p = select(0.0f, inf, (m > 1.0f) == (b > 0.0f));
  } else if (m == 0.0f) {
    p = select(0.0f, inf, b < 0.0f);
  } else if (m == inf) {
    p = select(0.0f, inf, b > 0.0f);
  } else {
    p = pow(m, b);
  }
  let negative = (bitcast<u32>(a) & 0x80000000u) != 0u;
  if (negative && !integer && m != 0.0f && m != inf) { return nx_f32(0x7fc00000u); }
  if (negative && odd) { return bitcast<f32>(bitcast<u32>(p) | 0x80000000u); }
  return p;
}""",
    "nx_tanh": """fn nx_tanh(x: f32) -> f32 {
  // x near 0 (+-0 kept), an odd polynomial below 0.625 (Cephes' tanhf),
  // else 1 - 2 / (exp(2|x|) + 1)
  let m = abs(x);
  if ((bitcast<u32>(x) & 0x7fffffffu) > 0x7f800000u) { return x; }
  if (m < 1e-4f) { return x; }
  if (m < 0.625f) {
    let z = x * x;
    let p = ((((-5.70498872745e-3f * z + 2.06390887954e-2f) * z - 5.37397155531e-2f) * z
             + 1.33314422036e-1f) * z - 3.33332819422e-1f) * z;
    return x + x * p;
  }
  let t = 1.0f - 2.0f / (exp(2.0f * min(m, 20.0f)) + 1.0f);
  return bitcast<f32>(bitcast<u32>(t) | (bitcast<u32>(x) & 0x80000000u));
}""",
    "nx_sign": """fn nx_sign(x: f32) -> f32 {
  // -1, 0 or 1; +0.0 at +-0 and at NaN (built from bits: no -0.0)
  let a = bitcast<u32>(x) & 0x7fffffffu;
  let one = 0x3f800000u | (bitcast<u32>(x) & 0x80000000u);
  return bitcast<f32>(select(0u, one, a != 0u && a <= 0x7f800000u));
}""",
}
"""Helpers by name, each a WGSL function of f32."""

_CALL = re.compile(r"\b(nx_[a-z0-9_]+)\(")


def prelude(body: list[str]) -> list[str]:
    """The helpers `body` calls and those they call, in a fixed order, with a blank line
    after each."""
    return helper_prelude(body, HELPERS, _CALL)


def helper_prelude(body: list[str], helpers: dict[str, str], call: re.Pattern) -> list[str]:
    """The texts of `helpers` that `body` calls (names `call` finds) and those they call, in
    `helpers`' order, each followed by a blank line (the math, int64 and loop-free preludes)."""
    wanted: set[str] = set()
    stack = [m for line in body for m in call.findall(line)]
    while stack:
        name = stack.pop()
        if name in helpers and name not in wanted:
            wanted.add(name)
            stack += call.findall(helpers[name])
    return [line for name, text in helpers.items() if name in wanted for line in (text, "")]
