"""The tests' op table: every primitive of the registry `graphc.ir.ops.OPS`, and what a test
needs to exercise it.

Each `Spec` is one graphc computation: a builder (`fn`: Tensors -> Tensor, a frontend
function or the primitive applied directly), its NumPy meaning (`ref`), the domain of each
input, the input shapes to try (scalars and broadcasting included), the dtypes it accepts,
whether its gradient is checked, and the primitive of OPS it exercises (`op`; None for the
frontend's composites). A primitive may have several specs (`reshape`, `reshape_flat`).

Read by tests/test_ops.py (forward vs NumPy, gradients and tangents vs finite
differences), tests/test_codegen.py (compiled vs interpreted, NaN/Inf handling) and
tests/strategies.py (the elementwise ops of random programs). tests/test_optable.py fails
when an op of OPS has no spec here, or a spec names an op OPS does not have.

Adding a primitive: add its spec(s) to SPECS, with the domain its inputs need.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

import graphc as gc
from graphc.frontend.tensor import Tensor
from graphc.ir.ops import OPS, Kind, apply

FLOATS = ("float32", "float64")
INTS = ("int32", "int64")
NUMERIC = FLOATS + INTS


def _world():
    from mpi4py import MPI  # the test extra installs mpi4py and the mpich library

    return MPI.COMM_WORLD


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
    # take / scatter_add indices into an axis of 3 or more, negatives counting from the end
    "indices": lambda rng, shape: rng.integers(-3, 3, shape),
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
    op: str | None = None  # the primitive of OPS this spec exercises; None: a composite
    nonfinite: bool = True  # NaN, ±Inf and ±0 inputs give NumPy's results (not so for
    # a cast of NaN to an integer, which is undefined)

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


def unary(name, fn, ref, domain="real", dtypes=FLOATS, grad=True, op=None):
    """An elementwise op of one input, tried on a scalar, a vector and a matrix."""
    return Spec(name, fn, ref, (domain,), UNARY_SHAPES, dtypes, grad, op=op or name)


def binary(name, fn, ref, domains=("real", "real"), dtypes=NUMERIC, grad=True):
    """An elementwise op of two inputs, tried with and without NumPy broadcasting."""
    return Spec(name, fn, ref, domains, BINARY_SHAPES, dtypes, grad, op=name)


def np_pad(x, widths, value):
    """NumPy meaning of `pad` with (low, high, interior) per axis."""
    axes = list(zip(x.shape, widths, strict=True))
    out = np.full([lo + hi + d + max(d - 1, 0) * i for d, (lo, hi, i) in axes], value, x.dtype)
    out[tuple(slice(lo, lo + (d - 1) * (i + 1) + 1, i + 1) for d, (lo, _, i) in axes)] = x
    return out


def np_window(x, kernel, stride, dilation):
    """NumPy meaning of `window`, by loops: out[..., o, t] = x[..., o*stride + t*dilation]."""
    rank = len(kernel)
    spatial = x.shape[x.ndim - rank :]
    out = [(n - (k - 1) * d - 1) // s + 1 for n, k, s, d in zip(spatial, kernel, stride, dilation)]
    result = np.empty(x.shape[: x.ndim - rank] + tuple(out) + tuple(kernel), x.dtype)
    for o in np.ndindex(*out):
        for t in np.ndindex(*kernel):
            at = tuple(a * s + b * d for a, b, s, d in zip(o, t, stride, dilation))
            result[(..., *o, *t)] = x[(..., *at)]
    return result


def np_conv(x, w, stride, dilation, groups):
    """NumPy meaning of `conv` (cross-correlation, channels first, grouped), by loops."""
    windows = np_window(x, w.shape[2:], stride, dilation)  # (N, C, *out, *kernel)
    rank = w.ndim - 2
    cg, og = x.shape[1] // groups, w.shape[0] // groups
    out = np.zeros((x.shape[0], w.shape[0], *windows.shape[2 : 2 + rank]), x.dtype)
    for co in range(w.shape[0]):
        g = co // og
        part = windows[:, g * cg : (g + 1) * cg]
        axes = (1, *range(2 + rank, 2 + 2 * rank))
        out[:, co] = np.tensordot(part, w[co], axes=(axes, tuple(range(1 + rank))))
    return out


def np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


def np_logsumexp(x, axis=None, keepdims=False):
    m = x.max(axis=axis, keepdims=True)
    out = m + np.log(np.exp(x - m).sum(axis=axis, keepdims=True))
    return out if keepdims else np.squeeze(out, axis=axis)


def ramp(shape, dtype) -> np.ndarray:
    """-1, 0, 1, -1, ... in `shape`: small values exact in every dtype."""
    size = int(np.prod(shape, dtype=np.int64))
    return (np.arange(size) % 3 - 1).reshape(shape).astype(dtype)


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
    unary("atan", gc.atan, np.arctan),
    unary("erf", gc.erf, lambda x: np.vectorize(math.erf, otypes=[x.dtype])(x)),
    # piecewise constant (gradient 0); away from the jumps in the gradient checks' domain
    unary("floor", gc.floor, np.floor),
    unary("ceil", gc.ceil, np.ceil),
    unary("round", gc.round, np.round),
    # in one process (no mpiexec) the world has one rank: the sum over ranks is the value
    unary("allreduce", lambda x: gc.distributed.allreduce(x, _world(), "sum"), lambda x: x),
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
    binary("remainder", lambda a, b: a % b, np.remainder, ("real", "nonzero")),
    binary("floor_divide", lambda a, b: a // b, np.floor_divide, ("real", "nonzero")),
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
        op="where",
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
        op="cast",
    ),
    Spec(
        "cast_f64",
        lambda x: x.astype("float64"),
        lambda x: x.astype("float64"),
        ("real",),
        UNARY_SHAPES,
        NUMERIC,
        grad=False,
        op="cast",
    ),
    Spec(
        "cast_i32",
        lambda x: x.astype("int32"),
        lambda x: x.astype("int32"),
        ("real",),
        UNARY_SHAPES,
        NUMERIC,
        grad=False,
        op="cast",
        nonfinite=False,
    ),
    Spec(
        "cast_bool",
        lambda x: x.astype("float64"),
        lambda x: x.astype("float64"),
        ("bool",),
        UNARY_SHAPES,
        ("bool",),
        grad=False,
        op="cast",
    ),
    unary("stop_gradient", gc.stop_gradient, lambda x: x, grad=False),
    # -- layout
    Spec(
        "broadcast_to",
        lambda x: prim("broadcast_to", x, shape=(2, 3)),
        lambda x: np.broadcast_to(x, (2, 3)),
        ("real",),
        (((),), ((3,),), ((2, 1),)),
        NUMERIC,
        op="broadcast_to",
    ),
    Spec(
        "reshape",
        lambda x: x.reshape(3, 2),
        lambda x: x.reshape(3, 2),
        ("real",),
        (((2, 3),), ((6,),)),
        NUMERIC,
        op="reshape",
    ),
    Spec(
        "reshape_flat",
        lambda x: x.reshape(-1),
        lambda x: x.reshape(-1),
        ("real",),
        (((2, 3),), ((2, 1, 3),)),
        NUMERIC,
        op="reshape",
    ),
    Spec(
        "transpose_T",
        lambda x: x.T,
        lambda x: x.T,
        ("real",),
        (((2, 3),), ((2, 3, 2),)),
        NUMERIC,
        op="transpose",
    ),
    Spec(
        "transpose_perm",
        lambda x: x.transpose(1, 2, 0),
        lambda x: x.transpose(1, 2, 0),
        ("real",),
        (((2, 3, 2),),),
        NUMERIC,
        op="transpose",
    ),
    Spec(
        "slice",
        lambda x: x[1:3, ::2],
        lambda x: x[1:3, ::2],
        ("real",),
        (((3, 4),), ((2, 5),)),
        NUMERIC,
        op="slice",
    ),
    Spec(
        "index",
        lambda x: x[None, -1, ..., 1:],
        lambda x: x[None, -1, ..., 1:],
        ("real",),
        (((3, 4),), ((2, 2, 3),)),
        NUMERIC,
        op="slice",
    ),
    Spec(
        "pad",
        lambda x: prim("pad", x, widths=PAD_WIDTHS, value=0.0),
        lambda x: np_pad(x, PAD_WIDTHS, 0.0),
        ("real",),
        (((2, 3),), ((1, 1),)),
        NUMERIC,
        op="pad",
    ),
    Spec(
        "pad_value",
        lambda x: prim("pad", x, widths=((2, 1, 0),), value=1.5),
        lambda x: np_pad(x, ((2, 1, 0),), 1.5),
        ("real",),
        (((3,),),),
        op="pad",
    ),
    Spec(
        "concat0",
        lambda a, b: gc.concat([a, b], axis=0),
        lambda a, b: np.concatenate([a, b]),
        ("real", "real"),
        (((1, 3), (2, 3)), ((2,), (3,))),
        NUMERIC,
        op="concat",
    ),
    Spec(
        "concat3",
        lambda a, b, c: gc.concat([a, b, c], axis=-1),
        lambda a, b, c: np.concatenate([a, b, c], axis=-1),
        ("real",) * 3,
        (((2, 1), (2, 2), (2, 1)),),
        op="concat",
    ),
    # -- reductions
    # graphc sums keep the input dtype (NumPy would widen int32 to int64)
    Spec(
        "sum",
        lambda x: x.sum(),
        lambda x: x.sum(dtype=x.dtype),
        ("real",),
        UNARY_SHAPES,
        NUMERIC,
        op="sum",
    ),
    Spec(
        "sum_axis",
        lambda x: x.sum(axis=1),
        lambda x: x.sum(axis=1, dtype=x.dtype),
        ("real",),
        (((2, 3),), ((2, 3, 2),)),
        NUMERIC,
        op="sum",
    ),
    Spec(
        "sum_axes_keepdims",
        lambda x: x.sum(axis=(0, 2), keepdims=True),
        lambda x: x.sum(axis=(0, 2), keepdims=True, dtype=x.dtype),
        ("real",),
        (((2, 3, 2),),),
        NUMERIC,
        op="sum",
    ),
    Spec("max", lambda x: x.max(), np.max, ("real",), UNARY_SHAPES, NUMERIC, op="max"),
    Spec(
        "max_axis",
        lambda x: x.max(axis=-1),
        lambda x: x.max(axis=-1),
        ("real",),
        (((2, 3),), ((2, 3, 2),)),
        NUMERIC,
        op="max",
    ),
    Spec(
        "max_axes_keepdims",
        lambda x: x.max(axis=(0, 2), keepdims=True),
        lambda x: x.max(axis=(0, 2), keepdims=True),
        ("real",),
        (((2, 3, 2),),),
        NUMERIC,
        op="max",
    ),
    Spec(
        "argmax",
        lambda x: x.argmax(axis=1),
        lambda x: x.argmax(axis=1),
        ("real",),
        (((2, 3),), ((2, 3, 2),)),
        NUMERIC,
        grad=False,
        op="argmax",
    ),
    Spec(
        "argmax_keepdims",
        lambda x: x.argmax(axis=0, keepdims=True),
        lambda x: x.argmax(axis=0, keepdims=True),
        ("real",),
        (((3, 2),),),
        NUMERIC,
        grad=False,
        op="argmax",
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
        op="matmul",
    ),
    Spec(
        "matmul_broadcast",
        gc.matmul,
        np.matmul,
        ("real", "real"),
        (((2, 2, 3), (3, 2)), ((3,), (3, 2)), ((2, 3), (3,)), ((1, 2, 3), (2, 3, 1))),
        op="matmul",
    ),
    # -- windows and convolution
    Spec(
        "window",
        lambda x: prim("window", x, kernel=(2, 3), stride=(2, 1), dilation=(1, 2)),
        lambda x: np_window(x, (2, 3), (2, 1), (1, 2)),
        ("real",),
        (((1, 5, 6),), ((2, 2, 4, 5),)),
        NUMERIC,
        op="window",
    ),
    Spec(
        "reverse",
        lambda x: prim("reverse", x, axes=(0, 2)),
        lambda x: x[::-1, :, ::-1],
        ("real",),
        (((2, 3, 4),),),
        NUMERIC,
        op="reverse",
    ),
    Spec(
        "conv",
        lambda x, w: prim("conv", x, w, stride=(2, 1), dilation=(1, 2), groups=2),
        lambda x, w: np_conv(x, w, (2, 1), (1, 2), 2),
        ("real", "real"),
        (((2, 4, 5, 6), (4, 2, 2, 2)),),
        op="conv",
    ),
    Spec(
        "conv1d",
        lambda x, w: prim("conv", x, w, stride=(1,), dilation=(1,), groups=1),
        lambda x, w: np_conv(x, w, (1,), (1,), 1),
        ("real", "real"),
        (((1, 2, 5), (3, 2, 3)),),
        op="conv",
    ),
    # -- sources: every spec reads inputs; these return one, or mix a param, a const or an iota
    # into it (a param named "p" per call: names need not be unique)
    Spec("input", lambda x: x, lambda x: x, ("real",), UNARY_SHAPES, NUMERIC, False, op="input"),
    Spec(
        "param",
        lambda x: x * gc.param("p", ramp(x.shape, x.dtype)),
        lambda x: x * ramp(x.shape, x.dtype),
        ("real",),
        UNARY_SHAPES,
        NUMERIC,
        grad=False,
        op="param",
    ),
    Spec(
        "const",
        lambda x: x - gc.const(ramp(x.shape, x.dtype)),
        lambda x: x - ramp(x.shape, x.dtype),
        ("real",),
        UNARY_SHAPES,
        NUMERIC,
        grad=False,
        op="const",
    ),
    Spec(
        "iota",
        lambda x: x + prim("iota", shape=x.shape, axis=x.ndim - 1, dtype=x.dtype),
        lambda x: x + np.arange(x.shape[-1], dtype=x.dtype),
        ("real",),
        (((3,),), ((2, 3),)),
        NUMERIC,
        grad=False,
        op="iota",
    ),
    # -- composites of the frontend
    Spec("relu", gc.relu, lambda x: np.maximum(x, 0), ("nonzero",), UNARY_SHAPES),
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


def np_scatter_add(a, indices, updates, axis=0):
    out = a.copy()
    np.add.at(out, (slice(None),) * axis + (indices,), updates)
    return out


def np_threefry(key, counter, dtype):
    from graphc.ir.ops import random_values, threefry2x32

    return random_values(threefry2x32(key, counter).reshape(np.shape(key)), dtype)


SPECS += [
    # -- gathers: indices in [-3, 3) into axes of 3 or 4
    Spec(
        "take",
        lambda a, i: gc.take(a, i, axis=1),
        lambda a, i: np.take(a, i, axis=1),
        ("real", "indices"),
        (((2, 3), (4,)), ((2, 4, 2), (2, 3)), ((1, 3), ())),
        NUMERIC,
        fixed=(None, "int64"),
        op="take",
        nonfinite=False,
    ),
    Spec(
        "take_index",
        lambda a, i: a[i],
        lambda a, i: a[i],
        ("real", "indices"),
        (((3,), (5,)), ((4, 2), (2, 2))),
        FLOATS,
        fixed=(None, "int32"),
        op="take",
        nonfinite=False,
    ),
    Spec(
        "scatter_add",
        lambda a, i, u: gc.scatter_add(a, i, u, axis=0),
        np_scatter_add,
        ("real", "indices", "real"),
        (((3, 2), (5,), (5, 2)), ((4,), (2, 2), (2, 2))),
        NUMERIC,
        fixed=(None, "int32", None),
        op="scatter_add",
        nonfinite=False,
    ),
    Spec(
        "scatter_add_axis1",
        lambda a, i, u: gc.scatter_add(a, i, u, axis=1),
        lambda a, i, u: np_scatter_add(a, i, u, axis=1),
        ("real", "indices", "real"),
        (((2, 3), (4,), (2, 4)),),
        FLOATS,
        fixed=(None, "int64", None),
        op="scatter_add",
        nonfinite=False,
    ),
    # -- counter-based random bits: Threefry-2x32 of (key, counter), as raw bits and uniforms
    *(
        Spec(
            f"threefry_{dtype}",
            lambda k, c, dtype=dtype: prim("threefry", k, c, dtype=dtype),
            lambda k, c, dtype=dtype: np_threefry(k, c, dtype),
            ("real", "real"),
            (((), ()), ((3,), (3,)), ((2, 3), (2, 3))),
            (dtype,),
            grad=False,
            fixed=("int64", "int64"),
            op="threefry",
            nonfinite=False,
        )
        for dtype in ("int64", "float32", "float64")
    ),
]


def _scan_cell(c, x):
    """A loop body for the `scan` specs: c' = sin(c) * x + c, y = c' * c'."""
    new = gc.sin(c) * x + c
    return new, new * new


