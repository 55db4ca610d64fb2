"""`flared logs [--bot B] [--flared] [--supervisord] [-f] [--lines N]`: every log in one place.

flared's own log, supervisord's, and each gateway's (where provider errors
and port conflicts show up) live in different directories of the state
dir. Through the running daemon (``GET /logs``) or, without one, read from
the files; secrets are redacted either way. ``-f`` follows them all, each
line prefixed with where it came from.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, TextIO

from flared.cli.common import EXIT_INVALID, EXIT_OK, CommandError, Subparsers, add_config_arg
from flared.cli.remote import Remote, connect
from flared.control.client import ControlError

if TYPE_CHECKING:
    from flared.config.loader import LoadedConfig

FOLLOW_EVERY_S = 0.5
#: In ``<state>/logs``: "SIZE PATH" of each log as the Agent image's entrypoint found it at start.
START_OFFSETS = ".start-offsets"


class Source:
    """One log: ``name`` as shown (flared, supervisord, gateway-<bot>), the API's ``source`` and bot."""

    def __init__(self, name: str, source: str, bot: str | None = None) -> None:
        self.name, self.source, self.bot = name, source, bot
        self.offset = 0


def register(sub: Subparsers) -> None:
    p = sub.add_parser(
        "logs",
        help="flared's, supervisord's and each gateway's log (secrets redacted)",
        description="Print the last lines of flared's log and every gateway's log (or only those "
        "asked for), with secrets redacted. A gateway's log is where the model provider's errors "
        "and port conflicts show up. -f keeps printing new lines.",
    )
    add_config_arg(p)
    p.add_argument("--bot", action="append", metavar="B", help="this bot's gateway log (repeatable)")
    p.add_argument("--flared", action="store_true", help="flared's own log")
    p.add_argument("--supervisord", action="store_true", help="supervisord's log")
    p.add_argument("-n", "--lines", type=int, default=40, help="lines of each log to show first (default 40)")
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines (Ctrl-C ends)")
    p.add_argument(
        "--mirror",
        action="store_true",
        help="copy new lines of flared's log and every gateway's (bots added later too) to stdout "
        "until stopped, prefixed and redacted, read from the files: what the Agent image runs so "
        "`docker logs` shows them",
    )
    p.set_defaults(func=cmd_logs)


def _sources(args: argparse.Namespace, bots: list[str]) -> list[Source]:
    for b in args.bot or []:
        if b not in bots:
            raise CommandError(f"no bot named {b!r} (bots: {', '.join(bots) or 'none'})", EXIT_INVALID)
    chosen = bool(args.bot or args.flared or args.supervisord)
    out = []
    if args.flared or not chosen:
        out.append(Source("flared", "flared"))
    if args.supervisord:
        out.append(Source("supervisord", "supervisord"))
    for b in args.bot or ([] if chosen else bots):
        out.append(Source(f"gateway-{b}", "gateway", b))
    return out


def cmd_logs(args: argparse.Namespace) -> int:
    if args.mirror:
        return cmd_mirror(args)
    if args.lines < 0:
        raise CommandError("--lines must be 0 or more", EXIT_INVALID)
    remote = connect(args)
    reader: _Reader = _DaemonReader(remote) if remote is not None else _FileReader(args)
    sources = _sources(args, reader.bots())
    several = len(sources) > 1
    for src in sources:
        lines, path, src.offset = reader.tail(src, args.lines)
        if several and not args.follow:
            print(f"==> {src.name}: {path} <==")
        for line in lines:
            print(f"[{src.name}] {line}" if several and args.follow else line)
        if several and not args.follow:
            print()
    sys.stdout.flush()
    if not args.follow:
        return EXIT_OK
    try:
        while True:
            time.sleep(FOLLOW_EVERY_S)
            for src in sources:
                lines, src.offset = reader.since(src)
                for line in lines:
                    print(f"[{src.name}] {line}" if several else line)
            sys.stdout.flush()
    except KeyboardInterrupt:
        return EXIT_OK


class _Reader:
    def bots(self) -> list[str]:
        raise NotImplementedError

    def tail(self, src: Source, lines: int) -> tuple[list[str], str, int]:
        raise NotImplementedError

    def since(self, src: Source) -> tuple[list[str], int]:
        raise NotImplementedError


class _DaemonReader(_Reader):
    def __init__(self, remote: Remote) -> None:
        self.remote = remote

    def bots(self) -> list[str]:
        return [str(b["name"]) for b in self.remote.bots()]

    def _get(self, src: Source, **query: Any) -> dict[str, Any]:
        import urllib.parse

        q = {"source": src.source, **({"bot": src.bot} if src.bot else {}), **query}
        try:
            data: dict[str, Any] = self.remote.request(
                "GET", "/logs?" + urllib.parse.urlencode(q), timeout=30
            )
        except ControlError as exc:
            raise CommandError(str(exc)) from None
        return data

    def tail(self, src: Source, lines: int) -> tuple[list[str], str, int]:
        d = self._get(src, lines=lines)
        return list(d["lines"])[-lines:] if lines else [], str(d.get("path")), int(d.get("offset") or 0)

    def since(self, src: Source) -> tuple[list[str], int]:
        d = self._get(src, offset=src.offset)
        return list(d["lines"]), int(d.get("offset") or src.offset)


