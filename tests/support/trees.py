"""Small file trees for the self-tests of the checkers (layering, suite layout, docs)."""

from __future__ import annotations

import textwrap
from pathlib import Path

__all__ = ["write_tree"]


def write_tree(root: Path, files: dict[str, str]) -> Path:
    """Write each ``relative path: text`` of ``files`` under ``root`` (text dedented, folders
    made as needed); returns ``root``."""
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root
