"""`flared snapshot`, `snapshots`, `restore`, `import-sdk-backup`.

Each goes through the running daemon when there is one (it owns the bots'
locks and gateways) and does the work in-process otherwise, under the same
per-bot file locks.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.progress import DownloadColumn, Progress, SpinnerColumn, TextColumn, TransferSpeedColumn
from rich.table import Table

from flared.cli.common import (
    EXIT_FAILED,
    EXIT_INVALID,
    EXIT_OK,
    CommandError,
    Subparsers,
    add_config_arg,
    add_json_arg,
    client_for,
    emit,
    human_bytes,
    load_or_exit,
)
from flared.config.loader import LoadedConfig
from flared.control.client import ControlError, DaemonNotRunning
from flared.snapshots.stores import StoreError

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
    p.set_defaults(func=cmd_snapshot)

    p = sub.add_parser("snapshots", help="list snapshots with time, size, digest")
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
    if getattr(args, "json", False) or not sys.stderr.isatty():
        yield None
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(label, total=None)
        yield lambda n: bar.update(task, advance=n)


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
    loaded = load_or_exit(args)
    bots = _bots(loaded, args.bot)
    try:
        data = client_for(loaded).request(
            "POST", "/snapshots", {"bot": args.bot, "takeover": args.takeover}, timeout=LONG
        )
    except DaemonNotRunning:
        data = {"results": _snapshot_offline(args, loaded, bots)}
    except ControlError as exc:
        if not isinstance(exc.body, dict) or "results" not in exc.body:
            raise CommandError(str(exc)) from None
        data = exc.body
    emit(args, data, _render_results)
    ok = all(r["result"] in {"ok", "unchanged"} for r in data["results"])
    return EXIT_OK if ok else EXIT_FAILED


def _snapshot_offline(
    args: argparse.Namespace, loaded: LoadedConfig, bots: list[str]
) -> list[dict[str, Any]]:
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
            results.append(svc.snapshot(bot, "manual", takeover=args.takeover, progress=progress))
    return results


def _render_results(con: Console, data: dict[str, Any]) -> None:
    for r in data["results"]:
        bot, result = r["bot"], r["result"]
        for left in r.get("left_out") or []:
            con.print(f"{bot}: [yellow]left out {left['path']}[/yellow]: {left['why']}")
        if result == "ok":
            con.print(
                f"{bot}: snapshot [bold]{r['id']}[/bold]: {human_bytes(r.get('bytes_uploaded'))} uploaded "
                f"({r.get('file_count')} files, {human_bytes(r.get('raw_size'))} raw) in {r.get('seconds')} s"
            )
        elif result == "unchanged":
            con.print(f"{bot}: unchanged since {r.get('id')}: nothing uploaded ({r.get('seconds')} s)")
        else:
            color = "red" if result in {"failed", "fenced"} else "yellow"
            con.print(f"{bot}: [{color}]{result}[/{color}]: {r.get('reason') or r.get('error')}")


# ---------------------------------------------------------------------- list


def cmd_snapshots(args: argparse.Namespace) -> int:
    loaded = load_or_exit(args)
    bots = _bots(loaded, args.bot)
    try:
        data = client_for(loaded).request("GET", "/snapshots" + (f"?bot={args.bot}" if args.bot else ""))
    except DaemonNotRunning:
        from flared.snapshots.catalog import list_snapshots, pointer_problem
        from flared.snapshots.stores.factory import open_store

        store = open_store(loaded.config.store)
        try:
            data = {"snapshots": [s for b in bots for s in list_snapshots(store, b)]}
            data["warnings"] = [f"{b}: {p}" for b in bots if (p := pointer_problem(store, b))]
        except StoreError as exc:
            raise CommandError(f"cannot list snapshots: {exc}") from None
    except ControlError as exc:
        raise CommandError(str(exc)) from None
    emit(args, data, _render_list)
    return EXIT_OK


def _render_list(con: Console, data: dict[str, Any]) -> None:
    for warning in data.get("warnings") or []:
        con.print(f"[yellow]warning[/yellow]: {warning}")
    snaps = data["snapshots"]
    if not snaps:
        con.print("no snapshots yet")
        return
    table = Table(box=None, pad_edge=False)
    table.add_column("bot", no_wrap=True)
    table.add_column("id", no_wrap=True, min_width=24)  # copied into `flared restore --id`: never cut
    table.add_column("created (UTC)", no_wrap=True, min_width=16)
    for col in ("packed", "files", "digest", ""):
        table.add_column(col, no_wrap=True)
    for s in snaps:
        table.add_row(
            s["bot"],
            s["id"],
            str(s.get("created_at", ""))[:16].replace("T", " "),
            human_bytes(s.get("packed_size")),
            str(s.get("file_count", "")),
            str(s.get("digest", ""))[:12],
            "[green]latest[/green]" if s.get("latest") else "",
        )
    con.print(table)


# ---------------------------------------------------------------------- restore


def cmd_restore(args: argparse.Namespace) -> int:
    loaded = load_or_exit(args)
    bot = _one_bot(loaded, args.bot)
    try:
        data = client_for(loaded).request(
            "POST", "/restore", {"bot": bot, "id": args.snapshot_id}, timeout=LONG
        )
    except DaemonNotRunning:
        pid = _gateway_running(loaded, bot)
        if pid is not None:
            raise CommandError(f"{bot}'s gateway runs (pid {pid}) without flared: stop it first") from None
        svc = _offline_service(loaded)
        with transfer_progress(args, f"{bot}: downloading") as progress:
            data = svc.restore(bot, args.snapshot_id, progress=progress)
    except ControlError as exc:
        if not isinstance(exc.body, dict) or "result" not in exc.body:
            raise CommandError(str(exc)) from None
        data = exc.body
    emit(args, data, _render_restore)
    return EXIT_OK if data.get("result") == "restored" else EXIT_FAILED


def _render_restore(con: Console, d: dict[str, Any]) -> None:
    for f in d.get("fallback") or []:
        con.print(f"[yellow]skipped {f['id']}[/yellow]: {f['reason']}")
    for r in d.get("refused") or []:
        con.print(f"[yellow]refused {r['path']}[/yellow]: {r['why']}")
    if d.get("kept"):
        con.print(f"[yellow]kept {d['kept']}[/yellow]: it held state that is in no snapshot")
    if d.get("repaired"):
        con.print("latest.json was damaged: it now names the snapshot restored")
    if d.get("result") == "restored":
        con.print(
            f"{d['bot']}: restored [bold]{d['id']}[/bold] in {d.get('seconds')} s (old home kept as home.previous)"
        )
    else:
        con.print(f"[red]{d.get('bot')}: restore failed[/red]: {d.get('error')}")


# ---------------------------------------------------------------------- import


def cmd_import(args: argparse.Namespace) -> int:
    from flared.snapshots.sdk_import import ImportError_, import_sdk_backup

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
        lambda con, d: con.print(
            f"{bot}: imported backup {d['backup_id']} as snapshot [bold]{d['id']}[/bold] "
            f"({d['file_count']} files); it is restored at the bot's next start or with `flared restore`"
        ),
    )
    return EXIT_OK
