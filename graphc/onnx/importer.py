"""ONNX model -> gc.Program: the graph's nodes in order, each through its table entry.

Each node goes through its entry in the table (table.py; the entries are in elementwise.py,
shapes.py and layers.py). A value of the ONNX graph is either a graphc Tensor or, when it is
known while importing (a Constant, an integer initializer, a Shape of a static tensor,
anything computed from those alone), a NumPy array: shape arithmetic (Shape -> Gather ->
Concat -> Reshape) folds away and Reshape, Slice, Pad ... read their shapes from it. Float
initializers become params named after them (so the model can be trained); integer and bool
initializers are constants.

Opsets 13 to the newest the installed onnx knows; a model of an older opset imports when each
of its ops has kept the definition it had then (onnx.defs says so). Anything the table cannot
express exactly (an op, an attribute value, a dtype, an op's older definition) is an
UnsupportedError naming the node, its op type and opset: never a result computed differently.
"""

from __future__ import annotations

import os
import re

import numpy as np

from graphc.errors import GraphcError, ShapeError
from graphc.frontend.functions import Program, evaluate
from graphc.frontend.tensor import Tensor, const, input, param
from graphc.ir.graph import location
from graphc.onnx.table import DTYPES, OnnxNode, UnsupportedError

OLDEST_OPSET = 13


def _onnx():
    try:
        import onnx
    except ImportError:
        raise GraphcError(
            "graphc.onnx needs the onnx package: pip install 'graphc[onnx]'"
        ) from None
    return onnx


def dtype_of(code: int, what: str) -> str:
    """The graphc dtype of an ONNX element type, else UnsupportedError naming `what`."""
    if code not in DTYPES:
        name = _onnx().TensorProto.DataType.Name(code) if code else "undefined"
        raise UnsupportedError(f"{what}: element type {name} is not supported (graphc has "
                               f"float32, float64, int32, int64, bool)")  # fmt: skip
    return DTYPES[code]


def to_array(tensor_proto, what: str) -> np.ndarray:
    """An ONNX TensorProto as an array of a graphc dtype."""
    dtype_of(tensor_proto.data_type, what)
    return _onnx().numpy_helper.to_array(tensor_proto)


def attributes(node: OnnxNode) -> dict:
    """The node's attributes as Python values (tensors as arrays, strings as str)."""
    helper = _onnx().helper
    result = {}
    for attribute in node.proto.attribute:
        if attribute.ref_attr_name:
            raise node.unsupported(f"attribute reference {attribute.name}")
        value = helper.get_attribute_value(attribute)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode() for v in value]
        elif attribute.type == attribute.TENSOR:
            value = to_array(value, f"{node.where()}: attribute {attribute.name}")
        elif attribute.type in (attribute.GRAPHS, attribute.SPARSE_TENSOR):
            raise node.unsupported(f"attribute {attribute.name} (subgraphs or a sparse tensor)")
        # a GRAPH (a Scan's body) stays a GraphProto: the entry imports it (run_subgraph)
        result[attribute.name] = value
    return result


def _shape_of(value_info, what: str) -> tuple[int, ...]:
    dims = []
    for i, dim in enumerate(value_info.type.tensor_type.shape.dim):
        if dim.HasField("dim_value"):
            dims.append(dim.dim_value)
        else:
            raise ShapeError(
                f"{what} has a symbolic dimension {dim.dim_param or '?'!r} (axis {i}): fix it "
                f"with shapes={{{value_info.name!r}: (...)}}"
            )
    return tuple(dims)


def _read_model(model_or_path):
    onnx = _onnx()
    if isinstance(model_or_path, (str, os.PathLike)):
        try:
            return onnx.load(os.fspath(model_or_path))
        except (OSError, onnx.onnx_cpp2py_export.checker.ValidationError) as error:
            raise GraphcError(f"cannot read the ONNX model {model_or_path}: {error}") from None
        except Exception as error:  # a protobuf DecodeError: not an ONNX file
            raise GraphcError(f"{model_or_path} is not an ONNX model: {error}") from None
    if isinstance(model_or_path, onnx.ModelProto):
        return model_or_path
    raise GraphcError(
        f"gc.onnx.load takes an onnx.ModelProto or a path, got {type(model_or_path).__name__}"
    )


