"""gc.Program -> ONNX model: one ONNX node (or a few) per graphc primitive, in the graph's
topological order. Inputs keep their names and shapes, params become initializers named after
them (their current values), constants and iotas become Constant nodes, each output an
Identity named after the Tensor (or output_<i>). Layout ops map to their ONNX namesakes;
a window view (pooling, convolution windows) becomes a Gather of precomputed positions over
the flattened spatial axes, exact for every value (NaN and -inf padding included).

A program with updates (a training step) or an op ONNX cannot express (random bits,
allreduce, scan) is a GraphcError naming the op and the line that created it.
"""

from __future__ import annotations

import itertools
import re

import numpy as np

from graphc.errors import GraphcError
from graphc.onnx.table import ONNX_TYPES

ELEMENTWISE = {
    "neg": "Neg", "abs": "Abs", "sign": "Sign", "exp": "Exp", "log": "Log", "sin": "Sin",
    "cos": "Cos", "tanh": "Tanh", "sqrt": "Sqrt", "sigmoid": "Sigmoid", "atan": "Atan",
    "erf": "Erf", "floor": "Floor", "ceil": "Ceil", "round": "Round", "add": "Add",
    "sub": "Sub", "mul": "Mul", "pow": "Pow", "maximum": "Max", "minimum": "Min", "lt": "Less",
    "le": "LessOrEqual", "gt": "Greater", "ge": "GreaterOrEqual", "eq": "Equal",
    "logical_and": "And", "logical_or": "Or", "logical_not": "Not", "where": "Where",
    "matmul": "MatMul", "stop_gradient": "Identity",
}  # fmt: skip

FLOATS = ("float32", "float64")


class _Writer:
    """The ONNX nodes and initializers being written, and a name per graphc node."""

    def __init__(self, onnx):
        self.onnx, self.helper = onnx, onnx.helper
        self.nodes, self.initializers, self.names = [], [], {}
        self.taken: set[str] = set()
        self.counter = itertools.count()

    def fresh(self, hint: str) -> str:
        base = re.sub(r"[^\w.]", "_", hint) or "value"
        name = base
        while name in self.taken:
            name = f"{base}_{next(self.counter)}"
        self.taken.add(name)
        return name

    def constant(self, array, hint: str = "const") -> str:
        """A Constant node (an initializer would come back as a param)."""
        tensor = self.onnx.numpy_helper.from_array(np.asarray(array))
        return self.add("Constant", [], hint, value=tensor)

    def initializer(self, array, name: str) -> str:
        name = self.fresh(name)
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(array), name))
        return name

    def add(self, op_type: str, inputs, hint: str, **attributes) -> str:
        output = self.fresh(hint)
        self.nodes.append(self.helper.make_node(op_type, list(inputs), [output], **attributes))
        return output


def _int64(values) -> np.ndarray:
    return np.asarray(values, dtype=np.int64).reshape(-1)


