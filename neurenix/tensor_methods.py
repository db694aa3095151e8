"""Attach the functional API to `Tensor` as methods (x.sum(1), x.view(-1), x.softmax(0), ...).

One table, so the method surface is visible in one place and every method is the same
function users can call as `neurenix.<name>`.
"""
from __future__ import annotations

from . import elementwise as ew
from . import inplace, linalg, reductions, shapes


def _methods() -> dict:
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
        # reductions
        "sum": reductions.sum, "mean": reductions.mean, "prod": reductions.prod,
        "max": reductions.max, "min": reductions.min, "amax": reductions.amax,
        "amin": reductions.amin, "argmax": reductions.argmax, "argmin": reductions.argmin,
        "var": reductions.var, "std": reductions.std, "logsumexp": reductions.logsumexp,
        "softmax": reductions.softmax, "log_softmax": reductions.log_softmax,
        "all": reductions.all, "any": reductions.any, "norm": reductions.norm,
        # movement
        "view": shapes.view, "reshape": shapes.reshape, "permute": shapes.permute,
        "transpose": shapes.transpose, "movedim": shapes.movedim, "flatten": shapes.flatten,
        "unflatten": shapes.unflatten, "squeeze": shapes.squeeze, "unsqueeze": shapes.unsqueeze,
        "expand": shapes.expand, "expand_as": shapes.expand_as,
        "broadcast_to": shapes.broadcast_to, "repeat": shapes.repeat, "split": shapes.split,
        "chunk": shapes.chunk, "unbind": shapes.unbind, "narrow": shapes.narrow,
        "flip": shapes.flip,
        # in place
        "add_": inplace.add_, "sub_": inplace.sub_, "mul_": inplace.mul_, "div_": inplace.div_,
        "clamp_": inplace.clamp_,
        # products
        "matmul": linalg.matmul, "mm": linalg.mm, "bmm": linalg.bmm, "dot": linalg.dot,
    }


def install_methods(cls: type) -> None:
    for name, fn in _methods().items():
        setattr(cls, name, fn)
    cls.t = lambda self: shapes.transpose(self, 0, 1) if self.ndim == 2 else self
    cls.view_as = lambda self, other: shapes.view(self, other.shape)
    cls.reshape_as = lambda self, other: shapes.reshape(self, other.shape)
