"""`ptxas`, NVIDIA's PTX assembler: PTX to a cubin for one GPU architecture, ahead of time.

A CUDA program is compiled to PTX (runtime/nvrtc.py) and the driver assembles it when it is
loaded; `ptxas` does the same step here, without a GPU, so that generated code is proved to
assemble for sm_80 and sm_90 (and an exported artifact can carry cubins).  Found as
`NEURENIX_PTXAS`, on the PATH, or in the `nvidia-cuda-nvcc` wheel (pin it to NVRTC's
release: ptxas refuses PTX of a newer ISA than its own).
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile


class PTXASError(RuntimeError):
    """ptxas is missing or refused the PTX (the message holds its output)."""


def find() -> str:
    """The ptxas executable."""
    candidates = [os.environ.get("NEURENIX_PTXAS", ""), shutil.which("ptxas") or ""]
    try:
        import nvidia
        for root in nvidia.__path__:
            candidates += sorted(glob.glob(os.path.join(root, "cu*", "bin", "ptxas")))
            candidates += sorted(glob.glob(os.path.join(root, "cuda_nvcc", "bin", "ptxas")))
    except ImportError:
        pass
    for path in candidates:
        if path and os.access(path, os.X_OK):
            return path
    raise PTXASError("ptxas is not installed (pip install 'nvidia-cuda-nvcc==13.0.*', the CUDA "
                     "toolkit, or set NEURENIX_PTXAS)")


def assemble(ptx: bytes, arch: int, timeout: float = 600.0) -> bytes:
    """The cubin of `ptx` for sm_`arch` (80 for sm_80); a PTXASError with ptxas's output when
    it refuses (a PTX ISA newer than it knows, registers or shared memory over the limits)."""
    with tempfile.TemporaryDirectory(prefix="neurenix-ptxas-") as folder:
        src, out = os.path.join(folder, "kernels.ptx"), os.path.join(folder, "kernels.cubin")
        with open(src, "wb") as f:
            f.write(ptx)
        try:
            done = subprocess.run([find(), f"-arch=sm_{arch}", src, "-o", out],
                                  capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise PTXASError(f"ptxas did not finish within {timeout:.0f} s") from None
        if done.returncode != 0:
            raise PTXASError(f"ptxas refused the PTX for sm_{arch} (exit {done.returncode}):\n"
                             f"{(done.stderr or done.stdout).strip()[:20000]}")
        with open(out, "rb") as f:
            return f.read()
