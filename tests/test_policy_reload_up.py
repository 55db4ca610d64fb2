"""Hot reload against a real `flared up`: real supervisord, real Hermes gateways."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest

from flared.control.client import ControlClient, ControlError
from tests.fixtures.flare import FlareUp, bot, free_port

pytestmark = pytest.mark.integration


def wait_for(probe: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"{what} within {timeout}s (last: {last!r})")


def pids(flare: FlareUp) -> dict[str, int | None]:
    return {b["name"]: b["pid"] for b in flare.status()["bots"]}


def test_reload_restarts_only_the_changed_bot_and_refuses_bad_edits(tmp_path: Path) -> None:
    cron = [
        {"name": "snap-alpha", "schedule": "every 2s", "action": "snapshot", "bot": "alpha"},
        {"name": "brief", "bot": "beta", "prompt": "Brief me.", "schedule": "0 9 * * 1-5"},
    ]
    with FlareUp(tmp_path, [bot("alpha"), bot("beta")], cron=cron) as flare:
        a0 = flare.wait_running("alpha")["pid"]
        b0 = flare.wait_running("beta")["pid"]
        client = ControlClient(flare.state_dir / "flared.sock")
        first = flare.status()["config"]["digest"]

        # 1. beta's model and the snapshot policy change; the watcher applies it; only beta restarts
        data = copy.deepcopy(flare.data)
        data["bots"][1]["model"]["model"] = "another-model"
        data["snapshots"]["every"] = "7m"
        written = time.monotonic()
        flare.write_config(data)
        cfg = wait_for(
            lambda: (c := client.request("GET", "/config"))["digest"] != first and c, 5, "the edit applied"
        )
        assert time.monotonic() - written < 3
        assert cfg["config"]["snapshots"]["every"] == "7m"
        result = wait_for(
            lambda: (
                (r := flare.status()["config"].get("last_reload") or {}).get("config_digest") == cfg["digest"]
                and r
            ),
            30,
            "the reload finished",
        )
        assert result["applied"] is True and result["failures"] == {}
        assert result["restarted"] == ["beta"]
        assert "snapshots: every -> applied live" in result["changes"]
        b1 = wait_for(
            lambda: (st := flare.bot_status("beta"))["state"] == "RUNNING" and st["pid"] != b0 and st["pid"],
            30,
            "beta restarted",
        )
        assert flare.bot_status("alpha")["pid"] == a0, (
            "an unchanged bot's gateway restarted\n" + flare.read_logs()
        )
        home = flare.state_dir / "bots" / "beta" / "home" / "config.yaml"
        assert "another-model" in home.read_text()
        snap = flare.bot_status("alpha").get("snapshots") or {}
        if snap.get("next_due_in_s") is not None:  # the snapshot service runs the new interval
            assert snap["next_due_in_s"] <= 7 * 60
        applied = cfg["digest"]

        # cron runs: flared's own job, and the agent job in beta's Hermes store
        jobs = wait_for(
            lambda: (
                (j := {x["name"]: x for x in flare.status()["cron"]["jobs"]})["snap-alpha"]["runs"]
                and j["brief"]["synced"]
                and j
            ),
            20,
            "cron jobs running and synced",
        )
        assert jobs["snap-alpha"]["last_result"]["result"] == "ok", jobs
        assert jobs["snap-alpha"]["next_run"] is not None
        hermes_jobs = json.loads((flare.state_dir / "bots/beta/home/cron/jobs.json").read_text())["jobs"]
        assert [(j["name"], j["flared"]) for j in hermes_jobs] == [("brief", {"name": "brief"})]
        out = flare.cli("reload", "--json")
        assert out.returncode == 0 and json.loads(out.stdout)["unchanged"] is True

        # 2. invalid edits change nothing, and show in the log and in `flared status`
        bad = copy.deepcopy(data)
        bad["snapshots"]["every"] = "banana"
        bad["bots"][0]["model"]["model"] = "never-applied"
        flare.write_config(bad)
        errors = wait_for(lambda: flare.status()["config"]["error"], 5, "the error in status")
        assert len(errors) == 1 and errors[0].startswith(f"{flare.config_path}:")
        assert "snapshots.every" in errors[0]
        out = flare.cli("reload", "--json")
        assert out.returncode == 2, out.stdout + out.stderr
        assert "snapshots.every" in json.loads(out.stdout)["errors"][0]["path"]
        st = flare.status()
        assert st["config"]["digest"] == applied
        assert (
            st["config"]["error"] and "snapshots.every" in st["config"]["error"][0]
        )  # the daemon's, said once
        flare.config_path.write_text("bots: [\n  - name: alpha\n    model: {")  # half-written, state_dir lost
        wait_for(
            lambda: "YAML syntax error" in " ".join(flare.status()["config"]["error"] or []),
            5,
            "syntax error",
        )
        assert flare.cli("reload", "--json").returncode == 2
        assert flare.status()["config"]["digest"] == applied
        assert "config not applied" in (flare.state_dir / "logs" / "flared.log").read_text()
        assert pids(flare) == {"alpha": a0, "beta": b1}
        assert (
            "never-applied" not in (flare.state_dir / "bots" / "alpha" / "home" / "config.yaml").read_text()
        )

        # 3. PUT /config: a change that cannot apply live is refused before writing
        moved = copy.deepcopy(data)
        moved["state_dir"] = str(tmp_path / "elsewhere")
        on_disk = flare.config_path.read_text()
        with pytest.raises(ControlError) as refused:
            client.request("PUT", "/config", raw=yaml_text(moved))
        assert refused.value.status == 409
        assert "restart flared" in json.dumps(refused.value.body)
        assert flare.config_path.read_text() == on_disk
        for body, status in ((b"bots: [", 400), (b"snapshots: {every: soon}\n", 400), (b"", 400)):
            with pytest.raises(ControlError) as bad_put:
                client.request("PUT", "/config", raw=body)
            assert bad_put.value.status == status
        assert flare.config_path.read_text() == on_disk

        # 4. PUT /config: add gamma, remove alpha; beta untouched; the file is replaced
        pushed = copy.deepcopy(data)
        pushed["bots"] = [data["bots"][1], bot("gamma", free_port())]
        pushed["cron"] = [{**cron[1], "prompt": "Brief me, briefly."}]
        text = yaml_text(pushed)
        result = client.request("PUT", "/config", raw=text, timeout=120)
        assert result["applied"] is True and result["stopped"] == ["alpha"] and result["started"] == ["gamma"]
        assert result["failures"] == {}
        assert flare.config_path.read_bytes() == text
        assert flare.status()["config"]["error"] is None
        flare.data = pushed
        flare.wait_running("gamma")
        st = flare.status()
        assert [b["name"] for b in st["bots"]] == ["beta", "gamma"]
        assert flare.bot_status("beta")["pid"] == b1
        programs = {p.stem for p in (flare.state_dir / "supervisor" / "programs").glob("*.conf")}
        assert "gateway-alpha" not in programs
        # alpha got a final snapshot; its state stays in the store
        assert result["retired"]["alpha"]["result"] in {"ok", "unchanged"}, result["retired"]
        assert (tmp_path / "store" / "alpha" / "latest.json").exists()
        # the agent job followed the push; the removed system job is gone from status
        wait_for(
            lambda: "briefly" in (flare.state_dir / "bots/beta/home/cron/jobs.json").read_text(),
            15,
            "job updated",
        )
        assert [j["name"] for j in flare.status()["cron"]["jobs"]] == ["brief"]


def yaml_text(data: dict[str, Any]) -> bytes:
    import yaml

    return yaml.safe_dump(data, sort_keys=False).encode()
