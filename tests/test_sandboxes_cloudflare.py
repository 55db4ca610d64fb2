"""The cloudflare provider against a local server that implements the sandbox contract.

First every example in tests/contracts/sandbox/ is replayed against that
server (the same files the Worker's tests replay against the Worker), so the
server is the contract; then the provider and the lease manager run on it.
"""

from __future__ import annotations

import http.client
import json
import logging
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from flared.config.loader import load_config
from flared.config.models import SandboxProfile
from flared.sandboxes.manager import LeaseManager
from flared.sandboxes.providers.cloudflare import NOT_RUN, UNKNOWN, CloudflareProvider
from flared.sandboxes.types import TRUNCATION_MARKER, ExecRequest, SandboxError, lease_prefix, new_lease_id
from tests.fakes.sandbox_worker import TOKEN, FakeWorker
from tests.fixtures.flare import free_port

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")

CONTRACTS = Path(__file__).parent / "contracts" / "sandbox"
EXAMPLES = sorted(CONTRACTS.glob("*.json"))
MODEL = {"provider": "custom", "base_url": "http://127.0.0.1:9/v1", "model": "m"}


@pytest.fixture
def worker(tmp_path: Path) -> Iterator[FakeWorker]:
    with FakeWorker(tmp_path / "worker") as w:
        yield w


# ---------------------------------------------------------------------------- the contract examples


def _same_shape(expected: Any, actual: Any, vary: set[str], path: str = "") -> list[str]:
    """Differences between an example's body and an answer, ignoring the values of ``vary`` fields."""
    if path in vary:
        ok = type(expected) is type(actual) or (
            isinstance(expected, int | float) and isinstance(actual, int | float)
        )
        return (
            []
            if ok
            else [f"{path or 'body'}: type {type(actual).__name__}, expected {type(expected).__name__}"]
        )
    if isinstance(expected, dict):
        if not isinstance(actual, dict) or set(actual) != set(expected):
            return [
                f"{path or 'body'}: keys {sorted(actual) if isinstance(actual, dict) else actual!r} != {sorted(expected)}"
            ]
        return [
            d for k in expected for d in _same_shape(expected[k], actual[k], vary, f"{path}.{k}".lstrip("."))
        ]
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return [f"{path}: {actual!r} != {expected!r}"]
        return [
            d for e, a in zip(expected, actual, strict=True) for d in _same_shape(e, a, vary, f"{path}[]")
        ]
    return [] if expected == actual else [f"{path or 'body'}: {actual!r} != {expected!r}"]


