"""Per-deploy secrets kept in the state dir, and the per-bot tokens derived from them.

Each gateway gets a token that lets its `flare` plugin reach only its own
bot's leases through the control API. Tokens are HMACs of one random secret,
so flared can verify them without storing a table.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

SECRET_FILE = "control.secret"


def state_secret(state_dir: Path, name: str = SECRET_FILE) -> bytes:
    """Read (or create, 0600) a random secret in the state dir."""
    path = Path(state_dir) / name
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_hex(32).encode()
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(value)
    try:
        os.link(tmp, path)  # first writer wins; a concurrent creator reads ours
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_bytes()


def bot_token(state_dir: Path, bot: str) -> str:
    """The token the gateway of ``bot`` presents to flared."""
    mac = hmac.new(state_secret(state_dir), f"bot:{bot}".encode(), hashlib.sha256).hexdigest()
    return f"flb_{bot}_{mac[:40]}"


def verify_bot_token(state_dir: Path, token: str) -> str | None:
    """The bot a token belongs to, or None."""
    if not token.startswith("flb_"):
        return None
    bot = token[4:].rpartition("_")[0]
    if not bot:
        return None
    return bot if hmac.compare_digest(bot_token(state_dir, bot), token) else None


def derived_secret(state_dir: Path, purpose: str, length: int = 32) -> str:
    """A stable secret for ``purpose`` (e.g. a generated api_server key)."""
    mac = hmac.new(state_secret(state_dir), f"derive:{purpose}".encode(), hashlib.sha256).hexdigest()
    return mac[:length]
