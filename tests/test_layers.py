# Over 500 lines on purpose: one test file for the eleven layers of gc.nn, each against NumPy
# and PyTorch with shared helpers (weights copied into torch modules, forward both ways).
"""The layers of gc.nn: each forward against NumPy and (where installed) PyTorch's module
with the same weights copied in; gradients against finite differences and compiled against
the interpreter; BatchNorm's running statistics through compiled steps against PyTorch's;
Dropout's statistics; naming, state, errors; a small CNN and transformer that learn."""

from __future__ import annotations

import math

import numpy as np
import pytest
from optable import np_conv, np_softmax, np_window

import graphc as gc

DTYPES = ["float32", "float64"]
TOLERANCE = {"float32": dict(rtol=2e-4, atol=2e-5), "float64": dict(rtol=1e-10, atol=1e-12)}


def _normal(*shape, dtype="float64", seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype(dtype)


def _torch():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (a second oracle)")
    torch.manual_seed(0)
    return torch


def _forward(layer, xv, training=False, **kwargs):
    """The layer's output for the array `xv`, interpreted and compiled (both returned)."""
    x = gc.input("x", xv.shape, xv.dtype.name)
    y = layer(x, training=training, **kwargs)
    interpreted = gc.evaluate(y, {x: xv})
    compiled = gc.compile(inputs=[x], outputs=y)(xv)
    return interpreted, compiled


def _copy_into(param: gc.Tensor, value) -> None:
    param.value[...] = np.asarray(value.detach().numpy() if hasattr(value, "detach") else value)


def _torch_out(module, xv):
    torch = _torch()
    return module(torch.from_numpy(xv)).detach().numpy()


def _torch_dtype(dtype):
    torch = _torch()
    return torch.float64 if dtype == "float64" else torch.float32


# ---- convolution, pooling, flatten ----------------------------------------------------------

CONVS = [  # (layer class, input shape, filters, kernel, stride, padding, dilation, groups)
    ("Conv2D", (2, 3, 7, 8), 4, 3, 1, 0, 1, 1),
    ("Conv2D", (2, 4, 8, 7), 6, (3, 2), 2, 1, 1, 2),
    ("Conv2D", (1, 2, 6, 6), 3, 3, 1, "same", 2, 1),
    ("Conv1D", (2, 3, 9), 5, 4, 2, 1, 1, 1),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", CONVS, ids=lambda c: f"{c[0]}{c[1]}")
def test_conv_layers_match_numpy_and_torch(case, dtype):
    kind, shape, filters, kernel, stride, padding, dilation, groups = case
    layer = getattr(gc.nn, kind)(
        filters,
        kernel,
        stride,
        padding,
        "relu",
        dilation=dilation,
        groups=groups,
        seed=0,
        dtype=dtype,
    )
    xv = _normal(*shape, dtype=dtype)
    interpreted, compiled = _forward(layer, xv)
    w, b = (p.value.astype("float64") for p in layer.params())
    rank = len(shape) - 2
    as_tuple = lambda v: tuple(np.broadcast_to(v, rank))  # noqa: E731
    if padding == "same":
        totals = [d * (k - 1) for k, d in zip(w.shape[2:], as_tuple(dilation))]
        pairs = [(t // 2, t - t // 2) for t in totals]
    else:
        pairs = [(p, p) for p in as_tuple(padding)]
    padded = np.pad(xv.astype("float64"), [(0, 0), (0, 0), *pairs])
    out = np_conv(padded, w, as_tuple(stride), as_tuple(dilation), groups)
    expected = np.maximum(out + b.reshape(-1, *(1,) * rank), 0)
    np.testing.assert_allclose(interpreted, expected, **TOLERANCE[dtype])
    np.testing.assert_allclose(compiled, expected, **TOLERANCE[dtype])

    torch = _torch()
    module = getattr(torch.nn, f"Conv{rank}d")(
        shape[1], filters, kernel, stride, padding, dilation, groups, dtype=_torch_dtype(dtype)
    )
    _copy_into(layer.w, module.weight), _copy_into(layer.b, module.bias)
    interpreted, compiled = _forward(layer, xv)
    reference = np.maximum(_torch_out(module, xv), 0)
    np.testing.assert_allclose(compiled, reference, **TOLERANCE[dtype])


def test_conv_layer_weights_are_pytorch_layout_and_init():
    layer = gc.nn.Conv2D(8, (3, 5), groups=2, seed=0)
    assert layer(gc.input("x", (1, 6, 9, 9))).shape == (1, 8, 7, 5)
    assert layer.name.startswith("conv") and layer.w.name == f"{layer.name}.w"
    assert layer.w.shape == (8, 3, 3, 5) and layer.b.shape == (8,)
    bound = 1 / math.sqrt(3 * 3 * 5)  # PyTorch: kaiming_uniform(a=sqrt(5)) = U(±1/sqrt(fan_in))
    assert 0.9 * bound < np.abs(layer.w.value).max() <= bound  # 360 draws reach near it
    assert 0 < np.abs(layer.b.value).max() <= bound


@pytest.mark.parametrize("dtype", DTYPES)
def test_pooling_and_flatten_match_numpy_and_torch(dtype):
    xv = _normal(2, 3, 6, 7, dtype=dtype)
    windows = np_window(xv, (2, 2), (2, 2), (1, 1))  # (2, 3, 3, 3, 2, 2)
    for layer, expected in (
        (gc.nn.MaxPool2D(2), windows.max(axis=(-2, -1))),
        (gc.nn.AvgPool2D(2), windows.mean(axis=(-2, -1))),
        (gc.nn.Flatten(), xv.reshape(2, -1)),
    ):
        interpreted, compiled = _forward(layer, xv)
        np.testing.assert_allclose(interpreted, expected, **TOLERANCE[dtype])
        np.testing.assert_allclose(compiled, expected, **TOLERANCE[dtype])
    torch = _torch()
    for layer, module in (
        (gc.nn.MaxPool2D(3, stride=2), torch.nn.MaxPool2d(3, stride=2)),
        (gc.nn.AvgPool2D((2, 3), stride=1), torch.nn.AvgPool2d((2, 3), stride=1)),
    ):
        np.testing.assert_allclose(
            _forward(layer, xv)[1], _torch_out(module, xv), **TOLERANCE[dtype]
        )


# ---- normalisation --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_layer_norm_matches_numpy_and_torch(dtype):
    layer = gc.nn.LayerNorm(eps=1e-3, dtype=dtype)
    xv = _normal(3, 4, 6, dtype=dtype)
    layer(gc.input("x", xv.shape, dtype))
    layer.w.value[...] = _normal(6, dtype=dtype, seed=1)
    layer.b.value[...] = _normal(6, dtype=dtype, seed=2)
    interpreted, compiled = _forward(layer, xv)
    centered = xv - xv.mean(-1, keepdims=True)
    normed = centered / np.sqrt((centered**2).mean(-1, keepdims=True) + 1e-3)
    expected = normed * layer.w.value + layer.b.value
    np.testing.assert_allclose(interpreted, expected, **TOLERANCE[dtype])
    np.testing.assert_allclose(compiled, expected, **TOLERANCE[dtype])
    torch = _torch()
    module = torch.nn.LayerNorm(6, eps=1e-3, dtype=_torch_dtype(dtype))
    _copy_into(layer.w, module.weight), _copy_into(layer.b, module.bias)
    np.testing.assert_allclose(_forward(layer, xv)[1], _torch_out(module, xv), **TOLERANCE[dtype])


def _np_batch_norm(xv, w, b, mean, var, eps=1e-5):
    shape = (1, -1) + (1,) * (xv.ndim - 2)
    return (xv - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + eps) * w.reshape(
        shape
    ) + b.reshape(shape)


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5, 2)])
def test_batch_norm_training_and_inference_match_numpy(shape):
    layer = gc.nn.BatchNorm(momentum=0.25, dtype="float64")
    xv = _normal(*shape) * 3 + 1
    x = gc.input("x", shape, "float64")
    y = layer(x, training=True)
    updates = layer.state_updates()
    training, new_mean, new_var = gc.evaluate([y, *updates.values()], {x: xv})
    training_compiled = gc.compile(inputs=[x], outputs=y)(xv)
    axes = (0, *range(2, len(shape)))
    mean, var = xv.mean(axes), xv.var(axes)
    w, b = (p.value for p in layer.params())
    np.testing.assert_allclose(training, _np_batch_norm(xv, w, b, mean, var), rtol=1e-10)
    np.testing.assert_allclose(training_compiled, training, rtol=1e-12, atol=1e-12)
    # the updates it recorded: PyTorch's momentum rule, the variance unbiased
    assert list(updates) == [layer.running_mean, layer.running_var]
    n = xv.size // shape[1]
    np.testing.assert_allclose(new_mean, 0.25 * mean, rtol=1e-12)
    np.testing.assert_allclose(new_var, 0.75 + 0.25 * var * n / (n - 1), rtol=1e-12)
    # inference reads the running statistics
    layer.running_mean.value[...] = mean
    layer.running_var.value[...] = var * 2
    inference, inference_compiled = _forward(layer, xv)
    expected = _np_batch_norm(xv, w, b, mean, var * 2)
    np.testing.assert_allclose(inference, expected, rtol=1e-10)
    np.testing.assert_allclose(inference_compiled, expected, rtol=1e-10)


def _cnn(dtype, seed=0):
    return gc.nn.Sequential(
        [
            gc.nn.Conv2D(4, 3, padding=1, dtype=dtype),
            gc.nn.BatchNorm(momentum=0.2, dtype=dtype),
            gc.relu,
            gc.nn.MaxPool2D(2),
            gc.nn.Flatten(),
            gc.nn.Dense(5, dtype=dtype),
        ],
        seed=seed,
    )


def _torch_cnn(model, dtype):
    """PyTorch's same CNN with the graphc model's weights copied in."""
    torch = _torch()
    conv, bn, _, _, _, dense = model.layers
    module = torch.nn.Sequential(
        torch.nn.Conv2d(2, 4, 3, padding=1),
        torch.nn.BatchNorm2d(4, momentum=0.2),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 3 * 3, 5),
    ).to(_torch_dtype(dtype))
    pairs = (
        (conv.w.value, module[0].weight),
        (conv.b.value, module[0].bias),
        (bn.w.value, module[1].weight),
        (bn.b.value, module[1].bias),
        (dense.w.value.T, module[5].weight),
        (dense.b.value, module[5].bias),
    )
    with torch.no_grad():
        for value, theirs in pairs:
            theirs.copy_(torch.from_numpy(np.ascontiguousarray(value)))
    return module


