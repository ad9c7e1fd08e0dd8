"""Fuzzing the HTTP edge of a real server: thousands of odd requests, no 5xx, no hang, no crash.

Cases are generated from a fixed seed (so a failure reproduces): request lines with odd
methods, targets, query strings and versions; headers that are missing colons, duplicated,
contradictory (Content-Length with chunked), oversize or full of control bytes; chunked
bodies with bad sizes, extensions and trailers; then random byte mutations of all that, and
pipelined pairs. Hypothesis adds raw byte strings of its own.

Each case is one connection: the bytes go out, the client shuts its write side (so a request
that is valid and would wait for a peer ends too: the server sees the client leave), and
the answer is read until the server closes. Asserted for every case: no 5xx status, and the
connection ends within a few seconds. Asserted for the server: no worker died or was
replaced (the same worker pids), no exception was logged, a normal transfer still works,
and it exits 0 at the end (the fixture's check).
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.pipes import get, pattern, put
from tests.support.servers import Server

SEED = 20_261_201
CASES = 3000
CONCURRENCY = 24
#: Seconds one case may take from its first byte to the server's close.
CASE_LIMIT_S = 6.0
SERVER_ERROR = re.compile(rb"HTTP/\d\.\d 5\d\d ")

METHODS = [b"GET", b"PUT", b"POST", b"DELETE", b"HEAD", b"OPTIONS", b"PATCH", b"CONNECT", b"TRACE"]
ODD_METHODS = [b"get", b"PRI", b"GETT", b"M-SEARCH", b"G\x00T", b"", b"PUT PUT", b"\xffGET", b"SOURCE"]
VERSIONS = [b"HTTP/1.1"] * 3 + [b"HTTP/1.0"]
ODD_VERSIONS = [
    b"HTTP/0.9",
    b"HTTP/2.0",
    b"HTTP/1.2",
    b"HTTP/11",
    b"http/1.1",
    b"",
    b"HTTP/1.1 x",
    b"HTTP/",
    b"HTTP/1.1\x00",
]
PIECES = [b"/", b"..", b".", b"%", b"%zz", b"%2e", b"%2F", b"?", b"&", b"=", b"*", b"//", b"\\", b"~", b"a" * 300]
PIECES += [b"%00", b";", b"%E3%81%82", b"!$'()*+,:@", b"-_"]
ODD_PIECES = [b"\x00", b"\xff", b" ", b"\t", b"\xe3\x81\x82", b"{", b"}", b'"', b"<", b">", b"`", b"#", b"\x7f"]
QUERIES = [b"n=0", b"n=-1", b"n=1", b"n=2", b"n=abc", b"n=1e3", b"n=99999999999999999999", b"n=", b"n=257", b"n=0x10"]
QUERIES += [b"n=%201", b"watch=1", b"from=live", b"format=sse", b"format=ndjson", b"offset=-5", b"key=", b"&&&", b"=="]
HEADER_VALUES: dict[bytes, list[bytes]] = {
    b"Host": [b"x", b"", b"a b", b"127.0.0.1:1", b"\xff"],
    b"Content-Length": [b"0", b"5", b"-1", b"abc", b"1 2", b"99999999999999999999", b"5, 5", b"+5", b"0x5"],
    b"Transfer-Encoding": [b"chunked", b"gzip", b"chunked, gzip", b"identity", b"chunkedx", b"gzip, chunked", b""],
    b"Content-Type": [b"multipart/form-data; boundary=xyz", b"multipart/form-data", b"text/html", b"text/plain"],
    b"Expect": [b"100-continue", b"x"],
    b"Connection": [b"close", b"keep-alive", b"upgrade", b"Upgrade, close"],
    b"Upgrade": [b"websocket", b"h2c", b""],
    b"Content-Range": [b"bytes 0-1/2"],
    b"Service-Worker": [b"script"],
    b"Range": [b"bytes=5-", b"bytes=-5", b"bytes=x"],
    b"Last-Event-ID": [b"1-5", b"x", b"-1--1"],
    b"Accept": [b"text/event-stream", b"*/*"],
    b"Authorization": [b"Bearer x", b"Basic", b""],
    b"Ringpipe-Read-Key": [b"k", b""],
    b"X-Piping": [b"a", b"\x01"],
}
ODD_NAMES = [b"Bad Name", b"", b"X\x00Y", b"X-\xff", b"(x)", b" Host", b"Host "]
ODD_LINE_ENDS = [b"\n", b"\r", b"\n\r"]


def _target(rng: random.Random, case: int, odd: float) -> bytes:
    kind = rng.random()
    if kind < 0.05:
        return rng.choice([b"*", b"http://example.com/x", b"example.com:80", b"", b"/", b"/version", b"/help"])
    path = b"/fuzz-%d" % rng.randrange(50) if rng.random() < 0.3 else b"/fuzz-case-%d" % case
    path += b"".join(rng.choice(ODD_PIECES if rng.random() < odd else PIECES) for _ in range(rng.randrange(4)))
    if rng.random() < 0.4:
        path += b"?" + b"&".join(rng.choice(QUERIES) for _ in range(1 + rng.randrange(3)))
    return path


def _headers(rng: random.Random, odd: bool) -> list[bytes]:
    lines = []
    for _ in range(rng.randrange(7)):
        roll = rng.random() if odd else 0.0
        if roll < 0.6:
            name = rng.choice(list(HEADER_VALUES))
            value = rng.choice(HEADER_VALUES[name])
            lines.append(name + b": " + value)
        elif roll < 0.85:
            lines.append(rng.choice(ODD_NAMES) + b": v")
        elif roll < 0.9:
            lines.append(b"No colon here")
        elif roll < 0.95:
            lines.append(b" folded continuation")
        else:
            lines.append(b"X-Big: " + b"b" * rng.choice([100, 5000, 17000]))
    if rng.random() < 0.85:
        lines.insert(0, b"Host: fuzz")
    return lines


def _body(rng: random.Random, end: bytes) -> bytes:
    roll = rng.random()
    if roll < 0.4:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(40)))
    chunks = []
    for _ in range(rng.randrange(4)):
        size = rng.randrange(20)
        framing = rng.choice([b"%x" % size, b"%X" % size, b"zz", b"-1", b"ffffffffffffffffff", b"%x;ext=1" % size])
        framing = rng.choice([framing, framing + b" ", b" " + framing]) if rng.random() < 0.1 else framing
        chunks.append(framing + end + b"d" * size + rng.choice([end, b"", b"XX"]))
    last = rng.choice([b"0" + end + end, b"0" + end + b"Trailer: x" + end + end, b"0" + end, b"", b"0;x" + end + end])
    return b"".join(chunks) + last


def _mutate(rng: random.Random, data: bytearray) -> bytearray:
    for _ in range(1 + rng.randrange(3)):
        if not data:
            break
        at = rng.randrange(len(data))
        op = rng.randrange(5)
        if op == 0:
            data[at] = rng.randrange(256)
        elif op == 1:
            data[at:at] = bytes([rng.randrange(256)])
        elif op == 2:
            del data[at : at + rng.randrange(1, 8)]
        elif op == 3:
            data[at:at] = data[at : at + rng.randrange(1, 16)]
        else:
            del data[at:]
    return data


def generate(rng: random.Random, case: int) -> bytes:
    """One case: a plausible request, with oddities in the ``odd`` share of its parts.

    A third of the cases have none in their syntax (so they reach the app with odd query
    strings and header values); the others have some in each part at random.
    """
    odd = 0.0 if rng.random() < 0.33 else rng.choice([0.1, 0.2, 0.4])
    end = rng.choice(ODD_LINE_ENDS) if rng.random() < odd / 2 else b"\r\n"
    method = rng.choice(ODD_METHODS if rng.random() < odd else METHODS)
    version = rng.choice(ODD_VERSIONS if rng.random() < odd else VERSIONS)
    line = method + b" " + _target(rng, case, odd) + b" " + version
    if rng.random() < odd / 4:
        line = line.replace(b" ", rng.choice([b"  ", b"\t", b""]), 1)
    head = end.join([line, *_headers(rng, odd=rng.random() < odd * 2)]) + end + end
    data = bytearray(head + (_body(rng, end) if rng.random() < 0.5 else b""))
    if rng.random() < odd:
        data = _mutate(rng, data)
    return bytes(data)


async def exchange(port: int, data: bytes) -> tuple[bytes, float, bool]:
    """Send ``data``, shut the write side, read until the server closes: (answer, seconds, ended)."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answer = b""
    ended = False
    try:
        writer.write(data)
        await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        async with asyncio.timeout(CASE_LIMIT_S):
            while chunk := await reader.read(65536):
                answer += chunk
        ended = True
    except ConnectionError:
        ended = True  # a reset is an end too
    except TimeoutError:
        pass
    finally:
        writer.transport.abort()
    return answer, time.monotonic() - started, ended


