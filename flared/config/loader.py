"""Load `hermes-flare.yaml`: find it, parse it with positions, fill `${VAR}`s,
apply `FLARE_*` overrides, validate, and report every problem at once as
``FILE:LINE:COL: dotted.path: message``.

Size: the YAML limits, positions, interpolation and overrides run in one
pass over the same node tree, so they are one module; the models and the
position-keeping parser (:mod:`flared.config.yamlpos`) are apart.
"""

from __future__ import annotations

import difflib
import errno
import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from flared.config import yamlpos
from flared.config.checks import cross_checks
from flared.config.models import HermesFlareConfig
from flared.config.where import DEFAULT_NAME as DEFAULT_NAME
from flared.config.where import ENV_CONFIG as ENV_CONFIG
from flared.config.where import find_config as find_config
from flared.config.yamlpos import Mark, dotted

EMPTY_FILE = (
    "the file is empty (or holds only comments): refused, so that a truncated file never stops "
    "every bot; put the config back (to run no bots, write `bots: []`)"
)
NO_BOTS = (
    "there is no `bots:` section: list the bots, or write `bots: []` to run none "
    "(a file without it is refused, so that a truncated file never stops every bot)"
)
_VAR = re.compile(r"\$(\$)?\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


@dataclass(frozen=True)
class Issue:
    """One problem in the file, with where it is."""

    file: str
    line: int
    col: int
    path: str
    message: str

    def __str__(self) -> str:
        if self.line == 0:  # about the file as a whole
            return f"{self.file}: {self.message}"
        if self.path == "(file)":  # a syntax error: a place in the text, not a field
            return f"{self.file}:{self.line}:{self.col}: {self.message}"
        return f"{self.file}:{self.line}:{self.col}: {self.path}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "file": self.file,
            "line": self.line,
            "col": self.col,
            "path": self.path,
            "message": self.message,
        }


class ConfigError(Exception):
    """The config is invalid; ``issues`` lists every problem found."""

    def __init__(self, issues: list[Issue]) -> None:
        super().__init__("\n".join(str(i) for i in issues))
        self.issues = issues


@dataclass
class LoadedConfig:
    """A validated config plus where it came from."""

    config: HermesFlareConfig
    path: Path
    text: str
    digest: str
    loaded_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def base_dir(self) -> Path:
        return self.path.parent

    @property
    def state_dir(self) -> Path:
        return Path(self.config.state_dir)


def digest_text(text: str) -> str:
    """What `flared status` and the Worker compare: sha256 of the file's bytes."""
    return hashlib.sha256(text.encode()).hexdigest()


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    text: str | None = None,
    environ: Mapping[str, str] | None = None,
    check_state_dir: bool = True,
) -> LoadedConfig:
    """Load and validate; raise :class:`ConfigError` listing every problem."""
    cfg_path = find_config(path)
    shown = str(path) if path else str(cfg_path)
    env = os.environ if environ is None else environ
    if text is None:
        text = read_config_text(cfg_path, shown)
    try:
        located = yamlpos.load(text)
    except yamlpos.YamlSyntaxError as exc:
        raise ConfigError([Issue(shown, exc.mark.line, exc.mark.col, "(file)", exc.message)]) from None
    if located.empty:
        raise ConfigError([Issue(shown, 0, 0, "(file)", EMPTY_FILE)])

    issues: list[Issue] = []

    sources: dict[yamlpos.Path, list[tuple[str, str]]] = {}  # value -> the ${VAR}s it came from

    def add(p: yamlpos.Path, message: str, *, key: bool = False) -> None:
        m = located.mark(p, prefer_key=key)
        issues.append(Issue(shown, m.line, m.col, dotted(p), message + _var_note(p, sources)))

    for p, m in located.duplicates:
        issues.append(Issue(shown, m.line, m.col, dotted(p), "duplicate key (the later value would win)"))
    if not isinstance(located.data, dict):
        add((), "the file must be a mapping of sections such as `bots:` and `store:`")
        raise ConfigError(issues)
    if "bots" not in located.data:
        add((), NO_BOTS)

    data, used_vars, failed_vars = _interpolate(located.data, env, add, sources)
    overrides = _env_overrides(env)
    data = _deep_merge(data, overrides)

    config: HermesFlareConfig | None = None
    try:
        config = HermesFlareConfig.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = _data_path(data, err["loc"])
            if loc in failed_vars:
                continue  # already reported: the variable it needs is unset
            if err["type"] == "extra_forbidden":
                add(loc, _unknown_key_message(loc, data), key=True)
            elif err["type"] == "missing":
                add(loc[:-1], f"`{loc[-1]}` is required")
            else:
                add(loc, _clean(err["msg"]) + _from_env(loc, overrides))
    for p, message in cross_checks(data, used_vars):
        if not any(f[: len(p)] == p for f in failed_vars):  # caused by an unset variable
            add(p, message)
    if issues or config is None:
        _sort(issues)
        raise ConfigError(issues)

    config = _resolve_paths(config, cfg_path.parent)
    if check_state_dir:
        problem = _state_dir_problem(Path(config.state_dir))
        if problem:
            add(("state_dir",), problem)
            raise ConfigError(issues)
    return LoadedConfig(config=config, path=cfg_path.resolve(), text=text, digest=digest_text(text))


