"""The text form of a graph (`.gir`), printed; ir/parser.py reads it back.

One typed equation per line, jaxpr-like, with the user's names and source lines:

    graph train_step(%x: f32[32,5], %y: f32[32,1]) state(%dense1.w: f32[5,32]) {
      %0: f32[32,32] = matmul %x, %dense1.w                  # model.py:14
      %1: f32[] = const 2.0
      %h: f32[32,32] = broadcast_to %dense1.b {shape=(32,32)} # model.py:15
      return %loss
      update %dense1.w <- %41
    }

- Values print as `%name` when the name is a plain identifier (dots allowed), else quoted
  as a JSON string (`%"grad(dense1.w)"`). Unnamed nodes are numbered in print order
  (`%0`, `%1`, ...); a second node with a name already taken prints as `%h.1`, `%h.2`.
- Inputs and params are declared in the header, not as equations. Attributes follow the
  operands as `{key=value, ...}` sorted by key, in Python literal syntax (dtypes as bare
  words). Const values print inline, in full and exactly (shortest round-trip digits for the
  value's dtype; `nan`, `inf`, `-0.0` as such).
- With kernels, nodes outside every kernel print first; each kernel is an indented block
  `kernel NAME (FORM) (%in, ...) -> (%out, ...) { ... }` in schedule order.
- A loop's body (ir/scan.py) is a nested `graph NAME(...) { ... }` block, printed before the
  equations, whose scan nodes name it: `scan %h0, %xs, %w {body=NAME, ...}`.

The printer reads nodes, graphs and kernels only through their attributes, so it imports
nothing of the IR at run time: `Graph.__str__` can use it without an import cycle.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # annotations only
    from graphc.ir.graph import Graph, Node

DECLARED = ("input", "param")  # declared in the graph header, not as equations
PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.]*\Z")
_LOC_COLUMN_MAX = 72
WORDS = {"True": True, "False": False, "None": None, "nan": np.nan, "inf": np.inf, "-inf": -np.inf}
_HIDDEN_ATTRS = {"input": ("shape", "dtype"), "param": ("shape", "dtype", "storage")}
# op -> its stanza's `index_text` (ir/ops.py fills this as it registers each op)
INDEX_TEXT: dict = {}


# ---- printing -------------------------------------------------------------------------------


def quote(name: str) -> str:
    """`name` as it appears in the text: bare if a plain dotted identifier, else JSON-quoted."""
    return name if PLAIN_NAME.match(name) and name not in WORDS else json.dumps(name)


class Namer:
    """Unique labels for nodes: `%name`, `%name.1` on collision, `%N` for unnamed nodes."""

    def __init__(self):
        self.labels: dict[Node, str] = {}
        self.taken: set[str] = set()
        self.count = 0

    def __call__(self, node: Node) -> str:
        label = self.labels.get(node)
        if label is None:
            label = self._fresh(node.name)
            self.labels[node] = label
            self.taken.add(label)
        return label

    def _fresh(self, name: str | None) -> str:
        if name is None:
            self.count += 1
            return f"%{self.count - 1}"
        label, suffix = "%" + quote(name), 0
        while label in self.taken:
            suffix += 1
            label = "%" + quote(f"{name}.{suffix}")
        return label


def format_value(value) -> str:
    """An attribute value in Python literal syntax (tuples, numbers, bools, bare dtypes)."""
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    if isinstance(value, np.float32):
        return str(value)
    if isinstance(value, (float, np.floating)):
        return repr(float(value))
    if isinstance(value, str):
        return quote(value)
    if isinstance(value, (tuple, list)):
        items = [format_value(v) for v in value]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    if isinstance(value, np.ndarray):
        return format_array(value)
    return repr(value)


def format_array(array: np.ndarray) -> str:
    """Nested lists of exact scalars, e.g. `[[1.0, 2.0], [3.0, nan]]`; a scalar prints bare."""
    flat = [format_value(x) for x in array.ravel()]

    def nest(shape, start):
        if not shape:
            return flat[start]
        step = int(np.prod(shape[1:], dtype=np.int64))
        return "[" + ", ".join(nest(shape[1:], start + i * step) for i in range(shape[0])) + "]"

    return nest(array.shape, 0)


def _equation(node: Node, label, bodies=None) -> str:
    text = f"{label(node)}: {node.type} = {node.op}"
    attrs = dict(node.attrs)
    if "body" in attrs and bodies is not None:  # a loop's body graph, printed before its use
        attrs["body"] = _Word(bodies[id(attrs["body"])])
    if node.op == "const":
        text += " " + format_array(np.asarray(attrs.pop("value")))
    if node.inputs:
        text += " " + ", ".join(label(x) for x in node.inputs)
    shown = sorted(k for k in attrs if k not in _HIDDEN_ATTRS.get(node.op, ()))
    if shown:
        text += " {" + ", ".join(f"{k}={format_value(attrs[k])}" for k in shown) + "}"
    return text


class _Word(str):
    """A body's label: printed bare (or quoted) as a name, like a dtype."""

    def __repr__(self) -> str:
        return quote(self)


