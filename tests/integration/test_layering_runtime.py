"""The layering rule that needs a process: importing every ``core`` module in a fresh
interpreter pulls in no I/O library and no other layer, even transitively (the static checks
are ``tests/unit/test_layering.py``; the checker is ``tests/support/layering.py``)."""

from __future__ import annotations

from pathlib import Path

from tests.support.layering import PACKAGE_DIR, core_loads, report
from tests.support.trees import write_tree


def test_importing_core_loads_no_io_module() -> None:
    """At run time too, importing every core module pulls in no I/O library and no other
    layer, even transitively."""
    report(core_loads(PACKAGE_DIR))


def test_checker_reports_what_importing_core_loads(tmp_path: Path) -> None:
    package_dir = write_tree(
        tmp_path / "synth",
        {
            "__init__.py": "",
            "core/__init__.py": "",
            "core/loop.py": "from synth.core import via\n",
            "core/pure.py": "import json\n",
            "core/via.py": "from synth.shm import seg\n",
            "shm/__init__.py": "",
            "shm/seg.py": "import asyncio\n",
        },
    )
    problems = core_loads(package_dir)
    assert len(problems) == 2, problems
    heading, _, loaded = problems[0].partition(": ")
    assert heading == "importing synth.core.loop loads I/O modules" and "asyncio" in loaded.split(", ")
    assert problems[1] == "importing synth.core.loop loads modules of other layers: synth.shm, synth.shm.seg"
