"""Helpers every command shares: exit codes, --json output, config loading, errors.

Lean on purpose: this module is imported by every command, including those
that only talk to the running daemon, so the config loader (pydantic) is
imported only when a command loads the file itself.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeAlias

from flared.cli.text import Out
from flared.cli.text import human_age as human_age
from flared.config.units import human_bytes as human_bytes

if TYPE_CHECKING:
    from flared.config.loader import ConfigError, LoadedConfig
    from flared.control.client import ControlClient

EXIT_OK, EXIT_FAILED, EXIT_INVALID = 0, 1, 2

#: What each command module's ``register`` adds its parsers to (a type for annotations only).
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


class CommandError(Exception):
    """A failure to report in one line, with an exit code."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


def add_config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="config file (default: $HERMES_FLARE_CONFIG, then ./hermes-flare.yaml)",
    )


def add_json_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print machine-readable JSON")


def print_config_errors(exc: ConfigError, as_json: bool = False, *, outcome: str = "") -> None:
    """Every problem as FILE:LINE:COL, then a count; ``outcome`` says what did not happen."""
    if as_json:
        print(json.dumps({"valid": False, "errors": [i.as_dict() for i in exc.issues]}, indent=2))
        return
    for issue in exc.issues:
        print(str(issue), file=sys.stderr)
    n = len(exc.issues)
    tail = f"; {outcome}" if outcome else ""
    print(f"{n} problem{'s' if n != 1 else ''} found{tail}.", file=sys.stderr)


def load_or_exit(args: argparse.Namespace, *, check_state_dir: bool = True) -> LoadedConfig:
    from flared.config.loader import ConfigError, load_config

    try:
        return load_config(getattr(args, "config", None), check_state_dir=check_state_dir)
    except ConfigError as exc:
        print_config_errors(exc, getattr(args, "json", False))
        raise SystemExit(EXIT_INVALID) from None


def client_for(loaded: LoadedConfig) -> ControlClient:
    from flared.control.client import ControlClient

    return ControlClient.for_config(loaded)


def emit(args: argparse.Namespace, data: Any, render: Callable[[Out, Any], None] | None = None) -> None:
    """JSON with --json (or when no renderer), else a human rendering."""
    if getattr(args, "json", False) or render is None:
        print(json.dumps(data, indent=2, default=str))
    else:
        render(Out(), data)
