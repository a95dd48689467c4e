"""Every primitive of the op registry, from one table of specs run through one checker.

The table is tests/optable.py (shared with test_codegen.py and strategies.py): each `Spec`
names a graphc computation (a frontend function or a primitive applied directly), its
NumPy meaning, the domain of each input, the input shapes to try (scalars and broadcasting
included) and the dtypes it accepts. The checkers run every spec:

- forward: `gc.evaluate` against NumPy, in float32 and float64 (and ints where accepted);
- reverse: `gc.grad` of `sum(y * seed)` against central differences, in float64;
- forward mode: `gc.jvp` along a random tangent against a directional difference;
- second order for a few: Hessian-vector products against differences of the gradient.

Two meta tests keep the table honest: every primitive of `OPS` appears in some spec's
graph, and every differentiable primitive in some gradient-checked graph.
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
from optable import FLOATS, SPECS, Spec, build

import graphc as gc
from graphc.ir.graph import topological_order
from graphc.ir.ops import OPS, Kind

CASES = [
    pytest.param(spec, shapes, id=f"{spec.name}-{'x'.join(str(list(s)) for s in shapes)}")
    for spec in SPECS
    for shapes in spec.shapes
]
GRAD_CASES = [case for case in CASES if case.values[0].grad]


def tolerance(dtype: str) -> dict:
    return {"rtol": 2e-6, "atol": 1e-6} if dtype == "float32" else {"rtol": 1e-12, "atol": 1e-13}


# ---- forward --------------------------------------------------------------------------------


FORWARD_CASES = [
    pytest.param(*case.values, dtype, id=f"{case.id}-{dtype}")
    for case in CASES
    for dtype in case.values[0].dtypes
]


@pytest.mark.parametrize(("spec", "shapes", "dtype"), FORWARD_CASES)
def test_forward_matches_numpy(spec: Spec, shapes, dtype: str):
    xs, y, values, _ = build(spec, shapes, dtype)
    got = gc.evaluate(y, dict(zip(xs, values, strict=True)))
    want = np.asarray(spec.ref(*values))
    assert got.shape == want.shape == y.shape
    assert got.dtype == np.dtype(y.dtype)
    if want.dtype.kind in "fc" and dtype in FLOATS:
        assert got.dtype == np.dtype(dtype) or spec.name.startswith("cast")
        np.testing.assert_allclose(got, want, **tolerance(dtype))
    else:
        assert got.dtype == want.dtype, f"{spec.name}: {got.dtype} vs NumPy's {want.dtype}"
        np.testing.assert_array_equal(got, want)


# ---- gradients ------------------------------------------------------------------------------

EPS = 1e-6
GRAD_TOL = {"rtol": 1e-6, "atol": 1e-8}


def float_inputs(xs):
    return [i for i, x in enumerate(xs) if x.dtype == "float64"]


def numeric_directional(y, xs, values, direction, eps=EPS):
    """(f(x + eps d) - f(x - eps d)) / 2 eps, for a direction per float input."""
    plus = {
        x: v + eps * d if d is not None else v
        for x, v, d in zip(xs, values, direction, strict=True)
    }
    minus = {
        x: v - eps * d if d is not None else v
        for x, v, d in zip(xs, values, direction, strict=True)
    }
    return (gc.evaluate(y, plus) - gc.evaluate(y, minus)) / (2 * eps)


def numeric_gradient(loss_of, xs, values, index, eps=EPS):
    """Central differences of the scalar `loss_of(feed)` along every element of input `index`."""
    result = np.zeros_like(values[index])
    for i in np.ndindex(values[index].shape):
        bumped = []
        for sign in (1, -1):
            shifted = values[index].copy()
            shifted[i] += sign * eps
            feed = dict(zip(xs, values, strict=True))
            feed[xs[index]] = shifted
            bumped.append(loss_of(feed))
        result[i] = (bumped[0] - bumped[1]) / (2 * eps)
    return result


@pytest.mark.parametrize(("spec", "shapes"), GRAD_CASES)
def test_grad_matches_finite_differences(spec: Spec, shapes):
    xs, y, values, rng = build(spec, shapes, "float64")
    seed = rng.standard_normal(y.shape)
    loss = (y * gc.const(seed)).sum()
    wrt = float_inputs(xs)
    grads = gc.evaluate(gc.grad(loss, [xs[i] for i in wrt]), dict(zip(xs, values, strict=True)))
    for i, analytic in zip(wrt, grads, strict=True):
        assert analytic.shape == values[i].shape and analytic.dtype == np.float64
        numeric = numeric_gradient(lambda feed: np.sum(gc.evaluate(y, feed) * seed), xs, values, i)
        np.testing.assert_allclose(analytic, numeric, **GRAD_TOL, err_msg=f"d/d x{i}")


@pytest.mark.parametrize(("spec", "shapes"), GRAD_CASES)
def test_jvp_matches_finite_differences(spec: Spec, shapes):
    xs, y, values, rng = build(spec, shapes, "float64", "jvp")
    wrt = float_inputs(xs)
    direction = [rng.standard_normal(v.shape) if i in wrt else None for i, v in enumerate(values)]
    tangent = gc.jvp(y, {xs[i]: direction[i] for i in wrt})
    assert tangent.shape == y.shape and tangent.dtype == y.dtype
    analytic = gc.evaluate(tangent, dict(zip(xs, values, strict=True)))
    numeric = numeric_directional(y, xs, values, direction)
    np.testing.assert_allclose(analytic, numeric, **GRAD_TOL)


@pytest.mark.parametrize(("spec", "shapes"), GRAD_CASES[::3])
def test_jvp_and_vjp_agree(spec: Spec, shapes):
    """<seed, J v> computed forward equals <J^T seed, v> computed in reverse (exactly, nearly)."""
    xs, y, values, rng = build(spec, shapes, "float64", "dual")
    wrt = float_inputs(xs)
    direction = {xs[i]: rng.standard_normal(values[i].shape) for i in wrt}
    seed = rng.standard_normal(y.shape)
    feed = dict(zip(xs, values, strict=True))
    forward = np.sum(gc.evaluate(gc.jvp(y, direction), feed) * seed)
    grads = gc.evaluate(gc.grad(y, [xs[i] for i in wrt], seed=seed), feed)
    reverse = sum(np.sum(g * direction[xs[i]]) for i, g in zip(wrt, grads, strict=True))
    np.testing.assert_allclose(forward, reverse, rtol=1e-12, atol=1e-12)


def test_cast_gradient():
    """A float cast passes gradients through and casts them back to the input's dtype."""
    x = gc.input("x", (2, 3), "float64")
    y = (x.astype("float32") * 2).sum()
    gx = gc.grad(y, x)
    assert gx.dtype == "float64"
    np.testing.assert_array_equal(gc.evaluate(gx, {x: np.zeros((2, 3))}), np.full((2, 3), 2.0))
    tangent = gc.jvp(x.astype("float32"), {x: np.ones((2, 3))})
    assert tangent.dtype == "float32"
    # a cast to an integer blocks the gradient
    z = (x.astype("int32").astype("float64") * x).sum()
    np.testing.assert_array_equal(gc.evaluate(gc.grad(z, x), {x: np.full((2, 3), 1.5)}), 1.0)


