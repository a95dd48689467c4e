"""The Executable: a compiled step, called like a function, one native call per step.

    Executable.build(graph)  ─►  simplify ─► fuse ─► plan_memory ─► emit LLVM ─► JIT
    step(x, y)               ─►  copy args into pre-bound buffers ─► <name>_call(args) ─► copy outputs

Arguments are copied into buffers bound once at build time (so a call costs one ctypes
call with one pointer argument, not a pointer lookup per array), parameters are read and
updated in their shared storage, and outputs are returned as fresh arrays. A call that
fails argument checking changes nothing. A lock makes concurrent calls safe: they share
the arena and the parameters.
"""

from __future__ import annotations

import ctypes
import re
import threading
import time

import numpy as np

from graphc.errors import DTypeError, InputError
from graphc.ir.graph import Graph
from graphc.passes import optimize
from graphc.passes.fusion import fuse
from graphc.passes.memory import ALIGN, plan_memory

STAGES = ("graph", "optimized", "fused", "memory", "llvm", "asm")


def aligned_empty(shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose data is 64-byte aligned."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    nbytes = max(count, 1) * dtype.itemsize  # a zero-size array still gets a valid pointer
    raw = np.empty(nbytes + ALIGN, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start : start + nbytes].view(dtype)[:count].reshape(shape)


def symbol_name(name: str) -> str:
    """A C identifier for the program name."""
    cleaned = re.sub(r"\W", "_", name)
    return cleaned if cleaned and not cleaned[0].isdigit() else f"g_{cleaned}"


class Executable:
    """A compiled program: `step(*inputs)` runs one inference or training step natively."""

    def __init__(
        self, graph, optimized, kernels, plan, module_text, engine, name, single_output, timings
    ):
        self.graph = graph
        self.optimized = optimized
        self.kernel_list = kernels
        self.plan = plan
        self.llvm_ir = module_text
        self.engine = engine
        self.name = name
        self.single_output = single_output
        self.timings = timings
        self._lock = threading.Lock()
        self._inputs = [aligned_empty(n.shape, n.type.np_dtype) for n in graph.inputs]
        self._outputs = [aligned_empty(n.shape, n.type.np_dtype) for n in graph.outputs]
        self._arena = aligned_empty((max(plan.arena_bytes, 1),), np.uint8)
        self._params = [n.attrs["storage"] for n in graph.params]
        self._bound_params = [None] * len(self._params)
        self._names = {n.name: i for i, n in enumerate(graph.inputs)}
        buffers = [self._arena, *([None] * len(self._params)), *self._inputs, *self._outputs]
        self._args = (ctypes.c_void_p * len(buffers))(
            *[0 if a is None else a.ctypes.data for a in buffers]
        )
        address = engine.address(f"{name}_call")
        self._call = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(address)
        # The fast path of __call__ (see there): everything it needs, looked up once.
        self._args_address = ctypes.addressof(self._args)  # an int converts faster than an array
        self._exact = tuple((n.shape, n.type.np_dtype) for n in graph.inputs)
        self._copy_in = tuple(buffer.__setitem__ for buffer in self._inputs)
        self._copy_out = tuple(out.copy for out in self._outputs)
        self._bind_params()

    # ---- construction ----
    @classmethod
    def build(cls, graph: Graph, *, single_output=False, opt=3, cache=True) -> Executable:
        from graphc.codegen.llvm import emit_program
        from graphc.runtime import jit

        timings = {}
        start = time.perf_counter()
        optimized = optimize(graph)
        kernels = fuse(optimized)
        plan = plan_memory(optimized, kernels)
        timings["passes"] = time.perf_counter() - start
        name = symbol_name(graph.name)
        start = time.perf_counter()
        module_text = str(emit_program(optimized, kernels, plan, name))
        timings["emit"] = time.perf_counter() - start
        engine = jit.compile_ir(
            module_text, opt=opt, cache=cache, required_symbols=[f"{name}_call"]
        )
        timings.update(engine.timings)
        return cls(
            graph, optimized, kernels, plan, module_text, engine, name, single_output, timings
        )

    # ---- calling ----
    def _bind_params(self):
        """Point the call at the current storage of every parameter (rebinds if replaced)."""
        for i, storage in enumerate(self._params):
            array = storage.value
            if array is not self._bound_params[i]:
                node = self.graph.params[i]
                if (
                    array.dtype != node.type.np_dtype
                    or array.shape != node.shape
                    or not array.flags.c_contiguous
                ):
                    array = np.ascontiguousarray(array, dtype=node.type.np_dtype).reshape(
                        node.shape
                    )
                    storage.value = array
                self._bound_params[i] = array
                self._args[1 + i] = array.ctypes.data

    def _arguments(self, args, kwargs) -> list:
        inputs = self.graph.inputs
        if len(args) > len(inputs):
            raise InputError(f"{self.name}: takes {len(inputs)} inputs, got {len(args)}")
        values = list(args) + [None] * (len(inputs) - len(args))
        for key, value in kwargs.items():
            index = self._names.get(key)
            if index is None:
                raise InputError(
                    f"{self.name}: unknown input {key!r}; inputs are {list(self._names)}"
                )
            if index < len(args):
                raise InputError(f"{self.name}: input {key!r} given twice")
            values[index] = value
        missing = [inputs[i].name for i, v in enumerate(values) if v is None]
        if missing:
            raise InputError(f"{self.name}: missing inputs {missing}")
        checked = []
        for node, value in zip(inputs, values):
            try:
                array = value if isinstance(value, np.ndarray) else np.asarray(value)
            except (TypeError, ValueError) as error:  # e.g. a ragged nested list
                raise InputError(f"{self.name}: input {node.name!r}: {error}") from None
            if array.shape != node.shape:
                raise InputError(
                    f"{self.name}: input {node.name!r} expects shape {node.shape} ({node.type}), "
                    f"got {array.shape}"
                )
            if array.dtype != node.type.np_dtype and not np.can_cast(
                array.dtype, node.type.np_dtype, "same_kind"
            ):
                raise DTypeError(
                    f"{self.name}: input {node.name!r} is {node.dtype}; cannot convert {array.dtype} "
                    f"(same_kind casting)"
                )
            checked.append(array)
        return checked

    def __call__(self, *args, **kwargs):
        # Fast path: every input given positionally as an ndarray of exactly the declared
        # dtype and shape (any strides) needs no conversion or check beyond these; anything
        # else takes the full path (_arguments: names, asarray, same_kind casting, errors).
        # `dtype is` relies on NumPy's canonical builtin dtypes; a miss only costs speed.
        exact = not kwargs and len(args) == len(self._exact)
        if exact:
            for value, (shape, dtype) in zip(args, self._exact):
                if type(value) is not np.ndarray or value.dtype is not dtype:
                    exact = False
                    break
                if value.shape != shape:
                    exact = False
                    break
        if not exact:
            return self._call_checked(self._arguments(args, kwargs))
        with self._lock:
            for copy_in, value in zip(self._copy_in, args):
                copy_in(..., value)
            for storage, bound in zip(self._params, self._bound_params):
                if storage.value is not bound:
                    self._bind_params()
                    break
            self._call(self._args_address)
            if self.single_output:
                return self._copy_out[0]()
            return [copy() for copy in self._copy_out]

    def _call_checked(self, arrays):
        with self._lock:
            for buffer, array in zip(self._inputs, arrays):
                np.copyto(buffer, array, casting="same_kind")
            self._bind_params()
            self._call(self._args_address)
            results = [copy() for copy in self._copy_out]
        return results[0] if self.single_output else results

    # ---- inspection ----
    @property
    def stages(self) -> tuple[str, ...]:
        return STAGES

    @property
    def memory(self):
        return self.plan

    @property
    def kernels(self) -> list[str]:
        return [k.name for k in self.kernel_list]

    def dump(self, stage: str = "graph") -> str:
        """The program at one stage: graph, optimized, fused, memory, llvm or asm."""
        from graphc.ir.printer import print_graph
        from graphc.passes.memory import format_plan

        if stage == "graph":
            return print_graph(self.graph)
        if stage == "optimized":
            return print_graph(self.optimized)
        if stage == "fused":
            return print_graph(self.optimized, self.kernel_list)
        if stage == "memory":
            return format_plan(self.plan, self.kernel_list)
        if stage == "llvm":
            return self.llvm_ir
        if stage == "asm":
            return self.engine.assembly()
        raise InputError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
