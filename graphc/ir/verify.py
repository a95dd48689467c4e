"""The verifier: every pass takes valid IR and returns valid IR (DESIGN §2).

`verify(graph)` checks that the node list is a topological order of an acyclic graph of
known ops, each node typed as its op infers from its inputs; that outputs and updates
refer to the graph's nodes, update targets are params and values have the param's type;
that graph inputs are distinct input nodes. `verify(graph, kernels)` also checks a fusion
result: the kernels partition the computed nodes, each kernel's inputs and outputs match
its body, and the kernel order is a valid schedule. Errors name the node as the printer
does (`%name` or `%N`) with its source line.
"""

from __future__ import annotations

from graphc.errors import VerifyError
from graphc.ir.graph import FORMS, Graph, Node
from graphc.ir.ops import OPS, SOURCES
from graphc.ir.printer import Namer


class _Checker:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.label = Namer()
        for node in [*graph.inputs, *graph.params, *graph.nodes]:
            self.label(node)

    def describe(self, node: Node) -> str:
        where = f" at {node.loc}" if node.loc else ""
        return f"{self.label(node)} ({node.op}: {node.type}{where})"

    def fail(self, message: str, node: Node | None = None):
        prefix = f"{self.describe(node)}: " if node is not None else ""
        raise VerifyError(f"verify {self.graph.name}: {prefix}{message}")

    def check_acyclic(self):
        """Depth-first search from every node; a back edge is a cycle (named in the error)."""
        state: dict[Node, int] = {}  # 1: on the current path, 2: finished
        roots = [*self.graph.nodes, *self.graph.outputs, *(v for _, v in self.graph.updates)]
        for root in roots:
            if root in state:
                continue
            path, stack = [root], [iter(root.inputs)]
            state[root] = 1
            while stack:
                child = next(stack[-1], None)
                if child is None:
                    state[path.pop()] = 2
                    stack.pop()
                elif state.get(child) == 1:
                    cycle = path[path.index(child) :] + [child]
                    names = " -> ".join(self.label(n) for n in reversed(cycle))
                    self.fail(f"cycle {names}", child)
                elif child not in state:
                    state[child] = 1
                    path.append(child)
                    stack.append(iter(child.inputs))

    def check_nodes(self):
        defined: set[Node] = set()
        for node in self.graph.nodes:
            if node in defined:
                self.fail("listed twice in the graph's nodes", node)
            opdef = OPS.get(node.op)
            if opdef is None:
                self.fail(f"unknown op {node.op!r}", node)
            if opdef.arity is not None and len(node.inputs) != opdef.arity:
                self.fail(f"{node.op} takes {opdef.arity} inputs, got {len(node.inputs)}", node)
            for x in node.inputs:
                if x not in defined:
                    self.fail(f"input {self.describe(x)} is not defined before its use", node)
            try:
                inferred = opdef.infer([x.type for x in node.inputs], node.attrs)
            except Exception as error:  # noqa: BLE001 -- any inference failure is invalid IR
                self.fail(f"{node.op} rejects its inputs or attrs: {error}", node)
            if inferred != node.type:
                inputs = ", ".join(str(x.type) for x in node.inputs)
                self.fail(
                    f"typed {node.type} but {node.op} infers {inferred} from ({inputs})", node
                )
            if node.op == "param":
                self.check_param(node)
            defined.add(node)
        return defined

    def check_param(self, node: Node):
        storage = node.attrs.get("storage")
        value = getattr(storage, "value", None)
        if value is None or value.shape != node.shape or value.dtype != node.type.np_dtype:
            found = "none" if value is None else f"{value.dtype} {value.shape}"
            self.fail(f"param storage ({found}) does not match its type", node)

    def check_interface(self, defined: set[Node]):
        graph = self.graph
        names = set()
        for x in graph.inputs:
            if x.op != "input":
                self.fail("listed among the graph inputs but is not an input", x)
            if x.name in names:
                self.fail(f"duplicate input name {x.name!r}", x)
            names.add(x.name)
        listed = {x for x in graph.inputs}
        for node in graph.nodes:
            if node.op == "input" and node not in listed:
                self.fail("input read by the graph but not among its inputs", node)
        for node in graph.outputs:
            if node not in defined:
                self.fail("output is not a node of the graph", node)
        targets: set[Node] = set()
        for target, value in graph.updates:
            problem = update_problem(target, value, targets)
            if problem:
                self.fail(f"{problem}: update <- {self.describe(value)}", target)
            targets.add(target)
            for node in (target, value):
                if node not in defined:
                    self.fail(f"update of {self.label(target)} refers outside the graph", node)

    def check_kernels(self, kernels):
        """Kernels may recompute a cheap value in several bodies, but store each value once,
        and read only sources and values stored by kernels scheduled before them."""
        producer: dict[Node, int] = {}  # node -> index of the kernel that stores it
        computed: set[Node] = set()
        for index, kernel in enumerate(kernels):
            if kernel.form not in FORMS:
                self.fail(f"kernel {kernel.name}: unknown form {kernel.form!r}; forms: {FORMS}")
            computed.update(n for n in kernel.nodes)
            for node in kernel.outputs:
                if node in producer:
                    other = kernels[producer[node]].name
                    self.fail(f"stored by both kernel {other} and kernel {kernel.name}", node)
                producer[node] = index
        for node in self.graph.nodes:
            if node.op not in SOURCES and node not in computed:
                self.fail("computed node in no kernel", node)
        for node in [*self.graph.outputs, *(v for _, v in self.graph.updates)]:
            if node.op not in SOURCES and node not in producer:
                self.fail("program result stored by no kernel", node)
        in_graph = {n for n in self.graph.nodes}
        for index in range(len(kernels)):
            self.check_kernel(kernels, index, producer, in_graph)

    def check_kernel(self, kernels, index, producer, in_graph):
        kernel = kernels[index]
        title = f"kernel {kernel.name}"
        body = {n for n in kernel.nodes}
        inputs = {x for x in kernel.inputs}
        for x in kernel.inputs:
            if x in body:
                self.fail(f"{title}: lists its own body node as an input", x)
            if x.op not in SOURCES:
                if x not in producer:
                    self.fail(f"{title}: reads a value no kernel stores", x)
                elif producer[x] >= index:
                    later = kernels[producer[x]].name
                    self.fail(f"{title}: reads a value of kernel {later}, not scheduled before", x)
        seen: set[Node] = set()
        for node in kernel.nodes:
            if node not in in_graph:
                self.fail(f"{title}: body node is not in the graph", node)
            for x in node.inputs:
                if x in body and x not in seen:
                    self.fail(f"{title}: body is not in dependency order", node)
                if x not in body and x not in inputs:
                    self.fail(
                        f"{title}: reads {self.label(x)}, neither in its body nor inputs", node
                    )
            seen.add(node)
        for x in kernel.outputs:
            if x not in body:
                self.fail(f"{title}: output is not a body node", x)


def update_problem(target: Node, value: Node, updated: set[Node]) -> str | None:
    """Why `update target <- value` is invalid (None if it is valid), given the params
    `updated` by earlier updates. The compiled step writes `value` over the param's buffer,
    so anything but the param's exact type would write past it or reinterpret it."""
    if target.op != "param":
        return f"update target is not a param but {target.op}"
    if target in updated:
        return "param updated twice"
    if value.type != target.type:
        return f"update value is {value.type} but the param is {target.type}"
    return None


def verify(graph: Graph, kernels=None) -> Graph:
    """Raise VerifyError unless `graph` (and its kernel partition, if given) is valid IR."""
    checker = _Checker(graph)
    checker.check_acyclic()
    defined = checker.check_nodes()
    checker.check_interface(defined)
    if kernels is not None:
        checker.check_kernels(list(kernels))
    return graph
