"""`neurenix.compile`: trace a module or function per input signature, compile, cache, run.

A call looks up its signature (shapes, dtypes and grad-ness of tensor arguments, other
arguments' values, train/eval, grad mode, the parameters' shapes).  A new signature is traced
into a graph, optimised and compiled; a known one runs its program directly.  When gradients
are needed, forward and backward are compiled as one joint graph, partitioned, and the
forward's outputs get one autograd node whose backward runs the compiled backward program.
"""
from __future__ import annotations

import contextlib
import copy
import importlib
import inspect
import itertools
import logging
import os
import pickle
import sys
import threading
import time
import types
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from neurenix.compiler import pipeline
from neurenix.compiler.passes.autodiff import reaching_outputs
from neurenix.compiler.symbolic import SpecializeSize, shape_env
from neurenix.compiler.targets import get_target, target_names
from neurenix.compiler.trace import TraceError, Tracer

from .. import autograd, compile_hook
from ..backward import mark_fresh
from ..device import CPU, Device, as_device
from ..dispatch import apply
from ..nn.module import Module
from ..optim.optimizer import optimizer_settings, undo_changed_settings
from ..random import next_seed
from ..state import is_grad_enabled, is_tracing, no_grad
from ..tensor import Tensor
from . import value_checks
from .aliasing import WriteCheck
from .arguments import (
    Keywords,
    arg_tensors,
    call_with,
    flatten_outputs,
    replace_tensors,
    unflatten_outputs,
)
from .dynamic import (
    DEFAULT_BOUNDS,
    SEEN_SHAPES,
    abstract_key,
    changed_dims,
    chosen_variants,
    fitting,
    parse_dynamic,
    shape_guard,
    symbolic_shapes,
)
from .executables import compile_traced
from .placement import Placement, backend_for, call_device, device_of_backend, switch_guards
from .signatures import describe, explain_change, explain_guards, structure, value_key
from .trace_effects import Store, finish_stores, restore, stale_outputs
from .trace_guards import (
    Guard,
    code_guard,
    helper_guard,
    module_guard,
    tensor_guard,
    undo_side_effects,
)
from .tracing import TraceState, tracing
from .user_calls import user_calls

log = logging.getLogger("neurenix.compile")

__all__ = ["compile", "Compiled", "TraceError"]

# In-memory programs are bounded (least recently used first out): per compiled function and
# per process.  NEURENIX_PROGRAM_CACHE="TOTAL" or "TOTAL,PER_FUNCTION" changes the bounds.
PROGRAMS_PER_FUNCTION = 32
PROGRAMS_PER_PROCESS = 256
# A function compiling more programs than this logs one warning (NEURENIX_RECOMPILE_LIMIT, or
# compile(..., recompile_limit=)); it goes on compiling.  PyTorch's recompile_limit is also 8.
RECOMPILE_LIMIT = 8

_NO_KEY = ("not memoised",)  # `Compiled._abstract`'s miss (None is a memoised answer)
_CLOCK = itertools.count(1)  # every use of a program stamps it: the LRU order
_PROGRAMS_LOCK = threading.Lock()  # held while any Compiled's `_cache` changes
_FUNCTIONS: weakref.WeakSet[Compiled] = weakref.WeakSet()  # those holding programs
# one trace at a time in the process: a trace swaps gradients and module state in and out
_TRACE_LOCK = threading.Lock()
# a Compiled's attributes that hold compiled programs or per-process state: never pickled or
# copied (see `Compiled._reset`)
_PROGRAM_STATE = frozenset({"_cache", "_last", "_pending", "_pending_lock", "_compiles",
                            "_warned", "last_verification", "_dynamic", "_abstract"})


@dataclass
class _Entry:
    """Everything compiled for one signature."""

    key: tuple
    # per graph input: ("arg", i) | ("tensor", t) | ("seed", _) | ("host", (k, j)) |
    # ("grad", target): see neurenix.compilation.trace_effects
    sources: list[tuple[str, Any]]
    forward: Any  # an executable: run(list[np.ndarray]) -> list[np.ndarray]
    num_outputs: int
    treedef: Any
    updates: list[tuple[str, Any]]  # where each updated input lives: sources as above
    graph: Any
    stats: dict
    input_dtypes: list[Any] = field(default_factory=list)
    host: list[Callable[[], tuple]] = field(default_factory=list)
    commits: list[Callable[[], None]] = field(default_factory=list)
    guards: list[Guard] = field(default_factory=list)
    stores: list[Store] = field(default_factory=list)
    num_stored: int = 0
    # value checks (neurenix.checks): how many outputs each test reads, and the test
    checks: list[tuple[int, Callable[..., None]]] = field(default_factory=list)
    num_checks: int = 0
    backward: Any = None
    backward_inputs: list[tuple[str, int]] = field(default_factory=list)
    # where each call finds the tensors its backward gives gradients to: sources as above
    grad_sources: list[tuple[str, Any]] = field(default_factory=list)
    # per gradient target: the outputs a gradient reaches it from (none of them given a
    # cotangent: no gradient at all, as eagerly)
    grad_from: list[frozenset[int]] = field(default_factory=list)
    differentiable: list[int] = field(default_factory=list)
    # per output differentiated after the call: eager's "modified in place" error, raised
    # when it gets a gradient (trace_effects.stale_outputs)
    stale: dict[int, str] = field(default_factory=dict)
    num_saved: int = 0
    used: int = 0  # the `_CLOCK` stamp of its latest use
    backend: str = ""  # the target it was compiled for
    place: Placement | None = None  # its device, and how values reach it
    input_names: list[str] = field(default_factory=list)
    writes: WriteCheck | None = None  # made on the first call: see aliasing.py
    # outputs returned as objects the caller has: (output, ("arg", i) | ("tensor", t) |
    # ("view", (source kind, i or t, view ops, on the gradient's path)) | ("same", earlier
    # output)), see `_aliases`
    aliases: list[tuple[int, tuple[str, Any]]] = field(default_factory=list)


