"""Scale-out: 3 ringpipe nodes behind HAProxy and behind nginx, with the configs we ship.

Each proxy runs ``deploy/haproxy.cfg`` or ``deploy/nginx.conf`` with only its listen port
and the node addresses substituted (three real nodes on loopback, each its own port), and is
checked for what breaks a pipe behind a proxy: a sender and its receivers split across
nodes, small writes held back, a bulk upload stalled or corrupted, the reader framings
blocked, and what happens to paths and in-flight transfers when a node stops.

The node that served a request is the proxy's ``X-Ringpipe-Node`` response header (the
shipped configs add it), cross-checked against each node's own ``transfer`` log lines.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import random
import re
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import pytest
import yaml

from tests.support import externals
from tests.support.pipes import Response, fresh, get, put, read_head, run
from tests.support.servers import ROOT, Server, stop_group

DEPLOY = ROOT / "deploy"
NODES = 3
PATHS = 200
BULK_BYTES = 1 << 30
BLOCK = 1 << 20
#: How fast a slow sender's chunk must reach its receiver through a proxy.
LIVE = 0.5
#: Timings of this module's scenarios, printed when the module is done (run with ``-s``).
TIMINGS: dict[str, float] = {}


@pytest.fixture(autouse=True, scope="module")
def report_timings() -> Iterator[None]:
    yield
    for name, seconds in TIMINGS.items():
        print(f"\n{name}: {seconds:.3f} s", end="")


#: A deterministic 1 GiB: block i is a fixed random 1 MiB block whose first 8 bytes are i.
GENERATOR = """
import random, signal, sys
signal.signal(signal.SIGPIPE, signal.SIG_DFL)
size, block = int(sys.argv[1]), bytearray(random.Random(6).randbytes(1 << 20))
out, i = sys.stdout.buffer, 0
while size > 0:
    block[:8] = i.to_bytes(8, "big")
    out.write(block[:size] if size < len(block) else block)
    size, i = size - len(block), i + 1
out.flush()
"""
#: A sender that never ends: 4 KiB every 50 ms until its pipe breaks.
SLOW_GENERATOR = """
import signal, sys, time
signal.signal(signal.SIGPIPE, signal.SIG_DFL)
while True:
    sys.stdout.buffer.write(b"z" * 4096)
    sys.stdout.buffer.flush()
    time.sleep(0.05)
"""


@functools.lru_cache(maxsize=1)
def expected_digest(size: int) -> str:
    block = bytearray(random.Random(6).randbytes(BLOCK))
    digest = hashlib.sha256()
    for i in range((size + BLOCK - 1) // BLOCK):
        block[:8] = i.to_bytes(8, "big")
        digest.update(memoryview(block)[: min(BLOCK, size - i * BLOCK)])
    return digest.hexdigest()


# -- configs generated from the shipped files --


def haproxy_config(listen: int, node_ports: list[int]) -> str:
    """deploy/haproxy.cfg with the bind port and the server addresses replaced, nothing else."""
    text = (DEPLOY / "haproxy.cfg").read_text()
    text, binds = re.subn(r"(?m)^(\s*bind )\S+", rf"\g<1>127.0.0.1:{listen}", text)
    servers = iter(node_ports)
    text, count = re.subn(r'(?m)^(\s*server \S+ )"[^"]+"', lambda m: f"{m.group(1)}127.0.0.1:{next(servers)}", text)
    assert binds == 1 and count == len(node_ports), "deploy/haproxy.cfg no longer has the expected shape"
    return text


def nginx_config(listen: int, node_ports: list[int]) -> str:
    """deploy/nginx.conf with the listen port and the server addresses replaced, nothing else."""
    text = (DEPLOY / "nginx.conf").read_text()
    text, listens = re.subn(r"(?m)^(\s*listen )\d+;", rf"\g<1>127.0.0.1:{listen};", text)
    servers = iter(node_ports)
    text, count = re.subn(r"(?m)^(\s*server )\S+:8080", lambda m: f"{m.group(1)}127.0.0.1:{next(servers)}", text)
    assert listens == 1 and count == len(node_ports), "deploy/nginx.conf no longer has the expected shape"
    return text


def nginx_command(conf: Path, workdir: Path) -> list[str]:
    """nginx in the foreground on ``conf``; pid and error log in ``workdir`` (not /run, /var/log)."""
    return [str(externals.ensure_nginx()), "-e", str(workdir / "error.log"), "-p", f"{workdir}/", "-c", str(conf)]


def nginx_globals(workdir: Path) -> list[str]:
    return ["-g", f"daemon off; pid {workdir}/nginx.pid;"]


# -- the cluster --


@dataclass
class Cluster:
    proxy: str
    port: int
    nodes: list[Server]
    proc: subprocess.Popen[bytes]
    log: Path
    node_ports: list[int] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def node_of(self, response: Response) -> int:
        """Which node served ``response``, from the proxy's ``X-Ringpipe-Node`` header."""
        value = response.header("x-ringpipe-node")
        assert value, f"no X-Ringpipe-Node header from {self.proxy}: {response.headers}"
        if self.proxy == "haproxy":
            return int(value.removeprefix("ringpipe-"))
        last = value.split(",")[-1].strip()  # nginx lists every node it tried
        return self.node_ports.index(int(last.rsplit(":", 1)[1]))

    def stop(self) -> None:
        stop_group(self.proc, term_wait=10.0, kill_wait=10.0)


