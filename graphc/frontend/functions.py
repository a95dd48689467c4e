"""Functions of the public API: math, composites, differentiation, evaluation, Program."""

from __future__ import annotations

import numpy as np

from graphc.errors import DTypeError, GraphcError, InputError, ShapeError
from graphc.frontend.tensor import (
    Tensor,
    as_tensor,
    binary,
    broadcast,
    broadcast_to,
    float_unary,
    normalize_axes,
    promote,
    unary,
)
from graphc.ir.graph import Graph, user_location
from graphc.ir.interp import run_nodes
from graphc.ir.ops import apply
from graphc.ir.types import FLOATS, INTS, canonical_dtype
from graphc.passes import autodiff


def exp(x) -> Tensor:
    """e ** x, elementwise (integers become float64, as in NumPy)."""
    return float_unary("exp", x)


def log(x) -> Tensor:
    """The natural logarithm, elementwise."""
    return float_unary("log", x)


def log1p(x) -> Tensor:
    """log(1 + x), accurate for small x."""
    return float_unary("log1p", x)


def sin(x) -> Tensor:
    """The sine, elementwise."""
    return float_unary("sin", x)


def cos(x) -> Tensor:
    """The cosine, elementwise."""
    return float_unary("cos", x)


def tanh(x) -> Tensor:
    """The hyperbolic tangent, elementwise."""
    return float_unary("tanh", x)


def sqrt(x) -> Tensor:
    """The square root, elementwise."""
    return float_unary("sqrt", x)


def sigmoid(x) -> Tensor:
    """1 / (1 + exp(-x)), elementwise."""
    return float_unary("sigmoid", x)


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


def relu(x) -> Tensor:
    """max(x, 0) with gradient 0 at 0 (as PyTorch and JAX)."""
    x = as_tensor(x)
    return where(x > 0, x, 0)


def _max_detached(x, axis):
    m = stop_gradient(x.max(axis=axis, keepdims=True))
    # an all -inf (or +inf) row would give inf - inf = nan: shift by 0 there instead
    return where(abs(m) < np.inf, m, 0)


def softmax(x, axis=-1) -> Tensor:
    """exp(x) / sum(exp(x)) along `axis`, computed stably."""
    x = as_tensor(x)
    normalize_axes(axis, x.ndim, "softmax")  # the error names the function called
    e = exp(x - _max_detached(x, axis))
    return e / e.sum(axis=axis, keepdims=True)


def log_softmax(x, axis=-1) -> Tensor:
    """x - logsumexp(x) along `axis`, computed stably."""
    x = as_tensor(x)
    normalize_axes(axis, x.ndim, "log_softmax")  # the error names the function called
    shifted = x - _max_detached(x, axis)
    return shifted - log(exp(shifted).sum(axis=axis, keepdims=True))


def logsumexp(x, axis=None, keepdims=False) -> Tensor:
    """log(sum(exp(x))) computed stably."""
    x = as_tensor(x)
    axes = normalize_axes(axis, x.ndim, "logsumexp")
    if x.dtype not in FLOATS:
        x = x.astype("float64")
    m = _max_detached(x, axis)
    result = m + log(exp(x - m).sum(axis=axis, keepdims=True))
    if keepdims:
        return result
    return result.reshape(tuple(d for i, d in enumerate(x.shape) if i not in axes))


