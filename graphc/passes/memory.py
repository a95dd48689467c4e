"""Memory planning: where every value of a compiled program lives.

Inputs, outputs and parameters live in the caller's buffers; constants in the module;
every other value a kernel stores gets a slot in one static arena. Slots are assigned
greedily, largest first, at the lowest 64-byte-aligned offset that does not overlap a
slot whose live interval (first writer .. last reader, in schedule order) intersects:

    schedule:  k0   k1   k2   k3
    buffer a   [=========]            a and c never live together,
    buffer b        [=========]       so c reuses a's bytes
    buffer c                  [===]

In place: a loop kernel's output takes over the buffer of an input of the same size that
dies in that kernel and is read only at the loop index; a parameter's new value is written
straight into the parameter once no kernel still reads the old one. An update value that is
itself an updated parameter (`updates={a: b, b: a}`) is staged: copied to the arena first.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from graphc.ir.graph import Graph, Kernel, Node
from graphc.ir.ops import is_const
from graphc.passes.kernels import (
    checks,
    form_of,
    identity_reads,
    loop_stages,
    product_host,
    segments,
)

ALIGN = 64


def aligned(nbytes: int) -> int:
    """`nbytes` rounded up to a multiple of ALIGN."""
    return (nbytes + ALIGN - 1) // ALIGN * ALIGN


@dataclass(frozen=True)
class Location:
    """Where a value lives: kind in input/param/output/arena/const, plus index or offset."""

    kind: str
    index: int


@dataclass(frozen=True)
class Slot:
    """One value's bytes in the arena and its live interval over the schedule."""

    node: Node
    offset: int
    nbytes: int
    start: int  # index of the kernel that writes it
    end: int  # index of the last kernel that reads it (len(kernels) if live to the end)


@dataclass(eq=False)
class Buffer:
    """Arena bytes holding one value, or several in turn (in-place writes)."""

    values: list[Node]
    start: int
    end: int
    nbytes: int
    offset: int = 0
    staged: bool = False


@dataclass
class Plan:
    """Each value's location, the arena's buffers, and its size next to two bounds."""

    locations: dict[Node, Location]
    slots: list[Slot] = field(default_factory=list)
    arena_bytes: int = 0
    naive_bytes: int = 0
    lower_bound_bytes: int = 0
    # param -> arena offset of a copy taken before any update is written: the update
    # value of another parameter that is itself updated (updates={a: b, b: a} must swap)
    staging: dict[Node, int] = field(default_factory=dict)
    buffers: list[Buffer] = field(default_factory=list)  # by offset
    # arena offset of the run-time status word, when kernels check indices (OpDef.checked):
    # an int32, 0 or the number (from 1) of the first checked kernel that met a bad index
    status: int | None = None

    def location(self, node: Node) -> Location:
        return self.locations[node]


def plan_memory(graph: Graph, kernels: list[Kernel]) -> Plan:
    """Assign every kernel output a location; arena buffers reuse memory across lifetimes."""
    locations: dict[Node, Location] = {}
    for i, node in enumerate(graph.inputs):
        locations[node] = Location("input", i)
    for i, node in enumerate(graph.params):
        locations[node] = Location("param", i)
    for node in graph.nodes:
        if is_const(node):
            locations[node] = Location("const", 0)
    produced = {n: k for k, kernel in enumerate(kernels) for n in kernel.outputs}
    for i, node in enumerate(graph.outputs):
        if node in produced and node not in locations:
            locations[node] = Location("output", i)

    end = len(kernels)
    last_use: dict[Node, int] = {}
    for k, kernel in enumerate(kernels):
        for x in kernel.inputs:
            last_use[x] = k
    for node in (*graph.outputs, *(v for _, v in graph.updates)):
        last_use[node] = end
    reads = [identity_reads(kernel) for kernel in kernels]
    _update_in_place(graph, kernels, produced, last_use, reads, locations)

    # buffers: values sharing bytes, a loop kernel's output over an input that dies there
    buffers: list[Buffer] = []
    buffer_of: dict[Node, Buffer] = {}
    for k, kernel in enumerate(kernels):
        claimed: set[Node] = set()
        for node in kernel.outputs:
            if node in locations:
                continue
            stop = last_use.get(node, k)
            host = _in_place_host(kernel, node, reads[k], k, last_use, buffer_of, claimed)
            if host is not None:
                claimed.add(host)
                buffer = buffer_of[host]
                buffer.values.append(node)
                buffer.end = max(buffer.end, stop)
            else:
                buffer = Buffer([node], k, stop, aligned(node.type.nbytes))
                buffers.append(buffer)
            buffer_of[node] = buffer
    targets = {p for p, _ in graph.updates}
    staged = dict.fromkeys(v for p, v in graph.updates if v is not p and v in targets)
    for node in staged:
        buffers.append(Buffer([node], end, end, aligned(node.type.nbytes), staged=True))

    _place(buffers)
    staging: dict[Node, int] = {}
    slots = []
    for buffer in buffers:
        for node in buffer.values:
            if buffer.staged:
                staging[node] = buffer.offset
            else:
                locations[node] = Location("arena", buffer.offset)
            start = produced.get(node, end)
            slots.append(Slot(node, buffer.offset, buffer.nbytes, start, last_use.get(node, start)))
    plan = Plan(locations, sorted(slots, key=lambda s: (s.start, s.offset)), staging=staging)
    plan.buffers = sorted(buffers, key=lambda b: (b.offset, b.start))
    plan.arena_bytes = max((b.offset + b.nbytes for b in buffers), default=0)
    if any(map(checks, kernels)):
        plan.status = aligned(plan.arena_bytes)
        plan.arena_bytes = plan.status + ALIGN
    # no reuse: every stored value outside the caller's buffers in its own slot
    plan.naive_bytes = sum(
        aligned(n.type.nbytes)
        for kernel in kernels
        for n in kernel.outputs
        if locations[n].kind in ("arena", "param")
    )
    plan.lower_bound_bytes = max(
        (sum(b.nbytes for b in buffers if b.start <= k <= b.end) for k in range(end + 1)),
        default=0,
    )
    return plan


