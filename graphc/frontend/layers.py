# Over 500 lines on purpose: every gc.nn layer, one class each on the shared Layer base
# (naming, build on first call, params and state); apart they would only import each other.
"""The layers of `gc.nn`: Dense, convolution, pooling, normalisation, embedding, dropout,
recurrent (GRU, LSTM: gc.scan) and attention, as plain Python objects that build graph nodes
when called.

Shapes cascade from the input: a layer creates its params on its first call (a Conv2D
from the input's channels, a LayerNorm from its last axis) and every later call reuses
them. `layer(x, training=True)` selects training behaviour: Dropout drops, BatchNorm
normalizes by the batch's statistics and records the new running statistics, which
`layer.state_updates()` returns for `gc.compile(..., updates=...)`:

    y = bn(x, training=True)                   # batch statistics
    updates = {**opt.updates(loss), **bn.state_updates()}
    step = gc.compile(inputs=[x, labels], outputs=loss, updates=updates)
    infer = gc.compile(inputs=[x], outputs=bn(x))   # reads the running statistics

Initializations are PyTorch's defaults. Weights keep PyTorch's layouts except Dense, whose
`w` is (in, units), as `x @ w`. Each layer with params or state has a name, its kind and a
number (`dense1`, `conv2`, `batchnorm1` ...; nn.py's Sequential numbers them), and layers
built of layers name their parts after themselves (`encoder1.attention.q.w`).
"""

from __future__ import annotations

import collections
import itertools
import math
from collections.abc import Callable

import numpy as np

from graphc.errors import DTypeError, GraphcError, ShapeError
from graphc.frontend import init, random
from graphc.frontend.composites import gelu, layer_norm, relu, scaled_dot_product_attention
from graphc.frontend.convolution import avg_pool, conv, max_pool
from graphc.frontend.functions import sigmoid, sqrt, take, tanh, where
from graphc.frontend.scan import scan
from graphc.frontend.tensor import Tensor, as_tensor, param
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


# ---- the base -------------------------------------------------------------------------------

# the next number of a layer of each kind called on its own (outside any model)
_STANDALONE: dict[str, itertools.count] = collections.defaultdict(lambda: itertools.count(1))


class Layer:
    """A layer: created with its hyper-parameters, built (params created) on its first call.

    Subclasses set `kind` (the name prefix; None for layers without params or state) and
    define `create(x)` (make the params for the first input) and `forward(x, training)`.
    """

    kind: str | None = None
    param_names: tuple[str, ...] = ()  # the params' attributes, in params() order

    def __init__(self, *, seed=None, key=None, dtype="float32", name: str | None = None):
        label = type(self).__name__
        if seed is not None and key is not None:
            raise GraphcError(f"{label}: give either seed or key, not both")
        self.dtype = canonical_dtype(dtype)
        if self.dtype not in FLOATS:
            raise DTypeError(f"{label}: dtype must be float32 or float64, got {self.dtype}")
        self.key = None if seed is None and key is None else init.as_key(key or seed)
        self.name = name
        self.named_by_user = name is not None
        self.built = False

    def __call__(self, x, training: bool = False) -> Tensor:
        x = self.check(as_tensor(x))
        self.build_for(x)
        return self.forward(x, training)

    def build_for(self, x: Tensor) -> None:
        """Name the layer (if no model did) and create its params, on the first input."""
        if not self.built:
            if self.name is None and self.kind is not None:
                self.name = f"{self.kind}{next(_STANDALONE[self.kind])}"
            self.create(x)
            self.built = True

    def check(self, x: Tensor) -> Tensor:
        """The input as the layer takes it: a float Tensor (integers become `dtype`)."""
        return x if x.dtype in FLOATS else x.astype(self.dtype)

    def create(self, x: Tensor) -> None:
        """Make the params for the first input `x` (no params by default)."""

    def forward(self, x: Tensor, training: bool) -> Tensor:
        raise NotImplementedError

    def keys(self, n: int) -> tuple[init.Key, ...]:
        """`n` keys for this layer's params and parts (fresh entropy without seed or key)."""
        return init.as_key(self.key).split(n)

    def params(self) -> list[Tensor]:
        """The trainable params; the layer must have been called."""
        if self.param_names and not self.built:
            raise GraphcError(
                f"{type(self).__name__} {self.name or '(unnamed)'} has no params yet: call it "
                f"on an input first (shapes cascade from the input)"
            )
        found = (getattr(self, attribute) for attribute in self.param_names)
        return [p for p in found if p is not None]

    def state(self) -> list[Tensor]:
        """Non-trainable state (running statistics, random keys), saved with the params."""
        return []

    def state_updates(self) -> dict[Tensor, Tensor]:
        """New values of the state from the latest training call (BatchNorm's statistics)."""
        return {}

    def where(self) -> str:
        return f"{type(self).__name__} {self.name or ''}".rstrip()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"


