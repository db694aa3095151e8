"""WGSL helper functions for what WGSL's builtins get wrong or lack (compiler/kernel/eval.py
is the meaning): an exact `fmod`, C's `pow` at every special value, an accurate `tanh` and
`sign`.  A kernel's module carries only the helpers its body calls (`prelude`).

Bit manipulation where signed zeros matter: lavapipe compiles floats without signed zeros
(a select between the constants 0.0 and -1.0 becomes a negation, giving -0.0), so zeros whose
sign is the result are built from integer bits.
"""
from __future__ import annotations

import re

_FMOD_STEP = """    if (ex > ey) {
      if (ux >= uy) { ux -= uy; if (ux == 0u) { return bitcast<f32>(sx); } }
      ux = ux << 1u;
      ex -= 1;
    }
"""
"""One step of fmod's reduction, repeated in its loop (lavapipe caps loop iterations)."""

HELPERS = {
    "nx_fmod": """fn nx_fmod(x: f32, y: f32) -> f32 {
  // C's fmod, exact: the shift-subtract reduction of the mantissas (musl's fmodf)
  var ux = bitcast<u32>(x);
  var uy = bitcast<u32>(y);
  let sx = ux & 0x80000000u;
  var ex = i32((ux >> 23u) & 0xffu);
  var ey = i32((uy >> 23u) & 0xffu);
  let ax = ux & 0x7fffffffu;
  let ay = uy & 0x7fffffffu;
  if (ay == 0u || ay > 0x7f800000u || ex == 0xff) { return bitcast<f32>(0x7fc00000u); }
  if (ax < ay) { return x; }
  if (ax == ay) { return bitcast<f32>(sx); }
  if (ex == 0) { ex = 9 - i32(countLeadingZeros(ax)); ux = ax << u32(1 - ex); }
  else { ux = (ux & 0x7fffffu) | 0x800000u; }
  if (ey == 0) { ey = 9 - i32(countLeadingZeros(ay)); uy = ay << u32(1 - ey); }
  else { uy = (uy & 0x7fffffu) | 0x800000u; }
  while (ex > ey) {  // four steps per iteration (lavapipe limits loop iterations)
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
  let inf = bitcast<f32>(0x7f800000u);
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
  if (negative && !integer && m != 0.0f && m != inf) { return bitcast<f32>(0x7fc00000u); }
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
    """The helpers `body` calls, in a fixed order, with a blank line after each."""
    called = {m for line in body for m in _CALL.findall(line)}
    return [line for name, text in HELPERS.items() if name in called
            for line in (text, "")]
