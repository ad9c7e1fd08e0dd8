"""Side by side with piping-server 1.12.9: the same scenarios, the same answers (SPEC Part 1).

Every scenario runs against the reference server (installed with npm into
``tests/.piping-server/`` by ``externals.ensure_piping_server``) and against ringpipe (two
workers, so a path's owner and its parties are often on different workers), at the same
time and on the same path. The test asserts that both give the same observation: for every
response the status line's version, the status, the interim responses, every header but
Date and the connection's own (``IGNORED``), the body bytes and whether the body ended
cleanly; for some scenarios facts computed from a page (its forms, links, nonce).

Where ringpipe differs on purpose, the difference is documented in ``DEVIATIONS`` below —
the one list of them — and the scenario names it: the deviation's normalizer first asserts
each side's documented behaviour (so a deviation cannot hide anything else), then removes
exactly that part, and the rest must still be equal.

Scenarios marked ``xfail(strict=True)`` are SPEC behaviour that ringpipe does not have yet;
the reason says what differs. When ringpipe gains it, the strict marker turns the XPASS into
a failure, and the marker must go.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import re
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any, Final
from urllib.parse import urljoin, urlsplit

import pytest

from tests.support.externals import Reference, start_reference
from tests.support.pipes import Conn, Reply, head, pattern, request
from tests.support.servers import Server, start_server, stop_and_check

REF: Final = "piping-server"
OURS: Final = "ringpipe"

# --------------------------------------------------------------------------------------------
# Deviations: every difference we keep on purpose, in one place (docs/compatibility.md lists them too).
# --------------------------------------------------------------------------------------------

DEVIATIONS: Final[dict[str, str]] = {
    "extra-headers": (
        "ringpipe adds its own response headers: Ringpipe-Worker on every pipe response "
        "(docs/operations.md), and the proxy-safe Cache-Control: no-cache, no-transform and "
        "X-Accel-Buffering: no of SPEC 2.7. They are accepted on ringpipe's side only, with "
        "exactly those values (see ``ours_only``); every scenario relies on this."
    ),
    "receiver-abort-count": (
        "SPEC 1.3 item 12: a receiver that vanishes mid-transfer is counted once; the others "
        "get every byte and the path is freed at the end. The reference counts the leaver "
        "twice: with n=2 one leaver ends the transfer for both ('All receiver(s) was/were "
        "aborted halfway.', the other receiver cut); with n=3 the path stays established "
        "forever."
    ),
    "multipart-length": (
        "SPEC 1.4 item 16: a multipart upload's first part is relayed without a wrong "
        "Content-Length. ringpipe cannot know the part's length before its end, so it sends "
        "the part chunked (or, if it ever can, the exact length). The reference sends a "
        "Content-Length computed as if the first part were the last: right for a one-part "
        "form, too large for a form with more parts, whose receiver then waits for bytes "
        "that never come and never ends cleanly."
    ),
    "max-receivers": (
        "SPEC 1.2 item 8: ?n above --max-receivers (default 256) is a 400 naming the "
        "maximum; the reference has no maximum."
    ),
    "preflight-ours": (
        "SPEC 1.4 item 13 and Parts 2 and 4: a preflight also allows ringpipe's own request "
        "headers (Authorization, Last-Event-ID, Ringpipe-Read-Key) and method (DELETE). The "
        "lists are the reference's with those appended; every other header is the same."
    ),
    "rejection-content-type": (
        "SPEC terms (rejection): every [ERROR] answer is text/plain. The reference's 405 has "
        "no Content-Type; ringpipe's has Content-Type: text/plain."
    ),
    "own-pages": (
        "SPEC 1.4 item 17: /, /noscript, /help and /version are ringpipe's own texts: other "
        "bytes (so another Content-Length), /version says ringpipe's version, /help names "
        "ringpipe and its repository in its first two lines and adds sections after the "
        "reference's recipes (which it keeps, with the same base URL). The page features "
        "(forms, field names, links, CSP nonce) are compared as facts, not bytes."
    ),
    "noscript-csp": (
        "ringpipe's /noscript Content-Security-Policy is the reference's (default-src "
        "'none'; style-src 'nonce-…') plus form-action 'self'; base-uri 'none'; "
        "frame-ancestors 'none'."
    ),
    "noscript-offsite-action": (
        "/noscript?path=//host/x: the reference's form posts to another site "
        '(action="//host/x"); ringpipe\'s always posts to this server (./host/x).'
    ),
    "oversize-head": (
        "SPEC Part 3 errors and Part 4 limits: a request target over the limit is 414 and a "
        "header block over the limit is 431, each with the one-line [ERROR] body, and the "
        "client reads it. The reference (Node's 16 KiB head limit) answers 431 with an empty "
        "body for both, and when the client is still sending a large head Node's close "
        "resets the connection and the 431 is lost."
    ),
    "bad-request-form": (
        "SPEC Part 3 errors / Part 4: a malformed request is 400 with the one-line [ERROR] "
        "body, text/plain. The reference (Node's parser) answers 400 with an empty body."
    ),
    "authority-like-path": (
        "SPEC terms: a path is the request path as received. The reference parses a target "
        "starting with // as an authority (new URL(target, 'a:///')), so '//k//x' is keyed "
        "'//x' and '//k' is the empty path; ringpipe keys '//k//x' as it is."
    ),
    "dotdot-above-root": (
        "SPEC terms: '..' never climbs above the root, so '/..' is '/' (reserved). The "
        "reference's URL parser makes '/..' the empty path and lets a pipe live there."
    ),
    "delete-method": (
        "SPEC 2.3: ringpipe accepts DELETE (cancel), so the preflight's "
        "Access-Control-Allow-Methods and a 405's Allow list it (SPEC 1.4 item 13: all methods "
        "we accept). ringpipe's value, less 'DELETE, ', must equal the reference's (``norm``)."
    ),
    "not-compared": (
        "Not exercised here because they are ringpipe extensions: HEAD and DELETE on a pipe "
        "path (SPEC 2.3, 2.6; the reference answers 405), the Part 2 query parameters, and "
        "the operational paths /metrics, /healthz, /readyz (SPEC Part 3; pipes on the "
        "reference). A rejected upload also closes the connection on ringpipe "
        "(Connection: close; its body is never read), where Node reads and discards it: "
        "connection headers are never compared."
    ),
}

#: Headers never compared: the date and the connection's own management (framing of the
#: *body* — Content-Length, Transfer-Encoding — is compared).
IGNORED: Final = frozenset({"date", "connection", "keep-alive"})

#: "extra-headers": what only ringpipe may add, and the only values it may have.
OURS_ONLY: Final[dict[str, re.Pattern[str]]] = {
    "ringpipe-worker": re.compile(r"\d+"),
    "cache-control": re.compile(r"no-cache, no-transform"),
    "x-accel-buffering": re.compile(r"no"),
    # On the sender's log: without it Chrome buffers a text/plain response to sniff its type,
    # and a page's live view of the log only appears when the upload ends.
    "x-content-type-options": re.compile(r"nosniff"),
}

SETTLE: Final = 0.3  # time for a server to register a party whose arrival it does not answer
HEAD_LIMIT_ANSWER: Final = 2.0  # an oversize or malformed head is answered at once, never left hanging
DATA: Final = pattern(200_000, seed=11)
ERROR_LINE: Final = re.compile(rb"\[ERROR\] [^\n]+\n")

Obs = dict[str, Any]


def summarize(body: bytes) -> bytes | str:
    if len(body) <= 4096:
        return body
    return f"<{len(body)} bytes, sha256 {hashlib.sha256(body).hexdigest()[:16]}>"


def norm(side: str, reply: Reply) -> Obs:
    """A reply as compared: headers sorted by name (order kept within a name), extras checked."""
    headers = []
    for name, value in reply.headers:
        if name in IGNORED:
            continue
        if side == OURS and name in OURS_ONLY:
            assert OURS_ONLY[name].fullmatch(value), f"{name}: {value}"
            continue
        if side == OURS and name in ("allow", "access-control-allow-methods"):  # "delete-method"
            assert "DELETE, " in value, f"{name}: {value}"
            value = value.replace("DELETE, ", "", 1)
        headers.append((name, value))
    headers.sort(key=lambda item: item[0])
    return {
        "version": reply.version,
        "status": reply.status,
        "interim": reply.interim,
        "headers": headers,
        "body": summarize(reply.body),
        "size": len(reply.body),
        "complete": reply.complete,
    }


def normalize(side: str, value: Any) -> Any:
    if isinstance(value, Reply):
        return norm(side, value)
    if isinstance(value, dict):
        return {k: normalize(side, v) for k, v in value.items()}
    if isinstance(value, list):
        return [normalize(side, v) for v in value]
    return value


def drop_header(reply: Obs, name: str) -> Obs:
    return {**reply, "headers": [(k, v) for k, v in reply["headers"] if k != name]}


def header(reply: Obs, name: str) -> str | None:
    values = [v for k, v in reply["headers"] if k == name]
    return values[0] if values else None


# --------------------------------------------------------------------------------------------
# Talking to a server
# --------------------------------------------------------------------------------------------


@dataclass
class Pending:
    """A request in flight: its reply fills in while the test goes on."""

    conn: Conn
    reply: Reply
    task: asyncio.Task[Reply]

    async def wait_for(self, text: str, count: int = 1, timeout: float = 5.0) -> None:
        """Until the body so far holds ``text`` ``count`` times (the sender's log lines)."""
        needle = text.encode()
        async with asyncio.timeout(timeout):
            while self.reply.body.count(needle) < count:
                if self.task.done():
                    raise AssertionError(f"ended without {text!r}: {self.reply}")
                await asyncio.sleep(0.01)

    async def wait_bytes(self, n: int, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout):
            while len(self.reply.body) < n:
                if self.task.done():
                    raise AssertionError(f"ended after {len(self.reply.body)} bytes: {self.reply}")
                await asyncio.sleep(0.01)

    async def result(self, timeout: float = 10.0) -> Reply:
        return await asyncio.wait_for(asyncio.shield(self.task), timeout)

    async def so_far(self, timeout: float) -> Reply:
        """The reply when it ends within ``timeout``, else what has come so far (not complete;
        status 0 if not even the head came before the timeout or a reset)."""
        with contextlib.suppress(TimeoutError, ConnectionError):
            await self.result(timeout)
        return self.reply

    @property
    def answered(self) -> bool:
        return self.reply.started


@dataclass
class Target:
    """One server under test, as one scenario sees it; every connection is closed at the end."""

    side: str
    port: int
    conns: list[Conn] = field(default_factory=list)
    tasks: list[asyncio.Task[Reply]] = field(default_factory=list)

    async def open(self) -> Conn:
        conn = await Conn.open(self.port)
        self.conns.append(conn)
        return conn

    async def start(self, raw: bytes, *, method: str = "GET", timeout: float = 10.0) -> Pending:
        """Send ``raw`` on a new connection and read the reply in the background."""
        conn = await self.open()
        await conn.send(raw)
        return self.follow(conn, method=method, timeout=timeout)

    def follow(self, conn: Conn, *, method: str = "GET", timeout: float = 10.0) -> Pending:
        reply = Reply()
        task = asyncio.create_task(conn.reply(method=method, timeout=timeout, reply=reply))
        self.tasks.append(task)
        return Pending(conn, reply, task)

    async def exchange(self, raw: bytes, *, method: str = "GET", timeout: float = 5.0) -> Reply:
        return await (await self.start(raw, method=method, timeout=timeout)).result(timeout + 1)

    async def silent_for(self, pending: Pending, seconds: float = SETTLE) -> bool:
        """True if ``pending`` gets no response head for ``seconds`` (a waiting receiver)."""
        await asyncio.sleep(seconds)
        return not pending.answered

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for conn in self.conns:
            with contextlib.suppress(Exception):
                conn.abort()


def get(path: str, headers: list[tuple[str, str]] | None = None, **kw: Any) -> bytes:
    return request("GET", path, b"", headers or [], **kw)


def put(path: str, body: bytes = DATA, headers: list[tuple[str, str]] | None = None, **kw: Any) -> bytes:
    return request(kw.pop("method", "PUT"), path, body, headers or [], **kw)


# --------------------------------------------------------------------------------------------
# Scenarios
# --------------------------------------------------------------------------------------------

Run = Callable[[Target, str], Awaitable[Obs]]


@dataclass(frozen=True)
class Scenario:
    id: str
    run: Run
    deviation: str | None = None
    xfail: str | None = None


SCENARIOS: list[Scenario] = []


def scenario(ident: str, *, deviation: str | None = None, xfail: str | None = None) -> Callable[[Run], Run]:
    def register(run: Run) -> Run:
        assert deviation is None or deviation in DEVIATIONS, deviation
        SCENARIOS.append(Scenario(ident, run, deviation, xfail))
        return run

    return register


# ---- 1.1 transfers, both arrival orders, n=1 and n=3, the sender's log ----


@scenario("transfer/sender-first-n1")
async def _(t: Target, p: str) -> Obs:
    sender = await t.start(put(p, DATA, [("Content-Type", "application/octet-stream")]))
    await sender.wait_for("[INFO] Waiting for 1 receiver(s)...\n")
    receiver = await t.exchange(get(p))
    return {"sender": await sender.result(), "receiver": receiver}


@scenario("transfer/receiver-first-n1")
async def _(t: Target, p: str) -> Obs:
    receiver = await t.start(get(p))
    silent = await t.silent_for(receiver)
    sender = await t.exchange(put(p, DATA, [("Content-Type", "text/plain")], method="POST", chunked=True))
    return {"receiver waits silently": silent, "sender": sender, "receiver": await receiver.result()}


@scenario("transfer/sender-first-n3")
async def _(t: Target, p: str) -> Obs:
    sender = await t.start(put(f"{p}?n=3", DATA))
    await sender.wait_for("[INFO] Waiting for 3 receiver(s)...\n")
    receivers = []
    for i in range(3):
        receivers.append(await t.start(get(f"{p}?n=3")))
        if i < 2:
            await sender.wait_for("[INFO] A receiver was connected.\n", count=i + 1)
    return {"sender": await sender.result(), "receivers": [await r.result() for r in receivers]}


@scenario("transfer/receivers-first-n3")
async def _(t: Target, p: str) -> Obs:
    receivers = [await t.start(get(f"{p}?n=3")) for _ in range(3)]
    await asyncio.sleep(SETTLE)
    sender = await t.exchange(put(f"{p}?n=3", DATA, chunked=True))
    return {"sender": sender, "receivers": [await r.result() for r in receivers]}


@scenario("transfer/mixed-order-n3")
async def _(t: Target, p: str) -> Obs:
    first = [await t.start(get(f"{p}?n=3")) for _ in range(2)]
    await asyncio.sleep(SETTLE)
    sender = await t.start(put(f"{p}?n=3", DATA))
    await sender.wait_for("[INFO] 2 receiver(s) has/have been connected.\n")
    last = await t.start(get(f"{p}?n=3"))
    return {"sender": await sender.result(), "receivers": [await r.result() for r in [*first, last]]}


@scenario("transfer/zero-length")
async def _(t: Target, p: str) -> Obs:
    sender = await t.start(put(p, b""))
    await sender.wait_for("Waiting")
    return {"receiver": await t.exchange(get(p)), "sender": await sender.result()}


@scenario("transfer/chunked-empty")
async def _(t: Target, p: str) -> Obs:
    receiver = await t.start(get(p))
    await asyncio.sleep(SETTLE)
    sender = await t.exchange(put(p, b"", chunked=True))
    return {"receiver": await receiver.result(), "sender": sender}


@scenario("transfer/streamed-in-pieces")
async def _(t: Target, p: str) -> Obs:
    """Bytes flow live: the receiver has the first piece before the sender sends the second."""
    conn = await t.open()
    await conn.send(head("PUT", p, [("Transfer-Encoding", "chunked")]) + b"5\r\nfirst\r\n")
    sender = t.follow(conn)
    await sender.wait_for("Waiting")
    receiver = await t.start(get(p))
    await receiver.wait_bytes(5)
    live = receiver.reply.body
    await conn.send(b"6\r\nsecond\r\n0\r\n\r\n")
    return {"first piece live": live, "receiver": await receiver.result(), "sender": await sender.result()}


# ---- 1.2 parties that leave while waiting; 1.3 parties that vanish mid-transfer ----


@scenario("disconnect/waiting-sender-leaves")
async def _(t: Target, p: str) -> Obs:
    first = await t.start(put(p, b"never sent", [("Content-Length", "10")], length=False))
    await first.wait_for("Waiting")
    first.conn.abort()
    await asyncio.sleep(SETTLE)
    sender = await t.start(put(p, b"hello"))
    await sender.wait_for("Waiting")
    return {"receiver": await t.exchange(get(p)), "sender": await sender.result()}


@scenario("disconnect/waiting-receiver-leaves")
async def _(t: Target, p: str) -> Obs:
    gone = await t.start(get(p))
    await asyncio.sleep(SETTLE)
    gone.conn.abort()
    await asyncio.sleep(SETTLE)
    sender = await t.start(put(p, b"hello"))
    await sender.wait_for("Waiting")
    await asyncio.sleep(SETTLE)  # a stale receiver would have started the transfer by now
    return {"receiver": await t.exchange(get(p)), "sender": await sender.result()}


@scenario("disconnect/sender-vanishes-mid-body")
async def _(t: Target, p: str) -> Obs:
    conn = await t.open()
    await conn.send(head("PUT", p, [("Content-Length", str(len(DATA)))]))
    sender = t.follow(conn)
    await sender.wait_for("Waiting")
    receiver = await t.start(get(p))
    await sender.wait_for("Start sending")
    await conn.send(DATA[:50_000])
    await receiver.wait_bytes(1)
    conn.abort()
    got = await receiver.result()
    return {
        "receiver status": got.status,
        "receiver length": got.header("content-length"),
        "receiver got a prefix": DATA.startswith(got.body),
        "receiver ended cleanly": got.complete,
    }


@scenario("disconnect/receiver-leaves-n1")
async def _(t: Target, p: str) -> Obs:
    conn = await t.open()
    await conn.send(head("PUT", p, [("Transfer-Encoding", "chunked")]) + b"a\r\n0123456789\r\n")
    sender = t.follow(conn)
    await sender.wait_for("Waiting")
    receiver = await t.start(get(p))
    await receiver.wait_bytes(10)
    receiver.conn.abort()
    await sender.wait_for("[INFO] A receiver aborted.\n")
    with contextlib.suppress(ConnectionError):
        await conn.send(b"5\r\nlater\r\n0\r\n\r\n")
    log = await sender.result()
    return {"sender log": log.text, "sender status": log.status}


async def _receiver_leaves(t: Target, p: str, n: int) -> Obs:
    conn = await t.open()
    await conn.send(head("PUT", f"{p}?n={n}", [("Transfer-Encoding", "chunked")]) + b"a\r\n0123456789\r\n")
    sender = t.follow(conn)
    await sender.wait_for("Waiting")
    receivers = [await t.start(get(f"{p}?n={n}")) for _ in range(n)]
    for receiver in receivers:
        await receiver.wait_bytes(10)
    receivers[0].conn.abort()
    await sender.wait_for("[INFO] A receiver aborted.\n")
    await asyncio.sleep(SETTLE)
    with contextlib.suppress(ConnectionError):
        await conn.send(b"5\r\nlater\r\n0\r\n\r\n")
    await sender.so_far(1.5)
    stayed = [await r.so_far(1.5) for r in receivers[1:]]
    await asyncio.sleep(SETTLE)
    after = await t.start(put(f"{p}?n={n}", b"x"))
    with contextlib.suppress(AssertionError, TimeoutError):
        await after.wait_for("\n", timeout=2)
    return {
        "sender log": sender.reply.text,
        "others": [{"body": r.body, "complete": r.complete} for r in stayed],
        "path afterwards": after.reply.text.splitlines()[:1],
    }


@scenario("disconnect/receiver-leaves-n2", deviation="receiver-abort-count")
async def _(t: Target, p: str) -> Obs:
    return await _receiver_leaves(t, p, 2)


@scenario("disconnect/receiver-leaves-n3", deviation="receiver-abort-count")
async def _(t: Target, p: str) -> Obs:
    return await _receiver_leaves(t, p, 3)


# ---- 1.1 item 4: which sender headers the receivers get ----


def _forwarding(headers: list[tuple[str, str]]) -> Run:
    async def run(t: Target, p: str) -> Obs:
        sender = await t.start(put(p, b"<b>x</b>", headers))
        await sender.wait_for("Waiting")
        return {"receiver": await t.exchange(get(p)), "sender": await sender.result()}

    return run


for _name, _value in [
    ("text-html", "text/html"),
    ("text-html-charset", "text/html; charset=utf-8"),
    ("text-html-charset-no-space", "text/html;charset=utf-8"),
    ("text-html-upper-case", "TEXT/HTML"),
    ("text-html-suffix", "text/html2"),
    ("xhtml", "application/xhtml+xml"),
    ("text-plain", "text/plain; charset=iso-8859-1"),
    ("octet-stream", "application/octet-stream"),
]:
    scenario(f"headers/content-type-{_name}")(_forwarding([("Content-Type", _value)]))

scenario("headers/no-content-type")(_forwarding([]))
scenario("headers/content-disposition")(
    _forwarding([("Content-Disposition", "attachment; filename=\"a b.txt\"; filename*=UTF-8''a%20b.txt")])
)
scenario("headers/x-piping-several")(
    _forwarding([("X-Piping", "first"), ("X-Piping", "second, third"), ("X-Piping", '{"json": 1}')])
)
scenario("headers/others-not-forwarded")(
    _forwarding(
        [
            ("Cookie", "secret=1"),
            ("Authorization", "Bearer abc"),
            ("X-Custom", "v"),
            ("Content-Encoding", "gzip"),
            ("Cache-Control", "max-age=3"),
            ("Content-Type", "text/plain"),
        ]
    )
)


# ---- 1.2 conflicts and ?n ----


@scenario("conflict/second-sender")
async def _(t: Target, p: str) -> Obs:
    first = await t.start(put(p, b"one"))
    await first.wait_for("Waiting")
    second = await t.exchange(put(p, b"two"))
    return {"second": second, "receiver": await t.exchange(get(p)), "first": await first.result()}


@scenario("conflict/n-mismatch-receiver")
async def _(t: Target, p: str) -> Obs:
    sender = await t.start(put(f"{p}?n=2", b"x"))
    await sender.wait_for("Waiting")
    return {"receiver": await t.exchange(get(f"{p}?n=3"))}


@scenario("conflict/n-mismatch-sender")
async def _(t: Target, p: str) -> Obs:
    await t.start(get(f"{p}?n=2"))
    await asyncio.sleep(SETTLE)
    return {"sender": await t.exchange(put(p, b"x"))}


@scenario("conflict/receivers-over-limit")
async def _(t: Target, p: str) -> Obs:
    first = await t.start(get(f"{p}?n=2"))
    second = await t.start(get(f"{p}?n=2"))
    await asyncio.sleep(SETTLE)
    third = await t.exchange(get(f"{p}?n=2"))
    sender = await t.exchange(put(f"{p}?n=2", b"both"))
    return {"third": third, "sender": sender, "first": await first.result(), "second": await second.result()}


async def _established(t: Target, p: str, late: bytes) -> Obs:
    conn = await t.open()
    await conn.send(head("PUT", p, [("Transfer-Encoding", "chunked")]) + b"3\r\nabc\r\n")
    sender = t.follow(conn)
    await sender.wait_for("Waiting")
    receiver = await t.start(get(p))
    await receiver.wait_bytes(3)
    latecomer = await t.exchange(late)
    await conn.send(b"0\r\n\r\n")
    return {"latecomer": latecomer, "receiver": await receiver.result(), "sender": await sender.result()}


@scenario("conflict/established-sender")
async def _(t: Target, p: str) -> Obs:
    return await _established(t, p, put(p, b"late"))


@scenario("conflict/established-receiver")
async def _(t: Target, p: str) -> Obs:
    return await _established(t, p, get(p))


def _bad_n_sender(value: str) -> Run:
    async def run(t: Target, p: str) -> Obs:
        sender = await t.start(put(f"{p}?n={value}", b"x"))
        with contextlib.suppress(TimeoutError, AssertionError):
            await sender.wait_for("\n", timeout=2)
        return {"status": sender.reply.status, "first line": sender.reply.text.splitlines()[:1]}

    return run


def _bad_n_receiver(value: str) -> Run:
    """A receiver's ?n, read back from the mismatch message a later sender gets."""

    async def run(t: Target, p: str) -> Obs:
        receiver = await t.start(get(f"{p}?n={value}"))
        silent = await t.silent_for(receiver)
        if not silent:
            return {"receiver": await receiver.result()}
        return {"probe": await t.exchange(put(f"{p}?n=200", b"x"))}

    return run


for _label, _value in [
    ("word", "abc"),
    ("empty", ""),
    ("zero", "0"),
    ("negative", "-1"),
    ("hex", "0x10"),
    ("trailing-junk", "3abc"),
    ("fraction", "1.9"),
    ("leading-space", "%202"),
    ("plus", "%2B2"),
    ("fullwidth-digit", "%EF%BC%92"),
]:
    scenario(f"n/sender-{_label}")(_bad_n_sender(_value))
    scenario(f"n/receiver-{_label}")(_bad_n_receiver(_value))

scenario("n/sender-above-maximum", deviation="max-receivers")(_bad_n_sender("257"))
scenario("n/receiver-above-maximum", deviation="max-receivers")(_bad_n_receiver("257"))


# ---- 1.4 item 13: CORS preflight ----


def _preflight(target: str, headers: list[tuple[str, str]]) -> Run:
    async def run(t: Target, p: str) -> Obs:
        return {"preflight": await t.exchange(request("OPTIONS", target.replace("{p}", p), b"", headers))}

    return run


_PREFLIGHT = [
    ("Origin", "https://example.com"),
    ("Access-Control-Request-Method", "PUT"),
    ("Access-Control-Request-Headers", "content-type, x-piping"),
]
scenario("options/preflight", deviation="preflight-ours")(_preflight("{p}", _PREFLIGHT))
scenario("options/private-network", deviation="preflight-ours")(
    _preflight("{p}", [*_PREFLIGHT, ("Access-Control-Request-Private-Network", "true")])
)
scenario("options/private-network-false", deviation="preflight-ours")(
    _preflight("{p}", [*_PREFLIGHT, ("Access-Control-Request-Private-Network", "false")])
)
scenario("options/reserved-path", deviation="preflight-ours")(_preflight("/help", _PREFLIGHT))


@scenario("options/registers-nobody")
async def _(t: Target, p: str) -> Obs:
    await t.exchange(request("OPTIONS", p, b"", _PREFLIGHT))
    sender = await t.start(put(p, b"x"))
    await sender.wait_for("Waiting")
    await asyncio.sleep(SETTLE)
    return {"receiver": await t.exchange(get(p)), "sender": await sender.result()}


# ---- 1.4 items 14, 15: 405, Content-Range, Service-Worker ----


def _method(method: str, target: str = "{p}") -> Run:
    async def run(t: Target, p: str) -> Obs:
        raw = request(method, target.replace("{p}", p), b"", [("Content-Length", "0")])
        return {"answer": await t.exchange(raw)}

    return run


for _verb in ["PATCH", "TRACE", "PROPFIND", "MKCOL", "LOCK"]:
    scenario(f"405/{_verb}", deviation="rejection-content-type")(_method(_verb))
scenario("405/reserved-path", deviation="rejection-content-type")(_method("PATCH", "/help"))


@scenario("content-range/put")
async def _(t: Target, p: str) -> Obs:
    return {"answer": await t.exchange(put(p, b"abc", [("Content-Range", "bytes 0-2/3")]))}


@scenario("content-range/post")
async def _(t: Target, p: str) -> Obs:
    return {"answer": await t.exchange(put(p, b"abc", [("Content-Range", "bytes 0-2/10")], method="POST"))}


@scenario("service-worker/script")
async def _(t: Target, p: str) -> Obs:
    return {"answer": await t.exchange(get(p, [("Service-Worker", "script")]))}


# ---- 1.4 item 16: multipart/form-data ----

BOUNDARY: Final = "----ringpipeCompatBoundary7MA4YWxk"


def _form(*parts: tuple[str, str | None, bytes]) -> bytes:
    """A multipart body from (Content-Disposition, Content-Type or None, data)."""
    out = b""
    for disposition, content_type, data in parts:
        out += f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n".encode()
        if content_type is not None:
            out += f"Content-Type: {content_type}\r\n".encode()
        out += b"\r\n" + data + b"\r\n"
    return out + f"--{BOUNDARY}--\r\n".encode()


_FORM_TYPE: Final = ("Content-Type", f"multipart/form-data; boundary={BOUNDARY}")


def _multipart(*parts: tuple[str, str | None, bytes], chunked: bool = False, receiver_timeout: float = 5.0) -> Run:
    async def run(t: Target, p: str) -> Obs:
        receiver = await t.start(get(p), timeout=receiver_timeout)
        await asyncio.sleep(SETTLE)
        sender = await t.exchange(put(p, _form(*parts), [_FORM_TYPE], method="POST", chunked=chunked))
        return {"parts": len(parts), "receiver": await receiver.result(), "sender": sender}

    return run


_FILE_PART = ('form-data; name="input_file"; filename="page.html"', "text/html; charset=utf-8", b"<h1>hi</h1>\n")
_TEXT_PART = ('form-data; name="input_text"', None, "héllo\r\nworld".encode())
_MULTIPART: Final = "multipart-length"
scenario("multipart/one-file-part", deviation=_MULTIPART)(_multipart(_FILE_PART))
scenario("multipart/one-text-field", deviation=_MULTIPART)(_multipart(_TEXT_PART))
scenario("multipart/one-part-chunked-upload")(_multipart(_FILE_PART, chunked=True))
scenario("multipart/binary-part", deviation=_MULTIPART)(
    _multipart(('form-data; name="f"; filename="d.bin"', "application/octet-stream", DATA[:70_000]))
)
scenario("multipart/several-fields", deviation=_MULTIPART)(
    _multipart(_TEXT_PART, ('form-data; name="other"', None, b"zzz"), receiver_timeout=1.0)
)
scenario("multipart/file-then-fields", deviation=_MULTIPART)(
    _multipart(
        _FILE_PART, ('form-data; name="a"', None, b"1"), ('form-data; name="b"', None, b"2"), receiver_timeout=1.0
    )
)


# ---- 1.1 item 6: HTTP/1.0, Expect: 100-continue, keep-alive ----


@scenario("http10/sender")
async def _(t: Target, p: str) -> Obs:
    sender = await t.start(put(p, DATA, [("Content-Type", "text/plain")], version="1.0"))
    await asyncio.sleep(SETTLE)  # an HTTP/1.0 sender's log comes in one piece at the end
    receiver = await t.exchange(get(p))
    return {"sender": await sender.result(), "receiver": receiver}


@scenario("http10/receiver")
async def _(t: Target, p: str) -> Obs:
    receiver = await t.start(get(p, version="1.0"))
    await asyncio.sleep(SETTLE)
    sender = await t.exchange(put(p, DATA))
    return {"receiver": await receiver.result(), "sender": sender}


@scenario("http10/receiver-of-unknown-length")
async def _(t: Target, p: str) -> Obs:
    receiver = await t.start(get(p, version="1.0"))
    await asyncio.sleep(SETTLE)
    sender = await t.exchange(put(p, DATA, chunked=True))
    return {"receiver": await receiver.result(), "sender": sender}


@scenario("http10/sender-and-receiver-no-host")
async def _(t: Target, p: str) -> Obs:
    receiver = await t.start(get(p, version="1.0", host=None))
    await asyncio.sleep(SETTLE)
    sender = await t.exchange(put(p, b"old clients", version="1.0", host=None))
    return {"receiver": await receiver.result(), "sender": sender}


async def _expect_continue(t: Target, p: str, *, receiver_first: bool) -> Obs:
    receiver = await t.start(get(p)) if receiver_first else None
    if receiver_first:
        await asyncio.sleep(SETTLE)
    conn = await t.open()
    await conn.send(head("PUT", p, [("Content-Length", str(len(DATA))), ("Expect", "100-continue")]))
    try:  # the interim answer must come before any body byte is sent
        first = await asyncio.wait_for(conn.reader.readline(), 2.0)
        if first.startswith(b"HTTP/1.1 100"):
            await conn.reader.readline()
    except TimeoutError:
        first = b"<nothing in 2 s>"
    await conn.send(DATA)
    sender = t.follow(conn)
    if receiver is None:
        await sender.wait_for("Waiting")
        receiver = await t.start(get(p))
    return {"first line": first.strip(), "sender": await sender.result(), "receiver": await receiver.result()}


@scenario("expect/100-continue-sender-first")
async def _(t: Target, p: str) -> Obs:
    return await _expect_continue(t, p, receiver_first=False)


@scenario("expect/100-continue-receiver-first")
async def _(t: Target, p: str) -> Obs:
    return await _expect_continue(t, p, receiver_first=True)


@scenario("keepalive/pages", deviation="preflight-ours")
async def _(t: Target, p: str) -> Obs:
    conn = await t.open()
    await conn.send(get("/favicon.ico"))
    first = await conn.reply()
    await conn.send(get("/robots.txt"))
    second = await conn.reply()
    await conn.send(request("OPTIONS", p))
    third = await conn.reply()
    return {"replies": [first, second, third]}


@scenario("keepalive/sender-then-request", deviation="preflight-ours")
async def _(t: Target, p: str) -> Obs:
    conn = await t.open()
    await conn.send(put(p, b"one"))
    sender = t.follow(conn)
    await sender.wait_for("Waiting")
    receiver = await t.exchange(get(p))
    log = await sender.result()
    await conn.send(request("OPTIONS", p))
    return {"sender": log, "receiver": receiver, "next on the sender's connection": await conn.reply()}


@scenario("keepalive/receiver-twice")
async def _(t: Target, p: str) -> Obs:
    conn = await t.open()
    replies = []
    for body in (b"first", b"second"):
        await conn.send(get(p))
        receiver = t.follow(conn)
        await asyncio.sleep(SETTLE)
        await t.exchange(put(p, body))
        replies.append(await receiver.result())
    return {"receiver": replies}


@scenario("keepalive/after-a-receiver-rejection")
async def _(t: Target, p: str) -> Obs:
    conn = await t.open()
    await conn.send(get(p, [("Service-Worker", "script")]))
    first = await conn.reply()
    await conn.send(get("/favicon.ico"))
    return {"replies": [first, await conn.reply()]}


# ---- 1.4 item 17: reserved paths ----

RESERVED: Final = ["/", "/noscript", "/help", "/version", "/favicon.ico", "/robots.txt"]
_PAGE_DEVIATION: Final = {"/": "own-pages", "/noscript": "noscript-csp", "/help": "own-pages", "/version": "own-pages"}


def _reserved(method: str, path: str) -> Run:
    async def run(t: Target, p: str) -> Obs:
        if method in ("GET", "HEAD"):
            answer = await t.exchange(request(method, path), method=method)
            if method == "HEAD" and path in _PAGE_DEVIATION:  # same headers as GET, no body
                page = await t.exchange(request("GET", path))
                return {"answer": answer, "GET length": page.header("content-length"), "GET body": page.body}
            return {"answer": answer}
        return {"answer": await t.exchange(put(path, b"not here", method=method))}

    return run


for _path in RESERVED:
    for _verb in ("GET", "HEAD", "POST", "PUT"):
        _dev = _PAGE_DEVIATION.get(_path) if _verb in ("GET", "HEAD") else None
        scenario(f"reserved/{_verb} {_path}", deviation=_dev)(_reserved(_verb, _path))


@scenario("reserved/help-base-url-from-host", deviation="own-pages")
async def _(t: Target, p: str) -> Obs:
    return {"answer": await t.exchange(get("/help", host="pipe.example.com:8443"))}


@scenario("reserved/help-https-behind-a-proxy", deviation="own-pages")
async def _(t: Target, p: str) -> Obs:
    raw = get("/help", [("X-Forwarded-Proto", "https")], host="pipe.example.com")
    return {"answer": await t.exchange(raw)}


@scenario("reserved/help-no-host-header", deviation="own-pages")
async def _(t: Target, p: str) -> Obs:
    """HTTP/1.0 without Host: the help says 'hostname' (the status line's version is http10/*'s matter)."""
    answer = await t.exchange(get("/help", version="1.0", host=None))
    answer.version = "<not compared here>"
    return {"answer": answer}


@scenario("reserved/query-is-ignored")
async def _(t: Target, p: str) -> Obs:
    return {"answer": await t.exchange(get("/robots.txt?x=1")), "put": await t.exchange(put("/version?n=2", b"x"))}


@scenario("reserved/dot-segments", deviation="own-pages")
async def _(t: Target, p: str) -> Obs:
    return {
        "GET /x/../version": await t.exchange(get("/x/../version")),
        "PUT /./help": await t.exchange(put("/./help", b"x")),
        "PUT /a/b/../../": await t.exchange(put("/a/b/../../", b"x")),
    }


@scenario("reserved/percent-encoded-dot-segments", deviation="own-pages")
async def _(t: Target, p: str) -> Obs:
    return {"GET /%2e/version": await t.exchange(get("/%2e/version"), timeout=1)}


@scenario("reserved/not-reserved-variants")
async def _(t: Target, p: str) -> Obs:
    """/help/, /HELP and /index.html are pipes on both (a sender waits there)."""
    out: Obs = {}
    for path in ("/help/", "/HELP", "/index.html", "/noscript/x"):
        sender = await t.start(put(path + p.replace("/", "-") if path.endswith("x") else path, b"x"))
        with contextlib.suppress(AssertionError, TimeoutError):
            await sender.wait_for("\n", timeout=2)
        out[path] = sender.reply.text.splitlines()[:1]
        sender.conn.abort()
    return out


# ---- page features, computed the same way from both servers' pages ----


class _Forms(HTMLParser):
    """Forms, controls, links and loaded resources of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.forms: list[dict[str, Any]] = []
        self.links: list[str] = []
        self.resources: list[str] = []
        self.style_nonces: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form":
            self.forms.append({"attrs": a, "controls": []})
        elif tag in ("input", "textarea", "button", "select") and self.forms:
            kind = (a.get("type") or ("submit" if tag == "button" else "text")).lower()
            control = {"kind": tag if tag == "textarea" else kind, "name": a.get("name"), "disabled": "disabled" in a}
            if kind == "radio":
                control |= {"value": a.get("value"), "checked": "checked" in a}
            elif kind in ("text", "search") or (tag == "input" and kind not in ("file", "submit")):
                control |= {"value": a.get("value") or ""}
            self.forms[-1]["controls"].append(control)
        elif tag == "a" and a.get("href") is not None:
            self.links.append(a["href"] or "")
        elif tag == "style" and a.get("nonce"):
            self.style_nonces.append(a["nonce"] or "")
        elif tag == "script":
            self.scripts += 1
            if a.get("src"):
                self.resources.append(a["src"] or "")
        elif tag in ("link", "img", "iframe", "audio", "video", "source") and (a.get("href") or a.get("src")):
            self.resources.append(a.get("href") or a.get("src") or "")


def _page_facts(url: str, reply: Reply) -> Obs:
    parser = _Forms()
    parser.feed(reply.text)
    forms = []
    for form in parser.forms:
        attrs = form["attrs"]
        action = attrs.get("action")
        forms.append(
            {
                "method": (attrs.get("method") or "get").lower(),
                "enctype": attrs.get("enctype"),
                "posts to": None if action is None else urljoin(url, action),
                "controls": form["controls"],
            }
        )
    links = [urljoin(url, h) for h in parser.links]
    return {
        "status": reply.status,
        "content-type": reply.header("content-type"),
        "forms": forms,
        "links here": {urlsplit(link).path for link in links if urlsplit(link).netloc == "pipe.test"},
        "loads from elsewhere": [r for r in parser.resources if urlsplit(urljoin(url, r)).netloc != "pipe.test"],
        "viewport": 'name="viewport"' in reply.text,
        "scripts": parser.scripts,
        "nonces": parser.style_nonces,
        "csp": reply.header("content-security-policy"),
    }


def _nonce_checked(facts: Obs) -> Obs:
    """The style sheet's nonce is the CSP's and is fresh-looking base64 of >= 128 bits."""
    csp = facts.pop("csp")
    nonces = facts.pop("nonces")
    match = re.search(r"style-src 'nonce-([A-Za-z0-9+/=_-]+)'", csp or "")
    assert match, csp
    assert nonces == [match.group(1)], (nonces, csp)
    assert len(base64.b64decode(match.group(1) + "==")) >= 16
    assert (csp or "").startswith("default-src 'none'; "), csp
    return facts


def _noscript(query: str) -> Run:
    async def run(t: Target, p: str) -> Obs:
        url = f"http://pipe.test/noscript{query}".replace("{p}", p.lstrip("/"))
        reply = await t.exchange(get(f"/noscript{query}".replace("{p}", p.lstrip("/")), host="pipe.test"))
        facts = _nonce_checked(_page_facts(url, reply))
        facts["links to the top page"] = "/" in facts.pop("links here")
        return {"page": facts}

    return run


def _submits(facts: Obs) -> Obs:
    """Submit controls are compared as such (``<input type=submit>`` or ``<button>``)."""
    for form in facts.get("forms", []):
        controls = [
            {"kind": "submit", "disabled": c["disabled"]} if c["kind"] == "submit" else c for c in form["controls"]
        ]
        form["controls"] = sorted(controls, key=lambda c: (c["kind"], c.get("name") or "", c.get("value") or ""))
    return facts


scenario("pages/noscript-text-mode", deviation="own-pages")(_noscript("?path={p}&mode=text"))
scenario("pages/noscript-file-mode", deviation="own-pages")(_noscript("?path={p}&mode=file"))
scenario("pages/noscript-default-mode", deviation="own-pages")(_noscript("?path={p}"))
scenario("pages/noscript-unknown-mode", deviation="own-pages")(_noscript("?path={p}&mode=zip"))
scenario("pages/noscript-no-path", deviation="own-pages")(_noscript(""))
scenario("pages/noscript-nested-path-and-query", deviation="own-pages")(_noscript("?path={p}/sub/f.txt%3Fn%3D2"))
scenario("pages/noscript-escapes-the-path", deviation="own-pages")(
    _noscript("?path=%22%3E%3Cscript%3Ealert(1)%3C/script%3E%3Cx%20y=%27&mode=text")
)
scenario("pages/noscript-offsite-path", deviation="noscript-offsite-action")(_noscript("?path=//evil.example/x"))


@scenario("pages/noscript-fresh-nonce")
async def _(t: Target, p: str) -> Obs:
    replies = [await t.exchange(get("/noscript")) for _ in range(3)]
    nonces = [re.search(r"'nonce-([^']+)'", r.header("content-security-policy") or "") for r in replies]
    return {"all different": len({m.group(1) for m in nonces if m}) == 3}


@scenario("pages/index", deviation="own-pages")
async def _(t: Target, p: str) -> Obs:
    facts = _page_facts("http://pipe.test/", await t.exchange(get("/", host="pipe.test")))
    del facts["forms"]  # a page driven by JavaScript: its controls are tested in a browser
    facts["links to /noscript"] = "/noscript" in facts.pop("links here")
    return {"page": facts}


# ---- item 5 of the issue: paths ----


async def _meet(t: Target, sender_target: bytes | str, receiver_target: bytes | str) -> Obs:
    """Do a sender on one target and a receiver on another meet? And what does a second
    sender on the receiver's target hear (the message names the path as the server keys it)?"""
    sender = await t.start(put(sender_target, b"met"))  # type: ignore[arg-type]
    with contextlib.suppress(AssertionError, TimeoutError):
        await sender.wait_for("\n", timeout=2)
    second = await t.start(put(receiver_target, b"x"))  # type: ignore[arg-type]
    with contextlib.suppress(AssertionError, TimeoutError):
        await second.wait_for("\n", timeout=2)
    heard = dataclasses.replace(second.reply)  # as it is now: rejected, or waiting on its own path
    receiver = await t.start(get(receiver_target), timeout=2)  # type: ignore[arg-type]
    got = await receiver.so_far(2)  # a sender waits there (the first, or else the second): immediate
    met = got.complete and got.body == b"met"
    return {"first": sender.reply.text.splitlines()[:1], "second sender": heard, "met": met}


def _paths(sender_target: str | bytes, receiver_target: str | bytes) -> Run:
    def fill(target: str | bytes, p: str) -> str | bytes:
        return target.replace(b"{p}", p.encode()) if isinstance(target, bytes) else target.replace("{p}", p)

    async def run(t: Target, p: str) -> Obs:
        return await _meet(t, fill(sender_target, p), fill(receiver_target, p))

    return run


LONG: Final = "/" + "x" * 8000
scenario("path/long-8000")(_paths(LONG + "{p}", LONG + "{p}"))
scenario("path/sub-delims")(_paths("{p}/~!$&'()*+,;=:@.-_", "{p}/~!$&'()*+,;=:@.-_"))
scenario("path/percent-escapes-kept")(_paths("{p}/%41", "{p}/A"))
scenario("path/percent-escape-case-kept")(_paths("{p}/%2f", "{p}/%2F"))
scenario("path/percent-escapes-meet")(_paths("{p}/a%20b%E3%81%82", "{p}/a%20b%E3%81%82"))
scenario("path/malformed-escapes")(_paths("{p}/%zz%", "{p}/%zz%"))
scenario("path/case-kept")(_paths("{p}/ABC", "{p}/abc"))
scenario("path/trailing-slash-kept")(_paths("{p}/", "{p}"))
scenario("path/dot-dot")(_paths("{p}/a/../b", "{p}/b"))
scenario("path/dot")(_paths("{p}/./a/.", "{p}/a/"))
scenario("path/dot-dot-chain")(_paths("{p}/a/b/c/../../d", "{p}/a/d"))
scenario("path/backslash")(_paths("{p}/a\\b", "{p}/a\\b"))
scenario("path/query-ignored")(_paths("{p}?x=1", "{p}?y=2&n=1"))
scenario("path/fragment-ignored")(_paths("{p}#frag", "{p}"))
scenario("path/percent-encoded-dot-dot")(_paths("{p}/a/%2e%2E/b", "{p}/b"))
scenario("path/raw-characters-escaped")(_paths('{p}/{x}"<y>`', "{p}/%7Bx%7D%22%3Cy%3E%60"))
scenario("path/authority-like", deviation="authority-like-path")(_paths("/{p}//x", "/{p}//x"))
scenario("path/dot-dot-above-root", deviation="dotdot-above-root")(_paths("/..", "/"))


# ---- SPEC Part 3/4: oversize and malformed heads get an answer, never a 500 or a hang ----


def _oversize(raw: Callable[[str], bytes]) -> Run:
    async def run(t: Target, p: str) -> Obs:
        """Send the head in pieces while reading: a server may answer and reset the connection
        before the head is all sent, and the answer must be read before the reset drops it."""
        conn = await t.open()
        pending = t.follow(conn, timeout=HEAD_LIMIT_ANSWER)
        data = raw(p)
        for i in range(0, len(data), 16384):
            if pending.answered or pending.task.done():
                break
            try:
                await conn.send(data[i : i + 16384])
            except ConnectionError:
                break
        return {"answer": await pending.so_far(HEAD_LIMIT_ANSWER)}

    return run


scenario("limits/target-20k", deviation="oversize-head")(_oversize(lambda p: get(p + "/" + "a" * 20_000)))
scenario("limits/target-1m", deviation="oversize-head")(_oversize(lambda p: get(p + "/" + "a" * 1_000_000)))
scenario("limits/one-header-20k", deviation="oversize-head")(_oversize(lambda p: get(p, [("X-Big", "b" * 20_000)])))
scenario("limits/header-block-1m", deviation="oversize-head")(
    _oversize(lambda p: get(p, [(f"X-H{i}", "v" * 40) for i in range(20_000)]))
)
scenario("limits/sender-target-20k", deviation="oversize-head")(_oversize(lambda p: put(p + "/" + "a" * 20_000, b"x")))


def _malformed(raw: bytes) -> Run:
    async def run(t: Target, p: str) -> Obs:
        conn = await t.open()
        pending = t.follow(conn, timeout=HEAD_LIMIT_ANSWER)
        await conn.send(raw.replace(b"{p}", p.encode()))
        return {"answer": await pending.so_far(HEAD_LIMIT_ANSWER)}

    return run


scenario("malformed/raw-utf8-in-target", deviation="bad-request-form")(
    _malformed("GET /{p}/\u3042 HTTP/1.1\r\nHost: x\r\n\r\n".encode())
)
scenario("malformed/request-line", deviation="bad-request-form")(_malformed(b"FOO BAR\r\n\r\n"))
scenario("malformed/header-without-colon", deviation="bad-request-form")(
    _malformed(b"GET {p} HTTP/1.1\r\nHost: x\r\nNo colon here\r\n\r\n")
)
scenario("malformed/space-in-target", deviation="bad-request-form")(
    _malformed(b"GET {p}/a b HTTP/1.1\r\nHost: x\r\n\r\n")
)


# --------------------------------------------------------------------------------------------
# Normalizers of the deviations: assert each side's documented behaviour, then remove it
# --------------------------------------------------------------------------------------------


def _receiver_abort_count(side: str, obs: Obs, path: str) -> Obs:
    log = obs["sender log"].splitlines()
    n = len(obs["others"]) + 1
    if side == OURS:
        assert log.count("[INFO] A receiver aborted.") == 1, log
        assert log[-1] == "[INFO] All receiver(s) was/were received successfully.", log
        assert all(o["body"] == b"0123456789later" and o["complete"] for o in obs["others"]), obs["others"]
        assert obs["path afterwards"] == [f"[INFO] Waiting for {n} receiver(s)..."], obs
    elif n == 2:  # one leaver ends the transfer for both
        assert "[INFO] All receiver(s) was/were aborted halfway." in log, log
        assert not any(o["complete"] for o in obs["others"]), obs["others"]
    else:  # the path stays established
        assert obs["path afterwards"] == [f"[ERROR] Connection on '{path}' has been established already."], obs
    return {"first lines of the log": log[:3]}


def _multipart_length(side: str, obs: Obs, path: str) -> Obs:
    receiver = obs["receiver"]
    length = header(receiver, "content-length")
    if side == REF and obs["parts"] > 1:  # too large: the receiver never ends cleanly
        assert length is not None and int(length) > receiver["size"] and not receiver["complete"], receiver
    elif side == REF:
        assert length is not None and int(length) == receiver["size"] and receiver["complete"], receiver
    else:
        assert length is None or int(length) == receiver["size"], receiver
        assert receiver["complete"], receiver
    receiver = drop_header(drop_header(receiver, "content-length"), "transfer-encoding")
    return {**obs, "receiver": {**receiver, "complete": None}}


def _max_receivers(side: str, obs: Obs, path: str) -> Obs:
    if side == REF:  # accepted: a waiting sender, or a receiver waiting for 257 parties
        assert obs.get("first line") == ["[INFO] Waiting for 257 receiver(s)..."] or (
            header(obs["probe"], "content-type") == "text/plain"
            and obs["probe"]["body"] == b"[ERROR] The number of receivers should be 257 but 200.\n"
        ), obs
    else:
        reply = obs.get("receiver") or obs.get("probe")
        if "first line" in obs:
            assert obs == {"status": 400, "first line": ["[ERROR] n should be at most 256, but n = 257."]}, obs
        else:
            assert reply is not None and reply["status"] == 400, obs
            assert reply["body"] == b"[ERROR] n should be at most 256, but n = 257.\n", obs
    return {}


def _rejection_content_type(side: str, obs: Obs, path: str) -> Obs:
    answer = obs["answer"]
    if side == OURS:
        assert header(answer, "content-type") == "text/plain", answer
        answer = drop_header(answer, "content-type")
    else:
        assert header(answer, "content-type") is None, answer
    return {"answer": answer}


_HELP_KEPT_FROM: Final = "======= Get  ======="
_HELP_RECIPES: Final = 21  # lines, from _HELP_KEPT_FROM to the end of the reference's text


def _own_pages(side: str, obs: Obs, path: str = "") -> Obs:
    out: Obs = {}
    for key, value in obs.items():
        if key == "page":  # facts: only the links differ (the reference links to its own README)
            facts = _submits(dict(value))
            if facts.get("csp") is not None:
                facts = _nonce_checked(facts)
            facts.pop("nonces", None)
            facts.pop("csp", None)
            out[key] = facts
        elif isinstance(value, dict) and "headers" in value:
            out[key] = _own_page_reply(side, value)
        elif key == "GET body":
            continue
        elif key == "GET length":
            out[key] = value == str(len(obs["GET body"]))
        else:
            out[key] = value
    return out


def _own_page_reply(side: str, reply: Obs) -> Obs:
    """A page's reply: same headers but Content-Length; the body checked per page."""
    body = reply["body"]
    length = header(reply, "content-length")
    if length is not None and isinstance(body, bytes) and body:
        assert int(length) == len(body), reply
    reply = drop_header(reply, "content-length")
    content_type = header(reply, "content-type")
    if isinstance(body, bytes) and body.startswith(b"Help for "):
        lines = body.decode().splitlines()
        kept = lines.index(_HELP_KEPT_FROM)
        expected_name = "Piping Server" if side == REF else "ringpipe"
        assert lines[0].startswith(f"Help for {expected_name} "), lines[:2]
        reply["body"] = lines[kept : kept + _HELP_RECIPES]  # the reference's recipes, with the base URL
        if side == REF:
            assert len(lines) == kept + _HELP_RECIPES, lines  # nothing after them in the reference
    elif isinstance(body, bytes) and re.fullmatch(rb"\d+\.\d+\.\d+\n", body):  # /version
        reply["body"] = "<a version>"
    elif content_type == "text/html" and isinstance(body, (bytes, str)):
        reply["body"] = "<the page>"
    if reply["body"] is not body:
        reply["size"] = None
    return reply


def _noscript_csp(side: str, obs: Obs, path: str) -> Obs:
    reply = obs["answer"]
    csp = header(reply, "content-security-policy") or ""
    nonce = re.fullmatch(r"default-src 'none'; style-src 'nonce-([A-Za-z0-9+/=]+)'(.*)", csp)
    assert nonce, csp
    extra = "; form-action 'self'; base-uri 'none'; frame-ancestors 'none'" if side == OURS else ""
    assert nonce.group(2) == extra, csp
    checked = [(k, "<checked>" if k == "content-security-policy" else v) for k, v in reply["headers"]]
    reply = {**reply, "headers": checked}
    return _own_pages(side, {**obs, "answer": reply}, path)


def _noscript_offsite(side: str, obs: Obs, path: str) -> Obs:
    post = [f for f in obs["page"]["forms"] if f["method"] == "post"][0]
    if side == REF:
        assert post["posts to"] == "http://evil.example/x", post
    else:
        assert post["posts to"] == "http://pipe.test/evil.example/x", post
    post["posts to"] = "<checked>"
    return _own_pages(side, obs, path)


def _oversize_head(side: str, obs: Obs, path: str) -> Obs:
    answer = obs["answer"]
    if side == REF:  # 431, or a reset that dropped it (Node closes with the rest of the head unread)
        assert answer["status"] in (431, 0) and answer["body"] == b"" and answer["headers"] == [], answer
    else:
        assert answer["status"] in (414, 431), answer
        assert ERROR_LINE.fullmatch(answer["body"]), answer
        assert header(answer, "content-type") == "text/plain", answer
        assert header(answer, "access-control-allow-origin") == "*", answer
    return {"answered": True}


def _bad_request_form(side: str, obs: Obs, path: str) -> Obs:
    answer = obs["answer"]
    assert answer["status"] == 400, answer
    if side == REF:
        assert answer["body"] == b"", answer
    else:
        assert ERROR_LINE.fullmatch(answer["body"]), answer
        assert header(answer, "content-type") == "text/plain", answer
    return {"status": 400}


def _authority_like(side: str, obs: Obs, path: str) -> Obs:
    message = obs["second sender"]["body"]
    expected = "'//x'" if side == REF else f"'/{path}//x'"
    assert message == f"[ERROR] Another sender has been connected on {expected}.\n".encode(), message
    second = drop_header(obs["second sender"], "content-length")
    return {**obs, "second sender": {**second, "body": "<names the path as keyed>", "size": None}}


def _dotdot_above_root(side: str, obs: Obs, path: str) -> Obs:
    if side == REF:
        assert obs["first"] == ["[INFO] Waiting for 1 receiver(s)..."], obs
    else:
        assert obs["first"] == ["[ERROR] Cannot send to the reserved path '/'. (e.g. '/mypath123')"], obs
    return {"second sender": obs["second sender"], "met": obs["met"]}


_PREFLIGHT_REF: Final = {
    "access-control-allow-headers": "Content-Type, Content-Disposition, X-Piping",
    "access-control-allow-methods": "GET, HEAD, POST, PUT, OPTIONS",
}
_PREFLIGHT_OURS: Final = {
    "access-control-allow-headers": "Content-Type, Content-Disposition, X-Piping, Authorization, Last-Event-ID, "
    "Ringpipe-Read-Key",
    # DELETE was checked and set aside by ``norm`` ("delete-method").
    "access-control-allow-methods": "GET, HEAD, POST, PUT, OPTIONS",
}


def _preflight_ours(side: str, obs: Obs, path: str) -> Obs:
    """Every preflight reply in ``obs``: its allow lists checked per side, then set aside."""
    expected = _PREFLIGHT_OURS if side == OURS else _PREFLIGHT_REF

    def check(value: Any) -> Any:
        if isinstance(value, dict) and "headers" in value and header(value, "access-control-allow-methods"):
            for name, allowed in expected.items():
                assert header(value, name) == allowed, value
            return {**value, "headers": [(k, "<checked>" if k in expected else v) for k, v in value["headers"]]}
        if isinstance(value, dict):
            return {k: check(v) for k, v in value.items()}
        if isinstance(value, list):
            return [check(v) for v in value]
        return value

    checked: Obs = check(obs)
    return checked


NORMALIZERS: Final[dict[str, Callable[[str, Obs, str], Obs]]] = {
    "preflight-ours": _preflight_ours,
    "receiver-abort-count": _receiver_abort_count,
    "multipart-length": _multipart_length,
    "max-receivers": _max_receivers,
    "rejection-content-type": _rejection_content_type,
    "own-pages": _own_pages,
    "noscript-csp": _noscript_csp,
    "noscript-offsite-action": _noscript_offsite,
    "oversize-head": _oversize_head,
    "bad-request-form": _bad_request_form,
    "authority-like-path": _authority_like,
    "dotdot-above-root": _dotdot_above_root,
}


# --------------------------------------------------------------------------------------------
# The test
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Reference]:
    server = start_reference(tmp_path_factory.mktemp("piping-server") / "server.log")
    yield server
    server.stop()
    assert server.proc.returncode is not None
    leftover = [p for p in Path("/proc").iterdir() if p.name.isdigit() and _session_of(p) == server.proc.pid]
    assert not leftover, f"piping-server processes left behind: {leftover}"