def _user_param(layer: Layer, attribute: str, value: np.ndarray) -> Tensor:
    """The param `<layer>.<attribute>` with an initial value in the layer's dtype."""
    return param(f"{layer.name}.{attribute}", np.asarray(value, layer.dtype))


def _uniform(key, shape, fan_in: int, dtype) -> np.ndarray:
    """PyTorch's default for Linear and Conv weights and biases: U(±1/sqrt(fan_in))."""
    return init.kaiming_uniform(key, shape, fan_in, dtype)


# ---- dense and convolution ------------------------------------------------------------------


class Dense(Layer):
    """`activation(x @ w + b)` with `w: (in, units)` and `b: (units,)` created on first call.

    Initialization is PyTorch's nn.Linear default: w and b ~ U(-1/sqrt(in), 1/sqrt(in)),
    drawn from `key` or `seed` (neither: fresh OS entropy, or the key a model derives).
    """

    kind = "dense"
    param_names = ("w", "b")

    def __init__(
        self,
        units: int,
        activation=None,
        *,
        seed=None,
        key=None,
        dtype="float32",
        name: str | None = None,
        use_bias: bool = True,
    ):
        if int(units) < 1:
            raise ShapeError(f"Dense needs units >= 1, got {units}")
        super().__init__(seed=seed, key=key, dtype=dtype, name=name)
        self.units = int(units)
        self.activation = activation
        self.activation_fn = activation_function(activation)
        self.use_bias = use_bias
        self.w: Tensor | None = None
        self.b: Tensor | None = None

    @property
    def in_features(self) -> int | None:
        return self.w.shape[0] if self.w is not None else None

    def build(self, in_features: int) -> None:
        """Create `w` and `b` for inputs whose last dimension is `in_features`."""
        if self.built:
            raise GraphcError(f"Dense {self.name} is already built")
        if self.name is None:
            self.name = f"dense{next(_STANDALONE['dense'])}"
        key_w, key_b = self.keys(2)
        self.w = _user_param(
            self, "w", _uniform(key_w, (in_features, self.units), in_features, self.dtype)
        )
        if self.use_bias:
            self.b = _user_param(self, "b", _uniform(key_b, (self.units,), in_features, self.dtype))
        self.built = True

    def check(self, x: Tensor) -> Tensor:
        if x.ndim == 0:
            raise ShapeError(f"Dense {self.name or ''}: input must have rank >= 1, got {x.type}")
        x = super().check(x)
        if self.built and x.shape[-1] != self.in_features:
            raise ShapeError(
                f"Dense {self.name}: built for inputs of last dimension {self.in_features} "
                f"(w: {self.w.type}), called on {x.type} (at {user_location()})"
            )
        return x

    def create(self, x: Tensor) -> None:
        self.build(x.shape[-1])

    def forward(self, x: Tensor, training: bool) -> Tensor:
        if x.ndim > 2:  # one matrix product over all rows (w's gradient: one product too)
            y = (x.reshape(x.size // x.shape[-1], x.shape[-1]) @ self.w).reshape(
                *x.shape[:-1], self.units
            )
        else:
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
        return super().params()

    def __repr__(self) -> str:
        shape = f"{self.in_features}->{self.units}" if self.built else f"?->{self.units}"
        return f"Dense({self.name}: {shape}, activation={self.activation!r}, {self.dtype})"


class _Conv(Layer):
    """`activation(conv(x, w) + b)` over (N, C, *spatial) with PyTorch's weight layout
    `w: (filters, C // groups, *kernel)` and init (U(±1/sqrt(fan_in)) for w and b)."""

    kind = "conv"
    param_names = ("w", "b")
    rank = 0  # spatial axes

    def __init__(
        self,
        filters: int,
        kernel_size,
        stride=1,
        padding=0,
        activation=None,
        *,
        dilation=1,
        groups: int = 1,
        use_bias: bool = True,
        seed=None,
        key=None,
        dtype="float32",
        name: str | None = None,
    ):
        super().__init__(seed=seed, key=key, dtype=dtype, name=name)
        if int(filters) < 1 or int(groups) < 1 or int(filters) % int(groups):
            raise ShapeError(
                f"{type(self).__name__}: filters ({filters}) must be >= 1 and a multiple of "
                f"groups ({groups}) (at {user_location()})"
            )
        self.filters, self.groups = int(filters), int(groups)
        if isinstance(kernel_size, int):
            kernel_size = (kernel_size,) * self.rank
        self.kernel_size = tuple(int(k) for k in kernel_size)
        if len(self.kernel_size) != self.rank or min(self.kernel_size) < 1:
            raise ShapeError(
                f"{type(self).__name__}: kernel_size must be an int or {self.rank} ints >= 1, "
                f"got {kernel_size!r} (at {user_location()})"
            )
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.activation = activation
        self.activation_fn = activation_function(activation)
        self.use_bias = use_bias
        self.w: Tensor | None = None
        self.b: Tensor | None = None

    def check(self, x: Tensor) -> Tensor:
        if x.ndim != self.rank + 2:
            raise ShapeError(
                f"{self.where()}: input {x.type} must be (N, C, {self.rank} spatial axes) "
                f"(at {user_location()})"
            )
        if self.built and x.shape[1] != self.w.shape[1] * self.groups:
            raise ShapeError(
                f"{self.where()}: built for {self.w.shape[1] * self.groups} input channels "
                f"(w: {self.w.type}), called on {x.type} (at {user_location()})"
            )
        return super().check(x)

    def create(self, x: Tensor) -> None:
        channels = x.shape[1]
        if channels % self.groups:
            raise ShapeError(
                f"{self.where()}: input channels {channels} of {x.type} are not a multiple of "
                f"groups {self.groups} (at {user_location()})"
            )
        shape = (self.filters, channels // self.groups, *self.kernel_size)
        fan_in = math.prod(shape[1:])
        key_w, key_b = self.keys(2)
        self.w = _user_param(self, "w", _uniform(key_w, shape, fan_in, self.dtype))
        if self.use_bias:
            self.b = _user_param(self, "b", _uniform(key_b, (self.filters,), fan_in, self.dtype))

    def forward(self, x: Tensor, training: bool) -> Tensor:
        y = conv(x, self.w, self.stride, self.padding, self.dilation, self.groups)
        if self.b is not None:
            y = y + self.b.reshape(self.filters, *(1,) * self.rank)
        return self.activation_fn(y)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.name}: {self.filters} filters {self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding!r}, activation={self.activation!r})"
        )


