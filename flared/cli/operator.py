"""`flared operator run` (what supervisord starts) and `flared operator audit`."""

from __future__ import annotations

import argparse
from typing import Any

from flared.cli.common import (
    EXIT_INVALID,
    EXIT_OK,
    CommandError,
    Subparsers,
    add_config_arg,
    add_json_arg,
    emit,
    load_or_exit,
)
from flared.cli.text import Out


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "operator",
        help="the operator bot: a second Slack app that manages the agent (see docs/operator.md)",
        description="The operator bot runs under supervisord when `operator:` is configured.",
    )
    inner = p.add_subparsers(dest="operator_command", metavar="{run,audit}")
    inner.required = True
    run = inner.add_parser(
        "run",
        help="connect to Slack and serve operator commands (supervisord runs this)",
        description="Run the operator bot in this process (supervisord starts it when `operator:` "
        "is configured).",
    )
    add_config_arg(run)
    run.set_defaults(func=cmd_run)
    audit = inner.add_parser(
        "audit",
        help="the last operator commands and their results",
        description="Print the operator's audit log: who ran which command, and the result.",
    )
    add_config_arg(audit)
    add_json_arg(audit)
    audit.add_argument("--lines", type=int, default=20, help="how many entries (default 20)")
    audit.set_defaults(func=cmd_audit)


def cmd_run(args: argparse.Namespace) -> int:
    import logging

    from flared.cli.up import adopt_handoff, setup_logging
    from flared.operator import app

    adopt_handoff()
    loaded = load_or_exit(args)
    if loaded.config.operator is None:
        raise CommandError("no `operator:` section in the config; see docs/operator.md", EXIT_INVALID)
    setup_logging(loaded)
    logging.getLogger("slack_bolt").setLevel(logging.WARNING)
    return app.run(loaded)


def cmd_audit(args: argparse.Namespace) -> int:
    from flared.operator.audit import audit_path, tail

    loaded = load_or_exit(args, check_state_dir=False)
    entries = tail(audit_path(loaded.state_dir), max(1, args.lines))

    def render(con: Out, rows: list[dict[str, Any]]) -> None:
        if not rows:
            con.print("no operator commands yet")
        for e in rows:
            con.print(
                f"{e['at']}  {e['user']}  {e['command']} {' '.join(e.get('args', []))}  -> {e['result']}"
            )

    emit(args, entries, render)
    return EXIT_OK
