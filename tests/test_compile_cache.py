"""The on-disk compile cache: hits, damaged entries rebuilt, switching it off, and trust: nothing
runs that the cache did not write (MAC-checked entries, no pickles, private directory and key)."""
import numpy as np
import pytest
from neurenix.compiler.targets import default_target

import neurenix
from neurenix import nn

pytestmark = pytest.mark.skipif(default_target() != "llvm",
                                reason="the disk cache holds LLVM machine code")


def _run(model, x):
    out, stats = _run_with_stats(model, x)
    return out, stats["cache"]


def _run_with_stats(model, x):
    """Compile and run (always from this line: node sources are part of the key)."""
    compiled = neurenix.compile(model)
    with neurenix.no_grad():
        return compiled(x).numpy().copy(), compiled.stats()


def _model():
    neurenix.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 2)).eval()


def test_second_compile_hits_and_agrees(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURENIX_CACHE_DIR", str(tmp_path))
    model, x = _model(), neurenix.randn(3, 5)
    first, state = _run(model, x)
    assert state == "miss" and list(tmp_path.glob("*.bin"))
    second, state = _run(model, x)
    assert state == "hit"
    np.testing.assert_array_equal(first, second)
    with neurenix.no_grad():
        np.testing.assert_allclose(second, model(x).numpy(), rtol=1e-5, atol=1e-6)


def test_a_different_graph_does_not_hit(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURENIX_CACHE_DIR", str(tmp_path))
    _run(_model(), neurenix.randn(3, 5))
    assert _run(_model(), neurenix.randn(4, 5))[1] == "miss"


def _corrupt_every_entry(directory):
    entries = list(directory.glob("*.bin"))
    assert len(entries) == 2  # the program, and the record of what the traced graph built
    for entry in entries:
        entry.write_bytes(entry.read_bytes()[:40] + b"garbage")


def _remove_the_program(directory):
    # the program entry is the larger one (it holds machine code)
    max(directory.glob("*.bin"), key=lambda p: p.stat().st_size).unlink()


@pytest.mark.parametrize("damage", [_corrupt_every_entry, _remove_the_program],
                         ids=["corrupt-entries", "program-gone"])
def test_a_damaged_cache_compiles_again(tmp_path, monkeypatch, damage):
    monkeypatch.setenv("NEURENIX_CACHE_DIR", str(tmp_path))
    model, x = _model(), neurenix.randn(3, 5)
    want, _ = _run(model, x)
    damage(tmp_path)
    got, state = _run(model, x)
    assert state == "miss"
    np.testing.assert_array_equal(got, want)


def test_a_hit_skips_the_passes_and_code_generation(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURENIX_CACHE_DIR", str(tmp_path))
    model, x = _model(), neurenix.randn(3, 5)
    for _ in range(2):  # the same call site: graphs carry the user's file:line
        compiled = neurenix.compile(model)
        with neurenix.no_grad():
            compiled(x)
    stats = compiled.stats()
    assert stats["cache"] == "hit"
    assert set(stats["seconds"]) == {"trace_and_passes", "cache_load"}
    assert stats["kernels"] > 0 and compiled.graph is not None


def test_a_training_step_hits_and_trains_the_same(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURENIX_CACHE_DIR", str(tmp_path))
    x, y = neurenix.randn(4, 5), neurenix.randint(0, 2, (4,))
    results = []
    for _ in range(2):
        model = _model()
        opt = neurenix.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
        crit = nn.CrossEntropyLoss()

        def step(x, y, model=model, opt=opt, crit=crit):
            opt.zero_grad()
            loss = crit(model(x), y)
            loss.backward()
            opt.step()
            return loss

        compiled = neurenix.compile(step)
        losses = [compiled(x, y).item() for _ in range(3)]
        results.append((losses, compiled.stats()["cache"]))
    assert [r[1] for r in results] == ["miss", "hit"]
    assert results[0][0] == results[1][0]


def test_cache_can_be_switched_off(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURENIX_CACHE_DIR", "off")
    assert _run(_model(), neurenix.randn(3, 5))[1] == "miss"
    assert _run(_model(), neurenix.randn(3, 5))[1] == "miss"


def test_a_changed_compiler_does_not_reuse_old_programs(tmp_path, monkeypatch):
    """The key holds a digest of Neurenix's source: an edited compiler compiles again."""
    from neurenix.compilation import compile_cache
    monkeypatch.setenv("NEURENIX_CACHE_DIR", str(tmp_path))
    model, x = _model(), neurenix.randn(3, 5)
    assert _run(model, x)[1] == "miss"
    assert _run(model, x)[1] == "hit"
    monkeypatch.setattr(compile_cache, "_CODE", ["an edited compiler"])
    assert _run(model, x)[1] == "miss"


HIT_SCRIPT = """
import sys, neurenix
from neurenix import nn
from neurenix.runtime import cpu
neurenix.manual_seed(0)
model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 2)).eval()
compiled = neurenix.compile(model)
with neurenix.no_grad():
    compiled(neurenix.ones(BATCH, 5))
print(compiled.stats()["cache"], "llvmlite.binding" in sys.modules, cpu.pool_loaded())
"""


@pytest.mark.parametrize("batch, threaded", [(3, False), (40000, True)])
def test_a_hit_in_a_new_process_does_not_load_llvm(tmp_path, batch, threaded):
    """With a system linker a cached program is a shared library: a hit needs no LLVM, for
    the thread pool a large program runs on either (its library is an entry of its own)."""
    import subprocess
    import sys

    from neurenix.runtime import cpu
    if cpu.linker() is None:
        pytest.skip("no system linker (ld) here")
    env = dict(__import__("os").environ, NEURENIX_CACHE_DIR=str(tmp_path))
    script = HIT_SCRIPT.replace("BATCH", str(batch))
    runs = [subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                           text=True, check=True).stdout.split() for _ in range(2)]
    pool = str(threaded)
    assert runs == [["miss", "True", pool], ["hit", "False", pool]]


# ---- trust: nothing runs that this cache did not write ---------------------------------------

def _cache(tmp_path, monkeypatch, name="cache"):
    """A fresh cache directory (not created yet) that compiles use from now on."""
    directory = tmp_path / name
    monkeypatch.setenv("NEURENIX_CACHE_DIR", str(directory))
    return directory


def _entries(directory):
    """The entries of a cache directory by kind: {"program": [keys], "built": [keys]}."""
    from neurenix.compilation import compile_cache
    kinds = {}
    for path in sorted(directory.glob("*.bin")):
        entry = compile_cache.load(path.stem)
        assert entry is not None, path
        kinds.setdefault(entry.record["kind"], []).append(path.stem)
    return kinds


def _miss_then_hit(model, x, want):
    """A compile after damage rebuilds (a miss with the right answer), the next one hits."""
    got, state = _run(model, x)
    assert state == "miss"
    np.testing.assert_array_equal(got, want)
    got, state = _run(model, x)
    assert state == "hit"
    np.testing.assert_array_equal(got, want)


def test_the_directory_is_private_and_the_key_file_is_0600(tmp_path, monkeypatch):
    import stat

    from neurenix.compilation import compile_cache
    directory = _cache(tmp_path, monkeypatch)
    _run(_model(), neurenix.randn(3, 5))
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    key = directory / compile_cache.SECRET_NAME
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and key.stat().st_size == 32
    assert not list(directory.glob("*.tmp"))


def test_a_hit_unpickles_nothing(tmp_path, monkeypatch):
    import pickle
    _cache(tmp_path, monkeypatch)
    model, x = _model(), neurenix.randn(3, 5)
    want, _ = _run(model, x)

    def refuse(*args, **kwargs):
        raise AssertionError("the compile cache unpickled something")

    for name in ("loads", "load", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    got, state = _run(model, x)
    assert state == "hit"
    np.testing.assert_array_equal(got, want)


class _Payload:
    """Unpickling it creates a file: evidence that an entry was unpickled."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_an_old_style_entry_with_a_valid_checksum_never_runs(tmp_path, monkeypatch):
    """Every entry replaced by a pickle whose SHA-256 checksum is right (the old format) or
    whose new-format tag is a plain SHA-256: refused, rebuilt, nothing unpickled."""
    import hashlib
    import pickle

    from neurenix.compilation import compile_cache
    directory = _cache(tmp_path, monkeypatch)
    model, x = _model(), neurenix.randn(3, 5)
    want, _ = _run(model, x)
    marker = tmp_path / "pwned"
    body = pickle.dumps(_Payload(marker))
    pickle.loads(body)  # the payload works ...
    assert marker.exists()
    marker.unlink()  # ... when unpickled
    paths = sorted(directory.glob("*.bin"))
    for k, path in enumerate(paths):
        if k % 2:
            path.write_bytes(b"NRXC1" + hashlib.sha256(body).digest() + body)
        else:
            path.write_bytes(compile_cache.MAGIC + hashlib.sha256(body).digest() + body)
    _miss_then_hit(model, x, want)
    assert not marker.exists()


def test_an_entry_edited_with_a_recomputed_checksum_is_refused(tmp_path, monkeypatch):
    import hashlib

    from neurenix.compilation import compile_cache
    directory = _cache(tmp_path, monkeypatch)
    model, x = _model(), neurenix.randn(3, 5)
    want, _ = _run(model, x)
    head = len(compile_cache.MAGIC) + 32
    [key] = _entries(directory)["program"]
    path = directory / f"{key}.bin"
    body = bytearray(path.read_bytes()[head:])
    at = body.index(b'"source":"') + len(b'"source":"')
    body[at] = ord("X") if body[at] != ord("X") else ord("Y")  # well-formed, just edited
    path.write_bytes(compile_cache.MAGIC + hashlib.sha256(body).digest() + body)
    _miss_then_hit(model, x, want)


def test_entries_copied_from_another_cache_are_refused(tmp_path, monkeypatch):
    """Another key file, another cache: its entries are rebuilt, not trusted."""
    import shutil
    other = _cache(tmp_path, monkeypatch, "other")
    model, x = _model(), neurenix.randn(3, 5)
    want, _ = _run(model, x)
    mine = _cache(tmp_path, monkeypatch, "mine")
    _run(_model(), neurenix.randn(2, 5))  # this cache has its own key now
    copied = []
    for path in other.glob("*.bin"):
        shutil.copy(path, mine / path.name)
        copied.append(mine / path.name)
    _miss_then_hit(model, x, want)
    from neurenix.compilation import compile_cache
    assert all(compile_cache.load(p.stem) is not None for p in copied)  # rewritten, ours


def test_an_entry_renamed_to_another_key_is_refused(tmp_path, monkeypatch):
    """The MAC covers the entry's name: swapping two entries of one cache refuses both."""
    directory = _cache(tmp_path, monkeypatch)
    model, x = _model(), neurenix.randn(3, 5)
    want, _ = _run(model, x)
    kinds = _entries(directory)
    program, built = (directory / f"{kinds[k][0]}.bin" for k in ("program", "built"))
    swap = directory / "swap"
    program.rename(swap)
    built.rename(program)
    swap.rename(built)
    _miss_then_hit(model, x, want)


CONSTRUCTOR_IR = """
@path = private constant [{n} x i8] c"{path}\\00"
declare i32 @creat(ptr, i32)
define internal void @ctor() {{
  %r = call i32 @creat(ptr @path, i32 420)
  ret void
}}
@llvm.global_ctors = appending global [1 x {{ i32, ptr, ptr }}]
    [{{ i32, ptr, ptr }} {{ i32 65535, ptr @ctor, ptr null }}]
"""


def _library_with_constructor(marker):
    """A shared library whose load-time constructor creates `marker`."""
    from neurenix.runtime import cpu
    path = str(marker)
    source = CONSTRUCTOR_IR.format(n=len(path) + 1, path=path)
    tm = cpu.target_machine()
    library = cpu.link_shared(tm.emit_object(cpu.optimize(source, tm)))
    assert library is not None
    return library


def test_a_swapped_library_is_never_loaded(tmp_path, monkeypatch):
    """The program entry's library replaced by one with a constructor (the MAC left as it
    was: an attacker does not have the key): refused before the library is written out or
    loaded, and rebuilt."""
    import ctypes
    import json

    from neurenix.runtime import cpu

    from neurenix.compilation import compile_cache
    if cpu.linker() is None:
        pytest.skip("no system linker (ld) here")
    directory = _cache(tmp_path, monkeypatch)
    model, x = _model(), neurenix.randn(3, 5)
    want, _ = _run(model, x)
    marker = tmp_path / "constructed"
    evil = _library_with_constructor(marker)
    probe = tmp_path / "probe.so"
    probe.write_bytes(evil)
    ctypes.CDLL(str(probe))  # the constructor works ...
    assert marker.exists()
    marker.unlink()  # ... when the library is loaded
    [key] = _entries(directory)["program"]
    path = directory / f"{key}.bin"
    blob = path.read_bytes()
    head = len(compile_cache.MAGIC) + 32
    size = int.from_bytes(blob[head:head + 8], "little")
    header = json.loads(blob[head + 8:head + 8 + size])
    offset, library = head + 8 + size, None
    for item in header["blobs"]:
        if item["name"] == "library":
            library = (offset, item["size"])
        offset += item["size"]
    assert library is not None
    item = next(i for i in header["blobs"] if i["name"] == "library")
    item["size"] = len(evil)
    new_header = json.dumps(header).encode()
    start, length = library
    tail = blob[head + 8 + size:start] + evil + blob[start + length:]
    path.write_bytes(blob[:head] + len(new_header).to_bytes(8, "little") + new_header + tail)
    _miss_then_hit(model, x, want)
    assert not marker.exists()


def _sign(key, record, blobs=None, arrays=None):
    from neurenix.compilation import compile_cache
    compile_cache.store(key, record, blobs, arrays)


def _malformed_program(key, entry):
    record = dict(entry.record)
    program = dict(record["program"])
    return [
        lambda: _sign(key, {"kind": "program"}),
        lambda: _sign(key, [1, 2, 3]),
        lambda: _sign(key, dict(record, info={"stages": 5}), entry.blobs, entry.arrays),
        lambda: _sign(key, dict(record, program=dict(program, kernels=[{"name": 1}])),
                      entry.blobs, entry.arrays),
        lambda: _sign(key, dict(record, program=dict(program, arena_bytes=-8)), entry.blobs,
                      entry.arrays),
        lambda: _sign(key, record, entry.blobs, dict(entry.arrays, junk=np.zeros(3))),
        lambda: _sign(key, dict(record, program=dict(program, metadata={"ranges": "all"})),
                      entry.blobs, entry.arrays),
        lambda: _sign(key, record, dict(entry.blobs, extra=b"more code"), entry.arrays),
    ]


def _malformed_built(key, entry):
    record = dict(entry.record)
    return [
        lambda: _sign(key, dict(record, graph="graph main() {"), arrays=entry.arrays),
        lambda: _sign(key, dict(record, graph=record["graph"].replace("(%", "(%nope", 1)),
                      arrays=entry.arrays),
        lambda: _sign(key, dict(record, programs=["../../etc/passwd", ""]),
                      arrays=entry.arrays),
        lambda: _sign(key, dict(record, programs=record["programs"][:1]), arrays=entry.arrays),
        lambda: _sign(key, dict(record, stats={"passes": [1, 2]}), arrays=entry.arrays),
        lambda: _sign(key, dict(record, backward_inputs=[["elsewhere", 0]]),
                      arrays=entry.arrays),
        lambda: _sign(key, dict(record, num_saved="3"), arrays=entry.arrays),
        lambda: _sign(key, dict(record, extra=1), arrays=entry.arrays),
    ]


@pytest.mark.parametrize("case", range(8))
@pytest.mark.parametrize("kind", ["program", "built"])
def test_a_malformed_authenticated_entry_is_rebuilt(tmp_path, monkeypatch, kind, case):
    from neurenix.compilation import compile_cache
    directory = _cache(tmp_path, monkeypatch)
    model, x = _model(), neurenix.randn(3, 5)
    want, _ = _run(model, x)
    [key] = _entries(directory)[kind]
    entry = compile_cache.load(key)
    damage = (_malformed_program if kind == "program" else _malformed_built)(key, entry)
    damage[case]()
    assert compile_cache.load(key) is not None  # authenticated: the MAC is ours
    reader = compile_cache.read_program if kind == "program" else compile_cache.read_built
    with pytest.raises(ValueError):
        reader(compile_cache.load(key))
    got, state = _run(model, x)  # a built record is rebuilt from its program's entry: a hit
    assert state == ("miss" if kind == "program" else "hit")
    np.testing.assert_array_equal(got, want)
    reader(compile_cache.load(key))  # rewritten
    got, stats = _run_with_stats(model, x)
    np.testing.assert_array_equal(got, want)
    assert set(stats["seconds"]) == {"trace_and_passes", "cache_load"}


@pytest.mark.parametrize("body", [b"", b"\x05\x00\x00\x00\x00\x00\x00\x00[1,2]",
                                  b"\xff" * 8 + b"{}", b"\x02\x00\x00\x00\x00\x00\x00\x00{}",
                                  b"\x04\x00\x00\x00\x00\x00\x00\x00\xff\xfe{}"],
                         ids=["empty", "list", "too-long", "no-fields", "not-utf8"])
def test_an_authenticated_entry_with_a_bad_layout_is_rebuilt(tmp_path, monkeypatch, body):
    from neurenix.compilation import compile_cache
    directory = _cache(tmp_path, monkeypatch)
    model, x = _model(), neurenix.randn(3, 5)
    want, _ = _run(model, x)
    secret = (directory / compile_cache.SECRET_NAME).read_bytes()
    for path in directory.glob("*.bin"):
        tag = compile_cache._mac(secret, path.stem, body)
        path.write_bytes(compile_cache.MAGIC + tag + body)
        assert compile_cache.load(path.stem) is None
    _miss_then_hit(model, x, want)


def test_a_library_that_does_not_load_is_replaced(tmp_path, monkeypatch):
    """An authenticated program entry whose library cannot be loaded: the program is built
    again from its source, and the entry rewritten with a library that loads."""
    from neurenix.compilation import compile_cache
    directory = _cache(tmp_path, monkeypatch)
    model, x = _model(), neurenix.randn(3, 5)
    want, _ = _run(model, x)
    [key] = _entries(directory)["program"]
    entry = compile_cache.load(key)
    if "library" not in entry.blobs:
        pytest.skip("programs are stored as object code here (no system linker)")
    _sign(key, entry.record, {"library": b"not a library"}, entry.arrays)
    got, _ = _run(model, x)
    np.testing.assert_array_equal(got, want)
    assert compile_cache.load(key).blobs["library"] != b"not a library"


# ---- untrusted directories and key files: the cache is off, with one warning -----------------

def _no_disk_cache(model, x, want):
    for _ in range(2):
        got, state = _run(model, x)
        assert state == "miss"
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def _warnings_about(record, path):
    from neurenix.compilation import compile_cache
    return [w for w in record if issubclass(w.category, compile_cache.CacheWarning)
            and str(path) in str(w.message)]


def test_a_directory_writable_by_others_is_not_used(tmp_path, monkeypatch):
    import warnings
    directory = _cache(tmp_path, monkeypatch)
    directory.mkdir()
    directory.chmod(0o777)
    model, x = _model(), neurenix.randn(3, 5)
    with neurenix.no_grad():
        want = model(x).numpy()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _no_disk_cache(model, x, want)
    [warning] = _warnings_about(record, directory)
    assert "writable by group or others" in str(warning.message)
    assert list(directory.iterdir()) == []


def test_a_directory_of_another_user_is_not_used(tmp_path, monkeypatch):
    import os
    import warnings

    from neurenix.compilation import compile_cache
    directory = _cache(tmp_path, monkeypatch)
    model, x = _model(), neurenix.randn(3, 5)
    want, _ = _run(model, x)
    monkeypatch.setattr(compile_cache, "_uid", lambda: os.getuid() + 1)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _no_disk_cache(model, x, want)
    [warning] = _warnings_about(record, directory)
    assert "owned by another user" in str(warning.message)


@pytest.mark.parametrize("damage", ["mode", "size", "symlink"])
def test_a_bad_key_file_turns_the_cache_off(tmp_path, monkeypatch, damage):
    import os
    import warnings

    from neurenix.compilation import compile_cache
    directory = _cache(tmp_path, monkeypatch)
    model, x = _model(), neurenix.randn(3, 5)
    want, _ = _run(model, x)
    key = directory / compile_cache.SECRET_NAME
    if damage == "mode":
        key.chmod(0o644)
    elif damage == "size":
        key.write_bytes(b"short")
    else:
        real = tmp_path / "elsewhere.key"
        real.write_bytes(key.read_bytes())
        real.chmod(0o600)
        key.unlink()
        os.symlink(real, key)
    entries = sorted(p.name for p in directory.glob("*.bin"))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        _no_disk_cache(model, x, want)
    assert len(_warnings_about(record, key)) == 1  # once per path and process
    assert sorted(p.name for p in directory.glob("*.bin")) == entries


def test_the_key_file_is_created_once_when_processes_race(tmp_path):
    import threading

    from neurenix.compilation import compile_cache
    tmp_path.chmod(0o700)
    secrets = []

    def read():
        secrets.append(compile_cache._read_secret(tmp_path, create=True))

    threads = [threading.Thread(target=read) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(secrets)) == 1 and len(secrets[0]) == 32
    assert [p.name for p in tmp_path.iterdir()] == [compile_cache.SECRET_NAME]


# ---- faults: compiling goes on ----------------------------------------------------------------

def test_an_unwritable_cache_only_costs_compiles(tmp_path, monkeypatch):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("NEURENIX_CACHE_DIR", str(blocker / "cache"))
    model, x = _model(), neurenix.randn(3, 5)
    with neurenix.no_grad():
        want = model(x).numpy()
    _no_disk_cache(model, x, want)


def test_a_full_disk_leaves_no_partial_entries(tmp_path, monkeypatch):
    import errno
    import os

    from neurenix.compilation import compile_cache
    directory = _cache(tmp_path, monkeypatch)
    model, x = _model(), neurenix.randn(3, 5)
    with neurenix.no_grad():
        want = model(x).numpy()

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(compile_cache.os, "replace", full)
    _no_disk_cache(model, x, want)
    monkeypatch.setattr(compile_cache.os, "replace", os.replace)
    assert not list(directory.glob("*.tmp")) and not list(directory.glob("*.bin"))


def test_the_directory_deleted_while_running(tmp_path, monkeypatch):
    import shutil
    directory = _cache(tmp_path, monkeypatch)
    model, x = _model(), neurenix.randn(3, 5)
    want, _ = _run(model, x)
    shutil.rmtree(directory)
    _miss_then_hit(model, x, want)


def test_a_cached_program_that_cannot_be_loaded_is_built_again(tmp_path, monkeypatch):
    from neurenix.runtime import cpu
    _cache(tmp_path, monkeypatch)
    model, x = _model(), neurenix.randn(3, 5)
    want, _ = _run(model, x)

    class Broken(cpu.CpuExecutable):
        def __init__(self, program, object_code=None, library=None):
            if object_code is not None or library is not None:
                raise OSError("cannot load the cached library")
            super().__init__(program)

    monkeypatch.setattr(cpu, "Executable", Broken)
    got, state = _run(model, x)
    assert state == "miss"
    np.testing.assert_array_equal(got, want)


def test_a_program_that_cannot_be_loaded_at_all_is_reported(tmp_path, monkeypatch):
    from neurenix.runtime import cpu
    _cache(tmp_path, monkeypatch)

    class Broken(cpu.CpuExecutable):
        def __init__(self, program, object_code=None, library=None):
            raise OSError("no executable memory")

    monkeypatch.setattr(cpu, "Executable", Broken)
    with pytest.raises(RuntimeError, match="cannot be loaded: OSError: no executable memory"):
        _run(_model(), neurenix.randn(3, 5))


def _script(code, cache, cwd=None, script=None):
    import os
    import subprocess
    import sys
    env = dict(os.environ, NEURENIX_CACHE_DIR=str(cache))
    args = [sys.executable, str(script)] if script else [sys.executable, "-c", code]
    return subprocess.Popen(args, env=env, cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(process):
    out, err = process.communicate(timeout=600)
    assert process.returncode == 0, err
    return out.split()


def test_two_processes_compiling_at_once(tmp_path):
    cache = tmp_path / "cache"
    script = HIT_SCRIPT.replace("BATCH", "40000")  # threaded: the pool's entry is raced too
    runs = [_finish(p) for p in [_script(script, cache) for _ in range(2)]]
    assert {r[0] for r in runs} <= {"miss", "hit"}
    assert _finish(_script(script, cache))[:3] == ["hit", "False", "True"]


CWD_SCRIPT = """
import os, neurenix
from neurenix import nn
neurenix.manual_seed(0)
model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 2)).eval()
compiled = neurenix.compile(model)
with neurenix.no_grad():
    y = compiled(neurenix.ones(3, 5))
shown = sorted({n.source for n in compiled.graph.nodes if n.source})
print(compiled.stats()["cache"], shown[0], os.path.relpath(__file__), float(y.sum()))
"""


def test_the_key_does_not_depend_on_the_working_directory(tmp_path):
    """The same script run from two directories: the second process hits, and the graph it
    loads shows the script's path relative to its own working directory."""
    script = tmp_path / "project" / "model.py"
    script.parent.mkdir()
    script.write_text(CWD_SCRIPT)
    here, deeper = tmp_path / "a", tmp_path / "b" / "c"
    here.mkdir()
    deeper.mkdir(parents=True)
    cache = tmp_path / "cache"
    first = _finish(_script(None, cache, cwd=here, script=script))
    second = _finish(_script(None, cache, cwd=deeper, script=script))
    assert [first[0], second[0]] == ["miss", "hit"]
    assert first[3] == second[3]
    for _, source, relative, _ in (first, second):
        assert source.rsplit(":", 1)[0] == relative
    assert first[1] != second[1]


# ---- the formats: a program and a graph survive the trip through text --------------------------

def test_a_program_round_trips_through_json():
    import json

    from neurenix.compiler import pipeline as pl
    from neurenix.runtime.program import program_from_json, program_to_json
    model = _model()
    compiled = neurenix.compile(model)
    with neurenix.no_grad():
        compiled(neurenix.randn(3, 5))
    program, _ = pl.build(compiled.graph, "llvm")
    data, arrays = program_to_json(program)
    back = program_from_json(json.loads(json.dumps(data)), arrays)
    assert back.constants.keys() == program.constants.keys()
    back.constants, program.constants = {}, {}
    assert back == program


def test_graphs_round_trip_through_their_text():
    """What the cache stores of a graph: non-finite attributes (max pooling's padding), a
    lambda's name, training graphs, node sources."""
    from neurenix.compiler.graph.text import parse_graph, print_graph
    neurenix.manual_seed(0)
    pool = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.MaxPool2d(2, padding=1)).eval()
    graphs = []
    for fn, args in ((pool, (neurenix.randn(1, 1, 6, 6),)),
                     (lambda a: (a * float("inf")).clamp(-1.0, 1.0), (neurenix.randn(4),))):
        compiled = neurenix.compile(fn)
        with neurenix.no_grad():
            compiled(*args)
        graphs.append(compiled.graph)
    model = _model().train()
    compiled = neurenix.compile(model)
    compiled(neurenix.randn(3, 5)).sum().backward()
    graphs.append(compiled.graph)
    for graph in graphs:
        text = print_graph(graph)
        again = parse_graph(text, graph.constants)
        assert print_graph(again) == text
        assert [n.source for n in again.nodes] == [n.source for n in graph.nodes]


def _models():
    neurenix.manual_seed(0)
    lstm = nn.LSTM(3, 4, batch_first=True)
    return {
        "conv-maxpool": (nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.MaxPool2d(2, padding=1))
                         .eval(), neurenix.randn(1, 1, 6, 6)),
        "lstm": (lambda a: lstm(a)[0], neurenix.randn(2, 3, 3)),
        "batchnorm-train": (nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6)).train(),
                            neurenix.randn(5, 4)),
        "embedding": (nn.Embedding(10, 3), neurenix.randint(0, 10, (4,))),
        "lambda-inf": (lambda a: (a * float("inf")).clamp(-1.0, 1.0), neurenix.randn(4)),
    }


@pytest.mark.parametrize("name", list(_models()))
def test_models_hit_without_passes(tmp_path, monkeypatch, name):
    """The record of each (its graph text, 0-d and other constants, stats) reads back."""
    _cache(tmp_path, monkeypatch)
    fn, x = _models()[name]
    first, _ = _run_with_stats(fn, x)
    second, stats = _run_with_stats(fn, x)
    assert set(stats["seconds"]) == {"trace_and_passes", "cache_load"}
    if name != "batchnorm-train":  # its running statistics move between the calls
        np.testing.assert_array_equal(first, second)