@pytest.mark.parametrize("op", ["sign", "stop_gradient", "argmax"])
def test_non_differentiable_ops_give_zero_gradients(op):
    x = gc.input("x", (3,), "float64")
    y = {
        "sign": lambda: gc.sign(x),
        "stop_gradient": lambda: gc.stop_gradient(x),
        "argmax": lambda: x.argmax().astype("float64"),
    }[op]()
    gx = gc.grad((y * x).sum(), x)
    value = np.array([0.5, -1.0, 2.0])
    np.testing.assert_allclose(gc.evaluate(gx, {x: value}), gc.evaluate(y, {x: value}))


def test_maximum_ties_split_the_gradient():
    a, b = gc.input("a", (2,), "float64"), gc.input("b", (2,), "float64")
    grads = gc.evaluate(gc.grad(gc.maximum(a, b).sum(), [a, b]), {a: [1.0, 2.0], b: [1.0, 3.0]})
    np.testing.assert_array_equal(grads, [[0.5, 0.0], [0.5, 1.0]])
    x = gc.input("x", (3,), "float64")
    gx = gc.grad(x.max(), x)
    np.testing.assert_array_equal(gc.evaluate(gx, {x: [2.0, 1.0, 2.0]}), [0.5, 0.0, 0.5])


# ---- second order ---------------------------------------------------------------------------

SECOND_ORDER = {
    "tanh_cubed": lambda x: gc.tanh(x) ** 3,
    "exp_sin": lambda x: gc.exp(x) * gc.sin(x),
    "log_div": lambda x: gc.log(x * x + 1) / (x * x + 2),
    "pow": lambda x: (x * x + 1) ** (x * 0.5),
    "softmax": lambda x: gc.softmax(x) * x,
    "matmul": lambda x: gc.sigmoid(x.reshape(2, 2) @ x.reshape(2, 2)),
    "logsumexp": lambda x: gc.logsumexp(x) * x,
    "max_sqrt": lambda x: gc.sqrt(x.max() + x * x),
}


