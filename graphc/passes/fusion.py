# Over 500 lines on purpose: the three steps share `tree` and the docstring's algorithm, which
# reads top to bottom; the op classes and kernel forms are in passes/kernels.py.
"""Fusion: group the nodes of a graph into kernels (DESIGN §4).

Decisions are comparisons of the ops' ordered fusion kinds (ir/ops.py `Kind`): ELEMWISE,
BROADCAST and INJECTIVE ops are *light* (computed at an index, layout ops are index maps),
REDUCE and CONTRACTION ops are *anchors* (they own a loop nest), sources are memory.

Step 1 — what is stored. Every value is recomputed inside the kernel that reads it
unless it must live in memory: program outputs and update values, every anchor, matmul
operands that are not affine views of stored memory, and a light value that is read by two
kernels' trees when it is expensive (a transcendental) or sits right on top of an anchor
(recomputing it would keep the anchor's result alive; not when it reads the result through
a broadcast that expands it: a max-pool's tap mask is recomputed from the arg-max), or an
expensive one broadcast over a larger domain. Each stored value `m` has a *tree*: `m` and
the light producers it inlines, down to stored values and sources (its leaves). Trees may
overlap: cheap values are recomputed instead of stored.

Step 2 — groups. Stored values are visited in topological order; each starts a group
and joins the group of a producer when the pair forms one of the kernel forms and the
merge keeps the kernel graph acyclic (no path through a third group, checked by
reachability on the kernel graph):

    matmul ─► add(bias) ─► relu            contraction: epilogue read at the product's
                    └────► sum(axis 0)       index, reductions over the product's domain
                                             except its rows (those start a row-wise group)
    max(x) ─► x-m ─► sum(exp) ─► log ─►…   rowwise: reductions over the same last axis,
                                             one loop over rows, stages in order
    sum(x) ─► /n ─► reshape                  reduction: input fusion + same-size epilogue;
                                             a loop group it reads per output joins it
                                             (a max-pool's arg-max beside the sum of its tap)
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
from graphc.ir.ops import affine_view, opdef
from graphc.passes.kernels import (
    COLLECTIVE,
    CONTRACTION,
    LOOP,
    MAX_BODY_COST,
    REDUCTION,
    ROWWISE,
    SCAN,
    SCATTER,
    KernelForm,
    accumulates,
    alone_form,
    identity_step,
    is_affine,
    is_alone,
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

# A loop group joins a sum or max reading its values per output (`reduces_beside`) when the
# sum runs over at most this many elements per output (a pooling window: its reduction loop
# is unrolled, and the members read through the broadcast are computed once per output).
BESIDE_TAPS = 16

# ---- step 1: stored values and their trees ------------------------------------------------------


def tree(root: Node, stored: set[Node]) -> tuple[list[Node], list[Node]]:
    """(body, leaves) of a stored value: it and the light producers it inlines, inputs first."""
    body, leaves, seen = [], [], {root}
    stack = [(root, iter(root.inputs))]
    while stack:
        node, pending = stack[-1]
        for x in pending:
            if x in seen:
                continue
            seen.add(x)
            if is_source(x) or x in stored:
                leaves.append(x)
            else:
                stack.append((x, iter(x.inputs)))
                break
        else:
            stack.pop()
            body.append(node)
    return body, leaves


def _forced(graph: Graph) -> set[Node]:
    """Values that must be stored whatever the grouping."""
    stored = {n for n in (*graph.outputs, *(v for _, v in graph.updates)) if not is_source(n)}
    for node in graph.nodes:
        if is_anchor(node):
            stored.add(node)
        if is_alone(node):  # a buffer in, a buffer out
            stored.add(node)
            stored.update(x for x in node.inputs if not is_source(x))
        if is_contraction(node):
            for operand in node.inputs:
                base = operand
                while is_affine(base):
                    base = base.inputs[0]
                if affine_view(operand, lambda n, base=base: n is base) is None:
                    stored.add(operand)  # the chain is no view of its base: store it whole
                elif not is_source(base):
                    # a computed base is stored and read through the view; a layout base
                    # (pad, concat) too unless the view reads fewer elements than it holds
                    # (a slice of a pad), but a window view reads more: its base is stored
                    smaller = is_layout(base) and operand.type.size < base.type.size
                    stored.add(operand if smaller else base)
    return stored


def _capped(graph: Graph, stored: set[Node]) -> set[Node]:
    """`stored` plus the values that keep every tree within MAX_BODY_COST: in topological
    order, a value whose tree would cost more stores its inlined inputs (below index maps,
    which are never stored), so its tree is itself plus index maps."""

    def inlined(x: Node) -> bool:
        return x not in stored and not is_source(x)

    def store_below(x: Node) -> None:
        stack = [x]
        while stack:
            n = stack.pop()
            if inlined(n):
                if is_layout(n):
                    stack.extend(n.inputs)
                else:
                    stored.add(n)

    cost = {n: op_cost(n) for n in graph.nodes}
    bodies: dict[Node, set[Node]] = {}  # a tree's nodes (an upper bound once values below are cut)
    for v in graph.nodes:
        if is_source(v):
            continue
        body = {v}.union(*(bodies[x] for x in v.inputs if inlined(x)))
        if sum(map(cost.__getitem__, body)) > MAX_BODY_COST:
            for x in v.inputs:
                store_below(x)
            body = set(tree(v, stored)[0])  # v and index maps down to leaves
        bodies[v] = body
    return stored


def _expands(node: Node) -> bool:
    """A broadcast to 4x its input's elements or more."""
    return is_broadcast(node) and node.type.size >= 4 * node.inputs[0].type.size


