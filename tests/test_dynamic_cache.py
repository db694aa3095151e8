"""Shape-polymorphic programs in the disk cache: a second compile of a dynamic function (in
this process or a new one) loads its symbolic programs, which give what a fresh build gives;
keys hold every symbol's range, so other bounds compile their own programs; the graph text
round-trips with dynamic sizes; a build that records a guard is not stored."""
import os
import subprocess
import sys

import numpy as np
import pytest
from neurenix.compiler.targets import default_target

import neurenix
from neurenix import nn

pytestmark = pytest.mark.skipif(default_target() != "llvm",
                                reason="the disk cache holds LLVM machine code")

SIZES = (5, 9, 2, 64, 100)


def _x(n, seed=0):
    return neurenix.tensor(np.random.default_rng(seed + n).standard_normal((n, 4))
                           .astype(np.float32))


def _y(n):
    return neurenix.tensor(np.arange(n, dtype=np.int64) % 3)


def _model():
    neurenix.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()


def _forward(dynamic=True, keep=None):
    """Compile a dynamic MLP forward and run it at SIZES (always from this line: node sources
    are part of the key): the outputs and the stats (`keep`, a list, gets the Compiled)."""
    compiled = neurenix.compile(_model(), dynamic=dynamic)
    if keep is not None:
        keep.append(compiled)
    with neurenix.no_grad():
        outs = [compiled(_x(n)).numpy().copy() for n in SIZES]
    return outs, compiled.stats()


def _training():
    """Three training steps at each batch size of a dynamic training step: losses, final
    weights and the stats."""
    model = _model().train()
    opt = neurenix.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    crit = nn.CrossEntropyLoss()

    def step(x, y):
        opt.zero_grad()
        loss = crit(model(x), y)
        loss.backward()
        opt.step()
        return loss

    compiled = neurenix.compile(step, dynamic=True)
    losses = [compiled(_x(n), _y(n)).item() for n in SIZES for _ in range(3)]
    return losses, [p.detach().numpy().copy() for p in model.parameters()], compiled.stats()


def _kinds(directory):
    from neurenix.compilation import compile_cache
    kinds = {}
    for path in sorted(directory.glob("*.bin")):
        entry = compile_cache.load(path.stem)
        assert entry is not None, path
        kinds.setdefault(entry.record["kind"], []).append(path.stem)
    return kinds


def test_a_dynamic_forward_hits_and_agrees(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURENIX_CACHE_DIR", str(tmp_path))
    first, stats = _forward()
    assert stats["cache"] == "miss" and "dynamic" in stats
    kinds = _kinds(tmp_path)  # and the thread pool's library, if it was built
    assert (len(kinds["program"]), len(kinds["built"])) == (1, 1)
    second, stats = _forward()
    assert stats["cache"] == "hit"
    assert set(stats["seconds"]) == {"trace_and_passes", "cache_load"}
    assert stats["dynamic"]["symbols"] == {"s0": {"lo": 2, "hi": None, "traced": 5}}
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)


def test_a_dynamic_training_step_hits_and_trains_the_same(tmp_path, monkeypatch):
    monkeypatch.setenv("NEURENIX_CACHE_DIR", str(tmp_path))
    losses, weights, stats = _training()
    assert stats["cache"] == "miss" and "dynamic" in stats
    again, weights_again, stats = _training()
    assert stats["cache"] == "hit" and "dynamic" in stats
    assert again == losses
    for a, b in zip(weights, weights_again):
        np.testing.assert_array_equal(a, b)


def test_a_loaded_program_is_what_a_fresh_build_gives(tmp_path, monkeypatch):
    """The program read back (sizes as polynomials, symbols, metadata) equals the one built,
    and its build info (byte counts that are polynomials) comes back as it went in."""
    from neurenix.compilation import compile_cache
    monkeypatch.setenv("NEURENIX_CACHE_DIR", str(tmp_path))
    compiled = neurenix.compile(_model(), dynamic=True)
    with neurenix.no_grad():
        compiled(_x(5))
    [entry] = [e for es in compiled._cache.values() for e in es]
    built = entry.forward.program
    assert built.symbols == ("s0",)
    [key] = _kinds(tmp_path)["program"]
    program, info, _, library = compile_cache.read_program(compile_cache.load(key))
    assert program.constants.keys() == built.constants.keys()
    program.constants, built.constants = {}, {}
    assert program == built
    assert str(info["planned_bytes"]) == str(entry.stats["bytes_planned"])


