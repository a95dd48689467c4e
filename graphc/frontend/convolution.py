"""Convolution and pooling over channels-first tensors (N, C, *spatial), PyTorch's semantics.

    conv(x, w)      pad (zeros) -> conv: lowered to a batched matmul over the window view of
                    the padded input (ir/ops.py "windows and convolution"), so the taps are
                    read in place; its gradients are a conv and a matmul over the same view
    max_pool(x, k)  pad (-inf) -> window view -> the first arg-max of each window (tap by
                    tap, elementwise, in a small window), and the value there: the gradient
                    goes to that one element, as PyTorch's does
    avg_pool(x, k)  pad (zeros) -> window view -> sum / taps (padding counted, as PyTorch)

1-, 2- or 3-D by the rank of the input; `conv1d` / `conv2d` / `max_pool2d` / `avg_pool2d`
are the same functions.
"""

from __future__ import annotations

import numbers
from math import prod

import numpy as np

from graphc.errors import DTypeError, ShapeError
from graphc.frontend.functions import where
from graphc.frontend.tensor import Tensor, as_tensor
from graphc.ir.graph import user_location
from graphc.ir.ops import apply
from graphc.ir.types import FLOATS

__all__ = ["avg_pool", "avg_pool2d", "conv", "conv1d", "conv2d", "max_pool", "max_pool2d"]


def _where() -> str:
    loc = user_location()
    return f" (at {loc})" if loc else ""


