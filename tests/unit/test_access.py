"""The access decisions, pure (SPEC Part 4): scopes, prefixes, tokens, signed URLs, CORS, redaction."""

from __future__ import annotations

import argparse
import json
import re
import time
from urllib.parse import parse_qsl, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ringpipe.core.access import (
    EXPIRED,
    NO_CREDENTIAL,
    AccessPolicy,
    Allow,
    Deny,
    Token,
    TokenFileError,
    parse_token,
    parse_tokens_file,
    required_scope,
)
from ringpipe.core.cors import CorsPolicy, parse_origins
from ringpipe.core.paths import normalize_path
from ringpipe.core.signing import covers_path, normalize_prefix, parse_signed, signed_query
from ringpipe.ops.logs import JsonFormatter, redact, register_secrets
from ringpipe.process.cli import parse_ttl, sign_url

KEY = "unit-signing-key"
NOW = 1_800_000_000.0


def tokens(*texts: str) -> tuple[Token, ...]:
    return tuple(parse_token(t) for t in texts)


def policy(*texts: str, key: str | None = None) -> AccessPolicy:
    return AccessPolicy(tokens(*texts), key)


def decide(p: AccessPolicy, method: str, target: str, auth: str | None = None, now: float = NOW) -> Allow | Deny:
    """As the gate calls it: the path normalised into the pipe key first."""
    path, _, query = target.partition("?")
    return p.decide(method, normalize_path(path.encode()), query.encode(), auth, now)


# -- which scope a request needs --


@pytest.mark.parametrize(
    ("method", "target", "scope"),
    [
        ("POST", "/p", "send"),
        ("PUT", "/p", "send"),
        ("GET", "/p", "recv"),
        ("GET", "/p?format=ndjson", "recv"),
        ("GET", "/p?watch=1", "watch"),
        ("GET", "/p?watch=true&from=live", "watch"),
        ("GET", "/p?watch=0", "recv"),
        ("GET", "/p?watch=", "recv"),
        ("HEAD", "/p", "status"),
        ("DELETE", "/p", "cancel"),
        ("GET", "/metrics", "metrics"),
        ("HEAD", "/metrics", "metrics"),
        ("OPTIONS", "/p", None),
        ("PATCH", "/p", None),
        ("POST", "/metrics", None),
        *[("GET", page, None) for page in ("/", "/noscript", "/help", "/version", "/favicon.ico", "/robots.txt")],
        ("GET", "/healthz", None),
        ("HEAD", "/readyz", None),
    ],
)
def test_required_scope(method: str, target: str, scope: str | None) -> None:
    path, _, query = target.partition("?")
    assert required_scope(method, path, query.encode()) == scope


# -- prefixes: segment boundaries --


@pytest.mark.parametrize(
    ("prefix", "path", "covered"),
    [
        ("/team", "/team", True),
        ("/team", "/team/", True),
        ("/team", "/team/x/y", True),
        ("/team", "/teamx", False),
        ("/team", "/tea", False),
        ("/team", "/", False),
        ("/team", "/other/team/x", False),
        ("/", "/anything/at/all", True),
        ("/a/b", "/a/b/c", True),
        ("/a/b", "/a/bc", False),
    ],
)
def test_prefix_boundaries(prefix: str, path: str, covered: bool) -> None:
    assert covers_path(prefix, path) is covered


def test_prefix_is_normalised_like_paths() -> None:
    assert normalize_prefix("/team/") == "/team"
    assert normalize_prefix("/a/./b/../c") == "/a/c"
    assert normalize_prefix("/") == "/"
    assert normalize_prefix("/x/..") == "/"


segment = st.text(alphabet="abcxyz019-_", min_size=1, max_size=6)


@given(st.lists(segment, min_size=1, max_size=4), st.lists(segment, max_size=3), segment)
def test_prefix_property(prefix_parts: list[str], rest: list[str], extra: str) -> None:
    """A prefix covers itself and everything below it, and never a sibling that extends its last segment."""
    prefix = "/" + "/".join(prefix_parts)
    assert covers_path(prefix, prefix)
    assert covers_path(prefix, prefix + "/" + "/".join(rest))
    assert not covers_path(prefix, prefix + extra)


# -- tokens --


