"""Operator commands: parsing plain words into a command, and rendering answers. Pure."""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from flared.config.units import human_bytes

#: name -> (usage, minimum args, maximum args, one-line help)
SPEC: dict[str, tuple[str, int, int, str]] = {
    "help": ("help", 0, 1, "this list"),
    "status": ("status", 0, 0, "every bot: gateway, uptime, restarts, snapshots, restore, leases, config"),
    "snapshot": ("snapshot [bot]", 0, 1, "snapshot one bot, or all of them, now"),
    "snapshots": ("snapshots <bot>", 1, 1, "a bot's snapshots, newest first"),
    "restore": ("restore <bot> [id]", 1, 2, "restore a bot from its latest (or the given) snapshot"),
    "restart": ("restart <bot>", 1, 1, "restart a bot's gateway"),
    "logs": ("logs <bot> [lines]", 1, 2, "the tail of a bot's gateway log (secrets redacted)"),
    "leases": ("leases", 0, 0, "sandbox leases in use"),
    "reload": ("reload", 0, 0, "re-read hermes-flare.yaml"),
    "config": ("config", 0, 0, "the running config, secrets redacted"),
}
MAX_LOG_LINES = 2000
_MENTION = re.compile(r"<@[A-Z0-9]+>")


class ParseError(Exception):
    """Not a command: the message says what to type instead."""


@dataclass(frozen=True)
class Command:
    name: str
    args: list[str] = field(default_factory=list)


def parse(text: str) -> Command:
    words = _MENTION.sub(" ", text or "").split()
    if words and words[0] == "/flare":
        words = words[1:]
    if not words:
        return Command("help")
    name, args = words[0].lower(), words[1:]
    if name not in SPEC:
        close = difflib.get_close_matches(name, list(SPEC), n=1)
        hint = f" Did you mean `{close[0]}`?" if close else ""
        raise ParseError(f"I don't know `{name}`.{hint} Type `help` for the list.")
    usage, lo, hi, _ = SPEC[name]
    if not lo <= len(args) <= hi:
        raise ParseError(f"Usage: `{usage}`")
    if name == "logs" and len(args) == 2 and not (args[1].isdigit() and 0 < int(args[1]) <= MAX_LOG_LINES):
        raise ParseError(f"`lines` must be a number from 1 to {MAX_LOG_LINES}")
    return Command(name, args)


def help_text() -> str:
    rows = [f"• `{usage}`: {text}" for usage, _, _, text in SPEC.values()]
    return "*hermes-flare operator*: DM me or use `/flare <command>`.\n" + "\n".join(rows)


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


def render_status(st: dict[str, Any]) -> str:
    cfg = st.get("config") or {}
    lines = [
        f"*flared* up {_age((st.get('flared') or {}).get('uptime_s'))}, config `{str(cfg.get('digest', ''))[:12]}` "
        f"loaded {str(cfg.get('loaded_at', ''))[:19].replace('T', ' ')} UTC"
    ]
    if cfg.get("error"):
        lines.append(":warning: last config edit NOT applied: " + "; ".join(str(e) for e in cfg["error"]))
    for b in st.get("bots", []):
        snap = b.get("snapshots") or {}
        last, last_ok, restore = snap.get("last") or {}, snap.get("last_ok") or {}, snap.get("restore") or {}
        state = b.get("state", "?")
        icon = ":large_green_circle:" if state == "RUNNING" else ":red_circle:"
        parts = [
            f"{icon} *{b['name']}* {state}",
            f"up {_age(b.get('uptime_s'))}",
            f"restarts {b.get('restarts', 0)}",
        ]
        if last:
            when = f" ({last_ok.get('id')}, {_age(last_ok.get('age_s'))} ago)" if last_ok else ""
            reason = (
                f": {last.get('reason')}" if last.get("result") in {"failed", "fenced", "skipped"} else ""
            )
            parts.append(f"last snapshot {last.get('result')}{when}{reason}")
        else:
            parts.append("no snapshot yet")
        if restore:
            parts.append(
                f"restore {restore.get('result')}" + (f" {restore['id']}" if restore.get("id") else "")
            )
        if snap.get("phase") not in (None, "ready"):
            parts.append(f"phase: {snap['phase']}")
        if snap.get("fenced"):
            parts.append(f":no_entry: fenced: {snap['fenced']}")
        if b.get("error"):
            parts.append(f":warning: {b['error']}")
        lines.append(", ".join(parts))
    leases = st.get("leases")
    if leases is not None:
        per_bot: dict[str, int] = {}
        for x in leases:
            per_bot[str(x.get("bot"))] = per_bot.get(str(x.get("bot")), 0) + 1
        detail = ", ".join(f"{b} {n}" for b, n in sorted(per_bot.items()))
        lines.append(f"sandbox leases in use: {len(leases)}" + (f" ({detail})" if detail else ""))
    return "\n".join(lines)


