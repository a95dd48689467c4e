"""Codegen: every graph the interpreter runs also compiles and runs natively, same results.

Each test builds a program through the public frontend, compiles it with `gc.compile` and
compares every output with the reference interpreter (`gc.evaluate`): exactly for integers
and bools, to 1e-12 relative in float64 and 1e-5 in float32 (absolute: that times the
output's largest magnitude, for values that cancel). NaN and Inf must land in the same
places. To keep the suite quick, one program covers one family of ops for one dtype (each
op is still its own kernel, or fused as fusion decides). Random programs come from
tests/strategies.py.
"""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from optable import SPECS, build, is_elementwise, specs_of
from strategies import programs

import graphc as gc
from graphc.codegen import forms
from graphc.frontend.tensor import Tensor
from graphc.ir.graph import Graph
from graphc.ir.ops import OPS, apply
from graphc.passes import fusion

FLOATS = ("float32", "float64")
INTS = ("int32", "int64")
NUMERIC = FLOATS + INTS
DTYPES = NUMERIC + ("bool",)
RTOL = {"float32": 1e-5, "float64": 1e-12}


def assert_same(got, want, label="", rtol=None):
    """Compiled `got` equals interpreted `want`: dtype, shape, NaN/Inf positions, values."""
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype, f"{label}: dtype {got.dtype} != {want.dtype}"
    assert got.shape == want.shape, f"{label}: shape {got.shape} != {want.shape}"
    if want.dtype.kind != "f":
        np.testing.assert_array_equal(got, want, err_msg=label)
        return
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=f"{label}: NaNs")
    infinite = np.isinf(want)
    np.testing.assert_array_equal(got[infinite], want[infinite], err_msg=f"{label}: Infs")
    finite = np.isfinite(want)
    rtol = rtol or RTOL[want.dtype.name]
    scale = max(1.0, float(np.max(np.abs(want[finite]), initial=0.0)))
    np.testing.assert_allclose(
        got[finite], want[finite], rtol=rtol, atol=rtol * scale, err_msg=label
    )


def check_compiled(inputs, outputs, feed, updates=None):
    """Compile `outputs` over `inputs`, run on `feed` (by name), compare with the interpreter."""
    step = gc.compile(inputs=inputs, outputs=list(outputs), updates=updates)
    want = interpreted(list(outputs), feed)
    got = step(**feed)
    assert len(got) == len(want)
    for i, (g, w, out) in enumerate(zip(got, want, outputs)):
        assert_same(g, w, f"output {i} {out!r}")
    return step


def values(dtype, shape, rng, special=False):
    """Random test data; `special` puts NaN, ±Inf, ±0 into the first float elements."""
    if dtype == "bool":
        return rng.random(shape) < 0.5
    if dtype in INTS:
        return rng.integers(-5, 6, shape).astype(dtype)
    array = rng.uniform(-3, 3, shape).astype(dtype)
    if special:
        flat = array.reshape(-1)
        flat[:5] = [np.nan, np.inf, -np.inf, 0.0, -0.0]
    return array


# ---- elementwise ----------------------------------------------------------------------------

# every unary elementwise primitive of the op table (tests/optable.py) whose NaN, ±Inf and ±0
# results NumPy defines, and relu
FLOAT_UNARY = {
    spec.name: spec.fn
    for spec in SPECS
    if is_elementwise(spec)
    and len(spec.domains) == 1
    and not spec.fixed
    and spec.nonfinite
    and set(FLOATS) <= set(spec.dtypes)
} | {"relu": gc.relu}


@pytest.mark.parametrize("dtype", FLOATS)
def test_float_unary_ops_with_nan_inf_and_zeros(dtype):
    rng = np.random.default_rng(1)
    x = gc.input("x", (3, 4), dtype)
    feed = {"x": values(dtype, (3, 4), rng, special=True)}
    check_compiled([x], [f(x) for f in FLOAT_UNARY.values()], feed)


@pytest.mark.parametrize("dtype", FLOATS)
def test_transcendentals_over_a_wide_range(dtype):
    x = gc.input("x", (2, 50), dtype)
    wide = np.concatenate([np.linspace(-90, 90, 50), np.geomspace(1e-30, 1e30, 50)])
    feed = {"x": wide.reshape(2, 50).astype(dtype)}
    safe = abs(x) + 1e-3
    check_compiled(
        [x],
        [gc.exp(x), gc.tanh(x), gc.sigmoid(x), gc.log(safe), gc.log1p(safe), gc.sqrt(safe)],
        feed,
    )


