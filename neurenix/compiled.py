"""`neurenix.compile`: trace a module or function per input signature, compile, cache, run.

A call looks up its signature (shapes, dtypes and grad-ness of tensor arguments, other
arguments' values, train/eval, grad mode, the parameters' shapes).  A new signature is traced
into a graph, optimised and compiled; a known one runs its program directly.  When gradients
are needed, forward and backward are compiled as one joint graph, partitioned, and the
forward's outputs get one autograd node whose backward runs the compiled backward program.
"""
from __future__ import annotations

import hashlib
import inspect
import itertools
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from neurenix.compiler import Graph, evaluate, pipeline
from neurenix.compiler.trace import TraceError, Tracer

from . import autograd
from .device import CPU, as_device
from .nn.module import Module
from .optim.optimizer import optimizer_settings, undo_changed_settings
from .tensor import Tensor
from .trace_effects import Guard, Store, finish_stores, restore
from .trace_guards import code_guard, module_guard, plain_key, tensor_guard, undo_side_effects
from .tracing import ACTIVE, TraceState, tracing

log = logging.getLogger("neurenix.compile")

__all__ = ["compile", "Compiled", "TraceError"]

# In-memory programs are bounded (least recently used first out): per compiled function and
# per process.  NEURENIX_PROGRAM_CACHE="TOTAL" or "TOTAL,PER_FUNCTION" changes the bounds.
PROGRAMS_PER_FUNCTION = 32
PROGRAMS_PER_PROCESS = 256
# A function compiling more programs than this logs one warning (NEURENIX_RECOMPILE_LIMIT, or
# compile(..., recompile_limit=)); it goes on compiling.  PyTorch's recompile_limit is also 8.
RECOMPILE_LIMIT = 8

_CLOCK = itertools.count(1)  # every use of a program stamps it: the LRU order
_PROGRAMS_LOCK = threading.Lock()  # held while any Compiled's `_cache` changes
_FUNCTIONS: weakref.WeakSet[Compiled] = weakref.WeakSet()  # those holding programs
# one trace at a time in the process: a trace swaps gradients and module state in and out
_TRACE_LOCK = threading.Lock()


@dataclass
class _Entry:
    """Everything compiled for one signature."""

    key: tuple
    # per graph input: ("arg", i) | ("tensor", t) | ("seed", _) | ("host", (k, j)) |
    # ("grad", target): see neurenix.trace_effects
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
    # value checks (neurenix.value_checks): how many outputs each test reads, and the test
    checks: list[tuple[int, Callable[..., None]]] = field(default_factory=list)
    num_checks: int = 0
    backward: Any = None
    backward_inputs: list[tuple[str, int]] = field(default_factory=list)
    # where each call finds the tensors its backward gives gradients to: sources as above
    grad_sources: list[tuple[str, Any]] = field(default_factory=list)
    differentiable: list[int] = field(default_factory=list)
    num_saved: int = 0
    used: int = 0  # the `_CLOCK` stamp of its latest use


