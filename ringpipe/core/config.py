"""One frozen ``Settings`` object, built once from flags and environment, passed down explicitly.

This is the only module that reads ``os.environ`` for settings (``from_env``). Every field
carries its own help text and validator, so ``ringpipe serve --help``, the environment
variable names and the settings table in ``docs/configuration.md`` all come from the declarations below.

Invariants, checked in ``__post_init__``:

- ``ring_bytes`` is a power of two, so a byte's place in the ring is ``seq & (capacity - 1)``.
- ``workers`` is fixed for the supervisor's lifetime: it is an input to ``owner_of()``, and
  changing it mid-flight would split a rendezvous across two owners.

Server-wide counts (``max_pipes``, ``max_connections``) are enforced per worker, with no
shared counter: each worker holds at most ``worker_share(total, workers)``. Paths hash over
the workers and connections land where the kernel (or the hand-off to a pipe's owner) puts
them, never exactly evenly, so the share carries ``SHARE_SLACK`` above an even split: with
``total`` in the thousands spread over distinct paths, every one fits (the split is off by a
few percent at most; for small totals it is a matter of chance). The price is that the workers together may
hold up to ``workers × share`` (at most 1.25 × ``total``, and exactly ``total`` with one worker).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Final, TypeGuard

__all__ = [
    "LOG_FORMATS",
    "LOG_LEVELS",
    "SCOPES",
    "SENDER_RESPONSES",
    "ConfigError",
    "Option",
    "Settings",
    "options",
    "token_problem",
    "worker_share",
]

LOG_LEVELS: Final = ("critical", "error", "warning", "info", "debug")
#: ``auto``: text lines when stderr is a terminal (a person reads them), JSON lines otherwise
#: (containers, CI and log shippers parse them).
LOG_FORMATS: Final = ("auto", "json", "text")
SENDER_RESPONSES: Final = ("live", "late")
#: Token scopes (SPEC Part 4): which requests a bearer token or signed URL may make.
SCOPES: Final = ("send", "recv", "watch", "cancel", "status", "metrics")

#: Smallest ring: one 4 KiB page; below that the header would dominate the segment.
MIN_RING_BYTES: Final = 4096
#: A ring's first capacity when its producer runs in its owner's worker: with the header
#: (704 bytes for one reader, ``shm/layout.py``) it fills one page, which holds a token stream
#: of a few KiB; a stream that needs more room doubles it (``ring.grown``), up to
#: ``ring_bytes``, so bulk transfers still get the whole ring within their first MiB.
INITIAL_RING_BYTES: Final = 2048
#: Largest ring: 1 GiB per pipe; tmpfs pages are only touched as bytes flow, but a
#: larger ring buys no throughput (the benchmark in bench/ plateaus well below it).
MAX_RING_BYTES: Final = 1 << 30
#: The protocol's own ceiling on ?n (SPEC 1.2, item 8).
MAX_RECEIVERS_CEILING: Final = 256


#: A worker's share of a server-wide count is this much above an even split (5/4: 25 %).
#: Uneven hashing of 10 000 paths over 2 workers is about ±1 % (σ = 50 pipes); 25 % keeps
#: a small total (20 pipes over 2 workers, σ ≈ 2.2) clear of it too, and bounds the overshoot.
SHARE_SLACK: Final = (5, 4)


def worker_share(total: int, workers: int) -> int:
    """What one of ``workers`` workers may hold of a server-wide ``total``: ``total`` itself
    with one worker, else ``ceil(total / workers × 5/4)``, never above ``total``.

    Invariants: ``worker_share(total, 1) == total``; ``workers × share >= total`` (an even
    split always fits); ``share <= total``.
    """
    if workers <= 1:
        return total
    numerator, denominator = SHARE_SLACK
    return min(total, -(-total * numerator // (workers * denominator)))


class ConfigError(ValueError):
    """A setting has a value we cannot run with; the message is one line, fit for a CLI."""


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


def _is_int(value: object) -> TypeGuard[int]:
    """An int that is not a bool (``True`` is an int to Python, never a port to a user)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _is_power_of_two(value: int) -> bool:
    return value > 0 and value & (value - 1) == 0


