"""Rendering a bot's Hermes home: deterministic, preserving, secret-safe."""

from __future__ import annotations

import os
import re
import stat
from pathlib import Path

import pytest
import yaml

from flared.config.loader import load_config
from flared.hermes.home import UnsafeHome, gateway_program, render_home
from flared.hermes.paths import BotPaths


def loaded(tmp_path: Path, extra: str = "") -> object:
    text = (
        f"state_dir: {tmp_path / 'state'}\n"
        "bots:\n"
        "  - name: hermes\n"
        "    model: {provider: custom, base_url: 'http://127.0.0.1:9/v1', model: m, api_key: sk-abcdefghijklmnop}\n"
        "    api: {port: 18642}\n" + extra
    )
    p = tmp_path / "hermes-flare.yaml"
    p.write_text(text)
    return load_config(p, environ={}).config


def test_render_writes_config_and_private_env(tmp_path: Path) -> None:
    cfg = loaded(tmp_path)
    render_home(cfg, cfg.bots[0])  # type: ignore[attr-defined]
    home = BotPaths.of(tmp_path / "state", "hermes").home
    conf = yaml.safe_load((home / "config.yaml").read_text())
    assert conf["plugins"]["enabled"] == ["flare"]
    assert conf["security"]["allow_lazy_installs"] is False
    env = (home / ".env").read_text()
    assert "API_SERVER_ENABLED" in env and "FLARE_BOT_TOKEN" in env
    assert stat.S_IMODE((home / ".env").stat().st_mode) == 0o600
    assert "sk-abcdefghijklmnop" not in (home / "config.yaml").read_text()


def test_render_twice_changes_nothing(tmp_path: Path) -> None:
    cfg = loaded(tmp_path)
    d1 = render_home(cfg, cfg.bots[0])  # type: ignore[attr-defined]
    home = BotPaths.of(tmp_path / "state", "hermes").home
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (home / "config.yaml", home / ".env")}
    d2 = render_home(cfg, cfg.bots[0])  # type: ignore[attr-defined]
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (home / "config.yaml", home / ".env")}
    assert d1 == d2
    assert before == after


def test_user_keys_preserved_and_passthrough_wins(tmp_path: Path) -> None:
    cfg = loaded(tmp_path, "    hermes: {agent: {max_turns: 7}, display: {compact: true}}\n")
    home = BotPaths.of(tmp_path / "state", "hermes").home
    home.mkdir(parents=True)
    (home / "config.yaml").write_text("timezone: Europe/Berlin\nagent: {max_turns: 90, api_max_retries: 1}\n")
    render_home(cfg, cfg.bots[0])  # type: ignore[attr-defined]
    conf = yaml.safe_load((home / "config.yaml").read_text())
    assert conf["timezone"] == "Europe/Berlin"
    assert conf["agent"] == {"max_turns": 7, "api_max_retries": 1}
    assert conf["display"] == {"compact": True}


def test_render_digest_changes_with_the_bot(tmp_path: Path) -> None:
    cfg = loaded(tmp_path)
    d1 = render_home(cfg, cfg.bots[0])  # type: ignore[attr-defined]
    cfg2 = loaded(tmp_path, "    toolsets: [memory]\n    hermes: {agent: {max_turns: 3}}\n")
    assert render_home(cfg2, cfg2.bots[0]) != d1  # type: ignore[attr-defined]


def test_gateway_program(tmp_path: Path) -> None:
    cfg = loaded(tmp_path)
    spec = gateway_program(cfg, cfg.bots[0], "abc")  # type: ignore[attr-defined]
    text = spec.render()
    assert "gateway run --no-supervise --external-supervisor" in text
    assert 'HERMES_GATEWAY_MAX_STARTS="0"' in text and 'TIRITH_ENABLED="false"' in text
    assert "stopsignal=INT" in text and "autorestart=unexpected" in text and "exitcodes=78" in text
    assert f'HERMES_HOME="{tmp_path / "state" / "bots" / "hermes" / "home"}"' in text
    assert "HERMES_GATEWAY_LOCK_DIR" in text
    assert "sk-" not in text  # secrets live in .env, not in supervisord's files


# ---------------------------------------------------------------- links (issue 13 item 7)


@pytest.mark.parametrize("name", ["config.yaml", ".env"])
def test_a_symlinked_file_is_refused_and_its_target_untouched(tmp_path: Path, name: str) -> None:
    cfg = loaded(tmp_path)
    home = BotPaths.of(tmp_path / "state", "hermes").home
    home.mkdir(parents=True)
    outside = tmp_path / "outside.yaml"
    outside.write_text("secret_of_someone_else: 42\n")
    outside.chmod(0o644)
    (home / name).symlink_to(outside)
    with pytest.raises(UnsafeHome, match=re.escape(name) + " is a symbolic link"):
        render_home(cfg, cfg.bots[0])  # type: ignore[attr-defined]
    assert outside.read_text() == "secret_of_someone_else: 42\n"
    assert stat.S_IMODE(outside.stat().st_mode) == 0o644
    assert (home / name).is_symlink()  # left as found, for whoever looks into it
    other = "config.yaml" if name == ".env" else ".env"
    if (home / other).exists():
        assert "secret_of_someone_else" not in (home / other).read_text()


