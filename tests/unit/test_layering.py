"""The package's layers, enforced (the rules and the checker: ``tests/support/layering.py``):
every module sits in one layer, imports only sideways or down, no two modules import each
other, ``core`` names no I/O, nothing imports by name at run time, and no module is over the
line limit. The checker is also run on a synthetic package with each kind of fault, to show
it reports them."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.layering import (
    LAYERS,
    MAIN,
    PACKAGE_DIR,
    ROOT,
    Module,
    Where,
    dynamic_imports,
    import_cycles,
    impure_core_imports,
    layer_of,
    long_modules,
    report,
    scan,
    unlayered,
    upward_imports,
)
from tests.support.trees import write_tree

# -- the rules, on ringpipe -------------------------------------------------------------------


@pytest.fixture(scope="module")
def modules() -> dict[str, Module]:
    return scan(PACKAGE_DIR)


def test_every_module_belongs_to_a_layer(modules: dict[str, Module]) -> None:
    report(unlayered(modules, PACKAGE_DIR.name))


def test_no_module_imports_from_a_higher_layer(modules: dict[str, Module]) -> None:
    report(upward_imports(modules, PACKAGE_DIR.name))


def test_no_import_cycle(modules: dict[str, Module]) -> None:
    report(import_cycles(modules))


def test_core_imports_only_the_standard_library_and_no_io(modules: dict[str, Module]) -> None:
    """A core module can be tested, reused and reasoned about without sockets, processes, a loop or a clock."""
    report(impure_core_imports(modules, PACKAGE_DIR.name))


def test_no_module_imports_by_name_at_run_time(modules: dict[str, Module]) -> None:
    """The static checks above cannot be dodged with ``__import__`` or ``importlib``."""
    report(dynamic_imports(modules))


def test_no_module_is_over_the_line_limit(modules: dict[str, Module]) -> None:
    report(long_modules(modules))


def test_checker_sees_ringpipes_imports(modules: dict[str, Module]) -> None:
    """The walk finds imports the package really has, in each context (guards against a vacuous pass)."""

    def seen(module: str, where: Where) -> set[str]:
        return {imp.target for imp in modules[module].imports if imp.where == where}

    assert "ringpipe.core.errors" in seen("ringpipe.core.ring", "module")
    assert "zlib" in seen("ringpipe.core.paths", "module")
    assert "mmap" in seen("ringpipe.shm.segment", "module")
    assert "ringpipe.shm.segment" in seen("ringpipe.ops.metrics", "type-checking")
    assert "ringpipe.ops.fleet" in seen("ringpipe.ops.metrics", "function")
    assert "ringpipe.process.cli" in seen("ringpipe.__main__", "module")
    assert layer_of("ringpipe.core.ring", "ringpipe") == "core"
    assert {layer_of(name, "ringpipe") for name in modules} <= {ROOT, MAIN, *LAYERS}


# -- the checker, on a synthetic package with every kind of fault ----------------------------

SYNTHETIC = {
    "__init__.py": "",
    "__main__.py": "from synth.process import cli\n",
    "stray.py": "",
    "core/__init__.py": "",
    # a -> b -> a, at module level
    "core/a.py": "from synth.core import b\n",
    "core/b.py": "import synth.core.a\n",
    # c -> d -> c, one side only under TYPE_CHECKING
    "core/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from synth.core.d import D\n",
    "core/d.py": "from synth.core import c\nD = int\n",
    # e -> f at module level, f -> e in a function: no cycle
    "core/e.py": "from synth.core import f\n",
    "core/f.py": "def later():\n    from synth.core import e\n    return e\n",
    # up to http: at module level, under TYPE_CHECKING, in a function; and beyond the stdlib
    "core/g.py": "import asyncio\nimport yaml\nimport time\nfrom urllib import request\nfrom synth.http import app\n",
    "core/h.py": (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from synth.shm.seg import Seg\n"
        "else:\n    import json\n"
        "def f():\n    import importlib\n    from synth.process import cli\n"
        "    return importlib.import_module('synth.http.app')\n"
    ),
    "shm/__init__.py": "",
    "shm/seg.py": "from synth.core import a\nSeg = int\n",
    "http/__init__.py": "",
    "http/app.py": "from synth.shm import seg\nfrom synth.client import api\nfrom synth.web import page\n",
    "client/__init__.py": "",
    "client/api.py": "from synth.http import app\n",
    "web/__init__.py": "",
    "web/page.py": "",
    "process/__init__.py": "",
    "process/cli.py": "from synth import __main__\n",
}


@pytest.fixture
def synthetic(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "synth", SYNTHETIC)


LAYER_LIST = "(layers: core, shm, ops, mesh, http, client, process)"


def test_checker_reports_modules_in_no_layer(synthetic: Path) -> None:
    assert unlayered(scan(synthetic), "synth") == [
        f"synth/stray.py: synth.stray belongs to no layer {LAYER_LIST}",
        f"synth/web/__init__.py: synth.web belongs to no layer {LAYER_LIST}",
        f"synth/web/page.py: synth.web.page belongs to no layer {LAYER_LIST}",
    ]


def test_checker_reports_upward_imports_in_every_context(synthetic: Path) -> None:
    assert upward_imports(scan(synthetic), "synth") == [
        "synth/core/g.py:5: synth.core.g (core) imports synth.http.app (http): an upward import",
        "synth/core/h.py:3: synth.core.h (core) imports synth.shm.seg (shm) (under TYPE_CHECKING): an upward import",
        "synth/core/h.py:8: synth.core.h (core) imports synth.process.cli (process) (function-local): an upward import",
        "synth/http/app.py:2: synth.http.app (http) imports synth.client.api (client): an upward import",
        "synth/http/app.py:3: synth.http.app (http) imports synth.web.page, which belongs to no layer",
        "synth/process/cli.py:1: synth.process.cli (process) imports synth.__main__ (<main>): an upward import",
    ]


def test_checker_reports_modules_over_the_line_limit() -> None:
    """A module at the limit passes; one line more is reported, with its size."""
    sizes = {"synth.core.small": 3, "synth.http.big": 4, "synth.mesh.bigger": 9}
    modules = {
        name: Module(name, name.replace(".", "/") + ".py", source_lines=["x = 1"] * size)
        for name, size in sizes.items()
    }
    assert long_modules(modules, limit=3) == [
        "synth/http/big.py: synth.http.big has 4 lines, over 3: split it where its jobs part",
        "synth/mesh/bigger.py: synth.mesh.bigger has 9 lines, over 3: split it where its jobs part",
    ]


def test_checker_reports_each_cycle_with_its_path(synthetic: Path) -> None:
    assert import_cycles(scan(synthetic)) == [
        "import cycle: synth.__main__ -> synth.process.cli -> synth.__main__\n"
        "    synth/__main__.py:1: from synth.process import cli\n"
        "    synth/process/cli.py:1: from synth import __main__",
        "import cycle: synth.client.api -> synth.http.app -> synth.client.api\n"
        "    synth/client/api.py:1: from synth.http import app\n"
        "    synth/http/app.py:2: from synth.client import api",
        "import cycle: synth.core.a -> synth.core.b -> synth.core.a\n"
        "    synth/core/a.py:1: from synth.core import b\n"
        "    synth/core/b.py:1: import synth.core.a",
        "import cycle: synth.core.c -> synth.core.d -> synth.core.c\n"
        "    synth/core/c.py:3: from synth.core.d import D (under TYPE_CHECKING)\n"
        "    synth/core/d.py:1: from synth.core import c",
    ]


def test_checker_reports_impure_core_imports(synthetic: Path) -> None:
    modules = scan(synthetic)
    assert impure_core_imports(modules, "synth") == [
        "synth/core/g.py:1: synth.core.g imports asyncio: core does no I/O",
        "synth/core/g.py:2: synth.core.g imports yaml: core uses only the standard library",
        "synth/core/g.py:3: synth.core.g imports time: core reads no clock",
        "synth/core/g.py:4: synth.core.g imports urllib.request: core does no I/O",
    ]
    assert dynamic_imports(modules) == [
        "synth/core/h.py:9: synth.core.h imports at run time (importlib.import_module('synth.http.app')):"
        " the layering check cannot see it"
    ]
