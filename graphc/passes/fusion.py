"""Fusion: group the nodes of a graph into kernels (DESIGN §4).

This first version makes one kernel per computing primitive and folds layout ops
(broadcast_to, reshape, transpose, slice, pad, concat, iota) into the index maps of the
kernels that read them, so a transpose or a broadcast never costs a copy. A layout node
gets a kernel of its own only when its value must exist in memory: it is a program
output or update, or a matmul reads it through a map that is not affine.

    x ─► transpose ─► matmul ─► add ◄─ broadcast_to ◄─ b
         └──── kernel "matmul" ──┘  └─── kernel "add" ───┘

Kernel forms: `loop` (elementwise + layout), `reduction` (sum/max/argmax with what it
reads), `contraction` (matmul with operands read in place).
"""

from __future__ import annotations

from graphc.ir.graph import Graph, Kernel, Node
from graphc.ir.ops import OPS, Kind

SOURCES = ("input", "param", "const")
LAYOUT = ("broadcast_to", "reshape", "transpose", "slice", "pad", "concat", "iota")
AFFINE = ("broadcast_to", "transpose", "slice")


def is_source(node: Node) -> bool:
    return node.op in SOURCES


def form_of(node: Node) -> str:
    kind = OPS[node.op].kind
    if kind == Kind.CONTRACTION:
        return "contraction"
    if kind == Kind.REDUCE:
        return "reduction"
    return "loop"


def affine_chain(node: Node) -> bool:
    """Whether a matmul can read `node` in place (a chain of affine layout ops over memory)."""
    while node.op in AFFINE:
        node = node.inputs[0]
    return node.op not in LAYOUT


def _materialized(graph: Graph) -> set[int]:
    """Nodes whose value must be stored: everything that is not a foldable layout op."""
    needed = {id(n) for n in graph.outputs} | {id(v) for _, v in graph.updates}
    for node in graph.nodes:
        if node.op == "matmul":
            for operand in node.inputs:
                if not affine_chain(operand):
                    needed.add(id(operand))
    return {
        id(n) for n in graph.nodes if not is_source(n) and (n.op not in LAYOUT or id(n) in needed)
    }


def fuse(graph: Graph) -> list[Kernel]:
    """Kernels covering the graph's computing nodes, in a valid schedule order."""
    stored = _materialized(graph)
    kernels, names = [], {}
    for node in graph.nodes:
        if id(node) not in stored:
            continue
        body, inputs = [], []
        _collect(node, stored, body, inputs, root=node, seen=set())
        label = node.name or node.op
        count = names.get(label, 0)
        names[label] = count + 1
        name = label if count == 0 else f"{label}.{count}"
        kernels.append(Kernel(name, form_of(node), tuple(body), tuple(inputs), (node,)))
    return kernels


def _collect(node, stored, body, inputs, root, seen):
    """Gather `node` and the foldable layout nodes it reads, inputs first."""
    if id(node) in seen:
        return
    seen.add(id(node))
    if node is not root and (id(node) in stored or is_source(node)):
        inputs.append(node)
        return
    for x in node.inputs:
        _collect(x, stored, body, inputs, root, seen)
    body.append(node)
