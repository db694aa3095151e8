"""The pass manager (records, NEURENIX_SPEC verification, NEURENIX_DEBUG printing), the debug
switches, and the rewriting utilities the passes share (`compiler.rewrite`, `compiler.pattern`).
"""
from __future__ import annotations

import numpy as np
import pytest
from neurenix.compiler import Graph, IRError, evaluate, parse_graph, structurally_equal
from neurenix.compiler.debug import debug, debug_level, spec, spec_enabled
from neurenix.compiler.graph.ir import make_node
from neurenix.compiler.graph.pattern import P, PatternMatcher, RewriteContext, Rule, Var, match
from neurenix.compiler.graph.rewrite import fresh_names, rebuild, substitute
from neurenix.compiler.passes import (
    SIMPLIFY_STAGES,
    Stage,
    StageError,
    StageRecord,
    cse,
    dce,
    run_pipeline,
    simplify,
)

TEXT = """
graph main(%x: f32[2,3]) {
  %0 = exp(%x) : f32[2,3]
  %1 = exp(%x) : f32[2,3]
  %2 = neg(%x) : f32[2,3]
  %3 = add(%0, %1) : f32[2,3]
  return %3
}
"""


@pytest.fixture
def graph() -> Graph:
    return parse_graph(TEXT)


def _reversed(graph: Graph) -> Graph:
    """A deliberately broken pass: nodes out of topological order."""
    return Graph(graph.inputs, list(reversed(graph.nodes)), graph.outputs, graph.constants)


STAGES = [Stage("cse", cse, "merge the two exps"), Stage("dce", dce, "drop the neg")]


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("NEURENIX_SPEC", raising=False)
    monkeypatch.delenv("NEURENIX_DEBUG", raising=False)


# ---- run_pipeline -----------------------------------------------------------------------------


def test_pipeline_records_every_stage(graph):
    out, records = run_pipeline(graph, STAGES)
    assert [r.name for r in records] == ["cse", "dce"]
    assert all(isinstance(r, StageRecord) and r.seconds >= 0 for r in records)
    assert [(r.nodes_before, r.nodes_after) for r in records] == [(4, 3), (3, 2)]
    assert records[-1].text == str(out)
    assert "neg" in records[0].text and "neg" not in records[1].text
    assert out.ops_count() == 2


def test_simplify_stages_as_a_pipeline_match_one_round_of_simplify(graph):
    out, records = run_pipeline(graph, SIMPLIFY_STAGES)
    assert [r.name for r in records] == ["constant_fold", "algebraic", "cse", "dce"]
    assert all(s.why for s in SIMPLIFY_STAGES)
    assert structurally_equal(out, simplify(graph))


def test_spec_names_the_stage_that_broke_the_graph(graph, monkeypatch):
    stages = [STAGES[0], Stage("reverse", _reversed, "a bug"), STAGES[1]]
    monkeypatch.setenv("NEURENIX_SPEC", "1")
    with pytest.raises(StageError, match=r"stage 'reverse' produced an invalid graph: .* before "
                                         r"it is defined"):
        run_pipeline(graph, stages)


def test_without_spec_a_broken_stage_goes_unchecked(graph):
    out, _ = run_pipeline(graph, [Stage("reverse", _reversed, "a bug")])
    with pytest.raises(IRError):
        out.verify()
    with spec(True), pytest.raises(StageError, match="'reverse'"):
        run_pipeline(graph, [Stage("reverse", _reversed, "a bug")])


def test_a_stage_must_return_a_graph(graph):
    with pytest.raises(StageError, match="stage 'oops' returned NoneType"):
        run_pipeline(graph, [Stage("oops", lambda g: None, "returns nothing")])


def test_an_error_inside_a_stage_is_annotated_with_the_stage(graph):
    def explode(g: Graph) -> Graph:
        raise ZeroDivisionError("boom")

    with pytest.raises(ZeroDivisionError, match="boom") as info:
        run_pipeline(graph, [Stage("explode", explode, "to test errors")])
    assert info.value.__notes__ == ["while running compiler stage 'explode' (to test errors)"]