def _on_anchor(root: Node, stored: set[Node]) -> bool:
    """Whether `root`'s tree reads an anchor's result other than through a broadcast that
    expands it: `root` then keeps the anchor's result alive unless stored. A value spread
    from a small result (a max-pool's tap mask, `taps == argmax`) is not: the cut then goes
    below the broadcast, at the small value, and consumers recompute the rest."""
    stack, seen = [root], {root}
    while stack:
        for x in stack.pop().inputs:
            if x in seen or is_source(x):
                continue
            seen.add(x)
            if x in stored:
                if is_anchor(x):
                    return True
            elif not _expands(x):
                stack.append(x)
    return False


def stored_values(graph: Graph) -> set[Node]:
    """The values kept in memory (or at least computed once per kernel).

    Candidates are taken last first: the cut nearest the consumers (a bool mask, not the
    pre-activation it is computed from). Storing a candidate changes only the trees that
    inlined it (its owners), and never makes a later value a candidate (its owners and
    broadcasts are later than the cut, and its tree only loses nodes: a light value is no
    anchor), so one backward walk, updating those trees, takes them all: linear time where
    recomputing every tree per candidate took time quadratic in an unrolled model."""
    stored = _capped(graph, _forced(graph))
    owners: dict[Node, set[Node]] = {}  # value -> the stored values whose trees inline it
    expanded: dict[Node, int] = {}  # value -> how many trees broadcast it 4x or more
    bodies: dict[Node, list[Node]] = {}

    def account(root: Node, sign: int) -> None:
        """Count `root`'s tree in (1) or out of (-1) `owners` and `expanded`."""
        if sign > 0:
            bodies[root] = tree(root, stored)[0]
        for n in bodies[root]:
            if sign > 0:
                owners.setdefault(n, set()).add(root)
            else:
                owners[n].discard(root)
            if _expands(n):
                expanded[n.inputs[0]] = expanded.get(n.inputs[0], 0) + sign

    for node in graph.nodes:
        if node in stored:
            account(node, 1)
    for node in reversed(graph.nodes):
        if node in stored or not is_light(node) or is_layout(node):
            continue
        shared = len(owners.get(node, ())) >= 2
        broadcast = expanded.get(node, 0) > 0
        if not shared and not broadcast:
            continue  # cheap test first: most values are neither
        body, leaves = tree(node, stored)
        anchored = any(is_anchor(x) for x in leaves)
        costly = anchored or any(is_expensive(n) for n in body)
        if (shared and (is_expensive(node) or _on_anchor(node, stored))) or (
            broadcast and node.type.size > 1 and costly
        ):
            inlining = list(owners.get(node, ()))
            for root in inlining:
                account(root, -1)
            stored.add(node)
            for root in (*inlining, node):
                account(root, 1)
    return stored


# ---- steps 2 and 3: groups (horizontal fusion is `horizontal`) ----------------------------------


@dataclass(eq=False)
class Group:
    members: list[Node]
    form: KernelForm
    anchors: list[Node] = field(default_factory=list)  # matmul first, then reductions

    @property
    def product(self) -> Node | None:
        return self.anchors[0] if self.form.has_product else None


