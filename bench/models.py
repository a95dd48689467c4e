"""The models people train, as benchmark cases (issue 21's W6 and W7):

    W6  LeNet-5 on 1x28x28 (conv 5x5x6 pad 2, ReLU, max-pool 2, conv 5x5x16, ReLU, max-pool
        2, 120, 84, 10): a training step (softmax cross-entropy, Adam) at batch 64, and
        inference at batch 1 and 64 (float32)
    W7  a pre-LayerNorm transformer encoder block (batch 8, sequence 64, width 128, 4 heads,
        FFN 512, GELU): a training step (MSE to a fixed target, AdamW) (float32)

Every peer starts from graphc's initial weights (PyTorch's layouts: a Dense's `w` is the
transpose of a Linear's weight), so their first results agree (suite.check).
"""

from __future__ import annotations

import math

import numpy as np

import graphc as gc

from . import peers
from .workloads import Case, _peer_factories, _symbol

ADAMW = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01}


# ---- W6: LeNet-5 ------------------------------------------------------------------------------


def _lenet(dtype="float32") -> gc.nn.Sequential:
    layers = gc.nn
    return layers.Sequential(
        [
            layers.Conv2D(6, 5, padding=2, activation="relu", dtype=dtype),
            layers.MaxPool2D(2),
            layers.Conv2D(16, 5, activation="relu", dtype=dtype),
            layers.MaxPool2D(2),
            layers.Flatten(),
            layers.Dense(120, "relu", dtype=dtype),
            layers.Dense(84, "relu", dtype=dtype),
            layers.Dense(10, dtype=dtype),
        ],
        seed=0,
        name="lenet",
    )


def _arrays(model) -> list[np.ndarray]:
    return [p.value.copy() for p in model.params()]


def lenet_train_case(case_id: str, batch: int, peer_names) -> Case:
    """W6: one Adam step of LeNet-5 with softmax cross-entropy."""
    rng = np.random.default_rng(6)
    x = gc.input("x", (batch, 1, 28, 28), "float32")
    labels = gc.input("labels", (batch,), "int32")
    model = _lenet()
    loss = gc.nn.softmax_cross_entropy(model(x, training=True), labels)
    opt = gc.optim.Adam(model.params(), **peers.ADAM)
    program = gc.Program([x, labels], loss, opt.updates(loss), name=_symbol(case_id))
    xv = rng.uniform(0, 1, x.shape).astype(np.float32)
    lv = rng.integers(0, 10, batch).astype(np.int32)
    factories = _peer_factories(
        peer_names, None, torch_lenet_train, jax_lenet_train, _arrays(model), xv, lv
    )
    return Case(case_id, "W6", "float32", program, (xv, lv), factories)


def lenet_infer_case(case_id: str, batch: int, peer_names) -> Case:
    """W6: LeNet-5's logits."""
    rng = np.random.default_rng(7)
    x = gc.input("x", (batch, 1, 28, 28), "float32")
    model = _lenet()
    program = gc.Program([x], model(x), name=_symbol(case_id))
    xv = rng.uniform(0, 1, x.shape).astype(np.float32)
    factories = _peer_factories(
        peer_names, None, torch_lenet_infer, jax_lenet_infer, _arrays(model), xv
    )
    if "onnxruntime" in peer_names:
        factories["onnxruntime"] = lambda: onnxruntime_lenet_infer(_arrays(model), xv)
    return Case(case_id, "W6", "float32", program, (xv,), factories)