def _session_of(proc: Path) -> int | None:
    try:
        return int((proc / "stat").read_text().rsplit(")", 1)[1].split()[3])
    except (OSError, ValueError, IndexError):
        return None


@pytest.fixture(scope="module")
def ringpipe() -> Iterator[Server]:
    server = start_server("--workers", "2")
    yield server
    problems = stop_and_check(server)
    assert not problems, problems


async def _observe(side: str, port: int, case: Scenario, path: str) -> Obs:
    target = Target(side, port)
    try:
        obs = await asyncio.wait_for(case.run(target, path), 30)
    except Exception as exc:  # a hang or a broken exchange is an observation too
        obs = {"failed": f"{type(exc).__name__}: {exc}"[:500]}
    finally:
        target.close()
    return normalize(side, obs)


def _comparable(side: str, case: Scenario, obs: Obs, path: str) -> Obs:
    if case.deviation is None or "failed" in obs:
        return obs
    return NORMALIZERS[case.deviation](side, obs, path)


def differences(ours: Any, ref: Any, where: str = "") -> list[str]:
    """Each leaf where the observations differ: ``where: ringpipe=... reference=...``."""
    if isinstance(ours, dict) and isinstance(ref, dict):
        out = []
        for key in [*ref, *(k for k in ours if k not in ref)]:
            out += differences(ours.get(key, "<absent>"), ref.get(key, "<absent>"), f"{where}/{key}")
        return out
    if isinstance(ours, list) and isinstance(ref, list) and len(ours) == len(ref):
        if all(isinstance(x, dict) for x in [*ours, *ref]):
            pairs = enumerate(zip(ours, ref, strict=True))
            return [d for i, (o, r) in pairs for d in differences(o, r, f"{where}[{i}]")]
    return [] if ours == ref else [f"{where or '/'}: ringpipe={ours!r} reference={ref!r}"]


