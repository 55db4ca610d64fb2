"""`flared snapshot/snapshots/restore/import-sdk-backup`, with and without a running daemon."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.fixtures.flare import FlareUp, bot, config, run_cli
from tests.fixtures.homes import make_home
from tests.fixtures.s3server import shared_server, store_config

pytestmark = pytest.mark.integration


def cli_json(cfg: Path, *args: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    out = run_cli(*args, "--json", "-c", str(cfg), timeout=120)
    assert out.stdout, out.stderr
    return out.returncode, json.loads(out.stdout)


def test_offline_commands(tmp_path: Path) -> None:
    data = config(tmp_path, [bot("athena"), bot("hermes")])
    cfg = tmp_path / "hermes-flare.yaml"
    cfg.write_text(yaml.safe_dump(data))
    home = make_home(tmp_path / "state" / "bots" / "athena" / "home")

    code, out = cli_json(cfg, "snapshot", "--bot", "athena")
    assert code == 0 and out["results"][0]["result"] == "ok"
    first = out["results"][0]["id"]
    code, out = cli_json(cfg, "snapshot", "--bot", "athena")
    assert (
        code == 0 and out["results"][0]["result"] == "unchanged" and out["results"][0]["bytes_uploaded"] == 0
    )
    code, out = cli_json(cfg, "snapshots")
    assert [(s["bot"], s["id"], s["latest"]) for s in out["snapshots"]] == [("athena", first, True)]

    (home / "memories" / "USER.md").write_text("edited\n")
    code, out = cli_json(cfg, "restore", "--bot", "athena")
    assert code == 0 and out["result"] == "restored" and out["id"] == first
    assert (home / "memories" / "USER.md").read_text() == "User's dog is called Yodel.\n"

    # Errors are one clear line, never a traceback.
    bad = run_cli("restore", "-c", str(cfg))
    assert bad.returncode == 2 and "--bot" in bad.stderr and "Traceback" not in bad.stderr
    bad = run_cli("restore", "--bot", "athena", "--id", "20200101T000000Z-000000", "-c", str(cfg))
    assert bad.returncode == 1 and "manifest is missing" in bad.stdout + bad.stderr
    assert "Traceback" not in bad.stderr
    human = run_cli("snapshots", "-c", str(cfg))
    assert first in human.stdout and "latest" in human.stdout


def test_daemon_restore_stops_and_restarts_the_gateway_and_sigterm_snapshots(tmp_path: Path) -> None:
    with FlareUp(
        tmp_path, [bot("athena")], snapshots={"every": "1h", "on_change": {"enabled": False}}
    ) as flare:
        before = flare.wait_running("athena")
        home = flare.state_dir / "bots" / "athena" / "home"
        (home / "memories").mkdir(exist_ok=True)
        (home / "memories" / "USER.md").write_text("first version\n")
        code, out = cli_json(flare.config_path, "snapshot")
        assert code == 0 and out["results"][0]["result"] == "ok", out
        snap = out["results"][0]["id"]
        (home / "memories" / "USER.md").write_text("second version\n")

        code, out = cli_json(flare.config_path, "restore", "--bot", "athena", "--id", snap)
        assert code == 0 and out["result"] == "restored", out
        assert (home / "memories" / "USER.md").read_text() == "first version\n"
        after = flare.wait_running("athena")
        assert after["pid"] != before["pid"], "the gateway was not restarted around the restore"
        status = flare.bot_status("athena")["snapshots"]
        assert status["restore"]["id"] == snap and status["phase"] == "ready"

        # SIGTERM to `flared up`: gateways stop first, then a final snapshot of what they left.
        (home / "memories" / "USER.md").write_text("written just before shutdown\n")
        assert flare.stop(signal.SIGTERM, timeout=90) is not None
    listed = run_cli("snapshots", "--json", "-c", str(flare.config_path))
    latest = next(s for s in json.loads(listed.stdout)["snapshots"] if s["latest"])
    assert latest["id"] != snap
    out_dir = tmp_path / "check"
    subprocess.run(
        ["unsquashfs", "-d", str(out_dir), str(next((tmp_path / "store").rglob(f"{latest['id']}.sqsh")))],
        check=True,
        capture_output=True,
    )
    assert (out_dir / "memories" / "USER.md").read_text() == "written just before shutdown\n"


def test_import_sdk_backup(tmp_path: Path) -> None:
    """An original hermes-flare backup (squashfs of /home/hermes) becomes the bot's snapshot."""
    home_hermes = tmp_path / "sdk" / "home-hermes"
    make_home(home_hermes / ".hermes")
    (home_hermes / ".hermes" / "config.yaml").write_text("model: {}\n")
    (home_hermes / ".bashrc").write_text("# not part of Hermes\n")
    blob = tmp_path / "sdk" / "data.sqsh"
    subprocess.run(["mksquashfs", str(home_hermes), str(blob), "-quiet", "-no-progress"], check=True)
    server = shared_server()
    old_bucket = server.new_bucket()
    s3 = server.client()
    s3.put_object(
        Bucket=old_bucket,
        Key="hermes/backup-handle.json",
        Body=json.dumps({"id": "bk-123", "dir": "/home/hermes"}),
    )
    s3.upload_file(str(blob), old_bucket, "backups/bk-123/data.sqsh")

    with store_config() as section:
        data = config(tmp_path, [bot("athena")], store=section)
    cfg = tmp_path / "hermes-flare.yaml"
    cfg.write_text(yaml.safe_dump(data))
    code, out = cli_json(cfg, "import-sdk-backup", "--bucket", f"s3://{old_bucket}", "--bot", "athena")
    assert code == 0, out
    assert out["backup_id"] == "bk-123" and out["result"] == "ok"
    again = run_cli("import-sdk-backup", "--bucket", f"s3://{old_bucket}", "--bot", "athena", "-c", str(cfg))
    assert again.returncode == 1 and "--force" in again.stderr

    # The bot's next start restores it: .hermes content, no .env, no runtime files.
    code, out = cli_json(cfg, "restore", "--bot", "athena")
    assert code == 0, out
    home = tmp_path / "state" / "bots" / "athena" / "home"
    assert (home / "memories" / "USER.md").read_text() == "User's dog is called Yodel.\n"
    assert not (home / ".env").exists() and not (home / ".bashrc").exists()
    missing = run_cli(
        "import-sdk-backup", "--bucket", f"s3://{old_bucket}", "--agent", "nope", "-c", str(cfg)
    )
    assert missing.returncode == 1 and "backup-handle.json" in missing.stderr
    shutil.rmtree(tmp_path / "sdk")
    time.sleep(0)
