"""Layers, models, losses and checkpoints (`gc.nn`, `gc.save`, `gc.load`).

Layers are plain Python objects that build graph nodes when called. Shapes cascade from
the input, as in RLtools and Keras: a `Dense` creates its parameters on its first call,
from the input's last dimension, and every later call (another batch size, inference
next to training) reuses the same param Tensors and hence the same storage.

    model = gc.nn.MLP(hidden=32, layers=3, out=1, seed=0)     # dense1 5->32, dense2, dense3
    loss = gc.nn.mse_loss(model(x), y)
    model.params()    # [dense1.w, dense1.b, dense2.w, dense2.b, dense3.w, dense3.b]

Naming: a model names its unnamed layers by kind and number in order (`dense1`, `dense2`,
`conv1`, `batchnorm1` ...), counting through unnamed nested models (prefixed `<model>.`
when the model has a name, and then left alone by an enclosing model); a layer used on its
own is numbered process-wide when it is first called. Parameters are `<layer>.w` and
`<layer>.b`; state is `<layer>.running_mean`, `<layer>.key` ...

Training: `model(x, training=True)` passes the flag to every layer (dropout on, batch
statistics). `model.params()` are the trainable params, `model.state()` the rest (saved
with them by `gc.save(path, model)`), and `model.state_updates()` the running statistics'
new values, which the training step applies next to the optimizer's:

    loss = gc.nn.softmax_cross_entropy(model(x, training=True), labels)
    step = gc.compile(inputs=[x, labels], outputs=loss,
                      updates={**opt.updates(loss), **model.state_updates()})
    predict = gc.compile(inputs=[x], outputs=model(x))    # reads the running statistics

The layers themselves are in layers.py.
"""

from __future__ import annotations

import collections
import inspect
import numbers
import os
import zipfile

import numpy as np

from graphc.errors import DTypeError, GraphcError, InputError, ShapeError
from graphc.frontend import init
from graphc.frontend.composites import log_softmax, one_hot
from graphc.frontend.functions import abs, exp, log1p, maximum, where
from graphc.frontend.layers import (  # noqa: F401 (gc.nn's public layers)
    ACTIVATIONS,
    GRU,
    LSTM,
    AvgPool2D,
    BatchNorm,
    Conv1D,
    Conv2D,
    Dense,
    Dropout,
    Embedding,
    Flatten,
    Layer,
    LayerNorm,
    MaxPool2D,
    MultiHeadAttention,
    TransformerEncoderLayer,
    activation_function,
)
from graphc.frontend.tensor import Tensor, as_tensor, const
from graphc.ir.graph import user_location
from graphc.ir.types import FLOATS, INTS

# ---- models ---------------------------------------------------------------------------------


def _named_layers(layers) -> list[Layer]:
    """The layers with a name (params or state) in call order, looking into unnamed models."""
    found = []
    for layer in layers:
        if isinstance(layer, Layer) and layer.kind is not None:
            found.append(layer)
        elif isinstance(layer, Sequential) and layer.name is None:
            found.extend(_named_layers(layer.layers))
    return found


def _takes_training(layer) -> bool:
    """Whether `layer(x, training=...)` is how to call it (layers, models, user callables
    with a `training` parameter); plain functions such as gc.relu are called as f(x)."""
    if isinstance(layer, (Layer, Sequential)):
        return True
    try:
        return "training" in inspect.signature(layer).parameters
    except (TypeError, ValueError):  # builtins without a signature
        return False


