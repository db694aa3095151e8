"""Attach the operations to `Tensor` as methods and operators (x.sum(1), x + y, x[i], x.to(...)).

One table, installed by the package's `__init__` (`install_methods(Tensor)`), so that the
method surface is visible in one place, every method is the function users can call as
`neurenix.<name>`, and `neurenix.tensor` itself imports no operation.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

from neurenix.compiler.types import bool_, float32, float64, int32, int64

from . import creation, indexing, inplace, linalg, reductions, shapes
from . import elementwise as ew
from .backward import backward
from .conversion import cpu, detach, to


def _reflected(fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    """`other <op> self` for a binary function (the reflected operator, `__radd__`)."""
    def method(self: Any, other: Any) -> Any:
        return fn(other, self)
    return method


def _in_place(fn: Callable[[Any, Any], Any], symbol: str) -> Callable[[Any, Any], Any]:
    """`self <op>= other` (`__iadd__`): the result written into self."""
    def method(self: Any, other: Any) -> Any:
        return inplace.apply_inplace(self, fn, other, symbol)
    return method


def _size(self: Any, dim: int | None = None) -> Any:
    if dim is None:
        return self.shape
    return self.shape[shapes.normalize_dim(dim, self.ndim, "size")]


def _operators() -> dict[str, Any]:
    binary = {"add": ew.add, "sub": ew.sub, "mul": ew.mul, "truediv": ew.div,
              "floordiv": ew.floor_divide, "mod": ew.remainder, "pow": ew.pow,
              "matmul": linalg.matmul, "and": ew.logical_and, "or": ew.logical_or}
    table: dict[str, Any] = {}
    for name, fn in binary.items():
        table[f"__{name}__"] = fn
        table[f"__r{name}__"] = _reflected(fn)
    for name, symbol in (("add", "+="), ("sub", "-="), ("mul", "*="), ("truediv", "/="),
                         ("floordiv", "//="), ("mod", "%="), ("pow", "**=")):
        table[f"__i{name}__"] = _in_place(binary[name], symbol)
    table.update({
        "__neg__": ew.neg, "__pos__": lambda self: self, "__abs__": ew.abs,
        "__invert__": ew.logical_not,
        "__eq__": ew.eq, "__ne__": ew.ne, "__lt__": ew.lt, "__le__": ew.le, "__gt__": ew.gt,
        "__ge__": ew.ge,
        "__getitem__": indexing.getitem, "__setitem__": indexing.setitem,
    })
    return table


def _methods() -> dict[str, Any]:
    return {
        # elementwise
        "add": ew.add, "sub": ew.sub, "mul": ew.mul, "div": ew.div, "pow": ew.pow,
        "neg": ew.neg, "abs": ew.abs, "sign": ew.sign, "exp": ew.exp, "log": ew.log,
        "log1p": ew.log1p, "expm1": ew.expm1, "sqrt": ew.sqrt, "rsqrt": ew.rsqrt,
        "square": ew.square, "tanh": ew.tanh, "sigmoid": ew.sigmoid, "relu": ew.relu,
        "erf": ew.erf, "reciprocal": ew.reciprocal, "floor": ew.floor, "ceil": ew.ceil,
        "clamp": ew.clamp, "clip": ew.clamp, "maximum": ew.maximum, "minimum": ew.minimum,
        "eq": ew.eq, "ne": ew.ne, "lt": ew.lt, "le": ew.le, "gt": ew.gt, "ge": ew.ge,
        "logical_and": ew.logical_and, "logical_or": ew.logical_or,
        "logical_not": ew.logical_not, "where": lambda self, cond, other: ew.where(cond, self,
                                                                                     other),
        "sin": ew.sin, "cos": ew.cos, "clamp_min": ew.clamp_min, "clamp_max": ew.clamp_max,
        "isnan": ew.isnan, "isinf": ew.isinf, "isfinite": ew.isfinite, "isclose": ew.isclose,
        "allclose": reductions.allclose,
        # reductions
        "sum": reductions.sum, "mean": reductions.mean, "prod": reductions.prod,
        "max": reductions.max, "min": reductions.min, "amax": reductions.amax,
        "amin": reductions.amin, "argmax": reductions.argmax, "argmin": reductions.argmin,
        "var": reductions.var, "std": reductions.std, "logsumexp": reductions.logsumexp,
        "softmax": reductions.softmax, "log_softmax": reductions.log_softmax,
        "all": reductions.all, "any": reductions.any, "norm": reductions.norm,
        "cumsum": reductions.cumsum,
        # indexing and sorting
        "gather": indexing.gather, "index_select": indexing.index_select,
        "masked_fill": indexing.masked_fill, "tril": indexing.tril, "triu": indexing.triu,
        "repeat_interleave": indexing.repeat_interleave, "sort": indexing.sort,
        "argsort": indexing.argsort, "topk": indexing.topk,
        # movement
        "view": shapes.view, "reshape": shapes.reshape, "permute": shapes.permute,
        "transpose": shapes.transpose, "movedim": shapes.movedim, "flatten": shapes.flatten,
        "unflatten": shapes.unflatten, "squeeze": shapes.squeeze, "unsqueeze": shapes.unsqueeze,
        "expand": shapes.expand, "expand_as": shapes.expand_as,
        "broadcast_to": shapes.broadcast_to, "repeat": shapes.repeat, "split": shapes.split,
        "chunk": shapes.chunk, "unbind": shapes.unbind, "narrow": shapes.narrow,
        "flip": shapes.flip, "size": _size,
        "T": property(lambda self: shapes.permute(self, tuple(reversed(range(self.ndim))))),
        "t": lambda self: shapes.transpose(self, 0, 1) if self.ndim == 2 else self,
        "view_as": lambda self, other: shapes.view(self, other.shape),
        "reshape_as": lambda self, other: shapes.reshape(self, other.shape),
        # in place
        "add_": inplace.add_, "sub_": inplace.sub_, "mul_": inplace.mul_, "div_": inplace.div_,
        "clamp_": inplace.clamp_, "copy_": inplace.copy_, "fill_": inplace.fill_,
        "zero_": inplace.zero_, "clamp_min_": inplace.clamp_min_,
        "clamp_max_": inplace.clamp_max_, "masked_fill_": inplace.masked_fill_,
        "normal_": inplace.normal_, "uniform_": inplace.uniform_,
        # creation
        "new_zeros": creation.new_zeros, "new_ones": creation.new_ones,
        "new_full": creation.new_full, "new_empty": creation.new_empty,
        "new_tensor": creation.new_tensor,
        # products
        "matmul": linalg.matmul, "mm": linalg.mm, "bmm": linalg.bmm, "dot": linalg.dot,
        # autograd
        "backward": backward, "detach": detach, "clone": ew.clone,
        # devices and dtypes
        "to": to, "cpu": cpu,
        "float": lambda self: to(self, float32), "double": lambda self: to(self, float64),
        "long": lambda self: to(self, int64), "int": lambda self: to(self, int32),
        "bool": lambda self: to(self, bool_), "type_as": lambda self, other: to(self, other.dtype),
    }


def install_methods(cls: type) -> None:
    """Set every method and operator of the tables on `cls` (the package does, once)."""
    for name, fn in {**_operators(), **_methods()}.items():
        setattr(cls, name, fn)
