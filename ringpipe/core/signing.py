"""Signed URLs (SPEC Part 4): what is signed, how, and how a URL is checked. Pure.

A signed URL carries four query parameters besides whatever else the request needs:

- ``rp_exp``: the expiry, unix seconds (decimal digits only);
- ``rp_scope``: a comma list of scopes (``config.SCOPES``);
- ``rp_prefix`` (optional): the URL is good for every path under this prefix, instead of
  for its own path only;
- ``rp_sig``: lowercase hex HMAC-SHA256, keyed with ``--signing-key``, of the canonical
  string below.

The canonical string is ``ringpipe-url-v1``, then the expiry, the scope list exactly as
sent, the kind (``path`` or ``prefix``) and the normalised path or prefix, joined by
newlines. The kind is part of it so that a signature for the exact path ``/a`` can never
be replayed as ``rp_prefix=/a`` (which would open ``/a/*``). Paths and prefixes are
normalised as pipe keys are (``paths.normalize_path``), so ``/a/./b`` and ``/a/b`` sign
alike and ``..`` cannot climb out of a prefix.

Invariants: a URL whose signature checks out has exactly one of each ``rp_*`` parameter
(a repeated one is refused, never "first wins", so nothing unsigned can ride along); the
signature is checked before the expiry, so only a genuine URL is ever told it expired.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import Final
from urllib.parse import parse_qsl, quote, urlencode

from ringpipe.core.config import SCOPES
from ringpipe.core.paths import normalize_path

__all__ = [
    "SIGNED_PARAMS",
    "SignedUrl",
    "canonical",
    "covers_path",
    "normalize_prefix",
    "parse_signed",
    "sign",
    "signed_query",
]

VERSION: Final = "ringpipe-url-v1"
#: The query parameters a signed URL adds; the pipe ignores them (pipes key on the path).
SIGNED_PARAMS: Final = ("rp_exp", "rp_scope", "rp_prefix", "rp_sig")
_REQUIRED: Final = ("rp_exp", "rp_scope", "rp_sig")


def normalize_prefix(prefix: str) -> str:
    """A prefix as paths are keyed, without a trailing ``/`` (``/team/`` is ``/team``); ``/`` stays ``/``."""
    normal = normalize_path(prefix.encode("utf-8"))
    return normal.rstrip("/") or "/"


def covers_path(prefix: str, path: str) -> bool:
    """True when ``prefix`` (normalised) covers ``path`` on a segment boundary.

    ``/team`` covers ``/team`` and ``/team/x`` but not ``/teamx``; ``/`` covers everything.
    """
    if prefix == "/":
        return True
    return path == prefix or path.startswith(prefix + "/")


def canonical(exp: str, scope: str, *, prefix: str | None, path: str) -> bytes:
    """The bytes the signature covers (see the module docstring)."""
    kind, target = ("prefix", prefix) if prefix is not None else ("path", path)
    return "\n".join((VERSION, exp, scope, kind, target)).encode("utf-8")


def sign(key: bytes, exp: str, scope: str, *, prefix: str | None, path: str) -> str:
    return hmac.new(key, canonical(exp, scope, prefix=prefix, path=path), hashlib.sha256).hexdigest()


def signed_query(key: bytes, path: str, scopes: list[str], exp: int, *, prefix: str | None = None) -> str:
    """The query string (no ``?``) that signs ``path`` (or every path under ``prefix``)."""
    scope = ",".join(scopes)
    normal_path = normalize_path(path.encode("utf-8"))
    normal_prefix = None if prefix is None else normalize_prefix(prefix)
    params = [("rp_exp", str(exp)), ("rp_scope", scope)]
    if normal_prefix is not None:
        params.append(("rp_prefix", normal_prefix))
    params.append(("rp_sig", sign(key, str(exp), scope, prefix=normal_prefix, path=normal_path)))
    return urlencode(params, quote_via=quote, safe="/,")


@dataclass(frozen=True, slots=True)
class SignedUrl:
    """The signed-URL parameters of one request, syntactically valid (not yet verified)."""

    exp: int
    exp_text: str
    scope_text: str
    scopes: frozenset[str]
    prefix: str | None
    sig: str

    def signature_ok(self, key: bytes, path: str) -> bool:
        """Constant-time check of ``rp_sig`` for this request's (normalised) ``path``."""
        expected = sign(key, self.exp_text, self.scope_text, prefix=self.prefix, path=path)
        return hmac.compare_digest(expected.encode(), self.sig.encode())

    def covers(self, path: str) -> bool:
        """The URL is for ``path``: under its prefix, or (no prefix) the signed path itself,
        which ``signature_ok`` checks by signing the request's own path."""
        return self.prefix is None or covers_path(self.prefix, path)


def parse_signed(query_string: bytes) -> SignedUrl | str | None:
    """The signed-URL parameters of a query: a ``SignedUrl``, a reason it is malformed, or
    None when the query carries none of them (the common case, answered without parsing)."""
    if b"rp_" not in query_string:
        return None
    found: dict[str, str] = {}
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if name in SIGNED_PARAMS:
            if name in found:
                return f"The signed URL repeats {name}."
            found[name] = value
    if not found:
        return None
    missing = [name for name in _REQUIRED if name not in found]
    if missing:
        return f"The signed URL lacks {', '.join(missing)}."
    exp_text = found["rp_exp"]
    if not exp_text.isascii() or not exp_text.isdigit() or len(exp_text) > 12:
        return "The signed URL has a malformed rp_exp."
    scopes = frozenset(found["rp_scope"].split(","))
    if not scopes <= set(SCOPES):
        return "The signed URL has an unknown scope."
    prefix = found.get("rp_prefix")
    if prefix is not None:
        if not prefix.startswith("/"):
            return "The signed URL has an rp_prefix that does not start with '/'."
        prefix = normalize_prefix(prefix)
    sig = found["rp_sig"].lower()
    if len(sig) != 64 or not sig.isascii() or any(c not in "0123456789abcdef" for c in sig):
        return "The signed URL has a malformed rp_sig."
    return SignedUrl(int(exp_text), exp_text, found["rp_scope"], scopes, prefix, sig)