def _torch_lenet(torch, arrays):
    nn = torch.nn
    model = nn.Sequential(
        nn.Conv2d(1, 6, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(400, 120), nn.ReLU(), nn.Linear(120, 84), nn.ReLU(), nn.Linear(84, 10),
    )  # fmt: skip
    layers = [m for m in model if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for layer, (w, b) in zip(layers, zip(arrays[0::2], arrays[1::2])):
            layer.weight.copy_(torch.from_numpy(w if w.ndim == 4 else w.T.copy()))
            layer.bias.copy_(torch.from_numpy(b))
    return model


def torch_lenet_train(arrays, x, labels):
    torch = peers._import("torch")
    model = _torch_lenet(torch, arrays)
    opt = torch.optim.Adam(model.parameters(), **peers.ADAM)
    xt, lt = torch.from_numpy(x.copy()), torch.from_numpy(labels.astype(np.int64))
    return peers._torch_train(model, opt, torch.nn.functional.cross_entropy, xt, lt)


def torch_lenet_infer(arrays, x):
    torch = peers._import("torch")
    model = _torch_lenet(torch, arrays)
    xt = torch.from_numpy(x.copy())

    def step():
        with torch.no_grad():
            return model(xt)

    return step


def _jax_lenet(jax, params, x):
    jnp, lax = jax.numpy, jax.lax
    dims = ("NCHW", "OIHW", "NCHW")

    def conv(h, w, b, pad):
        h = lax.conv_general_dilated(h, w, (1, 1), [(pad, pad)] * 2, dimension_numbers=dims)
        return jnp.maximum(h + b[None, :, None, None], 0)

    def pool(h):
        return lax.reduce_window(h, -jnp.inf, lax.max, (1, 1, 2, 2), (1, 1, 2, 2), "VALID")

    h = pool(conv(x, params[0], params[1], 2))
    h = pool(conv(h, params[2], params[3], 0)).reshape(x.shape[0], -1)
    h = jnp.maximum(h @ params[4] + params[5], 0)
    h = jnp.maximum(h @ params[6] + params[7], 0)
    return h @ params[8] + params[9]


def _pairs(arrays):
    return list(zip(arrays[0::2], arrays[1::2]))


def jax_lenet_train(arrays, x, labels):
    jax = peers._import("jax")

    def loss_fn(params, x, labels):
        logp = jax.nn.log_softmax(_jax_lenet(jax, params, x), axis=-1)
        return -jax.numpy.mean(jax.numpy.take_along_axis(logp, labels[:, None], axis=1))

    update = peers._JaxAdam(jax.numpy, x.dtype)
    return peers._jax_train(jax, _pairs(arrays), loss_fn, update, [x, labels])


def jax_lenet_infer(arrays, x):
    jax = peers._import("jax")
    params = [jax.numpy.asarray(a) for a in arrays]
    forward = jax.jit(lambda params, x: _jax_lenet(jax, params, x))
    xj = jax.numpy.asarray(x)
    return lambda: forward(params, xj).block_until_ready()


def onnxruntime_lenet_infer(arrays, x):
    """LeNet-5 exported from PyTorch (same weights) and run by onnxruntime."""
    import io

    import onnxruntime

    torch = peers._import("torch")
    model = _torch_lenet(torch, arrays).eval()
    buffer = io.BytesIO()
    torch.onnx.export(model, torch.from_numpy(x), buffer, input_names=["x"], dynamo=False)
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = peers.PEER_THREADS
    session = onnxruntime.InferenceSession(buffer.getvalue(), options)
    return lambda: session.run(None, {"x": x})[0]


# ---- W7: a transformer encoder block ----------------------------------------------------------


def encoder_train_case(case_id: str, peer_names, batch=8, seq=64, dim=128, heads=4, ffn=512):
    """W7: one AdamW step of a pre-LayerNorm encoder block, MSE to a fixed target."""
    rng = np.random.default_rng(8)
    x = gc.input("x", (batch, seq, dim), "float32")
    target = gc.input("target", (batch, seq, dim), "float32")
    block = gc.nn.TransformerEncoderLayer(dim, heads, ffn, seed=0, name="encoder")
    loss = gc.nn.mse_loss(block(x, training=True), target)
    opt = gc.optim.AdamW(block.params(), **ADAMW)
    program = gc.Program([x, target], loss, opt.updates(loss), name=_symbol(case_id))
    xv = rng.normal(size=x.shape).astype(np.float32)
    tv = rng.normal(size=x.shape).astype(np.float32)
    named = {p.name.split(".", 1)[1]: p.value.copy() for p in block.params()}
    factories = _peer_factories(
        peer_names, None, torch_encoder_train, jax_encoder_train, named, heads, xv, tv
    )
    return Case(case_id, "W7", "float32", program, (xv, tv), factories)


def torch_encoder_train(named, heads, x, target):
    torch = peers._import("torch")
    dim, ffn = x.shape[-1], named["ffn1.w"].shape[1]
    layer = torch.nn.TransformerEncoderLayer(
        dim, heads, ffn, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
    )
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    with torch.no_grad():
        attention = layer.self_attn
        attention.in_proj_weight.copy_(
            t(np.concatenate([named[f"attention.{p}.w"].T for p in "qkv"]))
        )
        attention.in_proj_bias.copy_(t(np.concatenate([named[f"attention.{p}.b"] for p in "qkv"])))
        attention.out_proj.weight.copy_(t(named["attention.out.w"].T))
        attention.out_proj.bias.copy_(t(named["attention.out.b"]))
        for ours, theirs in (("ffn1", layer.linear1), ("ffn2", layer.linear2)):
            theirs.weight.copy_(t(named[f"{ours}.w"].T))
            theirs.bias.copy_(t(named[f"{ours}.b"]))
        for ours, theirs in (("norm1", layer.norm1), ("norm2", layer.norm2)):
            theirs.weight.copy_(t(named[f"{ours}.w"]))
            theirs.bias.copy_(t(named[f"{ours}.b"]))
    opt = torch.optim.AdamW(layer.parameters(), **ADAMW)
    return peers._torch_train(
        layer, opt, torch.nn.functional.mse_loss, t(x.copy()), t(target.copy())
    )


ENCODER_ORDER = (
    "norm1.w", "norm1.b", "attention.q.w", "attention.q.b", "attention.k.w", "attention.k.b",
    "attention.v.w", "attention.v.b", "attention.out.w", "attention.out.b", "norm2.w",
    "norm2.b", "ffn1.w", "ffn1.b", "ffn2.w", "ffn2.b",
)  # fmt: skip


def _jax_encoder(jax, p, x, heads):
    jnp = jax.numpy

    def norm(h, w, b):
        mean = h.mean(-1, keepdims=True)
        var = ((h - mean) ** 2).mean(-1, keepdims=True)
        return (h - mean) / jnp.sqrt(var + 1e-5) * w + b

    def split(h):
        n, s, d = h.shape
        return h.reshape(n, s, heads, d // heads).transpose(0, 2, 1, 3)

    h = norm(x, p[0], p[1])
    q, k, v = (split(h @ p[i] + p[i + 1]) for i in (2, 4, 6))
    scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(q.shape[-1])
    attended = (jax.nn.softmax(scores, axis=-1) @ v).transpose(0, 2, 1, 3).reshape(x.shape)
    x = x + attended @ p[8] + p[9]
    hidden = jax.nn.gelu(norm(x, p[10], p[11]) @ p[12] + p[13], approximate=False)
    return x + hidden @ p[14] + p[15]


class _JaxAdamW(peers._JaxAdam):
    def apply(self, params, grads, state):
        decayed = [p * (1 - ADAMW["lr"] * ADAMW["weight_decay"]) for p in params]
        m, v, t = state
        b1, b2 = ADAMW["betas"]
        t = t + 1
        m = [b1 * mi + (1 - b1) * g for mi, g in zip(m, grads)]
        v = [b2 * vi + (1 - b2) * g * g for vi, g in zip(v, grads)]
        c1, c2 = 1 - b1**t, 1 - b2**t
        step = ADAMW["lr"]
        params = [
            p - step * (mi / c1) / (self.jnp.sqrt(vi / c2) + ADAMW["eps"])
            for p, mi, vi in zip(decayed, m, v)
        ]
        return params, (m, v, t)


def jax_encoder_train(named, heads, x, target):
    jax = peers._import("jax")
    arrays = [named[key] for key in ENCODER_ORDER]

    def loss_fn(params, x, target):
        return jax.numpy.mean((_jax_encoder(jax, params, x, heads) - target) ** 2)

    update = _JaxAdamW(jax.numpy, x.dtype)
    return peers._jax_train(jax, _pairs(arrays), loss_fn, update, [x, target])


def model_cases(peer_names, quick: bool = False) -> list[Case]:
    """W6 and W7 (with `quick`: LeNet's training step only)."""
    if quick:
        return [lenet_train_case("W6 train b64", 64, peer_names)]
    return [
        lenet_train_case("W6 train b64", 64, peer_names),
        lenet_infer_case("W6 infer b1", 1, peer_names),
        lenet_infer_case("W6 infer b64", 64, peer_names),
        encoder_train_case("W7", peer_names),
    ]