class OursDiffer(AssertionError):
    """ringpipe's observation differs from the reference's (or from its documented deviation).

    The only failure an xfail marker expects: a scenario that breaks on the reference's side
    (a test bug) fails even when marked."""


def _params() -> list[Any]:
    params = []
    for case in SCENARIOS:
        marks = [pytest.mark.xfail(strict=True, raises=OursDiffer, reason=case.xfail)] if case.xfail else []
        params.append(pytest.param(case, id=case.id, marks=marks))
    return params


def test_deviations_are_all_used() -> None:
    """Every deviation with a normalizer is named by some scenario, and only real ones are named."""
    used = {case.deviation for case in SCENARIOS if case.deviation}
    assert used == set(NORMALIZERS), set(NORMALIZERS) ^ used
    assert used <= set(DEVIATIONS)
    assert len({case.id for case in SCENARIOS}) == len(SCENARIOS)


@pytest.mark.parametrize("case", _params())
def test_same_as_reference(case: Scenario, reference: Reference, ringpipe: Server) -> None:
    path = "/compat-" + uuid.uuid4().hex[:12]

    async def both() -> tuple[Obs, Obs]:
        ref, ours = await asyncio.gather(
            _observe(REF, reference.port, case, path), _observe(OURS, ringpipe.port, case, path)
        )
        return ref, ours

    ref, ours = asyncio.run(both())
    assert "failed" not in ref, f"the scenario does not run against the reference: {ref}"
    ref = _comparable(REF, case, ref, path)
    try:
        ours = _comparable(OURS, case, ours, path)
        assert ours == ref, "\n".join(differences(ours, ref))
    except AssertionError as exc:
        raise OursDiffer(str(exc)) from exc
