"""The symbolic Tensor follows NumPy: promotion (NEP 50), broadcasting as explicit nodes,
basic indexing, methods; params, feeds, Programs and the errors a user can cause; the
frontend's modules import each other in one direction.
"""

from __future__ import annotations

import inspect
import os

import numpy as np
import pytest
from test_layering import PACKAGE, imported_modules

import graphc as gc
from graphc.ir.graph import topological_order
from graphc.ir.ops import OPS, Kind

HERE = os.path.relpath(__file__)


def line() -> int:
    """The caller's line number, to check source locations against."""
    return inspect.currentframe().f_back.f_lineno


def sample(shape, dtype, seed=0):
    """Seeded values of `dtype`, nonzero (so they can divide)."""
    rng = np.random.default_rng(seed)
    if dtype == "bool":
        return rng.random(shape) < 0.5
    value = rng.integers(1, 4, shape) * rng.choice([-1, 1], shape)
    return value.astype(dtype) if dtype.startswith("int") else (value + 0.25).astype(dtype)


# ---- promotion (NEP 50) ---------------------------------------------------------------------

DTYPES = ["float32", "float64", "int32", "int64", "bool"]
SCALARS = [3, 1.5, True]
OPERATORS = {
    "add": lambda a, b: a + b,
    "mul": lambda a, b: a * b,
    "sub": lambda a, b: a - b,
    "div": lambda a, b: a / b,
}


def _numpy_or_none(fn, *args):
    try:
        with np.errstate(all="ignore"):
            return np.asarray(fn(*args))
    except (TypeError, OverflowError):
        return None


@pytest.mark.parametrize("op", sorted(OPERATORS))
@pytest.mark.parametrize("scalar", SCALARS, ids=repr)
@pytest.mark.parametrize("dtype", DTYPES)
def test_python_scalars_are_weak(dtype, scalar, op):
    fn = OPERATORS[op]
    value = sample((2,), dtype)
    for args, feed_order in [((None, scalar), 0), ((scalar, None), 1)]:  # x op s and s op x
        want = _numpy_or_none(fn, *[value if a is None else a for a in args])
        if want is None or (dtype == "bool" and op != "div" and isinstance(scalar, bool)):
            continue  # NumPy refuses, or bool arithmetic (NumPy's logical or/and)
        x = gc.input("x", (2,), dtype)
        y = fn(*[x if a is None else a for a in args])
        assert y.dtype == want.dtype.name, f"{dtype} {op} {scalar!r} (x at {feed_order})"
        np.testing.assert_allclose(gc.evaluate(y, {x: value}), want, rtol=1e-6)


@pytest.mark.parametrize("op", sorted(OPERATORS))
@pytest.mark.parametrize("b_dtype", DTYPES)
@pytest.mark.parametrize("a_dtype", DTYPES)
def test_tensor_tensor_promotion_matches_numpy(a_dtype, b_dtype, op):
    fn = OPERATORS[op]
    va, vb = sample((2, 2), a_dtype, 1), sample((2,), b_dtype, 2)
    want = _numpy_or_none(fn, va, vb)
    a, b = gc.input("a", (2, 2), a_dtype), gc.input("b", (2,), b_dtype)
    if want is None or (a_dtype == b_dtype == "bool" and op != "div"):
        # NumPy refuses, or does logic (bool + bool is `or`): graphc refuses clearly
        with pytest.raises(gc.DTypeError, match=op):
            fn(a, b)
        return
    y = fn(a, b)
    assert y.dtype == want.dtype.name
    np.testing.assert_allclose(gc.evaluate(y, {a: va, b: vb}), want, rtol=1e-6)


def test_promotion_examples():
    f32, f64 = gc.input("f32", (2,), "float32"), gc.input("f64", (2,), "float64")
    i32, i64 = gc.input("i32", (2,), "int32"), gc.input("i64", (2,), "int64")
    assert (f32 + 1).dtype == "float32" and (f32 * 2.5).dtype == "float32"
    assert (i32 + 1).dtype == "int32" and (i64 + 1).dtype == "int64"
    assert (i32 + 1.5).dtype == "float64"
    assert (f32 + f64).dtype == "float64"
    assert (i32 / 2).dtype == "float64" and (i64 / i64).dtype == "float64"
    assert (i32 + i64).dtype == "int64" and (i32 + f32).dtype == "float64"
    assert (f32 + np.float64(1)).dtype == "float64"  # NumPy scalars are strong
    assert (i32**2).dtype == "int32" and (f32**2).dtype == "float32"
    assert gc.exp(i32).dtype == "float64" and gc.sqrt(f32).dtype == "float32"
    assert (
        gc.const(1.5).dtype == "float64"
        and gc.const(np.eye(3, dtype=np.float32)).dtype == "float32"
    )