@pytest.mark.parametrize("dtype", INTS)
def test_integer_unary_ops(dtype):
    x = gc.input("x", (3, 4), dtype)
    feed = {"x": values(dtype, (3, 4), np.random.default_rng(2))}
    check_compiled([x], [-x, abs(x), gc.sign(x), gc.stop_gradient(x), gc.relu(x)], feed)


@pytest.mark.parametrize("dtype", NUMERIC)
def test_binary_arithmetic(dtype):
    rng = np.random.default_rng(3)
    a, b = gc.input("a", (3, 4), dtype), gc.input("b", (3, 4), dtype)
    av, bv = values(dtype, (3, 4), rng), values(dtype, (3, 4), rng)
    bv[1, :2] = av[1, :2]  # ties for maximum/minimum
    outputs = [a + b, a - b, a * b, gc.maximum(a, b), gc.minimum(a, b)]
    if dtype in FLOATS:
        outputs += [a / b, (abs(a) + 0.5) ** b, a**2.0, a / (abs(b) + 1)]
    check_compiled([a, b], outputs, {"a": av, "b": bv})


@pytest.mark.parametrize("left", DTYPES)
def test_comparisons_and_where_between_all_dtype_pairs(left):
    """Mixed dtypes promote in the frontend (NumPy 2 rules); every pair compiles."""
    rng = np.random.default_rng(4)
    a = gc.input("a", (3, 4), left)
    others = [gc.input(f"b_{d}", (3, 4), d) for d in DTYPES]
    feed = {"a": values(left, (3, 4), rng, special=left in FLOATS)}
    for b in others:
        value = values(b.dtype, (3, 4), rng)
        if left not in FLOATS or b.dtype in FLOATS:
            value[0] = feed["a"][0]  # equal elements
        feed[b.name] = value
    cond = gc.input("cond", (3, 4), "bool")
    feed["cond"] = values("bool", (3, 4), rng)
    outputs = []
    for b in others:
        outputs += [a < b, a <= b, a > b, a >= b, a == b, a != b, gc.where(cond, a, b)]
    check_compiled([a, cond, *others], outputs, feed)


def test_logical_ops():
    rng = np.random.default_rng(5)
    a, b = gc.input("a", (3, 4), "bool"), gc.input("b", (3, 4), "bool")
    feed = {"a": values("bool", (3, 4), rng), "b": values("bool", (3, 4), rng)}
    outputs = [a & b, a | b, ~a, (a & ~b) | (b == a), gc.where(a, b, ~b)]
    check_compiled([a, b], outputs, feed)


@pytest.mark.parametrize("source", DTYPES)
def test_cast_between_all_dtype_pairs(source):
    rng = np.random.default_rng(6)
    x = gc.input("x", (3, 5), source)
    value = values(source, (3, 5), rng)
    if source in FLOATS:
        value.reshape(-1)[:4] = [0.0, -0.0, 2.5, -2.5]  # truncation toward zero
    check_compiled([x], [x.astype(d) for d in DTYPES], {"x": value})


def test_cast_of_nan_and_inf_to_bool_and_between_floats():
    x = gc.input("x", (5,), "float64")
    feed = {"x": np.array([np.nan, np.inf, -np.inf, 1e300, 0.0])}
    check_compiled([x], [x.astype("bool"), x.astype("float32")], feed)


# ---- NaN and Inf propagate as in NumPy --------------------------------------------------------


@pytest.mark.parametrize("dtype", FLOATS)
def test_nan_and_inf_propagate_as_in_numpy(dtype):
    x = gc.input("x", (2, 3), dtype)
    feed = {"x": np.array([[np.nan, 1.0, -2.0], [np.inf, -np.inf, 0.0]], dtype)}
    zero, inf = gc.const(np.zeros((2, 3), dtype)), gc.const(np.full((2, 3), np.inf, dtype))
    outputs = [
        x.max(axis=1),  # NaN wins over everything in its row
        x.max(axis=0),
        gc.maximum(x, 0.5),
        gc.minimum(x, 0.5),
        gc.exp(x),  # exp(inf) = inf, exp(-inf) = 0
        gc.log(x),  # log(0) = -inf, log(-2) = nan
        zero * inf,  # 0 * inf = nan
        x.sum(axis=1),  # inf + -inf = nan
        x.sum(axis=0),
        gc.softmax(x),
        gc.sqrt(x),
    ]
    step = check_compiled([x], outputs, feed)
    got = step(**feed)
    assert np.isnan(got[0][0]) and np.isnan(got[7][1]) and np.isnan(got[6]).all()
    assert got[4][1, 0] == np.inf and got[4][1, 1] == 0 and got[5][1, 2] == -np.inf


