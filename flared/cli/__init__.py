"""`flared`: the command line. Exit codes: 0 ok, 1 failed, 2 invalid input.

One module per group of commands, each with ``register(subparsers)``.
Commands that report talk to the running daemon through
:mod:`flared.cli.remote` (found from the config path, without validating
the file) and, where the contract says so, work offline on the state dir and
the store under the same locks. Must not hold state of its own between runs.

Start-up is what the user waits for: module-level imports here and in every
command module are the standard library and flared's lean modules only;
pydantic (the config loader), boto3 and Hermes load inside the commands
that need them (tests/test_cli_daemon.py guards the daemon path).
"""

from __future__ import annotations

import argparse
import sys

from flared.build import release
from flared.cli import admin, chat, logs, operator, sandboxes, snapshots, status, stream, up, validate
from flared.cli.common import EXIT_FAILED, EXIT_INVALID, CommandError
from flared.cli.text import localize_hints
from flared.control.client import DaemonNotAnswering


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_INVALID)


class _Version(argparse.Action):
    """--version, with the build id computed only when asked (it reads the package's source)."""

    def __init__(self, option_strings: list[str], dest: str, help: str | None = None) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help=help)

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        print(f"flared {release()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="flared",
        description="hermes-flare: run Hermes Agent bots from one YAML file, with snapshots and sandboxes.",
        epilog="Exit codes: 0 ok, 1 operation failed, 2 invalid input (config or arguments).",
    )
    parser.add_argument("--version", action=_Version, help="print flared's release and build id, then exit")
    # `flared -c FILE status` as well as `flared status -c FILE`: a separate dest, because a
    # subcommand's own default (None) would overwrite the value given before it.
    parser.add_argument(
        "-c", "--config", dest="config_before", metavar="FILE", help="config file, for any command"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for module in (validate, up, status, logs, snapshots, sandboxes, chat, operator, admin, stream):
        module.register(sub)
    return parser


#: Commands whose stdout is data (a file, log lines), printed as it is, hints or not.
DATA_OUT = frozenset({"render", "schema", "logs"})


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    originals = localize_hints()
    try:
        try:
            args = parser.parse_args(argv)
        except SystemExit as exc:  # --help, --version, usage errors
            return int(exc.code or 0)
    finally:
        sys.stdout, sys.stderr = originals
    data = args.command in DATA_OUT or bool(getattr(args, "json", False))
    localize_hints(stdout=not data)
    try:
        return _run(parser, args)
    finally:
        sys.stdout, sys.stderr = originals


def _run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    if not getattr(args, "func", None):
        parser.print_help()
        return EXIT_INVALID
    if args.config_before is not None and getattr(args, "config", None) is None:
        args.config = args.config_before  # the one after the subcommand wins when both are given
    try:
        return int(args.func(args))
    except SystemExit as exc:  # load_or_exit and friends
        return int(exc.code or 0)
    except CommandError as exc:
        print(f"flared {args.command}: {exc}", file=sys.stderr)
        return exc.code
    except DaemonNotAnswering as exc:  # from any command that asked the daemon
        print(f"flared {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_FAILED
    except BrokenPipeError:
        return 0
