"""The layering checker: the package's layers and the rules that keep them. Every module sits
in one layer, imports only sideways or down, and no two modules import each other.

Layers, lowest first (a module's layer is its first subpackage under ``ringpipe/``):

    core < shm < ops < mesh < http < client < process

- A module imports only from its own layer or a lower one. This holds for every import the
  source names: at module level, under ``if TYPE_CHECKING:`` and inside a function. The
  package root ``ringpipe/__init__.py`` sits below ``core`` (every import of a submodule runs
  it first), and ``ringpipe/__main__.py`` above ``process`` (nothing imports it).
- No import cycle between modules, counting the imports that run when a module is loaded and
  those under ``TYPE_CHECKING`` (a cycle there is a cycle for the type checker and for a
  reader). A function-local import breaks a cycle at run time, so it does not count here.
- ``core`` is pure: it names only the standard library (``sys.stdlib_module_names``) and
  itself, names no I/O, concurrency or clock module, and importing it in a fresh interpreter
  loads no I/O module, not even transitively.
- No module imports by name at run time (``__import__``, ``importlib.import_module``): that
  would hide an import from every rule above.
- No module is over ``MAX_MODULE_LINES`` lines (STYLE: small modules, one job each): one
  that outgrows it is split where its jobs part, not trimmed to fit.

The checker reads source with ``ast`` and never imports the package, except for the fresh
interpreter of the ``core`` check. It takes any package directory, so the self-tests feed it
a small synthetic package with each kind of fault and check that it reports them.

The tests that apply it: ``tests/unit/test_layering.py`` (static) and
``tests/integration/test_layering_runtime.py`` (the fresh interpreter of the ``core`` check).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

import ringpipe

PACKAGE_DIR = Path(ringpipe.__file__).resolve().parent

#: The layers, lowest first. ``client`` (the Python client) is planned: a module there is in a
#: known layer between ``http`` and ``process``.
LAYERS = ("core", "shm", "ops", "mesh", "http", "client", "process")
#: Where the package's root and its ``__main__`` rank: below and above every layer.
ROOT, MAIN = "<root>", "<main>"
RANK = {ROOT: -1, **{layer: rank for rank, layer in enumerate(LAYERS)}, MAIN: len(LAYERS)}

#: Modules that do I/O, run concurrently or read the clock: ``core`` names none of them. A name
#: matches itself and its submodules (``urllib.request``, not ``urllib.parse``).
IO_MODULES = frozenset(
    {
        "_posixshmem",
        "_posixsubprocess",
        "_socket",
        "_ssl",
        "anyio",
        "asyncio",
        "concurrent",
        "h11",
        "http",
        "httptools",
        "mmap",
        "multiprocessing",
        "prometheus_client",
        "select",
        "selectors",
        "signal",
        "socket",
        "socketserver",
        "ssl",
        "starlette",
        "subprocess",
        "threading",
        "urllib.request",
        "uvicorn",
        "websockets",
        "wsproto",
    }
)
#: The clock, named nowhere in ``core`` either (checked in the source only: the interpreter
#: itself loads ``time`` at start-up).
CLOCK_MODULES = frozenset({"time", "datetime"})

Where = Literal["module", "type-checking", "function"]


@dataclass(frozen=True)
class Import:
    """One name an ``import`` statement brings in, resolved to an absolute dotted name: the
    package's own module where it names one (``from ringpipe.core import ring`` is
    ``ringpipe.core.ring``), else the name as written (``from urllib import request`` is
    ``urllib.request``, ``from typing import Final`` is ``typing.Final``)."""

    target: str
    line: int
    where: Where


@dataclass
class Module:
    name: str
    #: The file, as reports show it: relative to the folder that holds the package.
    path: str
    imports: list[Import] = field(default_factory=list)
    dynamic_imports: list[tuple[int, str]] = field(default_factory=list)
    source_lines: list[str] = field(default_factory=list)


def layer_of(name: str, package: str) -> str | None:
    """The layer of module ``name``; None where it belongs to none."""
    parts = name.split(".")
    if parts == [package]:
        return ROOT
    if parts == [package, "__main__"]:
        return MAIN
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else None


def module_names(package_dir: Path) -> dict[str, Path]:
    package = package_dir.name
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = [package, *path.relative_to(package_dir).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _walk(node: ast.AST, where: Where) -> Iterator[tuple[ast.AST, Where]]:
    """Every node under ``node`` with the context it runs in."""
    for child in ast.iter_child_nodes(node):
        inner = where
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            inner = "function"
        yield child, inner
        if isinstance(child, ast.If) and _is_type_checking(child) and where != "function":
            for stmt in child.body:
                yield stmt, "type-checking"
                yield from _walk(stmt, "type-checking")
            for stmt in child.orelse:
                yield stmt, where
                yield from _walk(stmt, where)
        else:
            yield from _walk(child, inner)


def scan(package_dir: Path) -> dict[str, Module]:
    """Every module of the package at ``package_dir``, with what it imports."""
    names = module_names(package_dir)
    modules = {}
    for name, path in names.items():
        source = path.read_text(encoding="utf-8")
        module = Module(name, str(path.relative_to(package_dir.parent)), source_lines=source.splitlines())
        # The package a relative import starts from: a package's own name, else its parent.
        base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node, where in _walk(ast.parse(source, str(path)), "module"):
            if isinstance(node, ast.Import):
                module.imports += [Import(alias.name, node.lineno, where) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    anchor = base[: len(base) - (node.level - 1)]
                    origin = ".".join([*anchor, *([node.module] if node.module else [])])
                else:
                    origin = node.module or ""
                for alias in node.names:
                    candidate = f"{origin}.{alias.name}"
                    if origin.split(".")[0] == package_dir.name and candidate not in names:
                        candidate = origin  # an attribute of one of our modules, not a submodule
                    module.imports.append(Import(candidate, node.lineno, where))
            elif isinstance(node, ast.Call):
                func = node.func
                called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
                if called in {"__import__", "import_module"}:
                    module.dynamic_imports.append((node.lineno, ast.unparse(node)))
        modules[name] = module
    return modules


def _where(module: Module, line: int) -> str:
    return f"{module.path}:{line}"


def named_in(name: str, names: frozenset[str]) -> bool:
    """Whether module ``name`` is one of ``names`` or a submodule of one."""
    return any(name == n or name.startswith(n + ".") for n in names)


_CONTEXT = {"module": "", "type-checking": " (under TYPE_CHECKING)", "function": " (function-local)"}


def unlayered(modules: dict[str, Module], package: str) -> list[str]:
    return [
        f"{m.path}: {m.name} belongs to no layer (layers: {', '.join(LAYERS)})"
        for m in modules.values()
        if layer_of(m.name, package) is None
    ]


def upward_imports(modules: dict[str, Module], package: str) -> list[str]:
    problems = []
    for module in modules.values():
        layer = layer_of(module.name, package)
        if layer is None:
            continue  # reported by unlayered()
        for imp in module.imports:
            if imp.target.split(".")[0] != package:
                continue
            target_layer = layer_of(imp.target, package)
            if target_layer is None:
                problems.append(
                    f"{_where(module, imp.line)}: {module.name} ({layer}) imports {imp.target}{_CONTEXT[imp.where]},"
                    " which belongs to no layer"
                )
            elif RANK[target_layer] > RANK[layer]:
                problems.append(
                    f"{_where(module, imp.line)}: {module.name} ({layer}) imports {imp.target} ({target_layer})"
                    f"{_CONTEXT[imp.where]}: an upward import"
                )
    return problems


def import_cycles(modules: dict[str, Module]) -> list[str]:
    """One cycle per strongly connected set of modules, as the path of imports around it."""
    edges: dict[str, dict[str, Import]] = {name: {} for name in modules}
    for module in modules.values():
        for imp in module.imports:
            if imp.where != "function" and imp.target in modules:
                edges[module.name].setdefault(imp.target, imp)
    problems = []
    for component in _strongly_connected(edges):
        start = min(component)
        if len(component) == 1 and start not in edges[start]:
            continue
        path = _shortest_cycle(start, edges, component)
        lines = [f"import cycle: {' -> '.join(path)}"]
        for here, there in zip(path, path[1:], strict=False):
            imp = edges[here][there]
            source = modules[here].source_lines[imp.line - 1].strip()
            lines.append(f"    {_where(modules[here], imp.line)}: {source}{_CONTEXT[imp.where]}")
        problems.append("\n".join(lines))
    return sorted(problems)


def _strongly_connected(edges: dict[str, dict[str, Import]]) -> list[set[str]]:
    """Tarjan's algorithm (recursive: a package has tens of modules, not thousands)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            found.append(component)

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def _shortest_cycle(start: str, edges: dict[str, dict[str, Import]], within: set[str]) -> list[str]:
    """The shortest import path from ``start`` back to itself, inside one strongly connected set."""
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(edges[node]):
                if nxt not in within:
                    continue
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [start, *reversed(path[:-1]), start] if node != start else [start, start]
                if nxt not in came_from:
                    came_from[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"{start} is in a strongly connected set but on no cycle")


