"""Core routes: health, status, config, reload, restart, logs, the reconcile plan."""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any, Protocol

from flared.config.redact import redact_text, redacted_config
from flared.control.server import HTTPError, Request, Response, Router
from flared.gateways import Gateways
from flared.policy.reload import Reloader

MAX_LOG_LINES = 5000


class DaemonView(Protocol):
    """What the core routes read from the running daemon as a whole."""

    @property
    def last_tick(self) -> datetime | None: ...

    def status(self) -> dict[str, Any]: ...


def register(router: Router, daemon: DaemonView, gateways: Gateways, reloader: Reloader) -> None:
    live = reloader.live

    def healthz(req: Request) -> dict[str, Any]:
        cfg = live.config
        return {
            "ok": True,
            "config_digest": live.loaded.digest,
            "last_tick": daemon.last_tick.isoformat() if daemon.last_tick else None,
            "group": os.environ.get("FLARE_GROUP") or (cfg.bots[0].group if cfg.bots else "default"),
        }

    def status(req: Request) -> dict[str, Any]:
        return daemon.status()

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
        cfg = live.config
        bot = req.query.get("bot") or (cfg.bot_names or [""])[0]
        if bot not in cfg.bot_names:
            raise HTTPError(404, f"no bot named {bot!r}")
        try:
            lines = min(int(req.query.get("lines", "200")), MAX_LOG_LINES)
        except ValueError:
            raise HTTPError(400, "lines must be a number") from None
        text = tail(gateways.log_file(bot), lines)
        return Response(200, {"bot": bot, "lines": redact_text(text, cfg).splitlines()})

    def reconcile_plan(req: Request) -> dict[str, Any]:
        return {"actions": [{"action": type(a).__name__, "program": a.name} for a in gateways.plan()]}

    router.add("GET", "/healthz", healthz, public=True)
    router.add("GET", "/reconcile/plan", reconcile_plan)
    router.add("GET", "/status", status)
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