class Conv1D(_Conv):
    """A 1-D convolution layer over (N, C, L) (PyTorch's Conv1d)."""

    rank = 1


class Conv2D(_Conv):
    """A 2-D convolution layer over (N, C, H, W) (PyTorch's Conv2d)."""

    rank = 2


# ---- shape layers ---------------------------------------------------------------------------


class _Pool2D(Layer):
    def __init__(self, pool, stride=None, padding=0):
        super().__init__()
        self.pool, self.stride, self.padding = pool, stride, padding

    def check(self, x: Tensor) -> Tensor:
        if x.ndim != 4:
            raise ShapeError(
                f"{type(self).__name__}: input {x.type} must be (N, C, H, W) (at {user_location()})"
            )
        return super().check(x)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.pool}, stride={self.stride})"


class MaxPool2D(_Pool2D):
    """The maximum over `pool` windows of (N, C, H, W) (stride defaults to `pool`)."""

    def forward(self, x: Tensor, training: bool) -> Tensor:
        return max_pool(x, self.pool, self.stride, self.padding)


class AvgPool2D(_Pool2D):
    """The mean over `pool` windows of (N, C, H, W) (stride defaults to `pool`)."""

    def forward(self, x: Tensor, training: bool) -> Tensor:
        return avg_pool(x, self.pool, self.stride, self.padding)


