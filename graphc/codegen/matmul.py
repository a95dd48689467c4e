# Over 500 lines on purpose: loops, packing and micro-kernels share one `_Emitter` and its
# state; what to emit (path, tile, packing) is chosen in codegen/tiling.py.
"""Matmul kernels generated for static shapes: register tiles, packing, cache blocking.

`define_matmul` emits one LLVM function for one (batch, m, n, k, dtype, strides) contraction.
Every shape is a compile-time constant, so the loop nest, the remainder tiles and the packing
decisions are fixed in Python and no runtime shape check exists in the emitted code. The one
exception is the row count of a split product's chunks (`rows=`): there m is a run-time
argument, one of a few known values, and each remainder tile they need is emitted once.
Which path, tile, blocking and packing a product gets is chosen in codegen/tiling.py.

Float kernels follow the BLIS/GotoBLAS structure::

    for jc in n step NC:                      # B block kc x nc stays in L2/L3
      for pc in k step KC:
        pack B[pc:+kc, jc:+nc] -> Bp          # panels of NR columns, zero padded
        for ic in m step MC:
          pack A[ic:+mc, pc:+kc] -> Ap        # panels of MR rows (large shapes only)
          for jr in nc step NR:               # one B micro-panel stays in L1
            for ir in mc step MR:
              micro-kernel: C[ir:+MR, jr:+NR] (=|+=) Ap[ir] @ Bp[jr]

    micro-kernel, AVX2 f32 (MR = 6, NR = 16 = two ymm vectors; f64: NR = 8):
                 Bp row kk:  [b0 .. b7][b8 .. b15]        two vector loads
        A[0,kk] broadcast -> acc00     acc01              fma  acc += a * b
        ...                  ...       ...
        A[5,kk] broadcast -> acc50     acc51              12 accumulators in registers

The accumulators are loop-carried SSA values (phis), so they live in registers and C is
touched once per tile and KC block. Remainder rows and columns get their own, narrower tile
(a partial last vector is loaded masked and stored element by element) -- emitted once per
remainder, never checked at run time. A B whose columns are runs of contiguous elements
read through a window view (a stride-1 convolution's output rows) is computed run by run,
each run a product of its own with contiguous B rows, where that fills the lanes better
than the transposed product (`_columns_as_batch`). Operands are read through strides, so a
transposed A costs nothing and a transposed B (column stride != 1) is gathered while
packing (a B contiguous along k: square blocks transposed in registers).

Packing buffers are `alloca`s sized by the blocking parameters (B: KC*NC = 256 KiB,
A: MC*KC = 144 KiB), so every function is reentrant and allocates nothing, but needs up to
400 KiB of stack: fine on Linux's 8 MiB default thread stacks, not on tiny custom ones.

Matrix-vector products use a dot-product kernel instead: 4 rows x 2 vectors along k, then a
horizontal sum; so do one or two rows times a B contiguous along k (x @ W^T), transposed.
A product with gathered B columns whose k axis is runs of contiguous elements in both
operands (a convolution's weight gradient: k = output rows) is dot products too, a tile of
3 x 3 elements of C with vectors along each run (`_k_runs`). Integer dtypes use a plain
loop nest. `tiling=` overrides the choice (tests use it to run every blocking path on
small shapes). Measured speed against NumPy: docs/performance.md, "Numbers moved out of
the code: graphc/codegen/matmul.py".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from llvmlite import ir

from graphc.codegen.target import Target, host, keep_vectors_whole
from graphc.codegen.tiling import (
    INTS,
    ITEMSIZE,
    Operand,
    Tiling,
    choose_path,
    choose_tiling,
    takes_row_count,
)
from graphc.errors import DTypeError, ShapeError
from graphc.ir.views import Axis, is_simple, offset_at, pairs
from graphc.ir.views import reshape as reshape_view

__all__ = ["Operand", "Tiling", "choose_tiling", "define_matmul", "takes_row_count"]

_FLOAT_TYPES = {"float32": ir.FloatType(), "float64": ir.DoubleType()}
_INT_TYPES = {dtype: ir.IntType(8 * ITEMSIZE[dtype]) for dtype in INTS}
_I64 = ir.IntType(64)
_PTR = ir.PointerType()
_K_UNROLL = 2  # micro-kernel k loop unroll: 1, 2, 4 within noise; 2 never lost
_I32 = ir.IntType(32)
_TABLE_LIMIT = 1 << 16  # offset tables of axes of pairs up to 256 KiB
RUN_TILE = (3, 3)  # rows x columns of C per tile of the runs path: 9 accumulators, 6 loads


@dataclass(frozen=True)
class _Rows:
    """A row count known only at run time: the i64 `value`, one of `possible`."""

    value: ir.Value
    possible: tuple[int, ...]


def define_matmul(
    module: ir.Module,
    name: str,
    *,
    m: int,
    n: int,
    k: int,
    dtype: str,
    a: Operand,
    b: Operand,
    c: Operand,
    batch: tuple[int, ...] = (),
    accumulate: bool = False,
    tiling: Tiling | None = None,
    rows: tuple[int, ...] | None = None,
    cpu: Target | None = None,
) -> ir.Function:
    """Emit `void name(ptr noalias c, ptr noalias a, ptr noalias b)`: C (=|+=) A @ B per batch.

    A is (batch..., m, k), B (batch..., k, n), C (batch..., m, n); element [idx] of an operand
    lives at base + offset + sum(idx * strides) (elements; stride 0 broadcasts). `tiling`
    overrides `choose_tiling` for float dtypes; vectors and tiles are `cpu`'s (default: the
    JIT's target). Reentrant; uses up to 400 KiB of stack.

    With `rows` (where `takes_row_count` allows it), the function takes a fourth argument,
    `i64 rows`, one of `rows`, and computes that many rows of C (m = max(rows) picks the
    tiling): one function for the chunks of a split product, whose last chunk is shorter.
    The row tiles then run in a loop of run-time length, and each remainder tile that some
    row count needs is emitted once.
    """
    if dtype not in ITEMSIZE:
        raise DTypeError(f"matmul {name}: unsupported dtype {dtype!r}")
    if min(m, n, k, *batch, 0) < 0:
        raise ShapeError(f"matmul {name}: negative size in m={m} n={n} k={k} batch={batch}")
    for label, operand in (("a", a), ("b", b), ("c", c)):
        if len(operand.strides) != len(batch) + 2:
            raise ShapeError(
                f"matmul {name}: operand {label} has {len(operand.strides)} strides, "
                f"expected {len(batch) + 2} for batch={batch}"
            )
    cpu = cpu or host()
    if rows is not None:
        supported = takes_row_count(m, n, k, dtype, a, b, batch, cpu, tiling)
        if not supported or max(rows) != m or min(rows) < 1:
            raise ShapeError(f"matmul {name}: rows={rows} not supported for m={m} n={n} k={k}")
    elem = _FLOAT_TYPES.get(dtype) or _INT_TYPES[dtype]
    arguments = [_PTR] * 3 + ([_I64] if rows is not None else [])
    function = ir.Function(module, ir.FunctionType(ir.VoidType(), arguments), name)
    for arg, arg_name in zip(function.args, ("c", "a", "b"), strict=False):
        arg.name = arg_name
        arg.add_attribute("noalias")
    function.attributes.add("nounwind")
    if cpu.vector_bytes > 32:
        keep_vectors_whole(function)
    builder = ir.IRBuilder(function.append_basic_block("entry"))
    emitter = _Emitter(builder, elem, cpu)
    if m == 0 or n == 0 or math.prod(batch) == 0:
        builder.ret_void()
        return function

    split = None
    if tiling is None and rows is None:
        split = _columns_as_batch(m, dtype, a, b, c, cpu)
        if split is not None:
            outer, n, a, b, c = split
            batch = (*batch, *outer)
    path = choose_path(m, n, k, dtype, a, b, tiling, cpu)
    runs = _k_runs(m, dtype, a, b, cpu) if split is None and path == "transposed" else None
    if runs is not None:
        path = "runs"
    if path in ("transposed", "dot transposed"):
        m, n = n, m
        a, b = _swap_matrix_strides(b), _swap_matrix_strides(a)
        c = _swap_matrix_strides(c)
        a_arg, b_arg = function.args[2], function.args[1]
    else:
        a_arg, b_arg = function.args[1], function.args[2]
    c_arg = function.args[0]

    def body(a_view: _View, b_view: _View, c_view: _View, k: int = k) -> None:
        if path == "loop":
            emitter.loop_nest(m, n, k, a_view, b_view, c_view, accumulate)
        elif path in ("dot", "dot transposed"):
            emitter.dot_rows(m, n, k, a_view, b_view, c_view, accumulate)
        elif path == "runs":
            emitter.runs(m, n, runs, a_view, b_view, c_view, accumulate)
        else:
            t = tiling or choose_tiling(m, n, k, dtype, a.strides[-2:], b.strides[-2:], cpu)
            count = m if rows is None else _Rows(function.args[3], tuple(sorted(set(rows))))
            emitter.blocked(count, n, k, t, a_view, b_view, c_view, accumulate)

    operands = [(a_arg, a), (b_arg, b), (c_arg, c)]
    bands = _row_bands(batch, n, a, b) if split is not None and path == "blocked" else None
    if bands is None:
        emitter.over_batch(batch, operands, body)
    else:
        emitter.over_batch(
            batch[:-1],
            [(arg, _without_last_batch(op)) for arg, op in operands],
            lambda *views: emitter.banded(bands, (a, b, c), views, body),
        )
    builder.ret_void()
    return function


_SUFFIX = {4: "f32", 8: "f64"}


def _i64(value: int) -> ir.Constant:
    return ir.Constant(_I64, value)


def _declare(module: ir.Module, name: str, vector: ir.Type, arity: int) -> ir.Function:
    """An overloaded vector intrinsic (llvmlite's declare_intrinsic knows only scalars)."""
    if name in module.globals:
        return module.globals[name]
    return ir.Function(module, ir.FunctionType(vector, [vector] * arity), name)


def _columns_as_batch(m: int, dtype: str, a: Operand, b: Operand, c: Operand, cpu: Target):
    """A product whose B columns are runs of contiguous elements (a stride-1 convolution's
    output rows, read through a window view: ((oh, ...), (ow, 1))) as a batch of products over
    the outer digits, each with contiguous B columns -- (outer sizes, n, a, b, c) -- where
    that fills the vector lanes better than the transposed product would (conv(x) with few
    output channels: a row of C is one output row, loaded straight from the input); else None.
    """
    columns = b.strides[-1]
    if dtype in INTS or is_simple(columns) or columns[-1][1] != 1:
        return None
    sizes = [size for size, _ in columns]
    c_columns = _refined(c.strides[-1], sizes)
    if c_columns is None:
        return None
    lanes = cpu.lanes(ITEMSIZE[dtype])
    width = sizes[-1]
    if _filled(width, lanes) <= _filled(m, lanes):
        return None
    outer = columns[:-1]
    a = Operand((*a.strides[:-2], *(0 for _ in outer), *a.strides[-2:]), a.offset, a.zeros)
    b = Operand((*b.strides[:-2], *(s for _, s in outer), b.strides[-2], 1), b.offset, b.zeros)
    c_outer = tuple(s for _, s in c_columns[:-1])
    c = Operand((*c.strides[:-2], *c_outer, c.strides[-2], c_columns[-1][1]), c.offset, c.zeros)
    return tuple(size for size, _ in outer), width, a, b, c


@dataclass(frozen=True)
class _Runs:
    """The k axis of A (columns) and of B (rows) as the same digits, the last a run of
    `width` contiguous elements in both: `a_outer` and `b_outer` step the other digits."""

    a_outer: tuple[tuple[int, int], ...]
    b_outer: tuple[tuple[int, int], ...]
    width: int


def _k_runs(m: int, dtype: str, a: Operand, b: Operand, cpu: Target) -> _Runs | None:
    """A product whose B columns are gathered (a convolution's weight gradient: taps) and
    whose k axis is runs of contiguous elements in both operands (output rows of the
    gradient and of the input's windows) is computed as dot products with the vector lanes
    along k, where they fill the lanes better than the transposed product's m would."""
    rows = b.strides[-2]
    if dtype in INTS or is_simple(rows) or not is_simple(a.strides[-2]) or rows[-1][1] != 1:
        return None
    sizes = [size for size, _ in rows]
    a_k = _refined(a.strides[-1], sizes)
    if a_k is None or a_k[-1][1] != 1:
        return None
    lanes = cpu.lanes(ITEMSIZE[dtype])
    width = sizes[-1]
    if width < lanes or _filled(width, lanes) <= _filled(m, lanes):
        return None
    return _Runs(tuple(a_k[:-1]), tuple(rows[:-1]), width)


def _filled(count: int, lanes: int) -> float:
    """The share of used lanes in the ceil(count / lanes) vectors that hold count values."""
    return count / (-(-count // lanes) * lanes)


@dataclass(frozen=True)
class _Bands:
    """Per run of the last batch axis, the range of one digit of B's rows (and A's columns)
    outside which B's rows are zero: `groups` of (first, stop, lo, hi)."""

    digit: int
    a_columns: tuple[tuple[int, int], ...]
    groups: tuple[tuple[int, int, int, int], ...]


def _row_bands(batch: tuple[int, ...], n: int, a: Operand, b: Operand) -> _Bands | None:
    """Where B is a window of a zero-padded buffer whose padded axis both the last batch axis
    and one digit of B's rows step along (a convolution's input gradient: output row oh reads
    padded rows oh + kh), the rows of B that are zero at each index of that batch axis are
    skipped: at the border only the taps that reach into the buffer are multiplied."""
    if not batch or is_simple(b.strides[-2]) or not is_simple(b.strides[-3]):
        return None
    rows, outer = b.strides[-2], b.strides[-3]
    sizes = [size for size, _ in rows]
    a_columns = _refined(a.strides[-1], sizes)
    if a_columns is None:
        return None
    for stride, period, lo, hi in b.zeros:
        digits = [i for i, (_, step) in enumerate(rows) if step == stride]
        if outer != stride or len(digits) != 1:
            continue
        digit, size = digits[0], rows[digits[0]][0]
        if any(step % (stride * period) for step in b.strides[:-3]):
            continue  # a batch axis inside the padded one (a thread's chunk shifts B by it)
        others = [pair for i, pair in enumerate(rows) if i != digit]
        others += pairs(n, b.strides[-1])
        # every other step leaves (f // stride) % period alone: whole periods, or steps
        # that together stay below one stride
        whole = [step % (stride * period) == 0 for _, step in others]
        small = b.offset % stride + sum(
            (count - 1) * step for (count, step), w in zip(others, whole) if not w
        )  # fmt: skip
        shift = b.offset // stride % period
        if any(step < 0 for _, step in others) or small >= stride:
            continue
        if any(not w and step >= stride for (_, step), w in zip(others, whole)):
            continue
        if shift + batch[-1] + size - 2 >= period:
            continue
        groups: list[list[int]] = []
        for index in range(batch[-1]):
            first, last = max(0, lo - shift - index), min(size, hi - shift - index)
            if last <= first:
                return None
            if groups and groups[-1][2:] == [first, last]:
                groups[-1][1] = index + 1
            else:
                groups.append([index, index + 1, first, last])
        if all(group[2:] == [0, size] for group in groups):
            return None
        return _Bands(digit, tuple(a_columns), tuple(tuple(group) for group in groups))
    return None


def _refined(axis: Axis, sizes: list[int]) -> tuple[tuple[int, int], ...] | None:
    """`axis` (of prod(sizes) elements) as one (size, stride) pair per size ((25, -1) as
    (5, -5), (5, -1)), or None where a size would need several strides."""
    axes = reshape_view((math.prod(sizes),), (axis,), sizes)
    if axes is None or not all(is_simple(a) for a in axes):
        return None
    return tuple(zip(sizes, axes))


def _without_last_batch(operand: Operand) -> Operand:
    strides = operand.strides
    return Operand((*strides[:-3], *strides[-2:]), operand.offset, operand.zeros)


def _swap_matrix_strides(operand: Operand) -> Operand:
    *batch_strides, rows, cols = operand.strides
    return Operand((*batch_strides, cols, rows), operand.offset)


@dataclass
class _View:
    """A strided 2-d window: element (r, c) lives at ptr + offset(r0 + r, rows) +
    offset(c0 + c, cols) in elements, where an axis is one stride (offset i*stride) or
    (size, stride) pairs (offset: the digits of i, each times its stride; ir/views.py).
    r0 and c0 are the window's first row and column along an axis of pairs; along a stride
    they are folded into ptr."""

    ptr: ir.Value
    rows: Axis
    cols: Axis
    r0: ir.Value | int = 0
    c0: ir.Value | int = 0


class _Emitter:
    """Loop and tile emission on one IRBuilder; sizes and strides are Python ints."""

    def __init__(self, builder: ir.IRBuilder, elem: ir.Type, cpu: Target):
        self.b = builder
        self.cpu = cpu
        self.elem = elem
        self.is_float = isinstance(elem, (ir.FloatType, ir.DoubleType))
        self.entry = builder.block
        self.zero = ir.Constant(elem, 0.0 if self.is_float else 0)

    # ---- addressing and loops -------------------------------------------------------------

    def linear(self, terms: list[tuple[ir.Value | int, Axis]]) -> ir.Value | int:
        """sum(offset of index along axis) with constant folding; indices are i64 values or
        ints, axes strides or (size, stride) pairs."""
        const, total = 0, None
        expanded = []
        for index, stride in terms:
            if isinstance(stride, int) or isinstance(index, int):
                expanded.append((index, stride))
                continue
            table = self.offset_table(stride)
            if table is not None:  # one load instead of a division per digit
                offset = self.b.load(self.gep(table, index, _I32), typ=_I32)
                expanded.append((self.b.sext(offset, _I64), 1))
                continue
            for size, inner in reversed(stride):  # the digits of index, innermost first
                expanded.append((self.b.urem(index, _i64(size)), inner))
                index = self.b.udiv(index, _i64(size))
        for index, stride in expanded:
            if stride == 0:
                continue
            if isinstance(index, int):
                const += offset_at(stride, index)
                continue
            term = index if stride == 1 else self.b.mul(index, ir.Constant(_I64, stride))
            total = term if total is None else self.b.add(total, term)
        if total is None:
            return const
        return self.b.add(total, ir.Constant(_I64, const)) if const else total

    def gep(self, ptr: ir.Value, index: ir.Value | int, etype: ir.Type | None = None):
        if isinstance(index, int):
            if index == 0:
                return ptr
            index = ir.Constant(_I64, index)
        return self.b.gep(ptr, [index], inbounds=True, source_etype=etype or self.elem)

    def offset_table(self, axis: tuple[tuple[int, int], ...]) -> ir.GlobalVariable | None:
        """The offsets of every index along an axis of pairs, as a constant i32 array (an
        indirection table, as XNNPACK's indirect convolution has), or None if too large."""
        count = math.prod(size for size, _ in axis)
        reach = sum((size - 1) * abs(stride) for size, stride in axis)
        if count > _TABLE_LIMIT or reach >= 2**31:
            return None
        module = self.b.module
        name = f"offsets.{abs(hash(axis)):x}.{count}"
        if name not in module.globals:  # built once per module, looked up at every index
            offsets = [offset_at(axis, i) for i in range(count)]
            array = ir.ArrayType(_I32, count)
            table = ir.GlobalVariable(module, array, name)
            table.initializer = ir.Constant(array, offsets)
            table.global_constant = True
            table.linkage = "internal"
            table.align = 64
        return module.globals[name]

    def at(self, view: _View, r: ir.Value | int, c: ir.Value | int) -> ir.Value:
        r = r if is_simple(view.rows) else self.plus(view.r0, r)
        c = c if is_simple(view.cols) else self.plus(view.c0, c)
        return self.gep(view.ptr, self.linear([(r, view.rows), (c, view.cols)]))

    def sub(self, view: _View, r: ir.Value | int, c: ir.Value | int) -> _View:
        """The window from element (r, c) on."""
        simple_r, simple_c = is_simple(view.rows), is_simple(view.cols)
        terms = ([(r, view.rows)] if simple_r else []) + ([(c, view.cols)] if simple_c else [])
        return _View(
            self.gep(view.ptr, self.linear(terms)),
            view.rows,
            view.cols,
            0 if simple_r else self.plus(view.r0, r),
            0 if simple_c else self.plus(view.c0, c),
        )

    def plus(self, a: ir.Value | int, b: ir.Value | int) -> ir.Value | int:
        if isinstance(a, int) and isinstance(b, int):
            return a + b
        return self.linear([(a, 1), (b, 1)])

    def loop(self, count: int, body, carried: list[ir.Value] = ()) -> list[ir.Value]:
        """Emit `for i in range(count)`; body(i, carried) returns the next carried values."""
        carried = list(carried)
        if count <= 0:
            return carried
        if count == 1:
            return list(body(ir.Constant(_I64, 0), carried) or [])
        pre = self.b.block
        head = self.b.append_basic_block("loop")
        self.b.branch(head)
        self.b.position_at_end(head)
        index = self.b.phi(_I64, "i")
        phis = [self.b.phi(v.type) for v in carried]
        for phi, value in zip(phis, carried, strict=True):
            phi.add_incoming(value, pre)
        index.add_incoming(ir.Constant(_I64, 0), pre)
        result = list(body(index, phis) or [])
        step = self.b.add(index, ir.Constant(_I64, 1))
        for phi, value in zip(phis, result, strict=True):
            phi.add_incoming(value, self.b.block)
        index.add_incoming(step, self.b.block)
        done = self.b.append_basic_block("loop.end")
        self.b.cbranch(self.b.icmp_unsigned("<", step, ir.Constant(_I64, count)), head, done)
        self.b.position_at_end(done)
        return result

    def loop_until(self, count: ir.Value, body) -> None:
        """Emit `for i in range(count)` for an i64 `count` >= 0 known at run time."""
        head = self.b.append_basic_block("loop")
        done = self.b.append_basic_block("loop.end")
        pre = self.b.block
        self.b.cbranch(self.b.icmp_unsigned(">", count, _i64(0)), head, done)
        self.b.position_at_end(head)
        index = self.b.phi(_I64, "i")
        index.add_incoming(_i64(0), pre)
        body(index, [])
        step = self.b.add(index, _i64(1))
        index.add_incoming(step, self.b.block)
        self.b.cbranch(self.b.icmp_unsigned("<", step, count), head, done)
        self.b.position_at_end(done)

    def segments(self, total: int | _Rows, block: int, body) -> None:
        """body(start, size) over blocks of `block`, full ones in one loop, then the rest.

        For a run-time `total` the loop runs total // block times and the rest takes one
        branch per remainder some possible total leaves; `size` is a Python int either way."""
        if isinstance(total, _Rows):
            full = self.b.udiv(total.value, _i64(block))
            if max(total.possible) >= block:
                self.loop_until(full, lambda i, _: body(self.linear([(i, block)]), block))
            start = self.b.mul(full, _i64(block))
            rest = self.b.sub(total.value, start)
            for size in sorted({p % block for p in total.possible} - {0}):
                with self.b.if_then(self.b.icmp_unsigned("==", rest, _i64(size))):
                    body(start, size)
            return
        full, rest = divmod(total, block)
        if full:
            self.loop(full, lambda i, _: body(self.linear([(i, block)]), block))
        if rest:
            body(full * block, rest)

    def over_batch(self, batch, operands, body) -> None:
        """Loop over batch dims; body gets the (rows, cols) views of each operand."""

        def level(depth: int, offsets: list):
            if depth == len(batch):
                views = []
                for (arg, op), offset in zip(operands, offsets, strict=True):
                    ptr = self.gep(arg, self.linear([(offset, 1), (1, op.offset)]))
                    views.append(_View(ptr, op.strides[-2], op.strides[-1]))
                body(*views)
                return

            def step(i, _):
                level(
                    depth + 1,
                    [
                        self.linear([(o, 1), (i, op.strides[depth])])
                        for o, (_, op) in zip(offsets, operands, strict=True)
                    ],
                )

            self.loop(batch[depth], step)

        level(0, [0] * len(operands))

    def banded(self, bands: _Bands, operands, views, body) -> None:
        """body(a, b, c, k) at every index of the last batch axis, its run's zero rows of B
        (and the columns of A they meet) left out (`_row_bands`)."""
        a, b, c = operands
        a_view, b_view, c_view = views
        digit = bands.digit
        for first, stop, lo, hi in bands.groups:
            a_columns, b_rows = list(bands.a_columns), list(b.strides[-2])
            a_step, b_step = a_columns[digit][1], b_rows[digit][1]
            a_columns[digit], b_rows[digit] = (hi - lo, a_step), (hi - lo, b_step)
            k = math.prod(size for size, _ in b_rows)

            def one(i, _, first=first, lo=lo, a_step=a_step, b_step=b_step,
                    a_columns=tuple(a_columns), b_rows=tuple(b_rows), k=k):  # fmt: skip
                index = self.plus(i, first)
                a_at = self.linear([(index, a.strides[-3]), (lo, a_step)])
                b_at = self.linear([(index, b.strides[-3]), (lo, b_step)])
                body(
                    _View(self.gep(a_view.ptr, a_at), a.strides[-2], a_columns),
                    _View(self.gep(b_view.ptr, b_at), b_rows, b.strides[-1]),
                    _View(
                        self.gep(c_view.ptr, self.linear([(index, c.strides[-3])])),
                        c.strides[-2],
                        c.strides[-1],
                    ),
                    k,
                )

            self.loop(stop - first, one)

    def scratch(self, elements: int) -> ir.Value:
        """A 64-byte-aligned stack buffer, allocated once in the entry block."""
        with self.b.goto_block(self.entry):
            self.b.position_at_start(self.entry)
            buffer = self.b.alloca(ir.ArrayType(self.elem, elements))
            buffer.align = 64
        # llvmlite gives allocas a typed pointer type; under opaque pointers it is a `ptr`.
        buffer.type = _PTR
        return buffer

    # ---- integer (and k == 0) loop nest --------------------------------------------------

    def loop_nest(self, m, n, k, a: _View, b: _View, c: _View, accumulate: bool) -> None:
        mul, add = (self.b.fmul, self.b.fadd) if self.is_float else (self.b.mul, self.b.add)

        def row(i, _):
            def col(j, _):
                target = self.at(c, i, j)
                init = self.b.load(target, typ=self.elem) if accumulate else self.zero

                def dot(kk, acc):
                    product = mul(
                        self.b.load(self.at(a, i, kk), typ=self.elem),
                        self.b.load(self.at(b, kk, j), typ=self.elem),
                    )
                    return [add(acc[0], product)]

                self.b.store(self.loop(k, dot, [init])[0], target)

            self.loop(n, col)

        self.loop(m, row)

    # ---- float: blocking, packing, micro-kernel ------------------------------------------

    def use_vectors(self, lanes: int) -> None:
        self.vector = ir.VectorType(self.elem, lanes)
        name = f"llvm.fma.v{lanes}{_SUFFIX[self.elem_bytes]}"
        self.fma = _declare(self.b.module, name, self.vector, 3)

    def dot_rows(self, m, n, k, a: _View, b: _View, c: _View, accumulate) -> None:
        """C[i, j] (=|+=) dot(A[i, :], B[:, j]) with vectors along k, 4 rows at a time."""
        self.use_vectors(self.cpu.lanes(self.elem_bytes))

        def tile(i0, count):
            for j in range(n):
                rows = [self.sub(a, self.linear([(i0, 1), (r, 1)]), 0) for r in range(count)]
                column = _View(self.at(b, 0, j), b.cols, b.rows)  # B[:, j] as a row
                targets = [self.at(c, self.linear([(i0, 1), (r, 1)]), j) for r in range(count)]
                self.dot_tile(k, rows, column, targets, accumulate)

        self.segments(m, 4, tile)

    def dot_tile(self, k, rows: list[_View], column: _View, targets, accumulate) -> None:
        """targets[r] (=|+=) dot(rows[r][0, :k], column[0, :k]); two vectors per row per step."""
        width, unroll = self.vector.count, 2
        step = width * unroll
        full, rest = divmod(k, step)
        vector_tail, scalar_tail = divmod(rest, width)

        def fmas(kk, acc, slots):
            out = list(acc)
            for u, slot in enumerate(slots):
                offset = self.linear([(kk, 1), (u * width, 1)])
                x = self.load_vector(column, 0, offset, width, padded=True)
                for r, row in enumerate(rows):
                    value = self.load_vector(row, 0, offset, width, padded=True)
                    index = r * unroll + slot
                    out[index] = self.b.call(self.fma, [value, x, out[index]])
            return out

        zero = ir.Constant(self.vector, [self.zero] * width)
        acc = self.loop(
            full, lambda q, acc: fmas(self.linear([(q, step)]), acc, range(unroll)),
            [zero] * (len(rows) * unroll),
        )  # fmt: skip
        acc = fmas(full * step, acc, range(vector_tail))
        for r, (row, target) in enumerate(zip(rows, targets, strict=True)):
            total = acc[r * unroll]
            for u in range(1, unroll):
                total = self.b.fadd(total, acc[r * unroll + u])
            total = self.horizontal_sum(total)
            for kk in range(k - scalar_tail, k):
                x = self.b.load(self.at(column, 0, kk), typ=self.elem)
                total = self.b.fma(self.b.load(self.at(row, 0, kk), typ=self.elem), x, total)
            if accumulate:
                total = self.b.fadd(self.b.load(target, typ=self.elem), total)
            self.b.store(total, target)

    def runs(self, m, n, runs: _Runs, a: _View, b: _View, c: _View, accumulate) -> None:
        """C[i, j] (=|+=) the dot product of A's row i and B's column j along k, where k
        is runs of `runs.width` contiguous elements in both: tiles of RUN_TILE rows and
        columns of vector accumulators, each run loaded as vectors (the last one masked),
        then one horizontal sum per element of C."""
        self.use_vectors(self.cpu.lanes(self.elem_bytes))
        width, lanes = runs.width, self.vector.count
        outer = math.prod(size for size, _ in runs.a_outer)
        zero = ir.Constant(self.vector, [self.zero] * lanes)
        tile_rows, tile_columns = RUN_TILE
        for i0 in range(0, m, tile_rows):
            rows = range(i0, min(i0 + tile_rows, m))
            for j0 in range(0, n, tile_columns):
                columns = range(j0, min(j0 + tile_columns, n))
                a_rows = [self.gep(a.ptr, offset_at(a.rows, i)) for i in rows]
                b_columns = [self.gep(b.ptr, offset_at(b.cols, j)) for j in columns]

                def step(o, acc, a_rows=a_rows, b_columns=b_columns):
                    a_at = self.linear([(o, runs.a_outer)])
                    b_at = self.linear([(o, runs.b_outer)])
                    acc = list(acc)
                    for v in range(0, width, lanes):
                        count = min(lanes, width - v)
                        xs = [self.load_vector(_View(self.gep(p, a_at), 0, 1), 0, v, count)
                              for p in a_rows]  # fmt: skip
                        ys = [self.load_vector(_View(self.gep(p, b_at), 0, 1), 0, v, count)
                              for p in b_columns]  # fmt: skip
                        for r, x in enumerate(xs):
                            for t, y in enumerate(ys):
                                slot = r * len(ys) + t
                                acc[slot] = self.b.call(self.fma, [x, y, acc[slot]])
                    return acc

                acc = self.loop(outer, step, [zero] * (len(rows) * len(columns)))
                for r, i in enumerate(rows):
                    for t, j in enumerate(columns):
                        total = self.horizontal_sum(acc[r * len(columns) + t])
                        target = self.at(c, i, j)
                        if accumulate:
                            total = self.b.fadd(self.b.load(target, typ=self.elem), total)
                        self.b.store(total, target)

    def horizontal_sum(self, value: ir.Value) -> ir.Value:
        """Sum of a vector's lanes by halving (lane order of a tree reduction)."""
        width = value.type.count
        while width > 1:
            width //= 2
            i32 = ir.IntType(32)
            low, high = (
                self.b.shuffle_vector(
                    value,
                    ir.Constant(value.type, ir.Undefined),
                    ir.Constant(ir.VectorType(i32, width), list(range(start, start + width))),
                )
                for start in (0, width)
            )
            value = self.b.fadd(low, high)
        return self.b.extract_element(value, ir.Constant(ir.IntType(32), 0))

    def blocked(self, m, n, k, t: Tiling, a: _View, b: _View, c: _View, accumulate) -> None:
        self.use_vectors(t.lanes)
        nc = min(t.nc, -(-n // t.nr) * t.nr)
        kc, mc = min(t.kc, k), min(t.mc, max(m.possible) if isinstance(m, _Rows) else m)
        b_pack = self.scratch(kc * nc) if t.pack_b else None
        a_pack = self.scratch(mc * kc) if t.pack_a else None

        def jc_block(jc, nc_size):
            def pc_block(pc, kc_size, load_c):
                if b_pack is not None:
                    self.pack_b(b, pc, jc, kc_size, nc_size, t.nr, b_pack)

                def ic_block(ic, mc_size):
                    if a_pack is not None:
                        self.pack_a(a, ic, pc, mc_size, kc_size, t.mr, a_pack)

                    def jr_block(jr, nr_size):
                        def ir_block(ir_, mr_size):
                            if a_pack is not None:
                                panel = self.linear([(ir_, kc_size)])
                                a_view = _View(self.gep(a_pack, panel), 1, mr_size)
                            else:
                                a_view = self.sub(a, self.linear([(ic, 1), (ir_, 1)]), pc)
                            if b_pack is not None:
                                panel = self.linear([(jr, kc_size)])
                                b_view = _View(self.gep(b_pack, panel), t.nr, 1)
                            else:
                                b_view = self.sub(b, pc, self.linear([(jc, 1), (jr, 1)]))
                            c_view = self.sub(
                                c, self.linear([(ic, 1), (ir_, 1)]), self.linear([(jc, 1), (jr, 1)])
                            )
                            self.micro_kernel(
                                kc_size,
                                mr_size,
                                nr_size,
                                a_view,
                                b_view,
                                b_pack is not None,
                                c_view,
                                load_c,
                            )

                        self.segments(mc_size, t.mr, ir_block)

                    self.segments(nc_size, t.nr, jr_block)

                if isinstance(m, _Rows):  # one ic block body, its row count at run time
                    self.row_blocks(m, mc, ic_block)
                else:
                    self.segments(m, mc, ic_block)

            # The first k block initialises C (unless accumulating); later ones add to it.
            pc_block(0, min(kc, k), accumulate)
            if k > kc:
                self.segments(
                    k - kc,
                    kc,
                    lambda pc, size: pc_block(self.linear([(pc, 1), (kc, 1)]), size, True),
                )

        self.segments(n, nc, jc_block)

    def row_blocks(self, m: _Rows, mc: int, body) -> None:
        """body(ic, rows) for the blocks of mc rows of a run-time m, emitted once: rows is
        min(mc, m - ic) at run time, with the possible values of any m."""
        blocks = self.b.udiv(self.b.add(m.value, _i64(mc - 1)), _i64(mc))
        sizes = {size for p in m.possible for size in (min(p, mc), p % mc) if size}

        def block(i, _):
            ic = self.b.mul(i, _i64(mc))
            left = self.b.sub(m.value, ic)
            size = self.b.select(self.b.icmp_unsigned("<", left, _i64(mc)), left, _i64(mc))
            body(ic, _Rows(size, tuple(sorted(sizes))))

        self.loop_until(blocks, block)

    def pack_b(self, b: _View, pc, jc, kc, nc, nr, out) -> None:
        """Bp[p][kk][0:nr] = B[pc+kk, jc+p*nr : +nr], zero padded past nc.

        A B whose columns are contiguous along k (a transposed weight, x @ W^T) is read a
        square block at a time, a vector down each column, and transposed in registers:
        one vector load per row of the block instead of one scalar load per element."""
        source = self.sub(b, pc, jc)
        lanes = self.vector.count
        align = min(64, lanes * self.elem_bytes)
        by_blocks = b.rows == 1 and is_simple(b.cols) and kc >= lanes

        def panel(jr, width):
            base = self.gep(out, self.linear([(jr, kc)]))

            def row(kk, _):
                src = self.sub(source, kk, jr)
                for v in range(0, nr, lanes):
                    value = self.load_vector(src, 0, v, min(lanes, max(width - v, 0)))
                    dst = self.gep(base, self.linear([(kk, nr), (v, 1)]))
                    self.b.store(value, dst, align=align)

            def block(q, _):
                kk = self.linear([(q, lanes)])
                for v in range(0, nr, lanes):
                    columns = [
                        self.b.load(self.at(source, kk, self.plus(jr, v + i)), typ=self.vector,
                                    align=self.elem_bytes)
                        if v + i < width else ir.Constant(self.vector, [self.zero] * lanes)
                        for i in range(lanes)
                    ]  # fmt: skip
                    for r, value in enumerate(self.transposed(columns)):
                        dst = self.gep(base, self.linear([(kk, nr), (r, nr), (v, 1)]))
                        self.b.store(value, dst, align=align)

            if not by_blocks:
                self.loop(kc, row)
                return
            self.loop(kc // lanes, block)
            for kk in range(kc - kc % lanes, kc):
                row(kk, [])

        self.segments(nc, nr, panel)

    def transposed(self, rows: list[ir.Value]) -> list[ir.Value]:
        """The columns of a square block given as its rows (vectors of len(rows) lanes):
        log2(lanes) rounds of pairwise shuffles, each swapping off-diagonal sub-blocks."""
        lanes = len(rows)
        i32 = ir.IntType(32)
        step = lanes // 2
        while step:
            out = list(rows)
            for i in range(lanes):
                if i & step:
                    continue
                low, high = rows[i], rows[i + step]
                # lane j of the pair's first result: low's own where j's `step` bit is 0,
                # else high's lane j - step; of the second: low's lane j + step, else high's
                first = [j if not j & step else lanes + j - step for j in range(lanes)]
                second = [j + step if not j & step else lanes + j for j in range(lanes)]
                out[i] = self.b.shuffle_vector(
                    low, high, ir.Constant(ir.VectorType(i32, lanes), first)
                )
                out[i + step] = self.b.shuffle_vector(
                    low, high, ir.Constant(ir.VectorType(i32, lanes), second)
                )
            rows = out
            step //= 2
        return rows

    def pack_a(self, a: _View, ic, pc, mc, kc, mr, out) -> None:
        """Ap[q][kk][0:rows] = A[ic+q*mr : +rows, pc+kk] for panels q of mr rows."""
        source = self.sub(a, ic, pc)

        def panel(ir_, rows):
            base = self.gep(out, self.linear([(ir_, kc)]))
            src = self.sub(source, ir_, 0)

            def column(kk, _):
                for r in range(rows):
                    value = self.b.load(self.at(src, r, kk), typ=self.elem)
                    self.b.store(value, self.gep(base, self.linear([(kk, rows), (r, 1)])))

            self.loop(kc, column)

        self.segments(mc, mr, panel)

    @property
    def elem_bytes(self) -> int:
        return 4 if isinstance(self.elem, ir.FloatType) else 8

    def load_vector(self, view: _View, r, c, lanes: int, padded: bool = False) -> ir.Value:
        """Elements (r, c .. c+lanes) as one vector; lanes past `lanes` are zero.

        `padded` promises that a full vector may be loaded from contiguous memory.
        """
        width = self.vector.count
        if padded or (lanes == width and view.cols == 1):
            return self.b.load(self.at(view, r, c), typ=self.vector, align=self.elem_bytes)
        if view.cols == 1 and lanes > 1:  # contiguous: one masked load (vmaskmov on x86)
            return self.masked_load(self.at(view, r, c), lanes)
        value = ir.Constant(self.vector, [self.zero] * width)
        for lane in range(lanes):
            element = self.b.load(self.at(view, r, self.linear([(c, 1), (lane, 1)])), typ=self.elem)
            value = self.b.insert_element(value, element, ir.Constant(ir.IntType(32), lane))
        return value

    def masked_load(self, pointer: ir.Value, lanes: int) -> ir.Value:
        """The first `lanes` elements from `pointer`, zeros after: no memory past them is read."""
        width = self.vector.count
        name = f"llvm.masked.load.v{width}{_SUFFIX[self.elem_bytes]}.p0"
        mask_type = ir.VectorType(ir.IntType(1), width)
        if name in self.b.module.globals:
            intrinsic = self.b.module.globals[name]
        else:  # LLVM >= 22: (ptr, mask, passthru), the alignment an attribute (1 if none)
            signature = ir.FunctionType(self.vector, [_PTR, mask_type, self.vector])
            intrinsic = ir.Function(self.b.module, signature, name)
        mask = ir.Constant(mask_type, [int(lane < lanes) for lane in range(width)])
        return self.b.call(
            intrinsic, [pointer, mask, ir.Constant(self.vector, [self.zero] * width)]
        )

    def store_vector(self, value: ir.Value, view: _View, r, c, lanes: int) -> None:
        if lanes == self.vector.count and view.cols == 1:
            self.b.store(value, self.at(view, r, c), align=self.elem_bytes)
            return
        for lane in range(lanes):
            element = self.b.extract_element(value, ir.Constant(ir.IntType(32), lane))
            self.b.store(element, self.at(view, r, self.linear([(c, 1), (lane, 1)])))

    def splat(self, scalar: ir.Value) -> ir.Value:
        width = self.vector.count
        one = self.b.insert_element(
            ir.Constant(self.vector, ir.Undefined), scalar, ir.Constant(ir.IntType(32), 0)
        )
        mask = ir.Constant(ir.VectorType(ir.IntType(32), width), [0] * width)
        return self.b.shuffle_vector(one, ir.Constant(self.vector, ir.Undefined), mask)

    def micro_kernel(self, kc, mr, nr, a: _View, b: _View, b_padded, c: _View, load_c) -> None:
        """C[0:mr, 0:nr] (=|+=) A[0:mr, 0:kc] @ B[0:kc, 0:nr] with mr x nv vector registers."""
        width = self.vector.count
        columns = [(v, min(width, nr - v)) for v in range(0, nr, width)]
        zero = ir.Constant(self.vector, [self.zero] * width)
        init = [
            self.load_vector(c, r, v, lanes) if load_c else zero
            for r in range(mr)
            for v, lanes in columns
        ]

        def step(kk, acc):
            b_rows = [self.load_vector(b, kk, v, lanes, b_padded) for v, lanes in columns]
            out = []
            for r in range(mr):
                a_splat = self.splat(self.b.load(self.at(a, r, kk), typ=self.elem))
                for j, b_row in enumerate(b_rows):
                    out.append(self.b.call(self.fma, [a_splat, b_row, acc[r * len(columns) + j]]))
            return out

        unroll = _K_UNROLL if kc >= 2 * _K_UNROLL else 1

        def unrolled(q, acc):
            base = self.linear([(q, unroll)])
            for u in range(unroll):
                acc = step(self.linear([(base, 1), (u, 1)]), acc)
            return acc

        acc = self.loop(kc // unroll, unrolled, init)
        for kk in range(kc - kc % unroll, kc):
            acc = step(kk, acc)
        for r in range(mr):
            for j, (v, lanes) in enumerate(columns):
                self.store_vector(acc[r * len(columns) + j], c, r, v, lanes)