class Sequential:
    """Layers (or plain callables such as `gc.relu`) applied in order; `model(x,
    training=True)` passes `training` to every layer that takes it."""

    def __init__(self, layers, *, seed: int | None = None, key=None, name: str | None = None):
        if seed is not None and key is not None:
            raise GraphcError("Sequential: give either seed or key, not both")
        self.layers = list(layers)
        for layer in self.layers:
            if not callable(layer):
                raise GraphcError(f"Sequential: {layer!r} is not a layer or callable")
        self.training_flags = [_takes_training(layer) for layer in self.layers]
        self.name = name
        named = _named_layers(self.layers)
        prefix = f"{name}." if name else ""
        counts = collections.Counter()
        for layer in named:
            counts[layer.kind] += 1
            if not layer.named_by_user and not layer.built:
                layer.name = f"{prefix}{layer.kind}{counts[layer.kind]}"
        if seed is not None or key is not None:
            keys = init.as_key(key or seed).split(len(named))
            for layer, layer_key in zip(named, keys, strict=True):
                if layer.key is None and not layer.built:
                    layer.key = layer_key
        names = [layer.name for layer in named]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise GraphcError(f"Sequential: layer names must be unique, repeated: {duplicates}")

    def __call__(self, x, training: bool = False) -> Tensor:
        for layer, takes_training in zip(self.layers, self.training_flags, strict=True):
            x = layer(x, training=training) if takes_training else layer(x)
        return x

    def _gather(self, method: str) -> list:
        return [item for layer in self.layers if hasattr(layer, method)
                for item in getattr(layer, method)()]  # fmt: skip

    def params(self) -> list[Tensor]:
        """All trainable params, layer by layer (w before b); the model must have been called."""
        return self._gather("params")

    def state(self) -> list[Tensor]:
        """All non-trainable state (running statistics, random keys), layer by layer."""
        return self._gather("state")

    def state_updates(self) -> dict[Tensor, Tensor]:
        """The new state values of every layer's latest training call (BatchNorm), for
        `updates={**opt.updates(loss), **model.state_updates()}`."""
        updates = {}
        for layer in self.layers:
            if hasattr(layer, "state_updates"):
                updates.update(layer.state_updates())
        return updates

    def __repr__(self) -> str:
        inner = ", ".join(
            repr(layer) if hasattr(layer, "params") else getattr(layer, "__name__", repr(layer))
            for layer in self.layers
        )
        return f"{type(self).__name__}({inner})"


class MLP(Sequential):
    """RLtools-style MLP: `layers` Dense layers in all, the last of width `out`."""

    def __init__(
        self,
        hidden: int,
        layers: int,
        out: int,
        activation="relu",
        output_activation=None,
        *,
        seed: int | None = None,
        key=None,
        dtype="float32",
        name: str | None = None,
    ):
        if int(layers) < 1:
            raise GraphcError(f"MLP needs layers >= 1, got {layers}")
        dense = [Dense(hidden, activation, dtype=dtype) for _ in range(int(layers) - 1)]
        dense.append(Dense(out, output_activation, dtype=dtype))
        self.hidden, self.out = int(hidden), int(out)
        super().__init__(dense, seed=seed, key=key, name=name)


# ---- losses ---------------------------------------------------------------------------------


def _target_like(target, like: Tensor) -> Tensor:
    """A Tensor for a loss target; raw arrays and scalars take the prediction's float dtype."""
    if isinstance(target, Tensor):
        return target
    array = np.asarray(target)
    return const(array, like.dtype) if array.dtype.kind in "fb" else const(array)


