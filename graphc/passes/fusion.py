"""Fusion: group the nodes of a graph into kernels (DESIGN §4).

Decisions are comparisons of the ops' ordered fusion kinds (ir/ops.py `Kind`): ELEMWISE,
BROADCAST and INJECTIVE ops are *light* (computed at an index, layout ops are index maps),
REDUCE and CONTRACTION ops are *anchors* (they own a loop nest), sources are memory.

Step 1 — what is stored. Every value is recomputed inside the kernel that reads it
unless it must live in memory: program outputs and update values, every anchor, matmul
operands that are not affine views of stored memory, and a light value that is read by two
kernels' trees when it is expensive (a transcendental) or sits right on top of an anchor
(recomputing it would keep the anchor's result alive), or an expensive one broadcast over
a larger domain. Each stored value `m` has a *tree*: `m` and the light producers it inlines,
down to stored values and sources (its leaves). Trees may overlap: cheap values are
recomputed instead of stored.

Step 2 — groups. Stored values are visited in topological order; each starts a group
and joins the group of a producer when the pair forms one of the kernel forms and the
merge keeps the kernel graph acyclic (no path through a third group, checked by
reachability on the kernel graph):

    matmul ─► add(bias) ─► relu            contraction: epilogue read at the product's
                    └────► sum(axis 0)       index, reductions over the product's domain
                                             except its rows (those start a row-wise group)
    max(x) ─► x-m ─► sum(exp) ─► log ─►…   rowwise: reductions over the same last axis,
                                             one loop over rows, stages in order
    sum(x) ─► /n ─► reshape                  reduction: input fusion + same-size epilogue
    a*b+c ─► tanh ─► …                       loop: same-shape stored values

Then a row-wise group joins a row-wise producer over the same rows when every member
fits that form (softmax cross-entropy forward and backward: one pass per row, exp(x − m)
recomputed instead of stored).

Step 3 — horizontal fusion: loop groups with no path between them through another group
merge into one multi-output loop kernel, emitted as one loop per output shape in one
function (an optimizer's per-parameter updates become one kernel).

A kernel's body is the union of its members' trees, its inputs the leaves outside it,
its outputs the members read by other kernels or by the program. Kernels are named after
what they compute and the names the user gave (`fused_matmul_add_relu[dense1]`).

passes/kernels.py holds the op classes used here, the questions memory planning and
codegen ask about a finished kernel, and the naming.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod

from graphc.ir.graph import Graph, Kernel, Node
from graphc.ir.ops import opdef
from graphc.passes.kernels import (
    CONTRACTION,
    LOOP,
    MAX_BODY_COST,
    REDUCTION,
    ROWWISE,
    KernelForm,
    accumulates,
    identity_step,
    is_affine,
    is_anchor,
    is_broadcast,
    is_contraction,
    is_elementwise,
    is_expensive,
    is_layout,
    is_light,
    is_source,
    kernel_name,
    op_cost,
    stage_reductions,
)

# ---- step 1: stored values and their trees ------------------------------------------------------


def tree(root: Node, stored: set[int]) -> tuple[list[Node], list[Node]]:
    """(body, leaves) of a stored value: it and the light producers it inlines, inputs first."""
    body, leaves, seen = [], [], {id(root)}
    stack = [(root, iter(root.inputs))]
    while stack:
        node, pending = stack[-1]
        for x in pending:
            if id(x) in seen:
                continue
            seen.add(id(x))
            if is_source(x) or id(x) in stored:
                leaves.append(x)
            else:
                stack.append((x, iter(x.inputs)))
                break
        else:
            stack.pop()
            body.append(node)
    return body, leaves


def _forced(graph: Graph) -> set[int]:
    """Values that must be stored whatever the grouping."""
    stored = {id(n) for n in (*graph.outputs, *(v for _, v in graph.updates)) if not is_source(n)}
    for node in graph.nodes:
        if is_anchor(node):
            stored.add(id(node))
        if is_contraction(node):
            for operand in node.inputs:
                base = operand
                while is_affine(base):
                    base = base.inputs[0]
                if not is_source(base):
                    stored.add(id(base) if not is_layout(base) else id(operand))
    return stored


def _capped(graph: Graph, stored: set[int]) -> set[int]:
    """`stored` plus the values that keep every tree within MAX_BODY_COST: in topological
    order, a value whose tree would cost more stores its inlined inputs (below index maps,
    which are never stored), so its tree is itself plus index maps."""

    def inlined(x: Node) -> bool:
        return id(x) not in stored and not is_source(x)

    def store_below(x: Node) -> None:
        stack = [x]
        while stack:
            n = stack.pop()
            if inlined(n):
                if is_layout(n):
                    stack.extend(n.inputs)
                else:
                    stored.add(id(n))

    cost = {id(n): op_cost(n) for n in graph.nodes}
    bodies: dict[int, set[int]] = {}  # a tree's nodes (an upper bound once values below are cut)
    for v in graph.nodes:
        if is_source(v):
            continue
        body = {id(v)}.union(*(bodies[id(x)] for x in v.inputs if inlined(x)))
        if sum(map(cost.__getitem__, body)) > MAX_BODY_COST:
            for x in v.inputs:
                store_below(x)
            body = {id(n) for n in tree(v, stored)[0]}  # v and index maps down to leaves
        bodies[id(v)] = body
    return stored


def stored_values(graph: Graph) -> set[int]:
    """Ids of the values kept in memory (or at least computed once per kernel)."""
    stored = _capped(graph, _forced(graph))
    while True:
        owners: dict[int, set[int]] = {}
        expanded: set[int] = set()
        for node in graph.nodes:
            if id(node) not in stored:
                continue
            body, _ = tree(node, stored)
            for n in body:
                owners.setdefault(id(n), set()).add(id(node))
                if is_broadcast(n) and n.type.size >= 4 * n.inputs[0].type.size:
                    expanded.add(id(n.inputs[0]))
        chosen = None  # the last candidate: the cut nearest the consumers (a bool mask, not
        for node in reversed(graph.nodes):  # the pre-activation it is computed from)
            if id(node) in stored or not is_light(node) or is_layout(node):
                continue
            shared = len(owners.get(id(node), ())) >= 2
            if not shared and id(node) not in expanded:
                continue  # cheap test first: the tree walk below makes this loop quadratic
            body, leaves = tree(node, stored)
            anchored = any(is_anchor(x) for x in leaves)
            costly = anchored or any(is_expensive(n) for n in body)
            if (shared and (is_expensive(node) or anchored)) or (
                id(node) in expanded and node.type.size > 1 and costly
            ):
                chosen = node
                break
        if chosen is None:
            return stored
        stored.add(id(chosen))


# ---- steps 2 and 3: groups (horizontal fusion is `horizontal`) ----------------------------------


@dataclass(eq=False)
class Group:
    members: list[Node]
    form: KernelForm
    anchors: list[Node] = field(default_factory=list)  # matmul first, then reductions

    @property
    def product(self) -> Node | None:
        return self.anchors[0] if self.form.has_product else None


def _paths_to(root: Node, targets: set[int], allowed, bodies) -> bool:
    """Whether every path inside `root`'s tree from `root` to a target passes `allowed` nodes."""
    seen: set[tuple[int, bool]] = set()  # (node, clean) pairs walked: a DAG has many paths
    stack = [(root, allowed(root))]
    while stack:
        node, clean = stack.pop()
        for x in node.inputs:
            if id(x) in targets:
                if not clean:
                    return False
            elif id(x) in bodies and (id(x), clean) not in seen:
                seen.add((id(x), clean))
                stack.append((x, clean and allowed(x)))
    return True


