"""K steps per native call (`gc.compile(..., steps=K)`, codegen/steps.py) and compiles that
Ctrl-C interrupts (runtime/jit.py `_interruptible`).

A K-step call must give bit for bit what K calls of the one-step executable give: its loop
calls the very same `<name>_step` code. Each test builds the model twice from one seed, so
the two executables start from equal, separate parameters.
"""

from __future__ import annotations

import copy
import os
import pathlib
import pickle
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from cprogram import GCC, build_and_run

import graphc as gc

ROOT = pathlib.Path(__file__).resolve().parent.parent
POOL_CALL = 'call void @"graphc_pool_run"'


def train_program(dtype="float64", batch=4, features=3, hidden=8, name="train"):
    """An MLP training step with Adam: (x, y) -> (loss, prediction); and its params."""
    x = gc.input("x", (batch, features), dtype)
    y = gc.input("y", (batch, 1), dtype)
    model = gc.nn.MLP(hidden, 2, 1, "tanh", seed=0, dtype=dtype, name="mlp")
    prediction = model(x)
    loss = gc.nn.mse_loss(prediction, y)
    updates = gc.optim.Adam(model.params(), lr=0.05).updates(loss)
    return gc.Program([x, y], [loss, prediction], updates, name=name), model.params()


def stacked_batches(steps, dtype, batch=4, features=3, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (steps, batch, features)).astype(dtype)
    return x, x.max(axis=2, keepdims=True)


def assert_k_steps_equal_k_calls(one, many, params_one, params_many, xs, ys):
    """`many` (K steps a call) over the stacked data == `one` called K times: outputs and
    every parameter (model and optimizer state) bit for bit."""
    steps = len(xs)
    losses, predictions = many(xs, ys)
    assert losses.shape == (steps,) and predictions.shape == (steps, *ys.shape[1:])
    for k in range(steps):
        loss, prediction = one(xs[k], ys[k])
        np.testing.assert_array_equal(losses[k], loss)
        np.testing.assert_array_equal(predictions[k], prediction)
    for a, b in zip(params_one, params_many):
        np.testing.assert_array_equal(a.value, b.value)
    state = [p for p in one.graph.params if p.name.startswith("adam")]
    assert state, "the optimizer keeps state"
    for a, b in zip(one.graph.params, many.graph.params):
        np.testing.assert_array_equal(a.attrs["storage"].value, b.attrs["storage"].value)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_k_steps_equal_k_calls_with_adam(dtype):
    program_one, params_one = train_program(dtype)
    program_many, params_many = train_program(dtype)
    one = gc.compile(program_one)
    many = gc.compile(program_many, steps=5)
    assert many.steps == 5 and one.steps == 1
    assert [n.shape for n in many.inputs] == [(5, 4, 3), (5, 4, 1)]
    assert [n.shape for n in many.outputs] == [(5,), (5, 4, 1)]
    xs, ys = stacked_batches(5, dtype)
    assert_k_steps_equal_k_calls(one, many, params_one, params_many, xs, ys)
    # the parameters moved: the updates applied after every step, not once
    xs, ys = stacked_batches(5, dtype, seed=1)
    first = many(xs, ys)[0]
    assert not np.array_equal(first, many(xs, ys)[0])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_k_steps_equal_k_calls_on_two_threads(dtype, monkeypatch):
    """Large kernels run on the thread pool inside every one of the K steps."""
    monkeypatch.setenv("GRAPHC_THREADS", "2")
    shape = {"batch": 512, "features": 64, "hidden": 128}
    program_one, params_one = train_program(dtype, **shape)
    program_many, params_many = train_program(dtype, **shape)
    one, many = gc.compile(program_one), gc.compile(program_many, steps=3)
    assert POOL_CALL in many.dump("llvm")
    xs, ys = stacked_batches(3, dtype, batch=512, features=64)
    assert_k_steps_equal_k_calls(one, many, params_one, params_many, xs, ys)


def test_python_path_and_large_arguments_equal_the_native_entry():
    """Arguments the native entry does not take (lists, strided views, by name) go through
    the Python path, with the same results."""
    program_a, _ = train_program("float64")
    program_b, _ = train_program("float64")
    a, b = gc.compile(program_a, steps=4), gc.compile(program_b, steps=4)
    xs, ys = stacked_batches(8, "float64")
    for k in (0, 4):
        expected = a(xs[k : k + 4], ys[k : k + 4])
        given = b(y=ys[k : k + 4].tolist(), x=np.asfortranarray(xs[k : k + 4]))
        for e, g in zip(expected, given):
            np.testing.assert_array_equal(e, g)


