"""`flared snapshot`, `snapshots`, `restore`, `import-sdk-backup`.

Each goes through the running daemon when there is one (it owns the bots'
locks and gateways) and does the work in-process otherwise, under the same
per-bot file locks. Either way a long snapshot or restore shows progress on
a terminal: offline from the service's byte callback, through the daemon by
polling ``GET /progress`` while the request runs on another connection.
"""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from flared.cli.common import (
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    CommandError,
    Subparsers,
    add_config_arg,
    add_json_arg,
    emit,
    human_bytes,
    load_or_exit,
)
from flared.cli.remote import Remote, connect
from flared.cli.text import Out, ProgressLine
from flared.control.client import ConnectionLost, ControlClient, ControlError, DaemonNotRunning

if TYPE_CHECKING:
    from flared.config.loader import LoadedConfig

#: Snapshots of large homes can take minutes; the CLI waits this long for the daemon.
LONG = 3600.0


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "snapshot",
        help="snapshot now; reports the id and bytes uploaded, or `unchanged`",
        description="Take a snapshot of each bot (or --bot B) now. Nothing is uploaded when the "
        "Hermes home did not change since the latest snapshot.",
    )
    add_config_arg(p)
    add_json_arg(p)
    p.add_argument("--bot", help="only this bot (default: every enabled bot)")
    p.add_argument(
        "--takeover",
        action="store_true",
        help="claim a fenced bot: overwrite latest.json although another writer moved it",
    )
    p.add_argument(
        "--accept-shrink",
        action="store_true",
        help="publish the home although it lost most of what the last snapshot held (a database "
        "gone, or under a quarter of its content): when that loss is meant; see docs/snapshots.md",
    )
    p.set_defaults(func=cmd_snapshot)

    p = sub.add_parser(
        "snapshots",
        help="list snapshots with time, size, digest",
        description="List each bot's snapshots in the store, newest first, with the one `latest` "
        "points at. The ids are what `flared restore --id` takes.",
    )
    add_config_arg(p)
    add_json_arg(p)
    p.add_argument("--bot", help="only this bot")
    p.set_defaults(func=cmd_snapshots)

    p = sub.add_parser(
        "restore",
        help="restore a bot from the store (stops and restarts its gateway)",
        description="Replace a bot's Hermes home with the newest good snapshot (or --id). "
        "The replaced home is kept as home.previous next to it.",
    )
    add_config_arg(p)
    add_json_arg(p)
    p.add_argument("--bot", help="the bot (required when there are several)")
    p.add_argument("--id", dest="snapshot_id", help="a snapshot id from `flared snapshots` (default: latest)")
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser(
        "import-sdk-backup",
        help="turn an original hermes-flare (Sandbox SDK) backup into a flared snapshot",
        description="Read <agent>/backup-handle.json and backups/<id>/data.sqsh from the bucket "
        "the original hermes-flare used, take .hermes out of it and publish it as the newest "
        "snapshot of --bot. Credentials: the store's, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY.",
    )
    add_config_arg(p)
    add_json_arg(p)
    p.add_argument("--bucket", required=True, help="where the backups are: s3://BUCKET[/PREFIX]")
    p.add_argument("--agent", default="hermes", help="the agent's folder in the bucket (default: hermes)")
    p.add_argument("--bot", help="the bot to import into (required when there are several)")
    p.add_argument("--endpoint", help="S3 endpoint (default: the store's)")
    p.add_argument("--force", action="store_true", help="import even if the bot already has snapshots")
    p.set_defaults(func=cmd_import)


# ---------------------------------------------------------------------- helpers


def _one_bot(loaded: LoadedConfig, name: str | None) -> str:
    bots = [b.name for b in loaded.config.bots if b.enabled]
    if name:
        if name not in bots:
            raise CommandError(f"no enabled bot named {name!r} (bots: {', '.join(bots)})", EXIT_INVALID)
        return name
    if len(bots) != 1:
        raise CommandError(f"say which bot with --bot ({', '.join(bots)})", EXIT_INVALID)
    return bots[0]


def _bots(loaded: LoadedConfig, name: str | None) -> list[str]:
    return [_one_bot(loaded, name)] if name else [b.name for b in loaded.config.bots if b.enabled]


@contextlib.contextmanager
def transfer_progress(args: argparse.Namespace, label: str) -> Iterator[Any]:
    """A byte counter on a TTY (stderr), nothing otherwise."""
    line = ProgressLine(label)
    if not line.enabled:
        yield None
        return
    try:
        yield line.advance
    finally:
        line.close()


