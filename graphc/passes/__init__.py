"""The optimization pipeline: one explicit tuple of passes, run top to bottom.

Each pass is a pure function from graph to graph; `optimize(graph, verify=True)` checks
the verifier's contract ("valid IR in, valid IR out") after every one of them. Setting the
environment variable GRAPHC_VERIFY=1 (the test suite does) turns the checks on everywhere.
"""

from __future__ import annotations

import os

from graphc.ir.graph import Graph
from graphc.passes import simplify  # the module: `graphc.passes.simplify` stays importable

PIPELINE = (
    ("simplify", simplify.simplify),
    # fusion and memory planning are appended here, in the order they run
)


def optimize(graph: Graph, *, verify: bool | None = None) -> Graph:
    """Run every pass of PIPELINE in order, verifying the graph after each when asked."""
    if verify is None:
        verify = os.environ.get("GRAPHC_VERIFY", "") not in ("", "0")
    check = _verifier() if verify else None
    if check is not None:
        check(graph)
    for _name, run in PIPELINE:
        graph = run(graph)
        if check is not None:
            check(graph)
    return graph


def _verifier():
    """graphc.ir.verify.verify, or None while that module does not exist yet."""
    try:
        from graphc.ir.verify import verify
    except ImportError:
        return None
    return verify
