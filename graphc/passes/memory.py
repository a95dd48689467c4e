"""Memory planning: where every value of a compiled program lives.

Inputs, outputs and parameters live in the caller's buffers; constants in the module;
every other value a kernel stores gets a slot in one static arena. Slots are assigned
greedily, largest first, at the lowest 64-byte-aligned offset that does not overlap a
slot whose live interval (first writer .. last reader, in schedule order) intersects:

    schedule:  k0   k1   k2   k3
    buffer a   [=========]            a and c never live together,
    buffer b        [=========]       so c reuses a's bytes
    buffer c                  [===]
"""

from __future__ import annotations

from dataclasses import dataclass, field

from graphc.ir.graph import Graph, Kernel, Node

ALIGN = 64


def aligned(nbytes: int) -> int:
    return (nbytes + ALIGN - 1) // ALIGN * ALIGN


@dataclass(frozen=True)
class Location:
    """Where a value lives: kind in input/param/output/arena/const, plus index or offset."""

    kind: str
    index: int


@dataclass(frozen=True)
class Slot:
    node: Node
    offset: int
    nbytes: int
    start: int  # index of the kernel that writes it
    end: int  # index of the last kernel that reads it (len(kernels) if live to the end)


@dataclass
class Plan:
    locations: dict[int, Location]
    slots: list[Slot] = field(default_factory=list)
    arena_bytes: int = 0
    naive_bytes: int = 0
    lower_bound_bytes: int = 0
    # id(param) -> arena offset of a copy taken before any update is written: the update
    # value of another parameter that is itself updated (updates={a: b, b: a} must swap)
    staging: dict[int, int] = field(default_factory=dict)

    def location(self, node: Node) -> Location:
        return self.locations[id(node)]


def plan_memory(graph: Graph, kernels: list[Kernel]) -> Plan:
    """Assign every kernel output a location; arena slots reuse memory across lifetimes."""
    locations: dict[int, Location] = {}
    for i, node in enumerate(graph.inputs):
        locations[id(node)] = Location("input", i)
    for i, node in enumerate(graph.params):
        locations[id(node)] = Location("param", i)
    for node in graph.nodes:
        if node.op == "const":
            locations[id(node)] = Location("const", 0)
    produced = {id(n): k for k, kernel in enumerate(kernels) for n in kernel.outputs}
    for i, node in enumerate(graph.outputs):
        if id(node) in produced and id(node) not in locations:
            locations[id(node)] = Location("output", i)

    end = len(kernels)
    last_use: dict[int, int] = {}
    for k, kernel in enumerate(kernels):
        for x in kernel.inputs:
            last_use[id(x)] = k
    for _, value in graph.updates:
        last_use[id(value)] = end
    intervals = []
    for k, kernel in enumerate(kernels):
        for node in kernel.outputs:
            if id(node) not in locations:
                intervals.append((node, k, last_use.get(id(node), k)))
    targets = {id(p) for p, _ in graph.updates}
    staged: dict[int, Node] = {
        id(v): v for p, v in graph.updates if v is not p and id(v) in targets
    }
    intervals += [(node, end, end) for node in staged.values()]

    placed: list[Slot] = []
    staging: dict[int, int] = {}
    for node, start, stop in sorted(intervals, key=lambda t: (-t[0].type.nbytes, t[1])):
        size = aligned(node.type.nbytes)
        offset = 0
        for other in sorted(placed, key=lambda s: s.offset):
            overlaps_time = not (stop < other.start or other.end < start)
            if (
                overlaps_time
                and offset < other.offset + other.nbytes
                and other.offset < offset + size
            ):
                offset = aligned(other.offset + other.nbytes)
        placed.append(Slot(node, offset, size, start, stop))
        if id(node) in staged:
            staging[id(node)] = offset
        else:
            locations[id(node)] = Location("arena", offset)

    plan = Plan(locations, sorted(placed, key=lambda s: (s.start, s.offset)), staging=staging)
    plan.arena_bytes = max((s.offset + s.nbytes for s in placed), default=0)
    plan.naive_bytes = sum(s.nbytes for s in placed)
    plan.lower_bound_bytes = max(
        (sum(s.nbytes for s in placed if s.start <= k <= s.end) for k in range(end + 1)),
        default=0,
    )
    return plan


def format_plan(plan: Plan, kernels: list[Kernel]) -> str:
    """The memory plan as a table: buffer, offset, size, live range (kernel indices)."""
    lines = [f"{'buffer':<32} {'offset':>10} {'bytes':>10}  live       written by"]
    for slot in sorted(plan.slots, key=lambda s: (s.offset, s.start)):
        label = slot.node.name or f"{slot.node.op}:{slot.node.type}"
        writer = kernels[slot.start].name if slot.start < len(kernels) else "-"
        lines.append(
            f"{label:<32} {slot.offset:>10} {slot.nbytes:>10}  "
            f"{slot.start:>3}..{slot.end:<4}  {writer}"
        )
    lines.append(
        f"arena_bytes={plan.arena_bytes} naive_bytes={plan.naive_bytes} "
        f"lower_bound_bytes={plan.lower_bound_bytes}"
    )
    return "\n".join(lines)
