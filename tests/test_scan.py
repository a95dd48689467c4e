"""gc.scan (DESIGN §9, ir/scan.py): the loop against a Python loop in NumPy, compiled against
the interpreter, its text form, its errors, its compile size, and its derivatives against
finite differences and against the same loop unrolled by hand."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
from graphc.codegen.llvm import emit_program
from graphc.errors import DTypeError, GraphcError, ShapeError, VerifyError
from graphc.ir.graph import Graph
from graphc.ir.ops import apply
from graphc.ir.parser import parse_graph
from graphc.ir.printer import print_graph
from graphc.passes import lower

FLOATS = ("float32", "float64")
TOL = {"float32": 2e-5, "float64": 1e-12}


def rnn(dtype, steps=5, features=3, reverse=False, unroll=False):
    """h' = tanh(h @ w + x_t), y_t = 2 h' + h (a carry, an x, a captured param)."""
    rng = np.random.default_rng(0)
    x = gc.input("x", (steps, features), dtype)
    h0 = gc.input("h0", (features,), dtype)
    w = gc.param("w", rng.normal(size=(features, features)) * 0.5, dtype)

    def cell(h, xt):
        new = gc.tanh(h @ w + xt)
        return new, new * 2 + h

    if unroll:
        h, ys = h0, [None] * steps
        for t in reversed(range(steps)) if reverse else range(steps):
            h, ys[t] = cell(h, x[t])
        ys = gc.stack(ys)
    else:
        h, ys = gc.scan(cell, h0, x, reverse=reverse)
    feed = {x: rng.normal(size=(steps, features)), h0: rng.normal(size=features)}
    return (x, h0, w), (h, ys), feed


def numpy_rnn(w, x, h0, reverse=False):
    h, ys = h0, [None] * len(x)
    for t in reversed(range(len(x))) if reverse else range(len(x)):
        new = np.tanh(h @ w + x[t])
        h, ys[t] = new, new * 2 + h
    return h, np.stack(ys)


def compiled(outputs, feed):
    inputs = list(feed)
    return gc.compile(inputs, outputs, cache=False)(*[feed[k] for k in inputs])


# ---- forward ------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOATS)
@pytest.mark.parametrize("reverse", [False, True])
def test_scan_matches_numpy_interpreted_and_compiled(dtype, reverse):
    (x, h0, w), (h, ys), feed = rnn(dtype, reverse=reverse)
    cast = {k: v.astype(dtype) for k, v in feed.items()}
    want = numpy_rnn(w.value, cast[x], cast[h0], reverse)
    got = gc.evaluate([h, ys], cast)
    for a, b in zip(got, want):
        assert a.dtype == np.dtype(dtype)
        np.testing.assert_allclose(a, b, rtol=TOL[dtype], atol=TOL[dtype])
    for a, b in zip(compiled([h, ys], cast), got):
        np.testing.assert_allclose(a, b, rtol=TOL[dtype], atol=TOL[dtype])


@pytest.mark.parametrize("dtype", FLOATS)
def test_tuple_carries_several_xs_no_ys_and_outer_values(dtype):
    """Carries as a nested tuple, xs as a list, y None; an outer computed value is captured."""
    a = gc.input("a", (4, 2), dtype)
    b = gc.input("b", (4,), dtype)
    scale = gc.input("scale", (), dtype)
    doubled = scale * 2  # computed outside, read inside: a captured input of the loop

    def body(carry, x):
        (s, p), n = carry
        xa, xb = x
        return ((s + xa * doubled, p * xb), n + 1), None

    init = ((gc.const(np.zeros(2), dtype), gc.const(np.ones(()), dtype)), gc.const(0, "int32"))
    ((s, p), n), ys = gc.scan(body, init, [a, b])
    assert ys is None
    rng = np.random.default_rng(1)
    feed = {a: rng.normal(size=(4, 2)), b: rng.normal(size=4), scale: np.array(0.5)}
    feed = {k: v.astype(dtype) for k, v in feed.items()}
    want = [feed[a].sum(0) * 1.0, np.prod(feed[b]), 4]
    for got in (gc.evaluate([s, p, n], feed), compiled([s, p, n], feed)):
        for g, w in zip(got, want):
            np.testing.assert_allclose(g, w, rtol=TOL[dtype])


def test_length_without_xs_and_unused_results():
    """xs=None with length=; a y no output reads is still computed (into scratch) but not kept."""
    step = gc.input("step", (3,), "float64")

    def body(c, _):
        return c + step, c * c

    c, squares = gc.scan(body, gc.const(np.zeros(3)), length=6)
    value = np.array([0.5, -1.0, 2.0])
    np.testing.assert_allclose(compiled([c], {step: value})[0], 6 * value)
    np.testing.assert_allclose(
        compiled([squares], {step: value})[0], [(k * value) ** 2 for k in range(6)]
    )


def test_scan_inside_a_scan_body():
    x = gc.input("x", (3, 4), "float64")

    def outer(total, row):
        inner, _ = gc.scan(lambda acc, v: (acc + v * v, None), gc.const(0.0, "float64"), row)
        return total + inner, inner

    total, per_row = gc.scan(outer, gc.const(0.0, "float64"), x)
    value = np.arange(12.0).reshape(3, 4)
    for got in (gc.evaluate([total, per_row], {x: value}), compiled([total, per_row], {x: value})):
        np.testing.assert_allclose(got[0], (value**2).sum())
        np.testing.assert_allclose(got[1], (value**2).sum(1))


# ---- the IR ----------------------------------------------------------------------------------


def test_text_form_nests_the_body_and_round_trips():
    (x, h0, w), (h, ys), feed = rnn("float64")
    graph = Graph([h.node, ys.node])
    text = print_graph(graph, locations=False)
    assert "  graph cell(%carry0: f64[3], %x0: f64[3], %w: f64[3,3]) {\n    %0:" in text
    assert "= scan %h0, %x, %w {body=cell, carries=1, length=5, output=0" in text
    parsed = parse_graph(text)
    assert print_graph(parsed, locations=False) == text
    (gx, gh0) = gc.grad(ys.sum() + h.sum(), [x, h0])  # bodies of the gradient too
    with_grads = Graph([gx.node, gh0.node])
    text = print_graph(with_grads)
    assert "graph cell.vjp(" in text
    again = parse_graph(text)
    assert print_graph(again) == text
    fed = {x.node: feed[x], h0.node: feed[h0]}
    from graphc.ir.interp import interpret

    by_name = {n.name: n for n in again.inputs}
    (parsed_w,) = again.params  # parsed params hold zeros: give it the weights
    parsed_w.attrs["storage"].value = w.value
    want, _ = interpret(with_grads, fed)
    got, _ = interpret(again, {by_name[k.name]: v for k, v in fed.items()})
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_verifier_and_inference_reject_bad_loops():
    (x, h0, w), (h, ys), _ = rnn("float64")
    body = h.node.attrs["body"]
    attrs = dict(h.node.attrs)
    with pytest.raises(ShapeError, match="stacked xs f64\\[3\\] does not match"):
        apply("scan", h0.node, h0.node, w.node, **attrs)
    with pytest.raises(DTypeError, match="initial carry f32\\[3\\]"):
        apply("scan", gc.input("h32", (3,)).node, x.node, w.node, **attrs)
    with pytest.raises(ShapeError, match="length must be a positive int"):
        apply("scan", h0.node, x.node, w.node, **{**attrs, "length": 0})
    with pytest.raises(ShapeError, match="output 7"):
        apply("scan", h0.node, x.node, w.node, **{**attrs, "output": 7})
    matrix = next(n for n in body.nodes if n.shape == (1, 3))
    carry_as_matrix = Graph([matrix, body.outputs[1]], inputs=body.inputs, name="bad")
    with pytest.raises(ShapeError, match="returns carry 0 as f64\\[1,3\\] but takes it as"):
        apply("scan", h0.node, x.node, w.node, **{**attrs, "body": carry_as_matrix})
    text = print_graph(Graph([h.node]))
    with pytest.raises(GraphcError, match="undefined body 'cel'"):
        parse_graph(text.replace("body=cell", "body=cel"))
    with pytest.raises(GraphcError, match="carries=2"):  # three inputs are no 2 carries + 1 x
        parse_graph(text.replace("carries=1", "carries=2"))
    node = h.node
    broken = Graph([node.with_inputs([h0.node, x.node, h0.node])])  # w replaced by a vector
    with pytest.raises(VerifyError, match="scan rejects its inputs"):
        from graphc.ir.verify import verify

        verify(broken)


def test_user_errors_name_scan_shapes_and_line():
    x = gc.input("x", (5, 3))
    y = gc.input("y", (4, 3))
    with pytest.raises(ShapeError, match=r"scan: xs \(f32\[5,3\], f32\[4,3\]\).*test_scan.py:\d+"):
        gc.scan(lambda c, v: (c, None), gc.const(np.zeros(3), "float32"), [x, y])
    with pytest.raises(ShapeError, match=r"carry 0 as f32\[1,3\] but init is f32\[3\].*test_scan"):
        gc.scan(lambda c, v: (c[None] + v, None), gc.const(np.zeros(3), "float32"), x)
    with pytest.raises(GraphcError, match="must return \\(carry, y\\)"):
        gc.scan(lambda c, v: c, gc.const(np.zeros(3), "float32"), x)
    with pytest.raises(ShapeError, match="positive int"):
        gc.scan(lambda c, v: (c, None), gc.const(np.zeros(3), "float32"), length=0)
    with pytest.raises(ShapeError, match="leading axis"):
        gc.scan(lambda c, v: (c, None), gc.const(np.zeros(3), "float32"), gc.input("s", ()))


def llvm_text(length):
    x = gc.input("x", (length, 8), "float32")
    w = gc.param("w", np.eye(8), "float32")
    h, _ = gc.scan(lambda h, xt: (gc.tanh(h @ w + xt), None), gc.const(np.zeros(8), "float32"), x)
    graph = Graph([h.node])
    return str(emit_program(*lower(graph), "rnn"))


def test_the_code_does_not_grow_with_the_length():
    """One loop: the LLVM IR of 10 and 1000 steps differs only in the trip count's digits."""
    short, long = llvm_text(10), llvm_text(1000)
    assert len(short.splitlines()) == len(long.splitlines())
    assert abs(len(long) - len(short)) < 40
    assert "scan_done" in long


