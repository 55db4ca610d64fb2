"""Control routes for snapshots: list, take, restore, prune, progress (admin callers only).

A snapshot or restore asked for through the API may take minutes. The
server answers each request once, so progress is a second, small route:
the CLI posts on one connection and polls ``GET /progress?bot=B`` on
another. What it reads is recorded here, per bot, through the ``progress=``
callback the snapshot service already takes (bytes moved), plus an optional
``step(name, total)`` the pipeline may call.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from flared.control.server import HTTPError, Request, Response, Router
from flared.gateways import Gateways
from flared.snapshots.manifest import InvalidSnapshotId, check_id
from flared.snapshots.service import SnapshotService

log = logging.getLogger("flared.snapshots")

#: A finished operation stays readable this long (the CLI's last poll).
DONE_KEPT_S = 30.0


class ProgressRecorder:
    """A byte-counting ``progress=`` callback that also takes ``step(name, total)``."""

    def __init__(self, board: ProgressBoard, bot: str, op: str) -> None:
        self.board, self.bot, self.op = board, bot, op
        self.started = time.monotonic()
        self.first_byte: float | None = None
        self.bytes = 0
        self.total: int | None = None
        self.step_name: str | None = None
        self.done: float | None = None
        self.result: str | None = None

    def __call__(self, n: int) -> None:
        if self.first_byte is None:
            self.first_byte = time.monotonic()
        self.bytes += int(n)

    def step(self, name: str, total: int | None = None) -> None:
        """The pipeline's hook: a named step begins (``total`` bytes if known)."""
        self.step_name, self.total = name, total

    def finish(self, result: str) -> None:
        self.done, self.result = time.monotonic(), result

    def as_dict(self) -> dict[str, Any]:
        now = self.done or time.monotonic()
        moving = (self.op == "snapshot" and "uploading") or "downloading"
        step = self.step_name or (
            moving if self.bytes else ("preparing" if self.op == "snapshot" else "starting")
        )
        since = self.first_byte or self.started
        return {
            "op": self.op,
            "step": "done" if self.done else step,
            "bytes": self.bytes,
            "total": self.total,
            "rate": round(self.bytes / max(now - since, 1e-3)) if self.bytes else 0,
            "seconds": round(now - self.started, 2),
            "result": self.result,
        }


class ProgressBoard:
    """What each bot's API-driven snapshot or restore is doing now."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ops: dict[str, ProgressRecorder] = {}

    def start(self, bot: str, op: str) -> ProgressRecorder:
        rec = ProgressRecorder(self, bot, op)
        with self._lock:
            self._ops[bot] = rec
        return rec

    def read(self, bot: str | None) -> dict[str, Any]:
        now = time.monotonic()
        with self._lock:
            for name, rec in list(self._ops.items()):
                if rec.done is not None and now - rec.done > DONE_KEPT_S:
                    del self._ops[name]
            return {n: r.as_dict() for n, r in self._ops.items() if bot in (None, "", n)}


def register(router: Router, snapshots: SnapshotService, gateways: Gateways) -> None:
    board = ProgressBoard()

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
        results = []
        for b in bots(body.get("bot")):
            rec = board.start(b, "snapshot")
            r: dict[str, Any] = {"result": "failed"}
            try:
                r = snapshots.snapshot(
                    b,
                    "manual",
                    takeover=bool(body.get("takeover")),
                    accept_shrink=bool(body.get("accept_shrink")),
                    progress=rec,
                )
            finally:
                rec.finish(str(r.get("result")))
            results.append(r)
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
        rec = board.start(targets[0], "restore")
        result: dict[str, Any] = {"result": "failed"}
        try:
            result = snapshots.restore(targets[0], snapshot_id, progress=rec)
        finally:
            rec.finish(str(result.get("result")))
        if result.get("result") == "restored":
            log.info(
                "bot %s: restored snapshot %s in %s s (asked through the control API)",
                targets[0],
                result.get("id"),
                result.get("seconds"),
            )
        else:
            log.warning("bot %s: restore failed: %s", targets[0], result.get("error"))
        return Response(200 if result.get("result") == "restored" else 500, result)

    def progress(req: Request) -> dict[str, Any]:
        return {"progress": board.read(req.query.get("bot"))}

    def prune(req: Request) -> dict[str, Any]:
        body = req.json()
        svc = snapshots
        return {"results": [svc.prune(b) for b in bots(body.get("bot"))]}

    def snapshot_history(req: Request) -> dict[str, Any]:
        try:
            limit = max(1, min(int(req.query.get("limit", "200")), 2000))
        except ValueError:
            raise HTTPError(400, "limit must be a number") from None
        out: list[dict[str, Any]] = []
        for bot in bots(req.query.get("bot")):
            out.extend({"bot": bot, **h} for h in snapshots.history(bot, limit))
        return {"history": out}

    router.add("GET", "/snapshots", list_snapshots)
    router.add("GET", "/snapshots/history", snapshot_history)
    router.add("POST", "/snapshots", take)
    router.add("POST", "/snapshots/prune", prune)
    router.add("POST", "/restore", restore)
    router.add("GET", "/progress", progress)