def read_config_text(cfg_path: Path, shown: str) -> str:
    """The file as text; never more than :data:`yamlpos.MAX_BYTES` of it is read."""
    hint = f"create it (see the repository's {DEFAULT_NAME}) or pass -c FILE / set ${ENV_CONFIG}"
    try:
        with cfg_path.open("rb") as fh:
            raw = fh.read(yamlpos.MAX_BYTES + 1)
        too_big = yamlpos.size_error(raw)
        if too_big is not None:
            m = too_big.mark
            raise ConfigError([Issue(shown, m.line, m.col, "(file)", too_big.message)])
        return raw.decode("utf-8")
    except FileNotFoundError:
        raise ConfigError([Issue(shown, 0, 0, "(file)", f"config file not found: {hint}")]) from None
    except IsADirectoryError:
        raise ConfigError([Issue(shown, 0, 0, "(file)", "is a directory, not a YAML file")]) from None
    except PermissionError:
        raise ConfigError([Issue(shown, 0, 0, "(file)", "cannot be read: permission denied")]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([Issue(shown, 0, 0, "(file)", f"is not UTF-8 text ({exc.reason})")]) from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            message = (
                "cannot be read: it is a symbolic link loop (its links lead back to themselves); "
                "make it a file, or a link to one"
            )
            raise ConfigError([Issue(shown, 0, 0, "(file)", message)]) from None
        raise ConfigError([Issue(shown, 0, 0, "(file)", f"cannot be read: {exc.strerror}")]) from None


# --------------------------------------------------------------------------- interpolation


def _interpolate(
    value: Any,
    env: Mapping[str, str],
    add: Any,
    sources: dict[yamlpos.Path, list[tuple[str, str]]] | None = None,
) -> tuple[Any, set[yamlpos.Path], set[yamlpos.Path]]:
    """Fill `${VAR}` / `${VAR:-default}` in strings; `$${` is a literal `${`.

    ``sources`` gets, per filled value, which variables it came from, so an
    error about the value can name the variable rather than only the line.
    """
    used: set[yamlpos.Path] = set()
    failed: set[yamlpos.Path] = set()

    def walk(v: Any, p: yamlpos.Path) -> Any:
        if isinstance(v, dict):
            return {k: walk(x, (*p, k)) for k, x in v.items()}
        if isinstance(v, list):
            return [walk(x, (*p, i)) for i, x in enumerate(v)]
        if isinstance(v, str) and "${" in v:
            return sub(v, p)
        return v

    def sub(text: str, p: yamlpos.Path) -> str:
        def one(m: re.Match[str]) -> str:
            escaped, name, default = m.group(1), m.group(2), m.group(3)
            if escaped:
                return m.group(0)[1:]
            used.add(p)
            if name in env and (env[name] != "" or default is None):
                if sources is not None:
                    sources.setdefault(p, []).append((name, env[name]))
                return env[name]
            if default is not None:
                return default
            failed.add(p)
            add(p, f"environment variable {name} is not set (set it, or write ${{{name}:-default}})")
            return ""

        return _VAR.sub(one, text)

    return walk(value, ()), used, failed


_OVERRIDES_CLS: Any = None


def _overridden(env: Mapping[str, str]) -> bool:
    """Whether any ``FLARE_<FIELD>`` or ``FLARE_<FIELD>__...`` names a config field.

    Other FLARE_ variables (``FLARE_CONTROL_TOKEN``, ``FLARE_GROUP``) are not
    overrides, and without any, pydantic-settings is never imported.
    """
    fields = [f for f in HermesFlareConfig.model_fields if f != "version"]
    for key in env:
        k = key.lower()
        if k.startswith("flare_") and any(k[6:] == f or k[6:].startswith(f + "__") for f in fields):
            return True
    return False


def _env_overrides(env: Mapping[str, str]) -> dict[str, Any]:
    """`FLARE_SNAPSHOTS__EVERY=5m` -> ``{"snapshots": {"every": "5m"}}``."""
    global _OVERRIDES_CLS
    if not _overridden(env):
        return {}
    from pydantic import create_model
    from pydantic_settings import BaseSettings, EnvSettingsSource, SettingsConfigDict

    if _OVERRIDES_CLS is None:

        class _OverrideSettings(BaseSettings):
            """Only a carrier for pydantic-settings' FLARE_* env parsing."""

            model_config = SettingsConfigDict(env_prefix="FLARE_", env_nested_delimiter="__", extra="ignore")

        fields: dict[str, Any] = {
            name: (f.annotation, f) for name, f in HermesFlareConfig.model_fields.items() if name != "version"
        }
        _OVERRIDES_CLS = create_model("FlareOverrides", __base__=_OverrideSettings, **fields)
    source = EnvSettingsSource(
        _OVERRIDES_CLS, env_prefix="FLARE_", env_nested_delimiter="__", case_sensitive=False
    )
    source.env_vars = {k.lower(): v for k, v in env.items()}
    try:
        return dict(source())
    except Exception as exc:
        raise ConfigError([Issue("(environment)", 0, 0, "FLARE_*", f"invalid override: {exc}")]) from None


def _deep_merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        out = dict(base)
        for k, v in over.items():
            out[k] = _deep_merge(base.get(k), v) if k in base else v
        return out
    return over


_SECRETISH = re.compile(r"key|token|secret|password|credential", re.IGNORECASE)


def _var_note(p: yamlpos.Path, sources: dict[yamlpos.Path, list[tuple[str, str]]]) -> str:
    """`` (from $VAR="value")`` for a value filled from the environment (never a secret's value)."""
    found = sources.get(p)
    if not found:
        return ""
    secret = any(_SECRETISH.search(str(part)) for part in p)
    shown = [f"${n}" if secret or len(v) > 60 else f"${n}={v!r}" for n, v in found]
    return f" (from {', '.join(shown)} in the environment)"


def _from_env(loc: yamlpos.Path, overrides: dict[str, Any]) -> str:
    node: Any = overrides
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return ""
    var = "FLARE_" + "__".join(str(p).upper() for p in loc)
    return f" (from ${var})"


# --------------------------------------------------------------------------- messages


def _data_path(data: Any, loc: tuple[Any, ...]) -> yamlpos.Path:
    """Drop pydantic's union tags and validator names from ``loc``."""
    out: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and isinstance(part, str) and (part in node or not _is_tag(part)):
            out.append(part)
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int):
            out.append(part)
            node = node[part] if part < len(node) else None
        elif isinstance(part, str) and _is_tag(part):
            continue
        else:
            out.append(part)
            node = None
    return tuple(out)


