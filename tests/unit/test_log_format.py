"""``--log-format``: JSON lines for machines, one readable line for a person at a terminal."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import sys
from collections.abc import Iterator

import pytest

from ringpipe.core.config import ConfigError, Settings, options
from ringpipe.ops import logs
from ringpipe.ops.logs import JsonFormatter, TextFormatter, register_secrets, setup_logging, wants_text


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def _record(msg: str, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord("ringpipe.relay", logging.INFO, __file__, 1, msg, (), None)
    record.__dict__.update(extra)
    return record


def test_auto_is_text_at_a_terminal_and_json_elsewhere() -> None:
    assert wants_text("auto", _Tty())
    assert not wants_text("auto", io.StringIO())
    assert wants_text("text", io.StringIO())
    assert not wants_text("json", _Tty())


def test_the_default_is_auto_and_bad_values_are_named() -> None:
    assert Settings().log_format == "auto"
    assert {o.name: o for o in options()}["log_format"].parse("TEXT") == "text"
    with pytest.raises(ConfigError, match=r"--log-format must be one of auto, json, text \(got 'yaml'\)"):
        Settings(log_format="yaml")


def test_a_text_line_holds_the_message_and_the_extras() -> None:
    line = TextFormatter("worker-0").format(_record("transfer", path="/a", n=3, ending="done"))
    assert "\n" not in line
    assert " info " in line and "worker-0 transfer" in line
    assert "path=/a" in line and "n=3" in line and "ending=done" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)
    assert json.loads(JsonFormatter("worker-0").format(_record("transfer", path="/a")))["path"] == "/a"


def test_a_text_line_is_redacted_like_a_json_line() -> None:
    register_secrets(["s3cr3t-text-format"])
    line = TextFormatter("worker-0").format(_record("got Authorization: Bearer abc", token="s3cr3t-text-format"))
    assert "s3cr3t-text-format" not in line and "abc" not in line
    assert "[REDACTED]" in line


@contextlib.contextmanager
def _logging_to(stream: io.StringIO, log_format: str) -> Iterator[None]:
    """``setup_logging`` writing to ``stream`` (in the test's body: it replaces the root's
    handlers, pytest's capture too); the logging set-up is put back after."""
    root = logging.getLogger()
    access = logging.getLogger("uvicorn.access")
    saved = (root.handlers[:], root.level, logs._direct, access.disabled, sys.stderr)
    sys.stderr = stream
    try:
        setup_logging("info", "worker-7", log_format)
        yield
    finally:
        logging.captureWarnings(False)
        root.handlers[:], level, logs._direct, access.disabled, sys.stderr = saved
        root.setLevel(level)


_FIELDS = {"event": "transfer", "path": "/p\u00e9", "n": 2, "framings": {"raw": 1, "sse": 1}, "duration_s": 0.25}


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def _no_record(*args: object, **kwargs: object) -> logging.LogRecord:
    raise AssertionError("info_fields built a LogRecord")


def test_info_fields_writes_the_line_logger_info_writes(monkeypatch: pytest.MonkeyPatch) -> None:
    log, stream = logging.getLogger("ringpipe.node"), io.StringIO()
    with _logging_to(stream, "json"):
        with monkeypatch.context() as patch:
            patch.setattr(log, "makeRecord", _no_record)  # the direct path: no record
            logs.info_fields(log, "transfer ended", _FIELDS)
        log.info("transfer ended", extra=_FIELDS)
    direct, through_logging = _lines(stream)
    assert stream.getvalue().endswith("\n") and len(stream.getvalue().splitlines()) == 2
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", str(direct.pop("ts")))
    through_logging.pop("ts")
    assert list(direct.items()) == list(through_logging.items())  # same fields, same order
    assert direct["role"] == "worker-7" and direct["pid"] == os.getpid() and direct["path"] == "/p\u00e9"


def test_info_fields_redacts_like_the_formatter(monkeypatch: pytest.MonkeyPatch) -> None:
    register_secrets(["s3cr3t-info-fields"])
    log, stream = logging.getLogger("ringpipe.node"), io.StringIO()
    monkeypatch.setattr(log, "makeRecord", _no_record)
    with _logging_to(stream, "json"):
        logs.info_fields(log, "x", {"path": "/a?token=abc", "note": "s3cr3t-info-fields"})
    (line,) = _lines(stream)
    assert line["path"] == "/a?token=[REDACTED]" and line["note"] == "[REDACTED]"


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


class _Drop(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return False


def test_info_fields_goes_through_logging_where_anything_else_may_see_the_record() -> None:
    """A second handler, a filter, a level: each sees what ``logger.info`` would give it,
    and the JSON line is the same."""
    log, stream, keep = logging.getLogger("ringpipe.node"), io.StringIO(), _Keep()
    with _logging_to(stream, "json"):
        log.addHandler(keep)
        try:
            logs.info_fields(log, "transfer ended", _FIELDS)
        finally:
            log.removeHandler(keep)
        log.addFilter(drop := _Drop())
        try:
            logs.info_fields(log, "dropped", _FIELDS)
        finally:
            log.removeFilter(drop)
        log.setLevel(logging.WARNING)
        try:
            logs.info_fields(log, "below the level", _FIELDS)
        finally:
            log.setLevel(logging.NOTSET)
    (record,) = keep.records
    assert record.getMessage() == "transfer ended" and record.__dict__["framings"] == {"raw": 1, "sse": 1}
    (line,) = _lines(stream)
    assert line["msg"] == "transfer ended" and line["n"] == 2


def test_info_fields_keeps_the_extra_rules() -> None:
    """A key starting with ``_`` is left out; one that names a record attribute is refused."""
    log, stream = logging.getLogger("ringpipe.node"), io.StringIO()
    with _logging_to(stream, "json"):
        logs.info_fields(log, "x", {"_private": 1, "kept": 2})
        with pytest.raises(KeyError, match="Attempt to overwrite 'msg'"):
            logs.info_fields(log, "x", {"msg": "clash"})
    (line,) = _lines(stream)
    assert "_private" not in line and line["kept"] == 2


def test_info_fields_writes_a_text_line_where_the_handler_writes_text() -> None:
    stream = io.StringIO()
    with _logging_to(stream, "text"):
        logs.info_fields(logging.getLogger("ringpipe.node"), "transfer ended", {"path": "/a"})
    assert " worker-7 transfer ended path=/a" in stream.getvalue()


def test_a_line_whose_head_repeats_is_the_whole_fields_encoded_at_once() -> None:
    """``JsonFormatter.line`` keeps a repeated head's encoding: the line is still exactly the
    encoding of every field in order (an extra named like a head field takes its place)."""
    formatter = JsonFormatter("worker-0")
    extras: list[dict[str, object]] = [
        {},
        {"path": '/p/é "\\ \u2028', "n": 1, "framings": {"raw": 1}, "duration_s": 0.5, "nan": float("nan")},
        {"flag": True, "none": None, 7: "int key", "kind": type},
        {"msg": "an extra's message", "event": "x"},
        {"ts": "mine"},
    ]
    for _ in range(2):  # the first time makes each head, the second reuses it
        for fields in extras:
            for pid, msg in ((123, "transfer ended"), (None, 'quoted "é"')):
                line = formatter.line(1765105672.25, 250.0, "info", "ringpipe.node", pid, msg, fields)
                whole = {"ts": "2025-12-07T11:07:52.250Z", "level": "info", "logger": "ringpipe.node"}
                whole |= {"role": "worker-0", "pid": pid, "msg": msg, **fields}
                assert line == logs.redact(json.JSONEncoder(default=str).encode(whole))
