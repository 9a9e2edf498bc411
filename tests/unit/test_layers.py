"""Layers that point one way: the import graph of `src/hestia`, read from the source with `ast`.

Every import statement counts, wherever it is: at module level, under `if TYPE_CHECKING:`, and
inside a function. An import that only names a type is still a dependency of the design, and an
import moved into a function to dodge a cycle at import time is still a cycle.

An edge goes to the module imported: `from .x import y` is an edge to `x.y` when `y` is a module,
else to `x`. A package's `__init__` is a module like any other, and importing `a.b.c` is not
counted as importing `a` and `a.b` (or every module would depend on `hestia/__init__.py`).
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from collections.abc import Iterator
from pathlib import Path

import hestia

SRC = Path(hestia.__file__).parent
LAYERS = ("hestia.http", "hestia.launchers", "hestia.lifecycle", "hestia.routing",
          "hestia.semaphore")


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(SRC.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> Iterator[tuple[str, int]]:
    """`(module, line)` for each import of a hestia module in `path`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "hestia":
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            if module.split(".")[0] != "hestia":
                continue
            for alias in node.names:
                submodule = f"{module}.{alias.name}"
                yield (submodule if submodule in known else module), node.lineno


def import_graph() -> dict[str, dict[str, int]]:
    """Each module's imports of other hestia modules, with the line of (one of) each."""
    found = modules()
    graph: dict[str, dict[str, int]] = {}
    for name, path in found.items():
        edges = graph[name] = {}
        for target, line in imports(name, path, set(found)):
            if target != name and target in found:
                edges.setdefault(target, line)
    return graph


def layer_of(module: str) -> str:
    """The subpackage (layer) a module belongs to, or the module itself when top-level."""
    return next((layer for layer in LAYERS if module == layer or
                 module.startswith(layer + ".")), module)


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of `graph` as `[a, b, …, a]`, or None."""
    done: set[str] = set()
    path: list[str] = []
    on_path: set[str] = set()

    def visit(node: str) -> list[str] | None:
        path.append(node)
        on_path.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt in on_path:
                return [*path[path.index(nxt):], nxt]
            if nxt not in done and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        on_path.discard(node)
        done.add(node)
        return None

    for start in sorted(graph):
        if start not in done and (cycle := visit(start)) is not None:
            return cycle
    return None


def test_the_graph_sees_the_imports_it_should() -> None:
    graph = import_graph()
    assert "hestia.lifecycle.supervisor" in graph["hestia.gateway"]
    assert "hestia.upstream" in graph["hestia.lifecycle.placement"]
    assert "hestia.launchers.base" in graph["hestia.lifecycle.supervisor"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_lifecycle_layer_imports_nothing_of_the_http_layer() -> None:
    graph = import_graph()
    wrong = [f"{module}:{line} imports {target}"
             for module, edges in graph.items() if layer_of(module) == "hestia.lifecycle"
             for target, line in edges.items() if layer_of(target) == "hestia.http"]
    assert not wrong, "\n".join(wrong)


def test_no_module_imports_itself_back() -> None:
    graph = import_graph()
    cycle = find_cycle({module: set(edges) for module, edges in graph.items()})
    assert cycle is None, "import cycle: " + "; ".join(
        f"{a}:{graph[a][b]} imports {b}" for a, b in zip(cycle, cycle[1:], strict=False))


def test_no_layer_imports_itself_back() -> None:
    """Subpackages (http, launchers, lifecycle, routing, semaphore) and top-level modules form
    layers that point one way: no module of a layer imports a layer that imports it back."""
    graph = import_graph()
    layers: dict[str, set[str]] = {}
    why: dict[tuple[str, str], str] = {}
    for module, edges in graph.items():
        for target, line in edges.items():
            a, b = layer_of(module), layer_of(target)
            if a != b:
                layers.setdefault(a, set()).add(b)
                why.setdefault((a, b), f"{module}:{line} imports {target}")
    cycle = find_cycle(layers)
    assert cycle is None, "layer cycle: " + "; ".join(
        why[a, b] for a, b in zip(cycle, cycle[1:], strict=False))


def test_no_module_is_longer_than_a_newcomer_can_read() -> None:
    long = {name: lines for name, path in modules().items()
            if (lines := len(path.read_text().splitlines())) > 500}
    assert not long, long


def test_no_mixin_declaration_hides_what_another_part_of_the_supervisor_defines() -> None:
    """`Supervisor`'s mixins declare what they use of their owner as `def f(self): ...`. Such a
    declaration must never be what `Supervisor.f` resolves to: a mixin earlier in the bases
    would silently replace another mixin's real method with a no-op."""
    from hestia.lifecycle.supervisor import Supervisor

    hidden = [f"{base.__name__}.{name}"
              for base in Supervisor.__mro__[1:-1]
              for name, member in vars(base).items()
              if hasattr(member, "__code__") and _is_ellipsis(member)
              and getattr(Supervisor, name) is member]
    assert not hidden, hidden


def _is_ellipsis(function: object) -> bool:
    """Is the body `...` alone (a docstring allowed)?"""
    source = textwrap.dedent(inspect.getsource(function))  # type: ignore[arg-type]
    node = ast.parse(source).body[0]
    assert isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    body = [s for s in node.body
            if not (isinstance(s, ast.Expr) and isinstance(s.value, ast.Constant)
                    and isinstance(s.value.value, str) and s is node.body[0])]
    return len(body) == 1 and isinstance(body[0], ast.Expr) and \
        isinstance(body[0].value, ast.Constant) and body[0].value.value is Ellipsis
