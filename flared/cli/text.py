"""Terminal output without a rendering library: colours, aligned tables, a progress line.

`rich` costs ~130 ms of import, more than the whole budget of a command
that talks to the running daemon; what the CLI prints needs only this.
Colours only on a terminal, and never with ``NO_COLOR`` set.
"""

from __future__ import annotations

import os
import re
import sys
import time
from typing import Any, TextIO

from flared.config.units import human_bytes

_CODES = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "cyan": "36"}
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def colours(stream: TextIO) -> bool:
    return not os.environ.get("NO_COLOR") and hasattr(stream, "isatty") and stream.isatty()


class Out:
    """One output stream: ``print`` plus styles that vanish when it is not a terminal."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stdout
        self.colour = colours(self.stream)

    def style(self, text: str, *styles: str) -> str:
        if not self.colour or not styles:
            return text
        codes = ";".join(_CODES[s] for s in styles if s in _CODES)
        return f"\x1b[{codes}m{text}\x1b[0m" if codes else text

    def print(self, text: str = "") -> None:
        self.stream.write(text + "\n")

    def table(self, headers: list[str], rows: list[list[str]]) -> None:
        for line in table_lines(headers, rows, head=lambda h: self.style(h, "bold")):
            self.print(line)


def visible_len(text: str) -> int:
    return len(_ANSI.sub("", text))


def table_lines(headers: list[str], rows: list[list[str]], head: object = None) -> list[str]:
    """Left-aligned columns two spaces apart; never cut (ids are copied from here)."""
    widths = [visible_len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], visible_len(cell))

    def line(cells: list[str]) -> str:
        parts = [c + " " * (widths[i] - visible_len(c)) for i, c in enumerate(cells)]
        return "  ".join(parts).rstrip()

    styled = [head(h) if callable(head) else h for h in headers]
    return [line([str(h) for h in styled]), *(line(r) for r in rows)]


def human_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


class ProgressLine:
    """One self-rewriting line on a terminal: what runs, bytes so far, rate.

    Does nothing when the stream is not a terminal (logs and pipes get the
    final result only). Redraws at most ten times a second.
    """

    def __init__(self, label: str, stream: TextIO | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.label = label
        self.started = time.monotonic()
        self.bytes = 0
        self._drawn = 0.0
        self._width = 0

    def advance(self, n: int) -> None:
        """A byte counter callback (what the snapshot service's ``progress=`` takes)."""
        self.bytes += n
        self.draw()

    def show(self, step: str, done: int | None, rate: float | None = None, total: int | None = None) -> None:
        if done is not None:
            self.bytes = done
        self.draw(step, rate, total)

    def draw(self, step: str | None = None, rate: float | None = None, total: int | None = None) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if now - self._drawn < 0.1:
            return
        self._drawn = now
        elapsed = max(now - self.started, 1e-6)
        if rate is None:
            rate = self.bytes / elapsed
        parts = [self.label]
        if step:
            parts.append(step)
        if self.bytes or total:
            done = human_bytes(self.bytes) + (f" of {human_bytes(total)}" if total else "")
            parts.append(f"{done}, {human_bytes(rate)}/s")
        parts.append(f"{elapsed:.0f}s")
        text = ": ".join(parts[:2]) + ("  " + "  ".join(parts[2:]) if len(parts) > 2 else "")
        pad = max(0, self._width - len(text))
        self._width = len(text)
        self.stream.write("\r" + text + " " * pad)
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self._width:
            self.stream.write("\r" + " " * self._width + "\r")
            self.stream.flush()
            self._width = 0


def flared_form() -> str:
    """How the user runs this flared from where they stand, for the hints it prints.

    ``flared`` when that name on PATH is this program; else this install's
    script, relative to the working directory when inside it (``make up``
    users have ``.venv/bin/flared`` and no ``flared`` on PATH).
    """
    import shutil

    script = os.path.join(os.path.dirname(os.path.abspath(sys.executable)), "flared")
    if not os.path.exists(script):
        return "flared"  # `python -m flared` from elsewhere: nothing better to say
    found = shutil.which("flared")
    if found and os.path.realpath(found) == os.path.realpath(script):
        return "flared"
    rel = os.path.relpath(script)
    return script if rel.startswith("..") else rel


class HintForms:
    """A text stream that prints "`flared ...`" hints in the form that works here (:func:`flared_form`).

    Hints come from the CLI and from the daemon (through `status`, errors),
    always as "`flared COMMAND`", so one rewrite where the text reaches the
    user's terminal covers every one of them.
    """

    def __init__(self, stream: TextIO, form: str) -> None:
        self.stream = stream
        self.form = form

    def write(self, text: str) -> int:
        return self.stream.write(text.replace("`flared ", f"`{self.form} "))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def localize_hints(*, stdout: bool = True) -> tuple[TextIO, TextIO]:
    """Wrap stderr (and stdout, unless it carries data: a rendered file, JSON, log lines)
    in :class:`HintForms` when needed; returns the originals to put back."""
    originals = (sys.stdout, sys.stderr)
    form = flared_form()
    if form != "flared":
        if stdout:
            sys.stdout = HintForms(sys.stdout, form)
        sys.stderr = HintForms(sys.stderr, form)
    return originals