async def run_cases(port: int, cases: list[bytes]) -> list[str]:
    """Every problem seen: a 5xx answer or a connection the server left open."""
    problems: list[str] = []
    gate = asyncio.Semaphore(CONCURRENCY)

    async def one(index: int, data: bytes) -> None:
        async with gate:
            answer, seconds, ended = await exchange(port, data)
        if SERVER_ERROR.search(answer):
            problems.append(f"case {index}: 5xx for {data[:120]!r}: {answer[:200]!r}")
        if not ended:
            problems.append(f"case {index}: no end after {seconds:.1f} s for {data[:120]!r}: {answer[:120]!r}")

    await asyncio.gather(*(one(i, data) for i, data in enumerate(cases)))
    return problems


def check_server(server: Server, before: dict[int, int]) -> None:
    """Same workers, nothing logged at error level, and a normal transfer still works."""
    data = pattern(256 << 10, seed=9)

    async def transfer() -> None:
        receiver = asyncio.create_task(get(server.port, "/after-fuzz"))
        sent = await put(server.port, "/after-fuzz", data)
        got = await receiver
        assert sent.status == 200 and got.complete and got.body == data

    asyncio.run(asyncio.wait_for(transfer(), 30))
    assert server.workers_by_slot() == before
    assert sorted(server.workers()) == sorted(before.values())
    bad = [line for line in server.raw_lines if '"level": "error"' in line or '"level": "critical"' in line]
    bad += [line for line in server.raw_lines if "worker_died" in line or "Traceback" in line]
    assert not bad, bad[:5]