# ---- derivatives --------------------------------------------------------------------------------


@pytest.mark.parametrize("reverse", [False, True])
def test_gradient_against_finite_differences_and_the_unrolled_loop(reverse):
    (x, h0, w), (h, ys), feed = rnn("float64", reverse=reverse)
    loss = (ys * ys).sum() + gc.sin(h).sum()
    gc.check_grad(loss, [w, x, h0], feed, rtol=1e-6, atol=1e-8)
    grads = gc.grad(loss, [w, x, h0])
    (ux, uh0, uw), (uh, uys), _ = rnn("float64", reverse=reverse, unroll=True)
    unrolled = gc.grad((uys * uys).sum() + gc.sin(uh).sum(), [uw, ux, uh0])
    want = gc.evaluate(unrolled, {ux: feed[x], uh0: feed[h0]})
    for got in (gc.evaluate(grads, feed), compiled(grads, feed)):
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)


def test_gradient_in_float32_compiled_and_checked():
    (x, h0, w), (h, ys), feed = rnn("float32")
    loss = ys.sum() + h.sum()
    feed = {k: v.astype(np.float32) for k, v in feed.items()}
    gc.check_grad(loss, [w, x, h0], feed, rtol=1e-3, atol=1e-4)
    grads = gc.grad(loss, [w, x, h0])
    for a, b in zip(compiled(grads, feed), gc.evaluate(grads, feed)):
        assert a.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_one_forward_loop_and_one_backward_loop():
    """The forward loop that also stores the residuals shares its kernel with the plain one,
    and the final carry's and the ys' adjoints go through one reverse loop; the residuals are
    arena buffers of the memory plan."""
    (x, h0, w), (h, ys), _ = rnn("float64", steps=7)
    grads = gc.grad(ys.sum() + h.sum(), [w, x, h0])
    _, kernels, plan = lower(Graph([h.node, *(g.node for g in grads)]))
    loops = [k for k in kernels if k.form == "scan"]
    assert len(loops) == 2
    forward, backward = loops
    assert {o.attrs["output"] for o in forward.outputs} >= {0, 2}  # the carry and a residual
    stacked = [o for o in forward.outputs if o.attrs["output"] >= 2]
    assert stacked and all(o.shape[0] == 7 for o in stacked)
    assert all(plan.locations[o].kind == "arena" for o in stacked)
    assert w.node in backward.inputs and w.node in forward.inputs  # captured by both loops