# ---- broadcasting ---------------------------------------------------------------------------


def test_broadcasting_becomes_explicit_broadcast_to_nodes():
    x, b = gc.input("x", (2, 3)), gc.input("b", (3,))
    y = x * b + 1.0
    broadcasts = [n for n in topological_order([y.node]) if n.op == "broadcast_to"]
    assert any(n.inputs[0] is b.node and n.attrs["shape"] == (2, 3) for n in broadcasts)
    for node in topological_order([y.node]):
        if OPS[node.op].kind == Kind.ELEMWISE and node.inputs:
            assert len({i.shape for i in node.inputs}) == 1, f"{node.op} mixes shapes"
    xv, bv = sample((2, 3), "float32"), sample((3,), "float32")
    np.testing.assert_allclose(gc.evaluate(y, {x: xv, b: bv}), xv * bv + 1, rtol=1e-6)


def test_equal_shapes_add_no_broadcast():
    x, z = gc.input("x", (2, 3)), gc.input("z", (2, 3))
    assert not [n for n in topological_order([(x + z).node]) if n.op == "broadcast_to"]


def test_both_sides_broadcast():
    a, b = gc.input("a", (2, 1), "float64"), gc.input("b", (1, 3), "float64")
    y = a - b
    assert y.shape == (2, 3)
    av, bv = sample((2, 1), "float64"), sample((1, 3), "float64", 1)
    np.testing.assert_array_equal(gc.evaluate(y, {a: av, b: bv}), av - bv)


# ---- indexing -------------------------------------------------------------------------------

INDICES = [
    1,
    -1,
    slice(1, None),
    (slice(None), 1),
    (slice(1, 3), slice(None, None, 2)),
    None,
    (Ellipsis, None),
    (0, Ellipsis, 1),
    (slice(None, None, 2), None, -2),
    (None, Ellipsis, slice(1, 2), None),
    slice(0, 0),
    slice(5, None),
    (1, 2, 0),
    Ellipsis,
]


@pytest.mark.parametrize("index", INDICES, ids=repr)
def test_indexing_matches_numpy(index):
    value = sample((3, 4, 2), "float64")
    x = gc.input("x", (3, 4, 2), "float64")
    y = x[index]
    want = value[index]
    assert y.shape == want.shape
    np.testing.assert_array_equal(gc.evaluate(y, {x: value}), want)


def test_negative_step_raises():
    x = gc.input("x", (3, 4))
    with pytest.raises(gc.GraphcError, match="negative"):
        x[::-1]
    with pytest.raises(gc.GraphcError):
        x[:, 3:0:-1]


@pytest.mark.parametrize("index", [3, (0, -5), (0, 0, 0), (Ellipsis, Ellipsis)], ids=repr)
def test_bad_indices_raise(index):
    x = gc.input("x", (3, 4))
    with pytest.raises(gc.ShapeError):
        x[index]


# ---- methods --------------------------------------------------------------------------------