def _rowwise_shape(node: Node):
    """(rows, length) when `node` reduces the last axis only, of length > 1."""
    if not accumulates(node):
        return None
    x = node.inputs[0]
    if tuple(node.attrs["axes"]) != (x.ndim - 1,) or x.shape[-1] < 2:
        return None
    return x.shape[:-1], x.shape[-1]


def _row_preserving(rows, length):
    full, size = (*rows, length), prod(rows)

    def allowed(node: Node) -> bool:
        if accumulates(node):
            return _rowwise_shape(node) == (rows, length)
        if is_broadcast(node):
            return node.inputs[0].shape == (*rows, 1) and node.shape == full
        if opdef(node).flat:
            return node.type.size == size and node.inputs[0].type.size == size
        return is_elementwise(node) and (node.shape == full or node.type.size == size)

    return allowed


class _Grouping:
    def __init__(self, graph: Graph, stored: set[int]):
        self.graph = graph
        self.position = {id(n): i for i, n in enumerate(graph.nodes)}
        self.members = [n for n in graph.nodes if id(n) in stored]
        self.trees = {id(m): tree(m, stored) for m in self.members}
        self.group_of: dict[int, Group] = {}
        self.groups: list[Group] = []

    # -- the kernel graph --
    def preds(self, group: Group) -> set[Group]:
        result = set()
        for m in group.members:
            for leaf in self.trees[id(m)][1]:
                other = self.group_of.get(id(leaf))
                if other is not None and other is not group:
                    result.add(other)
        return result

    def succs(self) -> dict[int, set[Group]]:
        result = {id(g): set() for g in self.groups}
        for g in self.groups:
            for p in self.preds(g):
                result[id(p)].add(g)
        return result

    def mergeable(self, a: Group, b: Group) -> bool:
        """No path between a and b through a third group (the merge keeps the graph acyclic)."""
        succs = self.succs()
        for start, goal in ((a, b), (b, a)):
            frontier = [g for g in succs[id(start)] if g is not goal]
            seen = {id(g) for g in frontier}
            while frontier:
                g = frontier.pop()
                if g is goal:
                    return False
                for h in succs[id(g)]:
                    if h is goal:
                        return False
                    if id(h) not in seen:
                        seen.add(id(h))
                        frontier.append(h)
        return True

    def fits(self, a: Group, b: Group) -> bool:
        """Whether a and b as one kernel keep its body within MAX_BODY_COST per element."""
        body = {id(n): n for g in (a, b) for m in g.members for n in self.trees[id(m)][0]}
        return sum(map(op_cost, body.values())) <= MAX_BODY_COST

    def merge(self, into: Group, other: Group) -> None:
        into.members = sorted(into.members + other.members, key=lambda n: self.position[id(n)])
        into.anchors += other.anchors
        for m in other.members:
            self.group_of[id(m)] = into
        self.groups.remove(other)

    # -- the rules --
    def body_ids(self, m: Node) -> set[int]:
        return {id(n) for n in self.trees[id(m)][0]}

    def join_rule(self, m: Node, p: Group) -> KernelForm | None:
        """The form `p` takes when `m` joins it, or None when they do not fuse."""
        return JOINS[p.form](self, m, p)

    def joins_loop(self, m: Node, p: Group) -> bool:
        """m is light, reads p's members at its own index and only through elementwise ops."""
        if not is_light(m):
            return False
        targets = {id(x) for x in p.members}
        read = [x for x in self.trees[id(m)][1] if id(x) in targets]
        return all(x.shape == m.shape for x in read) and _paths_to(
            m, targets, is_elementwise, self.body_ids(m)
        )

    def joins_contraction(self, m: Node, p: Group) -> bool:
        """m is an epilogue at the product's (or a fused reduction's) index, or a reduction
        of the product's domain other than over its rows."""
        product, bodies = p.product, self.body_ids(m)
        stage = {id(product)} | {
            id(x) for x in p.members if is_light(x) and not self.reads_reduction(x, p)
        }
        if is_light(m) and m.type.size == product.type.size:
            if _paths_to(m, stage, identity_step, bodies) and not self.reads(m, p, stage):
                return True
        if is_light(m):
            for r in p.anchors[1:]:
                if m.type.size == r.type.size and self.reduction_epilogue(m, r, p):
                    return True
        # a reduction over the product's rows belongs to a row-wise kernel (softmax)
        if accumulates(m) and m.inputs[0].shape == product.shape and not _rowwise_shape(m):
            x = m.inputs[0]
            direct = id(x) in stage or (
                id(x) in bodies and _paths_to(x, stage, identity_step, bodies)
            )
            if direct and not self.reads(m, p, stage):
                return True
        return False

    def joins_rowwise(self, m: Node, p: Group) -> bool:
        """p's reductions all run over the same last axis, and m keeps to those rows."""
        shape = _rowwise_shape(p.anchors[0])
        if shape is None or any(_rowwise_shape(r) != shape for r in p.anchors):
            return False
        rows, length = shape
        if is_light(m) and m.type.size not in (prod(rows), prod(rows) * length):
            return False
        if not is_light(m) and _rowwise_shape(m) != shape:
            return False
        targets = {id(x) for x in p.members}
        return _paths_to(m, targets, _row_preserving(rows, length), self.body_ids(m))

    def reads(self, m: Node, group: Group, allowed: set[int]) -> bool:
        """Whether m's tree reads a member of `group` outside `allowed`."""
        return any(
            self.group_of.get(id(x)) is group and id(x) not in allowed for x in self.trees[id(m)][1]
        )

    def reads_reduction(self, x: Node, group: Group) -> bool:
        """Whether member x of `group` is computed from one of its reductions."""
        anchors = {id(a) for a in group.anchors[1:]}
        stack, seen = [x], set()
        while stack:
            n = stack.pop()
            for leaf in self.trees[id(n)][1]:
                if id(leaf) in anchors:
                    return True
                if self.group_of.get(id(leaf)) is group and id(leaf) not in seen and is_light(leaf):
                    seen.add(id(leaf))
                    stack.append(leaf)
        return False

    def reduction_epilogue(self, m: Node, r: Node, group: Group) -> bool:
        """m reads reduction r (and r's epilogue) at r's index, and nothing else of `group`."""
        stage = {id(r)} | {
            id(x)
            for x in group.members
            if is_light(x) and x.type.size == r.type.size and self.depends_on(x, r)
        }
        reads_r = any(id(x) in stage for x in self.trees[id(m)][1])
        return (
            reads_r
            and _paths_to(m, stage, identity_step, self.body_ids(m))
            and not self.reads(m, group, stage)
        )

    def depends_on(self, x: Node, r: Node) -> bool:
        stack, seen = [x], set()
        while stack:
            n = stack.pop()
            for leaf in self.trees[id(n)][1]:
                if leaf is r:
                    return True
                if id(leaf) in self.trees and id(leaf) not in seen and is_light(leaf):
                    seen.add(id(leaf))
                    stack.append(leaf)
        return False

    # -- the walk --
    def run(self) -> list[Group]:
        for m in self.members:
            form = CONTRACTION if is_contraction(m) else REDUCTION if is_anchor(m) else LOOP
            group = Group([m], form, [m] if is_anchor(m) else [])
            self.group_of[id(m)] = group
            self.groups.append(group)
            if not opdef(m).fuses_inputs:
                continue
            candidates = sorted(
                self.preds(group), key=lambda g: -max(self.position[id(x)] for x in g.members)
            )
            for producer in candidates:
                if producer.form is LOOP and group.form is not LOOP:
                    continue
                new_form = self.join_rule(m, producer)
                if (
                    new_form is not None
                    and self.fits(producer, group)
                    and self.mergeable(producer, group)
                ):
                    self.merge(producer, group)
                    producer.form = new_form
                    break
        self.merge_rows()
        self.horizontal()
        return self.groups

    def merge_rows(self) -> None:
        """A row-wise group joins a row-wise producer over the same rows (softmax backward
        after its forward): one pass per row instead of storing exp(x - max) between them."""
        changed = True
        while changed:
            changed = False
            for group in [g for g in self.groups if g.form is ROWWISE]:
                shape = _rowwise_shape(group.anchors[0])
                for producer in self.preds(group):
                    if producer.form is not ROWWISE or _rowwise_shape(producer.anchors[0]) != shape:
                        continue
                    if not all(self.join_rule(m, producer) is ROWWISE for m in group.members):
                        continue
                    if self.fits(producer, group) and self.mergeable(producer, group):
                        self.merge(producer, group)
                        changed = True
                        break
                if changed:
                    break

    def horizontal(self) -> None:
        """Loop groups with no path between them through another group become one kernel."""
        loops = [g for g in self.groups if g.form is LOOP]
        merged: list[Group] = []
        for g in loops:
            for target in merged:
                if self.fits(target, g) and self.mergeable(target, g):
                    self.merge(target, g)
                    break
            else:
                merged.append(g)


