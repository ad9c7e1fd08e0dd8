"""Access control on a real server (SPEC Part 4): tokens, signed URLs, reloads, CORS, no leaks.

The matrix: three servers (open, tokens, signed URLs) × every kind of request (send, raw
receiver, SSE and NDJSON readers, watcher, HEAD, DELETE, WebSocket upgrade, /metrics) ×
every outcome (allowed, 401, 403). The gate decides from method, path, query and headers
before dispatch, so the 401/403 answers are exact; "allowed" asserts the request got past
the gate (any status but 401/403) — for receivers with a sender waiting, so that they are
answered at once instead of waiting.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ringpipe.core.config import SCOPES
from ringpipe.core.signing import signed_query
from tests.support.servers import ROOT, Server, ServerFactory, start_server, stop_and_check

SIGNING_KEY = "integration-signing-key-5f2c"
FULL_SECRET = "full-secret-0a1b2c3d"
SCOPES_ALL = ",".join(SCOPES)
#: For each scope, a token that has every scope but that one (its 403 credential).
LACKING = {scope: f"lacks-{scope}-secret-9z" for scope in SCOPES}


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, list[str]]
    body: bytes

    def header(self, name: str) -> str | None:
        values = self.headers.get(name.lower())
        return values[0] if values else None


def read_reply(sock: socket.socket, *, method: str = "GET", timeout: float = 10.0) -> Reply:
    """The status and headers (and a Content-Length body) of the next response on ``sock``."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0]:
        return Reply(0, {}, b"")
    status = int(lines[0].split()[1])
    headers: dict[str, list[str]] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    length = headers.get("content-length")
    if length and method != "HEAD" and status not in (101, 204, 304):
        want = int(length[0])
        while len(rest) < want:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    return Reply(status, headers, rest)


def raw_request(method: str, target: str, headers: list[tuple[str, str]], body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers)]
    if body or method in ("POST", "PUT"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def exchange(port: int, method: str, target: str, headers: list[tuple[str, str]] = (), body: bytes = b"") -> Reply:  # type: ignore[assignment]
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw_request(method, target, list(headers), body))
        return read_reply(sock, method=method)


@dataclass(frozen=True)
class Kind:
    """One kind of request: how it is sent and the scope it needs."""

    method: str
    query: str
    headers: tuple[tuple[str, str], ...]
    scope: str
    #: A receiver: answered at once only when a sender waits on the path.
    needs_sender: bool = False
    metrics: bool = False


WS_HEADERS = (
    ("Upgrade", "websocket"),
    ("Connection", "Upgrade"),
    ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ("Sec-WebSocket-Version", "13"),
)
KINDS = {
    "send": Kind("POST", "", (("Content-Type", "text/plain"),), "send"),
    "recv-raw": Kind("GET", "", (), "recv", needs_sender=True),
    "recv-sse": Kind("GET", "", (("Accept", "text/event-stream"),), "recv", needs_sender=True),
    "recv-ndjson": Kind("GET", "format=ndjson", (), "recv", needs_sender=True),
    # SSE: a watcher of a waiting pipe gets its head at once (a raw one waits for the start).
    "watch": Kind("GET", "watch=1&format=sse", (), "watch", needs_sender=True),
    "head-status": Kind("HEAD", "", (), "status"),
    "delete-cancel": Kind("DELETE", "", (), "cancel"),
    "websocket": Kind("GET", "", WS_HEADERS, "recv", needs_sender=True),
    "metrics": Kind("GET", "", (), "metrics", metrics=True),
}


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, Server]]:
    token_args = ["--token", f"full:{FULL_SECRET}:{SCOPES_ALL}"]
    for scope, secret in LACKING.items():
        others = ",".join(s for s in SCOPES if s != scope)
        token_args += ["--token", f"lacks-{scope}:{secret}:{others}"]
    started = {
        "open": start_server("--workers", "2"),
        "tokens": start_server("--workers", "2", *token_args),
        "signed": start_server("--workers", "2", "--signing-key", SIGNING_KEY),
    }
    yield started
    # Nothing here may kill a worker (an anonymous /readyz probe once did: control.py).
    deaths = [r for server in started.values() for r in server.logs if r.get("event") == "worker_died"]
    problems = [p for server in started.values() for p in stop_and_check(server)]
    assert not problems, problems
    assert not deaths, deaths