class _FileReader(_Reader):
    """No daemon: read the files, redacting with the config (which must load)."""

    def __init__(self, args: argparse.Namespace) -> None:
        from flared.cli.common import load_or_exit

        self.loaded: LoadedConfig = load_or_exit(args, check_state_dir=False)

    def bots(self) -> list[str]:
        return list(self.loaded.config.bot_names)

    def _path(self, src: Source) -> Path:
        from flared.hermes.paths import BotPaths

        if src.bot:
            return BotPaths.of(self.loaded.state_dir, src.bot).gateway_log
        return self.loaded.state_dir / "logs" / f"{src.source}.log"

    def _redact(self, text: str) -> list[str]:
        from flared.config.redact import redact_text

        return redact_text(text, self.loaded.config).splitlines() if text else []

    def tail(self, src: Source, lines: int) -> tuple[list[str], str, int]:
        from flared.api.core import tail

        path = self._path(src)
        try:
            size = path.stat().st_size
        except OSError:
            size = 0
        return self._redact(tail(path, lines) if lines else ""), str(path), size

    def since(self, src: Source) -> tuple[list[str], int]:
        from flared.api.core import read_from

        text, offset = read_from(self._path(src), src.offset)
        return self._redact(text), offset


# ---------------------------------------------------------------------- the container's log


def cmd_mirror(args: argparse.Namespace) -> int:
    """Run :class:`LogMirror` until SIGTERM (supervisord stops it last), then copy what is left."""
    from flared.config import handoff

    handoff.adopt()  # the secrets to redact, handed over as flared gets them
    stopping: list[int] = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    mirror = LogMirror(getattr(args, "config", None), sys.stdout)
    while not stopping:
        mirror.tick()
        time.sleep(FOLLOW_EVERY_S)
    mirror.tick()  # the final snapshots, written while the gateways and flared stopped
    return EXIT_OK


class LogMirror:
    """Copies new lines of flared's log and each gateway's to one stream, prefixed and redacted.

    Read from the files, not through the daemon: it must see flared's boot
    and its final snapshot, when the daemon does not answer. A log that
    existed before the mirror started is followed from its end (the state
    volume keeps the last run's lines); one that appears later, from its
    start. The config is read again when the file changes, so a bot added
    by an edit is followed and new secrets are redacted.
    """

    def __init__(
        self, config_path: str | None, out: TextIO, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.config_path = config_path
        self.out = out
        self.started = clock()
        self.loaded: LoadedConfig | None = None
        self.stamp: tuple[int, int] | None = None
        self.said_error = ""
        self.announced = False
        self.offsets: dict[Path, int] = {}
        self.noted: dict[Path, int] | None = None
        self.by_note = False

    def _reload(self) -> None:
        from flared.config.loader import ConfigError, load_config
        from flared.config.where import find_config

        path = find_config(self.config_path)
        try:
            st = path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except OSError:
            stamp = (0, 0)
        if stamp == self.stamp:
            return
        try:
            self.loaded = load_config(str(path), check_state_dir=False)
            self.stamp, self.said_error = stamp, ""
        except ConfigError as exc:
            self.stamp = stamp
            text = "; ".join(str(i) for i in exc.issues)
            if text != self.said_error:  # said once per edit, the last good config still redacts
                self.said_error = text
                self._write("logs", text if self.loaded is None else f"config not reread: {text}")

    def sources(self) -> list[tuple[str, Path]]:
        from flared.hermes.paths import BotPaths

        if self.loaded is None:
            return []
        state = self.loaded.state_dir
        out = [("flared", state / "logs" / "flared.log")]
        out += [(f"gateway-{b}", BotPaths.of(state, b).gateway_log) for b in self.loaded.config.bot_names]
        return out

    def _start_offsets(self) -> dict[Path, int] | None:
        """The sizes the entrypoint noted at container start (:data:`START_OFFSETS`), if it did."""
        assert self.loaded is not None
        try:
            text = (self.loaded.state_dir / "logs" / START_OFFSETS).read_text()
        except OSError:
            return None
        noted: dict[Path, int] = {}
        for line in text.splitlines():
            size, _, path = line.partition(" ")
            if size.isdigit() and path:
                noted[Path(path)] = int(size)
        return noted

    def _first_offset(self, path: Path) -> int | None:
        """Where to start a log first seen now; None while it does not exist.

        In the image the entrypoint noted each log's size when the container
        started, so lines flared wrote before this process looked are kept and
        the last container's are not repeated; a log not noted is new. Without
        that note: a log older than this process from its end, a newer one whole.
        """
        if self.noted is None:
            found = self._start_offsets()
            self.by_note, self.noted = found is not None, found or {}
        if self.by_note:
            return self.noted.get(path, 0)
        try:
            st = path.stat()
        except OSError:
            return None
        return st.st_size if st.st_mtime < self.started else 0

    def tick(self) -> None:
        from flared.api.core import read_from
        from flared.config.redact import redact_text

        self._reload()
        for name, path in self.sources():
            if path not in self.offsets:
                first = self._first_offset(path)
                if first is None:
                    continue  # not yet: from its first line once it appears
                self.offsets[path] = first
            text, self.offsets[path] = read_from(path, self.offsets[path])
            if text:
                assert self.loaded is not None
                for line in redact_text(text, self.loaded.config).splitlines():
                    self._write(name, line)
        if self.loaded is not None and not self.announced:  # once the starting offsets are taken
            self.announced = True
            n = len(self.loaded.config.bot_names)
            self._write("logs", f"following flared's log and {n} gateway log(s) in {self.loaded.state_dir}")
        self.out.flush()

    def _write(self, name: str, line: str) -> None:
        self.out.write(f"[{name}] {line}\n")
