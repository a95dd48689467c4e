"""Composite functions: public math built from primitives, with no IR op of their own.

The frontend has three layers, each importing only the ones before it:

    tensor.py      the Tensor, its operators (`@` is `matmul`), the sources and the helpers
                   that apply one primitive (promotion, broadcasting, reductions, indexing)
    functions.py   public functions that apply one primitive (`exp`, `where`, `concat` ...),
                   plus differentiation, evaluation and `Program` / `compile`
    composites.py  public functions built from several primitives (this module), and the
                   Tensor methods that are composites (`mean`), bound onto Tensor below

A new composite (`softplus`, `layer_norm`, `Tensor.var`) goes here; a new primitive gets
its stanza in `ir/ops.py` and, if public, a wrapper in functions.py. Layers and losses
(`gc.nn`) are built from these in nn.py. Autodiff, simplification and fusion see only the
primitives a composite expands into.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from graphc.errors import DTypeError, GraphcError, ShapeError
from graphc.frontend.functions import exp, log, stop_gradient, tanh, where
from graphc.frontend.tensor import Tensor, as_tensor, broadcast_to, normalize_axes
from graphc.ir.graph import user_location
from graphc.ir.ops import apply
from graphc.ir.types import FLOATS, INTS, canonical_dtype

# ---- reductions -----------------------------------------------------------------------------


def mean(x, axis=None, keepdims=False, *, dtype=None, out=None) -> Tensor:
    """The arithmetic mean over `axis` (integers and bools average in float64, as NumPy)."""
    x = as_tensor(x)
    if out is not None:
        raise GraphcError("mean: out= is not supported (a Tensor is symbolic: use the result)")
    if dtype is not None:
        x = x.astype(dtype)
    axes = normalize_axes(axis, x.ndim, "mean")
    count = int(np.prod([x.shape[a] for a in axes]))
    if x.dtype not in FLOATS:
        x = x.astype("float64")
    return x.sum(axes, keepdims) / count


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


def _max_detached(x, axis):
    m = stop_gradient(x.max(axis=axis, keepdims=True))
    # an all -inf (or +inf) row would give inf - inf = nan: shift by 0 there instead
    return where(abs(m) < np.inf, m, 0)


# ---- activations ----------------------------------------------------------------------------


def relu(x) -> Tensor:
    """max(x, 0) with gradient 0 at 0 (as PyTorch and JAX)."""
    x = as_tensor(x)
    return where(x > 0, x, 0)


def gelu(x) -> Tensor:
    """GELU, tanh approximation: 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x³)))."""
    x = as_tensor(x)
    inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * (x * x * x))
    return 0.5 * x * (1.0 + tanh(inner))


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


# ---- encodings ------------------------------------------------------------------------------


def one_hot(labels, depth: int, dtype="float32") -> Tensor:
    """`labels[..., None] == arange(depth)` as `dtype`.

    A label outside [0, depth) gives a row of zeros (as in JAX) when fed; a constant one is
    a ShapeError, since it is known when the graph is built.
    """
    labels = as_tensor(labels)
    if labels.dtype not in INTS:
        raise DTypeError(f"one_hot: labels must be integers, got {labels.type}")
    if isinstance(depth, bool) or not isinstance(depth, numbers.Integral) or depth < 0:
        raise ShapeError(f"one_hot: depth must be a non-negative int, got {depth!r}")
    if labels.node.op == "const":
        outside = labels.value[(labels.value < 0) | (labels.value >= depth)]
        if outside.size:
            raise ShapeError(
                f"one_hot: label {outside.flat[0]} is outside [0, {depth}) (at {user_location()})"
            )
    shape = labels.shape + (int(depth),)
    iota = Tensor(apply("iota", shape=shape, axis=len(shape) - 1, dtype=labels.dtype))
    expanded = broadcast_to(labels.reshape(labels.shape + (1,)), shape)
    return (expanded == iota).astype(canonical_dtype(dtype))


# Tensor methods that are composites are bound here, beside their definitions: tensor.py
# cannot import this module, which builds on it (JAX binds its array methods the same way).
Tensor.mean = mean