METHODS = {
    "sum": (lambda t: t.sum(), lambda a: a.sum()),
    "sum_axis": (lambda t: t.sum(axis=-1), lambda a: a.sum(axis=-1)),
    "sum_keepdims": (
        lambda t: t.sum(axis=(0, 1), keepdims=True),
        lambda a: a.sum((0, 1), keepdims=True),
    ),
    "mean": (lambda t: t.mean(), lambda a: a.mean()),
    "mean_axis": (lambda t: t.mean(axis=1), lambda a: a.mean(axis=1)),
    "max": (lambda t: t.max(), lambda a: a.max()),
    "max_axis": (lambda t: t.max(axis=0, keepdims=True), lambda a: a.max(axis=0, keepdims=True)),
    "argmax": (lambda t: t.argmax(axis=1), lambda a: a.argmax(axis=1)),
    "reshape_flat": (lambda t: t.reshape(-1), lambda a: a.reshape(-1)),
    "reshape_tuple": (lambda t: t.reshape((4, -1)), lambda a: a.reshape((4, -1))),
    "reshape_args": (lambda t: t.reshape(2, 3, 4), lambda a: a.reshape(2, 3, 4)),
    "transpose": (lambda t: t.transpose(), lambda a: a.transpose()),
    "transpose_axes": (lambda t: t.transpose(1, 0, 2), lambda a: a.transpose(1, 0, 2)),
    "transpose_negative": (lambda t: t.transpose((-1, 0, 1)), lambda a: a.transpose((-1, 0, 1))),
    "T": (lambda t: t.T, lambda a: a.T),
    "astype_f32": (lambda t: t.astype("float32"), lambda a: a.astype("float32")),
    "astype_i32": (lambda t: t.astype(np.int32), lambda a: a.astype(np.int32)),
    "astype_bool": (lambda t: t.astype(bool), lambda a: a.astype(bool)),
    "matmul_operator": (lambda t: t @ t.transpose(0, 2, 1), lambda a: a @ a.transpose(0, 2, 1)),
    "rpow": (lambda t: 2.0**t, lambda a: 2.0**a),
    "abs_neg": (lambda t: abs(-t), lambda a: abs(-a)),
}


@pytest.mark.parametrize("dtype", ["float64", "float32", "int64"])
@pytest.mark.parametrize("name", sorted(METHODS))
def test_methods_match_numpy(name, dtype):
    method, ref = METHODS[name]
    value = sample((3, 2, 4), dtype)
    x = gc.input("x", (3, 2, 4), dtype)
    y = method(x)
    want = np.asarray(ref(value))
    assert y.shape == want.shape
    assert y.dtype == want.dtype.name
    np.testing.assert_allclose(gc.evaluate(y, {x: value}), want, rtol=1e-6)


def test_tensor_has_no_truth_value():
    x = gc.input("x", (2,))
    with pytest.raises(gc.GraphcError, match="truth"):
        bool(x > 0)
    assert len(x) == 2 and x.ndim == 1 and x.size == 2 and x.name == "x"


# ---- params ---------------------------------------------------------------------------------


def test_param_value_is_live_storage():
    initial = np.zeros((2, 2))
    p = gc.param("p", initial)
    storage = p.value
    assert storage is not initial, "the initial array is copied"
    x = gc.input("x", (2, 2), "float64")
    y = p * x
    storage[0, 0] = 3.0  # in-place edits are seen by the next evaluation
    np.testing.assert_array_equal(gc.evaluate(y, {x: np.ones((2, 2))}), [[3, 0], [0, 0]])
    p.value = np.full((2, 2), 2.0)  # assignment copies into the same array
    assert p.value is storage
    np.testing.assert_array_equal(storage, np.full((2, 2), 2.0))
    np.testing.assert_array_equal(gc.evaluate(y, {x: np.ones((2, 2))}), np.full((2, 2), 2.0))
    p.value = np.ones((2, 2), np.float32)  # same_kind conversion is fine
    assert p.value is storage and p.value.dtype == np.float64
    initial[...] = 7  # the caller's array is not the storage
    assert p.value[0, 0] == 1.0


def test_param_assignment_refuses_wrong_shape_and_dtype():
    p = gc.param("p", np.zeros((2, 3), np.float32))
    with pytest.raises(gc.ShapeError, match="p"):
        p.value = np.zeros((3, 2), np.float32)
    n = gc.param("n", np.zeros(3, np.int32))
    with pytest.raises(gc.DTypeError):
        n.value = np.array([0.5, 1.5, 2.5])
    np.testing.assert_array_equal(n.value, np.zeros(3))
    with pytest.raises(gc.GraphcError):
        (p + 1).value = np.zeros((2, 3), np.float32)


def test_const_and_param_dtypes_follow_the_array():
    assert gc.param("w", np.zeros((2, 2), np.float32)).dtype == "float32"
    assert gc.param("w", [1.0, 2.0]).dtype == "float64"
    assert gc.const(np.arange(3, dtype=np.int32)).dtype == "int32"
    assert gc.const([1, 2]).dtype == "int64"
    c = gc.const(np.eye(3))
    np.testing.assert_array_equal(gc.evaluate(c * 2), 2 * np.eye(3))


