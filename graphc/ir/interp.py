"""The reference interpreter: runs any graph with each op's NumPy `ref`.

It is the oracle every pass and the code generator are tested against, so it stays
simple: one pass over the nodes in topological order, one NumPy call per node.
"""

from __future__ import annotations

import contextvars

import numpy as np

from graphc.errors import InputError
from graphc.ir.graph import Graph, Node, topological_order
from graphc.ir.ops import OPS

_MEMO: contextvars.ContextVar = contextvars.ContextVar("graphc_interp_memo", default=None)


def run_memo() -> dict | None:
    """A dict that lives as long as the innermost `run_nodes` call (None outside one): the
    nodes of one loop (ir/scan.py) compute its results once per run."""
    return _MEMO.get()


def run_nodes(roots, feed: dict[Node, np.ndarray]) -> dict[Node, np.ndarray]:
    """Values of every node reachable from `roots`; `feed` supplies inputs (and may override)."""
    token = _MEMO.set({})
    try:
        return _run(roots, feed)
    finally:
        _MEMO.reset(token)


def _run(roots, feed: dict[Node, np.ndarray]) -> dict[Node, np.ndarray]:
    env: dict[Node, np.ndarray] = {}
    for node in topological_order(roots):
        if node in feed:
            env[node] = feed[node]
        elif node.op == "input":
            raise InputError(f"no value fed for input {node.name!r} ({node.type})")
        elif node.op == "param":
            env[node] = node.attrs["storage"].value
        else:
            with np.errstate(all="ignore"):
                try:
                    value = OPS[node.op].ref([env[x] for x in node.inputs], node.attrs)
                except InputError as error:  # a value the op refuses (take: an index)
                    raise InputError(f"{error} (at {node.loc or '?'})") from None
            env[node] = np.asarray(value, dtype=node.type.np_dtype).reshape(node.shape)
    return env


def interpret(graph: Graph, feed: dict[Node, np.ndarray]) -> tuple[list, list]:
    """(output values, update values) of `graph`; updates are computed, not applied."""
    roots = [*graph.outputs, *(v for _, v in graph.updates)]
    env = run_nodes(roots, feed)
    return [env[n] for n in graph.outputs], [env[v] for _, v in graph.updates]
