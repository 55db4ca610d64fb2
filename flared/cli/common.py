"""Helpers every command shares: config loading, --json output, errors."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any, TypeAlias

from rich.console import Console

from flared.config.loader import ConfigError, LoadedConfig, load_config
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


def print_config_errors(exc: ConfigError, as_json: bool = False) -> None:
    if as_json:
        print(json.dumps({"valid": False, "errors": [i.as_dict() for i in exc.issues]}, indent=2))
        return
    for issue in exc.issues:
        print(str(issue), file=sys.stderr)
    n = len(exc.issues)
    print(f"{n} problem{'s' if n != 1 else ''} found; nothing was changed.", file=sys.stderr)


def load_or_exit(args: argparse.Namespace, *, check_state_dir: bool = True) -> LoadedConfig:
    try:
        return load_config(getattr(args, "config", None), check_state_dir=check_state_dir)
    except ConfigError as exc:
        print_config_errors(exc, getattr(args, "json", False))
        raise SystemExit(EXIT_INVALID) from None


def client_for(loaded: LoadedConfig) -> ControlClient:
    return ControlClient.for_config(loaded)


def console(stderr: bool = False) -> Console:
    # Piped output is for grep and scripts: never cut ids to 80 columns.
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else 200
    return Console(stderr=stderr, highlight=False, soft_wrap=True, width=width)


def emit(args: argparse.Namespace, data: Any, render: Callable[[Console, Any], None] | None = None) -> None:
    """JSON with --json (or when no renderer), else a human rendering."""
    if getattr(args, "json", False) or render is None:
        print(json.dumps(data, indent=2, default=str))
    else:
        render(console(), data)


def human_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def human_bytes(n: float | None) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