HIT_SCRIPT = """
import numpy as np, neurenix
from neurenix import nn
neurenix.manual_seed(0)
model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
compiled = neurenix.compile(model, dynamic=True)
rng = np.random.default_rng(0)
with neurenix.no_grad():
    outs = [compiled(neurenix.tensor(rng.standard_normal((n, 4)).astype(np.float32))).numpy()
            for n in (5, 9, 2, 64, 100)]
print(compiled.stats()["cache"], float(sum(o.sum() for o in outs)).hex())
"""


def test_a_new_process_loads_the_symbolic_programs(tmp_path):
    env = dict(os.environ, NEURENIX_CACHE_DIR=str(tmp_path))
    runs = [subprocess.run([sys.executable, "-c", HIT_SCRIPT], env=env, capture_output=True,
                           text=True, check=True).stdout.split() for _ in range(2)]
    assert [r[0] for r in runs] == ["miss", "hit"]
    assert runs[0][1] == runs[1][1]


def test_other_bounds_do_not_share_an_entry_and_other_hints_do(tmp_path, monkeypatch):
    """The keys hold each symbol's range, not its hint: a program built at any size is
    correct for every size in its range."""
    monkeypatch.setenv("NEURENIX_CACHE_DIR", str(tmp_path))
    states = []
    for bounds, first in (((2, 64), 5), ((2, None), 5), ((2, 64), 9), ((2, None), 33)):
        compiled = neurenix.compile(_model(), dynamic={"x": {0: bounds}})
        with neurenix.no_grad():
            want = [compiled(_x(n)).numpy() for n in (first, 7)]
        states.append(compiled.stats()["cache"])
        assert compiled.stats()["dynamic"]["symbols"]["s0"]["hi"] == bounds[1]
        with neurenix.no_grad():
            fresh = neurenix.compile(_model(), dynamic=False)
            for n, got in zip((first, 7), want):
                np.testing.assert_allclose(got, fresh(_x(n)).numpy(), rtol=1e-5, atol=1e-6)
    assert states == ["miss", "miss", "hit", "hit"]


def _dynamic_graphs():
    """Graphs with dynamic sizes in types (`-1 + s0`, `4*s0`) and attributes (full's value
    and shape, slice stops, reshape shapes), traced and optimised, forward and training."""
    def sizes(x):
        return (x.mean(0) + x[1:].sum(0) + x.reshape(-1)[2:].sum()
                + neurenix.zeros(x.shape[0] * 2 + 1).sum())

    compiled = neurenix.compile(sizes, dynamic=True)
    compiled(_x(5))
    model = _model().train()
    trained = neurenix.compile(lambda x: (model(x) ** 2).mean(), dynamic=True)
    trained(_x(5)).backward()
    return [e.graph for f in (compiled, trained) for es in f._cache.values() for e in es]


def test_graphs_with_dynamic_sizes_round_trip_through_their_text(monkeypatch):
    from neurenix.compiler.graph.text import parse_graph, print_graph
    from neurenix.compiler.symbolic import Dim, ShapeEnv, shape_env
    monkeypatch.setenv("NEURENIX_CACHE_DIR", "off")
    graphs = _dynamic_graphs()
    assert len(graphs) == 2
    for graph in graphs:
        text = print_graph(graph)
        assert "s0" in text
        env = ShapeEnv()
        env.symbol("s0", 5)
        with shape_env(env):
            again = parse_graph(text, graph.constants)
        assert print_graph(again) == text and not env.guards
        assert any(isinstance(d, Dim) for n in again.nodes for d in n.type.shape)
    text = print_graph(graphs[0])
    for attr in ("value=s0", "stops=(s0, 4)", "shape=(4*s0,)", "shape=(1 + 2*s0,)"):
        assert attr in text, text


WRITTEN = """graph g(%x: f32[2 + 4*s0,4] param, %y: f32[s0]) {
  %0 = reduce_sum(%x) {axes=(0,)} : f32[4]
  %1 = reshape(%x) {shape=(8 + 16*s0,)} : f32[8 + 16*s0]
  %2 = slice(%y) {starts=(1,), steps=(1,), stops=(s0,)} : f32[-1 + s0]
  return %0, %1, %2
}"""


