"""Scalar emission: the dtype-aware operations each op's `scalar` rule calls.

An `Emitter` wraps an llvmlite IRBuilder. Values are LLVM scalars (floats, doubles, i32,
i64, and i1 for bool); the op stanzas in ir/ops.py say *what* to compute
(`scalar=lambda e, x, y: e.add(x, y)`), and this class says how for each type.
Floating-point instructions carry the `contract` flag (FMA is allowed) and never
`nnan`/`ninf`: NaN and Inf propagate as in NumPy.
"""

from __future__ import annotations

from llvmlite import ir

from graphc.codegen import mathlib
from graphc.ir.ops import OPS, THREEFRY_PARITY, THREEFRY_ROTATIONS

FLAGS = ("contract",)

REGISTER_TYPES = {
    "float32": ir.FloatType(),
    "float64": ir.DoubleType(),
    "int32": ir.IntType(32),
    "int64": ir.IntType(64),
    "bool": ir.IntType(1),
}
MEMORY_TYPES = {**REGISTER_TYPES, "bool": ir.IntType(8)}


def _routines() -> dict:
    """Every op's math routine (`OpDef.math`), looked up when codegen is imported: an op
    naming a routine mathlib lacks fails here, not in the middle of a compile."""
    missing = sorted(
        f"{op.name} (math={op.math!r})"
        for op in OPS.values()
        if op.math is not None and not callable(getattr(mathlib, op.math, None))
    )
    if missing:
        raise ImportError(f"graphc.codegen.mathlib has no routine for: {', '.join(missing)}")
    return {op.math: getattr(mathlib, op.math) for op in OPS.values() if op.math is not None}


ROUTINES = _routines()


def is_float_type(t: ir.Type) -> bool:
    return isinstance(t, (ir.FloatType, ir.DoubleType))


def is_bool_type(t: ir.Type) -> bool:
    return isinstance(t, ir.IntType) and t.width == 1


