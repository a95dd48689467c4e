"""A native entry point Python calls directly: the step's argument checks in machine code.

A call through ctypes costs ~3 µs of Python for a step that may run in 1 µs (DESIGN §5:
"call overhead is part of the product"). This module emits a CPython *vectorcall* function
(`METH_FASTCALL | METH_KEYWORDS`) that the runtime wraps as a builtin function object, so
`step(x, y)` goes from the interpreter straight into machine code:

    entry(ctx, args, nargsf, kwnames):
      if kwnames or nargs != len(inputs): return fallback(*args, **kw)
      for each input i:  exact ndarray type, dtype object, shape, C-contiguous + aligned,
                         not overlapping a parameter the step updates -- else fallback
      for each param p:  p's Storage still holds the array bound in ctx -- else fallback
      outputs = [PyArray_NewFromDescr(ndarray, dtype_j, shape_j) for each output]
                                                       (fresh arrays, as the Python path)
      <name>_call([arena, param data..., input data..., output data...])
      return outputs[0] or the list of outputs

"fallback" is the Python call path, which converts, copies, rebinds parameters or raises
the errors naming the input; the native entry never raises an error of its own except one
an output allocation raised. Inputs are read in place, never copied.

Everything that differs between processes or executables -- addresses of Python objects,
of CPython functions, of the compiled step -- is read from the context `ctx` (a uint64
ndarray: its data pointer at PyArrayObject offset 16), so the code depends only on the
*signature*: shapes and dtypes of the arguments and which parameters the step updates. The
runtime compiles it once per signature (and the object cache keeps it across processes).

Layout knowledge baked in (checked against the running interpreter by the runtime before it
uses the entry, see runtime/python_entry.py): PyObject is (refcount, type); PyArrayObject's
data, nd, dimensions, descr and flags sit at ARRAY_FIELDS; a Storage object holds its
`value` at a fixed slot offset; the context holds NumPy's PyArray_NewFromDescr (from its C
API table), which makes an output in ~40 ns where calling np.empty from here took ~150 ns.
The GIL is held throughout: the runtime gives the entry only to short steps, and calls on
one executable are serialized by it.
"""

from __future__ import annotations

from dataclasses import dataclass

from llvmlite import ir

I32 = ir.IntType(32)
I64 = ir.IntType(64)
PTR = ir.PointerType()
VOID = ir.VoidType()

# Byte offsets in numpy's PyArrayObject_fields (numpy/ndarraytypes.h, stable since 1.7).
ARRAY_FIELDS = {"type": 8, "data": 16, "nd": 24, "dimensions": 32, "descr": 56, "flags": 64}
C_CONTIGUOUS, ALIGNED = 0x1, 0x100  # NPY_ARRAY_C_CONTIGUOUS, NPY_ARRAY_ALIGNED

# The context: fixed slots, then per input its dtype object, per output its dtype object,
# per parameter (Storage object, bound array, its data).
CTX_NDARRAY, CTX_VECTORCALL, CTX_NEW_ARRAY, CTX_LIST_NEW, CTX_LIST_SET_ITEM = range(5)
CTX_DECREF, CTX_FALLBACK, CTX_STEP, CTX_ARENA, CTX_INCREF = range(5, 10)
CTX_FIXED = 10


@dataclass(frozen=True)
class Signature:
    """What the entry's code depends on."""

    inputs: tuple[tuple[tuple[int, ...], int], ...]  # (shape, nbytes) per input
    outputs: tuple[tuple[int, ...], ...]  # shape per output
    params: tuple[int, ...]  # nbytes per parameter
    updated: tuple[int, ...]  # indices of the parameters the step writes
    single_output: bool
    value_offset: int  # where a Storage object holds its `value`

    def ctx_size(self) -> int:
        return CTX_FIXED + len(self.inputs) + len(self.outputs) + 3 * len(self.params)

    def input_slot(self, i: int) -> int:
        return CTX_FIXED + i

    def output_slot(self, j: int) -> int:
        return CTX_FIXED + len(self.inputs) + j

    def param_slots(self, p: int) -> tuple[int, int, int]:
        """(Storage object, bound array, bound data) slots of parameter p."""
        base = CTX_FIXED + len(self.inputs) + len(self.outputs) + 3 * p
        return base, base + 1, base + 2


ENTRY = "graphc_python_entry"