def _paths_to(root: Node, targets: set[Node], allowed, bodies) -> bool:
    """Whether every path inside `root`'s tree from `root` to a target passes `allowed` nodes."""
    seen: set[tuple[Node, bool]] = set()  # (node, clean) pairs walked: a DAG has many paths
    stack = [(root, allowed(root))]
    while stack:
        node, clean = stack.pop()
        for x in node.inputs:
            if x in targets:
                if not clean:
                    return False
            elif x in bodies and (x, clean) not in seen:
                seen.add((x, clean))
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
    def __init__(self, graph: Graph, stored: set[Node]):
        self.graph = graph
        self.position = {n: i for i, n in enumerate(graph.nodes)}
        self.members = [n for n in graph.nodes if n in stored]
        self.trees = {m: tree(m, stored) for m in self.members}
        self.group_of: dict[Node, Group] = {}
        self.groups: list[Group] = []
        self._succs: dict[Group, set[Group]] = {}  # kept up to date by `add` and `merge`
        self.firsts: dict = {}  # OpDef.together key -> the group of the first node with it

    # -- the kernel graph --
    def preds(self, group: Group) -> set[Group]:
        result = set()
        for m in group.members:
            for leaf in self.trees[m][1]:
                other = self.group_of.get(leaf)
                if other is not None and other is not group:
                    result.add(other)
        return result

    def succs(self) -> dict[Group, set[Group]]:
        """Each group's successors (maintained, not recomputed: recomputing them for every
        merge made fusion quadratic in the size of the graph)."""
        return self._succs

    def add(self, group: Group) -> None:
        """A new group of members later than every group's (the walk is in schedule order):
        it has predecessors, but no successors yet."""
        for m in group.members:
            self.group_of[m] = group
        self.groups.append(group)
        self._succs[group] = set()
        for p in self.preds(group):
            self._succs[p].add(group)

    def mergeable(self, a: Group, b: Group) -> bool:
        """No path between a and b through a third group (the merge keeps the graph acyclic)."""
        succs = self.succs()
        for start, goal in ((a, b), (b, a)):
            frontier = [g for g in succs[start] if g is not goal]
            seen = set(frontier)
            while frontier:
                g = frontier.pop()
                if g is goal:
                    return False
                for h in succs[g]:
                    if h is goal:
                        return False
                    if h not in seen:
                        seen.add(h)
                        frontier.append(h)
        return True

    def fits(self, a: Group, b: Group) -> bool:
        """Whether a and b as one kernel keep its body within MAX_BODY_COST per element."""
        body = {n for g in (a, b) for m in g.members for n in self.trees[m][0]}
        return sum(map(op_cost, body)) <= MAX_BODY_COST

    def merge(self, into: Group, other: Group) -> None:
        for p in self.preds(other):  # other's edges become into's
            self._succs[p].discard(other)
            if p is not into:
                self._succs[p].add(into)
        self._succs[into] |= self._succs.pop(other)
        self._succs[into].discard(into)
        into.members = sorted(into.members + other.members, key=lambda n: self.position[n])
        into.anchors += other.anchors
        for m in other.members:
            self.group_of[m] = into
        self.groups.remove(other)

    # -- the rules --
    def body(self, m: Node) -> set[Node]:
        return set(self.trees[m][0])

    def join_rule(self, m: Node, p: Group) -> KernelForm | None:
        """The form `p` takes when `m` joins it, or None when they do not fuse."""
        return JOINS[p.form](self, m, p)

    def joins_loop(self, m: Node, p: Group) -> bool:
        """m is light, reads p's members at its own index and only through elementwise ops."""
        if not is_light(m):
            return False
        targets = set(p.members)
        read = [x for x in self.trees[m][1] if x in targets]
        return all(x.shape == m.shape for x in read) and _paths_to(
            m, targets, is_elementwise, self.body(m)
        )

    def reduces_beside(self, m: Node, p: Group) -> bool:
        """m is a sum or max that reads p's values only at its own output's index (through
        a broadcast over exactly its reduced axes): p's members, each of m's size, are then
        computed per output beside it (a max-pool's first maximum and the sum of the tap it
        picks: one pass over the taps)."""
        x, axes = m.inputs[0], m.attrs["axes"]
        if not accumulates(m) or prod(x.shape[a] for a in axes) > BESIDE_TAPS:
            return False
        if any(n.type.size != m.type.size for n in p.members):
            return False
        spread = tuple(1 if a in axes else d for a, d in enumerate(x.shape))
        targets, bodies = set(p.members), self.body(m)

        def index_of(node: Node, where: str, child: Node) -> str:
            """Where `child` is read: at m's input index, at its output index, or elsewhere."""
            if where == "input" and is_elementwise(node):
                return "input"
            if where == "input" and is_broadcast(node) and node.shape == x.shape:
                return "output" if child.shape == spread[x.ndim - child.ndim :] else "other"
            if where == "output" and identity_step(node) and child.type.size == m.type.size:
                return "output"
            return "other"

        stack, seen = [(x, "input")], {(x, "input")}
        while stack:
            node, where = stack.pop()
            if node in targets:
                if where != "output":
                    return False
                continue
            if node not in bodies:
                continue
            for child in node.inputs:
                state = (child, index_of(node, where, child))
                if state not in seen:
                    seen.add(state)
                    stack.append(state)
        return True

    def joins_contraction(self, m: Node, p: Group) -> bool:
        """m is an epilogue at the product's (or a fused reduction's) index, or a reduction
        of the product's domain other than over its rows."""
        product, bodies = p.product, self.body(m)
        stage = {product} | {x for x in p.members if is_light(x) and not self.reads_reduction(x, p)}
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
            direct = x in stage or (x in bodies and _paths_to(x, stage, identity_step, bodies))
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
        targets = set(p.members)
        return _paths_to(m, targets, _row_preserving(rows, length), self.body(m))

    def reads(self, m: Node, group: Group, allowed: set[Node]) -> bool:
        """Whether m's tree reads a member of `group` outside `allowed`."""
        return any(self.group_of.get(x) is group and x not in allowed for x in self.trees[m][1])

    def reads_reduction(self, x: Node, group: Group) -> bool:
        """Whether member x of `group` is computed from one of its reductions."""
        within = lambda leaf: self.group_of.get(leaf) is group  # noqa: E731
        return self.reaches(x, set(group.anchors[1:]), within)

    def reduction_epilogue(self, m: Node, r: Node, group: Group) -> bool:
        """m reads reduction r (and r's epilogue) at r's index, and nothing else of `group`."""
        stage = {r} | {
            x
            for x in group.members
            if is_light(x) and x.type.size == r.type.size and self.depends_on(x, r)
        }
        reads_r = any(x in stage for x in self.trees[m][1])
        return (
            reads_r
            and _paths_to(m, stage, identity_step, self.body(m))
            and not self.reads(m, group, stage)
        )

    def depends_on(self, x: Node, r: Node) -> bool:
        """Whether stored value x is computed from r."""
        return self.reaches(x, {r}, self.trees.__contains__)

    def reaches(self, x: Node, targets: set[Node], within) -> bool:
        """Whether x's tree reads one of `targets`, directly or through the trees of the light
        stored values it reads that `within` admits."""
        stack, seen = [x], set()
        while stack:
            n = stack.pop()
            for leaf in self.trees[n][1]:
                if leaf in targets:
                    return True
                if within(leaf) and leaf not in seen and is_light(leaf):
                    seen.add(leaf)
                    stack.append(leaf)
        return False

    # -- the walk --
    def run(self) -> list[Group]:
        for m in self.members:
            form = (
                alone_form(m)
                if is_alone(m)
                else CONTRACTION
                if is_contraction(m)
                else REDUCTION
                if is_anchor(m)
                else LOOP
            )
            group = Group([m], form, [m] if is_anchor(m) else [])
            self.add(group)
            if self.together(m, group) or not opdef(m).fuses_inputs:
                continue
            candidates = sorted(
                self.preds(group), key=lambda g: -max(self.position[x] for x in g.members)
            )
            for producer in candidates:
                if producer.form is LOOP and group.form not in (LOOP, REDUCTION):
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

    def together(self, m: Node, group: Group) -> bool:
        """Whether `m` joined the group of a node it shares a kernel with (`OpDef.together`:
        the results of one loop)."""
        if opdef(m).together is None:
            return False
        key = opdef(m).together(m)
        first = self.firsts.setdefault(key, group)
        if first is group or not self.mergeable(first, group):
            return False
        self.merge(first, group)
        return True

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
        """Loop groups with no path between them through another group become one kernel.
        (Merge tests of every pair: answered from `_Reach`'s bit sets, not a search each.)"""
        loops = [g for g in self.groups if g.form is LOOP]
        reach = _Reach(self.groups, self.succs())
        merged: list[Group] = []
        for g in loops:
            for target in merged:
                if self.fits(target, g) and reach.mergeable(target, g, self.succs()):
                    self.merge(target, g)
                    reach.merge(target, g)
                    break
            else:
                merged.append(g)


