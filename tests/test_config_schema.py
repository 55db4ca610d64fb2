"""The committed schema and config reference must match the models."""

from __future__ import annotations

import json
from pathlib import Path

from flared.cli.validate import schema_document
from flared.config.docgen import render

ROOT = Path(__file__).parent.parent


def test_schema_file_is_current() -> None:
    committed = json.loads((ROOT / "schema" / "hermes-flare.schema.json").read_text())
    assert committed == schema_document(), "stale schema: run `make schema`"


def test_config_reference_is_current() -> None:
    assert (ROOT / "docs" / "config.md").read_text() == render(), "stale docs/config.md: run `make schema`"


def test_every_field_is_documented() -> None:
    from pydantic import BaseModel

    from flared.config.docgen import _models

    missing = [
        f"{m.__name__}.{name}"
        for m in _models()
        for name, f in m.model_fields.items()
        if issubclass(m, BaseModel) and not f.description
    ]
    assert missing == [], f"fields without a description: {missing}"


def test_schema_rejects_unknown_keys() -> None:
    assert schema_document()["additionalProperties"] is False