def np_scan(init, xs, reverse=False):
    c, ys = init, [None] * len(xs)
    for t in reversed(range(len(xs))) if reverse else range(len(xs)):
        c = np.sin(c) * xs[t] + c
        ys[t] = c * c
    return c, np.stack(ys)


SPECS += [
    # -- a loop (gc.scan): its stacked ys, and its final carry walking xs from the end
    Spec(
        "scan",
        lambda c, xs: gc.scan(_scan_cell, c, xs)[1],
        lambda c, xs: np_scan(c, xs)[1],
        ("real", "real"),
        (((3,), (4, 3)), ((), (5,))),
        op="scan",
        nonfinite=False,
    ),
    Spec(
        "scan_reverse_carry",
        lambda c, xs: gc.scan(_scan_cell, c, xs, reverse=True)[0],
        lambda c, xs: np_scan(c, xs, reverse=True)[0],
        ("real", "real"),
        (((2, 3), (3, 2, 3)),),
        op="scan",
        nonfinite=False,
    ),
]


def specs_of(op: str | None) -> list[Spec]:
    """The specs that exercise primitive `op` (None: the frontend's composites)."""
    return [spec for spec in SPECS if spec.op == op]


def is_elementwise(spec: Spec) -> bool:
    """Whether `spec` applies one elementwise primitive with inputs (not a source)."""
    return spec.op is not None and OPS[spec.op].kind == Kind.ELEMWISE and bool(OPS[spec.op].arity)


def build(spec: Spec, shapes, dtype: str, seed_text: str = "", prefix: str = "x"):
    """Inputs (named `{prefix}0`, `{prefix}1`, ...), the output Tensor and seeded random
    values for one case of `spec`."""
    rng = np.random.default_rng(zlib.crc32(f"{spec.name}{shapes}{dtype}{seed_text}".encode()))
    dtypes = spec.input_dtypes(dtype)
    xs = [
        gc.input(f"{prefix}{i}", s, d) for i, (s, d) in enumerate(zip(shapes, dtypes, strict=True))
    ]
    values = [
        make_value(dom, s, d, rng) for dom, s, d in zip(spec.domains, shapes, dtypes, strict=True)
    ]
    return xs, spec.fn(*xs), values, rng
