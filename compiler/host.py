"""What the host CPU offers generated code: its widest vector register and its L2 cache.

`compiler.targets` fills the "llvm" target's capability record from these probes; the schedule
rules and the generator read the record, never the probes, so that a test (or a cross build)
can schedule for another CPU by handing them another record.
"""
from __future__ import annotations

import functools
import pathlib

DEFAULT_L2_BYTES = 512 * 1024  # where sysfs does not say


@functools.cache
def host_vector_bits() -> int:
    """The widest vector register of the host CPU, in bits: from the CPU flags Linux lists
    (so that a cache lookup, which needs the capability record, loads no LLVM), else from
    LLVM's view of the host."""
    features = _cpuinfo_flags()
    if features is None:
        import llvmlite.binding as llvm

        llvm.initialize_native_target()
        features = {name for name, on in llvm.get_host_cpu_features().items() if on}
    if "avx512f" in features:
        return 512
    if "avx2" in features or "avx" in features:
        return 256
    return 128


def _cpuinfo_flags() -> set[str] | None:
    """The first CPU's flags in /proc/cpuinfo (x86 Linux), or None where it has none."""
    try:
        with open("/proc/cpuinfo") as f:
            first = f.read().split("\n\n", 1)[0]
    except OSError:
        return None
    for line in first.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return set(value.split())
    return None


@functools.cache
def host_l2_bytes() -> int:
    """The size of the host's level-2 cache (Linux sysfs; `DEFAULT_L2_BYTES` elsewhere)."""
    base = pathlib.Path("/sys/devices/system/cpu/cpu0/cache")
    for index in sorted(base.glob("index*")):
        try:
            if (index / "level").read_text().strip() != "2":
                continue
            size = (index / "size").read_text().strip().upper()
        except OSError:
            continue
        units = {"K": 1024, "M": 1024 * 1024}
        if size[-1:] in units and size[:-1].isdigit():
            return int(size[:-1]) * units[size[-1]]
        if size.isdigit():
            return int(size)
    return DEFAULT_L2_BYTES
