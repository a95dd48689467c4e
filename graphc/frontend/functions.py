# Over 500 lines on purpose: one module for the functions that apply one primitive and the
# program-level entry points (grad, jvp, evaluate, Program, compile) that share its helpers.
"""Functions of the public API: primitives, differentiation, evaluation, Program, compile.

The math here applies one primitive each (`exp`, `maximum`, `where`, `concat` ...), with
NumPy's promotion, broadcasting and casts around it. Functions built from several
primitives (`relu`, `softmax`, `one_hot` ...) are in composites.py, which builds on this
module; `matmul` sits with the Tensor operators in tensor.py.
"""

from __future__ import annotations

import numbers
import weakref

import numpy as np

from graphc.errors import DTypeError, GraphcError, InputError, ShapeError
from graphc.frontend.tensor import (
    ARRAY_INDEXING,
    UFUNCS,
    Tensor,
    as_tensor,
    binary,
    broadcast,
    broadcast_to,
    const,
    float_unary,
    normalize_axes,
    promote,
    unary,
)
from graphc.ir.graph import Graph, Node, Storage, location, topological_order, user_location
from graphc.ir.interp import run_nodes
from graphc.ir.ops import OPS, OpDef, apply
from graphc.ir.types import FLOATS
from graphc.passes import autodiff
from graphc.runtime.executable import Executable


def _math_function(op: OpDef):
    """`gc.<op>(x)`: a unary op with a math routine applied elementwise, integers becoming
    float64 as in NumPy; documented by its stanza."""

    def function(x) -> Tensor:
        return float_unary(op.name, x)

    function.__name__ = function.__qualname__ = op.name
    function.__doc__ = op.doc
    return function


# exp, log, log1p, sin, cos, tanh, sqrt, sigmoid, atan ...: every unary op of the registry
# with a vectorized math routine is a public function (adding one touches ir/ops.py only)
MATH_FUNCTIONS = {
    op.name: _math_function(op) for op in OPS.values() if op.math is not None and op.arity == 1
}
globals().update(MATH_FUNCTIONS)
UFUNCS.update(MATH_FUNCTIONS)  # np.exp(t) is gc.exp(t)
UFUNCS["arctan"] = MATH_FUNCTIONS["atan"]


def abs(x) -> Tensor:  # noqa: A001 (NumPy's name)
    """|x|, elementwise."""
    return unary("abs", x)


def sign(x) -> Tensor:
    """-1, 0 or 1 by the sign of x, elementwise."""
    return unary("sign", x)


def maximum(a, b) -> Tensor:
    """The larger of a and b, elementwise, with broadcasting."""
    return binary("maximum", a, b)


def minimum(a, b) -> Tensor:
    """The smaller of a and b, elementwise, with broadcasting."""
    return binary("minimum", a, b)


UFUNCS.update(absolute=abs, sign=sign, maximum=maximum, minimum=minimum)


def _rounding(op: str, doc: str):
    """`gc.floor` ...: integers (and bools) are returned as they are, as NumPy 2 does."""

    def function(x) -> Tensor:
        x = as_tensor(x)
        return x if x.dtype not in FLOATS else unary(op, x)

    function.__name__ = function.__qualname__ = op
    function.__doc__ = doc
    return function


floor = _rounding("floor", "The largest integer <= x, elementwise (gradient 0).")
ceil = _rounding("ceil", "The smallest integer >= x, elementwise (gradient 0).")
_round_half_even = _rounding("round", "")


def round(x, decimals: int = 0, *, out=None) -> Tensor:  # noqa: A001 (NumPy's name)
    """x rounded to `decimals` decimals, halves to even, as np.round (gradient 0)."""
    x = as_tensor(x)
    if out is not None:
        raise GraphcError("round: out= is not supported (a Tensor is symbolic: use the result)")
    if isinstance(decimals, bool) or not isinstance(decimals, numbers.Integral):
        raise GraphcError(
            f"round: decimals must be an int, got {decimals!r} (at {user_location()})"
        )
    if decimals == 0 or (x.dtype not in FLOATS and decimals > 0):
        return _round_half_even(x)
    if x.dtype not in FLOATS:  # np.round(ints, -1): to tens, halves to even, still ints
        return round(x.astype("float64"), decimals).astype(x.dtype)
    scale = 10.0 ** (int(decimals) if decimals > 0 else -int(decimals))  # (abs is gc.abs here)
    if decimals > 0:
        return _round_half_even(x * scale) / scale
    return _round_half_even(x / scale) * scale