# ---- layout ops -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_layout_ops(dtype):
    x = gc.input("x", (2, 3, 4), dtype)
    row = gc.input("row", (4,), dtype)
    fill = False if dtype == "bool" else 0
    pad = apply("pad", x.node, widths=((1, 0, 1), (0, 2, 0), (1, 1, 2)), value=fill)
    outputs = [
        Tensor(apply("broadcast_to", x.node, shape=(2, 2, 3, 4))),
        Tensor(apply("broadcast_to", row.node, shape=(3, 4))),
        Tensor(apply("broadcast_to", x[:, :1].node, shape=(2, 3, 4))),
        x.reshape(4, 6),
        x.reshape(24),
        x.transpose(2, 0, 1),
        x.T,
        x[:, ::2, 1::2],
        x[1, 0:3:2, ::3],
        x[..., 1:],
        Tensor(pad),
        Tensor(apply("pad", x.node, widths=((0, 0, 0), (1, 1, 0), (0, 0, 0)), value=fill)),
        gc.concat([x, x[:, :1]], axis=1),
        gc.concat([x, x, x[..., :2]], axis=2),
        x.T.reshape(12, 2)[::5],  # layout ops chained
    ]
    rng = np.random.default_rng(7)
    check_compiled(
        [x, row], outputs, {"x": values(dtype, (2, 3, 4), rng), "row": values(dtype, (4,), rng)}
    )


def test_layout_ops_feeding_arithmetic():
    """Index maps composed with elementwise work in the same loop."""
    x = gc.input("x", (3, 4), "float64")
    b = gc.input("b", (4,), "float64")
    padded = Tensor(apply("pad", x.node, widths=((1, 1, 1), (0, 0, 0)), value=1.5))
    outputs = [
        x + b,
        x.T * b.reshape(4, 1),
        gc.concat([x, -x], axis=0)[::2] + 1.0,
        gc.exp(padded[1:-1]),
        (x[:, ::2] * x[:, 1::2]).sum(axis=1),
    ]
    rng = np.random.default_rng(8)
    check_compiled(
        [x, b], outputs, {"x": values("float64", (3, 4), rng), "b": values("float64", (4,), rng)}
    )


# ---- reductions -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", NUMERIC)
def test_sum_and_max_over_every_axis_subset(dtype):
    x = gc.input("x", (2, 3, 4), dtype)
    outputs = []
    for r in range(4):
        for axes in itertools.combinations(range(3), r):
            for keepdims in (False, True):
                if axes or keepdims:
                    outputs += [
                        x.sum(axis=axes, keepdims=keepdims),
                        x.max(axis=axes, keepdims=keepdims),
                    ]
    outputs += [x.argmax(axis=a, keepdims=k) for a in range(3) for k in (False, True)]
    if dtype in FLOATS:
        outputs += [x.mean(), x.mean(axis=(0, 2), keepdims=True)]
    check_compiled([x], outputs, {"x": values(dtype, (2, 3, 4), np.random.default_rng(9))})