def _window_positions(shape, kernel, stride, dilation) -> np.ndarray:
    """Flat positions in x's spatial axes of window(x): shape (*out, *kernel)."""
    spatial = shape[2:]
    out = [(n - d * (k - 1) - 1) // s + 1 for n, k, s, d in zip(spatial, kernel, stride, dilation)]
    grids = np.meshgrid(*[np.arange(o) for o in out], *[np.arange(k) for k in kernel],
                        indexing="ij")  # fmt: skip
    rank = len(kernel)
    position = np.zeros(grids[0].shape, np.int64)
    for axis in range(rank):
        coordinate = grids[axis] * stride[axis] + grids[rank + axis] * dilation[axis]
        position = position * spatial[axis] + coordinate
    return position


def _convert(writer: _Writer, node, args: list[str]) -> str:
    """The ONNX value computing graphc `node` from the ONNX values of its inputs."""
    op, attrs, hint = node.op, node.attrs, node.name or node.op
    if op in ELEMENTWISE:
        return writer.add(ELEMENTWISE[op], args, hint)
    if op == "log1p":
        one = writer.constant(np.ones((), node.dtype))
        return writer.add("Log", [writer.add("Add", [args[0], one], "plus_one")], hint)
    if op == "div":
        if node.dtype not in FLOATS:
            raise _unsupported(node, "integer div")
        return writer.add("Div", args, hint)
    if op in ("remainder", "floor_divide"):
        a, b = args
        if node.inputs[0].dtype in FLOATS:  # a - floor(a / b) * b, as NumPy
            quotient = writer.add("Floor", [writer.add("Div", args, "ratio")], "floor")
            if op == "floor_divide":
                return writer.add("Identity", [quotient], hint)
            return writer.add("Sub", [a, writer.add("Mul", [quotient, b], "multiple")], hint)
        remainder = writer.add("Mod", args, "remainder" if op == "floor_divide" else hint, fmod=0)
        if op == "remainder":
            return remainder
        return writer.add("Div", [writer.add("Sub", [a, remainder], "exact"), b], hint)
    if op == "ne":
        return writer.add("Not", [writer.add("Equal", args, "equal")], hint)
    if op == "cast":
        return writer.add("Cast", args, hint, to=ONNX_TYPES[attrs["dtype"]])
    if op == "broadcast_to":
        return writer.add("Expand", [args[0], writer.constant(_int64(attrs["shape"]))], hint)
    if op == "reshape":
        return writer.add("Reshape", [args[0], writer.constant(_int64(node.shape))], hint)
    if op == "transpose":
        return writer.add("Transpose", args, hint, perm=list(attrs["perm"]))
    if op == "slice":
        parts = [_int64(attrs[k]) for k in ("starts", "stops", "steps")]
        starts, stops, steps = (writer.constant(p) for p in parts)
        axes = writer.constant(_int64(range(len(attrs["starts"]))))
        return writer.add("Slice", [args[0], starts, stops, axes, steps], hint)
    if op == "reverse":
        axes = list(attrs["axes"])
        count = len(axes)
        starts = writer.constant(_int64([-1] * count))
        ends = writer.constant(_int64([-(2**62)] * count))
        steps = writer.constant(_int64([-1] * count))
        return writer.add("Slice", [args[0], starts, ends, writer.constant(_int64(axes)), steps],
                          hint)  # fmt: skip
    if op == "pad":
        widths = attrs["widths"]
        if any(interior for _, _, interior in widths):
            raise _unsupported(node, "interior padding")
        pads = _int64([lo for lo, _, _ in widths] + [hi for _, hi, _ in widths])
        value = writer.constant(np.asarray(attrs["value"], node.dtype))
        return writer.add("Pad", [args[0], writer.constant(pads), value], hint, mode="constant")
    if op == "concat":
        return writer.add("Concat", args, hint, axis=attrs["axis"])
    if op in ("sum", "max"):
        axes = writer.constant(_int64(attrs["axes"]))
        keepdims = int(attrs["keepdims"])
        return writer.add("ReduceSum" if op == "sum" else "ReduceMax", [args[0], axes], hint,
                          keepdims=keepdims)  # fmt: skip
    if op == "argmax":
        return writer.add("ArgMax", args, hint, axis=attrs["axis"], keepdims=int(attrs["keepdims"]))
    if op == "take":
        return writer.add("Gather", args, hint, axis=attrs["axis"])
    if op == "scatter_add":
        return _scatter_add(writer, node, args, hint)
    if op == "conv":
        x = node.inputs[0]
        return writer.add("Conv", args, hint, strides=list(attrs["stride"]),
                          dilations=list(attrs["dilation"]), group=attrs["groups"],
                          pads=[0] * (2 * (x.ndim - 2)))  # fmt: skip
    if op == "window":
        x = node.inputs[0]
        positions = _window_positions(x.shape, attrs["kernel"], attrs["stride"], attrs["dilation"])
        flat = writer.add("Reshape", [args[0], writer.constant(_int64((*x.shape[:2], -1)))], "flat")
        return writer.add("Gather", [flat, writer.constant(positions, "window_positions")], hint,
                          axis=2)  # fmt: skip
    raise _unsupported(node, f"the op {op}")


def _scatter_add(writer: _Writer, node, args: list[str], hint: str) -> str:
    """scatter_add(a, indices, updates, axis) as ScatterElements(reduction="add") with the
    indices flattened and expanded to the updates' shape."""
    a, indices, updates = node.inputs
    axis = node.attrs["axis"]
    count = int(np.prod(indices.shape))
    shape = a.shape[:axis] + (count,) + a.shape[axis + 1 :]
    flat_updates = writer.add("Reshape", [args[2], writer.constant(_int64(shape))], "updates")
    along = (1,) * axis + (count,) + (1,) * (a.ndim - axis - 1)
    flat_indices = writer.add("Reshape", [args[1], writer.constant(_int64(along))], "indices")
    expanded = writer.add("Expand", [flat_indices, writer.constant(_int64(shape))], "indices")
    return writer.add("ScatterElements", [args[0], expanded, flat_updates], hint, axis=axis,
                      reduction="add")  # fmt: skip


def _unsupported(node, what: str) -> GraphcError:
    return GraphcError(
        f"gc.onnx.export: {what} has no ONNX form here (node {node.op} {node.type}, created at "
        f"{node.loc})"
    )


def export(program, path=None, *, opset: int = 18):
    """The ONNX ModelProto of `program` (written to `path` when given)."""
    from graphc.frontend.functions import Program
    from graphc.onnx.importer import _onnx

    onnx = _onnx()
    if not isinstance(program, Program):
        raise GraphcError(f"gc.onnx.export takes a gc.Program, got {type(program).__name__}")
    if program.updates:
        raise GraphcError(
            "gc.onnx.export writes a program without updates (an inference program): "
            f"{program.name} updates {[p.name for p, _ in program.updates]}; build a Program "
            "of the outputs alone (it shares the trained params)"
        )
    writer = _Writer(onnx)
    helper = onnx.helper
    graph_inputs = []
    for node in program.graph.nodes:
        if node.op == "input":
            writer.names[node] = writer.fresh(node.name)
            graph_inputs.append(helper.make_tensor_value_info(
                node.name, ONNX_TYPES[node.dtype], list(node.shape)))  # fmt: skip
        elif node.op == "param":
            array = np.asarray(node.attrs["storage"].value, dtype=node.dtype)
            writer.names[node] = writer.initializer(array, node.name)
        elif node.op in ("const", "iota"):
            from graphc.ir.ops import OPS

            value = node.attrs["value"] if node.op == "const" else OPS["iota"].ref([], node.attrs)
            writer.names[node] = writer.constant(np.asarray(value, node.dtype), "const")
        else:
            writer.names[node] = _convert(writer, node, [writer.names[x] for x in node.inputs])
    outputs = []
    for i, tensor in enumerate(program.outputs):
        name = writer.fresh(tensor.node.name if tensor.node.op not in ("input", "param")
                            and tensor.node.name else f"output_{i}")  # fmt: skip
        writer.nodes.append(helper.make_node("Identity", [writer.names[tensor.node]], [name]))
        outputs.append(helper.make_tensor_value_info(
            name, ONNX_TYPES[tensor.dtype], list(tensor.shape)))  # fmt: skip
    graph = helper.make_graph(writer.nodes, program.name, graph_inputs, outputs,
                              initializer=writer.initializers)  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="graphc")  # fmt: skip
    model.ir_version = min(model.ir_version, 10)
    onnx.checker.check_model(model)
    if path is not None:
        onnx.save(model, str(path))
    return model