def render_snapshots(bot: str, snaps: list[dict[str, Any]]) -> str:
    if not snaps:
        return f"{bot} has no snapshots yet."
    rows = [
        f"`{s['id']}`  {str(s.get('created_at', ''))[:16].replace('T', ' ')}  {human_bytes(s.get('packed_size'))}"
        + ("  *latest*" if s.get("latest") else "")
        for s in snaps[:20]
    ]
    more = f"\n…and {len(snaps) - 20} older" if len(snaps) > 20 else ""
    return f"*{bot}* snapshots, newest first:\n" + "\n".join(rows) + more


def render_snapshot_results(results: list[dict[str, Any]]) -> str:
    out = []
    for r in results:
        if r["result"] == "ok":
            out.append(
                f":white_check_mark: {r['bot']}: snapshot `{r['id']}` ({human_bytes(r.get('bytes_uploaded'))} uploaded)"
            )
        elif r["result"] == "unchanged":
            out.append(f":white_check_mark: {r['bot']}: unchanged since `{r.get('id')}`, nothing uploaded")
        else:
            out.append(f":x: {r['bot']}: {r['result']}: {r.get('reason') or r.get('error')}")
    return "\n".join(out) or "no bots to snapshot"


def render_leases(leases: list[dict[str, Any]]) -> str:
    if not leases:
        return "No sandbox leases in use."
    rows = [
        f"`{x.get('id')}` bot {x.get('bot')}, {x.get('mode', '')} {x.get('provider', '')}, "
        f"session {x.get('session_key') or x.get('session') or '-'}"
        + (", busy" if x.get("busy") else "")
        + (
            f", idle expiry in {_age(x['idle_expires_in_s'])}"
            if x.get("idle_expires_in_s") is not None
            else ""
        )
        for x in leases
    ]
    return f"{len(leases)} lease(s):\n" + "\n".join(rows)


def render_config(cfg: dict[str, Any]) -> str:
    body = yaml.safe_dump(cfg.get("config"), sort_keys=False)
    return f"config `{str(cfg.get('digest', ''))[:12]}` ({cfg.get('path')}), secrets redacted:\n```{body}```"


def restore_preview(bot: str, snapshot: dict[str, Any] | None, bot_status: dict[str, Any] | None) -> str:
    """What a restore would replace, for the confirmation prompt."""
    if snapshot is None:
        return f"{bot} has no such snapshot."
    snap = (bot_status or {}).get("snapshots") or {}
    last_ok = snap.get("last_ok") or {}
    current = (
        f"its current Hermes home (last snapshot `{last_ok.get('id')}`, {_age(last_ok.get('age_s'))} ago; "
        "changes since then are kept only in home.previous)"
        if last_ok
        else "its current Hermes home (kept as home.previous)"
    )
    which = "the latest snapshot" if snapshot.get("latest") else "an older snapshot"
    return (
        f"Restore *{bot}* from {which} `{snapshot['id']}` ({str(snapshot.get('created_at', ''))[:16].replace('T', ' ')}, "
        f"{human_bytes(snapshot.get('packed_size'))})? This stops its gateway and replaces {current}."
    )


def render_reload(res: dict[str, Any]) -> str:
    """`POST /reload`'s answer: applied (what changed, restarted), unchanged, or refused with where."""
    if res.get("unchanged"):
        return "Config unchanged; nothing to do."
    if not res.get("applied"):
        errors = "\n".join(
            f"{e.get('file')}:{e.get('line')}:{e.get('col')}: {e.get('path')}: {e.get('message')}"
            for e in res.get("errors") or []
        )
        return f":x: the config was NOT applied (the running one stays):\n```{errors or res.get('error')}```"
    lines = [f":white_check_mark: config `{str(res.get('config_digest', ''))[:12]}` applied."]
    changes = res.get("changes") or []
    if changes:
        lines.append("Changes:\n" + "\n".join(f"• {c}" for c in changes[:20]))
        if len(changes) > 20:
            lines.append(f"…and {len(changes) - 20} more")
    for key, label in (("restarted", "restarted"), ("started", "started"), ("stopped", "stopped")):
        if res.get(key):
            lines.append(f"{label}: {', '.join(res[key])}")
    for where, error in (res.get("failures") or {}).items():
        lines.append(f":warning: {where}: {error}")
    return "\n".join(lines)
