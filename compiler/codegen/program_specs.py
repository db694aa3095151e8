"""The parts of a `Program` every generator fills in the same way: the signature's tensor
specs, every buffer with its kind and arena offset, the constant arrays (plain data read from
the kernel graph and its memory plan, whatever code the generator emits), and a kernel's
parameters: one per distinct storage, since an output the memory plan puts in place of an
input shares its bytes (one pointer, one binding)."""
from __future__ import annotations

import numpy as np

from ...runtime.program import BufferSpec, TensorSpec
from ...runtime.sizes import Poly
from ..kernel.ir import Kernel, KernelGraph
from ..kernel.memory import MemoryPlan
from ..schedule.sizes import kernel_symbols


def tensor_specs(kernels: KernelGraph, names: list[str]) -> list[TensorSpec]:
    """The specs (name, logical shape, dtype name) of the buffers `names`."""
    return [TensorSpec(n, tuple(kernels.shapes[n]), kernels.buffers[n].dtype.name)
            for n in names]


def buffer_specs(kernels: KernelGraph, plan: MemoryPlan) -> list[BufferSpec]:
    """Every buffer of `kernels` with its kind (input, output, constant, temp) and, for a
    temporary, its planned arena offset (-1 for the others)."""
    kinds = {n: "temp" for n in kernels.buffers}
    kinds.update({n: "constant" for n in kernels.constants})
    kinds.update({n: "input" for n in kernels.inputs})
    kinds.update({n: "output" for n in kernels.outputs})
    return [BufferSpec(n, b.dtype.name, b.size, kinds[n], plan.offsets.get(n, -1))
            for n, b in kernels.buffers.items()]


def constant_arrays(kernels: KernelGraph) -> dict[str, np.ndarray]:
    """The captured constants as contiguous arrays of their buffers' dtypes."""
    return {n: np.ascontiguousarray(a, dtype=kernels.buffers[n].dtype.np_type)
            for n, a in kernels.constants.items()}


def storage_root(name: str, params: list[str], plan: MemoryPlan) -> str:
    """The parameter standing for `name` (itself, or the buffer whose storage it reuses)."""
    while name not in params and name in plan.inplace:
        name = plan.inplace[name]
    return name


def parameters(kernel: Kernel, plan: MemoryPlan) -> list[str]:
    """One parameter per distinct storage among the kernel's buffers, in argument order."""
    names = [b.name for b in kernel.buffers()]
    params: list[str] = []
    for name in names:
        root = name
        while root in plan.inplace and plan.inplace[root] in names:
            root = plan.inplace[root]
        if root not in params:
            params.append(root)
    return params


def program_symbols(kernels: KernelGraph) -> tuple[str, ...]:
    """The symbols of a shape-polymorphic kernel graph, sorted (`Program.symbols`: the order
    a program takes their values in); () for a static graph."""
    names: set[str] = set()
    sizes = [d for shape in kernels.shapes.values() for d in shape]
    sizes += [b.size for b in kernels.buffers.values()]
    for size in sizes:
        if isinstance(size, Poly):
            names |= size.symbols()
    for kernel in kernels.kernels:
        names |= kernel_symbols(kernel)
    return tuple(sorted(names))
