"""Explicit random keys and weight initializers (`gc.random`).

A `Key` is a tiny, immutable handle on a NumPy `SeedSequence`: `key.split(n)` derives `n`
independent child keys from the key's entropy and its path in the split tree, so the same
seed always gives the same children, however often and in whatever order keys are split.
Initializers draw in float64 and round to the requested dtype, so a float32 and a float64
model built from one key hold the same weights up to rounding.

    key = gc.random.Key(0)
    k_w, k_b = key.split(2)
    w = gc.random.kaiming_uniform(k_w, (5, 32), fan_in=5)
"""

from __future__ import annotations

import math

import numpy as np

from graphc.errors import DTypeError, GraphcError
from graphc.ir.types import FLOATS, canonical_dtype


class Key:
    """A deterministic random key: `Key(seed)`, `key.split(n)`, `key.generator()`."""

    def __init__(self, seed: int | None = None, *, _path: tuple[int, ...] = ()):
        # seed None draws fresh entropy from the OS once; the key is deterministic afterwards
        sequence = np.random.SeedSequence(seed)
        self.entropy = sequence.entropy
        self.path = _path

    def split(self, n: int = 2) -> tuple[Key, ...]:
        """`n` independent child keys (pure: splitting twice gives the same children)."""
        if n < 1:
            raise GraphcError(f"Key.split needs n >= 1, got {n}")
        return tuple(Key(self.entropy, _path=self.path + (i,)) for i in range(n))

    def generator(self) -> np.random.Generator:
        """A fresh NumPy Generator seeded by this key (the same stream on every call)."""
        return np.random.default_rng(np.random.SeedSequence(self.entropy, spawn_key=self.path))

    def __eq__(self, other) -> bool:
        return isinstance(other, Key) and (self.entropy, self.path) == (other.entropy, other.path)

    def __hash__(self) -> int:
        return hash((self.entropy, self.path))

    def __repr__(self) -> str:
        return f"Key({self.entropy}, path={self.path})"


def as_key(seed_or_key) -> Key:
    """A Key from a Key, an integer seed, or None (fresh OS entropy)."""
    if isinstance(seed_or_key, Key):
        return seed_or_key
    if seed_or_key is None or isinstance(seed_or_key, (int, np.integer)):
        return Key(None if seed_or_key is None else int(seed_or_key))
    raise GraphcError(f"expected a gc.random.Key or an integer seed, got {seed_or_key!r}")


def uniform(key, shape, low: float, high: float, dtype="float32") -> np.ndarray:
    """U(low, high) samples of `shape`, drawn in float64 and rounded to `dtype`."""
    dtype = canonical_dtype(dtype)
    if dtype not in FLOATS:
        raise DTypeError(f"random initializers need a float dtype, got {dtype}")
    samples = as_key(key).generator().uniform(low, high, size=tuple(shape))
    return samples.astype(dtype)


def kaiming_uniform(
    key, shape, fan_in: int, dtype="float32", a: float = math.sqrt(5)
) -> np.ndarray:
    """He/Kaiming uniform with leaky-relu slope `a`: bound = sqrt(6 / ((1 + a²) fan_in)).

    The default a = sqrt(5) is PyTorch's nn.Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)),
    which is also the bound PyTorch uses for the bias.
    """
    if fan_in < 1:
        raise GraphcError(f"kaiming_uniform needs fan_in >= 1, got {fan_in}")
    bound = math.sqrt(6.0 / ((1.0 + a * a) * fan_in))
    return uniform(key, shape, -bound, bound, dtype)


def glorot_uniform(key, shape, fan_in: int, fan_out: int, dtype="float32") -> np.ndarray:
    """Glorot/Xavier uniform: U(-b, b) with b = sqrt(6 / (fan_in + fan_out))."""
    if fan_in + fan_out < 1:
        raise GraphcError(f"glorot_uniform needs fan_in + fan_out >= 1, got {fan_in + fan_out}")
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    return uniform(key, shape, -bound, bound, dtype)


def zeros(shape, dtype="float32") -> np.ndarray:
    """An array of zeros of `shape` and `dtype` (a bias or state initializer)."""
    return np.zeros(tuple(shape), canonical_dtype(dtype))