def test_debug_2_prints_each_stage_graph_to_stderr(graph, capsys):
    with debug(2):
        out, _ = run_pipeline(graph, STAGES)
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "=== after cse: 4 -> 3 ops" in captured.err
    assert "=== after dce: 3 -> 2 ops" in captured.err
    assert str(out) in captured.err


def test_debug_below_2_prints_nothing(graph, capsys, monkeypatch):
    monkeypatch.setenv("NEURENIX_DEBUG", "1")
    run_pipeline(graph, STAGES)
    assert capsys.readouterr().err == ""
    monkeypatch.setenv("NEURENIX_DEBUG", "2")
    run_pipeline(graph, STAGES)
    assert "=== after dce" in capsys.readouterr().err


# ---- the switches ------------------------------------------------------------------------------


def test_debug_level_from_env_and_overrides(monkeypatch):
    assert debug_level() == 0
    monkeypatch.setenv("NEURENIX_DEBUG", "3")
    assert debug_level() == 3
    with debug(0):
        assert debug_level() == 0
        with debug(4):
            assert debug_level() == 4
        assert debug_level() == 0
    assert debug_level() == 3
    monkeypatch.setenv("NEURENIX_DEBUG", "lots")
    with pytest.raises(ValueError, match="NEURENIX_DEBUG must be an integer"):
        debug_level()


def test_spec_switch(monkeypatch):
    assert not spec_enabled()
    monkeypatch.setenv("NEURENIX_SPEC", "1")
    assert spec_enabled()
    with spec(False):
        assert not spec_enabled()
    monkeypatch.setenv("NEURENIX_SPEC", "0")
    assert not spec_enabled()


# ---- rewrite utilities --------------------------------------------------------------------------


def test_substitute_can_wrap_a_node_and_rewires_uses(graph):
    exp0 = graph.nodes[1]
    wrapped = make_node("tanh", (exp0,), {})
    out = substitute(graph, {exp0: wrapped})
    out.verify()
    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    (got,) = evaluate(out, [x])
    np.testing.assert_allclose(got, np.tanh(np.exp(x)) + np.exp(x), rtol=1e-6)
    assert out.inputs[0] is graph.inputs[0]


def test_substitute_an_input_keeps_the_signature(graph):
    x = graph.inputs[0]
    out = dce(substitute(graph, {x: make_node("neg", (x,), {})}))
    out.verify()
    assert out.inputs == graph.inputs and out.nodes[0] is x
    data = np.ones((2, 3), np.float32)
    np.testing.assert_allclose(evaluate(out, [data])[0], 2 * np.exp(-data), rtol=1e-6)


def test_a_replacement_must_keep_the_type(graph):
    x = graph.inputs[0]
    with pytest.raises(IRError, match="exp node of type f32\\[2,3\\] produced a permute"):
        rebuild(graph, lambda n: make_node("permute", (x,), {"perm": (1, 0)})
                if n.op == "exp" else None)


def test_fresh_names_skip_taken_ones():
    fresh = fresh_names(["k0", "k2"], "k")
    assert [fresh(), fresh(), fresh()] == ["k1", "k3", "k4"]


def test_patterns_bind_names_consistently(graph):
    x, e0, e1 = graph.nodes[0], graph.nodes[1], graph.nodes[2]
    add = graph.nodes[4]
    ctx = RewriteContext(graph.constants)
    same = P("add", Var("a"), Var("a"))
    assert not match(same, add, ctx, {})
    bound: dict = {}
    assert match(P("add", P("exp", Var("x")), P("exp", Var("x"))), add, ctx, bound)
    assert bound["x"] is x
    assert not match(P(("neg", "mul"), Var("y")), e0, ctx, {})
    matcher = PatternMatcher([Rule("exp_to_neg", P("exp", Var("x")),
                                   lambda ctx, root, x: make_node("neg", (x,), {}))])
    assert matcher.rewrite(e1, ctx).op == "neg" and ctx.fired["exp_to_neg"] == 1
    assert matcher.rewrite(add, ctx) is None