@dataclass
class _Pending:
    """The lock that makes concurrent first calls of one signature compile once."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    waiting: int = 0  # threads holding or waiting for `lock`


@dataclass
class _Code:
    """What an evicted latest program still shows (`Compiled.source()`): its code text."""

    source: str


class Compiled:
    """The callable `neurenix.compile` returns; also shows what it compiled.

    `graph` is the optimised graph of the latest signature, `source()` its generated code,
    `stats()` node counts per pass, kernels, memory and compile times.
    """

    def __init__(self, fn: Callable, device: Any = None, verify: bool = False,
                 backend: str | None = None, recompile_limit: int | None = None) -> None:
        if not callable(fn):
            raise TypeError(f"compile: expected a Module or a callable, got {type(fn).__name__}")
        self.fn = fn
        self.module = fn if isinstance(fn, Module) else None
        self.device = CPU if device is None else as_device(device, check=True)
        self.verify = verify
        self.backend = backend or pipeline.default_backend()
        if self.backend not in pipeline.BACKENDS:
            raise ValueError(f"compile: backend must be one of {pipeline.BACKENDS}, got "
                             f"{self.backend!r}")
        if recompile_limit is not None and (not isinstance(recompile_limit, int)
                                            or recompile_limit < 1):
            raise ValueError(f"compile: recompile_limit must be a positive integer, got "
                             f"{recompile_limit!r}")
        self.recompile_limit = recompile_limit
        # per signature, its programs (one per guard state); replaced, never changed in place,
        # so that a call can read it without a lock
        self._cache: dict[tuple, list[_Entry]] = {}
        self._last: _Entry | None = None
        self._pending: dict[tuple, _Pending] = {}  # signatures being compiled
        self._pending_lock = threading.Lock()
        self._compiles = 0
        self._warned = False
        self.last_verification: list[float] | None = None

    # ---- introspection ----------------------------------------------------------------------

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
        """Nodes before/after each pass, kernels, bytes naive/planned/lower bound, timings."""
        return dict(self._last.stats) if self._last else {}

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
        if ACTIVE.state is not None:  # called inside another trace: part of that graph
            return self.fn(*args, **kwargs)
        if kwargs:
            args = self._bind(args, kwargs)
        key = self._signature(args)
        tensors = _arg_tensors(args)
        entries = self._cache.get(key)
        entry = _matching(entries, tensors) if entries else None
        if entry is None:
            entry = self._compile_once(key, args, tensors)
        entry.used = next(_CLOCK)
        self._last = entry
        out = self._run(entry, tensors)
        if self.verify:
            self._verify(args, out, entry)
        return out

    def _name(self) -> str:
        return type(self.fn).__name__ if self.module is not None else getattr(
            self.fn, "__name__", "function")

    def _bind(self, args: tuple, kwargs: dict) -> tuple:
        """The call's arguments in positional order (defaults filled in), then, for
        keyword-only and `**kwargs` parameters, one `_Keywords` dict."""
        target = self.module.forward if self.module is not None else self.fn
        bound = inspect.signature(target).bind(*args, **kwargs)
        bound.apply_defaults()
        return tuple(bound.args) + ((_Keywords(bound.kwargs),) if bound.kwargs else ())

    def _signature(self, args: tuple) -> tuple:
        """The call's key: its arguments (tensors by shape, dtype and requires_grad, other
        values by content) and grad mode.  Module state is checked by the entries' guards."""
        parts: list[Any] = []
        for i, a in enumerate(args):
            if type(a) is Tensor or isinstance(a, Tensor):
                parts.append(_describe(a))
                continue
            leaves = _arg_tensors((a,))
            if leaves:  # tensors nested in a tuple/list/dict (an LSTM's (h0, c0))
                parts.append(("tree", _structure(a, i), tuple(_describe(t) for t in leaves)))
            else:
                parts.append(("value", value_key(a, i)))
        return (tuple(parts), autograd.is_grad_enabled())

    # ---- compiling --------------------------------------------------------------------------

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
                    bounds = program_cache_bounds()
                    self._say_why(key, entries, tensors)
                    entry = self._compile(key, args)
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
            why = _explain_guards(entries[-1], tensors)
        else:
            last = self._last
            why = _explain(last.key, key) if last is not None else "new signature"
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

    def _compile(self, key: tuple, args: tuple) -> _Entry:
        """Trace `args` into a graph, then optimise and build it.  One trace runs at a time
        in the process (tracing swaps gradients and module state in and out); building runs
        outside that lock."""
        with _TRACE_LOCK:
            t0 = time.perf_counter()
            tracer = Tracer(self._name())
            state = TraceState(tracer)
            names = self._arg_names(len(args))
            sym_args: list[Any] = []
            position = 0  # the args' tensors, nested ones flattened, are the first inputs
            for i, a in enumerate(args):
                symbols = []
                named = ([(str(key), v) for key, v in a.items()] if isinstance(a, _Keywords)
                         else [(names[i], a)])
                for base, value in named:
                    for k, t in enumerate(_arg_tensors((value,))):
                        name = base if isinstance(value, Tensor) else f"{base}_{k}"
                        symbols.append(state.register_arg(t, state.fresh_name(name), position))
                        position += 1
                sym_args.append(_replace_tensors(a, iter(symbols)))
            if self.module is not None:
                for name, p in self.module.named_parameters():
                    state.register(p, name, "param")
                for name, b in self.module.named_buffers():
                    state.register(b, name, "buffer")
            hyper = optimizer_settings()
            try:
                with tracing(state):
                    result = _call(self.fn, sym_args)
                leaves, treedef = flatten_outputs(result)
                out_nodes = [state.cut(state.node_of(t)) for t in leaves]
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
            traced = tracer.finish(out_nodes + stored + check_nodes)
            sources = [state.sources[node.name] for node in traced.graph.inputs]
            trace_seconds = time.perf_counter() - t0
            names = [node.name for node in traced.graph.inputs]
            updates = [sources[names.index(name)] for name in traced.updates]
            # outputs a gradient flows back from (not detached, not computed under no_grad)
            active = [i for i, n in enumerate(out_nodes) if state.differentiable(n)]
            grad_positions = []
            if not state.backward_called and active:
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
                          num_checks=len(check_nodes))
            wrt = [traced.graph.inputs[i].name for i in grad_positions]
        built = compile_traced(traced.graph, wrt, len(leaves), self.backend, trace_seconds,
                               active)
        entry = _Entry(key, sources, built.forward, len(leaves), treedef, updates, built.graph,
                       built.stats, backward=built.backward,
                       backward_inputs=built.backward_inputs,
                       grad_sources=[sources[i] for i in grad_positions],
                       differentiable=built.differentiable, num_saved=built.num_saved,
                       **common)
        pipeline.report(self._name(), entry.stats)
        return entry

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
        guards += [code_guard(type(m).forward, owner=m) for m in state.modules.values()
                   if not type(m).__module__.startswith("neurenix.")]
        return [g for g in guards if g is not None]

    def _values_by_name(self, args: tuple) -> dict[str, Any]:
        """The call's non-tensor arguments by parameter name (for attribute-chain guards)."""
        try:
            params = list(inspect.signature(self.fn).parameters)
        except (TypeError, ValueError):
            return {}
        values = dict(zip(params, args))
        if args and isinstance(args[-1], _Keywords):
            values.update(args[-1])
        return {k: v for k, v in values.items() if not _arg_tensors((v,))}

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

    def _inputs(self, entry: _Entry, args: list[Tensor]) -> list[np.ndarray]:
        from .random import next_seed
        arrays = []
        host: dict[int, tuple] = {}
        for (kind, ref), dtype in zip(entry.sources, entry.input_dtypes):
            if kind == "arg":
                arrays.append(args[ref]._data)
            elif kind == "tensor":
                arrays.append(ref._data)
            elif kind == "seed":
                arrays.append(np.asarray(next_seed(), dtype=np.int64))
            elif kind == "host":
                k, j = ref
                if k not in host:
                    host[k] = tuple(entry.host[k]())
                arrays.append(np.asarray(host[k][j], dtype=dtype))
            else:  # "grad": a gradient accumulated before the call
                target_kind, target = ref
                owner = target if target_kind == "tensor" else args[target]
                arrays.append(owner._grad._data)
        return arrays

    def _run(self, entry: _Entry, args: list[Tensor]) -> Any:
        """Run the compiled program; `args` are the call's tensors, nested ones flattened."""
        inputs = self._inputs(entry, args)
        results = entry.forward.run(inputs)
        n = entry.num_outputs
        stored = results[n:n + entry.num_stored]
        n += entry.num_stored
        for count, test in entry.checks:  # eager's errors, before any state is written
            test(*results[n:n + count])
            n += count
        for commit in entry.commits:
            commit()
        outs = [Tensor._wrap(a) for a in results[:entry.num_outputs]]
        for (kind, ref), value in zip(entry.updates, results[n:n + len(entry.updates)]):
            if kind == "tensor":
                ref._data = value  # a fresh array of the program's: no copy needed
                ref._version += 1
            else:  # an argument written in place: the caller's array (and its views) change
                _write_argument(args[ref], value)
        for store in entry.stores:
            value = None if store.output is None else Tensor._wrap(stored[store.output])
            if store.kind == "item":
                store.target[store.key] = value
            elif store.target[0] == "tensor":
                store.target[1]._grad = value
            else:
                args[store.target[1]]._grad = value
        if entry.backward is not None:
            saved = results[n + len(entry.updates):]
            self._attach_backward(entry, args, inputs, results, saved, outs)
        return _unflatten(entry.treedef, outs)

    def _attach_backward(self, entry, args, inputs, results, saved, outs) -> None:
        """One autograd node for this call: its own saved values, inputs and gradient
        targets (the call's arguments, not the first call's), as an eager node has."""
        diff = entry.differentiable

        def backward_fn(grads: list[Tensor | None]) -> list[Tensor | None]:
            cotangents = {}
            for slot, g in zip(diff, grads):
                cotangents[slot] = g._data if g is not None else np.zeros_like(results[slot])
            arrays = []
            for kind, index in entry.backward_inputs:
                if kind == "saved":
                    arrays.append(saved[index])
                elif kind == "input":
                    arrays.append(inputs[index])
                else:
                    arrays.append(cotangents.get(index, np.zeros_like(results[index])))
            return [Tensor._wrap(a) for a in entry.backward.run(arrays)]

        targets = tuple(ref if kind == "tensor" else args[ref]
                        for kind, ref in entry.grad_sources)
        node = autograd.FunctionNode("compiled_backward", targets, len(diff), backward_fn)
        for slot_index, out_index in enumerate(diff):
            t = outs[out_index]
            t.requires_grad = True
            t._node = autograd.OutputNode(node, slot_index)

    def _verify(self, args: tuple, out: Any, entry: _Entry) -> None:
        from .autograd import no_grad
        if entry.updates or entry.stores:
            log.warning("neurenix.compile verify %s: skipped, the function updates state "
                        "(parameters, buffers, gradients) and running it again eagerly would "
                        "update it twice", self._name())
            self.last_verification = None
            return
        with no_grad():
            expected = _call(self.fn, args)
        got, _ = flatten_outputs(out)
        want, _ = flatten_outputs(expected)
        errors = [float(np.max(np.abs(g._data.astype(np.float64) - w._data)))
                  if g.numel() else 0.0 for g, w in zip(got, want)]
        self.last_verification = errors
        log.warning("neurenix.compile verify %s: max abs error per output %s", self._name(),
                    ", ".join(f"{e:.3g}" for e in errors))