@pytest.mark.parametrize("name", sorted(SECOND_ORDER))
def test_hessian_vector_product(name):
    """grad(grad(f) . v) and jvp(grad(f), v) both match differences of the gradient."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    x = gc.input("x", (4,), "float64")
    f = SECOND_ORDER[name](x).sum()
    (g,) = gc.grad(f, [x])
    v = rng.standard_normal(4)
    x0 = rng.uniform(0.3, 1.5, 4)
    reverse_over_reverse = gc.grad((g * gc.const(v)).sum(), x)
    forward_over_reverse = gc.jvp(g, {x: v})
    hv, hv_forward = gc.evaluate([reverse_over_reverse, forward_over_reverse], {x: x0})
    numeric = (gc.evaluate(g, {x: x0 + EPS * v}) - gc.evaluate(g, {x: x0 - EPS * v})) / (2 * EPS)
    np.testing.assert_allclose(hv, numeric, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(hv_forward, numeric, rtol=1e-6, atol=1e-8)


def test_hessian_of_tanh_cubed_is_diagonal():
    """d²/dx² tanh³ = 6 t s² - 6 t³ s² ... checked in closed form, element by element."""
    x = gc.input("x", (3,), "float64")
    g = gc.grad((gc.tanh(x) ** 3).sum(), x)
    x0 = np.array([-0.7, 0.2, 1.1])
    t = np.tanh(x0)
    s = 1 - t**2
    rows = [gc.evaluate(gc.grad(g[i], x), {x: x0}) for i in range(3)]
    want = np.diag(6 * t * s**2 - 6 * t**3 * s)  # d/dx (3 t² s) = 6 t s² + 3 t² (-2 t s)
    np.testing.assert_allclose(np.array(rows), want, rtol=1e-12, atol=1e-14)


# ---- the table covers the registry ----------------------------------------------------------


def _ops_in(tensors) -> set[str]:
    return {node.op for node in topological_order([t.node for t in tensors])}


def test_table_covers_every_primitive():
    seen: set[str] = set()
    for spec in SPECS:
        for shapes in spec.shapes:
            for dtype in spec.dtypes:
                seen |= _ops_in([build(spec, shapes, dtype)[1]])
    missing = set(OPS) - seen
    assert not missing, f"ops without a forward test: {sorted(missing)}"


def test_gradient_table_covers_every_differentiable_primitive():
    seen: set[str] = set()
    for case in GRAD_CASES:
        spec, shapes = case.values
        seen |= _ops_in([build(spec, shapes, "float64")[1]])
    differentiable = {name for name, op in OPS.items() if op.differentiable}
    seen.add("cast")  # float casts lose digits to finite differences: test_cast_gradient
    missing = differentiable - seen
    assert not missing, f"differentiable ops without a gradient check: {sorted(missing)}"


# ---- the registry's stanzas -----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_has_the_fields_its_kind_needs(name):
    op = OPS[name]
    assert op.name == name
    assert isinstance(op.kind, Kind)
    assert callable(op.infer) and callable(op.ref)
    if op.arity == 0:
        assert not op.differentiable, "sources have no inputs to differentiate"
    if op.differentiable:
        assert op.vjp is not None or op.partials is not None, "reverse mode needs vjp or partials"
        assert op.jvp is not None or op.partials is not None or op.linear, (
            "forward mode needs a rule"
        )
    else:
        assert op.vjp is None and op.partials is None and op.jvp is None
    if op.linear:
        assert op.differentiable and op.partials is None
    if op.kind == Kind.ELEMWISE and op.arity != 0:
        assert op.arity is not None, "elementwise ops have a fixed arity"
        assert op.scalar is not None, "elementwise ops have a scalar emitter for fusion"
    if op.partials is not None:
        assert op.kind == Kind.ELEMWISE, "partials are for elementwise ops"
    assert op.kind <= Kind.OPAQUE


def test_fusion_kinds_are_ordered():
    assert Kind.ELEMWISE < Kind.BROADCAST < Kind.INJECTIVE < Kind.REDUCE
    assert Kind.REDUCE < Kind.CONTRACTION < Kind.OPAQUE
    assert OPS["exp"].kind == Kind.ELEMWISE and OPS["broadcast_to"].kind == Kind.BROADCAST
    assert OPS["sum"].kind == Kind.REDUCE and OPS["matmul"].kind == Kind.CONTRACTION
