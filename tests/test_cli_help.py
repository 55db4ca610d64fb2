"""`flared --help` and every command's `--help` say what it does; errors read as the user's words."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from flared.cli import build_parser, main


def commands(parser: argparse.ArgumentParser, prefix: str = "") -> list[tuple[str, argparse.ArgumentParser]]:
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.append((prefix + name, sub))
                out.extend(commands(sub, prefix + name + " "))
    return out


def test_every_command_has_a_description_and_a_one_line_help() -> None:
    parser = build_parser()
    listed = commands(parser)
    names = [n for n, _ in listed]
    for expected in ("status", "logs", "stop", "restart", "chat", "exec", "snapshot", "restore", "validate"):
        assert expected in names
    missing = [n for n, sub in listed if not (sub.description or "").strip()]
    assert missing == [], f"no --help description: {missing}"
    top = parser.format_help()
    for name in names:
        if " " not in name:
            assert f"    {name}" in top, f"{name} not listed in `flared --help`"


def test_validate_counts_problems_without_claiming_it_changed_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "hermes-flare.yaml"
    cfg.write_text("version: 1\nbots:\n  - name: hermes\n    modle: {}\n")
    assert main(["validate", "-c", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "unknown key 'modle' (did you mean 'model'?)" in err
    assert err.rstrip().endswith("problems found.") or err.rstrip().endswith("problem found.")
    assert "nothing was changed" not in err


def test_a_bot_without_model_is_told_to_add_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "hermes-flare.yaml"
    cfg.write_text("version: 1\nbots:\n  - name: hermes\n")
    assert main(["validate", "-c", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "bots[0]: no `model:`: say which LLM the bot talks to" in err
    assert "custom" not in err


def test_a_yaml_syntax_error_names_no_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = tmp_path / "hermes-flare.yaml"
    cfg.write_text("version: 1\nbots: [\n")
    assert main(["validate", "-c", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}:3:1: YAML syntax error:" in err and "(file)" not in err


def test_a_bad_value_from_the_environment_names_the_variable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = tmp_path / "hermes-flare.yaml"
    cfg.write_text(
        "version: 1\nbots:\n  - name: hermes\n    model:\n      provider: ${HERMES_FLARE_PROVIDER:-anthropic}\n"
        "      api_key: ${UXT_KEY}\n    api:\n      port: ${UXT_PORT:-8642}\n"
    )
    monkeypatch.setenv("HERMES_FLARE_PROVIDER", "claude")
    monkeypatch.setenv("UXT_KEY", "sk-secret-value-here")
    monkeypatch.setenv("UXT_PORT", "eighty")
    assert main(["validate", "-c", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "bots[0].model.provider: Input should be" in err
    assert "(from $HERMES_FLARE_PROVIDER='claude' in the environment)" in err
    assert "bots[0].api.port:" in err and "(from $UXT_PORT='eighty' in the environment)" in err
    assert "sk-secret-value-here" not in err
    monkeypatch.setenv("FLARE_SNAPSHOTS__EVERY", "soon")
    monkeypatch.setenv("HERMES_FLARE_PROVIDER", "anthropic")
    monkeypatch.setenv("UXT_PORT", "8642")
    assert main(["validate", "-c", str(cfg)]) == 2
    assert "(from $FLARE_SNAPSHOTS__EVERY)" in capsys.readouterr().err


def test_config_before_the_command_is_accepted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`flared -c FILE status` used to exit 2 with "invalid choice" (issue 23)."""
    cfg = tmp_path / "mine.yaml"
    cfg.write_text("version: 1\nbots:\n  - name: hermes\n    modle: {}\n")
    assert main(["-c", str(cfg), "validate"]) == 2
    err = capsys.readouterr().err
    assert f"{cfg}:4:5: bots[0].modle: unknown key 'modle'" in err and "invalid choice" not in err
    good = tmp_path / "good.yaml"
    good.write_text("version: 1\nbots: []\n")
    assert main(["--config", str(cfg), "validate", "-c", str(good)]) == 0  # the later one wins
    assert main(["-c", str(good), "validate", "--json"]) == 0
    assert '"valid": true' in capsys.readouterr().out
    state = tmp_path / "state"
    good.write_text(f"version: 1\nstate_dir: {state}\nbots: []\n")
    assert main(["-c", str(good), "status"]) == 0  # the command of the issue, no daemon running
    assert capsys.readouterr().out.startswith("flared not running")


def test_hints_name_the_flared_that_works_here(tmp_path: Path) -> None:
    """The README runs `.venv/bin/flared`; hints used to say bare `flared ...`, not on PATH (issue 23)."""
    import os
    import subprocess

    from tests.fixtures.flare import FLARED, ROOT, free_port

    cfg = tmp_path / "hermes-flare.yaml"
    cfg.write_text(
        "version: 1\nbots:\n  - name: solo\n    model: {provider: custom, base_url: 'http://127.0.0.1:9/v1'"
        f", model: m}}\n    api: {{port: {free_port()}}}\n"
    )
    bin_dir = str(ROOT / ".venv" / "bin")
    bare = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p.rstrip("/") != bin_dir)

    def hint(cwd: Path, path: str) -> str:
        out = subprocess.run(
            [*FLARED, "chat", "-c", str(cfg), "hi"],
            cwd=cwd,
            env={**os.environ, "PATH": path},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 1, out.stderr
        return out.stderr

    assert "(`.venv/bin/flared status` says; start everything with `.venv/bin/flared up`)" in hint(ROOT, bare)
    assert f"start everything with `{bin_dir}/flared up`" in hint(tmp_path, bare)
    assert "(`flared status` says; start everything with `flared up`)" in hint(
        tmp_path, bin_dir + os.pathsep + bare
    )
    # Data is printed as it is: a rendered file's comment names the command, not this install.
    render = subprocess.run(
        [*FLARED, "render", "supervisord", "--image"],
        cwd=ROOT,
        env={**os.environ, "PATH": bare},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert render.stdout == (ROOT / "supervisord" / "supervisord.conf").read_text()