def compile(model: Any, *, device: Any = None, dynamic: bool = False,  # noqa: A001
            verify: bool = False, backend: str | None = None,
            recompile_limit: int | None = None) -> Compiled:
    """Compile a Module or a function of tensors; returns a callable with the same signature.

    Each new input signature is traced and compiled once; `verify=True` also runs eagerly and
    reports the largest difference per output.  Compiling more than `recompile_limit` programs
    (default `NEURENIX_RECOMPILE_LIMIT`, else 8) logs one warning.  A function may be a whole
    training step — forward, loss, `backward()` and `optimizer.step()` — which then runs as one
    program (see `neurenix.trace_effects`).  `dynamic=True` (shape-polymorphic programs) is not
    supported yet: every new shape compiles its own specialised program.
    """
    if dynamic:
        raise ValueError("compile: dynamic=True is not supported yet; each new input shape "
                         "compiles (and caches) its own specialised program")
    return Compiled(model, device=device, verify=verify, backend=backend,
                    recompile_limit=recompile_limit)


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


def _used(entry: _Entry) -> int:
    return entry.used


@dataclass
class Built:
    """What compiling one traced graph gives: the programs and how to wire them."""

    graph: Graph  # the optimised graph (for training: the forward program's graph)
    forward: Any
    stats: dict
    backward: Any = None
    backward_inputs: list[tuple[str, int]] = field(default_factory=list)
    differentiable: list[int] = field(default_factory=list)
    num_saved: int = 0


