# Over 500 lines on purpose: the call path is generated from the executable's own buffers and
# locks, and copies and pickling must rebuild exactly those; one class keeps them together.
"""The Executable: a compiled step, called like a function, one native call per step.

    Executable.build(graph) ─► cache key of the printed graph ─► hit: load the object, done
                               miss: simplify ─► fuse ─► plan_memory ─► emit LLVM ─► JIT
    step(x, y)              ─► small args copied into pre-bound buffers, large ones passed by
                               pointer ─► <name>_call(args) ─► outputs copied out (small) or
                               written straight into fresh arrays (large)

The cache key is the printed input graph without its source locations (plus the compiler's
sources, host, versions: see jit.cache_key), so a cache hit runs no graph pass and builds no
LLVM IR, and a model built from other lines or another directory still hits; the optimized
graph, kernels, memory plan and IR of such an executable are computed on first use (dumps,
AOT), with its own locations.

Pickled, an executable carries its graph, parameter values and machine code; unpickled in a
process that would compile the same code (same cache key: CPU, features, versions ...) it
maps that code like a cache hit, without LLVM, else it compiles (see "pickling" below).

A call is one ctypes call with one pointer argument: the block of argument addresses
[arena, params..., inputs..., outputs...] is bound once. Built with `steps=K`, the call
enters `<name>_steps` (codegen/steps.py) instead of `<name>_call`, and the inputs and outputs
it binds are stacked K deep (`stacked`); the rest of this is the same. An input or output
of fewer than LARGE_BYTES goes through a buffer bound at build time (a copy costs less than
looking up an array's address from Python); a larger one is passed by address — the caller's
array itself if it is C-contiguous, of the exact dtype, aligned to its itemsize and not
overlapping a parameter the step updates (kernels only write the arena, outputs and updated
parameters), and a fresh np.empty result for an output. Parameters are read and updated in
their shared storage, and outputs are always fresh arrays. A call that fails argument
checking changes nothing. A lock makes concurrent calls safe: they share the arena, the
argument block and the parameters.

The call itself is a Python function generated for each executable (`_specialize`),
unrolled over its arguments and parameters, with everything it touches in closure cells: the
overhead of a small step is a few attribute loads and identity checks around the copies.
Each executable has a class of its own (a subclass of Executable) whose `__call__` is that
function, so `step(x, y)` enters it directly. Its parameters are positional-only and default
to a sentinel: arguments given by name, missing, extra, or not exact ndarrays fail one of
its checks and take the slow path (`_fallback`), which reorders a call by name onto the fast
path and hands anything else to `_call_checked` to convert or refuse.

    step(xv, yv)  ─► type(step).__call__(step, a0=xv, a1=yv, /, *rest, **named)
                     ─► exact ndarrays, no extras: lock, copy in, native(slots), copy out
                     ─► else _fallback ─► by name: step(*in input order) | _call_checked

A small step (at most NATIVE_ENTRY_MAX_BYTES of arena, parameters and arguments) goes one
step further: its class's `__call__` is a builtin function made from a native entry
(codegen/python_entry.py, runtime/python_entry.py) that checks the arguments in machine code,
reads exact arrays in place and calls `<name>_call` itself, holding the GIL; any call it does
not take it hands, unchanged, to the Python path above (`_call_python`), whose ctypes call
then holds the GIL too, so the two never run the step at once.

    step(xv, yv)  ─► builtin entry ─► exact, aligned, C-contiguous arrays and parameters
                                      still bound: <name>_call(arena, params, xv, yv, fresh)
                                   ─► else _call_python(step, xv, yv)  (the path above)
"""

from __future__ import annotations

import copy
import ctypes
import dataclasses
import functools
import re
import threading
import time
import weakref

import numpy as np

from graphc.codegen.python_entry import Signature
from graphc.errors import CompileError, DTypeError, InputError
from graphc.ir.graph import Graph, Node
from graphc.ir.printer import print_graph
from graphc.ir.types import TensorType
from graphc.passes import lower
from graphc.passes.kernels import checks, is_checked
from graphc.passes.memory import ALIGN, format_plan
from graphc.runtime import jit, python_entry

