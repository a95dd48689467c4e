"""Differentiation by graph extension: adjoint (reverse) and tangent (forward) nodes.

`differentiate(y, wrt, seed)` walks the graph in reverse topological order from `y` and
asks each op's stanza for the adjoints of its inputs, as new nodes built from primitives:

    forward:  x ──► mul ──► sin ──► y            reverse:  ḡ(y)=seed ──► ḡ·cos ──► ḡ·w ──► x̄

Only nodes on a path from some `wrt` to `y` get adjoints. Where a value fans out the
partial adjoints are summed (`add`); broadcasting is undone in one place, the
`broadcast_to` rule. The result is an ordinary graph, so it can be printed, optimized,
compiled and differentiated again. `forward_tangents(ys, seeds)` is forward mode the same way.
Adjoint nodes carry the source line of the forward node they come from.
"""

from __future__ import annotations

import dataclasses

from graphc.errors import DTypeError, GraphcError, ShapeError
from graphc.ir import scan
from graphc.ir.graph import Node, location, topological_order
from graphc.ir.ops import OPS, add_all, apply, full, is_variable, mul
from graphc.ir.types import FLOATS


def _label(node: Node) -> str:
    return node.name or f"{node.op}@{node.loc or '?'}"


def _check_differentiable(node: Node, role: str):
    if node.dtype not in FLOATS:
        raise DTypeError(
            f"grad: cannot differentiate {role} {_label(node)} of dtype {node.dtype}; "
            f"only float32/float64 values have gradients"
        )


def _named(node: Node, name: str) -> Node:
    if is_variable(node):
        return node
    return dataclasses.replace(node, name=name)


def input_adjoints(node: Node, g: Node) -> list[Node | None]:
    """The adjoint contribution of `node`'s output adjoint `g` to each of its inputs."""
    opdef = OPS[node.op]
    if opdef.partials is not None:
        return [mul(g, p) for p in opdef.partials(node)]
    if opdef.vjp is not None:
        return opdef.vjp(node, g)
    return [None] * len(node.inputs)


def differentiate(y: Node, wrt: list[Node], seed: Node | None = None) -> list[Node]:
    """Adjoint nodes d(seed·y)/d(w) for each w in `wrt` (zeros where y does not depend on w)."""
    _check_differentiable(y, "output")
    if seed is None:
        if y.shape != ():
            raise ShapeError(
                f"grad: output {_label(y)} has shape {y.shape}; pass seed= for a non-scalar output"
            )
        seed = full(1.0, y)
    elif seed.shape != y.shape or seed.dtype != y.dtype:
        raise ShapeError(f"grad: seed {seed.type} does not match output {y.type}")
    return differentiate_all([y], [seed], wrt)


def differentiate_all(ys: list[Node], seeds: list[Node], wrt: list[Node]) -> list[Node]:
    """Adjoint nodes d(Σ seed_k·y_k)/d(w) for each w in `wrt` (a loop body's adjoint:
    ir/scan.py); zeros where no y depends on w."""
    for w in wrt:
        _check_differentiable(w, "argument")
    order = topological_order(ys)
    wanted = set(wrt)
    on_path = set(wanted)  # nodes that depend on some wrt
    for node in order:
        if any(x in on_path for x in node.inputs):
            on_path.add(node)

    partial: dict[Node, list[Node]] = {}
    for y, seed in zip(ys, seeds):
        partial.setdefault(y, []).append(seed)
    # nodes computed together (a loop's results, OpDef.together) get one vjp call, at the
    # first of them in topological order: by then every user of any of them is done
    first: dict = {}
    for node in order:
        key = _together(node)
        if key is not None:
            first.setdefault(key, node)
    pending: dict = {}  # together key -> {node: its adjoint}
    adjoint: dict[Node, Node] = {}
    for node in reversed(order):
        terms = partial.pop(node, None)
        key = _together(node)
        fires = key is not None and first[key] is node and key in pending
        if node not in on_path or (terms is None and not fires):
            continue
        with location(node.loc):
            if terms is not None:
                g = add_all(terms)
                if node in wanted:
                    g = _named(g, f"grad({_label(node)})")
                    adjoint[node] = g
            if not OPS[node.op].differentiable or not node.inputs:
                continue
            if key is None:
                contributions = input_adjoints(node, g)
            else:
                if terms is not None:
                    pending.setdefault(key, {})[node] = g
                if first[key] is not node:
                    continue
                contributions = OPS[node.op].vjp(node, pending.pop(key))
            for x, gx in zip(node.inputs, contributions):
                if gx is not None and x in on_path and x.dtype in FLOATS:
                    partial.setdefault(x, []).append(gx)
    return [adjoint[w] if w in adjoint else full(0.0, w) for w in wrt]


def _together(node: Node):
    together = OPS[node.op].together
    return None if together is None else together(node)


def tangent_of(node: Node, tangents: list[Node | None]) -> Node | None:
    """The tangent of `node`'s output given its inputs' tangents (None = zero)."""
    opdef = OPS[node.op]
    if not opdef.differentiable or node.dtype not in FLOATS:
        return None
    if opdef.jvp is not None:
        return opdef.jvp(node, tangents)
    if opdef.partials is not None:
        return add_all(mul(t, p) for t, p in zip(tangents, opdef.partials(node)) if t is not None)
    if opdef.linear:
        # a linear op's tangent is the op applied to its inputs' tangents
        filled = [t if t is not None else full(0.0, x) for t, x in zip(tangents, node.inputs)]
        return apply(node.op, *filled, **node.attrs)
    raise GraphcError(f"jvp: no tangent rule for {node.op} (at {node.loc})")


def forward_tangents(ys: list[Node], seeds: dict[Node, Node]) -> list[Node]:
    """Tangent nodes of `ys` for the tangent `seeds` of inputs/params (forward mode)."""
    for x, t in seeds.items():
        _check_differentiable(x, "argument")
        if t.shape != x.shape:
            raise ShapeError(f"jvp: tangent {t.type} does not match {_label(x)} {x.type}")
    tangent: dict[Node, Node] = dict(seeds)
    for node in topological_order(ys):
        if node in tangent or not node.inputs:
            continue
        inputs = [tangent.get(x) for x in node.inputs]
        if all(t is None for t in inputs):
            continue
        with location(node.loc):
            t = tangent_of(node, inputs)
        if t is not None:
            tangent[node] = t
    return [tangent.get(y) or full(0.0, y) for y in ys]


# the loop's rules (ir/scan.py) differentiate its body with these
scan.RULES.update(differentiate=differentiate_all, tangents=forward_tangents)
