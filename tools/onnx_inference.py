"""Inference of the same ONNX files in graphc (gc.onnx.load + gc.compile) and onnxruntime.

    python tools/onnx_inference.py [--quick]

Issue 18's models, exported from PyTorch (torch.onnx.export, dynamo=False): the 5-32-16-1
MLP at batch 1, LeNet-5 at batch 1, the 64-256-256-1 MLP at batch 256 and a transformer
encoder layer (64 tokens of 128, 4 heads, FFN 512) at batch 1. onnxruntime's time is its best
of `run` and io_binding with 1 and 2 intra-op threads; graphc's is one call of the compiled
executable (its large kernels use GRAPHC_THREADS). Each time is the best of 5 repeats of
about 0.1 s (--quick: 3 of 0.03 s). Prints per model: both times, the ratio, the largest
difference, and graphc's import and cold compile times (no object cache).

Then, for each model whose ratio is below issue 18's target, the GFLOP/s of its products and
convolutions the target would need, next to what a loop of nothing but FMAs sustains on
graphc's threads in the same run (bench/host.py's FMA loop, one run of 2 s: the machine's
mean over that time, not its best moment).
"""

from __future__ import annotations

import argparse
import io
import pathlib
import sys
import time
import timeit
import warnings
from math import prod

import numpy as np

import graphc as gc


def models():
    """(name, torch module, input shape) for each model."""
    import torch

    torch.manual_seed(0)
    linear, relu = torch.nn.Linear, torch.nn.ReLU
    mlp = torch.nn.Sequential(linear(5, 32), relu(), linear(32, 16), relu(), linear(16, 1))
    wide = torch.nn.Sequential(linear(64, 256), relu(), linear(256, 256), relu(), linear(256, 1))
    lenet = torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 5, padding=2), relu(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 16, 5), relu(), torch.nn.MaxPool2d(2), torch.nn.Flatten(),
        linear(400, 120), relu(), linear(120, 84), relu(), linear(84, 10),
    )  # fmt: skip

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.TransformerEncoderLayer(
                128, 4, 512, dropout=0.0, batch_first=True, norm_first=True
            )

        def forward(self, x):
            return self.layer(x, src_mask=None, is_causal=False)

    return [
        ("MLP 5-32-16-1, batch 1", mlp, (1, 5)),
        ("LeNet-5, batch 1", lenet, (1, 1, 28, 28)),
        ("MLP 64-256-256-1, batch 256", wide, (256, 64)),
        ("encoder layer 64x128, batch 1", Encoder(), (1, 64, 128)),
    ]


TARGETS = {  # issue 18: graphc's speed-up over onnxruntime, per model
    "MLP 5-32-16-1, batch 1": 10,
    "LeNet-5, batch 1": 1.5,
    "MLP 64-256-256-1, batch 256": 1.2,
    "encoder layer 64x128, batch 1": 1.5,
}


def flops(program: gc.Program) -> int:
    """Floating-point operations of the program's products and convolutions (2 per
    multiply-add); the rest of its work is not counted."""
    total = 0
    for node in program.graph.nodes:
        if node.op == "matmul":
            total += 2 * prod(node.shape) * node.inputs[0].shape[-1]
        elif node.op == "conv":
            total += 2 * prod(node.shape) * prod(node.inputs[1].shape[1:])
    return total


def export(module, shape) -> bytes:
    import torch

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.zeros(shape),), buffer, input_names=["x"],
                          output_names=["y"], dynamo=False)  # fmt: skip
    return buffer.getvalue()


def best(function, seconds: float, repeats: int) -> float:
    """Seconds per call: the best of `repeats` runs of about `seconds` each."""
    start = time.perf_counter()
    function()
    once = max(time.perf_counter() - start, 1e-7)
    number = max(1, int(seconds / once))
    return min(timeit.repeat(function, number=number, repeat=repeats)) / number


def onnxruntime_time(model: bytes, x: np.ndarray, seconds: float, repeats: int) -> float:
    import onnxruntime

    times = []
    for threads in (1, 2):
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        session = onnxruntime.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        times.append(best(lambda s=session: s.run(None, {"x": x}), seconds, repeats))
        binding = session.io_binding()
        binding.bind_cpu_input("x", x)
        binding.bind_output("y")
        times.append(best(lambda s=session, b=binding: s.run_with_iobinding(b), seconds, repeats))
    return min(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    seconds, repeats = (0.03, 3) if args.quick else (0.1, 5)
    import onnx
    import onnxruntime

    print(f"{'model':32s} {'graphc':>10s} {'onnxruntime':>12s} {'ratio':>6s} {'difference':>10s} "
          f"{'import':>7s} {'compile':>8s}")  # fmt: skip
    short = []  # (name, FLOPs, graphc's seconds, the seconds the target needs)
    for name, module, shape in models():
        model = export(module, shape)
        x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
        start = time.perf_counter()
        program = gc.onnx.load(onnx.load_from_string(model))
        imported = time.perf_counter()
        step = gc.compile(program, cache=False)
        compiled = time.perf_counter()
        (y,) = step(x)
        (expected,) = onnxruntime.InferenceSession(model).run(None, {"x": x})
        ours = best(lambda s=step, a=x: s(a), seconds, repeats)
        theirs = onnxruntime_time(model, x, seconds, repeats)
        print(f"{name:32s} {ours * 1e6:8.1f}us {theirs * 1e6:10.1f}us {theirs / ours:5.2f}x "
              f"{float(np.max(np.abs(y - expected))):10.1e} {imported - start:6.2f}s "
              f"{compiled - imported:7.2f}s")  # fmt: skip
        if theirs / ours < TARGETS[name]:
            short.append((name, flops(program), ours, theirs / TARGETS[name]))
    if short:
        sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
        from bench.host import fma_peak
        from graphc.codegen.parallel import thread_count

        threads = thread_count()
        sustained = fma_peak(256, threads, seconds=2.0, runs=1)
        print(f"\nFMA loop on {threads} thread(s), 2 s: {sustained:.1f} GFLOP/s (float32, 256-bit)")
        for name, work, ours, needed in short:
            print(f"{name}: {work / 1e6:.1f} MFLOP in products; graphc {work / ours / 1e9:.1f} "
                  f"GFLOP/s ({work / ours / 1e9 / sustained:.0%} of the FMA loop), the target "
                  f"{work / needed / 1e9:.1f} ({work / needed / 1e9 / sustained:.0%})")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