class Flatten(Layer):
    """(N, ...) -> (N, everything else), as PyTorch's nn.Flatten."""

    def __init__(self):
        super().__init__()

    def check(self, x: Tensor) -> Tensor:
        if x.ndim < 1:
            raise ShapeError(f"Flatten: input {x.type} has no batch axis (at {user_location()})")
        return x

    def forward(self, x: Tensor, training: bool) -> Tensor:
        return x.reshape(x.shape[0], math.prod(x.shape[1:]))

    def __repr__(self) -> str:
        return "Flatten()"


# ---- normalisation --------------------------------------------------------------------------


class BatchNorm(Layer):
    """Per-channel normalisation of (N, C, *spatial) over every axis but the channels', with
    scale `w` (ones) and shift `b` (zeros), as PyTorch's BatchNorm1d/2d/3d.

    Training: the batch's mean and (biased) variance normalize, and the running statistics
    `<name>.running_mean` / `.running_var` (state params: zeros and ones) get the new values
    (1 - momentum) · running + momentum · batch (the variance unbiased, n / (n - 1)), which
    `state_updates()` returns for the step's `updates=`. Inference: the running statistics
    normalize.
    """

    kind = "batchnorm"
    param_names = ("w", "b")

    def __init__(self, momentum: float = 0.1, eps: float = 1e-5, *, dtype="float32", name=None):
        super().__init__(dtype=dtype, name=name)
        if not 0.0 <= momentum <= 1.0 or not eps > 0:
            raise GraphcError(
                f"BatchNorm: momentum must be in [0, 1] and eps > 0, got {momentum!r} and "
                f"{eps!r} (at {user_location()})"
            )
        self.momentum, self.eps = float(momentum), float(eps)
        self.updates: dict[Tensor, Tensor] = {}

    def check(self, x: Tensor) -> Tensor:
        if x.ndim < 2 or (self.built and x.shape[1] != self.w.shape[0]):
            built = f" built for {self.w.shape[0]} channels," if self.built else ""
            raise ShapeError(
                f"{self.where()}:{built} input {x.type} must be (N, C, *spatial) "
                f"(at {user_location()})"
            )
        return super().check(x)

    def create(self, x: Tensor) -> None:
        channels = x.shape[1]
        self.w = _user_param(self, "w", np.ones(channels))
        self.b = _user_param(self, "b", np.zeros(channels))
        self.running_mean = _user_param(self, "running_mean", np.zeros(channels))
        self.running_var = _user_param(self, "running_var", np.ones(channels))

    def forward(self, x: Tensor, training: bool) -> Tensor:
        axes = (0, *range(2, x.ndim))
        per_channel = (x.shape[1],) + (1,) * (x.ndim - 2)
        if training:
            mean = x.mean(axes)
            centered = x - mean.reshape(per_channel)
            variance = (centered * centered).mean(axes)
            count = x.size // x.shape[1]
            unbiased = variance * (count / max(count - 1, 1))
            m = self.momentum
            self.updates = {
                self.running_mean: (1 - m) * self.running_mean + m * mean,
                self.running_var: (1 - m) * self.running_var + m * unbiased,
            }
        else:
            mean, variance = self.running_mean, self.running_var
            centered = x - mean.reshape(per_channel)
        scale = self.w * (1.0 / sqrt(variance + self.eps))  # per channel: one division each
        return centered * scale.reshape(per_channel) + self.b.reshape(per_channel)

    def state(self) -> list[Tensor]:
        return [self.running_mean, self.running_var] if self.built else []

    def state_updates(self) -> dict[Tensor, Tensor]:
        return dict(self.updates)