def sign(path: str, scopes: list[str], ttl: int = 600, key: str = SIGNING_KEY) -> str:
    return signed_query(key.encode(), path, scopes, int(time.time()) + ttl)


def credential(mode: str, outcome: str, scope: str, path: str) -> tuple[list[tuple[str, str]], str]:
    """Headers and query granting (``allowed``) or refusing (``401``/``403``) ``scope`` on ``path``."""
    if mode == "open" or outcome == "401":
        return [], ""
    if mode == "tokens":
        secret = FULL_SECRET if outcome == "allowed" else LACKING[scope]
        return [("Authorization", f"Bearer {secret}")], ""
    if outcome == "allowed":
        return [], sign(path, [scope])
    return [], sign(path, [s for s in SCOPES if s != scope])


def sender_credential(mode: str, path: str) -> tuple[list[tuple[str, str]], str]:
    return credential(mode, "allowed", "send", path)


def start_sender(port: int, mode: str, path: str) -> socket.socket:
    """A sender of ``hello`` that waits on ``path`` (its 200 head read)."""
    headers, query = sender_credential(mode, path)
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    target = path + (f"?{query}" if query else "")
    sock.sendall(raw_request("POST", target, headers, b"hello"))
    reply = read_reply(sock)
    assert reply.status == 200, reply
    return sock


CASES = [
    pytest.param(mode, kind, outcome, id=f"{mode}-{kind}-{outcome}")
    for mode in ("open", "tokens", "signed")
    for kind in KINDS
    for outcome in (("allowed",) if mode == "open" else ("allowed", "401", "403"))
]


@pytest.mark.parametrize(("mode", "kind_name", "outcome"), CASES)
def test_matrix(servers: dict[str, Server], mode: str, kind_name: str, outcome: str) -> None:
    server = servers[mode]
    kind = KINDS[kind_name]
    path = "/metrics" if kind.metrics else f"/acc-{uuid.uuid4().hex[:12]}"
    headers, signed = credential(mode, outcome, kind.scope, path)
    query = "&".join(q for q in (kind.query, signed) if q)
    target = path + (f"?{query}" if query else "")
    sender = start_sender(server.port, mode, path) if kind.needs_sender and outcome == "allowed" else None
    try:
        body = b"hello" if kind.method == "POST" else b""
        reply = exchange(server.port, kind.method, target, [*kind.headers, *headers], body)
    finally:
        if sender is not None:
            sender.close()
    if outcome == "allowed":
        assert reply.status not in (0, 401, 403), reply
        if kind_name in ("send", "recv-raw", "metrics"):
            assert reply.status == 200, reply
        return
    assert reply.status == int(outcome), reply
    assert reply.header("content-type") == "text/plain"
    assert reply.header("access-control-allow-origin") == "*"
    if kind.method != "HEAD":
        assert reply.body.startswith(b"[ERROR] ") and reply.body.endswith(b"\n") and reply.body.count(b"\n") == 1
    if outcome == "401":
        assert reply.header("www-authenticate") == 'Bearer realm="ringpipe"'
    else:
        assert reply.header("www-authenticate") is None


def test_a_refused_request_registers_nobody(servers: dict[str, Server]) -> None:
    """A receiver refused at the gate takes no slot: the pipe's real receiver still gets the bytes."""
    server = servers["tokens"]
    path = f"/acc-{uuid.uuid4().hex[:12]}"
    denied = exchange(server.port, "GET", path, [("Authorization", f"Bearer {LACKING['recv']}")])
    assert denied.status == 403
    sender = start_sender(server.port, "tokens", path)
    try:
        reply = exchange(server.port, "GET", path, [("Authorization", f"Bearer {FULL_SECRET}")])
        assert reply.status == 200
    finally:
        sender.close()


