"""Every primitive of the op registry, from one table of specs run through one checker.

Each `Spec` names a graphc computation (a frontend function or a primitive applied
directly), its NumPy meaning, the domain of each input, the input shapes to try (scalars
and broadcasting included) and the dtypes it accepts. The checkers run every spec:

- forward: `gc.evaluate` against NumPy, in float32 and float64 (and ints where accepted);
- reverse: `gc.grad` of `sum(y * seed)` against central differences, in float64;
- forward mode: `gc.jvp` along a random tangent against a directional difference;
- second order for a few: Hessian-vector products against differences of the gradient.

Two meta tests keep the table honest: every primitive of `OPS` appears in some spec's
graph, and every differentiable primitive in some gradient-checked graph.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

import graphc as gc
from graphc.frontend.tensor import Tensor
from graphc.ir.graph import apply, topological_order
from graphc.ir.ops import OPS, Kind

FLOATS = ("float32", "float64")
INTS = ("int32", "int64")
NUMERIC = FLOATS + INTS


def prim(op: str, *tensors: Tensor, **attrs) -> Tensor:
    """A primitive applied directly, for ops without a frontend function."""
    return Tensor(apply(op, *[t.node for t in tensors], **attrs))


# ---- input domains --------------------------------------------------------------------------


def _magnitude(rng, shape):
    return rng.uniform(0.5, 2.0, shape)


DOMAINS: dict[str, Callable] = {
    "real": lambda rng, shape: rng.uniform(-2.0, 2.0, shape),
    "positive": _magnitude,
    # away from 0: for denominators and kinks (abs, relu)
    "nonzero": lambda rng, shape: _magnitude(rng, shape) * rng.choice([-1.0, 1.0], shape),
    # small integers, so that comparisons see ties
    "ties": lambda rng, shape: rng.integers(-2, 3, shape).astype(np.float64),
    "bool": lambda rng, shape: rng.random(shape) < 0.5,
    "labels": lambda rng, shape: rng.integers(0, 3, shape),
}


def make_value(domain: str, shape, dtype: str, rng) -> np.ndarray:
    value = np.asarray(DOMAINS[domain](rng, shape))
    if domain == "bool":
        return value
    if dtype in INTS and domain in ("real", "nonzero", "positive"):
        value = np.asarray(np.round(value * 2))  # integers in [-4, 4]
        if domain != "real":
            value[value == 0] = 1
    return value.astype(dtype)


# ---- the table ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spec:
    """One graphc computation, its NumPy meaning, and where to try it."""

    name: str
    fn: Callable  # Tensors -> Tensor
    ref: Callable  # ndarrays -> ndarray
    domains: tuple[str, ...]
    shapes: tuple[tuple[tuple[int, ...], ...], ...]
    dtypes: tuple[str, ...] = FLOATS
    grad: bool = True
    # input dtypes per position when they differ from the spec dtype ("bool", "int64", ...)
    fixed: tuple[str | None, ...] | None = None

    def input_dtypes(self, dtype: str) -> list[str]:
        fixed = self.fixed or (None,) * len(self.domains)
        return [f or dtype for f in fixed]


UNARY_SHAPES = (((),), ((3,),), ((2, 3),))
BINARY_SHAPES = (
    ((), ()),
    ((2, 3), (2, 3)),
    ((2, 3), (3,)),  # broadcasting: trailing axes
    ((2, 1), (1, 3)),  # broadcasting: both sides
    ((), (2, 3)),  # scalar with a matrix
)


def unary(name, fn, ref, domain="real", dtypes=FLOATS, grad=True):
    return Spec(name, fn, ref, (domain,), UNARY_SHAPES, dtypes, grad)


def binary(name, fn, ref, domains=("real", "real"), dtypes=NUMERIC, grad=True):
    return Spec(name, fn, ref, domains, BINARY_SHAPES, dtypes, grad)


def np_pad(x, widths, value):
    """NumPy meaning of `pad` with (low, high, interior) per axis."""
    axes = list(zip(x.shape, widths, strict=True))
    out = np.full([lo + hi + d + max(d - 1, 0) * i for d, (lo, hi, i) in axes], value, x.dtype)
    out[tuple(slice(lo, lo + (d - 1) * (i + 1) + 1, i + 1) for d, (lo, _, i) in axes)] = x
    return out


def np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_logsumexp(x, axis=None, keepdims=False):
    m = x.max(axis=axis, keepdims=True)
    out = m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))
    return out if keepdims else np.squeeze(out, axis=axis)


PAD_WIDTHS = ((1, 0, 1), (0, 2, 2))

SPECS = [
    # -- elementwise unary
    unary("neg", lambda x: -x, np.negative, dtypes=NUMERIC),
    unary("abs", gc.abs, np.abs, "nonzero", dtypes=NUMERIC),
    unary("sign", gc.sign, np.sign, "nonzero", dtypes=NUMERIC, grad=False),
    unary("exp", gc.exp, np.exp),
    unary("log", gc.log, np.log, "positive"),
    unary("log1p", gc.log1p, np.log1p, "positive"),
    unary("sin", gc.sin, np.sin),
    unary("cos", gc.cos, np.cos),
    unary("tanh", gc.tanh, np.tanh),
    unary("sqrt", gc.sqrt, np.sqrt, "positive"),
    unary("sigmoid", gc.sigmoid, lambda x: 1 / (1 + np.exp(-x))),
    unary("logical_not", lambda x: ~x, np.logical_not, "bool", ("bool",), grad=False),
    # -- elementwise binary (broadcasting makes broadcast_to nodes)
    binary("add", lambda a, b: a + b, np.add),
    binary("sub", lambda a, b: a - b, np.subtract),
    binary("mul", lambda a, b: a * b, np.multiply),
    binary("div", lambda a, b: a / b, np.divide, ("real", "nonzero"), FLOATS),
    binary("pow", lambda a, b: a**b, np.power, ("positive", "real"), FLOATS),
    binary("maximum", gc.maximum, np.maximum),
    binary("minimum", gc.minimum, np.minimum),
    *[
        binary(name, fn, ref, ("ties", "ties"), NUMERIC, grad=False)
        for name, fn, ref in [
            ("lt", lambda a, b: a < b, np.less),
            ("le", lambda a, b: a <= b, np.less_equal),
            ("gt", lambda a, b: a > b, np.greater),
            ("ge", lambda a, b: a >= b, np.greater_equal),
            ("eq", lambda a, b: a == b, np.equal),
            ("ne", lambda a, b: a != b, np.not_equal),
        ]
    ],
    binary("logical_and", lambda a, b: a & b, np.logical_and, ("bool", "bool"), ("bool",), False),
    binary("logical_or", lambda a, b: a | b, np.logical_or, ("bool", "bool"), ("bool",), False),
    Spec(
        "where",
        gc.where,
        np.where,
        ("bool", "real", "real"),
        (((), (), ()), ((2, 3), (2, 3), (2, 3)), ((2, 3), (3,), ()), ((2, 1), (1, 3), (2, 3))),
        NUMERIC,
        fixed=("bool", None, None),
    ),
    # -- casts (gradient through a float cast: test_cast_gradient)
    Spec(
        "cast_f32",
        lambda x: x.astype("float32"),
        lambda x: x.astype("float32"),
        ("real",),
        UNARY_SHAPES,
        NUMERIC,
        grad=False,
    ),
    Spec(
        "cast_f64",
        lambda x: x.astype("float64"),
        lambda x: x.astype("float64"),
        ("real",),
        UNARY_SHAPES,
        NUMERIC,
        grad=False,
    ),
    Spec(
        "cast_i32",
        lambda x: x.astype("int32"),
        lambda x: x.astype("int32"),
        ("real",),
        UNARY_SHAPES,
        NUMERIC,
        grad=False,
    ),
    Spec(
        "cast_bool",
        lambda x: x.astype("float64"),
        lambda x: x.astype("float64"),
        ("bool",),
        UNARY_SHAPES,
        ("bool",),
        grad=False,
    ),
    Spec("stop_gradient", gc.stop_gradient, lambda x: x, ("real",), UNARY_SHAPES, grad=False),
    # -- layout
    Spec(
        "broadcast_to",
        lambda x: prim("broadcast_to", x, shape=(2, 3)),
        lambda x: np.broadcast_to(x, (2, 3)),
        ("real",),
        (((),), ((3,),), ((2, 1),)),
        NUMERIC,
    ),
    Spec(
        "reshape",
        lambda x: x.reshape(3, 2),
        lambda x: x.reshape(3, 2),
        ("real",),
        (((2, 3),), ((6,),)),
        NUMERIC,
    ),
    Spec(
        "reshape_flat",
        lambda x: x.reshape(-1),
        lambda x: x.reshape(-1),
        ("real",),
        (((2, 3),), ((2, 1, 3),)),
        NUMERIC,
    ),
    Spec(
        "transpose_T", lambda x: x.T, lambda x: x.T, ("real",), (((2, 3),), ((2, 3, 2),)), NUMERIC
    ),
    Spec(
        "transpose_perm",
        lambda x: x.transpose(1, 2, 0),
        lambda x: x.transpose(1, 2, 0),
        ("real",),
        (((2, 3, 2),),),
        NUMERIC,
    ),
    Spec(
        "slice",
        lambda x: x[1:3, ::2],
        lambda x: x[1:3, ::2],
        ("real",),
        (((3, 4),), ((2, 5),)),
        NUMERIC,
    ),
    Spec(
        "index",
        lambda x: x[None, -1, ..., 1:],
        lambda x: x[None, -1, ..., 1:],
        ("real",),
        (((3, 4),), ((2, 2, 3),)),
        NUMERIC,
    ),
    Spec(
        "pad",
        lambda x: prim("pad", x, widths=PAD_WIDTHS, value=0.0),
        lambda x: np_pad(x, PAD_WIDTHS, 0.0),
        ("real",),
        (((2, 3),), ((1, 1),)),
        NUMERIC,
    ),
    Spec(
        "pad_value",
        lambda x: prim("pad", x, widths=((2, 1, 0),), value=1.5),
        lambda x: np_pad(x, ((2, 1, 0),), 1.5),
        ("real",),
        (((3,),),),
    ),
    Spec(
        "concat0",
        lambda a, b: gc.concat([a, b], axis=0),
        lambda a, b: np.concatenate([a, b]),
        ("real", "real"),
        (((1, 3), (2, 3)), ((2,), (3,))),
        NUMERIC,
    ),
    Spec(
        "concat3",
        lambda a, b, c: gc.concat([a, b, c], axis=-1),
        lambda a, b, c: np.concatenate([a, b, c], axis=-1),
        ("real",) * 3,
        (((2, 1), (2, 2), (2, 1)),),
    ),
    # -- reductions
    # graphc sums keep the input dtype (NumPy would widen int32 to int64)
    Spec(
        "sum", lambda x: x.sum(), lambda x: x.sum(dtype=x.dtype), ("real",), UNARY_SHAPES, NUMERIC
    ),
    Spec(
        "sum_axis",
        lambda x: x.sum(axis=1),
        lambda x: x.sum(axis=1, dtype=x.dtype),
        ("real",),
        (((2, 3),), ((2, 3, 2),)),
        NUMERIC,
    ),
    Spec(
        "sum_axes_keepdims",
        lambda x: x.sum(axis=(0, 2), keepdims=True),
        lambda x: x.sum(axis=(0, 2), keepdims=True, dtype=x.dtype),
        ("real",),
        (((2, 3, 2),),),
        NUMERIC,
    ),
    Spec("max", lambda x: x.max(), np.max, ("real",), UNARY_SHAPES, NUMERIC),
    Spec(
        "max_axis",
        lambda x: x.max(axis=-1),
        lambda x: x.max(axis=-1),
        ("real",),
        (((2, 3),), ((2, 3, 2),)),
        NUMERIC,
    ),
    Spec(
        "max_axes_keepdims",
        lambda x: x.max(axis=(0, 2), keepdims=True),
        lambda x: x.max(axis=(0, 2), keepdims=True),
        ("real",),
        (((2, 3, 2),),),
        NUMERIC,
    ),
    Spec(
        "argmax",
        lambda x: x.argmax(axis=1),
        lambda x: x.argmax(axis=1),
        ("real",),
        (((2, 3),), ((2, 3, 2),)),
        NUMERIC,
        grad=False,
    ),
    Spec(
        "argmax_keepdims",
        lambda x: x.argmax(axis=0, keepdims=True),
        lambda x: x.argmax(axis=0, keepdims=True),
        ("real",),
        (((3, 2),),),
        NUMERIC,
        grad=False,
    ),
    Spec("mean", lambda x: x.mean(), np.mean, ("real",), UNARY_SHAPES),
    Spec(
        "mean_axis",
        lambda x: x.mean(axis=0, keepdims=True),
        lambda x: x.mean(axis=0, keepdims=True),
        ("real",),
        (((2, 3),),),
    ),
    # -- contraction
    Spec(
        "matmul",
        lambda a, b: a @ b,
        np.matmul,
        ("real", "real"),
        (((2, 3), (3, 2)), ((1, 3), (3, 1)), ((2, 2, 3), (2, 3, 2))),
        NUMERIC,
    ),
    Spec(
        "matmul_broadcast",
        gc.matmul,
        np.matmul,
        ("real", "real"),
        (((2, 2, 3), (3, 2)), ((3,), (3, 2)), ((2, 3), (3,)), ((1, 2, 3), (2, 3, 1))),
    ),
    # -- composites of the frontend
    unary("relu", gc.relu, lambda x: np.maximum(x, 0), "nonzero"),
    Spec("softmax", gc.softmax, np_softmax, ("real",), (((3,),), ((2, 3),))),
    Spec(
        "softmax_axis0",
        lambda x: gc.softmax(x, axis=0),
        lambda x: np_softmax(x, axis=0),
        ("real",),
        (((2, 3),),),
    ),
    Spec(
        "log_softmax",
        gc.log_softmax,
        lambda x: np.log(np_softmax(x)),
        ("real",),
        (((3,),), ((2, 3),)),
    ),
    Spec("logsumexp", gc.logsumexp, np_logsumexp, ("real",), UNARY_SHAPES),
    Spec(
        "logsumexp_axis",
        lambda x: gc.logsumexp(x, axis=1, keepdims=True),
        lambda x: np_logsumexp(x, axis=1, keepdims=True),
        ("real",),
        (((2, 3),),),
    ),
    Spec(
        "one_hot",
        lambda x: gc.one_hot(x, 3),
        lambda x: np.eye(3, dtype=np.float32)[x],
        ("labels",),
        (((),), ((3,),), ((2, 2),)),
        INTS,
        grad=False,
    ),
    Spec(
        "one_hot_f64",
        lambda x: gc.one_hot(x, 4, dtype="float64"),
        lambda x: np.eye(4)[x],
        ("labels",),
        (((3,),),),
        INTS,
        grad=False,
    ),
]

CASES = [
    pytest.param(spec, shapes, id=f"{spec.name}-{'x'.join(str(list(s)) for s in shapes)}")
    for spec in SPECS
    for shapes in spec.shapes
]
GRAD_CASES = [case for case in CASES if case.values[0].grad]


def build(spec: Spec, shapes, dtype: str, seed_text: str = ""):
    """Inputs, the output Tensor and seeded random values for one case."""
    rng = np.random.default_rng(zlib.crc32(f"{spec.name}{shapes}{dtype}{seed_text}".encode()))
    dtypes = spec.input_dtypes(dtype)
    xs = [gc.input(f"x{i}", s, d) for i, (s, d) in enumerate(zip(shapes, dtypes, strict=True))]
    values = [
        make_value(dom, s, d, rng) for dom, s, d in zip(spec.domains, shapes, dtypes, strict=True)
    ]
    return xs, spec.fn(*xs), values, rng


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
    seen |= _ops_in([gc.param("p", np.ones(2))])  # the one source no spec needs
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
