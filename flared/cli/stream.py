"""`flared stream run`: what supervisord starts to stream the bots' databases (Litestream)."""

from __future__ import annotations

import argparse

from flared.cli.common import EXIT_INVALID, CommandError, Subparsers, add_config_arg, load_or_exit


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "stream",
        help="Litestream, streaming the bots' SQLite databases (see docs/snapshots.md)",
        description="flared runs Litestream under supervisord when snapshots.stream is enabled.",
    )
    inner = p.add_subparsers(dest="stream_command", metavar="{run}")
    inner.required = True
    run = inner.add_parser(
        "run",
        help="write Litestream's config and run it for these bots (supervisord runs this)",
        description="Write Litestream's config for the named bots and replace this process with "
        "`litestream replicate`, the store's credentials in its environment only.",
    )
    add_config_arg(run)
    run.add_argument("--bot", action="append", default=[], required=True, help="a bot to stream")
    run.set_defaults(func=cmd_run)


def cmd_run(args: argparse.Namespace) -> int:
    from flared.cli.up import adopt_handoff
    from flared.snapshots.stream.program import exec_litestream

    adopt_handoff()
    loaded = load_or_exit(args)
    if not loaded.config.snapshots.stream.enabled:
        raise CommandError("snapshots.stream is off in the config; nothing to stream", EXIT_INVALID)
    unknown = sorted(set(args.bot) - set(loaded.config.bot_names))
    if unknown:
        raise CommandError(f"no bot named {', '.join(unknown)} in {loaded.path}", EXIT_INVALID)
    try:
        exec_litestream(loaded, args.bot)
    except OSError as exc:
        raise CommandError(f"cannot start Litestream: {exc}") from None
    return 0  # not reached: exec replaced this process