def compile_traced(traced: Graph, wrt: list[str], num_outputs: int, backend: str,
                   trace_seconds: float, active: list[int] | None = None) -> Built:
    """Optimise (and with `wrt`, differentiate and partition) a traced graph and build its
    programs; on the disk cache's hit, keyed by the traced graph itself, skip all of that.
    `active` lists the outputs a gradient flows back from (default: every floating one)."""
    start = time.perf_counter()
    record_key = None
    if backend != "reference":
        from neurenix.runtime.cpu import host_fingerprint

        from . import compile_cache
        record_key = compile_cache.key_for(traced, f"{backend}:traced:{num_outputs}:"
                                           + ",".join(wrt) + f":{active}", host_fingerprint())
        built = _load_built(record_key)
        if built is not None:
            seconds = {"trace_and_passes": trace_seconds,
                       "cache_load": time.perf_counter() - start}
            built.stats = dict(built.stats, seconds=seconds, cache="hit")
            return built
    if wrt:
        split, records = pipeline.differentiate(traced, wrt, num_outputs, active)
        passes = time.perf_counter() - start
        forward, fbuild = build_executable(split.forward, backend)
        backward, bbuild = build_executable(split.backward, backend)
        stats = pipeline.summarize(traced, records, fbuild, trace_seconds + passes,
                                   backward=bbuild)
        built = Built(split.forward, forward, stats, backward, split.backward_inputs,
                      split.differentiable, split.num_saved)
    else:
        graph, records = pipeline.optimize(traced)
        passes = time.perf_counter() - start
        forward, build = build_executable(graph, backend)
        stats = pipeline.summarize(traced, records, build, trace_seconds + passes)
        built = Built(graph, forward, stats)
    if record_key is not None:
        _store_built(record_key, built)
    return built