class LayerNorm(Layer):
    """Normalisation over the last axis with scale `w` (ones) and shift `b` (zeros), as
    PyTorch's LayerNorm(dim) (gc.layer_norm: one row-wise kernel forward, one backward)."""

    kind = "layernorm"
    param_names = ("w", "b")

    def __init__(self, eps: float = 1e-5, *, dtype="float32", name=None):
        super().__init__(dtype=dtype, name=name)
        self.eps = float(eps)

    def check(self, x: Tensor) -> Tensor:
        if x.ndim < 1 or (self.built and x.shape[-1] != self.w.shape[0]):
            raise ShapeError(
                f"{self.where()}: input {x.type} must have a last axis of "
                f"{self.w.shape[0] if self.built else 'the built'} size (at {user_location()})"
            )
        return super().check(x)

    def create(self, x: Tensor) -> None:
        self.w = _user_param(self, "w", np.ones(x.shape[-1]))
        self.b = _user_param(self, "b", np.zeros(x.shape[-1]))

    def forward(self, x: Tensor, training: bool) -> Tensor:
        return layer_norm(x, self.w, self.b, axis=-1, eps=self.eps)


# ---- embedding and dropout ------------------------------------------------------------------


class Embedding(Layer):
    """Rows of `w: (num, dim)` (N(0, 1), as PyTorch) at integer indices of any shape: the
    result has the indices' shape plus (dim,); gc.take, so an index out of range makes the
    call raise InputError, and the gradient is a scatter_add into `w`."""

    kind = "embedding"
    param_names = ("w",)

    def __init__(self, num: int, dim: int, *, seed=None, key=None, dtype="float32", name=None):
        super().__init__(seed=seed, key=key, dtype=dtype, name=name)
        if int(num) < 1 or int(dim) < 1:
            raise ShapeError(f"Embedding needs num and dim >= 1, got {num} and {dim}")
        self.num, self.dim = int(num), int(dim)

    def check(self, x: Tensor) -> Tensor:
        if x.dtype not in INTS:
            raise DTypeError(
                f"{self.where()}: indices must be integers, got {x.type} (at {user_location()})"
            )
        return x

    def create(self, x: Tensor) -> None:
        (key,) = self.keys(1)
        self.w = _user_param(self, "w", key.generator().standard_normal((self.num, self.dim)))

    def forward(self, x: Tensor, training: bool) -> Tensor:
        return take(self.w, x, axis=0)

    def __repr__(self) -> str:
        return f"Embedding({self.name}: {self.num} x {self.dim})"