def _in_place_host(kernel, node, reads, k, last_use, buffer_of, claimed):
    """An arena input of loop kernel `k` that `node` may overwrite: same size, dies at k,
    read only at the loop index and by no later loop of the kernel."""
    if not form_of(kernel).overwrites_inputs:
        return None
    segment = next(i for i, (_, outs) in enumerate(segments(kernel)) if node in outs)
    for x in kernel.inputs:
        read = reads.get(x)
        if (
            x in buffer_of
            and x not in claimed
            and last_use.get(x) == k
            and aligned(x.type.nbytes) == aligned(node.type.nbytes)
            and x.type.nbytes == node.type.nbytes
            and read == (segment, True)
        ):
            return x
    return None


def _update_in_place(graph, kernels, produced, last_use, reads, locations) -> None:
    """Write a new param value straight into the param once no kernel reads the old one."""
    param_index = {p: i for i, p in enumerate(graph.params)}
    values = [v for _, v in graph.updates]
    at_end = {*graph.outputs, *values}
    for target, value in graph.updates:
        k = produced.get(value)
        if k is None or value in locations or values.count(value) > 1:
            continue
        if target in at_end or last_use.get(target, -1) > k:
            continue
        if target in kernels[k].inputs:
            kernel = kernels[k]
            form = form_of(kernel)
            if not form.updates_params:
                continue
            if form.has_product and value is product_host(kernel):
                continue  # the matmul writes the product there before the epilogue reads
            stages = loop_stages(kernel)
            segment = next((i for i, (_, outs) in enumerate(stages) if value in outs), None)
            if segment is None:
                continue  # the product itself (w <- w @ w): the matmul reads all of the old w
            read_segment, identity = reads[k].get(target, (segment, True))
            if read_segment > segment or (read_segment == segment and not identity):
                continue
        locations[value] = Location("param", param_index[target])


def _place(buffers: list[Buffer]) -> None:
    """Greedy by size: each buffer at the lowest aligned offset free during its lifetime."""
    placed: list[Buffer] = []
    for buffer in sorted(buffers, key=lambda b: (-b.nbytes, b.start)):
        busy = sorted(
            (b.offset, b.offset + b.nbytes)
            for b in placed
            if not (buffer.end < b.start or b.end < buffer.start)
        )
        offset = 0
        for low, high in busy:
            if offset + buffer.nbytes <= low:
                break
            offset = max(offset, aligned(high))
        buffer.offset = offset
        placed.append(buffer)


def format_plan(plan: Plan, kernels: list[Kernel]) -> str:
    """The memory plan as a table: buffer, offset, size, live range and the values it holds."""
    lines = [f"{'buffer':<8} {'offset':>10} {'bytes':>10}  {'live':<10} values (written by)"]
    for i, buffer in enumerate(plan.buffers):
        held = ", ".join(
            f"{_label(v)} ({_writer(v, kernels)})" if not buffer.staged else f"{_label(v)} (staged)"
            for v in buffer.values
        )
        live = f"{buffer.start}..{buffer.end}"
        lines.append(
            f"{'#' + str(i):<8} {buffer.offset:>10} {buffer.nbytes:>10}  {live:<10} {held}"
        )
    for kernel in kernels:
        for out in kernel.outputs:
            where = plan.locations.get(out)
            if where is not None and where.kind == "param":
                lines.append(
                    f"{'param':<8} {'':>10} {out.type.nbytes:>10}  {'in place':<10} "
                    f"{_label(out)} ({kernel.name}) -> param #{where.index}"
                )
    if plan.status is not None:
        lines.append(f"{'status':<8} {plan.status:>10} {4:>10}  {'all':<10} index checks")
    lines.append(
        f"arena_bytes={plan.arena_bytes} naive_bytes={plan.naive_bytes} "
        f"lower_bound_bytes={plan.lower_bound_bytes}"
    )
    return "\n".join(lines)


def _label(node: Node) -> str:
    return node.name or f"{node.op}:{node.type}"


def _writer(node: Node, kernels: list[Kernel]) -> str:
    return next((k.name for k in kernels if node in k.outputs), "-")
