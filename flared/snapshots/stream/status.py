"""What each streamed database has shipped: asked of Litestream's control socket.

Litestream refreshes a database's ``last_sync_at`` after every successful
upload to the replica, once per sync interval even when nothing changed, so
its age is the replication lag a lost machine would cost at most. A sync
that fails (store unreachable, credentials) does not move it: the lag grows
and, past ``snapshots.stream.stall_after``, the database is *stalled*, which
`flared status`, `--json` and the admin page show with Litestream's own last
error. :func:`database_states` is pure; :func:`observe` is the I/O.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flared.config.models import StreamConfig
from flared.control.client import ConnectionLost, DaemonNotRunning, _exchange


class LitestreamUnavailable(Exception):
    """Litestream's control socket did not answer."""


def ask(socket: Path, path: str, timeout: float = 2.0) -> Any:
    """GET `path` of Litestream's control API; its JSON answer."""
    request = f"GET {path} HTTP/1.1\r\nHost: litestream\r\nConnection: close\r\n\r\n".encode()
    try:
        status, body = _exchange(str(socket), request, timeout)
    except (DaemonNotRunning, ConnectionLost, OSError) as exc:
        raise LitestreamUnavailable(str(exc) or type(exc).__name__) from None
    if status != 200:
        raise LitestreamUnavailable(f"Litestream answered {status} to {path}")
    return json.loads(body or b"null")


def txid(socket: Path, db: Path) -> int | None:
    """The newest transaction Litestream has taken from a database (its position), if it streams it."""
    try:
        return int(ask(socket, "/txid?path=" + urllib.parse.quote(str(db)))["txid"])
    except (LitestreamUnavailable, KeyError, TypeError, ValueError):
        return None


def observe(socket: Path) -> dict[str, dict[str, Any]]:
    """Absolute database path -> what Litestream says of it (`/list` merged with `/debug/sync-status`)."""
    listed = ask(socket, "/list").get("databases") or []
    out: dict[str, dict[str, Any]] = {str(d["path"]): dict(d) for d in listed if d.get("path")}
    try:
        diags = ask(socket, "/debug/sync-status").get("databases") or []
    except LitestreamUnavailable:
        diags = []
    for d in diags:
        if d.get("path") in out:
            out[d["path"]].update({k: d[k] for k in ("txid", "error") if d.get(k)})
    return out


def _epoch(text: str | None) -> float | None:
    if not text:
        return None
    try:  # Go writes nanoseconds: Python's fromisoformat takes at most microseconds
        head, _, frac = text.rstrip("Z").partition(".")
        return datetime.fromisoformat(f"{head}.{frac[:6] or '0'}+00:00").timestamp()
    except ValueError:
        return None


def database_states(
    home: Path,
    seen: Mapping[str, Mapping[str, Any]],
    *,
    now: float,
    stall_after: float,
    started_at: float | None,
    expected: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """Pure: one entry per database of `home` (`rel`, `state`, `lag_s`, `last_sync_at`, `txid`, `error`).

    `state` is ``ok``, ``starting`` (not synced yet, within `stall_after` of Litestream's
    start) or ``stalled``. `expected` names databases found on disk that Litestream should
    stream: one it does not know is stalled too once `stall_after` has passed.
    """
    prefix = str(home) + "/"
    rows: dict[str, dict[str, Any]] = {}
    for path, info in seen.items():
        if path.startswith(prefix):
            rows[path[len(prefix) :]] = dict(info)
    for rel in expected:
        rows.setdefault(rel, {})
    out = []
    for rel in sorted(rows):
        info = rows[rel]
        synced = _epoch(info.get("last_sync_at"))
        lag = round(max(0.0, now - synced), 1) if synced is not None else None
        young = started_at is not None and now - started_at < stall_after
        if lag is not None and lag <= stall_after:
            state = "ok"
        elif lag is None and young:
            state = "starting"
        else:
            state = "stalled"
        error = info.get("error") or None
        if state == "stalled" and error is None:
            error = (
                f"nothing reached the store for {lag:.0f} s"
                if lag is not None
                else "Litestream is not streaming it"
            )
        out.append(
            {
                "db": rel,
                "state": state,
                "lag_s": lag,
                "last_sync_at": info.get("last_sync_at"),
                "txid": info.get("txid"),
                "error": error,
            }
        )
    return out


def report(
    cfg_stream: StreamConfig,
    homes: Mapping[str, Path],
    streamed: Iterable[str],
    why_not: Mapping[str, str],
    proc: Mapping[str, Any] | None,
    socket: Path,
    now: float,
) -> dict[str, dict[str, Any]]:
    """Bot -> its stream's status for `flared status` (`homes`: every bot of this container).

    `why_not` says why a bot that is not streamed is not (held for a restore, not restored
    yet, fenced); `proc` is supervisord's info of the Litestream program.
    """
    if not cfg_stream.enabled:
        return {b: {"enabled": False} for b in homes}
    streamed = set(streamed)
    running = proc is not None and proc.get("statename") == "RUNNING"
    seen: dict[str, dict[str, Any]] = {}
    problem = None
    if not streamed:
        pass
    elif not running:
        state = proc.get("statename") if proc else "not started"
        problem = f"Litestream is not running ({str(state).lower()})"
    else:
        try:
            seen = observe(socket)
        except LitestreamUnavailable as exc:
            problem = f"Litestream does not answer on its control socket: {exc}"
    started = float(proc["start"]) if running and proc and proc.get("start") else None
    out: dict[str, dict[str, Any]] = {}
    for bot, home in homes.items():
        if bot not in streamed:
            out[bot] = {"enabled": True, "streaming": False, "reason": why_not.get(bot), "databases": []}
            continue
        expected = [p.name for p in home.glob(cfg_stream.pattern) if p.is_file()] if home.is_dir() else []
        dbs = database_states(
            home, seen, now=now, stall_after=cfg_stream.stall_after, started_at=started, expected=expected
        )
        if problem is not None:
            for d in dbs:
                d.update(state="stalled", error=problem)
        out[bot] = {
            "enabled": True,
            "streaming": True,
            "stalled": any(d["state"] == "stalled" for d in dbs),
            "error": problem,
            "databases": dbs,
        }
    return out


def position(socket: Path, home: Path) -> dict[str, Any]:
    """The stream's position now, for a snapshot's manifest: the time, and each database's TXID
    when Litestream answers (a restore to this point uses the TXIDs, else the time)."""
    at = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    try:
        seen = observe(socket)
    except LitestreamUnavailable:
        seen = {}
    prefix = str(home) + "/"
    txids = {
        path[len(prefix) :]: int(info["txid"])
        for path, info in seen.items()
        if path.startswith(prefix) and info.get("txid")
    }
    return {"at": at, "txids": txids}
