"""Generated matmul kernels against numpy: dtypes, edge shapes, strides, batches, accumulate.

Every kernel family is checked on this host: the tiles for AVX2 (x86-64-v3, 16 registers of
32 bytes) and for AVX-512 (x86-64-v4, 32 registers of 64 bytes) are both emitted and run
here; on a host without AVX-512, LLVM splits the 64-byte vectors in two, so the AVX-512
family's tiling, remainders and packing are checked even where it cannot run natively.
"""

from __future__ import annotations

import ctypes
import re

import llvmlite.binding as llvm
import numpy as np
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st
from llvmlite import ir

from graphc.codegen import target
from graphc.codegen.matmul import Operand, Tiling, define_matmul, takes_row_count
from graphc.errors import DTypeError, ShapeError

llvm.initialize_native_target()
llvm.initialize_native_asmprinter()

RTOL = {"float32": 1e-5, "float64": 1e-12, "int32": 0, "int64": 0}


# The kernel families: the JIT's own (the host, or $GRAPHC_CPU), AVX2's and AVX-512's.
FAMILIES = ["jit", "x86-64-v3", "x86-64-v4"]


def _family(name: str) -> target.Target:
    return target.host() if name == "jit" else target.for_cpu(name)


def _machine(cpu: target.Target | None = None) -> llvm.TargetMachine:
    """The JIT's target machine (what runs the kernels here), or `cpu`'s."""
    return (cpu or target.host()).machine(opt=3)


def _optimized(module: ir.Module, machine: llvm.TargetMachine | None = None) -> llvm.ModuleRef:
    parsed = llvm.parse_assembly(str(module))
    parsed.verify()
    machine = machine or _machine()
    passes = llvm.create_pass_builder(machine, llvm.create_pipeline_tuning_options(speed_level=3))
    passes.getModulePassManager().run(parsed, passes)
    return parsed


class _Jit:
    """Compiles one module; `function(name)` is a ctypes callable (c, a, b) on addresses."""

    def __init__(self, module: ir.Module):
        self.engine = llvm.create_mcjit_compiler(_optimized(module), _machine())
        self.engine.finalize_object()

    def function(self, name: str):
        pointer = ctypes.c_void_p
        kind = ctypes.CFUNCTYPE(None, pointer, pointer, pointer)
        function = kind(self.engine.get_function_address(name))
        function.engine = self  # the machine code lives as long as its engine
        return function


def _new_module() -> ir.Module:
    module = ir.Module("test_matmul")
    module.triple = llvm.get_process_triple()
    return module


