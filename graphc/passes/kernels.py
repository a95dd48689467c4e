"""Fused kernels (passes/fusion.py makes them): the op classes fusion decides by, the
questions memory planning and code generation ask about a kernel (its loop stages, which
output hosts a matmul product, which inputs are read only at the loop index), and kernel
names built from what a kernel computes and the user's names.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from math import prod

from graphc.ir.graph import Kernel, Node
from graphc.ir.ops import Kind, is_input, is_param, opdef, relu_input

# The most a kernel's body may cost per element (units of `OpDef.cost`: an add, a load or a
# store is 1, a vectorized transcendental of codegen/mathlib.py 4-30, index maps and
# constants 0). LLVM's loop vectorizer, instruction selection and register allocation take
# time growing with the square of a loop body's size, so fusion stores a value rather than
# let a body grow past this (the store and reload of a cut cost ~2 units). Measurements:
# docs/performance.md, "Session 6: compile time of long chains" and "Numbers moved out of the
# code: graphc/passes/kernels.py".
MAX_BODY_COST = 512


def op_cost(node: Node) -> int:
    """Estimated units per element of computing `node` from its inputs (`OpDef.cost`)."""
    return opdef(node).cost


def is_source(node: Node) -> bool:
    """A value read from memory without computing it (input, param, const)."""
    return opdef(node).memory


def is_light(node: Node) -> bool:
    return not is_source(node) and opdef(node).kind <= Kind.INJECTIVE


def is_anchor(node: Node) -> bool:
    return opdef(node).anchor


def is_contraction(node: Node) -> bool:
    return opdef(node).kind == Kind.CONTRACTION


def is_reduction(node: Node) -> bool:
    return opdef(node).reduction is not None


def accumulates(node: Node) -> bool:
    """A reduction that combines the values themselves (sum, max; not argmax)."""
    reduction = opdef(node).reduction
    return reduction is not None and not reduction.positional


def is_layout(node: Node) -> bool:
    """A layout op: its value is its inputs' values at a mapped index (never a copy)."""
    return opdef(node).index_map is not None


def is_affine(node: Node) -> bool:
    """A layout op that is a strided view of its input."""
    return opdef(node).view is not None


def is_expensive(node: Node) -> bool:
    return opdef(node).expensive


def is_broadcast(node: Node) -> bool:
    return opdef(node).kind == Kind.BROADCAST


def is_elementwise(node: Node) -> bool:
    return opdef(node).kind == Kind.ELEMWISE and not is_source(node)


def identity_step(node: Node) -> bool:
    """An op that reads its input at its own index (elementwise, or a reshape)."""
    return is_elementwise(node) or opdef(node).flat


# ---- kernel queries (memory planning, codegen) ----------------------------------------------


def product_of(kernel: Kernel) -> Node:
    """A contraction kernel's product (its one contraction node)."""
    (product,) = [n for n in kernel.nodes if is_contraction(n)]
    return product


def product_host(kernel: Kernel) -> Node | None:
    """The output whose buffer receives a contraction's product (None: the product itself)."""
    mm = product_of(kernel)
    if mm in kernel.outputs:
        return None
    body = set(kernel.nodes)
    for o in kernel.outputs:
        same = o.type.nbytes == mm.type.nbytes and o.dtype == mm.dtype
        if same and not stage_reductions(o, body):
            return o
    return None


def stage_reductions(node: Node, body: Collection[Node]) -> list[Node]:
    """The reductions of a kernel body that `node` is computed from."""
    found, stack, seen = [], [node], set()
    while stack:
        n = stack.pop()
        if n in seen or n not in body:
            continue
        seen.add(n)
        if is_reduction(n):
            found.append(n)
            continue
        stack.extend(n.inputs)
    return found


def segments(kernel: Kernel) -> list[tuple[tuple[int, ...], list[Node]]]:
    """A loop kernel's outputs grouped by shape, in order of first appearance: one loop each."""
    result: dict[tuple[int, ...], list[Node]] = {}
    for out in kernel.outputs:
        result.setdefault(out.shape, []).append(out)
    return list(result.items())


def _contraction_stages(kernel: Kernel) -> list[tuple[tuple[int, ...], list[Node]]]:
    """A contraction's elementwise epilogue at the product's index, then its reduction
    stages, in the order codegen emits them."""
    body = set(kernel.nodes)
    mm = product_of(kernel)
    stages: dict[Node, list[Node]] = {mm: []}
    for o in kernel.outputs:
        if o is not mm:
            found = stage_reductions(o, body)
            stages.setdefault(found[0] if found else mm, []).append(o)
    anchors = [mm, *(n for n in kernel.nodes if is_reduction(n) and n in stages)]
    return [(a.shape, stages[a]) for a in anchors]


