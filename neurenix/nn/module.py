"""`Module`: the base class of every layer and model.

Parameters, buffers and sub-modules assigned as attributes are registered automatically, in
assignment order, so `named_parameters()` and `state_dict()` produce PyTorch's names
(`features.0.weight`) and layouts — weights move between the two frameworks 1:1.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any, NamedTuple

import numpy as np

from neurenix.compiler.types import DType, float32, float64

from ..autograd import zero_grads
from ..device import CPU
from ..state import current_trace, no_grad
from ..tensor import Tensor
from .parameter import Parameter


class IncompatibleKeys(NamedTuple):
    """What load_state_dict found missing from, or unexpected in, a state dict."""

    missing_keys: list[str]
    unexpected_keys: list[str]


_STRUCTURE = [0]  # bumped whenever any module's parameter, buffer or sub-module table changes
_STATE = [0]  # bumped by those changes too, and by every attribute assignment and train()


def structure_version() -> int:
    """A number that changes whenever a parameter, buffer or sub-module of any module is added,
    replaced or removed (lets `neurenix.compile` cache a module's tensor list between calls)."""
    return _STRUCTURE[0]


def state_version() -> int:
    """A number that changes whenever any module's tables, training flag or attributes are
    assigned (lets a compiled program's guards skip re-reading unchanged modules)."""
    return _STATE[0] + _STRUCTURE[0]


class _Table(OrderedDict):
    """A module's parameter, buffer or sub-module table: every change bumps the version."""

    def __setitem__(self, key: Any, value: Any) -> None:
        _STRUCTURE[0] += 1
        super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        _STRUCTURE[0] += 1
        super().__delitem__(key)

    def pop(self, *args: Any) -> Any:
        _STRUCTURE[0] += 1
        return super().pop(*args)

    def popitem(self, last: bool = True) -> Any:
        _STRUCTURE[0] += 1
        return super().popitem(last)

    def clear(self) -> None:
        _STRUCTURE[0] += 1
        super().clear()

    def update(self, *args: Any, **kwargs: Any) -> None:
        _STRUCTURE[0] += 1
        super().update(*args, **kwargs)

    def setdefault(self, key: Any, default: Any = None) -> Any:
        _STRUCTURE[0] += 1
        return super().setdefault(key, default)

    def move_to_end(self, key: Any, last: bool = True) -> None:
        _STRUCTURE[0] += 1
        super().move_to_end(key, last)


class Module:
    """Base class for layers and models: override `forward`, call the module like a function."""

    training: bool

    def __init__(self) -> None:
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_parameters", _Table())
        object.__setattr__(self, "_buffers", _Table())
        object.__setattr__(self, "_non_persistent", set())
        object.__setattr__(self, "_modules", _Table())

    # ---- registration -----------------------------------------------------------------------

    def _check_init(self) -> None:
        if "_parameters" not in self.__dict__:
            raise RuntimeError(f"{type(self).__name__}: call super().__init__() before "
                               "assigning parameters, buffers or sub-modules")

    def __setattr__(self, name: str, value: Any) -> None:
        _STATE[0] += 1
        if isinstance(value, Parameter):
            self._check_init()
            self._remove(name, self._parameters)
            self._parameters[name] = value
        elif isinstance(value, Module):
            self._check_init()
            self._remove(name, self._modules)
            self._modules[name] = value
        elif "_parameters" in self.__dict__ and name in self._parameters:
            if value is not None:
                raise TypeError(f"cannot assign {type(value).__name__} as parameter {name!r} "
                                "(nn.Parameter or None expected)")
            self._parameters[name] = None
        elif "_buffers" in self.__dict__ and name in self._buffers:
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"cannot assign {type(value).__name__} as buffer {name!r} "
                                "(Tensor or None expected)")
            self._buffers[name] = value
        elif "_modules" in self.__dict__ and name in self._modules and value is None:
            self._modules[name] = None
        else:
            object.__setattr__(self, name, value)

    def _remove(self, name: str, keep: dict | None = None) -> None:
        """Forget `name` everywhere but in the table `keep`, where assigning it again keeps
        its place (so `seq[0] = layer` replaces the first layer, as in PyTorch)."""
        for table in (self._parameters, self._buffers, self._modules):
            if table is not keep:
                table.pop(name, None)
        self.__dict__.pop(name, None)

    def __getattr__(self, name: str) -> Any:
        d = self.__dict__
        for table in ("_parameters", "_buffers", "_modules"):
            if table in d and name in d[table]:
                return d[table][name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name: str) -> None:
        _STATE[0] += 1
        for table in (self._parameters, self._buffers, self._modules):
            if name in table:
                del table[name]
                return
        object.__delattr__(self, name)

    def register_parameter(self, name: str, param: Parameter | None) -> None:
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"register_parameter: expected a Parameter or None for {name!r}, "
                            f"got {type(param).__name__}")
        self._check_init()
        self._remove(name, self._parameters)
        self._parameters[name] = param

    def register_buffer(self, name: str, tensor: Tensor | None, persistent: bool = True) -> None:
        """Register state that is not learnable but belongs in state_dict (e.g. running_mean)."""
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"register_buffer: expected a Tensor or None for {name!r}, got "
                            f"{type(tensor).__name__}")
        self._check_init()
        self._remove(name, self._buffers)
        self._buffers[name] = tensor
        if persistent:
            self._non_persistent.discard(name)
        else:
            self._non_persistent.add(name)

    def add_module(self, name: str, module: Module | None) -> None:
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"add_module: {type(module).__name__} is not a Module")
        self._check_init()
        self._remove(name, self._modules)
        self._modules[name] = module

    # ---- calling ----------------------------------------------------------------------------

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must implement forward()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        trace = current_trace()
        if trace is not None:  # traced: parameters and buffers are inputs
            trace.enter_module(self)
        return self.forward(*args, **kwargs)

    # ---- traversal --------------------------------------------------------------------------

    def named_modules(self, prefix: str = "", memo: set | None = None
                      ) -> Iterator[tuple[str, Module]]:
        memo = set() if memo is None else memo
        if id(self) in memo:
            return
        memo.add(id(self))
        yield prefix, self
        for name, child in self._modules.items():
            if child is not None:
                yield from child.named_modules(f"{prefix}.{name}" if prefix else name, memo)

    def modules(self) -> Iterator[Module]:
        for _, m in self.named_modules():
            yield m

    def named_children(self) -> Iterator[tuple[str, Module]]:
        for name, child in self._modules.items():
            if child is not None:
                yield name, child

    def children(self) -> Iterator[Module]:
        for _, child in self.named_children():
            yield child

    def _named(self, table: str, prefix: str, recurse: bool) -> Iterator[tuple[str, Tensor]]:
        seen: set[int] = set()
        mods = self.named_modules(prefix) if recurse else [(prefix, self)]
        for mod_prefix, mod in mods:
            for name, value in getattr(mod, table).items():
                if value is None or id(value) in seen:
                    continue
                seen.add(id(value))
                yield (f"{mod_prefix}.{name}" if mod_prefix else name), value

    def named_parameters(self, prefix: str = "", recurse: bool = True
                         ) -> Iterator[tuple[str, Parameter]]:
        """(name, parameter) pairs, each parameter once, in registration order."""
        yield from self._named("_parameters", prefix, recurse)

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        """Every learnable parameter of this module and its sub-modules."""
        for _, p in self.named_parameters(recurse=recurse):
            yield p

    def named_buffers(self, prefix: str = "", recurse: bool = True
                      ) -> Iterator[tuple[str, Tensor]]:
        yield from self._named("_buffers", prefix, recurse)

    def buffers(self, recurse: bool = True) -> Iterator[Tensor]:
        for _, b in self.named_buffers(recurse=recurse):
            yield b

    # ---- modes and helpers ------------------------------------------------------------------

    def train(self, mode: bool = True) -> Module:
        """Set training mode (dropout active, batch norm uses batch statistics) recursively."""
        if not isinstance(mode, bool):
            raise TypeError(f"train: mode must be a bool, got {type(mode).__name__}")
        _STATE[0] += 1
        for m in self.modules():
            object.__setattr__(m, "training", mode)
        return self

    def eval(self) -> Module:
        """Set evaluation mode recursively (same as train(False))."""
        return self.train(False)

    def is_training(self) -> bool:
        """Whether the module is in training mode."""
        return self.training

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the parameters' gradients: to None (default) or to zeros in place."""
        zero_grads(self.parameters(), set_to_none)

    def requires_grad_(self, requires_grad: bool = True) -> Module:
        for p in self.parameters():
            p.requires_grad_(requires_grad)
        return self

    def apply(self, fn: Callable[[Module], Any]) -> Module:
        """Call fn on every sub-module (children first) and then on self, like PyTorch."""
        for child in self.children():
            child.apply(fn)
        fn(self)
        return self

    def to(self, *args: Any, **kwargs: Any) -> Module:
        """Move every parameter and buffer (and gradient) in place: each stays the same object,
        so an optimizer made before keeps working; a dtype converts floating ones only."""
        with no_grad():
            for t in list(self.parameters()) + list(self.buffers()):
                if t.dtype.is_floating:
                    t.to(*args, inplace=True, **kwargs)
                else:
                    t.to(*(a for a in args if not isinstance(a, DType)), inplace=True,
                         **{k: v for k, v in kwargs.items() if k != "dtype"})
        return self

    def cpu(self) -> Module:
        """Move every parameter and buffer to the CPU in place."""
        return self.to(CPU)

    def float(self) -> Module:
        return self.to(float32)

    def double(self) -> Module:
        return self.to(float64)

    # ---- state ------------------------------------------------------------------------------

    def state_dict(self, prefix: str = "", keep_vars: bool = False) -> OrderedDict:
        """Every parameter and persistent buffer by its dotted name (PyTorch's keys)."""
        out: OrderedDict = OrderedDict()
        for mod_prefix, mod in self.named_modules(prefix.rstrip(".")):
            dot = f"{mod_prefix}." if mod_prefix else ""
            for name, p in mod._parameters.items():
                if p is not None:
                    out[dot + name] = p if keep_vars else p.detach()
            for name, b in mod._buffers.items():
                if b is not None and name not in mod._non_persistent:
                    out[dot + name] = b if keep_vars else b.detach()
        return out

    def load_state_dict(self, state_dict: dict, strict: bool = True) -> IncompatibleKeys:
        """Copy values (Neurenix tensors, NumPy arrays or PyTorch tensors) into this module.

        Shapes must match exactly; with strict=True, missing or unexpected keys are an error.
        """
        own = self.state_dict(keep_vars=True)
        missing = [k for k in own if k not in state_dict]
        unexpected = [k for k in state_dict if k not in own]
        if strict and (missing or unexpected):
            raise KeyError(f"load_state_dict for {type(self).__name__}: missing keys "
                           f"{missing}, unexpected keys {unexpected}")
        with no_grad():
            for key, target in own.items():
                if key not in state_dict:
                    continue
                value = _as_array(state_dict[key], key)
                if tuple(value.shape) != tuple(target.shape):
                    raise ValueError(f"load_state_dict: size mismatch for {key}: the checkpoint "
                                     f"has shape {tuple(value.shape)}, the model expects "
                                     f"{tuple(target.shape)}")
                target._set_host(np.array(value, dtype=target.dtype.np_type))
                target._version += 1
        return IncompatibleKeys(missing, unexpected)

    # ---- printing ---------------------------------------------------------------------------

    def extra_repr(self) -> str:
        """The layer's own settings for repr (e.g. 'in_features=10, out_features=5')."""
        return ""

    def __repr__(self) -> str:
        extra = self.extra_repr()
        children = [(n, m) for n, m in self._modules.items() if m is not None]
        if not children:
            return f"{type(self).__name__}({extra})"
        lines = [f"{type(self).__name__}("]
        if extra:
            lines.append("  " + extra)
        for name, child in children:
            body = repr(child).replace("\n", "\n  ")
            lines.append(f"  ({name}): {body}")
        lines.append(")")
        return "\n".join(lines)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(self._parameters) | set(self._buffers)
                      | set(self._modules))


def _as_array(value: Any, key: str) -> np.ndarray:
    if isinstance(value, Tensor):
        return value._host()
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch.Tensor
        return value.detach().cpu().numpy()
    try:
        return np.asarray(value)
    except Exception as e:  # noqa: BLE001
        raise TypeError(f"load_state_dict: value for {key} is a {type(value).__name__}, "
                        "expected a tensor or array") from e
