"""``ringpipe`` command line: argv → ``Settings`` → supervisor. Nothing else lives here.

Every ``serve`` flag comes from a ``Settings`` field (``config.options()``), with its
``RINGPIPE_<NAME>`` variable named in the help. Bad values end with one line on stderr and
exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

from ringpipe import __version__
from ringpipe.config import ConfigError, Settings, options

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"ringpipe: error: {message}\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ringpipe", description="An HTTP pipe: stream bytes from one sender to many receivers.")
    parser.add_argument("--version", action="version", version=f"ringpipe {__version__}")
    commands = parser.add_subparsers(dest="command", parser_class=_Parser)
    serve = commands.add_parser(
        "serve",
        help="run the server (the default command)",
        description="Run the ringpipe server. Every option can also be set as RINGPIPE_<NAME> (PORT too).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
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
    return parser


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
        return Settings.from_env(None, **parsed)
    except ConfigError as exc:
        sys.stderr.write(f"ringpipe: error: {exc}\n")
        raise SystemExit(2) from None


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(sys.argv[1:] if argv is None else argv)
    from ringpipe.supervisor import Supervisor

    return Supervisor(settings).run()
