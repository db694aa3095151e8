"""LLVM optimisation and code emission, run in a persistent worker process (or here).

Why: llvmlite's new pass manager leaves about 100 KiB behind per run that nothing frees
(closing the pass builder does not, and one manager cannot be reused), so a process that
compiles thousands of shapes would grow without bound.  `compile_ir` therefore hands LLVM IR
text to a child process, which optimises it (O3, the same pipeline as here) and returns the
object code (or assembly, or optimised IR), byte for byte what `build` gives in-process.

The child is a plain `python -S -c` that loads this file by path and imports only the
standard library and llvmlite (from the directory this process found it in; no `site`, no
current directory on its path) — not the caller's `__main__` (as multiprocessing's spawn
would), not NumPy, not Neurenix — and is started with `subprocess` (fork plus exec, safe in a
threaded parent).  A process's first few compiles (`EAGER_LIMIT`) run in-process, so that a
process compiling a handful of programs never pays for a worker; the worker is started
halfway through them, to start up (about 0.1 s of CPU: Python, llvmlite, a warm-up compile)
while the last of them run.  It serves one request at a time (callers from several threads take
turns), and is replaced after `RECYCLE_AFTER` compiles or once its RSS passes `RSS_LIMIT`, so
its own leak stays bounded too.  Idle, it costs about 20 MiB of private memory (LLVM's code
pages are shared with this process); it exits when its input closes: at the parent's
interpreter exit (`shutdown`), or when the parent dies, even by a kill.  A worker that dies
is replaced at once and the compile retried; two deaths in a row without an answer switch
this process to in-process compiles for good, with one logged warning.
`NEURENIX_COMPILE_WORKER=0` compiles in-process throughout.
"""
from __future__ import annotations

import atexit
import importlib.util
import json
import logging
import os
import select
import signal
import struct
import subprocess
import sys
import threading
from typing import Any

ENV = "NEURENIX_COMPILE_WORKER"
RECYCLE_AFTER = 256  # compiles one worker serves before it is replaced
RSS_LIMIT = 1 << 30  # bytes of worker RSS after which it is replaced
EAGER_LIMIT = 8  # a process's first compiles run in-process (the worker starts halfway)
KINDS = ("object", "assembly", "ir")

_FRAME = struct.Struct("!II")  # header bytes, payload bytes
_ERRORS: dict[str, type[Exception]] = {
    "RuntimeError": RuntimeError, "ValueError": ValueError, "TypeError": TypeError,
    "MemoryError": MemoryError, "NameError": NameError, "KeyError": KeyError}

_LLVM_READY = False
_LLVM_LOCK = threading.Lock()

log = logging.getLogger("neurenix.runtime.compile_worker")


# ---- the compile itself (in the worker, or in-process) ------------------------------------


def llvm() -> Any:
    """llvmlite.binding with the native target initialised (once per process)."""
    global _LLVM_READY
    import llvmlite.binding as binding

    with _LLVM_LOCK:
        if not _LLVM_READY:
            binding.initialize_native_target()
            binding.initialize_native_asmprinter()
            _LLVM_READY = True
    return binding


def target_machine(jit: bool = False) -> Any:
    """An LLVM target machine for the host CPU, with all its features, at opt level 3:
    position-independent code for a shared library, or code for MCJIT (`jit`)."""
    binding = llvm()
    target = binding.Target.from_triple(binding.get_process_triple())
    return target.create_target_machine(cpu=binding.get_host_cpu_name(),
                                        features=binding.get_host_cpu_features().flatten(),
                                        opt=3, reloc="pic" if not jit else "default",
                                        codemodel="jitdefault" if jit else "small", jit=jit)


def optimize(source: str, tm: Any = None) -> Any:
    """Parse LLVM IR text and run the O3 pipeline (loop and SLP vectorisation on) over it."""
    binding = llvm()
    tm = tm or target_machine()
    module = binding.parse_assembly(source)
    module.triple = tm.triple
    module.data_layout = str(tm.target_data)
    module.verify()
    options = binding.create_pipeline_tuning_options(speed_level=3)
    options.loop_vectorization = True
    options.slp_vectorization = True
    options.loop_unrolling = False  # unrolling doubles compile time for little gain here
    options.loop_interleaving = True
    builder = binding.create_pass_builder(tm, options)
    builder.getModulePassManager().run(module, builder)
    return module


