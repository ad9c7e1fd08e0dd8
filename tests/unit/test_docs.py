"""The documentation holds together: the README stays short, and every relative link between
the Markdown files lands on a file that exists and, with an ``#anchor``, on one of its headings.

A README a newcomer reads in ten minutes (the house rule: at most 300 lines; the detail lives
in ``docs/``), and links that do not rot when a section is renamed or moved: the performance
notes link into each other by section, and a renamed heading breaks them silently otherwise.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
README_MAX_LINES = 300
#: ``[text](target)`` with a relative target (no scheme), optionally ``#anchor``.
_LINK = re.compile(r"\]\((?![a-z][a-z0-9+.-]*:)([^)\s#]*)(#[^)\s]+)?\)")
_HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*$")


def _documents() -> list[Path]:
    found = {ROOT / "README.md", ROOT / "SECURITY.md", *ROOT.glob("docs/*.md"), *ROOT.glob("*/README.md")}
    return sorted(path for path in found if not path.parent.name.startswith("."))  # not .pytest_cache's


@functools.cache
def _anchors(path: Path) -> frozenset[str]:
    """GitHub's heading ids: lower case, punctuation dropped (hyphens and underscores kept),
    spaces as hyphens (read once per file: many links land in the same one)."""
    anchors = set()
    in_code = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        match = None if in_code else _HEADING.match(line)
        if match:
            text = re.sub(r"[^\w\- ]", "", match.group(1).lower())
            anchors.add(text.replace(" ", "-"))
    return frozenset(anchors)


def broken_links(path: Path, root: Path = ROOT) -> list[str]:
    """Each relative link of ``path`` that lands nowhere, as ``file:line: why`` (``file`` relative to ``root``)."""
    problems = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        for target, anchor in _LINK.findall(line):
            if not target and not anchor:
                continue
            linked = (path.parent / target).resolve() if target else path
            where = f"{path.relative_to(root)}:{number}"
            if not linked.exists():
                problems.append(f"{where}: links to {target}, which does not exist")
            elif anchor and linked.suffix == ".md" and anchor[1:] not in _anchors(linked):
                problems.append(f"{where}: links to {target or path.name}{anchor}, no such heading")
    return problems


def test_the_readme_is_short() -> None:
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines: move detail into docs/"


@pytest.mark.parametrize("path", _documents(), ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_land(path: Path) -> None:
    problems = broken_links(path)
    assert not problems, "\n".join(problems)


def test_the_link_checker_sees_a_broken_anchor_and_a_missing_file(tmp_path: Path) -> None:
    doc = tmp_path / "a.md"
    (tmp_path / "b.md").write_text("# Some Title: here\n\ntext\n")
    doc.write_text("[ok](b.md#some-title-here) [bad](b.md#nope) [gone](c.md) [self](#x)\n\n## X\n")
    assert broken_links(doc, tmp_path) == [
        "a.md:1: links to b.md#nope, no such heading",
        "a.md:1: links to c.md, which does not exist",
    ]