def _store_built(key: str, built: Built) -> None:
    """Remember which programs (by their own cache keys) a traced graph compiled to, with the
    optimised graph (as text) and the stats, so that a hit needs no passes."""
    from . import compile_cache
    keys = [getattr(built.forward, "cache_key", None),
            getattr(built.backward, "cache_key", None) if built.backward else ""]
    if None in keys:
        return
    try:
        record, arrays = compile_cache.built_record(
            built.graph, built.stats, keys, built.backward_inputs, built.differentiable,
            built.num_saved)
    except (TypeError, ValueError) as e:  # something not plain data: not cached
        log.debug("neurenix compile cache: not storing %s: %s", key, e)
        return
    compile_cache.store(key, record, arrays=arrays)


def _load_built(key: str) -> Built | None:
    """The programs a traced graph compiled to, from the disk cache (None on any miss; a
    malformed record is discarded, to be rebuilt)."""
    from . import compile_cache
    entry = compile_cache.load(key)
    if entry is None:
        return None
    try:
        record = compile_cache.read_built(entry)
    except Exception as e:  # noqa: BLE001 - whatever is wrong with it, it is rebuilt
        compile_cache.discard(key, f"a malformed record ({type(e).__name__}: {e})")
        return None
    exes = []
    for program_key in record["programs"]:
        loaded = _load_program(program_key) if program_key else None
        if program_key and loaded is None:
            return None
        exes.append(loaded[0] if loaded else None)
    return Built(record["graph"], exes[0], record["stats"], exes[1],
                 record["backward_inputs"], record["differentiable"], record["num_saved"])