def impure_core_imports(modules: dict[str, Module], package: str) -> list[str]:
    problems = []
    for module in modules.values():
        if layer_of(module.name, package) != "core":
            continue
        for imp in module.imports:
            top = imp.target.split(".")[0]
            at = f"{_where(module, imp.line)}: {module.name} imports {imp.target}{_CONTEXT[imp.where]}"
            if top == package:
                continue  # its layer is upward_imports()'s business
            if top not in sys.stdlib_module_names:
                problems.append(f"{at}: core uses only the standard library")
            elif named_in(imp.target, IO_MODULES):
                problems.append(f"{at}: core does no I/O")
            elif named_in(imp.target, CLOCK_MODULES):
                problems.append(f"{at}: core reads no clock")
    return problems


def dynamic_imports(modules: dict[str, Module]) -> list[str]:
    return [
        f"{_where(m, line)}: {m.name} imports at run time ({call}): the layering check cannot see it"
        for m in modules.values()
        for line, call in m.dynamic_imports
    ]


#: The most lines a module may have (the house rule of STYLE.md; uvicorn's modules are the model).
MAX_MODULE_LINES = 600


def long_modules(modules: dict[str, Module], limit: int = MAX_MODULE_LINES) -> list[str]:
    return [
        f"{m.path}: {m.name} has {len(m.source_lines)} lines, over {limit}: split it where its jobs part"
        for m in sorted(modules.values(), key=lambda m: m.name)
        if len(m.source_lines) > limit
    ]


