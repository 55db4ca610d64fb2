"""The `flare` Hermes plugin: loaded by every gateway flared starts.

Hermes discovers it through the ``hermes_agent.plugins`` entry point and
calls :func:`register` when ``plugins.enabled`` lists ``flare``.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("flared.plugin")

REGISTERED: dict[str, Any] = {}


def register(ctx: Any) -> None:
    """Entry point Hermes calls; later features hook in here."""
    REGISTERED["ctx"] = ctx
    log.info("flare plugin registered")
