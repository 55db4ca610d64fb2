"""What the terminal of `flared up` prints for an edit of the config file (issue 23).

The watcher turns successive `GET /status` answers into lines, each said once:
an applied edit says what changed, a refused one where (FILE:LINE:COL).
"""

from __future__ import annotations

import io
from typing import Any

from flared.cli.foreground import Reporter
from flared.cli.text import Out


def status(config: dict[str, Any]) -> dict[str, Any]:
    return {"config": config, "bots": []}


def test_each_edit_is_one_line_applied_or_refused_and_said_once() -> None:
    buf = io.StringIO()
    reporter = Reporter(Out(buf))
    reporter.feed(status({"error": None}))
    assert buf.getvalue() == ""  # the boot's config is no edit

    applied = {
        "applied": True,
        "at": 100.0,
        "changes": ["snapshots: every -> applied live", "bots.hermes: model.model -> its gateway restarts"],
        "failures": {"hermes": "snapshot before restart failed: store unreachable"},
    }
    for _ in range(2):
        reporter.feed(status({"error": None, "last_reload": applied}))
    assert buf.getvalue() == (
        "config edit applied: snapshots: every -> applied live; bots.hermes: model.model -> its gateway "
        "restarts; but hermes: snapshot before restart failed: store unreachable\n"
    )

    buf.truncate(0), buf.seek(0)
    errors = ["/etc/f.yaml:9:10: snapshots.every: not a duration", "/etc/f.yaml:12:3: bots[0]: no model"]
    for _ in range(2):
        reporter.feed(status({"error": errors, "last_reload": applied}))
    assert buf.getvalue() == (
        "config edit refused, the running config stays: /etc/f.yaml:9:10: snapshots.every: not a duration "
        "(and 1 more: `flared validate`)\n"
    )

    # A refusal the reloader itself made (state_dir changed) is said once, from the errors.
    buf.truncate(0), buf.seek(0)
    refused = {"applied": False, "at": 200.0, "errors": [{"line": 2}]}
    reporter.feed(status({"error": None, "last_reload": applied}))  # fixed: nothing to say
    reporter.feed(
        status({"error": ["/etc/f.yaml:2:12: state_dir: cannot change live"], "last_reload": refused})
    )
    assert buf.getvalue() == (
        "config edit refused, the running config stays: /etc/f.yaml:2:12: state_dir: cannot change live\n"
    )
