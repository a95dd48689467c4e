"""Fused kernels (passes/fusion.py makes them): the op classes fusion decides by, the
questions memory planning and code generation ask about a kernel (its loop stages, which
output hosts a matmul product, which inputs are read only at the loop index), and kernel
names built from what a kernel computes and the user's names.
"""

from __future__ import annotations

from math import prod

from graphc.ir.graph import Kernel, Node
from graphc.ir.ops import OPS, Kind

MEMORY_SOURCES = ("input", "param", "const")  # iota is computed at an index: see LAYOUT
LAYOUT = ("broadcast_to", "reshape", "transpose", "slice", "pad", "concat", "iota")
AFFINE = ("broadcast_to", "transpose", "slice")
REDUCTIONS = ("sum", "max", "argmax")
EXPENSIVE = frozenset({"exp", "log", "log1p", "sin", "cos", "tanh", "sqrt", "sigmoid", "pow"})
# Estimated cost per element of each op, in units (a plain add, load or store is 1): the
# vectorized transcendentals of codegen/mathlib.py take 10-20 times as long. Index maps and
# constants cost nothing.
OP_COST = {"exp": 12, "log": 14, "log1p": 16, "tanh": 16, "sigmoid": 12, "sin": 20, "cos": 20}
OP_COST |= {"pow": 30, "sqrt": 4, "div": 4}
FREE_OPS = frozenset({"const", "broadcast_to", "reshape", "transpose", "slice", "iota"})
# The most a kernel's body may cost per element (units above). LLVM's loop vectorizer, its
# instruction selection and register allocation take time growing with the square of a loop
# body's size: a chain of 1000 elementwise multiply-adds (3000 units) took 6.7 s to optimize
# as one loop, 200 sin steps (4400 units) 8 s. Fusion stores a value rather than let a body
# grow past this (measured: a body of ~500 units optimizes in ~0.3 s, and the store and
# reload a cut adds cost ~2 units). The largest kernels of the benchmark cost 68.
MAX_BODY_COST = 512


def op_cost(node: Node) -> int:
    """Estimated units per element of computing `node` from its inputs (see OP_COST)."""
    return 0 if node.op in FREE_OPS else OP_COST.get(node.op, 1)


def is_source(node: Node) -> bool:
    return node.op in MEMORY_SOURCES


def is_light(node: Node) -> bool:
    return not is_source(node) and OPS[node.op].kind <= Kind.INJECTIVE


def is_anchor(node: Node) -> bool:
    return node.op in REDUCTIONS or node.op == "matmul"


def is_elementwise(node: Node) -> bool:
    return OPS[node.op].kind == Kind.ELEMWISE and not is_source(node)


def identity_step(node: Node) -> bool:
    """An op that reads its input at its own index (elementwise or reshape)."""
    return is_elementwise(node) or node.op == "reshape"


# ---- kernel queries (memory planning, codegen) ----------------------------------------------


def product_host(kernel: Kernel) -> Node | None:
    """The output whose buffer receives a contraction's product (None: the product itself)."""
    (mm,) = [n for n in kernel.nodes if n.op == "matmul"]
    if mm in kernel.outputs:
        return None
    body = {id(n): n for n in kernel.nodes}
    for o in kernel.outputs:
        same = o.type.nbytes == mm.type.nbytes and o.dtype == mm.dtype
        if same and not stage_reductions(o, body):
            return o
    return None


def stage_reductions(node: Node, body: dict[int, Node]) -> list[Node]:
    """The reductions of a kernel body that `node` is computed from."""
    found, stack, seen = [], [node], set()
    while stack:
        n = stack.pop()
        if id(n) in seen or id(n) not in body:
            continue
        seen.add(id(n))
        if n.op in REDUCTIONS:
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