def start_proxy(proxy: str, node_ports: list[int], workdir: Path) -> tuple[subprocess.Popen[bytes], int, Path]:
    log = workdir / f"{proxy}.log"
    for _attempt in range(5):
        port = externals.free_port()
        conf = workdir / f"{proxy}.conf"
        if proxy == "haproxy":
            conf.write_text(haproxy_config(port, node_ports))
            cmd = [str(externals.ensure_haproxy()), "-db", "-f", str(conf)]
        else:
            conf.write_text(nginx_config(port, node_ports))
            cmd = nginx_command(conf, workdir) + nginx_globals(workdir)
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        if externals.wait_listening(port, proc):  # type: ignore[arg-type]
            return proc, port, log
        proc.kill()
        proc.wait(5)
    pytest.fail(f"{proxy} did not start:\n{log.read_text(errors='replace')[-3000:]}")


async def options(port: int, path: str) -> Response:
    """OPTIONS (a CORS preflight): routed like any request on ``path``, registers nobody."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(f"OPTIONS {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        await writer.drain()
        status, headers = await read_head(reader)
        return Response(status, headers)
    finally:
        writer.close()


async def route_map(cluster: Cluster, paths: list[str]) -> dict[str, int]:
    """The node each path goes to now, by OPTIONS through the proxy (20 at a time)."""
    limit = asyncio.Semaphore(20)

    async def one(path: str) -> tuple[str, int]:
        async with limit:
            resp = await options(cluster.port, path)
            assert resp.status == 200, (path, resp.status)
            return path, cluster.node_of(resp)

    return dict(await asyncio.gather(*(one(p) for p in paths)))


async def wait_routable(cluster: Cluster, paths: list[str], avoid: int | None = None, timeout: float = 30.0) -> None:
    """Until every path gets a 200 (health checks settled), on a node other than ``avoid``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            routes = await route_map(cluster, paths)
            if avoid is None or avoid not in routes.values():
                return
        except (AssertionError, ConnectionError):
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{cluster.proxy} did not route every path (avoiding node {avoid}) in {timeout} s")
        await asyncio.sleep(0.2)


@pytest.fixture(params=["haproxy", "nginx"])
def cluster(request: pytest.FixtureRequest, server_factory: Callable[..., Server], tmp_path: Path) -> Iterator[Cluster]:
    proxy: str = request.param
    flags = ["--workers", "2", "--graceful-timeout", "1"]
    if proxy == "nginx":
        flags += ["--sender-response", "late"]  # what deploy/nginx.conf requires
    nodes = [server_factory(*flags) for _ in range(NODES)]
    node_ports = [node.port for node in nodes]
    proc, port, log = start_proxy(proxy, node_ports, tmp_path)
    cluster = Cluster(proxy, port, nodes, proc, log, node_ports)
    try:
        asyncio.run(wait_routable(cluster, [f"/probe-{i}" for i in range(30)]))
        yield cluster
    finally:
        cluster.stop()
    # The proxies' health checks (twice a second on /readyz) must never hurt a node.
    for index, node in enumerate(nodes):
        deaths = [r for r in node.logs if r.get("event") == "worker_died"]
        assert not deaths, f"node {index}: workers died behind {proxy}: {deaths[:2]}"


# -- the shipped configs themselves --