def opset_of(model) -> int:
    """The default-domain opset the model imports (at most the installed onnx's newest)."""
    versions = [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")]
    opset = versions[0] if versions else 1
    newest = _onnx().defs.onnx_opset_version()
    if opset > newest:
        raise UnsupportedError(f"ONNX opset {opset} is newer than the installed onnx's {newest}")
    return opset


def node_opset(node_proto, opset: int, name: str) -> int:
    """The opset the table entry sees: the model's, or 13 for a model older than opset 13
    whose node's op has kept the definition it had then (the table starts at opset 13)."""
    if opset >= OLDEST_OPSET:
        return opset
    defs = _onnx().defs
    try:
        then = defs.get_schema(node_proto.op_type, opset).since_version
        now = defs.get_schema(node_proto.op_type, OLDEST_OPSET).since_version
    except defs.SchemaError:
        then, now = None, 0
    if then != now:
        raise UnsupportedError(
            f"ONNX node {name!r} ({node_proto.op_type}, opset {opset}): this op's "
            f"definition before opset {OLDEST_OPSET} is not supported (graphc imports opsets "
            f"{OLDEST_OPSET} to {defs.onnx_opset_version()})"
        )
    return OLDEST_OPSET


def _program_name(name: str) -> str:
    name = re.sub(r"\W", "_", name or "onnx_model")
    return name if name[:1].isalpha() else f"onnx_{name}"


def load(model_or_path, shapes=None) -> Program:
    """An ONNX model (a path or an onnx.ModelProto) as a gc.Program: graph inputs keep their
    names, float initializers become params named after them, `shapes={"x": (1, 3, 28, 28)}`
    fixes symbolic dimensions."""
    # the entries' modules fill the table as they are imported
    from graphc.onnx import elementwise as _elementwise  # noqa: F401
    from graphc.onnx import layers as _layers  # noqa: F401
    from graphc.onnx import shapes as _shapes  # noqa: F401

    model = _read_model(model_or_path)
    if isinstance(model_or_path, (str, os.PathLike)):
        origin = os.path.basename(os.fspath(model_or_path))
    else:
        origin = model.graph.name or "onnx"
    opset = opset_of(model)
    graph = model.graph
    shapes = dict(shapes or {})
    values: dict[str, object] = {"": None}
    for initializer in graph.initializer:
        array = to_array(initializer, f"initializer {initializer.name!r}")
        if array.dtype.kind == "f":
            values[initializer.name] = param(initializer.name, array)
        else:
            values[initializer.name] = array
    inputs = []
    for value_info in graph.input:
        if value_info.name in values:  # IR < 4: initializers are listed as inputs too
            continue
        if not value_info.type.HasField("tensor_type"):
            raise UnsupportedError(f"graph input {value_info.name!r}: only tensors are supported")
        dtype = dtype_of(value_info.type.tensor_type.elem_type, f"graph input {value_info.name!r}")
        if value_info.name in shapes:
            shape = tuple(int(d) for d in shapes.pop(value_info.name))
        else:
            shape = _shape_of(value_info, f"graph input {value_info.name!r}")
        values[value_info.name] = tensor = input(value_info.name, shape, dtype)
        inputs.append(tensor)
    if shapes:
        raise GraphcError(f"shapes= names {sorted(shapes)}, which are not graph inputs")
    run_nodes(graph.node, values, opset, origin)
    outputs = []
    for value_info in graph.output:
        value = _lookup(values, value_info.name, None)
        tensor = value if isinstance(value, Tensor) else const(value)
        _check_declared(tensor, value_info)
        outputs.append(tensor)
    return Program(inputs, outputs, name=_program_name(graph.name))


def run_nodes(nodes, values: dict, opset: int, origin: str) -> None:
    """Import `nodes` in order, each through its table entry, into `values` (ONNX value
    name -> Tensor, array or None). Each node keeps `values` as its scope: a Scan's body
    reads the values of the graphs around it (`run_subgraph`)."""
    from graphc.onnx.table import TABLE

    for index, proto in enumerate(nodes):
        node = OnnxNode(proto, opset, index)
        if proto.domain not in ("", "ai.onnx"):
            raise node.unsupported(f"domain {proto.domain!r}")
        node.opset = node_opset(proto, opset, node.name)
        node.scope, node.model_opset, node.origin = values, opset, origin
        node.import_subgraph = run_subgraph
        if node.op_type not in TABLE:
            raise node.unsupported("this op")
        args = [_lookup(values, name, node) for name in proto.input]
        # the graph's nodes say which ONNX node they come from (dumps, errors), not this line
        with location(f"{origin}:{node.name} ({node.op_type})"):
            results = TABLE[node.op_type](node, args, attributes(node), node.opset)
        results = list(results) if isinstance(results, (list, tuple)) else [results]
        # folded when computed from constants alone (a subgraph may read any value in scope)
        subgraphs = any(a.type == a.GRAPH for a in proto.attribute)
        if not subgraphs and all(a is None or isinstance(a, np.ndarray) for a in args):
            results = _fold(results)
        for name, result in zip(node.outputs, results):
            if name:
                values[name] = result


def run_subgraph(node: OnnxNode, graph, bound: dict) -> list:
    """The outputs of `graph` (a node's subgraph attribute: a Scan's body) with its inputs
    `bound` (name -> value), reading the values of the graphs around it; its initializers
    are constants."""
    values = dict(node.scope)
    for initializer in graph.initializer:
        values[initializer.name] = to_array(initializer, f"{node.where()}: initializer")
    values.update(bound)
    run_nodes(graph.node, values, node.model_opset, f"{node.origin}:{node.name}")
    return [_lookup(values, value_info.name, node) for value_info in graph.output]


def _lookup(values: dict, name: str, node: OnnxNode | None):
    if name not in values:
        where = f"{node.where()}: input" if node else "graph output"
        raise GraphcError(f"{where} {name!r} is not computed before it is read")
    return values[name]


def _fold(results: list) -> list:
    """Results computed from constants alone, as arrays (so shapes built from them fold)."""
    tensors = [r for r in results if isinstance(r, Tensor)]
    if not tensors:
        return results
    arrays = iter(evaluate(tensors, {}))
    return [next(arrays) if isinstance(r, Tensor) else r for r in results]


def _check_declared(tensor: Tensor, value_info) -> None:
    """A graph output's dtype and static dims must be those the model declares."""
    declared = value_info.type.tensor_type
    if not value_info.type.HasField("tensor_type"):
        raise UnsupportedError(f"graph output {value_info.name!r}: only tensors are supported")
    what = f"graph output {value_info.name!r}"
    dtype = dtype_of(declared.elem_type, what) if declared.elem_type else tensor.dtype
    if dtype != tensor.dtype:
        raise GraphcError(f"{what} is {tensor.type}, the model declares {dtype}")
    if declared.HasField("shape"):
        dims = declared.shape.dim
        fixed = [d.dim_value if d.HasField("dim_value") else None for d in dims]
        if len(fixed) != tensor.ndim or any(
            f is not None and f != d for f, d in zip(fixed, tensor.shape)
        ):
            raise ShapeError(
                f"graph output {value_info.name!r} is {tensor.type}, the model declares shape "
                f"{tuple(f if f is not None else '?' for f in fixed)}"
            )