class Dropout(Layer):
    """Training: each element zeroed with probability `rate`, the others scaled by
    1 / (1 - rate) (gc.random.bernoulli on the key `<name>.key`, which every compiled step
    advances); inference: the identity."""

    kind = "dropout"

    def __init__(self, rate: float, *, seed=None, key=None, name=None):
        super().__init__(seed=seed, key=key, name=name)
        if not 0.0 <= rate <= 1.0:
            raise GraphcError(
                f"Dropout: rate must be in [0, 1], got {rate!r} (at {user_location()})"
            )
        self.rate = float(rate)
        self.random_key: Tensor | None = None

    def check(self, x: Tensor) -> Tensor:
        return x

    def create(self, x: Tensor) -> None:
        if self.rate > 0.0:  # rate 0 draws nothing: no key
            (key,) = self.keys(1)
            self.random_key = random.key(f"{self.name}.key", key)

    def forward(self, x: Tensor, training: bool) -> Tensor:
        if not training or self.rate == 0.0:
            return x
        if x.dtype not in FLOATS:
            raise DTypeError(f"{self.where()}: input must be float, got {x.type}")
        if self.rate == 1.0:
            return x * 0.0
        keep = random.bernoulli(self.random_key, as_tensor(1.0 - self.rate, x), x.shape)
        return where(keep, x * (1.0 / (1.0 - self.rate)), 0.0)

    def state(self) -> list[Tensor]:
        return [self.random_key] if self.random_key is not None else []

    def __repr__(self) -> str:
        return f"Dropout({self.rate})"


# ---- recurrent ------------------------------------------------------------------------------


class _Recurrent(Layer):
    """A recurrent layer over batch-first sequences (N, T, features), on gc.scan: one native
    loop over the steps, its body compiled once. PyTorch's weight layout and initialization:
    `weight_ih: (gates·units, features)`, `weight_hh: (gates·units, units)`, `bias_ih`,
    `bias_hh: (gates·units,)`, all U(±1/sqrt(units)); the state starts at zeros. Each step
    projects its own slice of x inside the loop: one product over all steps would read x
    through a view of N·T gathered rows (time-major from batch-first), whose offset table
    grows with T, and so would the compile."""

    gates = 1
    param_names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")

    def __init__(
        self,
        units: int,
        return_sequences: bool = False,
        *,
        seed=None,
        key=None,
        dtype="float32",
        name: str | None = None,
    ):
        if int(units) < 1:
            raise ShapeError(f"{type(self).__name__} needs units >= 1, got {units}")
        super().__init__(seed=seed, key=key, dtype=dtype, name=name)
        self.units = int(units)
        self.return_sequences = bool(return_sequences)

    def check(self, x: Tensor) -> Tensor:
        if x.ndim != 3:
            raise ShapeError(
                f"{self.where()}: input must be (batch, steps, features), got {x.type} "
                f"(at {user_location()})"
            )
        x = super().check(x)
        if self.built and x.shape[-1] != self.weight_ih.shape[1]:
            raise ShapeError(
                f"{self.where()}: built for {self.weight_ih.shape[1]} features "
                f"(weight_ih: {self.weight_ih.type}), called on {x.type} (at {user_location()})"
            )
        return x

    def create(self, x: Tensor) -> None:
        rows = self.gates * self.units
        shapes = {
            "weight_ih": (rows, x.shape[-1]),
            "weight_hh": (rows, self.units),
            "bias_ih": (rows,),
            "bias_hh": (rows,),
        }
        for key, (attribute, shape) in zip(self.keys(4), shapes.items()):
            value = _uniform(key, shape, self.units, self.dtype)  # U(±1/sqrt(units))
            setattr(self, attribute, _user_param(self, attribute, value))

    def forward(self, x: Tensor, training: bool) -> Tensor:
        n = x.shape[0]
        w_ih, w_hh = self.weight_ih.T, self.weight_hh.T  # computed once, before the loop
        zeros = as_tensor(np.zeros((n, self.units), self.dtype))

        def step(state, x_t):
            gates_x = x_t @ w_ih + self.bias_ih
            return self.cell(state, gates_x, self.hidden(state) @ w_hh + self.bias_hh)

        state, hs = scan(step, self.initial(zeros), x.transpose(1, 0, 2))
        return hs.transpose(1, 0, 2) if self.return_sequences else self.hidden(state)

    def split(self, gates: Tensor) -> list[Tensor]:
        """The gate blocks of a (N, gates·units) product, in PyTorch's order."""
        u = self.units
        return [gates[:, i * u : (i + 1) * u] for i in range(self.gates)]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}: {self.units} units, {self.dtype})"


