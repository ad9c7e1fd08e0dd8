#!/usr/bin/env python3
"""A loopback TCP proxy that cuts every connection after a number of bytes: a flaky relay link.

Put it between a reader and ringpipe to watch the client resume (``read_tokens.py``,
``ringpipe recv``): each connection's download is cut, abruptly and both ways, once it has
carried ``--cut-after`` bytes, as a restarting proxy or a load balancer would cut it.

    python examples/flaky_proxy.py --listen 127.0.0.1:8081 --to 127.0.0.1:8080 --cut-after 2000
    python examples/read_tokens.py http://127.0.0.1:8081/run-42/tokens

Stops after ``--cuts`` cuts (then it only forwards), or at Ctrl-C. It prints
``listening on HOST:PORT`` on stderr first (``--listen 127.0.0.1:0`` picks a free port).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys


class FlakyProxy:
    def __init__(self, upstream: tuple[str, int], cut_after: int, cuts: int | None) -> None:
        self.upstream = upstream
        self.cut_after = cut_after
        self.cuts_left = cuts
        #: Every open transport, so that a stop cuts them all at once instead of waiting.
        self.open: set[asyncio.BaseTransport] = set()

    def stop(self) -> None:
        for transport in list(self.open):
            transport.abort()

    async def serve(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        try:
            s_reader, s_writer = await asyncio.open_connection(*self.upstream)
        except OSError:
            c_writer.transport.abort()
            return
        self.open.update((c_writer.transport, s_writer.transport))
        cut = self.cuts_left is None or self.cuts_left > 0
        pumps = [
            asyncio.ensure_future(self.pump(c_reader, s_writer, None)),
            asyncio.ensure_future(self.pump(s_reader, c_writer, self.cut_after if cut else None)),
        ]
        with contextlib.suppress(ConnectionError):
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        c_writer.transport.abort()
        s_writer.transport.abort()
        self.open.difference_update((c_writer.transport, s_writer.transport))

    async def pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, budget: int | None) -> None:
        while data := await reader.read(65536):
            if budget is not None and len(data) >= budget:
                writer.write(data[:budget])
                await writer.drain()
                if self.cuts_left is not None:
                    self.cuts_left -= 1
                sys.stderr.write(f"flaky_proxy: cut a connection after {self.cut_after} bytes\n")
                return
            if budget is not None:
                budget -= len(data)
            writer.write(data)
            await writer.drain()


def address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host or "127.0.0.1", int(port)


async def run(args: argparse.Namespace) -> None:
    proxy = FlakyProxy(address(args.to), args.cut_after, args.cuts)
    server = await asyncio.start_server(proxy.serve, *address(args.listen))
    host, port = server.sockets[0].getsockname()[:2]
    sys.stderr.write(f"listening on {host}:{port}\n")
    sys.stderr.flush()
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopped.set)
    await stopped.wait()  # Ctrl-C or SIGTERM: stop listening and cut what is open, at once
    server.close()
    proxy.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", default="127.0.0.1:8081", help="where readers connect (default: %(default)s)")
    parser.add_argument("--to", default="127.0.0.1:8080", help="the ringpipe server (default: %(default)s)")
    parser.add_argument("--cut-after", type=int, default=2000, help="bytes per connection before a cut")
    parser.add_argument("--cuts", type=int, default=None, help="stop cutting after this many (default: never)")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