def _body_rows(nodes, locations: bool) -> tuple[list[tuple[str, str | None]], dict[int, str]]:
    """The nested `graph` blocks of the loop bodies `nodes` read (ir/scan.py), each under a
    label unique in this text, and the labels by body id."""
    labels: dict[int, str] = {}
    rows: list[tuple[str, str | None]] = []
    for node in nodes:
        body = node.attrs.get("body")
        if body is None or id(body) in labels:
            continue
        label, n = body.name, 0
        while label in labels.values():
            n += 1
            label = f"{body.name}.{n}"
        labels[id(body)] = label
        text = print_graph(body, locations=locations, name=label)
        rows += [("  " + line, None) for line in text.rstrip("\n").split("\n")]
    return rows, labels


def _note(node: Node, label) -> str | None:
    """The comment after an equation: the user's line, and for a layout op that says it
    (a window), which input element each output index reads."""
    text = INDEX_TEXT.get(node.op)
    if text is None or node.loc is None:
        return node.loc
    return f"{node.loc}  reads {text(node, label(node.inputs[0]))}"


def print_graph(
    graph: Graph, kernels=None, *, locations: bool = True, name: str | None = None
) -> str:
    """The text form of `graph`; with `kernels`, each kernel as an indented block; without
    `locations`, no `# file:line` comments (what the compile cache keys on: no generated
    code depends on them). Loop bodies print as nested `graph` blocks before the
    equations, and their scan nodes name them (`body=cell`); `name` overrides the graph's."""
    kernels = list(kernels or ())
    in_kernel = {n for k in kernels for n in k.nodes}
    top = [n for n in graph.nodes if n.op not in DECLARED and n not in in_kernel]
    label = Namer()
    for node in [*graph.inputs, *graph.params, *top, *(n for k in kernels for n in k.nodes)]:
        label(node)

    def decls(nodes):
        return ", ".join(f"{label(n)}: {n.type}" for n in nodes)

    header = f"graph {quote(name or graph.name)}({decls(graph.inputs)})"
    if graph.params:
        header += f" state({decls(graph.params)})"
    rows: list[tuple[str, str | None]] = [(header + " {", None)]
    nested, bodies = _body_rows(graph.nodes, locations)
    rows += nested
    rows += [("  " + _equation(n, label, bodies), _note(n, label)) for n in top]
    for k in kernels:
        ins, outs = ", ".join(map(label, k.inputs)), ", ".join(map(label, k.outputs))
        rows.append((f"  kernel {quote(k.name)} ({k.form}) ({ins}) -> ({outs}) {{", None))
        rows += [("    " + _equation(n, label, bodies), _note(n, label)) for n in k.nodes]
        rows.append(("  }", None))
    if graph.outputs:
        rows.append(("  return " + ", ".join(map(label, graph.outputs)), None))
    rows += [(f"  update {label(p)} <- {label(v)}", None) for p, v in graph.updates]
    rows.append(("}", None))
    if not locations:
        rows = [(t, None) for t, _ in rows]
    column = min(max((len(t) for t, loc in rows if loc), default=0), _LOC_COLUMN_MAX)
    lines = [t if loc is None else f"{t.ljust(column)}  # {loc}" for t, loc in rows]
    return "\n".join(lines) + "\n"
