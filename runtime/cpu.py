"""The host CPU backend: compiles a `Program`'s LLVM IR with llvmlite and runs its entry.

Eager CPU execution runs the NumPy reference implementations; compiled programs run here.
`CpuExecutable` compiles the module once for the host CPU (its name and features, LLVM's O3
pipeline through the new pass manager, run in a worker process by `compile_worker` so that
LLVM's per-compile leak stays out of this process), allocates the arena once, and `run` is
one foreign call of the entry function: `entry(void **args, void *arena, const neurenix_pool
*pool)`, the args being the pointers of the inputs, outputs and constants in
`Program.entry_args()` order, and `pool` the process's thread pool (`process_pool`,
cpu_pool.py) for programs whose metadata asks for its ABI (`pool_abi`).  A program with dynamic
sizes (`Program.symbols`) takes a fourth argument, `const int64_t *sizes`: `run` binds the
symbols from the inputs' shapes, sizes the outputs and the arena (grown when a call needs more)
and passes their values; static programs keep the three-argument call.  ctypes releases the
GIL for the call.  Programs own no threads, so a dropped or closed executable unloads its code.
`compile_object` produces the same code as an object file for ahead-of-time export (its entry
runs serially when passed a NULL pool).

It provides the runtime protocol (`neurenix.runtime`): `available`, `fingerprint`,
`code_identity`, `Executable` (= `CpuExecutable`) and `prepare` (loads the thread pool).
This module imports neither the compiler nor the frontend, only the plain-data `Program`.
"""
from __future__ import annotations

import _ctypes
import ctypes
import importlib.metadata
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import compile_worker, cpu_pool
from .backend import LibraryCache
from .program import Program
from .sizes import bind_sizes, size_value

ARENA_ALIGN = 64
_POOL: cpu_pool.Pool | None = None
_POOL_LOCK = threading.Lock()
_THREADS: int | None = None  # set before the pool is loaded: applied when it is


def available() -> bool:
    """The host CPU is always there."""
    return True


