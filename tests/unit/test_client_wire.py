"""The client's pure parts, without a socket: the sender's log, HEAD's headers, NDJSON records,
``[ERROR]`` bodies and 410 texts, URL redaction and credentials, the CLI's exit codes, and
the client layer's imports."""

from __future__ import annotations

import ast
import base64
import json
from pathlib import Path

import pytest

import ringpipe
from ringpipe.client import PipeCancelled, PipeGap, PipeLagged, PipeRefused, RelayUnreachable
from ringpipe.client.cli import EXIT_CODES, pipe_url
from ringpipe.client.transport import Target
from ringpipe.client.wire import (
    Chunk,
    DataRecord,
    EndRecord,
    GapRecord,
    PipeStatus,
    SenderLog,
    error_message,
    parse_record,
    parse_status,
    redact_url,
    resume_refusal,
)
from ringpipe.core.framing import NdjsonEncoder


def folded(*lines: str) -> SenderLog:
    log = SenderLog()
    for line in lines:
        log.feed(line + "\n")
    return log


# -- the sender's log --


def test_a_clean_log_counts_every_receiver_as_completed() -> None:
    log = folded(
        "[INFO] Waiting for 3 receiver(s)...",
        "[INFO] 1 receiver(s) has/have been connected.",
        "[INFO] A receiver was connected.",
        "[INFO] A receiver was connected.",
        "[INFO] Start sending to 3 receiver(s)!",
        "[INFO] A receiver aborted.",
        "[INFO] Sent successfully!",
        "[INFO] All receiver(s) was/were received successfully.",
    )
    assert (log.n, log.connected, log.started, log.uploaded) == (3, 3, True, True)
    result = log.outcome(42)
    assert (result.receivers, result.completed, result.aborted, result.evicted) == (3, 2, 1, 0)
    assert result.ok and result.ending == "done" and result.bytes_sent == 42
    assert result.log[-1] == "[INFO] All receiver(s) was/were received successfully."


def test_every_receiver_gone_is_an_outcome_not_an_error() -> None:
    aborted = folded("[INFO] Waiting for 2 receiver(s)...", "[INFO] Start sending to 2 receiver(s)!")
    for line in ("[INFO] A receiver aborted.", "[INFO] A receiver aborted."):
        aborted.feed(line)
    aborted.feed("[INFO] All receiver(s) was/were aborted halfway.")
    result = aborted.outcome(10)
    assert (result.completed, result.aborted, result.ok, result.ending) == (0, 2, False, "aborted")
    evicted = folded(
        "[INFO] Start sending to 1 receiver(s)!",
        "[INFO] A receiver was evicted: it read nothing for 30 s.",
        "[INFO] All receiver(s) was/were aborted halfway.",
    )
    assert (evicted.outcome(0).evicted, evicted.outcome(0).ending) == (1, "lagged")


def test_cancel_error_and_a_cut_log_raise() -> None:
    with pytest.raises(PipeCancelled) as cancelled:
        folded("[INFO] Waiting for 1 receiver(s)...", "[INFO] Cancelled.").outcome(7)
    assert cancelled.value.offset == 7
    with pytest.raises(PipeRefused) as refused:
        folded("[INFO] Waiting for 1 receiver(s)...", "[ERROR] Nobody else came to '/p' within 300 s.").outcome(0)
    assert refused.value.status is None and refused.value.message == "Nobody else came to '/p' within 300 s."
    with pytest.raises(RelayUnreachable):
        folded("[INFO] Waiting for 1 receiver(s)...", "[INFO] Start sending to 1 receiver(s)!").outcome(0)


def test_unknown_lines_are_kept_and_ignored() -> None:
    log = folded(
        "[INFO] Waiting for 1 receiver(s)...", "[INFO] Something new.", "", "[INFO] Start sending to 1 receiver(s)!"
    )
    assert log.lines == [
        "[INFO] Waiting for 1 receiver(s)...",
        "[INFO] Something new.",
        "[INFO] Start sending to 1 receiver(s)!",
    ]
    assert log.final is None


# -- HEAD, errors, 410s --


def test_status_headers() -> None:
    headers = {
        "ringpipe-state": "established",
        "ringpipe-receivers": "2/3",
        "ringpipe-offset": "1024",
        "ringpipe-epoch": "k2x",
    }
    assert parse_status(200, headers) == PipeStatus("established", 2, 3, 1024, "k2x")
    assert parse_status(200, {"ringpipe-state": "waiting", "ringpipe-receivers": "0/1"}) == PipeStatus("waiting", 0, 1)
    assert parse_status(404, {}) == PipeStatus("free")
    with pytest.raises(ValueError):
        parse_status(200, {"content-type": "text/plain"})  # not a ringpipe answer (a proxy's page)


def test_error_bodies() -> None:
    assert error_message(b"[ERROR] The number of receivers has reached limits.\n") == (
        "The number of receivers has reached limits."
    )
    assert error_message(b"<html>Bad gateway</html>") == "<html>Bad gateway</html>"
    assert error_message(b"") == ""