def build(source: str, kind: str = "object", jit: bool = False) -> bytes:
    """Optimise LLVM IR text for the host and give its object code, assembly or optimised
    IR (`kind`, the last two as UTF-8), in this process."""
    if kind not in KINDS:
        raise ValueError(f"compile_worker: unknown kind {kind!r}; known: {KINDS}")
    tm = target_machine(jit)
    module = optimize(source, tm)
    if kind == "object":
        return tm.emit_object(module)
    if kind == "assembly":
        return tm.emit_assembly(module).encode()
    return str(module).encode()


# ---- the wire format ----------------------------------------------------------------------


def _read_exact(fd: int, n: int) -> bytes:
    """Exactly `n` bytes from `fd`; EOFError when it closes first."""
    chunks = []
    while n:
        chunk = os.read(fd, min(n, 1 << 20))
        if not chunk:
            raise EOFError("compile worker pipe closed")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _write_frame(fd: int, header: dict, payload: bytes) -> None:
    """One message: its sizes, a JSON header and raw payload bytes."""
    head = json.dumps(header).encode()
    data = memoryview(_FRAME.pack(len(head), len(payload)) + head + payload)
    while data:
        data = data[os.write(fd, data):]


def _read_frame(fd: int) -> tuple[dict, bytes]:
    """One message written by `_write_frame`."""
    head_size, payload_size = _FRAME.unpack(_read_exact(fd, _FRAME.size))
    header = json.loads(_read_exact(fd, head_size))
    return header, _read_exact(fd, payload_size)


def _memory() -> tuple[int, int]:
    """This process's resident memory and its peak, in bytes (Linux's /proc; elsewhere the
    peak for both)."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak *= 1 if sys.platform == "darwin" else 1024
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"), peak
    except (OSError, ValueError, IndexError):
        return peak, peak


# ---- the worker's side --------------------------------------------------------------------


def serve() -> None:
    """The worker's loop: read a request (LLVM IR text and what to make of it), build it,
    answer with the bytes or the error; exit when the input closes."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    requests, answers = os.dup(0), os.dup(1)
    os.dup2(2, 1)  # stray writes to stdout must not corrupt the answers
    build(_WARM_UP)  # load LLVM's code while the parent is still generating IR
    hello: dict[str, Any] = {"ok": True}
    hello["rss"], hello["peak_rss"] = _memory()
    try:
        _write_frame(answers, hello, b"")
    except OSError:  # the parent is gone already
        os._exit(0)
    while True:
        try:
            header, payload = _read_frame(requests)
        except EOFError:
            os._exit(0)
        try:
            data = build(payload.decode(), header["kind"], bool(header["jit"]))
            answer: dict[str, Any] = {"ok": True}
        except Exception as e:  # noqa: BLE001 - reported to the caller, who raises it
            data, answer = b"", {"ok": False, "error": type(e).__name__, "message": str(e)}
        answer["rss"], answer["peak_rss"] = _memory()
        try:
            _write_frame(answers, answer, data)
        except OSError:  # the parent stopped listening (it exited, or gave up on this answer)
            os._exit(0)


_WARM_UP = "define void @neurenix_warm_up() {\n  ret void\n}\n"
_BOOT = ("import sys, importlib.util as u; sys.path[0] = sys.argv[2]; "
         "s = u.spec_from_file_location('neurenix_compile_worker', sys.argv[1]); "
         "m = u.module_from_spec(s); s.loader.exec_module(m); m.serve()")


# ---- the parent's side --------------------------------------------------------------------


class WorkerDied(Exception):
    """The worker could not be started, or exited before answering."""