def test_a_symlinked_home_a_fifo_or_a_hard_link_is_refused(tmp_path: Path) -> None:
    cfg = loaded(tmp_path)
    bot = cfg.bots[0]  # type: ignore[attr-defined]
    paths = BotPaths.of(tmp_path / "state", "hermes")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    paths.root.mkdir(parents=True)
    paths.home.symlink_to(elsewhere)
    with pytest.raises(UnsafeHome, match="home is a symbolic link"):
        render_home(cfg, bot)
    assert list(elsewhere.iterdir()) == []
    paths.home.unlink()
    paths.home.mkdir()
    os.mkfifo(paths.home / "config.yaml")  # reading it would block the reconcile forever
    with pytest.raises(UnsafeHome, match=r"config\.yaml is not a regular file"):
        render_home(cfg, bot)
    (paths.home / "config.yaml").unlink()
    shared = tmp_path / "shared.yaml"
    shared.write_text("model: {}\n")
    os.link(shared, paths.home / "config.yaml")
    with pytest.raises(UnsafeHome, match=r"config\.yaml has another name"):
        render_home(cfg, bot)
    assert shared.read_text() == "model: {}\n"


def test_a_refused_home_shows_in_status_and_others_still_run(tmp_path: Path) -> None:
    from flared.config.live import LiveConfig
    from flared.gateways import Gateways
    from flared.supervisor import Layout

    p = tmp_path / "hermes-flare.yaml"
    p.write_text(
        f"state_dir: {tmp_path / 'state'}\nbots:\n"
        "  - {name: a, model: {provider: custom, base_url: 'http://127.0.0.1:9/v1', model: m}}\n"
        "  - {name: b, model: {provider: custom, base_url: 'http://127.0.0.1:9/v1', model: m}}\n"
    )
    live = LiveConfig(load_config(p, environ={}))
    gw = Gateways(live, None, Layout(tmp_path / "state"))  # type: ignore[arg-type]
    home = BotPaths.of(tmp_path / "state", "a").home
    home.mkdir(parents=True)
    (home / "config.yaml").symlink_to(tmp_path / "hermes-flare.yaml")
    gw.ready |= {"a", "b"}
    desired = gw.desired_programs()
    assert set(desired) == {"gateway-b"}
    assert "config.yaml is a symbolic link" in gw.boot_errors["a"]
    assert "remove it" in gw.boot_errors["a"]


MEDIA_PROBE = r"""
import json, sys
from gateway.platforms.base import BasePlatformAdapter
A = BasePlatformAdapter  # what the gateway does with a reply before it uploads (gateway/run.py)
print(json.dumps([A.filter_media_delivery_paths(A.extract_media(f"see MEDIA:{p}")[0]) for p in sys.argv[1:]]))
"""


@pytest.mark.integration
def test_a_reply_attaches_no_host_file_but_hermes_own_caches(tmp_path: Path) -> None:
    """A reply's ``MEDIA:<path>`` makes the gateway upload that host file to the chat.

    Hermes' default accepts any file off its short deny list: another bot's
    ``.env``, ``control.secret``, a state database. The agent's own files
    live in its sandbox, so flared renders the gateway to attach only files
    in Hermes' own caches (generated images, audio, uploads).
    """
    import json
    import subprocess
    import sys

    from dotenv import dotenv_values

    cfg = loaded(tmp_path)
    render_home(cfg, cfg.bots[0])  # type: ignore[attr-defined]
    state = tmp_path / "state"
    home = BotPaths.of(state, "hermes").home
    other = state / "bots" / "other" / "home"
    other.mkdir(parents=True)
    secrets = [other / ".env", state / "control.secret", home / "state.db", tmp_path / "fresh.pdf"]
    for p in secrets:
        p.write_text("xoxb-not-for-the-chat\n")
    image = home / "cache" / "images" / "chart.png"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"\x89PNG\r\n")
    env = {k: v or "" for k, v in dotenv_values(home / ".env").items()}
    env.update({"PATH": os.environ["PATH"], "HOME": str(tmp_path), "HERMES_HOME": str(home)})
    out = subprocess.run(
        [sys.executable, "-c", MEDIA_PROBE, *map(str, [*secrets, image])],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    attached = json.loads(out.stdout.strip().splitlines()[-1])
    leaked = [str(p) for p, got in zip(secrets, attached, strict=False) if got]
    assert not leaked, f"a reply could attach {leaked}"
    assert attached[-1] == [[str(image), False]]
