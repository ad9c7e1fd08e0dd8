"""A cyclic-garbage probe for server processes under test (``tests/integration/test_garbage.py``).

Put this directory on a server's ``PYTHONPATH`` with ``TEST_GC_PROBE_DIR`` naming an
output directory. Every process then answers ``SIGUSR2`` in turns:

- odd signals: a plain ``gc.collect()`` (whatever garbage exists now is not the test's
  business), then ``<dir>/base.<pid>`` is written;
- even signals: a collection under ``gc.DEBUG_SAVEALL``, which keeps what it would have freed
  in ``gc.garbage``; ``<dir>/garbage.<pid>.json`` gets the count of those objects by type
  (``module.qualname``), and the objects are released.

So the objects counted after the second signal are exactly those that were only reachable
through reference cycles created between the two: what reference counting failed to free,
and what lives until a full collection, which a worker's raised GC thresholds make rare.
"""

from __future__ import annotations

import collections
import gc
import json
import os
import signal

_OUT = os.environ.get("TEST_GC_PROBE_DIR")


_signals = [0]  # per process: a forked worker starts from the supervisor's 0


def _write(name: str, text: str) -> None:
    assert _OUT is not None
    tmp = os.path.join(_OUT, f".{name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, os.path.join(_OUT, name))


def _probe(signum: int, frame: object) -> None:
    _signals[0] += 1
    pid = os.getpid()
    if _signals[0] % 2:
        gc.collect()
        _write(f"base.{pid}", "ok\n")
        return
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        kinds = collections.Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.garbage)
    finally:
        gc.garbage.clear()
        gc.set_debug(0)
    _write(f"garbage.{pid}.json", json.dumps(dict(kinds)))


if _OUT:
    signal.signal(signal.SIGUSR2, _probe)
