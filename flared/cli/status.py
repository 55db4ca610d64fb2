"""`flared status`, `flared reload`, `flared restart`: ask the running daemon, even when the file is broken.

The daemon is found from the config path alone (:mod:`flared.cli.remote`),
so these work while an edit has broken the file and start in tens of
milliseconds. Only when no daemon answers is the file loaded (offline
status).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flared.cli.common import (
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    CommandError,
    Subparsers,
    add_config_arg,
    add_json_arg,
    emit,
    load_or_exit,
)
from flared.cli.remote import connect
from flared.cli.text import Out, human_age
from flared.config.units import human_bytes
from flared.control.client import ConnectionLost, ControlError, DaemonNotRunning
from flared.snapshots.final import NOT_SAVED

_READINESS_STYLE = {
    "ready": "green",
    "starting": "yellow",
    "unresponsive": "red",
    "failed": "red",
    "stopped": "dim",
}


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "status",
        help="bots, gateway readiness, snapshots, leases, config digest",
        description="Show what the running daemon does: each bot's gateway (ready, starting or "
        "failed, with the last error and the log to read), its API URL, the restore at boot, "
        "snapshots, leases and the config it runs. Works while the config file is broken (the "
        "daemon keeps its last good config). Without a running daemon, shows the config's bots as "
        "stopped and what the last stop did.",
    )
    add_config_arg(p)
    add_json_arg(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser(
        "reload",
        help="re-read hermes-flare.yaml in the running daemon",
        description="Ask the running daemon to re-read its config file now (it also watches the "
        "file). A file that does not validate is reported with FILE:LINE and not applied; the "
        "running config stays.",
    )
    add_config_arg(p)
    add_json_arg(p)
    p.set_defaults(func=cmd_reload)

    p = sub.add_parser(
        "restart",
        help="restart a bot's gateway (also one that failed and waits)",
        description="Restart a bot's Hermes gateway now. A gateway that failed (it exited 78, or "
        "kept exiting and is backed off) is started again at once.",
    )
    add_config_arg(p)
    add_json_arg(p)
    p.add_argument("--bot", help="the bot (required when there are several)")
    p.set_defaults(func=cmd_restart)


# ---------------------------------------------------------------------- status


def cmd_status(args: argparse.Namespace) -> int:
    remote = connect(args, probe=False)
    data: dict[str, Any] | None = None
    if remote is not None:
        try:
            data = remote.client.request("GET", "/status", timeout=10)
        except (DaemonNotRunning, ConnectionLost):
            data = None
        except ControlError as exc:
            raise CommandError(f"the daemon answered {exc.status}: {exc}") from None
    if data is None:
        data = offline_status(args)
    else:
        data["daemon"] = "running"
    emit(args, data, render_status)
    return EXIT_OK


def offline_status(args: argparse.Namespace) -> dict[str, Any]:
    loaded = load_or_exit(args, check_state_dir=False)
    out: dict[str, Any] = {
        "daemon": "not running",
        "config": {"path": str(loaded.path), "digest": loaded.digest, "error": None},
        "state_dir": str(loaded.state_dir),
        "bots": [
            {
                "name": b.name,
                "enabled": b.enabled,
                "group": b.group,
                "state": "STOPPED",
                "readiness": "stopped",
                "pid": None,
                "api": f"http://{b.api.host}:{b.api.port}/v1" if b.api is not None else None,
            }
            for b in loaded.config.bots
        ],
    }
    last_stop = read_stop_record(loaded.state_dir)
    if last_stop is not None:
        out["last_stop"] = last_stop
    return out


def read_stop_record(state_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((state_dir / "last-stop.json").read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


_ID_TIME = re.compile(r"^(\d{8}T\d{6})Z")


def snapshot_age(snapshot_id: str | None, at: str | None = None) -> float | None:
    """How old a snapshot was at ``at`` (default now), from the time in its id."""
    m = _ID_TIME.match(snapshot_id or "")
    if not m:
        return None
    taken = datetime.strptime(m.group(1), "%Y%m%dT%H%M%S").replace(tzinfo=UTC)
    ref = datetime.now(UTC)
    if at:
        with contextlib.suppress(ValueError):
            ref = datetime.fromisoformat(at)
    return max(0.0, (ref - taken).total_seconds())


def restore_line(r: dict[str, Any] | None) -> str | None:
    """What the boot (or last) restore did, in one line."""
    if not r:
        return None
    result = r.get("result")
    if result == "restored":
        age = snapshot_age(r.get("id"), r.get("at"))
        old = f" (taken {human_age(age)} before)" if age is not None else ""
        extra = f", after skipping {len(r['fallback'])} bad one(s)" if r.get("fallback") else ""
        return f"restored snapshot {r.get('id')}{old} in {r.get('seconds')} s{extra}"
    if result == "empty":
        return "started fresh: the store held no snapshot"
    if result == "kept local state":
        return "kept the local Hermes home (at least as new as the store's latest)"
    if result == "failed":
        return f"restore failed: {r.get('error')}"
    return str(result) if result else None


def _snapshot_cell(snap: dict[str, Any]) -> str:
    last = snap.get("last") or {}
    last_ok = snap.get("last_ok") or {}
    text = "-"
    if last_ok.get("id"):
        text = f"{last_ok['id']} ({human_age(last_ok.get('age_s'))} ago)"
    if last and last.get("result") not in {"ok", "unchanged"}:
        text = f"{last.get('result')}" + (f"; last ok {text}" if text != "-" else "")
    if snap.get("running"):
        text += ", running now"
    elif snap.get("next_due_in_s") is not None:
        text += f", next in {human_age(snap['next_due_in_s'])}"
    return text


def render_status(out: Out, d: dict[str, Any]) -> None:
    cfg = d.get("config") or {}
    running = d.get("daemon", "running") == "running"
    head = out.style("flared", "bold") + " " + (out.style("running", "green") if running else "not running")
    fl = d.get("flared") or {}
    if fl:
        head += f" (pid {fl.get('pid')}, up {human_age(fl.get('uptime_s'))})"
    out.print(f"{head}   config {str(cfg.get('digest', ''))[:12]} {cfg.get('path')}")
    if cfg.get("error"):
        out.print(
            out.style("the config file on disk was NOT applied", "red")
            + "; the daemon runs the config above:"
        )
        for line in cfg["error"]:
            out.print(f"  {line}")
    rows = []
    details: list[tuple[str, list[str]]] = []
    for b in d.get("bots", []):
        ready = str(b.get("readiness") or b.get("state", "?")).lower()
        cell = out.style(ready, _READINESS_STYLE.get(ready, "yellow"))
        if b.get("detail") and ready == "starting":
            cell += f" ({b['detail']})"
        snap = b.get("snapshots") or {}
        rows.append(
            [
                b["name"],
                cell,
                str(b.get("api") or "-"),
                str(b.get("pid") or "-"),
                human_age(b.get("uptime_s")),
                str(b.get("restarts", 0)) if running else "-",
                _snapshot_cell(snap) if snap else "-",
                _stream_cell(out, b.get("stream")),
            ]
        )
        notes = _bot_notes(out, b, snap)
        if notes:
            details.append((b["name"], notes))
    out.table(["bot", "gateway", "api", "pid", "uptime", "restarts", "last snapshot", "stream"], rows)
    for name, notes in details:
        out.print(f"{name}:")
        for n in notes:
            out.print(f"  {n}")
    if d.get("operator"):
        op = d["operator"]
        out.print(
            f"operator: {str(op.get('state', '?')).lower()}"
            + (f" (pid {op['pid']})" if op.get("pid") else "")
        )
    if "leases" in d:
        out.print(f"leases in use: {len(d['leases'])}")
    admin = d.get("admin") or {}
    if admin.get("url"):
        out.print(f"admin page: {admin['url']} (`flared admin` prints a sign-in link)")
    elif admin.get("error"):
        out.print(out.style(str(admin["error"]), "yellow"))
    if d.get("cron"):
        render_cron(out, d["cron"])
    if not running:
        _render_last_stop(out, d.get("last_stop"))
        out.print("start it with `flared up`")


def _bot_notes(out: Out, b: dict[str, Any], snap: dict[str, Any]) -> list[str]:
    notes = []
    if b.get("readiness") == "failed" or (b.get("error") and b.get("readiness") != "ready"):
        failure = b.get("failure") or {}
        what = "gateway failed"
        if failure.get("kind") == "fatal":
            how = f"exit {failure['exit_code']}" if failure.get("exit_code") else "at start-up"
            what += f" ({how}; waits for a config change or a restart)"
        elif failure.get("kind") == "loop":
            what += f" (kept exiting; retry in {human_age(failure.get('retry_in_s'))})"
        notes.append(out.style(f"{what}: {b.get('error') or b.get('detail')}", "red"))
        if b.get("hint"):
            notes.append(f"fix: {b['hint']}")
        if b.get("log"):
            notes.append(f"log: {b['log']} (`flared logs --bot {b['name']}`)")
    if b.get("readiness") == "unresponsive":
        notes.append(out.style(f"gateway {b.get('detail')}", "red"))
    revived = (b.get("liveness") or {}).get("restarts")
    if revived:
        n = revived["count"]
        notes.append(
            out.style(
                f"restarted {n} time{'s' if n != 1 else ''} because it stopped answering (last "
                f"{human_age(revived.get('last_s_ago'))} ago: {revived.get('reason')})",
                "yellow",
            )
        )
    line = restore_line(snap.get("restore"))
    if line:
        notes.append(line)
    for key in ("fenced", "gate", "shrunk"):
        if snap.get(key):
            notes.append(out.style(f"snapshots: {snap[key]}", "yellow"))
    last = snap.get("last") or {}
    if last.get("result") == "failed" and last.get("reason") and last["reason"] != snap.get("shrunk"):
        notes.append(out.style(f"last snapshot failed: {last['reason']}", "yellow"))
    notes += _stream_notes(out, b.get("stream"))
    return notes


def _stream_cell(out: Out, stream: dict[str, Any] | None) -> str:
    """The databases' replication: the worst lag, `stalled`, `paused` or `off`."""
    if not stream:
        return "-"
    if not stream.get("enabled"):
        return "off"
    if not stream.get("streaming"):
        return out.style("paused", "yellow")
    dbs = stream.get("databases") or []
    if stream.get("stalled"):
        return out.style("stalled", "red")
    lags = [d["lag_s"] for d in dbs if d.get("lag_s") is not None]
    if not lags:
        return "starting"
    return out.style(f"{max(lags):.1f} s behind", "green")


