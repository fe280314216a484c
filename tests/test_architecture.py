"""The package's shape, checked from its source (no imports run): the import graph between
mtkd_tf's modules has no cycle, few modules sit at the top of mtkd_tf/, and no class or
function is longer than a reader can hold at once.

The import graph counts every import between mtkd_tf modules, wherever it is written: at
module level, under `if TYPE_CHECKING:` and inside functions (a deferred import still couples
the two modules). `from mtkd_tf.x import y` is an edge to the module `mtkd_tf.x.y` when y is
one, else to `mtkd_tf.x`; `import mtkd_tf` and `from mtkd_tf import name` are edges to the
package `mtkd_tf`. A package's `__init__.py` is a node like any module, so since
`mtkd_tf/__init__.py` re-exports from nearly every module, no module may import `mtkd_tf`
itself (nor a package `__init__` that imports back into it).

Run as a script, it prints the counts of a tree (default: this checkout):

    python tests/test_architecture.py [/path/to/a/checkout]
"""

from __future__ import annotations

import ast
import os
import sys
from typing import Iterator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = "mtkd_tf"

MAX_TOP_MODULES = 10  # .py files directly in mtkd_tf/, __init__.py included
MAX_CLASS_LINES = 250
MAX_FUNCTION_LINES = 60  # from `def` to the last line, docstring included; methods and nested functions too

# Longer than the limits when the limits were set; each may shrink, none may grow, and nothing
# else may pass a limit. An entry that is back within its limit must be deleted here.
# "module:qualified name" -> lines.
TOO_LONG_TODAY: dict[str, int] = {}


def modules(root: str = ROOT) -> dict[str, str]:
    """Every module of the package under `root`: dotted name -> file (a package is its __init__.py)."""
    found = {}
    for directory, subdirectories, files in os.walk(os.path.join(root, PACKAGE)):
        subdirectories[:] = sorted(d for d in subdirectories if not d.startswith((".", "__pycache__")))
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(directory, name)
                parts = os.path.relpath(path, root)[: -len(".py")].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                found[".".join(parts)] = path
    return found


def _is_package(name: str, files: dict[str, str]) -> bool:
    return name in files and files[name].endswith("__init__.py")


def _target(name: str, files: dict[str, str]) -> str | None:
    """The module `name` names, or the nearest enclosing one that exists (None: not ours)."""
    while name:
        if name in files:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(name: str, files: dict[str, str]) -> set[str]:
    """The package's modules `name` imports, anywhere in its source."""
    with open(files[name], encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), files[name])
    package = name if _is_package(name, files) else name.rpartition(".")[0]
    edges = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                edges.add(_target(alias.name, files))
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from the module's own package up
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                edges.add(submodule if submodule in files else _target(source, files))
    edges.discard(None)
    edges.discard(name)
    return edges


def import_graph(root: str = ROOT) -> dict[str, set[str]]:
    files = modules(root)
    return {name: imports_of(name, files) for name in files}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle through each strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

    def visit(node: str) -> None:  # recursion depth is bounded by the number of modules
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_a_cycle(graph, component) for component in components]


def _a_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module, as [a, b, ..., a]."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for other in sorted(graph[node] & component):
                if other == start:
                    return paths[node] + [start]
                if other not in paths:
                    paths[other] = paths[node] + [other]
                    following.append(other)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {component}")


def top_modules(root: str = ROOT) -> list[str]:
    return sorted(name for name in os.listdir(os.path.join(root, PACKAGE)) if name.endswith(".py"))