def test_what_a_410_to_a_resume_means() -> None:
    assert resume_refusal("Offset 10 of '/p' is no longer held (held: 4096..9000).") == ("gap", 4096)
    assert resume_refusal("The transfer on '/p' was cancelled.") == ("cancelled", 0)
    assert resume_refusal("The pipe on '/p' that offset 10 belongs to is gone.") == ("gone", 0)
    assert resume_refusal("No receiver slot on '/p' is reserved for a resume.") == ("gone", 0)


# -- NDJSON records, as the server's encoder writes them --


def test_records_round_trip_the_servers_encoder_exactly() -> None:
    encoder = NdjsonEncoder(offset=100, base64=True)
    payload = bytes(range(256)) * 3
    lines = (encoder.feed(payload[:500]) + encoder.feed(payload[500:]) + encoder.end("done")).splitlines()
    records = [parse_record(line) for line in lines]
    assert records[:2] == [DataRecord(payload[:500], 600), DataRecord(payload[500:], 868)]
    assert records[2] == EndRecord("done", 868, None)


def test_text_gap_and_ending_records() -> None:
    assert parse_record('{"offset":5,"data":"h\\u00e9"}') == DataRecord("hé".encode(), 5)
    assert parse_record('{"gap":{"from":3,"to":90}}') == GapRecord(3, 90)
    assert parse_record('{"end":"lagged","offset":7,"reason":"evicted"}') == EndRecord("lagged", 7, "evicted")
    b64 = base64.b64encode(b"\x00\xff").decode()
    assert parse_record(json.dumps({"offset": 2, "base64": b64})) == DataRecord(b"\x00\xff", 2)
    for bad in ("[1]", "not json", '{"offset":1}', '{"offset":1,"base64":"abc"}'):
        with pytest.raises(ValueError):
            parse_record(bad)


def test_chunk_offsets() -> None:
    assert Chunk(b"abc", 10).start == 7


def test_gap_is_a_kind_of_lagging() -> None:
    gap = PipeGap(10, 50)
    assert isinstance(gap, PipeLagged) and (gap.offset, gap.lost_from, gap.lost_to) == (10, 10, 50)


# -- secrets --


def test_redaction_masks_credentials_and_user_info() -> None:
    url = "https://user:pw@relay.example/p?rp_exp=1&rp_scope=recv&rp_sig=deadbeef&key=k3y&n=2"
    assert redact_url(url) == "https://relay.example/p?rp_exp=1&rp_scope=recv&rp_sig=***&key=***&n=2"


def test_a_read_key_in_the_url_moves_to_the_header_and_no_repr_shows_a_secret() -> None:
    target = Target("http://relay/a%20b?key=s3cret&rp_sig=abc", token="t0ken")
    assert "key" not in str(target.url) and target.credentials.read_key == "s3cret"
    assert target.headers() == {"Authorization": "Bearer t0ken", "Ringpipe-Read-Key": "s3cret"}
    assert target.path == "/a%20b"
    for text in (repr(target), repr(target.credentials)):
        assert "s3cret" not in text and "t0ken" not in text and "abc" not in text
    assert str(target.url_with(offset="5", n=None)) == "http://relay/a%20b?rp_sig=abc&offset=5"
    with pytest.raises(ValueError):
        Target("relay/p")


# -- the CLI --


def test_exit_codes_are_distinct_and_documented() -> None:
    assert list(EXIT_CODES) == [0, 2, 3, 4, 5, 6, 7, 8, 130]
    docs = (Path(ringpipe.__file__).parents[1] / "docs" / "client.md").read_text()
    for code in EXIT_CODES:
        assert f"| {code} |" in docs


def test_paths_join_the_base_url() -> None:
    env = {"RINGPIPE_URL": "http://relay:8080/"}
    assert pipe_url("/p", None, env) == "http://relay:8080/p"
    assert pipe_url("p", "https://other", env) == "https://other/p"
    assert pipe_url("https://x/p?rp_sig=1", None, env) == "https://x/p?rp_sig=1"
    assert pipe_url("p", None, {}) == "http://localhost:8080/p"


# -- layering: client imports core (and its own libraries) only --

ALLOWED_TOP = {"ringpipe", "httpx", "h11", "anyio", "rich"}


def test_the_client_layer_imports_only_core_and_its_libraries() -> None:
    import sys

    client_dir = Path(ringpipe.__file__).parent / "client"
    bad = []
    for module in sorted(client_dir.glob("*.py")):
        for node in ast.walk(ast.parse(module.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                top = name.split(".")[0]
                if top == "ringpipe":
                    if name != "ringpipe" and name.split(".")[1] not in ("core", "client"):
                        bad.append(f"{module.name}: {name}")
                elif top not in ALLOWED_TOP and top not in sys.stdlib_module_names and top != "__future__":
                    bad.append(f"{module.name}: {name}")
    assert bad == []
