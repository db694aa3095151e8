"""A toy second target, written in the tests: the kernel evaluator registered through the
target table.  Its generator keeps the scheduled kernel graph as the "program", and its
runtime module runs that with `compiler.kernel.eval` — so compiling for it goes through the
same pipeline (lowering, decompositions, index widths, schedules, memory plan) as any target,
and only the last step differs.  It is what docs/architecture.md's "Adding a target" shows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from neurenix.compiler.kernel.eval import run_schedule
from neurenix.compiler.kernel.ir import KernelGraph
from neurenix.compiler.kernel.memory import MemoryPlan
from neurenix.compiler.targets import Capabilities, Target, register_target, unregister_target

NAME = "kernel-eval"


@dataclass
class ToyProgram:
    """What the toy generator produces: the kernels as the pipeline left them."""

    kernels: KernelGraph
    plan: MemoryPlan
    entry: str = "run_schedule"

    def __str__(self) -> str:
        return str(self.kernels)


def generate(kernels: KernelGraph, plan: MemoryPlan, target: Any = None) -> ToyProgram:
    """The toy target's generator."""
    return ToyProgram(kernels, plan)


def capabilities() -> Capabilities:
    """Scalar code, no threads, 32-bit indices preferred (as a GPU would), 256-byte buffers
    (as WebGPU binds them)."""
    return Capabilities(vector_bits=0, threads="none", index_bits=(32, 64),
                        preferred_index_bits=32, alignment=256)


# ---- the runtime module protocol (see runtime/__init__.py) ------------------------------------


def available() -> bool:
    return True


def fingerprint() -> str:
    return "toy"


def code_identity() -> str:
    return "toy"


def prepare(program: ToyProgram, cache: Any) -> None:
    """Nothing to load once per process."""


class Executable:
    """Runs a ToyProgram with the kernel evaluator."""

    def __init__(self, program: ToyProgram, object_code: bytes | None = None,
                 library: bytes | None = None) -> None:
        self.program = program
        self.source = str(program)
        self.object_code = object_code
        self.library = library

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return run_schedule(self.program.kernels, inputs)


TARGET = Target(NAME, "cpu", capabilities, f"{__name__}:generate", __name__, disk_cache=False,
                description="the kernel evaluator as a target (tests only)")


def register() -> Target:
    """Add the toy target to the table (idempotent)."""
    return register_target(TARGET, replace=True)


def unregister() -> None:
    unregister_target(NAME)