class Emitter:
    """Dtype-aware scalar operations on an IRBuilder."""

    def __init__(self, builder: ir.IRBuilder):
        self.b = builder
        self.math_calls = 0  # transcendentals emitted so far (loops over them interleave)

    def intrinsic(self, name: str, *args):
        module = self.b.module
        signature = ir.FunctionType(args[0].type, [a.type for a in args])
        fn = module.declare_intrinsic(name, [args[0].type], signature)
        return self.b.call(fn, args)

    # ---- arithmetic ----
    def add(self, x, y):
        return self.b.fadd(x, y, flags=FLAGS) if is_float_type(x.type) else self.b.add(x, y)

    def sub(self, x, y):
        return self.b.fsub(x, y, flags=FLAGS) if is_float_type(x.type) else self.b.sub(x, y)

    def mul(self, x, y):
        return self.b.fmul(x, y, flags=FLAGS) if is_float_type(x.type) else self.b.mul(x, y)

    def div(self, x, y):
        return self.b.fdiv(x, y, flags=FLAGS)

    def neg(self, x):
        return self.b.fneg(x) if is_float_type(x.type) else self.b.neg(x)

    def abs(self, x):
        if is_float_type(x.type):
            return self.intrinsic("llvm.fabs", x)
        return self.b.select(self.b.icmp_signed("<", x, x.type(0)), self.b.neg(x), x)

    def sign(self, x):
        zero, one = x.type(0), x.type(1)
        if is_float_type(x.type):
            positive = self.b.fcmp_ordered(">", x, zero)
            negative = self.b.fcmp_ordered("<", x, zero)
            # NaN and ±0 pass through unchanged, as np.sign does
            return self.b.select(positive, one, self.b.select(negative, x.type(-1), x))
        positive = self.b.icmp_signed(">", x, zero)
        negative = self.b.icmp_signed("<", x, zero)
        return self.b.select(positive, one, self.b.select(negative, x.type(-1), zero))

    def maximum(self, x, y):
        if is_float_type(x.type):
            return self.intrinsic("llvm.maximum", x, y)  # NaN-propagating, like np.maximum
        return self.b.select(self.b.icmp_signed(">", x, y), x, y)

    def minimum(self, x, y):
        if is_float_type(x.type):
            return self.intrinsic("llvm.minimum", x, y)
        return self.b.select(self.b.icmp_signed("<", x, y), x, y)

    # ---- comparisons and logic ----
    def compare(self, op: str, x, y):
        if is_float_type(x.type):
            if op == "!=":
                return self.b.fcmp_unordered("!=", x, y)  # NaN != NaN is True
            return self.b.fcmp_ordered(op, x, y)
        if is_bool_type(x.type):
            return self.b.icmp_unsigned(op, x, y)
        return self.b.icmp_signed(op, x, y)

    def logical_and(self, x, y):
        return self.b.and_(x, y)

    def logical_or(self, x, y):
        return self.b.or_(x, y)

    def logical_not(self, x):
        return self.b.xor(x, x.type(1))

    def select(self, c, x, y):
        return self.b.select(c, x, y)

    # ---- reductions (the `combine` / `better` rules of ir/ops.py's Reduction) ----
    def accumulate(self, acc, v):
        """acc + v; float sums may be reassociated (DESIGN §5's fast-math policy)."""
        if is_float_type(v.type):
            return self.b.fadd(acc, v, flags=("reassoc", "contract"))
        return self.b.add(acc, v)

    def first_greater(self, v, acc):
        """Whether v replaces acc in NumPy's argmax: the first maximum wins; the first NaN
        wins over everything."""
        b = self.b
        if is_float_type(v.type):
            greater = b.fcmp_ordered(">", v, acc)
            v_nan = b.fcmp_unordered("uno", v, v)
            acc_nan = b.fcmp_unordered("uno", acc, acc)
            return b.or_(greater, b.and_(v_nan, b.not_(acc_nan)))
        return b.icmp_signed(">", v, acc)

    # ---- math ----
    def math(self, name: str, *args):
        """A transcendental from the vectorizable math library (no libm calls)."""
        if name not in mathlib.SINGLE_INSTRUCTION:
            self.math_calls += 1
        return ROUTINES[name](self.b, *args)

    # ---- conversions ----
    def cast(self, x, dtype: str):
        target = REGISTER_TYPES[dtype]
        source = x.type
        if source == target:
            return x
        b = self.b
        if dtype == "bool":
            if is_float_type(source):
                return b.fcmp_unordered("!=", x, source(0))
            return b.icmp_unsigned("!=", x, source(0))
        if is_float_type(target):
            if is_float_type(source):
                wider = isinstance(target, ir.DoubleType)
                return b.fpext(x, target) if wider else b.fptrunc(x, target)
            return b.uitofp(x, target) if is_bool_type(source) else b.sitofp(x, target)
        if is_float_type(source):
            return b.fptosi(x, target)
        if is_bool_type(source) or source.width < target.width:
            return b.zext(x, target) if is_bool_type(source) else b.sext(x, target)
        return b.trunc(x, target)

    # ---- random numbers ----
    def random_bits(self, key, counter, dtype: str):
        """Threefry-2x32-20 of i64 `key` and `counter` (ir/ops.py `threefry2x32`, bit for bit)
        as `dtype` (`random_values`): 32-bit adds, rotates and xors, which vectorize."""
        b, word = self.b, ir.IntType(32)

        def words(value):
            return b.trunc(value, word), b.trunc(b.lshr(value, value.type(32)), word)

        k0, k1 = words(key)
        k = [k0, k1, b.xor(b.xor(k0, k1), word(THREEFRY_PARITY))]
        x0, x1 = words(counter)
        x0, x1 = b.add(x0, k[0]), b.add(x1, k[1])
        for r in range(20):
            x0 = b.add(x0, x1)
            rotation = THREEFRY_ROTATIONS[r % 8]
            x1 = b.or_(b.shl(x1, word(rotation)), b.lshr(x1, word(32 - rotation)))
            x1 = b.xor(x1, x0)
            if r % 4 == 3:
                i = (r + 1) // 4
                x0 = b.add(x0, k[i % 3])
                x1 = b.add(b.add(x1, k[(i + 1) % 3]), word(i))
        if dtype == "float32":  # the top 24 bits of word 0, exactly, over 2**24
            top = b.sitofp(b.lshr(x0, word(8)), REGISTER_TYPES["float32"])
            return b.fmul(top, top.type(2.0**-24))
        wide = ir.IntType(64)
        bits = b.or_(b.shl(b.zext(x1, wide), wide(32)), b.zext(x0, wide))
        if dtype == "int64":
            return bits
        # the top 52 bits as the mantissa of a double in [1, 2), minus 1: exactly bits / 2**52
        one_to_two = b.or_(b.lshr(bits, wide(12)), wide(0x3FF0000000000000))
        double = REGISTER_TYPES["float64"]
        return b.fsub(b.bitcast(one_to_two, double), double(1.0))