def test_a_written_symbolic_graph_round_trips():
    """Inputs whose sizes are polynomials (spaces in the type), sizes in attributes."""
    from neurenix.compiler.graph.text import parse_graph, print_graph
    from neurenix.compiler.symbolic import ShapeEnv, shape_env
    env = ShapeEnv()
    env.symbol("s0", 3)
    with shape_env(env):
        graph = parse_graph(WRITTEN)
    assert print_graph(graph) == WRITTEN and not env.guards
    assert graph.inputs[0].attr["kind"] == "param"


@pytest.mark.parametrize("text, want", [("7", 7), ("s0", "s0"), ("4*s0 + 2", "2 + 4*s0"),
                                        ("-3 + s0*s1", "-3 + s0*s1"), ("s0 - 2*s0", "-1*s0"),
                                        ("s0 - s0", 0)])
def test_sizes_parse_as_types_print_them(text, want):
    from neurenix.compiler.graph.text import parse_size
    from neurenix.compiler.symbolic import Dim
    size = parse_size(text)
    assert (size == want) if isinstance(want, int) else \
        (isinstance(size, Dim) and str(size) == want)


@pytest.mark.parametrize("text", ["", "4s0", "s0 +", "s0 / 2", "2**s0", "s0 s1"])
def test_malformed_sizes_are_refused(text):
    from neurenix.compiler.graph.ir import IRError
    from neurenix.compiler.graph.text import parse_size
    with pytest.raises(IRError):
        parse_size(text)


def test_a_malformed_symbolic_record_is_rebuilt(tmp_path, monkeypatch):
    """A built record whose graph text does not parse in this environment (a size over a
    symbol the trace does not have) is discarded; its programs' entries still hit."""
    from neurenix.compiler.symbolic import ShapeEnv, shape_env

    from neurenix.compilation import compile_cache
    monkeypatch.setenv("NEURENIX_CACHE_DIR", str(tmp_path))
    want, _ = _forward()
    [key] = _kinds(tmp_path)["built"]
    entry = compile_cache.load(key)
    compile_cache.store(key, dict(entry.record, graph=entry.record["graph"].replace(
        "f32[s0,4]", "f32[s1,4]", 1)), arrays=entry.arrays)
    got, stats = _forward()
    assert stats["cache"] == "hit"  # the passes ran again; the program's entry hit
    for a, b in zip(got, want):
        np.testing.assert_array_equal(a, b)
    env = ShapeEnv()
    env.symbol("s0", 5)
    with shape_env(env):  # a symbolic graph's types are checked in its symbols' env
        compile_cache.read_built(compile_cache.load(key))  # rewritten
    assert _forward()[1]["seconds"].keys() == {"trace_and_passes", "cache_load"}


def test_a_build_that_records_a_guard_is_not_stored(tmp_path, monkeypatch):
    """A program valid only for some sizes in range (a guard recorded while building) is
    not kept under a key naming the ranges alone; the guard reaches the program's env."""
    from neurenix.compiler import pipeline
    from neurenix.compiler.symbolic import Dim
    monkeypatch.setenv("NEURENIX_CACHE_DIR", str(tmp_path))
    build = pipeline.build

    def guarding(graph, backend, donate=None):
        for node in graph.inputs:
            if node.type.shape and isinstance(node.type.shape[0], Dim):
                assert node.type.shape[0] <= 10  # at the hint 5: records -10 + s0 <= 0
        return build(graph, backend, donate)

    monkeypatch.setattr(pipeline, "build", guarding)
    compiled = neurenix.compile(_model(), dynamic=True)
    with neurenix.no_grad():
        compiled(_x(5))
    stats = compiled.stats()
    assert stats["cache"] == "off" and "-10 + s0 <= 0" in stats["dynamic"]["guards"]
    assert not list(tmp_path.glob("*.bin"))


def test_a_symbolic_program_loads_from_its_object_code_without_a_linker(tmp_path, monkeypatch):
    """Without a system linker an entry holds object code, loaded with MCJIT: the entry
    function still takes the symbols' values as its 4th argument."""
    from neurenix.runtime import cpu
    monkeypatch.setenv("NEURENIX_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(cpu, "linker", lambda: None)
    first, _ = _forward()
    kept = []
    second, stats = _forward(keep=kept)
    assert stats["cache"] == "hit"
    [entry] = [e for es in kept[0]._cache.values() for e in es]
    assert entry.forward.loader == "mcjit" and entry.forward.program.symbols == ("s0",)
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a, b)