def _meta(help_text: str, *, flag: str | None = None, env: bool = True) -> dict[str, Any]:
    return {"help": help_text, "flag": flag, "env": env}


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything a ringpipe server process needs to know, validated once."""

    host: str = field(default="127.0.0.1", metadata=_meta("Address to listen on."))
    port: int = field(default=8080, metadata=_meta("TCP port to listen on (0: any free port). PORT is honoured too."))
    workers: int = field(
        default_factory=_cpu_count,
        metadata=_meta("Worker processes (default: the CPU count). Fixed for the server's lifetime."),
    )
    ring_bytes: int = field(
        default=1 << 20,
        metadata=_meta("Shared-memory ring per established pipe, in bytes; a power of two (4096 .. 1 GiB)."),
    )
    ring_keep: float = field(
        default=1.0,
        metadata=_meta(
            "Seconds a freed ring's pages stay allocated for the worker's next ring, instead of being "
            "given back and allocated again (0: given back at once). Counted in --max-memory, and given "
            "back at once when a reservation needs them."
        ),
    )
    max_receivers: int = field(default=256, metadata=_meta("Largest ?n a pipe may ask for (1 .. 256)."))
    colocate_max_n: int = field(
        default=16,
        metadata=_meta(
            "Pipes with ?n up to this many receivers are served whole by their path's owner worker: "
            "a connection accepted elsewhere is handed to it (0: never; ends then meet across workers)."
        ),
    )
    graceful_timeout: float = field(
        default=30.0,
        metadata=_meta("On SIGTERM/SIGINT, seconds running transfers may take to finish before workers are killed."),
    )
    log_level: str = field(default="info", metadata=_meta("One of: " + ", ".join(LOG_LEVELS) + "."))
    log_format: str = field(
        default="auto",
        metadata=_meta("Log lines: auto (text at a terminal, JSON lines otherwise), json or text."),
    )
    # -- pipes (SPEC Part 2) --
    replay_bytes: int = field(
        default=256 << 10,
        metadata=_meta(
            "Bytes of a pipe the ring keeps after every reader has read them, for watchers and resume "
            "(capped at half of --ring-bytes)."
        ),
    )
    wait_timeout: float = field(
        default=300.0, metadata=_meta("Seconds a sender or receiver may wait for its peers (0: forever); then 408.")
    )
    stall_timeout: float = field(
        default=30.0,
        metadata=_meta(
            "Seconds a receiver may make no progress while the writer waits on it before it is evicted "
            "(0: never); ?stall_timeout= per pipe."
        ),
    )
    reconnect_grace: float = field(
        default=10.0, metadata=_meta("Seconds a dropped receiver's slot stays reserved for it to resume.")
    )
    heartbeat: float = field(
        default=15.0, metadata=_meta("Seconds between SSE ': ping' comments and WebSocket pings while idle (0: off).")
    )
    sender_response: str = field(
        default="live",
        metadata=_meta(
            "live: the sender's [INFO] log streams as things happen (piping-server); late: the status line and "
            "log are sent only after the whole body is read (needed behind nginx)."
        ),
    )
    # -- limits (SPEC Part 4) --
    max_pipes: int = field(
        default=10_000,
        metadata=_meta(
            "Pipes (waiting or established) at once. Each worker owns the pipes whose path hashes to it and "
            "admits up to ceil(1.25 x N / workers) of them (N with one worker): the slack absorbs uneven "
            "hashing (a few percent over thousands of paths); the server total is at most workers x that. "
            "Beyond: 503."
        ),
    )
    max_memory: int = field(
        default=2 << 30,
        metadata=_meta("Total shared memory for rings, in bytes (k/M/G suffixes); beyond it new transfers get 503."),
    )
    max_watchers: int = field(default=1024, metadata=_meta("Watchers (?watch=1) per pipe; beyond: 503."))
    max_connections: int = field(
        default=20_000,
        metadata=_meta(
            "Open client connections, server-wide (a pipe takes 2 or more). Each worker holds up to "
            "ceil(1.25 x N / workers) (N with one worker), counting those handed to it by a peer "
            "(--colocate-max-n); a worker needs that many open files, + its share of --max-pipes, + 256. "
            "Beyond: 503 and close."
        ),
    )
    max_header_bytes: int = field(default=16 << 10, metadata=_meta("Largest request head, in bytes; beyond: 431."))
    max_path_bytes: int = field(default=8192, metadata=_meta("Longest request target, in bytes; beyond: 414."))
    header_timeout: float = field(
        default=10.0, metadata=_meta("Seconds a connection may take to send a complete request head; then closed.")
    )
    # -- access control (SPEC Part 4) --
    token: tuple[str, ...] = field(
        default=(),
        metadata=_meta(
            "A bearer token NAME:SECRET:SCOPES[:PREFIX], scopes from send,recv,watch,cancel,status,metrics "
            "(repeatable; the variable takes several separated by whitespace)."
        ),
    )
    tokens_file: str | None = field(
        default=None, metadata=_meta("File of tokens, one NAME:SECRET:SCOPES[:PREFIX] per line; re-read on SIGHUP.")
    )
    signing_key: str | None = field(
        default=None,
        metadata=_meta("Secret for signed URLs (rp_exp, rp_scope, rp_prefix, rp_sig); see `ringpipe sign`."),
    )
    cors_origins: str = field(
        default="*", metadata=_meta("Origins allowed by CORS: * or a comma-separated list of origins.")
    )
    ssl_certfile: str | None = field(
        default=None, metadata=_meta("TLS certificate (PEM): serve HTTPS on the same port.")
    )
    ssl_keyfile: str | None = field(default=None, metadata=_meta("TLS private key (PEM) for --ssl-certfile."))
    ssl_only: bool = field(default=False, metadata=_meta("With TLS: refuse plain HTTP on the port."))

    def __post_init__(self) -> None:
        for spec in fields(self):
            validator = _VALIDATORS.get(spec.name)
            if validator is not None:
                problem = validator(getattr(self, spec.name))
                if problem:
                    raise ConfigError(f"--{spec.name.replace('_', '-')} {problem}")
        if (self.ssl_certfile is None) != (self.ssl_keyfile is None):
            raise ConfigError("--ssl-certfile and --ssl-keyfile go together")
        if self.ssl_only and self.ssl_certfile is None:
            raise ConfigError("--ssl-only needs --ssl-certfile and --ssl-keyfile")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """Build settings from ``RINGPIPE_<NAME>`` variables (and ``PORT``), then ``overrides``.

        Overrides whose value is ``None`` are ignored, so an argparse namespace can be passed
        through unchanged. Raises ``ConfigError`` with a one-line message on any bad value.
        """
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        if "PORT" in env:
            values["port"] = _parse("port", env["PORT"], "PORT")
        for spec in fields(cls):
            key = "RINGPIPE_" + spec.name.upper()
            if spec.metadata.get("env", True) and key in env:
                values[spec.name] = _parse(spec.name, env[key], key)
        values.update({name: value for name, value in overrides.items() if value is not None})
        return cls(**values)  # type: ignore[arg-type]

    @property
    def replay_window(self) -> int:
        """Bytes of replay a ring really keeps: ``replay_bytes``, at most half the ring, so the
        writer always has room for new bytes."""
        return min(self.replay_bytes, self.ring_bytes // 2)

    @property
    def pipes_per_worker(self) -> int:
        """Pipes one owner worker admits (``worker_share`` of ``max_pipes``)."""
        return worker_share(self.max_pipes, self.workers)

    @property
    def connections_per_worker(self) -> int:
        """Client connections one worker holds, accepted or handed to it (``worker_share`` of
        ``max_connections``): the hand-off gathers a small pipe's connections on its owner, so
        a worker's load follows the paths it owns, which hash unevenly."""
        return worker_share(self.max_connections, self.workers)

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def _check_port(value: object) -> str | None:
    return None if _is_int(value) and 0 <= value <= 65535 else f"must be 0..65535 (got {value!r})"