@dataclass(frozen=True, eq=False)
class KernelForm:
    """One kernel form of DESIGN §4, and what memory planning asks of it.

    `stages(kernel)` lists the loops that store outputs at their own index (what in-place
    writes are judged by); `overwrites_inputs`: an output may take the buffer of an input
    that dies in the kernel; `updates_params`: a param's update may be written into the
    param by the kernel; `has_product`: the kernel is built around a contraction whose
    generated loop nest writes a product before the epilogue. Fusion's join rule
    (passes/fusion.py JOINS) and the emission (codegen/forms.py EMISSIONS) are registered
    under the same object; tests check every form has both. Kernels name their form."""

    name: str
    stages: Callable[[Kernel], list[tuple[tuple[int, ...], list[Node]]]]
    overwrites_inputs: bool = False
    updates_params: bool = False
    has_product: bool = False

    def __repr__(self) -> str:
        return f"<KernelForm {self.name}>"


LOOP = KernelForm("loop", segments, overwrites_inputs=True, updates_params=True)
REDUCTION = KernelForm("reduction", lambda kernel: [])
ROWWISE = KernelForm("rowwise", lambda kernel: [])
CONTRACTION = KernelForm("contraction", _contraction_stages, updates_params=True, has_product=True)
# one op computed by a call of its own (an MPI collective: its input and output are buffers)
COLLECTIVE = KernelForm("collective", lambda kernel: [])
# one scatter_add: a copy of its base, then each update added at its (checked) index, in order
SCATTER = KernelForm("scatter", lambda kernel: [])
# the nodes of one loop (ir/scan.py): its body compiled once, called once per step
SCAN = KernelForm("scan", lambda kernel: [])
FORMS = {
    form.name: form for form in (LOOP, REDUCTION, ROWWISE, CONTRACTION, COLLECTIVE, SCATTER, SCAN)
}


def is_alone(node: Node) -> bool:
    """An op computed in a kernel of its own, from stored inputs (allreduce, scatter_add)."""
    return opdef(node).alone


def checks(kernel: Kernel) -> bool:
    """Whether a kernel checks indices at run time (an op of it is `OpDef.checked`)."""
    return any(is_checked(n) for n in kernel.nodes)


def is_checked(node: Node) -> bool:
    """Whether `node`'s compiled form checks indices (`OpDef.checked`, or its answer)."""
    checked = opdef(node).checked
    return checked(node) if callable(checked) else checked


def alone_form(node: Node) -> KernelForm:
    """The kernel form of an op computed alone (its stanza's `kernel_form`)."""
    return FORMS[opdef(node).kernel_form]


def form_of(kernel: Kernel) -> KernelForm:
    return FORMS[kernel.form]


def loop_stages(kernel: Kernel) -> list[tuple[tuple[int, ...], list[Node]]]:
    """The loops of a kernel that store outputs at their own index (its form's stages)."""
    return form_of(kernel).stages(kernel)


def identity_reads(kernel: Kernel) -> dict[Node, tuple[int, bool]]:
    """Input -> (last stage reading it, read only at that loop's index), for loop kernels
    and contraction epilogues. Mirrors the code generator: a later loop reads the outputs of
    earlier ones from memory."""
    inside = set(kernel.nodes)
    result: dict[Node, tuple[int, bool]] = {}
    stored: set[Node] = {n for n in kernel.nodes if is_contraction(n)}
    for s, (shape, outputs) in enumerate(loop_stages(kernel)):
        stack = [(o, True) for o in outputs]
        seen = set()
        while stack:
            node, clean = stack.pop()
            if (node, clean) in seen:
                continue
            seen.add((node, clean))
            for x in node.inputs:
                step = clean and identity_step(node) and node.type.size == prod(shape)
                if x in inside and x not in stored:
                    stack.append((x, step))
                elif x not in inside:
                    ok = step and x.type.size == prod(shape)
                    previous = result.get(x)
                    if previous is not None and previous[0] == s:
                        ok = ok and previous[1]
                    result[x] = (s, ok)
        stored.update(outputs)
    return result


# ---- names --------------------------------------------------------------------------------------


def kernel_name(form: str, nodes, inputs, outputs) -> str:
    """`fused_<ops>[<user names>]`: what the kernel computes and whose values it touches."""
    ops: list[str] = []
    hidden = {n.inputs[0] for n in nodes if relu_input(n) is not None}  # its x > 0
    for n in nodes:
        if is_layout(n) or is_source(n) or n in hidden or not opdef(n).in_names:
            continue
        op = "relu" if relu_input(n) is not None else n.op
        if op not in ops:
            ops.append(op)
    if not ops:
        ops = [next((n.op for n in nodes if not is_source(n)), form)]
    text = "_".join(ops[:4]) + ("_etc" if len(ops) > 4 else "")
    label = f"fused_{text}" if len(ops) > 1 else text
    names: list[str] = []
    for n in [*outputs, *(x for x in inputs if is_param(x))]:
        name = _layer(n.name) if is_param(n) else n.name
        if name and name not in names:
            names.append(name)
    if not names:
        names = [x.name for x in inputs if is_input(x) and x.name]
    if names:
        label += "[" + ",".join(names[:3]) + (",..." if len(names) > 3 else "") + "]"
    return label


def _layer(name: str | None) -> str | None:
    """`dense1.w` -> `dense1`; `adam.m[dense1.w]` -> `adam`."""
    if not name:
        return name
    head = name.split("[", 1)[0]
    return head.rsplit(".", 1)[0] if "." in head else head