class Worker:
    """A handle on one worker process: `request` sends IR and returns the bytes built."""

    def __init__(self) -> None:
        spec = importlib.util.find_spec("llvmlite")
        if spec is None or not spec.submodule_search_locations or not sys.executable:
            raise WorkerDied("no Python executable or llvmlite to start a worker with")
        site = os.path.dirname(list(spec.submodule_search_locations)[0])
        try:
            self.process = subprocess.Popen(
                [sys.executable, "-S", "-c", _BOOT, os.path.abspath(__file__), site],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        except OSError as e:
            raise WorkerDied(f"cannot start a compile worker: {e}") from e
        self.pid = self.process.pid
        self.ready = False  # it said hello: started up, LLVM loaded
        self.compiles = 0
        self.rss = 0
        self.peak_rss = 0

    def _receive(self) -> tuple[dict, bytes]:
        """The worker's next message; WorkerDied when it is gone."""
        assert self.process.stdout is not None
        try:
            header, data = _read_frame(self.process.stdout.fileno())
        except (OSError, EOFError, ValueError, struct.error) as e:
            raise WorkerDied(f"the compile worker (pid {self.pid}) exited: "
                             f"{type(e).__name__}: {e}") from e
        self.rss = int(header.get("rss", 0))
        self.peak_rss = max(self.peak_rss, int(header.get("peak_rss", 0)))
        return header, data

    def poll_ready(self, timeout: float = 0.0) -> bool:
        """Whether the worker has started up (waiting up to `timeout` seconds for its hello);
        WorkerDied when it exited instead."""
        if not self.ready:
            assert self.process.stdout is not None
            waiting, _, _ = select.select([self.process.stdout.fileno()], [], [], timeout)
            if waiting:
                self._receive()
                self.ready = True
        return self.ready

    def request(self, source: str, kind: str, jit: bool) -> tuple[bool, dict, bytes]:
        """Build `source` in the worker: (ok, answer header, bytes); WorkerDied when the
        worker is gone or goes while building."""
        assert self.process.stdin is not None
        if not self.ready:
            self._receive()
            self.ready = True
        try:
            _write_frame(self.process.stdin.fileno(), {"kind": kind, "jit": jit},
                         source.encode())
        except OSError as e:
            raise WorkerDied(f"the compile worker (pid {self.pid}) exited: "
                             f"{type(e).__name__}: {e}") from e
        header, data = self._receive()
        self.compiles += 1
        return bool(header.get("ok")), header, data

    def close_pipes(self) -> None:
        """Close this process's ends of the pipes (the worker then sees its input end)."""
        for pipe in (self.process.stdin, self.process.stdout):
            try:
                if pipe is not None:
                    pipe.close()
            except OSError:
                pass

    def stop(self, timeout: float = 5.0) -> None:
        """End the worker: close its input, wait for it to exit (killed after `timeout`; at
        once when it is 0)."""
        self.close_pipes()
        try:
            if timeout <= 0:
                raise subprocess.TimeoutExpired(self.process.args, timeout)
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


_LOCK = threading.Lock()
_WORKER: Worker | None = None
_FALLBACK = False  # the worker failed twice in a row: compile in-process from then on
_EXITING = False  # the interpreter is exiting: start no worker
_DEATHS = 0  # workers that died since the last answer
STATS = {"started": 0, "recycled": 0, "died": 0, "peak_rss": 0, "in_process": 0}


def enabled() -> bool:
    """Whether compiles go to the worker: `NEURENIX_COMPILE_WORKER` unset or `1` (on), `0`
    (in-process); anything else is a ValueError."""
    value = os.environ.get(ENV, "").strip()
    if value not in ("", "0", "1"):
        raise ValueError(f"{ENV} must be 0 (compile in-process) or 1 (in a worker process), "
                         f"got {value!r}")
    return value != "0" and os.name == "posix" and not _FALLBACK


def compile_ir(source: str, kind: str = "object", jit: bool = False) -> bytes:
    """What `build(source, kind, jit)` gives, built in the worker process when it is on.

    The process's first `EAGER_LIMIT` compiles run here unless a worker is ready (what they
    leave behind is about 1 MiB): a process compiling a few programs never starts one, and
    pays nothing for it.  The worker is started halfway through them, so that it has started
    up when they run out; a compile past them waits for it.  A worker that dies is replaced
    at once and the compile retried; two deaths in a row without an answer switch this
    process to in-process compiles for good, with one warning."""
    global _FALLBACK, _DEATHS
    if kind not in KINDS:
        raise ValueError(f"compile_worker: unknown kind {kind!r}; known: {KINDS}")
    if not enabled():
        return build(source, kind, jit)
    answer = None
    failure: WorkerDied | None = None
    with _LOCK:
        while _DEATHS < 2:
            try:
                eager = STATS["in_process"] < EAGER_LIMIT
                if eager and not (_WORKER is not None and _WORKER.poll_ready()):
                    if STATS["in_process"] >= EAGER_LIMIT // 2:
                        _current()  # starts up while the last eager compiles run
                    STATS["in_process"] += 1
                    break
                answer = _current().request(source, kind, jit)
            except WorkerDied as e:
                _DEATHS += 1
                failure = e
                _discard(died=True)
                continue
            except BaseException:  # interrupted between question and answer: out of step
                _discard(died=False, kill=True)
                raise
            _DEATHS = 0
            _maybe_recycle()
            break
        else:
            _FALLBACK = True
            if not _EXITING:  # (daemon threads compiling at exit finish here, quietly)
                log.warning("neurenix: the compile worker failed twice (%s); compiling in "
                            "this process from now on (its memory grows by ~100 KiB per "
                            "compile)", failure)
    if answer is None:
        return build(source, kind, jit)
    ok, header, data = answer
    if not ok:
        raise _ERRORS.get(header.get("error", ""), RuntimeError)(header.get("message", ""))
    return data


def ready(timeout: float = 30.0) -> bool:
    """Start the worker if it is on and none is running, and wait up to `timeout` seconds
    for it to start up; whether it is ready (for tools and tests that want it warm)."""
    if not enabled():
        return False
    with _LOCK:
        try:
            return _current().poll_ready(timeout)
        except WorkerDied:
            _discard(died=True)
            return False


def _current() -> Worker:
    """The live worker, started if there is none (the lock is held)."""
    global _WORKER
    if _EXITING:
        raise WorkerDied("the interpreter is exiting")
    if _WORKER is None:
        _WORKER = Worker()
        STATS["started"] += 1
    elif _WORKER.process.poll() is not None:  # killed while idle: start another
        _discard(died=False)
        return _current()
    return _WORKER


def _maybe_recycle() -> None:
    """Replace the worker (stop it, and start the next one now, to start up while the caller
    goes on) once it has
    served `RECYCLE_AFTER` compiles or its RSS has passed `RSS_LIMIT` (the lock is held)."""
    worker = _WORKER
    if worker is not None and (worker.compiles >= RECYCLE_AFTER or worker.rss >= RSS_LIMIT):
        STATS["recycled"] += 1
        _discard(died=False)
        try:
            _current()  # the next one starts up while the caller goes on
        except WorkerDied:
            pass


def _discard(died: bool, kill: bool = False) -> None:
    """Stop (or `kill`) and forget the current worker (the lock is held)."""
    global _WORKER
    worker, _WORKER = _WORKER, None
    if worker is None:
        return
    STATS["died"] += died
    STATS["peak_rss"] = max(STATS["peak_rss"], worker.peak_rss)
    worker.stop(timeout=0.0 if kill else 5.0)


def worker_pid() -> int | None:
    """The pid of the live worker process, if one is running."""
    worker = _WORKER
    return worker.pid if worker is not None and worker.process.poll() is None else None


def peak_rss() -> int:
    """The largest RSS any worker of this process reported, in bytes."""
    worker = _WORKER
    return max(STATS["peak_rss"], worker.peak_rss if worker is not None else 0)


def shutdown() -> None:
    """Stop the worker (to start afresh; at interpreter exit) and forget a fallback.  When a
    compile on another thread holds the worker for more than a second (a daemon thread at
    exit), the worker is killed instead: that compile sees it die, and cleans up."""
    global _WORKER, _FALLBACK, _DEATHS
    if not _LOCK.acquire(timeout=1.0):
        worker = _WORKER
        if worker is not None:
            worker.process.kill()
        return
    try:
        worker, _WORKER = _WORKER, None
        _FALLBACK = False
        _DEATHS = 0
    finally:
        _LOCK.release()
    if worker is not None:
        worker.stop(timeout=2.0)


def _at_exit() -> None:
    """At interpreter exit: stop the worker, and start no other (compiles still running on
    daemon threads finish in-process)."""
    global _EXITING
    _EXITING = True
    shutdown()


def _after_fork() -> None:
    """In a forked child: the parent's worker is the parent's (its pipes are closed here, so
    that the worker still sees the parent exit); the child starts its own when it compiles."""
    global _LOCK, _WORKER
    _LOCK = threading.Lock()
    worker, _WORKER = _WORKER, None
    if worker is not None:
        worker.close_pipes()
        worker.process.returncode = 0  # not this process's child: never waited for here


atexit.register(_at_exit)
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