# ---- evaluate and feeds ---------------------------------------------------------------------


def test_feed_by_tensor_or_by_name():
    x, z = gc.input("x", (2,), "float64"), gc.input("z", (2,), "float64")
    y = x * z
    by_tensor = gc.evaluate(y, {x: [1.0, 2.0], z: [3.0, 4.0]})
    by_name = gc.evaluate(y, {"x": [1.0, 2.0], "z": [3.0, 4.0]})
    mixed = gc.evaluate([y, x], {"x": [1.0, 2.0], z: [3.0, 4.0]})
    np.testing.assert_array_equal(by_tensor, [3.0, 8.0])
    np.testing.assert_array_equal(by_name, by_tensor)
    assert isinstance(mixed, list) and len(mixed) == 2
    np.testing.assert_array_equal(mixed[0], by_tensor)


def test_feed_conversion_follows_same_kind():
    x = gc.input("x", (2,), "float32")
    assert gc.evaluate(x * 1, {x: np.array([1, 2])}).dtype == np.float32  # int -> float: fine
    assert gc.evaluate(x * 1, {x: np.array([1.0, 2.0])}).dtype == np.float32  # f64 -> f32
    value = np.arange(4.0)[::2]  # non-contiguous
    np.testing.assert_array_equal(gc.evaluate(x + 0, {x: value}), [0.0, 2.0])


def test_feed_errors():
    x = gc.input("x", (2,), "float64")
    n = gc.input("n", (2,), "int32")
    y = x + n
    with pytest.raises(gc.InputError, match="nope"):
        gc.evaluate(y, {"nope": [1.0, 2.0], n: [1, 2]})
    with pytest.raises(gc.InputError, match="x"):
        gc.evaluate(y, {x: [1.0, 2.0, 3.0], n: [1, 2]})
    with pytest.raises(gc.DTypeError, match="n"):
        gc.evaluate(y, {x: [1.0, 2.0], n: [1.5, 2.5]})
    with pytest.raises(gc.InputError, match="n"):
        gc.evaluate(y, {x: [1.0, 2.0]})


def test_evaluate_does_not_modify_the_callers_arrays():
    x = gc.input("x", (2, 2), "float64")
    value = np.ones((2, 2))
    out = gc.evaluate(x, {x: value})
    out[...] = 5
    np.testing.assert_array_equal(value, np.ones((2, 2)))


# ---- Program --------------------------------------------------------------------------------


def test_program_refuses_unlisted_inputs():
    x, hidden = gc.input("x", (2,)), gc.input("hidden_input", (2,))
    with pytest.raises(gc.InputError, match="hidden_input"):
        gc.Program(inputs=[x], outputs=x * hidden)
    program = gc.Program(inputs=[x, hidden], outputs=x * hidden)
    assert [t.name for t in program.inputs] == ["x", "hidden_input"]


def test_program_checks_inputs_and_updates():
    x = gc.input("x", (2,))
    w = gc.param("w", np.zeros(2, np.float32))
    with pytest.raises(gc.InputError):
        gc.Program(inputs=[x, x], outputs=x)
    with pytest.raises(gc.InputError):
        gc.Program(inputs=[x * 2], outputs=x)
    with pytest.raises(gc.InputError):
        gc.Program(inputs=[x], outputs=x, updates={x: x})
    with pytest.raises(gc.ShapeError, match="w"):
        gc.Program(inputs=[x], outputs=x, updates={w: x.sum()})
    program = gc.Program(inputs=[x], outputs=[x.sum()], updates={w: w - 0.1 * x}, name="step")
    assert program.name == "step" and len(program.outputs) == 1


# ---- error messages: the op, the shapes, the user's line ------------------------------------


def test_shape_error_names_op_shapes_and_line():
    x, y = gc.input("x", (3, 4)), gc.input("y", (5,))
    with pytest.raises(gc.ShapeError) as error:
        here = line() + 1
        x + y
    message = str(error.value)
    assert "add" in message
    assert "[3,4]" in message and "[5]" in message
    assert f"{HERE}:{here}" in message