class _Reach:
    """Reachability in the kernel graph as bit sets, one bit per group: `below[g]` is the set
    of g's descendants. Kept up to date through merges, it answers `_Grouping.mergeable`
    without a search of the graph (a search per pair of loop groups made horizontal fusion
    quadratic in the number of kernels of an unrolled model)."""

    def __init__(self, groups: list[Group], succs: dict[Group, set[Group]]):
        self.bit = {g: 1 << i for i, g in enumerate(groups)}
        waiting = {g: 0 for g in groups}
        for g in groups:
            for s in succs[g]:
                waiting[s] += 1
        order = [g for g in groups if not waiting[g]]
        for g in order:  # topological order (the list grows as it is walked)
            for s in succs[g]:
                waiting[s] -= 1
                if not waiting[s]:
                    order.append(s)
        self.below: dict[Group, int] = {}
        for g in reversed(order):
            self.below[g] = 0
            for s in succs[g]:
                self.below[g] |= self.bit[s] | self.below[s]

    def mergeable(self, a: Group, b: Group, succs: dict[Group, set[Group]]) -> bool:
        """`_Grouping.mergeable(a, b)`: no path from one to the other through a third group."""
        for start, goal in ((a, b), (b, a)):
            bit = self.bit[goal]
            if any(s is not goal and self.below[s] & bit for s in succs[start]):
                return False
        return True

    def merge(self, into: Group, other: Group) -> None:
        """`other` merged into `into`: whatever reached either reaches what both reached."""
        gone, both = self.bit[other], self.bit[into] | self.bit[other]
        self.below[into] = (self.below[into] | self.below.pop(other)) & ~both
        merged = self.below[into] | self.bit[into]
        for g, bits in self.below.items():
            if bits & both:
                self.below[g] = (bits | merged) & ~gone


