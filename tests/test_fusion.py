"""Fusion (passes/fusion.py): kernel counts of the programs DESIGN §4 names, golden fusion
decisions, golden fused IR text, and fused programs against the reference interpreter on
random graphs.

The golden texts live in tests/golden/fused/NAME.gir: the fused stage (`step.dump("fused")`)
printed without source locations. After a change to fusion that is meant to change them,
regenerate them with

    GRAPHC_UPDATE_GOLDEN=1 python -m pytest tests/test_fusion.py -k golden

and read the diff (`git diff tests/golden`) before committing it. Without the variable the
tests only compare.
"""

from __future__ import annotations

import difflib
import os
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from strategies import programs

import graphc as gc
from graphc.errors import ParseError
from graphc.frontend.tensor import Tensor
from graphc.ir.interp import interpret
from graphc.ir.ops import OPS, apply
from graphc.ir.parser import parse
from graphc.ir.printer import print_graph
from graphc.passes import fusion, optimize
from graphc.passes.fusion import fuse
from graphc.passes.kernels import MAX_BODY_COST, op_cost


def decisions(program) -> list[tuple[str, str, tuple[str, ...]]]:
    """(kernel name, form, ops of its body) for every kernel, in schedule order."""
    kernels = fuse(optimize(program.graph))
    return [(k.name, k.form, tuple(n.op for n in k.nodes)) for k in kernels]


def tolerance(array) -> float:
    return 1e-12 if array.dtype == np.float64 else 1e-5


def run_both(program, feed, rtol=None):
    """Compiled outputs and updates equal the interpreter's (updates read back from storage)."""
    graph = program.graph
    nodes = {n.name: n for n in graph.inputs}
    outs, ups = interpret(graph, {nodes[k]: v for k, v in feed.items()})
    outs, ups = [np.copy(v) for v in outs], [np.copy(v) for v in ups]  # params update in place
    step = gc.compile(program, cache=False)
    note = f"{graph}\n{step.dump('fused')}"
    got = step(**feed)
    got = got if isinstance(got, list) else [got]
    # a float64 result computed from float32 values carries float32 rounding
    single = any(n.dtype == "float32" for n in graph.nodes)
    for want, have in zip(outs, got, strict=True):
        tol = rtol or (1e-5 if single else tolerance(want))
        np.testing.assert_allclose(have, want, rtol=tol, atol=tol, err_msg=note)
    for (param, _), want in zip(graph.updates, ups, strict=True):
        have, tol = param.attrs["storage"].value, rtol or (1e-5 if single else tolerance(want))
        np.testing.assert_allclose(have, want, rtol=tol, atol=tol, err_msg=note)
    return step


def elementwise_chain():
    a, b, c, d = (gc.input(n, (8, 8), "float64") for n in "abcd")
    return gc.Program([a, b, c, d], gc.tanh(a * b + c) * gc.sigmoid(d) - 0.5 * a, name="chain")


def dense_relu():
    x = gc.input("x", (4, 5), "float64")
    layer = gc.nn.Dense(3, activation="relu", seed=0, dtype="float64")
    return gc.Program([x], layer(x))


def mlp_adam():
    x, y = gc.input("x", (32, 5)), gc.input("y", (32, 1))
    model = gc.nn.MLP(hidden=32, layers=3, out=1, seed=0)
    loss = gc.nn.mse_loss(model(x), y)
    return gc.Program([x, y], loss, gc.optim.Adam(model.params(), lr=1e-3).updates(loss))


def softmax_cross_entropy(classes=10):
    logits, labels = gc.input("logits", (6, classes)), gc.input("labels", (6,), "int64")
    return gc.Program([logits, labels], gc.nn.softmax_cross_entropy(logits, labels))


def feed_of(program, seed=0):
    rng = np.random.default_rng(seed)
    feed = {}
    for x in program.graph.inputs:
        if x.dtype.startswith("int"):
            feed[x.name] = rng.integers(0, 10, x.shape).astype(x.dtype)
        else:
            feed[x.name] = rng.uniform(-2, 2, x.shape).astype(x.dtype)
    return feed


def test_elementwise_chain_is_one_loop_kernel():
    program = elementwise_chain()
    (kernel,) = decisions(program)
    assert kernel[:2] == ("fused_mul_add_tanh_sigmoid_etc[a,b,c,...]", "loop")
    step = run_both(program, feed_of(program), 1e-12)
    assert step.memory.arena_bytes == 0


def test_dense_bias_relu_is_one_contraction_with_epilogue():
    program = dense_relu()
    assert decisions(program) == [
        (
            "fused_matmul_add_relu[dense1]",
            "contraction",
            ("matmul", "broadcast_to", "add", "broadcast_to", "gt", "where"),
        )
    ]
    run_both(program, feed_of(program), 1e-12)