def test_token_parsing() -> None:
    token = parse_token("alice:s3cret:send,recv:/team/")
    assert (token.name, token.secret, token.scopes, token.prefix) == ("alice", "s3cret", {"send", "recv"}, "/team")
    assert parse_token("bob:x:metrics").prefix == "/"
    for bad in ["alice", "alice:s3cret", "alice::recv", "alice:s3cret:fly", "alice:s3cret:recv:team"]:
        with pytest.raises(ValueError) as info:
            parse_token(bad)
        assert "s3cret" not in str(info.value)


def test_tokens_file_comments_and_errors() -> None:
    text = "# team tokens\n\n  alice:a-secret-1:send,recv  \n# bob:old:recv\nbob:b-secret-2:recv:/bob\n"
    loaded = parse_tokens_file(text, "tokens.txt")
    assert [t.name for t in loaded] == ["alice", "bob"]
    with pytest.raises(TokenFileError) as info:
        parse_tokens_file("alice:a-secret-1:send\ncarol:c-secret-3:sned\n", "tokens.txt")
    assert "tokens.txt line 2" in str(info.value)
    assert "c-secret-3" not in str(info.value)


def test_open_when_nothing_is_configured() -> None:
    open_policy = AccessPolicy((), None)
    assert not open_policy.enabled
    for method in ("GET", "POST", "PUT", "HEAD", "DELETE"):
        assert isinstance(decide(open_policy, method, "/p"), Allow)
    assert isinstance(decide(open_policy, "GET", "/metrics"), Allow)


def test_empty_tokens_file_fails_closed() -> None:
    closed = AccessPolicy((), None, enabled=True)
    assert decide(closed, "GET", "/p") == Deny(401, decide(closed, "GET", "/p").message)  # type: ignore[union-attr]
    assert isinstance(decide(closed, "GET", "/help"), Allow)


def test_bearer_tokens() -> None:
    p = policy("alice:alice-secret:send,recv", "bob:bob-secret:recv,status:/team", "ops:ops-secret:metrics")
    assert decide(p, "POST", "/x", "Bearer alice-secret") == Allow("token:alice")
    assert decide(p, "GET", "/x", "bearer   alice-secret ") == Allow("token:alice")
    assert decide(p, "GET", "/team/a", "Bearer bob-secret") == Allow("token:bob")
    assert decide(p, "HEAD", "/team", "Bearer bob-secret") == Allow("token:bob")
    assert decide(p, "GET", "/metrics", "Bearer ops-secret") == Allow("token:ops")
    # no credential, or a scheme that is not Bearer: 401
    for auth in (None, "Basic YWxpY2U6eA==", "Bearer", "Bearer "):
        denial = decide(p, "GET", "/x", auth)
        assert isinstance(denial, Deny) and denial.status == 401, auth
    # wrong secret, scope, prefix: 403
    cases = [
        ("GET", "/x", "Bearer alice-secreT"),
        ("GET", "/x", "Bearer alice-secret-and-more"),
        ("POST", "/team/a", "Bearer bob-secret"),
        ("GET", "/teamx", "Bearer bob-secret"),
        ("GET", "/x?watch=1", "Bearer alice-secret"),
        ("DELETE", "/x", "Bearer alice-secret"),
        ("GET", "/metrics", "Bearer alice-secret"),
        ("GET", "/x", "Bearer ops-secret"),
    ]
    for method, target, auth in cases:
        denial = decide(p, method, target, auth)
        assert isinstance(denial, Deny) and denial.status == 403, (method, target, auth)
        assert "secret" not in denial.message
    # the open pages stay open
    assert isinstance(decide(p, "GET", "/help"), Allow)
    assert isinstance(decide(p, "OPTIONS", "/x"), Allow)


def test_same_secret_on_two_tokens_grants_either() -> None:
    p = policy("a:shared-secret:recv:/a", "b:shared-secret:send:/b")
    assert decide(p, "GET", "/a/x", "Bearer shared-secret") == Allow("token:a")
    assert decide(p, "PUT", "/b/x", "Bearer shared-secret") == Allow("token:b")
    assert isinstance(decide(p, "PUT", "/a/x", "Bearer shared-secret"), Deny)


def test_reload_swaps_the_table_and_keeps_the_key() -> None:
    p = policy("old:old-secret:recv", key=KEY)
    q = p.with_tokens(tokens("new:new-secret:recv"))
    assert isinstance(decide(q, "GET", "/x", "Bearer old-secret"), Deny)
    assert decide(q, "GET", "/x", "Bearer new-secret") == Allow("token:new")
    assert q.signing_key == KEY.encode() and q.enabled
    assert decide(AccessPolicy((), None, enabled=True).with_tokens(()), "GET", "/x").status == 401  # type: ignore[union-attr]


