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


def imported_modules(path: pathlib.Path, root: pathlib.Path = PACKAGE) -> set[str]:
    """Absolute names of every module `path` imports, anywhere in the file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module_name(path, root).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found = set()
    for node in ast.walk(tree):
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
