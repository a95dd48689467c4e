"""Differentiation by graph extension: the spine's worked examples, the rules of `grad`
(fan-out, stop_gradient, zeros, errors, seeds, names, locations), and random graphs whose
gradients and tangents must match finite differences.
"""

from __future__ import annotations

import inspect
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import programs

import graphc as gc
from graphc.ir.graph import topological_order


def line() -> int:
    """The caller's line number, to check source locations against."""
    return inspect.currentframe().f_back.f_lineno


def assert_close(got, want, rtol=1e-12):
    np.testing.assert_allclose(np.asarray(got), want, rtol=rtol, atol=0)


# ---- worked examples ------------------------------------------------------------------------


def test_scalar_example_reverse_and_forward():
    """y = ln x1 + x1·x2 − sin x2 at (2, 5)."""
    x1, x2 = gc.input("x1", (), "float64"), gc.input("x2", (), "float64")
    y = gc.log(x1) + x1 * x2 - gc.sin(x2)
    feed = {x1: 2.0, x2: 5.0}
    value, d1, d2 = gc.evaluate([y, *gc.grad(y, [x1, x2])], feed)
    assert_close(value, math.log(2) + 10 - math.sin(5))
    assert_close(value, 11.652071455223083)
    assert_close(d1, 5.5)
    assert_close(d2, 2 - math.cos(5))
    assert_close(d2, 1.7163378145367738)
    # forward mode: one tangent per direction
    assert_close(gc.evaluate(gc.jvp(y, {x1: 1.0}), feed), 5.5)
    assert_close(gc.evaluate(gc.jvp(y, {x2: 1.0}), feed), 2 - math.cos(5))
    assert_close(gc.evaluate(gc.jvp(y, {x1: 1.0, x2: 1.0}), feed), 7.5 - math.cos(5))


def test_broadcast_example_with_intermediates():
    """x1 = ones(2,2), x2 = [1.1], y = x1·(x2+2), z = 3y², out = mean(z)."""
    x1, x2 = gc.input("x1", (2, 2), "float64"), gc.input("x2", (1,), "float64")
    y = x1 * (x2 + 2)
    z = 3 * y**2
    out = z.mean()
    g_z, g_y, g_x1, g_x2 = gc.evaluate(
        gc.grad(out, [z, y, x1, x2]), {x1: np.ones((2, 2)), x2: np.array([1.1])}
    )
    assert_close(g_z, np.full((2, 2), 0.25))
    assert_close(g_y, np.full((2, 2), 4.65))
    assert_close(g_x1, np.full((2, 2), 14.415))
    assert g_x2.shape == (1,)
    assert_close(g_x2, [18.6])


def test_linear_layer_applied_twice():
    """A bias-free 1×1 layer used twice, squared error: d loss/dw = 4(w²x − t)wx."""
    w = gc.param("w", np.array([[0.9472]]))
    x = gc.input("x", (1, 1), "float64")
    t = gc.input("t", (1, 1), "float64")
    loss = ((x @ w @ w - t) ** 2).sum()
    gw = gc.evaluate(gc.grad(loss, w), {x: [[10.0]], t: [[5.0]]})
    wv = 0.9472
    assert_close(gw, [[4 * (wv * wv * 10 - 5) * wv * 10]])
    assert_close(gw, [[150.48652]], rtol=1e-7)


# ---- the rules of grad ----------------------------------------------------------------------


def test_fan_out_sums_partial_adjoints():
    w = gc.param("w", np.array([0.5, -1.5]))
    x = gc.input("x", (2,), "float64")
    y = (w * x + w * w + gc.sin(w)).sum()
    gw = gc.evaluate(gc.grad(y, w), {x: [3.0, 4.0]})
    assert_close(gw, np.array([3.0, 4.0]) + 2 * w.value + np.cos(w.value))


def test_stop_gradient_blocks():
    x = gc.input("x", (3,), "float64")
    y = (x * gc.stop_gradient(x)).sum()
    value = np.array([1.0, -2.0, 3.0])
    assert_close(gc.evaluate(gc.grad(y, x), {x: value}), value)
    # nothing flows at all through a stopped path
    z = gc.stop_gradient(gc.exp(x)).sum()
    np.testing.assert_array_equal(gc.evaluate(gc.grad(z, x), {x: value}), np.zeros(3))
    np.testing.assert_array_equal(gc.evaluate(gc.jvp(z, {x: np.ones(3)}), {x: value}), 0.0)


