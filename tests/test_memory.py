"""Memory planning (passes/memory.py): reuse figures of DESIGN §4 and plan invariants on
random graphs (no two simultaneously live buffers overlap; in place only where legal)."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from strategies import programs

import graphc as gc
from graphc.passes import optimize
from graphc.passes.fusion import fuse
from graphc.passes.kernels import identity_reads, loop_stages
from graphc.passes.memory import ALIGN, format_plan, plan_memory


def plan_of(program):
    graph = optimize(program.graph)
    kernels = fuse(graph)
    return graph, kernels, plan_memory(graph, kernels)


def mlp_training_step(sizes, batch):
    x, y = gc.input("x", (batch, sizes[0])), gc.input("y", (batch, sizes[-1]))
    model = gc.nn.MLP(hidden=sizes[1], layers=len(sizes) - 1, out=sizes[-1], seed=0)
    loss = gc.nn.mse_loss(model(x), y)
    return gc.Program([x, y], loss, gc.optim.Adam(model.params()).updates(loss))


def test_inference_chain_of_equal_width_layers_is_a_double_buffer():
    x = gc.input("x", (64, 256))
    model = gc.nn.Sequential([gc.nn.Dense(256, activation="relu", seed=i) for i in range(6)])
    _, kernels, plan = plan_of(gc.Program([x], model(x)))
    activation = 64 * 256 * 4
    assert len(kernels) == 6
    assert plan.arena_bytes <= 2 * activation
    assert len({s.offset for s in plan.slots}) == 2


def test_training_step_reuses_memory():
    _, _, plan = plan_of(mlp_training_step((64, 256, 256, 1), 256))
    assert plan.arena_bytes <= 1.25 * plan.lower_bound_bytes
    assert plan.arena_bytes < 0.6 * plan.naive_bytes


def test_adam_updates_are_written_into_the_parameters():
    graph, kernels, plan = plan_of(mlp_training_step((5, 32, 16, 1), 32))
    in_place = [v for p, v in graph.updates if plan.locations[v].kind == "param"]
    assert len(in_place) >= 2 * len(graph.updates) // 3
    text = format_plan(plan, kernels)
    assert "in place" in text and "arena_bytes=" in text and "lower_bound_bytes=" in text


def test_swapping_updates_still_swap():
    a = gc.param("a", np.array([1.0, 2.0]))
    b = gc.param("b", np.array([3.0, 4.0]))
    x = gc.input("x", (2,), "float64")
    step = gc.compile(inputs=[x], outputs=x * 2, updates={a: b, b: a})
    step(np.zeros(2))
    np.testing.assert_array_equal(a.value, [3.0, 4.0])
    np.testing.assert_array_equal(b.value, [1.0, 2.0])


def test_an_update_that_reads_another_param_transposed_is_not_in_place_too_early():
    w = gc.param("w", np.arange(9.0).reshape(3, 3))
    v = gc.param("v", np.ones((3, 3)))
    x = gc.input("x", (3, 3), "float64")
    updates = {w: w + v.T, v: v * 2 + w.T}
    want_w, want_v = w.value + v.value.T, v.value * 2 + w.value.T
    gc.compile(inputs=[x], outputs=x + 1, updates=updates)(np.zeros((3, 3)))
    np.testing.assert_array_equal(w.value, want_w)
    np.testing.assert_array_equal(v.value, want_v)


def check_plan(graph, kernels, plan):
    """No two simultaneously live buffers overlap; in-place sharing only where legal."""
    buffers = plan.buffers
    for buffer in buffers:
        assert buffer.offset % ALIGN == 0
        assert buffer.offset + buffer.nbytes <= plan.arena_bytes
    for i, p in enumerate(buffers):
        for q in buffers[i + 1 :]:
            if p.start <= q.end and q.start <= p.end:
                assert p.offset + p.nbytes <= q.offset or q.offset + q.nbytes <= p.offset
    assert plan.lower_bound_bytes <= plan.arena_bytes <= plan.naive_bytes
    produced = {id(n): k for k, kernel in enumerate(kernels) for n in kernel.outputs}
    for buffer in buffers:  # values sharing a buffer: each writer is the reader that kills it
        for before, after in zip(buffer.values, buffer.values[1:]):
            k = produced[id(after)]
            kernel = kernels[k]
            assert kernel.form == "loop" and before in kernel.inputs
            stage = next(i for i, (_, outs) in enumerate(loop_stages(kernel)) if after in outs)
            assert identity_reads(kernel)[before] == (stage, True)
            for later in kernels[k + 1 :]:
                assert before not in later.inputs
    param_index = {id(p): p for p in graph.params}
    for target, value in graph.updates:
        where = plan.locations.get(value)
        if where is not None and where.kind == "param" and value is not target:
            k = produced[id(value)]
            assert param_index[id(graph.params[where.index])] is target
            for later in kernels[k + 1 :]:
                assert target not in later.inputs
            assert target not in graph.outputs


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(programs(max_ops=14))
def test_random_plans_never_overlap_live_buffers(case):
    program, _ = case
    check_plan(*plan_of(program))


def test_training_step_plans_are_valid():
    for sizes in [(5, 32, 16, 1), (64, 256, 256, 1)]:
        check_plan(*plan_of(mlp_training_step(sizes, 32)))
