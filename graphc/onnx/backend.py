"""graphc as an ONNX backend (`onnx.backend.base.Backend`), so that ONNX's own conformance
suite runs it: `onnx.backend.test.BackendTest(graphc.onnx.backend, __name__)`.

`prepare` imports the model (gc.onnx.load) and JIT-compiles it (with the on-disk object
cache, so a second run of the suite compiles nothing); `run` calls the executable. A model
whose inputs have symbolic dimensions is imported at its first run, with the shapes of the
arrays it is given. What graphc does not import (an op, attribute, dtype or opset) raises
`BackendIsNotSupposedToImplementIt`, which the suite counts as skipped.
"""

from __future__ import annotations

import numpy as np
from onnx.backend.base import Backend, BackendRep
from onnx.backend.test.runner import BackendIsNotSupposedToImplementIt

from graphc.frontend.functions import compile as compile_program
from graphc.frontend.functions import evaluate
from graphc.ir.graph import topological_order
from graphc.onnx.importer import load
from graphc.onnx.table import StaticInputError, UnsupportedError

__all__ = ["GraphcBackend", "GraphcRep", "prepare", "run_model", "run_node", "supports_device"]


class GraphcRep(BackendRep):
    """A prepared model: `run(inputs)` -> the outputs, in the graph's order."""

    def __init__(self, model, mode: str = "compile"):
        if mode not in ("compile", "interpret"):
            raise ValueError(f"mode must be 'compile' or 'interpret', got {mode!r}")
        self.model, self.mode = model, mode
        self.names = _input_names(model)
        for value in model.graph.input:
            if not value.type.HasField("tensor_type"):
                raise BackendIsNotSupposedToImplementIt(
                    f"graph input {value.name!r}: only tensors are supported"
                )
        self.program = self.executable = self.frozen = None
        if not _symbolic(model, self.names):
            try:
                self._build(model, None)
            except StaticInputError:
                self.frozen = {}  # imported at the first run, integer inputs fixed

    def _build(self, model, shapes) -> None:
        try:
            self.program = load(model, shapes=shapes)
        except StaticInputError:
            raise
        except UnsupportedError as error:
            raise BackendIsNotSupposedToImplementIt(str(error)) from None
        if self.mode == "compile":
            self.executable = compile_program(self.program)

    def _specialize(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Import the model for these inputs: their shapes; and if it needs integer inputs
        while importing (a Reshape's shape fed at run time), their values, fixed as
        initializers and imported again when they change. The arrays still to pass."""
        feed = dict(zip(self.names, arrays))
        if self.frozen is None and self.program is None:
            try:
                self._build(self.model, {name: a.shape for name, a in feed.items()})
                return arrays
            except StaticInputError:
                self.frozen = {}
        if self.frozen is not None:
            integers = {name: a for name, a in feed.items() if a.dtype.kind in "iub"}
            for fixed in (integers, feed):  # then every input, when the integers do not do
                if self.program is not None and not _differ(fixed, self.frozen):
                    break
                model = _with_initializers(self.model, fixed)
                shapes = {name: a.shape for name, a in feed.items() if name not in fixed}
                try:
                    self._build(model, shapes)
                except StaticInputError as error:
                    if fixed is feed:
                        raise BackendIsNotSupposedToImplementIt(str(error)) from None
                    continue
                self.frozen = fixed
                break
            return [a for name, a in feed.items() if name not in self.frozen]
        return arrays

    def run(self, inputs, **kwargs):
        if isinstance(inputs, dict):
            arrays = [np.asarray(inputs[name]) for name in self.names]
        elif isinstance(inputs, (list, tuple)):
            arrays = [np.asarray(x) for x in inputs]
        else:
            arrays = [np.asarray(inputs)]
        if self.program is None or self.frozen is not None:
            arrays = self._specialize(arrays)
        if self.executable is not None:
            outputs = self.executable(*arrays)
        else:
            names = [x.name for x in self.program.inputs]
            nodes = topological_order([o.node for o in self.program.outputs])
            read = {n.name for n in nodes if n.op == "input"}
            feed = {n: a for n, a in zip(names, arrays) if n in read}
            outputs = evaluate(self.program.outputs, feed)
        return tuple(outputs if isinstance(outputs, list) else [outputs])


def _differ(a: dict, b: dict) -> bool:
    return a.keys() != b.keys() or any(
        a[k].shape != b[k].shape or not np.array_equal(a[k], b[k]) for k in a
    )


def _with_initializers(model, arrays: dict):
    """A copy of `model` whose graph inputs named in `arrays` are Constant nodes of them
    (values known while importing, as integer initializers are)."""
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    kept = [v for v in copy.graph.input if v.name not in arrays]
    del copy.graph.input[:]
    copy.graph.input.extend(kept)
    constants = [
        onnx.helper.make_node("Constant", [], [name], value=onnx.numpy_helper.from_array(array))
        for name, array in arrays.items()
    ]
    nodes = constants + list(copy.graph.node)
    del copy.graph.node[:]
    copy.graph.node.extend(nodes)
    return copy


def _input_names(model) -> list[str]:
    initialized = {i.name for i in model.graph.initializer}
    return [v.name for v in model.graph.input if v.name not in initialized]


def _symbolic(model, names) -> bool:
    inputs = {v.name: v for v in model.graph.input}
    return any(
        not dim.HasField("dim_value")
        for name in names
        for dim in inputs[name].type.tensor_type.shape.dim
    )


class GraphcBackend(Backend):
    """ONNX's Backend interface over gc.onnx.load and gc.compile (the CPU only)."""

    @classmethod
    def prepare(cls, model, device: str = "CPU", **kwargs) -> GraphcRep:
        if not cls.supports_device(device):
            raise BackendIsNotSupposedToImplementIt(f"graphc runs on the CPU, not {device}")
        return GraphcRep(model, kwargs.get("mode", "compile"))

    @classmethod
    def run_model(cls, model, inputs, device: str = "CPU", **kwargs):
        return cls.prepare(model, device, **kwargs).run(inputs)

    @classmethod
    def run_node(cls, node, inputs, device: str = "CPU", outputs_info=None, **kwargs):
        raise BackendIsNotSupposedToImplementIt(
            "graphc runs whole models (prepare / run_model), not single nodes"
        )

    @classmethod
    def supports_device(cls, device: str) -> bool:
        return device.upper().startswith("CPU")


prepare = GraphcBackend.prepare
run_model = GraphcBackend.run_model
run_node = GraphcBackend.run_node
supports_device = GraphcBackend.supports_device
is_compatible = GraphcBackend.is_compatible
