"""ONNX's shape, layout and indexing ops (Shape, Reshape, Slice, Pad, Gather, Scatter ...):
shapes and indices known while importing are NumPy arrays (table.py), so shape arithmetic
folds away."""

from __future__ import annotations

import math

import numpy as np

import graphc.frontend.functions as functions
from graphc.frontend.tensor import Tensor, broadcast_to, const, matmul
from graphc.ir.ops import apply
from graphc.ir.types import FLOATS
from graphc.onnx.table import (
    DTYPES,
    axis_of,
    entry,
    ints,
    pad_tensor,
    scalar_like,
    static,
    tensor,
)

# ---- shapes ---------------------------------------------------------------------------------


def shape_of(value) -> tuple[int, ...]:
    return tuple(value.shape)


@entry("Shape")
def shape(node, inputs, attributes, opset):
    dims = shape_of(inputs[0])
    start, end = attributes.get("start", 0), attributes.get("end")
    return np.array(dims[slice(start, end)], dtype=np.int64)


@entry("Size")
def size(node, inputs, attributes, opset):
    return np.array(math.prod(shape_of(inputs[0])), dtype=np.int64)


@entry("Constant")
def constant(node, inputs, attributes, opset):
    ((kind, value),) = attributes.items()
    if kind == "value":
        return value
    arrays = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64,
              "value_ints": np.int64}  # fmt: skip
    if kind not in arrays:
        raise node.unsupported(f"attribute {kind}")
    return np.array(value, dtype=arrays[kind])


@entry("ConstantOfShape")
def constant_of_shape(node, inputs, attributes, opset):
    dims = ints(node, inputs[0], "shape")
    value = attributes.get("value", np.zeros(1, np.float32))
    return np.full(dims, value.reshape(-1)[0], dtype=value.dtype)


@entry("Range")
def range_(node, inputs, attributes, opset):
    start, limit, delta = (static(node, v, name) for v, name in
                           zip(inputs, ("start", "limit", "delta")))  # fmt: skip
    for value, name in ((start, "start"), (limit, "limit"), (delta, "delta")):
        if value.size != 1:  # scalars; ONNX's own function bodies pass 1-element vectors
            raise node.error(f"{name} must be a scalar, got shape {value.shape}")
    start, limit, delta = (np.asarray(v).reshape(()) for v in (start, limit, delta))
    count = max(int(np.ceil((limit - start) / delta)), 0)
    return (start + np.arange(count, dtype=start.dtype) * delta).astype(start.dtype)


@entry("EyeLike")
def eye_like(node, inputs, attributes, opset):
    rows, columns = shape_of(inputs[0])
    dtype = DTYPES.get(attributes.get("dtype"), None) if "dtype" in attributes else None
    if "dtype" in attributes and dtype is None:
        raise node.unsupported(f"dtype={attributes['dtype']}")
    dtype = dtype or (inputs[0].dtype if isinstance(inputs[0], Tensor) else inputs[0].dtype.name)
    return np.eye(rows, columns, attributes.get("k", 0), dtype=dtype)


@entry("Reshape")
def reshape(node, inputs, attributes, opset):
    x = tensor(inputs[0])
    dims = ints(node, inputs[1], "shape")
    if not attributes.get("allowzero", 0):
        dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
    if dims.count(-1) > 1:
        raise node.error(f"shape {dims} has several -1")
    if -1 in dims:
        known = math.prod(d for d in dims if d != -1)
        dims[dims.index(-1)] = x.size // known if known else 0
    if math.prod(dims) != x.size:
        raise node.error(f"cannot reshape {x.type} to {tuple(dims)}")
    return x.reshape(tuple(dims))


@entry("Flatten")
def flatten(node, inputs, attributes, opset):
    x = tensor(inputs[0])
    axis = attributes.get("axis", 1)
    axis = axis + x.ndim if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


def _axes_input(node, inputs, attributes, opset):
    if opset >= 13 and len(inputs) > 1:
        return ints(node, inputs[1], "axes")
    return attributes.get("axes")


@entry("Squeeze")
def squeeze(node, inputs, attributes, opset):
    x = tensor(inputs[0])
    axes = _axes_input(node, inputs, attributes, opset)
    return functions.squeeze(x, None if axes is None else tuple(axes))


