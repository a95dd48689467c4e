"""What a new user runs into: shapes that are not shapes or can never be allocated, misused
`compile` arguments, NumPy ufuncs on Tensors, checkpoints that are not checkpoints. Each
gets a GraphcError saying what to do instead (issue 19)."""

from __future__ import annotations

import shutil
import struct

import numpy as np
import pytest

import graphc as gc
from graphc import spec
from graphc.cli import main

# ---- shapes ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", ["32", (3, 2.5), (2, "3"), (-1, 2), (True, 2), None, 2.0])
def test_input_shapes_must_be_tuples_of_non_negative_ints(shape):
    with pytest.raises(gc.ShapeError, match="input 'a'.*shape"):
        gc.input("a", shape)


def test_an_int_alone_is_a_1d_shape_as_in_numpy():
    assert gc.input("a", 32).shape == (32,) == np.zeros(32).shape
    assert gc.input("b", [2, np.int64(3)]).shape == (2, 3)


@pytest.mark.parametrize("shape", [(2**64,), (2**40, 2**10), (2**62, 2**62)])
def test_shapes_that_can_never_be_allocated_fail_when_built(shape):
    with pytest.raises(gc.ShapeError, match="more than any process can address"):
        gc.input("a", shape)


def test_an_op_whose_result_is_too_large_fails_when_built():
    x = gc.input("x", (2**23, 1))
    with pytest.raises(gc.ShapeError, match=r"broadcast_to: f32\[8388608,8388608\] needs"):
        x + x.reshape(1, 2**23)


def test_reshape_refuses_non_integer_dimensions():
    with pytest.raises(gc.ShapeError, match="reshape of f32.6.*2.0"):
        gc.input("x", (6,)).reshape(2.0, 3)


def test_dump_of_a_gir_file_with_a_huge_shape_is_one_line_and_exit_2(tmp_path, capsys):
    path = tmp_path / "huge.gir"
    path.write_text(
        "graph g(%x: f32[18446744073709551616]) {\n  %1: f32[18446744073709551616] = neg %x\n"
        "  return %1\n}\n"
    )
    assert main(["dump", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and len(err.strip().splitlines()) == 1
    assert "f32[18446744073709551616] needs" in err


# ---- compile arguments ----------------------------------------------------------------------


def test_compile_takes_one_input_tensor_like_one_output():
    x = gc.input("x", (2,), "float64")
    step = gc.compile(inputs=x, outputs=x * 2)
    np.testing.assert_array_equal(step(np.array([1.0, 2.0])), [2.0, 4.0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"outputs": None}, "Program needs outputs: .*outputs=\\[\\] for a step"),
        ({"inputs": "x"}, "inputs must be a list of gc.input tensors, got 'x': write inputs="),
        ({"inputs": 3}, "inputs must be a list of gc.input tensors, got 3"),
    ],
)
def test_compile_arguments_that_are_not_what_it_takes(kwargs, message):
    x = gc.input("x", (2,))
    with pytest.raises(gc.InputError, match=message):
        gc.compile(**{"inputs": [x], "outputs": x, **kwargs})


# ---- NumPy ufuncs on Tensors ----------------------------------------------------------------


def test_numpy_ufuncs_on_tensors_are_the_graphc_functions():
    t = gc.input("t", (2,), "float64")
    a = np.array([1.0, 2.0])
    feed = {t: np.array([0.5, 3.0])}
    v = feed[t]
    cases = [
        (np.exp(t), np.exp(v)),
        (np.arctan(t), np.arctan(v)),
        (np.maximum(a, t), np.maximum(a, v)),
        (a + t, a + v),
        (a / t, a / v),
        (a**t, a**v),
        (np.negative(t), -v),
        (a < t, a < v),
        (np.float32(2) * t, np.float32(2) * v),
    ]
    for tensor, expected in cases:
        assert isinstance(tensor, gc.Tensor)
        result = gc.evaluate(tensor, feed)
        assert result.dtype == expected.dtype
        np.testing.assert_allclose(result, expected)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda t: np.cosh(t), r"np.cosh has no graphc equivalent.*gc.exp"),
        (lambda t: np.exp(t, out=np.zeros(2)), r"np.exp\(..., out=...\).*call gc.exp"),
        (lambda t: np.add.reduce(t), r"np.add.reduce does not work.*t.sum"),
    ],
)
def test_numpy_ufuncs_graphc_cannot_run_say_what_to_use(call, message):
    with pytest.raises(gc.GraphcError, match=message):
        call(gc.input("t", (2,), "float64"))


