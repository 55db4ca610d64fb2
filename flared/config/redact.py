"""Keep secrets out of status, logs and config output."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, SecretStr

MASK = "**********"
# Token shapes worth hiding wherever they appear in text.
_PATTERNS = [
    re.compile(r"xox[abposr]-[A-Za-z0-9-]{6,}"),
    re.compile(r"xapp-[A-Za-z0-9-]{6,}"),
    re.compile(r"sk-[A-Za-z0-9_-]{12,}"),
    re.compile(r"flb_[a-z0-9-]+_[0-9a-f]{20,}"),
    re.compile(r"(?i)(authorization:\s*bearer\s+)[^\s\"']+"),
]


def secret_values(model: Any) -> list[str]:
    """Every SecretStr value inside a config model."""
    out: list[str] = []

    def walk(v: Any) -> None:
        if isinstance(v, SecretStr):
            s = v.get_secret_value()
            if len(s) >= 4:
                out.append(s)
        elif isinstance(v, BaseModel):
            for name in type(v).model_fields:
                walk(getattr(v, name))
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, list | tuple):
            for x in v:
                walk(x)

    walk(model)
    return sorted(set(out), key=len, reverse=True)


def redact_text(text: str, config: Any = None) -> str:
    if config is not None:
        for s in secret_values(config):
            text = text.replace(s, MASK)
    for pat in _PATTERNS:
        text = pat.sub(lambda m: (m.group(1) if m.groups() else "") + MASK, text)
    return text


def redacted_config(config: BaseModel) -> Any:
    """The config as JSON data; SecretStr fields print as a mask (pydantic's default)."""
    return _mask_keys(config.model_dump(mode="json"))


_SECRET_KEY = re.compile(r"(?i)(key|token|secret|password|credential)")


def _mask_keys(v: Any) -> Any:
    """Passthrough mappings (`hermes:`) are untyped: mask values under secret-looking keys."""
    if isinstance(v, dict):
        return {
            k: MASK if _SECRET_KEY.search(str(k)) and isinstance(x, str) and x else _mask_keys(x)
            for k, x in v.items()
        }
    if isinstance(v, list):
        return [_mask_keys(x) for x in v]
    return v