@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_norm_running_statistics_after_compiled_steps_equal_pytorch(dtype):
    torch = _torch()
    model = _cnn(dtype)
    x, labels = gc.input("x", (8, 2, 6, 6), dtype), gc.input("labels", (8,), "int64")
    loss = gc.nn.softmax_cross_entropy(model(x, training=True), labels)
    opt = gc.optim.SGD(model.params(), lr=0.1, momentum=0.9)
    step = gc.compile(
        inputs=[x, labels], outputs=loss, updates={**opt.updates(loss), **model.state_updates()}
    )
    infer = gc.compile(inputs=[x], outputs=model(x))  # compiled before training
    module = _torch_cnn(model, dtype)
    torch_opt = torch.optim.SGD(module.parameters(), lr=0.1, momentum=0.9)
    for i in range(4):
        xv, yv = _normal(8, 2, 6, 6, dtype=dtype, seed=i) * 2 + 0.5, np.arange(8) % 5
        ours = step(xv, yv)
        torch_opt.zero_grad()
        theirs = torch.nn.functional.cross_entropy(
            module(torch.from_numpy(xv)), torch.from_numpy(yv)
        )
        theirs.backward()
        torch_opt.step()
        np.testing.assert_allclose(ours, theirs.item(), **TOLERANCE[dtype])
    bn = model.layers[1]
    tolerance = dict(rtol=1e-4, atol=1e-5) if dtype == "float32" else dict(rtol=1e-9)
    np.testing.assert_allclose(bn.running_mean.value, module[1].running_mean.numpy(), **tolerance)
    np.testing.assert_allclose(bn.running_var.value, module[1].running_var.numpy(), **tolerance)
    assert np.abs(bn.running_var.value - 1).max() > 0.1  # they moved
    module.eval()
    xv = _normal(8, 2, 6, 6, dtype=dtype, seed=9)
    np.testing.assert_allclose(infer(xv), _torch_out(module, xv), **tolerance)


