"""Core routes: health, status, the CLI's context, config, reload, restart, logs, shutdown."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from flared.api.chat import bot_endpoint
from flared.build import release
from flared.config.redact import redact_text, redacted_config
from flared.control.server import HTTPError, Request, Response, Router
from flared.gateways import Gateways
from flared.hermes.paths import BotPaths
from flared.policy.reload import Reloader

MAX_LOG_LINES = 5000
#: At most this much of a log per `GET /logs?offset=` (a follower asks again).
MAX_LOG_CHUNK = 1024 * 1024
LOG_SOURCES = ("flared", "supervisord", "gateway")


class DaemonView(Protocol):
    """What the core routes read from the running daemon as a whole."""

    @property
    def last_tick(self) -> datetime | None: ...

    def status(self) -> dict[str, Any]: ...

    def shutdown_all(self) -> int:
        """Ask supervisord to stop everything (gateways, then flared); returns its pid."""
        ...


def register(router: Router, daemon: DaemonView, gateways: Gateways, reloader: Reloader) -> None:
    live = reloader.live

    def healthz(req: Request) -> dict[str, Any]:
        cfg = live.config
        return {
            "ok": True,
            "version": release(),
            "config_digest": live.loaded.digest,
            "last_tick": daemon.last_tick.isoformat() if daemon.last_tick else None,
            "group": os.environ.get("FLARE_GROUP") or (cfg.bots[0].group if cfg.bots else "default"),
        }

    def status(req: Request) -> dict[str, Any]:
        return daemon.status()

    def context(req: Request) -> dict[str, Any]:
        """What a CLI command needs before it acts: cheap, no secrets, no store or supervisord calls."""
        cfg = live.config
        here = {b.name for b in gateways.enabled_bots()}
        return {
            "version": release(),
            "pid": os.getpid(),
            "state_dir": str(cfg.state_dir),
            "config": {
                "path": str(live.loaded.path),
                "digest": live.loaded.digest,
                "problems": [str(i) for i in live.errors] if live.errors else [],
            },
            "bots": [
                {
                    "name": b.name,
                    "enabled": b.name in here,
                    "api": f"http://{b.api.host}:{b.api.port}/v1" if b.api is not None else None,
                }
                for b in cfg.bots
            ],
        }

    def bot_api(req: Request) -> dict[str, Any]:
        """Where a bot's local API listens and its key: what `flared chat` needs (admin only)."""
        return bot_endpoint(live, req.params["name"])._asdict()

    def shutdown(req: Request) -> dict[str, Any]:
        return {"stopping": True, "supervisord_pid": daemon.shutdown_all(), "pid": os.getpid()}

    def get_config(req: Request) -> dict[str, Any]:
        return {
            "path": str(live.loaded.path),
            "digest": live.loaded.digest,
            "loaded_at": live.loaded.loaded_at.isoformat(),
            "error": [i.as_dict() for i in live.errors] if live.errors else None,
            "config": redacted_config(live.config),
        }

    def reload(req: Request) -> Response:
        result = reloader.from_disk()
        return Response(200 if not result.get("errors") else 400, result)

    def restart(req: Request) -> dict[str, Any]:
        name = req.params["name"]
        if name not in live.config.bot_names:
            raise HTTPError(404, f"no bot named {name!r}")
        gateways.restart(name)
        return {"restarted": name}

    def logs(req: Request) -> Response:
        """A log's last lines, or (``offset=``) what was appended since: flared's, supervisord's, a gateway's."""
        cfg = live.config
        source = req.query.get("source") or "gateway"
        if source not in LOG_SOURCES:
            raise HTTPError(400, f"source must be one of {', '.join(LOG_SOURCES)}")
        bot = None
        if source == "gateway":
            bot = req.query.get("bot") or (cfg.bot_names or [""])[0]
            if bot not in cfg.bot_names:
                raise HTTPError(404, f"no bot named {bot!r} (bots: {', '.join(cfg.bot_names) or 'none'})")
            path = BotPaths.of(cfg.state_dir, bot).gateway_log
        else:
            path = gateways.layout.logs / f"{source}.log"
        try:
            lines = min(int(req.query.get("lines", "200")), MAX_LOG_LINES)
            offset = int(req.query["offset"]) if "offset" in req.query else None
        except ValueError:
            raise HTTPError(400, "lines and offset must be numbers") from None
        if offset is None:
            text, end = tail(path, lines), _size(path)
        else:
            text, end = read_from(path, offset)
        return Response(
            200,
            {
                "source": source,
                "bot": bot,
                "path": str(path),
                "lines": redact_text(text, cfg).splitlines() if text else [],
                "offset": end,
            },
        )

    def reconcile_plan(req: Request) -> dict[str, Any]:
        return {"actions": [{"action": type(a).__name__, "program": a.name} for a in gateways.plan()]}

    router.add("GET", "/healthz", healthz, public=True)
    router.add("GET", "/reconcile/plan", reconcile_plan)
    router.add("GET", "/status", status)
    router.add("GET", "/context", context)
    router.add("GET", "/bots/{name}/api", bot_api)
    router.add("POST", "/shutdown", shutdown)
    router.add("GET", "/config", get_config)
    router.add("POST", "/reload", reload)
    router.add("POST", "/bots/{name}/restart", restart)
    router.add("GET", "/logs", logs)


def tail(path: Any, lines: int) -> str:
    """Last ``lines`` lines of a file without reading all of it."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            size = fh.tell()
            block, data = 8192, b""
            while size > 0 and data.count(b"\n") <= lines:
                step = min(block, size)
                size -= step
                fh.seek(size)
                data = fh.read(step) + data
    except FileNotFoundError:
        return ""
    return b"\n".join(data.splitlines()[-lines:]).decode(errors="replace")


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def read_from(path: Path, offset: int) -> tuple[str, int]:
    """Whole lines appended after ``offset`` (from the start if the file was rotated or truncated)."""
    size = _size(path)
    if offset > size or offset < 0:
        offset = 0
    try:
        with open(path, "rb") as fh:
            fh.seek(offset)
            data = fh.read(MAX_LOG_CHUNK)
    except OSError:
        return "", offset
    cut = data.rfind(b"\n") + 1  # a line still being written waits for the next read
    if cut == 0 and len(data) < MAX_LOG_CHUNK:
        return "", offset
    if cut == 0:
        cut = len(data)
    return data[:cut].decode("utf-8", "replace"), offset + cut
