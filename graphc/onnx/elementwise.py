"""ONNX's elementwise ops, comparisons, casts, reductions (Einsum among them) and losses as
graphc composites (the table's conventions: table.py)."""

from __future__ import annotations

import math

import numpy as np

import graphc.frontend.composites as composites
import graphc.frontend.functions as functions
from graphc.frontend.tensor import Tensor, broadcast_to, const
from graphc.ir.ops import apply
from graphc.ir.types import FLOATS
from graphc.onnx.table import (
    DTYPES,
    axis_of,
    entry,
    flip,
    floats_only,
    ints,
    same_dtype,
    scalar_like,
    tensor,
)

# ---- elementwise ----------------------------------------------------------------------------


def _unary(function, floats=True):
    def convert(node, inputs, attributes, opset):
        x = tensor(inputs[0])
        if floats:
            floats_only(node, x)
        return function(x)

    return convert


def _asinh(x):
    magnitude = abs(x)
    return functions.sign(x) * functions.log(magnitude + functions.sqrt(magnitude * magnitude + 1))


def _asin(x):
    return functions.atan(x / functions.sqrt((1 - x) * (1 + x)))


ELEMENTWISE = {
    "Abs": (abs, False),
    "Neg": (lambda x: -x, False),
    "Sign": (functions.sign, False),
    "Exp": (functions.exp, True),
    "Log": (functions.log, True),
    "Sqrt": (functions.sqrt, True),
    "Tanh": (functions.tanh, True),
    "Sigmoid": (functions.sigmoid, True),
    "Sin": (functions.sin, True),
    "Cos": (functions.cos, True),
    "Tan": (lambda x: functions.sin(x) / functions.cos(x), True),
    "Atan": (functions.atan, True),
    "Asin": (_asin, True),
    "Acos": (lambda x: math.pi / 2 - _asin(x), True),
    "Sinh": (lambda x: (functions.exp(x) - functions.exp(-x)) * 0.5, True),
    "Cosh": (lambda x: (functions.exp(x) + functions.exp(-x)) * 0.5, True),
    "Asinh": (_asinh, True),
    "Acosh": (lambda x: functions.log(x + functions.sqrt((x - 1) * (x + 1))), True),
    "Atanh": (lambda x: functions.log((1 + x) / (1 - x)) * 0.5, True),
    "Erf": (functions.erf, True),
    "Floor": (functions.floor, True),
    "Ceil": (functions.ceil, True),
    "Round": (functions.round, True),
    "Reciprocal": (lambda x: 1 / x, True),
    "Relu": (lambda x: functions.maximum(x, scalar_like(x, 0)), False),
    "Softsign": (lambda x: x / (1 + abs(x)), True),
    "Softplus": (composites.softplus, True),
    "Mish": (lambda x: x * functions.tanh(composites.softplus(x)), True),
    "IsNaN": (lambda x: x != x, True),
}
for _name, (_function, _floats) in ELEMENTWISE.items():
    entry(_name)(_unary(_function, _floats))


@entry("Not")
def not_(node, inputs, attributes, opset):
    return ~tensor(inputs[0])


@entry("Identity")
def identity(node, inputs, attributes, opset):
    if inputs[0] is not None and not isinstance(inputs[0], (Tensor, np.ndarray)):
        raise node.unsupported("a sequence or optional input")
    return inputs[0]


@entry("IsInf")
def is_inf(node, inputs, attributes, opset):
    x = tensor(inputs[0])
    floats_only(node, x)
    positive = x == scalar_like(x, np.inf)
    negative = x == scalar_like(x, -np.inf)
    if not attributes.get("detect_positive", 1):
        return negative
    if not attributes.get("detect_negative", 1):
        return positive
    return positive | negative


@entry("Elu", "Selu", "Celu", "LeakyRelu", "ThresholdedRelu", "HardSigmoid", "HardSwish",
       "Shrink", "Gelu", "Swish")  # fmt: skip
