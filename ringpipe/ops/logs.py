"""Per-process logging: one JSON object per line on stderr, with worker and transfer fields.

``--log-format text`` (and ``auto`` when stderr is a terminal) writes the same record as one
readable line instead: time, level, role, message, then the extras as ``key=value``. JSON stays
the default for anything that is not a terminal, so containers and CI keep parseable lines.

Context travels as ``extra={...}``; every key that is not a standard ``LogRecord`` attribute
becomes a field of the line. uvicorn's own loggers are routed here too (its access log is
off: ringpipe logs one line per transfer instead).

``info_fields(logger, msg, fields)`` is ``logger.info(msg, extra=fields)`` for the lines that
come once per pipe: where the line goes to the JSON handler ``setup_logging`` installed and
nowhere else (no other handler, no filter on the way), it formats the very same line from
``fields`` without building a ``LogRecord`` and writes and flushes it under the handler's
lock, as the handler would; anywhere else (a test's capture handler, text lines, a filter)
it is exactly ``logger.info``.

No secret is ever written (SPEC Part 4): every finished line goes through ``redact``, which
replaces the secrets this process knows (token secrets, the signing key: registered with
``register_secrets``) wherever they appear, and the *shapes* of secrets it cannot know:
``Bearer <x>``, the value of an ``Authorization`` or ``Ringpipe-Read-Key`` header (as text
or as a header tuple), and query values of ``rp_sig``, ``key``, ``*_key``, ``token``,
``*_token``, ``secret`` and ``password``. Redaction runs on the whole line, message, extras
and traceback alike, so a handler cannot leak one by logging a scope or a URL.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import re
import sys
import time
from collections.abc import Iterable
from typing import Any, Final

__all__ = [
    "REDACTED",
    "JsonFormatter",
    "TextFormatter",
    "info_fields",
    "redact",
    "register_secrets",
    "setup_logging",
    "wants_text",
]

REDACTED: Final = "[REDACTED]"
#: Shorter secrets are not replaced literally (they would blot out ordinary words); the
#: shape patterns still catch them where they appear as credentials.
MIN_LITERAL_SECRET: Final = 4
_SHAPES: Final = (
    # A header's value, as text ("Authorization: Basic x") or as a tuple ((b'authorization', b'x')).
    re.compile(
        r"(?i)(\b(?:authorization|ringpipe-read-key)['\"\\]*\s*[:=,]\s*(?:(?-i:b)(?=['\"]))?['\"\\]*)[^'\"\\\r\n,;()\[\]{}]+"
    ),
    re.compile(r"(?i)(\bbearer\s+)[^\s'\"\\,;()\[\]{}]+"),
    # A query or form value: rp_sig=, key=, read_key=, token=, api_token=, secret=, password=.
    re.compile(
        r"(?i)(\b(?:rp_sig|[a-z0-9_-]*key|[a-z0-9_-]*token|[a-z0-9_-]*secret|password)=)[^&\s'\"\\#;,()\[\]{}]+"
    ),
)
#: For each of ``_SHAPES``, lowercase words one of which any match contains. An ASCII text
#: lowercases exactly as the patterns' ``(?i)`` matches (the non-ASCII case equivalents such
#: as U+017F for "s" cannot occur in it), so one without these words needs no regex pass.
#: Every formatted log line is ASCII (``json.dumps`` escapes the rest).
_SHAPE_WORDS: Final = (
    ("authorization", "ringpipe-read-key"),
    ("bearer",),
    ("rp_sig=", "key=", "token=", "secret=", "password="),
)
_secrets: set[str] = set()
#: ``_secrets``, longest first (a secret that contains another is replaced whole).
_secrets_longest_first: tuple[str, ...] = ()
#: Every word of ``_SHAPE_WORDS``: a line with none of them (the common line) needs no regex pass.
_ALL_SHAPE_WORDS: Final = tuple(word for words in _SHAPE_WORDS for word in words)


def register_secrets(secrets: Iterable[str]) -> None:
    """Secrets this process holds (token secrets, the signing key): never written to a log.

    Kept for the process's lifetime, also after a reload removes a token, so a line about an
    old token cannot leak it either.
    """
    global _secrets_longest_first
    for secret in secrets:
        if len(secret) >= MIN_LITERAL_SECRET:
            _secrets.add(secret)
            escaped = json.dumps(secret)[1:-1]  # the form it takes inside a JSON string
            if escaped != secret:
                _secrets.add(escaped)
    _secrets_longest_first = tuple(sorted(_secrets, key=len, reverse=True))


def redact(text: str) -> str:
    """``text`` with every known secret and every credential-shaped value replaced."""
    for secret in _secrets_longest_first:
        if secret in text:
            text = text.replace(secret, REDACTED)
    lowered = text.lower() if text.isascii() else None
    if lowered is not None:
        for word in _ALL_SHAPE_WORDS:
            if word in lowered:
                break
        else:
            return text
    for shape, words in zip(_SHAPES, _SHAPE_WORDS, strict=True):
        if lowered is None or any(word in lowered for word in words):
            text = shape.sub(lambda match: match.group(1) + REDACTED, text)
    return text


_STANDARD: Final = frozenset(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "color_message"}
#: How many attributes ``LogRecord.__init__`` sets, all of them in ``_STANDARD``: a record's
#: ``__dict__`` holds them first (in insertion order), then the extras ``makeRecord`` adds and
#: whatever a formatter sets later, so the extras are looked for only past them.
_INIT_ATTRIBUTES: Final = len(logging.LogRecord("", 0, "", 0, "", (), None).__dict__)
#: One encoder for every line (``json.dumps`` with an argument builds a new one per call).
_ENCODER: Final = json.JSONEncoder(default=str)


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    """The fields of ``record`` that are not a standard ``LogRecord`` attribute, in order."""
    return {
        key: value
        for key, value in itertools.islice(record.__dict__.items(), _INIT_ATTRIBUTES, None)
        if key not in _STANDARD and not key.startswith("_")
    }


#: The fields every line starts with (``JsonFormatter.line``); an extra of one of these names
#: takes that field's place.
_HEAD_FIELDS: Final = frozenset({"ts", "level", "logger", "role", "pid", "msg", "exc"})
#: How many line heads a formatter keeps (``JsonFormatter._heads``).
_HEADS_MAX: Final = 64


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON line: time, level, logger, process role, message, extras."""

    def __init__(self, role: str) -> None:
        super().__init__()
        self.role = role
        #: The last second formatted, and its text (lines come many to a second).
        self._second = -1
        self._second_text = ""
        #: A line's encoded fields from ``level`` to ``msg``, by their values: a process writes
        #: a few lines again and again (one per transfer), whose only new fields are the time
        #: and the extras. Bounded: a message with a value in its text may never come again.
        self._heads: dict[tuple[str, str, int | None, str], str] = {}

    def _stamp(self, created: float, msecs: float) -> str:
        second = int(created)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._second_text}.{int(msecs):03d}Z"

    def line(
        self,
        created: float,
        msecs: float,
        level: str,
        logger: str,
        pid: int | None,
        msg: str,
        extras: dict[str, Any],
        exc: str | None = None,
    ) -> str:
        """The redacted JSON line of one record: ``format`` and ``info_fields`` both write this.

        The same text as encoding the dict of every field at once; where no extra takes a
        head field's place, the head's encoding is kept for lines that repeat it, and only
        the time and the extras are encoded for each line."""
        if exc is None and _HEAD_FIELDS.isdisjoint(extras):
            key = (level, logger, pid, msg)
            head = self._heads.get(key)
            if head is None and len(self._heads) < _HEADS_MAX:
                encode = _ENCODER.encode
                head = self._heads[key] = (
                    f'", "level": {encode(level)}, "logger": {encode(logger)}, "role": {encode(self.role)}, '
                    f'"pid": {encode(pid)}, "msg": {encode(msg)}'
                )
            if head is not None:
                rest = _ENCODER.encode(extras)  # "{}" or '{"key": ...}'
                stamp = self._stamp(created, msecs)
                return redact(f'{{"ts": "{stamp}{head}' + (f", {rest[1:]}" if len(rest) > 2 else "}"))
        line: dict[str, Any] = {
            "ts": self._stamp(created, msecs),
            "level": level,
            "logger": logger,
            "role": self.role,
            "pid": pid,
            "msg": msg,
        }
        line.update(extras)
        if exc is not None:
            line["exc"] = exc
        return redact(_ENCODER.encode(line))

    def format(self, record: logging.LogRecord) -> str:
        exc = self.formatException(record.exc_info) if record.exc_info else None
        return self.line(
            record.created,
            record.msecs,
            record.levelname.lower(),
            record.name,
            record.process,
            record.getMessage(),
            _extras(record),
            exc,
        )


