"""What a traced program silently depends on, checked before every reuse.

A trace reads more than its tensor arguments: the training flag and the Python-number
attributes of every module it calls, which tensors those modules hold, whether parameters
require grad, the shapes of captured tensors, and Python numbers in the traced function's
closure and globals.  Each becomes a `Guard`; a program is reused only
while all its guards read what they read at trace time, and a change recompiles with a reason
that names it (as `torch.compile`'s guards do).  Tensor *values* are never guarded: parameters,
buffers and captured tensors are graph inputs read on every call.

Module guards are cheap per call: `Module` bumps a version on every attribute assignment and
table change, and the guard re-reads its modules only after the version moved.
"""
from __future__ import annotations

import dis
import enum
import types
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import numpy as np

from neurenix.compiler.types import DType

from ..nn.module import Module, state_version
from ..tensor import Tensor


class Guard(NamedTuple):
    """A value the trace baked in: `read(args)` must give `value` again for the program to
    be reused (`args` are the call's tensors, flattened).  `explain(old, new)`, when given,
    says in words what changed (for the recompile message)."""

    what: str
    read: Callable[[list[Tensor]], Any]
    value: Any
    explain: Callable[[Any, Any], list[str]] | None = None


_PLAIN = (bool, int, float, complex, str, bytes, type(None), DType, enum.Enum, np.generic)
_TABLES = ("training", "_parameters", "_buffers", "_modules", "_non_persistent")


def plain_key(value: Any) -> Any:
    """A comparable key for a plain Python value (numbers, strings, None, dtypes and tuples of
    them), or None for anything else.  The type is part of the key (1, 1.0 and True differ),
    and floats compare by repr (NaN equals NaN, -0.0 differs from 0.0)."""
    if isinstance(value, tuple):
        keys = tuple(plain_key(v) for v in value)
        return None if any(k is None for k in keys) else ("tuple", keys)
    if isinstance(value, _PLAIN):
        return (type(value).__name__, repr(value))
    return None


# ---- modules ---------------------------------------------------------------------------------

def _probes(path: str, m: Module, captured: set[int]) -> list[tuple[str, Callable[[], Any]]]:
    """(label, read) pairs for one module's state: mode, tables, plain attributes, and plain
    tensor attributes the trace captured."""
    d = m.__dict__
    probes: list[tuple[str, Callable[[], Any]]] = [
        (f"{path}training", lambda: m.training),
        (f"{path}parameters", lambda: tuple((k, id(v)) for k, v in m._parameters.items())),
        (f"{path}buffers", lambda: tuple((k, id(v)) for k, v in m._buffers.items())),
        (f"{path}sub-modules", lambda: tuple((k, id(v)) for k, v in m._modules.items())),
    ]
    for name, value in d.items():
        if name in _TABLES:
            continue
        if isinstance(value, Tensor):
            if id(value) in captured:
                probes.append((f"{path}{name}", lambda n=name: id(d.get(n))))
        else:  # numbers by value; functions, lists, other objects by identity
            probes.append((f"{path}{name}", lambda n=name: _key(d.get(n, _MISSING))))
    return probes


def module_snapshot(m: Module) -> dict[str, tuple[Any, Any]]:
    """A module's Python attributes: (key, value) by name, to find assignments a traced
    forward made (they happen once, while tracing, never again on a compiled call)."""
    return {name: (_key(value), value) for name, value in m.__dict__.items()
            if name not in ("_parameters", "_buffers", "_modules")}