# -- signed URLs --


def signed(path: str, scopes: list[str], exp: float, prefix: str | None = None, key: str = KEY) -> str:
    return f"{path}?{signed_query(key.encode(), path, scopes, int(exp), prefix=prefix)}"


def test_signed_url_for_one_path() -> None:
    p = policy(key=KEY)
    url = signed("/chat/answer", ["recv"], NOW + 60)
    assert decide(p, "GET", url) == Allow("signed")
    assert decide(p, "GET", url + "&format=ndjson&n=1") == Allow("signed")  # other parameters ride along
    assert decide(p, "GET", url, now=NOW + 60) == Allow("signed")  # good until rp_exp, inclusive
    assert decide(p, "GET", url, now=NOW + 61) == Deny(401, EXPIRED, "signed")
    for other in ("/chat/answer2", "/chat", "/chat/answer/x", "/other"):
        denial = decide(p, "GET", other + url[len("/chat/answer") :])
        assert isinstance(denial, Deny) and denial.status == 403, other
    assert decide(p, "GET", url.replace("/chat/answer", "/chat/./answer")) == Allow("signed")  # the same pipe key
    assert isinstance(decide(p, "GET", url.replace("/chat/answer", "/chat/answer/../../x")), Deny)
    denial = decide(p, "POST", url)
    assert isinstance(denial, Deny) and denial.status == 403 and "send" in denial.message
    denial = decide(p, "GET", url.replace("?", "?watch=1&"))
    assert isinstance(denial, Deny) and denial.status == 403


def test_signed_url_for_a_prefix() -> None:
    p = policy(key=KEY)
    query = signed_query(KEY.encode(), "/team", ["recv", "watch"], int(NOW + 60), prefix="/team")
    for path in ("/team", "/team/a", "/team/a/b"):
        assert decide(p, "GET", f"{path}?{query}") == Allow("signed"), path
        assert decide(p, "GET", f"{path}?watch=1&{query}") == Allow("signed"), path
    for path in ("/teamx", "/tea", "/other/team"):
        denial = decide(p, "GET", f"{path}?{query}")
        assert isinstance(denial, Deny) and denial.status == 403, path


def _tamper(url: str, name: str, value: str | None) -> str:
    path, _, query = url.partition("?")
    params = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True) if k != name]
    if value is not None:
        params.append((name, value))
    return path + "?" + "&".join(f"{k}={v}" for k, v in params)


def test_tampered_fields_are_refused() -> None:
    p = policy(key=KEY)
    url = signed("/p", ["recv"], NOW + 60)
    sig = dict(parse_qsl(url.partition("?")[2]))["rp_sig"]
    flipped = ("0" if sig[0] != "0" else "1") + sig[1:]
    for name, value in [
        ("rp_exp", str(int(NOW) + 99999)),  # extend the lifetime
        ("rp_scope", "recv,send"),  # widen the scopes
        ("rp_scope", "send"),
        ("rp_prefix", "/"),  # turn a path signature into a prefix one
        ("rp_prefix", "/p"),  # even for the very same path
        ("rp_sig", flipped),
        ("rp_sig", sig[:-2]),
        ("rp_sig", None),
        ("rp_exp", None),
        ("rp_exp", "-5"),
        ("rp_exp", "1e9"),
        ("rp_scope", "recv,fly"),
    ]:
        denial = decide(p, "GET", _tamper(url, name, value))
        assert isinstance(denial, Deny) and denial.status == 403, (name, value, denial)
    assert decide(p, "GET", _tamper(url, "rp_sig", sig.upper())) == Allow("signed")
    assert isinstance(decide(p, "GET", url + "&rp_scope=send"), Deny)  # repeated: refused, never "first wins"
    assert isinstance(decide(policy(key="another-key"), "GET", url), Deny)
    assert decide(policy("a:a-secret:recv"), "GET", url).status == 403  # type: ignore[union-attr]


def test_expired_only_for_a_genuine_signature() -> None:
    p = policy(key=KEY)
    old = signed("/p", ["recv"], NOW - 1)
    assert decide(p, "GET", old) == Deny(401, EXPIRED, "signed")
    forged = signed("/p", ["recv"], NOW - 1, key="not-the-key")
    assert decide(p, "GET", forged).status == 403  # type: ignore[union-attr]