class ReferenceExecutable:
    """Runs a graph with the NumPy reference evaluator (the 'reference' backend)."""

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.source = str(graph)

    def run(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        # copies: an output may be an input or a constant, which the caller must not alias
        return [np.array(a, copy=True) for a in evaluate(self.graph, inputs)]


def build_executable(graph: Graph, backend: str) -> tuple[Any, dict]:
    """Build (or fetch from the disk cache) an executable for an optimised graph.  A cached
    program that cannot be loaded is built again once; a new build that cannot be loaded
    raises a RuntimeError naming the graph and the cause."""
    if backend == "reference":
        artifact, info = pipeline.build(graph, backend)
        return load(artifact), info
    from neurenix.runtime.cpu import CpuExecutable, host_id

    from . import compile_cache
    key = compile_cache.key_for(graph, backend, host_id())
    loaded = _load_program(key)
    if loaded is not None:
        exe, info = loaded
        return exe, dict(info, cache="hit")
    start = time.perf_counter()
    program, info = pipeline.build(graph, backend)
    _load_pool(program)
    try:
        exe = CpuExecutable(program)
    except Exception as e:
        raise RuntimeError(f"neurenix.compile: the program compiled for graph {graph.name!r} "
                           f"cannot be loaded: {type(e).__name__}: {e}") from e
    exe.cache_key = key
    info["stages"]["llvm_compile"] = time.perf_counter() - start - sum(info["stages"].values())
    compile_cache.store_program(key, program, info, exe.object_code, exe.library)
    return exe, dict(info, cache="miss")


def _load_program(key: str) -> tuple[Any, dict] | None:
    """A cached program's executable (its shared library or object code, no LLVM compile)
    and its build info, or None when the cache has no usable entry for `key` (a malformed
    one, or one whose code cannot be loaded, is discarded, to be rebuilt).  The entry was
    authenticated before any of it was parsed; its library is loaded only after that."""
    from neurenix.runtime.cpu import CpuExecutable

    from . import compile_cache
    entry = compile_cache.load(key)
    if entry is None:
        return None
    try:
        program, info, object_code, library = compile_cache.read_program(entry)
    except Exception as e:  # noqa: BLE001 - whatever is wrong with it, it is rebuilt
        compile_cache.discard(key, f"a malformed program ({type(e).__name__}: {e})")
        return None
    _load_pool(program)
    try:
        exe = CpuExecutable(program, object_code=object_code, library=library)
    except Exception as e:  # noqa: BLE001 - rebuilt from the graph by the caller
        log.warning("neurenix.compile: a cached program cannot be loaded (%s: %s); building "
                    "it again", type(e).__name__, e)
        compile_cache.discard(key, "its code cannot be loaded")
        return None
    exe.cache_key = key
    if library is not None and exe.library is not library:
        log.warning("neurenix.compile: a cached program's shared library cannot be loaded; "
                    "it was built again from the program's source")
        compile_cache.store_program(key, program, info, exe.object_code, exe.library)
    return exe, info


def _load_pool(program: Any) -> None:
    """Load the runtime's thread pool, which a threaded program runs on, from the disk cache
    (so that a new process running cached programs needs no LLVM for it either), or build it
    and store it there; once per process."""
    from neurenix.runtime import cpu

    if not program.metadata.get("threaded") or cpu.pool_loaded():
        return
    from . import compile_cache
    key = compile_cache.library_key("thread pool", cpu.host_fingerprint())
    entry = compile_cache.load(key)
    library = None
    if entry is not None:
        try:
            library = compile_cache.read_library(entry)
        except compile_cache.EntryError as e:
            compile_cache.discard(key, f"a malformed library entry ({e})")
    built = cpu.process_pool(library=library).library
    if built is not None and built is not library:
        compile_cache.store_library(key, built)


def load(artifact: Any) -> Any:
    """An executable for what pipeline.build produced: a graph or a CPU Program."""
    if isinstance(artifact, Graph):
        return ReferenceExecutable(artifact)
    from neurenix.runtime.cpu import CpuExecutable
    return CpuExecutable(artifact)


def _describe(t: Tensor) -> tuple:
    data = t._data
    return ("tensor", data.shape if data is not None else tuple(t.shape), t._dtype.name,
            t.requires_grad)


def _arg_tensors(args: Any) -> list[Tensor]:
    """The tensors of the arguments in order, also those nested in tuples, lists and dicts:
    each is one input of the compiled graph."""
    if type(args) is tuple and all(type(a) is Tensor for a in args):
        return list(args)  # the common call: tensors only
    if isinstance(args, Tensor):
        return [args]
    if isinstance(args, (tuple, list)):
        return [t for item in args for t in _arg_tensors(item)]
    if isinstance(args, dict):
        return [t for item in args.values() for t in _arg_tensors(item)]
    return []


def _structure(value: Any, position: int) -> Any:
    """A hashable description of an argument with its tensors left out."""
    if isinstance(value, Tensor):
        return "T"
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(_structure(v, position) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((value_key(k, position), _structure(v, position))
                              for k, v in value.items()))
    return ("value", value_key(value, position))


def value_key(value: Any, position: int) -> Any:
    """A key for a non-tensor argument that is equal exactly when the values are: plain
    values by type and value, NumPy arrays by dtype, shape and a digest of their bytes,
    containers item by item, other hashable objects by their own equality (functions and
    modules by identity).  Anything else is refused: keying it by `repr` would let two
    different values share one program."""
    key = plain_key(value)
    if key is not None:
        return key
    if isinstance(value, np.ndarray):
        digest = hashlib.blake2b(np.ascontiguousarray(value).tobytes(), digest_size=16)
        return ("ndarray", value.dtype.str, value.shape, digest.hexdigest())
    if isinstance(value, (tuple, list)):
        return (type(value).__name__, tuple(value_key(v, position) for v in value))
    if isinstance(value, dict):
        return ("dict", tuple((value_key(k, position), value_key(v, position))
                              for k, v in value.items()))
    try:
        hash(value)
    except TypeError:
        raise TypeError(f"compile: argument {position} is a {type(value).__name__}, which "
                        f"cannot key a compiled program; pass tensors, numbers, strings, NumPy "
                        f"arrays, or tuples, lists and dicts of them") from None
    return ("object", type(value).__qualname__, value)


def _replace_tensors(value: Any, symbols: Any) -> Any:
    """`value` with each tensor replaced by the next of `symbols` (same nesting)."""
    if isinstance(value, Tensor):
        return next(symbols)
    if isinstance(value, (tuple, list)):
        items = [_replace_tensors(v, symbols) for v in value]
        if hasattr(value, "_fields"):  # a namedtuple
            return type(value)(*items)
        return type(value)(items)
    if isinstance(value, dict):
        items = {k: _replace_tensors(v, symbols) for k, v in value.items()}
        return _Keywords(items) if isinstance(value, _Keywords) else items
    return value


def _write_argument(target: Tensor, value: np.ndarray) -> None:
    """Write a compiled call's new value of an argument into the caller's tensor in place."""
    if target._data.flags.writeable:
        np.copyto(target._data, value)
    else:  # a broadcast view: the tensor takes a private array, as an eager write does
        target._data = value
    target._version += 1


class _Keywords(dict):
    """The keyword-only and `**kwargs` arguments of a call, passed on by keyword."""


def _call(fn: Callable, args: tuple) -> Any:
    """`fn` called with arguments as `Compiled._bind` arranged them."""
    if args and isinstance(args[-1], _Keywords):
        return fn(*args[:-1], **args[-1])
    return fn(*args)


def _matching(entries: list[_Entry], tensors: list[Tensor]) -> _Entry | None:
    """The first program whose guards all hold for this call."""
    for entry in entries:
        if all(g.read(tensors) == g.value for g in entry.guards):
            return entry
    return None


def _explain_guards(entry: _Entry, tensors: list[Tensor]) -> str:
    """Which baked-in values changed since `entry` was traced, in words."""
    changed = []
    for g in entry.guards:
        now = g.read(tensors)
        if now == g.value:
            continue
        if g.explain is not None:
            changed += [f"{g.what}: {line}" for line in g.explain(g.value, now)] or \
                [f"{g.what} changed"]
        elif _labelled(now) and _labelled(g.value) and len(now) == len(g.value):
            diffs = [(label, old, new) for (label, old), (_, new) in zip(g.value, now)
                     if old != new]
            # a new state tensor changes both the state's keys and identities: name the keys
            plain = [d for d in diffs if not d[0].endswith("identity")] or diffs
            changed += [f"{g.what}: {label} {old!r} -> {new!r}" for label, old, new in plain]
        else:
            changed.append(f"{g.what}: {g.value!r} -> {now!r}")
    return "; ".join(changed) or "guards changed"


def _labelled(value: Any) -> bool:
    """Whether a guard value is a tuple of (label, value) pairs."""
    return isinstance(value, tuple) and all(
        isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) for v in value)