def _per_axis(value, rank: int, what: str, op: str) -> tuple[int, ...]:
    """An int or one int per spatial axis, as a tuple of `rank` ints."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return (int(value),) * rank
    if isinstance(value, (tuple, list)) and len(value) == rank:
        if all(isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value):
            return tuple(int(v) for v in value)
    raise ShapeError(
        f"{op}: {what} must be an int or a tuple of {rank} ints, got {value!r}{_where()}"
    )


def _spatial_input(x, op: str, minimum_rank: int = 3) -> Tensor:
    x = as_tensor(x)
    if x.ndim < minimum_rank or x.ndim > 5:
        raise ShapeError(
            f"{op}: input {x.type} must be (N, C, *spatial) with 1 to 3 spatial axes{_where()}"
        )
    if x.dtype not in FLOATS:
        raise DTypeError(f"{op}: input {x.type} must be float32 or float64{_where()}")
    return x


def _pad_widths(padding, kernel, dilation, stride, op: str) -> tuple[tuple[int, int], ...]:
    """(low, high) per spatial axis: an int, ints per axis, (low, high) pairs, "valid" or
    "same" (PyTorch: stride 1; the odd element of the total goes high)."""
    rank = len(kernel)
    if padding == "valid":
        return ((0, 0),) * rank
    if padding == "same":
        if any(s != 1 for s in stride):
            raise ShapeError(f"{op}: padding='same' needs stride 1, got {stride}{_where()}")
        totals = [d * (k - 1) for k, d in zip(kernel, dilation)]
        return tuple((t // 2, t - t // 2) for t in totals)
    if isinstance(padding, (tuple, list)) and padding and isinstance(padding[0], (tuple, list)):
        pairs = tuple(tuple(p) for p in padding)
        if len(pairs) == rank and all(len(p) == 2 for p in pairs):
            widths = tuple((int(lo), int(hi)) for lo, hi in pairs)
            if min(min(p) for p in widths) >= 0:
                return widths
        raise ShapeError(f"{op}: padding {padding!r} must be {rank} (low, high) pairs >= 0")
    if isinstance(padding, str):
        raise ShapeError(f"{op}: padding must be an int, a tuple, 'valid' or 'same'{_where()}")
    widths = _per_axis(padding, rank, "padding", op)
    if min(widths) < 0:
        raise ShapeError(f"{op}: padding {padding!r} must not be negative{_where()}")
    return tuple((p, p) for p in widths)


def _pad(x: Tensor, widths, value: float) -> Tensor:
    if not any(lo or hi for lo, hi in widths):
        return x
    full = ((0, 0, 0),) * (x.ndim - len(widths)) + tuple((lo, hi, 0) for lo, hi in widths)
    return Tensor(apply("pad", x.node, widths=full, value=value))


def conv(x, w, stride=1, padding=0, dilation=1, groups=1) -> Tensor:
    """N-d convolution (cross-correlation, as PyTorch's conv1d/2d/3d): `x` is (N, C,
    *spatial), `w` (out_channels, in_channels // groups, *kernel); `padding` an int, a tuple,
    (low, high) pairs, "valid" or "same". Add a bias and an activation after it: they fuse
    into the kernel computing the product."""
    x = _spatial_input(x, "conv")
    w = as_tensor(w)
    rank = x.ndim - 2
    if w.ndim != x.ndim:
        raise ShapeError(
            f"conv: weight {w.type} must be (out_channels, in_channels // groups, *kernel) "
            f"with {rank} kernel axes for input {x.type}{_where()}"
        )
    if isinstance(groups, bool) or not isinstance(groups, numbers.Integral):
        raise ShapeError(f"conv: groups must be an int, got {groups!r}{_where()}")
    stride = _per_axis(stride, rank, "stride", "conv")
    dilation = _per_axis(dilation, rank, "dilation", "conv")
    widths = _pad_widths(padding, w.shape[2:], dilation, stride, "conv")
    padded = _pad(x, widths, 0.0)
    node = apply(
        "conv", padded.node, w.astype(x.dtype).node, stride=stride, dilation=dilation,
        groups=int(groups),
    )  # fmt: skip
    return Tensor(node)


def _windows(x: Tensor, kernel, stride, padding, fill: float, op: str) -> Tensor:
    """The windows of x as (N, C, *out, taps), after padding with `fill`."""
    rank = x.ndim - 2
    kernel = _per_axis(kernel, rank, "kernel", op)
    stride = kernel if stride is None else _per_axis(stride, rank, "stride", op)
    widths = _pad_widths(padding, kernel, (1,) * rank, stride, op)
    if any(max(lo, hi) * 2 > k for (lo, hi), k in zip(widths, kernel)):
        raise ShapeError(
            f"{op}: padding {padding!r} must be at most half the kernel {kernel}{_where()}"
        )
    padded = _pad(x, widths, fill)
    node = apply("window", padded.node, kernel=kernel, stride=stride, dilation=(1,) * rank)
    out = node.shape[2 : 2 + rank]
    return Tensor(node).reshape(*x.shape[:2], *out, prod(kernel))


# A window of at most this many taps finds its first maximum elementwise, tap by tap, in
# the kernels that read it: in inference the pooling is then one kernel, not an arg-max
# reduction and a second pass (LeNet-5 at batch 64, one thread: 0.92 -> 0.78 ms); a larger
# one by an argmax reduction, whose graph does not grow with the window.
ELEMENTWISE_TAPS = 16


def _first_maximum(windows: Tensor) -> Tensor:
    """The index of the first maximum over the last axis (int32, kept as an axis of 1), as
    NumPy's argmax: the first NaN wins over everything."""
    taps = windows.shape[-1]
    if not 1 < taps <= ELEMENTWISE_TAPS:
        first = Tensor(apply("argmax", windows.node, axis=windows.ndim - 1, keepdims=True))
        return first.astype("int32")
    best, first = windows[..., 0], np.int32(0)
    for k in range(1, taps):
        tap = windows[..., k]
        better = (tap > best) | ((tap != tap) & (best == best))
        best = where(better, tap, best)
        first = where(better, np.int32(k), first)
    return first.reshape(*first.shape, 1)


def max_pool(x, kernel, stride=None, padding=0) -> Tensor:
    """The maximum over each window of the spatial axes (`stride` defaults to `kernel`;
    padding is -inf). The gradient goes to the first maximum of each window, as PyTorch's."""
    x = _spatial_input(x, "max_pool")
    windows = _windows(x, kernel, stride, padding, float("-inf"), "max_pool")
    # The first arg-max of each window, and the value there: the gradient goes to that one
    # element. In training fusion stores the arg-max (one int32 a window: the backward pass
    # reads it instead of comparing the taps again); the forward value and the gradient each
    # compare it with the tap index.
    first = _first_maximum(windows)
    taps = Tensor(apply("iota", shape=windows.shape, axis=windows.ndim - 1, dtype="int32"))
    return where(taps == first, windows, 0.0).sum(axis=-1)


def avg_pool(x, kernel, stride=None, padding=0) -> Tensor:
    """The mean over each window of the spatial axes (`stride` defaults to `kernel`; zero
    padding counts towards the mean, as PyTorch's default count_include_pad=True)."""
    x = _spatial_input(x, "avg_pool")
    windows = _windows(x, kernel, stride, padding, 0.0, "avg_pool")
    return windows.sum(axis=-1) * (1.0 / windows.shape[-1])


conv1d = conv2d = conv
max_pool2d = max_pool
avg_pool2d = avg_pool