def test_softmax_cross_entropy_forward_is_a_rowwise_kernel_and_a_reduction():
    program = softmax_cross_entropy()
    forms = [(name.split("[")[0], form) for name, form, _ in decisions(program)]
    assert forms == [("fused_eq_max_abs_lt_etc", "rowwise"), ("fused_sum_div_neg", "reduction")]
    run_both(program, feed_of(program), 1e-5)


def test_softmax_and_its_gradient_fuse_rowwise():
    x = gc.input("x", (5, 7), "float64")
    w = gc.param("w", np.linspace(-1, 1, 35).reshape(5, 7))
    loss = (gc.softmax(x * w) * x).sum()
    (g,) = gc.grad(loss, [w])
    program = gc.Program([x], [loss, g])
    forms = [form for _, form, _ in decisions(program)]
    assert forms.count("rowwise") >= 1 and len(forms) <= 3
    run_both(program, feed_of(program), 1e-12)


def test_layer_norm_forward_and_backward():
    x = gc.input("x", (4, 6), "float64")
    gamma = gc.param("gamma", np.linspace(0.5, 1.5, 6))
    mean = x.mean(axis=-1, keepdims=True)
    centered = x - mean
    var = (centered * centered).mean(axis=-1, keepdims=True)
    y = centered / gc.sqrt(var + 1e-5) * gamma
    loss = (y * y * x).sum()
    gx, gg = gc.grad(loss, [x, gamma])
    program = gc.Program([x], [loss, gx, gg])
    assert "rowwise" in [form for _, form, _ in decisions(program)]
    run_both(program, feed_of(program), 1e-10)


def test_mlp_adam_training_step_kernel_count():
    """3 layers: forward 1 + backward 2 kernels each (dW with its Adam epilogue; dx with the
    ReLU mask and the bias gradient), the loss and dy3 ride on the last forward matmul, and
    one scalar kernel computes Adam's step count and bias corrections."""
    program = mlp_adam()
    kernels = decisions(program)
    assert len(kernels) <= 3 * 3 + 1
    assert [form for _, form, _ in kernels].count("loop") == 1
    run_both(program, feed_of(program), 1e-5)


def test_backward_matmuls_read_transposed_operands_in_place():
    program = mlp_adam()
    kernels = fuse(optimize(program.graph))
    for kernel in kernels:
        stored = {id(x) for x in kernel.inputs}
        for node in kernel.nodes:
            if node.op == "transpose":
                assert id(node.inputs[0]) in stored  # a view of memory, never a copy kernel
    assert not any(k.nodes[-1].op == "transpose" for k in kernels)


def test_a_value_two_kernels_need_is_stored_once_not_recomputed_from_a_matmul():
    x = gc.input("x", (4, 3), "float64")
    w = gc.param("w", np.ones((3, 3)))
    h = x @ w + 1.0
    program = gc.Program([x], [gc.exp(h).sum(), (h * h).max()])
    run_both(program, feed_of(program), 1e-12)


@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
@given(programs(max_ops=12))
def test_fused_random_programs_equal_the_interpreter(case):
    program, feed = case
    run_both(program, feed)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(programs(max_ops=12))
def test_kernels_cover_the_graph_and_respect_dependencies(case):
    program, _ = case
    graph = optimize(program.graph)
    kernels = fuse(graph)
    produced: dict[int, int] = {}
    for i, kernel in enumerate(kernels):
        assert kernel.form in ("loop", "reduction", "rowwise", "contraction")
        for x in kernel.inputs:
            if x.op not in ("input", "param", "const"):
                assert produced.get(id(x), len(kernels)) < i  # written by an earlier kernel
        for out in kernel.outputs:
            produced[id(out)] = i
    anchors = {id(n) for k in kernels for n in k.nodes if n.op in ("matmul", "sum", "max")}
    assert anchors == {id(n) for n in graph.nodes if n.op in ("matmul", "sum", "max")}


@pytest.mark.parametrize("classes", [2, 17])
def test_softmax_cross_entropy_training_step(classes):
    x, labels = gc.input("x", (8, 4)), gc.input("labels", (8,), "int64")
    model = gc.nn.MLP(hidden=16, layers=2, out=classes, seed=1)
    loss = gc.nn.softmax_cross_entropy(model(x), labels)
    program = gc.Program([x, labels], loss, gc.optim.SGD(model.params(), lr=0.1).updates(loss))
    feed = feed_of(program)
    feed["labels"] %= classes
    run_both(program, feed, 1e-5)