# ---- the join rule of each form: the form a group takes when a node joins it ------------------


def _join_loop(grouping: _Grouping, m: Node, p: Group) -> KernelForm | None:
    return LOOP if grouping.joins_loop(m, p) else None


def _join_contraction(grouping: _Grouping, m: Node, p: Group) -> KernelForm | None:
    return CONTRACTION if grouping.joins_contraction(m, p) else None


def _join_reduction(grouping: _Grouping, m: Node, p: Group) -> KernelForm | None:
    (r,) = p.anchors
    if is_light(m) and m.type.size == r.type.size and grouping.reduction_epilogue(m, r, p):
        return REDUCTION  # an epilogue of the reduced value
    return _join_rowwise(grouping, m, p)


def _join_rowwise(grouping: _Grouping, m: Node, p: Group) -> KernelForm | None:
    return ROWWISE if grouping.joins_rowwise(m, p) else None


JOINS = {
    LOOP: _join_loop,
    REDUCTION: _join_reduction,
    ROWWISE: _join_rowwise,
    CONTRACTION: _join_contraction,
}


# ---- kernels: the groups in schedule order, with bodies, inputs and outputs ---------------------


def _schedule(grouping: _Grouping) -> list[Group]:
    """Groups in a topological order of the kernel graph, earliest members first."""
    pos = grouping.position
    preds = {id(g): grouping.preds(g) for g in grouping.groups}
    done: set[int] = set()
    order = []
    pending = sorted(grouping.groups, key=lambda g: pos[id(g.members[-1])])
    while pending:
        for g in pending:
            if all(id(p) in done for p in preds[id(g)]):
                order.append(g)
                done.add(id(g))
                pending.remove(g)
                break
    return order