@dataclass
class _Pending:
    """The lock that makes concurrent first calls of one signature compile once."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    waiting: int = 0  # threads holding or waiting for `lock`


@dataclass
class _Code:
    """What an evicted latest program still shows (`Compiled.source()`): its code text."""

    source: str


def _aliases(state: TraceState, leaves: list[Tensor]) -> list[tuple[int, tuple[str, Any]]]:
    """The outputs a compiled call returns as objects the caller already has, as eagerly: an
    argument or captured tensor returned as it is (after any write-back, the object itself,
    not a copy: a later write into it shows in the output), a view of one (taken again of it
    after the call: views with static attributes), and a tensor returned twice (the same
    object twice)."""
    out: list[tuple[int, tuple[str, Any]]] = []
    first: dict[int, int] = {}
    for i, t in enumerate(leaves):
        if id(t) in first:
            out.append((i, ("same", first[id(t)])))
            continue
        first[id(t)] = i
        grad = t._value is not None and state.differentiable(t._value)  # else: as detached
        ops: list[tuple[str, dict]] = []
        while True:  # through the views taken in the trace, down to what they view
            entry = state.view_of.get(id(t))
            if entry is None or entry[0] is not t or not _static(entry[3]):
                break
            ops.append((entry[2].name, entry[3]))
            t = entry[1]
        if id(t) in state.args:
            source = ("arg", state.args[id(t)][0])
        elif t._value is None and id(t) in state.inputs:
            source = ("tensor", t)
        else:
            continue
        out.append((i, ("view", (*source, tuple(reversed(ops)), grad)) if ops else source))
    return out


def _static(value: Any) -> bool:
    """Whether a view's attributes are plain numbers (no dynamic size to bind per call)."""
    if isinstance(value, dict):
        return all(_static(v) for v in value.values())
    if isinstance(value, (tuple, list)):
        return all(_static(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


class Compiled:
    """The callable `neurenix.compile` returns; also shows what it compiled.

    `graph` is the optimised graph of the latest signature, `source()` its generated code,
    `stats()` node counts per pass, kernels, memory and compile times.  Programs run on the
    explicit `device` (or `backend`'s device), else on the device of the module's parameters
    or of the call's tensors (see `neurenix.compilation.placement`).
    """

    def __init__(self, fn: Callable, device: Any = None, verify: bool = False,
                 backend: str | None = None, recompile_limit: int | None = None,
                 dynamic: Any = None) -> None:
        if not callable(fn):
            raise TypeError(f"compile: expected a Module or a callable, got {type(fn).__name__}")
        self.fn = fn
        self.module = fn if isinstance(fn, Module) else None
        self.verify = verify
        if backend is not None:
            try:
                get_target(backend)
            except (TypeError, ValueError):
                raise ValueError(f"compile: backend must be one of {tuple(target_names())}, "
                                 f"got {backend!r}") from None
        self._device = _explicit_device(device, backend)
        self._backend = backend
        if recompile_limit is not None and (not isinstance(recompile_limit, int)
                                            or recompile_limit < 1):
            raise ValueError(f"compile: recompile_limit must be a positive integer, got "
                             f"{recompile_limit!r}")
        self.recompile_limit = recompile_limit
        self.dynamic = dynamic
        self._reset()

    def _reset(self) -> None:
        """Start with no programs: at construction, and in a copy or an unpickled object."""
        # per signature, its programs (one per guard state); replaced, never changed in place,
        # so that a call can read it without a lock
        self._cache: dict[tuple, list[_Entry]] = {}
        self._last: _Entry | None = None
        self._pending: dict[tuple, _Pending] = {}  # signatures being compiled
        self._pending_lock = threading.Lock()
        self._compiles = 0
        self._warned = False
        self._dynamic = parse_dynamic(self.dynamic)
        self._abstract: dict[tuple, tuple | None] = {}  # signature -> abstract_key, memoised
        self.last_verification: list[float] | None = None

    # ---- pickling and copying ---------------------------------------------------------------

    def _settings(self) -> dict[str, Any]:
        """What a copy keeps: the module or function and the settings, not the programs."""
        return {k: v for k, v in self.__dict__.items() if k not in _PROGRAM_STATE}

    def __reduce_ex__(self, protocol: Any) -> Any:
        """A function compiled where it is defined (`@neurenix.compile` at module level) is
        pickled by reference, as pickle saves functions; anything else by value (state below)."""
        if self.module is None and _global_name(self) is not None:
            return _compiled_global, _global_name(self)
        return super().__reduce_ex__(protocol)

    def __getstate__(self) -> dict[str, Any]:
        """Pickled: the module (with its parameters) or the function, and the settings; never
        the compiled programs (loaded libraries, device code).  A loaded object compiles, or
        loads from the disk cache, on its first call.  A function pickle cannot save by
        reference (a local function, a lambda) raises a TypeError saying so."""
        _check_picklable(self.fn, self._name())
        return self._settings()

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._reset()

    def __copy__(self) -> Compiled:
        new = object.__new__(type(self))
        new.__setstate__(self._settings())
        return new

    def __deepcopy__(self, memo: dict[int, Any]) -> Compiled:
        """An independent copy: the module deep-copied (a function is shared, as deepcopy
        shares functions), no programs; its first call compiles or loads from the disk cache."""
        new = object.__new__(type(self))
        memo[id(self)] = new
        new.__setstate__(copy.deepcopy(self._settings(), memo))
        return new

    # ---- introspection ----------------------------------------------------------------------

    @property
    def device(self) -> Device:
        """The device programs run on: the explicit one, else the latest program's (the CPU
        before the first call)."""
        if self._device is not None:
            return self._device
        return self._last.place.device if self._last and self._last.place else CPU

    @property
    def backend(self) -> str:
        """The target programs are compiled for: the explicit one, else the latest
        program's (the default target of the device before the first call)."""
        if self._backend is not None:
            return self._backend
        if self._last is not None and self._last.backend:
            return self._last.backend
        return backend_for(self.device, None)

    @property
    def graph(self):
        """The optimised forward graph of the latest signature (None before the first call)."""
        return self._last.graph if self._last else None

    def source(self) -> str:
        """The generated code of the latest signature (forward, then backward if any)."""
        if self._last is None:
            return ""
        parts = [self._last.forward.source]
        if self._last.backward is not None:
            parts.append(self._last.backward.source)
        return "\n\n".join(p for p in parts if p)

    def stats(self) -> dict:
        """Nodes before/after each pass, kernels, bytes naive/planned/lower bound, timings;
        for a dynamic program also the latest call's sizes and the variant each kernel with
        size-specialised variants chose for them."""
        entry = self._last
        if entry is None:
            return {}
        out = dict(entry.stats)
        if "dynamic" in out:
            out["dynamic"] = dict(out["dynamic"], **chosen_variants(
                [entry.forward, entry.backward]))
        return out

    @property
    def cache_size(self) -> int:
        """How many programs are cached in memory (one per signature and guard state, at most
        the program cache's bound: see `program_cache_bounds`)."""
        return sum(len(entries) for entries in self._cache.values())

    def __getattr__(self, name: str) -> Any:
        """Everything else is the compiled module's (`parameters()`, `train()`, `state_dict()`),
        so a compiled model stands in for the model in a training loop."""
        module = self.__dict__.get("module")
        if module is None:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        return getattr(module, name)

    # ---- calling ----------------------------------------------------------------------------

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if is_tracing():  # called inside another trace: part of that graph
            return self.fn(*args, **kwargs)
        given = (args, kwargs)
        if kwargs:
            args = self._bind(args, kwargs)
        tensors = arg_tensors(args)
        key = self._signature(args, call_device(self._device, self.module, tensors))
        entries = self._cache.get(key)
        entry = _matching(entries, tensors) if entries else None
        dyn = self._dynamic
        if entry is None and (dyn.dims or dyn.named or dyn.mode == "all"):
            entry = self._symbolic_entry(key, args, tensors)
        if entry is None:
            entry = self._compile_once(key, args, tensors)
        entry.used = next(_CLOCK)
        self._last = entry
        if entry.updates:
            if entry.writes is None:
                entry.writes = WriteCheck(entry.sources, entry.updates, entry.input_names)
            why = entry.writes.check(tensors)
            if why is not None:
                log.info("neurenix.compile: running %s eagerly for this call: %s",
                         self._name(), why)
                return self.fn(*given[0], **given[1])
        out = self._run(entry, tensors)
        if self.verify:
            self._verify(args, out, entry)
        return out

    def _name(self) -> str:
        return type(self.fn).__name__ if self.module is not None else getattr(
            self.fn, "__name__", "function")

    def _bind(self, args: tuple, kwargs: dict) -> tuple:
        """The call's arguments in positional order (defaults filled in), then, for
        keyword-only and `**kwargs` parameters, one `Keywords` dict."""
        target = self.module.forward if self.module is not None else self.fn
        bound = inspect.signature(target).bind(*args, **kwargs)
        bound.apply_defaults()
        return tuple(bound.args) + ((Keywords(bound.kwargs),) if bound.kwargs else ())

    def _signature(self, args: tuple, device: Device) -> tuple:
        """The call's key: its arguments (tensors by shape, dtype and requires_grad, other
        values by content), grad mode and the device it runs on.  Module state is checked by
        the entries' guards."""
        parts: list[Any] = []
        for i, a in enumerate(args):
            if type(a) is Tensor or isinstance(a, Tensor):
                parts.append(describe(a))
                continue
            leaves = arg_tensors((a,))
            if leaves:  # tensors nested in a tuple/list/dict (an LSTM's (h0, c0))
                parts.append(("tree", structure(a, i), tuple(describe(t) for t in leaves)))
            else:
                parts.append(("value", value_key(a, i)))
        return (tuple(parts), is_grad_enabled(), device)

    # ---- compiling --------------------------------------------------------------------------

    def _dims(self, args: tuple, tensors: list[Tensor]) -> dict:
        """The call's dynamic dimensions: declared by argument name (every tensor of a
        tuple argument: an LSTM's `(h0, c0)`), found so far, or every leading one
        (`dynamic=True`), as {(tensor position, axis): (lo, hi)}, without those whose size
        is outside its bounds."""
        dyn = self._dynamic
        dims = dyn.active(len(tensors), [t.ndim for t in tensors])
        if dyn.named and dyn.failed is None:
            names = self._arg_names(len(args))
            p = 0
            for i, a in enumerate(args):
                leaves = arg_tensors((a,))
                for axis, bounds in dyn.named.get(names[i], {}).items():
                    for k, t in enumerate(leaves):
                        if axis < t.ndim and (p + k, axis) not in dyn.pinned:
                            dims.setdefault((p + k, axis), bounds)
                p += len(leaves)
        return fitting(dims, tensors)

    def _symbolic_entry(self, key: tuple, args: tuple, tensors: list[Tensor]) -> _Entry | None:
        """The cached symbolic program this call's sizes fit, if any."""
        akey = self._abstract.get(key, _NO_KEY)
        if akey is _NO_KEY:
            akey = abstract_key(key, self._dims(args, tensors))
            if len(self._abstract) >= SEEN_SHAPES:
                self._abstract.clear()
            self._abstract[key] = akey
        entries = self._cache.get(akey) if akey is not None else None
        return _matching(entries, tensors) if entries else None

    def _found_dynamic(self, key: tuple, tensors: list[Tensor]) -> None:
        """Automatic dynamic: a dimension that changed size since the previous signature of
        the same structure becomes dynamic (logged at INFO)."""
        if self._dynamic.mode != "auto" or self._dynamic.failed is not None \
                or not get_target(self._backend_for(key[2])).capabilities.dynamic_shapes:
            return
        previous = [self._last.key] if self._last is not None else []
        previous += [k for k in self._cache if k not in previous]
        for old in previous:
            changed = changed_dims(old, key)
            if changed:
                new = [d for d in changed if d not in self._dynamic.dims]
                for d in new:
                    self._dynamic.dims[d] = DEFAULT_BOUNDS
                self._abstract.clear()
                if new:
                    log.info("neurenix.compile: %s: %s changed size; compiling one program "
                             "for every size from now on", self._name(),
                             ", ".join(f"dimension {a} of tensor argument {p}" for p, a in new))
                return

    def _compile_once(self, key: tuple, args: tuple, tensors: list[Tensor]) -> _Entry:
        """The program for a call no cached one matches: compiled here, or by another thread
        compiling the same signature meanwhile (one lock per signature, so that concurrent
        first calls compile once and different signatures do not wait for each other)."""
        with self._pending_lock:
            pending = self._pending.setdefault(key, _Pending())
            pending.waiting += 1
        try:
            with pending.lock:
                entries = self._cache.get(key)
                entry = _matching(entries, tensors) if entries else None
                if entry is None:
                    self._found_dynamic(key, tensors)
                    entry = self._symbolic_entry(key, args, tensors)
                if entry is None:
                    bounds = program_cache_bounds()
                    akey = self._abstract.get(key)  # a symbolic program whose guards failed
                    tried = entries or (self._cache.get(akey) if akey is not None else None)
                    self._say_why(key, tried, tensors)
                    entry, why = self._compile_symbolic(key, args, tensors)
                    if entry is None:
                        entry = self._compile(key, args)  # raises the user's own errors
                    if why is not None:  # the static compile succeeded where it did not
                        self._give_up_dynamic(why)
                    self._keep(entry, *bounds)
                return entry
        finally:
            with self._pending_lock:
                pending.waiting -= 1
                if not pending.waiting:
                    del self._pending[key]

    def _say_why(self, key: tuple, entries: list[_Entry] | None,
                 tensors: list[Tensor]) -> None:
        """Log why a recompile happens (INFO), and warn once when this function has compiled
        more programs than its recompile limit."""
        limit = self.recompile_limit or _env_int("NEURENIX_RECOMPILE_LIMIT", RECOMPILE_LIMIT)
        with _PROGRAMS_LOCK:
            self._compiles += 1
            count = self._compiles
            warn = count > limit and not self._warned
            self._warned = self._warned or warn
        if count == 1 or not (warn or log.isEnabledFor(logging.INFO)):
            return
        if entries:
            why = explain_guards(entries[-1].guards, tensors)
        else:
            last = self._last
            why = explain_change(last.key, key) if last is not None else "new signature"
        log.info("neurenix.compile: recompiling %s: %s", self._name(), why)
        if warn:
            log.warning("neurenix.compile: %s has compiled %d programs, more than its recompile "
                        "limit of %d (the latest because %s). Every new input shape, argument "
                        "value or module state compiles a program of its own: pad or bucket "
                        "varying sizes (batch size, sequence length) to a few values, pass "
                        "varying numbers as tensors, or raise the limit with "
                        "neurenix.compile(..., recompile_limit=N) or NEURENIX_RECOMPILE_LIMIT=N. "
                        "It goes on compiling; this warning is not repeated.", self._name(),
                        count, limit, why)

    def _keep(self, entry: _Entry, per_function: int, per_process: int) -> None:
        """Cache a new program, then evict the least recently used ones beyond the bounds:
        this function's, then the process's.  Eviction only drops the cache's references: a
        program still running, or a pending backward holding it, keeps it alive."""
        entry.used = next(_CLOCK)
        with _PROGRAMS_LOCK:
            _FUNCTIONS.add(self)
            self._cache[entry.key] = [*self._cache.get(entry.key, ()), entry]
            mine = sorted((e for es in self._cache.values() for e in es), key=_used)
            for old in mine[:max(0, len(mine) - per_function)]:
                self._evict(old)
            held = sorted(((f, e) for f in list(_FUNCTIONS) for es in f._cache.values()
                           for e in es), key=lambda fe: fe[1].used)
            for owner, old in held[:max(0, len(held) - per_process)]:
                owner._evict(old)

    def _evict(self, entry: _Entry) -> None:
        """Drop a program from the cache (with `_PROGRAMS_LOCK` held).  The latest one stays
        visible to `graph`, `stats()` and `source()` without its executables."""
        rest = [e for e in self._cache.get(entry.key, ()) if e is not entry]
        if rest:
            self._cache[entry.key] = rest
        else:
            self._cache.pop(entry.key, None)
        if self._last is entry:
            self._last = replace(entry, forward=_Code(entry.forward.source),
                                 backward=None if entry.backward is None
                                 else _Code(entry.backward.source))
        log.debug("neurenix.compile: %s: evicted its least recently used program",
                  self._name())

    def trace_only(self, *args: Any) -> _Entry:
        """Trace and build the program for `args` without running it or caching it: what
        `neurenix.export` reads (the graph, where each input comes from, what is updated).
        Step-dependent optimizer values are computed in the graph (`capture_steps`), so the
        program needs no Python between runs.  Nothing the function would change is
        changed."""
        tensors = arg_tensors(args)
        key = self._signature(args, call_device(self._device, self.module, tensors))
        return self._compile(key, args, capture_steps=True)

    def _compile_symbolic(self, key: tuple, args: tuple, tensors: list[Tensor]
                          ) -> tuple[_Entry | None, str | None]:
        """A program for every size of the call's dynamic dimensions, or None (static sizes
        then) when it has none, or, with the reason, when the function or the compiler
        cannot keep a size symbolic.  When the static compile then succeeds, the function
        compiles static programs only (`_give_up_dynamic`); when it fails too, the error was
        the user's (a shape mismatch), raised as eagerly."""
        if not get_target(self._backend_for(key[2])).capabilities.dynamic_shapes:
            return None, None
        while True:
            dims = self._dims(args, tensors)
            akey = abstract_key(key, dims)
            if akey is None:
                return None, None
            env, shapes = symbolic_shapes(tensors, dims)
            try:
                with shape_env(env):
                    entry = self._compile(akey, args, shapes=shapes)
                break
            except SpecializeSize as e:  # the trace needs that size: trace it static
                if not self._pin(e, dims, shapes):
                    return None, f"{type(e).__name__}: {e}"
            except Exception as e:  # noqa: BLE001 -- a static compile raises the user's errors
                return None, f"{type(e).__name__}: {e}"
        entry.guards.insert(0, shape_guard(env, shapes))
        entry.stats = dict(entry.stats, dynamic={
            "symbols": {s.name: {"lo": s.lo, "hi": s.hi, "traced": s.hint}
                        for s in env.symbols.values()},
            "shapes": [tuple(str(d) for d in shape) for shape in shapes],
            "guards": [str(g) for g in env.guards]})
        return entry, None

    def _pin(self, e: SpecializeSize, dims: dict, shapes: list[tuple]) -> bool:
        """Make the dimensions of symbol `e.name` static for this function from now on (the
        trace compared it with a constant and relied on the answer, `x + bias` broadcasting a
        batch of 4 against 4 features), logged at INFO; False when none is newly pinned
        (then the function gives up dynamic shapes rather than trace again)."""
        pinned = {(p, axis) for p, axis in dims
                  if getattr(shapes[p][axis], "terms", None) == (((e.name,), 1),)}
        if not pinned - self._dynamic.pinned:
            return False
        self._dynamic.pinned |= pinned
        self._abstract.clear()
        log.info("neurenix.compile: %s: %s static (%s)", self._name(),
                 ", ".join(f"dimension {a} of tensor argument {p}" for p, a in sorted(pinned)),
                 e)
        return True

    def _give_up_dynamic(self, why: str) -> None:
        """Compile static programs only from now on, saying why at INFO."""
        self._dynamic.failed = why
        self._abstract.clear()
        log.info("neurenix.compile: %s: compiling static shapes only: a dynamic size is not "
                 "supported here (%s)", self._name(), why)

    def _compile(self, key: tuple, args: tuple, capture_steps: bool = False,
                 shapes: list[tuple] | None = None) -> _Entry:
        """Trace `args` into a graph, then optimise and build it.  One trace runs at a time
        in the process (tracing swaps gradients and module state in and out); building runs
        outside that lock."""
        with _TRACE_LOCK:
            t0 = time.perf_counter()
            tracer = Tracer(self._name())
            state = TraceState(tracer, key[2])
            state.capture_steps = capture_steps
            names = self._arg_names(len(args))
            sym_args: list[Any] = []
            position = 0  # the args' tensors, nested ones flattened, are the first inputs
            for i, a in enumerate(args):
                symbols = []
                named = ([(str(key), v) for key, v in a.items()] if isinstance(a, Keywords)
                         else [(names[i], a)])
                for base, value in named:
                    for k, t in enumerate(arg_tensors((value,))):
                        name = base if isinstance(value, Tensor) else f"{base}_{k}"
                        symbols.append(state.register_arg(
                            t, state.fresh_name(name), position,
                            None if shapes is None else shapes[position]))
                        position += 1
                sym_args.append(replace_tensors(a, iter(symbols)))
            if self.module is not None:
                for name, p in self.module.named_parameters():
                    state.register(p, name, "param")
                for name, b in self.module.named_buffers():
                    state.register(b, name, "buffer")
            hyper = optimizer_settings()
            try:
                with tracing(state), user_calls() as called:
                    result = call_with(self.fn, sym_args)
                state.helpers = called
                leaves, treedef = flatten_outputs(result)
                out_nodes = [state.cut(state.node_of(t)) for t in leaves]
                aliases = _aliases(state, leaves)
                stored, stores = finish_stores(state)
                stored = [state.cut(n) for n in stored]
            finally:
                restore(state)  # the first run assigns the real gradients and state
            changed = undo_side_effects(state.snapshots) + undo_changed_settings(hyper)
            if changed:
                raise TraceError(f"neurenix.compile: {self._name()} changed Python state while "
                                 f"tracing ({'; '.join(changed)}); that would happen once, not on "
                                 f"every call. Keep such state in tensors (buffers), or change it "
                                 f"outside the compiled function (a scheduler's step() included)")
            check_nodes = [n for nodes, _ in state.checks for n in nodes]
            guarded = value_checks.guard_updates(
                state, out_nodes, get_target(self._backend_for(key[2])).device == "cpu")
            traced = tracer.finish(out_nodes + stored + check_nodes)
            sources = [state.sources[node.name] for node in traced.graph.inputs]
            trace_seconds = time.perf_counter() - t0
            names = [node.name for node in traced.graph.inputs]
            updates = [sources[names.index(name)] for name in traced.updates]
            # outputs a gradient flows back from (not detached, not computed under no_grad)
            active = [i for i, n in enumerate(out_nodes) if state.differentiable(n)]
            grad_positions = []
            stale: dict[int, str] = {}
            if not state.backward_called and active:
                stale = stale_outputs(state, out_nodes, active)
                grad_positions = [i for i, node in enumerate(traced.graph.inputs)
                                  if id(node) in state.leaves]
                if any(names[i] in traced.updates for i in grad_positions):
                    raise TraceError(f"neurenix.compile: {self._name()} updates a tensor that "
                                     f"requires grad in place and returns values to differentiate "
                                     f"later; call backward() inside the compiled function, or "
                                     f"update the tensor outside it")
            common = dict(input_dtypes=[n.type.dtype.np_type for n in traced.graph.inputs],
                          host=state.host, commits=state.commits,
                          guards=state.guards + self._guards(state, sources, args),
                          stores=stores, num_stored=len(stored),
                          checks=[(len(nodes), test) for nodes, test in state.checks],
                          num_checks=len(check_nodes), stale=stale)
            wrt = [traced.graph.inputs[i].name for i in grad_positions]
            common["grad_from"] = reaching_outputs(traced.graph, wrt, active) if wrt else []
        device = key[2]
        backend = self._backend_for(device)
        common["guards"] += switch_guards(device, self._backend)
        place = Placement(device, _runtime_of(backend), self._name(),
                          host_args=self._device is not None)
        donate = None
        if not wrt and (guarded or not check_nodes):
            # an updated tensor's old value is dead once the program has read it: the update
            # may be written into its memory (no fresh array per call, no copy back); with
            # value checks only where a failing check writes the old values back (`guarded`)
            first = len(leaves) + len(stored) + len(check_nodes)
            donate = {first + i: names.index(name) for i, name in enumerate(traced.updates)
                      if sources[names.index(name)][0] == "tensor"}
        built = compile_traced(traced.graph, wrt, len(leaves), backend, trace_seconds, active,
                               donate)
        common["aliases"] = aliases
        entry = _Entry(key, sources, built.forward, len(leaves), treedef, updates, built.graph,
                       built.stats, backward=built.backward,
                       backward_inputs=built.backward_inputs,
                       grad_sources=[sources[i] for i in grad_positions],
                       differentiable=built.differentiable, num_saved=built.num_saved,
                       backend=backend, place=place, input_names=names, **common)
        pipeline.report(self._name(), entry.stats)
        return entry

    def _backend_for(self, device: Device) -> str:
        """The target compiling this function's programs for `device` (asked on every
        compile: it follows `neurenix.backends`' switches)."""
        return backend_for(device, self._backend)

    def _guards(self, state: TraceState, sources: list[tuple[str, Any]],
                args: tuple) -> list[Guard]:
        """What the trace read besides its arguments, checked before every reuse: the state
        of every module it called, the tensors it reads by reference, and Python values the
        user's functions read from their closures and globals."""
        tensors = [ref for kind, ref in sources if kind == "tensor"]
        labels = [name for name, (kind, _) in state.sources.items() if kind == "tensor"]
        guards = [module_guard(state.modules.values(), {id(t) for t in tensors}),
                  tensor_guard(tensors, labels)]
        if self.module is None:
            guards.append(code_guard(self.fn, self._values_by_name(args)))
        users = [m for m in state.modules.values()
                 if not type(m).__module__.startswith("neurenix.")]
        guards += [code_guard(type(m).forward, owner=m) for m in users]
        # the user's other functions the trace ran (helpers): what they read from globals
        own = {getattr(getattr(f, "__func__", f), "__code__", None)
               for f in [self.fn, *(type(m).forward for m in users)]}
        guards += [helper_guard(code, namespace) for code, namespace in state.helpers.items()
                   if code not in own]
        return [g for g in guards if g is not None]

    def _values_by_name(self, args: tuple) -> dict[str, Any]:
        """The call's non-tensor arguments by parameter name (for attribute-chain guards)."""
        try:
            params = list(inspect.signature(self.fn).parameters)
        except (TypeError, ValueError):
            return {}
        values = dict(zip(params, args))
        if args and isinstance(args[-1], Keywords):
            values.update(args[-1])
        return {k: v for k, v in values.items() if not arg_tensors((v,))}

    def _arg_names(self, n: int) -> list[str]:
        target = self.module.forward if self.module is not None else self.fn
        try:
            names = [p for p in inspect.signature(target).parameters
                     if p not in ("self",)][:n]
        except (TypeError, ValueError):
            names = []
        names += [f"input{i}" for i in range(len(names), n)]
        taken = set()
        if self.module is not None:
            taken = {k for k, _ in self.module.named_parameters()} | \
                {k for k, _ in self.module.named_buffers()}
        return [f"{m}_input" if m in taken else m for m in names]

    # ---- running ----------------------------------------------------------------------------

    def _inputs(self, entry: _Entry, args: list[Tensor]) -> list[Any]:
        """The program's inputs in the form it takes: host arrays, or device buffers (those
        of tensors on the device passed as they are)."""
        place = entry.place
        arrays = []
        host: dict[int, tuple] = {}
        for i, ((kind, ref), dtype) in enumerate(zip(entry.sources, entry.input_dtypes)):
            if kind == "arg":
                arrays.append(place.take(args[ref], entry.input_names[i], "argument"))
            elif kind == "tensor":
                arrays.append(place.take(ref, entry.input_names[i]))
            elif kind == "seed":
                arrays.append(place.upload(np.asarray(next_seed(), dtype=np.int64)))
            elif kind == "host":
                k, j = ref
                if k not in host:
                    host[k] = tuple(entry.host[k]())
                arrays.append(place.value(np.asarray(host[k][j], dtype=dtype)))
            else:  # "grad": a gradient accumulated before the call
                target_kind, target = ref
                owner = target if target_kind == "tensor" else args[target]
                arrays.append(place.take(owner._grad, entry.input_names[i], "gradient"))
        return arrays

    def _run(self, entry: _Entry, args: list[Tensor]) -> Any:
        """Run the compiled program; `args` are the call's tensors, nested ones flattened."""
        place = entry.place
        inputs = self._inputs(entry, args)
        if place.on_device:
            results = entry.forward.run_device(inputs)
        else:
            results = entry.forward.run(inputs)
        n = entry.num_outputs
        stored = results[n:n + entry.num_stored]
        n += entry.num_stored
        if entry.num_checks:  # eager's errors, before any writes
            checked = [place.host(r) for r in results[n:n + entry.num_checks]]
            value_checks.run(entry.checks, checked, 0)
            n += entry.num_checks
        for commit in entry.commits:
            commit()
        outs = [place.wrap(a) for a in results[:entry.num_outputs]]
        for (kind, ref), value in zip(entry.updates, results[n:n + len(entry.updates)]):
            if kind == "tensor":
                place.assign(ref, value)  # a fresh buffer of the program's: no copy needed
            else:  # an argument written in place: the caller's array (and its views) change
                place.write_argument(args[ref], value)
        for store in entry.stores:
            if store.output is None:
                value = None
            elif store.kind == "item":
                value = place.wrap(stored[store.output])
            else:
                kind, ref = store.target
                owner = ref if kind == "tensor" else args[ref]
                value = place.wrap_for(stored[store.output], owner)
            if store.kind == "item":
                store.target[store.key] = value
            elif store.target[0] == "tensor":
                store.target[1]._grad = value
            else:
                args[store.target[1]]._grad = value
        if entry.backward is not None:
            saved = results[n + len(entry.updates):]
            self._attach_backward(entry, args, inputs, results, saved, outs)
        for i, (kind, ref) in entry.aliases:  # outputs that are inputs, or repeat an output
            if kind == "same":
                outs[i] = outs[ref]
                continue
            source, base, ops, grad = ref if kind == "view" else (kind, ref, (), True)
            t = args[base] if source == "arg" else base
            if t.device != outs[i].device:  # a host input of a program on a device
                continue
            with contextlib.nullcontext() if grad else no_grad():
                for op, attrs in ops:  # a view of an input: taken again, of the caller's
                    t = apply(op, t, **attrs)  # tensor (a detached one under no_grad)
            outs[i] = t
        return unflatten_outputs(entry.treedef, outs)

    def _attach_backward(self, entry, args, inputs, results, saved, outs) -> None:
        """One autograd node for this call: its own saved values, inputs and gradient
        targets (the call's arguments, not the first call's), as an eager node has."""
        diff = entry.differentiable
        place = entry.place
        targets = tuple(ref if kind == "tensor" else args[ref]
                        for kind, ref in entry.grad_sources)
        # a dynamic program's backward may have no input carrying a symbol (a mean's
        # backward reads one scalar): it gets this call's sizes, bound from the forward's
        program = getattr(entry.backward, "program", None)
        sizes = None
        if getattr(program, "symbols", ()):
            sizes = entry.forward.program.bind_symbols([a.shape for a in inputs])

        def backward_fn(grads: list[Tensor | None]) -> list[Tensor | None]:
            for slot, g in zip(diff, grads):
                if g is not None and slot in entry.stale:
                    raise RuntimeError(entry.stale[slot])
            cotangents = {}
            for slot, g in zip(diff, grads):
                cotangents[slot] = place.cotangent(g) if g is not None else \
                    place.zeros(results[slot])
            arrays = []
            for kind, index in entry.backward_inputs:
                if kind == "saved":
                    arrays.append(saved[index])
                elif kind == "input":
                    arrays.append(inputs[index])
                elif index in cotangents:
                    arrays.append(cotangents[index])
                else:
                    arrays.append(place.zeros(results[index]))
            if place.on_device:
                grads_out = entry.backward.run_device(arrays, sizes) if sizes \
                    else entry.backward.run_device(arrays)
            else:
                grads_out = entry.backward.run(arrays, sizes) if sizes \
                    else entry.backward.run(arrays)
            # the program's fresh arrays: a leaf's first gradient takes them without a copy
            given = {out for out, g in zip(diff, grads) if g is not None}
            return [mark_fresh(place.wrap_for(a, t)) if given & reach else None
                    for a, t, reach in zip(grads_out, targets, entry.grad_from)]

        node = autograd.FunctionNode("compiled_backward", targets, len(diff), backward_fn)
        for slot_index, out_index in enumerate(diff):
            t = outs[out_index]
            t.requires_grad = True
            t._node = autograd.OutputNode(node, slot_index)

    def _verify(self, args: tuple, out: Any, entry: _Entry) -> None:
        if entry.updates or entry.stores:
            log.warning("neurenix.compile verify %s: skipped, the function updates state "
                        "(parameters, buffers, gradients) and running it again eagerly would "
                        "update it twice", self._name())
            self.last_verification = None
            return
        with no_grad():
            expected = call_with(self.fn, args)
        got, _ = flatten_outputs(out)
        want, _ = flatten_outputs(expected)
        errors = [float(np.max(np.abs(g._host().astype(np.float64) - w._host())))
                  if g.numel() else 0.0 for g, w in zip(got, want)]
        self.last_verification = errors
        log.warning("neurenix.compile verify %s: max abs error per output %s", self._name(),
                    ", ".join(f"{e:.3g}" for e in errors))


def compile(model: Any, *, device: Any = None, dynamic: Any = None,  # noqa: A001
            verify: bool = False, backend: str | None = None,
            recompile_limit: int | None = None) -> Compiled:
    """Compile a Module or a function of tensors; returns a callable with the same signature.

    Each new input signature is traced and compiled once; `verify=True` also runs eagerly and
    reports the largest difference per output.  Compiling more than `recompile_limit` programs
    (default `NEURENIX_RECOMPILE_LIMIT`, else 8) logs one warning.  A function may be a whole
    training step — forward, loss, `backward()` and `optimizer.step()` — which then runs as one
    program (see `neurenix.compilation.trace_effects`).  `dynamic` says which sizes one program
    serves (`neurenix.compilation.dynamic`): None (default) makes a dimension dynamic once it
    changes size, True the leading dimension of every tensor argument from the first call,
    a dict `{"x": {0: (lo, hi)}}` the dimensions named, False none.
    """
    return Compiled(model, device=device, verify=verify, backend=backend,
                    recompile_limit=recompile_limit, dynamic=dynamic)


compile_hook.register(compile)  # fused optimizer steps and small eager losses use it


def program_cache_bounds() -> tuple[int, int]:
    """How many programs stay in memory (per compiled function, per process):
    `NEURENIX_PROGRAM_CACHE` = "TOTAL" (per function: the smaller of TOTAL and 32) or
    "TOTAL,PER_FUNCTION", positive integers; 32 and 256 without it.  Read at every compile."""
    text = os.environ.get("NEURENIX_PROGRAM_CACHE", "").strip()
    if not text:
        return PROGRAMS_PER_FUNCTION, PROGRAMS_PER_PROCESS
    parts = text.split(",")
    try:
        numbers = [int(p) for p in parts]
    except ValueError:
        numbers = []
    if len(numbers) != len(parts) or len(numbers) > 2 or min(numbers, default=0) < 1:
        raise ValueError(f"NEURENIX_PROGRAM_CACHE must be TOTAL or TOTAL,PER_FUNCTION "
                         f"(positive integers), got {text!r}")
    total = numbers[0]
    return (numbers[1] if len(numbers) == 2 else min(total, PROGRAMS_PER_FUNCTION)), total


def _env_int(name: str, default: int) -> int:
    """A positive integer from the environment variable `name` (`default` when unset)."""
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    if not text.isdigit() or int(text) < 1:
        raise ValueError(f"{name} must be a positive integer, got {text!r}")
    return int(text)


def _global_name(compiled: Compiled) -> tuple[str, str] | None:
    """(module, qualified name) of `compiled` when its function's module-level name holds
    `compiled` itself (a decorated function), else None."""
    module = getattr(compiled.fn, "__module__", None)
    qualname = getattr(compiled.fn, "__qualname__", "")
    if module is None or "<locals>" in qualname or module not in sys.modules:
        return None
    try:
        found = _compiled_global(module, qualname)
    except (AttributeError, ImportError, TypeError):
        return None
    return (module, qualname) if found is compiled else None


def _compiled_global(module: str, qualname: str) -> Compiled:
    """The compiled function `module.qualname` (unpickling a decorated function)."""
    obj: Any = importlib.import_module(module)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, Compiled):
        raise TypeError(f"unpickling neurenix.compile({qualname}): {module}.{qualname} is no "
                        f"longer a compiled function")
    return obj


def _check_picklable(fn: Callable, name: str) -> None:
    """Raise a TypeError naming `fn` when pickle cannot save it: pickle saves a function by
    reference (its module and qualified name), which a local function or a lambda lacks."""
    if not isinstance(fn, types.FunctionType):
        return
    try:
        pickle.dumps(fn)
    except (pickle.PicklingError, AttributeError, TypeError) as e:
        qualname = getattr(fn, "__qualname__", name)
        if "<locals>" in qualname:
            why = f"it is a local function ({qualname}, defined inside another function)"
        elif fn.__name__ == "<lambda>":
            why = "it is a lambda"
        else:
            why = f"it cannot be found as {fn.__module__}.{qualname} ({e})"
        raise TypeError(f"cannot pickle neurenix.compile({name}): pickle saves a function by "
                        f"reference (its module and qualified name), and {why}.  Define the "
                        f"function at module level, or pickle what it uses (the model, the "
                        f"optimizer) and compile the function again after loading; compiled "
                        f"programs themselves are never pickled.") from e


def _used(entry: _Entry) -> int:
    return entry.used


def _explicit_device(device: Any, backend: str | None) -> Device | None:
    """The device `compile(device=, backend=)` names (None: decided per call); a backend
    generating code for another device than `device` raises ValueError naming both."""
    if device is None:
        return None if backend is None else device_of_backend(backend)
    dev = as_device(device, check=True)
    if backend is not None:
        kind = get_target(backend).device
        if kind != dev.type.value:
            fitting = [n for n in target_names() if get_target(n).device == dev.type.value]
            raise ValueError(f"compile: backend {backend!r} generates code for {kind}, not for "
                             f"device {dev.name}; backends for {dev.name}: {fitting}")
    return dev


def _runtime_of(backend: str) -> Any:
    """The runtime module of target `backend` (None for the reference evaluator)."""
    target = get_target(backend)
    return target.runtime_module() if target.runtime is not None else None


def _matching(entries: list[_Entry], tensors: list[Tensor]) -> _Entry | None:
    """The first program whose guards all hold for this call."""
    for entry in entries:
        if all(g.read(tensors) == g.value for g in entry.guards):
            return entry
    return None
