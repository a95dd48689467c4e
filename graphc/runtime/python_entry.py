"""The native entry of a small step as a Python builtin function (see codegen/python_entry.py).

    entry = NativeEntry.build(signature, step=..., arena=..., fallback=..., ...)
    entry.function(x, y)     # a builtin: the interpreter calls the machine code directly

The entry's machine code depends only on the signature, so it is compiled once per signature
and process (and comes from the object cache after that). What differs per executable lives in
its context, a uint64 array the builtin holds as its `self`: the addresses of CPython's call
functions, of NumPy's PyArray_NewFromDescr, of the ndarray type and dtype objects, of the
compiled step and its arena, of every parameter's Storage, bound array and data (an
object's address is its `id()`: CPython's, which `supported()` requires). The context also
keeps alive everything those addresses point to, and the method definition the builtin is
made from, so the builtin stays valid as long as anyone holds it.

Before any entry is made, `supported()` checks the layout the code assumes against the running
interpreter and NumPy (PyArrayObject field offsets, where a Storage keeps its value, that the
C API table's entry makes arrays as np.empty does); if they differ, executables simply keep
the Python call path.
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
import threading

import numpy as np

from graphc.codegen.python_entry import (
    ARRAY_FIELDS,
    CTX_ARENA,
    CTX_DECREF,
    CTX_FALLBACK,
    CTX_INCREF,
    CTX_LIST_NEW,
    CTX_LIST_SET_ITEM,
    CTX_NDARRAY,
    CTX_NEW_ARRAY,
    CTX_STEP,
    CTX_VECTORCALL,
    ENTRY,
    Signature,
    emit_python_entry,
)
from graphc.ir.graph import Storage
from graphc.runtime import jit

METH_FASTCALL_KEYWORDS = 0x0080 | 0x0002  # METH_FASTCALL | METH_KEYWORDS


class _MethodDef(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_char_p),
        ("method", ctypes.c_void_p),
        ("flags", ctypes.c_int),
        ("doc", ctypes.c_char_p),
    ]


_new_builtin = ctypes.PYFUNCTYPE(
    ctypes.py_object, ctypes.c_void_p, ctypes.py_object, ctypes.c_void_p
)(("PyCFunction_NewEx", ctypes.pythonapi))
_capsule_pointer = ctypes.PYFUNCTYPE(ctypes.c_void_p, ctypes.py_object, ctypes.c_char_p)(
    ("PyCapsule_GetPointer", ctypes.pythonapi)
)
NEW_FROM_DESCR = 94  # PyArray_NewFromDescr's index in NumPy's C API table (numpy 1.7 to 2.x)
_ENGINES: dict[Signature, jit.Engine] = {}
_LOCK = threading.Lock()


def _fresh_lock_in_child() -> None:
    """A child forked while another thread built an entry would find _LOCK held forever."""
    global _LOCK
    _LOCK = threading.Lock()


os.register_at_fork(after_in_child=_fresh_lock_in_child)


class _Context(bytearray):
    """The context's memory; its attribute `keep` holds what the context's addresses name."""


def _api(name: str) -> int:
    return ctypes.cast(getattr(ctypes.pythonapi, name), ctypes.c_void_p).value


def _words(obj, count: int) -> list[int]:
    """`count` 64-bit words of `obj`'s memory, from its address (its id() in CPython)."""
    return list((ctypes.c_uint64 * count).from_address(id(obj)))