def test_jvp_against_finite_differences_and_the_unrolled_loop():
    (x, h0, w), (h, ys), feed = rnn("float64")
    rng = np.random.default_rng(5)
    tw, th = gc.const(rng.normal(size=(3, 3))), gc.const(rng.normal(size=3))
    tangents = gc.jvp([h, ys], {w: tw, h0: th})
    (ux, uh0, uw), (uh, uys), _ = rnn("float64", unroll=True)
    unrolled = gc.jvp([uh, uys], {uw: tw, uh0: th})
    want = gc.evaluate(unrolled, {ux: feed[x], uh0: feed[h0]})
    for got in (gc.evaluate(tangents, feed), compiled(tangents, feed)):
        for a, b in zip(got, want):
            np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-12)
    eps = 1e-6
    w0 = w.value.copy()
    outs = []
    for sign in (1, -1):
        w.value = w0 + sign * eps * tw.value
        outs.append(gc.evaluate(ys, {x: feed[x], h0: feed[h0] + sign * eps * th.value}))
    w.value = w0
    np.testing.assert_allclose(
        gc.evaluate(tangents[1], feed), (outs[0] - outs[1]) / (2 * eps), rtol=1e-6, atol=1e-8
    )


def test_grad_of_grad_against_the_unrolled_loop():
    """A Hessian-vector product: the reverse loop is differentiated again."""
    (x, h0, w), (h, ys), feed = rnn("float64", steps=4)
    (gw,) = gc.grad((ys * ys).sum(), [w])
    v = gc.const(np.random.default_rng(3).normal(size=(3, 3)))
    (hvp,) = gc.grad((gw * v).sum(), [w])
    (ux, uh0, uw), (uh, uys), _ = rnn("float64", steps=4, unroll=True)
    (ugw,) = gc.grad((uys * uys).sum(), [uw])
    (uhvp,) = gc.grad((ugw * v).sum(), [uw])
    want = gc.evaluate(uhvp, {ux: feed[x], uh0: feed[h0]})
    np.testing.assert_allclose(gc.evaluate(hvp, feed), want, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(compiled([hvp], feed)[0], want, rtol=1e-10, atol=1e-12)


def test_an_index_out_of_range_in_the_body_raises_compiled_and_interpreted():
    table = gc.param("table", np.arange(12.0).reshape(4, 3))
    idx = gc.input("idx", (5,), "int64")

    def body(c, i):
        row = gc.take(table, i, axis=0)
        return c + row, row.sum()

    c, ys = gc.scan(body, gc.const(np.zeros(3)), idx)
    step = gc.compile([idx], [c, ys], cache=False)
    good = np.array([0, 1, 2, 3, -1])
    for a, b in zip(step(good), gc.evaluate([c, ys], {idx: good})):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(gc.InputError, match="kernel scan.*body body.*take from axis 0 of size 4"):
        step(np.array([0, 1, 7, 3, 0]))
    with pytest.raises(gc.InputError, match="index 7 is out of range"):
        gc.evaluate([c, ys], {idx: np.array([0, 1, 7, 3, 0])})
    np.testing.assert_array_equal(step(good)[1], [3.0, 12.0, 21.0, 30.0, 30.0])  # reset


def test_the_interpreter_reads_state_updated_in_place():
    """The nodes of one loop share one run per interpreter run, not across runs: a param
    updated in place (as compiled steps do) is seen by the next evaluation."""
    w = gc.param("w", np.ones(3))
    c, ys = gc.scan(lambda c, _: (c + w, c.sum()), gc.const(np.zeros(3)), length=4)
    np.testing.assert_array_equal(gc.evaluate(ys), [0, 3, 6, 9])
    w.value[:] = 2.0
    np.testing.assert_array_equal(gc.evaluate([c, ys])[1], [0, 6, 12, 18])


def test_kernels_of_a_program_with_loops_print_and_parse_back():
    from graphc.ir.parser import parse

    (x, h0, w), (h, ys), _ = rnn("float64")
    grads = gc.grad(ys.sum() + h.sum(), [w, x])
    optimized, kernels, _ = lower(Graph([g.node for g in grads]))
    text = print_graph(optimized, kernels)
    graph, parsed = parse(text)
    assert [k.form for k in parsed].count("scan") == 2
    assert print_graph(graph, parsed) == text
