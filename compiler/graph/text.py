"""The graph's text form: the printer (`print_graph`, defined beside `Graph` in ir.py, whose
`str()` it is) and a parser that reads the printer's output back.

    graph main(%x: f32[4,3], %w: f32[2,3] param) {
      %0 = permute(%w) {perm=(1, 0)} : f32[3,2]
      %1 = matmul(%x, %0) : f32[4,2]
      return %1
    }
"""
from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable

import numpy as np

from ...runtime.sizes import Monomial, Size, poly_from_terms
from ..symbolic import Dim, dim_from_poly
from ..types import TensorType, dtype_from_name, same_shape
from .ir import CONSTANT, INPUT, Graph, IRError, Node, make_node, print_graph

__all__ = ["parse_graph", "parse_size", "print_graph", "structurally_equal"]


_SIZES = r"[\w,\s*+-]*"  # ints, or polynomials as `str(Poly)` prints them (4*s0 + 2)
_TYPE = re.compile(rf"(\w+)\[({_SIZES})\]")
_HEAD = re.compile(r"graph\s+([^\s(]+)\((.*)\)\s*\{\s*$")
_NODE = re.compile(rf"%([\w.]+)\s*=\s*(\w+)(?:\((.*?)\))?\s*(\{{.*\}})?\s*:\s*(\w+\[{_SIZES}\])"
                   r"\s*(?:#\s*(.*))?$")
_TERM = re.compile(r"\s*([+-]?)\s*(\d+|[A-Za-z_]\w*)((?:\s*\*\s*(?:\d+|[A-Za-z_]\w*))*)\s*")


def parse_size(text: str) -> Size:
    """A size as a type prints it: an int, or a polynomial (`s0`, `4*s0 + 2`, `-3 + s0*s1`)
    as a `Dim`; IRError for anything else."""
    terms: dict[Monomial, int] = {}
    position = 0
    while position < len(text) or not terms:
        m = _TERM.match(text, position)
        if not m or (position > 0 and not m.group(1)):
            raise IRError(f"bad size {text!r}; expected an int or e.g. 4*s0 + 2")
        coefficient, monomial = -1 if m.group(1) == "-" else 1, []
        for factor in (m.group(2) + m.group(3)).split("*"):
            factor = factor.strip()
            if factor.isdigit():
                coefficient *= int(factor)
            else:
                monomial.append(factor)
        key = tuple(sorted(monomial))
        terms[key] = terms.get(key, 0) + coefficient
        position = m.end()
    size = poly_from_terms(terms)
    return size if isinstance(size, int) else dim_from_poly(size)


def _parse_type(text: str) -> TensorType:
    m = _TYPE.fullmatch(text.strip())
    if not m:
        raise IRError(f"bad type {text!r}; expected e.g. f32[2,3] or f32[s0,3]")
    dims = tuple(parse_size(d) for d in m.group(2).split(",") if d.strip())
    return TensorType(dims, dtype_from_name(m.group(1)))


_NON_FINITE = {"inf": math.inf, "nan": math.nan}


_ARITHMETIC = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul}


def _literal(node: ast.expr) -> object:
    """A Python literal, also the non-finite floats `repr` prints as `inf`, `-inf`, `nan`, and
    dynamic sizes (`s0`, `4*s0 + 2`: a `Dim` prints as its polynomial)."""
    if isinstance(node, ast.Name):
        if node.id in _NON_FINITE:
            return _NON_FINITE[node.id]
        return Dim(((node.id,), 1),)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and \
            isinstance(node.operand, ast.Name):
        return -_literal(node.operand)  # type: ignore[operator]
    if isinstance(node, ast.BinOp) and type(node.op) in _ARITHMETIC:
        left, right = _literal(node.left), _literal(node.right)
        if isinstance(left, (int, Dim)) and isinstance(right, (int, Dim)) and \
                (isinstance(left, Dim) or isinstance(right, Dim)):
            return _ARITHMETIC[type(node.op)](left, right)
    if isinstance(node, ast.Tuple):
        return tuple(_literal(e) for e in node.elts)
    if isinstance(node, ast.List):
        return [_literal(e) for e in node.elts]
    return ast.literal_eval(node)


def _parse_attrs(text: str | None) -> dict:
    if not text:
        return {}
    tree = ast.parse("dict(" + text.strip()[1:-1] + ")", mode="eval")
    body = tree.body
    if not isinstance(body, ast.Call) or body.args or any(kw.arg is None for kw in body.keywords):
        raise IRError(f"bad attributes {text!r}")
    return {kw.arg: _literal(kw.value) for kw in body.keywords}


def parse_graph(text: str, constants: dict[str, np.ndarray] | None = None,
                where: Callable[[str], str | None] | None = None) -> Graph:
    """Read a graph printed by `print_graph`; constants' arrays are passed separately, and
    `where` maps the source text after `#` back to a node's source (by default: as is)."""
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    head = _HEAD.match(lines[0]) if lines else None
    if not head or lines[-1] != "}":
        raise IRError("expected 'graph NAME(...) {' ... '}'")
    env: dict[str, Node] = {}
    inputs: list[Node] = []
    params = head.group(2).strip()
    for part in filter(None, (p.strip() for p in params.split("%"))):
        name, rest = part.rstrip(", ").split(":", 1)
        type_text, kind = rest.strip(), "data"  # a type may hold spaces: f32[2 + s0,4]
        if not type_text.endswith("]") and len(type_text.split()) > 1:
            type_text, kind = type_text.rsplit(None, 1)
        node = Node(INPUT, (), (("kind", kind),), _parse_type(type_text), name.strip())
        env[node.name] = node
        inputs.append(node)
    nodes = list(inputs)
    outputs: list[Node] = []
    for line in lines[1:-1]:
        if line.startswith("return"):
            outputs = [_value(env, t) for t in line[6:].split(",") if t.strip()]
            continue
        m = _NODE.match(line)
        if not m:
            raise IRError(f"cannot parse node line {line!r}")
        name, op, args, attrs, type_text, source = m.groups()
        if op == CONSTANT:
            node = Node(CONSTANT, (), (), _parse_type(type_text), name)
        else:
            ins = [_value(env, a) for a in (args or "").split(",") if a.strip()]
            if source is not None and where is not None:
                source = where(source)
            node = make_node(op, ins, _parse_attrs(attrs), source=source)
            want = _parse_type(type_text)  # compared structurally: no guard on a dynamic size
            if node.type.dtype != want.dtype or not same_shape(node.type.shape, want.shape):
                raise IRError(f"line {line!r}: the op's rule gives {node.type}")
        env[name] = node
        nodes.append(node)
    graph = Graph(inputs, nodes, outputs, dict(constants or {}), head.group(1))
    graph.verify()
    return graph


def _value(env: dict[str, Node], token: str) -> Node:
    """The node a `%name` operand names (IRError when no earlier line defines it)."""
    name = token.strip().lstrip("%")
    if name not in env:
        raise IRError(f"%{name} is used before it is defined")
    return env[name]


def structurally_equal(a: Graph, b: Graph) -> bool:
    """Whether two graphs compute the same thing node for node (names of temporaries aside)."""
    return print_graph(a) == print_graph(b)
