"""Layers, models, losses and checkpoints (`gc.nn`, `gc.save`, `gc.load`).

Layers are plain Python objects that build graph nodes when called. Shapes cascade from
the input, as in RLtools and Keras: a `Dense` creates its parameters on its first call,
from the input's last dimension, and every later call (another batch size, inference
next to training) reuses the same param Tensors and hence the same storage.

    model = gc.nn.MLP(hidden=32, layers=3, out=1, seed=0)     # dense1 5->32, dense2, dense3
    loss = gc.nn.mse_loss(model(x), y)
    model.params()    # [dense1.w, dense1.b, dense2.w, dense2.b, dense3.w, dense3.b]

Naming: a model names its unnamed Dense layers `dense1`, `dense2`, ... in order, counting
through unnamed nested models (prefixed `<model>.` when the model has a name, and then
left alone by an enclosing model); a Dense used on its own is numbered process-wide when
it is first called. Parameters are `<layer>.w` and `<layer>.b`.
"""

from __future__ import annotations

import itertools
import numbers
import os
import zipfile
from collections.abc import Callable

import numpy as np

from graphc.errors import DTypeError, GraphcError, InputError, ShapeError
from graphc.frontend import init
from graphc.frontend.composites import gelu, log_softmax, one_hot, relu
from graphc.frontend.functions import abs, exp, log1p, maximum, sigmoid, tanh, where
from graphc.frontend.tensor import Tensor, as_tensor, const, param
from graphc.ir.graph import user_location
from graphc.ir.types import FLOATS, INTS, canonical_dtype

# ---- activations ----------------------------------------------------------------------------


def _identity(x):
    return x


ACTIVATIONS: dict[str | None, Callable] = {
    None: _identity,
    "identity": _identity,
    "relu": relu,
    "tanh": tanh,
    "sigmoid": sigmoid,
    "gelu": gelu,
}


def activation_function(activation) -> Callable:
    """The function for an activation given by name, None, or as a callable."""
    if callable(activation):
        return activation
    if activation not in ACTIVATIONS:
        choices = ", ".join(repr(k) for k in ACTIVATIONS)
        raise GraphcError(
            f"unknown activation {activation!r}; choose one of {choices} or a callable"
        )
    return ACTIVATIONS[activation]


# ---- layers ---------------------------------------------------------------------------------

_standalone_dense = itertools.count(1)


class Dense:
    """`activation(x @ w + b)` with `w: (in, units)` and `b: (units,)` created on first call.

    Initialization is PyTorch's nn.Linear default: w and b ~ U(-1/sqrt(in), 1/sqrt(in)),
    drawn from `key` or `seed` (neither: fresh OS entropy, or the key a model derives).
    """

    def __init__(
        self,
        units: int,
        activation=None,
        *,
        seed: int | None = None,
        key: init.Key | None = None,
        dtype="float32",
        name: str | None = None,
        use_bias: bool = True,
    ):
        if int(units) < 1:
            raise ShapeError(f"Dense needs units >= 1, got {units}")
        if seed is not None and key is not None:
            raise GraphcError("Dense: give either seed or key, not both")
        self.units = int(units)
        self.activation = activation
        self.activation_fn = activation_function(activation)
        self.dtype = canonical_dtype(dtype)
        if self.dtype not in FLOATS:
            raise DTypeError(f"Dense: dtype must be float32 or float64, got {self.dtype}")
        self.key = None if seed is None and key is None else init.as_key(key or seed)
        self.name = name
        self.named_by_user = name is not None
        self.use_bias = use_bias
        self.w: Tensor | None = None
        self.b: Tensor | None = None

    @property
    def built(self) -> bool:
        return self.w is not None

    @property
    def in_features(self) -> int | None:
        return self.w.shape[0] if self.w is not None else None

    def build(self, in_features: int) -> None:
        """Create `w` and `b` for inputs whose last dimension is `in_features`."""
        if self.built:
            raise GraphcError(f"Dense {self.name} is already built")
        if self.name is None:
            self.name = f"dense{next(_standalone_dense)}"
        key_w, key_b = init.as_key(self.key).split(2)
        shape = (in_features, self.units)
        self.w = param(
            f"{self.name}.w", init.kaiming_uniform(key_w, shape, in_features, self.dtype)
        )
        if self.use_bias:
            bias = init.kaiming_uniform(key_b, (self.units,), in_features, self.dtype)
            self.b = param(f"{self.name}.b", bias)

    def __call__(self, x) -> Tensor:
        x = as_tensor(x)
        if x.ndim == 0:
            raise ShapeError(f"Dense {self.name or ''}: input must have rank >= 1, got {x.type}")
        if x.dtype not in FLOATS:
            x = x.astype(self.dtype)
        if not self.built:
            self.build(x.shape[-1])
        elif x.shape[-1] != self.in_features:
            raise ShapeError(
                f"Dense {self.name}: built for inputs of last dimension {self.in_features} "
                f"(w: {self.w.type}), called on {x.type}"
            )
        y = x @ self.w
        if self.b is not None:
            y = y + self.b
        return self.activation_fn(y)

    def params(self) -> list[Tensor]:
        """[w, b] (or [w] without bias); the layer must have been called or built."""
        if not self.built:
            raise GraphcError(
                f"Dense {self.name or '(unnamed)'} has no params yet: call it on an input first "
                f"(shapes cascade from the input) or call .build(in_features)"
            )
        return [self.w] if self.b is None else [self.w, self.b]

    def __repr__(self) -> str:
        shape = f"{self.in_features}->{self.units}" if self.built else f"?->{self.units}"
        return f"Dense({self.name}: {shape}, activation={self.activation!r}, {self.dtype})"


def _dense_layers(layers) -> list[Dense]:
    """The Dense layers of `layers` in call order, looking into unnamed nested models."""
    found = []
    for layer in layers:
        if isinstance(layer, Dense):
            found.append(layer)
        elif isinstance(layer, Sequential) and layer.name is None:
            found.extend(_dense_layers(layer.layers))
    return found


class Sequential:
    """Layers (or plain callables such as `gc.relu`) applied in order."""

    def __init__(self, layers, *, seed: int | None = None, key=None, name: str | None = None):
        if seed is not None and key is not None:
            raise GraphcError("Sequential: give either seed or key, not both")
        self.layers = list(layers)
        for layer in self.layers:
            if not callable(layer):
                raise GraphcError(f"Sequential: {layer!r} is not a layer or callable")
        self.name = name
        dense = _dense_layers(self.layers)
        prefix = f"{name}." if name else ""
        for i, layer in enumerate(dense, 1):
            if not layer.named_by_user and not layer.built:
                layer.name = f"{prefix}dense{i}"
        if seed is not None or key is not None:
            keys = init.as_key(key or seed).split(len(dense))
            for layer, layer_key in zip(dense, keys, strict=True):
                if layer.key is None and not layer.built:
                    layer.key = layer_key
        names = [layer.name for layer in dense]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise GraphcError(f"Sequential: layer names must be unique, repeated: {duplicates}")

    def __call__(self, x) -> Tensor:
        for layer in self.layers:
            x = layer(x)
        return x

    def params(self) -> list[Tensor]:
        """All parameters, layer by layer (w before b); the model must have been called."""
        result = []
        for layer in self.layers:
            if hasattr(layer, "params"):
                result.extend(layer.params())
        return result

    def __repr__(self) -> str:
        inner = ", ".join(repr(layer) for layer in self.layers)
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
    if hasattr(params, "params"):
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