def remainder(a, b) -> Tensor:
    """a % b with NumPy's sign rule (the sign of b), floats and integers, with broadcasting."""
    return binary("remainder", a, b)


def floor_divide(a, b) -> Tensor:
    """a // b rounded toward -inf, as NumPy (integer // 0 is 0), with broadcasting."""
    return binary("floor_divide", a, b)


UFUNCS.update(
    floor=floor, ceil=ceil, rint=round, remainder=remainder, mod=remainder,
    floor_divide=floor_divide,
)  # fmt: skip


def stop_gradient(x) -> Tensor:
    """x, through which no gradient flows."""
    return unary("stop_gradient", x)


def where(cond, a, b) -> Tensor:
    """Elementwise `a` where `cond` else `b`, with broadcasting."""
    cond = as_tensor(cond)
    if cond.dtype != "bool":
        cond = cond != 0
    a, b = promote(a, b)
    cond, a, b = broadcast("where", cond, a, b)
    return Tensor(apply("where", cond.node, a.node, b.node))


def concat(tensors, axis=0) -> Tensor:
    """Join tensors along an existing axis."""
    tensors = promote(*tensors)
    (axis,) = normalize_axes(axis, tensors[0].ndim, "concat")
    if len(tensors) == 1:
        return tensors[0]
    return Tensor(apply("concat", *[t.node for t in tensors], axis=axis))


def _new_axes(axis, ndim: int, op: str) -> tuple[int, ...]:
    """NumPy's `axis` of expand_dims for a result of rank `ndim`: sorted, distinct."""
    axes = (axis,) if isinstance(axis, numbers.Integral) else tuple(axis)
    result = normalize_axes(axes, ndim, op)
    if len(set(result)) != len(result):
        raise ShapeError(f"{op}: repeated axis in {axes} (at {user_location()})")
    return result


def expand_dims(x, axis) -> Tensor:
    """x with new axes of length 1 at `axis` (an int or a tuple, as np.expand_dims)."""
    x = as_tensor(x)
    axes = _new_axes(axis, x.ndim + (1 if isinstance(axis, numbers.Integral) else len(axis)),
                     "expand_dims")  # fmt: skip
    sizes = iter(x.shape)
    return x.reshape(tuple(1 if i in axes else next(sizes) for i in range(x.ndim + len(axes))))


def squeeze(x, axis=None) -> Tensor:
    """x without its axes of length 1 (or only `axis`, each of which must have length 1)."""
    x = as_tensor(x)
    if axis is None:
        axes = tuple(i for i, d in enumerate(x.shape) if d == 1)
    else:
        axes = normalize_axes(axis, x.ndim, "squeeze")
        wide = [a for a in axes if x.shape[a] != 1]
        if wide:
            raise ShapeError(
                f"squeeze: axis {wide[0]} of {x.type} has length {x.shape[wide[0]]}, not 1 "
                f"(at {user_location()})"
            )
    return x.reshape(tuple(d for i, d in enumerate(x.shape) if i not in axes))


Tensor.squeeze = squeeze
Tensor.round = round


# ---- gather and scatter ---------------------------------------------------------------------


def _indices(indices, size: int, axis: int, op: str) -> Tensor:
    """An integer index Tensor; NumPy indices (a list, an array, an int) are checked against
    the axis `size` here, at the user's line, and become an int64 constant."""
    if isinstance(indices, Tensor):
        return indices
    array = np.asarray(indices)
    if array.dtype.kind not in "iu":
        raise DTypeError(
            f"{op}: indices must be integers, got {array.dtype} (at {user_location()})"
        )
    bad = (array < -size) | (array >= size)
    if bad.any():
        raise InputError(
            f"{op}: index {int(array[bad].flat[0])} is out of range for axis {axis} of size "
            f"{size} (at {user_location()})"
        )
    return const(array.astype(np.int64))


def take(a, indices, axis=0) -> Tensor:
    """`a`'s slices at `indices` along `axis` (np.take): the result has `a`'s shape with that
    axis replaced by the indices' shape. Negative indices count from the end; an index out
    of range makes the call raise InputError (compiled code never reads out of bounds)."""
    a = as_tensor(a)
    (axis,) = normalize_axes(axis, a.ndim, "take")
    indices = _indices(indices, a.shape[axis] if a.ndim else 0, axis, "take")
    return Tensor(apply("take", a.node, indices.node, axis=axis))


