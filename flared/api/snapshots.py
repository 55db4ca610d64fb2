"""Control routes for snapshots: list, take, restore, prune (admin callers only)."""

from __future__ import annotations

from typing import Any

from flared.control.server import HTTPError, Request, Response, Router
from flared.gateways import Gateways
from flared.snapshots.manifest import InvalidSnapshotId, check_id
from flared.snapshots.service import SnapshotService


def register(router: Router, snapshots: SnapshotService, gateways: Gateways) -> None:
    def bots(name: Any) -> list[str]:
        known = [b.name for b in gateways.enabled_bots()]  # this container's group only
        if name in (None, ""):
            return known
        if not isinstance(name, str) or name not in known:
            raise HTTPError(404, f"no enabled bot named {name!r} (bots: {', '.join(known) or 'none'})")
        return [name]

    def list_snapshots(req: Request) -> dict[str, Any]:
        svc = snapshots
        out: list[dict[str, Any]] = []
        warnings: list[str] = []
        for bot in bots(req.query.get("bot")):
            out.extend(svc.list(bot))
            problem = svc.pointer_problem(bot)
            if problem:
                warnings.append(f"{bot}: {problem}")
        return {"snapshots": out, "warnings": warnings}

    def take(req: Request) -> Response:
        body = req.json()
        svc = snapshots
        results = [
            svc.snapshot(b, "manual", takeover=bool(body.get("takeover"))) for b in bots(body.get("bot"))
        ]
        failed = any(r["result"] in {"failed", "fenced"} for r in results)
        return Response(500 if failed else 200, {"results": results})

    def restore(req: Request) -> Response:
        body = req.json()
        targets = bots(body.get("bot"))
        if len(targets) != 1:
            raise HTTPError(400, 'say which bot to restore: {"bot": NAME}')
        snapshot_id = body.get("id")
        if snapshot_id is not None:
            try:
                check_id(snapshot_id)  # before anything is stopped or read
            except InvalidSnapshotId as exc:
                raise HTTPError(400, str(exc)) from None
        result = snapshots.restore(targets[0], snapshot_id)
        return Response(200 if result.get("result") == "restored" else 500, result)

    def prune(req: Request) -> dict[str, Any]:
        body = req.json()
        svc = snapshots
        return {"results": [svc.prune(b) for b in bots(body.get("bot"))]}

    router.add("GET", "/snapshots", list_snapshots)
    router.add("POST", "/snapshots", take)
    router.add("POST", "/snapshots/prune", prune)
    router.add("POST", "/restore", restore)
