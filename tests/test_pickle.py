"""Pickled executables (DESIGN §9): graph, object code, CPU and state travel; the code is
mapped without an LLVM compile where the receiving process would compile the same code."""

from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import graphc as gc
from graphc.demo import build_max_of_five, sample
from graphc.runtime import jit

ROOT = Path(__file__).resolve().parent.parent
COMPILE_TIMINGS = ("passes", "emit", "parse", "optimize", "codegen")

# Loads the pickled payload of argv[1] and runs what it says, counting LLVM's optimizer and
# code generator; writes the results to argv[2].
CHILD = """
import pickle, sys
import llvmlite.binding as llvm
from graphc.runtime import jit

calls = []
optimize, emit_object = jit.optimize, llvm.TargetMachine.emit_object

def counting_optimize(*args, **kwargs):
    calls.append("optimize")
    return optimize(*args, **kwargs)

def counting_emit_object(self, module):
    calls.append("emit_object")
    return emit_object(self, module)

jit.optimize, llvm.TargetMachine.emit_object = counting_optimize, counting_emit_object
with open(sys.argv[1], "rb") as file:
    net, batches, test_x, extra = pickle.load(file)
losses = [float(net.train(x, y)) for x, y in batches]
result = {
    "calls": calls,
    "losses": losses,
    "params": [p.value for p in net.params()],
    "predictions": net.predict(test_x),
    "extra": [(step(*args), step.timings, step.engine.target) for step, args in extra],
    "timings": net.train.timings,
}
with open(sys.argv[2], "wb") as file:
    pickle.dump(result, file)
"""


def run_child(tmp_path: Path, payload, **environment) -> dict:
    """Unpickle `payload` in a fresh Python process with an empty object cache, run it there."""
    sent, received = tmp_path / "sent.pkl", tmp_path / "received.pkl"
    sent.write_bytes(pickle.dumps(payload))
    cache = tmp_path / "child-cache"
    cache.mkdir(exist_ok=True)
    env = os.environ | environment | {"GRAPHC_CACHE_DIR": str(cache)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    subprocess.run(
        [sys.executable, "-c", CHILD, str(sent), str(received)], env=env, check=True, timeout=300
    )
    return pickle.loads(received.read_bytes())


@pytest.fixture(scope="module")
def trained():
    """A max-of-five net trained 20 steps, the next 10 batches, a test set, and one large
    step (a matmul split over the thread pool where there are threads to split it for)."""
    net = build_max_of_five(seed=3, test_size=64)
    rng = np.random.default_rng(3)
    for _ in range(20):
        net.train(*sample(rng, 32))
    batches = [sample(rng, 32) for _ in range(10)]
    test_x, _ = sample(rng, 64)
    a = gc.input("a", (256, 256))
    b = gc.param("b", rng.standard_normal((256, 256), dtype=np.float32))
    large = gc.compile(inputs=[a], outputs=gc.relu(a @ b), name="large")
    arg = rng.standard_normal((256, 256), dtype=np.float32)
    return net, batches, test_x, [(large, (arg,))]


def continue_here(payload) -> dict:
    """What CHILD computes, here, by the original code on a copy of the parameters."""
    net, batches, test_x, extra = copy.deepcopy(payload)
    return {
        "losses": [float(net.train(x, y)) for x, y in batches],
        "params": [p.value for p in net.params()],
        "predictions": net.predict(test_x),
        "extra": [step(*args) for step, args in extra],
    }


def test_a_training_step_continues_in_another_process_exactly_without_compiling(trained, tmp_path):
    child = run_child(tmp_path, trained)
    assert child["calls"] == []  # no LLVM optimization, no code generation: mapped
    assert not set(COMPILE_TIMINGS) & set(child["timings"]) and "load" in child["timings"]
    here = continue_here(trained)
    assert child["losses"] == here["losses"]
    for theirs, ours in zip(child["params"], here["params"]):
        np.testing.assert_array_equal(theirs, ours)
    np.testing.assert_array_equal(child["predictions"], here["predictions"])
    (large, timings, target), (step, _) = child["extra"][0], trained[3][0]
    np.testing.assert_array_equal(large, here["extra"][0])
    assert target == step.engine.target and not set(COMPILE_TIMINGS) & set(timings)


def test_on_another_cpu_the_loaded_step_is_compiled_again_from_its_graph(trained, tmp_path):
    child = run_child(tmp_path, trained, GRAPHC_CPU="x86-64")  # SSE2 only: no FMA, no AVX
    assert "optimize" in child["calls"] and "emit_object" in child["calls"]
    assert "optimize" in child["timings"]
    here = continue_here(trained)
    np.testing.assert_allclose(child["losses"], here["losses"], rtol=1e-4)
    for theirs, ours in zip(child["params"], here["params"]):
        np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-6)
    large, _, target = child["extra"][0]
    assert target.cpu == "x86-64"
    np.testing.assert_allclose(large, here["extra"][0], rtol=1e-4, atol=1e-3)