@pytest.mark.parametrize("dtype", NUMERIC)
@pytest.mark.parametrize(
    ("shape", "axes"),
    [((300, 256), (0,)), ((3, 100, 40), (1,)), ((5, 6, 7, 16), (1, 2)), ((9, 1100), (0,))],
)
def test_reductions_over_leading_axes_add_whole_rows_in_order(dtype, shape, axes):
    """A sum or max followed by kept axes runs row by row (forms.by_rows), in blocks of
    ROW_BLOCK kept elements (1100 = 367 + 367 + 366): every output is its inputs summed in
    order, bit for bit the rows added one after another (NumPy's own order over several
    axes depends on its SIMD path, so the reference adds the rows itself); the input
    expression (x * 2, exact) and the epilogue (+ 1) are fused around it."""
    x = gc.input("x", shape, dtype)
    x2 = x * gc.const(2, dtype)
    outputs = [x2.sum(axis=axes), x2.max(axis=axes, keepdims=True) + gc.const(1, dtype)]
    value = values(dtype, shape, np.random.default_rng(12))
    step = gc.compile(gc.Program([x], outputs))
    total, top = step(value)
    first, last = min(axes), max(axes)
    rows = np.moveaxis(value * 2, range(first, last + 1), range(last - first + 1))
    rows = rows.reshape(-1, *rows.shape[last - first + 1 :])
    in_order = functools.reduce(np.add, rows)  # elementwise adds: exact on any CPU
    np.testing.assert_array_equal(total, in_order)
    np.testing.assert_array_equal(top, (value * 2).max(axis=axes, keepdims=True) + 1)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize(("shape", "axes"), [((8, 6, 28, 28), (0, 2, 3)), ((5, 3, 7, 9), (2, 3))])
def test_reductions_over_trailing_axes_run_one_contiguous_loop(dtype, shape, axes):
    """A sum over the last axes with a kept axis before them (a convolution's bias
    gradient: over samples and both spatial axes) reads each output's trailing axes as one
    contiguous loop, which vectorizes at the target's width; its values match the
    interpreter (sums in another order: within rounding)."""
    from targets import assert_vectorized_at_target_width

    x = gc.input("x", shape, dtype)
    step = gc.compile(gc.Program([x], [(x * 2).sum(axis=axes)]))
    value = np.random.default_rng(3).standard_normal(shape).astype(dtype)
    (got,) = step(value)
    expected = (value.astype(np.float64) * 2).sum(axis=axes)
    scale = (np.abs(value.astype(np.float64)) * 2).sum(axis=axes)
    eps = np.finfo(dtype).eps
    assert np.all(np.abs(got - expected) <= 4 * eps * scale)
    assert_vectorized_at_target_width(step.dump("asm"))


def test_softmax_computes_each_exp_once():
    """A row-wise kernel keeps the exp its sum pass computed in a row of scratch, and the
    output pass reads it there (e / sum(e)) instead of evaluating exp again: the kernel's
    IR holds one exp expansion, as many FMAs as exp alone; values match NumPy."""
    import re

    def fmas(outputs, x):
        llvm = gc.compile(gc.Program([x], outputs)).dump("llvm")
        return len(re.findall(r"call \w+ @\"?llvm\.fma", llvm))

    x = gc.input("x", (32, 64, 64), "float32")
    assert fmas([gc.softmax(x, axis=-1)], x) == fmas([gc.exp(x)], x) > 0
    step = gc.compile(gc.Program([x], [gc.softmax(x, axis=-1)]))
    xv = np.random.default_rng(4).standard_normal(x.shape).astype(np.float32)
    e = np.exp(xv.astype(np.float64) - xv.max(-1, keepdims=True))
    (got,) = step(xv)
    np.testing.assert_allclose(got, e / e.sum(-1, keepdims=True), rtol=1e-6, atol=1e-9)


def test_which_reductions_run_by_rows():
    x = gc.input("x", (4, 5, 6, 8))

    def pattern(y):
        return forms.by_rows(y.node)

    assert pattern(x.sum(axis=0)) == ([], [4], [5, 6, 8])
    assert pattern(x.sum(axis=(1, 2))) == ([4], [5, 6], [8])
    assert pattern(x.max(axis=1)) == ([4], [5], [6, 8])
    assert pattern(x.sum(axis=3)) is None  # the last axis: row-wise
    assert pattern(x.sum(axis=(0, 2))) is None  # not consecutive: one output at a time
    assert pattern(x.argmax(axis=0)) is None
    assert pattern(gc.input("y", (100, 7)).sum(axis=0)) is None  # too narrow to vectorize


@pytest.mark.parametrize("dtype", NUMERIC)
def test_argmax_ties_take_the_first(dtype):
    x = gc.input("x", (3, 3), dtype)
    feed = {"x": np.array([[1, 3, 3], [2, 2, 2], [-1, 0, -1]], dtype)}
    step = check_compiled([x], [x.argmax(axis=1), x.argmax(axis=0), x.max(axis=1)], feed)
    np.testing.assert_array_equal(step(**feed)[0], [1, 0, 1])


