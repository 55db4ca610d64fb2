"""Finding the running daemon's control socket from a config file path.

`flared status` and `flared reload` must reach the daemon (which keeps the
last good config) even after an edit broke the file, and with it
`state_dir`. The daemon publishes a pointer to its socket under a name
derived from the config path; failing that, the socket is guessed from the
file read as leniently as possible.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml

from flared.config.loader import LoadedConfig
from flared.config.models import HermesFlareConfig


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
    key = hashlib.sha256(str(config_path.resolve()).encode()).hexdigest()[:24]
    return d / f"{key}.sock"


def publish_socket(config_path: Path, socket: Path) -> None:
    """Symlink ``socket`` under a name derived from the config path.

    Lets `flared status` and `flared reload` find the daemon that runs a
    config file even when an edit broke the file (and with it `state_dir`).
    """
    link = pointer_path(config_path)
    if link is None:
        return
    tmp = link.with_name(f".{link.name}.{os.getpid()}")
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(socket.resolve())
        os.replace(tmp, link)


def guess_socket(path: Path) -> Path:
    """The running daemon's socket when the config file no longer validates.

    `flared status` must still reach the daemon (which keeps the last good
    config) after a bad edit, so read only ``state_dir`` and
    ``control.socket`` as leniently as possible: parsed YAML if it parses,
    else the top-level ``state_dir:`` line, else the default.
    """
    link = pointer_path(path)
    if link is not None and link.is_symlink() and link.exists():
        return link.resolve()
    text = ""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        text = path.read_text(encoding="utf-8")
    state_dir: str | None = None
    socket: str | None = None
    data: Any = None
    with contextlib.suppress(yaml.YAMLError):
        data = yaml.safe_load(text)
    if isinstance(data, dict):
        if isinstance(data.get("state_dir"), str):
            state_dir = data["state_dir"]
        control = data.get("control")
        if isinstance(control, dict) and isinstance(control.get("socket"), str):
            socket = control["socket"]
    else:
        m = _TOP_STATE_DIR.search(text)
        state_dir = m.group(1) if m else None
    state_dir = (
        os.environ.get("FLARE_STATE_DIR") or state_dir or HermesFlareConfig.model_fields["state_dir"].default
    )
    socket = os.environ.get("FLARE_CONTROL__SOCKET") or socket
    base = path.resolve().parent
    if socket:
        return base / os.path.expanduser(_expand(socket))
    return base / os.path.expanduser(_expand(str(state_dir))) / "flared.sock"


def _expand(value: str) -> str:
    return _VAR.sub(lambda m: os.environ.get(m.group(1)) or (m.group(2) or ""), value)
