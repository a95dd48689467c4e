"""Run another framework's model with graphc: an ONNX file imported, compiled, checked
against onnxruntime, timed, and optionally compiled ahead of time for C.

    python examples/onnx_import.py [MODEL.onnx] [--shape NAME=1,3,28,28] [--aot DIR]

Without MODEL, the example writes one first: LeNet-5 (conv, batch norm, max and average
pooling, Linear layers) exported from PyTorch with torch.onnx.export, or, without PyTorch,
a two-layer MLP written with onnx.helper. Symbolic dimensions (a dynamic batch) are fixed
with --shape (default: 1). The imported model's initializers are gc params: the program can
be differentiated and trained like any other (tests/test_onnx_torch.py fine-tunes one).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import timeit
import warnings
from pathlib import Path

import numpy as np

import graphc as gc


def write_example_model(path: Path) -> Path:
    """LeNet-5 from PyTorch (dynamic batch), else an MLP from onnx.helper."""
    try:
        import torch
    except ImportError:
        return _write_mlp(path)
    torch.manual_seed(0)
    lenet = torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 5, padding=2), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Conv2d(6, 16, 5), torch.nn.ReLU(), torch.nn.AvgPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(400, 120), torch.nn.ReLU(), torch.nn.Linear(120, 84),
        torch.nn.ReLU(), torch.nn.Linear(84, 10),
    ).eval()  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(lenet, (torch.zeros(1, 1, 28, 28),), str(path), input_names=["image"],
                          output_names=["logits"], dynamic_axes={"image": {0: "batch"}},
                          dynamo=False)  # fmt: skip
    return path


def _write_mlp(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [
        numpy_helper.from_array(rng.normal(size=s).astype(np.float32) * 0.3, n)
        for n, s in [("w1", (5, 32)), ("b1", (32,)), ("w2", (32, 1)), ("b2", (1,))]
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
        helper.make_node("Relu", ["h"], ["r"]),
        helper.make_node("Gemm", ["r", "w2", "b2"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 1])], weights,
    )  # fmt: skip
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def _input_shapes(path: Path, given: dict) -> dict:
    """Each graph input's shape: --shape where given, symbolic dimensions 1 elsewhere."""
    import onnx

    model = onnx.load(str(path))
    initialized = {i.name for i in model.graph.initializer}
    shapes = {}
    for value in model.graph.input:
        if value.name in initialized:
            continue
        dims = value.type.tensor_type.shape.dim
        shapes[value.name] = given.get(value.name) or tuple(
            d.dim_value if d.HasField("dim_value") else 1 for d in dims
        )
    return shapes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", help="an .onnx file (default: write an example)")
    parser.add_argument("--shape", action="append", default=[], metavar="NAME=1,3,28,28")
    parser.add_argument("--aot", metavar="DIR", help="also write DIR/<name>.{o,h} and the .so")
    args = parser.parse_args(argv)
    given = {}
    for text in args.shape:
        name, _, dims = text.partition("=")
        given[name] = tuple(int(d) for d in dims.split(","))
    folder = tempfile.TemporaryDirectory()
    path = Path(args.model) if args.model else write_example_model(Path(folder.name) / "lenet.onnx")
    shapes = _input_shapes(path, given)
    program = gc.onnx.load(path, shapes=shapes)
    step = gc.compile(program)
    params = program.params()
    weights = sum(p.value.size for p in params)
    print(f"{path.name}: inputs {shapes}, {len(params)} params ({weights} weights), "
          f"kernels: {len(step.kernels)}")  # fmt: skip
    rng = np.random.default_rng(1)
    feed = [rng.normal(size=x.shape).astype(x.dtype) for x in program.inputs]
    outputs = step(*feed)
    print("graphc outputs:", ", ".join(f"{o.dtype}{list(o.shape)}" for o in outputs))
    seconds = min(timeit.repeat(lambda: step(*feed), number=200, repeat=3)) / 200
    print(f"graphc: {seconds * 1e6:.1f} us per call")
    try:
        import onnxruntime
    except ImportError:
        print("onnxruntime is not installed: no comparison")
    else:
        session = onnxruntime.InferenceSession(str(path))
        names = {x.name: v for x, v in zip(program.inputs, feed)}
        expected = session.run(None, names)
        error = max(float(np.max(np.abs(a - b))) for a, b in zip(outputs, expected))
        run = min(timeit.repeat(lambda: session.run(None, names), number=200, repeat=3)) / 200
        print(f"onnxruntime: {run * 1e6:.1f} us per call; largest difference {error:.2e}")
    if args.aot:
        for written in gc.aot.export(step, args.aot, name=program.name):
            if written is not None:
                print("wrote", written)
    return 0


if __name__ == "__main__":
    sys.exit(main())
