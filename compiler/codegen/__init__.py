"""Code generators: each turns a `KernelGraph` (and its memory plan) into a runtime `Program`,
carrying out each kernel's schedule (compiler/schedule/).

`llvm` is the CPU backend (LLVM IR through llvmlite); the C-style GPU dialects and WGSL read the
same kernel IR.
"""
from .llvm import ENTRY, generate
from .llvm_ops import CodegenError

__all__ = ["ENTRY", "CodegenError", "generate"]