def _stream_notes(out: Out, stream: dict[str, Any] | None) -> list[str]:
    """Why a stream is paused, and each stalled database with its last error."""
    if not stream or not stream.get("enabled"):
        return []
    if not stream.get("streaming"):
        return [out.style(f"stream paused: {stream.get('reason') or 'not streamed yet'}", "yellow")]
    notes = []
    for d in stream.get("databases") or []:
        if d.get("state") == "stalled":
            lag = f" ({d['lag_s']:.0f} s behind)" if d.get("lag_s") is not None else ""
            notes.append(out.style(f"stream of {d['db']} stalled{lag}: {d.get('error')}", "red"))
    return notes


def _render_last_stop(out: Out, rec: dict[str, Any] | None) -> None:
    if not rec:
        return
    out.print(f"last stopped {str(rec.get('stopped_at', ''))[:19].replace('T', ' ')} UTC")
    for line in final_snapshot_lines(rec.get("final_snapshots") or []):
        out.print(f"  {line}")


def final_snapshot_lines(finals: list[dict[str, Any]]) -> list[str]:
    """One line per bot: what its final snapshot did (id and size)."""
    lines = []
    for r in finals:
        bot, result = r.get("bot"), r.get("result")
        if result == "ok":
            lines.append(
                f"{bot}: final snapshot {r.get('id')}: {human_bytes(r.get('bytes_uploaded'))} uploaded "
                f"in {r.get('seconds')} s"
            )
        elif result == "unchanged":
            lines.append(f"{bot}: final snapshot: unchanged since {r.get('id')}, nothing uploaded")
        elif result in NOT_SAVED:
            lines.append(
                f"{bot}: final snapshot {result.upper()}: {r.get('reason') or r.get('error') or '-'}"
            )
        else:
            lines.append(f"{bot}: no final snapshot ({result}): {r.get('reason') or r.get('error') or '-'}")
    return lines