def test_unrelated_wrt_gets_zeros():
    x = gc.input("x", (2,), "float64")
    u = gc.input("u", (2, 3), "float32")
    p = gc.param("p", np.ones((3,), np.float32))
    y = (x * x).sum()
    gu, gp = gc.grad(y, [u, p])
    assert gu.shape == (2, 3) and gu.dtype == "float32"
    assert gp.shape == (3,) and gp.dtype == "float32"
    gu_value, gp_value = gc.evaluate([gu, gp], {x: [1.0, 2.0]})
    np.testing.assert_array_equal(gu_value, np.zeros((2, 3), np.float32))
    np.testing.assert_array_equal(gp_value, np.zeros(3, np.float32))
    assert gc.evaluate(gc.jvp(gc.exp(u).sum(), {x: np.ones(2)}), {u: np.zeros((2, 3))}) == 0


@pytest.mark.parametrize("dtype", ["int32", "int64", "bool"])
def test_integer_and_bool_wrt_are_errors(dtype):
    n = gc.input("n", (2,), dtype)
    x = gc.input("x", (2,), "float64")
    y = (x * n.astype("float64")).sum()
    with pytest.raises(gc.DTypeError, match="n"):
        gc.grad(y, n)
    with pytest.raises(gc.DTypeError):
        gc.jvp(y, {n: np.ones(2, dtype)})
    with pytest.raises(gc.DTypeError):
        gc.grad(n.sum() if dtype != "bool" else n, x)  # an integer output has no gradient


def test_non_scalar_output_needs_a_seed():
    x = gc.input("x", (2, 3), "float64")
    y = gc.sin(x)
    with pytest.raises(gc.ShapeError, match="seed"):
        gc.grad(y, x)
    with pytest.raises(gc.ShapeError):
        gc.grad(y, x, seed=np.ones((3, 2)))


def test_seed_weights_the_output():
    rng = np.random.default_rng(0)
    x = gc.input("x", (2, 3), "float64")
    seed = rng.standard_normal((2, 3))
    value = rng.standard_normal((2, 3))
    gx = gc.evaluate(gc.grad(gc.sin(x), x, seed=seed), {x: value})
    assert_close(gx, seed * np.cos(value))
    # a scalar seed scales a scalar output; a Tensor seed is part of the graph
    s = gc.input("s", (2, 3), "float64")
    gx_tensor = gc.evaluate(gc.grad(gc.sin(x), x, seed=s), {x: value, s: seed})
    assert_close(gx_tensor, gx)
    y = gc.sin(x).sum()
    assert_close(gc.evaluate(gc.grad(y, x, seed=3.0), {x: value}), 3 * np.cos(value))


def test_grad_of_the_output_itself_is_the_seed():
    x = gc.input("x", (), "float64")
    y = gc.exp(x)
    assert gc.evaluate(gc.grad(y, y), {x: 0.3}) == 1.0


def test_tensor_gives_tensor_and_list_gives_list():
    x = gc.input("x", (2,), "float64")
    y = (x * x).sum()
    assert isinstance(gc.grad(y, x), gc.Tensor)
    assert isinstance(gc.grad(y, [x]), list) and len(gc.grad(y, [x, x])) == 2
    assert isinstance(gc.jvp(y, {x: np.ones(2)}), gc.Tensor)
    assert isinstance(gc.jvp([y, x], {x: np.ones(2)}), list)


def test_forward_graph_is_not_modified():
    x = gc.input("x", (2,), "float64")
    y = (gc.tanh(x) * x).sum()
    before = [(n.op, n.inputs) for n in topological_order([y.node])]
    gc.grad(y, x)
    gc.jvp(y, {x: np.ones(2)})
    assert [(n.op, n.inputs) for n in topological_order([y.node])] == before