def flatten_outputs(obj: Any) -> tuple[list[Tensor], Any]:
    """Tensors of a nested tuple/list/dict result, and the structure to rebuild it."""
    if isinstance(obj, Tensor):
        return [obj], "T"
    if obj is None:
        return [], None
    if isinstance(obj, (tuple, list)):
        leaves: list[Tensor] = []
        defs = []
        for item in obj:
            sub, d = flatten_outputs(item)
            leaves += sub
            defs.append((len(sub), d))
        return leaves, (type(obj), defs)
    if isinstance(obj, dict):
        leaves, defs = [], []
        for k, v in obj.items():
            sub, d = flatten_outputs(v)
            leaves += sub
            defs.append((k, len(sub), d))
        return leaves, (dict, defs)
    raise TypeError(f"compile: the compiled function returned a {type(obj).__name__}; it must "
                    "return tensors, or tuples, lists or dicts of tensors (or None)")


def _unflatten(treedef: Any, leaves: list[Tensor]) -> Any:
    if treedef == "T":
        return leaves[0]
    if treedef is None:
        return None
    kind, defs = treedef
    out, pos = [], 0
    if kind is dict:
        result = {}
        for k, n, d in defs:
            result[k] = _unflatten(d, leaves[pos:pos + n])
            pos += n
        return result
    for n, d in defs:
        out.append(_unflatten(d, leaves[pos:pos + n]))
        pos += n
    return kind(out) if kind is tuple else out