def test_executables_pickled_together_share_parameters_but_not_with_the_originals():
    net = build_max_of_five(seed=1, test_size=8)
    train, predict = pickle.loads(pickle.dumps([net.train, net.predict]))
    before = [p.value.copy() for p in net.params()]
    test_x, _ = sample(np.random.default_rng(0), 8)
    predicted = predict(test_x)
    train(*sample(np.random.default_rng(1), 32))
    assert not np.array_equal(predict(test_x), predicted)  # predict reads train's update
    np.testing.assert_array_equal(net.predict(test_x), predicted)
    for p, value in zip(net.params(), before):
        np.testing.assert_array_equal(p.value, value)  # the originals did not move
    params = {p.name: p.attrs["storage"] for p in train.graph.params}
    assert all(params[p.name] is p.attrs["storage"] for p in predict.graph.params)


def test_tensors_pickled_with_an_executable_are_its_parameters():
    w = gc.param("w", np.array([1.0, 2.0]))
    x = gc.input("x", (2,), "float64")
    step = gc.compile(inputs=[x], outputs=(w * x).sum(), updates={w: w + x}, name="tiny")
    w2, step2 = pickle.loads(pickle.dumps((w, step)))
    assert step2(np.ones(2)) == 3.0 and step2(x=np.ones(2)) == 5.0  # one output, by name
    np.testing.assert_array_equal(w2.value, [3.0, 4.0])
    np.testing.assert_array_equal(w.value, [1.0, 2.0])
    w2.value = np.zeros(2)  # the loaded step follows its param Tensor's storage
    assert step2(np.ones(2)) == 0.0


def test_copies_pickled_together_carry_their_object_code_once():
    x = gc.input("x", (64,), "float64")
    step = gc.compile(inputs=[x], outputs=x * 2.0)
    one, two = len(pickle.dumps(step)), len(pickle.dumps([step, copy.copy(step)]))
    assert two - one < len(step.engine.object) // 2
    a, b = pickle.loads(pickle.dumps([step, copy.copy(step)]))
    np.testing.assert_array_equal(b(np.ones(64)), np.full(64, 2.0))


def test_a_deep_graph_pickles_without_recursion():
    x = gc.input("x", (2,), "float64")
    y = x
    for _ in range(5000):
        y = y + 1.0
    step = gc.compile(inputs=[x], outputs=y, name="deep")
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(step))(np.zeros(2)), [5000.0] * 2)


def test_out_of_band_parameter_buffers_are_copied_before_the_code_writes_them():
    w = gc.param("w", np.array([1.0, 2.0]))
    step = gc.compile(inputs=[], outputs=w.sum(), updates={w: w * 2.0})
    buffers = []
    data = pickle.dumps(step, protocol=5, buffer_callback=buffers.append)
    frozen = [bytes(b.raw()) for b in buffers]  # read-only memory, as a received message's
    loaded = pickle.loads(data, buffers=frozen)
    assert loaded() == 3.0 and loaded() == 6.0
    assert np.frombuffer(frozen[0], np.float64).tolist() == [1.0, 2.0]


def test_a_loaded_executable_dumps_every_stage_like_the_original():
    x = gc.input("x", (4, 3))
    dense = gc.nn.Dense(2, "relu", seed=0, name="dense1")
    step = gc.compile(inputs=[x], outputs=dense(x).sum(), name="tiny", cache=False)
    loaded = pickle.loads(pickle.dumps(step))
    assert loaded.timings.keys() == {"key", "load"}  # built without the cache, still mapped
    for stage in ("graph", "fused", "memory", "llvm"):
        assert loaded.dump(stage) == step.dump(stage)
    assert loaded.kernels == step.kernels and "ret" in loaded.dump("asm")
    np.testing.assert_array_equal(loaded(np.ones((4, 3), np.float32)), step(np.ones((4, 3))))


def test_an_engine_pickles_as_object_code_for_the_cpu_it_was_built_for():
    x = gc.input("x", (3,), "float64")
    step = gc.compile(inputs=[x], outputs=x + 1.0)
    code = pickle.loads(pickle.dumps(step.engine))
    assert isinstance(code, jit.ObjectCode) and code.object == step.engine.object
    assert code.target == step.engine.target and code.key == step.engine.key