def test_softmax_cross_entropy_forward_and_backward_share_one_rowwise_kernel():
    """The row max stays out of the logits matmul; max, exp, sum, log and the gradient
    run in one row-wise kernel and exp(x - max) is never stored (W5 of the benchmark)."""
    x, labels = gc.input("x", (8, 12)), gc.input("labels", (8,), "int32")
    model = gc.nn.Sequential([gc.nn.Dense(6, "relu"), gc.nn.Dense(5)], seed=0)
    loss = gc.nn.softmax_cross_entropy(model(x), labels)
    program = gc.Program([x, labels], loss, gc.optim.SGD(model.params(), lr=0.1).updates(loss))
    found = decisions(program)
    forms = [form for _, form, _ in found]
    assert forms.count("rowwise") == 1 and len(found) <= 8, found
    for _, form, ops in found:
        if "matmul" in ops:
            assert "max" not in ops
        if form == "rowwise":
            assert {"max", "exp", "log"} <= set(ops) and ops.count("sum") >= 2
    kernels = fuse(optimize(program.graph))
    assert not any(o.op == "exp" for k in kernels for o in k.outputs)
    feed = feed_of(program)
    feed["labels"] %= 5
    run_both(program, feed, 1e-5)


# ---- kernel size: bodies stay within MAX_BODY_COST -------------------------------------------


def body_cost(kernel) -> int:
    return sum(map(op_cost, kernel.nodes))


@pytest.mark.parametrize("diamond", [False, True])
def test_a_long_chain_is_cut_into_kernels_within_the_body_cost(diamond):
    """LLVM's time grows with the square of a loop body: 1200 steps (2400 units) would be
    one kernel; fusion stores the chain every MAX_BODY_COST units instead. The diamond
    chain (each step reads the last one twice) has 2^1200 paths; fusion walks it in linear
    time."""
    x = gc.input("x", (40,), "float64")
    y = x
    for _ in range(1200):
        y = (y * 1.0001 + y) * 0.5 if diamond else y * 1.0001 + 0.001
    program = gc.Program([x], y.sum())
    kernels = fuse(optimize(program.graph))
    costs = [body_cost(k) for k in kernels]
    assert len(kernels) >= 2400 // MAX_BODY_COST + 1 and max(costs) <= MAX_BODY_COST, costs
    assert sum(costs) <= 2 * 1200 * (1.5 if diamond else 1) + len(kernels)  # nothing redone
    run_both(program, {"x": np.linspace(-1, 1, 40)}, 1e-12)


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(programs(max_ops=12))
def test_random_programs_cut_to_a_small_body_cost_equal_the_interpreter(monkeypatch, case):
    monkeypatch.setattr(fusion, "MAX_BODY_COST", 40)  # every op costs at most 30
    program, feed = case
    for kernel in fuse(optimize(program.graph)):
        assert body_cost(kernel) <= 40, kernel
    run_both(program, feed)


# ---- golden fused IR -------------------------------------------------------------------------

GOLDEN_DIR = Path(__file__).parent / "golden" / "fused"
UPDATE_GOLDEN = os.environ.get("GRAPHC_UPDATE_GOLDEN", "") not in ("", "0")


def max_of_five():
    """The README's and `graphc demo`'s 5-32-16-1 ReLU MLP (seed 0)."""
    layers = [gc.nn.Dense(32, "relu"), gc.nn.Dense(16, "relu"), gc.nn.Dense(1)]
    return gc.nn.Sequential(layers, seed=0)


def max_of_five_train():
    """The training step with Adam (lr 1e-3, batch 32): forward, backward and updates."""
    x, y = gc.input("x", (32, 5)), gc.input("y", (32, 1))
    model = max_of_five()
    loss = gc.nn.mse_loss(model(x), y)
    updates = gc.optim.Adam(model.params(), lr=1e-3).updates(loss)
    return gc.Program([x, y], loss, updates, name="max_of_five_train")


def max_of_five_predict():
    """Inference over the demo's test set of 1000 rows."""
    x = gc.input("x_test", (1000, 5))
    return gc.Program([x], max_of_five()(x), name="max_of_five_predict")


def digits_train():
    """examples/digits_mlp.py: a 64-64-10 classifier, softmax cross-entropy, SGD momentum."""
    x, labels = gc.input("pixels", (32, 64)), gc.input("labels", (32,), "int64")
    model = gc.nn.Sequential([gc.nn.Dense(64, "relu"), gc.nn.Dense(10)], seed=0)
    loss = gc.nn.softmax_cross_entropy(model(x), labels)
    updates = gc.optim.SGD(model.params(), lr=0.02, momentum=0.9).updates(loss)
    return gc.Program([x, labels], loss, updates, name="digits_train")


