"""Nodes and graphs: immutable, typed, in a deterministic topological order.

A `Node` is one application of a primitive (ir/ops.py) to input nodes; nodes are frozen
and compared by identity. A `Graph` is what a pass consumes and produces: its inputs,
its state (parameters), its outputs and its updates (parameter <- new value), with all
nodes listed in a topological order that depends only on how the graph was built, so the
same graph always prints the same text and hashes to the same cache key.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import dataclasses
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from graphc.ir.types import TensorType

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_UNSET = object()
_location_override: contextvars.ContextVar = contextvars.ContextVar(
    "graphc_location", default=_UNSET
)


class Storage:
    """The ndarray behind a parameter; executables read and update it in place.

    A slot, not a dict entry: a compiled step's native entry reads `value` at a fixed offset
    (runtime/python_entry.py) to see whether the array was replaced."""

    __slots__ = ("value", "__weakref__")  # weakly keyed: runtime's shared state locks

    def __init__(self, value: np.ndarray):
        self.value = value


@dataclass(frozen=True, eq=False)
class Node:
    """One primitive applied to input nodes; `attrs` must not be mutated."""

    op: str
    inputs: tuple[Node, ...]
    attrs: dict[str, Any] = field(repr=False)
    type: TensorType
    name: str | None = None
    loc: str | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return self.type.shape

    @property
    def dtype(self) -> str:
        return self.type.dtype

    @property
    def ndim(self) -> int:
        return len(self.type.shape)

    def with_inputs(self, inputs) -> Node:
        """The same node over other inputs (of the same types)."""
        return dataclasses.replace(self, inputs=tuple(inputs))

    def __deepcopy__(self, memo: dict) -> Node:
        """The node and its ancestors copied inputs first, without recursion: deepcopy's own
        follows `inputs` and reaches Python's recursion limit on deep graphs. Nodes already
        in `memo` are used as they are; `attrs` (a param's Storage and array) are deep-copied."""
        stack = [self]
        while stack:
            node = stack[-1]
            if id(node) in memo:
                stack.pop()
                continue
            waiting = [x for x in node.inputs if id(x) not in memo]
            if waiting:
                stack.extend(waiting)
                continue
            stack.pop()
            inputs = tuple(memo[id(x)] for x in node.inputs)
            attrs = copy.deepcopy(node.attrs, memo)
            memo[id(node)] = dataclasses.replace(node, inputs=inputs, attrs=attrs)
            memo.setdefault(id(memo), []).append(node)  # as deepcopy keeps originals alive
        return memo[id(self)]

    def __repr__(self) -> str:
        label = self.name or self.op
        return f"<Node {label}: {self.type}>"


def user_location() -> str | None:
    """`file:line` of the innermost caller outside the graphc package."""
    override = _location_override.get()
    if override is not _UNSET:
        return override
    frame = sys._getframe(1)
    while frame is not None:
        filename = os.path.abspath(frame.f_code.co_filename)
        if not filename.startswith(_PACKAGE_DIR + os.sep):
            shown = filename if filename.startswith("<") else os.path.relpath(filename)
            return f"{shown}:{frame.f_lineno}"
        frame = frame.f_back
    return None


@contextlib.contextmanager
def location(loc: str | None):
    """Nodes created inside this block carry `loc` (autodiff: the forward node's line)."""
    token = _location_override.set(loc)
    try:
        yield
    finally:
        _location_override.reset(token)


def topological_order(roots) -> list[Node]:
    """All nodes reachable from `roots`, inputs before users, deterministic."""
    order: list[Node] = []
    seen: set[Node] = set()
    for root in roots:
        if root in seen:
            continue
        stack = [(root, iter(root.inputs))]
        seen.add(root)
        while stack:
            node, pending = stack[-1]
            for child in pending:
                if child not in seen:
                    seen.add(child)
                    stack.append((child, iter(child.inputs)))
                    break
            else:
                stack.pop()
                order.append(node)
    return order


class Graph:
    """Inputs, state (params), outputs and updates over nodes in topological order."""

    def __init__(self, outputs, updates=(), inputs=None, name: str = "main"):
        self.outputs: tuple[Node, ...] = tuple(outputs)
        self.updates: tuple[tuple[Node, Node], ...] = tuple((p, v) for p, v in updates)
        self.name = name
        roots = [*self.outputs, *(v for _, v in self.updates), *(p for p, _ in self.updates)]
        if inputs is not None:
            roots = [*inputs, *roots]
        self.nodes: list[Node] = topological_order(roots)
        found = [n for n in self.nodes if n.op == "input"]
        self.inputs: tuple[Node, ...] = tuple(inputs) if inputs is not None else tuple(found)
        self.params: tuple[Node, ...] = tuple(n for n in self.nodes if n.op == "param")

    def users(self) -> dict[Node, list[Node]]:
        """node -> the nodes that read it, in topological order."""
        result: dict[Node, list[Node]] = {n: [] for n in self.nodes}
        for node in self.nodes:
            for x in node.inputs:
                if not result[x] or result[x][-1] is not node:
                    result[x].append(node)
        return result

    def to_networkx(self):
        """A networkx DiGraph view: one vertex per node id, edges input -> user."""
        import networkx as nx

        view = nx.DiGraph()
        for node in self.nodes:
            view.add_node(id(node), node=node)
            for x in node.inputs:
                view.add_edge(id(x), id(node))
        return view

    def rebuild(self, outputs, updates=None) -> Graph:
        """A graph over new outputs (and updates, else this graph's), same inputs and name."""
        if updates is None:
            updates = self.updates
        graph = Graph(outputs, updates, inputs=self.inputs, name=self.name)
        # keep the params in this graph's order: callers bind state to params by position,
        # and a rewrite (a lowered conv reads its weight first) may reorder the nodes
        present = set(graph.params)
        kept = [p for p in self.params if p in present]
        graph.params = (*kept, *(p for p in graph.params if p not in set(kept)))
        return graph

    def __str__(self) -> str:
        from graphc.ir.printer import print_graph

        return print_graph(self)

    def __repr__(self) -> str:
        return f"<Graph {self.name}: {len(self.nodes)} nodes>"


FORMS = ("loop", "reduction", "rowwise", "contraction", "collective", "scatter", "scan")


@dataclass(frozen=True, eq=False)
class Kernel:
    """A group of nodes compiled into one loop nest (DESIGN §4's kernel forms).

    Fusion only regroups: the body nodes are the graph's own nodes, so the interpreter
    runs a fused program by running its graph, and the printer shows each kernel as an
    indented block. `inputs` are values read from outside the kernel (sources or other
    kernels' outputs), `outputs` the body values needed outside it.
    """

    name: str
    form: str
    nodes: tuple[Node, ...]
    inputs: tuple[Node, ...]
    outputs: tuple[Node, ...]

    def __repr__(self) -> str:
        return f"<Kernel {self.name} ({self.form}): {len(self.nodes)} nodes>"