def undo_side_effects(snapshots: Iterable[tuple[Module, dict[str, tuple[Any, Any]]]]
                      ) -> list[str]:
    """The attributes each (module, snapshot taken before its first call in the trace) had
    assigned by the trace, in words; each is put back as it was."""
    out = []
    for m, before in snapshots:
        after = module_snapshot(m)
        for name in before.keys() | after.keys():
            old, new = before.get(name, (None, None)), after.get(name, (None, None))
            if old[0] == new[0]:
                continue
            shown = _shown(new[0]) if new[0] is not None else "<deleted>"
            out.append(f"{type(m).__name__}.{name} "
                       f"{_shown(old[0]) if old[0] is not None else '<absent>'} -> {shown}")
            if old[0] is None:
                m.__dict__.pop(name, None)
            else:
                m.__dict__[name] = old[1]
    return out


class _Missing:
    def __repr__(self) -> str:
        return "<deleted>"


_MISSING = _Missing()


def module_guard(modules: Iterable[Module], captured: set[int]) -> Guard | None:
    """One guard over every module the trace called, and all their sub-modules; `captured`
    holds the ids of tensors the trace made inputs (plain tensor attributes among them are
    guarded by identity)."""
    called = list(modules)
    below: set[int] = set()
    for m in called:
        below |= {id(s) for s in m.modules() if s is not m}
    probes: list[tuple[str, Callable[[], Any]]] = []
    seen: set[int] = set()
    for root in called:
        if id(root) in below:
            continue  # labelled from the outermost called module that holds it
        for path, m in root.named_modules(type(root).__name__, memo=seen):
            probes += _probes(f"{path}.", m, captured)
    if not probes:
        return None
    read = _VersionedRead([p for _, p in probes], [label for label, _ in probes])
    return Guard("module state", read, read(()), read.explain)


class _VersionedRead:
    """Reads probes again only when a module attribute or table changed since the last read."""

    def __init__(self, probes: list[Callable[[], Any]], labels: list[str]) -> None:
        self.probes = probes
        self.labels = labels
        self.version = -1
        self.value: tuple = ()

    def __call__(self, args: Any) -> tuple:
        version = state_version()
        if version != self.version:
            self.value = tuple(p() for p in self.probes)
            self.version = version
        return self.value

    def explain(self, old: tuple, new: tuple) -> list[str]:
        return changes(self.labels, old, new)


def changes(labels: list[str], old: tuple, new: tuple) -> list[str]:
    """What differs between two readings of labelled probes, in words."""
    out = []
    for label, a, b in zip(labels, old, new):
        if a == b:
            continue
        if _is_table(a) and _is_table(b):
            before, after = dict(a), dict(b)
            for name in before.keys() | after.keys():
                if name not in after:
                    out.append(f"{label}: {name} removed")
                elif name not in before:
                    out.append(f"{label}: {name} added")
                elif before[name] != after[name]:
                    out.append(f"{label}: {name} replaced")
        elif _is_identity(a) and _is_identity(b):
            out.append(f"{label} replaced")
        else:
            out.append(f"{label} {_shown(a)} -> {_shown(b)}")
    return out


def _is_identity(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, tuple) and len(value) == 2 and value[0] == "object")


def _is_table(value: Any) -> bool:
    return isinstance(value, tuple) and all(
        isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) for v in value) \
        and not (len(value) == 2 and isinstance(value[1], str))


def _shown(value: Any) -> str:
    """A probe's reading in words."""
    if isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, str) for v in value):
        return value[1]  # a plain_key: the value's repr
    if _is_identity(value):
        return "<an object>"
    return repr(value)


# ---- tensors ---------------------------------------------------------------------------------

def tensor_guard(tensors: list[Tensor], labels: list[str]) -> Guard | None:
    """Whether each tensor the program reads by reference still requires grad, and still has
    its shape and dtype (a captured tensor given a new `.data` of another shape recompiles)."""
    if not tensors:
        return None

    def read(args: Any) -> tuple:
        return tuple((t.requires_grad, t._data.shape, t._dtype) for t in tensors)

    def explain(old: tuple, new: tuple) -> list[str]:
        out = []
        for label, a, b in zip(labels, old, new):
            for what, x, y in zip(("requires_grad", "shape", "dtype"), a, b):
                if x != y:
                    out.append(f"{label} {what} {x} -> {y}")
        return out

    return Guard("tensors read", read, read(()), explain)


