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
from graphc.frontend.functions import (
    concat,
    erf,
    exp,
    expand_dims,
    log,
    log1p,
    maximum,
    minimum,
    sigmoid,
    sqrt,
    stop_gradient,
    tanh,
    where,
)
from graphc.frontend.tensor import Tensor, as_tensor, broadcast_to, matmul, normalize_axes, promote
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


def min(x, axis=None, keepdims=False, *, out=None) -> Tensor:  # noqa: A001 (NumPy's name)
    """The minimum over `axis` (all axes by default): -max(-x), or for integers ~max(~x)
    with ~x = -x - 1 (exact for every integer, the most negative too)."""
    x = as_tensor(x)
    if out is not None:
        raise GraphcError("min: out= is not supported (a Tensor is symbolic: use the result)")
    if x.dtype == "bool":
        return min(x.astype("int32"), axis, keepdims).astype("bool")
    if x.dtype in FLOATS:
        return -((-x).max(axis, keepdims))
    return -((-x - 1).max(axis, keepdims)) - 1


def var(x, axis=None, ddof=0, keepdims=False, *, dtype=None, out=None) -> Tensor:
    """The variance over `axis`: mean squared deviation, divided by N - ddof (NumPy's)."""
    x = as_tensor(x)
    if out is not None:
        raise GraphcError("var: out= is not supported (a Tensor is symbolic: use the result)")
    if dtype is not None:
        x = x.astype(dtype)
    if x.dtype not in FLOATS:
        x = x.astype("float64")
    axes = normalize_axes(axis, x.ndim, "var")
    count = int(np.prod([x.shape[a] for a in axes]))
    deviation = x - mean(x, axes, keepdims=True)
    return (deviation * deviation).sum(axes, keepdims) / max(count - ddof, 0)


def std(x, axis=None, ddof=0, keepdims=False, *, dtype=None, out=None) -> Tensor:
    """The standard deviation over `axis`: sqrt(var(x, axis, ddof))."""
    return sqrt(var(x, axis, ddof, keepdims, dtype=dtype, out=out))


