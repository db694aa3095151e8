"""HIP source to an AMD GPU code object, with ROCm's `hipcc --genco` (HIP_PLATFORM=amd).

hipcc runs in its own process: the in-process hiprtc of Debian's ROCm 5.2 crashes the
process on an architecture whose device library is missing (gfx1100), where hipcc reports it.
An architecture is buildable when ROCm's device library has its ISA bitcode
(`oclc_isa_version_<n>.bc`), which `buildable_archs()` reads without running anything.
Nothing here needs a GPU: the compiler's toolchain checks and the HIP runtime both call
`compile_code_object`.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import tempfile

BITCODE_DIRS = ("/usr/lib/x86_64-linux-gnu/amdgcn/bitcode", "/opt/rocm/amdgcn/bitcode",
                "/opt/rocm/lib/llvm/lib/clang/*/lib/amdgcn/bitcode")


class HIPCompileError(RuntimeError):
    """hipcc is missing or refused a program (the message holds its output)."""


def hipcc() -> str:
    """The hipcc executable (`NEURENIX_HIPCC`, else on the PATH, else ROCm's folder)."""
    for candidate in (os.environ.get("NEURENIX_HIPCC", ""), shutil.which("hipcc") or "",
                      os.path.join(os.environ.get("ROCM_PATH", "/opt/rocm"), "bin", "hipcc")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise HIPCompileError("hipcc is not installed (Debian: apt-get install hipcc "
                          "libamdhip64-dev; or ROCm, or set NEURENIX_HIPCC)")


def available() -> bool:
    """Whether hipcc is here."""
    try:
        hipcc()
    except HIPCompileError:
        return False
    return True


def buildable_archs() -> list[str]:
    """The gfx architectures ROCm's device library has bitcode for (gfx90a, gfx1030, ...)."""
    roots = [os.environ.get("HIP_DEVICE_LIB_PATH", "")] + [
        path for pattern in BITCODE_DIRS for path in glob.glob(pattern)]
    found = set()
    for root in roots:
        for path in glob.glob(os.path.join(root, "oclc_isa_version_*.bc")) if root else ():
            found.add("gfx" + re.sub(r"^oclc_isa_version_|\.bc$", "", os.path.basename(path)))
    return sorted(found)


def compile_code_object(source: str, archs: tuple[str, ...], options: tuple[str, ...] = (),
                        timeout: float = 600.0) -> bytes:
    """The code object (an offload bundle holding one ELF per architecture) of HIP source
    `source` for `archs` (e.g. ("gfx90a",)); a HIPCompileError naming the architecture when
    the device library lacks it, and with hipcc's output when it refuses the program."""
    known = buildable_archs()
    missing = [a for a in archs if known and a.split(":")[0] not in known]
    if missing:
        raise HIPCompileError(f"ROCm's device library here has no bitcode for "
                              f"{', '.join(missing)} (it has {', '.join(known)}): a newer ROCm "
                              f"is needed for that architecture")
    with tempfile.TemporaryDirectory(prefix="neurenix-hip-") as folder:
        src, out = os.path.join(folder, "kernels.hip"), os.path.join(folder, "kernels.co")
        with open(src, "w") as f:
            f.write(source)
        command = [hipcc(), "--genco", "-O3", *(f"--offload-arch={a}" for a in archs),
                   *options, src, "-o", out]
        env = dict(os.environ, HIP_PLATFORM="amd", TMPDIR=folder)  # clang leaves kernels-* dirs
        try:
            done = subprocess.run(command, capture_output=True, text=True, env=env,
                                  timeout=timeout)
        except subprocess.TimeoutExpired:
            raise HIPCompileError(f"hipcc did not finish within {timeout:.0f} s") from None
        if done.returncode != 0 or not os.path.exists(out):
            raise HIPCompileError(f"hipcc refused the program (exit {done.returncode}):\n"
                                  f"{(done.stderr or done.stdout).strip()[:20000]}")
        with open(out, "rb") as f:
            return f.read()