def activation(node, inputs, attributes, opset):
    """The parameterized activations, with ONNX's default for each attribute."""
    x = tensor(inputs[0])
    floats_only(node, x)
    zero = scalar_like(x, 0)
    alpha = attributes.get("alpha")
    kind = node.op_type
    if kind == "Elu":
        return functions.where(x > 0, x, (functions.exp(x) - 1) * (1.0 if alpha is None else alpha))
    if kind == "Selu":
        a, gamma = attributes.get("alpha", 1.67326319), attributes.get("gamma", 1.05070102)
        return functions.where(x > 0, x * gamma, (functions.exp(x) - 1) * (a * gamma))
    if kind == "Celu":
        a = 1.0 if alpha is None else alpha
        return functions.maximum(x, zero) + functions.minimum(zero, (functions.exp(x / a) - 1) * a)
    if kind == "LeakyRelu":
        return functions.where(x >= 0, x, x * (0.01 if alpha is None else alpha))
    if kind == "ThresholdedRelu":
        return functions.where(x > (1.0 if alpha is None else alpha), x, zero)
    if kind == "HardSigmoid":
        a, beta = (0.2 if alpha is None else alpha), attributes.get("beta", 0.5)
        return composites.clip(x * a + beta, 0, 1)
    if kind == "HardSwish":
        return x * composites.clip(x * (1 / 6) + 0.5, 0, 1)
    if kind == "Shrink":
        bias, lambd = attributes.get("bias", 0.0), attributes.get("lambd", 0.5)
        return functions.where(x < -lambd, x + bias, functions.where(x > lambd, x - bias, zero))
    if kind == "Swish":
        return x * functions.sigmoid(x * (1.0 if alpha is None else alpha))
    approximate = attributes.get("approximate", "none")
    if approximate not in ("none", "tanh"):
        raise node.unsupported(f"approximate={approximate!r}")
    return composites.gelu(x, approximate=approximate == "tanh")


@entry("PRelu")
def prelu(node, inputs, attributes, opset):
    x, slope = tensor(inputs[0]), tensor(inputs[1])
    return functions.where(x < 0, x * slope, x)


def _truncated_divide(a: Tensor, b: Tensor) -> Tensor:
    """Integer a / b rounded toward zero (C's, ONNX's): floor, plus 1 where inexact and the
    signs differ."""
    quotient = functions.floor_divide(a, b)
    inexact = functions.remainder(a, b) != scalar_like(a, 0)
    signs = (a < scalar_like(a, 0)) != (b < scalar_like(b, 0))
    return quotient + (inexact & signs).astype(a.dtype)


@entry("Add", "Sub", "Mul", "Div", "Equal", "Less", "LessOrEqual", "Greater", "GreaterOrEqual",
       "And", "Or", "Xor")  # fmt: skip
def binary(node, inputs, attributes, opset):
    a, b = tensor(inputs[0]), tensor(inputs[1])
    same_dtype(node, a, b)
    kind = node.op_type
    if kind == "Div" and a.dtype not in FLOATS:
        return _truncated_divide(a, b)
    if kind == "Xor":
        return a != b
    operators = {
        "Add": lambda: a + b, "Sub": lambda: a - b, "Mul": lambda: a * b, "Div": lambda: a / b,
        "Equal": lambda: a == b, "Less": lambda: a < b, "LessOrEqual": lambda: a <= b,
        "Greater": lambda: a > b, "GreaterOrEqual": lambda: a >= b, "And": lambda: a & b,
        "Or": lambda: a | b,
    }  # fmt: skip
    result = operators[kind]()
    if kind in ("Add", "Sub", "Mul") and a.dtype == "bool":
        raise node.unsupported("element type bool")
    return result


@entry("Pow")
def power(node, inputs, attributes, opset):
    base, exponent = tensor(inputs[0]), tensor(inputs[1])
    if base.dtype in FLOATS:
        return base ** exponent.astype(base.dtype)
    result = base.astype("float64") ** exponent.astype("float64")
    return functions.round(result).astype(base.dtype)


@entry("Mod")
def mod(node, inputs, attributes, opset):
    a, b = tensor(inputs[0]), tensor(inputs[1])
    same_dtype(node, a, b)
    if not attributes.get("fmod", 0):  # NumPy's: the sign of b
        return functions.remainder(a, b)
    # C's fmod: the sign of a
    return functions.sign(a) * functions.remainder(abs(a), abs(b))


@entry("Max", "Min", "Sum", "Mean")
def variadic(node, inputs, attributes, opset):
    xs = [tensor(x) for x in inputs if x is not None]
    combine = {"Max": functions.maximum, "Min": functions.minimum}.get(node.op_type)
    result = xs[0]
    for x in xs[1:]:
        same_dtype(node, result, x)
        result = combine(result, x) if combine else result + x
    if len(xs) == 1:
        shape = result.shape
        result = result + scalar_like(result, 0) if result.dtype != "bool" else result
        assert result.shape == shape
    if node.op_type == "Mean":
        floats_only(node, result)
        result = result / len(xs)
    return result


