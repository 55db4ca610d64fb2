"""A bot's Hermes home: its `config.yaml`, its `.env`, and its gateway program.

Rendering is deterministic and idempotent: keys the user set in Hermes'
config.yaml by other means are kept, flared's keys are laid over them, then
the bot's `hermes:` passthrough over those. Files are rewritten only when
their content changes, so a second render is a no-op.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import sys
from pathlib import Path
from typing import Any

import yaml

from flared.config.models import BotConfig, HermesFlareConfig
from flared.control.tokens import bot_token, derived_secret
from flared.hermes import guard
from flared.hermes.paths import BotPaths, program_name
from flared.hermes.settings import render_bot_settings
from flared.plugin import terminal
from flared.supervisor import ProgramSpec


def api_key(state_dir: Path, bot: BotConfig) -> str | None:
    """The api_server key: the configured one, or a stable generated one."""
    if bot.api is None:
        return None
    if bot.api.key is not None:
        return bot.api.key.get_secret_value()
    return derived_secret(state_dir, f"api:{bot.name}", 48)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def flared_settings(cfg: HermesFlareConfig, bot: BotConfig) -> tuple[dict[str, Any], dict[str, str]]:
    """What flared decides for a bot: (config.yaml fragment, .env variables)."""
    state_dir = Path(cfg.state_dir)
    settings: dict[str, Any] = {
        "plugins": {"enabled": ["flare"]},
        "security": {"allow_lazy_installs": False, "tirith_enabled": False},
    }
    env: dict[str, str] = {
        "FLARE_BOT": bot.name,
        "FLARE_BOT_TOKEN": bot_token(state_dir, bot.name),
        "FLARE_CONTROL_SOCKET": str(cfg.control.socket or state_dir / "flared.sock"),
        # A reply's MEDIA:<path> uploads that host file to the chat. Hermes' default takes any file
        # off a short deny list (another bot's .env, control.secret); the agent's own files live in
        # its sandbox, so only Hermes' caches (generated media, uploads) may be attached.
        "HERMES_MEDIA_DELIVERY_STRICT": "1",
        "HERMES_MEDIA_TRUST_RECENT_FILES": "0",
    }
    frag, more = render_bot_settings(bot, state_dir)
    settings = deep_merge(settings, frag)
    env.update(more)
    settings = deep_merge(settings, terminal.hermes_config())
    env.update(terminal.gateway_env(state_dir, bot.name))
    if bot.api is not None:
        env.update(
            {
                "API_SERVER_ENABLED": "true",
                "API_SERVER_HOST": bot.api.host,
                "API_SERVER_PORT": str(bot.api.port),
                "API_SERVER_KEY": api_key(state_dir, bot) or "",
            }
        )
    for key, value in bot.env.items():
        env[key] = value.get_secret_value()
    return settings, env


def render_config_yaml(existing: dict[str, Any], settings: dict[str, Any], bot: BotConfig) -> str:
    merged = deep_merge(deep_merge(existing, settings), bot.hermes)
    return yaml.safe_dump(merged, sort_keys=True, default_flow_style=False, allow_unicode=True)


def render_env(env: dict[str, str]) -> str:
    lines = ["# Written by flared from hermes-flare.yaml; never snapshotted. Edits are overwritten."]
    for k, v in sorted(env.items()):
        if "\n" in v:
            raise ValueError(f"environment value for {k} contains a newline")
        escaped = v.replace("\\", "\\\\").replace('"', '\\"')
        lines.append(f'{k}="{escaped}"')
    return "\n".join(lines) + "\n"


class UnsafeHome(Exception):
    """A path flared renders in a Hermes home is a link or not a plain file; it is left alone."""


def _check_dir(path: Path, what: str) -> None:
    """``path`` exists as a real directory, not a link to one elsewhere."""
    st = path.lstat()
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeHome(
            f"the bot's {what} is a symbolic link ({path} -> {os.readlink(path)}); "
            "flared does not follow links out of a bot's directory: remove it"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafeHome(f"the bot's {what} ({path}) is not a directory: remove it")


def read_own(path: Path) -> str | None:
    """The text of a file flared writes in a home, None if missing; never through a link.

    A symlinked ``config.yaml`` would have its target merged into the bot's
    config (and rewritten if it ever matched); a FIFO would block the
    reconcile; a hard link is a second name for content flared rewrites. All
    are refused with what to do, for ``flared status`` to show.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeHome(
                f"{path.name} is a symbolic link ({path} -> {os.readlink(path)}); flared does not "
                "follow links in a Hermes home: remove it and flared writes a fresh one"
            ) from None
        raise
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeHome(f"{path.name} is not a regular file ({path}): remove it")
        if st.st_nlink > 1:
            raise UnsafeHome(
                f"{path.name} has another name (a hard link, {st.st_nlink} names) ({path}): "
                "remove the other name, or this file, and flared writes a fresh one"
            )
        return fh.read().decode("utf-8", errors="replace")


