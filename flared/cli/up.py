"""`flared up` (everything in the foreground), `flared stop`, and `flared run` (the daemon supervisord starts).

`flared up` starts supervisord as its child and then becomes a small
watcher (:mod:`flared.cli.foreground`, no pydantic): it forwards Ctrl-C to
supervisord once, prints each bot's restore and readiness as they happen,
and after the stop prints what each final snapshot did.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flared import orphans
from flared.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    CommandError,
    Subparsers,
    add_config_arg,
    add_json_arg,
    emit,
    load_or_exit,
)
from flared.cli.remote import connect
from flared.cli.text import Out
from flared.config import handoff
from flared.control.client import ControlError
from flared.lifeline import spawn_supervisord
from flared.orphans import alive

if TYPE_CHECKING:
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

    p = sub.add_parser(
        "stop",
        help="stop a `flared up` running in the background (final snapshots included)",
        description="Stop everything a `flared up` started, as Ctrl-C in its terminal does: the "
        "gateways first (SIGINT), then flared takes a final snapshot of each bot. Waits for the "
        "end and prints what each final snapshot did.",
    )
    add_config_arg(p)
    add_json_arg(p)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait (default 300)")
    p.set_defaults(func=cmd_stop)

    p = sub.add_parser(
        "run",
        help="the daemon itself (what supervisord starts; use `flared up`)",
        description="Run the flared daemon in this process. supervisord starts it (see `flared "
        "render supervisord`); to run hermes-flare yourself use `flared up`.",
    )
    add_config_arg(p)
    p.set_defaults(func=cmd_run)


def supervisord_executable() -> str:
    import shutil

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
            f"hermes-flare is already running for {loaded.state_dir} (`flared stop` stops it; "
            "or use another state_dir)"
        )
    end_orphans(loaded)
    for d in (layout.root, layout.logs):
        d.mkdir(parents=True, exist_ok=True)
    import shutil

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


def end_orphans(loaded: LoadedConfig) -> None:
    """End what a previous run left running on this state dir after its supervisord died.

    Its flared would hold the sandboxes' lock and its gateways the bots' ports: the new run
    would crash-loop against them. They are stopped as supervisord would have (flared last,
    with its final snapshots); one this user cannot end is refused with what to do."""
    found = orphans.find(loaded.state_dir)
    if not found:
        return
    err = Out(sys.stderr)
    err.print(
        f"a previous run on {loaded.state_dir} lost its supervisord and left running: "
        f"{', '.join(str(o) for o in found)}; ending them (flared takes its final snapshots) ..."
    )
    left = orphans.end(found, flared_grace=float(loaded.config.snapshots.shutdown_budget) + 10, say=err.print)
    if left:
        pids = " ".join(str(o.pid) for o in left)
        raise CommandError(
            f"cannot end {', '.join(str(o) for o in left)} (another user's?), which still use "
            f"{loaded.state_dir}: end them (`sudo kill {pids}`), then run `flared up` again"
        )
    err.print("ended; starting afresh")


def cmd_up(args: argparse.Namespace) -> int:
    from flared.control.locate import socket_path

    loaded = load_or_exit(args)
    conf = prepare_up(loaded)
    cfg = loaded.config
    supervisord = supervisord_executable()
    err = Out(sys.stderr)
    err.print(f"{err.style('hermes-flare', 'bold')} starting {len(cfg.bots)} bot(s) from {loaded.path}")
    err.print(f"  state dir: {loaded.state_dir}")
    err.print("  logs: `flared logs` (flared, supervisord and each gateway; -f follows)")
    err.print("  status: `flared status`   stop: Ctrl-C here, or `flared stop` (a final snapshot is taken)")
    sys.stdout.flush()
    sys.stderr.flush()
    # Neither supervisord nor the watcher keeps the secrets of this shell: they are in the
    # 0600 handoff file for flared alone, and every gateway gets only its own `.env`.
    base_env = handoff.base_env()
    child = spawn_supervisord([supervisord, "-n", "-c", str(conf)], base_env)
    os.execve(
        sys.executable,
        [
            sys.executable,
            "-m",
            "flared.cli.foreground",
            str(child),
            str(loaded.state_dir),
            str(socket_path(loaded)),
        ],
        base_env,
    )
    return EXIT_FAILED  # not reached


def cmd_stop(args: argparse.Namespace) -> int:
    from flared.cli.status import final_snapshot_lines, read_stop_record
    from flared.snapshots.final import not_saved_line

    err = Out(sys.stderr)
    remote = connect(args)
    asked = time.time()
    if remote is not None:
        state_dir = Path(remote.context["state_dir"])
        try:
            pid = int(remote.request("POST", "/shutdown", timeout=30)["supervisord_pid"])
        except ControlError as exc:
            raise CommandError(f"the daemon refused to stop: {exc}") from None
    else:
        from flared.supervisor import Layout

        loaded = load_or_exit(args, check_state_dir=False)
        state_dir = loaded.state_dir
        found = _supervisord_pid(Layout(state_dir).pidfile)
        if found is None:
            raise CommandError(f"hermes-flare is not running for {state_dir}")
        pid = found
        os.kill(pid, signal.SIGTERM)  # flared is gone already: supervisord stops the gateways
    err.print(f"stopping hermes-flare (pid {pid}): gateways first, then a final snapshot of each bot ...")
    deadline = time.monotonic() + args.timeout
    while alive(pid):
        if time.monotonic() > deadline:
            raise CommandError(f"still stopping after {args.timeout:.0f} s (supervisord pid {pid})")
        time.sleep(0.1)
    record = read_stop_record(state_dir)
    if record is not None and not _written_since(record, asked):
        record = None
    finals: list[dict[str, Any]] = (record or {}).get("final_snapshots") or []
    data = {
        "stopped": True,
        "supervisord_pid": pid,
        "final_snapshots": finals if record else None,
        "error": not_saved_line(finals),
    }

    def render(out: Out, d: dict[str, Any]) -> None:
        for line in final_snapshot_lines(finals):
            out.print(line)
        out.print("hermes-flare stopped")
        if d["error"]:
            Out(sys.stderr).print(f"error: {d['error']}")

    emit(args, data, render)
    return EXIT_FAILED if data["error"] else EXIT_OK


def _written_since(record: dict[str, Any], since: float) -> bool:
    from datetime import datetime

    try:
        return datetime.fromisoformat(str(record.get("stopped_at"))).timestamp() >= since - 1
    except ValueError:
        return False


def _supervisord_pid(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text().split()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError, IndexError):
        return None
    return pid if b"supervisord" in cmdline else None


def setup_logging(loaded: LoadedConfig) -> None:
    import logging

    from flared.config.redact import redact_text

    class _RedactingFormatter(logging.Formatter):
        def __init__(self, fmt: str, config: Any) -> None:
            super().__init__(fmt)
            self.config = config

        def format(self, record: logging.LogRecord) -> str:
            return redact_text(super().format(record), self.config)

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
    from flared.control.auth import parent_if_supervisord
    from flared.daemon import Daemon
    from flared.lifeline import die_with_parent

    if parent_if_supervisord() is not None:
        # A kill -9 of supervisord must not leave flared running unsupervised: SIGTERM then
        # (a graceful stop, final snapshots included), as supervisord's own stop would send.
        die_with_parent(signal.SIGTERM)
    adopt_handoff()
    loaded = load_or_exit(args)
    setup_logging(loaded)
    daemon = Daemon(loaded)
    code = daemon.run()
    if daemon.snapshots.abandoned:
        # A final snapshot is still stuck on the store: exit now, as its deadline said,
        # rather than join its thread until supervisord's SIGKILL (which says nothing).
        import logging

        logging.shutdown()
        sys.stdout.flush()
        os._exit(code)
    return code