def _check_workers(value: object) -> str | None:
    return None if _is_int(value) and 1 <= value <= 256 else f"must be 1..256 (got {value!r})"


def _check_ring(value: object) -> str | None:
    if not _is_int(value) or not _is_power_of_two(value) or not MIN_RING_BYTES <= value <= MAX_RING_BYTES:
        return f"must be a power of two from {MIN_RING_BYTES} to {MAX_RING_BYTES} (got {value!r})"
    return None


def _check_receivers(value: object) -> str | None:
    if _is_int(value) and 1 <= value <= MAX_RECEIVERS_CEILING:
        return None
    return f"must be 1..{MAX_RECEIVERS_CEILING} (got {value!r})"


def _check_graceful(value: object) -> str | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < float("inf"):
        return None
    return f"must be a finite number >= 0 (got {value!r})"


def _check_keep(value: object) -> str | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 60:
        return None
    return f"must be a number of seconds from 0 to 60 (got {value!r})"


def _check_level(value: object) -> str | None:
    return None if value in LOG_LEVELS else f"must be one of {', '.join(LOG_LEVELS)} (got {value!r})"


def _check_log_format(value: object) -> str | None:
    return None if value in LOG_FORMATS else f"must be one of {', '.join(LOG_FORMATS)} (got {value!r})"


def _check_count(low: int, high: int) -> Callable[[object], str | None]:
    def check(value: object) -> str | None:
        return None if _is_int(value) and low <= value <= high else f"must be {low}..{high} (got {value!r})"

    return check


def _check_sender_response(value: object) -> str | None:
    return None if value in SENDER_RESPONSES else f"must be one of {', '.join(SENDER_RESPONSES)} (got {value!r})"


def _check_tokens(value: object) -> str | None:
    if not isinstance(value, tuple):
        return f"must be a list of NAME:SECRET:SCOPES[:PREFIX] (got {value!r})"
    for token in value:
        problem = token_problem(token)
        if problem:
            return problem
    return None