# ---- Python values in the traced function ------------------------------------------------------

def code_guard(fn: Any, args: dict[str, Any] | None = None, owner: Any = None
               ) -> Guard | None:
    """What the function's own code reads from outside its arguments' tensors: its closure
    cells and globals, its default values, and attribute chains from those and from its
    non-tensor arguments (`config.SCALE`, `Model.k`, `opts.scale`).  Plain values are
    guarded by value, other objects by identity (rebinding a global tensor, layer or function
    recompiles); chains are followed through modules, classes, Modules and plain objects,
    never through tensors or properties.  `args` maps parameter names to this call's values;
    `owner` is the Module whose forward method `fn` is (its first parameter)."""
    fn = getattr(fn, "__func__", fn)
    code = getattr(fn, "__code__", None)
    if code is None:
        return None
    if owner is not None and code.co_argcount:
        args = {**(args or {}), code.co_varnames[0]: owner}
    roots: dict[str, Callable[[], Any]] = {}
    for name, cell in zip(code.co_freevars, fn.__closure__ or ()):
        roots[name] = lambda c=cell: _cell(c)
    extra = [("default arguments", lambda: (_key(fn.__defaults__), _key(fn.__kwdefaults__)))]
    if isinstance(owner, Module):  # a forward method: the class must still have it
        extra.append((f"{type(owner).__name__}.forward",
                      lambda: _key(_lookup(type(owner), fn.__name__))))
    return _reads_guard(getattr(fn, "__qualname__", "the function"), code, fn.__globals__,
                        roots, extra, args)


def helper_guard(code: types.CodeType, namespace: dict[str, Any]) -> Guard | None:
    """What a helper function the traced code called (`code`, run with globals `namespace`)
    reads from its module: globals and attribute chains from them, guarded as `code_guard`
    guards the compiled function's own (its closure cells are not reachable from a frame:
    a helper's closure variables are not guarded).  None when it reads nothing to guard."""
    return _reads_guard(code.co_qualname, code, namespace, {}, [], None)


def _reads_guard(label: str, code: types.CodeType, namespace: dict[str, Any],
                 roots: dict[str, Callable[[], Any]],
                 extra: list[tuple[str, Callable[[], Any]]],
                 args: dict[str, Any] | None) -> Guard | None:
    """The guard over what `code` reads: `roots` (its closure cells) and the globals it
    loads from `namespace`, probed as themselves and through the attribute chains the code
    follows from them or from the non-tensor `args`, then the `extra` probes."""
    roots = dict(roots)
    for name in _loads(code, ("LOAD_GLOBAL", "LOAD_NAME")):
        if name in namespace:
            roots.setdefault(name, lambda n=name: namespace.get(n, _MISSING))
    probes = [(name, lambda g=get: _key(g())) for name, get in roots.items() if _watched(get())]
    probes += extra
    for root, attrs in sorted(_chains(code)):
        if root in roots:
            get = roots[root]
        elif args is not None and root in args and not isinstance(args[root], Tensor):
            get = lambda v=args[root]: v  # noqa: E731  (the same object: keyed by it)
        else:
            continue
        probe = _chain_probe(get, attrs)
        if probe is not None:
            probes.append((".".join((root,) + attrs), probe))
    if not probes:
        return None
    labels = [name for name, _ in probes]
    getters = [p for _, p in probes]

    def read(args: Any) -> tuple:
        return tuple(p() for p in getters)

    def explain(old: tuple, new: tuple) -> list[str]:
        return changes(labels, old, new)

    return Guard(f"values read by {label}", read, read(()), explain)


def _key(value: Any) -> Any:
    """A probe's reading: plain values by value, anything else by identity."""
    key = plain_key(value)
    if key is not None:
        return key
    if isinstance(value, tuple):
        return tuple(_key(v) for v in value)
    return ("object", id(value))


