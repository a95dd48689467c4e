"""ONNX's contractions, convolution, pooling, normalization, attention and recurrent layers
(RNN, GRU, LSTM: gc.scan) as graphc composites (the table's conventions: table.py)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np

import graphc.frontend.composites as composites
import graphc.frontend.convolution as convolution
import graphc.frontend.functions as functions
from graphc.frontend.scan import scan
from graphc.frontend.tensor import Tensor, broadcast_to, const, matmul
from graphc.ir.ops import apply
from graphc.ir.types import FLOATS
from graphc.onnx.table import (
    DTYPES,
    TABLE,
    axis_of,
    entry,
    flip,
    floats_only,
    ints,
    pad_tensor,
    same_dtype,
    scalar_like,
    tensor,
)

# ---- contractions, convolution, pooling, normalization --------------------------------------


@entry("MatMul")
def matmul_(node, inputs, attributes, opset):
    a, b = tensor(inputs[0]), tensor(inputs[1])
    same_dtype(node, a, b)
    try:
        batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    except ValueError:
        batch = None
    if a.ndim < 2 or b.ndim < 2 or a.shape[-1] != b.shape[-2] or batch is None:
        return matmul(a, b)  # vectors, or the frontend's error
    shape = (*batch, a.shape[-2], b.shape[-1])
    if a.ndim > 2 and math.prod(b.shape[:-2]) == 1:
        # (..., m, k) @ (k, n): one product of all rows, not a batch of B broadcast
        return matmul(a.reshape(-1, a.shape[-1]), b.reshape(b.shape[-2:])).reshape(shape)
    kept = len(batch) - next((i for i, d in enumerate(batch) if d != 1), len(batch))
    if kept < len(batch):
        # leading batch axes of length 1 dropped: threads split a product's first batch axis
        a, b = (x.reshape(x.shape[max(x.ndim - 2 - kept, 0) :]) for x in (a, b))
        return matmul(a, b).reshape(shape)
    return matmul(a, b)


@entry("Gemm")
def gemm(node, inputs, attributes, opset):
    a, b = tensor(inputs[0]), tensor(inputs[1])
    if attributes.get("transA", 0):
        a = a.T
    if attributes.get("transB", 0) and a.shape[0] == 1:
        # one row times B^T is B times the row, B's rows read contiguously
        result = matmul(b, a.reshape(-1, 1)).reshape(1, -1)
    else:
        result = matmul(a, b.T if attributes.get("transB", 0) else b)
    alpha, beta = attributes.get("alpha", 1.0), attributes.get("beta", 1.0)
    if alpha != 1.0:
        result = result * alpha
    if len(inputs) > 2 and inputs[2] is not None and beta != 0.0:
        c = tensor(inputs[2], result.dtype)
        result = result + (c if beta == 1.0 else c * beta)
    return result


def _spatial(node, x: Tensor, attributes, kernel) -> tuple:
    """(strides, dilations, (low, high) pads) of a conv or pool: auto_pad, or pads."""
    rank = len(kernel)
    strides = tuple(attributes.get("strides", (1,) * rank))
    dilations = tuple(attributes.get("dilations", (1,) * rank))
    auto_pad = attributes.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        widths = []
        for size, k, s, d in zip(x.shape[2:], kernel, strides, dilations):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            small, large = total // 2, total - total // 2
            widths.append((small, large) if auto_pad == "SAME_UPPER" else (large, small))
        return strides, dilations, tuple(widths)
    if auto_pad == "VALID":
        return strides, dilations, ((0, 0),) * rank
    if auto_pad != "NOTSET":
        raise node.unsupported(f"auto_pad={auto_pad!r}")
    pads = attributes.get("pads", (0,) * (2 * rank))
    return strides, dilations, tuple(zip(pads[:rank], pads[rank:]))


@entry("Conv")
def conv(node, inputs, attributes, opset):
    x, w = tensor(inputs[0]), tensor(inputs[1])
    floats_only(node, x, w)
    kernel = tuple(attributes.get("kernel_shape", w.shape[2:]))
    strides, dilations, widths = _spatial(node, x, attributes, kernel)
    result = convolution.conv(
        pad_tensor(x, ((0, 0), (0, 0), *widths), 0.0), w, stride=strides, dilation=dilations,
        groups=attributes.get("group", 1),
    )  # fmt: skip
    if len(inputs) > 2 and inputs[2] is not None:
        bias = tensor(inputs[2], result.dtype)
        result = result + bias.reshape((1, -1) + (1,) * (result.ndim - 2))
    return result


def _pool_widths(node, x: Tensor, attributes, kernel, strides, dilations, widths):
    """The pads with ceil_mode's extra elements at the high end, and the output sizes."""
    ceil = attributes.get("ceil_mode", 0)
    padded, outs = [], []
    for size, k, s, d, (lo, hi) in zip(x.shape[2:], kernel, strides, dilations, widths):
        span = size + lo + hi - ((k - 1) * d + 1)
        out = (-(-span // s) if ceil else span // s) + 1
        if ceil and (out - 1) * s >= size + lo:  # the last window would start in the padding
            out -= 1
        extra = max((out - 1) * s + (k - 1) * d + 1 - (size + lo + hi), 0)
        padded.append((lo, hi + extra))
        outs.append(out)
    return padded, outs


def _windows(x: Tensor, kernel, strides, dilations, widths, outs, fill) -> Tensor:
    """x's windows as (N, C, *out, taps), padded with `fill`."""
    padded = pad_tensor(x, ((0, 0), (0, 0), *widths), fill)
    node = apply("window", padded.node, kernel=tuple(kernel), stride=tuple(strides),
                 dilation=tuple(dilations))  # fmt: skip
    windows = Tensor(node).reshape(*x.shape[:2], *node.shape[2 : 2 + len(kernel)],
                                   math.prod(kernel))  # fmt: skip
    index = (slice(None),) * 2 + tuple(slice(0, o) for o in outs)
    return windows[index]


@entry("MaxPool", "AveragePool", "LpPool")
def pool(node, inputs, attributes, opset):
    x = tensor(inputs[0])
    floats_only(node, x)
    if len(node.outputs) > 1 and node.outputs[1]:
        raise node.unsupported("the Indices output")
    if attributes.get("storage_order", 0):
        raise node.unsupported("storage_order=1")
    kernel = tuple(attributes["kernel_shape"])
    strides, dilations, explicit = _spatial(node, x, attributes, kernel)
    widths, outs = _pool_widths(node, x, attributes, kernel, strides, dilations, explicit)
    if node.op_type == "MaxPool":
        return _windows(x, kernel, strides, dilations, widths, outs, -np.inf).max(axis=-1)
    if node.op_type == "LpPool":
        p = attributes.get("p", 2)
        windows = _windows(abs(x) ** float(p), kernel, strides, dilations, widths, outs, 0.0)
        return windows.sum(axis=-1) ** (1.0 / p)
    total = _windows(x, kernel, strides, dilations, widths, outs, 0.0).sum(axis=-1)
    ones = const(np.ones((1, 1, *x.shape[2:]), x.dtype))
    if attributes.get("count_include_pad", 0):  # the explicit pads count, ceil_mode's not
        ones = pad_tensor(ones, ((0, 0), (0, 0), *explicit), 1.0)
        widths = [(0, hi - explicit_hi) for (_, hi), (_, explicit_hi) in zip(widths, explicit)]
    counts = _windows(ones, kernel, strides, dilations, widths, outs, 0.0).sum(axis=-1)
    return total / counts


@entry("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
def global_pool(node, inputs, attributes, opset):
    x = tensor(inputs[0])
    floats_only(node, x)
    axes = tuple(range(2, x.ndim))
    if node.op_type == "GlobalMaxPool":
        return x.max(axis=axes, keepdims=True)
    if node.op_type == "GlobalLpPool":
        p = float(attributes.get("p", 2))
        return (abs(x) ** p).sum(axis=axes, keepdims=True) ** (1.0 / p)
    return composites.mean(x, axis=axes, keepdims=True)


def _channel(value, x: Tensor) -> Tensor:
    """A per-channel vector as (C, 1, ...) against x's (N, C, *spatial)."""
    return tensor(value, x.dtype).reshape((-1,) + (1,) * (x.ndim - 2))


@entry("BatchNormalization")
def batch_norm(node, inputs, attributes, opset):
    x = tensor(inputs[0])
    floats_only(node, x)
    scale, bias, mean, var = (_channel(v, x) for v in inputs[1:5])
    eps = attributes.get("epsilon", 1e-5)
    if not attributes.get("training_mode", 0):
        if len([o for o in node.outputs if o]) > 1:
            raise node.unsupported("the running statistics outputs without training_mode")
        return (x - mean) * (scale / functions.sqrt(var + eps)) + bias
    # training: the batch's statistics (variance over N), and the running ones updated
    axes = (0, *range(2, x.ndim))
    batch_mean = composites.mean(x, axis=axes, keepdims=True)
    centered = x - batch_mean
    batch_var = composites.mean(centered * centered, axis=axes, keepdims=True)
    y = centered * (scale / functions.sqrt(batch_var + eps)) + bias
    momentum = attributes.get("momentum", 0.9)
    running = [
        (old * momentum + new * (1 - momentum)).reshape(-1)
        for old, new in ((mean, batch_mean), (var, batch_var))
    ]
    return [y, *running]


@entry("InstanceNormalization")
def instance_norm(node, inputs, attributes, opset):
    x = tensor(inputs[0])
    floats_only(node, x)
    axes = tuple(range(2, x.ndim))
    normalized = _normalize(x, axes, attributes.get("epsilon", 1e-5))
    return normalized * _channel(inputs[1], x) + _channel(inputs[2], x)


def _normalize(x: Tensor, axes, eps) -> Tensor:
    centered = x - composites.mean(x, axis=axes, keepdims=True)
    variance = composites.mean(centered * centered, axis=axes, keepdims=True)
    return centered / functions.sqrt(variance + eps)


def _trailing_axes(node, x: Tensor, attributes) -> tuple[int, ...]:
    """The axes from `axis` on that LayerNormalization and RMSNormalization normalize."""
    floats_only(node, x)
    if attributes.get("stash_type", 1) != 1 and x.dtype != "float64":
        raise node.unsupported(f"stash_type={attributes['stash_type']}")
    return tuple(range(axis_of(node, attributes.get("axis", -1), x.ndim), x.ndim))


@entry("LayerNormalization")
def layer_norm(node, inputs, attributes, opset):
    x = tensor(inputs[0])
    axes = _trailing_axes(node, x, attributes)
    mean = composites.mean(x, axis=axes, keepdims=True)
    centered = x - mean
    variance = composites.mean(centered * centered, axis=axes, keepdims=True)
    inverse_std = 1 / functions.sqrt(variance + attributes.get("epsilon", 1e-5))
    result = centered * inverse_std * tensor(inputs[1], x.dtype)
    if len(inputs) > 2 and inputs[2] is not None:
        result = result + tensor(inputs[2], x.dtype)
    return [result, mean, inverse_std]


@entry("RMSNormalization")
def rms_norm(node, inputs, attributes, opset):
    x = tensor(inputs[0])
    axes = _trailing_axes(node, x, attributes)
    square = composites.mean(x * x, axis=axes, keepdims=True)
    eps = attributes.get("epsilon", 1e-5)
    return x / functions.sqrt(square + eps) * tensor(inputs[1], x.dtype)


@entry("GroupNormalization")
def group_norm(node, inputs, attributes, opset):
    x = tensor(inputs[0])
    floats_only(node, x)
    if opset < 21:
        raise node.unsupported("opset < 21 (per-group scale and bias)")
    groups = attributes["num_groups"]
    n, c = x.shape[:2]
    grouped = x.reshape(n, groups, -1)
    normalized = _normalize(grouped, (2,), attributes.get("epsilon", 1e-5)).reshape(x.shape)
    return normalized * _channel(inputs[1], x) + _channel(inputs[2], x)


@entry("LpNormalization")
def lp_norm(node, inputs, attributes, opset):
    x = tensor(inputs[0])
    floats_only(node, x)
    axis, p = attributes.get("axis", -1), attributes.get("p", 2)
    if p == 1:
        norm = abs(x).sum(axis=axis, keepdims=True)
    elif p == 2:
        norm = functions.sqrt((x * x).sum(axis=axis, keepdims=True))
    else:
        raise node.unsupported(f"p={p}")
    return functions.where(norm == 0, scalar_like(x, 0), x / norm)


@entry("MeanVarianceNormalization")
def mean_variance_norm(node, inputs, attributes, opset):
    x = tensor(inputs[0])
    floats_only(node, x)
    axes = tuple(attributes.get("axes", (0, 2, 3)))
    centered = x - composites.mean(x, axis=axes, keepdims=True)
    variance = composites.mean(centered * centered, axis=axes, keepdims=True)
    return centered / (functions.sqrt(variance) + 1e-9)


@entry("Softmax", "LogSoftmax", "Hardmax")
def softmax(node, inputs, attributes, opset):
    x = tensor(inputs[0])
    floats_only(node, x)
    axis = axis_of(node, attributes.get("axis", -1), x.ndim)
    if node.op_type == "Softmax":
        return composites.softmax(x, axis=axis)
    if node.op_type == "LogSoftmax":
        return composites.log_softmax(x, axis=axis)
    first = x.argmax(axis=axis, keepdims=True)
    positions = Tensor(apply("iota", shape=x.shape, axis=axis, dtype="int64"))
    return (positions == broadcast_to(first, x.shape)).astype(x.dtype)


def _heads(x: Tensor, heads: int) -> Tensor:
    """(batch, seq, heads * size) -> (batch, heads, seq, size)."""
    batch, sequence, hidden = x.shape
    return x.reshape(batch, sequence, heads, hidden // heads).transpose(0, 2, 1, 3)


def _repeat_heads(x: Tensor, repeat: int) -> Tensor:
    """(batch, heads, seq, size) -> (batch, heads * repeat, seq, size), each head repeated
    in place: h0, h0, h1, h1 ... (grouped-query attention)."""
    batch, heads, *rest = x.shape
    spread = broadcast_to(x.reshape(batch, heads, 1, *rest), (batch, heads, repeat, *rest))
    return spread.reshape(batch, heads * repeat, *rest)


def _masked_softmax(scores: Tensor) -> Tensor:
    """softmax over the last axis; a row of -inf gives zeros (ONNX Attention's)."""
    top = scores.max(axis=-1, keepdims=True)
    top = functions.where(top == scalar_like(top, -np.inf), scalar_like(top, 0), top)
    weights = functions.exp(scores - top)
    total = weights.sum(axis=-1, keepdims=True)
    total = functions.where(total == scalar_like(total, 0), scalar_like(total, 1), total)
    return weights / total


def _additive(mask: Tensor, dtype: str) -> Tensor:
    if mask.dtype != "bool":
        return mask.astype(dtype)
    zero, minus = const(np.zeros((), dtype)), const(np.array(-np.inf, dtype))
    return functions.where(mask, zero, minus)


@entry("Attention")
def attention(node, inputs, attributes, opset):
    """Scaled dot-product attention as ONNX's reference computes it (opsets 23-25): 3-D
    inputs split into heads, past keys and values prepended, GQA by repeating key/value
    heads, bottom-right causal and sliding-window masks, softcap, fully masked rows 0."""
    inputs = list(inputs) + [None] * (7 - len(inputs))
    q, k, v = (tensor(x) for x in inputs[:3])
    floats_only(node, q, k, v)
    mask, past_key, past_value, nonpad = inputs[3:7]
    dtype = q.dtype
    rank = q.ndim
    if rank == 3:
        q = _heads(q, attributes["q_num_heads"])
        k = _heads(k, attributes["kv_num_heads"])
        v = _heads(v, attributes["kv_num_heads"])
    scale = attributes.get("scale")
    scale = dtype_scalar(dtype, math.sqrt(1 / math.sqrt(q.shape[3]) if scale is None else scale))
    if past_key is not None:
        k = functions.concat([tensor(past_key, dtype), k], axis=2)
        v = functions.concat([tensor(past_value, dtype), v], axis=2)
    present_key, present_value = k, v
    q_length, kv_length = q.shape[2], k.shape[2]
    bias = const(np.zeros((q_length, kv_length), dtype))
    if mask is not None:
        mask = tensor(mask)
        if mask.shape[-1] < kv_length:
            fill = False if mask.dtype == "bool" else -np.inf
            widths = ((0, 0),) * (mask.ndim - 1) + ((0, kv_length - mask.shape[-1]),)
            mask = pad_tensor(mask, widths, fill)
        mask = _additive(mask, dtype)
    rows = Tensor(apply("iota", shape=(q_length, kv_length), axis=0, dtype="int64"))
    columns = Tensor(apply("iota", shape=(q_length, kv_length), axis=1, dtype="int64"))
    if nonpad is not None:
        offset = (tensor(nonpad).astype("int64") - q_length).reshape(-1, 1, 1, 1)
    else:
        offset = const(np.array(0 if past_key is None else past_key.shape[2], np.int64))
    if attributes.get("is_causal", 0):
        base = bias if mask is None else mask
        bias = base + _additive(columns <= rows + offset, dtype)
    elif mask is not None:
        bias = bias + mask
    left, right = attributes.get("left_window_size", -1), attributes.get("right_window_size", -1)
    if left >= 0 or right >= 0:
        difference = rows + offset - columns
        allowed = None
        if left >= 0:
            allowed = difference <= left
        if right >= 0:
            near = -difference <= right
            allowed = near if allowed is None else allowed & near
        bias = bias + _additive(allowed, dtype)
    if nonpad is not None:
        lengths = tensor(nonpad).astype("int64").reshape(-1, 1, 1, 1)
        positions = Tensor(apply("iota", shape=(1, 1, 1, kv_length), axis=3, dtype="int64"))
        bias = bias + _additive(positions < lengths, dtype)
    heads = q.shape[1]
    if heads != k.shape[1]:
        if heads % k.shape[1]:
            raise node.error(f"{heads} query heads for {k.shape[1]} key heads")
        repeat = heads // k.shape[1]
        k, v = (_repeat_heads(t, repeat) for t in (k, v))
    scores = matmul(q * scale, (k * scale).transpose(0, 1, 3, 2))
    softcap = attributes.get("softcap", 0.0)
    if softcap:
        scores = functions.tanh(scores / softcap) * softcap
    with_bias = scores + bias
    mode = attributes.get("qk_matmul_output_mode", 0)
    precision = attributes.get("softmax_precision")
    if precision is not None and DTYPES.get(precision) not in FLOATS:
        raise node.unsupported(f"softmax_precision={precision}")
    probabilities = _masked_softmax(with_bias.astype(DTYPES.get(precision, dtype)))
    masked_rows = bias.max(axis=-1, keepdims=True) == const(np.array(-np.inf, dtype))
    probabilities = functions.where(masked_rows, scalar_like(probabilities, 0), probabilities)
    probabilities = probabilities.astype(dtype)
    qk_output = {2: with_bias, 3: probabilities}.get(mode, scores)
    y = matmul(probabilities, v)
    if rank == 3:
        y = y.transpose(0, 2, 1, 3)
        y = y.reshape(y.shape[0], y.shape[1], -1)
    return [y, present_key, present_value, qk_output]


LINEAR_ATTENTION_RULES = ("linear", "gated", "delta", "gated_delta")


@entry("LinearAttention")
def linear_attention(node, inputs, attributes, opset):
    """Linear attention as ONNX's reference computes it (opset 27): one gc.scan over the
    tokens carrying the state S (batch, kv heads, d_k, d_v). Per token: gated rules decay S by
    exp(g); delta rules replace v by beta (v - S^T k); then S += k v^T and the output is
    scale q^T S, each query head reading its key/value head's S (grouped queries). In the
    inputs' dtype (the reference computes float64 inputs in float32)."""
    inputs = list(inputs) + [None] * (6 - len(inputs))
    q, k, v = (tensor(x) for x in inputs[:3])
    floats_only(node, q, k, v)
    past, decay, beta = inputs[3:6]
    rule = attributes.get("update_rule", "gated_delta")
    if rule not in LINEAR_ATTENTION_RULES:
        raise node.error(f"update_rule {rule!r} is not one of {', '.join(LINEAR_ATTENTION_RULES)}")
    gated, delta = rule in ("gated", "gated_delta"), rule in ("delta", "gated_delta")
    if gated != (decay is not None) or delta != (beta is not None):
        raise node.error(f"update_rule {rule!r} takes {'decay' if gated else 'no decay'} and "
                         f"{'beta' if delta else 'no beta'}")  # fmt: skip
    q_heads, kv_heads = attributes.get("q_num_heads", 0), attributes.get("kv_num_heads", 0)
    if kv_heads <= 0 or q_heads <= 0 or q_heads % kv_heads:
        raise node.error(f"q_num_heads={q_heads} must be a positive multiple of "
                         f"kv_num_heads={kv_heads}")  # fmt: skip
    if q.ndim != 3 or k.ndim != 3 or v.ndim != 3:
        raise node.error(f"query, key and value must be 3-D, got {q.type}, {k.type}, {v.type}")
    batch, steps, _ = q.shape
    d_k, d_v = q.shape[2] // q_heads, v.shape[2] // kv_heads
    expected = {
        "query": (q, (batch, steps, q_heads * d_k)),
        "key": (k, (batch, steps, kv_heads * d_k)),
        "value": (v, (batch, steps, kv_heads * d_v)),
    }
    if past is not None:
        past = tensor(past, q.dtype)
        expected["past_state"] = (past, (batch, kv_heads, d_k, d_v))
    for name, (value, shape) in expected.items():
        if value.shape != shape:
            raise node.error(f"{name} must be {shape} here, got {value.type}")

    def by_token(x: Tensor, heads: int) -> Tensor:
        """(batch, steps, heads * size) -> (steps, batch, heads, size)."""
        return x.reshape(batch, steps, heads, -1).transpose(1, 0, 2, 3)

    xs = [by_token(q, q_heads), by_token(k, kv_heads), by_token(v, kv_heads)]
    if gated:
        decay = tensor(decay, q.dtype)
        if decay.ndim != 3 or decay.shape[:2] != (batch, steps) or decay.shape[2] not in (
            kv_heads, kv_heads * d_k):  # fmt: skip
            raise node.error(f"decay must be ({batch}, {steps}, {kv_heads} or "
                             f"{kv_heads * d_k}), got {decay.type}")  # fmt: skip
        xs.append(by_token(decay, kv_heads))  # (.., kv heads, 1 or d_k)
    if delta:
        beta = tensor(beta, q.dtype)
        if beta.ndim != 3 or beta.shape[:2] != (batch, steps) or beta.shape[2] not in (
            kv_heads, 1):  # fmt: skip
            raise node.error(f"beta must be ({batch}, {steps}, {kv_heads} or 1), got {beta.type}")
        xs.append(beta.reshape(batch, steps, -1, 1).transpose(1, 0, 2, 3))
    scale = attributes.get("scale", 0.0) or 1 / math.sqrt(d_k)
    group = q_heads // kv_heads

    def step(state, token):
        q_t, k_t, v_t, *rest = token
        if gated:
            state = state * functions.expand_dims(functions.exp(rest.pop(0)), -1)
        if delta:
            retrieved = (state * functions.expand_dims(k_t, -1)).sum(axis=2)
            v_t = rest.pop(0) * (v_t - retrieved)
        state = state + functions.expand_dims(k_t, -1) * functions.expand_dims(v_t, 2)
        read = state if group == 1 else _repeat_heads(state, group)
        out = (functions.expand_dims(q_t, -1) * read).sum(axis=2) * scale
        return state, out

    if past is None:
        past = const(np.zeros((batch, kv_heads, d_k, d_v), q.dtype))
    state, out = scan(step, past, xs)
    return out.transpose(1, 0, 2, 3).reshape(batch, steps, q_heads * d_v), state


def dtype_scalar(dtype: str, value) -> Tensor:
    return const(np.asarray(value, dtype=dtype))


@entry("ConvTranspose")
def conv_transpose(node, inputs, attributes, opset):
    """The gradient of a conv as a conv: x spread out by the strides (interior zeros), padded
    by dilation * (kernel - 1) less the pads, against the flipped, transposed kernel."""
    x, w = tensor(inputs[0]), tensor(inputs[1])
    floats_only(node, x, w)
    rank = x.ndim - 2
    kernel = tuple(w.shape[2:])
    strides = tuple(attributes.get("strides", (1,) * rank))
    dilations = tuple(attributes.get("dilations", (1,) * rank))
    extra = tuple(attributes.get("output_padding", (0,) * rank))
    group = attributes.get("group", 1)
    auto_pad = attributes.get("auto_pad", "NOTSET")
    full = [s * (n - 1) + e + (k - 1) * d + 1
            for n, s, e, k, d in zip(x.shape[2:], strides, extra, kernel, dilations)]  # fmt: skip
    pads = attributes.get("pads")
    if pads is None and (auto_pad in ("SAME_UPPER", "SAME_LOWER") or "output_shape" in attributes):
        shape = attributes.get("output_shape", [n * s for n, s in zip(x.shape[2:], strides)])
        totals = [f - o for f, o in zip(full, shape[-rank:])]
        if auto_pad == "SAME_UPPER":
            pads = [t // 2 for t in totals] + [t - t // 2 for t in totals]
        else:
            pads = [t - t // 2 for t in totals] + [t // 2 for t in totals]
    elif auto_pad not in ("NOTSET", "VALID"):
        raise node.unsupported(f"auto_pad={auto_pad!r}")
    pads = pads or (0,) * (2 * rank)
    spread = ((0, 0, 0), (0, 0, 0)) + tuple((0, 0, s - 1) for s in strides)
    x = Tensor(apply("pad", x.node, widths=spread, value=0.0))
    widths = [
        (d * (k - 1) - lo, d * (k - 1) - hi + e)
        for k, d, lo, hi, e in zip(kernel, dilations, pads[:rank], pads[rank:], extra)
    ]
    x = pad_tensor(x, ((0, 0), (0, 0), *widths), 0.0)
    c_in, c_out = w.shape[0], w.shape[1] * group
    w = w.reshape(group, c_in // group, c_out // group, *kernel)
    w = w.transpose(0, 2, 1, *range(3, 3 + rank)).reshape(c_out, c_in // group, *kernel)
    w = flip(w, range(2, 2 + rank))
    result = convolution.conv(x, w, dilation=dilations, groups=group)
    if len(inputs) > 2 and inputs[2] is not None:
        result = result + tensor(inputs[2], result.dtype).reshape((1, -1) + (1,) * rank)
    return result


@entry("RotaryEmbedding")
def rotary_embedding(node, inputs, attributes, opset):
    """RoPE as ONNX's reference: rotate the first rotary_embedding_dim features of each head
    by the cached angles (halves, or interleaved pairs)."""
    x, cos, sin = (tensor(v) for v in inputs[:3])
    floats_only(node, x)
    positions = inputs[3] if len(inputs) > 3 else None
    shape = x.shape
    if x.ndim == 4:
        x = x.transpose(0, 2, 1, 3)
    else:
        heads = attributes.get("num_heads", 0)
        if not heads:
            raise node.error("3-D input needs num_heads")
        x = x.reshape(shape[0], shape[1], heads, shape[2] // heads)
    size = x.shape[3]
    dim = attributes.get("rotary_embedding_dim", 0) or size
    rotate, keep = x[..., :dim], x[..., dim:]
    if positions is not None:
        cos, sin = functions.take(cos, tensor(positions)), functions.take(sin, tensor(positions))
    cos, sin = functions.expand_dims(cos, 2), functions.expand_dims(sin, 2)
    interleaved = attributes.get("interleaved", 0)
    if interleaved:
        x1, x2 = rotate[..., 0::2], rotate[..., 1::2]
    else:
        x1, x2 = rotate[..., : dim // 2], rotate[..., dim // 2 :]
    real, imaginary = cos * x1 - sin * x2, sin * x1 + cos * x2
    if interleaved:
        rotate = composites.stack([real, imaginary], axis=-1).reshape(rotate.shape)
    else:
        rotate = functions.concat([real, imaginary], axis=-1)
    result = functions.concat([rotate, keep], axis=-1) if keep.shape[-1] else rotate
    return result.reshape(shape) if len(shape) == 3 else result.transpose(0, 2, 1, 3)


# ---- Scan -----------------------------------------------------------------------------------


def _move_axis(x: Tensor, source: int, target: int) -> Tensor:
    order = [i for i in range(x.ndim) if i != source]
    order.insert(target, source)
    return x.transpose(*order) if order != list(range(x.ndim)) else x


@entry("Scan")
def scan_op(node, inputs, attributes, opset):
    """ONNX's Scan (opsets 13-16 and on): its body imported once, inside one gc.scan over the
    scanned axis; each scan input and output may have its own axis and direction."""
    body = attributes["body"]
    count = attributes["num_scan_inputs"]
    if not 1 <= count <= len(inputs):
        raise node.error(f"num_scan_inputs={count} for {len(inputs)} inputs")
    states, scanned = [tensor(x) for x in inputs[: len(inputs) - count]], inputs[-count:]
    outputs = len(body.output) - len(states)
    if len(body.input) != len(states) + count or outputs < 0:
        raise node.error(f"the body takes {len(body.input)} inputs and gives "
                         f"{len(body.output)} outputs for {len(states)} states and {count} "
                         f"scan inputs")  # fmt: skip
    axes_in = attributes.get("scan_input_axes", [0] * count)
    directions_in = attributes.get("scan_input_directions", [0] * count)
    axes_out = attributes.get("scan_output_axes", [0] * outputs)
    directions_out = attributes.get("scan_output_directions", [0] * outputs)
    xs = []
    for x, axis, backwards in zip(scanned, axes_in, directions_in):
        x = tensor(x)
        x = _move_axis(x, axis_of(node, axis, x.ndim), 0)
        xs.append(flip(x, (0,)) if backwards else x)
    names = [value_info.name for value_info in body.input]

    def step(carry, x_t):
        results = node.subgraph(body, dict(zip(names, [*carry, *x_t])))
        results = [tensor(r) for r in results]
        return results[: len(states)], results[len(states) :]

    final, ys = scan(step, states, xs)
    stacked = []
    for y, axis, backwards in zip(ys, axes_out, directions_out):
        y = flip(y, (0,)) if backwards else y
        stacked.append(_move_axis(y, 0, axis_of(node, axis, y.ndim)))
    return [*final, *stacked]


@entry("If")
def if_op(node, inputs, attributes, opset):
    """ONNX's If: with its condition known while importing, the branch it takes; otherwise
    both branches, each output selected by the condition (their outputs must agree in shape
    and dtype; a branch that is not taken cannot change the result)."""
    cond = inputs[0]
    if isinstance(cond, np.ndarray):
        if cond.size != 1:
            raise node.error(f"the condition must have one element, got shape {cond.shape}")
        branch = attributes["then_branch" if bool(cond.reshape(-1)[0]) else "else_branch"]
        return node.subgraph(branch, {})
    cond = tensor(cond)
    if cond.dtype != "bool" or cond.size != 1:
        raise node.error(f"the condition must be one bool, got {cond.type}")
    taken = node.subgraph(attributes["then_branch"], {})
    other = node.subgraph(attributes["else_branch"], {})
    results = []
    for a, b in zip(map(tensor, taken), map(tensor, other)):
        if a.type != b.type:
            raise node.unsupported(f"branches computed at run time with outputs {a.type} and "
                                   f"{b.type}")  # fmt: skip
        results.append(functions.where(cond.reshape(()), a, b))
    return results


# ---- recurrent layers -----------------------------------------------------------------------

RECURRENT_GATES = {"RNN": 1, "GRU": 3, "LSTM": 4}
RECURRENT_ACTIVATIONS = {"RNN": ("Tanh",), "GRU": ("Sigmoid", "Tanh"),
                         "LSTM": ("Sigmoid", "Tanh", "Tanh")}  # fmt: skip
# the activations an RNN attribute may name that are ONNX ops of the table (with their
# defaults: activation_alpha / activation_beta are not imported)
_TABLE_ACTIVATIONS = ("Relu", "Tanh", "Sigmoid", "LeakyRelu", "ThresholdedRelu", "HardSigmoid",
                      "Elu", "Softsign", "Softplus")  # fmt: skip


def _activation(node, name: str):
    """The function an RNN's `activations` entry names (ONNX spells them as its ops)."""
    known = {n.lower(): n for n in _TABLE_ACTIVATIONS}
    if name.lower() not in known:
        raise node.unsupported(f"activation {name!r}")
    as_op = copy.copy(node)  # the entry reads its op type from the node (Elu, LeakyRelu ...)
    as_op.op_type = known[name.lower()]
    return lambda x: TABLE[as_op.op_type](as_op, [x], {}, node.opset)


@entry("RNN", "GRU", "LSTM")
def recurrent(node, inputs, attributes, opset):
    """ONNX's RNN, GRU and LSTM (opsets 14 and 22: `layout`): each direction one gc.scan over
    the sequence (reverse: scanned from the end, its outputs kept in the sequence's order),
    the input products x W^T of all steps computed as one product before the loop. Outputs
    Y (steps, directions, batch, hidden), Y_h and, for LSTM, Y_c (directions, batch, hidden);
    batch first with layout 1. sequence_lens must be known while importing; outputs past a
    sequence's length are 0 and Y_h is its state at its last step (forward only)."""
    op = node.op_type
    gates = RECURRENT_GATES[op]
    inputs = list(inputs) + [None] * (8 - len(inputs))
    x, w, r = (tensor(v) for v in inputs[:3])
    floats_only(node, x, w, r)
    same_dtype(node, x, w)
    same_dtype(node, x, r)
    b, lengths, h0 = inputs[3:6]
    c0, peepholes = inputs[6:8] if op == "LSTM" else (None, None)
    for attribute in ("activation_alpha", "activation_beta", "clip"):
        if attribute in attributes:
            raise node.unsupported(f"attribute {attribute}")
    if attributes.get("input_forget", 0):
        raise node.unsupported("input_forget=1")
    direction = attributes.get("direction", "forward")
    if direction not in ("forward", "reverse", "bidirectional"):
        raise node.error(f"direction {direction!r} is not forward, reverse or bidirectional")
    directions = 2 if direction == "bidirectional" else 1
    layout = attributes.get("layout", 0)
    if x.ndim != 3:
        raise node.error(f"X must be 3-D, got {x.type}")
    if layout:
        x = x.transpose(1, 0, 2)
    steps, batch, features = x.shape
    hidden = r.shape[-1] if r.ndim == 3 else -1
    expected = {"W": (w, (directions, gates * hidden, features)),
                "R": (r, (directions, gates * hidden, hidden))}  # fmt: skip
    if attributes.get("hidden_size", hidden) != hidden:
        raise node.error(f"hidden_size={attributes['hidden_size']} but R is {r.type}")
    states = {
        "B": (b, (directions, 2 * gates * hidden)),
        "P": (peepholes, (directions, 3 * hidden)),
    }
    for name, value in (("initial_h", h0), ("initial_c", c0)):
        states[name] = (value, (directions, batch, hidden) if not layout else
                        (batch, directions, hidden))  # fmt: skip
    for name, (value, shape) in {**expected, **states}.items():
        if value is not None and tuple(tensor(value).shape) != shape:
            raise node.error(f"{name} must be {shape} here, got {tensor(value).type}")
    names = attributes.get("activations") or RECURRENT_ACTIVATIONS[op] * directions
    per = len(RECURRENT_ACTIVATIONS[op])
    if len(names) != per * directions:
        raise node.error(f"activations needs {per * directions} names, got {list(names)}")
    activations = [_activation(node, name) for name in names]

    mask = None
    if lengths is not None:
        lengths = np.asarray(ints(node, lengths, "sequence_lens"))
        if lengths.shape != (batch,) or lengths.min(initial=steps) < 1 or lengths.max() > steps:
            raise node.error(f"sequence_lens {lengths.tolist()} for {batch} sequences of {steps}")
        if (lengths != steps).any():
            if direction != "forward":
                raise node.unsupported(f"sequence_lens shorter than the sequence, {direction}")
            mask = (np.arange(steps)[:, None] < lengths[None, :])[..., None]  # (steps, batch, 1)

    def state(value, d):
        if value is None:
            return const(np.zeros((batch, hidden), x.dtype))
        value = tensor(value, x.dtype)
        return value[:, d] if layout else value[d]

    ys, last_h, last_c = [], [], []
    for d in range(directions):
        w_d, r_d = w[d], r[d]
        bias = tensor(b)[d] if b is not None else const(np.zeros(2 * gates * hidden, x.dtype))
        w_bias, r_bias = bias[: gates * hidden], bias[gates * hidden :]
        # one product for all steps: (steps * batch, features) @ W^T
        xw = (matmul(x.reshape(steps * batch, features), w_d.T) + w_bias).reshape(
            steps, batch, gates * hidden
        )
        weights = _Weights(
            r_d.T, r_bias, hidden, tuple(activations[d * per : (d + 1) * per]),
            bool(attributes.get("linear_before_reset", 0)),
            tensor(peepholes, x.dtype)[d] if peepholes is not None else None,
        )  # fmt: skip
        init = (state(h0, d), state(c0, d)) if op == "LSTM" else state(h0, d)
        xs = xw if mask is None else (xw, const(mask.astype(x.dtype)))

        def step(carry, inputs, weights=weights):
            xw_t, keep = inputs if mask is not None else (inputs, None)
            new = _RECURRENT_CELLS[op](carry, xw_t, weights)
            h = new[0] if op == "LSTM" else new
            if keep is None:
                return new, h
            kept = tuple(
                functions.where(keep > 0, n, o) for n, o in zip(_leaves(new), _leaves(carry))
            )
            return (kept if op == "LSTM" else kept[0]), h * keep

        carry, y = scan(step, init, xs, reverse=direction == "reverse" or d == 1)
        ys.append(y)
        last_h.append(carry[0] if op == "LSTM" else carry)
        if op == "LSTM":
            last_c.append(carry[1])
    y = composites.stack(ys, axis=1)  # (steps, directions, batch, hidden)
    outputs = [y, composites.stack(last_h, axis=0)]
    if op == "LSTM":
        outputs.append(composites.stack(last_c, axis=0))
    if layout:
        outputs = [outputs[0].transpose(2, 0, 1, 3)] + [o.transpose(1, 0, 2) for o in outputs[1:]]
    return outputs


def _leaves(value) -> tuple:
    return tuple(value) if isinstance(value, tuple) else (value,)


@dataclass(frozen=True)
class _Weights:
    """What one direction's cell reads besides its carry and the step's x W^T + W_b."""

    r_t: Tensor  # R^T: (hidden, gates * hidden)
    r_bias: Tensor
    hidden: int
    activations: tuple  # f (, g (, h)) in ONNX's order
    linear_before_reset: bool = False  # GRU
    peepholes: Tensor | None = None  # LSTM: (p_i, p_o, p_f)


def _rnn_cell(h, xw, w: _Weights):
    (f,) = w.activations
    return f(xw + matmul(h, w.r_t) + w.r_bias)


def _gru_cell(h, xw, w: _Weights):
    """z and r from both products; the candidate n with reset before R_h (ONNX's default) or
    after it (linear_before_reset, PyTorch's form); h' = (1 - z) n + z h."""
    f, g = w.activations
    u = w.hidden
    zr = xw[:, : 2 * u] + matmul(h, w.r_t[:, : 2 * u]) + w.r_bias[: 2 * u]
    z, reset = f(zr[:, :u]), f(zr[:, u:])
    r_h, b_h = w.r_t[:, 2 * u :], w.r_bias[2 * u :]
    if w.linear_before_reset:
        n = g(xw[:, 2 * u :] + reset * (matmul(h, r_h) + b_h))
    else:
        n = g(xw[:, 2 * u :] + matmul(reset * h, r_h) + b_h)
    return (1 - z) * n + z * h


def _lstm_cell(carry, xw, w: _Weights):
    """Gates (i, o, f, c) in ONNX's order; peepholes: i and f see the old cell, o the new."""
    h, c = carry
    f, g, act_h = w.activations
    u = w.hidden
    gates = xw + matmul(h, w.r_t) + w.r_bias
    i, o, forget, candidate = (gates[:, k * u : (k + 1) * u] for k in range(4))
    p = w.peepholes
    if p is not None:
        i, forget = i + p[:u] * c, forget + p[2 * u :] * c
    c = f(forget) * c + f(i) * g(candidate)
    if p is not None:
        o = o + p[u : 2 * u] * c
    return f(o) * act_h(c), c


_RECURRENT_CELLS = {"RNN": _rnn_cell, "GRU": _gru_cell, "LSTM": _lstm_cell}
