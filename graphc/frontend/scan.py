"""`gc.scan`: a loop whose body is traced once (DESIGN §9; the primitive is ir/scan.py).

`scan(body, init, xs)` calls `body(carry, x)` once, on symbolic stand-ins for one step's
carry and slice of xs, and keeps what it builds as the loop's body graph. Values the body
reads from outside (params, the program's inputs, anything computed from them) become the
scan node's *captured* inputs, so gradients reach them and memory planning sees them;
values that change every step are those computed from the carry or x. Carries, xs and ys
may be pytrees of tuples and lists (and None for xs or ys).
"""

from __future__ import annotations

from graphc.errors import GraphcError, ShapeError
from graphc.frontend.tensor import Tensor, as_tensor
from graphc.ir.graph import Graph, Node, topological_order, user_location
from graphc.ir.scan import scan_nodes, substitute
from graphc.ir.types import TensorType


def _flatten(tree, what: str) -> tuple[list, object]:
    """(leaves, structure) of a pytree of tuples/lists; None is an empty tree."""
    if tree is None:
        return [], None
    if isinstance(tree, (tuple, list)):
        leaves, structure = [], []
        for item in tree:
            sub_leaves, sub = _flatten(item, what)
            leaves += sub_leaves
            structure.append((len(sub_leaves), sub))
        return leaves, (type(tree), structure)
    return [tree], "leaf"


def _unflatten(structure, leaves):
    if structure is None:
        return None
    if structure == "leaf":
        return leaves[0]
    kind, items = structure
    out, start = [], 0
    for count, sub in items:
        out.append(_unflatten(sub, leaves[start : start + count]))
        start += count
    return kind(out)


def _stand_in(name: str, node_type, taken: set[str]) -> Node:
    """A body input named `name` (made unique among `taken`)."""
    label, n = name, 0
    while label in taken:
        n += 1
        label = f"{name}.{n}"
    taken.add(label)
    return Node("input", (), {"shape": node_type.shape, "dtype": node_type.dtype}, node_type, label)


def _where() -> str:
    loc = user_location()
    return f" (at {loc})" if loc else ""


def scan(body, init, xs=None, length: int | None = None, reverse: bool = False):
    """`jax.lax.scan`: run `body(carry, x) -> (carry, y)` over the slices x of `xs` (stacked
    on axis 0; None: `length` steps without xs), from carry `init`; returns (the final
    carry, the ys stacked on axis 0). `reverse=True` walks xs from the end (ys keep xs's
    order). The body is traced once; the loop compiles to one native loop."""
    where = _where()
    init_leaves, init_shape = _flatten(init, "init")
    x_leaves, x_shape = _flatten(xs, "xs")
    init_tensors = [as_tensor(v) for v in init_leaves]
    x_tensors = [as_tensor(v) for v in x_leaves]
    for x in x_tensors:
        if not x.shape:
            raise ShapeError(f"scan: xs must have a leading axis to scan over, got {x.type}{where}")
    lengths = {x.shape[0] for x in x_tensors}
    if length is not None:
        lengths.add(length)
    if len(lengths) != 1:
        shapes = ", ".join(str(x.type) for x in x_tensors)
        raise ShapeError(
            f"scan: xs ({shapes}) and length={length} disagree on the number of steps{where}"
        )
    (steps,) = lengths
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ShapeError(f"scan: length must be a positive int, got {steps!r}{where}")

    taken: set[str] = set()
    carry_in = [_stand_in(f"carry{i}", t.type, taken) for i, t in enumerate(init_tensors)]
    x_in = [
        _stand_in(f"x{i}", TensorType(x.shape[1:], x.dtype), taken) for i, x in enumerate(x_tensors)
    ]
    result = body(
        _unflatten(init_shape, [Tensor(n) for n in carry_in]),
        _unflatten(x_shape, [Tensor(n) for n in x_in]),
    )
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise GraphcError(f"scan: body must return (carry, y), got {type(result).__name__}{where}")
    carry_out, y_out = result
    carry_leaves, carry_shape = _flatten(carry_out, "carry")
    if carry_shape != init_shape:
        raise ShapeError(
            f"scan: body returns a carry structured unlike init ({len(carry_leaves)} values "
            f"for {len(init_leaves)}){where}"
        )
    carry_nodes = []
    for i, (value, stand) in enumerate(zip(carry_leaves, carry_in)):
        t = as_tensor(value, Tensor(stand))
        if t.type != stand.type:
            raise ShapeError(
                f"scan: body returns carry {i} as {t.type} but init is {stand.type}{where}"
            )
        carry_nodes.append(t.node)
    y_leaves, y_shape = _flatten(y_out, "y")
    y_nodes = [as_tensor(v).node for v in y_leaves]
    outputs = [*carry_nodes, *y_nodes]

    # captured: values computed without the carry or x but from outside variables
    own = set(carry_in) | set(x_in)
    varying, outer = set(own), set()
    order = topological_order(outputs)
    for node in order:
        if node in own:
            continue
        if any(x in varying for x in node.inputs):
            varying.add(node)
        elif node.op in ("input", "param") or any(x in outer for x in node.inputs):
            outer.add(node)
    read = dict.fromkeys(x for n in order if n in varying for x in n.inputs if x in outer)
    read.update(dict.fromkeys(o for o in outputs if o in outer))
    captured = list(read)
    stand_ins = {
        c: _stand_in(c.name or f"captured{i}", c.type, taken) for i, c in enumerate(captured)
    }
    outputs = substitute(outputs, stand_ins)
    name = getattr(body, "__name__", "")
    name = name if name.isidentifier() else "body"
    graph = Graph(outputs, inputs=[*carry_in, *x_in, *stand_ins.values()], name=name)
    inputs = [*(t.node for t in init_tensors), *(x.node for x in x_tensors), *captured]
    nodes = scan_nodes(
        graph, inputs, len(carry_in), len(x_in), steps, bool(reverse), range(len(outputs))
    )
    tensors = [Tensor(n) for n in nodes]
    carry = _unflatten(init_shape, tensors[: len(carry_in)])
    return carry, _unflatten(y_shape, tensors[len(carry_in) :])
