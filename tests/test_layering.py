"""Layers import downward only (DESIGN §1), checked on the source with `ast`.

Every import counts, including those inside functions (a lazy import is still a
dependency), and relative imports are resolved against the importing module.
"""

from __future__ import annotations

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "graphc"

# layer -> the graphc layers it must not import
FORBIDDEN = {
    "ir": {"passes", "codegen", "runtime", "frontend"},
    "passes": {"codegen", "runtime", "frontend"},
    "codegen": {"runtime", "frontend"},
    "runtime": {"frontend"},
}


def module_name(path: pathlib.Path, package: pathlib.Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _type_checking_blocks(tree: ast.AST) -> set[int]:
    """ids of the import statements under `if TYPE_CHECKING:` (annotations, not run)."""
    skipped = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            skipped |= {id(n) for statement in node.body for n in ast.walk(statement)}
    return skipped


def imported_modules(path: pathlib.Path, root: pathlib.Path = PACKAGE) -> set[str]:
    """Absolute names of every module `path` imports when it runs, anywhere in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = set()
    skipped = _type_checking_blocks(tree)
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.add(module)
            # `from graphc import passes` imports graphc.passes
            found |= {f"{module}.{alias.name}" for alias in node.names}
    return found


def graphc_layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "graphc" and len(parts) > 1 else None


SOURCES = sorted(PACKAGE.rglob("*.py"))


def test_sources_found():
    names = {module_name(p) for p in SOURCES}
    assert {"graphc.ir.ops", "graphc.passes.autodiff", "graphc.errors"} <= names


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: module_name(p))
def test_imports_go_downward(path):
    layer = graphc_layer(module_name(path))
    if layer not in FORBIDDEN:
        return
    bad = sorted(m for m in imported_modules(path) if graphc_layer(m) in FORBIDDEN[layer])
    assert not bad, f"{module_name(path)} ({layer}) imports {bad}"


def test_errors_imports_nothing_from_graphc():
    imports = imported_modules(PACKAGE / "errors.py")
    assert not [m for m in imports if m == "graphc" or m.startswith("graphc.")]


def test_ir_does_not_import_llvmlite():
    """The scalar emitters are duck-typed so that `ir` never needs LLVM."""
    for path in (PACKAGE / "ir").glob("*.py"):
        assert not [m for m in imported_modules(path) if m.split(".")[0] == "llvmlite"], path


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    source = tmp_path / "graphc" / "ir" / "example.py"
    source.parent.mkdir(parents=True)
    source.write_text(
        "from . import ops\n"
        "from ..passes import autodiff\n"
        "def f():\n"
        "    import graphc.runtime.jit\n"
        "    from graphc import frontend\n"
    )
    found = imported_modules(source, tmp_path / "graphc")
    assert {"graphc.ir.ops", "graphc.passes.autodiff", "graphc.runtime.jit"} <= found
    assert "graphc.frontend" in found


def test_no_import_cycles():
    """graphc's modules import one another without a cycle, lazy imports included (a
    function-level import is a dependency too; only `if TYPE_CHECKING:` ones are not)."""
    import networkx as nx

    names = {module_name(p) for p in SOURCES}
    dependencies = nx.DiGraph()
    for path in SOURCES:
        module = module_name(path)
        dependencies.add_node(module)
        for imported in imported_modules(path):
            # `from graphc.ir.ops import OPS` names graphc.ir.ops.OPS: its module counts
            while imported and imported not in names:
                imported = imported.rpartition(".")[0]
            if imported and imported != module and not module.startswith(imported + "."):
                dependencies.add_edge(module, imported)
    cycles = sorted(sorted(cycle) for cycle in nx.simple_cycles(dependencies))
    assert not cycles, f"import cycles: {cycles}"


# ---- what an op is, is said in its stanza (ir/ops.py) ------------------------------------------


def _compares_op_name(node: ast.AST) -> bool:
    """`x.op == "..."`, `x.op in (...)`, `TABLE[x.op]` / `TABLE.get(x.op)` on a table other
    than the registry itself."""

    def is_op(n):
        return isinstance(n, ast.Attribute) and n.attr == "op"

    if isinstance(node, ast.Compare):
        return any(is_op(n) for n in (node.left, *node.comparators))
    if isinstance(node, ast.Subscript) and is_op(node.slice):
        return ast.unparse(node.value) != "OPS"
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        table = ast.unparse(node.func.value)
        return node.func.attr == "get" and any(map(is_op, node.args)) and table != "OPS"
    return False


def _rewrite_rules(tree: ast.AST) -> set[int]:
    """ids of the nodes inside simplify's `@rule(op)` functions and its `RULES[op]` lookup:
    algebraic identities are about named ops by nature (STYLE.md: rules keyed by op)."""
    inside = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and any(
            isinstance(d, ast.Call) and ast.unparse(d.func) == "rule" for d in node.decorator_list
        ):
            inside |= {id(n) for n in ast.walk(node)}
        if isinstance(node, ast.Call) and ast.unparse(node.func) == "RULES.get":
            inside.add(id(node))
    return inside


def op_name_tests(path: pathlib.Path) -> list[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    allowed = _rewrite_rules(tree)
    return [
        f"{path.name}:{node.lineno}: {ast.unparse(node)}"
        for node in ast.walk(tree)
        if id(node) not in allowed and _compares_op_name(node)
    ]


@pytest.mark.parametrize(
    "path",
    sorted([*(PACKAGE / "passes").glob("*.py"), *(PACKAGE / "codegen").glob("*.py")]),
    ids=lambda p: module_name(p),
)
def test_no_pass_or_emitter_tests_an_op_name(path):
    """Passes and emitters ask an op's stanza (its kind and traits), never its name: adding
    an op then touches ir/ops.py and nothing else."""
    assert not op_name_tests(path)


def test_the_op_name_checker_sees_comparisons(tmp_path):
    source = tmp_path / "example.py"
    source.write_text(
        "def f(node, other):\n"
        "    a = node.op == 'matmul'\n"
        "    b = other.op in LAYOUT\n"
        "    c = COST[node.op] + COST.get(node.op, 1) + OPS[node.op].cost\n"
        "@rule('neg')\n"
        "def g(node):\n"
        "    return node.inputs[0].op == 'neg'\n"
    )
    found = op_name_tests(source)
    assert [line.split(":")[1] for line in found] == ["2", "3", "4", "4"], found