ERRORS = {
    "matmul": (lambda x: x @ gc.input("w", (5, 2)), ("matmul", "[3,4]", "[5,2]")),
    "reshape": (lambda x: x.reshape(7), ("reshape", "[3,4]", "(7,)")),
    "concat": (lambda x: gc.concat([x, gc.input("z", (3, 5))]), ("concat", "[3,4]", "[3,5]")),
    "where": (lambda x: gc.where(x > 0, x, gc.input("z", (2,))), ("where", "[3,4]", "[2]")),
    "index": (lambda x: x[0, 7], ("7", "[3,4]")),
    "axis": (lambda x: x.sum(axis=2), ("sum: axis 2", "rank 2")),
    "max axis": (lambda x: x.max(axis=-3), ("max: axis -3",)),
    "mean axis": (lambda x: x.mean(axis=(0, 5)), ("mean: axis 5",)),
    "argmax axis": (lambda x: x.argmax(axis=2), ("argmax: axis 2",)),
    "logsumexp axis": (lambda x: gc.logsumexp(x, axis=4), ("logsumexp: axis 4",)),
    "softmax axis": (lambda x: gc.softmax(x, axis=-3), ("softmax: axis -3",)),
    "log_softmax axis": (lambda x: gc.log_softmax(x, axis=2), ("log_softmax: axis 2",)),
    "concat axis": (lambda x: gc.concat([x, x], axis=2), ("concat: axis 2",)),
}


@pytest.mark.parametrize("name", sorted(ERRORS))
def test_errors_point_at_the_users_line(name):
    make, fragments = ERRORS[name]
    x = gc.input("x", (3, 4))
    with pytest.raises(gc.ShapeError) as error:
        make(x)
    message = str(error.value)
    for fragment in fragments:
        assert fragment in message
    assert f"{HERE}:" in message, f"no user location in {message!r}"


def test_nodes_record_the_users_source_line():
    here = line() + 1
    x = gc.input("x", (2,))
    y = gc.exp(x) * 2
    assert x.node.loc == f"{HERE}:{here}"
    assert y.node.loc == f"{HERE}:{here + 1}"
    assert all(
        n.loc == f"{HERE}:{here + 1}" for n in topological_order([y.node]) if n is not x.node
    )


def test_an_update_of_the_wrong_shape_names_both_lines():
    here = line() + 1
    w = gc.param("w", np.zeros((4, 2), np.float32))
    x = gc.input("x", (3, 4))
    with pytest.raises(gc.ShapeError) as error:
        gc.Program([x], x.sum(), {w: x @ w})
    message = str(error.value)
    assert "update of w" in message and "f32[3,2]" in message and "f32[4,2]" in message
    assert f"{HERE}:{here + 3}" in message and f"{HERE}:{here}" in message


@pytest.mark.parametrize(
    "value, dtype, error",
    [
        ([[1.0, 2.0], [3.0]], None, gc.InputError),  # ragged
        (["a", "b"], "float32", gc.InputError),
        (np.zeros(2, np.float16), None, gc.DTypeError),
    ],
)
def test_a_bad_param_value_names_the_param_and_the_line(value, dtype, error):
    here = line() + 2
    with pytest.raises(error) as raised:
        gc.param("w", value, dtype)
    assert "param 'w'" in str(raised.value) and f"{HERE}:{here}" in str(raised.value)


# ---- the frontend's layers ------------------------------------------------------------------

# each frontend module imports only those before it (composites.py says why)
FRONTEND_ORDER = (
    "init", "tensor", "functions", "composites", "scan", "random", "convolution", "distributed",
    "optim", "layers", "nn"
)  # fmt: skip


def test_frontend_modules_import_in_one_direction():
    modules = sorted(p.stem for p in (PACKAGE / "frontend").glob("*.py") if p.stem != "__init__")
    assert modules == sorted(FRONTEND_ORDER), "place a new frontend module in FRONTEND_ORDER"
    for i, name in enumerate(FRONTEND_ORDER):
        later = {f"graphc.frontend.{m}" for m in FRONTEND_ORDER[i + 1 :]}
        imported = imported_modules(PACKAGE / "frontend" / f"{name}.py")
        assert not imported & later, f"frontend/{name}.py imports {sorted(imported & later)}"