def render_cron(out: Out, cron: dict[str, Any]) -> None:
    """The cron part of `flared status` (human form)."""
    jobs = cron.get("jobs") or []
    if not jobs:
        return
    rows = []
    for j in jobs:
        last = j.get("last_result")
        result = last.get("result") if isinstance(last, dict) else last
        note = j.get("error") or j.get("warning") or j.get("note") or ""
        if isinstance(last, dict) and last.get("result") != "ok":
            note = note or last.get("error") or last.get("reason") or ""
        if not j.get("enabled", True):
            note = "disabled"
        kind = j["kind"] if j["kind"] == "agent" else str(j.get("action"))
        if j.get("source") == "hermes":
            kind = "agent's own"  # made in chat with the cronjob tool, not in the YAML
        rows.append(
            [
                j["name"],
                f"{kind} ({j['bot']})" if j.get("bot") else kind,
                j["schedule"],
                str(j.get("next_run") or "-")[:19],
                str(j.get("last_run") or "-")[:19],
                str(result or "-"),
                str(note),
            ]
        )
    out.table(["cron job", "kind", "schedule", "next run", "last run", "result", "note"], rows)


# ---------------------------------------------------------------------- reload


def cmd_reload(args: argparse.Namespace) -> int:
    remote = connect(args, probe=False)
    if remote is None:
        raise CommandError("the daemon is not running (start it with `flared up`)")
    try:
        data = remote.client.request("POST", "/reload", timeout=60)
    except (DaemonNotRunning, ConnectionLost):
        raise CommandError("the daemon is not running (start it with `flared up`)") from None
    except ControlError as exc:
        emit(args, exc.body, _render_reload)
        return EXIT_INVALID if exc.status in {400, 409} else EXIT_FAILED
    emit(args, data, _render_reload)
    return EXIT_OK


def _render_reload(out: Out, d: dict[str, Any]) -> None:
    if d.get("errors"):
        for e in d["errors"]:
            if e.get("line"):
                out.print(f"{e['file']}:{e['line']}:{e['col']}: {e['path']}: {e['message']}")
            else:
                out.print(f"{e['file']}: {e['message']}")
        out.print(out.style("not applied", "red") + "; the running config is unchanged")
    elif d.get("unchanged"):
        out.print("config unchanged")
    else:
        out.print(f"{out.style('applied', 'green')} {str(d.get('config_digest', ''))[:12]}")
        for line in d.get("changes", []):
            out.print(f"  {line}")


# ---------------------------------------------------------------------- restart


def cmd_restart(args: argparse.Namespace) -> int:
    remote = connect(args)
    if remote is None:
        raise CommandError("the daemon is not running (start it with `flared up`)")
    bot = remote.pick_bot(args.bot)
    try:
        data = remote.request("POST", f"/bots/{bot}/restart", timeout=120)
    except ControlError as exc:
        raise CommandError(str(exc)) from None
    emit(
        args,
        data,
        lambda out, d: out.print(f"{bot}: gateway restarted (`flared status` shows when it is ready)"),
    )
    return EXIT_OK