def fuse(graph: Graph) -> list[Kernel]:
    """Kernels covering the graph's computing nodes, in a valid schedule order."""
    grouping = _Grouping(graph, stored_values(graph))
    grouping.run()
    order = _schedule(grouping)
    pos = grouping.position
    needed = {id(n) for n in (*graph.outputs, *(v for _, v in graph.updates))}
    for g in order:
        for m in g.members:
            for leaf in grouping.trees[id(m)][1]:
                if grouping.group_of.get(id(leaf)) is not g:
                    needed.add(id(leaf))
    kernels, names = [], {}
    for g in order:
        member_ids = {id(m) for m in g.members}
        body = {id(n): n for m in g.members for n in grouping.trees[id(m)][0]}
        leaves = {
            id(x): x for m in g.members for x in grouping.trees[id(m)][1] if id(x) not in member_ids
        }
        outputs = [m for m in g.members if id(m) in needed]
        if g.form.has_product:
            outputs = _contraction_outputs(g, outputs, body)
        nodes = sorted(body.values(), key=lambda n: pos[id(n)])
        inputs = sorted(leaves.values(), key=lambda n: pos.get(id(n), -1))
        label = kernel_name(g.form.name, nodes, inputs, outputs)
        count = names.get(label, 0)
        names[label] = count + 1
        name = label if count == 0 else f"{label}.{count}"
        kernels.append(Kernel(name, g.form.name, tuple(nodes), tuple(inputs), tuple(outputs)))
    return kernels


def _contraction_outputs(g: Group, outputs: list[Node], body: dict[int, Node]) -> list[Node]:
    """The product is stored when a reduction stage recomputes from it or no output can host it."""
    product = g.product
    if product in outputs:
        return outputs
    stage = [o for o in outputs if not stage_reductions(o, body)]
    hosts = [o for o in stage if o.type.nbytes == product.type.nbytes and o.dtype == product.dtype]
    stored = {id(o) for o in stage}
    needs = False
    for r in g.anchors[1:]:
        stack, seen = [r.inputs[0]], set()
        while stack and not needs:
            n = stack.pop()
            if n is product:
                needs = True
            elif id(n) in body and id(n) not in stored and id(n) not in seen:
                seen.add(id(n))
                stack.extend(n.inputs)
    if needs or not hosts:
        return [product, *outputs]
    return outputs
