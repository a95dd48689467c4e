"""take / scatter_add: values, gradients, fusion as a gather, and run-time index checks.

The op table (tests/optable.py) covers forward values in every dtype, gradients and
compiled-vs-interpreted results on small cases; here: indices computed in the graph, the
error an index out of range gives (interpreter, JIT on one and several threads, AOT C),
indexing a Tensor with an index tensor, bad input, and PyTorch as a second oracle.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from cprogram import GCC, build_and_run

import graphc as gc

HERE = os.path.relpath(__file__)


def line() -> int:
    import inspect

    return inspect.currentframe().f_back.f_lineno


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_take_fuses_as_a_gather_and_matches_the_interpreter(dtype):
    """The take is an index map inside its consumer's kernel; indices computed in the graph
    (an argmax) are read at the output's index."""
    rng = np.random.default_rng(0)
    table = gc.input("table", (6, 4), dtype)
    scores = gc.input("scores", (5, 6), dtype)
    picked = gc.take(table, scores.argmax(axis=1), axis=0)  # (5, 4)
    y = gc.tanh(picked) * 2 + 1
    step = gc.compile([table, scores], y)
    feed = {table: rng.normal(size=(6, 4)).astype(dtype), scores: rng.normal(size=(5, 6))}
    expected = np.tanh(feed[table][feed[scores].argmax(axis=1)]) * 2 + 1
    np.testing.assert_allclose(step(*feed.values()), expected, rtol=1e-6)
    np.testing.assert_allclose(step(*feed.values()), gc.evaluate(y, feed), rtol=1e-6)
    fused = step.dump("fused")
    take_kernel = next(block for block in fused.split("kernel ")[1:] if " take " in block)
    assert " tanh " in take_kernel  # the gather and its consumer: one kernel


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_an_embedding_trains_the_same_compiled_and_interpreted(dtype):
    """Rows looked up by label, repeated labels included; SGD on the table (scatter_add
    backward) for three steps, compiled against the interpreter."""
    rng = np.random.default_rng(1)
    start = rng.normal(size=(5, 3)).astype(dtype)
    table = gc.param("table", start.copy())
    labels = gc.input("labels", (8,), "int32")
    target = gc.input("target", (8, 3), dtype)
    loss = ((table[labels] - target) ** 2).mean()
    (g,) = gc.grad(loss, [table])
    step = gc.compile([labels, target], loss, updates={table: table - 0.5 * g})
    feeds = [
        (rng.integers(-5, 5, 8).astype(np.int32), rng.normal(size=(8, 3)).astype(dtype))
        for _ in range(3)
    ]
    expected = start.astype(np.float64)
    for lv, tv in feeds:
        wanted = gc.evaluate([loss, g], {labels: lv, target: tv})
        got = step(lv, tv)
        np.testing.assert_allclose(got, wanted[0], rtol=1e-5)
        rows = lv % 5
        grad = np.zeros_like(expected)
        np.add.at(grad, rows, 2 * (expected[rows] - tv) / (8 * 3))
        expected = expected - 0.5 * grad
        np.testing.assert_allclose(table.value, expected, rtol=2e-5, atol=1e-6)


def test_take_gradients_match_finite_differences():
    a = gc.input("a", (4, 3), "float64")
    i = gc.input("i", (2, 3), "int64")
    w = gc.const(np.linspace(-1, 1, 18).reshape(2, 3, 3))
    y = (gc.sin(gc.take(a, i, axis=0)) * w).sum()
    feed = {a: np.linspace(-2, 2, 12).reshape(4, 3), i: np.array([[0, 3, 0], [-1, 2, 0]])}
    assert gc.check_grad(y, [a], feed) < 1e-8
    z = (gc.take(a, i, axis=1) ** 2).sum()
    feed[i] = np.array([[0, 2, -1], [1, 1, 0]])
    assert gc.check_grad(z, [a], feed) < 1e-8
    # forward mode: the tangent of a take is the take of the tangent
    t = np.arange(12.0).reshape(4, 3)
    (tangent,) = gc.evaluate([gc.jvp(gc.take(a, i, axis=1), {a: gc.const(t)})], feed)
    np.testing.assert_array_equal(tangent, np.take(t, feed[i], axis=1))


