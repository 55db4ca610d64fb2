"""The Agent image, built here with podman and booted as the Worker starts it.

No container registry is reachable from the machines CI runs on, so the image
is built FROM a local debootstrap stand-in of the python slim base
(scripts/agent-image). Each container gets the environment the Worker's
Agent class computes (worker/src/agent-env.ts, run under Node), with the one
thing Cloudflare has and this machine lacks swapped: the snapshot store is an
S3 server on this host (moto) instead of R2, or a file:// volume.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from pathlib import Path

import pytest

from tests.fixtures.podman import (
    HOST_LOOPBACK,
    IMAGE_UID,
    AgentContainer,
    agent_image,
    give_to_image_user,
    podman,
    running_with_api,
    worker_env,
    worker_vars,
)
from tests.fixtures.podman import hermes_bot as bot
from tests.fixtures.s3server import shared_server

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
# What the Worker bundles and passes as FLARE_CONFIG_B64.
CONFIG_YAML = (ROOT / "hermes-flare.yaml").read_text()
STATE = "/var/lib/hermes-flare"
HOME = f"{STATE}/bots/hermes/home"
# SIGTERM to exit: supervisord gives flared 90 s (stopwaitsecs), flared's own
# final-snapshot budget is 60 s; a shutdown needing more than this is a bug here.
GRACE = 60


@pytest.fixture(scope="module")
def image() -> str:
    ref, seconds = agent_image()
    print(f"\n[agent image] {ref} ready in {seconds:.1f} s")
    return ref


def container_env(
    store: str, bucket: str, volume: Path, token: str
) -> tuple[dict[str, str], dict[Path, str]]:
    env = worker_env(worker_vars(bucket), "default", token, CONFIG_YAML)
    assert env["FLARE_STORE__URL"] == f"s3://{bucket}/snapshots"
    assert env["FLARE_STORE__ENDPOINT"] == "https://0123456789abcdef0123456789abcdef.r2.cloudflarestorage.com"
    if store == "s3":
        # R2 is out of reach here; the same S3 API is served by moto on this host.
        env["FLARE_STORE__ENDPOINT"] = f"http://{HOST_LOOPBACK}:{shared_server().port}"
        return env, {}
    env["FLARE_STORE__URL"] = "file:///store"
    return env, {volume: "/store"}


def processes(c: AgentContainer) -> list[tuple[int, str, str]]:
    """(uid, command name, args) of every process but the `ps` that lists them."""
    out = c.exec("ps", "-eo", "uid=,pid=,comm=,args=")
    rows = []
    for line in out.splitlines():
        uid, _pid, comm, args = line.split(None, 3)
        if comm != "ps":
            rows.append((int(uid), comm, args))
    return rows


@pytest.mark.parametrize("store", ["s3", "file"])
def test_the_agent_image_boots_as_the_worker_starts_it(image: str, tmp_path: Path, store: str) -> None:
    bucket = shared_server().new_bucket()
    volume = tmp_path / "store"
    volume.mkdir()
    give_to_image_user(volume)
    token = secrets.token_hex(32)
    env, volumes = container_env(store, bucket, volume, token)
    timings: dict[str, float] = {}

    with AgentContainer(image, env, tmp_path, volumes) as c:
        # flared answers /healthz with the digest of the YAML the Worker passed.
        timings["healthz"] = c.wait(lambda: c.request("GET", "/healthz")[0] == 200, 60, "/healthz")
        assert (
            c.request("GET", "/healthz")[1]["config_digest"]
            == hashlib.sha256(CONFIG_YAML.encode()).hexdigest()
        )
        # Everything else needs the internal token.
        assert c.request("GET", "/status")[0] == 401
        assert c.request("GET", "/status", "not-the-token")[0] == 401

        # The bot comes up with Hermes' API server connected.
        timings["running"] = c.wait(lambda: running_with_api(c, token), 90, "the bot RUNNING with api_server")
        gateway_pid = bot(c.request("GET", "/status", token)[1])["pid"]

        # Nothing runs as root: tini, supervisord, flared and the gateway are `hermes`.
        procs = processes(c)
        print(f"\n[{store}] processes (uid, name, args):")
        for uid, comm, args in procs:
            print(f"  {uid:>6} {comm:<12} {args[:90]}")
        assert {uid for uid, _, _ in procs} == {IMAGE_UID}, procs
        names = " ".join(args for _, _, args in procs)
        for expected in ("tini", "supervisord", "flared run", "hermes gateway run"):
            assert expected in names, procs
        # ... and owns what it writes: state, the rendered .env (0600), the control socket.
        stat = c.exec(
            "stat",
            "-c",
            "%u %a %n",
            STATE,
            f"{STATE}/flared.sock",
            f"{HOME}/.env",
            f"{STATE}/sandboxes",
            "/etc/hermes-flare/hermes-flare.yaml",
        )
        owners = {line.split()[2]: (int(line.split()[0]), line.split()[1]) for line in stat.splitlines()}
        assert all(uid == IMAGE_UID for uid, _ in owners.values()), owners
        assert owners[f"{HOME}/.env"][1] == "600"

        # A pushed YAML is applied without a restart of the gateway or the container.
        new_yaml = CONFIG_YAML.replace("every: 15m", "every: 20m")
        assert new_yaml != CONFIG_YAML
        code, answer = c.request("PUT", "/config", token, new_yaml.encode())
        assert (code, answer.get("applied")) == (200, True), answer
        assert (
            c.request("GET", "/healthz")[1]["config_digest"] == hashlib.sha256(new_yaml.encode()).hexdigest()
        )
        time.sleep(1)
        after = bot(c.request("GET", "/status", token)[1])
        assert (after["state"], after["pid"], after["restarts"]) == ("RUNNING", gateway_pid, 0)

        # Something the bot must not forget.
        marker = secrets.token_hex(8)
        c.exec("sh", "-c", f"echo {marker} > {HOME}/flare-marker.txt", user="hermes")

        # SIGTERM: the final snapshot, then exit 0 well within the grace period.
        timings["sigterm_to_exit"], code = c.stop(GRACE)
        assert code == 0, c.logs()
        assert timings["sigterm_to_exit"] < GRACE
        log = c.read_file(f"{STATE}/logs/flared.log")
        final = re.search(r"bot hermes: final snapshot: (\w+) (\S+)", log)
        assert final and final.group(1) == "ok", log[-3000:]
        snapshot_id = final.group(2)

    if store == "s3":
        keys = [o["Key"] for o in shared_server().client().list_objects_v2(Bucket=bucket).get("Contents", [])]
    else:
        keys = [str(p.relative_to(volume)) for p in volume.rglob("*") if p.is_file()]
    assert any(snapshot_id in k for k in keys), keys

    # A fresh container (a new internal token, as the Worker mints one per start)
    # restores that snapshot before its gateway starts.
    token2 = secrets.token_hex(32)
    env2, volumes2 = container_env(store, bucket, volume, token2)
    with AgentContainer(image, env2, tmp_path, volumes2) as c2:
        c2.wait(lambda: running_with_api(c2, token2), 90, "the restored bot RUNNING")
        b = bot(c2.request("GET", "/status", token2)[1])
        restore = b["snapshots"]["restore"]
        assert (restore["result"], restore["id"]) == ("restored", snapshot_id), restore
        assert c2.exec("cat", f"{HOME}/flare-marker.txt").strip() == marker
        assert c2.request("GET", "/status", token)[0] == 401  # the old token is dead
    print(f"\n[{store}] timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in timings.items()))


def test_the_final_image_carries_no_build_tools_caches_or_sources(image: str) -> None:

    script = (
        "command -v uv pip3 >/dev/null 2>&1 && command -v uv; "
        "for p in /root/.cache /home/hermes/.cache /src /tmp/dist /opt/hermes-flare/flared /var/lib/apt/lists/*.gz; "
        'do [ -e "$p" ] && echo "present: $p"; done; '
        "find / -xdev -perm -o+w -type f 2>/dev/null | sed 's/^/world-writable: /'; true"
    )
    out = podman("run", "--rm", "--entrypoint", "sh", image, "-c", script).stdout
    assert out.strip() == "", out
    size = int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())
    print(f"\n[agent image] {size / 1e6:.0f} MB")
    assert size <= 450e6, f"the Agent image grew to {size / 1e6:.0f} MB (aim: <= 450 MB)"