@pytest.mark.parametrize("dtype", FLOATS)
def test_argmax_nan_and_infinities(dtype):
    x = gc.input("x", (3, 3), dtype)
    nan, inf = np.nan, np.inf
    feed = {"x": np.array([[1, nan, nan], [-inf, -inf, -inf], [inf, nan, inf]], dtype)}
    step = check_compiled([x], [x.argmax(axis=1), x.argmax(axis=0), x.max(axis=1)], feed)
    np.testing.assert_array_equal(step(**feed)[0], [1, 0, 1])


def test_reductions_of_bool_and_of_a_scalar_result():
    x = gc.input("x", (3, 4), "bool")
    y = gc.input("y", (), "float64")
    rng = np.random.default_rng(10)
    feed = {"x": values("bool", (3, 4), rng), "y": np.array(2.5)}
    check_compiled([x, y], [x.sum(axis=1), x.max(), x.sum() * y, y + 1.0], feed)


# ---- matmul -----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", NUMERIC)
def test_matmul_2d_batched_and_transposed_operands(dtype):
    rng = np.random.default_rng(11)
    shapes = {"a": (3, 4), "b": (4, 2), "c": (2, 3, 4), "d": (2, 4, 5), "v": (4,)}
    t = {k: gc.input(k, s, dtype) for k, s in shapes.items()}
    a, b, c, d, v = t.values()
    outputs = [
        a @ b,
        b.T @ a.T,
        a @ a.T,
        c @ d,
        d.transpose(0, 2, 1)[:, :3] @ c.transpose(0, 2, 1),
        a[:, ::2] @ b[::2],
        a @ v,
        v @ b,
        c @ b,  # broadcast batch
        gc.relu(a @ b + b[0]),  # epilogue
    ]
    feed = {k: values(dtype, s, rng) for k, s in shapes.items()}
    check_compiled(list(t.values()), outputs, feed)


def test_matmul_of_computed_and_padded_operands():
    rng = np.random.default_rng(12)
    a, b = gc.input("a", (3, 4), "float64"), gc.input("b", (4, 3), "float64")
    padded = Tensor(apply("pad", b.node, widths=((1, 0, 0), (0, 0, 0)), value=0.0))
    outputs = [gc.tanh(a) @ b, gc.concat([a, a], axis=0) @ b, a @ padded[1:], (a @ b) @ (a @ b)]
    feed = {"a": values("float64", (3, 4), rng), "b": values("float64", (4, 3), rng)}
    check_compiled([a, b], outputs, feed)


def test_matmul_with_uniform_constant_operands():
    """simplify turns ones((3, 2)) into a broadcast scalar; matmul reads it through memory."""
    x = gc.input("x", (2, 3), "float64")
    outputs = [x @ gc.const(np.ones((3, 2))), gc.const(np.full((2, 2), 2.0)) @ x, x @ np.ones(3)]
    check_compiled([x], outputs, {"x": values("float64", (2, 3), np.random.default_rng(14))})


def test_zero_size_shapes():
    x, y = gc.input("x", (0, 3), "float64"), gc.input("y", (3, 0), "float64")
    ones = gc.const(np.ones((3, 2)))
    outputs = [
        x + 1.0,
        x.sum(axis=0),  # 0
        x.max(axis=0),  # -inf
        x.sum(),
        y.T,
        x @ ones,
        y @ x,  # (3, 3) of zeros
        gc.const(np.ones((2, 3))) @ y,
        y.argmax(axis=0),
    ]
    check_compiled([x, y], outputs, {"x": np.zeros((0, 3)), "y": np.zeros((3, 0))})


# ---- iota, one_hot, composites ------------------------------------------------------------------


@pytest.mark.parametrize("dtype", INTS)
def test_iota_and_one_hot(dtype):
    labels = gc.input("labels", (2, 3), dtype)
    outputs = [
        gc.one_hot(labels, 4),
        gc.one_hot(labels[0], 3, dtype="float64"),
        gc.one_hot(labels, 2, dtype="int32"),
        Tensor(apply("iota", shape=(2, 3), axis=0, dtype="float32")),
        Tensor(apply("iota", shape=(3, 2), axis=1, dtype="int64")) * 2,
    ]
    feed = {"labels": np.array([[0, 3, 1], [2, 5, -1]], dtype)}
    check_compiled([labels], outputs, feed)


