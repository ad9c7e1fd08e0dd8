"""Who may do what on which path (SPEC Part 4): bearer tokens and signed URLs. Pure.

``AccessPolicy.decide`` takes what the gate in ``app.py`` knows before dispatch (method,
pipe path, query string, ``Authorization`` header, the clock) and returns ``Allow`` or
``Deny``. It never touches I/O; the only state is the token table, which a worker swaps
whole on SIGHUP (``with_tokens``), so a request sees the old table or the new, never half.

Rules, in order:

1. No access control configured (no ``--token``, no ``--tokens-file``, no
   ``--signing-key``): everything is allowed (piping-compatible).
2. Requests that need no scope stay open: ``OPTIONS`` (CORS preflights), the reserved pages
   (``/``, ``/noscript``, ``/help``, ``/version``, ``/favicon.ico``, ``/robots.txt``,
   ``/healthz``, ``/readyz``) and methods no pipe accepts (they get 405 either way).
3. Everything else needs a credential whose scopes include ``required_scope`` and whose
   prefix covers the path: a bearer token (``Authorization: Bearer SECRET``) or a signed URL
   (``rp_*`` query parameters). No credential → 401; a wrong secret, signature, scope or
   prefix → 403; a genuine signed URL past ``rp_exp`` → 401 ``Signature expired.``

Access control stays *on* when a tokens file is configured but holds no token (fail
closed): emptying the file revokes every token, it never opens the relay.

Secrets are compared in constant time: the presented secret's SHA-256 selects candidate
tokens (a dict lookup on a digest leaks nothing usable about the secret) and each
candidate is confirmed with ``hmac.compare_digest``.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from ringpipe.core.config import token_problem
from ringpipe.core.paths import RESERVED_PATHS, query_param
from ringpipe.core.signing import SignedUrl, covers_path, normalize_prefix, parse_signed

if TYPE_CHECKING:
    from ringpipe.core.config import Settings

__all__ = [
    "Allow",
    "AccessPolicy",
    "Deny",
    "Token",
    "TokenFileError",
    "configured",
    "load_tokens",
    "parse_token",
    "parse_tokens_file",
    "policy_from_settings",
    "read_tokens_file",
    "required_scope",
]

#: Reserved paths that stay open whatever the configuration (``/metrics`` is not one).
OPEN_PATHS: Final = RESERVED_PATHS - {"/metrics"}
#: Values of ``?watch=`` that do *not* make a GET a watcher; anything else needs ``watch``.
_NOT_WATCH: Final = frozenset({"", "0", "false", "no", "off"})

NO_CREDENTIAL: Final = "Authentication required: send a bearer token (an Authorization header) or use a signed URL."
EXPIRED: Final = "Signature expired."


@dataclass(frozen=True, slots=True)
class Token:
    """One bearer token. ``digest`` is SHA-256 of the secret; the secret itself is kept
    only so logs can redact it (``logs.register_secrets``)."""

    name: str
    secret: str
    scopes: frozenset[str]
    prefix: str

    @property
    def digest(self) -> bytes:
        return hashlib.sha256(self.secret.encode("utf-8")).digest()

    def grants(self, scope: str, path: str) -> bool:
        return scope in self.scopes and covers_path(self.prefix, path)


class TokenFileError(ValueError):
    """A tokens file cannot be used; the message names the file and line, never a secret."""


def parse_token(text: str) -> Token:
    """``NAME:SECRET:SCOPES[:PREFIX]`` → ``Token``; raises ``ValueError`` (secret-free message)."""
    problem = token_problem(text)
    if problem:
        raise ValueError(problem)
    parts = text.split(":", 3)
    prefix = normalize_prefix(parts[3]) if len(parts) == 4 else "/"
    return Token(parts[0], parts[1], frozenset(parts[2].split(",")), prefix)


def parse_tokens_file(text: str, source: str = "tokens file") -> tuple[Token, ...]:
    """One token per line; blank lines and lines starting with ``#`` are skipped.

    A secret may hold any character but ``:`` and whitespace (the line is stripped).
    """
    tokens = []
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        try:
            tokens.append(parse_token(stripped))
        except ValueError as exc:
            raise TokenFileError(f"{source} line {number}: {exc}") from None
    return tuple(tokens)


def read_tokens_file(path: str) -> tuple[Token, ...]:
    """Read and parse ``path``; raises ``TokenFileError`` for a missing, unreadable or bad file."""
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise TokenFileError(f"cannot read tokens file {path}: {getattr(exc, 'strerror', None) or exc}") from None
    return parse_tokens_file(text, path)


def required_scope(method: str, path: str, query_string: bytes) -> str | None:
    """The scope a request needs, or None when it is open to anyone (rule 2 above).

    ``method`` is ``GET`` for a WebSocket upgrade. ``path`` is the normalised pipe key.
    """
    if path == "/metrics":
        return "metrics" if method in ("GET", "HEAD") else None
    if path in OPEN_PATHS:
        return None
    if method in ("POST", "PUT"):
        return "send"
    if method == "GET":
        watch = query_param(query_string, "watch")
        return "recv" if watch is None or watch.lower() in _NOT_WATCH else "watch"
    if method == "HEAD":
        return "status"
    if method == "DELETE":
        return "cancel"
    return None


@dataclass(frozen=True, slots=True)
class Allow:
    """The request may proceed; ``who`` names the credential for logs (never a secret)."""

    who: str


@dataclass(frozen=True, slots=True)
class Deny:
    """The request is refused before dispatch with ``status`` and the one-line ``message``."""

    status: int
    message: str
    who: str = "anonymous"


OPEN: Final = Allow("open")


def bearer_secret(authorization: str | None) -> str | None:
    """The secret of an ``Authorization: Bearer <secret>`` header (scheme case-insensitive)."""
    if authorization is None:
        return None
    scheme, _, secret = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return secret.strip() or None


class AccessPolicy:
    """The token table and signing key of one worker; ``decide`` is the whole gate."""

    def __init__(self, tokens: tuple[Token, ...], signing_key: str | None, *, enabled: bool | None = None) -> None:
        self.tokens = tokens
        self.signing_key = signing_key.encode("utf-8") if signing_key else None
        #: On as soon as tokens *can* exist (a tokens file is configured) or a key is set.
        self.enabled = bool(tokens or signing_key) if enabled is None else enabled
        self._by_digest: dict[bytes, list[Token]] = {}
        for token in tokens:
            self._by_digest.setdefault(token.digest, []).append(token)

    def with_tokens(self, tokens: tuple[Token, ...]) -> AccessPolicy:
        """A policy with a new token table and the same key (a SIGHUP reload)."""
        policy = AccessPolicy(tokens, None, enabled=self.enabled)
        policy.signing_key = self.signing_key
        return policy

    def decide(
        self, method: str, path: str, query_string: bytes, authorization: str | None, now: float
    ) -> Allow | Deny:
        if not self.enabled:
            return OPEN
        scope = required_scope(method, path, query_string)
        if scope is None:
            return OPEN
        denials: list[Deny] = []
        if authorization is not None:
            verdict = self._bearer(authorization, scope, path)
            if isinstance(verdict, Allow):
                return verdict
            denials.append(verdict)
        signed = parse_signed(query_string)
        if signed is not None:
            verdict = self._signed(signed, scope, path, now)
            if isinstance(verdict, Allow):
                return verdict
            denials.append(verdict)
        if not denials:
            return Deny(401, NO_CREDENTIAL)
        # Two credentials both failing: a 403 (a real problem) wins over a 401; between
        # equals the signed URL's reason (e.g. "Signature expired.") is the one shown.
        return max(reversed(denials), key=lambda d: d.status)

    def _bearer(self, authorization: str, scope: str, path: str) -> Allow | Deny:
        secret = bearer_secret(authorization)
        if secret is None:
            return Deny(401, NO_CREDENTIAL)
        # Header values arrive as latin-1 text of the raw bytes; token secrets are UTF-8.
        digest = hashlib.sha256(secret.encode("latin-1", "replace")).digest()
        candidates = [t for t in self._by_digest.get(digest, ()) if hmac.compare_digest(t.digest, digest)]
        if not candidates:
            return Deny(403, "Invalid token.")
        for token in candidates:
            if token.grants(scope, path):
                return Allow(f"token:{token.name}")
        name = candidates[0].name
        if not any(scope in t.scopes for t in candidates):
            return Deny(403, f"The token does not have the '{scope}' scope.", f"token:{name}")
        return Deny(403, f"The token is not valid for the path '{path}'.", f"token:{name}")

    def _signed(self, signed: SignedUrl | str, scope: str, path: str, now: float) -> Allow | Deny:
        if isinstance(signed, str):
            return Deny(403, signed, "signed")
        if self.signing_key is None:
            return Deny(403, "This server does not accept signed URLs.", "signed")
        if not signed.covers(path) or not signed.signature_ok(self.signing_key, path):
            return Deny(403, "Invalid signature for this path.", "signed")
        if now > signed.exp:
            return Deny(401, EXPIRED, "signed")
        if scope not in signed.scopes:
            return Deny(403, f"The signed URL does not have the '{scope}' scope.", "signed")
        return Allow("signed")


def configured(settings: Settings) -> bool:
    """Access control is on: a token, a tokens file (even an empty one) or a signing key."""
    return bool(settings.token or settings.tokens_file or settings.signing_key)


def load_tokens(settings: Settings) -> tuple[Token, ...]:
    """``--token`` values, then the tokens file's; raises ``TokenFileError`` (secret-free)."""
    tokens = tuple(parse_token(text) for text in settings.token)
    if settings.tokens_file:
        tokens += read_tokens_file(settings.tokens_file)
    return tokens


def policy_from_settings(settings: Settings) -> AccessPolicy:
    """The policy a worker starts with; raises ``TokenFileError`` when the file is unusable
    (a worker must not start open when the operator asked for tokens)."""
    return AccessPolicy(load_tokens(settings), settings.signing_key, enabled=configured(settings))