@entry("Where")
def where(node, inputs, attributes, opset):
    condition, a, b = (tensor(x) for x in inputs)
    same_dtype(node, a, b)
    return functions.where(condition, a, b)


@entry("Clip")
def clip(node, inputs, attributes, opset):
    x = tensor(inputs[0])
    lo = None if len(inputs) < 2 or inputs[1] is None else tensor(inputs[1], x.dtype)
    hi = None if len(inputs) < 3 or inputs[2] is None else tensor(inputs[2], x.dtype)
    if lo is not None:
        x = functions.maximum(x, lo)
    if hi is not None:
        x = functions.minimum(x, hi)
    return x


@entry("Cast", "CastLike")
def cast(node, inputs, attributes, opset):
    x = tensor(inputs[0])
    if node.op_type == "CastLike":
        dtype = tensor(inputs[1]).dtype
    else:
        to = attributes["to"]
        if to not in DTYPES:
            raise node.unsupported(f"to={to} (graphc has float32, float64, int32, int64, bool)")
        dtype = DTYPES[to]
    return x.astype(dtype)


# ---- reductions -----------------------------------------------------------------------------


def _reduce_axes(node, inputs, attributes, opset, x: Tensor):
    """The reduced axes: the attribute (opset < 18, ReduceSum < 13) or the second input;
    none given reduces all axes unless noop_with_empty_axes."""
    takes_input = opset >= 18 or node.op_type == "ReduceSum"
    if takes_input:
        axes = ints(node, inputs[1], "axes") if len(inputs) > 1 else None
    else:
        axes = attributes.get("axes")
    if not axes:
        return None if attributes.get("noop_with_empty_axes", 0) else tuple(range(x.ndim))
    return tuple(sorted(axis_of(node, a, x.ndim) for a in axes))


def _product(x: Tensor, axes) -> Tensor:
    """The product over `axes`: a product of slices per axis (small tensors only)."""
    for axis in axes:
        parts = [x[(slice(None),) * axis + (slice(i, i + 1),)] for i in range(x.shape[axis])]
        result = parts[0]
        for part in parts[1:]:
            result = result * part
        x = result
    return x


def _empty_reduction(node, x: Tensor, axes, keepdims: bool) -> Tensor:
    """A reduction over no elements: its identity as ONNX's reference gives it (0 for sums
    and norms, 1 for a product, -inf for the logs, the dtype's lowest for Max and highest
    for Min (False and True for bool)); ReduceMean has none."""
    kind, dtype = node.op_type, x.dtype
    if kind == "ReduceMean":
        raise node.unsupported("the mean of no elements")
    if kind in ("ReduceMax", "ReduceMin"):
        high = kind == "ReduceMin"
        if dtype == "bool":
            value = high
        elif dtype in FLOATS:
            value = np.inf if high else -np.inf
        else:
            value = np.iinfo(dtype).max if high else np.iinfo(dtype).min
    elif kind in ("ReduceLogSum", "ReduceLogSumExp"):
        floats_only(node, x)
        value = -np.inf
    else:
        if dtype == "bool":
            raise node.unsupported("element type bool")
        value = 1 if kind == "ReduceProd" else 0
    shape = tuple(1 if i in axes else d for i, d in enumerate(x.shape) if keepdims or i not in axes)
    return const(np.full(shape, value, dtype))


@entry("ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1",
       "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare")  # fmt: skip
