"""The shape of src/attnseg (issue #17): no module over 500 lines, no function over 80 lines, no import cycles.

Lines are counted as the files hold them (docstrings and comments included). A function's length runs from its
``def`` line to its last line (decorators excluded, nested functions counted in their parent too). Cycles are
among module-level imports only (those inside functions run later, when every module is loaded), without the
``if TYPE_CHECKING:`` ones, and an import names the module it loads, not its parent packages.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "attnseg"
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80


def package_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package (a package by its ``__init__.py``)."""
    modules = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def relative(path: Path) -> str:
    return path.relative_to(PACKAGE.parents[1]).as_posix()


def long_functions(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                found.append(f"{relative(path)}:{node.lineno} {node.name} ({length} lines)")
    return found


def is_type_checking_block(node: ast.stmt) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    name = test.id if isinstance(test, ast.Name) else test.attr if isinstance(test, ast.Attribute) else None
    return name == "TYPE_CHECKING"


def module_level_imports(body: list[ast.stmt]) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is loaded: the body and its if/try blocks, not functions or classes."""
    found: list[ast.Import | ast.ImportFrom] = []
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        elif isinstance(node, ast.If) and not is_type_checking_block(node):
            found += module_level_imports(node.body) + module_level_imports(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                found += module_level_imports(block)
    return found


def imported_package_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Package modules that loading `name` imports directly."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in module_level_imports(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)).body):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        base = node.module or ""
        if node.level:
            anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
            base = ".".join(anchor + ([base] if base else []))
        # `from pkg import sub` loads the submodule `pkg.sub` when there is one, else it reads a name of `pkg`.
        targets.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
    return {target for target in targets if target in modules and target != name}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_no_module_over_500_lines():
    lengths = {path: len(path.read_text(encoding="utf-8").splitlines()) for path in package_modules().values()}
    long = [f"{relative(path)} ({count} lines)" for path, count in lengths.items() if count > MAX_MODULE_LINES]
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_no_function_over_80_lines():
    long = [entry for path in package_modules().values() for entry in long_functions(path)]
    assert not long, f"functions over {MAX_FUNCTION_LINES} lines: {long}"


def test_no_import_cycles_among_package_modules():
    modules = package_modules()
    graph = {name: imported_package_modules(name, path, modules) for name, path in modules.items()}
    cycles = import_cycles(graph)
    assert not cycles, f"import cycles (module-level imports): {cycles}"


def test_the_cycle_finder_finds_a_cycle_and_ignores_a_chain():
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert import_cycles({"a": {"b"}, "b": {"c"}, "c": set()}) == []


def test_the_import_reader_resolves_relative_and_submodule_imports(tmp_path):
    path = tmp_path / "mod.py"
    path.write_text("from . import sibling\nfrom .. import top\nfrom attnseg.pkg import name\n"
                    "def lazy():\n    import attnseg.late\n"
                    "if TYPE_CHECKING:\n    import attnseg.typing_only\n")
    modules = {name: path for name in ("attnseg", "attnseg.pkg", "attnseg.pkg.sibling", "attnseg.pkg.mod",
                                       "attnseg.top", "attnseg.late", "attnseg.typing_only")}
    assert imported_package_modules("attnseg.pkg.mod", path, modules) == {"attnseg.pkg.sibling", "attnseg.top",
                                                                          "attnseg.pkg"}