def _is_tag(part: str) -> bool:
    return part[:1].isupper() or "[" in part or part in {"str", "int", "float", "bool", "list", "dict"}


def _clean(msg: str) -> str:
    for prefix in ("Value error, ", "Assertion failed, "):
        if msg.startswith(prefix):
            msg = msg[len(prefix) :]
    return msg


def _unknown_key_message(loc: yamlpos.Path, data: Any) -> str:
    key = str(loc[-1])
    known = _known_keys(loc[:-1], data)
    hint = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    message = f"unknown key {key!r}"
    if hint:
        message += f" (did you mean {hint[0]!r}?)"
    elif known:
        message += f"; valid keys here: {', '.join(sorted(known))}"
    return message


def _known_keys(parent: yamlpos.Path, data: Any) -> list[str]:
    model: Any = HermesFlareConfig
    for part in parent:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return []
        field = model.model_fields.get(str(part))
        if field is None:
            return []
        model = _model_of(field.annotation)
    if isinstance(model, type) and issubclass(model, BaseModel):
        return list(model.model_fields)
    return []


def _model_of(annotation: Any) -> Any:
    """The BaseModel inside ``X | None``, ``list[X]`` or ``dict[str, X]``."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None


def _sort(issues: list[Issue]) -> None:
    issues.sort(key=lambda i: (i.line, i.col))


# --------------------------------------------------------------------------- paths


def _resolve_paths(cfg: HermesFlareConfig, base: Path) -> HermesFlareConfig:
    state_dir = (base / os.path.expanduser(cfg.state_dir)).resolve()
    store = cfg.store
    if store.url.startswith("file://"):
        local = Path(os.path.expanduser(store.url[len("file://") :]))
        store = store.model_copy(update={"url": "file://" + str((base / local).resolve())})
    return cfg.model_copy(update={"state_dir": str(state_dir), "store": store})


def _state_dir_problem(path: Path) -> str | None:
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe == path and not path.is_dir():
        return f"{path} exists and is not a directory"
    if not probe.is_dir():
        return f"cannot create {path}: {probe} is not a directory"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"cannot create {path}: {probe} is not writable"
    return None


def describe_mark(m: Mark) -> str:
    return f"{m.line}:{m.col}"