def test_inference_steps_stack_the_outputs():
    x = gc.input("x", (2, 3), "float32")
    w = gc.param("w", np.arange(6, dtype=np.float32).reshape(3, 2) / 7)
    program = gc.Program([x], gc.tanh(gc.matmul(x, w)).sum(axis=0), name="infer")
    one, many = gc.compile(program), gc.compile(program, steps=6)
    xs = np.random.default_rng(3).standard_normal((6, 2, 3)).astype(np.float32)
    np.testing.assert_array_equal(many(xs), np.stack([one(v) for v in xs]))


def test_a_bad_index_stops_the_k_steps_at_its_step():
    """A step that meets an index out of range raises, as the K calls would at that call:
    the steps before it updated the state, the steps after it did not run."""
    if not hasattr(gc, "take"):
        pytest.skip("gc.take (run-time index checks) is not in this checkout")
    indices = gc.input("i", (2,), "int64")
    w = gc.param("w", np.arange(4.0))
    program = gc.Program([indices], gc.take(w, indices).sum(), {w: w * 2.0}, name="doubling")
    many = gc.compile(program, steps=3)
    np.testing.assert_array_equal(many(np.array([[0, 1], [1, 2], [2, 3]])), [1.0, 6.0, 20.0])
    np.testing.assert_array_equal(w.value, [0.0, 8.0, 16.0, 24.0])
    with pytest.raises(gc.InputError, match="out of range"):
        many(np.array([[0, 1], [5, 2], [2, 3]]))
    np.testing.assert_array_equal(w.value, [0.0, 16.0, 32.0, 48.0])  # the first step's update
    np.testing.assert_array_equal(many(np.array([[3, 3], [0, 0], [1, 1]])), [96.0, 0.0, 128.0])


def test_wrong_shapes_and_bad_step_counts_are_input_errors():
    program, _ = train_program("float64")
    many = gc.compile(program, steps=3)
    xs, ys = stacked_batches(3, "float64")
    with pytest.raises(gc.InputError, match=r"'x' expects shape \(3, 4, 3\)"):
        many(xs[0], ys)
    with pytest.raises(gc.InputError, match=r"'y' expects shape \(3, 4, 1\)"):
        many(xs, ys[:2])
    for bad in (0, -2, 1.5, True, "3", None):
        with pytest.raises(gc.InputError, match="steps must be a positive integer"):
            gc.compile(program, steps=bad)


def test_steps_are_part_of_the_cache_key_and_the_pickle(tmp_path, monkeypatch):
    monkeypatch.setenv("GRAPHC_CACHE_DIR", str(tmp_path))
    program, _ = train_program("float64", name="cached")
    one = gc.compile(program)
    entries = set(tmp_path.glob("*.jitobj"))
    many = gc.compile(program, steps=3)
    assert not many.engine.cached and len(set(tmp_path.glob("*.jitobj")) - entries) == 1
    again = gc.compile(program, steps=3)
    assert again.engine.cached and again.steps == 3
    assert one.engine.key != many.engine.key
    assert "3 steps per call" in repr(many)

    xs, ys = stacked_batches(3, "float64")
    clone = pickle.loads(pickle.dumps(many))  # parameters of its own, as they were
    assert clone.steps == 3 and clone.engine.cached and clone.engine.key == many.engine.key
    for e, g in zip(many(xs, ys), clone(xs, ys)):
        np.testing.assert_array_equal(e, g)
    for copied in (copy.copy(many), copy.deepcopy(many)):
        assert copied.steps == 3 and copied.inputs[0].shape == (3, 4, 3)
        assert copied(xs, ys)[0].shape == (3,)