def test_adjoint_nodes_are_named_after_their_wrt():
    w = gc.param("dense1.w", np.ones((2, 2)))
    x = gc.input("x", (2, 2), "float64")
    h = gc.tanh(x @ w)
    loss = h.sum()
    gw, gx = gc.grad(loss, [w, x])
    assert gw.name == "grad(dense1.w)"
    assert gx.name == "grad(x)"
    assert "grad(" in gc.grad(loss, h).name


def test_adjoint_nodes_carry_the_forward_source_line():
    x = gc.input("x", (3,), "float64")
    sin_line = line() + 1
    h = gc.sin(x)
    exp_line = line() + 1
    y = gc.exp(h).sum()
    grad_line = line() + 1
    gx = gc.grad(y, x)
    # the adjoint of x is cos(x)·ḡ, made by the sin node's rule
    assert gx.node.loc.endswith(f"test_autodiff.py:{sin_line}"), gx.node.loc
    forward = {id(n) for n in topological_order([y.node])}
    new = [n for n in topological_order([gx.node]) if id(n) not in forward]
    assert new, "grad adds nodes"
    forward_lines = {n.loc for n in topological_order([y.node])}
    seed_line = gx.node.loc.replace(f":{sin_line}", f":{grad_line}")  # the seed of 1.0
    assert {n.loc for n in new} <= forward_lines | {seed_line}
    assert any(n.loc.endswith(f":{exp_line}") for n in new)
    tangent = gc.jvp(y, {x: np.ones(3)})
    assert tangent.node.loc in forward_lines


def test_check_grad_accepts_a_feed_keyed_by_tensors():
    a, b = gc.input("a", (2,), "float64"), gc.input("b", (2,), "float64")
    y = (gc.sin(a) * b).sum()
    feed = {a: np.array([0.1, 0.2]), b: np.array([1.0, 2.0])}
    assert gc.check_grad(y, [a, b], feed) < 1e-6
    assert gc.check_grad(y, [b, a], {"a": feed[a], "b": feed[b]}) < 1e-6
    w = gc.param("w", np.array([0.3, -0.4]))
    assert gc.check_grad((gc.tanh(w) * a).sum(), [w, a], feed) < 1e-6


def test_check_grad_raises_on_a_wrong_gradient():
    x = gc.input("x", (2,), "float64")
    # stop_gradient hides a term from grad but not from finite differences
    y = (x * gc.stop_gradient(x)).sum()
    with pytest.raises(AssertionError, match="finite differences"):
        gc.check_grad(y, x, {x: np.array([1.0, 2.0])})


# ---- random graphs --------------------------------------------------------------------------
# Every value of the generated graphs has a shape that broadcasts with every other one
# (rank <= 2, last axis 1 or 3, first axis 1 or 2), so any two can meet in a binary op.

SHAPE = (2, 3)

UNARY = {
    "sin": gc.sin,
    "cos": gc.cos,
    "tanh": gc.tanh,
    "sigmoid": gc.sigmoid,
    "exp_tanh": lambda a: gc.exp(gc.tanh(a)),
    "log1p_sq": lambda a: gc.log1p(a * a),
    "sqrt": lambda a: gc.sqrt(a * a + 1),
    "neg": lambda a: -a,
    "abs_sq": lambda a: gc.abs(a) * a,
    "softmax": lambda a: gc.softmax(gc.maximum(a, -5.0) if a.ndim else a.reshape(1)),
    "logsumexp": lambda a: gc.logsumexp(a, axis=-1, keepdims=True) if a.ndim else a,
    "sum0": lambda a: a.sum(axis=0) if a.ndim else a,
    "sum_last": lambda a: a.sum(axis=-1, keepdims=True) if a.ndim else a,
    "mean": lambda a: a.mean(),
    "max_last": lambda a: a.max(axis=-1, keepdims=True) if a.ndim else a,
    "first_column": lambda a: a[..., :1] if a.ndim else a,
    "transpose_twice": lambda a: a.T.T * 2,
}
BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / (1 + b * b),
    "pow": lambda a, b: (1 + a * a) ** gc.tanh(b),
    "where": lambda a, b: gc.where(a > b, a, b * 0.5),
    "matmul": lambda a, b: _full(a) @ _full(b).T @ _full(a),
    "concat": lambda a, b: gc.concat([_full(a)[:, :1], _full(b)[:, 1:]], axis=1),
}


