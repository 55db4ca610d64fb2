"""Where the config file is, without parsing it (no pydantic, no YAML).

The lean CLI path finds the running daemon from the config file's path
alone, so these few facts live apart from :mod:`flared.config.loader`.
"""

from __future__ import annotations

import os
from pathlib import Path

ENV_CONFIG = "HERMES_FLARE_CONFIG"
DEFAULT_NAME = "hermes-flare.yaml"
#: ``state_dir``'s default (the model's; a test keeps the two equal).
DEFAULT_STATE_DIR = "./.flare"


def find_config(explicit: str | os.PathLike[str] | None = None) -> Path:
    """``-c`` first, then ``$HERMES_FLARE_CONFIG``, then ``./hermes-flare.yaml``."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(ENV_CONFIG)
    if env:
        return Path(env)
    return Path(DEFAULT_NAME)


def resolved(path: Path) -> Path:
    """``path`` absolute, with links resolved where they can be.

    A link loop cannot be resolved (``Path.resolve`` raises): it is kept as
    named, in its resolved directory, so the running daemon is still found
    (its pointer is keyed by that path) and the caller can report the loop.
    """
    try:
        return path.resolve()
    except (RuntimeError, OSError):  # Python 3.11 raises RuntimeError for a loop
        try:
            return path.absolute().parent.resolve() / path.name
        except (RuntimeError, OSError):
            return path.absolute()