@functools.cache
def storage_value_offset() -> int | None:
    """The byte offset of `value` in a Storage object (a __slots__ member), found by looking."""
    probe, marker = Storage(None), object()
    probe.value = marker
    words = _words(probe, sys.getsizeof(probe) // 8)
    offsets = [8 * i for i, word in enumerate(words) if word == id(marker)]
    return offsets[0] if len(offsets) == 1 else None


@functools.cache
def new_from_descr() -> int | None:
    """The address of NumPy's PyArray_NewFromDescr, from the C API table extensions import."""
    core = getattr(np, "_core", None) or np.core
    try:
        table = _capsule_pointer(core._multiarray_umath._ARRAY_API, None)
    except (AttributeError, ValueError):
        return None
    return ctypes.c_void_p.from_address(table + 8 * NEW_FROM_DESCR).value


def _makes_arrays(address: int) -> bool:
    """Whether the function at `address` makes a (2, 3) float32 array as np.empty would."""
    new = ctypes.PYFUNCTYPE(
        ctypes.py_object, ctypes.py_object, ctypes.py_object, ctypes.c_int,
        ctypes.POINTER(ctypes.c_int64), ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
        ctypes.c_void_p,
    )(address)  # fmt: skip
    dtype = np.dtype(np.float32)
    ctypes.pythonapi.Py_IncRef(ctypes.py_object(dtype))  # the call steals one reference
    array = new(np.ndarray, dtype, 2, (ctypes.c_int64 * 2)(2, 3), None, None, 0, None)
    return (
        type(array) is np.ndarray
        and array.shape == (2, 3)
        and array.dtype is dtype
        and array.flags.c_contiguous
        and array.flags.writeable
        and array.flags.owndata
    )


@functools.cache
def supported() -> bool:
    """Whether this interpreter and NumPy lay objects out as the entry's code assumes."""
    if sys.implementation.name != "cpython" or storage_value_offset() is None:
        return False
    if new_from_descr() is None or not _makes_arrays(new_from_descr()):
        return False
    array = np.arange(6, dtype=np.float32).reshape(2, 3)[::1]
    words = _words(array, ARRAY_FIELDS["flags"] // 8 + 1)
    field = {name: words[offset // 8] for name, offset in ARRAY_FIELDS.items()}
    dims = list((ctypes.c_int64 * 2).from_address(field["dimensions"]))
    return (
        field["type"] == id(np.ndarray)
        and field["data"] == array.ctypes.data
        and field["nd"] & 0xFFFFFFFF == 2
        and dims == [2, 3]
        and field["descr"] == id(array.dtype)
        and field["flags"] & 0xFFFFFFFF == array.flags.num
    )


def _engine(signature: Signature) -> jit.Engine:
    with _LOCK:
        engine = _ENGINES.get(signature)
        if engine is None:
            module = emit_python_entry(signature)
            engine = jit.compile_ir(str(module), required_symbols=[ENTRY])
            _ENGINES[signature] = engine
        return engine


class NativeEntry:
    """A step's native entry: `function` is the builtin to call; `bind` follows parameters."""

    def __init__(
        self,
        signature: Signature,
        *,
        step: int,
        arena: np.ndarray,
        fallback,
        input_dtypes,
        outputs,
        storages,
        bound,
        keep=(),
    ):
        """`step` is the address of `<name>_call`; `fallback(*args, **kwargs)` the Python
        path; `outputs` the dtype per output (their shapes are the signature's); `storages`
        and `bound` (the arrays the step currently reads) per parameter; `keep` whatever else
        must outlive the entry (the engine holding `step`)."""
        engine = _engine(signature)
        output_dtypes = [np.dtype(d) for d in outputs]
        dtypes = [np.dtype(d) for d in input_dtypes]
        memory = _Context(8 * signature.ctx_size())
        self._signature = signature
        self.engine = engine  # the entry's machine code (pickled with an executable)
        self._ctx = np.frombuffer(memory, dtype=np.uint64)
        self._ctx[CTX_NDARRAY] = id(np.ndarray)
        self._ctx[CTX_VECTORCALL] = _api("PyObject_Vectorcall")
        self._ctx[CTX_NEW_ARRAY] = new_from_descr()
        self._ctx[CTX_INCREF] = _api("Py_IncRef")
        self._ctx[CTX_LIST_NEW] = _api("PyList_New")
        self._ctx[CTX_LIST_SET_ITEM] = _api("PyList_SetItem")
        self._ctx[CTX_DECREF] = _api("Py_DecRef")
        self._ctx[CTX_FALLBACK] = id(fallback)
        self._ctx[CTX_STEP] = step
        self._ctx[CTX_ARENA] = arena.ctypes.data
        for i, dtype in enumerate(dtypes):
            self._ctx[signature.input_slot(i)] = id(dtype)
        for j, dtype in enumerate(output_dtypes):
            self._ctx[signature.output_slot(j)] = id(dtype)
        self._bound = list(bound)
        for p, (storage, array) in enumerate(zip(storages, bound)):
            self._ctx[signature.param_slots(p)[0]] = id(storage)
            self.bind(p, array)
        method = _MethodDef(b"step", engine.address(ENTRY), METH_FASTCALL_KEYWORDS, None)
        memory.keep = (engine, method, fallback, output_dtypes, dtypes, arena, storages,
                       self._bound, keep)  # fmt: skip
        self.function = _new_builtin(ctypes.addressof(method), self._ctx, None)

    def bind(self, p: int, array: np.ndarray) -> None:
        """Parameter p's storage now holds `array` (C-contiguous, of its exact type)."""
        self._bound[p] = array
        _, bound, data = self._signature.param_slots(p)
        # one assignment: the GIL makes it atomic for the entry, which reads both slots
        self._ctx[[data, bound]] = (array.ctypes.data, id(array))