# ---- embedding and dropout ------------------------------------------------------------------


def test_embedding_matches_numpy_and_torch_and_checks_indices():
    layer = gc.nn.Embedding(7, 3, seed=0, dtype="float64")
    indices = np.array([[0, 6, 2], [2, 2, -1]])
    interpreted, compiled = _forward(layer, indices)
    np.testing.assert_array_equal(interpreted, layer.w.value[indices])
    np.testing.assert_array_equal(compiled, layer.w.value[indices])
    assert 0.5 < layer.w.value.std() < 1.5  # N(0, 1), as PyTorch
    torch = _torch()
    module = torch.nn.Embedding(7, 3, dtype=torch.float64)
    _copy_into(layer.w, module.weight)
    ok = np.array([[0, 6, 2], [2, 2, 1]])
    np.testing.assert_array_equal(_forward(layer, ok)[1], _torch_out(module, ok))
    x = gc.input("idx", (2,), "int64")
    lookup = gc.compile(inputs=[x], outputs=layer(x))
    with pytest.raises(gc.InputError):
        lookup(np.array([1, 7]))
    with pytest.raises(gc.DTypeError, match="Embedding embedding.*integers"):
        layer(gc.input("f", (2,)))


def test_embedding_gradient_accumulates_repeated_indices():
    layer = gc.nn.Embedding(4, 2, seed=0, dtype="float64")
    x = gc.input("idx", (5,), "int64")
    loss = (layer(x) * gc.const(np.arange(10.0).reshape(5, 2))).sum()
    (g,) = gc.evaluate(gc.grad(loss, [layer.w]), {x: np.array([1, 3, 1, 1, 0])})
    np.testing.assert_array_equal(g, [[8, 9], [10, 13], [0, 0], [2, 3]])


