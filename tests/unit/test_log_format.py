"""``--log-format``: JSON lines for machines, one readable line for a person at a terminal."""

from __future__ import annotations

import io
import json
import logging

import pytest

from ringpipe.core.config import ConfigError, Settings, options
from ringpipe.ops.logs import JsonFormatter, TextFormatter, register_secrets, wants_text


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
