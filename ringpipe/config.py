"""One frozen ``Settings`` object, built once from flags and environment, passed down explicitly.

This is the only module that reads ``os.environ`` for settings (``from_env``). Every field
carries its own help text and validator, so ``ringpipe serve --help``, the environment
variable names and the README table all come from the declarations below.

Invariants, checked in ``__post_init__``:

- ``ring_bytes`` is a power of two, so a byte's place in the ring is ``seq & (capacity - 1)``.
- ``workers`` is fixed for the supervisor's lifetime: it is an input to ``owner_of()``, and
  changing it mid-flight would split a rendezvous across two owners.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Final, TypeGuard

__all__ = ["LOG_LEVELS", "ConfigError", "Option", "Settings", "options"]

LOG_LEVELS: Final = ("critical", "error", "warning", "info", "debug")

#: Smallest ring: one 4 KiB page; below that the header would dominate the segment.
MIN_RING_BYTES: Final = 4096
#: Largest ring: 1 GiB per pipe; tmpfs pages are only touched as bytes flow, but a
#: larger ring buys no throughput (the benchmark in bench/ plateaus well below it).
MAX_RING_BYTES: Final = 1 << 30
#: The protocol's own ceiling on ?n (SPEC 1.2, item 8).
MAX_RECEIVERS_CEILING: Final = 256


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
    max_receivers: int = field(default=256, metadata=_meta("Largest ?n a pipe may ask for (1 .. 256)."))
    graceful_timeout: float = field(
        default=30.0,
        metadata=_meta("On SIGTERM/SIGINT, seconds running transfers may take to finish before workers are killed."),
    )
    log_level: str = field(default="info", metadata=_meta("One of: " + ", ".join(LOG_LEVELS) + "."))

    def __post_init__(self) -> None:
        for spec in fields(self):
            validator = _VALIDATORS.get(spec.name)
            if validator is not None:
                problem = validator(getattr(self, spec.name))
                if problem:
                    raise ConfigError(f"--{spec.name.replace('_', '-')} {problem}")

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


def _check_level(value: object) -> str | None:
    return None if value in LOG_LEVELS else f"must be one of {', '.join(LOG_LEVELS)} (got {value!r})"


_VALIDATORS: Final[dict[str, Callable[[object], str | None]]] = {
    "port": _check_port,
    "workers": _check_workers,
    "ring_bytes": _check_ring,
    "max_receivers": _check_receivers,
    "graceful_timeout": _check_graceful,
    "log_level": _check_level,
}


def parse_size(text: str) -> int:
    """Parse ``1048576``, ``64k``, ``1M``/``1MiB`` or ``1g`` (binary units) into bytes."""
    raw = text.strip().lower().removesuffix("ib").removesuffix("b")
    units = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    if raw and raw[-1] in units:
        return int(raw[:-1]) * units[raw[-1]]
    return int(raw)


_PARSERS: Final[dict[str, Callable[[str], object]]] = {
    "port": int,
    "workers": int,
    "ring_bytes": parse_size,
    "max_receivers": int,
    "graceful_timeout": float,
    "log_level": str.lower,
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
            )
        )
    return result
