"""simplify: constant folding, CSE, algebraic identities and dead-code elimination.

One sweep walks the graph in topological order with a memo `old node -> new node`.
Each node is first rebuilt over its inputs' new nodes (`with_inputs`), then rewritten,
then merged with an earlier structurally equal node (CSE):

    old:  a ─► mul(a, 1) ─► neg ─► neg ─► out        memo: mul  -> a
    new:  a ─────────────────────────────► out              neg2 -> a

    rewrite(node) = fold(node)            all inputs constant -> a constant
                 or RULES[node.op](node)  an identity, e.g. x * 1 -> x
                 or node

Sweeps repeat until one changes nothing (a rewrite may expose another: folding makes
constants, merging makes `where(c, x, x)`). Nodes are never mutated: new ones are built
under `location(node.loc)`, so dumps still point at the user's line, and a node that a
rewrite or a merge removes hands its name to its replacement if that has none (the first
name wins). Dead code disappears because the new `Graph` holds only what its outputs and
updates reach; the program's inputs are kept even when unused.

Constants. A *splat* is a constant with one value everywhere: `broadcast_to(const c)` (the
canonical form, which codegen emits as an immediate), or a uniform `const`, which is
rewritten to that form. Rules look through splats when they test for 0 or 1.

Every rewrite is exact in IEEE arithmetic, NaN, Inf and the sign of zero included, and
keeps the node's type; folding uses the op's NumPy `ref` and is skipped when NumPy's result
dtype differs from the node's. Hence `x * 0 -> 0` for integers only, `x + 0 -> x` only for
integers or a zero of -0.0 (-0.0 + +0.0 is +0.0), and no `pow(x, 0.5) -> sqrt x`
(pow(-inf, 0.5) is +inf, sqrt(-inf) nan; pow(-0.0, 0.5) is +0.0). `log(exp x) -> x` is
kept: it is exact where exp did not overflow and gives x where it did.
`stop_gradient` is removed: gradients are built when the graph is (before compilation),
so by the time simplify runs it only marks an identity.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from graphc.ir.graph import Graph, Node, location
from graphc.ir.ops import Kind, apply, is_const, is_variable, opdef
from graphc.ir.types import INTS, TensorType

FOLD_LIMIT = 4096  # fold only when the result and every input have at most this many elements
MAX_SWEEPS = 100


def simplify(graph: Graph) -> Graph:
    """The same computation with constants folded, duplicates merged and identities applied."""
    renames: dict[Node, str] = {}
    for _ in range(MAX_SWEEPS):
        graph, changed, renames = _sweep(graph, renames)
        if not changed:
            break
    return graph


def _sweep(graph: Graph, renames: dict) -> tuple[Graph, bool, dict]:
    """One pass over the nodes; returns the new graph, whether anything changed, and the
    names to give (in the next sweep) to nodes that replaced named ones."""
    memo: dict[Node, Node] = {}
    seen: dict[tuple, Node] = {}  # structural key -> first node with it
    next_renames: dict[Node, str] = {}
    changed = False
    for node in graph.nodes:
        inputs = tuple(memo[x] for x in node.inputs)
        new = node
        if node in renames:
            new = dataclasses.replace(node, inputs=inputs, name=renames[node])
        elif any(a is not b for a, b in zip(inputs, node.inputs)):
            new = node.with_inputs(inputs)
        if not is_variable(node):
            with location(node.loc):
                result = _rewrite(new)
            if result is not None and result.type == new.type:
                new = result
            new = seen.setdefault(_key(new), new)
        if node.name and new is not node and new.name is None and not _is_leaf(new):
            next_renames.setdefault(new, node.name)
        changed |= new is not node
        memo[node] = new
    outputs = [memo[n] for n in graph.outputs]
    updates = [(memo[p], memo[v]) for p, v in graph.updates]
    return graph.rebuild(outputs, updates), changed or bool(next_renames), next_renames


def _rewrite(node: Node) -> Node | None:
    """A node computing the same value as `node`, or None."""
    if is_const(node):
        # a uniform constant -> broadcast_to(const scalar)
        value = _value(node)
        return _splat(value, node.type) if value is not None and node.type.size > 1 else None
    folded = _fold(node)
    if folded is not None:
        return folded
    lower = opdef(node).lower
    if lower is not None:
        return lower(node)
    rule = RULES.get(node.op)
    return rule(node) if rule else None


# ---- constants ------------------------------------------------------------------------------


def _value(node: Node) -> np.ndarray | None:
    """The one value (a 0-d array) of a splat: a uniform const or broadcast_to(const scalar)."""
    if _is_broadcast(node) and is_const(node.inputs[0]):
        node = node.inputs[0]
    if not is_const(node) or node.type.size == 0:
        return None
    flat = node.attrs["value"].reshape(-1)
    if flat[1:].tobytes() != flat[:1].tobytes() * (flat.size - 1):
        return None
    return flat[0:1].reshape(())


def _is(node: Node, number, negative_zero: bool = False) -> bool:
    """Whether `node` is a splat of `number` (for float zeros: of that sign)."""
    value = _value(node)
    if value is None or value != number:
        return False
    if value.dtype.kind != "f" or number != 0:
        return True
    return bool(np.signbit(value)) == negative_zero


def _is_leaf(node: Node) -> bool:
    """A source: an op without inputs (input, param, const, iota)."""
    return opdef(node).arity == 0


def _is_broadcast(node: Node) -> bool:
    return opdef(node).kind == Kind.BROADCAST


def _moves_values(node: Node) -> bool:
    """A layout op whose every output element is an input element (splat in, splat out):
    a strided view or a reshape; not pad (its fill) or concat (several inputs)."""
    op = opdef(node)
    return op.view is not None or op.flat


def _array(node: Node) -> np.ndarray | None:
    if is_const(node):
        return node.attrs["value"]
    value = _value(node)
    return None if value is None else np.broadcast_to(value, node.shape)


def _const(value) -> Node:
    array = np.array(value)
    array.setflags(write=False)
    return apply("const", value=array)


def _splat(value: np.ndarray, type: TensorType) -> Node:
    scalar = _const(value)
    return scalar if type.shape == () else apply("broadcast_to", scalar, shape=type.shape)


def _fold(node: Node) -> Node | None:
    """`node` computed now, when its inputs are constants: all splats give a splat."""
    if _is_leaf(node) or (_is_broadcast(node) and node.inputs[0].shape == ()):
        return None  # already canonical
    values = [_value(x) for x in node.inputs]
    op = opdef(node)
    moves = _moves_values(node)
    if (op.kind == Kind.ELEMWISE or moves) and all(v is not None for v in values):
        with np.errstate(all="ignore"):
            result = values[0] if moves else op.ref(values, node.attrs)
        result = np.asarray(result)
        return _splat(result, node.type) if result.dtype == node.type.np_dtype else None
    arrays = [_array(x) for x in node.inputs]
    if any(a is None or a.size > FOLD_LIMIT for a in arrays) or node.type.size > FOLD_LIMIT:
        return None
    with np.errstate(all="ignore"):
        result = np.asarray(op.ref(arrays, node.attrs))
    if result.dtype != node.type.np_dtype or result.shape != node.shape:
        return None
    return _const(result)


# ---- common subexpressions ------------------------------------------------------------------


def _key(node: Node) -> tuple:
    """Equal for nodes that compute the same value: same op, inputs and attrs."""
    if is_variable(node):
        return ("source", node)
    attrs = tuple(sorted((name, _attr_key(value)) for name, value in node.attrs.items()))
    return (node.op, node.inputs, attrs, node.type)


def _attr_key(value) -> tuple:
    if isinstance(value, (np.ndarray, np.generic)):
        array = np.asarray(value)  # by bytes: NaN equals NaN, -0.0 differs from 0.0
        return ("array", array.dtype.str, array.shape, array.tobytes())
    if isinstance(value, float):
        return ("float", value.hex())
    if isinstance(value, (tuple, list)):
        return ("sequence", tuple(_attr_key(v) for v in value))
    if isinstance(value, (bool, int, str, type(None))):
        return (type(value).__name__, value)
    return ("object", id(value))


# ---- algebraic identities, keyed by op ------------------------------------------------------

RULES: dict[str, Callable[[Node], Node | None]] = {}


def rule(op: str):
    def register(function):
        RULES[op] = function
        return function

    return register


@rule("mul")
def _mul(node):
    a, b = node.inputs
    # x * 1 -> x,  1 * x -> x
    if _is(b, 1):
        return a
    if _is(a, 1):
        return b
    # x * 0 -> 0, integers only (for floats nan * 0 and inf * 0 are nan)
    if node.dtype in INTS:
        return b if _is(b, 0) else a if _is(a, 0) else None
    return None


@rule("add")
def _add(node):
    a, b = node.inputs
    # x + 0 -> x,  0 + x -> x  (floats: only -0.0, since -0.0 + +0.0 is +0.0)
    negative_zero = node.type.is_float
    if _is(b, 0, negative_zero):
        return a
    if _is(a, 0, negative_zero):
        return b
    return None


@rule("sub")
def _sub(node):
    a, b = node.inputs
    # x - 0 -> x  (floats: only +0.0, since -0.0 - -0.0 is +0.0)
    return a if _is(b, 0) else None


@rule("div")
def _div(node):
    a, b = node.inputs
    # x / 1 -> x
    return a if _is(b, 1) else None


@rule("neg")
def _neg(node):
    (x,) = node.inputs
    # neg(neg x) -> x
    return x.inputs[0] if x.op == "neg" else None


@rule("log")
def _log(node):
    (x,) = node.inputs
    # log(exp x) -> x
    return x.inputs[0] if x.op == "exp" else None


@rule("pow")
def _pow(node):
    x, exponent = node.inputs
    # pow(x, 1) -> x
    if _is(exponent, 1):
        return x
    # pow(x, 2) -> x * x   (pow(x, 0.5) -> sqrt x is not exact: see the module docstring)
    if _is(exponent, 2):
        return apply("mul", x, x)
    return None


@rule("reshape")
def _reshape(node):
    (x,) = node.inputs
    # reshape to same shape -> x
    if x.shape == node.shape:
        return x
    # reshape(reshape x) -> reshape x
    if x.op == "reshape":
        return apply("reshape", x.inputs[0], shape=node.shape)
    return None


@rule("transpose")
def _transpose(node):
    (x,) = node.inputs
    perm = tuple(node.attrs["perm"])
    # transpose(transpose x) -> transpose(composed perm)
    if x.op == "transpose":
        perm = tuple(x.attrs["perm"][p] for p in perm)
        x = x.inputs[0]
    # transpose by the identity perm -> x
    if perm == tuple(range(len(perm))):
        return x
    return apply("transpose", x, perm=perm) if x is not node.inputs[0] else None


@rule("broadcast_to")
def _broadcast_to(node):
    (x,) = node.inputs
    # broadcast to same shape -> x
    if x.shape == node.shape:
        return x
    # broadcast_to(broadcast_to x) -> broadcast_to x
    if x.op == "broadcast_to":
        return apply("broadcast_to", x.inputs[0], shape=node.shape)
    return None


@rule("cast")
def _cast(node):
    (x,) = node.inputs
    # cast to same dtype -> x
    return x if x.dtype == node.dtype else None


@rule("sum")
@rule("max")
def _reduce(node):
    (x,) = node.inputs
    # sum over no axes -> x,  max over no axes -> x
    return x if not node.attrs["axes"] else None


@rule("slice")
def _slice(node):
    (x,) = node.inputs
    # slice of everything -> x
    everything = ((0,) * x.type.ndim, x.shape, (1,) * x.type.ndim)
    sliced = tuple(tuple(node.attrs[k]) for k in ("starts", "stops", "steps"))
    return x if sliced == everything else None


@rule("pad")
def _pad(node):
    (x,) = node.inputs
    # pad by nothing -> x
    return x if all(tuple(w) == (0, 0, 0) for w in node.attrs["widths"]) else None


@rule("concat")
def _concat(node):
    # concat of one tensor -> x
    return node.inputs[0] if len(node.inputs) == 1 else None


@rule("where")
def _where(node):
    condition, a, b = node.inputs
    # where(c, x, x) -> x
    if a is b:
        return a
    # where(true, x, y) -> x,  where(false, x, y) -> y
    if _is(condition, True):
        return a
    if _is(condition, False):
        return b
    return None


@rule("stop_gradient")
def _stop_gradient(node):
    # stop_gradient x -> x  (simplify runs after differentiation)
    return node.inputs[0]
