"""The test suite is organised like the code: shared helpers live in ``tests/support/`` and no
test module imports another, and ``tests/unit/`` holds only tests without sockets or
processes (those are ``tests/integration/``'s), so ``pytest tests/unit`` stays fast and
hermetic. Checked statically, by reading each test module's imports."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.support.layering import named_in
from tests.support.trees import write_tree

TESTS = Path(__file__).resolve().parents[1]
#: The test modules: none imports another (what they share is in ``tests.support``).
TEST_MODULES = frozenset({"tests.unit", "tests.integration"})
#: What a unit test must not import: sockets, processes, TLS, and the helpers that start
#: servers, browsers, containers or open connections.
NOT_IN_UNIT = frozenset(
    {
        "socket",
        "ssl",
        "subprocess",
        "multiprocessing",
        "http.client",
        "tests.support.browser",
        "tests.support.containers",
        "tests.support.externals",
        "tests.support.pipes",
        "tests.support.readers",
        "tests.support.servers",
        "tests.support.tls_clients",
    }
)


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
    return found


def layout_problems(tests: Path) -> list[str]:
    problems = []
    for folder in ("unit", "integration"):
        for path in sorted((tests / folder).glob("*.py")):
            where = path.relative_to(tests.parent)
            for line, name in _imports(path):
                if named_in(name, TEST_MODULES):
                    problems.append(f"{where}:{line}: imports the test module {name}: share through tests/support")
                elif folder == "unit" and named_in(name, NOT_IN_UNIT):
                    problems.append(f"{where}:{line}: imports {name}: not in a unit test")
    return problems


def test_the_suite_is_organised_like_the_code() -> None:
    problems = layout_problems(TESTS)
    assert not problems, "\n".join(problems)


def test_the_layout_check_sees_each_kind_of_fault(tmp_path: Path) -> None:
    tests = write_tree(
        tmp_path / "tests",
        {
            "unit/test_a.py": "import socket\nfrom tests.support.fakes import X\nfrom tests.support.servers import S\n",
            "unit/test_b.py": "import socketserver\nfrom tests.integration.test_c import helper\n",
            "integration/test_c.py": "import subprocess\nfrom tests.unit import test_a\n",
        },
    )
    assert layout_problems(tests) == [
        "tests/unit/test_a.py:1: imports socket: not in a unit test",
        "tests/unit/test_a.py:3: imports tests.support.servers: not in a unit test",
        "tests/unit/test_b.py:2: imports the test module tests.integration.test_c: share through tests/support",
        "tests/integration/test_c.py:2: imports the test module tests.unit: share through tests/support",
    ]
