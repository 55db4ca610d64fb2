"""Watch hermes-flare.yaml and reload when it changes.

The parent directory is watched (not the file), without recursion, so
editors that save by writing a temp file and renaming it over the original,
or by deleting and re-creating it, are seen like in-place writes, and the
state dir next to the file does not flood the watcher. A change is applied
once the file has stopped changing for a short settle time, so a slow
editor's half-written file is usually never read; if it is, validation
refuses it and the next write applies.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger("flared.watch")

STEP_MS = 50  # quiet time before watchfiles yields a batch
SETTLE = 0.15  # the file must keep the same size/mtime/inode this long before we read it
SETTLE_MAX = 5.0  # a file still changing after this is read anyway (validation guards it)

Fingerprint = tuple[int, int, int, int] | None


def fingerprint(path: Path) -> Fingerprint:
    """Identity and content stamp of the file (through symlinks); None if absent."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class Watcher:
    """Calls ``on_change`` after each settled change of ``path``; one thread."""

    def __init__(
        self,
        path: Path,
        on_change: Callable[[], Any],
        *,
        stop: threading.Event | None = None,
        settle: float = SETTLE,
    ) -> None:
        self.path = path
        self.on_change = on_change
        self.settle = settle
        self._stop = stop or threading.Event()
        self._thread: threading.Thread | None = None
        self._last: Fingerprint = fingerprint(path)
        self.ready = threading.Event()  # set once the watch is armed (tests wait on it)
        self.changes = 0

    def start(self) -> Watcher:
        self._thread = threading.Thread(target=self._run, name="config-watch", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self) -> None:
        import watchfiles

        directory = self.path.parent
        while not self._stop.is_set():
            try:
                self.ready.set()
                for batch in watchfiles.watch(
                    directory,
                    watch_filter=None,
                    recursive=False,
                    step=STEP_MS,
                    rust_timeout=1000,
                    yield_on_timeout=True,
                    stop_event=self._stop,
                    raise_interrupt=False,
                ):
                    if batch:
                        self._changed()
                    elif fingerprint(self.path) != self._last:
                        self._changed()  # a missed event (e.g. a symlink swapped in a parent dir)
            except Exception as exc:  # directory gone, inotify limits...
                log.warning(
                    "watching %s failed (%s); retrying; SIGHUP or `flared reload` still work", directory, exc
                )
                self._stop.wait(2)

    def _changed(self) -> None:
        fp = self._settled()
        if fp == self._last:
            return  # also: still gone or unreadable, said once already
        if fp is None:
            # Said once per change (the watch wakes every second). A file that
            # is there but cannot be read (a link loop, no permission) is also
            # reloaded: the refusal's reason then shows in `flared status`.
            self._last = None
            why = unreadable(self.path)
            log.warning("%s %s; the running config stays until it can be read again", self.path, why)
            if why != GONE:
                self.changes += 1
                try:
                    self.on_change()
                except Exception:
                    log.exception("reloading %s failed", self.path)
            return
        self._last = fp
        self.changes += 1
        try:
            self.on_change()
        except Exception:
            log.exception("reloading %s failed", self.path)

    def _settled(self) -> Fingerprint:
        deadline = time.monotonic() + SETTLE_MAX
        fp = fingerprint(self.path)
        while time.monotonic() < deadline and not self._stop.is_set():
            if self._stop.wait(self.settle):
                break
            now = fingerprint(self.path)
            if now == fp:
                return fp
            fp = now
        return fp


GONE = "is gone"


def unreadable(path: Path) -> str:
    """Why ``path`` cannot be read, in a few words."""
    try:
        os.stat(path)
    except FileNotFoundError:
        return GONE if not os.path.islink(path) else "is a link to nothing"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a symbolic link loop"
        return f"cannot be read ({exc.strerror})"
    return "changed while it was read"


def watch_config(path: Path, reload: Callable[[], dict[str, Any]], stop: threading.Event) -> Watcher:
    """Call ``reload`` whenever the config file changes; log when the change is refused."""

    def on_change() -> None:
        result = reload()
        if result.get("errors"):
            log.error("%s changed but was not applied (see `flared status`)", path)

    return Watcher(path, on_change, stop=stop).start()
