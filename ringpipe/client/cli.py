"""``ringpipe send|recv|watch|status|cancel``: the client on the command line.

PATH is a pipe path joined to the base URL (``--url``, else ``RINGPIPE_URL``, else
``http://localhost:8080``) or a whole URL (a signed URL keeps its query). The bearer token
comes from ``RINGPIPE_TOKEN`` and a pipe's read key from ``RINGPIPE_READ_KEY``, never from
the command line, where ``ps`` would show them. ``recv`` and ``watch`` write the pipe's bytes
to stdout (or ``-o FILE``) as they arrive and resume by themselves across dropped
connections. A progress line goes to stderr when stderr is a terminal, nothing otherwise.

The exit status says how it ended (``EXIT_CODES``, documented in ``--help`` and
``docs/client.md``); every failure prints one ``ringpipe: ...`` line saying what to do.
"""

from __future__ import annotations

import argparse
import functools
import mimetypes
import os
import sys
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import IO, Any, Final, NoReturn

import anyio
import anyio.to_thread

from ringpipe.client.errors import (
    ClientError,
    PipeAborted,
    PipeCancelled,
    PipeLagged,
    PipeRefused,
    RelayUnreachable,
)
from ringpipe.client.progress import Progress
from ringpipe.client.reading import Receiver, receive, watch
from ringpipe.client.sending import send
from ringpipe.client.transport import cancel, status
from ringpipe.client.wire import SenderLog, redact_url

__all__ = ["EXIT_CODES", "VERBS", "main"]

VERBS: Final = ("send", "recv", "watch", "status", "cancel")
DEFAULT_URL: Final = "http://localhost:8080"

EXIT_DONE: Final = 0
EXIT_USAGE: Final = 2
EXIT_ABORTED: Final = 3
EXIT_CANCELLED: Final = 4
EXIT_LAGGED: Final = 5
EXIT_REFUSED: Final = 6
EXIT_UNREACHABLE: Final = 7
EXIT_FREE: Final = 8
EXIT_INTERRUPTED: Final = 130
#: Exit status → what it means (the ``--help`` epilog and docs/client.md show this table).
EXIT_CODES: Final[Mapping[int, str]] = {
    EXIT_DONE: "done: the transfer completed (send: at least one receiver got every byte)",
    EXIT_USAGE: "usage: bad arguments",
    EXIT_ABORTED: "aborted: the producer vanished, or every receiver dropped (send)",
    EXIT_CANCELLED: "cancelled: someone cancelled the pipe (DELETE)",
    EXIT_LAGGED: "lagged: evicted for reading too slowly, or bytes lost to a gap",
    EXIT_REFUSED: "refused: the server said no (the message says why: n, credentials, limits)",
    EXIT_UNREACHABLE: "unreachable: no connection, or it broke and did not come back",
    EXIT_FREE: "free: status/cancel found nothing on the path",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
}

#: What a refusal's status asks the user to do, after the server's own reason.
_HINTS: Final[Mapping[int, str]] = {
    401: "set RINGPIPE_TOKEN to a token with this verb's scope, or give a signed URL as PATH",
    403: "check RINGPIPE_TOKEN's scopes and path prefix, the signed URL, or RINGPIPE_READ_KEY",
    408: "start the other side within the server's --wait-timeout",
    503: "try again later",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"ringpipe: error: {message}\n")
        raise SystemExit(EXIT_USAGE)