def _watched(value: Any) -> bool:
    """Whether a root value is worth a probe: not the library itself (the `neurenix`
    package, its functions and classes never change under the program)."""
    if value is _MISSING:
        return False
    owner = value.__name__ if isinstance(value, types.ModuleType) else \
        getattr(value, "__module__", None) if isinstance(value, (type, types.FunctionType)) \
        else None
    return not (owner or "").startswith(("neurenix", "numpy", "builtins"))


class _Stop(Exception):
    """An attribute chain that cannot be read without side effects."""


def _lookup(obj: Any, name: str) -> Any:
    """`obj.name` read from dictionaries only (no properties, no `__getattr__` code but a
    Module's tables); `_Stop` where that is not possible."""
    if isinstance(obj, (Tensor, np.ndarray)) or obj is _MISSING:
        raise _Stop
    d = getattr(obj, "__dict__", None)
    if d is not None and name in d:
        return d[name]
    if isinstance(obj, Module):
        for table in (obj._parameters, obj._buffers, obj._modules):
            if name in table:
                return table[name]
    for klass in (obj.__mro__ if isinstance(obj, type) else type(obj).__mro__):
        if name in klass.__dict__:
            value = klass.__dict__[name]
            if hasattr(value, "__get__") and not isinstance(value, types.FunctionType):
                raise _Stop  # a property or another descriptor: reading it runs code
            return value
    return _MISSING


def _chain_probe(get: Callable[[], Any], attrs: tuple[str, ...]) -> Callable[[], Any] | None:
    """A probe reading `root.a.b...` by dictionary lookups, or None when the chain leads
    through the library's own objects, is covered by the module guard (a Module's own
    attribute or sub-module), or can only be read by running code."""
    root = get()
    if not _watched(root) or type(root).__module__.startswith("neurenix"):
        return None
    if isinstance(root, Module):
        try:
            first = _lookup(root, attrs[0])
        except _Stop:
            return None
        own = attrs[0] in root.__dict__ or any(
            attrs[0] in t for t in (root._parameters, root._buffers, root._modules))
        if own and (len(attrs) == 1 or isinstance(first, (Module, Tensor))):
            return None

    def probe() -> Any:
        value = get()
        try:
            for a in attrs:
                value = _lookup(value, a)
        except _Stop:
            return ("unreadable",)
        return _key(value)
    return None if probe() == ("unreadable",) else probe


def _loads(code: types.CodeType, opnames: tuple[str, ...]) -> set[str]:
    """Names the code (and the lambdas and comprehensions nested in it) loads with these
    instructions."""
    names = {i.argval for i in dis.get_instructions(code) if i.opname in opnames}
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _loads(const, opnames)
    return names


def _chains(code: types.CodeType, top: bool = True) -> set[tuple[str, tuple[str, ...]]]:
    """(root name, attributes) of every `root.a.b` the code reads: roots are globals,
    closure variables and (in the function itself) its parameters."""
    params = set(code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]) if top else set()
    chains: set[tuple[str, tuple[str, ...]]] = set()
    root: str | None = None
    attrs: list[str] = []
    for i in dis.get_instructions(code):
        if i.opname in ("LOAD_ATTR", "LOAD_METHOD") and root is not None:
            attrs.append(i.argval)
            continue
        if root is not None and attrs:
            chains.add((root, tuple(attrs)))
        root, attrs = None, []
        if i.opname in ("LOAD_GLOBAL", "LOAD_DEREF", "LOAD_NAME") or (
                i.opname == "LOAD_FAST" and i.argval in params):
            root = i.argval
    if root is not None and attrs:
        chains.add((root, tuple(attrs)))
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            chains |= _chains(const, top=False)
    return chains


def _cell(cell: Any) -> Any:
    try:
        return cell.cell_contents
    except ValueError:
        return _MISSING