def test_scatter_add_gradients_match_finite_differences():
    a = gc.input("a", (3, 2), "float64")
    u = gc.input("u", (4, 2), "float64")
    i = gc.input("i", (4,), "int32")
    y = (gc.exp(gc.scatter_add(a, i, u)) * gc.const(np.arange(6.0).reshape(3, 2))).sum()
    feed = {a: np.full((3, 2), 0.1), u: np.linspace(-1, 1, 8).reshape(4, 2), i: [2, 0, 2, -1]}
    assert gc.check_grad(y, [a, u], feed) < 1e-7
    ta, tu = np.ones((3, 2)), np.arange(8.0).reshape(4, 2)
    out = gc.scatter_add(a, i, u)
    tangent = gc.evaluate(gc.jvp(out, {a: gc.const(ta), u: gc.const(tu)}), feed)
    expected = ta.copy()
    np.add.at(expected, [2, 0, 2, -1], tu)
    np.testing.assert_array_equal(tangent, expected)


def test_an_index_out_of_range_raises_in_the_interpreter_and_compiled():
    a = gc.input("a", (4, 2), "float32")
    i = gc.input("i", (3,), "int64")
    here = line() + 1
    y = gc.take(a, i) * 2
    step = gc.compile([a, i], y)
    av = np.arange(8, dtype=np.float32).reshape(4, 2)
    for bad in ([0, 4, 1], [0, 1, -5]):
        with pytest.raises(gc.InputError) as raised:
            gc.evaluate(y, {a: av, i: bad})
        assert f"index {bad[1] if bad[1] == 4 else -5} is out of range" in str(raised.value)
        assert f"{HERE}:{here}" in str(raised.value)
        with pytest.raises(gc.InputError) as raised:
            step(av, np.array(bad))
        message = str(raised.value)
        assert "take from axis 0 of size 4" in message and f"{HERE}:{here}" in message
    # the status is cleared: the next good call runs, on the native entry or not
    np.testing.assert_array_equal(step(av, np.array([3, -4, 1])), av[[3, 0, 1]] * 2)


def test_a_bad_index_stops_a_training_step_before_later_updates():
    """The step ends right after the checking kernel: the update, which reads the gather's
    gradient, is not applied."""
    table = gc.param("table", np.ones((3, 2)))
    i = gc.input("i", (2,), "int64")
    loss = (table[i] ** 2).sum()
    (g,) = gc.grad(loss, [table])
    step = gc.compile([i], loss, updates={table: table - 0.1 * g})
    with pytest.raises(gc.InputError):
        step(np.array([0, 3]))
    np.testing.assert_array_equal(table.value, np.ones((3, 2)))
    step(np.array([0, 0]))
    np.testing.assert_allclose(table.value[0], 1 - 0.1 * 4)


def test_a_bad_index_in_a_threaded_gather_is_caught():
    """A gather large enough to run in chunks on the pool's threads reports from any chunk."""
    table = gc.input("table", (64, 256), "float32")
    i = gc.input("i", (4096,), "int32")
    y = gc.take(table, i) + 1
    step = gc.compile([table, i], y)
    tv = np.random.default_rng(2).normal(size=(64, 256)).astype(np.float32)
    iv = np.random.default_rng(3).integers(-64, 64, 4096).astype(np.int32)
    np.testing.assert_array_equal(step(tv, iv), tv[iv] + 1)
    for where in (0, 4095, 2000):
        bad = iv.copy()
        bad[where] = 64
        with pytest.raises(gc.InputError):
            step(tv, bad)


def test_scatter_add_checks_its_indices_and_adds_in_order():
    a = gc.input("a", (3,), "float32")
    i = gc.input("i", (4,), "int32")
    u = gc.input("u", (4,), "float32")
    y = gc.scatter_add(a, i, u)
    step = gc.compile([a, i, u], y)
    av = np.zeros(3, np.float32)
    uv = np.array([1e8, 1.0, -1e8, 1.0], np.float32)  # order matters in float32
    iv = np.array([1, 1, 1, -2], np.int32)
    expected = av.copy()
    np.add.at(expected, iv, uv)
    np.testing.assert_array_equal(step(av, iv, uv), expected)
    with pytest.raises(gc.InputError, match="scatter_add from axis 0 of size 3"):
        step(av, np.array([0, 3, 0, 0], np.int32), uv)


