"""The `Optimizer` base class: parameter groups, per-parameter state, zero_grad and checkpoints.

Subclasses only write the update of one parameter (`_update`), with Neurenix tensor operations
under `no_grad`, writing results back with `copy_`. Keeping the arithmetic in tensor operations
(never on the NumPy buffers) is what lets `neurenix.compile` trace an optimizer step into a graph.
The same trace gives the fused step (`fused=`): one compiled program per parameter group,
running every parameter's `_update`, with the learning rate and step-dependent numbers as
program inputs. The group and checkpoint layout is PyTorch's, so optimizer checkpoints move
between the two.
"""
from __future__ import annotations

import contextlib
import copy
import numbers
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator
from itertools import chain
from typing import Any

import numpy as np

from neurenix.compiler.types import float32

from .. import compile_hook
from ..autograd import zero_grads
from ..creation import zeros
from ..device import CPU, Device
from ..state import current_trace, enable_grad, no_grad
from ..tensor import Tensor

ParamsT = Iterable[Tensor] | Iterable[dict[str, Any]] | Iterable[tuple[str, Tensor]]


class _Required:
    """Sentinel for a hyper-parameter every parameter group must set itself."""

    def __repr__(self) -> str:
        return "<required parameter>"


required = _Required()


def check_range(owner: str, name: str, value: Any, low: float, high: float | None = None,
                high_inclusive: bool = False) -> None:
    """Raise a ValueError naming the optimizer and hyper-parameter when value is out of range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{owner}: {name} must be a real number, got {type(value).__name__}")
    if high is None:
        ok = value >= low
        wanted = f">= {low}"
    elif high_inclusive:
        ok = low <= value <= high
        wanted = f"in [{low}, {high}]"
    else:
        ok = low <= value < high
        wanted = f"in [{low}, {high})"
    if not ok:
        raise ValueError(f"{owner}: invalid {name} {value!r}; it must be {wanted}")


def host_values(compute: Callable[[], tuple], like: Tensor, count: int,
                commit: Callable[[], None] | None = None,
                per_step: tuple[int, Callable[[Tensor], tuple]] | None = None) -> tuple:
    """`count` scalars computed in Python on every call: `compute()` eagerly; inside a trace,
    0-d inputs of `like`'s dtype whose values `compute` gives before each run of the program.

    For what changes between calls without changing the graph: a learning rate a scheduler
    sets, an optimizer's step count and its bias corrections.  `compute` has no side effects;
    `commit` makes the one that goes with it (count the step): eagerly at once, compiled after
    a call that raised no error, so a failed call leaves the optimizer as eager would.

    Values that change with the step count give `per_step`: (steps done so far, a function of
    a 0-d tensor holding this step's number returning the same values as tensors); a trace
    for export computes them in the program from a step-count tensor it updates.
    """
    trace = current_trace()
    if trace is not None:
        return trace.host_values(compute, like, count, commit, per_step)
    values = tuple(compute())
    if commit is not None:
        commit()
    return values


def zeros_for(p: Tensor) -> Tensor:
    """A zero state buffer with p's shape, dtype and device."""
    return zeros(p.shape, dtype=p.dtype, device=p.device)


_LIVE: weakref.WeakSet = weakref.WeakSet()  # every optimizer alive, for optimizer_settings

def live_optimizers() -> list[Optimizer]:
    """Every optimizer alive in the process."""
    return list(_LIVE)


def optimizer_settings() -> list[tuple[Optimizer, list[dict[str, Any]]]]:
    """Every live optimizer's hyper-parameters per group, taken before a trace so that
    `undo_changed_settings` can tell what the traced function changed."""
    return [(opt, [{k: v for k, v in g.items() if k not in ("params", "param_names")}
                   for g in opt.param_groups]) for opt in list(_LIVE)]


def undo_changed_settings(before: list[tuple[Optimizer, list[dict[str, Any]]]]) -> list[str]:
    """What changed in the optimizers' hyper-parameters since `optimizer_settings`, in words
    (a learning rate set inside a traced function); each is put back as it was."""
    out = []
    for opt, groups in before:
        for g, (old, group) in enumerate(zip(groups, opt.param_groups)):
            for k, v in list(group.items()):
                if k in old and repr(old[k]) != repr(v):
                    out.append(f"{opt._name} group {g} {k} {old[k]!r} -> {v!r}")
                    group[k] = old[k]
    return out


class CountStep:
    """Count one more step of a parameter: the `commit` of a step's host values (in a
    compiled step it runs only once the call succeeded).

    `counts` is what it advances (the parameter's state): a function that steps the same
    parameter again in one compiled call computes that step's values `ahead(n)` of the
    count before the call, as the n steps before it in the call would have left it."""

    def __init__(self, state: dict[str, Any]) -> None:
        self.counts = state

    def __call__(self) -> None:
        self.counts["step"] += 1

    @contextlib.contextmanager
    def ahead(self, n: int) -> Iterator[None]:
        """The step count as `n` more steps would leave it, meanwhile."""
        self.counts["step"] += n
        try:
            yield
        finally:
            self.counts["step"] -= n


class Optimizer:
    """Base class of the optimizers: holds `param_groups`, `defaults` and per-parameter `state`.

    `params` is an iterable of tensors, of `(name, tensor)` pairs, or of dicts each holding
    `"params"` and any hyper-parameters that differ from `defaults` for that group.
    """

    def __getstate__(self) -> dict[str, Any]:
        """Pickled or deep-copied without the fused programs (compiled again on first use)."""
        return {k: v for k, v in self.__dict__.items() if k != "_fused_steps"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """Unpickled or deep-copied: live like a constructed one (`optimizer_settings`)."""
        self.__dict__.update(state)
        self.__dict__.setdefault("fused", None)
        self._fused_steps = {}
        _LIVE.add(self)

    def __init__(self, params: ParamsT, defaults: dict[str, Any],
                 fused: bool | None = None) -> None:
        _LIVE.add(self)
        if fused is not None and not isinstance(fused, bool):
            raise TypeError(f"{self._name}: fused must be True, False or None, got {fused!r}")
        self.fused = fused
        # (group index, device) -> the compiled step of that group (see `_fused_step`)
        self._fused_steps: dict[tuple[int, Device], Any] = {}
        self.defaults = defaults
        self._check_hyperparameters(defaults)
        self.state: dict[Tensor, dict[str, Any]] = {}
        self.param_groups: list[dict[str, Any]] = []
        if isinstance(params, Tensor):
            raise TypeError(f"{self._name}: params must be an iterable of Tensors or dicts, "
                            f"got a single Tensor; wrap it in a list: [tensor]")
        if isinstance(params, (set, frozenset)):
            raise TypeError(f"{self._name}: parameters must be given in an ordered collection "
                            "(a list), not a set, whose order changes between runs")
        if isinstance(params, (dict, str)) or not isinstance(params, Iterable):
            raise TypeError(f"{self._name}: params must be an iterable of Tensors or dicts, "
                            f"got {type(params).__name__}")
        groups = list(params)
        if not groups:
            raise ValueError(f"{self._name}: got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    @property
    def _name(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        lines = [f"{self._name} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for key in sorted(k for k in group if k not in ("params", "param_names")):
                lines.append(f"    {key}: {group[key]}")
        lines.append(")")
        return "\n".join(lines)

    # ---- hooks for subclasses -----------------------------------------------------------------

    def _check_hyperparameters(self, group: dict[str, Any]) -> None:
        """Raise ValueError/TypeError on invalid hyper-parameters (defaults or one group)."""

    def _update(self, p: Tensor, grad: Tensor, state: dict[str, Any],
                group: dict[str, Any]) -> None:
        """Apply one step to parameter p (called under no_grad, only when p has a gradient).

        Python numbers that change from step to step (the learning rate, bias corrections)
        come from `host_values`, so that a compiled step computes them per call.
        """
        raise NotImplementedError(f"{self._name} does not implement _update")

    def _prepare_state(self, p: Tensor, state: dict[str, Any], group: dict[str, Any],
                       traced: bool) -> None:
        """Create p's state before its first update where that needs no gradient (zeros, a
        step count), so that a traced step has the same graph on the first and later calls."""

    # ---- parameter groups ---------------------------------------------------------------------

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group of parameters (with its own hyper-parameters) to optimize from now on."""
        if not isinstance(param_group, dict):
            raise TypeError(f"{self._name}: a param group must be a dict, got "
                            f"{type(param_group).__name__}")
        if "params" not in param_group:
            raise ValueError(f"{self._name}: a param group needs a 'params' entry")
        group = dict(param_group)
        params = group["params"]
        if isinstance(params, Tensor):
            params = [params]
        elif isinstance(params, (set, frozenset)):
            raise TypeError(f"{self._name}: parameters must be given in an ordered collection "
                            "(a list), not a set, whose order changes between runs")
        else:
            params = list(params)
        names = [p[0] for p in params if isinstance(p, tuple)]
        tensors = [p[1] if isinstance(p, tuple) else p for p in params]
        if names:
            if len(names) != len(tensors):
                raise ValueError(f"{self._name}: either every parameter has a name or none has")
            group["param_names"] = names
        for i, p in enumerate(tensors):
            if not isinstance(p, Tensor):
                raise TypeError(f"{self._name}: can only optimize Tensors, but parameter {i} "
                                f"is a {type(p).__name__}")
            if not p.is_leaf:
                raise ValueError(f"{self._name}: can't optimize a non-leaf Tensor (parameter "
                                 f"{i}, produced by {p.grad_fn}); use a leaf tensor or "
                                 "tensor.detach().requires_grad_()")
        group["params"] = tensors
        for key, default in self.defaults.items():
            if default is required and key not in group:
                raise ValueError(f"{self._name}: parameter group didn't specify a value of "
                                 f"required optimization parameter {key}")
            group.setdefault(key, default)
        self._check_hyperparameters(group)
        if len({id(p) for p in tensors}) != len(tensors):
            warnings.warn(f"{self._name}: a parameter group contains duplicate parameters",
                          stacklevel=3)
        for other in self.param_groups:
            if ("param_names" in other) != ("param_names" in group):
                raise ValueError(f"{self._name}: all parameter groups must be with names or "
                                 "all without names")
        seen = {id(p) for other in self.param_groups for p in other["params"]}
        if any(id(p) in seen for p in tensors):
            raise ValueError(f"{self._name}: some parameters appear in more than one "
                             "parameter group")
        self.param_groups.append(group)

    # ---- the training loop --------------------------------------------------------------------

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients of all parameters: to None (default) or to zeros in place."""
        zero_grads((p for group in self.param_groups for p in group["params"]), set_to_none)

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Update every parameter that has a gradient; return closure()'s loss (or None).

        The closure re-evaluates the model and calls backward; it runs with grad enabled.
        Groups that `fuses` picks run as one compiled program each (`_fused_step`); inside a
        traced function the update is part of that trace instead.
        """
        loss = None
        if closure is not None:
            with enable_grad():
                loss = closure()
        trace = current_trace()
        with no_grad():
            if trace is not None or self.fused is False:
                self._update_groups(range(len(self.param_groups)), trace)
                return loss
            for index, group in enumerate(self.param_groups):
                device = self.fuses(group)
                if device is None:
                    self._update_groups([index], None)
                else:
                    self._fused_step(index, device)
        return loss

    def fuses(self, group: dict[str, Any]) -> Device | None:
        """The device `group`'s step runs on as one compiled program, or None when it runs
        eagerly: `fused=False`; no parameter with a gradient; gradients on several devices;
        and, by default (`fused=None`), anything but float32 parameters on the CPU with the
        native code generator (where the program's arithmetic is bitwise eager's)."""
        if self.fused is False:
            return None
        params = [p for p in group["params"] if p.grad is not None]
        devices = {p.device for p in params}
        if len(devices) != 1:
            return None
        device = devices.pop()
        if self.fused is None:
            from ..backends import target_for
            if device != CPU or any(p.dtype != float32 for p in params) \
                    or target_for("cpu") == "reference":
                return None
        return device

    def _fused_step(self, index: int, device: Device) -> None:
        """Run group `index`'s step as its compiled program (compiled on first use, again
        when what `_trace_key` names for the group changes).  Parameters on the host keep
        their arrays, as eagerly: views and `.numpy()` arrays taken before the step see the
        update, and the memory stays put (taking the program's fresh output arrays instead
        would page-fault them in on every step, which costs more than the copy)."""
        compiled = self._fused_steps.get((index, device))
        if compiled is None:
            compile_step = compile_hook.compiler()

            def fused_step() -> None:
                self._update_groups([index], current_trace())

            fused_step.__name__ = fused_step.__qualname__ = \
                f"{self._name}.step[group {index}, fused]"
            compiled = compile_step(fused_step, device=None if device == CPU else device)
            self._fused_steps[(index, device)] = compiled
        group = self.param_groups[index]
        for p in group["params"]:  # eager's error, before anything is traced or run
            self._check_grad(p)
        kept = [(p, p._data) for p in group["params"]
                if p.grad is not None and isinstance(p._data, np.ndarray)]
        compiled()
        for p, array in kept:
            if p._data is not array and array.flags.writeable:
                np.copyto(array, p._data)
                p._data = array

    @property
    def fused_cache_size(self) -> int:
        """How many fused programs this optimizer holds in memory (all groups together)."""
        return sum(c.cache_size for c in self._fused_steps.values())

    def _check_grad(self, p: Tensor) -> None:
        """Raise when p's gradient does not have p's shape."""
        grad = p.grad
        if grad is not None and tuple(grad.shape) != tuple(p.shape):
            raise ValueError(f"{self._name}: the gradient of a parameter has shape "
                             f"{tuple(grad.shape)}, expected {tuple(p.shape)}")

    def _update_groups(self, indices: Iterable[int], trace: Any) -> None:
        """Update the parameters with a gradient in the groups at `indices` (under no_grad):
        eagerly, or into `trace` (its state lifted and guarded, see `_lift_state`)."""
        traced = trace is not None
        indices = list(indices)
        todo = []
        for index in indices:
            group = self.param_groups[index]
            for p in group["params"]:
                grad = p.grad
                if grad is None:
                    continue
                self._check_grad(p)
                state = self.state.get(p, {})
                self._prepare_state(p, state, group, traced)
                if state:
                    self.state[p] = state
                todo.append((p, grad, state, group))
        if traced:
            self._lift_state(trace, todo, indices)
        for p, grad, state, group in todo:
            before = dict(state) if traced else None
            try:
                self._update(p, grad, state, group)
            except BaseException:
                if traced:  # leave no traced value in the state
                    state.clear()
                    state.update(before)
                raise
            if state:
                self.state[p] = state
            if traced:  # state computed in the trace: assigned after every call
                for key, value in list(state.items()):
                    if isinstance(value, Tensor) and value is not before.get(key):
                        if key in before:
                            state[key] = before[key]
                        else:
                            del state[key]
                        trace.store_item(state, key, value)

    def _lift_state(self, trace: Any, todo: list[tuple[Tensor, Tensor, dict, dict]],
                    indices: list[int]) -> None:
        """In a trace: make the state tensors inputs (their updates become outputs) and guard
        what the trace bakes in: the hyper-parameters `_baked` names (the learning rate and
        the ones schedulers cycle are read per call), which parameters have state, and the
        state tensors themselves, of the groups at `indices`."""
        for index, (_, _, state, _) in enumerate(todo):
            for key, value in state.items():
                if isinstance(value, Tensor):
                    trace.lift(value, f"{self._name}.state.{index}.{key}")
        trace.guard(f"{self._name} hyper-parameters and state",
                    lambda args: self._trace_key(args, indices))

    def _baked(self, group: dict[str, Any]) -> dict[str, Any]:
        """The hyper-parameters of `group` a traced step bakes in: all but the learning rate
        (read per call, `host_values`); an optimizer reading more per call says which, and
        keeps what its program's form depends on (momentum zero or not)."""
        return {k: v for k, v in group.items() if k not in ("params", "param_names", "lr")}

    def _trace_key(self, args: Any = None, indices: list[int] | None = None) -> tuple:
        """What a traced step of the groups at `indices` (default: all) depends on besides
        tensor values, as (label, value) pairs (see `_lift_state`)."""
        key: list[tuple[str, Any]] = [("groups", len(self.param_groups))]
        index = 0
        for g, group in enumerate(self.param_groups):
            if indices is not None and g not in indices:
                index += len(group["params"])
                continue
            key += [(f"group {g} {k}", v) for k, v in self._baked(group).items()]
            for p in group["params"]:
                state = self.state.get(p, {})
                key.append((f"parameter {index} state", tuple(state)))
                key.append((f"parameter {index} identity", (id(p),) + tuple(
                    id(v) for v in state.values() if isinstance(v, Tensor))))
                index += 1
        return tuple(key)

    # ---- checkpoints --------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The optimizer's state in PyTorch's layout.

        `{"state": {index: {...}}, "param_groups": [{..., "params": [index, ...]}]}`, where
        parameters are numbered in group order. The state tensors are the live buffers (as in
        PyTorch): copy them if training continues before they are saved.
        """
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            for p in group["params"]:
                index.setdefault(id(p), len(index))
            packed["params"] = [index[id(p)] for p in group["params"]]
            groups.append(packed)
        state = {index[id(p)]: dict(s) for p, s in self.state.items() if id(p) in index}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore state saved by `state_dict()` (ours or PyTorch's) into these parameters.

        Groups are matched by position, parameters by position within each group; tensors are
        copied (array-likes such as PyTorch tensors are converted) and cast to the parameter's
        dtype, except the integer step counters.
        """
        if not isinstance(state_dict, dict) or not {"state", "param_groups"} <= set(state_dict):
            raise ValueError(f"{self._name}: load_state_dict expects a dict with 'state' and "
                             "'param_groups' entries, as returned by state_dict()")
        saved_groups = copy.deepcopy(state_dict["param_groups"])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"{self._name}: the loaded state dict has {len(saved_groups)} "
                             f"parameter groups, this optimizer has {len(self.param_groups)}")
        for i, (group, saved) in enumerate(zip(self.param_groups, saved_groups)):
            if len(group["params"]) != len(saved["params"]):
                raise ValueError(f"{self._name}: parameter group {i} of the loaded state dict "
                                 f"has {len(saved['params'])} parameters, this optimizer's has "
                                 f"{len(group['params'])}")
        id_map = dict(zip(chain.from_iterable(g["params"] for g in saved_groups),
                          chain.from_iterable(g["params"] for g in self.param_groups)))
        state: dict[Tensor, dict[str, Any]] = {}
        for key, value in state_dict["state"].items():
            if key not in id_map:
                raise ValueError(f"{self._name}: the loaded state refers to parameter {key!r}, "
                                 "which no parameter group lists")
            p = id_map[key]
            state[p] = {k: _load_value(p, k, v) for k, v in value.items()}
        new_groups = []
        for group, saved in zip(self.param_groups, saved_groups):
            saved["params"] = group["params"]
            if "param_names" in group and "param_names" not in saved:
                saved["param_names"] = group["param_names"]
            for key, default in self.defaults.items():
                saved.setdefault(key, default)
            self._check_hyperparameters(saved)
            new_groups.append(saved)
        self.state = state
        self.param_groups = new_groups
        self._fused_steps.clear()  # new state tensors: trace again (the disk cache has the code)


def _load_value(p: Tensor, key: str, value: Any) -> Any:
    """A private copy of one saved state value, as a Neurenix value matching parameter p."""
    if key == "step":
        return int(float(value))
    if isinstance(value, Tensor) or hasattr(value, "__array__"):
        array = np.asarray(value).copy()
        if np.issubdtype(array.dtype, np.floating) and p.dtype.is_floating:
            return Tensor(array.astype(p.dtype.np_type), dtype=p.dtype, device=p.device)
        return Tensor(array, device=p.device)
    return copy.deepcopy(value)
