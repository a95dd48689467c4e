"""The verifier accepts what the frontend builds and names each kind of broken graph."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from strategies import programs

import graphc as gc
from graphc.errors import CompileError, VerifyError
from graphc.ir.graph import Graph, Kernel, Node, location
from graphc.ir.ops import apply
from graphc.ir.types import TensorType
from graphc.ir.verify import verify

F3 = TensorType((3,), "float32")


def small():
    """x -> h = exp(x) -> y = neg(h), all at `net.py:7`."""
    with location("net.py:7"):
        x = gc.input("x", (3,)).node
        h = dataclasses.replace(apply("exp", x), name="h")
        y = apply("neg", h)
    return x, h, y


def broken(graph_or_call, *fragments):
    with pytest.raises(VerifyError) as info:
        graph_or_call() if callable(graph_or_call) else verify(graph_or_call)
    for fragment in fragments:
        assert fragment in str(info.value)
    return info.value


def test_valid_graphs_pass():
    x, h, y = small()
    assert verify(Graph([y], inputs=[x])) is not None
    w = gc.param("w", np.ones((3, 2)))
    xs = gc.input("xs", (4, 3), dtype="float64")
    loss = gc.relu(xs @ w).mean()
    verify(gc.Program([xs], loss, {w: w - 0.1 * gc.grad(loss, w)}).graph)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(programs(names=True))
def test_random_programs_verify(case):
    program, _ = case
    verify(program.graph)


def test_wrong_type_names_node_and_location():
    x, h, _ = small()
    bad = Node("neg", (h,), {}, TensorType((4,), "float32"), "out", "net.py:9")
    error = broken(Graph([bad], inputs=[x]), "%out (neg: f32[4] at net.py:9)", "infers f32[3]")
    assert isinstance(error, CompileError)


def test_unnamed_node_is_named_as_printed():
    x, h, y = small()
    bad = Node("exp", (y,), {}, TensorType((3,), "float64"), None, "net.py:9")
    broken(Graph([bad], inputs=[x]), "%1 (exp: f64[3] at net.py:9)", "infers f32[3]")


def test_rejected_attrs():
    x, _, _ = small()
    bad = Node("transpose", (x,), {}, F3, "t", None)
    broken(Graph([bad], inputs=[x]), "%t", "transpose rejects its inputs or attrs")


def test_unknown_op_and_arity():
    x, _, _ = small()
    broken(Graph([Node("frobnicate", (x,), {}, F3)], inputs=[x]), "unknown op 'frobnicate'")
    broken(Graph([Node("neg", (x, x), {}, F3)], inputs=[x]), "neg takes 1 inputs, got 2")


def test_use_before_definition():
    x, h, y = small()
    graph = Graph([y], inputs=[x])
    graph.nodes = [x, y, h]
    broken(graph, "%0 (neg", "input %h (exp: f32[3] at net.py:7) is not defined before its use")
    graph.nodes = [y, x]  # h missing altogether
    broken(graph, "is not defined before its use")


def test_cycle():
    x, h, y = small()
    graph = Graph([y], inputs=[x])
    object.__setattr__(h, "inputs", (y,))  # exp(neg(exp(...))): only reachable by mutation
    broken(graph, "cycle %h -> %0 -> %h")


def test_outputs_and_updates_outside_the_graph():
    x, h, y = small()
    graph = Graph([h], inputs=[x])
    graph.outputs = (y,)
    broken(graph, "%0 (neg", "output is not a node of the graph")
    w = gc.param("w", np.zeros(3, np.float32)).node
    graph = Graph([h], [(w, y)], inputs=[x])
    graph.nodes = [n for n in graph.nodes if n is not y]
    broken(graph, "update of %w refers outside the graph")


def test_update_targets_and_types():
    x, h, y = small()
    broken(Graph([], [(h, y)], inputs=[x]), "%h (exp", "update target is not a param")
    w64 = gc.param("w", np.zeros(3)).node
    broken(Graph([], [(w64, y)], inputs=[x]), "%w (param: f64[3]", "value is f32[3] but the param")
    w = gc.param("w", np.zeros(3, np.float32)).node
    broken(Graph([], [(w, y), (w, h)], inputs=[x]), "param updated twice")


def test_every_compile_verifies_its_graph(monkeypatch, tmp_path):
    """Not only under GRAPHC_VERIFY: a graph built by hand (or read from a .gir file) whose
    update does not fit its param would have its step write past the param's buffer."""
    from graphc.runtime.executable import Executable

    monkeypatch.setenv("GRAPHC_VERIFY", "0")
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    x = gc.input("x", (100000,)).node
    w = gc.param("w", np.zeros(2, np.float32)).node
    big = apply("add", x, x)
    broken(lambda: Executable.build(Graph([big], [(w, big)], inputs=[x])), "update value is")
    w4 = gc.param("w4", np.zeros(4, np.float32)).node
    x4 = gc.input("x4", (4,)).node
    for value in (apply("cast", x4, dtype="float64"), apply("neg", x)):
        graph = Graph([value], [(w4, value)], inputs=[x, x4])
        broken(lambda graph=graph: Executable.build(graph, cache=False), "but the param is")
    twice = Graph([], [(w4, x4), (w4, apply("neg", x4))], inputs=[x4])
    broken(lambda: Executable.build(twice), "param updated twice")