_LOADS = """
import importlib, json, sys
sys.path.insert(0, sys.argv[1])
loaded = {}
for name in json.loads(sys.argv[2]):
    before = set(sys.modules)
    importlib.import_module(name)
    loaded[name] = sorted(set(sys.modules) - before)
print(json.dumps(loaded))
"""


def core_loads(package_dir: Path) -> list[str]:
    """Import each ``core`` module, in order, in a fresh interpreter: what each one loads that
    is an I/O module or a module of another layer."""
    package = package_dir.name
    core = sorted(name for name in module_names(package_dir) if layer_of(name, package) == "core")
    done = subprocess.run(
        [sys.executable, "-I", "-c", _LOADS, str(package_dir.parent), json.dumps(core)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        return [f"importing the core layer failed:\n{done.stderr}"]
    problems = []
    for name, loaded in json.loads(done.stdout).items():
        io = [m for m in loaded if named_in(m, IO_MODULES)]
        above = [m for m in loaded if m.split(".")[0] == package and layer_of(m, package) not in ("core", ROOT)]
        if io:
            problems.append(f"importing {name} loads I/O modules: {', '.join(io)}")
        if above:
            problems.append(f"importing {name} loads modules of other layers: {', '.join(above)}")
    return problems


def report(problems: list[str]) -> None:
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)
