"""What a new user runs into: shapes that are not shapes or can never be allocated, misused
`compile` arguments, NumPy ufuncs on Tensors, checkpoints that are not checkpoints. Each
gets a GraphcError saying what to do instead (issue 19)."""

from __future__ import annotations

import numpy as np
import pytest

import graphc as gc
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