def reduction_with_producers_and_consumers():
    """exp(x/2) + 1 summed over rows (input fusion), then sqrt and a scale (the epilogue)."""
    x = gc.input("x", (4, 6), "float64")
    total = (gc.exp(x * 0.5) + 1.0).sum(axis=1)
    return gc.Program([x], gc.sqrt(total) * 2.0, name="reduction")


def rowwise_softmax_and_log_softmax():
    x = gc.input("x", (4, 7), "float64")
    return gc.Program([x], [gc.softmax(x), gc.log_softmax(x)], name="rowwise")


def dense_tanh_backward():
    """tanh(x @ w + b): a bias and activation epilogue; its backward pass reads w and x
    transposed."""
    x = gc.input("x", (4, 5), "float64")
    layer = gc.nn.Dense(3, activation="tanh", seed=0, dtype="float64", name="dense")
    loss = (layer(x) * layer(x)).sum()
    grads = gc.grad(loss, [x, *layer.params()])
    return gc.Program([x], [loss, *grads], name="dense_backward")


def broadcast_concat_pad_loop():
    """Index maps only: a row broadcast, a padded and sliced copy, a concat, one loop."""
    x, b = gc.input("x", (3, 4), "float64"), gc.input("b", (4,), "float64")
    padded = Tensor(apply("pad", x.node, widths=((0, 0, 0), (1, 1, 0)), value=0.5))
    y = gc.concat([x + b, padded[:, 1:5] * 2.0, x.T.reshape(3, 4)], axis=0)
    return gc.Program([x, b], gc.tanh(y), name="layout")


def recomputed_in_two_kernels():
    """h = 2x + 1 is cheap: both reductions recompute it instead of reading it from memory."""
    x = gc.input("x", (5, 4), "float64")
    h = x * 2.0 + 1.0
    return gc.Program([x], [h.sum(axis=0), (h * h).max(axis=1)], name="recomputed")


GOLDEN = {
    f.__name__: f
    for f in [
        max_of_five_train,
        max_of_five_predict,
        digits_train,
        reduction_with_producers_and_consumers,
        rowwise_softmax_and_log_softmax,
        dense_tanh_backward,
        broadcast_concat_pad_loop,
        recomputed_in_two_kernels,
    ]
}


def fused_text(program) -> str:
    """The fused stage as `step.dump("fused")` prints it, without source locations."""
    graph = optimize(program.graph)
    return print_graph(graph, fuse(graph), locations=False)


def without_locations(text: str) -> str:
    """`text` with the `# file:line` comments (and the padding before them) removed."""
    return "\n".join(re.sub(r"\s+# [^\n]*$", "", line) for line in text.split("\n"))


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_fused_ir_matches_golden_text(name):
    path = GOLDEN_DIR / f"{name}.gir"
    text = fused_text(GOLDEN[name]())
    if UPDATE_GOLDEN:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        pytest.skip(f"wrote {path}")
    if not path.exists():
        pytest.fail(f"no golden text {path}: run with GRAPHC_UPDATE_GOLDEN=1 to write it")
    want = path.read_text()
    diff = "".join(
        difflib.unified_diff(
            want.splitlines(True), text.splitlines(True), f"{path} (golden)", "fused now"
        )
    )
    assert text == want, (
        f"fused IR differs from the golden text (GRAPHC_UPDATE_GOLDEN=1 rewrites it):\n{diff}"
    )


def _apply_ref(node, values):
    """One node by its op's NumPy `ref`, as the interpreter computes it."""
    with np.errstate(all="ignore"):
        value = OPS[node.op].ref(values, node.attrs)
    return np.asarray(value, dtype=node.type.np_dtype).reshape(node.shape)