def _is_number(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _same_shape_pair(loss: str, pred, target, floats: bool = True) -> tuple[Tensor, Tensor]:
    """(pred, target) as Tensors of one shape; with `floats`, pred must be float and an
    integer or bool target becomes pred's dtype."""
    pred = as_tensor(pred)
    target = _target_like(target, pred)
    if floats and pred.dtype not in FLOATS:
        raise DTypeError(f"{loss}: the prediction must be float, got {pred.type}")
    if floats and target.dtype not in FLOATS:
        target = target.astype(pred.dtype)
    if pred.shape != target.shape:
        raise ShapeError(
            f"{loss}: prediction {pred.type} and target {target.type} differ in shape "
            f"(at {user_location()})"
        )
    return pred, target


def mse_loss(pred, target) -> Tensor:
    """mean((pred - target)²) over all elements; shapes must be equal."""
    pred, target = _same_shape_pair("mse_loss", pred, target, floats=False)
    diff = pred - target
    return (diff * diff).mean()


def _class_targets(loss: str, what: str, scores, labels, probabilities=True) -> Tensor:
    """`labels` as rows over the class axis (the last) of `scores` (named `what`): integer
    classes of shape `scores.shape[:-1]` become one-hot rows (a fed label outside
    [0, classes) gives a row of zeros; a constant one is a ShapeError, see `one_hot`); with
    `probabilities`, float rows of the shape of `scores` are taken as they are."""
    if scores.dtype not in FLOATS:
        raise DTypeError(f"{loss}: {what} must be float, got {scores.type}")
    if scores.ndim < 1:
        raise ShapeError(f"{loss}: {what} must have a class axis, got {scores.type}")
    labels = _target_like(labels, scores)
    if labels.dtype in INTS:
        if labels.shape != scores.shape[:-1]:
            raise ShapeError(
                f"{loss}: integer labels {labels.type} must have shape "
                f"{scores.shape[:-1]} for {what} {scores.type}"
            )
        return one_hot(labels, scores.shape[-1], scores.dtype)
    if labels.dtype in FLOATS and probabilities:
        if labels.shape != scores.shape:
            raise ShapeError(
                f"{loss}: probability labels {labels.type} must have the shape "
                f"of {what} {scores.type}"
            )
        return labels
    kinds = "integers or floats" if probabilities else "integer classes"
    raise DTypeError(f"{loss}: labels must be {kinds}, got {labels.type}")


def softmax_cross_entropy(logits, labels, label_smoothing: float = 0.0) -> Tensor:
    """Mean over the batch of -sum(p * log_softmax(logits)), computed stably.

    `labels` are integer classes of shape `logits.shape[:-1]` (a fed label outside
    [0, classes) contributes 0; a constant one is a ShapeError, see `one_hot`) or
    probabilities / one-hot rows of the shape of `logits`. With `label_smoothing` ε the
    target rows become (1 - ε) p + ε / classes, as PyTorch's CrossEntropyLoss.
    """
    logits = as_tensor(logits)
    labels = _class_targets("softmax_cross_entropy", "logits", logits, labels)
    if not _is_number(label_smoothing) or not 0.0 <= label_smoothing <= 1.0:
        raise GraphcError(
            f"softmax_cross_entropy: label_smoothing must be in [0, 1], got "
            f"{label_smoothing!r} (at {user_location()})"
        )
    if label_smoothing:
        labels = (1.0 - label_smoothing) * labels + label_smoothing / logits.shape[-1]
    return -(labels * log_softmax(logits, axis=-1)).sum(axis=-1).mean()


def nll_loss(log_probs, labels) -> Tensor:
    """-mean(log_probs[..., label]) over the batch: PyTorch's NLLLoss (mean) for
    log-probabilities with the classes on the last axis and integer `labels` of shape
    `log_probs.shape[:-1]` (a fed label outside [0, classes) contributes 0)."""
    log_probs = as_tensor(log_probs)
    labels = _class_targets("nll_loss", "log_probs", log_probs, labels, probabilities=False)
    return -(labels * log_probs).sum(axis=-1).mean()


def bce_with_logits(logits, targets) -> Tensor:
    """Mean binary cross-entropy of sigmoid(logits) against `targets` in [0, 1], computed
    stably as max(x, 0) - x·y + log1p(exp(-|x|)): PyTorch's BCEWithLogitsLoss (mean)."""
    x, y = _same_shape_pair("bce_with_logits", logits, targets)
    # at x = 0 the halves of max's gradient and sign(0) = 0 give sigmoid(0) - y exactly
    return (maximum(x, 0) - x * y + log1p(exp(-abs(x)))).mean()


def huber_loss(pred, target, delta: float = 1.0) -> Tensor:
    """Mean of ½ d² where |d| < delta, else delta (|d| - ½ delta), d = pred - target:
    PyTorch's HuberLoss (mean)."""
    if not _is_number(delta) or not delta > 0:
        raise GraphcError(f"huber_loss: delta must be > 0, got {delta!r} (at {user_location()})")
    pred, target = _same_shape_pair("huber_loss", pred, target)
    diff = pred - target
    size = abs(diff)
    return where(size < delta, 0.5 * (diff * diff), delta * (size - 0.5 * delta)).mean()


# ---- checkpoints ----------------------------------------------------------------------------


def _named_params(params) -> dict[str, Tensor]:
    if isinstance(params, (Layer, Sequential)):  # a model: its params and its state
        params = params.params() + params.state()
    elif hasattr(params, "params"):
        params = params.params()
    result: dict[str, Tensor] = {}
    for p in params:
        if not isinstance(p, Tensor) or p.node.op != "param":
            raise GraphcError(f"save/load work on gc.param tensors, got {p!r}")
        if not p.name:
            raise GraphcError(f"cannot save or load an unnamed param {p!r}")
        if p.name in result and result[p.name] is not p:
            raise GraphcError(
                f"two different params are named {p.name!r} (created at "
                f"{result[p.name].node.loc} and {p.node.loc}); unnamed models number their "
                f"layers dense1, dense2, ... alike: name the models, e.g. "
                f"gc.nn.MLP(..., name='critic') names its params 'critic.dense1.w', ..."
            )
        result[p.name] = p
    return result


def save(path, params) -> None:
    """Write params (a list, or a model with .params()) to a NumPy .npz keyed by param name."""
    named = _named_params(params)
    path = os.fspath(path)
    partial = path + ".partial"
    # the layout of np.savez, written by hand so that no param name can clash with a keyword
    with zipfile.ZipFile(partial, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, p in named.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(p.value), allow_pickle=False)
    os.replace(partial, path)


def load(path, params, *, strict: bool = True) -> None:
    """Read a .npz written by `save` into the params' storage, in place.

    Every param must be in the file with its exact shape and dtype (else InputError,
    ShapeError or DTypeError naming it); with `strict`, the file may hold no other arrays.
    Nothing is written unless every check passes.
    """
    named = _named_params(params)
    stored = _read_checkpoint(path)
    missing = [name for name in named if name not in stored]
    if missing:
        raise InputError(
            f"load {path}: no array for param(s) {missing}; the file holds {sorted(stored)}"
        )
    unexpected = sorted(set(stored) - set(named))
    if strict and unexpected:
        raise InputError(
            f"load {path}: unexpected array(s) {unexpected} (pass strict=False to ignore)"
        )
    for name, p in named.items():
        array = stored[name]
        if array.shape != p.shape:
            raise ShapeError(
                f"load {path}: param {name} is {p.type} but the file holds shape {array.shape}"
            )
        if array.dtype != p.value.dtype:
            raise DTypeError(
                f"load {path}: param {name} is {p.type} but the file holds {array.dtype}"
            )
    for name, p in named.items():
        p.value[...] = stored[name]


def _read_checkpoint(path) -> dict[str, np.ndarray]:
    """The arrays of a .npz; anything that is not one (missing, truncated, corrupt, a
    pickle, a lone .npy) is an InputError naming the file."""
    try:
        loaded = np.load(os.fspath(path), allow_pickle=False)
    except OSError as error:  # missing, a directory, unreadable
        raise InputError(f"load {path}: {error.strerror or error}") from None
    except Exception as error:  # numpy and zipfile raise a zoo of errors on damaged files
        raise _not_a_checkpoint(path, error) from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise InputError(f"load {path}: a single array, not a .npz written by gc.save")
    stored = {}
    with loaded:
        for name in loaded.files:
            try:
                stored[name] = loaded[name]
            except Exception as error:
                raise _not_a_checkpoint(path, error) from None
            if not isinstance(stored[name], np.ndarray):  # a member that is not a .npy
                raise InputError(f"load {path}: member {name!r} is not a NumPy array")
    return stored


def _not_a_checkpoint(path, error: Exception) -> InputError:
    return InputError(
        f"load {path}: not a checkpoint written by gc.save ({type(error).__name__}: {error})"
    )