def test_shipped_configs_pass_the_proxies_own_checks(tmp_path: Path) -> None:
    haproxy = externals.ensure_haproxy()
    env = {**os.environ, "RINGPIPE_DOMAIN": "ringpipe"}
    done = subprocess.run([str(haproxy), "-c", "-f", str(DEPLOY / "haproxy.cfg")], env=env, capture_output=True)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    # nginx -t resolves upstream names at load time; only the addresses are substituted.
    conf = tmp_path / "nginx.conf"
    conf.write_text(nginx_config(8080, [18080, 18081, 18082]))
    done = subprocess.run([*nginx_command(conf, tmp_path), "-t", *nginx_globals(tmp_path)], capture_output=True)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()
    print(f"\n{externals.tool_version(haproxy)}; {externals.tool_version(externals.ensure_nginx())}")


def parse_size(text: str) -> int:
    """``960M``, ``1Gi``, ``1gb`` → bytes (binary units, as ringpipe, Docker and Kubernetes read them)."""
    match = re.fullmatch(r"(\d+)\s*([kmg]?)(?:i?b?)", text.strip().lower())
    assert match, text
    return int(match.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[match.group(2)]


def haproxy_servers() -> list[tuple[str, int]]:
    text = (DEPLOY / "haproxy.cfg").read_text()
    return [(m.group(1), int(m.group(2))) for m in re.finditer(r"(?m)^\s*server (\S+) \S+ id (\d+)", text)]


def test_haproxy_servers_have_pinned_distinct_ids_matching_nginx() -> None:
    servers = haproxy_servers()
    assert [name for name, _ in servers] == [f"ringpipe-{i}" for i in range(len(servers))]
    assert len({sid for _, sid in servers}) == len(servers), "server ids must be distinct"
    nginx = re.findall(r"(?m)^\s*server (ringpipe-\d+)\.ringpipe:8080", (DEPLOY / "nginx.conf").read_text())
    assert nginx == [name for name, _ in servers], "haproxy.cfg and nginx.conf list different nodes"


def test_compose_file_matches_the_proxy_configs() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    nodes = sorted(name for name in services if name.startswith("ringpipe-"))
    assert nodes == [name for name, _ in haproxy_servers()]
    for name in nodes:
        node = services[name]
        assert node["networks"]["default"]["aliases"] == [f"{name}.ringpipe"]
        env = node["environment"]
        assert parse_size(env["RINGPIPE_MAX_MEMORY"]) < parse_size(node["shm_size"]), "rings must fit /dev/shm"
        assert env["RINGPIPE_SENDER_RESPONSE"].startswith("${RINGPIPE_SENDER_RESPONSE")
    assert services["haproxy"]["environment"]["RINGPIPE_DOMAIN"] == "ringpipe"
    for proxy, conf in (("haproxy", "haproxy.cfg"), ("nginx", "nginx.conf")):
        (volume,) = services[proxy]["volumes"]
        assert volume.startswith(f"./{conf}:") and (DEPLOY / conf).exists()


def test_kubernetes_manifests_match_the_proxy_config() -> None:
    docs = [d for f in sorted((DEPLOY / "k8s").glob("*.yaml")) for d in yaml.safe_load_all(f.read_text())]
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(doc), doc
        by_kind.setdefault(doc["kind"], []).append(doc)
    (config,) = by_kind["ConfigMap"]
    assert config["data"]["haproxy.cfg"] == (DEPLOY / "haproxy.cfg").read_text(), "ConfigMap drifted from haproxy.cfg"
    (statefulset,) = by_kind["StatefulSet"]
    assert statefulset["spec"]["replicas"] == len(haproxy_servers())
    headless = next(s for s in by_kind["Service"] if s["metadata"]["name"] == statefulset["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"
    assert statefulset["metadata"]["name"] == "ringpipe" and headless["metadata"]["name"] == "ringpipe"
    pod = statefulset["spec"]["template"]["spec"]
    (node,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in node["env"]}
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")["emptyDir"]
    assert shm["medium"] == "Memory"
    assert (
        parse_size(env["RINGPIPE_MAX_MEMORY"])
        < parse_size(shm["sizeLimit"])
        < parse_size(node["resources"]["limits"]["memory"])
    ), "rings < /dev/shm < the memory limit (a memory emptyDir counts against it)"
    assert {m["mountPath"] for m in node["volumeMounts"]} == {"/dev/shm", "/tmp"}
    assert pod["securityContext"]["runAsNonRoot"] and node["securityContext"]["readOnlyRootFilesystem"]
    (deployment,) = by_kind["Deployment"]
    (haproxy,) = deployment["spec"]["template"]["spec"]["containers"]
    domain = next(e["value"] for e in haproxy["env"] if e["name"] == "RINGPIPE_DOMAIN")
    assert domain == "ringpipe.$(POD_NAMESPACE).svc.cluster.local"


# -- routing: a sender and its receivers meet --


def test_paths_meet_on_one_node_in_both_arrival_orders(cluster: Cluster) -> None:
    paths = [f"/{uuid.uuid4().hex[:12]}/{i}" for i in range(PATHS)]
    started = time.monotonic()

    async def transfer_round(batch: list[str], sender_first: bool) -> list[tuple[str, Response, Response]]:
        data = {p: (p * 50).encode() for p in batch}
        if sender_first:
            senders = [asyncio.create_task(put(cluster.port, p, data[p])) for p in batch]
            await asyncio.sleep(1.0)
            receivers = [asyncio.create_task(get(cluster.port, p)) for p in batch]
        else:
            receivers = [asyncio.create_task(get(cluster.port, p)) for p in batch]
            await asyncio.sleep(1.0)
            senders = [asyncio.create_task(put(cluster.port, p, data[p])) for p in batch]
        logs, gots = await asyncio.gather(asyncio.gather(*senders), asyncio.gather(*receivers))
        for path, got in zip(batch, gots, strict=True):
            assert got.status == 200 and got.complete and got.body == data[path], path
        return list(zip(batch, logs, gots, strict=True))

    async def scenario() -> list[tuple[bool, str, Response, Response]]:
        results = []
        for sender_first in (True, False):
            for i in range(0, PATHS, 50):
                batch = paths[i : i + 50]
                results += [(sender_first, *r) for r in await transfer_round(batch, sender_first)]
        return results

    results = run(scenario(), 240)
    TIMINGS[f"{cluster.proxy}: {2 * PATHS} transfers"] = time.monotonic() - started
    node_of: dict[str, int] = {}
    for sender_first, path, log, got in results:
        assert log.status == 200, (path, log.status, log.text)
        joined = "[INFO] A receiver was connected." if sender_first else "[INFO] 1 receiver(s) has/have been connected."
        assert log.text.splitlines()[1] == joined, (path, log.text)
        assert log.text.splitlines()[-1] == "[INFO] All receiver(s) was/were received successfully."
        node = cluster.node_of(got)
        assert cluster.node_of(log) == node, path
        assert node_of.setdefault(path, node) == node, f"{path} went to two nodes"
    # Each node's own log: it carried exactly the transfers the proxy said it did.
    for index, server in enumerate(cluster.nodes):
        want = sorted(2 * [p for p in paths if node_of[p] == index])
        count = len(want)
        server.wait_log(lambda _r, s=server, n=count: len(s.transfers()) >= n, timeout=30)
        logged = sorted(str(r["path"]) for r in server.transfers())
        assert logged == want, f"node {index}'s transfer log disagrees with the proxy's header"
    counts = [list(node_of.values()).count(i) for i in range(NODES)]
    assert all(counts), f"paths were not spread over the nodes: {counts}"


# -- latency: small writes are not held back --


class Dechunker:
    """Reads a response body through a proxy, whatever chunk sizes the proxy re-framed it in."""

    def __init__(self, reader: asyncio.StreamReader, chunked: bool) -> None:
        self.reader, self.chunked, self.left = reader, chunked, 0

    async def read(self, size: int) -> bytes:
        out = b""
        while len(out) < size:
            if not self.chunked:
                out += await self.reader.readexactly(size - len(out))
                continue
            if self.left == 0:
                self.left = int((await self.reader.readline()).split(b";")[0], 16)
                assert self.left, "the body ended early"
            take = min(self.left, size - len(out))
            out += await self.reader.readexactly(take)
            self.left -= take
            if self.left == 0:
                await self.reader.readexactly(2)
        return out


async def slow_transfer(port: int, path: str, *, sender_first: bool) -> list[float]:
    """Three small chunks a second apart; the delay of each one at the receiver."""
    pieces = [b"first token\n", b"second token\n", b"third token\n"]
    s_reader, s_writer = await asyncio.open_connection("127.0.0.1", port)
    r_reader, r_writer = await asyncio.open_connection("127.0.0.1", port)
    delays: list[float] = []

    async def open_receiver() -> Dechunker:
        r_writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        await r_writer.drain()
        status, headers = await read_head(r_reader)
        assert status == 200
        return Dechunker(r_reader, dict(headers).get("transfer-encoding", "") == "chunked")

    def write(data: bytes) -> None:
        s_writer.write(b"%x\r\n%s\r\n" % (len(data), data))

    try:
        s_writer.write(f"PUT {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        if sender_first:
            write(pieces[0])  # a proxy may wait for the first body byte before it connects
            await asyncio.sleep(1.0)
            began = time.monotonic()
            body = await asyncio.wait_for(open_receiver(), 10)
        else:
            receiver = asyncio.create_task(open_receiver())
            await asyncio.sleep(1.0)
            began = time.monotonic()
            write(pieces[0])
            body = await asyncio.wait_for(receiver, 10)
        assert await asyncio.wait_for(body.read(len(pieces[0])), 10) == pieces[0]
        delays.append(time.monotonic() - began)
        for piece in pieces[1:]:
            await asyncio.sleep(1.0)
            began = time.monotonic()
            write(piece)
            assert await asyncio.wait_for(body.read(len(piece)), 10) == piece
            delays.append(time.monotonic() - began)
        s_writer.write(b"0\r\n\r\n")
        status, _ = await asyncio.wait_for(read_head(s_reader), 10)
        assert status == 200
    finally:
        s_writer.close()
        r_writer.close()
    return delays


def test_slow_sender_chunks_reach_the_receiver_at_once(cluster: Cluster) -> None:
    for sender_first in (True, False):
        delays = run(slow_transfer(cluster.port, fresh(), sender_first=sender_first), 60)
        order = "sender first" if sender_first else "receiver first"
        TIMINGS[f"{cluster.proxy}: slow sender, {order}, worst chunk delay"] = max(delays)
        assert max(delays) < LIVE, f"{order}: chunk delays {delays}"


# -- bulk: 1 GiB intact, Content-Length and chunked --


def hash_stream(stream: object) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    read = stream.read  # type: ignore[attr-defined]
    while chunk := read(BLOCK):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


@pytest.mark.slow(10)
@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_one_gib_upload_arrives_intact(cluster: Cluster, framing: str, tmp_path: Path) -> None:
    path = fresh()
    want = expected_digest(BULK_BYTES)
    started = time.monotonic()
    receiver = subprocess.Popen(["curl", "-sS", "-f", cluster.url + path], stdout=subprocess.PIPE)
    time.sleep(0.3)
    gen = subprocess.Popen([sys.executable, "-c", GENERATOR, str(BULK_BYTES)], stdout=subprocess.PIPE)
    upload = ["curl", "-sS", "-f", "-T", "-", "-o", str(tmp_path / "log")]
    if framing == "content-length":
        upload += ["-H", "Transfer-Encoding:", "-H", f"Content-Length: {BULK_BYTES}"]
    sender = subprocess.Popen([*upload, cluster.url + path], stdin=gen.stdout)
    assert gen.stdout is not None
    gen.stdout.close()
    try:
        digest, size = hash_stream(receiver.stdout)
        assert receiver.wait(60) == 0
        assert sender.wait(60) == 0
        assert gen.wait(60) == 0
    finally:
        for proc in (receiver, sender, gen):
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
    elapsed = time.monotonic() - started
    TIMINGS[f"{cluster.proxy}: 1 GiB {framing}"] = elapsed
    assert size == BULK_BYTES
    assert digest == want
    log = (tmp_path / "log").read_text().splitlines()
    assert log[-1] == "[INFO] All receiver(s) was/were received successfully.", log


# -- reader framings through the proxy (SPEC 2.1) --


def test_sse_reader_through_the_proxy(cluster: Cluster) -> None:
    path = fresh()

    async def scenario() -> Response:
        reader = asyncio.create_task(get(cluster.port, path, [("Accept", "text/event-stream")]))
        await asyncio.sleep(0.5)
        log = await put(cluster.port, path, b"hello\nworld\n", [("Content-Type", "text/plain")])
        assert log.status == 200
        return await reader

    got = run(scenario(), 30)
    assert got.status == 200 and got.complete
    assert (got.header("content-type") or "").startswith("text/event-stream")
    events = [e for e in got.text.split("\n\n") if e.strip()]
    assert events[0].startswith("retry: 1000")
    messages = [e.splitlines() for e in events if not any(line.startswith("event:") for line in e.splitlines())]
    # Each event's data is its chunk's text (docs/llm-streams.md: appending e.data rebuilds the text).
    text = "".join(
        "\n".join(line.removeprefix("data: ") for line in lines if line.startswith("data: ")) for lines in messages
    )
    assert text == "hello\nworld\n"
    assert "event: done" in events[-1]


def test_websocket_reader_through_the_proxy(cluster: Cluster) -> None:
    from websockets.asyncio.client import connect

    path = fresh()
    body = os.urandom(300_000)

    async def scenario() -> tuple[bytes, int | None]:
        async with connect(f"ws://127.0.0.1:{cluster.port}{path}", open_timeout=5) as ws:
            sender = asyncio.create_task(put(cluster.port, path, body))
            received = b""
            async for message in ws:
                assert isinstance(message, bytes), "raw framing is binary frames"
                received += message
            log = await sender
            assert log.status == 200
            return received, ws.close_code

    received, code = run(scenario(), 30)
    assert received == body
    assert code == 1000


# -- a node stops --


def test_stopping_a_node_moves_only_its_paths_and_breaks_its_transfers(cluster: Cluster, tmp_path: Path) -> None:
    paths = [f"/{uuid.uuid4().hex[:12]}/{i}" for i in range(PATHS)]
    before = run(route_map(cluster, paths))
    victim = 1
    on_victim = [p for p in paths if before[p] == victim]
    assert on_victim, "no path hashed to the node about to stop"

    # An in-flight transfer on the victim: a never-ending upload, both ends real curls.
    path = on_victim[0]
    receiver = subprocess.Popen(["curl", "-sS", cluster.url + path], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    time.sleep(0.3)
    gen = subprocess.Popen([sys.executable, "-c", SLOW_GENERATOR], stdout=subprocess.PIPE)
    sender = subprocess.Popen(
        ["curl", "-sS", "-f", "-T", "-", cluster.url + path],
        stdin=gen.stdout,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert gen.stdout is not None and receiver.stdout is not None
    gen.stdout.close()
    got = bytearray()

    def drain(stream: IO[bytes]) -> None:
        while chunk := stream.read1(65536):  # type: ignore[attr-defined]
            got.extend(chunk)

    pump = threading.Thread(target=drain, args=(receiver.stdout,), daemon=True)
    pump.start()
    try:
        deadline = time.monotonic() + 20
        while len(got) < 64 * 1024 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(got) >= 64 * 1024, "the transfer on the victim never started"

        stopped = time.monotonic()
        cluster.nodes[victim].stop()
        sender_rc = sender.wait(30)
        receiver_rc = receiver.wait(30)
        TIMINGS[f"{cluster.proxy}: in-flight transfer broken after"] = time.monotonic() - stopped
        print(
            f"\n{cluster.proxy}: node stopped mid-transfer: curl exit codes: sender {sender_rc}, receiver {receiver_rc}"
        )
        pump.join(10)
        assert sender_rc != 0, "the sender's curl exited 0 though its node stopped mid-upload"
        assert receiver_rc != 0, "the receiver's curl saw a clean end though its node stopped mid-transfer"
        assert set(got) == {ord("z")}, "the bytes before the cut are not the sender's"
    finally:
        for proc in (sender, receiver, gen):
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        for stream in (sender.stdout, sender.stderr, receiver.stdout, receiver.stderr):
            if stream is not None:
                stream.close()

    run(wait_routable(cluster, on_victim, avoid=victim))
    after = run(route_map(cluster, paths))
    kept = [p for p in paths if before[p] != victim]
    assert all(after[p] == before[p] for p in kept), "a path of a surviving node moved"
    moved_to = [after[p] for p in on_victim]
    assert victim not in moved_to
    print(
        f"\n{cluster.proxy}: node {victim} stopped; its {len(on_victim)} of {PATHS} paths moved "
        f"({moved_to.count(0)} to node 0, {moved_to.count(2)} to node 2); the other "
        f"{len(kept)} kept their node"
    )

    # Moved paths still work end to end: their sender and receiver meet on the new node.
    async def meet(p: str) -> tuple[Response, Response]:
        receiver_task = asyncio.create_task(get(cluster.port, p))
        await asyncio.sleep(0.5)
        log = await put(cluster.port, p, p.encode())
        return log, await receiver_task

    for p in on_victim[1:6]:
        log, got_back = run(meet(p), 30)
        assert log.status == 200 and got_back.body == p.encode()
        assert cluster.node_of(got_back) == after[p]
