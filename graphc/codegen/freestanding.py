"""libm functions for a freestanding target, as internal IR functions of the exported object.

LLVM lowers an intrinsic that the target has no instruction for to a call into libm: on a
Cortex-M4F (single-precision FPU) `llvm.fma.f64`, `llvm.floor.f64` and `llvm.rint.f64` —
which mathlib's float64 routines use, and float32 `pow` too (it is computed in float64)
— become calls to `fma`, `floor` and `rint`. A microcontroller program has no libm, so an
AOT export for a freestanding target whose object needs one of these links in `define`'s
module: the same names, internal, built from plain arithmetic (libgcc's soft float):

    rint(x)   (|x| + 2^52) - 2^52 with x's sign, for |x| < 2^52 (else x: already an integer,
              inf or NaN); exact, round-half-even as the FPU's default mode
    floor, ceil, trunc   rint(x), then -1 / +1 where it rounded the wrong way (exact)
    fma(a, b, c)   a b = p + e exactly (Dekker's product, Veltkamp's split), p + c = s + t
              exactly (Knuth's TwoSum), then s + (t + e): exact when the result is the
              product's rounding error (mathlib's double-double steps: fma(a, b, -a b)) and
              within rounding otherwise (rarely 1 ulp off: two roundings); outside the
              split's range (|a|, |b| >= 2^995, |c| >= 2^1020, a b not finite) a b + c

The float32 forms (`rintf` ...) use 2^23. The backend's call to `fma` then binds to the
object's own definition; `@llvm.compiler.used` keeps the optimizer from dropping it first.

The float ABI: llvmlite's target machine passes float arguments in integer registers (the
base AAPCS) even for an `eabihf` triple, and says nothing of it in the object's build
attributes, so GNU ld refuses to link it with `-mfloat-abi=hard` code. The exported
functions take and return only pointers and sizes, which travel in r0-r3 under both
conventions, so `declare_vfp_arguments` adds the attribute that says "VFP registers"
(Tag_ABI_VFP_args = 1) to the object; internal calls and libgcc's helpers keep the base
convention, as they would in a hard-float build.
"""

from __future__ import annotations

import struct

from llvmlite import ir

__all__ = ["SUBSTITUTES", "declare_vfp_arguments", "define"]

F64, F32 = ir.DoubleType(), ir.FloatType()
SUBSTITUTES = {
    "rint": F64,
    "floor": F64,
    "ceil": F64,
    "trunc": F64,
    "fma": F64,
    "rintf": F32,
    "floorf": F32,
    "ceilf": F32,
    "truncf": F32,
}


