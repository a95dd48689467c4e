"""`graphc demo`: the command's output, the max-of-five training run, and the references
the demo times (NumPy always; PyTorch and JAX when installed) against the compiled step."""

from __future__ import annotations

import io

import numpy as np
import pytest

from graphc import cli, demo


def test_demo_command_quick(capsys):
    assert cli.main(["demo", "--quick"]) == 0
    out, err = capsys.readouterr()
    assert "test error (MSE on 1000 samples)" in out
    assert "steps per second" in out
    for row in ("graphc (compiled)", "NumPy (hand-written)", "PyTorch (eager)", "jax.jit"):
        assert row in out  # a time, or the note that the library is not installed
    assert "1.0x" in out  # graphc's own row of the speed-up column
    assert "\r[" in err and "1000/1000" in err  # the progress bar


def test_max_of_five_reaches_mse_below_003_within_5000_steps():
    net = demo.build_max_of_five(seed=0)
    rng = np.random.default_rng(0)
    test_x, test_y = demo.sample(rng, demo.TEST_SIZE)
    initial = net.test_error(test_x, test_y)
    demo.train(net, 5000, rng)
    final = net.test_error(test_x, test_y)
    assert net.optimizer.t.value == 5000
    assert final < 0.03 and final < initial / 20  # 0.0055 here


def _batches(n, seed=1):
    rng = np.random.default_rng(seed)
    return [demo.sample(rng, demo.BATCH) for _ in range(n)]


def test_numpy_reference_step_equals_the_compiled_step():
    """Same init, same batches: same losses, weights and Adam moments (float32)."""
    net = demo.build_max_of_five(seed=4)
    reference = demo.NumpyMaxOfFive([p.value for p in net.params()])
    for x, y in _batches(5):
        np.testing.assert_allclose(net.train(x, y), reference.step(x, y), rtol=1e-5)
        for p, expected in zip(net.params(), reference.params, strict=True):
            assert p.value.dtype == expected.dtype == np.float32
            np.testing.assert_allclose(p.value, expected, rtol=1e-5, atol=1e-6)
    moments = net.optimizer.state()[:-1]
    for state, expected in zip(moments, reference.m + reference.v, strict=True):
        scale = np.abs(expected).max()  # float32 gradients: tiny moments differ relatively more
        np.testing.assert_allclose(state.value, expected, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.parametrize("library", ["torch", "jax"])
def test_library_steps_equal_the_numpy_reference(library):
    pytest.importorskip(library, reason=f"{library} is not installed")
    params = [p.value.copy() for p in demo.build_max_of_five(seed=5).params()]
    make = demo.torch_step if library == "torch" else demo.jax_step
    step, convert = make(params)
    reference = demo.NumpyMaxOfFive(params)
    for x, y in _batches(5):
        expected = reference.step(x, y)
        np.testing.assert_allclose(float(step(convert(x), convert(y))), expected, rtol=1e-5)


def test_timing_table_names_every_implementation_and_the_speed_up():
    rows = [("graphc (compiled)", 50.0, ""), ("NumPy (hand-written)", 150.0, "")]
    rows.append(("jax.jit", None, "jax is not installed: skipped"))
    table = demo.format_table(rows)
    assert "3.0x" in table and "jax is not installed: skipped" in table


def test_progress_bar_redraws_one_line():
    stream = io.StringIO()
    bar = demo.ProgressBar(10, stream=stream, interval=0.0)
    for step in range(1, 11):
        bar.update(step, 0.5)
    text = stream.getvalue()
    assert text.count("\r") == 10 and text.endswith("\n") and text.count("\n") == 1
    assert "10/10" in text
