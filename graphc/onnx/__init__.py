"""ONNX in and out (the optional extra `onnx`): `load` an ONNX model as a gc.Program,
`export` a gc.Program as an ONNX model; `graphc.onnx.backend` runs ONNX's conformance suite.

    model.onnx --load--> nodes, one table entry per ONNX op (table.py) --> gc.Program
    gc.Program --export--> one ONNX node (or a few) per graphc primitive --> model.onnx

The `onnx` package is imported when a function here is called, not when graphc is.
"""

from __future__ import annotations

from graphc.onnx.importer import load
from graphc.onnx.table import UnsupportedError

__all__ = ["UnsupportedError", "export", "load"]


def export(program, path=None, *, opset: int = 18):
    """`program` (a gc.Program) as an ONNX model: params become initializers named after
    them, inputs and outputs keep their names; written to `path` when given. Returns the
    onnx.ModelProto."""
    from graphc.onnx.exporter import export as _export

    return _export(program, path, opset=opset)