def test_seeded_fuzz_of_the_http_edge(server_factory: Callable[..., Server]) -> None:
    server = server_factory("--workers", "2", "--header-timeout", "3")
    before = server.workers_by_slot()
    rng = random.Random(SEED)
    cases = [generate(rng, i) for i in range(CASES)]
    cases += [cases[i] + cases[i + 1] for i in range(0, 200, 2)]  # pipelined pairs
    started = time.monotonic()
    problems = asyncio.run(run_cases(server.port, cases))
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems[:10])
    assert time.monotonic() - started < 60
    check_server(server, before)


RAW_PIECES = st.one_of(
    st.binary(max_size=200),
    st.sampled_from([b"GET /hyp HTTP/1.1\r\n", b"Host: x\r\n", b"\r\n", b"Transfer-Encoding: chunked\r\n"]),
    st.sampled_from([b"PUT /hyp-%d HTTP/1.1\r\n" % i for i in range(3)] + [b"Content-Length: 3\r\n", b"5\r\n"]),
)


def test_hypothesis_bytes_at_the_http_edge(server_factory: Callable[..., Server]) -> None:
    """Byte strings built by Hypothesis from raw bytes and request fragments (derandomized)."""
    server = server_factory("--workers", "2", "--header-timeout", "3")
    before = server.workers_by_slot()

    @settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(RAW_PIECES, max_size=8))
    def case(parts: list[bytes]) -> None:
        problems = asyncio.run(run_cases(server.port, [b"".join(parts)]))
        assert not problems, problems

    case()
    check_server(server, before)
