"""The .gir text format: golden text, exact consts, round trips, kernels, parse errors."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import programs

import graphc as gc
from graphc.errors import GraphcError, ParseError
from graphc.ir.graph import Graph, Kernel, location
from graphc.ir.interp import interpret
from graphc.ir.ops import apply
from graphc.ir.parser import parse, parse_graph
from graphc.ir.printer import format_array, print_graph
from graphc.ir.verify import verify


def train_step() -> gc.Program:
    with location("model.py:3"):
        x = gc.input("x", (2, 3))
        w = gc.param("dense1.w", np.zeros((3, 2), np.float32))
    with location("model.py:4"):
        h = gc.relu(x @ w)
    with location("model.py:5"):
        loss = h.sum()
    with location("model.py:6"):
        update = w - 0.5 * gc.grad(loss, w)
    return gc.Program([x], loss, {w: update}, name="train_step")


GOLDEN = """\
graph train_step(%x: f32[2,3]) state(%dense1.w: f32[3,2]) {
  %0: f32[2,2] = matmul %x, %dense1.w               # model.py:4
  %1: f32[] = const 0.0                             # model.py:4
  %2: f32[2,2] = broadcast_to %1 {shape=(2, 2)}     # model.py:4
  %3: bool[2,2] = gt %0, %2                         # model.py:4
  %4: f32[] = const 0.0                             # model.py:4
  %5: f32[2,2] = broadcast_to %4 {shape=(2, 2)}     # model.py:4
  %6: f32[2,2] = where %3, %0, %5                   # model.py:4
  %7: f32[] = sum %6 {axes=(0, 1), keepdims=False}  # model.py:5
  %8: f32[] = const 0.5                             # model.py:6
  %9: f32[3,2] = broadcast_to %8 {shape=(3, 2)}     # model.py:6
  %10: f32[3,2] = transpose %x {perm=(1, 0)}        # model.py:4
  %11: f32[] = const 1.0                            # model.py:6
  %12: f32[1,1] = reshape %11 {shape=(1, 1)}        # model.py:5
  %13: f32[2,2] = broadcast_to %12 {shape=(2, 2)}   # model.py:5
  %14: f32[] = const 0.0                            # model.py:4
  %15: f32[2,2] = broadcast_to %14 {shape=(2, 2)}   # model.py:4
  %16: f32[2,2] = where %3, %13, %15                # model.py:4
  %"grad(dense1.w)": f32[3,2] = matmul %10, %16     # model.py:4
  %17: f32[3,2] = mul %9, %"grad(dense1.w)"         # model.py:6
  %18: f32[3,2] = sub %dense1.w, %17                # model.py:6
  return %7
  update %dense1.w <- %18
}
"""


def test_golden_train_step():
    assert str(train_step()) == GOLDEN


def test_golden_round_trip_keeps_names_locations_and_types():
    graph = parse_graph(GOLDEN)
    assert print_graph(graph) == GOLDEN
    grad = next(n for n in graph.nodes if n.name == "grad(dense1.w)")
    assert grad.loc == "model.py:4" and str(grad.type) == "f32[3,2]"
    assert [p.name for p in graph.params] == ["dense1.w"]
    assert not graph.params[0].attrs["storage"].value.any()  # text carries no weights
    verify(graph)


def test_locations_default_to_the_callers_line():
    x = gc.input("x", (3,))
    text = str(gc.Program([x], gc.exp(x)).graph)
    assert re.search(r"= exp %x +# .*test_printer\.py:\d+$", text, re.M)


def bare(node, name=None):
    """`node` renamed and without a source location (location(None) still records one)."""
    return dataclasses.replace(node, name=name, loc=None)


def test_names_are_quoted_and_collisions_get_suffixes():
    x = bare(gc.input("x", (2,)).node, "x")
    a = bare(apply("neg", x), "h")
    b = bare(apply("exp", a), "h")
    c = bare(apply("abs", b), "grad(x) [1]")
    d = bare(apply("sin", c), "7")
    e = bare(apply("cos", d))
    text = print_graph(Graph([e], inputs=[x]))
    assert "%h: f32[2] = neg %x\n" in text
    assert "%h.1: f32[2] = exp %h\n" in text
    assert '%"grad(x) [1]": f32[2] = abs %h.1\n' in text
    assert '%"7": f32[2] = sin %"grad(x) [1]"\n' in text
    assert '%0: f32[2] = cos %"7"\n' in text
    parsed = parse_graph(text)
    assert [n.name for n in parsed.nodes] == ["x", "h", "h.1", "grad(x) [1]", "7", None]
    assert print_graph(parsed) == text


CONSTS = [
    np.array(2.0),
    np.array([[1.0, 2.0], [3.0, 4.0]]),
    np.array([0.1, np.nan, np.inf, -np.inf, -0.0, 5e-324], np.float64),
    np.array([0.1, 1e-45, 3.4028235e38, 16777216.0, -0.0], np.float32),
    np.array([[3, -7]], np.int32),
    np.array(-(2**62), np.int64),
    np.array([True, False]),
    np.zeros((2, 0), np.float32),
]


@pytest.mark.parametrize("value", CONSTS, ids=lambda v: f"{v.dtype}{list(v.shape)}")
def test_consts_print_inline_and_round_trip_bit_exactly(value):
    graph = gc.Program([], [gc.const(value)]).graph
    text = str(graph)
    assert f"= const {format_array(value)}" in text
    parsed = parse_graph(text).outputs[0].attrs["value"]
    assert parsed.dtype == value.dtype and parsed.shape == value.shape
    assert parsed.tobytes() == value.tobytes()


def test_const_formats():
    assert format_array(np.array(2.0)) == "2.0"
    assert format_array(np.array([[1, 2], [3, 4]], np.float32)) == "[[1.0, 2.0], [3.0, 4.0]]"
    assert format_array(np.array([np.nan, -0.0])) == "[nan, -0.0]"
    assert format_array(np.float32(0.1) * np.ones(1, np.float32)) == "[0.1]"


# ---- kernels --------------------------------------------------------------------------------


def fused_example():
    """x @ w + b, relu, summed: a contraction kernel and a reduction kernel."""
    with location("net.py:1"):
        x = gc.input("x", (2, 3))
        w = gc.param("w", np.ones((3, 2), np.float32))
        b = gc.param("b", np.ones((2,), np.float32))
        h = (x @ w + b).node
        zero = apply("const", value=np.zeros((2, 2), np.float32))
        relu = dataclasses.replace(apply("maximum", h, zero), name="h")
        total = apply("sum", relu, axes=(0, 1), keepdims=False)
    graph = Graph([total], inputs=[x.node])
    order = [n for n in graph.nodes if n.op not in ("input", "param", "const")]
    first = order[: order.index(relu) + 1]
    kernels = [
        Kernel("fused_matmul_add_maximum", "contraction", tuple(first),
               (x.node, w.node, b.node, zero), (relu,)),
        Kernel("sum", "reduction", (total,), (relu,), (total,)),
    ]  # fmt: skip
    return graph, kernels


FUSED_GOLDEN = """\
graph main(%x: f32[2,3]) state(%w: f32[3,2], %b: f32[2]) {
  %0: f32[2,2] = const [[0.0, 0.0], [0.0, 0.0]]       # net.py:1
  kernel fused_matmul_add_maximum (contraction) (%x, %w, %b, %0) -> (%h) {
    %1: f32[2,2] = matmul %x, %w                      # net.py:1
    %2: f32[2,2] = broadcast_to %b {shape=(2, 2)}     # net.py:1
    %3: f32[2,2] = add %1, %2                         # net.py:1
    %h: f32[2,2] = maximum %3, %0                     # net.py:1
  }
  kernel sum (reduction) (%h) -> (%4) {
    %4: f32[] = sum %h {axes=(0, 1), keepdims=False}  # net.py:1
  }
  return %4
}
"""


def test_kernels_print_as_indented_blocks():
    graph, kernels = fused_example()
    verify(graph, kernels)
    assert print_graph(graph, kernels) == FUSED_GOLDEN


def test_kernels_parse_back():
    graph, kernels = fused_example()
    text = print_graph(graph, kernels)
    parsed, parsed_kernels = parse(text)
    assert print_graph(parsed, parsed_kernels) == text
    assert [(k.name, k.form, len(k.nodes)) for k in parsed_kernels] == [
        (k.name, k.form, len(k.nodes)) for k in kernels
    ]
    verify(parsed, parsed_kernels)


# ---- random graphs --------------------------------------------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(programs(names=True))
def test_random_graphs_round_trip(case):
    program, _ = case
    text = str(program.graph)
    parsed = parse_graph(text)
    verify(parsed)
    assert print_graph(parsed) == text


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
@given(programs())
def test_parsed_graph_computes_the_same_values(case):
    program, feed = case
    graph = program.graph
    parsed = parse_graph(str(graph))
    for original, copy in zip(graph.params, parsed.params):
        copy.attrs["storage"].value = original.attrs["storage"].value.copy()
    expected = interpret(graph, {x: feed[x.name] for x in graph.inputs})
    actual = interpret(parsed, {x: feed[x.name] for x in parsed.inputs})
    for want, got in zip([*expected[0], *expected[1]], [*actual[0], *actual[1]]):
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


@given(st.text(max_size=12).filter(lambda name: name != "x"))
def test_any_name_round_trips(name):
    x = gc.input("x", (1,)).node
    y = bare(apply("neg", x), name)
    text = print_graph(Graph([y], inputs=[x], name=name or "g"))
    parsed = parse_graph(text)
    assert parsed.name == (name or "g") and parsed.outputs[0].name == name
    assert print_graph(parsed) == text


# ---- parse errors ---------------------------------------------------------------------------

HEADER = "graph g(%x: f32[3]) {\n"
STATE = "graph g(%x: f32[3]) state(%w: f32[2]) {\n"
STATE2 = "graph g(%x: f32[3]) state(%w: f32[3]) {\n"
BAD_TEXT = [
    (HEADER + "  %0: f32[3] = frob %x\n}", 2, "unknown op 'frob'"),
    (HEADER + "  %0: f32[3] = neg %y\n}", 2, "undefined value %y"),
    (HEADER + "  %0: f32[3] = neg %x\n  %0: f32[3] = neg %x\n}", 3, "duplicate definition of %0"),
    (HEADER + "  %0: f32[4] = neg %x\n}", 2, "declared f32[4] but neg gives f32[3]"),
    (HEADER + "  %0: f64[3] = add %x, %x\n}", 2, "declared f64[3] but add gives f32[3]"),
    (HEADER + "  %0: f32[3] = add %x\n}", 2, "add takes 2 inputs, got 1"),
    (HEADER + "  %0: f32[3] = transpose %x\n}", 2, "missing attribute"),
    (HEADER + "  %0: f32[3,1] = reshape %x {shape=(2, 2)}\n}", 2, "cannot reshape"),
    (HEADER + "  %0: f32[2] = const [1.0, 2.0, 3.0]\n}", 2, "const value has shape (3,)"),
    (HEADER + "  %0: i32[2] = const [1.5, 2.0]\n}", 2, "bad const value"),
    (HEADER + "  %0: f32[2] = const [[1.0], 2.0]\n}", 2, "bad const value"),
    (HEADER + "  %0: q8[3] = neg %x\n}", 2, "unknown dtype 'q8'"),
    (HEADER + "  %0: f32[3] neg %x\n}", 2, "expected '='"),
    (HEADER + "  %0: f32[3] = neg %x $\n}", 2, "unexpected character '$'"),
    (HEADER + "  %0: f32[3] = input\n}", 2, "declared in the graph header"),
    (HEADER + "  return %x\n  update %x <- %x\n}", 3, "update target %x is not a param"),
    (STATE + "  return %x\n  update %w <- %x\n}", 3, "value is f32[3] but the param is f32[2]"),
    (STATE + "  %0: f64[3] = cast %x {dtype=float64}\n  update %w <- %0\n}", 3, "f64[3] but"),
    (STATE2 + "  update %w <- %x\n  update %w <- %x\n}", 3, "updated twice (first on line 2)"),
    ('graph g(%"a\tb": f32[3]) {\n}', 1, "bad string"),
    ('graph g(%x: f32[3]) {\n  return %"a\\qb"\n}', 2, "bad string"),
    ('graph "g\\u12"(%x: f32[3]) {\n}', 1, "bad string"),
    (HEADER + "  %0: f32[] = sum %x {axes=(0.5,), keepdims=False}\n}", 2, "must hold integers"),
    (HEADER + "  %0: f32[] = sum %x {axes=(True,), keepdims=False}\n}", 2, "got True"),
    (HEADER + "  %0: f32[] = sum %x {axes=(0,), keepdims=1}\n}", 2, "True or False, got 1"),
    (HEADER + "  %0: f32[3] = transpose %x {perm=(False,)}\n}", 2, "must hold integers"),
    (HEADER + "  %0: f32[3] = reshape %x {shape=(3.0,)}\n}", 2, "must hold integers"),
    (HEADER + "  %0: f32[3] = pad %x {widths=((0, 0, 0.5),), value=0.0}\n}", 2, "integers"),
    (HEADER + "  %0: f32[3] = pad %x {widths=((0, 0),), value=0.0}\n}", 2, "pad widths"),
    (HEADER + "  %0: f32[1] = slice %x {starts=(0,), stops=(1,), steps=(True,)}\n}", 2, "True"),
    (HEADER + "  %0: f32[3] = concat %x {axis=False}\n}", 2, "must hold integers"),
    ("graph g(%x: f32[0,2]) {\n  %0: i64[2] = argmax %x {axis=0, keepdims=False}\n}", 2, "no el"),
    (HEADER + "  return %x\n", 3, "expected an equation"),
    (HEADER + "  return %x\n}\n}", 4, "after the end of the graph"),
    ("graph g(%x: f32[3] {\n}", 1, "expected ','"),
    ("graf g() {}", 1, "expected 'graph'"),
    (HEADER + "  kernel k (blob) () -> () {\n  }\n}", 2, "unknown kernel form 'blob'"),
]


@pytest.mark.parametrize("text, line, message", BAD_TEXT, ids=[m for _, _, m in BAD_TEXT])
def test_parse_errors_name_the_line(text, line, message):
    with pytest.raises(ParseError) as info:
        parse_graph(text, filename="bad.gir")
    assert isinstance(info.value, GraphcError) and info.value.line == line
    assert f"bad.gir:{line}:" in str(info.value) and message in str(info.value)
    assert str(info.value).splitlines()[-1].strip() == "^"


@given(st.text(alphabet=st.sampled_from(list('%:=,()[]{}#"-.x0f32 \nabconstreturn')), max_size=40))
def test_garbage_gives_parse_errors_only(text):
    try:
        parse_graph(HEADER + text)
    except ParseError:
        pass


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=programs(max_ops=6), data=st.data())
def test_mangled_text_is_a_parse_error_or_a_valid_graph(case, data):
    """Deleting, duplicating or replacing a span of valid text never escapes as a crash."""
    text = print_graph(case[0].graph)
    start = data.draw(st.integers(0, len(text)))
    stop = data.draw(st.integers(start, min(len(text), start + 12)))
    insert = data.draw(
        st.sampled_from(
            [
                "",
                "%",
                "{",
                "}",
                ",",
                "f32[",
                "]",
                "\n",
                "=",
                "1e999",
                "nan",
                "%0",
                "sum",
                "(",
                "#",
                '"',
                text[start:stop],
            ]
        )
    )
    mangled = text[:start] + insert + text[stop:]
    try:
        graph = parse_graph(mangled, "fuzz.gir")
    except GraphcError:
        return
    verify(graph)
