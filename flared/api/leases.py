"""Control routes for leases.

``GET /leases``, ``POST /leases`` (acquire), ``POST /leases/{id}/exec``,
``DELETE /leases/{id}``, and ``POST /exec`` (acquire + exec in one round
trip, what the Hermes terminal backend uses). Every route also takes a
per-bot ``flb_`` token, which sees and uses only that bot's leases. With
``"wait": false`` an acquire that would wait for capacity answers 429
``{"error": <why, with the profile and its limits>, "waiting": true}`` at
once, so the caller can say so before it asks again and waits.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from flared.control.server import HTTPError, Request, Response, Router
from flared.sandboxes.manager import BadLeaseRequest, CapacityReached, LeaseManager, LeaseNotFound, MustWait
from flared.sandboxes.types import SandboxError

MAX_TIMEOUT = 24 * 3600.0
T = TypeVar("T")


def register(router: Router, leases: LeaseManager) -> None:
    def list_leases(req: Request) -> dict[str, Any]:
        bot = req.bot_token_bot or req.query.get("bot") or None
        return {"leases": leases.list(bot=bot)}

    def acquire(req: Request) -> Response:
        body = _object(req)
        bot = _bot(req, body)
        session = _opt_str(body, "session")
        wait = _wait(body)
        result = _guard(lambda: leases.acquire(bot, session, wait=wait))
        return Response(201 if result.get("created") else 200, result)

    def exec_in(req: Request) -> dict[str, Any]:
        body = _object(req)
        lease_id = req.params["id"]
        kw = _exec_args(body)
        result = _guard(lambda: leases.exec(lease_id, bot=req.bot_token_bot, **kw))
        return {"lease": lease_id, **result.as_dict()}

    def exec_once(req: Request) -> dict[str, Any]:
        body = _object(req)
        bot = _bot(req, body)
        session = _opt_str(body, "session")
        kw = _exec_args(body)
        wait = _wait(body)
        lease, result = _guard(lambda: leases.run(bot, session, wait=wait, **kw))
        return {"lease": lease["id"], "mode": lease["mode"], **result.as_dict()}

    def release(req: Request) -> dict[str, Any]:
        lease_id = req.params["id"]
        return _guard(lambda: leases.release(lease_id, bot=req.bot_token_bot))

    router.add("GET", "/leases", list_leases, bot_access=True)
    router.add("POST", "/leases", acquire, bot_access=True)
    router.add("POST", "/leases/{id}/exec", exec_in, bot_access=True)
    router.add("DELETE", "/leases/{id}", release, bot_access=True)
    router.add("POST", "/exec", exec_once, bot_access=True)


def _guard(fn: Callable[[], T]) -> T:
    """Lease errors as HTTP answers whose message the agent can read."""
    try:
        return fn()
    except LeaseNotFound as exc:
        raise HTTPError(404, str(exc)) from None
    except MustWait as exc:  # `"wait": false`: the caller says it is waiting, then asks again
        raise HTTPError(429, str(exc), waiting=True) from None
    except CapacityReached as exc:
        raise HTTPError(429, str(exc)) from None
    except BadLeaseRequest as exc:
        raise HTTPError(400, str(exc)) from None
    except SandboxError as exc:
        raise HTTPError(502, f"sandbox error: {exc}") from None


def _object(req: Request) -> dict[str, Any]:
    body = req.json()
    if not isinstance(body, dict):
        raise HTTPError(400, "request body must be a JSON object")
    return body


def _bot(req: Request, body: dict[str, Any]) -> str:
    """The bot a request acts for: a bot token's own bot, whatever the body says."""
    asked = _opt_str(body, "bot")
    if req.bot_token_bot is not None:
        if asked is not None and asked != req.bot_token_bot:
            raise HTTPError(403, "a bot token may only use its own bot's leases")
        return req.bot_token_bot
    if asked is None:
        raise HTTPError(400, "bot is required")
    return asked


def _wait(body: dict[str, Any]) -> bool:
    """``"wait": false``: answer 429 ``{"waiting": true}`` at once instead of waiting for a lease."""
    value = body.get("wait", True)
    if not isinstance(value, bool):
        raise HTTPError(400, "wait must be true or false")
    return value


def _opt_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise HTTPError(400, f"{key} must be a string")
    return value


def _exec_args(body: dict[str, Any]) -> dict[str, Any]:
    command = body.get("command")
    if not isinstance(command, str) or not command.strip():
        raise HTTPError(400, "command must be a non-empty string")
    out: dict[str, Any] = {"command": command, "cwd": _opt_str(body, "cwd"), "stdin": _opt_str(body, "stdin")}
    if out["cwd"] is not None and not out["cwd"].startswith("/"):
        raise HTTPError(400, "cwd must be an absolute path")
    timeout = body.get("timeout")
    if timeout is not None:
        if (
            isinstance(timeout, bool)
            or not isinstance(timeout, int | float)
            or not 0 < timeout <= MAX_TIMEOUT
        ):
            raise HTTPError(400, f"timeout must be a number of seconds between 0 and {MAX_TIMEOUT:g}")
        out["timeout"] = float(timeout)
    env = body.get("env")
    if env is not None:
        if not isinstance(env, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items()
        ):
            raise HTTPError(400, "env must be an object of strings")
        out["env"] = env
    return out