def core_count() -> int:
    """How many cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_threads() -> int:
    """Threads of the process's pool: $NEURENIX_NUM_THREADS, else every core we may use."""
    value = os.environ.get("NEURENIX_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else core_count()


def num_threads() -> int:
    """Threads a large kernel is split across (the caller included), process-wide."""
    pool = _POOL
    if pool is not None:
        return pool.threads
    return min(max(1, _THREADS or default_threads()), cpu_pool.MAX_THREADS)


def set_num_threads(n: int) -> None:
    """Resize the process's pool: its workers are joined (after the job in flight, if any) and
    the next parallel kernel starts `n - 1` (a pool not loaded yet starts with `n`)."""
    global _THREADS
    with _POOL_LOCK:
        _THREADS = max(1, int(n))
        if _POOL is not None:
            _POOL.threads = _THREADS


def process_pool(library: bytes | None = None) -> cpu_pool.Pool:
    """The process's thread pool, loaded on first use (once per process: every program shares
    it; it is never unloaded).  `library`, the bytes of an earlier build on this host (its
    `Pool.library`) that the caller vouches for, as a cache would, loads it without LLVM;
    otherwise it is built from `cpu_pool_ir.pool_source()`."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            lib = _dlopen(library, "neurenix-pool-") if library is not None else None
            if lib is None:
                from .cpu_pool_ir import pool_source  # llvmlite: imported only to build

                source = pool_source()
                library = link_shared(compile_object(source)) if linker() is not None else None
                lib = _dlopen(library, "neurenix-pool-") if library is not None else None
            if lib is not None:
                pool = cpu_pool.Pool(lambda name: _library_symbol(lib, name), lib, library)
            else:
                engine = _mcjit(compile_worker.compile_ir(source, "object", jit=True))
                pool = cpu_pool.Pool(lambda name: _engine_symbol(engine, name), engine)
            pool.init(_THREADS or default_threads())
            if hasattr(os, "register_at_fork"):
                os.register_at_fork(after_in_child=_after_fork)
            _POOL = pool
    return _POOL


def pool_loaded() -> bool:
    """Whether the process's thread pool is loaded (a cache may then skip fetching it)."""
    return _POOL is not None


def prepare(program: Program, cache: LibraryCache | None = None) -> None:
    """Load the thread pool a threaded program runs on, once per process: from `cache` (so
    that a new process running cached programs needs no LLVM for it either), or built and
    stored there."""
    if not program.metadata.get("threaded") or _POOL is not None:
        return
    key = ("thread pool", fingerprint())
    library = cache.load_library(key) if cache is not None else None
    built = process_pool(library=library).library
    if cache is not None and built is not None and built is not library:
        cache.store_library(key, built)


def _after_fork() -> None:
    """In a forked child: none of the parent's workers exist (the pool starts new ones on its
    first parallel run), and no other thread holds the pool's lock."""
    global _POOL_LOCK
    _POOL_LOCK = threading.Lock()
    if _POOL is not None:
        _POOL.after_fork()


_llvm = compile_worker.llvm  # llvmlite.binding, the native target initialised


def code_identity() -> str:
    """What compiled code depends on besides its source: triple, CPU, features, LLVM."""
    llvm = _llvm()
    import llvmlite
    return "|".join((llvm.get_process_triple(), llvm.get_host_cpu_name(),
                     llvm.get_host_cpu_features().flatten(), llvmlite.__version__))


def fingerprint() -> str:
    """What `code_identity` identifies, read from the OS where it describes the CPU (Linux's
    /proc/cpuinfo), so that a cache lookup needs no LLVM; `code_identity` elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            first = f.read().split("\n\n", 1)[0]
    except OSError:
        return code_identity()
    keep = ("vendor_id", "cpu family", "model", "model name", "stepping", "flags")
    lines = sorted(line for line in first.splitlines()
                   if line.split(":", 1)[0].strip() in keep)
    return "|".join([platform.machine(), importlib.metadata.version("llvmlite")] + lines)


def linker() -> str | None:
    """The system linker that turns a program's object code into a shared library."""
    return shutil.which("ld")


def link_shared(object_code: bytes) -> bytes | None:
    """A shared library of position-independent object code, or None when no linker is
    installed or it fails (the runtime then loads object code with LLVM's JIT instead)."""
    ld = linker()
    if ld is None:
        return None
    with tempfile.TemporaryDirectory(prefix="neurenix-link-") as directory:
        obj = os.path.join(directory, "program.o")
        lib = os.path.join(directory, "program.so")
        with open(obj, "wb") as f:
            f.write(object_code)
        try:
            subprocess.run([ld, "-shared", "-z", "noexecstack", "-o", lib, obj], check=True,
                           capture_output=True, timeout=120)
            with open(lib, "rb") as f:
                return f.read()
        except (OSError, subprocess.SubprocessError):
            return None


def _dlopen(library: bytes, prefix: str = "neurenix-") -> ctypes.CDLL | None:
    """Load a shared library from bytes: a private copy per load (its own globals), whose file
    is removed at once (the mapping stays until `dlclose`)."""
    fd, path = tempfile.mkstemp(prefix=prefix, suffix=".so")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(library)
        return ctypes.CDLL(path)
    except OSError:
        return None
    finally:
        os.unlink(path)


target_machine = compile_worker.target_machine  # in this process (tests, tools)
optimize = compile_worker.optimize  # in this process; compiles go through `compile_worker`


def optimized_ir(program: Program) -> str:
    """The program's module after optimisation (what runs), as LLVM IR text."""
    return compile_worker.compile_ir(program.source, "ir").decode()


def assembly(program: Program) -> str:
    """The host assembly of the optimised program."""
    return compile_worker.compile_ir(program.source, "assembly").decode()


def compile_object(program: Program | str) -> bytes:
    """Object code (ELF/Mach-O/COFF for the host) of the optimised program (or LLVM IR text),
    position-independent, for a shared library or AOT export."""
    return compile_worker.compile_ir(program if isinstance(program, str) else program.source)


def host_cpu() -> dict[str, Any]:
    """What host object code is compiled for: the target triple, the CPU's name and the
    features enabled (LLVM's names), as an exported artifact records them."""
    llvm = _llvm()
    features = llvm.get_host_cpu_features()
    return {"triple": llvm.get_process_triple(), "name": llvm.get_host_cpu_name(),
            "features": sorted(name for name, on in features.items() if on)}


X86_64_LEVELS = {
    "x86-64": [],
    "x86-64-v2": ["cx16", "popcnt", "sse3", "sse4.1", "sse4.2", "ssse3"],
    "x86-64-v3": ["avx", "avx2", "bmi", "bmi2", "f16c", "fma", "lzcnt", "movbe", "xsave"],
    "x86-64-v4": ["avx512bw", "avx512cd", "avx512dq", "avx512f", "avx512vl"],
}
"""The x86-64 micro-architecture levels (psABI) and the CPU features (LLVM's names) each adds
to the one before: what an object compiled for a level needs from the CPU that runs it."""


def portable_cpu(cpu: str) -> dict[str, Any]:
    """What object code for CPU `cpu` of this machine's architecture requires, as
    `host_cpu()` says it for the host: "generic" (the architecture's baseline: "x86-64" on
    x86-64), or an x86-64 level; ValueError for another name."""
    llvm = _llvm()
    triple = llvm.get_process_triple()
    if cpu == "generic" and triple.startswith("x86_64"):
        cpu = "x86-64"
    if cpu == "generic":
        return {"triple": triple, "name": "generic", "features": []}
    if not triple.startswith("x86_64") or cpu not in X86_64_LEVELS:
        raise ValueError(f"portable_cpu: unknown CPU {cpu!r} for {triple}; use 'host', "
                         f"'generic' or an x86-64 level ({', '.join(X86_64_LEVELS)})")
    levels = list(X86_64_LEVELS)
    features = [f for level in levels[:levels.index(cpu) + 1] for f in X86_64_LEVELS[level]]
    return {"triple": triple, "name": cpu, "features": sorted(features)}


def cross_object(program: Program | str, triple: str, cpu: str = "generic",
                 features: str = "") -> bytes:
    """Object code of the optimised program (or LLVM IR text) for another target `triple`
    (e.g. "aarch64-linux-gnu"): position-independent, O3, compiled in this process (one
    compile: LLVM's per-compile leak does not matter here).  ValueError when this LLVM has
    no such target."""
    llvm = _llvm()
    llvm.initialize_all_targets()
    llvm.initialize_all_asmprinters()
    try:
        target = llvm.Target.from_triple(triple)
    except RuntimeError as e:
        raise ValueError(f"cross_object: LLVM here cannot target {triple!r}: {e}") from None
    tm = target.create_target_machine(cpu=cpu, features=features, opt=3, reloc="pic",
                                      codemodel="small")
    module = optimize(program if isinstance(program, str) else program.source, tm)
    return tm.emit_object(module)


def _mcjit(object_code: bytes):
    """An MCJIT engine holding loaded object code."""
    llvm = _llvm()
    engine = llvm.create_mcjit_compiler(llvm.parse_assembly(""), target_machine(jit=True))
    engine.add_object_file(llvm.ObjectFileRef.from_data(object_code))
    engine.finalize_object()
    return engine


def _library_symbol(lib: ctypes.CDLL, name: str) -> int:
    """The address of a function or global of a loaded library (0 when absent)."""
    try:
        return ctypes.cast(getattr(lib, name), ctypes.c_void_p).value or 0
    except AttributeError:
        return 0


def _engine_symbol(engine, name: str) -> int:
    """The address of a function or global in an MCJIT engine (0 when absent)."""
    return engine.get_function_address(name) or engine.get_global_value_address(name)


def _unload(handle: int | None, engine) -> None:
    """Free a program's code: dlclose its library, or close its MCJIT engine."""
    if handle is not None:
        _ctypes.dlclose(handle)
    if engine is not None:
        engine.close()


class CpuExecutable:
    """A Program compiled for this CPU: `run(inputs) -> outputs`, one native call per run.

    The program is optimised and compiled to position-independent object code, linked by the
    system linker into a shared library (kept as `library`, which a compile cache may store)
    and loaded with `dlopen` — the form an exported library takes.  Without a linker the object
    code (`object_code`) is loaded with LLVM's MCJIT instead.  Passing `library` (or
    `object_code`) from an earlier compile of the same program on the same CPU skips LLVM
    entirely — a shared library does not even load it; the caller vouches for those bytes (a
    cache checks its entries before handing them over).

    Large kernels run on the process's thread pool (`process_pool`: a cache that loads the
    pool from its own bytes first, `process_pool(library=...)`, keeps a new process free of
    LLVM for the pool too).  The executable only borrows the pool: when it is garbage
    collected or `close()`d its code is unloaded (dlclose, or the MCJIT engine freed), and as
    long as anything references it (a pending backward closure) it stays loaded.
    """

    def __init__(self, program: Program, object_code: bytes | None = None,
                 library: bytes | None = None) -> None:
        if program.target != "cpu":
            raise ValueError(f"CpuExecutable: expected a 'cpu' program, got target "
                             f"{program.target!r}")
        self.program = program
        self.source = program.source
        self.object_code = object_code
        self.library = library
        abi = program.metadata.get("pool_abi")
        if abi is not None and abi != cpu_pool.POOL_ABI:
            raise ValueError(f"CpuExecutable: the program expects thread pool ABI {abi}, this "
                             f"runtime has {cpu_pool.POOL_ABI}; compile it again")
        self._lib: ctypes.CDLL | None = None
        self._engine = None
        if library is not None:
            self._lib = _dlopen(library)
        if self._lib is None and object_code is None and linker() is not None:
            self.library = link_shared(compile_object(program))
            self._lib = _dlopen(self.library) if self.library is not None else None
        if self._lib is None:
            self.library = None
            self._load_jit()
        self.loader = "shared library" if self._lib is not None else "mcjit"
        self._closer = weakref.finalize(self, _unload,
                                        self._lib._handle if self._lib is not None else None,
                                        self._engine)
        self._closer.atexit = False  # at exit a daemon thread may still be in a call
        address = self._symbol(program.entry)
        if not address:
            self.close()
            raise ValueError(f"CpuExecutable: the program has no entry function "
                             f"{program.entry!r}")
        # a program with dynamic sizes (Program.symbols) takes their values as a 4th argument
        self._symbols = tuple(program.symbols)
        pointers = [ctypes.c_void_p] * (4 if self._symbols else 3)
        self._entry = ctypes.CFUNCTYPE(None, *pointers)(address)
        self._sizes = (ctypes.c_int64 * max(1, len(self._symbols)))()
        threaded = abi is not None and bool(program.metadata.get("threaded"))
        self._pool = None
        if threaded:
            self._pool = process_pool().address
        # a dynamic arena size is evaluated per call; the arena grows when a call needs more
        self._allocate_arena(program.arena_bytes if isinstance(program.arena_bytes, int) else 0)
        self._constants = [np.ascontiguousarray(program.constants[name])
                           for name in sorted(program.constants)]
        self._in = [(t.name, tuple(t.shape), np.dtype(t.dtype)) for t in program.inputs]
        self._out = [(t.name, tuple(t.shape), np.dtype(t.dtype)) for t in program.outputs]
        n_args = len(self._in) + len(self._out) + len(self._constants)
        self._args = (ctypes.c_void_p * max(n_args, 1))()
        for k, const in enumerate(self._constants):
            self._args[len(self._in) + len(self._out) + k] = const.ctypes.data
        first: dict[str, int] = {}
        self._out_slot = [first.setdefault(name, k) for k, (name, _, _) in enumerate(self._out)]
        # outputs the program writes into an input's memory: output j is input k's array
        self._donated = [(int(j), int(k)) for j, k in program.metadata.get("donated", [])]
        self._special = bool(self._donated or self._symbols)  # not the plain fast path
        # where each symbol is bound: (input, axis) of a dimension that is the lone symbol
        self._binds = {}
        for k, (_, shape, _) in enumerate(self._in):
            for axis, d in enumerate(shape):
                if not isinstance(d, int) and len(d.terms) == 1 and d.terms[0][1] == 1 \
                        and len(d.terms[0][0]) == 1:
                    self._binds.setdefault(d.terms[0][0][0], (k, axis))
        bound = set(self._binds.values())
        self._checks = [(k, axis, d) for k, (_, shape, _) in enumerate(self._in)
                        for axis, d in enumerate(shape) if (k, axis) not in bound]
        self._arena_size = program.arena_bytes
        # per tuple of input shapes already checked: the sizes and the output shapes
        self._plans: dict[tuple, tuple[dict, list]] = {}
        self._lock = threading.Lock()
        self._last_inputs: list[Any] = []  # weak references to the previous call's inputs

    def _allocate_arena(self, nbytes: int) -> None:
        """A fresh 64-byte aligned arena of `nbytes` bytes."""
        self._arena_raw = np.zeros(nbytes + ARENA_ALIGN, dtype=np.uint8)
        skip = -self._arena_raw.ctypes.data % ARENA_ALIGN
        self.arena = self._arena_raw[skip:skip + nbytes]
        self._arena_address = self.arena.ctypes.data

    def _load_jit(self) -> None:
        """Load the program with MCJIT (compiling JIT object code first if none was given)."""
        if self.object_code is None:
            self.object_code = compile_worker.compile_ir(self.program.source, jit=True)
        self._engine = _mcjit(self.object_code)

    def _symbol(self, name: str) -> int:
        """The address of a function or global of the loaded program (0 when absent)."""
        if not self._closer.alive:
            raise RuntimeError("CpuExecutable: the program was closed (its code is unloaded)")
        if self._lib is not None:
            return _library_symbol(self._lib, name)
        return _engine_symbol(self._engine, name)

    @property
    def closed(self) -> bool:
        """Whether `close()` unloaded the program's code."""
        return not self._closer.alive

    @property
    def num_threads(self) -> int:
        """How many threads large kernels are split across: the process's pool (the caller
        and its workers), shared by every program (`set_num_threads`)."""
        return num_threads()

    @num_threads.setter
    def num_threads(self, n: int) -> None:
        set_num_threads(n)

    def close(self) -> None:
        """Unload the program's code now (dlclose, or free the MCJIT engine); `run` raises
        from then on.  Dropping the last reference does the same."""
        with getattr(self, "_lock", None) or threading.Lock():  # a call in flight finishes
            self._entry = None
            self._closer()

    def check_inputs_at(self, k: int, x: Any) -> np.ndarray:
        """Input `k` as a C-contiguous array of its shape and dtype, or a ValueError."""
        name, shape, dtype = self._in[k]
        x = np.asarray(x)
        if x.shape != shape or x.dtype != dtype:
            raise ValueError(f"compiled program: input {name!r} expects {dtype}"
                             f"{list(shape)}, got {x.dtype}{list(x.shape)}")
        return np.ascontiguousarray(x)

    def check_inputs(self, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """The inputs as C-contiguous arrays, after checking count, shapes and dtypes."""
        if len(inputs) != len(self._in):
            raise ValueError(f"compiled program: expected {len(self._in)} inputs "
                             f"({', '.join(n for n, _, _ in self._in)}), got {len(inputs)}")
        arrays = []
        for k, ((_, shape, dtype), x) in enumerate(zip(self._in, inputs)):
            if (type(x) is not np.ndarray or x.shape != shape or x.dtype != dtype
                    or not x.flags.c_contiguous):
                x = self.check_inputs_at(k, x)
            arrays.append(x)
        return arrays

    def run(self, inputs: list[np.ndarray],
            sizes: Mapping[str, int] | None = None) -> list[np.ndarray]:
        """Run the whole schedule once on `inputs`; returns newly allocated outputs, except a
        donated output (`Program.metadata["donated"]`), which is its input's array updated in
        place (or a copy of it, when that array cannot be written or shares memory with
        another input).  A program with dynamic sizes binds them from the inputs' shapes;
        `sizes` gives those no input dimension carries (symbol -> value)."""
        if self._special:
            return self._run_sized(inputs, sizes) if self._symbols \
                else self._run_donated(inputs)
        outputs = [np.empty(shape, dtype) for _, shape, dtype in self._out]
        with self._lock:
            args = self._args
            last = self._last_inputs
            if len(inputs) != len(last):
                arrays = self.check_inputs(inputs)
                last = self._last_inputs = [None] * len(arrays)
            else:
                arrays = inputs
            converted: list[np.ndarray] = []
            # an array seen (and checked) in the previous call keeps its address: weights
            # are passed again and again, so most calls check and look up only the data
            # (weak references: an array the caller dropped is not kept alive)
            for k, x in enumerate(arrays):
                seen = last[k]
                if seen is None or seen() is not x:
                    if (type(x) is not np.ndarray or x.shape != self._in[k][1]
                            or x.dtype != self._in[k][2] or not x.flags.c_contiguous):
                        x = self.check_inputs_at(k, x)
                        converted.append(x)  # alive until the program has run
                    args[k] = _address(x)
                    last[k] = weakref.ref(x) if x is inputs[k] else None
            self._call(len(arrays), outputs)
        return self._repeated(outputs)

    __call__ = run

    def _call(self, base: int, outputs: list[np.ndarray], sizes: Any = None) -> None:
        """Point the output arguments (after `base` inputs) at `outputs` and run the entry
        (under `_lock`, the inputs' arguments set; `sizes`: a dynamic program's values)."""
        args = self._args
        for k, j in enumerate(self._out_slot):
            args[base + k] = _address(outputs[j])
        entry = self._entry
        if entry is None:
            raise RuntimeError("CpuExecutable: run() after close(): the program's code is "
                               "unloaded")
        if sizes is None:
            entry(args, self._arena_address, self._pool)
        else:
            entry(args, self._arena_address, self._pool, sizes)

    def _repeated(self, outputs: list[np.ndarray]) -> list[np.ndarray]:
        """`outputs` with every repeated output filled from its first occurrence."""
        for k, j in enumerate(self._out_slot):
            if j != k:
                outputs[k][...] = outputs[j]
        return outputs

    def _check_dynamic(self, inputs: list[np.ndarray], sizes: Mapping[str, int] | None = None
                       ) -> tuple[list[np.ndarray], dict]:
        """The inputs of a program with dynamic sizes as C-contiguous arrays and the sizes
        their shapes give (as `bind_sizes`, `sizes` known beforehand); a ValueError for a
        wrong count, dtype or shape."""
        if len(inputs) != len(self._in):
            raise ValueError(f"compiled program: expected {len(self._in)} inputs "
                             f"({', '.join(n for n, _, _ in self._in)}), got {len(inputs)}")
        arrays = []
        for (name, shape, dtype), x in zip(self._in, inputs):
            if type(x) is not np.ndarray or not x.flags.c_contiguous:
                x = np.ascontiguousarray(x)
            if x.dtype != dtype or x.ndim != len(shape):
                raise ValueError(f"compiled program: input {name!r} expects {dtype}"
                                 f"[{', '.join(map(str, shape))}], got {x.dtype}"
                                 f"{list(x.shape)}")
            arrays.append(x)
        try:
            if sizes:  # known sizes: bind_sizes checks the shapes against them
                raise KeyError(None)
            env = {name: arrays[k].shape[axis] for name, (k, axis) in self._binds.items()}
            for k, axis, d in self._checks:
                if (d if type(d) is int else d.evaluate(env)) != arrays[k].shape[axis]:
                    raise KeyError(d)
        except KeyError:  # a dimension off, or a symbol no input binds: bind_sizes says which
            try:
                env = bind_sizes([shape for _, shape, _ in self._in], [x.shape for x in arrays],
                                 sizes)
            except ValueError as e:
                raise ValueError(f"compiled program: {e}") from None
        return arrays, env

    @property
    def last_sizes(self) -> dict[str, int]:
        """The dynamic sizes of the latest call (`Program.symbols` -> value; empty for a
        program without symbols or before its first call)."""
        return {name: int(self._sizes[j]) for j, name in enumerate(self._symbols)
                if self._sizes[j]}

    def _run_sized(self, inputs: list[np.ndarray],
                   sizes: Mapping[str, int] | None = None) -> list[np.ndarray]:
        """`run` for a program with dynamic sizes: bound from the inputs' shapes (and
        `sizes`), they size the outputs and the arena and are passed to the entry.  Per tuple
        of input shapes the sizes, output shapes and arena bytes are worked out once
        (`_plans`), and an array passed again keeps its checked address, as in `run`."""
        if self._donated:
            return self._run_donated(inputs, sizes)
        plan = None
        if not sizes and len(inputs) == len(self._in):
            try:
                plan = self._plans.get(tuple(x.shape for x in inputs))
            except AttributeError:  # not arrays: checked below
                plan = None
        if plan is None:
            arrays, env = self._check_dynamic(inputs, sizes)
            plan = (env, [(tuple(size_value(d, env) for d in shape), dtype)
                          for _, shape, dtype in self._out], size_value(self._arena_size, env))
            if not sizes:
                if len(self._plans) >= SIZE_PLANS:
                    self._plans.clear()
                self._plans[tuple(x.shape for x in arrays)] = plan
            inputs = arrays
        env, shapes, needed = plan
        outputs = [np.empty(shape, dtype) for shape, dtype in shapes]
        with self._lock:
            args = self._args
            last = self._last_inputs
            if len(last) != len(inputs):
                last = self._last_inputs = [None] * len(inputs)
            kept: list[np.ndarray] = []  # arrays made contiguous: alive until the entry ran
            for k, x in enumerate(inputs):
                seen = last[k]
                if seen is None or seen() is not x:
                    if type(x) is not np.ndarray or x.dtype != self._in[k][2] \
                            or not x.flags.c_contiguous:
                        x = np.ascontiguousarray(x)
                        if x.dtype != self._in[k][2] or x.shape != inputs[k].shape:
                            self._check_dynamic(inputs, sizes)  # raises what is wrong
                        kept.append(x)
                    args[k] = _address(x)
                    last[k] = weakref.ref(x) if x is inputs[k] else None
            self._call_sized(len(inputs), outputs, env, needed)
        return self._repeated(outputs)

    def _run_donated(self, inputs: list[np.ndarray],
                     sizes: Mapping[str, int] | None = None) -> list[np.ndarray]:
        """`run` for a program with donated outputs or dynamic sizes: every input checked on
        every call; dynamic sizes are bound from the inputs' shapes, size the outputs and the
        arena and are passed to the entry."""
        env = None
        if self._symbols:
            arrays, env = self._check_dynamic(inputs, sizes)
        else:
            arrays = self.check_inputs(inputs)
        shapes = [shape if env is None else tuple(size_value(d, env) for d in shape)
                  for _, shape, _ in self._out]
        addresses = [_address(x) for x in arrays]
        spans = sorted((a, a + x.nbytes, k) for k, (a, x) in enumerate(zip(addresses, arrays)))
        shared = set()  # inputs whose bytes overlap another input's: none is given away
        end, last = -1, -1
        for start, stop, k in spans:
            if start < end and stop > start:
                shared.update((k, last))
            if stop > end:
                end, last = stop, k
        outputs: list[np.ndarray | None] = [None] * len(self._out)
        for j, k in self._donated:
            x = arrays[k]
            if k in shared or not x.flags.writeable:
                x = arrays[k] = x.copy()  # the caller's array stays as it was
                addresses[k] = _address(x)
            outputs[j] = x
        outputs = [np.empty(shape, dtype) if out is None else out
                   for out, shape, (_, _, dtype) in zip(outputs, shapes, self._out)]
        with self._lock:
            for k, address in enumerate(addresses):
                self._args[k] = address
            self._last_inputs = [None] * len(arrays)
            if env is None:
                self._call(len(arrays), outputs)
            else:
                self._call_sized(len(arrays), outputs, env)
        return self._repeated(outputs)

    def _call_sized(self, base: int, outputs: list[np.ndarray], env: dict[str, int],
                    needed: int | None = None) -> None:
        """`_call` for a program with dynamic sizes: the arena grown to what these sizes need
        (`needed` bytes, when known), their values passed as the entry's `sizes` (in
        `Program.symbols` order)."""
        if needed is None:
            needed = size_value(self._arena_size, env)
        if needed > self.arena.nbytes:
            self._allocate_arena(needed)
        for j, name in enumerate(self._symbols):
            self._sizes[j] = env[name]
        self._call(base, outputs, self._sizes)

    def profile(self, inputs: list[np.ndarray], repeat: int = 3) -> list[tuple[str, float]]:
        """Seconds per kernel (best of `repeat`), each kernel called alone on one thread over
        its whole range, in launch order; for finding the kernel a slow program spends its
        time in.  The outputs are computed as by `run` and dropped (donated inputs are
        copied first: the caller's arrays stay as they were)."""
        if self._symbols:
            raise ValueError("CpuExecutable.profile: not available for a program with dynamic "
                             "sizes yet")
        arrays = self.check_inputs(inputs)
        for _, k in self._donated:
            arrays[k] = arrays[k].copy()
        outputs = [np.empty(shape, dtype) for _, shape, dtype in self._out]
        where = {name: x.ctypes.data for (name, _, _), x in zip(self._in, arrays)}
        for (name, _, _), j in zip(self._out, self._out_slot):
            where.setdefault(name, outputs[j].ctypes.data)
        for name, const in zip(sorted(self.program.constants), self._constants):
            where[name] = const.ctypes.data
        for buf in self.program.buffers:
            if buf.kind == "temp":
                where[buf.name] = self._arena_address + buf.offset
        ranges = self.program.metadata.get("ranges", {})
        moved = self.program.metadata.get("arg_offsets") or [{}] * len(self.program.kernels)
        times = []
        with self._lock:
            for info, offsets in zip(self.program.kernels, moved):
                fn = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * len(info.args),
                                      ctypes.c_int64, ctypes.c_int64)(self._symbol(info.name))
                args = [where[name] + offsets.get(name, 0) for name in info.args] \
                    + [0, ranges[info.name]]
                best = float("inf")
                for _ in range(max(1, repeat)):
                    start = time.perf_counter()
                    fn(*args)
                    best = min(best, time.perf_counter() - start)
                times.append((info.name, best))
        return times


Executable = CpuExecutable  # the runtime protocol's name for the class (see neurenix.runtime)


SIZE_PLANS = 256
"""How many input-shape tuples a program with dynamic sizes remembers its sizes for."""


def _address(x: np.ndarray) -> int:
    """The data pointer of a C-contiguous array (the fast way when the buffer is writable)."""
    try:
        return _addressof(_from_buffer(x))
    except (TypeError, ValueError):
        return x.ctypes.data


_addressof = ctypes.addressof
_from_buffer = ctypes.c_char.from_buffer