def _full(a):
    return a + gc.const(np.zeros(SHAPE))


STEP = st.tuples(
    st.sampled_from(sorted(UNARY) + sorted(BINARY)), st.integers(0, 99), st.integers(0, 99)
)


def build_random_graph(steps):
    """Inputs of three shapes, then one op per step over earlier values (with fan-out)."""
    xs = [
        gc.input("x0", SHAPE, "float64"),
        gc.input("x1", (3,), "float64"),
        gc.input("x2", (), "float64"),
    ]
    pool = list(xs)
    for op, i, j in steps:
        a, b = pool[i % len(pool)], pool[j % len(pool)]
        pool.append(UNARY[op](a) if op in UNARY else BINARY[op](a, b))
    # every value reaches the output, so dead branches are exercised as well
    y = sum((v * (k + 1)).sum() for k, v in enumerate(pool[3:])) if steps else xs[0].sum()
    return xs, y


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=st.lists(STEP, min_size=1, max_size=6), seed=st.integers(0, 2**16))
def test_random_graphs_grad_and_jvp_match_finite_differences(steps, seed):
    rng = np.random.default_rng(seed)
    xs, y = build_random_graph(steps)
    values = [rng.uniform(-1, 1, x.shape) for x in xs]
    feed = dict(zip(xs, values, strict=True))
    grads = gc.evaluate(gc.grad(y, xs), feed)
    eps = 1e-6

    def f(vs):
        return float(gc.evaluate(y, dict(zip(xs, vs, strict=True))))

    for k, analytic in enumerate(grads):
        numeric = np.zeros_like(values[k])
        for i in np.ndindex(values[k].shape):
            plus = [v.copy() for v in values]
            minus = [v.copy() for v in values]
            plus[k][i] += eps
            minus[k][i] -= eps
            numeric[i] = (f(plus) - f(minus)) / (2 * eps)
        scale = max(1.0, float(np.abs(numeric).max()))
        np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-6 * scale)
    # forward mode along one random direction
    direction = [rng.standard_normal(v.shape) for v in values]
    tangent = gc.evaluate(gc.jvp(y, dict(zip(xs, direction, strict=True))), feed)
    plus = [v + eps * d for v, d in zip(values, direction, strict=True)]
    minus = [v - eps * d for v, d in zip(values, direction, strict=True)]
    numeric = (f(plus) - f(minus)) / (2 * eps)
    np.testing.assert_allclose(tangent, numeric, rtol=1e-5, atol=1e-6 * max(1.0, abs(numeric)))
    # and reverse agrees with forward to rounding: <grad, d> == jvp(d)
    dual = sum(float(np.sum(g * d)) for g, d in zip(grads, direction, strict=True))
    np.testing.assert_allclose(dual, tangent, rtol=1e-9, atol=1e-9 * max(1.0, abs(dual)))


# the shared random programs (tests/strategies.py) have kinks (abs, relu, maximum, where),
# so instead of finite differences they check the identity that holds at kinks as well:
# forward and reverse mode linearize alike, <seed, J v> == <J^T seed, v>
FAMILIES = ("unary", "binary", "select", "layout", "layout", "reduce", "matmul")


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=programs(dtypes=("float64",), families=FAMILIES, updates=False))
def test_shared_random_programs_reverse_and_forward_agree(case):
    program, by_name = case
    feed = {x: by_name[x.name] for x in program.inputs}  # by Tensor: y may not read them all
    y = program.outputs[0]
    wrt = [*program.inputs, *(gc.Tensor(p) for p in program.graph.params)]
    rng = np.random.default_rng(len(program.graph.nodes))
    direction = {w: rng.standard_normal(w.shape) for w in wrt}
    seed = rng.standard_normal(y.shape)
    tangent = gc.evaluate(gc.jvp(y, direction), feed)
    grads = gc.evaluate(gc.grad(y, wrt, seed=seed), feed)
    forward = float(np.sum(tangent * seed))
    reverse = sum(float(np.sum(g * direction[w])) for g, w in zip(grads, wrt, strict=True))
    scale = max(1.0, abs(forward), *(float(np.abs(g).max(initial=0)) for g in grads))
    assert abs(forward - reverse) <= 1e-9 * scale