def _exit_table() -> str:
    return "exit status:\n" + "\n".join(f"  {code:>3}  {text}" for code, text in EXIT_CODES.items())


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ringpipe",
        description="ringpipe client: send to, receive from, watch, inspect and cancel pipes.",
        epilog=_exit_table() + "\n\nenvironment: RINGPIPE_URL (base URL), RINGPIPE_TOKEN, RINGPIPE_READ_KEY",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    verbs = parser.add_subparsers(dest="verb", required=True, parser_class=_Parser)

    def verb(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = verbs.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=_exit_table(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.add_argument("path", metavar="PATH", help="pipe path (joined to --url) or a whole URL")
        sub.add_argument("--url", default=None, help=f"base URL [env RINGPIPE_URL; default: {DEFAULT_URL}]")
        sub.add_argument("-q", "--quiet", action="store_true", help="no progress line or summary on stderr")
        return sub

    sender = verb("send", "send FILE (or stdin) to a pipe; each read of a pipe goes out at once")
    sender.add_argument("file", metavar="FILE", nargs="?", default="-", help="what to send; - or absent: stdin")
    sender.add_argument("--n", type=int, default=1, help="number of receivers (default: 1)")
    sender.add_argument("--content-type", default=None, help="the receivers' Content-Type (default: from FILE)")

    for name, text in (("recv", "receive a pipe to stdout or FILE, resuming across drops"), ("watch", "")):
        reader = verb(name, text or "watch a pipe without taking a receiver slot (from the oldest byte held)")
        reader.add_argument("-o", "--output", metavar="FILE", default=None, help="write here instead of stdout")
        reader.add_argument("--framing", choices=("ndjson", "raw"), default="ndjson", help="wire framing")
        if name == "recv":
            reader.add_argument("--n", type=int, default=None, help="number of receivers (as the sender's)")
        else:
            reader.add_argument("--live", action="store_true", help="start at the live head, not the oldest byte")
    verb("status", "print a pipe's state: free, waiting or established, receivers, offset")
    verb("cancel", "cancel the waiting or running transfer on a pipe")
    return parser


def pipe_url(path: str, base: str | None, environ: Mapping[str, str]) -> str:
    """PATH as a URL: itself when it is one, else joined to the base URL."""
    if path.startswith(("http://", "https://")):
        return path
    base = (base or environ.get("RINGPIPE_URL") or DEFAULT_URL).rstrip("/")
    return base + (path if path.startswith("/") else "/" + path)


def main(argv: list[str] | None = None, environ: Mapping[str, str] = os.environ) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    url = pipe_url(args.path, args.url, environ)
    token = environ.get("RINGPIPE_TOKEN") or None
    read_key = environ.get("RINGPIPE_READ_KEY") or None
    show = not args.quiet and sys.stderr.isatty()
    verbs: dict[str, Callable[..., Coroutine[Any, Any, int]]] = {
        "send": _send,
        "recv": _read,
        "watch": _read,
        "status": _status,
        "cancel": _cancel,
    }
    command = functools.partial(verbs[args.verb], args, url, token=token, read_key=read_key, show=show)
    try:
        return anyio.run(command)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except ValueError as exc:  # a malformed URL
        return _fail(EXIT_USAGE, str(exc))
    except ClientError as exc:
        return _failed(exc, url)


def _fail(code: int, message: str) -> int:
    sys.stderr.write(f"ringpipe: {message}\n")
    return code


def _failed(exc: ClientError, url: str) -> int:
    """Exit status and message for an error (never with the URL's query: it may be signed)."""
    if isinstance(exc, PipeRefused):
        where = f" on {exc.path}" if exc.path else ""
        status_text = str(exc.status) if exc.status is not None else "in the sender's log"
        hint = _HINTS.get(exc.status or 0)
        return _fail(
            EXIT_REFUSED, f"refused{where} ({status_text}): {exc.message}" + (f" Hint: {hint}." if hint else "")
        )
    if isinstance(exc, RelayUnreachable):
        base = redact_url(url).split("?", 1)[0]
        return _fail(EXIT_UNREACHABLE, f"unreachable: {exc}; is a server at {base}? (--url, RINGPIPE_URL)")
    if isinstance(exc, PipeCancelled):
        return _fail(EXIT_CANCELLED, f"cancelled at byte {exc.offset}")
    if isinstance(exc, PipeLagged):  # PipeGap included
        return _fail(EXIT_LAGGED, f"lagged: {exc}")
    if isinstance(exc, PipeAborted):
        unsure = "" if exc.certain else " (raw framing cannot say why; --framing ndjson can)"
        return _fail(EXIT_ABORTED, f"aborted at byte {exc.offset}: {exc.reason or 'the producer vanished'}{unsure}")
    return _fail(EXIT_ABORTED, str(exc))


async def _send(args: argparse.Namespace, url: str, *, token: str | None, read_key: str | None, show: bool) -> int:
    if args.n < 1:
        return _fail(EXIT_USAGE, "--n must be at least 1")
    if args.file == "-":
        source: IO[bytes] | Path = sys.stdin.buffer
        content_type = args.content_type
    else:
        source = Path(args.file)
        if not source.is_file():
            return _fail(EXIT_USAGE, f"no such file: {args.file}")
        content_type = args.content_type or mimetypes.guess_type(source.name)[0]
    with Progress.open(show, f"send {args.path}") as progress:

        def on_log(sender_log: SenderLog) -> None:
            if sender_log.started:
                gone = sender_log.aborted + sender_log.evicted
                progress.state(f"to {sender_log.n} receiver(s)" + (f", {gone} dropped" if gone else ""))
            elif sender_log.n is not None:
                progress.state(f"waiting: {sender_log.connected}/{sender_log.n} receiver(s)")

        result = await send(
            url,
            source,
            n=args.n,
            content_type=content_type,
            token=token,
            read_key=read_key,
            on_progress=progress.advance_to,
            on_log=on_log,
        )
    if result.ending != "done":
        code = EXIT_LAGGED if result.ending == "lagged" else EXIT_ABORTED
        return _fail(code, f"{result.ending}: none of {result.receivers} receiver(s) got every byte")
    if show:
        lost = f", {result.aborted + result.evicted} dropped" if result.aborted + result.evicted else ""
        sys.stderr.write(f"ringpipe: sent {result.bytes_sent} bytes to {result.completed} receiver(s){lost}\n")
    return EXIT_DONE


async def _read(args: argparse.Namespace, url: str, *, token: str | None, read_key: str | None, show: bool) -> int:
    reader: Receiver
    if args.verb == "recv":
        reader = receive(url, framing=args.framing, n=args.n, token=token, read_key=read_key)
    else:
        reader = watch(url, framing=args.framing, live=args.live, token=token, read_key=read_key)
    out: IO[bytes] = sys.stdout.buffer
    if args.output not in (None, "-"):
        out = await anyio.to_thread.run_sync(Path(args.output).open, "wb")
    try:
        with Progress.open(show, f"{args.verb} {args.path}") as progress:
            async with reader:
                async for chunk in reader:
                    out.write(chunk.data)
                    out.flush()  # tokens are live on a terminal or a pipe too
                    progress.advance_to(chunk.offset)
                    if reader.reconnects:
                        progress.state(f"resumed ×{reader.reconnects}")
    except BrokenPipeError:  # stdout's reader left (| head): we are done too
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
    finally:
        if out is not sys.stdout.buffer:
            out.close()
    return EXIT_DONE


async def _status(args: argparse.Namespace, url: str, *, token: str | None, read_key: str | None, show: bool) -> int:
    pipe = await status(url, token=token, read_key=read_key)
    if pipe.state == "free":
        sys.stdout.write("free\n")
        return EXIT_FREE
    sys.stdout.write(f"{pipe.state} receivers={pipe.connected}/{pipe.n} offset={pipe.offset} epoch={pipe.epoch}\n")
    return EXIT_DONE


async def _cancel(args: argparse.Namespace, url: str, *, token: str | None, read_key: str | None, show: bool) -> int:
    if await cancel(url, token=token, read_key=read_key):
        if not args.quiet:
            sys.stderr.write("ringpipe: cancelled\n")
        return EXIT_DONE
    return _fail(EXIT_FREE, "nothing to cancel: the path is free")