# ---- the join rule of each form: the form a group takes when a node joins it ------------------


def _join_loop(grouping: _Grouping, m: Node, p: Group) -> KernelForm | None:
    if is_anchor(m):
        return REDUCTION if grouping.reduces_beside(m, p) else None
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
    COLLECTIVE: lambda grouping, m, p: None,  # nothing joins a call
    SCATTER: lambda grouping, m, p: None,  # nor a scatter's loop
    SCAN: lambda grouping, m, p: None,  # nor a loop over a body (its results come together)
    LOOP: _join_loop,
    REDUCTION: _join_reduction,
    ROWWISE: _join_rowwise,
    CONTRACTION: _join_contraction,
}


# ---- kernels: the groups in schedule order, with bodies, inputs and outputs ---------------------


def _schedule(grouping: _Grouping) -> list[Group]:
    """Groups in a topological order of the kernel graph, earliest members first."""
    pos = grouping.position
    preds = {g: grouping.preds(g) for g in grouping.groups}
    done: set[Group] = set()
    order = []
    pending = sorted(grouping.groups, key=lambda g: pos[g.members[-1]])
    while pending:
        for g in pending:
            if all(p in done for p in preds[g]):
                order.append(g)
                done.add(g)
                pending.remove(g)
                break
    return order


def fuse(graph: Graph) -> list[Kernel]:
    """Kernels covering the graph's computing nodes, in a valid schedule order."""
    grouping = _Grouping(graph, stored_values(graph))
    grouping.run()
    order = _schedule(grouping)
    pos = grouping.position
    needed = {*graph.outputs, *(v for _, v in graph.updates)}
    for g in order:
        for m in g.members:
            for leaf in grouping.trees[m][1]:
                if grouping.group_of.get(leaf) is not g:
                    needed.add(leaf)
    kernels, names = [], {}
    for g in order:
        members = set(g.members)
        body = {n for m in g.members for n in grouping.trees[m][0]}
        leaves = dict.fromkeys(
            x for m in g.members for x in grouping.trees[m][1] if x not in members
        )
        outputs = [m for m in g.members if m in needed]
        if g.form.has_product:
            outputs = _contraction_outputs(g, outputs, body)
        nodes = sorted(body, key=pos.__getitem__)
        inputs = sorted(leaves, key=lambda n: pos.get(n, -1))
        label = kernel_name(g.form.name, nodes, inputs, outputs)
        count = names.get(label, 0)
        names[label] = count + 1
        name = label if count == 0 else f"{label}.{count}"
        kernels.append(Kernel(name, g.form.name, tuple(nodes), tuple(inputs), tuple(outputs)))
    return kernels


def _contraction_outputs(g: Group, outputs: list[Node], body: set[Node]) -> list[Node]:
    """The product is stored when a reduction stage recomputes from it or no output can host it."""
    product = g.product
    if product in outputs:
        return outputs
    stage = [o for o in outputs if not stage_reductions(o, body)]
    hosts = [o for o in stage if o.type.nbytes == product.type.nbytes and o.dtype == product.dtype]
    stored = set(stage)
    needs = False
    for r in g.anchors[1:]:
        stack, seen = [r.inputs[0]], set()
        while stack and not needs:
            n = stack.pop()
            if n is product:
                needs = True
            elif n in body and n not in stored and n not in seen:
                seen.add(n)
                stack.extend(n.inputs)
    if needs or not hosts:
        return [product, *outputs]
    return outputs