def test_dropout_off_in_inference_and_at_rate_in_training():
    layer = gc.nn.Dropout(0.3, seed=0)
    xv = np.ones((200, 500), np.float32)
    interpreted, compiled = _forward(layer, xv)
    np.testing.assert_array_equal(compiled, xv)
    x = gc.input("x", xv.shape)
    step = gc.compile(inputs=[x], outputs=layer(x, training=True))
    first, second = step(xv), step(xv)
    n = xv.size
    for out in (first, second):
        kept = out != 0
        assert set(np.unique(out)) == {0.0, np.float32(1 / 0.7)}
        # the dropped fraction within 5 standard deviations of 0.3
        assert abs((1 - kept.mean()) - 0.3) < 5 * math.sqrt(0.3 * 0.7 / n)
    assert (first != second).mean() > 0.3  # every step draws a new mask (the key advances)
    assert layer.state() == [layer.random_key] and layer.random_key.value[1] == 2
    assert gc.nn.Dropout(0.0)(x, training=True) is x


def test_dropout_gradient_is_the_mask_scaled():
    layer = gc.nn.Dropout(0.5, seed=1)
    x = gc.input("x", (40,), "float64")
    y = layer(x, training=True)
    xv = _normal(40)
    out, g = gc.evaluate([y, gc.grad(y.sum(), x)], {x: xv})
    np.testing.assert_array_equal(g, np.where(out != 0, 2.0, 0.0))
    np.testing.assert_allclose(out, np.where(out != 0, 2 * xv, 0.0))


def test_dropout_draws_the_same_in_the_interpreter_and_compiled():
    layer = gc.nn.TransformerEncoderLayer(8, 2, 16, dropout=0.5, seed=0, dtype="float64")
    x = gc.input("x", (2, 5, 8), "float64")
    y = layer(x, training=True)
    xv = _normal(2, 5, 8)
    expected = gc.evaluate(y, {x: xv})  # what the next call draws
    step = gc.compile(inputs=[x], outputs=y)
    np.testing.assert_allclose(step(xv), expected, rtol=1e-12, atol=1e-12)
    assert not np.allclose(step(xv), expected)  # the next call draws anew
    assert [s.name for s in layer.state()] == [f"{layer.name}.dropout.key"]
    without = gc.nn.TransformerEncoderLayer(8, 2, 16)
    without(x, training=True)
    assert without.state() == []  # dropout 0 draws nothing: no key


# ---- attention ------------------------------------------------------------------------------