def test_indexing_a_tensor_with_an_index_tensor():
    x = gc.input("x", (3, 4, 5), "float64")
    i = gc.input("i", (2,), "int64")
    xv = np.arange(60.0).reshape(3, 4, 5)
    iv = np.array([1, -1])
    cases = {x[i]: xv[iv], x[:, i]: xv[:, iv], x[..., i]: xv[..., iv], x[:, [0, 3]]: xv[:, [0, 3]]}
    for got, want in zip(gc.evaluate(list(cases), {x: xv, i: iv}), cases.values()):
        np.testing.assert_array_equal(got, want)
    with pytest.raises(gc.GraphcError, match="one integer index tensor"):
        x[i, i]
    with pytest.raises(gc.GraphcError, match="one integer index tensor"):
        x[0:2, i]
    with pytest.raises(gc.GraphcError, match="boolean mask"):
        x[np.array([True, False, True])]


def test_bad_input_names_the_op_and_the_line():
    a = gc.input("a", (4, 3), "float32")
    here = line() + 2
    with pytest.raises(gc.InputError) as raised:
        gc.take(a, [0, 7])  # NumPy indices are checked when the graph is built
    assert "take: index 7 is out of range for axis 0 of size 4" in str(raised.value)
    assert f"{HERE}:{here}" in str(raised.value)
    with pytest.raises(gc.DTypeError, match="indices must be int"):
        gc.take(a, gc.input("f", (2,), "float32"))
    with pytest.raises(gc.DTypeError, match="indices must be integers"):
        gc.take(a, [0.5])
    with pytest.raises(gc.ShapeError, match="axis 2 is out of range"):
        gc.take(a, [0], axis=2)
    here = line() + 2
    with pytest.raises(gc.ShapeError) as raised:
        gc.scatter_add(a, [0, 1], gc.input("u", (3, 3), "float32"))
    assert "scatter_add" in str(raised.value) and "(2, 3)" in str(raised.value)
    assert f"{HERE}:{here}" in str(raised.value)
    with pytest.raises(gc.ShapeError, match="empty axis"):
        gc.take(gc.input("e", (0, 2), "float32"), gc.input("j", (1,), "int32"))


def test_pytorch_agrees_on_take_and_scatter_add():
    torch = pytest.importorskip("torch", reason="PyTorch is the second oracle where installed")
    rng = np.random.default_rng(4)
    av, uv = rng.normal(size=(5, 3)), rng.normal(size=(6, 3))
    iv = rng.integers(0, 5, 6)
    a, u, i = (
        gc.input("a", (5, 3), "float64"),
        gc.input("u", (6, 3), "float64"),
        gc.input("i", (6,), "int64"),
    )
    step = gc.compile([a, i, u], [gc.take(a, i), gc.scatter_add(a, i, u)])
    taken, added = step(av, iv, uv)
    ta, ti, tu = torch.tensor(av), torch.tensor(iv), torch.tensor(uv)
    np.testing.assert_allclose(taken, torch.index_select(ta, 0, ti).numpy(), rtol=0)
    np.testing.assert_allclose(added, ta.index_add(0, ti, tu).numpy(), rtol=1e-15)


@pytest.mark.skipif(GCC is None, reason="needs gcc to build the C caller")
def test_aot_code_reports_a_bad_index_through_name_status(tmp_path):
    table = gc.param("table", np.arange(12, dtype=np.float32).reshape(4, 3))
    i = gc.input("i", (2,), "int32")
    step = gc.compile([i], gc.take(table, i) * 2, name="lookup")
    gc.aot.export(step, tmp_path, name="lookup")
    header = (tmp_path / "lookup.h").read_text()
    assert "int lookup_status(const void *mem);" in header and "take from axis 0" in header
    out = build_and_run(
        tmp_path,
        '#include <stdio.h>\n#include <stdlib.h>\n#include "lookup.h"\n'
        "int main(void) {\n"
        "  void *mem = aligned_alloc(64, LOOKUP_MEM_SIZE + 64);\n"
        "  int32_t good[2] = {3, -4}, bad[2] = {1, 4};\n  float y[6];\n"
        "  lookup_init(mem);\n  lookup_run(mem, good, y);\n"
        '  printf("%d %g %g\\n", lookup_status(mem), y[0], y[3]);\n'
        '  lookup_run(mem, bad, y);\n  printf("%d\\n", lookup_status(mem));\n'
        '  lookup_run(mem, good, y);\n  printf("%d\\n", lookup_status(mem));\n'
        "  free(mem);\n  return 0;\n}\n",
        ["lookup.o"],
    )
    assert out.split("\n")[:3] == ["0 18 0", "1", "0"]
