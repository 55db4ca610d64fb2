"""Where a bot lives in the state dir, and its gateway's supervisord program name.

Kept apart from rendering so status, snapshots and cron can find a bot's
home without importing YAML rendering or Hermes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

GATEWAY_PREFIX = "gateway-"


@dataclass(frozen=True)
class BotPaths:
    root: Path

    @classmethod
    def of(cls, state_dir: Path | str, bot: str) -> BotPaths:
        return cls(Path(state_dir) / "bots" / bot)

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def lock_dir(self) -> Path:
        return self.root / "run"

    @property
    def gateway_log(self) -> Path:
        return self.logs / "gateway.log"


def program_name(bot: str) -> str:
    return GATEWAY_PREFIX + bot