class GRU(_Recurrent):
    """PyTorch's nn.GRU (one layer, batch_first): r = σ(x W_ir + b_ir + h W_hr + b_hr),
    z = σ(... _z), n = tanh(x W_in + b_in + r ⊙ (h W_hn + b_hn)), h' = (1 − z) ⊙ n + z ⊙ h;
    gates stacked (r, z, n). Returns the last h (N, units), or every h (N, T, units) with
    `return_sequences=True`."""

    kind = "gru"
    gates = 3

    def initial(self, zeros: Tensor):
        return zeros

    def hidden(self, state):
        return state

    def cell(self, h, gates_x, gates_h):
        r_x, z_x, n_x = self.split(gates_x)
        r_h, z_h, n_h = self.split(gates_h)
        r, z = sigmoid(r_x + r_h), sigmoid(z_x + z_h)
        new = (1 - z) * tanh(n_x + r * n_h) + z * h
        return new, new


class LSTM(_Recurrent):
    """PyTorch's nn.LSTM (one layer, batch_first): gates stacked (i, f, g, o) from
    x W_ih + b_ih + h W_hh + b_hh; i, f, o = σ(...), g = tanh(...), c' = f ⊙ c + i ⊙ g,
    h' = o ⊙ tanh(c'); the carry is (h, c). Returns the last h (N, units), or every h
    (N, T, units) with `return_sequences=True`."""

    kind = "lstm"
    gates = 4

    def initial(self, zeros: Tensor):
        return (zeros, zeros)

    def hidden(self, state):
        return state[0]

    def cell(self, state, gates_x, gates_h):
        h, c = state
        i, f, g, o = (a + b for a, b in zip(self.split(gates_x), self.split(gates_h)))
        c = sigmoid(f) * c + sigmoid(i) * tanh(g)
        h = sigmoid(o) * tanh(c)
        return (h, c), h


# ---- attention ------------------------------------------------------------------------------


class _Composite(Layer):
    """A layer built of named parts (`parts`: attribute name -> layer), named after it."""

    parts: tuple[str, ...] = ()

    def create(self, x: Tensor) -> None:
        """Name the parts after this layer and give each a key (one more is `own_key`)."""
        *keys, self.own_key = self.keys(len(self.parts) + 1)
        for part, key in zip(self.parts, keys, strict=True):
            layer = getattr(self, part)
            layer.name, layer.key = f"{self.name}.{part}", key

    def params(self) -> list[Tensor]:
        return [p for part in self.parts for p in getattr(self, part).params()]

    def state(self) -> list[Tensor]:
        return [s for part in self.parts for s in getattr(self, part).state()]


