"""Imports flow one way (DESIGN.md, "Import direction"), read from the source: every import
statement of every module, also those inside functions (not those under TYPE_CHECKING).

- the package has no import cycle;
- the core never imports a plug-in (onellm.modalities, onellm.experts, onellm.tasks): it
  finds them through the registries' entry points;
- an import inside a function defers an optional extra or a heavy library, says why on its
  line or the line before, and is never one of onellm's own core modules (but in the entry
  points, `import onellm` and the `onellm` command, which defer torch to first use).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# the repository's folders as they install (pyproject.toml's package-dir)
PACKAGES = {
    "onellm": ROOT / "onellm",
    "onellm.experts": ROOT / "experts",
    "onellm.modalities": ROOT / "modalities",
}
PLUGINS = ("onellm.experts", "onellm.modalities", "onellm.tasks")
# onellm's modules a function may import: the serve and eval extras'; and the entry points (`import
# onellm`, the `onellm` command) may defer the model's heavy imports (torch) to first use
DEFERRED_OWN = ("onellm.serve", "onellm.lmms")
LAZY_ENTRY = ("onellm", "onellm.cli.main")


def modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = list(path.relative_to(folder).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


MODULES = modules()


def owner(name: str) -> str | None:
    """The module `name` (a module, or a name inside one) refers to, if it is ours."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in MODULES:
            return ".".join(parts)
        parts.pop()
    return None


def is_plugin(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in PLUGINS)


def imports(module: str) -> list[tuple[str, bool, int]]:
    """(imported module of ours, inside a function, line) for each import in `module`."""
    path = MODULES[module]
    tree = ast.parse(path.read_text())
    skip, inner = set(), set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skip |= {id(n) for n in ast.walk(node)}
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            inner |= {id(n) for n in ast.walk(node) if n is not node}
    base = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    out = []
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            head = base[: len(base) - node.level + 1] if node.level else []
            head = ".".join([*head, *([node.module] if node.module else [])])
            names = [head, *(f"{head}.{a.name}" for a in node.names)]
        else:
            continue
        for target in {owner(n) for n in names} - {None, module}:
            out.append((target, id(node) in inner, node.lineno))
        if not any(owner(n) for n in names) and id(node) in inner:
            out.append((names[0], True, node.lineno))  # a library, imported in a function
    return out


def graph() -> dict[str, set[str]]:
    return {m: {t for t, _, _ in imports(m) if t in MODULES} for m in MODULES}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_the_walk_sees_the_package():
    assert {
        "onellm.model",
        "onellm.registry",
        "onellm.modalities.image",
        "onellm.experts.projection.upm",
        "onellm.tasks.caption",
    } <= set(MODULES)
    assert "onellm.errors" in graph()["onellm.registry"]


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_package_has_no_import_cycle():
    assert cycles(graph()) == []


@pytest.mark.parametrize("module", sorted(m for m in MODULES if not is_plugin(m)))
def test_the_core_imports_no_plugin(module):
    plugins = sorted({t for t, _, _ in imports(module) if is_plugin(t)})
    assert plugins == [], f"{module} imports the plug-ins {plugins}: ask the registry instead"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_an_import_inside_a_function_defers_a_library_and_says_why(module):
    lines = MODULES[module].read_text().splitlines()
    for target, inside, line in imports(module):
        if not inside:
            continue
        where = f"{MODULES[module].relative_to(ROOT)}:{line} imports {target} in a function"
        if target in MODULES and module not in LAZY_ENTRY:
            assert target.startswith(DEFERRED_OWN), f"{where}: import it at the top"
        above = line - 2  # the comment may head a block of imports
        while above >= 0 and lines[above].strip().startswith(("import ", "from ")):
            above -= 1
        said = "#" in lines[line - 1] or lines[above].strip().startswith("#")
        assert said, f"{where} without a one-line reason (a comment on that line or above)"