@pytest.mark.parametrize("dtype", FLOATS)
def test_composites(dtype):
    x = gc.input("x", (3, 4), dtype)
    outputs = [
        gc.softmax(x),
        gc.softmax(x, axis=0),
        gc.log_softmax(x),
        gc.logsumexp(x),
        gc.logsumexp(x, axis=0, keepdims=True),
        gc.relu(x),
        x.mean(),
        x.mean(axis=1),
    ]
    check_compiled([x], outputs, {"x": values(dtype, (3, 4), np.random.default_rng(13)) * 10})


def test_composites_on_all_minus_inf_rows():
    x = gc.input("x", (2, 3), "float64")
    feed = {"x": np.array([[-np.inf] * 3, [0.0, 1.0, -np.inf]])}
    check_compiled([x], [gc.softmax(x), gc.log_softmax(x), gc.logsumexp(x, axis=1)], feed)


# ---- every primitive of the op table ---------------------------------------------------------

TABLE_CASES = [
    pytest.param(op, dtype, id=f"{op or 'composites'}-{dtype}")
    for op in [*sorted(OPS), None]
    for dtype in sorted({dtype for spec in specs_of(op) for dtype in spec.dtypes})
]


@pytest.mark.parametrize(("op", "dtype"), TABLE_CASES)
def test_op_table_compiled_equals_interpreted(op, dtype):
    """Every spec of tests/optable.py that exercises `op` (None: the composites), on all its
    shapes, as one program per op and dtype."""
    inputs, outputs, feed = [], [], {}
    for spec in specs_of(op):
        if dtype not in spec.dtypes:
            continue
        for j, shapes in enumerate(spec.shapes):
            xs, y, xvalues, _ = build(spec, shapes, dtype, prefix=f"{spec.name}{j}_x")
            inputs += xs
            outputs.append(y)
            feed.update((x.name, v) for x, v in zip(xs, xvalues, strict=True))
    check_compiled(inputs, outputs, feed)


# ---- random programs ----------------------------------------------------------------------------

RANDOM = settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


def interpreted(outputs, feed):
    """gc.evaluate with `feed` cut down to the inputs that `outputs` read."""
    if not outputs:
        return []
    read = {n.name for n in Graph([o.node for o in outputs]).nodes if n.op == "input"}
    return gc.evaluate(outputs, {k: v for k, v in feed.items() if k in read})


def check_program(program, feed):
    step = gc.compile(program)
    # a float64 result computed through a float32 intermediate is only float32-accurate
    dtypes = {n.dtype for n in program.graph.nodes}
    rtol = RTOL["float32"] if "float32" in dtypes else None
    want_outputs = interpreted(program.outputs, feed)
    want_updates = interpreted([v for _, v in program.updates], feed)
    before = [p.value.copy() for p, _ in program.updates]
    got = step(**feed)
    got = [got] if program.single_output else got
    for i, (g, w) in enumerate(zip(got, want_outputs)):
        assert_same(g, w, f"output {i}", rtol)
    for (p, _), w, old in zip(program.updates, want_updates, before):
        assert_same(p.value, w, f"update of {p.name}", rtol)
        p.value = old  # leave the drawn params as they were


@RANDOM
@given(programs(max_ops=8))
def test_random_programs_compiled_equal_interpreted(case):
    check_program(*case)


@RANDOM
@given(programs(max_ops=6, families=("binary", "layout", "reduce", "matmul", "unary")))
def test_random_gradients_compiled_equal_interpreted(case):
    program, feed = case
    loss = sum((o.astype("float64") ** 2).sum() for o in program.outputs)
    wrt = [x for x in program.inputs] + [
        gc.Tensor(n) for n in program.graph.params if n.dtype in FLOATS
    ]
    grads = gc.grad(loss, wrt)
    check_program(gc.Program(program.inputs, [loss, *grads]), feed)


def test_noinline_switch_keeps_kernels_out_of_line_with_equal_results(monkeypatch):
    """GRAPHC_NOINLINE=1 (for profiling) marks kernels noinline and changes no result."""
    x = gc.input("x", (4, 3))
    model = gc.nn.Sequential([gc.nn.Dense(5, "relu"), gc.nn.Dense(2)], seed=0)
    program = gc.Program([x], model(x))
    feed = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
    plain = gc.compile(program, cache=False)
    monkeypatch.setenv("GRAPHC_NOINLINE", "1")
    out_of_line = gc.compile(program, cache=False)
    assert "noinline" in out_of_line.llvm_ir and "noinline" not in plain.llvm_ir
    np.testing.assert_array_equal(out_of_line(feed), plain(feed))


