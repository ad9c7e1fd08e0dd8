"""A one-minute soak (``bench/soak.py``): a swarm of token streams against ringpipe with a
worker killed every 20 seconds.

It checks what the 20-minute soak checks, with bounds generous enough for a shared 2-core
machine: only streams exposed to a kill (their path's owner or a party's worker was the killed
slot while it was down) may fail, every other stream is intact record by record, the workers'
RSS grows by less than ``MAX_GROWTH`` after warm-up, every kill is followed by a replacement
and no segment of the killed worker, and the server leaves no segment at all and exits 0.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.ringbench.soak import SoakConfig, describe, run_soak

# The 20-minute soak requires < 10 %. Over one minute the heap is still settling, and the
# known per-stream creep (issue 15) weighs more against a worker's small start-up RSS.
MAX_GROWTH = 0.35


@pytest.mark.slow(63)
@pytest.mark.timeout(400)
def test_one_minute_soak_fails_only_the_killed_workers_pipes(tmp_path: Path) -> None:
    cfg = SoakConfig(
        duration_s=60,
        kill_every_s=20,
        streams=40,
        rate=20,
        records=40,
        workers=2,
        warmup_s=15,
        sample_every_s=2,
        max_growth=MAX_GROWTH,
        procs=2,
        seed=15,
        logdir=str(tmp_path),
    )
    report = run_soak(cfg, say=lambda _line: None)
    text = describe(report)
    assert len(report["kills"]) == 2, text
    assert all(k["replaced_after_s"] is not None for k in report["kills"]), text
    assert report["streams_ok"] >= 500, text  # ~20 new streams per second for a minute
    assert report["failed_unexposed_count"] == 0, text
    assert report["streams"] - report["streams_ok"] <= report["exposed"], text
    assert report["rss_growth"], text  # at least one worker lived long enough to be judged
    assert report["rss_growth_max"] < MAX_GROWTH, text
    assert report["segments_left_after_kill"] == [], text
    assert report["segments_left_at_end"] == [], text
    assert report["server_exit"] == 0, text
    assert not report["client_errors"], text
    assert report["passed"], text