@pytest.mark.skipif(GCC is None, reason="gcc is not installed (the AOT test builds C)")
def test_aot_run_performs_k_steps(tmp_path):
    """The exported `NAME_run` runs K steps over stacked arrays, as the JIT's K-step call."""
    program_jit, _ = train_program("float64", name="ksteps")
    program_aot, _ = train_program("float64", name="ksteps")
    step = gc.compile(program_jit, steps=4)
    paths = gc.aot.export(gc.compile(program_aot, steps=4), tmp_path)
    header = paths.header.read_text()
    assert "4 steps: inputs, then outputs" in header and "x: float64 [4, 4, 3]" in header
    xs, ys = stacked_batches(8, "float64")

    def literal(name, array):
        values = ", ".join(repr(float(v)) for v in array.ravel())
        return f"static const double {name}[] = {{{values}}};"

    calls = "".join(
        f"    ksteps_run(mem, x + {k * 48}, y + {k * 16}, loss, prediction);\n"
        '    for (int i = 0; i < 4; i++) printf("%.17g ", loss[i]);\n'
        '    for (int i = 0; i < 16; i++) printf("%.17g ", prediction[i]);\n'
        '    printf("\\n");\n'
        for k in (0, 1)
    )
    source = textwrap.dedent(
        f"""\
        #include <stdio.h>
        #include <stdlib.h>
        #include "ksteps.h"
        {literal("x", xs)}
        {literal("y", ys)}
        int main(void) {{
            void *mem = aligned_alloc(64, ksteps_mem_size());
            double loss[4], prediction[16];
            ksteps_init(mem);
        """
    )
    source += calls + "    free(mem);\n    return 0;\n}\n"
    lines = build_and_run(tmp_path, source, [paths.object], ("-lm", "-pthread"))
    for k, line in zip((0, 1), lines.splitlines()):
        values = np.array([float(v) for v in line.split()])
        loss, prediction = step(xs[4 * k : 4 * k + 4], ys[4 * k : 4 * k + 4])
        np.testing.assert_array_equal(values, np.concatenate([loss, prediction.ravel()]))


def test_demo_times_the_step_both_ways():
    from graphc import demo

    net = demo.build_max_of_five(seed=0, steps_per_call=4)
    assert net.train_k.steps == 4
    rows = demo.time_training_step(net, seconds=0.01)
    labels = [row[0] for row in rows]
    assert labels[:2] == ["graphc (compiled)", "graphc (4 steps/call)"]
    assert all(row[1] > 0 for row in rows[:2])


def test_demo_refuses_a_step_count_that_is_not_positive(capsys):
    from graphc import cli

    with pytest.raises(SystemExit) as exit_:
        cli.main(["demo", "--steps-per-call", "0"])
    assert exit_.value.code == 2
    assert "--steps-per-call: must be a positive integer, not '0'" in capsys.readouterr().err


# ---- Ctrl-C during a compile ----

INTERRUPTED = """
import signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job ignores SIGINT
import numpy as np
import graphc as gc
from graphc.runtime import executable, jit

optimize = jit.optimize


def announced(*args):  # tell the test that LLVM's optimization has begun
    print("optimizing", flush=True)
    return optimize(*args)


jit.optimize = announced
x = gc.input("x", (16, 8), "float32")
rng = np.random.default_rng(0)
weights = [gc.param(f"w{i}", rng.normal(0, 0.3, (8, 8)).astype(np.float32)) for i in range(60)]
h = x
for w in weights:  # an unrolled chain: many seconds of LLVM
    h = gc.tanh(gc.matmul(h, w)) + gc.sigmoid(h) * h
loss = (h * h).mean()
program = gc.Program([x], loss, gc.optim.Adam(weights, lr=1e-3).updates(loss), name="big")
print(jit.cache_path(executable._key(program.graph, jit.DEFAULT_OPT, 1)), flush=True)
try:
    gc.compile(program)
except KeyboardInterrupt:
    busy = not jit._LOCK.acquire(blocking=False)  # LLVM still at work on the compile
    print("KeyboardInterrupt", "during" if busy else "after", "LLVM's work", flush=True)
    sys.exit(3)
print("finished", flush=True)
"""


def test_ctrl_c_interrupts_llvm_and_leaves_no_cache_entry(tmp_path):
    """SIGINT while LLVM optimizes (tens of seconds for this model): KeyboardInterrupt while
    LLVM still works (holds the LLVM lock), not after, which is all a compile on the main
    thread could do; and no cache entry or temporary file is left behind."""
    cache = tmp_path / "cache"
    env = {**os.environ, "GRAPHC_CACHE_DIR": str(cache), "PYTHONPATH": str(ROOT)}
    child = subprocess.Popen(
        [sys.executable, "-c", INTERRUPTED],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    entry = pathlib.Path(child.stdout.readline().strip())
    line = child.stdout.readline()
    assert line == "optimizing\n", (line, child.stderr.read())
    time.sleep(0.5)
    child.send_signal(signal.SIGINT)
    try:
        out, err = child.communicate(timeout=120)  # not interrupted: a minute or two of LLVM
    except subprocess.TimeoutExpired:
        child.kill()
        raise
    assert child.returncode == 3 and out == "KeyboardInterrupt during LLVM's work\n", err
    assert entry.parent == cache and not entry.exists()
    leftovers = [p.name for p in cache.iterdir()] if cache.exists() else []
    assert not [name for name in leftovers if name.endswith(".tmp")], leftovers