def test_prefix_tokens_and_signed_prefixes(server_factory: ServerFactory) -> None:
    server = server_factory("--workers", "2", "--token", "team:team-secret-77:send,recv:/team", "--signing-key", "pk-1")
    auth = [("Authorization", "Bearer team-secret-77")]
    assert exchange(server.port, "HEAD", "/team/x", auth).status == 403  # no status scope
    for path, status in (("/teamx", 403), ("/team/../x", 403), ("/tea", 403)):
        assert exchange(server.port, "GET", path, auth).status == status, path
    sender = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sender.sendall(raw_request("PUT", "/team/a/b", auth, b"hello"))
    assert read_reply(sender).status == 200
    try:
        query = signed_query(b"pk-1", "/team", ["recv"], int(time.time()) + 60, prefix="/team")
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(raw_request("GET", f"/team/a/b?{query}", []))
            reply = read_reply(sock)
            assert reply.status == 200
            body = reply.body
            while len(body) < 5:
                body += sock.recv(100)
            assert body.endswith(b"hello") or b"hello" in body
        assert exchange(server.port, "GET", f"/teamx?{query}").status == 403
    finally:
        sender.close()


def test_no_credential_needed_for_pages_and_preflight(servers: dict[str, Server]) -> None:
    for mode in ("tokens", "signed"):
        port = servers[mode].port
        for path in ("/", "/noscript", "/help", "/version", "/healthz", "/readyz"):
            for _ in range(5 if path == "/readyz" else 1):  # /readyz probes every worker's control socket
                assert exchange(port, "GET", path).status == 200, (mode, path)
        assert exchange(port, "GET", "/favicon.ico").status == 204
        assert exchange(port, "GET", "/robots.txt").status == 404
        preflight = exchange(
            port, "OPTIONS", "/some/pipe", [("Origin", "https://x.example"), ("Access-Control-Request-Method", "PUT")]
        )
        assert preflight.status == 200
        allowed = preflight.header("access-control-allow-headers") or ""
        for name in ("Authorization", "Last-Event-ID", "Ringpipe-Read-Key"):
            assert name in allowed
        assert "DELETE" in (preflight.header("access-control-allow-methods") or "")


def test_ringpipe_sign_prints_a_working_url(servers: dict[str, Server]) -> None:
    """The command a user runs: ``ringpipe sign`` with the key in the environment."""
    server = servers["signed"]
    path = f"/acc-{uuid.uuid4().hex[:12]}/out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGPIPE_")}
    env["RINGPIPE_SIGNING_KEY"] = SIGNING_KEY

    def sign_cli(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "ringpipe", "sign", *args, "--base-url", server.url],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert done.returncode == 0 and done.stderr == "", done
        assert done.stdout.count("\n") == 1
        return done.stdout.strip()

    send_url = sign_cli(path, "--scope", "send", "--ttl", "1m")
    recv_url = sign_cli(path, "--scope", "recv,watch", "--prefix", path.rsplit("/", 1)[0])
    assert send_url.startswith(server.url + path + "?rp_exp=")
    target = send_url[len(server.url) :]
    sender = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    sender.sendall(raw_request("POST", target, [], b"hello"))
    assert read_reply(sender).status == 200
    try:
        reply = exchange(server.port, "GET", recv_url[len(server.url) :])
        assert reply.status == 200
    finally:
        sender.close()
    assert exchange(server.port, "PUT", recv_url[len(server.url) :], body=b"x").status == 403  # recv,watch only


def test_signed_url_expiry(servers: dict[str, Server]) -> None:
    port = servers["signed"].port
    path = f"/acc-{uuid.uuid4().hex[:12]}"
    expired = sign(path, ["recv"], ttl=-1)
    reply = exchange(port, "GET", f"{path}?{expired}")
    assert (reply.status, reply.body) == (401, b"[ERROR] Signature expired.\n")
    tampered = expired.replace("rp_exp=", "rp_exp=9")
    assert exchange(port, "GET", f"{path}?{tampered}").status == 403