def test_contract_examples_are_well_formed() -> None:
    assert len(EXAMPLES) >= 10
    for path in EXAMPLES:
        doc = json.loads(path.read_text())
        assert doc["name"] == path.stem and doc["description"] and doc["exchanges"]
        for ex in doc["exchanges"]:
            assert ex["request"]["method"] in {"GET", "POST", "DELETE"}
            assert ex["request"]["path"].startswith("/internal/sandboxes")
            assert isinstance(ex["response"]["status"], int)
    assert (CONTRACTS / "README.md").exists()


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_contract_example(example: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = json.loads(example.read_text())
    monkeypatch.setenv("FLARE_CONTROL_TOKEN", TOKEN)  # the server holds its token, as the Worker does
    with FakeWorker(tmp_path / "worker") as w:
        if doc["name"] == "exec-unavailable":
            w.fail_start = 1
        host, port = w.url.removeprefix("http://").split(":")
        for ex in doc["exchanges"]:
            req, want = ex["request"], ex["response"]
            conn = http.client.HTTPConnection(host, int(port), timeout=60)
            body = json.dumps(req["body"]).encode() if "body" in req else None
            conn.request(req["method"], req["path"], body=body, headers=req["headers"])
            resp = conn.getresponse()
            got = json.loads(resp.read())
            conn.close()
            assert resp.status == want["status"], (req, got)
            for k, v in (want.get("headers") or {}).items():
                assert resp.getheader(k) == v
            assert _same_shape(want["body"], got, set(want.get("vary", []))) == [], (req["path"], got)


# ---------------------------------------------------------------------------- the provider


def provider(worker: FakeWorker) -> CloudflareProvider:
    return CloudflareProvider(worker.url, TOKEN)


def run(p: CloudflareProvider, lease_id: str, command: str, **kw: Any) -> Any:
    req = ExecRequest(command=command, cwd=kw.pop("cwd", "/workspace"), **kw)
    return p.exec(lease_id, {}, SandboxProfile(provider="cloudflare"), req)


def test_exec_results(worker: FakeWorker) -> None:
    p = provider(worker)
    lid = new_lease_id("default")
    assert p.create(lid, SandboxProfile(provider="cloudflare")) == {}
    r = run(p, lid, "whoami; cat; echo err >&2; exit 5", stdin="in\n", env={"X": "1"})
    assert (r.exit_code, r.stdout, r.stderr) == (5, "sandbox\nin\n", "err\n")
    r = run(p, lid, "head -c 5000 /dev/zero | tr '\\0' a", output_limit=100)
    assert r.truncated and r.stdout == "a" * 100 + TRUNCATION_MARKER
    r = run(p, lid, "echo started; sleep 30", timeout=1.0)
    assert r.timed_out and r.exit_code == 124
    assert p.existing(lease_prefix("default")) == {lid}
    p.destroy(lid, {})
    p.destroy(lid, {})  # idempotent
    assert p.existing(lease_prefix("default")) == set()


def test_exec_carries_the_profiles_network_and_idle_ttl(worker: FakeWorker) -> None:
    """The Worker starts the lease's Exec container from these (no Internet unless allowed)."""
    p = provider(worker)
    lid = new_lease_id("default")
    offline = SandboxProfile(provider="cloudflare", idle_ttl=3 * 3600)
    req = ExecRequest(command="true", cwd="/workspace")
    assert p.exec(lid, {}, offline, req).exit_code == 0
    assert worker.exec_bodies[-1]["network"] is False
    assert worker.exec_bodies[-1]["idle_ttl_ms"] == 3 * 3600 * 1000
    online = SandboxProfile(provider="cloudflare", network=True, idle_ttl=600)
    other = new_lease_id("default")
    assert p.exec(other, {}, online, req).exit_code == 0
    assert (worker.exec_bodies[-1]["network"], worker.exec_bodies[-1]["idle_ttl_ms"]) == (True, 600_000)
    # A sandbox asked to change its network refuses (409): the command did not run.
    ran = worker.ran
    r = p.exec(lid, {}, online, req)
    assert r.exit_code == NOT_RUN and "409" in r.stderr and worker.ran == ran


def test_unavailable_is_retried_because_nothing_ran(worker: FakeWorker) -> None:
    p = provider(worker)
    lid = new_lease_id("default")
    worker.fail_start = 1
    started = time.monotonic()
    r = run(p, lid, "echo once >> log; wc -l < log", timeout=30)
    assert r.exit_code == 0 and r.stdout.strip() == "1"
    assert worker.ran == 1 and time.monotonic() - started >= 1.0  # waited Retry-After


def test_unavailable_for_too_long_is_a_readable_failure(worker: FakeWorker) -> None:
    worker.fail_start = 10
    r = run(provider(worker), new_lease_id("default"), "true", timeout=30)
    assert r.exit_code == NOT_RUN and "the command did not run" in r.stderr and worker.ran == 0


def test_a_5xx_after_the_command_ran_is_never_retried(worker: FakeWorker) -> None:
    p = provider(worker)
    lid = new_lease_id("default")
    worker.fail_after_run = 1
    r = run(p, lid, "echo once >> log")
    assert r.exit_code == UNKNOWN and "outcome is unknown" in r.stderr
    assert worker.ran == 1
    assert run(p, lid, "wc -l < log").stdout.strip() == "1"  # it ran exactly once


def test_transport_errors_are_readable_and_bounded() -> None:
    p = CloudflareProvider(f"http://127.0.0.1:{free_port()}", TOKEN)  # nothing listens
    started = time.monotonic()
    r = run(p, new_lease_id("default"), "true", timeout=5)
    assert r.exit_code == NOT_RUN and "cannot reach the sandbox service" in r.stderr
    assert time.monotonic() - started < 10
    with pytest.raises(SandboxError, match="failed after 3 tries"):
        p.existing("fl-default-")


def test_wrong_token_and_bad_ids(worker: FakeWorker) -> None:
    bad = CloudflareProvider(worker.url, "wrong-token-value")
    r = run(bad, new_lease_id("default"), "true")
    assert r.exit_code == NOT_RUN and "401" in r.stderr and worker.ran == 0
    assert "wrong-token-value" not in r.stderr
    with pytest.raises(SandboxError, match="invalid sandbox id"):
        provider(worker).create("Not_Valid", SandboxProfile())
    with pytest.raises(SandboxError, match="needs a token"):
        CloudflareProvider(worker.url, "")


def test_token_never_in_messages_or_logs(worker: FakeWorker, caplog: pytest.LogCaptureFixture) -> None:
    secret = "tok-" + "s3cr3t" * 4
    caplog.set_level(logging.DEBUG)
    p = CloudflareProvider(f"http://127.0.0.1:{free_port()}", secret)
    r = run(p, new_lease_id("default"), "true", timeout=2)
    with pytest.raises(SandboxError) as err:
        p.destroy(new_lease_id("default"), {})
    assert secret not in r.stderr + str(err.value) + caplog.text


# ---------------------------------------------------------------------------- the lease manager on it


def manager_config(tmp_path: Path, worker: FakeWorker, mode: str = "per-session") -> Any:
    data = {
        "version": 1,
        "state_dir": str(tmp_path / "state"),
        "sandboxes": {"cf": {"provider": "cloudflare", "mode": mode, "endpoint": worker.url, "token": TOKEN}},
        "bots": [{"name": "alpha", "model": MODEL, "sandbox": "cf"}],
    }
    (tmp_path / "hermes-flare.yaml").write_text(yaml.safe_dump(data))
    return load_config(tmp_path / "hermes-flare.yaml")


def test_manager_with_the_cloudflare_provider(tmp_path: Path, worker: FakeWorker) -> None:
    loaded = manager_config(tmp_path, worker)
    m = LeaseManager(loaded)
    m.start()
    lease, r = m.run("alpha", "s1", "echo hi > f; cat f")
    assert r.stdout == "hi\n" and lease["provider"] == "cloudflare"
    m.stop()
    orphan = new_lease_id("default")
    other_group = lease_prefix("other") + "notours00000"
    for sid in (orphan, other_group):
        run(provider(worker), sid, "true")
    m2 = LeaseManager(loaded)
    m2.start()  # reconcile: destroys the orphan of our group, keeps our lease and other groups' sandboxes
    try:
        assert set(worker.sandboxes) == {lease["id"], other_group}
        assert m2.exec(lease["id"], "cat f").stdout == "hi\n"
        m2.release(lease["id"])
        assert set(worker.sandboxes) == {other_group}
    finally:
        m2.stop()


def test_per_command_destroys_in_the_worker(tmp_path: Path, worker: FakeWorker) -> None:
    m = LeaseManager(manager_config(tmp_path, worker, mode="per-command"))
    m.start()
    try:
        _, r = m.run("alpha", "s", "echo x")
        assert r.stdout == "x\n" and worker.sandboxes == {} and m.list() == []
    finally:
        m.stop()


def test_start_with_the_worker_down_does_not_fail(tmp_path: Path, worker: FakeWorker) -> None:
    loaded = manager_config(tmp_path, worker)
    dead = loaded.config.sandboxes["cf"].model_copy(update={"endpoint": f"http://127.0.0.1:{free_port()}"})
    loaded.config.sandboxes["cf"] = dead
    m = LeaseManager(loaded)
    started = time.monotonic()
    m.start()  # the reconcile fails (logged) and is retried later; flared still starts
    try:
        assert time.monotonic() - started < 5
        assert m._pending_reconcile  # still owed
        _, r = m.run("alpha", "s", "true")
        assert r.exit_code == NOT_RUN and "cannot reach the sandbox service" in r.stderr
    finally:
        m.stop()