def scatter_add(a, indices, updates, axis=0) -> Tensor:
    """A copy of `a` with each slice of `updates` added at its index along `axis`, repeated
    indices accumulating (np.add.at; take's adjoint). `updates` broadcasts to the shape of
    take(a, indices, axis); indices as in take."""
    a, updates = promote(a, updates)
    (axis,) = normalize_axes(axis, a.ndim, "scatter_add")
    indices = _indices(indices, a.shape[axis] if a.ndim else 0, axis, "scatter_add")
    shape = a.shape[:axis] + indices.shape + a.shape[axis + 1 :]
    if updates.shape != shape and _broadcasts(updates.shape, shape):
        updates = broadcast_to(updates, shape)
    return Tensor(apply("scatter_add", a.node, indices.node, updates.node, axis=axis))


def _take_index(x: Tensor, index: tuple) -> Tensor:
    """`x[..., indices, ...]` with one integer index tensor (or array) and `:` elsewhere."""
    arrays = [i for i, item in enumerate(index) if isinstance(item, (Tensor, np.ndarray, list))]
    rest = [item for i, item in enumerate(index) if i not in arrays]
    full = [item is Ellipsis or item == slice(None) for item in rest]
    if len(arrays) != 1 or not all(full) or rest.count(Ellipsis) > 1:
        raise GraphcError(
            "indexing with an index tensor takes one integer index tensor and ':' on the "
            f"other axes (x[i], x[:, i], x[..., i]); combine gc.take and slices for more "
            f"(at {user_location()})"
        )
    (at,) = arrays
    if Ellipsis in index[:at]:
        axis = x.ndim - (len(index) - at)
    else:
        axis = at
    item = index[at]
    if (item.dtype if isinstance(item, Tensor) else np.asarray(item).dtype) == "bool":
        raise GraphcError(
            f"boolean mask indexing is not supported; use gc.where (at {user_location()})"
        )
    return take(x, item, axis=axis)


def _broadcasts(shape, to) -> bool:
    try:
        return np.broadcast_shapes(shape, to) == tuple(to)
    except ValueError:
        return False


ARRAY_INDEXING["take"] = _take_index


# ---- differentiation ------------------------------------------------------------------------


def _tensor_list(wrt):
    single = isinstance(wrt, Tensor)
    items = [wrt] if single else list(wrt)
    for item in items:
        if not isinstance(item, Tensor):
            raise GraphcError(f"expected Tensors, got {type(item).__name__}")
    return single, items


def grad(y, wrt, seed=None):
    """Adjoints of `y` with respect to `wrt` (a Tensor gives a Tensor, a list a list)."""
    single, items = _tensor_list(wrt)
    y = as_tensor(y)
    seed_node = None if seed is None else as_tensor(seed, y).astype(y.dtype).node
    result = [Tensor(n) for n in autodiff.differentiate(y.node, [t.node for t in items], seed_node)]
    return result[0] if single else result


def jvp(ys, tangents):
    """Forward-mode tangents of `ys` given `{input_or_param: tangent}`."""
    single, items = _tensor_list(ys)
    seeds = {}
    for x, t in tangents.items():
        t = as_tensor(t, x)
        seeds[as_tensor(x).node] = t.astype(x.dtype).node
    result = [Tensor(n) for n in autodiff.forward_tangents([y.node for y in items], seeds)]
    return result[0] if single else result


# ---- evaluation -----------------------------------------------------------------------------


def convert_argument(node, value, what="input") -> np.ndarray:
    """Check a fed value against an input node: exact shape, `same_kind` dtype conversion."""
    array = np.asarray(value)
    if array.shape != node.shape:
        raise InputError(
            f"{what} {node.name!r}: expected shape {node.shape} ({node.type}), got {array.shape}"
        )
    if array.dtype != node.type.np_dtype:
        if not np.can_cast(array.dtype, node.type.np_dtype, "same_kind"):
            raise DTypeError(
                f"{what} {node.name!r}: cannot convert {array.dtype} to {node.dtype} "
                f"(same_kind casting)"
            )
        array = array.astype(node.type.np_dtype)
    return array


def resolve_feed(feed, inputs) -> dict:
    """Map a feed keyed by input Tensor or input name onto input nodes."""
    by_name = {n.name: n for n in inputs}
    result = {}
    for key, value in (feed or {}).items():
        if isinstance(key, Tensor):
            node = key.node
            if node.op != "input":
                raise InputError(f"feed key {key!r} is not an input")
        elif isinstance(key, str):
            if key not in by_name:
                raise InputError(f"unknown input name {key!r}; inputs are {sorted(by_name)}")
            node = by_name[key]
        else:
            raise InputError(f"feed keys must be input Tensors or names, got {key!r}")
        result[node] = convert_argument(node, value)
    return result