def loop_stages(kernel: Kernel) -> list[tuple[tuple[int, ...], list[Node]]]:
    """The loops of a kernel that store outputs at their own index: a loop kernel's
    segments, or a contraction's elementwise epilogue followed by its reduction stages."""
    if kernel.form == "loop":
        return segments(kernel)
    if kernel.form != "contraction":
        return []
    body = {id(n): n for n in kernel.nodes}
    (mm,) = [n for n in kernel.nodes if n.op == "matmul"]
    stages: dict[int, list[Node]] = {id(mm): []}
    for o in kernel.outputs:
        if o is not mm:
            found = stage_reductions(o, body)
            stages.setdefault(id(found[0]) if found else id(mm), []).append(o)
    anchors = [mm, *(n for n in kernel.nodes if n.op in REDUCTIONS and id(n) in stages)]
    return [(a.shape, stages[id(a)]) for a in anchors]  # in the order codegen emits them


def identity_reads(kernel: Kernel) -> dict[int, tuple[int, bool]]:
    """Input id -> (last stage reading it, read only at that loop's index), for loop kernels
    and contraction epilogues. Mirrors the code generator: a later loop reads the outputs of
    earlier ones from memory."""
    inside = {id(n) for n in kernel.nodes}
    result: dict[int, tuple[int, bool]] = {}
    stored: set[int] = {id(n) for n in kernel.nodes if n.op == "matmul"}
    for s, (shape, outputs) in enumerate(loop_stages(kernel)):
        stack = [(o, True) for o in outputs]
        seen = set()
        while stack:
            node, clean = stack.pop()
            if (id(node), clean) in seen:
                continue
            seen.add((id(node), clean))
            for x in node.inputs:
                step = clean and identity_step(node) and node.type.size == prod(shape)
                if id(x) in inside and id(x) not in stored:
                    stack.append((x, step))
                elif id(x) not in inside:
                    ok = step and x.type.size == prod(shape)
                    previous = result.get(id(x))
                    if previous is not None and previous[0] == s:
                        ok = ok and previous[1]
                    result[id(x)] = (s, ok)
        stored |= {id(o) for o in outputs}
    return result


# ---- names --------------------------------------------------------------------------------------


def _is_relu(node: Node) -> bool:
    if node.op != "where":
        return False
    cond, a, b = node.inputs
    return cond.op == "gt" and cond.inputs[0] is a and cond.inputs[1] is b and _is_zero(b)


def _is_zero(node: Node) -> bool:
    while node.op == "broadcast_to":
        node = node.inputs[0]
    return node.op == "const" and node.type.size == 1 and float(node.attrs["value"].item()) == 0


def kernel_name(form: str, nodes, inputs, outputs) -> str:
    """`fused_<ops>[<user names>]`: what the kernel computes and whose values it touches."""
    ops: list[str] = []
    hidden = {id(n.inputs[0]) for n in nodes if _is_relu(n)}
    for n in nodes:
        if n.op in LAYOUT or is_source(n) or id(n) in hidden or n.op == "cast":
            continue
        op = "relu" if _is_relu(n) else n.op
        if op not in ops:
            ops.append(op)
    if not ops:
        ops = [next((n.op for n in nodes if not is_source(n)), form)]
    text = "_".join(ops[:4]) + ("_etc" if len(ops) > 4 else "")
    label = f"fused_{text}" if len(ops) > 1 else text
    names: list[str] = []
    for n in [*outputs, *(x for x in inputs if x.op == "param")]:
        name = _layer(n.name) if n.op == "param" else n.name
        if name and name not in names:
            names.append(name)
    if not names:
        names = [x.name for x in inputs if x.op == "input" and x.name]
    if names:
        label += "[" + ",".join(names[:3]) + (",..." if len(names) > 3 else "") + "]"
    return label


def _layer(name: str | None) -> str | None:
    """`dense1.w` -> `dense1`; `adam.m[dense1.w]` -> `adam`."""
    if not name:
        return name
    head = name.split("[", 1)[0]
    return head.rsplit(".", 1)[0] if "." in head else head