def _rint(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
    t = x.type
    big = t(2.0**52 if t == F64 else 2.0**23)
    magnitude = b.call(b.module.declare_intrinsic("llvm.fabs", [t]), [x])
    rounded = b.fsub(b.fadd(magnitude, big), big)
    copysign = b.module.declare_intrinsic("llvm.copysign", [t], ir.FunctionType(t, [t, t]))
    signed = b.call(copysign, [rounded, x])
    return b.select(b.fcmp_ordered("<", magnitude, big), signed, x)


def _rounding(name: str):
    def body(b: ir.IRBuilder, x: ir.Value) -> ir.Value:
        r, one = _rint(b, x), x.type(1.0)
        down = b.select(b.fcmp_ordered(">", r, x), b.fsub(r, one), r)  # floor
        up = b.select(b.fcmp_ordered("<", r, x), b.fadd(r, one), r)  # ceil
        if name.startswith("floor"):
            return down
        if name.startswith("ceil"):
            return up
        return b.select(b.fcmp_ordered("<", x, x.type(0.0)), up, down)  # trunc

    return body


def _split(b: ir.IRBuilder, x: ir.Value) -> tuple[ir.Value, ir.Value]:
    """x = hi + lo with hi of 26 bits: Veltkamp's split."""
    t = b.fmul(x, F64(2.0**27 + 1))
    hi = b.fsub(t, b.fsub(t, x))
    return hi, b.fsub(x, hi)


def _fma(b: ir.IRBuilder, x: ir.Value, y: ir.Value, z: ir.Value) -> ir.Value:
    p = b.fmul(x, y)
    (xh, xl), (yh, yl) = _split(b, x), _split(b, y)
    e = b.fadd(b.fsub(b.fmul(xh, yh), p), b.fmul(xh, yl))
    e = b.fadd(b.fadd(e, b.fmul(xl, yh)), b.fmul(xl, yl))  # x y - p, exactly
    s = b.fadd(p, z)
    v = b.fsub(s, p)
    t = b.fadd(b.fsub(p, b.fsub(s, v)), b.fsub(z, v))  # p + z - s, exactly
    low = b.fadd(t, e)
    exact = b.select(b.fcmp_ordered("==", low, F64(0.0)), s, b.fadd(s, low))  # keeps -0
    fabs = b.module.declare_intrinsic("llvm.fabs", [F64])
    in_range = [
        b.fcmp_ordered("<", b.call(fabs, [x]), F64(2.0**995)),
        b.fcmp_ordered("<", b.call(fabs, [y]), F64(2.0**995)),
        b.fcmp_ordered("<", b.call(fabs, [z]), F64(2.0**1020)),
        b.fcmp_ordered("<", b.call(fabs, [p]), F64(2.0**1020)),
    ]
    ok = in_range[0]
    for condition in in_range[1:]:
        ok = b.and_(ok, condition)
    return b.select(ok, exact, s)


def define(names: list[str]) -> ir.Module:
    """A module defining the libm functions `names` (keys of SUBSTITUTES), internal and
    kept by `@llvm.compiler.used`, to be linked into a freestanding object."""
    module = ir.Module(name="graphc_freestanding")
    functions = []
    for name in names:
        t = SUBSTITUTES[name]
        arity = 3 if name.startswith("fma") else 1
        function = ir.Function(module, ir.FunctionType(t, [t] * arity), name)
        function.linkage = "internal"
        b = ir.IRBuilder(function.append_basic_block("entry"))
        body = _fma if name == "fma" else _rint if name.startswith("rint") else _rounding(name)
        b.ret(body(b, *function.args))
        functions.append(function)
    pointers = ir.ArrayType(ir.PointerType(), len(functions))
    used = ir.GlobalVariable(module, pointers, "llvm.compiler.used")
    used.linkage = "appending"
    used.section = "llvm.metadata"
    used.initializer = ir.Constant(pointers, functions)
    return module


SHT_ARM_ATTRIBUTES = 0x70000003
TAG_ABI_VFP_ARGS = 28


def declare_vfp_arguments(elf: bytes) -> bytes:
    """The 32-bit ARM object `elf` with Tag_ABI_VFP_args = 1 in its "aeabi" file attributes
    (the section is rewritten at the end of the file; its header points there)."""
    (section_offset,) = struct.unpack_from("<I", elf, 0x20)
    entry_size, count = struct.unpack_from("<HH", elf, 0x2E)
    for i in range(count):
        header = section_offset + i * entry_size
        kind, _, _, offset, size = struct.unpack_from("<IIIII", elf, header + 4)
        if kind == SHT_ARM_ATTRIBUTES:
            break
    else:
        raise ValueError("the object has no ARM build attributes")
    data = bytearray(elf[offset : offset + size])
    # 'A' | subsection length (u32) "aeabi\0" | Tag_File (1) | its length (u32) | tag, value ...
    (vendor_length,), (file_length,) = (
        struct.unpack_from("<I", data, 1),
        struct.unpack_from("<I", data, 12),
    )
    if data[:1] != b"A" or data[5:11] != b"aeabi\0" or data[11] != 1:
        raise ValueError("unexpected ARM build attributes")
    if 1 + vendor_length != len(data) or 11 + file_length != len(data):
        raise ValueError("the object's ARM attributes have more than one subsection")
    data += bytes([TAG_ABI_VFP_ARGS, 1])
    struct.pack_into("<I", data, 1, vendor_length + 2)
    struct.pack_into("<I", data, 12, file_length + 2)
    patched = bytearray(elf) + data
    struct.pack_into("<II", patched, header + 16, len(elf), len(data))
    return bytes(patched)
