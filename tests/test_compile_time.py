"""Compile work linear in the size of the model: an LSTM cell unrolled over T steps.

Counted, not timed: the trees fusion walks (passes/fusion.py `stored_values` walks the graph
once; it used to walk every tree again for each value it decided to store), the groups'
successor sets it keeps instead of recomputing them, the bit sets its horizontal merge tests
read instead of searching the kernel graph, and the instructions LLVM gets in one function
(codegen/llvm.py STEP_INLINE_BUDGET keeps `<name>_step` within a budget).
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from llvmlite import ir
from strategies import programs

import graphc as gc
from graphc.codegen import llvm
from graphc.codegen.kernel import instruction_count
from graphc.passes import fusion, optimize


def lstm_program(steps: int, units=8, features=3, batch=2, dtype="float64"):
    """An LSTM cell unrolled by hand over `steps` steps, last state -> a linear read-out,
    mean squared error, Adam: the training step."""
    rng = np.random.default_rng(0)
    x = gc.input("x", (steps, batch, features), dtype)
    y = gc.input("y", (batch, 1), dtype)
    w = gc.param("w", rng.normal(0, 0.3, (features, 4 * units)).astype(dtype))
    u = gc.param("u", rng.normal(0, 0.3, (units, 4 * units)).astype(dtype))
    b = gc.param("b", np.zeros(4 * units, dtype))
    v = gc.param("v", rng.normal(0, 0.3, (units, 1)).astype(dtype))
    h = c = gc.const(np.zeros((batch, units), dtype))
    for t in range(steps):
        z = gc.matmul(x[t], w) + gc.matmul(h, u) + b
        i, f, g, o = (z[:, k * units : (k + 1) * units] for k in range(4))
        c = gc.sigmoid(f) * c + gc.sigmoid(i) * gc.tanh(g)
        h = gc.sigmoid(o) * gc.tanh(c)
    loss = ((gc.matmul(h, v) - y) ** 2).mean()
    updates = gc.optim.Adam([w, u, b, v], lr=1e-2).updates(loss)
    return gc.Program([x, y], loss, updates, name=f"lstm{steps}")


def test_fusion_walks_trees_in_linear_number(monkeypatch):
    walked = []

    def counting_tree(root, stored):
        body, leaves = tree(root, stored)
        walked.append(len(body))
        return body, leaves

    tree = fusion.tree
    monkeypatch.setattr(fusion, "tree", counting_tree)
    work = []
    for steps in (8, 16, 32):
        walked.clear()
        fusion.fuse(optimize(lstm_program(steps).graph))
        work.append(sum(walked))
    # twice the steps, about twice the work (1.8x, 2.2x; it was 3.5x, 4.3x: a walk of every
    # tree for each value stored)
    assert work[1] <= 2.5 * work[0] and work[2] <= 2.5 * work[1], work


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(programs(max_ops=14))
def test_kept_successors_equal_recomputed_ones(case):
    """The kernel graph fusion keeps up to date through merges is the one its groups' trees
    give (`preds` of every group, inverted)."""
    program, _ = case
    graph = optimize(program.graph)
    grouping = fusion._Grouping(graph, fusion.stored_values(graph))
    grouping.run()
    recomputed = {g: set() for g in grouping.groups}
    for g in grouping.groups:
        for p in grouping.preds(g):
            recomputed[p].add(g)
    assert grouping.succs() == recomputed


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(programs(max_ops=14))
def test_bit_set_merge_tests_answer_as_the_graph_search(monkeypatch, case):
    """Every merge test horizontal fusion makes from its bit sets (`_Reach`) gives what the
    search of the kernel graph (`_Grouping.mergeable`) gives at that moment."""
    asked = []
    grouping_of = {}
    original_init = fusion._Grouping.__init__

    def remembering_init(self, *args):
        original_init(self, *args)
        grouping_of["current"] = self

    def checked(self, a, b, succs):
        answer = reach_mergeable(self, a, b, succs)
        assert answer == grouping_of["current"].mergeable(a, b)
        asked.append(answer)
        return answer

    reach_mergeable = fusion._Reach.mergeable
    monkeypatch.setattr(fusion._Grouping, "__init__", remembering_init)
    monkeypatch.setattr(fusion._Reach, "mergeable", checked)
    program, _ = case
    fusion.fuse(optimize(program.graph))
    fusion.fuse(optimize(lstm_program(3).graph))
    assert True in asked and False in asked  # the LSTM's loops merge and refuse to


def kernels_of(module, name: str) -> list:
    """The kernel functions `<name>_step` calls, in schedule order."""
    step = module.get_global(f"{name}_step")
    calls = [i for block in step.blocks for i in block.instructions if isinstance(i, ir.CallInstr)]
    return [c.callee for c in calls if not c.callee.name.startswith("llvm.")]


def test_a_long_program_keeps_its_step_within_the_inline_budget():
    program = lstm_program(8)
    rng = np.random.default_rng(1)
    feed = {
        program.inputs[0]: rng.normal(size=(8, 2, 3)),
        program.inputs[1]: rng.normal(size=(2, 1)),
    }
    expected = gc.evaluate(program.outputs[0], feed)  # before the step updates the params
    step = gc.compile(program, cache=False)
    kernels = kernels_of(llvm.emit_program(*step._lowering.passes, "budget"), "budget")
    inlined = [f for f in kernels if "noinline" not in f.attributes]
    sizes = [instruction_count(f.blocks) for f in inlined]
    assert len(inlined) < len(kernels), "the budget keeps the later kernels out of line"
    assert sum(sizes[:-1]) <= llvm.STEP_INLINE_BUDGET  # the last one took it over
    assert kernels[: len(inlined)] == inlined  # in schedule order
    np.testing.assert_allclose(step(*feed.values()), expected, rtol=1e-12)


@pytest.mark.parametrize("steps", [1, 2])
def test_a_small_program_is_inlined_whole(steps):
    x = gc.input("x", (4, 3))
    model = gc.nn.Sequential([gc.nn.Dense(5, "relu"), gc.nn.Dense(2)], seed=0)
    loss = (model(x) ** 2).mean()
    program = gc.Program([x], loss, gc.optim.Adam(model.params()).updates(loss))
    step = gc.compile(program, cache=False, steps=steps)
    kernel_lines = [line for line in step.llvm_ir.splitlines() if line.startswith("define")]
    assert not any("noinline" in line and "_step" not in line for line in kernel_lines)