@pytest.mark.parametrize(
    "op, attrs",
    [
        ("sum", {"axes": (0.5,), "keepdims": False}),
        ("sum", {"axes": (True,), "keepdims": False}),
        ("max", {"axes": (0,), "keepdims": 1}),
        ("argmax", {"axis": 0.0, "keepdims": False}),
        ("transpose", {"perm": (np.float64(0),)}),
        ("reshape", {"shape": 3}),
        ("broadcast_to", {"shape": (2, True)}),
        ("slice", {"starts": (0,), "stops": (2.0,), "steps": (1,)}),
        ("pad", {"widths": ((0, 1, 0.0),), "value": 0.0}),
        ("concat", {"axis": True}),
    ],
)
def test_integer_attributes_must_be_ints(op, attrs):
    """A bool is an int to Python and a float may pass a range check; both would reach
    codegen (TypeError) or silently mean 0/1."""
    x = gc.input("x", (3,)).node
    with pytest.raises(gc.ShapeError, match=f"^{op}: attribute"):
        apply(op, x, **attrs)


def test_argmax_of_an_empty_axis_is_a_shape_error():
    x = gc.input("x", (0, 3))
    with pytest.raises(gc.ShapeError, match="argmax over axis 0 of f32\\[0,3\\]"):
        x.argmax(axis=0)
    assert x.argmax(axis=1).shape == (0,)  # an empty result is fine


def test_param_storage_must_match_its_type():
    w = gc.param("w", np.zeros(3, np.float32)).node
    w.attrs["storage"].value = np.zeros(4, np.float32)
    broken(Graph([w]), "%w (param", "storage (float32 (4,)) does not match")


def test_inputs():
    x1 = gc.input("x", (3,)).node
    x2 = gc.input("x", (3,)).node
    broken(Graph([apply("add", x1, x2)], inputs=[x1, x2]), "duplicate input name 'x'")
    broken(Graph([apply("add", x1, x2)], inputs=[x1]), "%x.1 (input", "not among its inputs")
    broken(Graph([x1], inputs=[x1, apply("neg", x1)]), "is not an input")


# ---- kernels --------------------------------------------------------------------------------


def chain():
    """x -> a = exp -> b = neg -> c = abs, outputs c; two kernels [a, b] and [c]."""
    with location("net.py:3"):
        x = gc.input("x", (3,)).node
        a = dataclasses.replace(apply("exp", x), name="a")
        b = dataclasses.replace(apply("neg", a), name="b")
        c = dataclasses.replace(apply("abs", b), name="c")
    graph = Graph([c], inputs=[x])
    kernels = [Kernel("k1", "loop", (a, b), (x,), (b,)), Kernel("k2", "loop", (c,), (b,), (c,))]
    return graph, kernels


def test_valid_kernels_pass():
    graph, kernels = chain()
    verify(graph, kernels)


def replace_kernel(kernels, index, **changes):
    kernels = list(kernels)
    kernels[index] = dataclasses.replace(kernels[index], **changes)
    return kernels


def test_kernel_partition():
    graph, (k1, k2) = chain()
    a, b = k1.nodes
    broken(lambda: verify(graph, [k1]), "%c (abs: f32[3] at net.py:3): computed node in no kernel")
    # a cheap value may be recomputed in a second kernel, but stored by one only
    recomputed = replace_kernel([k1, k2], 1, nodes=(a, b, k2.nodes[0]), inputs=(graph.inputs[0],))
    verify(graph, recomputed)
    twice = replace_kernel(recomputed, 1, outputs=(b, k2.nodes[0]))
    broken(lambda: verify(graph, twice), "%b (neg", "stored by both kernel k1 and kernel k2")
    stranger = apply("sin", graph.inputs[0])
    extra = replace_kernel([k1, k2], 0, nodes=(a, b, stranger))
    broken(lambda: verify(graph, extra), "kernel k1: body node is not in the graph")


def test_kernel_interface():
    graph, kernels = chain()
    a, b = kernels[0].nodes
    no_input = replace_kernel(kernels, 0, inputs=())
    broken(lambda: verify(graph, no_input), "kernel k1: reads %x, neither in its body nor inputs")
    no_output = replace_kernel(kernels, 0, outputs=())
    broken(lambda: verify(graph, no_output), "%b (neg", "kernel k2: reads a value no kernel stores")
    bad_output = replace_kernel(kernels, 1, outputs=(kernels[1].nodes[0], a))
    broken(lambda: verify(graph, bad_output), "%a (exp", "kernel k2: output is not a body node")
    self_input = replace_kernel(kernels, 0, inputs=(graph.inputs[0], a))
    broken(lambda: verify(graph, self_input), "lists its own body node as an input")


def test_graph_output_inside_a_kernel_must_be_a_kernel_output():
    graph, kernels = chain()
    graph = Graph([graph.outputs[0], kernels[0].nodes[0]], inputs=graph.inputs)
    broken(lambda: verify(graph, kernels), "%a (exp", "program result stored by no kernel")


def test_kernel_order_and_form():
    graph, (k1, k2) = chain()
    broken(lambda: verify(graph, [k2, k1]), "kernel k2: reads a value of kernel k1, not scheduled")
    a, b = k1.nodes
    swapped = [dataclasses.replace(k1, nodes=(b, a)), k2]
    broken(lambda: verify(graph, swapped), "%b (neg", "kernel k1: body is not in dependency order")
    bad_form = [dataclasses.replace(k1, form="spiral"), k2]
    broken(lambda: verify(graph, bad_form), "kernel k1: unknown form 'spiral'")
