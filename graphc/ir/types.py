"""Tensor types: a static shape and one of five dtypes."""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from math import prod

import numpy as np

from graphc.errors import DTypeError, ShapeError

DTYPES = ("float32", "float64", "int32", "int64", "bool")
FLOATS = ("float32", "float64")
INTS = ("int32", "int64")

SHORT = {"float32": "f32", "float64": "f64", "int32": "i32", "int64": "i64", "bool": "bool"}
LONG = {short: long for long, short in SHORT.items()}
NP_DTYPES = {name: np.dtype(name) for name in DTYPES}  # np.dtype(name) takes ~0.6 µs a call

# No tensor may need more bytes than an x86-64 Linux process can map: 2**47 (128 TiB) of user
# address space (higher addresses only on request, with 5-level paging). A larger shape could
# never be allocated, so it is refused where the type is made, not after a full compile.
MAX_BYTES = 2**47


def canonical_dtype(dtype) -> str:
    """The graphc name of a dtype given as a string, NumPy dtype or Python type."""
    if isinstance(dtype, str) and dtype in LONG:
        return LONG[dtype]
    try:
        name = np.dtype(dtype).name
    except TypeError as error:
        raise DTypeError(f"unknown dtype {dtype!r}; graphc supports {', '.join(DTYPES)}") from error
    if name not in DTYPES:
        raise DTypeError(f"unsupported dtype {name}; graphc supports {', '.join(DTYPES)}")
    return name


def check_shape(shape) -> tuple[int, ...]:
    """`shape` as a tuple of Python ints; ShapeError unless each is a non-negative integer."""
    try:
        dims = tuple(shape)
    except TypeError:
        raise ShapeError(f"a shape must be a tuple of integers, got {shape!r}") from None
    for d in dims:
        if type(d) is int and d >= 0:  # the common case, quickly
            continue
        if isinstance(d, bool) or not isinstance(d, numbers.Integral) or d < 0:
            raise ShapeError(
                f"a shape must be a tuple of non-negative integers, got {shape!r} (dimension {d!r})"
            )
    return tuple(int(d) for d in dims)


@dataclass(frozen=True)
class TensorType:
    """A static shape and a dtype; rank 0 is a scalar."""

    shape: tuple[int, ...]
    dtype: str

    def __post_init__(self):
        object.__setattr__(self, "shape", check_shape(self.shape))
        object.__setattr__(self, "dtype", canonical_dtype(self.dtype))
        if self.nbytes > MAX_BYTES:
            raise ShapeError(
                f"{self} needs {self.nbytes} bytes, more than any process can address (2**47 bytes)"
            )

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return prod(self.shape)

    @property
    def itemsize(self) -> int:
        return NP_DTYPES[self.dtype].itemsize

    @property
    def nbytes(self) -> int:
        return self.size * self.itemsize

    @property
    def np_dtype(self) -> np.dtype:
        return NP_DTYPES[self.dtype]

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOATS

    def with_shape(self, shape) -> TensorType:
        return TensorType(tuple(shape), self.dtype)

    def with_dtype(self, dtype) -> TensorType:
        return TensorType(self.shape, dtype)

    def __str__(self) -> str:
        return f"{SHORT[self.dtype]}[{','.join(map(str, self.shape))}]"
