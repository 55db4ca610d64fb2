"""The running daemon, as commands reach it: found from the config path, never by validating the file.

Commands that only need the daemon (status, exec, snapshot, restore, leases,
chat, logs, stop, ...) start here. The daemon runs its last good config, so
a file broken by an edit must not stop them; it is mentioned once instead.
Standard library only: this is the path whose start-up the user waits for.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from flared.cli.common import EXIT_FAILED, EXIT_INVALID, CommandError
from flared.config.where import find_config
from flared.control.client import ConnectionLost, ControlClient, ControlError, DaemonNotRunning


class Remote:
    """A daemon that answered, and what it told the CLI about itself (``GET /context``)."""

    def __init__(self, client: ControlClient, config_path: Path, context: dict[str, Any] | None) -> None:
        self.client = client
        self.config_path = config_path
        self._context = context
        self._noted = False

    @property
    def context(self) -> dict[str, Any]:
        if self._context is None:
            try:
                self._context = self.request("GET", "/context", timeout=10)
            except ControlError as exc:
                if exc.status != 404:
                    raise
                self._context = {}
        self.note_file_problems()
        return self._context

    def note_file_problems(self) -> None:
        """Say once that the file on disk is broken and the daemon runs its last good config."""
        if self._noted or self._context is None:
            return
        self._noted = True
        cfg = self._context.get("config") or {}
        problems = cfg.get("problems") or []
        if problems:
            print(
                file_problems_note(cfg.get("path") or str(self.config_path), len(problems)), file=sys.stderr
            )

    def request(self, method: str, path: str, body: Any = None, *, timeout: float = 30.0) -> Any:
        try:
            return self.client.request(method, path, body, timeout=timeout)
        except ConnectionLost:
            raise CommandError(
                "flared stopped while handling this command (its log says why: `flared logs --flared`)"
            ) from None

    def bots(self) -> list[dict[str, Any]]:
        return list(self.context.get("bots") or [])

    def pick_bot(self, name: str | None, *, what: str = "bot", enabled_only: bool = True) -> str:
        """``name`` if the daemon knows it, else the only bot; a clear exit-2 error otherwise."""
        if "bots" not in self.context:  # a daemon without `GET /context` (older): it checks the name
            if name is None:
                raise CommandError("say which bot with --bot", EXIT_INVALID)
            return name
        bots = [b for b in self.bots() if b.get("enabled", True) or not enabled_only]
        names = [str(b["name"]) for b in bots]
        if name is not None:
            if name not in names:
                raise CommandError(
                    f"no {what} named {name!r} (bots: {', '.join(names) or 'none'})", EXIT_INVALID
                )
            return name
        if len(names) != 1:
            raise CommandError(f"say which bot with --bot ({', '.join(names) or 'no bots'})", EXIT_INVALID)
        return names[0]


def file_problems_note(path: str, n: int) -> str:
    s = "s" if n != 1 else ""
    return (
        f"note: {path} has {n} problem{s} (`flared validate` lists them); "
        "the running daemon keeps its last good config"
    )


def connect(args: argparse.Namespace, *, probe: bool = True) -> Remote | None:
    """The daemon running this config, or None when none answers.

    With ``probe`` the daemon is asked for its context now (one round trip,
    which also proves it answers); without, the caller's first request does
    that and must handle :class:`DaemonNotRunning` itself.
    """
    path = find_config(getattr(args, "config", None))
    client = ControlClient.for_file(path)
    if not client.path.exists():
        return None
    if not probe:
        return Remote(client, path, None)
    try:
        context = client.request("GET", "/context", timeout=10)
    except DaemonNotRunning:
        return None
    except ConnectionLost:
        return None
    except ControlError as exc:
        if exc.status != 404:
            raise CommandError(f"the daemon answered {exc.status}: {exc}", EXIT_FAILED) from None
        context = {}  # an older daemon: no context, the commands' own requests still work
    remote = Remote(client, path, context)
    remote.note_file_problems()
    return remote
