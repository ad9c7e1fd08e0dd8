"""The pure layer (STYLE 3.2) imports only the stdlib and itself: no I/O, no event loop, no framework."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

import ringpipe

PACKAGE_DIR = Path(ringpipe.__file__).parent
PURE = ("ring", "rendezvous", "protocol", "paths", "config", "errors", "framing", "access", "signing", "cors")
FORBIDDEN = frozenset({"anyio", "asyncio", "multiprocessing", "socket", "starlette", "uvicorn", "prometheus_client"})


def _is_type_checking_block(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _runtime_imports(module: str) -> list[str]:
    """Absolute names of every module ``ringpipe.<module>`` imports outside ``if TYPE_CHECKING:``."""
    tree = ast.parse((PACKAGE_DIR / f"{module}.py").read_text(encoding="utf-8"))
    names: list[str] = []

    def visit(node: ast.AST) -> None:
        if _is_type_checking_block(node):
            for child in node.orelse:  # type: ignore[attr-defined]
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from . import x / from .x import y
                if node.module:
                    names.append(f"ringpipe.{node.module}")
                else:
                    names.extend(f"ringpipe.{alias.name}" for alias in node.names)
            elif node.module == "ringpipe":
                names.extend(f"ringpipe.{alias.name}" for alias in node.names)
            else:
                names.append(node.module or "")
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return names


def _dynamic_imports(module: str) -> list[str]:
    tree = ast.parse((PACKAGE_DIR / f"{module}.py").read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name in {"__import__", "import_module"}:
                found.append(ast.unparse(node))
    return found


@pytest.mark.parametrize("module", PURE)
def test_pure_module_imports_only_stdlib_and_pure_modules(module: str) -> None:
    """A pure module can be tested, reused and reasoned about without sockets, processes or a loop."""
    bad = []
    for name in _runtime_imports(module):
        top = name.split(".")[0]
        if top == "ringpipe":
            if name != "ringpipe" and name.split(".")[1] not in PURE:
                bad.append(name)
        elif top in FORBIDDEN or (top not in sys.stdlib_module_names and top != "__future__"):
            bad.append(name)
    assert bad == [], f"ringpipe.{module} imports {bad}"


@pytest.mark.parametrize("module", PURE)
def test_pure_module_has_no_dynamic_imports(module: str) -> None:
    """The static check above cannot be dodged with __import__ or importlib."""
    assert _dynamic_imports(module) == []


def test_checker_sees_imports() -> None:
    """The AST walk finds the imports the pure modules really have (guards against a vacuous pass)."""
    assert "ringpipe.errors" in _runtime_imports("ring")
    assert "ringpipe.rendezvous" in _runtime_imports("protocol")
    assert "zlib" in _runtime_imports("paths")
    assert "multiprocessing" in _runtime_imports("shm")  # an impure module, as a positive control


def test_importing_the_pure_layer_loads_no_io_module() -> None:
    """At run time too, importing every pure module pulls in none of the I/O libraries, even transitively."""
    code = (
        "import json, sys\n"
        + "".join(f"import ringpipe.{m}\n" for m in PURE)
        + "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
        + repr(sorted(FORBIDDEN))
        + " or (m.startswith('ringpipe.') and m.split('.')[1] not in "
        + repr(PURE)
        + "))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []
