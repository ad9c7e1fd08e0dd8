"""Pipe owners (``ringpipe.core.paths``) across real processes: every worker agrees."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from ringpipe.core.paths import owner_of


def test_owner_of_agrees_across_processes_with_different_hash_seeds() -> None:
    """Every worker process computes the same owner, whatever its str-hash salt."""
    paths = ["/hello", "/a/b%20c", "/\u00c3\u00a9", "/x" * 50]
    code = (
        "import json, sys; from ringpipe.core.paths import owner_of; "
        "print(json.dumps([owner_of(p, w) for p in json.loads(sys.argv[1]) for w in (3, 7, 16)]))"
    )
    expected = [owner_of(p, w) for p in paths for w in (3, 7, 16)]
    for seed in ("1", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code, json.dumps(paths)], env=env, capture_output=True, text=True, check=True
        )
        assert json.loads(out.stdout) == expected