# -- tokens file and SIGHUP --


def test_sighup_reloads_the_tokens_file(server_factory: ServerFactory, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("# reloaded on SIGHUP\nold:old-secret-1234:recv,status\n")
    server = server_factory("--workers", "2", "--tokens-file", str(tokens))

    def status(secret: str) -> int:
        return exchange(server.port, "HEAD", "/reload-probe", [("Authorization", f"Bearer {secret}")]).status

    def reload_and_wait(event: str) -> None:
        seen = sum(1 for r in server.logs if r.get("event") == event)
        os.kill(server.pid, signal.SIGHUP)
        deadline = time.monotonic() + 20
        while sum(1 for r in server.logs if r.get("event") == event) < seen + 2:  # both workers
            assert time.monotonic() < deadline, server.raw_lines[-10:]
            time.sleep(0.05)

    assert status("old-secret-1234") not in (401, 403)
    assert status("new-secret-5678") == 403

    tokens.write_text("new:new-secret-5678:status\n")
    reload_and_wait("tokens_reloaded")
    for _ in range(4):  # both workers answer with the new table
        assert status("new-secret-5678") not in (401, 403)
        assert status("old-secret-1234") == 403

    tokens.write_text("new:new-secret-5678:status\nbroken line without scopes\n")
    reload_and_wait("tokens_reload_failed")
    failures = [r for r in server.logs if r.get("event") == "tokens_reload_failed"]
    assert failures[-1]["level"] == "error" and "line 2" in str(failures[-1]["msg"])
    for _ in range(4):  # the old table stays
        assert status("new-secret-5678") not in (401, 403)

    tokens.write_text("# everyone revoked\n")
    reload_and_wait("tokens_reloaded")
    assert status("new-secret-5678") == 403
    assert exchange(server.port, "HEAD", "/reload-probe").status == 401  # an empty file never opens the relay
    assert server.proc.poll() is None and len(server.workers()) == 2


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (["--tokens-file", "/nonexistent/tokens"], "/nonexistent/tokens"),
        (["--token", "a:s3cr3t-value:fly"], "unknown scopes"),
        (["--cors-origins", "example.com"], "--cors-origins"),
    ],
)
def test_unusable_access_settings_refuse_to_start(args: list[str], mentions: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGPIPE_")}
    result = subprocess.run(
        [sys.executable, "-m", "ringpipe", "serve", "--port", "0", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result
    assert mentions in result.stderr and "s3cr3t-value" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# -- the open-relay warning --


def _open_warnings(server: Server) -> list[dict[str, object]]:
    server.wait_log(lambda r: r.get("event") == "ready")
    return [r for r in server.logs if r.get("event") == "open_relay"]


def test_warns_once_when_open_on_a_public_address(server_factory: ServerFactory) -> None:
    server = server_factory("--workers", "2", "--host", "0.0.0.0")
    warnings = _open_warnings(server)
    assert len(warnings) == 1 and warnings[0]["level"] == "warning"
    assert "open to anyone" in str(warnings[0]["msg"])
    assert _open_warnings(server_factory("--workers", "1")) == []
    assert _open_warnings(server_factory("--workers", "1", "--host", "0.0.0.0", "--signing-key", "k-123456")) == []


# -- CORS --


def test_cors_allowlist(server_factory: ServerFactory) -> None:
    server = server_factory("--workers", "2", "--cors-origins", "https://app.example,http://localhost:3000")
    port = server.port
    good, evil = "https://app.example", "https://evil.example"
    preflight_headers = [("Access-Control-Request-Method", "PUT"), ("Access-Control-Request-Headers", "authorization")]

    ok = exchange(port, "OPTIONS", "/p", [("Origin", good), *preflight_headers])
    assert ok.status == 200
    assert ok.header("access-control-allow-origin") == good and ok.header("vary") == "Origin"
    refused = exchange(port, "OPTIONS", "/p", [("Origin", evil), *preflight_headers])
    assert refused.status == 403 and refused.header("access-control-allow-origin") is None

    # A transfer: the sender from the good origin, receivers from both; each answer per its own Origin.
    path = f"/cors-{uuid.uuid4().hex[:12]}"
    sender = socket.create_connection(("127.0.0.1", port), timeout=10)
    sender.sendall(raw_request("POST", f"{path}?n=2", [("Origin", good)], b"hello"))
    log_head = read_reply(sender)
    assert log_head.status == 200 and log_head.header("access-control-allow-origin") == good
    try:
        heads = {}
        socks = []
        for origin in (good, evil):
            sock = socket.create_connection(("127.0.0.1", port), timeout=10)
            sock.sendall(raw_request("GET", f"{path}?n=2", [("Origin", origin)]))
            socks.append((origin, sock))
        for origin, sock in socks:
            heads[origin] = read_reply(sock)
            sock.close()
    finally:
        sender.close()
    assert heads[good].status == 200 and heads[good].header("access-control-allow-origin") == good
    assert heads[good].headers["vary"] == ["Origin"]
    assert heads[evil].status == 200 and heads[evil].header("access-control-allow-origin") is None

    error = exchange(port, "GET", f"{path}?n=0", [("Origin", good)])
    assert error.status == 400 and error.header("access-control-allow-origin") == good
    assert exchange(port, "GET", "/help", [("Origin", evil)]).header("access-control-allow-origin") is None
    no_origin = exchange(port, "GET", "/version")
    assert no_origin.status == 200 and no_origin.header("access-control-allow-origin") is None


def test_cors_allowlist_covers_the_edge_refusals(server_factory: ServerFactory) -> None:
    """400/414/431 answered before the app follow the allowlist like every other answer:
    the allowed Origin (when it was read before the refusal), never ``*``."""
    server = server_factory("--workers", "1", "--cors-origins", "https://app.example", "--max-path-bytes", "256")
    good, evil = "https://app.example", "https://evil.example"

    def refused(raw: bytes) -> Reply:
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
            sock.sendall(raw)
            return read_reply(sock)

    too_big = raw_request("GET", "/x", [("Origin", good), ("X-Big", "b" * 20_000)])
    long_target = raw_request("GET", "/" + "a" * 300, [("Origin", good)])
    bad_header = b"GET /x HTTP/1.1\r\nOrigin: " + good.encode() + b"\r\nHost: x\r\nno colon\r\n\r\n"
    no_version = b"GET /x\r\nOrigin: " + good.encode() + b"\r\n\r\n"
    for raw, status, allowed in [
        (too_big, 431, good),
        (raw_request("GET", "/x", [("Origin", evil), ("X-Big", "b" * 20_000)]), 431, None),
        (long_target, 414, None),  # refused in the request line, before any header was read
        (bad_header, 400, good),
        (no_version, 400, None),
        (b"FOO BAR\r\n\r\n", 400, None),
    ]:
        reply = refused(raw)
        assert reply.status == status, raw[:40]
        assert reply.header("access-control-allow-origin") == allowed, raw[:40]
        assert reply.headers["vary"] == ["Origin"]
        assert reply.body.startswith(b"[ERROR] ")


def test_cors_star_is_unchanged(servers: dict[str, Server]) -> None:
    reply = exchange(servers["open"].port, "GET", "/version", [("Origin", "https://evil.example")])
    assert reply.header("access-control-allow-origin") == "*" and reply.header("vary") is None


# -- no secret in logs or /metrics --


def test_no_secret_in_logs_or_metrics(tmp_path: Path) -> None:
    token_secret, narrow_secret = "tok-LEAKCHECK-111aaa", "tok-LEAKCHECK-222bbb"
    key = "key-LEAKCHECK-333ccc"
    read_key, query_key, wrong = "rk-LEAKCHECK-444ddd", "qk-LEAKCHECK-555eee", "bad-LEAKCHECK-666fff"
    tokens = tmp_path / "tokens"
    file_secret = "file-LEAKCHECK-777ggg"
    tokens.write_text(f"filetok:{file_secret}:recv\n")
    stdout = tmp_path / "stdout"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RINGPIPE_")}
    env["PYTHONUNBUFFERED"] = "1"
    cmd = [
        sys.executable, "-m", "ringpipe", "serve", "--host", "127.0.0.1", "--port", "0", "--workers", "2",
        "--log-level", "debug", "--token", f"all:{token_secret}:{SCOPES_ALL}",
        "--token", f"narrow:{narrow_secret}:status:/narrow", "--tokens-file", str(tokens), "--signing-key", key,
    ]  # fmt: skip
    with open(stdout, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.PIPE, start_new_session=True)
    server = Server(proc)
    threading.Thread(target=server._pump, daemon=True).start()
    try:
        server.wait_log(lambda r: r.get("event") == "ready", timeout=30)
        port = server.port
        path = f"/leak-{uuid.uuid4().hex[:8]}"
        good_sig = sign(path, ["recv"], key=key)
        bad_sig = good_sig[:-6] + "abcdef"
        expired = sign(path, ["recv"], ttl=-5, key=key)
        bearer = lambda s: [("Authorization", f"Bearer {s}")]  # noqa: E731
        requests = [
            ("GET", path, bearer(wrong)),
            ("GET", path, [("Authorization", f"Basic {wrong}")]),
            ("GET", f"{path}?{bad_sig}", []),
            ("GET", f"{path}?{expired}", []),
            ("GET", f"{path}?key={query_key}", bearer(wrong)),
            ("GET", f"{path}?key={query_key}&{bad_sig}", [("Ringpipe-Read-Key", read_key)]),
            ("HEAD", f"{path}", bearer(narrow_secret)),
            ("HEAD", "/narrow/x", bearer(narrow_secret)),
            ("DELETE", path, bearer(token_secret)),
            ("GET", "/metrics", bearer(token_secret)),
            ("GET", "/metrics", bearer(file_secret)),
            ("GET", f"/metrics?{sign('/metrics', ['metrics'], key=key)}", []),
            ("PATCH", f"{path}?key={query_key}", [("Ringpipe-Read-Key", read_key), *bearer(token_secret)]),
            ("GET", f"{path}?n=zz&key={query_key}&{good_sig}", [("Ringpipe-Read-Key", read_key)]),
        ]
        for method, target, headers in requests:
            exchange(port, method, target, headers)
        # a whole transfer with every kind of credential on it
        sender = socket.create_connection(("127.0.0.1", port), timeout=10)
        sender.sendall(
            raw_request(
                "POST", f"{path}?key={query_key}", [*bearer(token_secret), ("Ringpipe-Read-Key", read_key)], b"hello"
            )
        )
        assert read_reply(sender).status == 200
        received = exchange(port, "GET", f"{path}?{good_sig}&key={query_key}", [("Ringpipe-Read-Key", read_key)])
        assert received.status == 200
        sender.close()
        req = urllib.request.Request(
            f"http://127.0.0.1:{port}/metrics", headers={"Authorization": f"Bearer {token_secret}"}
        )
        with urllib.request.urlopen(req, timeout=10) as answer:
            metrics_text = answer.read().decode()
        server.wait_log(lambda r: r.get("event") == "transfer", timeout=20)
        os.kill(server.pid, signal.SIGHUP)
        time.sleep(1.0)
    finally:
        code = server.stop()
    assert code == 0
    signature_values = [q.split("rp_sig=")[1] for q in (good_sig, bad_sig, expired)]
    secrets = [token_secret, narrow_secret, key, read_key, query_key, wrong, file_secret, *signature_values]
    captured = "\n".join(server.raw_lines) + "\n" + stdout.read_text(errors="replace")
    assert any(json.loads(line).get("event") == "denied" for line in server.raw_lines if line.startswith("{"))
    for secret in secrets:
        assert secret not in captured, secret
        assert secret not in metrics_text, secret
    assert "LEAKCHECK" not in captured