def evaluate(outputs, feed=None):
    """Run `outputs` on the reference interpreter (array for a Tensor, list for a list)."""
    single, items = _tensor_list(outputs)
    nodes = [t.node for t in items]
    inputs = [n for n in topological_order(nodes) if n.op == "input"]
    env = run_nodes(nodes, resolve_feed(feed, inputs))
    values = [np.array(env[n]) for n in nodes]
    return values[0] if single else values


def check_grad(y, wrt, feed=None, *, eps=1e-6, rtol=1e-5, atol=1e-7):
    """Compare `grad(y, wrt)` with central differences; returns the max error, raises if off.

    The analytic gradient is evaluated in the model's dtype; the finite differences always
    in float64, on a copy of the graph whose float32 inputs, params, consts and casts are
    float64 (a float32 difference quotient with eps=1e-6 would be mostly rounding error).
    """
    single, items = _tensor_list(wrt)
    y = as_tensor(y)
    if y.shape != ():
        raise ShapeError(f"check_grad: y must be a scalar, got {y.type}")
    for w in items:
        if w.node.op not in ("input", "param"):
            raise GraphcError(f"check_grad: {w!r} is not an input or param")
    grads = evaluate(grad(y, items), feed)
    wide = _in_float64([y.node, *(w.node for w in items)])
    y = Tensor(wide[y.node])
    feed = {
        Tensor(wide[k.node]) if isinstance(k, Tensor) and k.node in wide else k: v
        for k, v in (feed or {}).items()
    }
    worst = 0.0
    for w, analytic in zip([Tensor(wide[w.node]) for w in items], grads):
        base = np.array(w.value if w.node.op == "param" else _fed(feed, w), dtype=w.dtype)
        numeric = np.zeros_like(base)
        for i in np.ndindex(base.shape):
            values = []
            for sign in (1, -1):
                shifted = base.copy()
                shifted[i] += sign * eps
                values.append(float(_eval_with(y, w, shifted, feed)))
            numeric[i] = (values[0] - values[1]) / (2 * eps)
        error = np.abs(numeric - analytic)
        worst = max(worst, float(error.max(initial=0.0)))
        if not np.all(error <= atol + rtol * np.abs(numeric)):
            raise AssertionError(
                f"check_grad: gradient of {w.name or w!r} differs from finite differences:\n"
                f"analytic:\n{analytic}\nnumeric:\n{numeric}"
            )
    return worst


def _in_float64(roots) -> dict[Node, Node]:
    """A copy of the graph of `roots` computing in float64 where it computed in float32:
    {node: its copy}; a float32 param's copy holds a float64 copy of its value."""
    copies: dict[Node, Node] = {}
    bodies: dict[Graph, Graph] = {}
    for node in topological_order(roots):
        attrs = dict(node.attrs)
        if isinstance(attrs.get("body"), Graph):  # a loop's body (gc.scan): in float64 too
            body = attrs["body"]
            if body not in bodies:
                inside = _in_float64([*body.inputs, *body.outputs])
                outputs = [inside[o] for o in body.outputs]
                inputs = [inside[i] for i in body.inputs]
                bodies[body] = Graph(outputs, inputs=inputs, name=body.name)
            attrs["body"] = bodies[body]
        if attrs.get("dtype") == "float32":
            attrs["dtype"] = "float64"
        if node.op == "const" and node.dtype == "float32":
            attrs["value"] = attrs["value"].astype(np.float64)
            attrs["value"].setflags(write=False)
        if node.op == "param" and node.dtype == "float32":
            attrs["storage"] = Storage(attrs["storage"].value.astype(np.float64))
        with location(node.loc):
            copies[node] = apply(
                node.op, *[copies[x] for x in node.inputs], name=node.name, **attrs
            )
    return copies


def _is_key_of(key, w) -> bool:
    """Whether a feed key (input Tensor or name) denotes `w`; never `==` on a Tensor."""
    return key == w.name if isinstance(key, str) else getattr(key, "node", None) is w.node


def _fed(feed, w):
    for key, value in feed.items():
        if _is_key_of(key, w):
            return value
    raise InputError(f"check_grad: no value fed for {w.name!r}")


def _eval_with(y, w, value, feed):
    if w.node.op == "param":
        storage = w.node.attrs["storage"]
        saved = storage.value
        storage.value = value
        try:
            return evaluate(y, feed)
        finally:
            storage.value = saved
    feed = {k: v for k, v in feed.items() if not _is_key_of(k, w)}
    feed[w] = value
    return evaluate(y, feed)


