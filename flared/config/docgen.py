"""Generate docs/config.md from the config models (`python -m flared.config.docgen`).

A test checks the committed file equals this output, so the reference never
drifts from the code.
"""

from __future__ import annotations

import json
import types
import typing
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from flared.config import models as c
from flared.config import units

HEADER = """# hermes-flare.yaml reference

Generated from `flared/config/models.py` by `python -m flared.config.docgen`; do not edit by hand.
Editors can validate with `schema/hermes-flare.schema.json`.

- Durations: a number with a unit: `500ms`, `30s`, `15m`, `1h`, `7d`, `2w` (or `1h30m`).
- Sizes: bytes, or with a unit: `64KiB`, `1MiB`, `2GiB` (binary) or `1MB` (decimal).
- `${VAR}` and `${VAR:-default}` are filled from the environment; an unset `${VAR}` is an error;
  `$${` writes a literal `${`.
- Any setting can be overridden with an environment variable `FLARE_<SECTION>__<FIELD>`,
  e.g. `FLARE_SNAPSHOTS__EVERY=5m` (lists and mappings as JSON).
- Fields marked *secret* never appear in logs, status output or snapshots.
"""


def _type_name(annotation: Any, metadata: list[Any]) -> str:
    for m in metadata:
        fn = getattr(m, "func", None)
        if fn is units.parse_duration:
            return "duration"
        if fn is units.parse_size:
            return "size"
    origin = get_origin(annotation)
    args = get_args(annotation)
    if origin is typing.Annotated:
        return _type_name(args[0], list(args[1:]))
    if origin in (typing.Union, types.UnionType):
        names = [_type_name(a, []) for a in args if a is not type(None)]
        base = " \\| ".join(names)
        return base + " \\| null" if type(None) in args else base
    if origin is Literal:
        return " \\| ".join(f"`{a}`" for a in args)
    if origin is list:
        return f"list of {_type_name(args[0], [])}"
    if origin is dict:
        return f"map of {_type_name(args[1], [])}"
    if annotation is SecretStr:
        return "string (secret)"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return f"[{annotation.__name__}](#{annotation.__name__.lower()})"
    return getattr(annotation, "__name__", str(annotation))


def _default(f: FieldInfo) -> str:
    if f.default_factory is not None:
        value = f.default_factory()  # type: ignore[call-arg]
    elif f.default is PydanticUndefined:
        return "required"
    else:
        value = f.default
    if isinstance(value, BaseModel):
        return "see section"
    if isinstance(value, dict) and value and all(isinstance(v, BaseModel) for v in value.values()):
        return "`{" + ", ".join(f"{k}: …" for k in value) + "}`"
    for m in f.metadata:
        if getattr(m, "func", None) is units.parse_duration and isinstance(value, int | float):
            return f"`{units.format_duration(float(value))}`"
        if getattr(m, "func", None) is units.parse_size and isinstance(value, int):
            return f"`{units.format_size(value)}`"
    return f"`{json.dumps(value)}`"


def _models() -> list[type[BaseModel]]:
    seen: list[type[BaseModel]] = []

    def visit(model: type[BaseModel]) -> None:
        if model in seen:
            return
        seen.append(model)
        for f in model.model_fields.values():
            for sub in _submodels(f.annotation):
                visit(sub)

    visit(c.HermesFlareConfig)
    return seen


def _submodels(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for a in get_args(annotation):
        out += _submodels(a)
    return out


def render() -> str:
    parts = [HEADER]
    for model in _models():
        doc = (model.__doc__ or "").strip().splitlines()[0] if model.__doc__ else ""
        parts.append(f"\n## {model.__name__}\n")
        if doc:
            parts.append(doc + "\n")
        parts.append("\n| field | type | default | description |\n|---|---|---|---|")
        for name, f in model.model_fields.items():
            type_name = _type_name(f.annotation, list(f.metadata))
            extra = f.json_schema_extra if isinstance(f.json_schema_extra, dict) else {}
            if extra.get("secret") and "secret" not in type_name:
                type_name += " (secret)"
            desc = (f.description or "").replace("|", "\\|")
            if f.examples:
                desc += " Example: " + ", ".join(f"`{e}`" for e in f.examples)
            parts.append(f"| `{name}` | {type_name} | {_default(f)} | {desc} |")
        parts.append("")
    return "\n".join(parts).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
