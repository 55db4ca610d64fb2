"""Extra HTTP headers on the Anthropic client (``cf-aig-authorization`` for AI Gateway).

Hermes sends ``model.default_headers`` on its OpenAI-wire clients, but its
native Anthropic client takes no configured headers. flared renders the
headers as JSON in ``FLARE_MODEL_HEADERS``; this feature wraps Hermes'
``build_anthropic_client`` so every Anthropic client it builds carries them.
Hermes imports that function at call time, so replacing the module attribute
reaches every caller.
"""

from __future__ import annotations

import functools
import json
import logging
import os
from collections.abc import Callable
from typing import Any

log = logging.getLogger("flared.plugin.model")

ENV_VAR = "FLARE_MODEL_HEADERS"
_MARK = "__flare_headers__"


def headers_from_env() -> dict[str, str]:
    raw = os.environ.get(ENV_VAR, "").strip()
    if not raw:
        return {}
    try:
        value = json.loads(raw)
    except ValueError:
        raise ValueError(f"{ENV_VAR} is not a JSON object") from None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise ValueError(f"{ENV_VAR} must be a JSON object of strings")
    return {str(k): v for k, v in value.items()}


def wrap_builder(build: Callable[..., Any], headers: dict[str, str]) -> Callable[..., Any]:
    original = getattr(build, _MARK, build)

    @functools.wraps(original)
    def build_with_headers(*args: Any, **kwargs: Any) -> Any:
        client = original(*args, **kwargs)
        return client.with_options(default_headers=headers)

    setattr(build_with_headers, _MARK, original)
    return build_with_headers


def install(ctx: Any = None) -> None:
    headers = headers_from_env()
    if not headers:
        return
    from agent import anthropic_adapter  # type: ignore[import-untyped]

    anthropic_adapter.build_anthropic_client = wrap_builder(anthropic_adapter.build_anthropic_client, headers)
    log.info("extra model headers installed on the Anthropic client: %s", ", ".join(sorted(headers)))