def cumsum(x, axis=None, dtype=None, *, out=None) -> Tensor:
    """Running sums along `axis` (None: of the flattened x), as np.cumsum; bools count as
    int64, other integers keep their dtype (as graphc's sums).

    A work-efficient (Blelloch) scan of primitives, O(n) in stored values: the sums of
    pairs, of pairs of pairs ... (log2 n small reductions), then one loop that walks down
    those levels per element (O(log n) each): exclusive(level j) at 2i is exclusive(j + 1)
    at i, at 2i + 1 that plus level j at 2i. No O(n^2) triangle, no per-element chain."""
    x = _no_out(as_tensor(x), out, "cumsum")
    if dtype is not None:
        x = x.astype(dtype)
    if x.dtype == "bool":
        x = x.astype("int64")
    if axis is None:
        x, axis = x.reshape(-1), 0
    (axis,) = normalize_axes(axis, x.ndim, "cumsum")
    n = x.shape[axis]
    if n <= 1:
        return x
    perm = tuple(i for i in range(x.ndim) if i != axis) + (axis,)
    moved = x.transpose(perm)
    rows = int(np.prod(moved.shape[:-1]))
    width = 1 << (n - 1).bit_length()  # the next power of two
    level = moved.reshape(rows, n)
    if width != n:
        level = Tensor(apply("pad", level.node, widths=((0, 0, 0), (0, width - n, 0)), value=0))
    levels = [level]  # levels[j]: sums of blocks of 2^j elements, (rows, width / 2^j)
    while levels[-1].shape[1] > 2:
        pairs = levels[-1].reshape(rows, levels[-1].shape[1] // 2, 2)
        levels.append(pairs.sum(axis=2))
    exclusive = None  # exclusive sums at the current level
    for level in reversed(levels):
        half = level.shape[1] // 2
        lefts = level.reshape(rows, half, 2)[:, :, :1]
        shifted = Tensor(
            apply("pad", lefts.node, widths=((0, 0, 0), (0, 0, 0), (1, 0, 0)), value=0)
        )
        if exclusive is not None:
            shifted = shifted + broadcast_to(exclusive.reshape(rows, half, 1), (rows, half, 2))
        exclusive = shifted.reshape(rows, 2 * half)
    total = exclusive + levels[0]
    if width != n:
        total = total[:, :n]
    inverse = tuple(int(i) for i in np.argsort(perm))
    return total.reshape(moved.shape).transpose(inverse)


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


def gelu(x, approximate=False) -> Tensor:
    """GELU as PyTorch: x Φ(x) = 0.5 x (1 + erf(x / sqrt 2)); with approximate="tanh" (or
    True) 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x³)))."""
    x = _floats(x, "gelu")
    if approximate in ("tanh", True):
        inner = math.sqrt(2.0 / math.pi) * (x + 0.044715 * (x * x * x))
        return 0.5 * x * (1.0 + tanh(inner))
    if approximate not in (False, "none"):
        raise GraphcError(
            f"gelu: approximate must be False, 'none', True or 'tanh', got {approximate!r} "
            f"(at {user_location()})"
        )
    return 0.5 * x * (1.0 + erf(x * math.sqrt(0.5)))


def leaky_relu(x, slope=0.01) -> Tensor:
    """x where x > 0, else slope x (PyTorch's negative_slope, 0.01 by default)."""
    x = _floats(x, "leaky_relu")
    return where(x > 0, x, x * slope)


def softplus(x) -> Tensor:
    """log(1 + exp(x)), computed stably as max(x, 0) + log1p(exp(-|x|)); gradient sigmoid(x)."""
    x = _floats(x, "softplus")
    return maximum(x, 0) + log1p(exp(-abs(x)))


def silu(x) -> Tensor:
    """x sigmoid(x) (also called swish)."""
    x = _floats(x, "silu")
    return x * sigmoid(x)


def _no_out(x, out, op: str):
    """x, or the error for NumPy's out= (np.cumsum(t) passes out=None to t.cumsum)."""
    if out is not None:
        raise GraphcError(f"{op}: out= is not supported (a Tensor is symbolic: use the result)")
    return x


def _floats(x, op: str) -> Tensor:
    """x as a Tensor; integers become float64 (as NumPy's transcendentals)."""
    x = as_tensor(x)
    return x if x.dtype in FLOATS else x.astype("float64")


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


def clip(x, lo=None, hi=None, *, out=None) -> Tensor:
    """x limited to [lo, hi] as np.clip: minimum(maximum(x, lo), hi); either may be None."""
    _no_out(x, out, "clip")
    if lo is None and hi is None:
        raise GraphcError(f"clip: give lo, hi or both (at {user_location()})")
    result = as_tensor(x) if lo is None else maximum(x, lo)
    return result if hi is None else minimum(result, hi)


def stack(tensors, axis=0) -> Tensor:
    """Join tensors of one shape along a new axis (np.stack)."""
    tensors = promote(*tensors)
    if not tensors:
        raise ShapeError(f"stack: needs at least one tensor (at {user_location()})")
    shapes = {t.shape for t in tensors}
    if len(shapes) > 1:
        raise ShapeError(
            f"stack: all tensors must have one shape, got {', '.join(str(t.type) for t in tensors)}"
            f" (at {user_location()})"
        )
    (axis,) = normalize_axes(axis, tensors[0].ndim + 1, "stack")
    return concat([expand_dims(t, axis) for t in tensors], axis=axis)


# ---- normalisation and attention ------------------------------------------------------------


def layer_norm(x, weight=None, bias=None, axis=-1, eps=1e-5) -> Tensor:
    """(x - mean) / sqrt(var + eps) over `axis` (an int or a tuple), times `weight` plus
    `bias` (each of the normalized axes' shape), as PyTorch's layer_norm."""
    x = as_tensor(x)
    if x.dtype not in FLOATS:
        raise DTypeError(
            f"layer_norm: x must be float32 or float64, got {x.type} (at {user_location()})"
        )
    axes = normalize_axes(axis, x.ndim, "layer_norm")
    centered = x - mean(x, axes, keepdims=True)
    variance = mean(centered * centered, axes, keepdims=True)
    y = centered * (1.0 / sqrt(variance + eps))  # one division per row, not per element
    normalized = tuple(x.shape[a] for a in axes)
    kept = tuple(d if i in axes else 1 for i, d in enumerate(x.shape))
    for name, p in (("weight", weight), ("bias", bias)):
        if p is None:
            continue
        p = as_tensor(p, x)
        if p.shape != normalized:
            raise ShapeError(
                f"layer_norm: {name} {p.type} must have the normalized axes' shape {normalized} "
                f"of x {x.type} (at {user_location()})"
            )
        p = p.reshape(kept)
        y = y * p if name == "weight" else y + p
    return y


def scaled_dot_product_attention(q, k, v, mask=None, causal=False) -> Tensor:
    """softmax(q kᵀ / sqrt(dim) + mask) v over (..., seq, dim), as PyTorch's: a bool mask
    is True where a query may attend (False: -inf), a float mask is added; `causal` lets
    query i attend keys j <= i. Batch axes broadcast."""
    q, k, v = promote(q, k, v)
    if q.dtype not in FLOATS:
        q, k, v = (t.astype("float64") for t in (q, k, v))
    if (
        q.ndim < 2
        or k.ndim < 2
        or v.ndim < 2
        or q.shape[-1] != k.shape[-1]
        or (k.shape[-2] != v.shape[-2])
    ):
        raise ShapeError(
            f"scaled_dot_product_attention: q {q.type}, k {k.type} and v {v.type} must be "
            f"(..., seq, dim) with q and k sharing dim and k and v sharing seq "
            f"(at {user_location()})"
        )
    scores = matmul(q, k.transpose(*range(k.ndim - 2), k.ndim - 1, k.ndim - 2))
    scores = scores * (1.0 / math.sqrt(q.shape[-1]))
    queries, keys = scores.shape[-2:]
    allowed = None
    if causal:
        shape = (queries, keys)
        rows = Tensor(apply("iota", shape=shape, axis=0, dtype="int64"))
        columns = Tensor(apply("iota", shape=shape, axis=1, dtype="int64"))
        allowed = columns <= rows
    if mask is not None:
        mask = as_tensor(mask, scores)
        try:
            np.broadcast_shapes(mask.shape, scores.shape)
        except ValueError:
            raise ShapeError(
                f"scaled_dot_product_attention: mask {mask.type} does not broadcast to the "
                f"scores {scores.type} (at {user_location()})"
            ) from None
        if mask.dtype == "bool":
            allowed = mask if allowed is None else mask & allowed
        elif mask.dtype in FLOATS:  # in the scores' dtype, as PyTorch requires
            scores = scores + mask.astype(scores.dtype)
        else:
            raise DTypeError(
                f"scaled_dot_product_attention: mask must be bool (True: attend) or float "
                f"(added to the scores), got {mask.type} (at {user_location()})"
            )
    if allowed is not None:
        scores = where(allowed, scores, -np.inf)
    return matmul(softmax(scores, axis=-1), v)


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
Tensor.min = min
Tensor.var = var
Tensor.std = std
Tensor.cumsum = cumsum
Tensor.clip = clip