def through_daemon(
    remote: Remote, method: str, path: str, body: dict[str, Any], *, bot: str | None, label: str
) -> Any:
    """Send a long request and, on a terminal, show the daemon's progress for ``bot`` meanwhile.

    The request runs on its own connection in a thread; this thread polls
    ``GET /progress`` on others. Returns the answer (a ControlError's body
    with ``results``/``result`` counts as an answer).
    """
    import threading
    import urllib.parse

    line = ProgressLine(label)
    box: dict[str, Any] = {}

    def send() -> None:
        try:
            box["data"] = remote.client.request(method, path, body, timeout=LONG)
        except BaseException as exc:  # handed to the caller's thread
            box["error"] = exc

    worker = threading.Thread(target=send, daemon=True)
    worker.start()
    poller = ControlClient(remote.client.path, remote.client.token)
    query = "?" + urllib.parse.urlencode({"bot": bot}) if bot else ""
    try:
        wait = 0.05  # a first look at once, then five times a second
        while worker.is_alive():
            worker.join(wait)
            wait = 0.2
            if not worker.is_alive() or not line.enabled:
                continue
            with contextlib.suppress(ControlError, DaemonNotRunning, ConnectionLost, OSError):
                ops = poller.request("GET", "/progress" + query, timeout=2).get("progress") or {}
                for name, op in ops.items():
                    if op.get("step") != "done":
                        line.label = f"{name}: {op.get('op')}"
                        line.show(str(op.get("step")), op.get("bytes"), op.get("rate"), op.get("total"))
                        break
    finally:
        line.close()
    if "error" in box:
        exc = box["error"]
        if (
            isinstance(exc, ControlError)
            and isinstance(exc.body, dict)
            and ("results" in exc.body or "result" in exc.body)
        ):
            return exc.body
        if isinstance(exc, ControlError):
            raise CommandError(str(exc), EXIT_INVALID if exc.status in {400, 404} else EXIT_FAILED) from None
        if isinstance(exc, ConnectionLost):
            raise CommandError(
                "flared stopped before it answered; `flared status` shows what the bot has now"
            ) from None
        raise exc
    return box["data"]


def _offline_service(loaded: LoadedConfig) -> Any:
    from flared.snapshots.service import SnapshotService

    return SnapshotService(loaded)


def _gateway_running(loaded: LoadedConfig, bot: str) -> int | None:
    from flared.hermes.paths import BotPaths

    try:
        pid = int((BotPaths.of(loaded.state_dir, bot).home / "gateway.pid").read_text().split()[0])
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError, IndexError):
        return None


# ---------------------------------------------------------------------- snapshot


def cmd_snapshot(args: argparse.Namespace) -> int:
    remote = connect(args)
    if remote is None:
        loaded = load_or_exit(args)
        data = {"results": _snapshot_offline(args, loaded, _bots(loaded, args.bot))}
    else:
        if args.bot is not None:
            remote.pick_bot(args.bot)
        data = through_daemon(
            remote,
            "POST",
            "/snapshots",
            {"bot": args.bot, "takeover": args.takeover, "accept_shrink": args.accept_shrink},
            bot=args.bot,
            label="snapshot",
        )
    emit(args, data, _render_results)
    ok = all(r["result"] in {"ok", "unchanged"} for r in data["results"])
    return EXIT_OK if ok else EXIT_FAILED


def _snapshot_offline(
    args: argparse.Namespace, loaded: LoadedConfig, bots: list[str]
) -> list[dict[str, Any]]:
    from flared.snapshots.stores import StoreError

    svc = _offline_service(loaded)
    results = []
    for bot in bots:
        st = svc.state(bot)
        try:
            with svc._exclusive(st):
                svc._confirm(st, fresh=False)
        except StoreError as exc:
            results.append({"result": "failed", "bot": bot, "reason": str(exc)})
            continue
        st.phase = "ready"
        with transfer_progress(args, f"{bot}: uploading") as progress:
            results.append(
                svc.snapshot(
                    bot, "manual", takeover=args.takeover, accept_shrink=args.accept_shrink, progress=progress
                )
            )
    return results


def _render_results(out: Out, data: dict[str, Any]) -> None:
    for r in data["results"]:
        bot, result = r["bot"], r["result"]
        for left in r.get("left_out") or []:
            out.print(f"{bot}: {out.style('left out ' + str(left['path']), 'yellow')}: {left['why']}")
        if result == "ok":
            out.print(
                f"{bot}: snapshot {out.style(str(r['id']), 'bold')}: {human_bytes(r.get('bytes_uploaded'))} "
                f"uploaded ({r.get('file_count')} files, {human_bytes(r.get('raw_size'))} raw) "
                f"in {r.get('seconds')} s"
            )
        elif result == "unchanged":
            out.print(f"{bot}: unchanged since {r.get('id')}: nothing uploaded ({r.get('seconds')} s)")
        else:
            color = "red" if result in {"failed", "fenced"} else "yellow"
            out.print(f"{bot}: {out.style(str(result), color)}: {r.get('reason') or r.get('error')}")