def emit_python_entry(sig: Signature) -> ir.Module:
    """The module defining `PyObject *graphc_python_entry(ctx, args, nargsf, kwnames)`."""
    module = ir.Module(name="python_entry")
    fn = ir.Function(module, ir.FunctionType(PTR, [PTR, PTR, I64, PTR]), ENTRY)
    ctx_object, args, nargsf, kwnames = fn.args
    b = ir.IRBuilder(fn.append_basic_block("entry"))
    fallback_block = fn.append_basic_block("fallback")

    def field(base, offset: int, typ=PTR):
        return b.load(b.gep(base, [I64(offset)], source_etype=ir.IntType(8)), typ=typ)

    ctx = field(ctx_object, ARRAY_FIELDS["data"])

    def slot(index: int, typ=PTR):
        return b.load(b.gep(ctx, [I64(index)], source_etype=I64), typ=typ)

    def call(pointer, returns: ir.Type, *arguments):
        """An indirect call of the function at `pointer`."""
        ftype = ir.FunctionType(returns, [a.type for a in arguments])
        return b.call(_Pointer(pointer, ftype), arguments)

    def require(condition, what: str):
        """Continue if `condition`, else take the Python path."""
        ok = fn.append_basic_block(f"{what}.ok")
        b.cbranch(condition, ok, fallback_block)
        b.position_at_end(ok)

    nargs = b.and_(nargsf, I64(2**63 - 1))  # PY_VECTORCALL_ARGUMENTS_OFFSET is the top bit
    plain = b.and_(
        b.icmp_unsigned("==", kwnames, PTR(None)),
        b.icmp_unsigned("==", nargs, I64(len(sig.inputs))),
    )
    require(plain, "positional")
    for p in range(len(sig.params)):  # a replaced parameter array is rebound in Python
        storage, bound, _ = sig.param_slots(p)
        current = field(slot(storage), sig.value_offset, I64)
        require(b.icmp_unsigned("==", current, slot(bound, I64)), f"param{p}.bound")
    data = []
    for i, (shape, nbytes) in enumerate(sig.inputs):
        array = b.load(b.gep(args, [I64(i)], source_etype=PTR), typ=PTR)
        same_type = b.icmp_unsigned(
            "==", field(array, ARRAY_FIELDS["type"], I64), slot(CTX_NDARRAY, I64)
        )
        require(same_type, f"input{i}.ndarray")
        same_dtype = b.icmp_unsigned(
            "==", field(array, ARRAY_FIELDS["descr"], I64), slot(sig.input_slot(i), I64)
        )
        flags = b.and_(field(array, ARRAY_FIELDS["flags"], I32), I32(C_CONTIGUOUS | ALIGNED))
        ok = b.and_(same_dtype, b.icmp_unsigned("==", flags, I32(C_CONTIGUOUS | ALIGNED)))
        ok = b.and_(
            ok, b.icmp_unsigned("==", field(array, ARRAY_FIELDS["nd"], I32), I32(len(shape)))
        )
        require(ok, f"input{i}.dtype")
        if shape:
            dims = field(array, ARRAY_FIELDS["dimensions"])
            ok = ir.Constant(ir.IntType(1), 1)
            for d, size in enumerate(shape):
                extent = b.load(b.gep(dims, [I64(d)], source_etype=I64), typ=I64)
                ok = b.and_(ok, b.icmp_unsigned("==", extent, I64(size)))
            require(ok, f"input{i}.shape")
        address = field(array, ARRAY_FIELDS["data"], I64)
        for p in sig.updated:  # the step must not read an input it is overwriting
            if nbytes and sig.params[p]:
                start = slot(sig.param_slots(p)[2], I64)
                disjoint = b.or_(
                    b.icmp_unsigned("<=", b.add(address, I64(nbytes)), start),
                    b.icmp_unsigned("<=", b.add(start, I64(sig.params[p])), address),
                )
                require(disjoint, f"input{i}.apart{p}")
        data.append(b.inttoptr(address, PTR))

    new_array, incref, decref = slot(CTX_NEW_ARRAY), slot(CTX_INCREF), slot(CTX_DECREF)
    outputs = []
    for j, shape in enumerate(sig.outputs):
        dims = ir.GlobalVariable(module, ir.ArrayType(I64, len(shape)), f"output{j}.shape")
        dims.initializer = ir.Constant(dims.value_type, list(shape))
        dims.global_constant = True
        dtype = slot(sig.output_slot(j))
        call(incref, VOID, dtype)  # PyArray_NewFromDescr steals a reference to the dtype
        array = call(new_array, PTR, slot(CTX_NDARRAY), dtype, I32(len(shape)), dims,
                     PTR(None), PTR(None), I32(0), PTR(None))  # fmt: skip
        made = fn.append_basic_block(f"output{j}.made")
        failed = fn.append_basic_block(f"output{j}.failed")
        b.cbranch(b.icmp_unsigned("==", array, PTR(None)), failed, made)
        b.position_at_end(failed)
        for earlier in outputs:
            call(decref, VOID, earlier)
        b.ret(PTR(None))  # the allocator's exception propagates
        b.position_at_end(made)
        outputs.append(array)

    pointers = [slot(CTX_ARENA)]
    pointers += [slot(sig.param_slots(p)[2]) for p in range(len(sig.params))]
    pointers += data + [field(o, ARRAY_FIELDS["data"]) for o in outputs]
    block = b.alloca(PTR, size=len(pointers))
    for k, pointer in enumerate(pointers):
        b.store(pointer, b.gep(block, [I64(k)], source_etype=PTR))
    call(slot(CTX_STEP), VOID, block)
    if sig.single_output:
        b.ret(outputs[0])
    else:
        result = call(slot(CTX_LIST_NEW), PTR, I64(len(outputs)))
        made = fn.append_basic_block("list.made")
        failed = fn.append_basic_block("list.failed")
        b.cbranch(b.icmp_unsigned("==", result, PTR(None)), failed, made)
        b.position_at_end(failed)
        for array in outputs:
            call(decref, VOID, array)
        b.ret(PTR(None))
        b.position_at_end(made)
        set_item = slot(CTX_LIST_SET_ITEM)
        for j, array in enumerate(outputs):  # steals the reference; cannot fail here
            call(set_item, I32, result, I64(j), array)
        b.ret(result)

    b.position_at_end(fallback_block)
    fallback = call(slot(CTX_VECTORCALL), PTR, slot(CTX_FALLBACK), args, nargsf, kwnames)
    b.ret(fallback)
    return module


class _Pointer:
    """A function pointer as a call's callee: llvmlite finds the signature of an indirect
    call on the callee's (typed) pointer type, and LLVM 22 pointers are opaque."""

    def __init__(self, value: ir.Value, ftype: ir.FunctionType):
        self.value, self.function_type, self.type = value, ftype, PTR

    def get_reference(self) -> str:
        return self.value.get_reference()
