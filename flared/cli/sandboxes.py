"""`flared exec` and `flared leases`.

Both go through the running daemon when there is one (found without
validating the file: :mod:`flared.cli.remote`); otherwise `exec` runs a
lease manager in-process (it takes the same lock the daemon's does) and
`leases` reads the lease table.
"""

from __future__ import annotations

import argparse
import shlex
import sys
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
    load_or_exit,
)
from flared.cli.remote import connect
from flared.cli.text import Out, human_age
from flared.control.client import ConnectionLost, ControlError

if TYPE_CHECKING:
    from flared.config.loader import LoadedConfig

CLI_SESSION = "cli"


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "exec",
        help="run a command in a bot's sandbox through a lease",
        description="Run CMD in the sandbox the bot's commands run in (its profile's mode decides "
        "whether it shares a lease). One argument is a shell command line; several are quoted "
        "and joined. Stdin is passed when it is not a terminal. Exits with the command's status.",
    )
    add_config_arg(p)
    add_json_arg(p)
    p.add_argument("--bot", help="the bot (required when there are several)")
    p.add_argument("--session", default=CLI_SESSION, help=f"session key (default {CLI_SESSION!r})")
    p.add_argument("--cwd", help="directory to run in (default: the profile's workdir)")
    p.add_argument("--timeout", type=float, help="seconds (default: the profile's command_timeout)")
    p.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD...", help="the command")
    p.set_defaults(func=cmd_exec)

    p = sub.add_parser(
        "leases",
        help="list sandbox leases (or release one)",
        description="List live sandbox leases: which bot and session holds each, its profile, and "
        "how long it has left. --release destroys one now.",
    )
    add_config_arg(p)
    add_json_arg(p)
    p.add_argument("--bot", help="only this bot's leases")
    p.add_argument("--release", metavar="ID", help="destroy this lease now")
    p.set_defaults(func=cmd_leases)


def _command(args: argparse.Namespace) -> str:
    cmd = list(args.cmd)
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise CommandError("no command given; usage: flared exec [--bot B] -- CMD...", EXIT_INVALID)
    return cmd[0] if len(cmd) == 1 else shlex.join(cmd)


def _bot(loaded: LoadedConfig, bot: str | None) -> str:
    names = loaded.config.bot_names
    if bot is None:
        if len(names) != 1:
            raise CommandError(f"--bot is required (bots: {', '.join(names) or 'none'})", EXIT_INVALID)
        return names[0]
    if bot not in names:
        raise CommandError(f"no bot named {bot!r} (bots: {', '.join(names) or 'none'})", EXIT_INVALID)
    return bot


def cmd_exec(args: argparse.Namespace) -> int:
    command = _command(args)
    stdin = None if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
    body: dict[str, Any] = {"session": args.session, "command": command, "stdin": stdin}
    if args.cwd:
        body["cwd"] = args.cwd
    if args.timeout:
        body["timeout"] = args.timeout
    remote = connect(args)
    if remote is None:
        loaded = load_or_exit(args)
        body["bot"] = _bot(loaded, args.bot)
        result = _exec_offline(loaded, body)
    else:
        body["bot"] = remote.pick_bot(args.bot)
        wait = (args.timeout or 24 * 3600.0) + 60
        try:
            try:
                result = remote.client.request("POST", "/exec", {**body, "wait": False}, timeout=wait)
            except ControlError as exc:
                if not (exc.status == 429 and isinstance(exc.body, dict) and exc.body.get("waiting")):
                    raise
                # At once, on stderr: the command waits for a sandbox, and why (profile and limits).
                print(f"flared exec: {_error_text(exc.body)}", file=sys.stderr, flush=True)
                result = remote.client.request("POST", "/exec", body, timeout=wait + 600)
        except ControlError as exc:
            raise CommandError(_error_text(exc.body)) from None
        except ConnectionLost:
            raise CommandError(
                "flared stopped while the command was running; its sandbox went with it. "
                "Run the command again once `flared status` answers (supervisord restarts flared; "
                "after a stop, `flared up`)."
            ) from None
    if args.json:
        emit(args, result)
    else:
        sys.stdout.write(result["stdout"])
        sys.stdout.flush()
        sys.stderr.write(result["stderr"])
    return int(result["exit_code"])


def _exec_offline(loaded: LoadedConfig, body: dict[str, Any]) -> dict[str, Any]:
    from flared.sandboxes.manager import LeaseManager
    from flared.sandboxes.types import SandboxError

    manager = LeaseManager(loaded)
    try:
        manager.start(lock_wait=5)
    except SandboxError as exc:
        raise CommandError(str(exc)) from None
    try:
        kw = {k: body[k] for k in ("cwd", "stdin", "timeout") if body.get(k) is not None}
        lease, result = manager.run(
            body["bot"],
            body["session"],
            body["command"],
            on_wait=lambda why: _say_waiting(loaded, body["bot"], why),
            **kw,
        )
    except SandboxError as exc:
        raise CommandError(str(exc)) from None
    finally:
        manager.stop()
    return {"lease": lease["id"], "mode": lease["mode"], **result.as_dict()}


def _say_waiting(loaded: LoadedConfig, bot: str, why: str) -> None:
    """At once, on stderr: the command waits for a sandbox, why, and for how long at most."""
    profile = loaded.config.sandboxes.get(loaded.config.bot(bot).sandbox)
    limit = f" (up to {profile.acquire_timeout:g}s)" if profile is not None else ""
    print(f"flared exec: {why}{limit}", file=sys.stderr, flush=True)


def _error_text(body: Any) -> str:
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])
    return str(body)


def cmd_leases(args: argparse.Namespace) -> int:
    remote = connect(args)
    if args.release:
        if remote is None:
            raise CommandError("the daemon is not running; leases are released when it starts")
        try:
            emit(args, remote.request("DELETE", f"/leases/{args.release}"))
        except ControlError as exc:
            raise CommandError(_error_text(exc.body)) from None
        return EXIT_OK
    if remote is None:
        from flared.sandboxes.manager import LeaseManager

        leases = LeaseManager.offline_list(load_or_exit(args), bot=args.bot)
    else:
        query = f"?bot={args.bot}" if args.bot else ""
        try:
            leases = remote.request("GET", f"/leases{query}")["leases"]
        except ControlError as exc:
            raise CommandError(_error_text(exc.body), EXIT_FAILED) from None
    emit(args, leases, _render)
    return EXIT_OK


def _render(out: Out, leases: list[dict[str, Any]]) -> None:
    if not leases:
        out.print("no leases")
        return
    rows = []
    for x in leases:
        rows.append(
            [
                x["id"],
                x["bot"],
                x["session"] or "-",
                x["profile"],
                x["mode"],
                x["provider"],
                human_age(x["idle_expires_in_s"]),
                human_age(x["expires_in_s"]),
                str(x["busy"]),
            ]
        )
    out.table(["ID", "BOT", "SESSION", "PROFILE", "MODE", "PROVIDER", "IDLE LEFT", "LIFE LEFT", "BUSY"], rows)