def matmul(a, b) -> Tensor:
    """NumPy matmul: 1-D operands are promoted and squeezed, batch dims broadcast."""
    a, b = promote(a, b)
    if a.ndim == 0 or b.ndim == 0:
        raise ShapeError(f"matmul: scalar operand ({a.type}, {b.type}) (at {user_location()})")
    a2 = a.reshape(1, a.shape[0]) if a.ndim == 1 else a
    b2 = b.reshape(b.shape[0], 1) if b.ndim == 1 else b
    if a2.shape[-1] != b2.shape[-2]:
        raise ShapeError(
            f"matmul: inner dimensions of {a.type} and {b.type} differ "
            f"({a2.shape[-1]} != {b2.shape[-2]}) (at {user_location()})"
        )
    try:
        batch = np.broadcast_shapes(a2.shape[:-2], b2.shape[:-2])
    except ValueError:
        raise ShapeError(
            f"matmul: batch dims of {a.type} and {b.type} do not broadcast (at {user_location()})"
        ) from None
    a2 = broadcast_to(a2, batch + a2.shape[-2:])
    b2 = broadcast_to(b2, batch + b2.shape[-2:])
    result = Tensor(apply("matmul", a2.node, b2.node))
    shape = result.shape
    if a.ndim == 1:
        shape = shape[:-2] + shape[-1:]
    if b.ndim == 1:
        shape = shape[:-1]
    return result.reshape(shape)


def concat(tensors, axis=0) -> Tensor:
    """Join tensors along an existing axis."""
    tensors = promote(*tensors)
    (axis,) = normalize_axes(axis, tensors[0].ndim, "concat")
    if len(tensors) == 1:
        return tensors[0]
    return Tensor(apply("concat", *[t.node for t in tensors], axis=axis))


def one_hot(labels, depth: int, dtype="float32") -> Tensor:
    """`labels[..., None] == arange(depth)` as `dtype`."""
    labels = as_tensor(labels)
    if labels.dtype not in INTS:
        raise DTypeError(f"one_hot: labels must be integers, got {labels.type}")
    shape = labels.shape + (int(depth),)
    iota = Tensor(apply("iota", shape=shape, axis=len(shape) - 1, dtype=labels.dtype))
    expanded = broadcast_to(labels.reshape(labels.shape + (1,)), shape)
    return (expanded == iota).astype(canonical_dtype(dtype))


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
    inputs = [n for n in Graph(nodes).nodes if n.op == "input"]
    env = run_nodes(nodes, resolve_feed(feed, inputs))
    values = [np.array(env[n]) for n in nodes]
    return values[0] if single else values


def check_grad(y, wrt, feed=None, *, eps=1e-6, rtol=1e-5, atol=1e-7):
    """Compare `grad(y, wrt)` with central differences; returns the max error, raises if off."""
    single, items = _tensor_list(wrt)
    y = as_tensor(y)
    if y.shape != ():
        raise ShapeError(f"check_grad: y must be a scalar, got {y.type}")
    grads = evaluate(grad(y, items), feed)
    feed = dict(feed or {})
    worst = 0.0
    for w, analytic in zip(items, grads):
        if w.node.op not in ("input", "param"):
            raise GraphcError(f"check_grad: {w!r} is not an input or param")
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


class Program:
    """The arguments of `compile`: inputs, outputs and updates of one step."""

    def __init__(self, inputs, outputs, updates=None, name=None):
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
            self.updates.append((target, value.astype(target.dtype)))
        self.name = name or "main"
        self.graph = Graph(
            [o.node for o in self.outputs],
            [(p.node, v.node) for p, v in self.updates],
            inputs=[x.node for x in self.inputs],
            name=self.name,
        )
        listed = {id(x.node) for x in self.inputs}
        for node in self.graph.nodes:
            if node.op == "input" and id(node) not in listed:
                raise InputError(
                    f"the program reads input {node.name!r} ({node.type}, created at {node.loc}) "
                    f"which is not among its inputs {[x.name for x in self.inputs]}"
                )

    def __str__(self) -> str:
        return str(self.graph)


def compile(inputs=None, outputs=None, updates=None, *, name=None, opt=None, cache=True):  # noqa: A001
    """JIT-compile one step: `gc.compile(inputs=[x], outputs=y, updates={w: w2})` or a Program."""
    from graphc.runtime.executable import Executable

    program = (
        inputs if isinstance(inputs, Program) else Program(inputs or [], outputs, updates, name)
    )
    return Executable.build(
        program.graph, single_output=program.single_output, opt=opt, cache=cache
    )
