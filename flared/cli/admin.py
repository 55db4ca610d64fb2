"""`flared admin [--json]`: a sign-in URL for the local admin page.

The running daemon mints it (``POST /admin/link`` on the unix socket, so
only its own user can ask). The link works once; each run prints a new one.
"""

from __future__ import annotations

import argparse

from flared.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    CommandError,
    Subparsers,
    add_config_arg,
    add_json_arg,
    emit,
)
from flared.cli.remote import connect
from flared.cli.text import Out
from flared.control.client import ControlError


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "admin",
        help="print a one-time sign-in URL for the local admin page",
        description="Ask the running flared for a sign-in URL of its admin page (127.0.0.1, "
        "admin.port in the config; default 8643). Each URL works once, in one browser tab "
        "session; run this again for another. On Cloudflare the Worker serves the page at "
        "/admin behind Access instead.",
    )
    add_config_arg(p)
    add_json_arg(p)
    p.set_defaults(func=cmd_admin)


def cmd_admin(args: argparse.Namespace) -> int:
    remote = connect(args)
    if remote is None:
        raise CommandError("flared is not running for this config: start it with `flared up`", EXIT_FAILED)
    try:
        data = remote.request("POST", "/admin/link", {})
    except ControlError as exc:
        raise CommandError(str(exc), EXIT_FAILED) from None
    emit(args, data, _render)
    return EXIT_OK


def _render(out: Out, data: dict[str, str]) -> None:
    out.print(f"admin page: {data['link']}")
    out.print(out.style("(the link signs in once; `flared admin` prints a new one)", "dim"))
