"""The pass pipeline, read top to bottom:

    graph ─► PIPELINE (simplify) ─► fuse ─► plan_memory ─► codegen
             graph -> graph          -> kernels  -> Plan

`PIPELINE` is the explicit tuple of graph-to-graph passes; `optimize(graph)` runs it. The
input graph is always verified first, whoever built it (frontend, `.gir` parser, a user's own
`Graph`): codegen trusts the types it is given, and an update whose value does not fit its
param would write past the param's buffer. Verifying costs ~10 µs a node, about 1 % of a
compile. When asked, the verifier's contract ("valid IR in, valid IR out") is also checked
after every pass and on the kernels; the environment variable GRAPHC_VERIFY=1 (the test suite
sets it) turns those checks on everywhere. `lower(graph)` is the whole pipeline up to codegen.
"""

from __future__ import annotations

import os

from graphc.ir.graph import Graph, Kernel
from graphc.ir.verify import verify as verify_graph
from graphc.passes import simplify  # the module: `graphc.passes.simplify` stays importable
from graphc.passes.fusion import fuse
from graphc.passes.memory import Plan, plan_memory

PIPELINE = (("simplify", simplify.simplify),)


def _verifying(verify: bool | None) -> bool:
    if verify is None:
        return os.environ.get("GRAPHC_VERIFY", "") not in ("", "0")
    return verify


def optimize(graph: Graph, *, verify: bool | None = None) -> Graph:
    """Verify `graph`, then run every pass of PIPELINE in order, verifying the graph after
    each when asked."""
    verify = _verifying(verify)
    verify_graph(graph)
    for _name, run in PIPELINE:
        graph = run(graph)
        if verify:
            verify_graph(graph)
    return graph


def lower(graph: Graph, *, verify: bool | None = None) -> tuple[Graph, list[Kernel], Plan]:
    """(optimized graph, its kernels in schedule order, their memory plan): codegen's input."""
    optimized = optimize(graph, verify=verify)
    kernels = fuse(optimized)
    if _verifying(verify):
        verify_graph(optimized, kernels)
    return optimized, kernels, plan_memory(optimized, kernels)
