"""The importer's table: `TABLE[op_type](node, inputs, attributes, opset)` returns the ONNX
node's outputs (a Tensor, an array, or a list of them). One entry per ONNX op, registered with
`@entry` by elementwise.py (math, comparisons, casts, reductions, losses), shapes.py (shapes,
indexing, gathers and scatters, Resize) and layers.py (contractions, convolution, pooling,
normalization, attention, recurrent layers); this module holds the table, the node being
imported, the errors and the helpers the entries share.

Inputs are Tensors, NumPy arrays (values known while importing, see importer.py) or None (an
optional input left out). Each entry handles the opset differences of its op (attributes
that became inputs, defaults that changed) and raises `node.unsupported(...)` for what it
cannot express exactly. ONNX ops are typed strictly (both operands of Add have one dtype), so
NumPy's promotion never changes a dtype here; constants are made in the operand's dtype.
"""

from __future__ import annotations

import numpy as np

from graphc.errors import GraphcError, ShapeError
from graphc.frontend.tensor import Tensor, const
from graphc.ir.ops import apply
from graphc.ir.types import FLOATS

# ONNX TensorProto element types graphc has
DTYPES = {1: "float32", 11: "float64", 6: "int32", 7: "int64", 9: "bool"}
ONNX_TYPES = {name: code for code, name in DTYPES.items()}


class UnsupportedError(GraphcError):
    """An ONNX op, attribute, dtype or opset that graphc does not import."""


class StaticInputError(UnsupportedError):
    """An input that must be known while importing (a shape, axes, pads) is computed at run
    time; graphc.onnx.backend then imports the model again with its integer inputs fixed."""


class OnnxNode:
    """The node being imported: its name, op type and opset, for entries and their errors."""

    def __init__(self, proto, opset: int, index: int):
        self.proto = proto
        self.op_type = proto.op_type
        self.name = proto.name or f"{proto.op_type}_{index}"
        self.opset = opset
        self.outputs = list(proto.output)
        # set by the importer: the values in scope, the model's opset, the file or graph name,
        # and how it imports a subgraph (importer.run_subgraph)
        self.scope: dict = {}
        self.model_opset = opset
        self.origin = ""
        self.import_subgraph = None

    def subgraph(self, graph, bound: dict) -> list:
        """The outputs of `graph`, a subgraph attribute of this node (a Scan's body, an If's
        branch), with its inputs `bound` (name -> value)."""
        return self.import_subgraph(self, graph, bound)

    def where(self) -> str:
        return f"ONNX node {self.name!r} ({self.op_type}, opset {self.opset})"

    def unsupported(self, what: str) -> UnsupportedError:
        return UnsupportedError(f"{self.where()}: {what} is not supported")

    def needs_constant(self, what: str) -> StaticInputError:
        return StaticInputError(
            f"{self.where()}: {what} is computed at run time; graphc needs it while importing"
        )

    def error(self, what: str) -> ShapeError:
        return ShapeError(f"{self.where()}: {what}")


TABLE: dict = {}


def entry(*op_types: str):
    """Register the decorated function as the entry of each ONNX op in `op_types`."""

    def register(function):
        for op_type in op_types:
            if op_type in TABLE:
                raise ValueError(f"two entries for the ONNX op {op_type}")
            TABLE[op_type] = function
        return function

    return register


# ---- helpers --------------------------------------------------------------------------------


def tensor(value, dtype=None) -> Tensor:
    """A Tensor of an input (arrays become constants of their own dtype)."""
    if isinstance(value, Tensor):
        return value if dtype is None else value.astype(dtype)
    array = np.asarray(value)
    return const(array, dtype or array.dtype.name)


def static(node, value, what: str) -> np.ndarray:
    """An input whose value must be known while importing (a shape, axes, pads ...)."""
    if value is None or isinstance(value, np.ndarray):
        return value
    if value.node.op == "param":  # a float initializer read as scales, pads ...: its value
        return np.array(value.value)
    raise node.needs_constant(what)


def ints(node, value, what: str) -> list[int] | None:
    array = static(node, value, what)
    return None if array is None else [int(v) for v in np.asarray(array).reshape(-1)]


def scalar_like(x: Tensor, value) -> Tensor:
    return const(np.asarray(value, dtype=x.dtype))


def floats_only(node, *xs: Tensor) -> None:
    for x in xs:
        if x.dtype not in FLOATS:
            raise node.unsupported(f"element type {x.dtype} (this op takes floats)")


def axis_of(node, axis: int, ndim: int) -> int:
    if not -max(ndim, 1) <= axis < max(ndim, 1):
        raise node.error(f"axis {axis} is out of range for rank {ndim}")
    return axis % max(ndim, 1)


def pad_tensor(x: Tensor, widths, value) -> Tensor:
    """x with (low, high) elements of `value` added per axis (negative widths crop)."""
    widths = [(int(lo), int(hi)) for lo, hi in widths]
    if any(lo < 0 or hi < 0 for lo, hi in widths):
        index = tuple(slice(max(-lo, 0), x.shape[i] - max(-hi, 0)) for i, (lo, hi) in
                      enumerate(widths))  # fmt: skip
        x = x[index]
        widths = [(max(lo, 0), max(hi, 0)) for lo, hi in widths]
    if not any(lo or hi for lo, hi in widths):
        return x
    full = tuple((lo, hi, 0) for lo, hi in widths)
    return Tensor(apply("pad", x.node, widths=full, value=value))


def flip(x: Tensor, axes) -> Tensor:
    """x in the reverse order along each of `axes`."""
    return Tensor(apply("reverse", x.node, axes=tuple(axes)))


def same_dtype(node, a: Tensor, b: Tensor) -> None:
    if a.dtype != b.dtype:
        raise node.error(f"operands {a.type} and {b.type} have different element types")
