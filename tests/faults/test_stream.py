"""Litestream under a real `flared up`: a lost machine costs at most about a second of transactions.

A writer commits numbered transactions into the bot's `state.db` (beside
Hermes' own tables) while the real gateway and the real Litestream run;
the whole process tree is SIGKILLed at a random moment, the state dir is
wiped (the machine and its disk are gone), and a new `flared up` boots
from the store alone. The same again in the Agent image under podman: the
writer runs inside the container, which is killed with `podman kill -s KILL`
and removed with its state volume; a new container boots on a new volume.
"""

from __future__ import annotations

import contextlib
import json
import random
import re
import secrets
import shutil
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures import txwriter
from tests.fixtures.flare import FlareUp, bot
from tests.fixtures.podman import (
    HOST_LOOPBACK,
    ROOT,
    AgentContainer,
    agent_image,
    podman,
    podman_env,
    running_with_api,
    worker_env,
    worker_vars,
)
from tests.fixtures.podman import hermes_bot as image_bot
from tests.fixtures.s3server import shared_server, store_config
from tests.fixtures.txwriter import MIN_WRITE_S, Writer, check_lost, probe

pytestmark = pytest.mark.integration


def _wait_streaming(flare: FlareUp, name: str, db: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stream = flare.bot_status(name).get("stream") or {}
        if any(d["db"] == db and d["state"] == "ok" for d in stream.get("databases") or []):
            return
        time.sleep(0.3)
    raise AssertionError(f"{db} of {name} never streamed:\n{flare.read_logs()}")


def _wait_log(path: Path, pattern: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if re.search(pattern, path.read_text(errors="replace")):
                return
        time.sleep(0.2)
    raise AssertionError(f"{path.name} never said {pattern!r}")


def _kill_under_writer(
    tmp_path: Path, flare: FlareUp, seed: int, table: str = "probe"
) -> tuple[list[tuple[int, float]], float]:
    """Write, SIGKILL the whole tree at a random moment; (commits, when it was killed)."""
    rnd = random.Random(seed)
    home = flare.state_dir / "bots" / "a" / "home"
    with Writer(home / "state.db", table) as writer:
        time.sleep(MIN_WRITE_S + rnd.random() * 2.0)
        killed_at = time.time()
        flare.kill_all()
        writer.stop()
    return writer.commits, killed_at


def _check_restored(
    flare: FlareUp, commits: list[tuple[int, float]], killed_at: float, table: str = "probe"
) -> dict[str, Any]:
    integrity, have = probe(flare.state_dir / "bots" / "a" / "home" / "state.db", table)
    assert integrity == "ok", integrity
    return check_lost(have, commits, killed_at)


def _boot_from_store(tmp_path: Path, flare: FlareUp) -> None:
    shutil.rmtree(flare.state_dir)  # the machine and its disk are gone: only the store remains
    flare.start()
    flare.wait_running("a", timeout=120)


@pytest.mark.parametrize("store", ["file", "s3"])
def test_kill_9_of_everything_then_a_wiped_disk_loses_at_most_a_second(tmp_path: Path, store: str) -> None:
    # A short fence check: the new writer streams 3 s after its claim (not 11 s), the test is shorter.
    stream = {"every": "1h", "on_change": {"enabled": False}, "stream": {"fence_check": "2s"}}
    sections: dict[str, Any] = {"snapshots": stream}
    with _store_section(store) as section:
        if section is not None:
            sections["store"] = section
        flare = FlareUp(tmp_path, [bot("a")], **sections)
        try:
            flare.start()
            flare.wait_running("a", timeout=120)
            assert flare.cli("snapshot", "--bot", "a").returncode == 0  # the home, without state.db
            # Twice: the second time the databases were themselves restored from the stream
            # and Litestream went on from them.
            for cycle in range(2):
                _wait_streaming(flare, "a", "state.db")
                if cycle == 1:
                    # Litestream started on a restored state.db: it writes its own snapshot of it
                    # (TXID 1 and Hermes' tables), after which a snapshot makes the database's base:
                    # the next boot starts from that and follows the stream (the writer's LTX files).
                    _wait_log(flare.state_dir / "logs" / "litestream.log", "snapshot complete.*db=state.db")
                    assert flare.cli("snapshot", "--bot", "a").returncode == 0
                    _wait_log(flare.state_dir / "logs" / "flared.log", "uploaded a base of state.db")
                table = f"probe{cycle}"
                commits, killed_at = _kill_under_writer(tmp_path, flare, len(store) + cycle, table)
                _boot_from_store(tmp_path, flare)
                if cycle == 1:
                    logs = (flare.state_dir / "logs" / "flared.log").read_text()
                    assert re.search(r"from a base: .*state\.db", logs), flare.read_logs()
                _check_restored(flare, commits, killed_at, table)
                restore = flare.bot_status("a")["snapshots"]["restore"]
                assert restore["result"] == "restored", restore
        finally:
            flare.stop()


def _store_section(kind: str) -> Any:
    """The store section for `kind`: None for the default file store, moto's S3 server otherwise."""
    if kind == "file":
        return contextlib.nullcontext(None)
    return store_config()


def _streamed(flare: FlareUp) -> list[str]:
    conf = flare.state_dir / "stream" / "litestream.yml"
    data = yaml.safe_load(conf.read_text()) if conf.exists() else {"dbs": []}
    return sorted(Path(d["dir"]).parent.name for d in data["dbs"])


def test_hot_reload_adds_and_removes_a_bots_stream(tmp_path: Path) -> None:
    with FlareUp(tmp_path, [bot("a")]) as flare:
        flare.wait_running("a", timeout=120)
        _wait_streaming(flare, "a", "state.db")
        assert _streamed(flare) == ["a"]
        flare.write_config({**flare.data, "bots": [*flare.data["bots"], bot("b")]})
        flare.wait_running("b", timeout=120)
        _wait_streaming(flare, "b", "state.db")
        assert _streamed(flare) == ["a", "b"]
        assert (tmp_path / "store" / "b" / "stream" / "state.db").is_dir()
        flare.write_config({**flare.data, "bots": flare.data["bots"][:1]})
        deadline = time.monotonic() + 60
        while _streamed(flare) != ["a"] and time.monotonic() < deadline:
            time.sleep(0.3)
        assert _streamed(flare) == ["a"]
        _wait_streaming(flare, "a", "state.db")  # a's stream goes on


# ---------------------------------------------------------------- the same in the Agent image

#: What the Worker bundles and passes as FLARE_CONFIG_B64.
IMAGE_CONFIG_YAML = (ROOT / "hermes-flare.yaml").read_text()
IMAGE_STATE = "/var/lib/hermes-flare"
IMAGE_HOME = f"{IMAGE_STATE}/bots/hermes/home"


class ContainerWriter:
    """tests/fixtures/txwriter.py's writer inside a running container (`podman exec`, as `hermes`),
    its commits read from its output: each line is printed after its COMMIT returned."""

    def __init__(self, container: str, db: str, table: str) -> None:
        self.commits: list[tuple[int, float]] = []
        self.proc = subprocess.Popen(
            ["podman", "exec", "--user", "hermes", container, "python", "-c", TXWRITER, "write", db, table],
            env=podman_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            n, t = line.split()
            self.commits.append((int(n), float(t)))

    def wait_first(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not self.commits:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                raise AssertionError(f"the writer in the container committed nothing: {err}")
            time.sleep(0.05)

    def join(self) -> None:
        """After the kill: the `podman exec` ends with its container."""
        try:
            self.proc.wait(30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)
        self._thread.join(10)


TXWRITER = Path(txwriter.__file__).read_text()


def _image_yaml() -> str:
    """The YAML the Worker bundles, with a short fence check (the stream starts 3 s after the claim)."""
    data = yaml.safe_load(IMAGE_CONFIG_YAML)
    data["snapshots"]["stream"] = {"fence_check": "2s"}
    return yaml.safe_dump(data, sort_keys=False)


def _image_env(bucket: str, token: str) -> dict[str, str]:
    """The environment the Worker starts the Agent container with; the store is moto on this host."""
    env = worker_env(worker_vars(bucket), "default", token, _image_yaml())
    env["FLARE_STORE__ENDPOINT"] = f"http://{HOST_LOOPBACK}:{shared_server().port}"
    return env


def _wait_image_streaming(c: AgentContainer, token: str, db: str, timeout: float = 60) -> None:
    def streaming() -> bool:
        code, status = c.request("GET", "/status", token)
        stream = (image_bot(status).get("stream") or {}) if code == 200 else {}
        return any(d["db"] == db and d["state"] == "ok" for d in stream.get("databases") or [])

    c.wait(streaming, timeout, f"{db} streaming")


def test_in_the_image_kill_9_of_the_container_then_a_new_volume_loses_at_most_a_second(
    tmp_path: Path,
) -> None:
    """The Agent image under podman with its state on a named volume and moto as R2: a writer commits
    into the bot's state.db inside the container while the gateway runs, the container is SIGKILLed
    at a random moment, removed, its volume deleted; a new container on a new volume restores
    the home from the snapshot and state.db from the stream."""
    image, _ = agent_image()
    bucket = shared_server().new_bucket()
    run = uuid.uuid4().hex[:10]
    volumes = [f"hermes-flare-test-state-{run}-1", f"hermes-flare-test-state-{run}-2"]
    db, table, marker = f"{IMAGE_HOME}/state.db", "probe", f"the user's cat is called Ada ({run})"
    rnd = random.Random()
    try:
        token = secrets.token_hex(32)
        with AgentContainer(image, _image_env(bucket, token), tmp_path, {volumes[0]: IMAGE_STATE}) as c:
            c.wait(lambda: running_with_api(c, token), 120, "the bot RUNNING with api_server")
            _wait_image_streaming(c, token, "state.db")
            # Something in the home but not in a database: it comes back with the snapshot.
            memory = f"{IMAGE_HOME}/memories/MEMORY.md"
            c.exec(
                "sh",
                "-c",
                f'mkdir -p "$(dirname {memory})" && printf %s "$1" > {memory}',
                "-",
                marker,
                user="hermes",
            )
            snapshot = json.loads(c.exec("flared", "snapshot", "--bot", "hermes", "--json", user="hermes"))
            assert snapshot["results"][0]["result"] == "ok", snapshot
            writer = ContainerWriter(c.name, db, table)
            try:
                writer.wait_first()
                time.sleep(MIN_WRITE_S + rnd.random() * 2.0)
                assert running_with_api(c, token), "the gateway stopped under the writer"
                # The signal went before `killed_at`: the writer's last commit is at most this old.
                killed_at, code = c.kill()
            finally:
                writer.join()
            assert code == 128 + 9, c.logs()
        # The container is removed; so is its disk.
        podman("volume", "rm", volumes[0])
        assert podman("volume", "exists", volumes[0], check=False).returncode == 1

        token = secrets.token_hex(32)
        with AgentContainer(image, _image_env(bucket, token), tmp_path, {volumes[1]: IMAGE_STATE}) as c:
            booted = c.wait(lambda: running_with_api(c, token), 120, "the restored bot RUNNING")
            restore = image_bot(c.request("GET", "/status", token)[1])["snapshots"]["restore"]
            assert restore["result"] == "restored", restore
            assert c.exec("cat", memory) == marker
            found = json.loads(c.exec("python", "-c", TXWRITER, "probe", db, table, user="hermes"))
            assert found["integrity"] == "ok", found
            lost = check_lost(set(found["have"]), writer.commits, killed_at)
            log = c.read_file(f"{IMAGE_STATE}/logs/flared.log")
            assert re.search(r"bot hermes: restored [^\n]*\bstate\.db from the stream", log), log[-3000:]
        last = max(t for _, t in writer.commits)
        print(
            f"\n[image] {lost['written']} transactions written, {lost['lost']} lost, the oldest lost"
            f" {lost['worst_s']:.2f} s before the kill (the last commit {killed_at - last:.2f} s before it);"
            f" the restored bot running {booted:.1f} s after podman run"
        )
    finally:
        podman("volume", "rm", "-f", *volumes, check=False)