def reduce(node, inputs, attributes, opset):
    x = tensor(inputs[0])
    axes = _reduce_axes(node, inputs, attributes, opset, x)
    keepdims = bool(attributes.get("keepdims", 1))
    kind = node.op_type
    if axes is None:
        return x
    if any(x.shape[a] == 0 for a in axes):
        return _empty_reduction(node, x, axes, keepdims)
    if kind in ("ReduceMax", "ReduceMin") and x.dtype == "bool":
        result = (x.astype("int32").max(axes, True) if kind == "ReduceMax"
                  else composites.min(x.astype("int32"), axes, True)).astype("bool")  # fmt: skip
    elif kind == "ReduceMax":
        result = x.max(axes, keepdims=True)
    elif kind == "ReduceMin":
        result = composites.min(x, axes, keepdims=True)
    elif kind == "ReduceProd":
        if x.dtype == "bool":
            raise node.unsupported("element type bool")
        result = _product(x, axes)
    elif kind == "ReduceLogSumExp":
        floats_only(node, x)
        result = composites.logsumexp(x, axes, keepdims=True)
    else:
        if x.dtype == "bool":
            raise node.unsupported("element type bool")
        if kind in ("ReduceL2", "ReduceSumSquare"):
            x = x * x
        elif kind == "ReduceL1":
            x = abs(x)
        result = x.sum(axes, keepdims=True)
        if kind == "ReduceMean":
            count = math.prod(x.shape[a] for a in axes)
            result = (result / count if x.dtype in FLOATS else  # integers: toward zero
                      _truncated_divide(result, scalar_like(result, count)))  # fmt: skip
        elif kind == "ReduceL2":
            result = (functions.sqrt(result) if x.dtype in FLOATS else
                      functions.sqrt(result.astype("float64")).astype(x.dtype))  # fmt: skip
        elif kind == "ReduceLogSum":
            floats_only(node, x)
            result = functions.log(result)
    if not keepdims:
        result = result.reshape(tuple(d for i, d in enumerate(x.shape) if i not in axes))
    return result


@entry("ArgMax", "ArgMin")
def arg_extreme(node, inputs, attributes, opset):
    x = tensor(inputs[0])
    if x.dtype == "bool":
        x = x.astype("int32")
    axis = axis_of(node, attributes.get("axis", 0), x.ndim)
    keepdims = bool(attributes.get("keepdims", 1))
    if node.op_type == "ArgMin":
        x = -x if x.dtype in FLOATS else -x - 1  # ~x keeps the most negative integer exact
    if attributes.get("select_last_index", 0):
        n = x.shape[axis]
        flipped = flip(x, (axis,))
        return scalar_like(x.argmax(axis=axis, keepdims=keepdims), n - 1) - flipped.argmax(
            axis=axis, keepdims=keepdims
        )
    return x.argmax(axis=axis, keepdims=keepdims)


@entry("CumSum")
def cumsum(node, inputs, attributes, opset):
    x = tensor(inputs[0])
    axis = axis_of(node, ints(node, inputs[1], "axis")[0], x.ndim)
    reverse = attributes.get("reverse", 0)
    if reverse:
        x = flip(x, (axis,))
    result = composites.cumsum(x, axis=axis)
    if attributes.get("exclusive", 0):
        result = result - x
    if reverse:
        result = flip(result, (axis,))
    return result


@entry("CumProd")
def cumprod(node, inputs, attributes, opset):
    """Running products along the axis, one product per element after the first."""
    x = tensor(inputs[0])
    axis = axis_of(node, ints(node, inputs[1], "axis")[0], x.ndim)
    reverse, exclusive = attributes.get("reverse", 0), attributes.get("exclusive", 0)
    n = x.shape[axis]
    order = list(range(n - 1, -1, -1)) if reverse else list(range(n))
    parts = {}
    running = None
    for i in order:
        part = x[(slice(None),) * axis + (slice(i, i + 1),)]
        if exclusive:
            parts[i] = running if running is not None else part * 0 + 1
            running = part if running is None else running * part
        else:
            running = part if running is None else running * part
            parts[i] = running
    return functions.concat([parts[i] for i in range(n)], axis=axis) if n else x


def _einsum_terms(node, equation: str, ranks: list[int]) -> tuple[list[str], str]:
    """The letters of each operand and of the output, "..." spelled as capital letters
    (aligned from the right, as broadcasting is)."""
    equation = equation.replace(" ", "")
    inputs, arrow, output = equation.partition("->")
    terms = inputs.split(",")
    if len(terms) != len(ranks):
        raise node.error(f"equation {equation!r} names {len(terms)} operands, got {len(ranks)}")
    spread = max([r - len(t.replace("...", "")) for t, r in zip(terms, ranks)] + [0])
    ellipsis = "".join(chr(ord("A") + i) for i in range(spread))
    letters = []
    for term, rank in zip(terms, ranks):
        count = rank - len(term.replace("...", ""))
        letters.append(term.replace("...", ellipsis[spread - count :]))
    if not arrow:  # implicit: the letters seen once, in alphabetical order, after "..."
        seen = "".join(letters)
        output = ellipsis + "".join(
            sorted(c for c in set(seen) if seen.count(c) == 1 and c.islower())
        )
    else:
        output = output.replace("...", ellipsis)
    return letters, output