def _explain(old: tuple, new: tuple) -> str:
    """Why a signature differs from the previous one, in words."""
    reasons = []
    old_args, old_grad = old
    new_args, new_grad = new
    if len(old_args) != len(new_args):
        reasons.append(f"{len(new_args)} arguments instead of {len(old_args)}")
    for i, (a, b) in enumerate(zip(old_args, new_args)):
        if a == b:
            continue
        if a[0] == b[0] == "tensor":
            for what, x, y in (("shape", a[1], b[1]), ("dtype", a[2], b[2]),
                               ("requires_grad", a[3], b[3])):
                if x != y:
                    reasons.append(f"input {i} {what} changed {x} -> {y}")
        elif a[0] == b[0] == "tree" and a[1] == b[1]:
            for k, (x, y) in enumerate(zip(a[2], b[2])):
                for what, u, v in (("shape", x[1], y[1]), ("dtype", x[2], y[2]),
                                   ("requires_grad", x[3], y[3])):
                    if u != v:
                        reasons.append(f"input {i} tensor {k} {what} changed {u} -> {v}")
        else:
            reasons.append(f"input {i} changed {_shown(a[1])} -> {_shown(b[1])}")
    if old_grad != new_grad:
        reasons.append(f"grad mode changed {old_grad} -> {new_grad}")
    return "; ".join(reasons) or "new signature"


def _shown(key: Any) -> str:
    """A signature part (see `value_key`) in words."""
    if not isinstance(key, tuple) or not key:
        return repr(key)
    kind = key[0]
    if kind == "ndarray":
        return f"a {key[1]} array of shape {key[2]} (contents {key[3][:8]})"
    if kind in ("tuple", "list") and len(key) == 2 and isinstance(key[1], tuple):
        inner = ", ".join(_shown(k) for k in key[1])
        return f"({inner})" if kind == "tuple" else f"[{inner}]"
    if kind == "dict":
        return "{" + ", ".join(f"{_shown(k)}: {_shown(v)}" for k, v in key[1]) + "}"
    if kind == "object":
        return f"a {key[1]}"
    if kind == "value":
        return _shown(key[1])
    if len(key) == 2 and isinstance(key[1], str):
        return key[1]  # a plain_key: the value's repr
    return repr(key)
