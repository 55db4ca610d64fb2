"""The whole Cloudflare topology on this machine, driven through the Worker's /api and /v1.

`wrangler dev` runs the real Worker in workerd; its Agent Durable Object
starts the real Agent image with podman (tests/fixtures/topology.py says
how), flared restores from and snapshots to moto (R2_ENDPOINT), the bot's
model is the fake OpenAI-compatible server on this host. Nothing here talks
to flared directly: every step goes through the Worker, as a user's would;
only `podman exec` looks inside the container to check what a step did.

What only a real account proves (Cloudflare's HTTPS interception,
`enableInternet = false`, Access, R2, rollouts) is listed in
docs/cloudflare.md, "What is verified where".
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import llm_server as llm
from tests.fakes.llm_server import FakeLLM
from tests.fixtures.s3server import ACCESS_KEY, SECRET_KEY, MotoServer
from tests.fixtures.topology import BRIDGE_HOST, Topology

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

ROOT = Path(__file__).resolve().parent.parent
SHIPPED_YAML = (ROOT / "hermes-flare.yaml").read_text()
MEMORY = "/var/lib/hermes-flare/bots/hermes/home/memories/USER.md"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Topology, FakeLLM]]:
    moto = MotoServer(host="0.0.0.0").start()  # reached from the containers over the bridge
    fake = FakeLLM(models=("fake-model",), default=llm.Reply(text="OK"))
    fake.server.host = "0.0.0.0"
    try:
        with fake:
            moto.client().create_bucket(Bucket="hermes-flare-data")
            secrets = {
                "R2_ACCESS_KEY_ID": ACCESS_KEY,
                "R2_SECRET_ACCESS_KEY": SECRET_KEY,
                "HERMES_FLARE_PROVIDER": "custom",
                "HERMES_FLARE_MODEL": "fake-model",
                "HERMES_FLARE_BASE_URL": f"http://{BRIDGE_HOST}:{fake.server.port}/v1",
                "HERMES_FLARE_API_KEY": "sk-topology-test",
            }
            workdir = tmp_path_factory.mktemp("topology")
            with Topology(
                workdir,
                yaml_text=SHIPPED_YAML,
                secrets=secrets,
                store_endpoint=f"http://{BRIDGE_HOST}:{moto.port}",
            ) as topo:
                yield topo, fake
    finally:
        moto.stop()


def group(status: Any) -> dict[str, Any]:
    assert isinstance(status, dict) and "groups" in status, status
    return dict(status["groups"]["default"])


def bot_state(topo: Topology) -> str | None:
    """The bot's state; RUNNING only once its Hermes API (what /v1 reaches) is connected too."""
    code, status, _ = topo.request("GET", "/api/status")
    if code != 200:
        return None
    bots = group(status).get("bots") or []
    if not bots:
        return None
    platforms = (bots[0].get("hermes") or {}).get("platforms") or {}
    state = str(bots[0]["state"])
    return (
        state
        if state != "RUNNING" or platforms.get("api_server") == "connected"
        else "RUNNING (api starting)"
    )


def flared_started(topo: Topology) -> float:
    """When this group's flared started (wall clock): another value means another container."""
    code, status, _ = topo.request("GET", "/api/status")
    assert code == 200, status
    return time.time() - float(group(status)["flared"]["uptime_s"])


def test_the_topology(world: tuple[Topology, FakeLLM]) -> None:
    topo, fake = world
    timings = dict(topo.timings)

    # A cold start: the first request starts the Agent container and waits for flared.
    t0 = time.monotonic()
    code, status, _ = topo.request("GET", "/api/status")
    timings["first_status"] = time.monotonic() - t0
    assert code == 200, status
    g = group(status)
    assert g["version_mismatch"] is None
    assert g["config"]["digest"] == hashlib.sha256(SHIPPED_YAML.encode()).hexdigest()
    timings["bot_running"] = timings["first_status"] + topo.wait(
        lambda: bot_state(topo) == "RUNNING", 180, "the bot RUNNING"
    )
    started = flared_started(topo)

    # Chat through the Worker's OpenAI-compatible API: the bot saves a memory.
    fake.script(
        llm.tool(
            "memory",
            {"action": "add", "target": "user", "content": "User's dog is called Yodel."},
            when=lambda r: r.is_agent_turn and "Yodel" in r.last_user_text,
        ),
        llm.text("I'll remember Yodel.", when=lambda r: r.is_agent_turn),
    )
    t0 = time.monotonic()
    code, answer, _ = topo.request(
        "POST",
        "/v1/chat/completions",
        {
            "model": "hermes",
            "messages": [{"role": "user", "content": "remember that my dog is called Yodel"}],
        },
    )
    timings["first_chat"] = time.monotonic() - t0
    assert code == 200, answer
    assert "Yodel" in answer["choices"][0]["message"]["content"]
    assert "Yodel" in topo.exec_in_agent("cat", MEMORY)
    code, models, _ = topo.request("GET", "/v1/models")
    assert [m["id"] for m in models["data"]] == ["hermes"]

    # A command the bot runs goes to an Exec sandbox: flared's cloudflare provider calls
    # sandboxes.flare.internal, which the sidecar and workerd hand to the Worker.
    fake.script(
        llm.tool(
            "terminal",
            {"command": "echo ran-in-$(test -f /usr/local/bin/exec-double.py && echo exec || echo agent)"},
            when=lambda r: r.is_agent_turn and "run the check" in r.last_user_text,
        ),
        llm.echo_tool_result("out: "),
    )
    t0 = time.monotonic()
    code, answer, _ = topo.request(
        "POST",
        "/v1/chat/completions",
        {"model": "hermes", "messages": [{"role": "user", "content": "run the check"}]},
    )
    timings["first_exec_chat"] = time.monotonic() - t0
    assert code == 200, answer
    assert "ran-in-exec" in answer["choices"][0]["message"]["content"], answer
    assert [n for n in topo.containers() if "-Exec-" in n and not n.endswith("-proxy")], topo.containers()

    # A snapshot taken through /api and listed there.
    code, taken, _ = topo.request("POST", "/api/snapshots", {"bot": "hermes"})
    assert code == 200, taken
    snap_id = taken["results"][0].get("id")
    code, listed, _ = topo.request("GET", "/api/snapshots?bot=hermes")
    assert code == 200, listed
    assert snap_id in [s["id"] for s in listed["snapshots"]], (taken, listed)

    # A YAML edit, bundled by the rebuilt Worker, pushed by the scheduled handler, applied live.
    edited = SHIPPED_YAML.replace("every: 15m", "every: 20m")
    assert edited != SHIPPED_YAML
    topo.yaml_path.write_text(edited)
    new_digest = hashlib.sha256(edited.encode()).hexdigest()

    def pushed() -> bool:
        topo.scheduled()
        return bool(group(topo.request("GET", "/api/config")[1])["digest"] == new_digest)

    timings["yaml_pushed"] = topo.wait(pushed, 120, "the edited YAML applied")
    assert abs(flared_started(topo) - started) < 3  # the same flared: applied without a restart

    # Restart the group's container: a fresh one restores the bot's memory from the store.
    code, body, _ = topo.request("POST", "/api/containers/default/restart")
    assert (code, body) == (200, {"group": "default", "restarting": True})
    t0 = time.monotonic()
    topo.wait(
        lambda: flared_started(topo) > started + 5 and bot_state(topo) == "RUNNING",
        240,
        "a new container with the bot RUNNING",
    )
    timings["restart_to_running"] = time.monotonic() - t0
    assert "Yodel" in topo.exec_in_agent("cat", MEMORY)

    print("\n[topology] " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))