def _diagonal(x: Tensor, letters: str) -> tuple[Tensor, str]:
    """x with each repeated letter reduced to its diagonal (`ii` -> `i`)."""
    while len(set(letters)) < len(letters):
        letter = next(c for c in letters if letters.count(c) > 1)
        first = letters.index(letter)
        second = letters.index(letter, first + 1)
        rows = Tensor(apply("iota", shape=x.shape, axis=first, dtype="int64"))
        columns = Tensor(apply("iota", shape=x.shape, axis=second, dtype="int64"))
        x = functions.where(rows == columns, x, scalar_like(x, 0)).sum(axis=second)
        letters = letters[:second] + letters[second + 1 :]
    return x, letters


@entry("Einsum")
def einsum(node, inputs, attributes, opset):
    """Each operand's diagonals taken, all aligned on one order of the letters, multiplied
    with broadcasting and summed over the letters the output does not keep."""
    xs = [tensor(x) for x in inputs]
    if any(x.dtype == "bool" for x in xs):
        raise node.unsupported("element type bool")
    letters, output = _einsum_terms(node, attributes["equation"], [x.ndim for x in xs])
    everything = "".join(dict.fromkeys("".join(letters) + output))
    sizes, product = {}, None
    for x, term in zip(xs, letters):
        x, term = _diagonal(x, term)
        for c, d in zip(term, x.shape):
            sizes[c] = max(sizes.get(c, 1), d)
        order = sorted(range(len(term)), key=lambda i: everything.index(term[i]))
        x = x.transpose(order) if len(order) > 1 else x
        term = "".join(term[i] for i in order)
        x = x.reshape(tuple(x.shape[term.index(c)] if c in term else 1 for c in everything))
        product = x if product is None else product * x
    summed = tuple(i for i, c in enumerate(everything) if c not in output)
    if summed:
        product = product.sum(axis=summed)
    kept = "".join(c for c in everything if c in output)
    shape = tuple(sizes[c] for c in kept)
    if product.shape != shape:
        product = broadcast_to(product, shape)
    return product.transpose([kept.index(c) for c in output]) if len(output) > 1 else product


# ---- losses ---------------------------------------------------------------------------------


def _negative_log_likelihood(node, log_probs: Tensor, labels: Tensor, weight, attributes):
    """NegativeLogLikelihoodLoss over (N, C, *d) scores and (N, *d) labels."""
    labels = labels.astype("int64")
    ignored = None
    if "ignore_index" in attributes:
        ignored = labels == scalar_like(labels, attributes["ignore_index"])
        labels = functions.where(ignored, scalar_like(labels, 0), labels)
    positions = Tensor(apply("iota", shape=log_probs.shape, axis=1, dtype="int64"))
    hot = positions == broadcast_to(functions.expand_dims(labels, 1), log_probs.shape)
    picked = functions.where(hot, log_probs, scalar_like(log_probs, 0)).sum(axis=1)
    weights = (const(np.ones(labels.shape, log_probs.dtype)) if weight is None else
               functions.take(tensor(weight, log_probs.dtype), labels))  # fmt: skip
    if ignored is not None:
        weights = functions.where(ignored, scalar_like(weights, 0), weights)
    loss = -picked * weights
    reduction = attributes.get("reduction", "mean")
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction != "mean":
        raise node.unsupported(f"reduction={reduction!r}")
    return loss.sum() / weights.sum()


@entry("NegativeLogLikelihoodLoss")
def nll_loss(node, inputs, attributes, opset):
    log_probs = tensor(inputs[0])
    floats_only(node, log_probs)
    weight = inputs[2] if len(inputs) > 2 else None
    return _negative_log_likelihood(node, log_probs, tensor(inputs[1]), weight, attributes)


@entry("SoftmaxCrossEntropyLoss")
def softmax_cross_entropy(node, inputs, attributes, opset):
    scores = tensor(inputs[0])
    floats_only(node, scores)
    log_probs = composites.log_softmax(scores, axis=1)
    weight = inputs[2] if len(inputs) > 2 else None
    loss = _negative_log_likelihood(node, log_probs, tensor(inputs[1]), weight, attributes)
    return [loss, log_probs]