def _definitions(node: ast.AST, prefix: str = "") -> Iterator[tuple[ast.AST, str]]:
    """Every class and function under `node`, nested ones too, with its qualified name."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            yield child, prefix + child.name
            yield from _definitions(child, f"{prefix}{child.name}.")
        else:
            yield from _definitions(child, prefix)


def lengths(root: str = ROOT) -> tuple[dict[str, int], dict[str, int]]:
    """Lines of every class and of every function (methods and nested functions included):
    ({"module:Qualified.name": lines}, {...})."""
    classes, functions = {}, {}
    for name, path in modules(root).items():
        with open(path, encoding="utf-8") as handle:
            tree = ast.parse(handle.read(), path)
        for node, qualified in _definitions(tree):
            kind = classes if isinstance(node, ast.ClassDef) else functions
            kind[f"{name}:{qualified}"] = node.end_lineno - node.lineno + 1
    return classes, functions


def too_long(root: str = ROOT) -> dict[str, int]:
    classes, functions = lengths(root)
    return {
        **{key: size for key, size in classes.items() if size > MAX_CLASS_LINES},
        **{key: size for key, size in functions.items() if size > MAX_FUNCTION_LINES},
    }


def counts(root: str = ROOT) -> dict[str, object]:
    graph = import_graph(root)
    classes, functions = lengths(root)
    longest_class = max(classes.items(), key=lambda item: item[1])
    longest_function = max(functions.items(), key=lambda item: item[1])
    return {
        "modules": len(graph),
        "modules at the top of mtkd_tf/": len(top_modules(root)),
        "import edges": sum(len(edges) for edges in graph.values()),
        "cycles": cycles(graph),
        "longest class": f"{longest_class[0]} ({longest_class[1]} lines)",
        "longest function": f"{longest_function[0]} ({longest_function[1]} lines)",
        f"classes > {MAX_CLASS_LINES} lines": sum(size > MAX_CLASS_LINES for size in classes.values()),
        f"functions > {MAX_FUNCTION_LINES} lines": sum(size > MAX_FUNCTION_LINES for size in functions.values()),
    }


def test_the_import_graph_has_no_cycle():
    found = cycles(import_graph())
    assert not found, "import cycles between mtkd_tf modules:\n" + "\n".join(" -> ".join(c) for c in found)


def test_the_graph_sees_every_kind_of_import(tmp_path):
    package = tmp_path / PACKAGE
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("from mtkd_tf.sub import b\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from mtkd_tf.sub.c import C\n"
    )
    (package / "sub" / "c.py").write_text("def late():\n    from . import b\n    import mtkd_tf\n")
    graph = import_graph(str(tmp_path))
    assert graph == {
        "mtkd_tf": {"mtkd_tf.sub.b"},
        "mtkd_tf.sub": set(),
        "mtkd_tf.sub.b": {"mtkd_tf.sub.c"},
        "mtkd_tf.sub.c": {"mtkd_tf.sub.b", "mtkd_tf"},
    }
    assert cycles(graph) == [["mtkd_tf", "mtkd_tf.sub.b", "mtkd_tf.sub.c", "mtkd_tf"]]


def test_few_modules_sit_at_the_top_of_the_package():
    top = top_modules()
    assert len(top) <= MAX_TOP_MODULES, f"{len(top)} modules at the top of mtkd_tf/ (at most {MAX_TOP_MODULES}): {top}"


def test_no_new_class_or_function_is_too_long():
    found = too_long()
    new = {key: size for key, size in found.items() if key not in TOO_LONG_TODAY}
    grown = {key: (TOO_LONG_TODAY[key], size) for key, size in found.items() if size > TOO_LONG_TODAY.get(key, size)}
    assert not new, (
        f"longer than {MAX_CLASS_LINES} lines (a class) or {MAX_FUNCTION_LINES} (a function): {new}; split them"
    )
    assert not grown, f"grew past their TOO_LONG_TODAY lengths (recorded, now): {grown}"


def test_the_allow_list_names_only_what_is_still_too_long():
    stale = sorted(set(TOO_LONG_TODAY) - set(too_long()))
    assert not stale, f"gone or within the limits now: delete them from TOO_LONG_TODAY: {stale}"


if __name__ == "__main__":
    for key, value in counts(sys.argv[1] if len(sys.argv) > 1 else ROOT).items():
        if key == "cycles":
            print(f"cycles: {len(value)}")
            for cycle in value:
                print("  " + " -> ".join(cycle))
        else:
            print(f"{key}: {value}")