@entry("Unsqueeze")
def unsqueeze(node, inputs, attributes, opset):
    x = tensor(inputs[0])
    axes = _axes_input(node, inputs, attributes, opset)
    rank = x.ndim + len(axes)
    return functions.expand_dims(x, tuple(axis_of(node, a, rank) for a in axes))


@entry("Transpose")
def transpose(node, inputs, attributes, opset):
    x = tensor(inputs[0])
    perm = tuple(attributes.get("perm", reversed(range(x.ndim))))
    if sorted(perm) == list(range(x.ndim)):
        moved = [axis for axis in perm if x.shape[axis] != 1]
        if moved == sorted(moved):  # only axes of length 1 move: a reshape
            return x.reshape(tuple(x.shape[axis] for axis in perm))
    return x.transpose(perm)


@entry("Concat")
def concat(node, inputs, attributes, opset):
    xs = [tensor(x) for x in inputs if x is not None]
    axis = axis_of(node, attributes["axis"], xs[0].ndim)
    xs = [x for x in xs if x.shape[axis] or len(xs) == 1]
    return functions.concat(xs, axis=axis)


@entry("Split")
def split(node, inputs, attributes, opset):
    x = tensor(inputs[0])
    axis = axis_of(node, attributes.get("axis", 0), x.ndim)
    sizes = ints(node, inputs[1], "split") if len(inputs) > 1 and inputs[1] is not None else None
    count = len(node.outputs)
    if sizes is None:
        parts = attributes.get("num_outputs", count)
        each = -(-x.shape[axis] // parts)
        sizes = [min(each, x.shape[axis] - i * each) for i in range(parts)]
    bounds = np.cumsum([0, *sizes])
    return [x[(slice(None),) * axis + (slice(int(lo), int(hi)),)]
            for lo, hi in zip(bounds[:-1], bounds[1:])]  # fmt: skip


@entry("Slice")
def slice_(node, inputs, attributes, opset):
    x = tensor(inputs[0])
    starts, ends = ints(node, inputs[1], "starts"), ints(node, inputs[2], "ends")
    axes = ints(node, inputs[3], "axes") if len(inputs) > 3 and inputs[3] is not None else None
    steps = ints(node, inputs[4], "steps") if len(inputs) > 4 and inputs[4] is not None else None
    axes = list(range(len(starts))) if axes is None else [axis_of(node, a, x.ndim) for a in axes]
    steps = steps or [1] * len(starts)
    index = [slice(None)] * x.ndim
    flips = []
    for axis, start, end, step in zip(axes, starts, ends, steps):
        lo, hi, step = slice(start, end, step).indices(x.shape[axis])
        if step > 0:
            index[axis] = slice(lo, max(hi, lo), step)
        else:  # the reversed axis, sliced forward: element lo first
            n = x.shape[axis]
            count = len(range(lo, hi, step))
            first = n - 1 - lo
            index[axis] = slice(first, first + max(count - 1, 0) * -step + (1 if count else 0),
                                -step)  # fmt: skip
            flips.append(axis)
    if flips:
        x = Tensor(apply("reverse", x.node, axes=tuple(flips)))
    return x[tuple(index)]


@entry("Expand")
def expand(node, inputs, attributes, opset):
    x = tensor(inputs[0])
    dims = ints(node, inputs[1], "shape")
    try:
        target = np.broadcast_shapes(x.shape, tuple(dims))
    except ValueError:
        raise node.error(f"{x.type} does not broadcast to {tuple(dims)}") from None
    return broadcast_to(x.reshape((1,) * (len(target) - x.ndim) + x.shape), target)


@entry("Tile")
def tile(node, inputs, attributes, opset):
    x = tensor(inputs[0])
    repeats = ints(node, inputs[1], "repeats")
    for axis, count in enumerate(repeats):
        if count != 1:
            x = (
                functions.concat([x] * count, axis=axis)
                if count
                else x[(slice(None),) * axis + (slice(0, 0),)]
            )
    return x


@entry("Pad")
def pad(node, inputs, attributes, opset):
    x = tensor(inputs[0])
    mode = attributes.get("mode", "constant")
    pads = ints(node, inputs[1], "pads")
    value = 0
    if len(inputs) > 2 and isinstance(inputs[2], Tensor) and inputs[2].size == 1:
        value = inputs[2].astype(x.dtype)
    elif len(inputs) > 2 and inputs[2] is not None:
        value = static(node, inputs[2], "constant_value").reshape(-1)
        value = value[0].item() if value.size else 0
    axes = ints(node, inputs[3], "axes") if len(inputs) > 3 and inputs[3] is not None else None
    axes = list(range(x.ndim)) if axes is None else [axis_of(node, a, x.ndim) for a in axes]
    widths = [(0, 0)] * x.ndim
    for i, axis in enumerate(axes):
        widths[axis] = (pads[i], pads[i + len(axes)])
    if mode == "constant" and isinstance(value, Tensor):  # a value fed at run time
        inside = pad_tensor(const(np.ones(x.shape, bool)), widths, False)
        return functions.where(inside, pad_tensor(x, widths, 0), value.reshape(()))
    if mode == "constant":
        return pad_tensor(x, widths, value)
    if mode not in ("reflect", "edge", "wrap"):
        raise node.unsupported(f"mode={mode!r}")
    for axis, (lo, hi) in enumerate(widths):
        if lo < 0 or hi < 0:
            raise node.unsupported(f"negative pads in mode {mode!r}")
        n = x.shape[axis]
        positions = [_padded_position(mode, i, n) for i in range(-lo, n + hi)]
        if (lo or hi) and any(not 0 <= p < n for p in positions):
            raise node.error(f"pads {widths[axis]} are too wide for mode {mode!r} on axis {axis}")
        if lo or hi:
            x = functions.take(x, np.array(positions, np.int64), axis=axis)
    return x


def _padded_position(mode: str, i: int, n: int) -> int:
    """The element of an axis of n that position i (-lo <= i < n + hi) reads in `mode`."""
    if mode == "reflect":
        return abs(i) if i < n else 2 * (n - 1) - i
    return min(max(i, 0), n - 1) if mode == "edge" else i % n


@entry("Gather")
def gather(node, inputs, attributes, opset):
    x = tensor(inputs[0])
    axis = axis_of(node, attributes.get("axis", 0), x.ndim)
    indices = inputs[1]
    if isinstance(indices, np.ndarray) and indices.ndim == 0:  # a constant index: a view
        n = x.shape[axis]
        if not -n <= int(indices) < n:
            raise node.error(f"index {int(indices)} is out of range for axis {axis} of {x.type}")
        index = int(indices) % n
        return x[(slice(None),) * axis + (slice(index, index + 1),)].reshape(
            x.shape[:axis] + x.shape[axis + 1 :]
        )
    return functions.take(x, tensor(indices), axis=axis)


def _flat_positions(node, x_shape, indices: Tensor, axis: int) -> Tensor:
    """Row-major positions in x of take_along_axis(x, indices, axis) (negatives wrap)."""
    n = x_shape[axis]
    indices = indices.astype("int64")
    indices = functions.where(indices < 0, indices + n, indices)
    strides = np.cumprod((1,) + tuple(reversed(x_shape[1:])))[::-1]
    position = None
    for a, stride in enumerate(strides):
        if a == axis:
            coordinate = indices
        else:
            coordinate = Tensor(apply("iota", shape=indices.shape, axis=a, dtype="int64"))
        term = coordinate * int(stride)
        position = term if position is None else position + term
    return position


@entry("GatherElements")
def gather_elements(node, inputs, attributes, opset):
    x, indices = tensor(inputs[0]), tensor(inputs[1])
    axis = axis_of(node, attributes.get("axis", 0), x.ndim)
    positions = _flat_positions(node, x.shape, indices, axis)
    return functions.take(x.reshape(-1), positions.reshape(-1)).reshape(indices.shape)


@entry("ScatterElements")
def scatter_elements(node, inputs, attributes, opset):
    x, indices, updates = (tensor(v) for v in inputs)
    axis = axis_of(node, attributes.get("axis", 0), x.ndim)
    reduction = attributes.get("reduction", "none")
    positions = _flat_positions(node, x.shape, indices, axis).reshape(-1)
    flat, values = x.reshape(-1), updates.reshape(-1)
    if reduction == "add":
        return functions.scatter_add(flat, positions, values).reshape(x.shape)
    if reduction != "none":
        raise node.unsupported(f"reduction={reduction!r}")
    if x.dtype == "bool":
        raise node.unsupported("element type bool")
    # ONNX leaves repeated indices undefined for reduction="none": each index is hit once
    hit = functions.scatter_add(flat * 0, positions, values * 0 + 1)
    placed = functions.scatter_add(flat * 0, positions, values)
    return functions.where(hit > 0, placed, flat).reshape(x.shape)


@entry("OneHot")
def one_hot(node, inputs, attributes, opset):
    indices = tensor(inputs[0])
    depth = static(node, inputs[1], "depth").reshape(-1)[0]
    values = tensor(inputs[2])
    axis = attributes.get("axis", -1)
    depth = int(depth)
    indices = indices.astype("int64") if indices.dtype in FLOATS else indices
    indices = functions.where(indices < 0, indices + depth, indices)
    rank = indices.ndim + 1
    axis = axis_of(node, axis, rank)
    shape = indices.shape[:axis] + (depth,) + indices.shape[axis:]
    positions = Tensor(apply("iota", shape=shape, axis=axis, dtype=indices.dtype))
    hot = positions == broadcast_to(functions.expand_dims(indices, axis), shape)
    return functions.where(hot, values[1], values[0])


@entry("Trilu")
def trilu(node, inputs, attributes, opset):
    x = tensor(inputs[0])
    k = ints(node, inputs[1], "k")[0] if len(inputs) > 1 and inputs[1] is not None else 0
    rows = Tensor(apply("iota", shape=x.shape, axis=x.ndim - 2, dtype="int64"))
    columns = Tensor(apply("iota", shape=x.shape, axis=x.ndim - 1, dtype="int64"))
    keep = (columns - rows >= k) if attributes.get("upper", 1) else (columns - rows <= k)
    return functions.where(keep, x, scalar_like(x, 0))


@entry("DepthToSpace", "SpaceToDepth")
def depth_space(node, inputs, attributes, opset):
    x = tensor(inputs[0])
    b = attributes["blocksize"]
    n, c, h, w = x.shape
    dcr = attributes.get("mode", "DCR") == "DCR"
    if node.op_type == "SpaceToDepth":
        x = x.reshape(n, c, h // b, b, w // b, b)
        x = x.transpose((0, 3, 5, 1, 2, 4) if dcr else (0, 1, 3, 5, 2, 4))
        return x.reshape(n, c * b * b, h // b, w // b)
    if dcr:
        x = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    else:
        x = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    return x.reshape(n, c // (b * b), h * b, w * b)


@entry("Dropout")
def dropout(node, inputs, attributes, opset):
    training = inputs[2] if len(inputs) > 2 else None
    ratio = inputs[1] if len(inputs) > 1 else None
    if training is not None and not isinstance(training, np.ndarray):
        raise node.needs_constant("training_mode")
    if training is not None and bool(training):
        if ratio is not None and not isinstance(ratio, np.ndarray):
            raise node.needs_constant("ratio")  # training with ratio 0 is the identity
        if ratio is None or float(ratio) != 0.0:
            raise node.unsupported("training_mode with a ratio other than 0 (random dropout)")
    x = inputs[0]
    if len(node.outputs) > 1 and node.outputs[1]:
        return [x, np.ones(shape_of(x), bool)]
    return x


def _nd_positions(node, data_shape, indices: Tensor, batch_dims: int) -> tuple[Tensor, tuple]:
    """Row-major positions of GatherND / ScatterND's index tuples in data reshaped to
    (positions, *slice): the positions have indices.shape[:-1]."""
    k = indices.shape[-1]
    sliced = data_shape[batch_dims + k :]
    indices = indices.astype("int64")
    position = None
    for b in range(batch_dims):  # the batch axes index themselves
        coordinate = Tensor(apply("iota", shape=indices.shape[:-1], axis=b, dtype="int64"))
        position = coordinate if position is None else position * data_shape[b] + coordinate
    for j in range(k):
        size = data_shape[batch_dims + j]
        coordinate = indices[..., j]
        coordinate = functions.where(coordinate < 0, coordinate + size, coordinate)
        position = coordinate if position is None else position * size + coordinate
    return position, sliced


@entry("GatherND")
def gather_nd(node, inputs, attributes, opset):
    x, indices = tensor(inputs[0]), tensor(inputs[1])
    batch_dims = attributes.get("batch_dims", 0)
    positions, sliced = _nd_positions(node, x.shape, indices, batch_dims)
    rows = x.reshape(-1, *sliced) if sliced else x.reshape(-1)
    return functions.take(rows, positions, axis=0)


@entry("ScatterND")
def scatter_nd(node, inputs, attributes, opset):
    x, indices, updates = (tensor(v) for v in inputs)
    positions, sliced = _nd_positions(node, x.shape, indices, 0)
    rows = x.reshape(-1, *sliced)
    reduction = attributes.get("reduction", "none")
    positions = positions.reshape(-1)
    values = updates.reshape(-1, *sliced)
    if reduction == "add":
        return functions.scatter_add(rows, positions, values).reshape(x.shape)
    if reduction != "none" or x.dtype == "bool":
        raise node.unsupported(f"reduction={reduction!r}" if reduction != "none" else "bool")
    hit = functions.scatter_add(rows * 0, positions, values * 0 + 1)
    placed = functions.scatter_add(rows * 0, positions, values)
    return functions.where(hit > 0, placed, rows).reshape(x.shape)


def _resize_matrix(node, attributes, length: int, scale, size, roi) -> np.ndarray:
    """The (out, length) matrix of one axis of Resize: ONNX's Resize is linear in the input
    and separable by axis, so its reference (onnx.reference) applied to the identity gives
    the interpolation weights of every mode, coordinate transform and antialias exactly."""
    from onnx import TensorProto, helper
    from onnx.reference import ReferenceEvaluator

    keep = ("mode", "coordinate_transformation_mode", "cubic_coeff_a", "exclude_outside",
            "nearest_mode", "antialias")  # fmt: skip
    settings = {k: v for k, v in attributes.items() if k in keep}
    given = ("scales", "") if size is None else ("", "sizes")
    resize = helper.make_node("Resize", ["x", "roi", *given], ["y"], **settings)
    graph = helper.make_graph(
        [resize], "resize_axis", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, None)],
        [helper.make_tensor_value_info("y", TensorProto.DOUBLE, None)],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", node.opset)])
    feeds = {"x": np.eye(length), "roi": np.array([0.0, roi[0], 1.0, roi[1]])}
    if size is None:
        feeds["scales"] = np.array([1.0, scale], np.float32)
    else:
        feeds["sizes"] = np.array([length, size], np.int64)
    (weights,) = ReferenceEvaluator(model).run(None, feeds)
    return weights.T


@entry("Resize")
def resize(node, inputs, attributes, opset):
    """Per resized axis, a product with its interpolation matrix (built while importing)."""
    x = tensor(inputs[0])
    if x.dtype not in FLOATS:
        raise node.unsupported(f"element type {x.dtype}")
    if attributes.get("keep_aspect_ratio_policy", "stretch") != "stretch":
        raise node.unsupported(
            f"keep_aspect_ratio_policy={attributes['keep_aspect_ratio_policy']!r}"
        )
    if attributes.get("extrapolation_value", 0.0) != 0.0:
        raise node.unsupported("extrapolation_value other than 0")
    inputs = list(inputs) + [None] * (4 - len(inputs))
    roi = static(node, inputs[1], "roi")
    scales = static(node, inputs[2], "scales")
    sizes = ints(node, inputs[3], "sizes")
    axes = attributes.get("axes", list(range(x.ndim)))
    axes = [axis_of(node, a, x.ndim) for a in axes]
    count = len(axes)
    for i, axis in enumerate(axes):
        scale = None if scales is None or scales.size == 0 else float(scales[i])
        size = None if not sizes else sizes[i]
        if (scale == 1.0 and size is None) or size == x.shape[axis]:
            if attributes.get("coordinate_transformation_mode") != "tf_crop_and_resize":
                continue
        span = (0.0, 1.0) if roi is None or roi.size == 0 else (roi[i], roi[i + count])
        matrix = _resize_matrix(node, attributes, x.shape[axis], scale, size, span)
        order = [a for a in range(x.ndim) if a != axis] + [axis]
        moved = x.transpose(order)
        result = matmul(moved, const(matrix.T.astype(x.dtype)))
        x = result.transpose([int(a) for a in np.argsort(order)])
    return x