# ---- updates follow NumPy's same_kind rule --------------------------------------------------


def test_an_update_is_cast_as_numpy_casts_in_place_arithmetic():
    x = gc.input("x", (2,), "float64")
    w = gc.param("w", np.ones(2, np.float32))
    step = gc.compile(inputs=[x], outputs=[], updates={w: w - x})  # float64 rounds into w
    step(np.array([0.5, 1.0 / 3.0]))
    expected = np.ones(2, np.float32)
    np.subtract(expected, np.array([0.5, 1.0 / 3.0]), out=expected, casting="same_kind")
    np.testing.assert_array_equal(w.value, expected)


def test_an_update_numpy_would_refuse_names_both_types():
    count = gc.param("count", np.zeros((), np.int64))
    with pytest.raises(gc.DTypeError, match=r"update of count: .*f64\[\].*i64\[\].*same_kind"):
        gc.Program([], [], {count: count + 0.5})
    with pytest.raises(TypeError, match="same_kind"):  # NumPy's own in-place refusal
        np.add(count.value, 0.5, out=count.value, casting="same_kind")


# ---- one_hot --------------------------------------------------------------------------------


def test_one_hot_of_a_fed_label_out_of_range_is_a_row_of_zeros():
    labels = gc.input("labels", (3,), "int64")
    rows = gc.evaluate(gc.one_hot(labels, 3), {labels: np.array([1, 3, -1])})
    np.testing.assert_array_equal(rows, [[0, 1, 0], [0, 0, 0], [0, 0, 0]])


@pytest.mark.parametrize(("labels", "depth"), [([0, 3], 3), ([-1, 0], 3)])
def test_one_hot_of_a_constant_label_out_of_range_is_an_error(labels, depth):
    with pytest.raises(gc.ShapeError, match=rf"label -?\d is outside \[0, {depth}\)"):
        gc.one_hot(np.array(labels), depth)
    with pytest.raises(gc.ShapeError, match="outside"):
        gc.nn.softmax_cross_entropy(gc.input("z", (2, depth)), np.array(labels))


@pytest.mark.parametrize("depth", [2.5, -1, True])
def test_one_hot_depth_is_a_non_negative_int(depth):
    with pytest.raises(gc.ShapeError, match="depth must be a non-negative int"):
        gc.one_hot(np.array([0]), depth)


# ---- the DOT picture of a training step -----------------------------------------------------


def test_dot_of_the_readme_training_step_stays_legible(tmp_path):
    model = gc.nn.Sequential(
        [gc.nn.Dense(32, "relu"), gc.nn.Dense(16, "relu"), gc.nn.Dense(1)], seed=0
    )
    x, y = gc.input("x", (32, 5)), gc.input("y", (32, 1))
    loss = gc.nn.mse_loss(model(x), y)
    program = gc.Program([x, y], loss, gc.optim.Adam(model.params()).updates(loss))
    dot = spec.to_dot(program.graph)
    drawn = [line for line in dot.splitlines() if " [label=" in line]
    assert len(program.graph.nodes) > 200 and len(drawn) < 70  # constants inline, Adam boxed
    assert dot.count('label="update of dense') == 3 and "state: adam.m[dense1.w] +3" in dot
    if shutil.which("dot"):
        spec.write_dot(dot, tmp_path / "step.png")
        width, height = struct.unpack(">II", (tmp_path / "step.png").read_bytes()[16:24])
        assert width < 4000 and height < 2500  # was 4730 x 5874 drawn flat


def test_numpy_reductions_on_a_tensor_build_graphc_reductions():
    """np.sum(t) calls t.sum(axis=None, dtype=None, out=None): those keywords are taken."""
    x = gc.input("x", (2, 3), "float32")
    xv = np.arange(6, dtype=np.float32).reshape(2, 3)
    for got, want in [
        (np.sum(x), xv.sum()),
        (np.sum(x, axis=0), xv.sum(axis=0)),
        (np.max(x, axis=1), xv.max(axis=1)),
        (np.mean(x), xv.mean()),
        (np.sum(x, dtype="float64"), xv.sum(dtype=np.float64)),
    ]:
        np.testing.assert_allclose(gc.evaluate(got, {x: xv}), want)
    assert np.sum(x, dtype="float64").dtype == "float64"
    with pytest.raises(gc.GraphcError, match="out= is not supported"):
        np.sum(x, out=np.zeros(()))
