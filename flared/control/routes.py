"""Core control routes: health, status, config, reload, restart, logs."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from flared.control import HTTPError, Request, Response, Router
from flared.hermes import BotPaths
from flared.redact import redact_text, redacted_config

if TYPE_CHECKING:
    from flared.daemon import Daemon

MAX_LOG_LINES = 5000


def register(router: Router, daemon: Daemon) -> None:
    def healthz(req: Request) -> dict[str, Any]:
        return {
            "ok": True,
            "config_digest": daemon.loaded.digest,
            "last_tick": daemon.last_tick.isoformat() if daemon.last_tick else None,
            "group": os.environ.get("FLARE_GROUP")
            or (daemon.loaded.config.bots[0].group if daemon.loaded.config.bots else "default"),
        }

    def status(req: Request) -> dict[str, Any]:
        return daemon.status()

    def get_config(req: Request) -> dict[str, Any]:
        return {
            "path": str(daemon.loaded.path),
            "digest": daemon.loaded.digest,
            "loaded_at": daemon.loaded.loaded_at.isoformat(),
            "error": [i.as_dict() for i in daemon.config_error] if daemon.config_error else None,
            "config": redacted_config(daemon.loaded.config),
        }

    def reload(req: Request) -> Response:
        result = daemon.reload_from_disk()
        return Response(200 if not result.get("errors") else 400, result)

    def restart(req: Request) -> dict[str, Any]:
        name = req.params["name"]
        if name not in daemon.loaded.config.bot_names:
            raise HTTPError(404, f"no bot named {name!r}")
        daemon.restart_gateway(name)
        return {"restarted": name}

    def logs(req: Request) -> Response:
        bot = req.query.get("bot") or (daemon.loaded.config.bot_names or [""])[0]
        if bot not in daemon.loaded.config.bot_names:
            raise HTTPError(404, f"no bot named {bot!r}")
        try:
            lines = min(int(req.query.get("lines", "200")), MAX_LOG_LINES)
        except ValueError:
            raise HTTPError(400, "lines must be a number") from None
        path = BotPaths.of(daemon.loaded.config.state_dir, bot).gateway_log
        text = tail(path, lines)
        return Response(200, {"bot": bot, "lines": redact_text(text, daemon.loaded.config).splitlines()})

    def reconcile_plan(req: Request) -> dict[str, Any]:
        return {"actions": [{"action": type(a).__name__, "program": a.name} for a in daemon.plan()]}

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