def _write_if_changed(path: Path, text: str, mode: int, current: str | None) -> bool:
    """Replace ``path`` (already checked by :func:`read_own`, which gave ``current``) if it differs."""
    if current == text:
        if (path.stat().st_mode & 0o777) != mode:
            path.chmod(mode)
        return False
    tmp = path.with_name(f".{path.name}.flared-tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return True


def write_guard(home: Path) -> None:
    """The ``flare-guard`` gateway hook (:mod:`flared.hermes.guard`), never through a link."""
    hook = guard.hook_dir(home)
    for d, what in ((hook.parent, "hooks directory"), (hook, "flare-guard hook")):
        d.mkdir(mode=0o700, exist_ok=True)
        _check_dir(d, what)
    for name, text in guard.files().items():
        path = hook / name
        _write_if_changed(path, text, 0o600, read_own(path))


def render_home(cfg: HermesFlareConfig, bot: BotConfig) -> str:
    """Write the bot's config.yaml, .env and flare-guard hook; return a digest of what was rendered.

    Raises :class:`UnsafeHome` (nothing written, no link followed) when the
    home, ``config.yaml`` or ``.env`` is a link or not a plain file.

    The digest goes into the gateway program's environment, so a change to
    what flared renders restarts exactly that gateway.
    """
    paths = BotPaths.of(cfg.state_dir, bot.name)
    paths.root.mkdir(parents=True, exist_ok=True)
    _check_dir(paths.root, "directory")
    paths.home.mkdir(exist_ok=True)
    _check_dir(paths.home, "home")
    for d in (paths.logs, paths.lock_dir):
        d.mkdir(parents=True, exist_ok=True)
    paths.home.chmod(0o700)
    config_path, env_path = paths.home / "config.yaml", paths.home / ".env"
    current_config, current_env = read_own(config_path), read_own(env_path)
    existing: dict[str, Any] = {}
    if current_config is not None:
        try:
            loaded = yaml.safe_load(current_config) or {}
            existing = loaded if isinstance(loaded, dict) else {}
        except yaml.YAMLError:
            existing = {}  # a broken file is replaced by what flared knows
    settings, env = flared_settings(cfg, bot)
    config_text = render_config_yaml(existing, settings, bot)
    env_text = render_env(env)
    _write_if_changed(config_path, config_text, 0o600, current_config)
    _write_if_changed(env_path, env_text, 0o600, current_env)
    write_guard(paths.home)
    h = hashlib.sha256()
    # Digest what flared decides, not the merged file: Hermes writes its own
    # keys into config.yaml (e.g. onboarding state after the first message),
    # and that must not restart the gateway on the next reconcile.
    h.update(yaml.safe_dump(deep_merge(settings, bot.hermes), sort_keys=True).encode())
    h.update(env_text.encode())
    return h.hexdigest()[:16]


def hermes_executable() -> str:
    """The `hermes` console script next to this interpreter."""
    candidate = Path(sys.executable).parent / "hermes"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("hermes")
    if not found:
        raise FileNotFoundError("the `hermes` command is not installed (pip install 'hermes-agent[slack]')")
    return found


def gateway_program(cfg: HermesFlareConfig, bot: BotConfig, render_digest: str) -> ProgramSpec:
    """The supervisord program that runs this bot's gateway."""
    paths = BotPaths.of(cfg.state_dir, bot.name)
    return ProgramSpec(
        name=program_name(bot.name),
        command=[hermes_executable(), "gateway", "run", "--no-supervise", "--external-supervisor"],
        environment={
            "HERMES_HOME": str(paths.home),
            "HOME": str(paths.root),
            "HERMES_GATEWAY_MAX_STARTS": "0",
            "HERMES_GATEWAY_LOCK_DIR": str(paths.lock_dir),
            "TIRITH_ENABLED": "false",
            "PYTHONUNBUFFERED": "1",
            "FLARE_RENDER_DIGEST": render_digest,
        },
        directory=str(paths.home),
        log_file=str(paths.gateway_log),
        stopsignal="INT",
        stopwaitsecs=30,
        priority=900,
        # Exit 78 is Hermes' fatal config error: restarting cannot help. flared
        # shows it as failed and starts it again after a config change or
        # `flared restart` (flared.gateways); any other exit is restarted.
        autorestart="unexpected",
        exitcodes=(78,),
    )