def _operand(rng, shape, dtype, *, transposed, broadcast, offset):
    """A random logical array of `shape` stored (transposed / broadcast / offset) in a flat buffer.

    Returns (logical view for the reference, flat buffer, Operand addressing it).
    """
    stored_shape = tuple(
        1 if flag else size for size, flag in zip(shape[:-2], broadcast, strict=True)
    )
    rows, cols = shape[-2:]
    memory_shape = stored_shape + ((cols, rows) if transposed else (rows, cols))
    if dtype.startswith("int"):
        memory = rng.integers(-9, 10, memory_shape).astype(dtype)
    else:
        memory = rng.standard_normal(memory_shape).astype(dtype)
    flat = np.concatenate([np.full(offset, 77, dtype), memory.ravel()])
    view = memory.swapaxes(-1, -2) if transposed else memory
    view = np.broadcast_to(view, shape)
    strides = tuple(s // memory.itemsize for s in view.strides)
    return view, flat, Operand(strides, offset)


def _case(rng, dtype, m, n, k, *, batch=(), ta=False, tb=False, tc=False, accumulate=False):
    """Random operands for one matmul plus what C must hold afterwards."""
    bcast = tuple(bool(rng.integers(2)) for _ in batch)
    offsets = [int(rng.integers(0, 4)) for _ in range(3)]
    a, a_flat, a_op = _operand(
        rng, (*batch, m, k), dtype, transposed=ta, broadcast=bcast, offset=offsets[0]
    )
    b_bcast = tuple(not flag if rng.integers(2) else flag for flag in bcast)
    b, b_flat, b_op = _operand(
        rng, (*batch, k, n), dtype, transposed=tb, broadcast=b_bcast, offset=offsets[1]
    )
    no_bcast = (False,) * len(batch)
    c0, c_flat, c_op = _operand(
        rng, (*batch, m, n), dtype, transposed=tc, broadcast=no_bcast, offset=offsets[2]
    )
    wide = np.float64 if dtype.startswith("float") else np.int64
    product = np.matmul(a.astype(wide), b.astype(wide))
    expected = (c0.astype(wide) + product if accumulate else product).astype(dtype)
    scale = np.matmul(np.abs(a).astype(wide), np.abs(b).astype(wide))
    scale = scale + (np.abs(c0) if accumulate else 0)
    spec = dict(m=m, n=n, k=k, dtype=dtype, a=a_op, b=b_op, c=c_op, batch=batch)
    return spec | {"accumulate": accumulate}, (c_flat, a_flat, b_flat), expected, scale


def _result(c_flat, c_op: Operand, shape) -> np.ndarray:
    itemsize = c_flat.itemsize
    strides = tuple(s * itemsize for s in c_op.strides)
    return np.lib.stride_tricks.as_strided(c_flat[c_op.offset :], shape, strides)


def _check(function, spec, buffers, expected, scale) -> None:
    c_flat, a_flat, b_flat = buffers
    before = c_flat[: spec["c"].offset].copy()
    function(c_flat.ctypes.data, a_flat.ctypes.data, b_flat.ctypes.data)
    shape = (*spec["batch"], spec["m"], spec["n"])
    got = _result(c_flat, spec["c"], shape)
    rtol = RTOL[spec["dtype"]]
    if rtol == 0:
        np.testing.assert_array_equal(got, expected, err_msg=str(spec))
    else:
        bound = rtol * (scale + np.abs(scale).max() * 1e-3 + 1e-30)
        bad = np.abs(got.astype(np.float64) - expected.astype(np.float64)) > bound
        assert not bad.any(), f"{spec}: {int(bad.sum())} elements off"
    np.testing.assert_array_equal(c_flat[: spec["c"].offset], before)  # nothing before C


EDGE_SIZES = [1, 2, 3, 5, 7, 8, 9, 13, 16, 17, 24, 31, 33, 40]


def _seeded_cases(dtype: str, count: int, seed: int):
    rng = np.random.default_rng(seed)
    shapes = [(1, 1, 1), (1, 17, 5), (9, 1, 4), (7, 3, 1), (64, 64, 64), (33, 5, 3)]
    if dtype.startswith("float"):
        # Shapes that cross every cache block (KC, MC, NC) with remainders, and packing.
        shapes += [(150, 300, 270), (75, 130, 260), (3, 700, 40), (70, 40, 1100), (30, 520, 40)]
    while len(shapes) < count:
        shapes.append(tuple(int(rng.choice(EDGE_SIZES)) for _ in range(3)))
    for index, (m, n, k) in enumerate(shapes):
        batch = (
            () if index % 3 else tuple(int(x) for x in rng.integers(1, 4, int(rng.integers(1, 3))))
        )
        flags = dict(
            ta=bool(rng.integers(2)),
            tb=bool(rng.integers(2)),
            tc=index % 7 == 3,
            accumulate=index % 4 == 1,
        )
        if m * n * k > 1e6:
            batch = ()
        yield _case(rng, dtype, m, n, k, batch=batch, **flags)


def _check_all(cases, family: str = "jit") -> None:
    """Compile every case into one module (one JIT) and check each against NumPy."""
    module = _new_module()
    for index, (spec, *_rest) in enumerate(cases):
        define_matmul(module, f"case{index}", **spec, cpu=_family(family))
    jit = _Jit(module)
    for index, (spec, buffers, expected, scale) in enumerate(cases):
        _check(jit.function(f"case{index}"), spec, buffers, expected, scale)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64"])
def test_seeded_shapes_match_numpy(dtype, family):
    count = 36 if dtype.startswith("float") else 24
    cases = list(_seeded_cases(dtype, count, seed=list(RTOL).index(dtype)))
    _check_all(cases, family)


# Matrix-vector (dot path, transposed problem), few rows (wide tiles), and an odd blocked shape.
TRANSPOSE_SHAPES = [(37, 1, 45), (3, 2, 17), (200, 1, 70), (1, 37, 45), (3, 50, 9), (37, 45, 29)]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("transposes", [(False, False), (True, False), (False, True), (True, True)])
def test_every_transpose_of_special_shapes(dtype, transposes, family):
    rng = np.random.default_rng(1)
    cases = [
        _case(rng, dtype, *shape, ta=transposes[0], tb=transposes[1], accumulate=index % 2 == 1)
        for index, shape in enumerate(TRANSPOSE_SHAPES)
    ]
    _check_all(cases, family)


@settings(max_examples=25, deadline=None)
@given(
    dtype=st.sampled_from(["float32", "float64", "int32", "int64"]),
    m=st.integers(1, 20),
    n=st.integers(1, 40),
    k=st.integers(0, 20),
    batch=st.lists(st.integers(1, 3), max_size=2).map(tuple),
    flags=st.tuples(st.booleans(), st.booleans(), st.booleans(), st.booleans()),
    seed=st.integers(0, 2**16),
    family=st.sampled_from(FAMILIES),
)
def test_random_shapes_match_numpy(dtype, m, n, k, batch, flags, seed, family):
    ta, tb, tc, accumulate = flags
    rng = np.random.default_rng(seed)
    spec, buffers, expected, scale = _case(
        rng, dtype, m, n, k, batch=batch, ta=ta, tb=tb, tc=tc, accumulate=accumulate
    )
    module = _new_module()
    define_matmul(module, "matmul", **spec, cpu=_family(family))
    _check(_Jit(module).function("matmul"), spec, buffers, expected, scale)


@pytest.mark.parametrize("pack", [(False, False), (False, True), (True, True)])
def test_explicit_tiling_with_tiny_blocks(pack):
    """Forced small KC/MC/NC and packing so every blocking path runs on a small shape."""
    rng = np.random.default_rng(3)
    spec, buffers, expected, scale = _case(rng, "float64", 23, 21, 19, ta=True, accumulate=True)
    tiling = Tiling(mr=3, nr=8, lanes=4, kc=5, mc=6, nc=16, pack_a=pack[0], pack_b=pack[1])
    module = _new_module()
    define_matmul(module, "matmul", **spec, tiling=tiling)
    _check(_Jit(module).function("matmul"), spec, buffers, expected, scale)


def _check_row_counts(spec, buffers, expected, scale, rows, tiling=None, family="jit") -> None:
    module = _new_module()
    define_matmul(module, "matmul", **spec, tiling=tiling, rows=rows, cpu=_family(family))
    jit = _Jit(module)
    kind = ctypes.CFUNCTYPE(None, *[ctypes.c_void_p] * 3, ctypes.c_int64)
    function = kind(jit.engine.get_function_address("matmul"))
    m, n = spec["m"], spec["n"]
    for count in rows:
        c_flat, a_flat, b_flat = (buffer.copy() for buffer in buffers)
        c_before = _result(c_flat, spec["c"], (m, n)).copy()
        function(c_flat.ctypes.data, a_flat.ctypes.data, b_flat.ctypes.data, count)
        got = _result(c_flat, spec["c"], (m, n))
        bound = RTOL[spec["dtype"]] * (scale[:count] + np.abs(scale).max() * 1e-3 + 1e-30)
        assert np.all(np.abs(got[:count] - expected[:count]) <= bound), (count, spec)
        np.testing.assert_array_equal(got[count:], c_before[count:])


ROW_COUNT_CASES = [  # (dtype, row counts, n, k, transposed A, accumulate, tiling)
    ("float32", (54, 46), 100, 300, False, False, None),  # W5's chunks: one block, 4-row tail
    ("float64", (300, 290, 7), 40, 33, True, True, None),  # several MC blocks, each remainder
    ("float32", (132, 124), 256, 256, False, False, None),  # W4 n = 256 on two threads
    ("float64", (23, 20, 4, 1), 21, 19, True, True, Tiling(3, 8, 4, 5, 6, 16, True, True)),
    ("float64", (23, 17), 21, 19, False, False, Tiling(3, 8, 4, 5, 6, 16, False, True)),
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype, rows, n, k, ta, accumulate, tiling", ROW_COUNT_CASES)
def test_row_count_at_run_time(dtype, rows, n, k, ta, accumulate, tiling, family):
    """One function for several row counts (a split product's chunks): each count computes
    exactly its rows of C, and the rows below stay untouched."""
    rng = np.random.default_rng(len(rows))
    spec, buffers, expected, scale = _case(
        rng, dtype, max(rows), n, k, ta=ta, accumulate=accumulate
    )
    _check_row_counts(spec, buffers, expected, scale, rows, tiling, family)


@settings(max_examples=25, deadline=None)
@given(
    dtype=st.sampled_from(["float32", "float64"]),
    m=st.integers(1, 40),
    n=st.integers(8, 40),
    k=st.integers(1, 20),
    fewer=st.lists(st.integers(1, 40), min_size=1, max_size=3),
    flags=st.tuples(st.booleans(), st.booleans(), st.booleans(), st.booleans()),
    seed=st.integers(0, 2**16),
)
# one row times a transposed B with an explicit tiling: blocked, so it takes a row count
@example(dtype="float32", m=1, n=8, k=8, fewer=[1], flags=(False, True, False, True), seed=0)
def test_random_row_counts_match_numpy(dtype, m, n, k, fewer, flags, seed):
    ta, tb, accumulate, tiny = flags
    rng = np.random.default_rng(seed)
    spec, buffers, expected, scale = _case(rng, dtype, m, n, k, ta=ta, tb=tb, accumulate=accumulate)
    rows = tuple(sorted({m, *(min(r, m) for r in fewer)}))
    lanes = 32 // np.dtype(dtype).itemsize
    tiling = Tiling(3, 2 * lanes, lanes, 5, 6, 4 * lanes, True, True) if tiny else None
    # one or two rows times a transposed B are dot products, never split into chunks of rows
    assume(tiny or takes_row_count(m, n, k, dtype, spec["a"], spec["b"]))
    _check_row_counts(spec, buffers, expected, scale, rows, tiling)


def test_row_count_only_where_supported():
    two_d = Operand((4, 1))
    assert takes_row_count(8, 16, 8, "float32", two_d, two_d)
    assert not takes_row_count(8, 16, 8, "int32", two_d, two_d)  # the plain loop nest
    assert not takes_row_count(8, 16, 8, "float32", two_d, two_d, batch=(2,))
    assert not takes_row_count(8, 2, 8, "float32", two_d, Operand((1, 8)))  # dot products
    assert not takes_row_count(8, 3, 8, "float32", two_d, two_d)  # computed transposed
    module = _new_module()
    with pytest.raises(ShapeError, match="rows"):
        define_matmul(module, "x", m=8, n=3, k=8, dtype="float32", a=two_d, b=two_d, c=two_d,
                      rows=(8, 5))  # fmt: skip
    with pytest.raises(ShapeError, match="rows"):
        define_matmul(module, "y", m=8, n=16, k=8, dtype="float32", a=two_d, b=two_d,
                      c=two_d, rows=(6, 5))  # fmt: skip


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("m, width", [(5, 3), (5, 8), (6, 13), (6, 14), (2, 28), (16, 10)])
@pytest.mark.parametrize("accumulate, padded", [(False, False), (True, False), (False, True)])
def test_window_view_columns_match_numpy(family, dtype, m, width, accumulate, padded):
    """B read through a stride-1 window view, as a convolution reads its input: rows
    (c, kh, kw) and columns (oh, ow) are axes of pairs. With few rows of A, each output row
    is a product of its own whose B rows are contiguous (a partial vector: a masked load);
    with many (16), the product is computed transposed. Both against NumPy. Where the input
    is zero-padded above and below (a convolution's input gradient) and the buffer says so,
    an output row near the border multiplies only the taps that reach into the data."""
    from graphc.codegen.matmul import _columns_as_batch, _row_bands

    rng = np.random.default_rng(width * 7 + m)
    channels, kernel, height = 3, 3, 4
    pitch = width + kernel - 1
    x = rng.normal(size=(channels, height + kernel - 1, pitch)).astype(dtype)
    zeros = ()
    if padded:  # kernel - 1 zero rows above and below: rows [2, 4) hold data
        x[:, : kernel - 1] = x[:, height:] = 0
        zeros = ((pitch, height + kernel - 1, kernel - 1, height),)
    windows = np.lib.stride_tricks.sliding_window_view(x, (kernel, kernel), axis=(1, 2))
    k, n = channels * kernel * kernel, height * width
    b_matrix = windows.transpose(0, 3, 4, 1, 2).reshape(k, n)
    a = rng.normal(size=(m, k)).astype(dtype)
    c = rng.normal(size=(m, n)).astype(dtype)
    rows = ((channels, x.shape[1] * pitch), (kernel, pitch), (kernel, 1))
    columns = ((height, pitch), (width, 1))
    a_op, b_op, c_op = Operand((k, 1)), Operand((rows, columns), 0, zeros), Operand((n, 1))
    cpu = _family(family)
    split = _columns_as_batch(m, dtype, a_op, b_op, c_op, cpu)
    if split is not None and padded:
        outer, n_split, a_split, b_split, _ = split
        assert _row_bands(outer, n_split, a_split, b_split) is not None
    if (m, width) in ((6, 14), (2, 28)):  # a few output channels, long output rows
        assert split is not None
    if m == 16:  # 16 lanes filled: the transposed product, as before
        assert split is None
    module = _new_module()
    define_matmul(module, "f", m=m, n=n, k=k, dtype=dtype, a=a_op, b=b_op, c=c_op,
                  accumulate=accumulate, cpu=cpu)  # fmt: skip
    expected = a.astype(np.float64) @ b_matrix.astype(np.float64) + (c if accumulate else 0)
    _Jit(module).function("f")(c.ctypes.data, a.ctypes.data, x.ctypes.data)
    np.testing.assert_allclose(c, expected, rtol=RTOL[dtype] * 10, atol=RTOL[dtype] * 10)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("m, width", [(2, 9), (6, 13), (6, 28), (4, 16), (16, 10)])
@pytest.mark.parametrize("accumulate", [False, True])
def test_weight_gradient_runs_match_numpy(family, dtype, m, width, accumulate):
    """A convolution's weight gradient: A = the output gradient (m channels x (samples, oh,
    ow)), B = the input's windows (k = (samples, oh, ow) rows, taps (kh, kw) gathered as
    columns). Where the output rows fill the vector lanes better than m would, the product
    runs as dot products along k, a vector per run of an output row (the last one masked)."""
    from graphc.codegen.matmul import _k_runs

    rng = np.random.default_rng(width * 5 + m)
    samples, height, kernel = 3, 4, 3
    pitch = width + kernel - 1
    x = rng.normal(size=(samples, height + kernel - 1, pitch)).astype(dtype)
    g = rng.normal(size=(m, samples, height, width)).astype(dtype)
    windows = np.lib.stride_tricks.sliding_window_view(x, (kernel, kernel), axis=(1, 2))
    b_matrix = windows.reshape(samples * height * width, kernel * kernel)
    k, n = samples * height * width, kernel * kernel
    c = rng.normal(size=(m, n)).astype(dtype)
    rows = ((samples, x.shape[1] * pitch), (height, pitch), (width, 1))
    a_op, b_op = Operand((k, 1)), Operand((rows, ((kernel, pitch), (kernel, 1))))
    c_op = Operand((n, 1))
    cpu = _family(family)
    runs = _k_runs(m, dtype, a_op, b_op, cpu)
    lanes = cpu.lanes(np.dtype(dtype).itemsize)
    if m == 16:  # as many channels as lanes: the transposed product, as before
        assert runs is None
    if (m, width) == (6, 28) and lanes == 8:  # LeNet's first weight gradient on AVX2
        assert runs is not None
    module = _new_module()
    define_matmul(module, "f", m=m, n=n, k=k, dtype=dtype, a=a_op, b=b_op, c=c_op,
                  accumulate=accumulate, cpu=cpu)  # fmt: skip
    expected = g.reshape(m, k).astype(np.float64) @ b_matrix + (c if accumulate else 0)
    _Jit(module).function("f")(c.ctypes.data, g.ctypes.data, x.ctypes.data)
    np.testing.assert_allclose(c, expected, rtol=RTOL[dtype] * 10, atol=RTOL[dtype] * 100)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("m, n, k", [(1, 120, 400), (2, 84, 120), (1, 10, 84), (1, 3, 37)])
def test_a_row_times_a_transposed_weight_is_dot_products(family, dtype, m, n, k):
    """x @ W^T with one or two rows of x (an exported Linear at batch 1): W's rows and x's
    are both contiguous along k, so C^T = W x^T runs as dot products with vectors along k
    (not as a blocked product reading W one element at a time); against NumPy."""
    from graphc.codegen.tiling import choose_path

    rng = np.random.default_rng(m * n + k)
    x = rng.normal(size=(m, k)).astype(dtype)
    w = rng.normal(size=(n, k)).astype(dtype)
    c = np.zeros((m, n), dtype)
    a_op, b_op, c_op = Operand((k, 1)), Operand((1, k)), Operand((n, 1))
    cpu = _family(family)
    assert choose_path(m, n, k, dtype, a_op, b_op, None, cpu) == "dot transposed"
    module = _new_module()
    define_matmul(module, "f", m=m, n=n, k=k, dtype=dtype, a=a_op, b=b_op, c=c_op, cpu=cpu)
    _Jit(module).function("f")(c.ctypes.data, x.ctypes.data, w.ctypes.data)
    np.testing.assert_allclose(c, x.astype(np.float64) @ w.T, rtol=RTOL[dtype] * 10,
                               atol=RTOL[dtype] * 10 * np.sqrt(k))  # fmt: skip


def test_packing_choices():
    """A is packed when far apart in either direction and reused; B when scattered, or
    larger than L1 and reused by at least PACK_B_ROWS rows."""
    from graphc.codegen.matmul import choose_tiling
    from graphc.codegen.tiling import PACK_B_ROWS

    def packs(n, dtype, a_strides, b_strides, m=None):
        t = choose_tiling(m or n, n, n, dtype, a_strides, b_strides)
        return t.pack_a, t.pack_b

    assert packs(256, "float64", (256, 1), (256, 1)) == (False, True)  # 2 KiB rows of B
    assert packs(256, "float64", (1, 256), (256, 1)) == (True, True)  # x^T: k steps of 2 KiB
    assert packs(256, "float32", (1, 256), (256, 1)) == (False, True)  # 1 KiB, many rows
    few = PACK_B_ROWS - 1
    assert packs(256, "float32", (256, 1), (256, 1), m=few) == (False, False)  # in place
    assert packs(64, "float32", (64, 1), (64, 1)) == (False, False)  # B fits in L1
    assert packs(512, "float32", (1, 512), (1, 512)) == (True, True)  # B^T: a gather
    assert packs(1024, "float32", (1024, 1), (1024, 1)) == (True, True)  # 4 KiB rows of A


REGISTER_CLASS = {16: "xmm", 32: "ymm", 64: "zmm"}


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_kernel_fmas_at_the_targets_vector_width(family, dtype):
    """The micro-kernel's FMAs use the target's widest vectors (ymm on AVX2, zmm with
    AVX-512, also where the target prefers 256-bit loops), and its tile keeps every
    accumulator in a register: no stack reload feeds an FMA."""
    cpu = _family(family)
    module = _new_module()
    row_major = Operand((64, 1))
    define_matmul(
        module, "matmul", m=64, n=64, k=64, dtype=dtype, a=row_major, b=row_major, c=row_major,
        cpu=cpu,
    )  # fmt: skip
    machine = _machine(cpu)
    assembly = machine.emit_assembly(_optimized(module, machine))
    register = REGISTER_CLASS[cpu.vector_bytes]
    fmas = re.findall(r"vfmadd\w+\s+([^\n]*)", assembly)
    assert fmas and all(f"%{register}" in operands for operands in fmas), fmas[:4]
    assert not any("(%rsp)" in operands for operands in fmas), "an accumulator was spilled"


def test_tiles_follow_the_registers():
    """16 registers: 6 x 2 vectors (12 accumulators); 32 registers: 14 x 2 (28); a C one
    vector wide takes registers - 6 rows; every tile leaves room for B and a broadcast."""
    from graphc.codegen.matmul import choose_tiling

    for name, rows in (("x86-64-v3", 6), ("x86-64-v4", 14)):
        cpu = target.for_cpu(name)
        for dtype, itemsize in (("float32", 4), ("float64", 8)):
            lanes = cpu.vector_bytes // itemsize
            wide = choose_tiling(256, 256, 256, dtype, (256, 1), (256, 1), cpu)
            assert (wide.mr, wide.nr, wide.lanes) == (rows, 2 * lanes, lanes)
            narrow = choose_tiling(256, lanes, 256, dtype, (256, 1), (lanes, 1), cpu)
            assert (narrow.mr, narrow.nr) == (cpu.registers - 6, lanes)
            for m in range(1, rows):
                few = choose_tiling(m, 256, 256, dtype, (256, 1), (256, 1), cpu)
                accumulators = few.mr * few.nr // lanes
                assert accumulators + few.nr // lanes + 1 <= cpu.registers


def test_bad_arguments_raise():
    module = _new_module()
    two_d = Operand((4, 1))
    with pytest.raises(ShapeError):
        define_matmul(module, "x", m=4, n=4, k=4, dtype="float32", a=two_d, b=two_d, c=two_d,
                      batch=(2,))  # fmt: skip
    with pytest.raises(DTypeError):
        define_matmul(module, "y", m=4, n=4, k=4, dtype="float16", a=two_d, b=two_d, c=two_d)