class TextFormatter(JsonFormatter):
    """Formats a record as one line a person reads: ``time level role message key=value ...``."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        parts = [stamp, f"{record.levelname.lower():<7}", self.role, record.getMessage()]
        parts += [f"{key}={value}" for key, value in _extras(record).items()]
        text = " ".join(str(part) for part in parts)
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return redact(text)


#: The handler ``setup_logging`` installed on the root logger while it writes JSON lines, and
#: its formatter: ``info_fields`` writes straight to it when it is a line's only handler.
_direct: tuple[logging.StreamHandler[Any], JsonFormatter] | None = None


#: Key tuples of ``fields`` that ``_plain`` found to be plain extras (a caller's few shapes).
_plain_keys: set[tuple[str, ...]] = set()
_PLAIN_KEYS_MAX: Final = 64


def _plain(fields: dict[str, Any]) -> bool:
    """Whether every key of ``fields`` becomes a field of the line as it is: none names a
    ``LogRecord`` attribute (``makeRecord`` refuses those) or starts with ``_`` (``_extras``
    drops those)."""
    keys = tuple(fields)
    if keys in _plain_keys:
        return True
    if not _STANDARD.isdisjoint(keys) or any(key.startswith("_") for key in keys):
        return False
    if len(_plain_keys) < _PLAIN_KEYS_MAX:
        _plain_keys.add(keys)
    return True


#: This process's pid for the direct line (``LogRecord`` asks ``os.getpid()``, a system call,
#: per record); it changes only in a fork's child, which ``os.register_at_fork`` tells.
_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def _only_handler(logger: logging.Logger, handler: logging.Handler) -> bool:
    """Whether ``logger.info`` would hand a record to ``handler`` alone, unfiltered: the logger
    is enabled and has no filter, and ``handler``, at the root or on the way up, is the one
    handler on its chain (a parent's filters do not apply to a child's records)."""
    if logger.disabled or logger.filters or handler.filters or handler.level > logging.INFO:
        return False
    found = False
    node: logging.Logger | None = logger
    while node is not None:
        handlers = node.handlers
        if handlers:
            if found or len(handlers) != 1 or handlers[0] is not handler:
                return False
            found = True
        if not node.propagate:
            break
        node = node.parent
    return found


def info_fields(logger: logging.Logger, msg: str, fields: dict[str, Any]) -> None:
    """``logger.info(msg, extra=fields)``: the same line, written the same way, without a
    ``LogRecord`` where ``setup_logging``'s JSON handler is the line's only handler (see the
    module docstring). ``fields`` must not name a ``LogRecord`` attribute (as with ``extra``)."""
    direct = _direct
    if (
        direct is None
        or not logger.isEnabledFor(logging.INFO)
        or not _only_handler(logger, direct[0])
        or direct[0].formatter is not direct[1]
        or logging.getLogRecordFactory() is not logging.LogRecord
        or not _plain(fields)
    ):
        logger.info(msg, extra=fields)
        return
    handler, formatter = direct
    created = time.time()
    msecs = int((created - int(created)) * 1000) + 0.0  # as ``LogRecord`` takes them from ``created``
    pid = _pid if logging.logProcesses else None
    with handler.lock or contextlib.nullcontext():  # ``Handler.handle``: emit under the lock
        try:  # ``StreamHandler.emit``
            line = formatter.line(created, msecs, "info", logger.name, pid, msg, fields)
            stream = handler.stream
            stream.write(line + handler.terminator)
            stream.flush()
        except RecursionError:
            raise
        except Exception:
            handler.handleError(logger.makeRecord(logger.name, logging.INFO, "(unknown file)", 0, msg, (), None))


def wants_text(log_format: str, stream: Any = None) -> bool:
    """Whether ``log_format`` (``auto``, ``json`` or ``text``) means text lines on ``stream``."""
    if log_format == "auto":
        stream = sys.stderr if stream is None else stream
        isatty = getattr(stream, "isatty", None)
        return bool(isatty is not None and isatty())
    return log_format == "text"


def setup_logging(level: str, role: str, log_format: str = "json") -> None:
    """(Re)configure logging for this process; call first thing in every process."""
    global _direct
    handler = logging.StreamHandler(sys.stderr)
    formatter = TextFormatter(role) if wants_text(log_format) else JsonFormatter(role)
    handler.setFormatter(formatter)
    _direct = (handler, formatter) if type(formatter) is JsonFormatter else None
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # What no line shows, no record gathers (the logging HOWTO's "Optimization"): the caller's
    # file and line (a walk up the stack per record), the thread and the multiprocessing name.
    logging._srcfile = None
    logging.logThreads = False
    logging.logMultiprocessing = False
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers[:] = []
        logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    logging.captureWarnings(True)  # warnings, too, go out as redacted JSON lines