class MultiHeadAttention(_Composite):
    """Multi-head attention over (..., seq, dim): `heads` heads of width dim // heads,
    projections `q`, `k`, `v`, `out` (Dense dim -> dim), as PyTorch's MultiheadAttention
    (batch first; in-projections Xavier-uniform, biases zero). `mha(x)` attends x to itself;
    `mha(x, context)` attends x to `context`; `mask` as in gc.scaled_dot_product_attention."""

    kind = "attention"
    parts = ("q", "k", "v", "out")

    def __init__(
        self,
        heads: int,
        dim: int,
        causal: bool = False,
        *,
        seed=None,
        key=None,
        dtype="float32",
        name=None,
    ):
        super().__init__(seed=seed, key=key, dtype=dtype, name=name)
        if int(heads) < 1 or int(dim) < 1 or int(dim) % int(heads):
            raise ShapeError(
                f"MultiHeadAttention: dim ({dim}) must be a multiple of heads ({heads}) "
                f"(at {user_location()})"
            )
        self.heads, self.dim, self.causal = int(heads), int(dim), bool(causal)
        for part in self.parts:
            setattr(self, part, Dense(self.dim, dtype=dtype))

    def __call__(self, x, context=None, mask=None, training: bool = False) -> Tensor:
        x = self.check(as_tensor(x))
        context = x if context is None else self.check(as_tensor(context))
        self.build_for(x)
        q, k, v = (
            self._split(part(t)) for part, t in ((self.q, x), (self.k, context), (self.v, context))
        )
        y = scaled_dot_product_attention(q, k, v, mask=mask, causal=self.causal)
        lead = y.ndim - 3
        y = y.transpose(*range(lead), lead + 1, lead, lead + 2).reshape(*x.shape[:-1], self.dim)
        return self.out(y)

    def check(self, x: Tensor) -> Tensor:
        if x.ndim < 2 or x.shape[-1] != self.dim:
            raise ShapeError(
                f"{self.where()}: inputs must be (..., seq, {self.dim}), got {x.type} "
                f"(at {user_location()})"
            )
        return super().check(x)

    def create(self, x: Tensor) -> None:
        super().create(x)
        generator = self.own_key.generator()
        bound = math.sqrt(6.0 / (self.dim + 3 * self.dim))  # xavier over PyTorch's (3 dim, dim)
        for part in self.parts:
            layer = getattr(self, part)
            layer.build(self.dim)
            if part != "out":
                layer.w.value[...] = generator.uniform(-bound, bound, layer.w.shape)
            layer.b.value[...] = 0.0

    def _split(self, t: Tensor) -> Tensor:
        """(..., seq, dim) -> (..., heads, seq, dim // heads)."""
        lead = t.ndim - 2
        t = t.reshape(*t.shape[:-1], self.heads, self.dim // self.heads)
        return t.transpose(*range(lead), lead + 1, lead, lead + 2)

    def __repr__(self) -> str:
        return f"MultiHeadAttention({self.name}: {self.heads} heads, dim {self.dim})"


class TransformerEncoderLayer(_Composite):
    """A pre-LayerNorm transformer encoder block over (..., seq, dim), as PyTorch's
    TransformerEncoderLayer(norm_first=True, activation="gelu", batch_first=True):

        x = x + dropout(attention(norm1(x)))
        x = x + dropout(ffn2(dropout(gelu(ffn1(norm2(x))))))

    `causal=True` masks attention to earlier positions; `layer(x, mask=...)` as in
    MultiHeadAttention. Dropout is not applied to the attention weights."""

    kind = "encoder"
    parts = ("norm1", "attention", "norm2", "ffn1", "ffn2", "dropout")

    def __init__(
        self,
        dim: int,
        heads: int,
        ffn: int,
        dropout: float = 0.0,
        *,
        causal: bool = False,
        seed=None,
        key=None,
        dtype="float32",
        name=None,
    ):
        super().__init__(seed=seed, key=key, dtype=dtype, name=name)
        self.dim, self.heads, self.ffn = int(dim), int(heads), int(ffn)
        self.norm1, self.norm2 = LayerNorm(dtype=dtype), LayerNorm(dtype=dtype)
        self.attention = MultiHeadAttention(heads, dim, causal, dtype=dtype)
        self.ffn1, self.ffn2 = Dense(self.ffn, gelu, dtype=dtype), Dense(self.dim, dtype=dtype)
        self.dropout = Dropout(dropout)

    def __call__(self, x, mask=None, training: bool = False) -> Tensor:
        x = self.attention.check(as_tensor(x))
        self.build_for(x)
        attended = self.attention(self.norm1(x), mask=mask, training=training)
        x = x + self.dropout(attended, training)
        hidden = self.dropout(self.ffn1(self.norm2(x)), training)
        return x + self.dropout(self.ffn2(hidden), training)

    def __repr__(self) -> str:
        return (
            f"TransformerEncoderLayer({self.name}: dim {self.dim}, {self.heads} heads, "
            f"ffn {self.ffn}, dropout {self.dropout.rate})"
        )
