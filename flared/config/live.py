"""The config a running flared applies now, and what became of the last change to it.

One shared object: the reloader swaps ``loaded``; the gateways, routes and
status read it, so every part sees the same config at the same time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flared.config.loader import Issue, LoadedConfig
from flared.config.models import HermesFlareConfig


@dataclass
class LiveConfig:
    loaded: LoadedConfig
    #: The file on disk (or a pushed body) that did not validate or was refused; None when in step.
    errors: list[Issue] | None = None
    #: The last reload's result, with its time (shown in status).
    last_reload: dict[str, Any] | None = None

    @property
    def config(self) -> HermesFlareConfig:
        return self.loaded.config
