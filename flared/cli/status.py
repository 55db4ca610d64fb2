"""`flared status` and `flared reload`: ask the running daemon, even when the file is broken."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from flared.cli.common import (
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    CommandError,
    Subparsers,
    add_config_arg,
    add_json_arg,
    client_for,
    emit,
    human_age,
    print_config_errors,
)
from flared.config.loader import LoadedConfig
from flared.control.client import ControlError, DaemonNotRunning


def register(sub: Subparsers) -> None:
    p = sub.add_parser("status", help="bots, gateway states, snapshots, leases, config digest")
    add_config_arg(p)
    add_json_arg(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("reload", help="re-read hermes-flare.yaml in the running daemon")
    add_config_arg(p)
    add_json_arg(p)
    p.set_defaults(func=cmd_reload)


def cmd_status(args: argparse.Namespace) -> int:
    from flared.config.loader import ConfigError, find_config, load_config

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
    from flared.control.client import ControlClient
    from flared.control.locate import guess_socket

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
        render_cron(con, d["cron"])


def cmd_reload(args: argparse.Namespace) -> int:
    from flared.config.loader import ConfigError, find_config, load_config
    from flared.control.client import ControlClient
    from flared.control.locate import guess_socket

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


def render_cron(con: Console, cron: dict[str, Any]) -> None:
    """The cron part of `flared status` (human form)."""
    jobs = cron.get("jobs") or []
    if not jobs:
        return
    table = Table(box=None, pad_edge=False, title=None)
    for col in ("cron job", "kind", "schedule", "next run", "last run", "result", "note"):
        table.add_column(col)
    for j in jobs:
        last = j.get("last_result")
        result = last.get("result") if isinstance(last, dict) else last
        note = j.get("error") or j.get("warning") or j.get("note") or ""
        if isinstance(last, dict) and last.get("result") != "ok":
            note = note or last.get("error") or last.get("reason") or ""
        if not j.get("enabled", True):
            note = "disabled"
        kind = j["kind"] if j["kind"] == "agent" else str(j.get("action"))
        table.add_row(
            j["name"],
            f"{kind} ({j['bot']})" if j.get("bot") else kind,
            j["schedule"],
            str(j.get("next_run") or "-")[:19],
            str(j.get("last_run") or "-")[:19],
            str(result or "-"),
            str(note),
        )
    con.print(table)
