"""Real models (issue 18, item 5): PyTorch modules exported with torch.onnx.export (the
TorchScript exporter, dynamo=False), imported by gc.onnx.load, compiled, and compared with
onnxruntime on the same file. Skipped without torch or onnxruntime."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import graphc as gc

torch = pytest.importorskip("torch")
pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _export(module, example, path, dynamic_batch=False):
    module.eval()
    axes = {"x": {0: "batch"}, "y": {0: "batch"}} if dynamic_batch else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (example,), str(path), input_names=["x"], output_names=["y"],
                          dynamo=False, dynamic_axes=axes)  # fmt: skip
    return path


def _compare(path, x, shapes=None, rtol=1e-4, atol=1e-5):
    """graphc (compiled) equals onnxruntime on the model file; returns the Program."""
    (expected,) = ort.InferenceSession(str(path)).run(None, {"x": x})
    program = gc.onnx.load(path, shapes=shapes)
    (got,) = gc.compile(program)(x)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)
    return program


def test_mlp(tmp_path):
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Linear(5, 32), torch.nn.ReLU(), torch.nn.Linear(32, 16), torch.nn.Tanh(),
        torch.nn.Linear(16, 1),
    )  # fmt: skip
    x = np.random.default_rng(0).normal(size=(8, 5)).astype(np.float32)
    path = _export(module, torch.from_numpy(x), tmp_path / "mlp.onnx", dynamic_batch=True)
    program = _compare(path, x, shapes={"x": (8, 5)})
    assert len(program.params()) == 6  # three weights and three biases, trainable


def _cnn():
    """conv, batch norm, max and average pooling, and Linear layers (Gemm)."""
    torch.manual_seed(1)
    module = torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 5, padding=2), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
        torch.nn.MaxPool2d(2), torch.nn.Conv2d(6, 16, 5), torch.nn.BatchNorm2d(16),
        torch.nn.ReLU(), torch.nn.AvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(400, 120),
        torch.nn.ReLU(), torch.nn.Linear(120, 10),
    )  # fmt: skip
    with torch.no_grad():  # running statistics that are not the identity
        for layer in module:
            if isinstance(layer, torch.nn.BatchNorm2d):
                layer.running_mean.uniform_(-0.5, 0.5)
                layer.running_var.uniform_(0.5, 2.0)
    return module


def test_small_cnn(tmp_path):
    x = np.random.default_rng(1).normal(size=(2, 1, 28, 28)).astype(np.float32)
    path = _export(_cnn(), torch.from_numpy(x), tmp_path / "cnn.onnx")
    program = _compare(path, x)
    ops = {n.op for n in program.graph.nodes}
    assert "conv" in ops and "window" in ops


class _Encoder(torch.nn.Module):
    """A TransformerEncoderLayer called with is_causal=False spelled out: the TorchScript
    exporter traces the default as a tensor, which the layer's attention call refuses."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.TransformerEncoderLayer(
            d_model=32, nhead=4, dim_feedforward=64, dropout=0.0, batch_first=True
        )

    def forward(self, x):
        return self.layer(x, src_mask=None, is_causal=False)


def test_transformer_encoder_layer(tmp_path):
    torch.manual_seed(2)
    x = np.random.default_rng(2).normal(size=(2, 10, 32)).astype(np.float32)
    path = _export(_Encoder(), torch.from_numpy(x), tmp_path / "encoder.onnx")
    _compare(path, x, rtol=1e-4, atol=1e-4)


class _Recurrent(torch.nn.Module):
    """A recurrent layer (batch first) and a Linear head on every step's output."""

    def __init__(self, kind, **options):
        super().__init__()
        layer = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU, "rnn": torch.nn.RNN}[kind]
        self.layer = layer(6, 8, batch_first=True, **options)
        self.head = torch.nn.Linear(8 * (2 if options.get("bidirectional") else 1), 3)

    def forward(self, x):
        return self.head(self.layer(x)[0])


@pytest.mark.parametrize(
    "kind, options",
    [("lstm", {"num_layers": 2, "bidirectional": True}), ("gru", {}),
     ("rnn", {"nonlinearity": "relu", "bidirectional": True})],
)  # fmt: skip
def test_recurrent_layers(kind, options, tmp_path):
    """nn.LSTM (two layers, both directions), nn.GRU (ONNX GRU with linear_before_reset) and
    nn.RNN export to ONNX's recurrent ops: each one gc.scan per direction."""
    torch.manual_seed(5)
    x = np.random.default_rng(5).normal(size=(2, 7, 6)).astype(np.float32)
    path = _export(_Recurrent(kind, **options), torch.from_numpy(x), tmp_path / f"{kind}.onnx")
    program = _compare(path, x)
    scans = [n for n in program.graph.nodes if n.op == "scan"]
    layers, directions = options.get("num_layers", 1), 2 if options.get("bidirectional") else 1
    assert len(scans) == layers * directions


def test_imported_cnn_fine_tunes(tmp_path):
    """An imported model trains with gc.optim: a few Adam steps on a fixed batch lower the
    cross-entropy (onnxruntime offers no training on the CPU)."""
    x = np.random.default_rng(3).normal(size=(4, 1, 28, 28)).astype(np.float32)
    path = _export(_cnn(), torch.from_numpy(x), tmp_path / "cnn.onnx")
    program = gc.onnx.load(path)
    (logits,) = program.outputs
    labels = gc.input("labels", (4,), "int64")
    loss = gc.nn.softmax_cross_entropy(logits, labels)
    optimizer = gc.optim.Adam(program.params(), lr=1e-3)
    step = gc.compile(inputs=[program.inputs[0], labels], outputs=loss,
                      updates=optimizer.updates(loss))  # fmt: skip
    targets = np.array([1, 3, 5, 7])
    losses = [float(step(x, targets)) for _ in range(10)]
    assert losses[-1] < losses[0]


def test_imported_lstm_fine_tunes(tmp_path):
    """The gradient runs back through the imported LSTM's loops: Adam steps on its weights
    lower a squared error."""
    x = np.random.default_rng(6).normal(size=(4, 7, 6)).astype(np.float32)
    path = _export(_Recurrent("lstm"), torch.from_numpy(x), tmp_path / "lstm.onnx")
    program = gc.onnx.load(path)
    (y,) = program.outputs
    loss = ((y - 0.5) ** 2).mean()
    optimizer = gc.optim.Adam(program.params(), lr=1e-2)
    step = gc.compile(inputs=program.inputs, outputs=loss, updates=optimizer.updates(loss))
    losses = [float(step(x)) for _ in range(10)]
    assert losses[-1] < 0.9 * losses[0]


def test_mlp_exported_with_dynamo(tmp_path):
    """The dynamo exporter's file (it needs onnxscript) imports as the TorchScript one does."""
    pytest.importorskip("onnxscript")
    torch.manual_seed(4)
    module = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.GELU(), torch.nn.Linear(8, 2))
    x = np.random.default_rng(4).normal(size=(3, 5)).astype(np.float32)
    path = tmp_path / "mlp_dynamo.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.from_numpy(x),), str(path), input_names=["x"],
                          output_names=["y"], dynamo=True)  # fmt: skip
    _compare(path, x)