STAGES = ("graph", "optimized", "fused", "memory", "llvm", "asm")
# Arguments of at least this many bytes are passed by address instead of copied: binding an
# array's address costs as much as copying 32 KiB (~1.3 µs; docs/performance.md).
LARGE_BYTES = 32 * 1024
# Steps touching at most this many bytes (arena, parameters, arguments: up to ~1 ms of work,
# a fifth of Python's thread switch interval) are called through a native entry that holds
# the GIL; larger ones release it.
NATIVE_ENTRY_MAX_BYTES = 1024 * 1024


def aligned_empty(shape, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose data is 64-byte aligned."""
    dtype = np.dtype(dtype)
    count = int(np.prod(shape))
    nbytes = max(count, 1) * dtype.itemsize  # a zero-size array still gets a valid pointer
    raw = np.empty(nbytes + ALIGN, dtype=np.uint8)
    start = -raw.ctypes.data % ALIGN
    return raw[start : start + nbytes].view(dtype)[:count].reshape(shape)


def symbol_name(name: str) -> str:
    """An ASCII C identifier for the program name (LLVM symbols and C headers are ASCII)."""
    cleaned = re.sub(r"[^0-9A-Za-z_]", "_", name)
    return cleaned if cleaned and not cleaned[0].isdigit() else f"g_{cleaned}"


def _narrowing_int(given: np.dtype, wanted: np.dtype) -> bool:
    """An integer argument converted to an integer dtype that may not hold its values."""
    if given.kind not in "iu" or wanted.kind not in "iu" or given == wanted:
        return False
    return not np.can_cast(given, wanted, "safe")


# Executables that update the same parameters share one lock, so that two of them called
# from two threads (copies, or one model compiled twice) never lose an update. Keyed weakly
# by Storage: a set of parameters and its lock go away together.
_STATE_LOCKS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_STATE_LOCKS_GUARD = threading.Lock()


def _state_lock(storages) -> threading.Lock:
    """The lock of the executables updating `storages`: the one they already share, else a
    new one that all of them now map to. (Executables whose updated parameters only partly
    overlap, compiled before this one, keep their own lock.)"""
    with _STATE_LOCKS_GUARD:
        found = {id(lock): lock for s in storages if (lock := _STATE_LOCKS.get(s)) is not None}
        lock = next(iter(found.values())) if len(found) == 1 else threading.Lock()
        for storage in storages:
            _STATE_LOCKS[storage] = lock
        return lock


def check_steps(steps) -> int:
    """`steps` if it is a positive int (steps per call), else an InputError."""
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise InputError(f"steps must be a positive integer (steps per call), got {steps!r}")
    return int(steps)


def entry_symbol(name: str, steps: int) -> str:
    """The native function a call of `steps` steps enters (codegen/steps.py)."""
    return f"{name}_call" if steps == 1 else f"{name}_steps"


def stacked(nodes, steps: int) -> tuple[Node, ...]:
    """`nodes` as a call of `steps` steps takes or returns them: stacked on a new leading
    axis of length `steps` (the nodes themselves for one step)."""
    if steps == 1:
        return tuple(nodes)
    return tuple(
        dataclasses.replace(n, inputs=(), type=TensorType((steps, *n.shape), n.dtype))
        for n in nodes
    )


class Lowering:
    """The compiler's intermediate forms of one graph, each computed on first use."""

    def __init__(self, graph: Graph, name: str, steps: int = 1):
        self.graph = graph
        self.name = name
        self.steps = steps

    @functools.cached_property
    def passes(self):
        """(optimized graph, kernels, memory plan)."""
        return lower(self.graph)

    @functools.cached_property
    def llvm_ir(self) -> str:
        return self.llvm_ir_for(None)

    def llvm_ir_for(self, cpu) -> str:
        """The LLVM IR of the program tuned for `cpu` (a codegen Target; None: the JIT's)."""
        # imported on first use: a cache hit emits no IR, and `import graphc` need not load codegen
        from graphc.codegen.llvm import emit_program
        from graphc.codegen.steps import add_steps_entry

        module = emit_program(*self.passes, self.name, cpu=cpu)
        if self.steps > 1:  # (a plan has a status word if its program checks indices)
            status = getattr(self.passes[2], "status", None)
            add_steps_entry(module, self.name, self.graph, self.steps, status)
        return str(module)

    def metadata(self) -> dict:
        """What running the compiled code needs besides the code (stored in the cache entry)."""
        _, kernels, plan = self.passes
        return {
            "arena_bytes": plan.arena_bytes,
            "kernels": [k.name for k in kernels],
            # where the index checks report, and what each status number means
            "status": plan.status,
            "checks": [_checked_ops(k) for k in kernels if checks(k)],
        }


def _checked_ops(kernel) -> str:
    """What a kernel that checks indices checks: its ops, their axes and the user's lines."""
    sites = dict.fromkeys(_checked_site(n) for n in kernel.nodes if is_checked(n))
    return f"kernel {kernel.name}: " + "; ".join(sites)


def _checked_site(node) -> str:
    """An op that checks indices, and where; a loop (gc.scan): the ops of its body."""
    body = node.attrs.get("body")
    if body is not None:
        inside = dict.fromkeys(_checked_site(n) for n in body.nodes if is_checked(n))
        return f"{node.op} of body {body.name} (at {node.loc or '?'}): " + "; ".join(inside)
    axis = node.attrs["axis"]
    return f"{node.op} from axis {axis} of size {node.inputs[0].shape[axis]} (at {node.loc or '?'})"


class Executable:
    """A compiled program: `step(*inputs)` runs one inference or training step natively
    (or `steps` of them, over inputs and outputs stacked on a leading axis of that length)."""

    def __init__(self, graph, lowering, engine, name, single_output, timings):
        self.graph = graph
        self.steps = lowering.steps
        # what a call takes and returns: the graph's inputs and outputs, stacked for K steps
        self._in_nodes = stacked(graph.inputs, self.steps)
        self._out_nodes = stacked(graph.outputs, self.steps)
        self.engine = engine
        self.name = name
        self.single_output = single_output
        self.timings = timings
        self._lowering = lowering
        self._metadata = engine.metadata
        self._inputs = [aligned_empty(n.shape, n.type.np_dtype) for n in self._in_nodes]
        self._outputs = [aligned_empty(n.shape, n.type.np_dtype) for n in self._out_nodes]
        self._arena = aligned_empty((max(self._metadata["arena_bytes"], 1),), np.uint8)
        # the run-time status word of a program that checks indices (codegen/llvm.py): 0, or
        # the number of the checked kernel that met an index out of range
        status = self._metadata.get("status")
        self._status = None if status is None else self._arena[status : status + 4].view(np.int32)
        if self._status is not None:
            self._status[0] = 0
        self._params = [n.attrs["storage"] for n in graph.params]
        self._bound_params = [None] * len(self._params)
        updated = {p for p, _ in graph.updates}
        self._updated = [i for i, p in enumerate(graph.params) if p in updated]
        updated_storages = [self._params[i] for i in self._updated]
        self._lock = _state_lock(updated_storages) if updated_storages else threading.Lock()
        self._state_spans: list[tuple[int, int]] = []  # address ranges of updated params
        self._input_names = tuple(n.name for n in graph.inputs)
        self._names = {name: i for i, name in enumerate(self._input_names)}
        self._dtypes = [n.type.np_dtype for n in graph.inputs]  # np_dtype costs ~0.7 µs a time
        buffers = [self._arena, *([None] * len(self._params)), *self._inputs, *self._outputs]
        self._args = (ctypes.c_void_p * len(buffers))(
            *[0 if a is None else a.ctypes.data for a in buffers]
        )
        # A small step gets a native entry (see _native_entry), which runs the step holding
        # the GIL; so must the Python path then, or the two could run it at once.
        self._native = None
        small = self._touched_bytes() <= NATIVE_ENTRY_MAX_BYTES and python_entry.supported()
        # (the native entry does not read the status word: a program that checks indices
        # takes the Python path, which does)
        native = small and self._status is None
        # No argtypes: ctypes then passes the argument block by reference, the cheapest
        # conversion (docs/performance.md)
        prototype = ctypes.PYFUNCTYPE(None) if small else ctypes.CFUNCTYPE(None)
        self._call = prototype(engine.address(entry_symbol(name, self.steps)))
        self._call.argtypes = None
        self._bind_params()
        # A class of its own, whose __call__ is the function _specialize generates: the
        # interpreter calls it directly, with no Python frame or property in between. A class
        # is always in a reference cycle (its __mro__ holds it), so when this executable dies
        # the generated function and the buffers it closes over are dropped right away rather
        # than by the cycle collector.
        self.__class__ = type(type(self).__name__, (type(self),), {"__slots__": ()})
        weakref.finalize(self, _forget_generated, type(self))
        if native:
            self._native = self._native_entry()
        self._specialize()

    # ---- construction ----
    @classmethod
    def build(
        cls, graph: Graph, *, single_output=False, opt=None, cache=True, steps=1
    ) -> Executable:
        """Compile `graph` (through the object cache if `cache`), `steps` steps per call."""
        opt = jit.DEFAULT_OPT if opt is None else opt
        steps = check_steps(steps)
        name = symbol_name(graph.name)
        lowering = Lowering(graph, name, steps)
        entry = [entry_symbol(name, steps)]
        timings, engine, key = {}, None, None
        if cache:
            start = time.perf_counter()
            key = _key(graph, opt, steps)
            timings["key"] = time.perf_counter() - start
            engine = jit.load_cached(
                key, opt=opt, llvm_ir=_lazy_llvm_ir(lowering), required_symbols=entry
            )
        if engine is None:
            start = time.perf_counter()
            lowering.passes  # noqa: B018 - computed here to time it
            timings["passes"] = time.perf_counter() - start
            start = time.perf_counter()
            llvm_ir = lowering.llvm_ir
            timings["emit"] = time.perf_counter() - start
            engine = jit.compile_ir(
                llvm_ir,
                opt=opt,
                cache=cache,
                key=key,
                metadata=lowering.metadata(),
                required_symbols=entry,
            )
        timings.update(engine.timings)
        return cls(graph, lowering, engine, name, single_output, timings)

    # ---- calling ----
    def __call__(self, *args, **kwargs):
        """Run one step (replaced, in each executable's own class, by the generated call)."""
        return self._call_checked(args, kwargs)

    def _specialize(self):
        """Generate this executable's call methods into its own class: `__call__(self, a0, ...,
        /, *rest, **named)` (the fast path for exact ndarrays given by position, else
        `_call_checked`) and `_run(self, *arrays)` (arrays of the exact dtypes and shapes, any
        strides), unrolled over arguments and parameters."""
        in_nodes, out_nodes = self._in_nodes, self._out_nodes
        cells = {
            "ndarray": np.ndarray,
            "missing": _MISSING,
            "fallback": _fallback,
            "empty": np.empty,
            "aligned_empty": aligned_empty,
            "address_of": _address_of,
            "acquire": self._lock.acquire,
            "release": self._lock.release,
            "native": self._call,
            "slots": self._args,
            "shares_state": _shares_state,
            "state_spans": self._state_spans,
        }
        first_input = 1 + len(self._params)
        first_output = first_input + len(in_nodes)
        names = [f"a{i}" for i in range(len(in_nodes))]
        checks, body, results = ["rest", "named"], [], []
        restore = []  # after the call, the block points at the bound buffers again, never at
        # arrays the executable does not own
        for i, (node, buffer) in enumerate(zip(in_nodes, self._inputs)):
            a, slot = names[i], first_input + i
            cells |= {f"s{i}": node.shape, f"t{i}": node.type.np_dtype}
            cells[f"in{i}"] = buffer
            checks.append(f"type({a}) is not ndarray or {a}.dtype is not t{i} or {a}.shape != s{i}")
            if node.type.nbytes < LARGE_BYTES:
                body.append(f"in{i}[...] = {a}")  # STORE_SUBSCR: faster than __setitem__
                continue
            by_address = f"(at := address_of({a})) % {node.type.np_dtype.itemsize} == 0"
            if self._updated:
                by_address += f" and not shares_state(state_spans, at, {node.type.nbytes})"
            body += [
                f"if {a}.flags.c_contiguous and {by_address}:",
                f"    slots[{slot}] = at",
                "else:",
                f"    in{i}[...] = {a}",
                f"    slots[{slot}] = {buffer.ctypes.data}",
            ]
            restore.append(f"slots[{slot}] = {buffer.ctypes.data}")
        changed = " or ".join(f"p{i}.value is not b{i}" for i in range(len(self._params)))
        for i, (storage, bound) in enumerate(zip(self._params, self._bound_params)):
            cells |= {f"p{i}": storage, f"b{i}": bound}
        if changed:
            body += [f"if {changed}:", "    self._rebind()"]
        for j, (node, buffer) in enumerate(zip(out_nodes, self._outputs)):
            if node.type.nbytes < LARGE_BYTES:
                cells[f"copy{j}"] = buffer.copy
                results.append(f"r{j} = copy{j}()")
                continue
            cells |= {f"u{j}": node.shape, f"d{j}": node.type.np_dtype}
            body += [
                f"r{j} = empty(u{j}, d{j})",
                f"if (at := address_of(r{j})) % {node.type.np_dtype.itemsize}:",
                f"    r{j} = aligned_empty(u{j}, d{j})",
                f"    at = r{j}.ctypes.data",
                f"slots[{first_output + j}] = at",
            ]
            restore.append(f"slots[{first_output + j}] = {buffer.ctypes.data}")
        body += ["native(slots)", *results]
        if self._status is not None:  # an index out of range: the step stopped, raise
            cells |= {"status": self._status, "out_of_range": self._out_of_range}
            body.insert(body.index("native(slots)") + 1, "if status[0]: out_of_range()")
        outputs = [f"r{j}" for j in range(len(out_nodes))]
        result = outputs[0] if self.single_output else "[" + ", ".join(outputs) + "]"
        run = [
            "acquire()",
            "try:",
            *["    " + line for line in body],
            "finally:",
            *["    " + line for line in restore],
            "    release()",
            f"return {result}",
        ]
        # Positional-only parameters defaulting to `missing`: a call by name, a missing or an
        # extra argument fails the checks and goes to _call_checked, which names the input.
        parameters = "".join(f"{a}=missing, " for a in names) + ("/, " if names else "")
        given = "(" + "".join(f"{a}, " for a in names) + ")"
        call = [
            "if " + " or ".join(checks) + ":",
            f"    return fallback(self, {given}, rest, named)",
        ]
        source = "\n".join(
            [
                f"def make({', '.join(cells)}):",
                f"    def call(self, {parameters}*rest, **named):",
                *["        " + line for line in call + run],
                f"    def run({', '.join(['self', *names])}):",
                *["        " + line for line in run],
                "    return call, run",
            ]
        )
        namespace: dict = {}
        exec(compile(source, f"<graphc call of {self.name}>", "exec"), namespace)  # noqa: S102
        self._call_source = source  # for debugging: the generated code
        call, run = namespace["make"](**cells)
        type(self)._call_python, type(self)._run = call, run
        type(self).__call__ = call if self._native is None else self._native.function

    def _out_of_range(self) -> None:
        """Raise the InputError of a failed index check (and clear the status word)."""
        code = int(self._status[0])
        self._status[0] = 0
        checks = self._metadata.get("checks") or ["?"]
        raise InputError(
            f"{self.name}: an index is out of range in {checks[min(code, len(checks)) - 1]}. "
            f"The step stopped after that kernel: no outputs, and only the state updates of "
            f"earlier kernels were applied (gc.evaluate on the same values names the index)"
        )

    def _touched_bytes(self) -> int:
        """Bytes of memory a step reads or writes at most: arena, parameters and arguments."""
        graph = self.graph
        arguments = (*graph.params, *self._in_nodes, *self._out_nodes)
        return self._metadata["arena_bytes"] + sum(n.type.nbytes for n in arguments)

    def _native_entry(self) -> python_entry.NativeEntry:
        """The builtin that runs a step from the interpreter with no Python in between
        (codegen/python_entry.py): the arguments are checked in machine code, exact arrays
        are read in place and anything else takes the Python path, `_call_python`."""
        graph = self.graph
        signature = Signature(
            inputs=tuple((n.shape, n.type.nbytes) for n in self._in_nodes),
            outputs=tuple(n.shape for n in self._out_nodes),
            params=tuple(n.type.nbytes for n in graph.params),
            updated=tuple(self._updated),
            single_output=self.single_output,
            value_offset=python_entry.storage_value_offset(),
        )
        return python_entry.NativeEntry(
            signature,
            step=self.engine.address(entry_symbol(self.name, self.steps)),
            arena=self._arena,
            # through a weak reference: the entry lives in this executable's class
            fallback=functools.partial(_call_python, weakref.ref(self)),
            input_dtypes=self._dtypes,
            outputs=[n.type.np_dtype for n in self._out_nodes],
            storages=self._params,
            bound=self._bound_params,
            keep=(self.engine,),
        )

    def _rebind(self) -> None:
        """Called when a parameter's storage was replaced: bind it, regenerate the call."""
        if self._bind_params():
            self._specialize()

    def _bind_params(self) -> bool:
        """Point the call at the current storage of every parameter; whether any changed."""
        changed = False
        for i, storage in enumerate(self._params):
            array = storage.value
            if array is not self._bound_params[i]:
                node = self.graph.params[i]
                if i in self._updated and not array.flags.writeable:
                    raise InputError(
                        f"{self.name}: param {node.name!r} is updated in place by this step, "
                        f"but its array is read-only; give it a writeable one (value.copy())"
                    )
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
                if self._native is not None:
                    self._native.bind(i, array)
                changed = True
        if changed:
            spans = [
                (a.ctypes.data, a.nbytes)
                for a in map(self._bound_params.__getitem__, self._updated)
            ]
            self._state_spans = [(address, address + nbytes) for address, nbytes in spans]
        return changed

    def _arguments(self, args, kwargs) -> list:
        inputs = self._in_nodes
        if len(args) > len(inputs):
            raise InputError(f"{self.name}: takes {len(inputs)} inputs, got {len(args)}")
        values = list(args) + [_MISSING] * (len(inputs) - len(args))
        for key, value in kwargs.items():
            index = self._names.get(key)
            if index is None:
                raise InputError(
                    f"{self.name}: unknown input {key!r}; inputs are {list(self._names)}"
                )
            if index < len(args):
                raise InputError(f"{self.name}: input {key!r} given twice")
            values[index] = value
        missing = [inputs[i].name for i, v in enumerate(values) if v is _MISSING]
        if missing:
            raise InputError(f"{self.name}: missing inputs {missing}")
        checked = []
        for node, dtype, value in zip(inputs, self._dtypes, values):
            if value is None:  # not a missing argument, nor a 0-d array of dtype object
                raise InputError(f"{self._expects(node)}, got None")
            try:
                array = value if isinstance(value, np.ndarray) else np.asarray(value)
            except (TypeError, ValueError) as error:  # e.g. a ragged nested list
                raise InputError(f"{self.name}: input {node.name!r}: {error}") from None
            if array.dtype.kind not in "biufc":  # strings, objects, dates: not numbers
                given = (
                    f"an array of {array.dtype}"
                    if value is array
                    else f"a {type(value).__name__} ({array.dtype})"
                )
                raise DTypeError(
                    f"{self.name}: input {node.name!r} is {node.type}; got {given}, not numbers"
                )
            if array.shape != node.shape:
                raise InputError(f"{self._expects(node)}, got {array.shape}")
            if array.dtype != dtype and not np.can_cast(array.dtype, dtype, "same_kind"):
                raise DTypeError(
                    f"{self.name}: input {node.name!r} is {node.dtype}; "
                    f"cannot convert {array.dtype} (same_kind casting)"
                )
            if _narrowing_int(array.dtype, dtype) and array.size:
                info = np.iinfo(dtype)
                low, high = array.min(), array.max()
                if low < info.min or high > info.max:  # astype would wrap around silently
                    raise InputError(
                        f"{self.name}: input {node.name!r} is {node.dtype}; values "
                        f"{low}..{high} of the {array.dtype} argument do not fit"
                    )
            checked.append(array)
        return checked

    def _expects(self, node) -> str:
        return f"{self.name}: input {node.name!r} expects shape {node.shape} ({node.type})"

    def _call_checked(self, args, kwargs):
        """Any call the fast path does not take: names, conversions, errors."""
        arrays = self._arguments(args, kwargs)
        # same_kind casting was checked; asarray also drops subclasses and other byte orders
        return self._run(*[np.asarray(a, dtype=t) for a, t in zip(arrays, self._dtypes)])

    # ---- what it is ----
    @property
    def inputs(self) -> tuple[Node, ...]:
        """The inputs of a call, in order (nodes: `.name`, `.shape`, `.dtype`; stacked on a
        leading axis of length `steps` when a call runs several steps)."""
        return self._in_nodes

    @property
    def outputs(self) -> tuple[Node, ...]:
        """The outputs a call returns, in order (stacked like the inputs)."""
        return self._out_nodes

    def __repr__(self) -> str:
        def values(nodes) -> str:
            return ", ".join(f"{n.name or '?'}: {n.type}" for n in nodes)

        arena = self._metadata["arena_bytes"]
        kernels = len(self._metadata.get("kernels", ()))
        updates = f", updates {len(self._updated)} params" if self._updated else ""
        updates += f", {self.steps} steps per call" if self.steps > 1 else ""
        return (
            f"<Executable {self.name}({values(self.inputs)}) -> ({values(self.outputs)}): "
            f"{kernels} kernels, arena {arena} bytes{updates}>"
        )

    # ---- copies ----
    # An executable is its graph, its machine code and its buffers (arena, argument block, the
    # generated call bound to them). A copy gets buffers and a generated call of its own and
    # shares the machine code, which is reentrant: only the parameters are a real choice.
    def __copy__(self) -> Executable:
        """Another executable of the same program sharing the parameters, as if compiled again
        (DESIGN §6: executables of one model share parameter storage, and the lock that keeps
        their updates whole when they are called from several threads)."""
        return self._sibling(self.graph, self._lowering)

    def __deepcopy__(self, memo: dict) -> Executable:
        """An executable with parameters of its own, copies of the current values. Through
        `memo`, parameter Tensors copied in the same deepcopy are the copy's: after
        `model2, step2 = copy.deepcopy((model, step))`, step2 trains model2's weights."""
        graph = _copy_graph(self.graph, memo)
        return self._sibling(graph, Lowering(graph, self.name, self.steps))

    def _sibling(self, graph: Graph, lowering: Lowering) -> Executable:
        cls = type(self).__bases__[0]  # the class this executable's own class was made from
        return cls(graph, lowering, self.engine, self.name, self.single_output, dict(self.timings))

    # ---- pickling ----
    # Pickled, an executable is its graph (the nodes as a flat table, params with their current
    # values) and its machine code: its Engine's, its native entry's and the thread pool's if
    # it calls it, each pickled as a jit.ObjectCode (object file, CPU, cache key). Unpickling
    # builds the graph again inside `jit.received(code)`: where this process computes the same
    # cache key (same CPU and features, GRAPHC_CPU, graphc and LLVM versions ...) the build
    # maps the received code, as after a cache hit, with no LLVM compile; elsewhere it
    # compiles (through the object cache). Parameters pickle as their Storage objects, so
    # executables pickled together share their parameters again, and not with the originals.
    def __reduce_ex__(self, protocol):
        """Pickled as its graph, parameter values and machine code (see `_unpickle`)."""
        if self.engine.key is None:  # built with cache=False: the key of its graph now
            self.engine.key = _key(self.graph, self.engine.opt, self.steps)
        code = [self.engine, *self.engine.runtime()]
        if self._native is not None:
            code.append(self._native.engine)
        graph = _graph_table(self.graph)
        return _unpickle, (graph, self.single_output, self.engine.opt, code, self.steps)

    # ---- inspection ----
    @property
    def optimized(self) -> Graph:
        return self._lowered()[0]

    @property
    def kernel_list(self):
        return self._lowered()[1]

    @property
    def plan(self):
        return self._lowered()[2]

    @property
    def llvm_ir(self) -> str:
        """The LLVM IR the program was compiled from (built on first use after a cache hit)."""
        return self.engine.llvm_ir

    def llvm_ir_for(self, cpu) -> str:
        """The LLVM IR of this program with its vectors and tiles chosen for `cpu` (a
        `codegen.target.Target`), as an AOT build for another CPU needs it."""
        self._lowered()  # checks the plan against the compiled one
        return self._lowering.llvm_ir_for(cpu)

    def _lowered(self):
        optimized, kernels, plan = self._lowering.passes
        if plan.arena_bytes != self._metadata["arena_bytes"]:
            raise CompileError(
                f"{self.name}: the memory plan ({plan.arena_bytes} bytes) differs from the "
                f"cached program's ({self._metadata['arena_bytes']} bytes): a cache key misses "
                "something the compiler depends on"
            )
        return optimized, kernels, plan

    @property
    def stages(self) -> tuple[str, ...]:
        return STAGES

    @property
    def memory(self):
        return self.plan

    @property
    def kernels(self) -> list[str]:
        return list(self._metadata["kernels"])

    def dump(self, stage: str = "graph") -> str:
        """The program at one stage: graph, optimized, fused, memory, llvm or asm."""
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


def _address_of(array: np.ndarray) -> int:
    """The data address of a C-contiguous array: through the buffer protocol when it is
    writable (a quarter of the cost, docs/performance.md), else `array.ctypes.data`."""
    try:
        return ctypes.addressof(ctypes.c_char.from_buffer(array))
    except TypeError:  # read-only
        return array.ctypes.data


def _shares_state(spans: list[tuple[int, int]], address: int, nbytes: int) -> bool:
    """Whether [address, address + nbytes) overlaps one of the address ranges `spans`."""
    return any(low < address + nbytes and address < high for low, high in spans)


def _forget_generated(cls: type) -> None:
    """Drop an executable's generated methods (and the buffers they hold) when it dies; a
    build that failed part way may not have made them all."""
    for name in ("__call__", "_call_python", "_run"):
        if name in cls.__dict__:
            delattr(cls, name)


def _call_python(executable: weakref.ref, *args, **kwargs):
    """The native entry's way to the Python call path of its executable."""
    step = executable()
    if step is None:
        raise InputError("this step's executable was garbage-collected; call the step itself")
    return step._call_python(*args, **kwargs)


_MISSING = object()  # the default of the generated call's parameters: an argument not given


def _fallback(executable: Executable, given: tuple, rest: tuple, named: dict):
    """The generated call's slow path: a call naming the inputs after the positional ones
    is made again by position; anything else is checked and converted (or refused)."""
    count = len(given)  # the parameters not given are the last ones
    while count and given[count - 1] is _MISSING:
        count -= 1
    unnamed = executable._input_names[count:]
    if named and not rest and len(named) == len(unnamed) and named.keys() == set(unnamed):
        return executable(*given[:count], *map(named.__getitem__, unnamed))
    return executable._call_checked(given[:count] + rest, named)


def _copy_graph(graph: Graph, memo: dict) -> Graph:
    """copy.deepcopy(graph, memo); nodes already copied into `memo` (by a Tensor copied
    before) are used as they are."""

    def copied(nodes):
        return [copy.deepcopy(n, memo) for n in nodes]

    updates = zip(copied(p for p, _ in graph.updates), copied(v for _, v in graph.updates))
    return Graph(copied(graph.outputs), updates, inputs=copied(graph.inputs), name=graph.name)


def _graph_table(graph: Graph) -> tuple:
    """`graph` as a flat table that pickles without recursion (pickle follows `Node.inputs`
    depth-first and would reach the recursion limit on deep graphs): nodes in order, those
    without inputs (inputs, params, consts) as themselves, so that pickle's memo keeps them
    shared with Tensors and other graphs pickled along; every other node as (op, indices of
    its inputs, attrs, type, name, loc)."""
    index = {node: i for i, node in enumerate(graph.nodes)}
    table = [
        (n.op, tuple(index[x] for x in n.inputs), n.attrs, n.type, n.name, n.loc) if n.inputs else n
        for n in graph.nodes
    ]
    return (
        graph.name,
        table,
        [index[n] for n in graph.inputs],
        [index[n] for n in graph.outputs],
        [(index[p], index[v]) for p, v in graph.updates],
    )


def _graph_from_table(name, table, inputs, outputs, updates) -> Graph:
    """The graph `_graph_table` wrote (same nodes in the same order: same printed text)."""
    nodes: list[Node] = []
    for entry in table:
        if isinstance(entry, Node):
            nodes.append(entry)
        else:
            op, indices, attrs, node_type, node_name, loc = entry
            nodes.append(
                Node(op, tuple(nodes[i] for i in indices), attrs, node_type, node_name, loc)
            )
    return Graph(
        [nodes[i] for i in outputs],
        [(nodes[p], nodes[v]) for p, v in updates],
        inputs=[nodes[i] for i in inputs],
        name=name,
    )


def _unpickle(
    table: tuple, single_output: bool, opt: int, code: list, steps: int = 1
) -> Executable:
    """An executable from its pickle: the graph built again, its received machine code used
    if this process would compile exactly that code, else compiled."""
    graph = _graph_from_table(*table)
    for node in graph.params:  # out-of-band pickle buffers may be read-only; the code writes
        storage = node.attrs["storage"]
        if not (storage.value.flags.writeable and storage.value.flags.aligned):
            storage.value = storage.value.copy()
    with jit.received(code):
        return Executable.build(graph, single_output=single_output, opt=opt, steps=steps)


def _key(graph: Graph, opt: int, steps: int) -> str:
    """The cache key of `graph` compiled at `opt`, `steps` steps per call."""
    return jit.cache_key(print_graph(graph, locations=False) + f"\nsteps {steps}", opt)


def _lazy_llvm_ir(lowering: Lowering):
    """A function building `lowering`'s IR (it holds the lowering, not the Executable)."""
    return lambda: lowering.llvm_ir
