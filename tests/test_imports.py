"""The import graph of `src/ampo` has no circle, at module level or inside functions: layers import
downward only (docs/architecture.md). The graph is read from the source with `ast` (every `import`
statement anywhere in a module), so a function-level import counts as much as a top-level one, and
importing `a.b.c` also counts as importing the packages `a.b` above it (their `__init__` runs first)."""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).parent.parent / "src"


def module_graph(src: Path = SRC, package: str = "ampo") -> dict[str, set[str]]:
    """Each module of `package` -> the modules of `package` it imports (anywhere in its source)."""
    modules = {}
    for path in (src / package).rglob("*.py"):
        parts = list(path.relative_to(src).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        modules[".".join(parts[:-1] if is_package else parts)] = (path, is_package)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, (path, is_package) in modules.items():
        here = name.split(".") if is_package else name.split(".")[:-1]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(here[: len(here) - node.level + 1] + [node.module or ""]).strip(".") if node.level \
                    else node.module
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for target in targets:
                if not (target == package or target.startswith(package + ".")):
                    continue
                assert target in modules, f"{path}: imports {target}, which is not a module of {package}"
                if target != name:
                    graph[name].add(target)
                parent = target.rpartition(".")[0]
                while parent and parent != package:  # a.b.c runs a.b's __init__ first
                    if not (name == parent or name.startswith(parent + ".")):
                        graph[name].add(parent)
                    parent = parent.rpartition(".")[0]
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_circle_in_ampo():
    assert circles(module_graph()) == []


def test_the_check_sees_a_function_level_circle_and_one_through_a_package(tmp_path):
    pkg = tmp_path / "ampo"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from .b import g\n")
    (pkg / "b.py").write_text("from . import a\n")
    (pkg / "sub" / "__init__.py").write_text("from .inner import x\n")
    (pkg / "sub" / "inner.py").write_text("x = 1\n")
    (pkg / "c.py").write_text("from .sub.inner import x\n")
    (pkg / "sub" / "more.py").write_text("def h():\n    from ..c import x\n")
    (pkg / "sub" / "__init__.py").write_text("from .inner import x\nfrom .more import h\n")
    assert sorted(circles(module_graph(tmp_path))) == [["ampo.a", "ampo.b"], ["ampo.c", "ampo.sub", "ampo.sub.more"]]