# ---------------------------------------------------------------------- list


def cmd_snapshots(args: argparse.Namespace) -> int:
    remote = connect(args)
    if remote is None:
        from flared.snapshots.catalog import list_snapshots, pointer_problem
        from flared.snapshots.stores import StoreError
        from flared.snapshots.stores.factory import open_store

        loaded = load_or_exit(args)
        bots = _bots(loaded, args.bot)
        store = open_store(loaded.config.store)
        try:
            warnings = [f"{b}: {p}" for b in bots if (p := pointer_problem(store, b))]
            data = {"snapshots": [s for b in bots for s in list_snapshots(store, b)], "warnings": warnings}
        except StoreError as exc:
            raise CommandError(f"cannot list snapshots: {exc}") from None
    else:
        import urllib.parse

        if args.bot is not None:
            remote.pick_bot(args.bot)
        query = "?" + urllib.parse.urlencode({"bot": args.bot}) if args.bot else ""
        try:
            data = remote.request("GET", "/snapshots" + query, timeout=120)
        except ControlError as exc:
            raise CommandError(str(exc)) from None
    emit(args, data, _render_list)
    return EXIT_OK


def _render_list(out: Out, data: dict[str, Any]) -> None:
    for warning in data.get("warnings") or []:
        out.print(f"{out.style('warning', 'yellow')}: {warning}")
    snaps = data["snapshots"]
    if not snaps:
        out.print("no snapshots yet")
        return
    rows = [
        [
            s["bot"],
            s["id"],  # copied into `flared restore --id`: never cut
            str(s.get("created_at", ""))[:16].replace("T", " "),
            human_bytes(s.get("packed_size")),
            str(s.get("file_count", "")),
            str(s.get("digest", ""))[:12],
            out.style("latest", "green") if s.get("latest") else "",
        ]
        for s in snaps
    ]
    out.table(["bot", "id", "created (UTC)", "packed", "files", "digest", ""], rows)


# ---------------------------------------------------------------------- restore


def cmd_restore(args: argparse.Namespace) -> int:
    remote = connect(args)
    if remote is None:
        loaded = load_or_exit(args)
        bot = _one_bot(loaded, args.bot)
        pid = _gateway_running(loaded, bot)
        if pid is not None:
            raise CommandError(f"{bot}'s gateway runs (pid {pid}) without flared: stop it first") from None
        svc = _offline_service(loaded)
        with transfer_progress(args, f"{bot}: downloading") as progress:
            data = svc.restore(bot, args.snapshot_id, progress=progress)
    else:
        bot = remote.pick_bot(args.bot)
        data = through_daemon(
            remote, "POST", "/restore", {"bot": bot, "id": args.snapshot_id}, bot=bot, label=f"{bot}: restore"
        )
    emit(args, data, _render_restore)
    return EXIT_OK if data.get("result") == "restored" else EXIT_FAILED


def _render_restore(out: Out, d: dict[str, Any]) -> None:
    for f in d.get("fallback") or []:
        out.print(f"{out.style('skipped ' + str(f['id']), 'yellow')}: {f['reason']}")
    for r in d.get("refused") or []:
        out.print(f"{out.style('refused ' + str(r['path']), 'yellow')}: {r['why']}")
    if d.get("kept"):
        out.print(f"{out.style('kept ' + str(d['kept']), 'yellow')}: it held state that is in no snapshot")
    if d.get("repaired"):
        out.print("latest.json was damaged: it now names the snapshot restored")
    if d.get("result") == "restored":
        out.print(
            f"{d['bot']}: restored {out.style(str(d['id']), 'bold')} in {d.get('seconds')} s "
            "(old home kept as home.previous)"
        )
    else:
        out.print(f"{out.style(str(d.get('bot')) + ': restore failed', 'red')}: {d.get('error')}")


# ---------------------------------------------------------------------- import


def cmd_import(args: argparse.Namespace) -> int:
    from flared.snapshots.sdk_import import ImportError_, import_sdk_backup
    from flared.snapshots.stores import StoreError

    loaded = load_or_exit(args)
    bot = _one_bot(loaded, args.bot)
    try:
        data = import_sdk_backup(
            loaded, bot, bucket_url=args.bucket, agent=args.agent, endpoint=args.endpoint, force=args.force
        )
    except (ImportError_, StoreError) as exc:
        raise CommandError(f"import failed: {exc}") from None
    emit(
        args,
        data,
        lambda out, d: out.print(
            f"{bot}: imported backup {d['backup_id']} as snapshot {out.style(str(d['id']), 'bold')} "
            f"({d['file_count']} files); it is restored at the bot's next start or with `flared restore`"
        ),
    )
    return EXIT_OK
