"""The operator's supervisord program: restarted with backoff, never holding the bots back."""

from __future__ import annotations

import hashlib
import json
import sys
from typing import Any

from pydantic import SecretStr

from flared.config.handoff import ENV_FILE_VAR
from flared.config.loader import LoadedConfig
from flared.supervisor import Layout, ProgramSpec

NAME = "operator"


def _settings_digest(loaded: LoadedConfig) -> str:
    """Changes to the operator section (tokens included, by value) restart the program."""

    def reveal(v: Any) -> Any:
        return v.get_secret_value() if isinstance(v, SecretStr) else str(v)

    section = loaded.config.operator.model_dump() if loaded.config.operator else None
    return hashlib.sha256(json.dumps(section, default=reveal, sort_keys=True).encode()).hexdigest()[:16]


def operator_program(loaded: LoadedConfig) -> ProgramSpec:
    return ProgramSpec(
        name=NAME,
        command=[sys.executable, "-m", "flared", "operator", "run", "-c", str(loaded.path)],
        environment={
            "PYTHONUNBUFFERED": "1",
            "FLARE_OPERATOR_DIGEST": _settings_digest(loaded),
            ENV_FILE_VAR: str(Layout(loaded.state_dir).handoff),  # its Slack tokens: see config/handoff.py
        },
        log_file=str(loaded.state_dir / "logs" / "operator.log"),
        stopsignal="TERM",
        stopwaitsecs=10,
        priority=800,  # stopped before flared, after the gateways
        startsecs=5,
        startretries=100,  # supervisord's BACKOFF grows the delay; flared restarts it if it gives up
    )
