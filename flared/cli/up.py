"""`flared up` (everything in the foreground) and `flared run` (the daemon supervisord starts)."""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from rich.console import Console

from flared.cli.common import EXIT_FAILED, CommandError, Subparsers, add_config_arg, load_or_exit
from flared.config import handoff
from flared.config.loader import LoadedConfig


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "up",
        help="run everything in the foreground: supervisord, flared, the gateways",
        description="Run hermes-flare locally in the foreground. Ctrl-C stops gracefully "
        "(gateways first, then a final snapshot of each bot).",
    )
    add_config_arg(p)
    p.set_defaults(func=cmd_up)

    p = sub.add_parser("run", help="the daemon itself (what supervisord starts)")
    add_config_arg(p)
    p.set_defaults(func=cmd_run)


def supervisord_executable() -> str:
    candidate = Path(sys.executable).parent / "supervisord"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("supervisord")
    if not found:
        raise CommandError("supervisord is not installed (it comes with the `supervisor` package)")
    return found


def prepare_up(loaded: LoadedConfig) -> Path:
    """Write the runtime supervisord config for this state dir; return its path."""
    from flared.control.server import socket_reachable
    from flared.supervisor import Layout, flared_command, render_supervisord_conf

    layout = Layout(loaded.state_dir)
    if layout.socket.exists() and socket_reachable(layout.socket):
        raise CommandError(
            f"hermes-flare is already running for {loaded.state_dir} (stop it first, or use another state_dir)"
        )
    for d in (layout.root, layout.logs):
        d.mkdir(parents=True, exist_ok=True)
    # Gateways are added only after each bot's restore; never let supervisord
    # start one from a previous run's program file before that.
    if layout.programs.exists():
        shutil.rmtree(layout.programs)
    layout.programs.mkdir()
    budget = int(loaded.config.snapshots.shutdown_budget) + 30
    text = render_supervisord_conf(layout, flared_cmd=flared_command(loaded.path), stopwaitsecs=budget)
    layout.conf.write_text(text)
    # Secrets go to flared through a 0600 file, not through supervisord's environment,
    # which every gateway would inherit (config/handoff.py).
    handoff.write(layout.handoff, handoff.secret_part(os.environ))
    return layout.conf


def cmd_up(args: argparse.Namespace) -> int:
    loaded = load_or_exit(args)
    conf = prepare_up(loaded)
    cfg = loaded.config
    err = Console(stderr=True, highlight=False)
    err.print(f"[bold]hermes-flare[/bold] starting {len(cfg.bots)} bot(s) from {loaded.path}")
    err.print(f"  state dir: {loaded.state_dir}   logs: {loaded.state_dir / 'logs'}")
    for bot in cfg.bots:
        if bot.api:
            err.print(
                f"  {bot.name}: chat API on http://{bot.api.host}:{bot.api.port}/v1  (try: flared chat hello)"
            )
    err.print("  status: flared status   stop: Ctrl-C (a final snapshot is taken)")
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(supervisord_executable(), ["supervisord", "-n", "-c", str(conf)], handoff.base_env())
    return EXIT_FAILED  # not reached


class _RedactingFormatter(logging.Formatter):
    def __init__(self, fmt: str, config: Any) -> None:
        super().__init__(fmt)
        self.config = config

    def format(self, record: logging.LogRecord) -> str:
        from flared.config.redact import redact_text

        return redact_text(super().format(record), self.config)


def setup_logging(loaded: LoadedConfig) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _RedactingFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", loaded.config)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(loaded.config.log_level.upper())
    for noisy in ("botocore", "boto3", "s3transfer", "urllib3", "watchfiles"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def adopt_handoff() -> None:
    """`flared run` and `flared operator run`: take the secrets `flared up` (or the image) handed over."""
    try:
        handoff.adopt()
    except handoff.HandoffError as exc:
        raise CommandError(f"cannot take the secrets handed to flared: {exc}") from None


def cmd_run(args: argparse.Namespace) -> int:
    from flared.daemon import Daemon

    adopt_handoff()
    loaded = load_or_exit(args)
    setup_logging(loaded)
    return Daemon(loaded).run()
