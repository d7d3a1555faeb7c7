"""The architecture, checked: no import cycles (function-level imports included), library modules
never import the command front-ends, and data sets and models sit below the trainer."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "optbench"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}


def imported(module: str) -> set[str]:
    """optbench modules that `module` imports anywhere in its body, except under TYPE_CHECKING."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.update(owner(a.name) for a in child.names)
            elif isinstance(child, ast.ImportFrom) and child.module:
                base = child.module
                if child.level:  # relative: from the package that holds `module`
                    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
                    base = ".".join([*package.split(".")[: len(package.split(".")) - child.level + 1], base])
                subs = [f"{base}.{a.name}" for a in child.names if f"{base}.{a.name}" in MODULES]
                found.update(subs if len(subs) == len(child.names) else [*subs, owner(base)])
            visit(child)

    visit(ast.parse(MODULES[module].read_text()))
    return {m for m in found if m and m != module}


def owner(name: str) -> str:
    """The optbench module that holds `name` (a module, or a name inside one); '' outside optbench."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


GRAPH = {m: imported(m) for m in MODULES}


def reachable(start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in GRAPH[todo.pop()] - seen:
            seen.add(dep)
            todo.append(dep)
    return seen


def test_no_import_cycles():
    cycles = sorted(m for m in MODULES if m in reachable(m) and not m.endswith("__init__"))
    # A package's __init__ re-exporting its modules is not a cycle of its own.
    real = [m for m in cycles if any(m in reachable(d) for d in GRAPH[m] if d != m.rpartition(".")[0])]
    assert real == [], f"modules on an import cycle: {real}"


def test_library_modules_never_import_commands():
    library = [m for m in MODULES if not m.startswith(("optbench.commands", "optbench.cli", "optbench.__main__"))]
    offenders = {m: sorted(d for d in GRAPH[m] if d.startswith("optbench.commands.") and d != "optbench.commands.common")
                 for m in library}
    assert {m: d for m, d in offenders.items() if d} == {}


@pytest.mark.parametrize("package", ["optbench.datasets", "optbench.models", "optbench.optim"])
def test_components_sit_below_the_trainer(package):
    above = {"optbench.trainer", "optbench.gan_trainer", "optbench.update", "optbench.cli"}
    for module in (m for m in MODULES if m.startswith(package)):
        assert not reachable(module) & above, f"{module} imports {sorted(reachable(module) & above)}"