def test_bearer_or_signed_either_admits() -> None:
    p = policy("a:a-secret:recv", key=KEY)
    url = signed("/p", ["recv"], NOW + 60)
    assert decide(p, "GET", url, "Bearer wrong") == Allow("signed")
    assert decide(p, "GET", signed("/p", ["recv"], NOW - 9), "Bearer a-secret") == Allow("token:a")
    both_bad = decide(p, "GET", signed("/p", ["recv"], NOW - 9), "Bearer wrong")
    assert isinstance(both_bad, Deny) and both_bad.status == 403


def test_parse_signed_ignores_queries_without_rp_params() -> None:
    assert parse_signed(b"") is None
    assert parse_signed(b"n=2&format=sse") is None
    assert parse_signed(b"grp_x=1") is None
    assert isinstance(parse_signed(b"rp_exp=1"), str)


# -- ringpipe sign --


def sign_args(path: str, *scopes: str, ttl: str = "600", prefix: str | bool | None = None) -> argparse.Namespace:
    return argparse.Namespace(path=path, scope=list(scopes), ttl=ttl, prefix=prefix, base_url=None, signing_key=KEY)


def test_sign_url_round_trip() -> None:
    url = sign_url(sign_args("chat/a", "recv,watch", ttl="10m"), {}, NOW)
    parts = urlsplit(url)
    assert parts.scheme == "http" and parts.netloc == "localhost:8080" and parts.path == "/chat/a"
    assert dict(parse_qsl(parts.query))["rp_exp"] == str(int(NOW) + 600)
    p = policy(key=KEY)
    assert decide(p, "GET", f"{parts.path}?{parts.query}") == Allow("signed")
    prefixed = urlsplit(
        sign_url(sign_args("/team/x", "send", prefix="/team"), {"RINGPIPE_BASE_URL": "https://r.example/"}, NOW)
    )
    assert prefixed.netloc == "r.example"
    assert decide(p, "PUT", f"/team/other?{prefixed.query}") == Allow("signed")
    with pytest.raises(ValueError):
        sign_url(sign_args("/x", "recv", prefix="/team"), {}, NOW)
    with pytest.raises(ValueError):
        sign_url(sign_args("/x", "read"), {}, NOW)
    with pytest.raises(ValueError):
        sign_url(argparse.Namespace(**{**vars(sign_args("/x", "recv")), "signing_key": None}), {}, NOW)


@pytest.mark.parametrize(("text", "seconds"), [("600", 600), ("90s", 90), ("10m", 600), ("2h", 7200), ("1d", 86400)])
def test_ttl(text: str, seconds: int) -> None:
    assert parse_ttl(text) == seconds


@pytest.mark.parametrize("text", ["0", "-5", "ten", "5w", ""])
def test_bad_ttl(text: str) -> None:
    with pytest.raises(ValueError):
        parse_ttl(text)


# -- CORS --


def test_cors_any_origin_is_unchanged() -> None:
    cors = CorsPolicy.from_setting("*")
    assert cors.any_origin and cors.allow_origin(b"https://evil.example") == b"*"


def test_cors_allowlist() -> None:
    cors = CorsPolicy.from_setting("https://app.example, http://localhost:3000/")
    assert cors.allow_origin(b"https://app.example") == b"https://app.example"
    assert cors.allow_origin(b"https://APP.example") == b"https://APP.example"
    assert cors.allow_origin(b"http://localhost:3000") == b"http://localhost:3000"
    assert cors.allow_origin(b"https://app.example.evil") is None
    assert cors.allow_origin(b"http://app.example") is None
    assert cors.allow_origin(b"null") is None
    assert cors.allow_origin(None) is None
    headers = [(b"content-type", b"text/plain"), (b"access-control-allow-origin", b"*")]
    assert cors.rewrite(headers, b"https://app.example") == [
        (b"content-type", b"text/plain"),
        (b"access-control-allow-origin", b"https://app.example"),
        (b"vary", b"Origin"),
    ]
    assert cors.rewrite(headers, b"https://evil.example") == [(b"content-type", b"text/plain"), (b"vary", b"Origin")]
    assert cors.rewrite([(b"content-type", b"text/html")], b"https://app.example") == [(b"content-type", b"text/html")]


@pytest.mark.parametrize("text", ["", "app.example", "ftp://x", "https://x/path", " , "])
def test_cors_bad_origins(text: str) -> None:
    with pytest.raises(ValueError):
        parse_origins(text)


# -- redaction --


