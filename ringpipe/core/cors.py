"""The CORS policy (``--cors-origins``, SPEC Part 4): which browser origins may read answers. Pure.

``*`` (the default) keeps piping-server's behaviour byte for byte: every answer that carries
``Access-Control-Allow-Origin`` carries ``*``. With a list of origins, an answer carries
``Access-Control-Allow-Origin: <the request's Origin>`` and ``Vary: Origin`` only when that
Origin is on the list; for any other origin the header is left out (``Vary: Origin`` stays,
so a shared cache never hands one origin's answer to another), and a preflight is refused
with 403. Requests without an ``Origin`` header (curl, servers) are not CORS requests and
are served as before, minus the allow header.

The list is compared on the serialised origin a browser sends (``scheme://host[:port]``):
scheme and host are case-insensitive, a trailing ``/`` in the configuration is ignored.
``null`` (sandboxed frames, ``file:`` pages) is allowed only when listed literally.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = ["ANY_ORIGIN", "CorsPolicy", "parse_origins"]

ANY_ORIGIN: Final = b"*"


def _normal(origin: str) -> str:
    return origin.strip().rstrip("/").lower()


def parse_origins(text: str) -> frozenset[str] | None:
    """``*`` → None (any origin); otherwise the set of normalised origins.

    Raises ``ValueError`` for an entry that is not ``scheme://host[:port]`` or ``null``.
    """
    if text.strip() == "*":
        return None
    origins = set()
    for entry in text.split(","):
        origin = _normal(entry)
        if not origin:
            continue
        scheme, sep, rest = origin.partition("://")
        if origin != "null" and (not sep or scheme not in ("http", "https") or not rest or "/" in rest):
            raise ValueError(f"--cors-origins: {entry.strip()!r} is not an origin like https://example.com")
        origins.add(origin)
    if not origins:
        raise ValueError("--cors-origins: give * or at least one origin")
    return frozenset(origins)


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    """``origins`` is None for ``*``; otherwise the allowed (normalised) origins."""

    origins: frozenset[str] | None

    @classmethod
    def from_setting(cls, text: str) -> CorsPolicy:
        return cls(parse_origins(text))

    @property
    def any_origin(self) -> bool:
        return self.origins is None

    def allow_origin(self, origin: bytes | None) -> bytes | None:
        """The ``Access-Control-Allow-Origin`` value for a request from ``origin``, or None."""
        if self.origins is None:
            return ANY_ORIGIN
        if origin is None:
            return None
        return origin if _normal(origin.decode("latin-1")) in self.origins else None

    def rewrite(self, headers: list[tuple[bytes, bytes]], origin: bytes | None) -> list[tuple[bytes, bytes]]:
        """A response's headers under this policy (only for a list; ``*`` needs no rewrite).

        Only answers that would carry ``Access-Control-Allow-Origin`` are changed: the
        value becomes the allowed ``origin`` or disappears, and ``Vary: Origin`` is added.
        """
        if not any(name == b"access-control-allow-origin" for name, _ in headers):
            return headers
        allowed = self.allow_origin(origin)
        out = [(name, value) for name, value in headers if name != b"access-control-allow-origin"]
        if allowed is not None:
            out.append((b"access-control-allow-origin", allowed))
        out.append((b"vary", b"Origin"))
        return out