def interpret_kernels(graph, kernels, feed):
    """(outputs, updates) of a fused graph run kernel by kernel, as the compiled program
    runs: a kernel reads only its inputs (sources, or values an earlier kernel stored) and
    keeps only its outputs; everything else in its body is computed inside it."""
    memory = dict(feed)
    memory |= {p: p.attrs["storage"].value for p in graph.params}
    in_kernels = {n for k in kernels for n in k.nodes}
    for node in graph.nodes:  # the values outside every kernel (consts)
        if node not in in_kernels and node not in memory:
            memory[node] = _apply_ref(node, [memory[x] for x in node.inputs])
    for kernel in kernels:
        local = {x: memory[x] for x in kernel.inputs}
        for node in kernel.nodes:
            local[node] = _apply_ref(node, [local[x] for x in node.inputs])
        memory |= {out: local[out] for out in kernel.outputs}
    return [memory[n] for n in graph.outputs], [memory[v] for _, v in graph.updates]


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_fused_graph_interpreted_kernel_by_kernel_equals_the_graph(name):
    program = GOLDEN[name]()
    feed = {x: value for x, value in zip(program.graph.inputs, feed_of(program).values())}
    before = interpret(program.graph, feed)
    graph = optimize(program.graph)
    feed = {x: feed[x] for x in graph.inputs}  # optimize keeps the input nodes
    after = interpret_kernels(graph, fuse(graph), feed)
    single = any(n.dtype == "float32" for n in program.graph.nodes)
    for want, have in zip([*before[0], *before[1]], [*after[0], *after[1]], strict=True):
        tol = 1e-5 if single else tolerance(want)
        np.testing.assert_allclose(have, want, rtol=tol, atol=tol)


def test_golden_programs_show_what_they_are_named_for():
    """Each edge case exercises its kernel form (so a golden text cannot silently lose it)."""

    def kernels_of(builder):
        return fuse(optimize(builder().graph))

    forms = [k.form for k in kernels_of(reduction_with_producers_and_consumers)]
    assert forms == ["reduction"]
    (kernel,) = kernels_of(reduction_with_producers_and_consumers)
    assert [n.op for n in kernel.nodes if n.op in ("exp", "sum", "sqrt")] == ["exp", "sum", "sqrt"]
    assert [k.form for k in kernels_of(rowwise_softmax_and_log_softmax)] == ["rowwise"]
    kernels = kernels_of(dense_tanh_backward)
    assert any(
        k.form == "contraction" and {"matmul", "tanh"} <= {n.op for n in k.nodes} for k in kernels
    )
    transposed = [k for k in kernels if {"matmul", "transpose"} <= {n.op for n in k.nodes}]
    assert len(transposed) == 2  # dW = x^T g and dx = g w^T read their operand in place
    assert [k.form for k in kernels_of(broadcast_concat_pad_loop)] == ["loop"]
    recomputed = kernels_of(recomputed_in_two_kernels)
    bodies = [{n for n in k.nodes if n.op == "add"} for k in recomputed]
    assert len(recomputed) == 2 and bodies[0] & bodies[1]  # h = 2x + 1 in both, never stored
    assert not any(o.op == "add" for k in recomputed for o in k.outputs)


@pytest.mark.parametrize("threads", ["1", "2"])
def test_fused_dump_is_the_golden_text_on_any_thread_count(monkeypatch, threads):
    """`step.dump("fused")` shows the golden text plus source locations; splitting kernels
    over threads happens in codegen and never shows in it."""
    monkeypatch.setenv("GRAPHC_THREADS", threads)
    step = gc.compile(max_of_five_predict(), cache=False)
    dump = step.dump("fused")
    assert "# " in dump and dump.startswith("graph max_of_five_predict(")
    golden = GOLDEN_DIR / "max_of_five_predict.gir"
    assert without_locations(dump) == golden.read_text()


# a value recomputed in two kernels prints under one label in both, which the parser reads
# as a second definition (graphc/ir/printer.py)
@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_golden_text_parses_back_to_itself(name):
    """A value recomputed in two kernels is printed in both and read back as one node."""
    text = (GOLDEN_DIR / f"{name}.gir").read_text()
    graph, kernels = parse(text, f"{name}.gir")
    assert print_graph(graph, kernels, locations=False) == text


def test_a_value_defined_twice_differently_is_refused():
    """Only the same equation in another kernel is a recomputation: `%3` as an add in the
    second kernel, where the first computes a mul, is a duplicate definition."""
    text = (GOLDEN_DIR / "recomputed_in_two_kernels.gir").read_text()
    line = "%3: f64[5,4] = mul %x, %2"
    assert text.count(line) == 2
    first = text.index(line) + len(line)
    changed = text[:first] + text[first:].replace(line, line.replace("mul", "add"), 1)
    with pytest.raises(ParseError, match="duplicate definition of %3"):
        parse(changed, "changed.gir")


def test_every_kernel_form_has_a_join_rule_an_emission_and_a_name_the_ir_knows():
    """One object per form: fusion's join rule and codegen's emission are registered under
    it, and the IR (printer, parser, verifier) knows exactly these names."""
    from graphc.codegen.forms import EMISSIONS
    from graphc.ir.graph import FORMS as IR_FORMS
    from graphc.passes.fusion import JOINS
    from graphc.passes.kernels import FORMS

    assert set(JOINS) == set(EMISSIONS) == set(FORMS.values())
    assert set(FORMS) == set(IR_FORMS)