def test_redaction_of_shapes_and_known_secrets() -> None:
    register_secrets(["known-token-secret-1", "sh"])
    samples = {
        "Authorization: Bearer abc.def-ghi": "abc.def-ghi",
        "[(b'authorization', b'Basic dXNlcjpwdw==')]": "dXNlcjpwdw==",
        "[(b'ringpipe-read-key', b'rk-123')]": "rk-123",
        "Ringpipe-Read-Key: rk-456": "rk-456",
        "GET /p?key=hunter2&n=1": "hunter2",
        "GET /p?rp_exp=1&rp_scope=recv&rp_sig=abcdef0123": "abcdef0123",
        "a read_key=rk7 and api_token=t8": "rk7",
        "the secret known-token-secret-1 appeared": "known-token-secret-1",
    }
    for text, secret in samples.items():
        assert secret not in redact(text), text
    assert redact("rp_exp=1&rp_scope=recv&n=2 path /sh/x") == "rp_exp=1&rp_scope=recv&n=2 path /sh/x"


def test_formatter_redacts_message_extras_and_escaped_secrets() -> None:
    import logging

    register_secrets(['quote"secret\\x'])
    record = logging.LogRecord("t", logging.INFO, __file__, 1, "url %s", ("/p?rp_sig=deadbeef",), None)
    record.headers = [(b"authorization", b"Bearer tok-9")]
    record.note = 'quote"secret\\x'
    line = JsonFormatter("test").format(record)
    json.loads(line)
    assert not re.search(r"deadbeef|tok-9|quote", line), line


# -- the gate in front of WebSocket upgrades (ASGI "websocket" scopes) --


class _Endpoints:
    def __init__(self) -> None:
        self.websockets: list[str] = []

    async def receiver(self, scope: dict[str, object], receive: object, send: object, path: str) -> None:
        self.websockets.append(path)


def _ws_scope(target: str, headers: list[tuple[bytes, bytes]], *, extension: bool) -> dict[str, object]:
    path, _, query = target.partition("?")
    return {
        "type": "websocket",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": headers,
        "extensions": {"websocket.http.response": {}} if extension else {},
    }


def _run_ws(app: object, scope: dict[str, object]) -> list[dict[str, object]]:
    import anyio

    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    anyio.run(app, scope, receive, send)  # type: ignore[arg-type]
    return sent


def test_websocket_upgrades_are_gated_before_accept() -> None:
    from ringpipe.http.app import RingpipeApp

    endpoints = _Endpoints()
    app = RingpipeApp(endpoints, pages=None, access=policy("r:reader-secret:recv", key=KEY))  # type: ignore[arg-type]
    sent = _run_ws(app, _ws_scope("/ws", [], extension=True))
    assert sent[0]["type"] == "websocket.http.response.start" and sent[0]["status"] == 401
    assert (b"www-authenticate", b'Bearer realm="ringpipe"') in sent[0]["headers"]  # type: ignore[operator]
    assert sent[1] == {"type": "websocket.http.response.body", "body": b"[ERROR] " + NO_CREDENTIAL.encode() + b"\n"}
    sent = _run_ws(app, _ws_scope("/ws?watch=1", [(b"authorization", b"Bearer reader-secret")], extension=True))
    assert sent[0]["status"] == 403  # a watcher needs the watch scope
    sent = _run_ws(app, _ws_scope("/ws", [(b"authorization", b"Bearer nope")], extension=False))
    assert sent == [{"type": "websocket.close", "code": 1008}]  # no HTTP denial extension: close before accept
    assert endpoints.websockets == []
    assert _run_ws(app, _ws_scope("/ws", [(b"authorization", b"Bearer reader-secret")], extension=True)) == []
    assert _run_ws(app, _ws_scope(signed("/ws2", ["recv"], time.time() + 60), [], extension=True)) == []
    assert endpoints.websockets == ["/ws", "/ws2"]


def test_websocket_from_a_disallowed_origin_is_refused() -> None:
    from ringpipe.http.app import RingpipeApp

    endpoints = _Endpoints()
    app = RingpipeApp(endpoints, None, cors=CorsPolicy.from_setting("https://app.example"))  # type: ignore[arg-type]
    sent = _run_ws(app, _ws_scope("/ws", [(b"origin", b"https://evil.example")], extension=True))
    assert sent[0]["status"] == 403
    assert _run_ws(app, _ws_scope("/ws", [(b"origin", b"https://app.example")], extension=True)) == []
    assert endpoints.websockets == ["/ws"]