def test_a_fused_chain_deeper_than_the_recursion_limit_compiles(monkeypatch):
    monkeypatch.setattr(fusion, "MAX_BODY_COST", 10**6)  # else fusion cuts it (test_fusion)
    x = gc.input("x", (8,), "float64")
    y = x
    for _ in range(1200):  # 2400 elementwise nodes in one kernel
        y = y * 1.0001 + 0.001
    step = gc.compile(inputs=[x], outputs=y, cache=False)
    assert len(step.kernels) == 1
    xv = np.linspace(-1, 1, 8)
    np.testing.assert_allclose(step(xv), gc.evaluate(y, {x: xv}), rtol=1e-12)


def test_large_kernels_stay_out_of_line_small_ones_are_inlined():
    """LLVM would inline every kernel into the step (each is called once): one function
    growing with the model, whose machine code takes superlinear time."""
    x = gc.input("x", (64,), "float32")
    y = x
    for _ in range(20):  # one kernel (440 units) of ~3000 instructions
        y = 0.5 * gc.sin(y) + y

    def kernels_out_of_line(step) -> list[bool]:
        return [
            "noinline" in line
            for line in step.llvm_ir.splitlines()
            if line.startswith('define internal void @"fused')
        ]

    large = gc.compile(inputs=[x], outputs=y, cache=False)
    small = gc.compile(inputs=[x], outputs=x * 2.0 + 1.0, cache=False)
    assert kernels_out_of_line(large) == [True] and kernels_out_of_line(small) == [False]
    xv = np.linspace(-2, 2, 64, dtype=np.float32)
    np.testing.assert_allclose(large(xv), gc.evaluate(y, {x: xv}), rtol=2e-6, atol=1e-6)


@pytest.mark.parametrize("n, hinted", [(1000, True), (63, False)])
def test_long_arithmetic_loops_are_interleaved_four_times(n, hinted):
    """A body of LONG_BODY instructions or more without math calls gets four vectors in
    flight (LLVM itself would run it one vector at a time); a short body gets no hint."""
    x = gc.input("x", (n,), "float32")
    y = x
    for _ in range(8):
        y = 0.5 * (y * 1.0001) + y
    chain = gc.compile(inputs=[x], outputs=y, cache=False)
    short = gc.compile(inputs=[x], outputs=x * 2.0 + 1.0, cache=False)
    hint = '!{ !"llvm.loop.interleave.count", i32 4 }'
    assert (hint in chain.llvm_ir) == hinted
    assert "llvm.loop" not in short.llvm_ir
    xv = np.linspace(-1, 1, n, dtype=np.float32)
    np.testing.assert_allclose(chain(xv), gc.evaluate(y, {x: xv}), rtol=1e-6)


@pytest.mark.parametrize("n, hinted", [(1000, True), (63, False)])
def test_long_loops_over_math_calls_are_interleaved(n, hinted):
    """The W3 loop carries `llvm.loop.interleave.count 2`; a loop too short for two vectors
    per iteration and a loop without transcendentals carry no hint; results are unchanged."""
    a, b = gc.input("a", (n,), "float64"), gc.input("b", (n,), "float64")
    chain = gc.compile(inputs=[a, b], outputs=gc.tanh(a * b) * gc.sigmoid(b) - 0.5 * a, cache=False)
    plain = gc.compile(inputs=[a, b], outputs=a * b + 0.5, cache=False)
    hint = '!{ !"llvm.loop.interleave.count", i32 2 }'
    assert (hint in chain.llvm_ir) == hinted
    assert "llvm.loop" not in plain.llvm_ir
    if hinted:
        loop_ids = [line for line in chain.llvm_ir.splitlines() if line.startswith("!")]
        assert any(line.endswith("distinct !{!1, !0}") for line in loop_ids), loop_ids
    av, bv = np.linspace(-3, 3, n), np.linspace(4, -4, n)
    expected = gc.evaluate(gc.tanh(a * b) * gc.sigmoid(b) - 0.5 * a, {a: av, b: bv})
    np.testing.assert_allclose(chain(av, bv), expected, rtol=1e-12, atol=1e-15)
