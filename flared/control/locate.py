"""Finding the running daemon's control socket from a config file path.

Commands that talk to the running daemon must reach it without validating
the file: that costs pydantic's import (most of a CLI's start-up), and the
daemon keeps running its last good config after an edit broke the file (and
with it ``state_dir``). The daemon publishes a pointer to its socket under a
name derived from the config path; failing that, the socket is guessed from
the environment and the file read as leniently as possible. Nothing here
imports pydantic, and YAML only on the last fallback.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING

from flared.config.where import DEFAULT_STATE_DIR, resolved

if TYPE_CHECKING:
    from flared.config.loader import LoadedConfig


def socket_path(loaded: LoadedConfig) -> Path:
    explicit = loaded.config.control.socket
    return Path(explicit) if explicit else loaded.state_dir / "flared.sock"


_TOP_STATE_DIR = re.compile(r"^state_dir\s*:\s*['\"]?([^'\"#\n]+?)['\"]?\s*(?:#.*)?$", re.MULTILINE)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


def pointer_dir() -> Path | None:
    """A directory only this user can write: ``$XDG_RUNTIME_DIR/hermes-flare`` or ``/tmp/hermes-flare-UID``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    d = Path(runtime) / "hermes-flare" if runtime else Path(f"/tmp/hermes-flare-{os.getuid()}")
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = d.lstat()
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        return None  # someone else's directory: do not trust or write it
    return d


def pointer_path(config_path: Path) -> Path | None:
    d = pointer_dir()
    if d is None:
        return None
    key = hashlib.sha256(str(resolved(config_path)).encode()).hexdigest()[:24]
    return d / f"{key}.sock"


def publish_socket(config_path: Path, socket: Path) -> None:
    """Symlink ``socket`` under a name derived from the config path.

    Lets every command find the daemon that runs a config file without
    validating the file, even when an edit broke it (and with it `state_dir`).
    """
    link = pointer_path(config_path)
    if link is None:
        return
    tmp = link.with_name(f".{link.name}.{os.getpid()}")
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(socket.resolve())
        os.replace(tmp, link)


def daemon_socket(config_path: Path) -> Path:
    """Where the daemon that runs ``config_path`` listens (it may not be running).

    An explicit ``FLARE_CONTROL__SOCKET`` or ``FLARE_STATE_DIR`` in the
    caller's environment wins (the caller chose another daemon), then the
    pointer the daemon published, then a lenient reading of the file.
    """
    env_socket = os.environ.get("FLARE_CONTROL__SOCKET")
    if env_socket:
        return resolved(config_path).parent / os.path.expanduser(env_socket)
    if not os.environ.get("FLARE_STATE_DIR"):
        link = pointer_path(config_path)
        if link is not None and link.is_symlink() and link.exists():
            return link.resolve()
    return guess_socket(config_path)


def guess_socket(path: Path) -> Path:
    """The daemon's socket read from the file as leniently as possible.

    Only ``state_dir`` and ``control.socket`` matter, read line by line
    (never parsed: a broken or hostile file must not cost memory here),
    else the default.
    """
    link = pointer_path(path)
    if not os.environ.get("FLARE_STATE_DIR") and link is not None and link.is_symlink() and link.exists():
        return link.resolve()
    text = ""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        text = path.read_text(encoding="utf-8")
    state_dir, socket = lenient_fields(text)
    state_dir = os.environ.get("FLARE_STATE_DIR") or state_dir or DEFAULT_STATE_DIR
    socket = os.environ.get("FLARE_CONTROL__SOCKET") or socket
    base = resolved(path).parent
    if socket:
        return base / os.path.expanduser(_expand(socket))
    return base / os.path.expanduser(_expand(str(state_dir))) / "flared.sock"


_SCALAR = r"\s*['\"]?([^'\"#\n,}]+?)['\"]?\s*"
_TOP_KEY = re.compile(r"^[A-Za-z_]")
_SOCKET_LINE = re.compile(r"^\s+socket\s*:" + _SCALAR + r"(?:#.*)?$")
_SOCKET_FLOW = re.compile(r"^control\s*:\s*\{.*?\bsocket\s*:" + _SCALAR + r"[,}]")


def lenient_fields(text: str) -> tuple[str | None, str | None]:
    """``state_dir`` and ``control.socket`` from a file that may not parse."""
    m = _TOP_STATE_DIR.search(text)
    state_dir = m.group(1).strip() if m else None
    socket: str | None = None
    in_control = False
    for line in text.splitlines():
        if _TOP_KEY.match(line):
            flow = _SOCKET_FLOW.match(line)
            if flow:
                socket = flow.group(1).strip()
            in_control = line.split(":", 1)[0].strip() == "control"
        elif in_control:
            sm = _SOCKET_LINE.match(line)
            if sm:
                socket = sm.group(1).strip()
    return state_dir, socket


def _expand(value: str) -> str:
    return _VAR.sub(lambda m: os.environ.get(m.group(1)) or (m.group(2) or ""), value)