# ---- programs -------------------------------------------------------------------------------


# State a step advances by itself: param node -> its next value (random.py registers each
# gc.random.key: [seed, step] -> [seed, step + 1]).
ADVANCES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _advances(outputs, updates) -> list[tuple[Tensor, Tensor]]:
    """Updates of the self-advancing state (random keys) the step reads and does not update."""
    targets = {target.node for target, _ in updates}
    roots = [o.node for o in outputs] + [value.node for _, value in updates]
    return [
        (Tensor(node), Tensor(ADVANCES[node](node)))
        for node in topological_order(roots)
        if node in ADVANCES and node not in targets
    ]


class Program:
    """The arguments of `compile`: inputs, outputs and updates of one step (and the update
    of every random key it reads, which advances by one step per call)."""

    def __init__(self, inputs, outputs, updates=None, name=None):
        if isinstance(inputs, Tensor):  # one input, as outputs may be one Tensor
            inputs = [inputs]
        if isinstance(inputs, str) or not hasattr(inputs, "__iter__"):
            raise InputError(
                f"Program inputs must be a list of gc.input tensors, got {inputs!r}: "
                f"write inputs=[x, y]"
            )
        if outputs is None:
            raise InputError(
                "Program needs outputs: a Tensor (the step returns one array) or a list of "
                "Tensors (a list of arrays); outputs=[] for a step that only applies updates"
            )
        self.inputs = list(inputs)
        for x in self.inputs:
            if not isinstance(x, Tensor) or x.node.op != "input":
                raise InputError(f"Program inputs must be gc.input tensors, got {x!r}")
        names = [x.name for x in self.inputs]
        if len(set(names)) != len(names):
            raise InputError(f"Program inputs have duplicate names: {names}")
        self.single_output = isinstance(outputs, Tensor)
        self.outputs = [outputs] if self.single_output else [as_tensor(o) for o in outputs]
        self.updates = []
        for target, value in (updates or {}).items():
            if not isinstance(target, Tensor) or target.node.op != "param":
                raise InputError(f"update targets must be params, got {target!r}")
            value = as_tensor(value, target)
            if value.shape != target.shape:
                raise ShapeError(
                    f"update of {target.name}: the new value is {value.node.type} (computed at "
                    f"{value.node.loc}), the param {target.node.type} (created at "
                    f"{target.node.loc})"
                )
            # NumPy's rule for `w -= u` in place: same_kind casting (float64 into float32 is
            # rounded; a float into an int param is refused)
            if not np.can_cast(value.dtype, target.dtype, "same_kind"):
                raise DTypeError(
                    f"update of {target.name}: the new value is {value.node.type} (computed at "
                    f"{value.node.loc}), the param {target.node.type}; {value.dtype} does not "
                    f"cast to {target.dtype} under NumPy's same_kind rule (use .astype)"
                )
            self.updates.append((target, value.astype(target.dtype)))
        self.updates += _advances(self.outputs, self.updates)
        self.name = name or "main"
        self.graph = Graph(
            [o.node for o in self.outputs],
            [(p.node, v.node) for p, v in self.updates],
            inputs=[x.node for x in self.inputs],
            name=self.name,
        )
        listed = {x.node for x in self.inputs}
        for node in self.graph.nodes:
            if node.op == "input" and node not in listed:
                raise InputError(
                    f"the program reads input {node.name!r} ({node.type}, created at {node.loc}) "
                    f"which is not among its inputs {[x.name for x in self.inputs]}"
                )

    def params(self) -> list[Tensor]:
        """The float param Tensors the program reads or updates, in the graph's order: what
        an optimizer takes (integer state such as random keys is left out)."""
        return [Tensor(node) for node in self.graph.params if node.dtype in FLOATS]

    def __str__(self) -> str:
        return str(self.graph)


def compile(  # noqa: A001
    inputs=None, outputs=None, updates=None, *, name=None, opt=None, cache=True, steps=1
):
    """JIT-compile one step: `gc.compile(inputs=[x], outputs=y, updates={w: w2})` or a Program.
    `steps=K`: a call runs the step K times over inputs stacked on a new leading axis of
    length K, returns the outputs stacked, and applies the updates after every step."""
    if isinstance(inputs, Program):
        program = inputs
    else:
        program = Program([] if inputs is None else inputs, outputs, updates, name)
    return Executable.build(
        program.graph, single_output=program.single_output, opt=opt, cache=cache, steps=steps
    )
