"""``ringpipe`` command line: argv → ``Settings`` → supervisor, and ``ringpipe sign``.

Every ``serve`` flag comes from a ``Settings`` field (``config.options()``), with its
``RINGPIPE_<NAME>`` variable named in the help. Bad values end with one line on stderr and
exit status 2; that includes a tokens file that cannot be read or parsed and a malformed
``--cors-origins``, so a server never starts open when access control was asked for.

``ringpipe sign PATH --scope recv --ttl 600`` prints a signed URL (``signing.py``) made with
``--signing-key`` or ``RINGPIPE_SIGNING_KEY`` (the variable keeps the key out of ``ps``).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from typing import NoReturn

from ringpipe import __version__
from ringpipe.core.access import TokenFileError, load_tokens
from ringpipe.core.config import SCOPES, ConfigError, Settings, options
from ringpipe.core.cors import parse_origins
from ringpipe.core.paths import normalize_path
from ringpipe.core.signing import covers_path, normalize_prefix, signed_query

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"ringpipe: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ringpipe",
        description="An HTTP pipe: stream bytes from one sender to many receivers.",
        epilog="client verbs: ringpipe send|recv|watch|status|cancel PATH (each with --help)",
    )
    parser.add_argument("--version", action="version", version=f"ringpipe {__version__}")
    commands = parser.add_subparsers(dest="command", parser_class=_Parser)
    serve = commands.add_parser(
        "serve",
        help="run the server (the default command)",
        description="Run the ringpipe server. Every option can also be set as RINGPIPE_<NAME> (PORT too).",
    )
    for option in options():
        env = "RINGPIPE_" + option.name.upper()
        shown = "" if option.default in (None, ()) else f"; default: {option.default}"
        help_text = f"{option.help} [env {env}{shown}]"
        if option.kind == "flag":
            serve.add_argument(
                option.flag, dest=option.name, action="store_const", const="true", default=None, help=help_text
            )
        elif option.kind == "list":
            serve.add_argument(
                option.flag,
                dest=option.name,
                metavar=option.name.upper(),
                action="append",
                default=None,
                help=help_text,
            )
        else:
            serve.add_argument(option.flag, dest=option.name, metavar=option.name.upper(), default=None, help=help_text)
    _add_sign(commands)
    return parser


def _add_sign(commands: argparse._SubParsersAction[_Parser]) -> None:
    sign = commands.add_parser(
        "sign",
        usage="ringpipe sign PATH --scope SCOPE --signing-key KEY [--ttl TTL] [--prefix [PREFIX]] [--base-url URL]",
        help="print a signed URL for a path",
        description=(
            "Print a URL that grants SCOPES on PATH (or on every path under a prefix) until it "
            "expires, for clients that cannot send an Authorization header (EventSource, <a href>). "
            "The server must run with the same --signing-key."
        ),
    )
    sign.add_argument("path", metavar="PATH", help="the pipe path, e.g. /chat/answer")
    sign.add_argument(
        "--scope",
        action="append",
        required=True,
        help=f"scope(s) to grant, comma-separated or repeated: {', '.join(SCOPES)}",
    )
    sign.add_argument("--ttl", default="600", help="lifetime: seconds, or with s/m/h/d (default: 600)")
    sign.add_argument(
        "--prefix",
        nargs="?",
        const=True,
        default=None,
        metavar="PREFIX",
        help="sign a prefix instead of one path: PATH itself, or PREFIX (PATH must be under it); "
        "the query then works on every path under it",
    )
    sign.add_argument(
        "--base-url",
        default=None,
        help="the server's public URL [env RINGPIPE_BASE_URL; default: http://localhost:8080]",
    )
    sign.add_argument(
        "--signing-key",
        metavar="KEY",
        default=None,
        help="required (or env RINGPIPE_SIGNING_KEY, which keeps it out of ps): the server's own --signing-key; "
        "a URL signed with any other key is refused with 403",
    )


_TTL = re.compile(r"([0-9]+)\s*([smhd]?)")
_TTL_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> int:
    """``600``, ``90s``, ``10m``, ``2h``, ``1d`` → seconds (> 0); raises ``ValueError``."""
    match = _TTL.fullmatch(text.strip().lower())
    if not match or int(match.group(1)) <= 0:
        raise ValueError(f"--ttl must be a positive number of seconds (or 10m, 2h, 1d), not {text!r}")
    return int(match.group(1)) * _TTL_UNITS[match.group(2)]


def sign_url(args: argparse.Namespace, environ: dict[str, str] | os._Environ[str], now: float) -> str:
    """The URL ``ringpipe sign`` prints; raises ``ValueError`` with a one-line reason."""
    key = args.signing_key or environ.get("RINGPIPE_SIGNING_KEY")
    if not key:
        raise ValueError("no signing key: pass --signing-key or set RINGPIPE_SIGNING_KEY")
    scopes = [s.strip() for value in args.scope for s in value.split(",") if s.strip()]
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise ValueError(f"unknown scope(s) {unknown}; known: {', '.join(SCOPES)}")
    scopes = list(dict.fromkeys(scopes))
    raw_path = args.path if args.path.startswith("/") else "/" + args.path
    path = normalize_path(raw_path.encode("utf-8"))
    prefix: str | None = None
    if args.prefix is True:
        prefix = normalize_prefix(path)
    elif args.prefix is not None:
        if not args.prefix.startswith("/"):
            raise ValueError("--prefix must start with '/'")
        prefix = normalize_prefix(args.prefix)
        if not covers_path(prefix, path):
            raise ValueError(f"{path} is not under the prefix {prefix}")
    base = (args.base_url or environ.get("RINGPIPE_BASE_URL") or "http://localhost:8080").rstrip("/")
    if not re.match(r"https?://[^/]+", base):
        raise ValueError(f"--base-url must look like https://relay.example.com, not {base!r}")
    exp = int(now) + parse_ttl(args.ttl)
    return f"{base}{path}?{signed_query(key.encode('utf-8'), path, scopes, exp, prefix=prefix)}"


def sign_main(argv: list[str]) -> int:
    args = build_parser().parse_args(["sign", *argv])
    try:
        url = sign_url(args, os.environ, time.time())
    except ValueError as exc:
        sys.stderr.write(f"ringpipe: error: {exc}\n")
        return 2
    sys.stdout.write(url + "\n")
    return 0


def check_access(settings: Settings) -> None:
    """Refuse to start with an unusable tokens file or ``--cors-origins``: ``ConfigError``."""
    try:
        parse_origins(settings.cors_origins)
        load_tokens(settings)
    except (TokenFileError, ValueError) as exc:
        raise ConfigError(str(exc)) from None


def parse_settings(argv: list[str]) -> Settings:
    """Turn ``serve`` arguments into validated settings; exits 2 with one line on error."""
    parser = build_parser()
    if not argv or argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version"):
        argv = ["serve", *argv]
    args = parser.parse_args(argv)
    if args.command != "serve":
        parser.print_help()
        raise SystemExit(2)
    raw = {name: value for name, value in vars(args).items() if name != "command" and value is not None}
    try:
        parsed: dict[str, object] = {}
        for option in options():
            if option.name in raw:
                try:
                    value = raw[option.name]
                    parsed[option.name] = tuple(value) if option.kind == "list" else option.parse(value)
                except ValueError:
                    raise ConfigError(f"{option.flag} has a bad value: {raw[option.name]!r}") from None
        settings = Settings.from_env(None, **parsed)
        check_access(settings)
        return settings
    except ConfigError as exc:
        sys.stderr.write(f"ringpipe: error: {exc}\n")
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "sign":
        return sign_main(argv[1:])
    if argv and argv[0] in ("send", "recv", "watch", "status", "cancel"):
        from ringpipe.client.cli import main as client_main  # httpx only where a client verb runs

        return client_main(argv)
    settings = parse_settings(argv)
    from ringpipe.process.supervisor import Supervisor

    return Supervisor(settings).run()