def token_problem(text: object) -> str | None:
    """Why ``text`` is not a NAME:SECRET:SCOPES[:PREFIX] token (never echoing the secret), or None."""
    if not isinstance(text, str):
        return "must be NAME:SECRET:SCOPES[:PREFIX]"
    parts = text.split(":", 3)
    if len(parts) < 3 or not parts[0] or not parts[1] or not parts[2]:
        return "must be NAME:SECRET:SCOPES[:PREFIX] (a token is malformed)"
    unknown = set(parts[2].split(",")) - set(SCOPES)
    if unknown:
        return f"token {parts[0]!r} has unknown scopes {sorted(unknown)}; known: {', '.join(SCOPES)}"
    if len(parts) == 4 and not parts[3].startswith("/"):
        return f"token {parts[0]!r} has a prefix that does not start with '/'"
    return None


_VALIDATORS: Final[dict[str, Callable[[object], str | None]]] = {
    "port": _check_port,
    "workers": _check_workers,
    "ring_bytes": _check_ring,
    "ring_keep": _check_keep,
    "max_receivers": _check_receivers,
    "colocate_max_n": _check_count(0, MAX_RECEIVERS_CEILING),
    "graceful_timeout": _check_graceful,
    "log_level": _check_level,
    "log_format": _check_log_format,
    "replay_bytes": _check_count(0, MAX_RING_BYTES // 2),
    "wait_timeout": _check_graceful,
    "stall_timeout": _check_graceful,
    "reconnect_grace": _check_graceful,
    "heartbeat": _check_graceful,
    "header_timeout": _check_graceful,
    "sender_response": _check_sender_response,
    "max_pipes": _check_count(1, 10_000_000),
    "max_memory": _check_count(MIN_RING_BYTES, 1 << 50),
    "max_watchers": _check_count(0, 1_000_000),
    "max_connections": _check_count(1, 10_000_000),
    "max_header_bytes": _check_count(1024, 1 << 20),
    "max_path_bytes": _check_count(256, 1 << 20),
    "token": _check_tokens,
}


def parse_size(text: str) -> int:
    """Parse ``1048576``, ``64k``, ``1M``/``1MiB`` or ``1g`` (binary units) into bytes."""
    raw = text.strip().lower().removesuffix("ib").removesuffix("b")
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    if raw and raw[-1] in units:
        return int(raw[:-1]) * units[raw[-1]]
    return int(raw)


def _split_tokens(text: str) -> tuple[str, ...]:
    return tuple(text.split())


def parse_bool(text: str) -> bool:
    """``1/true/yes/on`` or ``0/false/no/off`` (any case)."""
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(text)


_PARSERS: Final[dict[str, Callable[[str], object]]] = {
    "port": int,
    "workers": int,
    "ring_bytes": parse_size,
    "ring_keep": float,
    "max_receivers": int,
    "colocate_max_n": int,
    "graceful_timeout": float,
    "log_level": str.lower,
    "log_format": str.lower,
    "replay_bytes": parse_size,
    "wait_timeout": float,
    "stall_timeout": float,
    "reconnect_grace": float,
    "heartbeat": float,
    "header_timeout": float,
    "sender_response": str.lower,
    "max_pipes": int,
    "max_memory": parse_size,
    "max_watchers": int,
    "max_connections": int,
    "max_header_bytes": parse_size,
    "max_path_bytes": parse_size,
    "token": _split_tokens,
    "ssl_only": parse_bool,
}


def _parse(name: str, text: str, source: str) -> object:
    """Parse and check one value from ``source`` (a variable name), naming it in any error."""
    try:
        value = _PARSERS.get(name, str)(text)
    except ValueError:
        raise ConfigError(f"{source} has a bad value: {text!r}") from None
    validator = _VALIDATORS.get(name)
    problem = validator(value) if validator else None
    if problem:
        raise ConfigError(f"{source} {problem}")
    return value


@dataclass(frozen=True, slots=True)
class Option:
    """What the CLI needs to declare one flag for a ``Settings`` field."""

    name: str
    flag: str
    help: str
    parse: Callable[[str], object]
    default: object
    #: "value" (takes one argument), "flag" (boolean switch) or "list" (repeatable).
    kind: str = "value"


def options() -> list[Option]:
    """The CLI-visible settings, in declaration order, with their parsers and defaults."""
    result = []
    for spec in fields(Settings):
        default: object = spec.default
        if default is MISSING and spec.default_factory is not MISSING:
            default = spec.default_factory()
        result.append(
            Option(
                name=spec.name,
                flag=spec.metadata.get("flag") or "--" + spec.name.replace("_", "-"),
                help=spec.metadata["help"],
                parse=_PARSERS.get(spec.name, str),
                default=default,
                kind="flag" if isinstance(default, bool) else "list" if isinstance(default, tuple) else "value",
            )
        )
    return result
