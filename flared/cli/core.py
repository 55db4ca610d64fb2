"""Core commands: validate, schema, up, run, status, reload, render."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from flared.client import ControlError, DaemonNotRunning
from flared.commands.common import (
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    CommandError,
    add_config_arg,
    add_json_arg,
    client_for,
    emit,
    human_age,
    load_or_exit,
)
from flared.loader import LoadedConfig


def register(sub: Any) -> None:
    p = sub.add_parser("validate", help="check hermes-flare.yaml and report every problem")
    add_config_arg(p)
    add_json_arg(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("schema", help="print the JSON Schema of hermes-flare.yaml")
    p.set_defaults(func=cmd_schema)

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

    p = sub.add_parser("status", help="bots, gateway states, snapshots, leases, config digest")
    add_config_arg(p)
    add_json_arg(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("reload", help="re-read hermes-flare.yaml in the running daemon")
    add_config_arg(p)
    add_json_arg(p)
    p.set_defaults(func=cmd_reload)

    p = sub.add_parser("render", help="print what the YAML implies for wrangler.toml or supervisord.conf")
    p.add_argument("what", choices=["wrangler", "supervisord"], help="which file to render")
    p.add_argument("--image", action="store_true", help="supervisord: render the Agent image's config")
    add_config_arg(p)
    p.set_defaults(func=cmd_render)


# --------------------------------------------------------------------------- validate / schema


def cmd_validate(args: argparse.Namespace) -> int:
    loaded = load_or_exit(args)
    cfg = loaded.config
    data = {
        "valid": True,
        "file": str(loaded.path),
        "digest": loaded.digest,
        "bots": cfg.bot_names,
        "sandboxes": sorted(cfg.sandboxes),
        "cron": [j.name for j in cfg.cron],
    }

    def render(con: Console, d: dict[str, Any]) -> None:
        con.print(
            f"[green]ok[/green] {args.config or loaded.path.name}: {len(cfg.bots)} bot(s) "
            f"({', '.join(cfg.bot_names) or 'none'}), {len(cfg.sandboxes)} sandbox profile(s), "
            f"{len(cfg.cron)} cron job(s); digest {loaded.digest[:12]}"
        )

    emit(args, data, render)
    return EXIT_OK


def schema_document() -> dict[str, Any]:
    from flared.config import HermesFlareConfig

    schema = HermesFlareConfig.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://hermes-flare.dev/schema/hermes-flare.schema.json",
        **schema,
    }


def cmd_schema(args: argparse.Namespace) -> int:
    print(json.dumps(schema_document(), indent=2, sort_keys=False))
    return EXIT_OK


# --------------------------------------------------------------------------- up / run


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
    from flared.control import socket_reachable
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
    text = render_supervisord_conf(
        layout, flared_cmd=flared_command(loaded.path), stopwaitsecs=budget, flared_env=_passthrough_env()
    )
    layout.conf.write_text(text)
    return layout.conf


def _passthrough_env() -> dict[str, str]:
    """supervisord passes its own environment to flared; nothing extra is needed."""
    return {}


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
    os.execv(supervisord_executable(), ["supervisord", "-n", "-c", str(conf)])
    return EXIT_FAILED  # not reached


class _RedactingFormatter(logging.Formatter):
    def __init__(self, fmt: str, config: Any) -> None:
        super().__init__(fmt)
        self.config = config

    def format(self, record: logging.LogRecord) -> str:
        from flared.redact import redact_text

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


def cmd_run(args: argparse.Namespace) -> int:
    from flared.daemon import Daemon

    loaded = load_or_exit(args)
    setup_logging(loaded)
    return Daemon(loaded).run()


# --------------------------------------------------------------------------- status / reload


def cmd_status(args: argparse.Namespace) -> int:
    from flared.loader import ConfigError, find_config, load_config

    try:
        loaded = load_config(getattr(args, "config", None), check_state_dir=False)
    except ConfigError as exc:
        return status_with_invalid_file(args, exc, find_config(getattr(args, "config", None)))
    try:
        data = client_for(loaded).request("GET", "/status", timeout=10)
        data["daemon"] = "running"
    except DaemonNotRunning:
        data = offline_status(loaded)
    except ControlError as exc:
        raise CommandError(f"the daemon answered {exc.status}: {exc}") from None
    emit(args, data, render_status)
    return EXIT_OK


def status_with_invalid_file(args: argparse.Namespace, exc: Any, path: Path) -> int:
    """The file does not validate: the daemon still runs its last good config, so ask it."""
    from flared.client import ControlClient
    from flared.commands.common import print_config_errors
    from flared.reload import guess_socket

    try:
        data = ControlClient(guess_socket(path)).request("GET", "/status", timeout=10)
    except (DaemonNotRunning, ControlError, OSError):
        print_config_errors(exc, getattr(args, "json", False))
        return EXIT_INVALID
    data["daemon"] = "running"
    data.setdefault("config", {})["file_errors"] = [str(i) for i in exc.issues]
    emit(args, data, render_status)
    if not getattr(args, "json", False):
        print_config_errors(exc)
    return EXIT_OK


def offline_status(loaded: LoadedConfig) -> dict[str, Any]:
    return {
        "daemon": "not running",
        "config": {"path": str(loaded.path), "digest": loaded.digest, "error": None},
        "state_dir": str(loaded.state_dir),
        "bots": [
            {"name": b.name, "enabled": b.enabled, "group": b.group, "state": "STOPPED", "pid": None}
            for b in loaded.config.bots
        ],
    }


def render_status(con: Console, d: dict[str, Any]) -> None:
    cfg = d.get("config", {})
    head = f"[bold]flared[/bold] {d.get('daemon', 'running')}"
    if d.get("flared"):
        head += f", up {human_age(d['flared'].get('uptime_s'))}"
    con.print(head + f"   config {str(cfg.get('digest', ''))[:12]} ({cfg.get('path')})")
    if cfg.get("error"):
        con.print("[red]last config edit was NOT applied:[/red]")
        for line in cfg["error"]:
            con.print(f"  {line}")
    table = Table(box=None, pad_edge=False)
    for col in ("bot", "gateway", "pid", "uptime", "restarts", "heartbeat", "last snapshot", "note"):
        table.add_column(col)
    for b in d.get("bots", []):
        hermes = b.get("hermes") or {}
        snap = b.get("snapshots") or {}
        last = snap.get("last") or {}
        last_ok = snap.get("last_ok") or {}
        snap_text = "-"
        if last:
            snap_text = str(last.get("result", "?"))
            if last_ok.get("age_s") is not None:
                snap_text += f", {last_ok.get('id', '')} {human_age(last_ok.get('age_s'))} ago"
        if snap.get("next_due_in_s") is not None:
            snap_text += f", next in {human_age(snap['next_due_in_s'])}"
        note = (
            b.get("error")
            or snap.get("fenced")
            or snap.get("gate")
            or (snap.get("phase") if snap.get("phase") not in {None, "ready"} else "")
            or (last.get("reason") if last.get("result") == "failed" else "")
            or ""
        )
        state = b.get("state", "?")
        color = (
            "green"
            if state == "RUNNING"
            else ("red" if state in {"FATAL", "BACKOFF", "EXITED"} else "yellow")
        )
        table.add_row(
            b["name"],
            f"[{color}]{state}[/{color}]",
            str(b.get("pid") or "-"),
            human_age(b.get("uptime_s")),
            str(b.get("restarts", 0)),
            human_age(hermes.get("heartbeat_age_s")) if hermes.get("heartbeat_age_s") is not None else "-",
            snap_text,
            str(note),
        )
    con.print(table)
    if "leases" in d:
        con.print(f"leases in use: {len(d['leases'])}")
    if d.get("cron"):
        from flared.cron import render_status as render_cron

        render_cron(con, d["cron"])


def cmd_reload(args: argparse.Namespace) -> int:
    from flared.client import ControlClient
    from flared.loader import ConfigError, find_config, load_config
    from flared.reload import guess_socket

    try:
        client = client_for(load_config(getattr(args, "config", None), check_state_dir=False))
    except ConfigError:  # the daemon still reloads, so it logs and reports the error in its status
        client = ControlClient(guess_socket(find_config(getattr(args, "config", None))))
    try:
        data = client.request("POST", "/reload", timeout=60)
    except DaemonNotRunning:
        raise CommandError("the daemon is not running (start it with `flared up`)") from None
    except ControlError as exc:
        emit(args, exc.body, _render_reload)
        return EXIT_INVALID if exc.status == 400 else EXIT_FAILED
    emit(args, data, _render_reload)
    return EXIT_OK


def _render_reload(con: Console, d: dict[str, Any]) -> None:
    if d.get("errors"):
        for e in d["errors"]:
            con.print(f"{e['file']}:{e['line']}:{e['col']}: {e['path']}: {e['message']}")
        con.print("[red]not applied[/red]; the running config is unchanged")
    elif d.get("unchanged"):
        con.print("config unchanged")
    else:
        con.print(f"[green]applied[/green] {str(d.get('config_digest', ''))[:12]}")
        for line in d.get("changes", []):
            con.print(f"  {line}")


# --------------------------------------------------------------------------- render


def cmd_render(args: argparse.Namespace) -> int:
    if args.what == "supervisord":
        from flared.supervisor import Layout, render_supervisord_conf

        if args.image:
            print(image_supervisord_conf(), end="")
            return EXIT_OK
        loaded = load_or_exit(args, check_state_dir=False)
        from flared.supervisor import flared_command

        print(
            render_supervisord_conf(Layout(loaded.state_dir), flared_cmd=flared_command(loaded.path)), end=""
        )
        return EXIT_OK
    from flared.optional import optional_import

    wrangler = optional_import("flared.wrangler")
    if wrangler is None:
        raise CommandError("rendering wrangler.toml is not available in this build", EXIT_FAILED)
    from flared.commands.common import print_config_errors
    from flared.loader import ConfigError

    try:  # secrets live in Cloudflare: rendering needs none of them
        loaded = wrangler.load_for_render(getattr(args, "config", None))
    except ConfigError as exc:
        print_config_errors(exc, False)
        raise SystemExit(EXIT_INVALID) from None
    print(wrangler.render(loaded), end="")
    return EXIT_OK


IMAGE_STATE_DIR = Path("/var/lib/hermes-flare")
IMAGE_CONFIG = Path("/etc/hermes-flare/hermes-flare.yaml")


def image_supervisord_conf() -> str:
    """The committed `supervisord/supervisord.conf`: the Agent container's paths."""
    from flared.supervisor import Layout, render_supervisord_conf

    return render_supervisord_conf(
        Layout(IMAGE_STATE_DIR),
        flared_cmd=["/opt/hermes-flare/.venv/bin/flared", "run", "-c", str(IMAGE_CONFIG)],
        stopwaitsecs=90,
    )


__all__ = ["EXIT_FAILED", "EXIT_INVALID", "register"]