def _np_attention(layer, xv, causal):
    def dense(d, v):
        return v @ d.w.value + d.b.value

    heads, dim = layer.heads, layer.dim

    def split(v):  # (B, S, dim) -> (B, heads, S, dim // heads)
        return v.reshape(*v.shape[:-1], heads, dim // heads).swapaxes(-2, -3)

    q, k, v = (split(dense(d, xv)) for d in (layer.q, layer.k, layer.v))
    scores = q @ k.swapaxes(-1, -2) / math.sqrt(dim // heads)
    if causal:
        seq = xv.shape[-2]
        scores = np.where(np.tril(np.ones((seq, seq), bool)), scores, -np.inf)
    y = (np_softmax(scores) @ v).swapaxes(-2, -3).reshape(xv.shape)
    return dense(layer.out, y)


def _torch_attention(layer, dtype, causal):
    torch = _torch()
    module = torch.nn.MultiheadAttention(
        layer.dim, layer.heads, batch_first=True, dtype=_torch_dtype(dtype)
    )
    _copy_attention(layer, module)
    return module


def _copy_attention(layer, module):
    torch = _torch()
    with torch.no_grad():
        weight = np.concatenate([d.w.value.T for d in (layer.q, layer.k, layer.v)])
        bias = np.concatenate([d.b.value for d in (layer.q, layer.k, layer.v)])
        module.in_proj_weight.copy_(torch.from_numpy(weight))
        module.in_proj_bias.copy_(torch.from_numpy(bias))
        module.out_proj.weight.copy_(torch.from_numpy(np.ascontiguousarray(layer.out.w.value.T)))
        module.out_proj.bias.copy_(torch.from_numpy(layer.out.b.value))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("causal", [False, True])
def test_multi_head_attention_matches_numpy_and_torch(dtype, causal):
    layer = gc.nn.MultiHeadAttention(heads=2, dim=8, causal=causal, seed=0, dtype=dtype)
    xv = _normal(3, 5, 8, dtype=dtype)
    layer(gc.input("x", xv.shape, dtype))
    for p in layer.params():  # nonzero biases, so that a mixed-up bias shows
        p.value[...] += _normal(*p.shape, dtype=dtype, seed=p.size) * 0.1
    interpreted, compiled = _forward(layer, xv)
    expected = _np_attention(layer, xv.astype("float64"), causal)
    np.testing.assert_allclose(interpreted, expected, **TOLERANCE[dtype])
    np.testing.assert_allclose(compiled, expected, **TOLERANCE[dtype])
    torch = _torch()
    module = _torch_attention(layer, dtype, causal)
    tx = torch.from_numpy(xv)
    mask = (
        torch.nn.Transformer.generate_square_subsequent_mask(5, dtype=tx.dtype) if causal else None
    )
    reference = module(tx, tx, tx, attn_mask=mask, need_weights=False)[0].detach().numpy()
    np.testing.assert_allclose(compiled, reference, **TOLERANCE[dtype])


def test_multi_head_attention_init_names_and_cross_attention():
    layer = gc.nn.MultiHeadAttention(4, 16, seed=0)
    x, context = gc.input("x", (2, 3, 16)), gc.input("context", (2, 7, 16))
    assert layer(x, context).shape == (2, 3, 16)
    names = [p.name for p in layer.params()]
    assert names == [
        f"{layer.name}.{part}.{kind}" for part in ("q", "k", "v", "out") for kind in ("w", "b")
    ]
    xavier = math.sqrt(6 / (16 + 48))  # PyTorch's in_proj: xavier_uniform over (3 dim, dim)
    assert xavier * 0.8 < np.abs(layer.q.w.value).max() <= xavier
    assert not layer.q.b.value.any() and not layer.out.b.value.any()
    with pytest.raises(gc.ShapeError, match="multiple of heads"):
        gc.nn.MultiHeadAttention(3, 16)
    with pytest.raises(gc.ShapeError, match=r"\(\.\.\., seq, 16\).*test_layers.py"):
        layer(gc.input("wide", (2, 3, 8)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_transformer_encoder_layer_matches_torch(dtype):
    torch = _torch()
    layer = gc.nn.TransformerEncoderLayer(8, 2, 16, seed=0, dtype=dtype)
    xv = _normal(2, 5, 8, dtype=dtype)
    layer(gc.input("x", xv.shape, dtype))
    for p in layer.params():
        p.value[...] += _normal(*p.shape, dtype=dtype, seed=p.size) * 0.1
    module = torch.nn.TransformerEncoderLayer(
        8,
        2,
        16,
        dropout=0.0,
        activation="gelu",
        batch_first=True,
        norm_first=True,
        dtype=_torch_dtype(dtype),
    )
    _copy_attention(layer.attention, module.self_attn)
    with torch.no_grad():
        for mine, theirs in ((layer.norm1, module.norm1), (layer.norm2, module.norm2)):
            theirs.weight.copy_(torch.from_numpy(mine.w.value))
            theirs.bias.copy_(torch.from_numpy(mine.b.value))
        for mine, theirs in ((layer.ffn1, module.linear1), (layer.ffn2, module.linear2)):
            theirs.weight.copy_(torch.from_numpy(np.ascontiguousarray(mine.w.value.T)))
            theirs.bias.copy_(torch.from_numpy(mine.b.value))
    module.eval()
    interpreted, compiled = _forward(layer, xv, training=True)  # dropout 0: the same
    reference = _torch_out(module, xv)
    np.testing.assert_allclose(interpreted, reference, **TOLERANCE[dtype])
    np.testing.assert_allclose(compiled, reference, **TOLERANCE[dtype])


# ---- gradients ------------------------------------------------------------------------------

GRADIENT_MODELS = {
    "conv-bn-pool": lambda: (
        gc.nn.Sequential(
            [
                gc.nn.Conv1D(2, 3, padding=1, activation="tanh", dtype="float64"),
                gc.nn.BatchNorm(dtype="float64"),
                gc.nn.Flatten(),
            ],
            seed=0,
        ),
        (3, 2, 4),
    ),
    "conv2d-pools-layernorm": lambda: (
        gc.nn.Sequential(
            [
                gc.nn.Conv2D(3, 2, dtype="float64"),
                gc.nn.MaxPool2D(2),
                gc.nn.AvgPool2D(2, stride=1),
                gc.nn.LayerNorm(dtype="float64"),
            ],
            seed=0,
        ),
        (2, 2, 7, 7),
    ),
    "encoder": lambda: (
        gc.nn.TransformerEncoderLayer(4, 2, 6, causal=True, seed=0, dtype="float64"),
        (2, 3, 4),
    ),
}


@pytest.mark.parametrize("name", sorted(GRADIENT_MODELS))
def test_layer_gradients_match_finite_differences_and_compile(name):
    model, shape = GRADIENT_MODELS[name]()
    x = gc.input("x", shape, "float64")
    y = model(x, training=True)
    weights = gc.const(_normal(*y.shape, seed=5))
    loss = (gc.tanh(y) * weights).sum()
    xv = _normal(*shape, seed=3)
    params = model.params()
    gc.check_grad(loss, [x, *params], {x: xv}, rtol=1e-5, atol=1e-7)
    grads = gc.grad(loss, [x, *params])
    interpreted = gc.evaluate(grads, {x: xv})
    compiled = gc.compile(inputs=[x], outputs=grads)(xv)
    for a, b in zip(interpreted, compiled, strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)


# ---- models: names, training flag, state, checkpoints, errors -------------------------------


def test_sequential_names_layers_by_kind_and_passes_training():
    model = gc.nn.Sequential(
        [
            gc.nn.Conv2D(2, 3),
            gc.nn.BatchNorm(),
            gc.nn.Conv2D(2, 1),
            gc.nn.Dropout(0.5),
            gc.nn.Flatten(),
            gc.nn.Dense(3),
            gc.nn.LayerNorm(),
        ],
        seed=0,
        name="net",
    )
    x = gc.input("x", (4, 1, 5, 5))
    model(x, training=True)
    assert [p.name for p in model.params()] == [
        "net.conv1.w",
        "net.conv1.b",
        "net.batchnorm1.w",
        "net.batchnorm1.b",
        "net.conv2.w",
        "net.conv2.b",
        "net.dense1.w",
        "net.dense1.b",
        "net.layernorm1.w",
        "net.layernorm1.b",
    ]
    assert [s.name for s in model.state()] == [
        "net.batchnorm1.running_mean",
        "net.batchnorm1.running_var",
        "net.dropout1.key",
    ]
    assert set(model.state_updates()) == set(model.state()[:2])
    # inference: no dropout, running statistics: the same as the layers called one by one
    xv = _normal(4, 1, 5, 5, dtype="float32")
    layered = x
    for layer in model.layers:
        layered = layer(layered)
    np.testing.assert_array_equal(*gc.evaluate([model(x), layered], {x: xv}))


def test_sequential_passes_training_to_user_layers_that_take_it():
    seen = []

    def custom(x, training=False):
        seen.append(training)
        return x

    model = gc.nn.Sequential([custom, gc.relu])
    model(gc.input("x", (2,)), training=True)
    model(gc.input("x", (2,)))
    assert seen == [True, False]


def test_save_and_load_a_model_with_its_state(tmp_path):
    model = _cnn("float32")
    model(gc.input("x", (2, 2, 6, 6)), training=True)
    bn = model.layers[1]
    bn.running_mean.value[...] = 3.0
    gc.save(tmp_path / "cnn.npz", model)
    bn.running_mean.value[...] = 0.0
    gc.load(tmp_path / "cnn.npz", model)
    assert (bn.running_mean.value == 3.0).all()
    assert "batchnorm1.running_var" in np.load(tmp_path / "cnn.npz").files


def test_layer_errors_name_the_layer_the_shapes_and_the_line():
    conv = gc.nn.Conv2D(4, 3)
    with pytest.raises(gc.ShapeError, match=r"Conv2D.*f32\[2,3,5\].*test_layers.py:\d+"):
        conv(gc.input("x", (2, 3, 5)))
    conv(gc.input("x", (2, 3, 5, 5)))
    with pytest.raises(gc.ShapeError, match=r"built for 3 input channels.*test_layers.py"):
        conv(gc.input("x", (2, 4, 5, 5)))
    with pytest.raises(gc.ShapeError, match="kernel"):  # larger than the input
        gc.nn.Conv2D(1, 7)(gc.input("x", (1, 1, 4, 4)))
    with pytest.raises(gc.ShapeError, match="groups"):
        gc.nn.Conv2D(3, 3, groups=2)
    with pytest.raises(gc.ShapeError, match=r"MaxPool2D.*\(N, C, H, W\)"):
        gc.nn.MaxPool2D(2)(gc.input("x", (2, 4, 4)))
    bn = gc.nn.BatchNorm()
    bn(gc.input("x", (2, 3)))
    with pytest.raises(gc.ShapeError, match="built for 3 channels"):
        bn(gc.input("x", (2, 4)))
    with pytest.raises(gc.GraphcError, match="rate"):
        gc.nn.Dropout(1.5)
    with pytest.raises(gc.GraphcError, match="no params yet"):
        gc.nn.LayerNorm().params()


# ---- models that learn ----------------------------------------------------------------------


def _losses(step, batches, steps):
    return [float(step(*batches(i))) for i in range(steps)]


def test_a_small_cnn_learns():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(64, 1, 8, 8)).astype(np.float32)
    labels = (images[:, 0, :4].mean((1, 2)) > images[:, 0, 4:].mean((1, 2))).astype(np.int64)
    model = gc.nn.Sequential(
        [
            gc.nn.Conv2D(4, 3, padding=1, activation="relu"),
            gc.nn.BatchNorm(),
            gc.nn.MaxPool2D(2),
            gc.nn.Dropout(0.1),
            gc.nn.Flatten(),
            gc.nn.Dense(2),
        ],
        seed=0,
    )
    x, y = gc.input("x", (64, 1, 8, 8)), gc.input("y", (64,), "int64")
    loss = gc.nn.softmax_cross_entropy(model(x, training=True), y)
    opt = gc.optim.Adam(model.params(), lr=0.01)
    step = gc.compile(
        inputs=[x, y], outputs=loss, updates={**opt.updates(loss), **model.state_updates()}
    )
    losses = _losses(step, lambda i: (images, labels), 30)
    assert losses[-1] < 0.5 * losses[0]
    accuracy = (gc.compile(inputs=[x], outputs=model(x))(images).argmax(1) == labels).mean()
    assert accuracy > 0.9


def test_a_small_transformer_learns_to_copy():
    rng = np.random.default_rng(0)
    tokens = gc.input("tokens", (16, 6), "int64")
    model = gc.nn.Sequential(
        [
            gc.nn.Embedding(8, 16),
            gc.nn.TransformerEncoderLayer(16, 2, 32),
            gc.nn.LayerNorm(),
            gc.nn.Dense(8),
        ],
        seed=0,
    )
    loss = gc.nn.softmax_cross_entropy(model(tokens, training=True), tokens)
    opt = gc.optim.AdamW(model.params(), lr=0.01)
    step = gc.compile(inputs=[tokens], outputs=loss, updates=opt.updates(loss))
    losses = _losses(step, lambda i: (rng.integers(0, 8, (16, 6)),), 40)
    assert np.mean(losses[-5:]) < 0.3 * np.mean(losses[:5])
