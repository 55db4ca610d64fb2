"""The Agent and Exec images, tested without a Docker engine.

What can be checked here: every file a Dockerfile copies exists in its build
context, versions agree with the lock files, the Dockerfiles pass hadolint,
the entrypoint and supervisord config parse, and the Agent's start command
(entrypoint -> supervisord -> flared) runs on this machine with the image's
paths redirected to a temp dir, answering /healthz with the digest of the YAML
the Worker passed, as the Worker's cron compares it.
"""

from __future__ import annotations

import base64
import configparser
import contextlib
import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from flared.build import release
from flared.supervisor import SupervisorClient
from tests.fixtures.flare import bot, free_port

ROOT = Path(__file__).resolve().parent.parent
AGENT = ROOT / "images/agent/Dockerfile"
EXEC = ROOT / "images/exec/Dockerfile"
ENTRYPOINT = ROOT / "images/agent/entrypoint.sh"
IMAGE_CONF = ROOT / "supervisord/supervisord.conf"
VENV_BIN = Path(sys.executable).parent
# What the image's CMD runs supervisord under (flared/cli/foreground.py).
WATCHER = ["python", "-m", "flared.cli.foreground", "--container", "--"]


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    return out


def build_contexts() -> dict[str, Path]:
    """Build context of each image as the rendered wrangler.toml configures it."""
    from flared.config.loader import load_config
    from flared.config.wrangler import render

    loaded = load_config(
        ROOT / "hermes-flare.yaml",
        environ={"CLOUDFLARE_ACCOUNT_ID": "0123456789abcdef0123456789abcdef"},
        check_state_dir=False,
    )
    cfg = tomllib.loads(render(loaded))
    contexts = {}
    for c in cfg["containers"]:
        dockerfile = (ROOT / c["image"]).resolve()
        ctx = c.get("image_build_context")
        contexts[str(dockerfile)] = (ROOT / ctx).resolve() if ctx else dockerfile.parent
    return contexts


@pytest.mark.parametrize("dockerfile", [AGENT, EXEC], ids=["agent", "exec"])
def test_every_copied_file_exists_in_the_build_context(dockerfile: Path) -> None:
    context = build_contexts()[str(dockerfile.resolve())]
    copies = [args for ins, args in instructions(dockerfile) if ins in ("COPY", "ADD")]
    for args in copies:
        parts = [p for p in shlex.split(args) if not p.startswith("--")]
        if any(a.startswith("--from") for a in shlex.split(args)):
            continue
        *sources, _dest = parts
        for src in sources:
            assert (context / src).exists(), f"{dockerfile.name}: COPY {src} is missing from {context}"


def test_dockerignore_admits_exactly_what_the_agent_image_copies() -> None:
    """The context is the repo root: .venv, node_modules and .flare must stay out, COPY sources in."""
    rules = [r for r in (ROOT / ".dockerignore").read_text().splitlines() if r and not r.startswith("#")]
    assert rules[0] == "*"
    admitted = {r[1:].rstrip("/") for r in rules if r.startswith("!")}
    copies = [args for ins, args in instructions(AGENT) if ins == "COPY" and "--from=" not in args]
    assert copies
    for args in copies:
        *sources, _dest = [p for p in shlex.split(args) if not p.startswith("--")]
        for src in sources:
            assert any(src == a or src.startswith(a + "/") for a in admitted), (
                f"{src} is excluded by .dockerignore"
            )


def test_exec_image_tag_is_the_sandbox_sdk_version_in_the_lock_file() -> None:
    lock = json.loads((ROOT / "worker/package-lock.json").read_text())
    locked = lock["packages"]["node_modules/@cloudflare/sandbox"]["version"]
    declared = json.loads((ROOT / "worker/package.json").read_text())["dependencies"]["@cloudflare/sandbox"]
    assert declared == locked, "pin @cloudflare/sandbox exactly in worker/package.json"
    base = next(args for ins, args in instructions(EXEC) if ins == "FROM")
    m = re.fullmatch(r"docker\.io/cloudflare/sandbox:(\d+\.\d+\.\d+)(-[a-z]+)?", base)
    assert m, f"unexpected base image {base}"
    assert m.group(1) == locked, f"images/exec uses sandbox {m.group(1)}, the Worker locks {locked}"


def stages(dockerfile: Path) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage (the ARGs before the first FROM are stage 0's)."""
    out: list[list[tuple[str, str]]] = [[]]
    for ins, args in instructions(dockerfile):
        if ins == "FROM" and out[-1] and any(i == "FROM" for i, _ in out[-1]):
            out.append([])
        out[-1].append((ins, args))
    return out


def default_base(dockerfile: Path) -> str:
    """The official base the Dockerfile builds FROM unless BASE is passed (a real deploy)."""
    arg = next(args for ins, args in instructions(dockerfile) if ins == "ARG" and args.startswith("BASE="))
    return arg.split("=", 1)[1]


def test_agent_image_python_and_uv_agree_with_the_project() -> None:
    ins = instructions(AGENT)
    base = default_base(AGENT)
    m = re.fullmatch(r"docker\.io/library/python:(\d+)\.(\d+)\.(\d+)-slim-bookworm", base)
    assert m, f"the Agent base image must be a pinned python slim tag, not {base}"
    # Every stage builds FROM that base (a local build passes a stand-in as BASE).
    assert [args.split()[0] for i, args in ins if i == "FROM"] == ["${BASE}", "${BASE}"]
    major, minor = int(m.group(1)), int(m.group(2))
    # The image runs the Python the tests run on (uv.lock resolves for it).
    assert (major, minor) == sys.version_info[:2]
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    lo = re.search(r">=\s*(\d+)\.(\d+)", requires)
    hi = re.search(r"<\s*(\d+)\.(\d+)", requires)
    assert lo and (major, minor) >= (int(lo.group(1)), int(lo.group(2)))
    assert hi and (major, minor) < (int(hi.group(1)), int(hi.group(2)))
    uv = next(args for i, args in ins if i == "ARG" and args.startswith("UV_VERSION="))
    uv_major, uv_minor = (int(x) for x in uv.split("=", 1)[1].split(".")[:2])
    assert uv_major == 0 and uv_minor >= 5, "scripts/setup accepts uv>=0.5,<1; the image must too"
    build, final = stages(AGENT)
    build_runs = " ".join(args for i, args in build if i == "RUN")
    assert "uv sync --frozen --no-dev" in build_runs, "the image must install exactly what uv.lock pins"
    final_runs = " ".join(args for i, args in final if i == "RUN")
    assert "squashfs-tools" in final_runs and "tini" in final_runs
    # uv and its downloads stay in the build stage: the final image only copies results.
    assert "uv " not in final_runs and "pip install" not in final_runs
    env = " ".join(args for i, args in build if i == "ENV")
    assert "UV_NO_CACHE=1" in env
    copied = [args for i, args in final if i == "COPY" and "--from=build" in args]
    assert copied == [
        "--from=build /opt/hermes-flare/.venv /opt/hermes-flare/.venv",
        "--from=build /opt/hermes-flare/lib /opt/hermes-flare/lib",
    ]


def test_agent_image_runs_the_committed_supervisord_config_under_tini_as_hermes() -> None:
    ins = instructions(AGENT)
    copies = [args for i, args in ins if i == "COPY"]
    assert "supervisord/supervisord.conf /etc/hermes-flare/supervisord.conf" in copies
    entry = json.loads(next(args for i, args in ins if i == "ENTRYPOINT"))
    cmd = json.loads(next(args for i, args in ins if i == "CMD"))
    # The entrypoint (root) hands over to `hermes`, then tini runs supervisord under the watcher.
    assert entry == ["/usr/local/bin/hermes-flare-entrypoint", "/usr/bin/tini", "--"]
    assert cmd == [*WATCHER, "supervisord", "-n", "-c", "/etc/hermes-flare/supervisord.conf"]
    env = " ".join(args for i, args in ins if i == "ENV")
    assert "FLARE_RUN_AS=hermes" in env
    assert next(args for i, args in ins if i == "EXPOSE") == "7979"
    # The port the Worker's Agent class talks to.
    assert "CONTROL_PORT = 7979" in (ROOT / "worker/src/agent-env.ts").read_text()


def test_config_files_parse() -> None:
    conf = configparser.RawConfigParser()
    conf.read_string(IMAGE_CONF.read_text())
    assert conf.get("program:flared", "command").startswith("/opt/hermes-flare/.venv/bin/flared run")
    assert conf.get("supervisord", "nodaemon") == "true"
    subprocess.run(["sh", "-n", str(ENTRYPOINT)], check=True)
    assert os.access(ENTRYPOINT, os.X_OK)


def test_dockerfiles_pass_hadolint() -> None:
    hadolint = VENV_BIN / "hadolint"
    res = subprocess.run([str(hadolint), str(AGENT), str(EXEC)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


# --------------------------------------------------------------------------- the start command


def redirected_conf(tmp: Path, state: Path, config: Path) -> Path:
    """The image's supervisord.conf with its paths moved under tmp."""
    text = IMAGE_CONF.read_text()
    text = text.replace("/opt/hermes-flare/.venv/bin/flared", str(VENV_BIN / "flared"))
    text = text.replace("/etc/hermes-flare/hermes-flare.yaml", str(config))
    text = text.replace("/var/lib/hermes-flare", str(state))
    assert "/var/lib/hermes-flare" not in text and "/opt/hermes-flare" not in text
    path = tmp / "supervisord.conf"
    path.write_text(text)
    return path


def get_json(url: str, token: str | None = None, timeout: float = 2) -> dict[str, object]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=timeout) as res:
        data: dict[str, object] = json.loads(res.read())
        return data


def put_config(port: int, text: str) -> tuple[int, bool]:
    """PUT /config as the Worker sends it: raw YAML, internal token."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/config",
        data=text.encode(),
        method="PUT",
        headers={"Authorization": "Bearer image-test-token", "Content-Type": "application/yaml"},
    )
    with urllib.request.urlopen(req, timeout=30) as res:
        return res.status, bool(json.loads(res.read()).get("applied"))


@contextlib.contextmanager
def container_start(
    tmp_path: Path, yaml_text: str, group: str, *, stopwaitsecs: int | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], int, Path]]:
    """The image's start command on this machine; ``stopwaitsecs``: supervisord's for flared."""
    state, config = tmp_path / "state", tmp_path / "etc/hermes-flare.yaml"
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FLARE_")},
        # What the Worker's Agent class passes (agentEnvVars), with local paths.
        "FLARE_CONFIG_B64": base64.b64encode(yaml_text.encode()).decode(),
        "FLARE_GROUP": group,
        "FLARE_CONTROL_TOKEN": "image-test-token",
        "FLARE_CONTROL__HOST": "127.0.0.1",
        "FLARE_CONTROL__PORT": str(port),
        "FLARE_STATE_DIR": str(state),
        "FLARE_STORE__URL": f"file://{tmp_path / 'store'}",
        "HERMES_FLARE_CONFIG": str(config),
        "FLARE_CONTAINER_CA": str(tmp_path / "no-ca.crt"),
        "PATH": f"{VENV_BIN}:{os.environ['PATH']}",
    }
    # The entrypoint makes the state dirs, but supervisord's own paths come from its conf.
    conf = redirected_conf(tmp_path, state, config)
    if stopwaitsecs is not None:
        text = conf.read_text()
        assert "\nstopwaitsecs=90\n" in text
        conf.write_text(text.replace("\nstopwaitsecs=90\n", f"\nstopwaitsecs={stopwaitsecs}\n"))
    proc = subprocess.Popen(
        ["sh", str(ENTRYPOINT), *WATCHER, "supervisord", "-n", "-c", str(conf)],
        env=env,
        start_new_session=True,
        stdout=(tmp_path / "container.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    try:
        yield proc, port, state
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


@pytest.mark.integration
def test_the_agent_start_command_runs_outside_a_container(tmp_path: Path) -> None:
    data: dict[str, Any] = {
        "version": 1,
        "state_dir": "./unused-overridden-by-FLARE_STATE_DIR",
        "snapshots": {"every": "1h", "on_change": {"enabled": False}},
        # Only group "research" runs here; this bot is another container's.
        "bots": [bot("elsewhere", group="default")],
    }
    yaml_text = "# pushed by the Worker\n" + yaml.safe_dump(data)
    with container_start(tmp_path, yaml_text, group="research") as (proc, port, state):
        deadline = time.monotonic() + 60
        health: dict[str, object] = {}
        while time.monotonic() < deadline:
            assert proc.poll() is None, (tmp_path / "container.log").read_text()
            with contextlib.suppress(OSError):
                health = get_json(f"http://127.0.0.1:{port}/healthz")
                if health.get("last_tick"):
                    break
            time.sleep(0.2)
        assert health.get("last_tick"), f"flared did not come up: {(tmp_path / 'container.log').read_text()}"
        # The entrypoint wrote the YAML it was given, byte for byte ...
        assert (tmp_path / "etc/hermes-flare.yaml").read_text() == yaml_text
        # ... and flared reports the digest the Worker computes of the same text.
        assert health["config_digest"] == hashlib.sha256(yaml_text.encode()).hexdigest()
        # ... and its version, which the Worker compares with the one it was rendered with.
        assert health["version"] == release()
        # TCP control needs the internal token.
        with pytest.raises(urllib.error.HTTPError) as denied:
            get_json(f"http://127.0.0.1:{port}/status")
        assert denied.value.code == 401
        status = get_json(f"http://127.0.0.1:{port}/status", token="image-test-token")
        assert status
        # A bot of another group gets no gateway in this container.
        programs = {p["name"] for p in SupervisorClient(state / "supervisor/supervisor.sock").processes()}
        assert programs == {"flared", "logs"}, programs
        # flared's lines reach the container's own log (`docker logs`), prefixed (issue 23, item 2).
        log = tmp_path / "container.log"
        deadline = time.monotonic() + 15
        while "[flared] " not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert re.search(r"^\[flared\] .* flared \S+ starting with ", log.read_text(), re.M), log.read_text()

        # A redeploy: the Worker's cron PUTs the new YAML as it does (scheduled.ts) ...
        data["snapshots"]["every"] = "2h"
        new_text = "# pushed by the Worker after a redeploy\n" + yaml.safe_dump(data)
        new_digest = hashlib.sha256(new_text.encode()).hexdigest()
        assert put_config(port, new_text) == (200, True)
        assert get_json(f"http://127.0.0.1:{port}/healthz")["config_digest"] == new_digest
        # ... and pushing the same text again changes nothing.
        assert put_config(port, new_text) == (200, False)
        assert (tmp_path / "etc/hermes-flare.yaml").read_text() == new_text
    assert proc.returncode is not None


def test_the_entrypoint_refuses_to_start_without_a_config(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "HERMES_FLARE_CONFIG": str(tmp_path / "missing.yaml"),
        "FLARE_STATE_DIR": str(tmp_path / "state"),
    }
    res = subprocess.run(["sh", str(ENTRYPOINT), "true"], env=env, capture_output=True, text=True)
    assert res.returncode == 2
    assert "FLARE_CONFIG_B64" in res.stderr


def test_the_entrypoint_trusts_the_container_ca_when_mounted(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("-----BEGIN CERTIFICATE-----\nTEST\n-----END CERTIFICATE-----\n")
    (tmp_path / "c.yaml").write_text("version: 1\n")
    env = {
        "PATH": os.environ["PATH"],
        "HERMES_FLARE_CONFIG": str(tmp_path / "c.yaml"),
        "FLARE_STATE_DIR": str(tmp_path / "state"),
        "FLARE_CONTAINER_CA": str(ca),
        "FLARE_CONFIG_B64": base64.b64encode(b"version: 1\n# new\n").decode(),
    }
    script = 'printf "%s|%s|%s" "$SSL_CERT_FILE" "$REQUESTS_CA_BUNDLE" "${FLARE_CONFIG_B64:-unset}"'
    res = subprocess.run(["sh", str(ENTRYPOINT), "sh", "-c", script], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    bundle = tmp_path / "state/ca-bundle.pem"
    assert res.stdout == f"{bundle}|{bundle}|unset"
    assert bundle.read_text().endswith(ca.read_text())
    assert (tmp_path / "c.yaml").read_text() == "version: 1\n# new\n"


def test_the_entrypoint_hands_the_secrets_to_flared_in_a_file(tmp_path: Path) -> None:
    """Issue 13 item 6: tini, supervisord and the gateways start without the container's secrets."""
    from flared.config import handoff

    (tmp_path / "c.yaml").write_text("version: 1\n")
    env = {
        "PATH": os.environ["PATH"],
        "HERMES_FLARE_CONFIG": str(tmp_path / "c.yaml"),
        "FLARE_STATE_DIR": str(tmp_path / "state"),
        "FLARE_CONTROL_TOKEN": "tok-entrypoint-secret",
        "SLACK_BOT_TOKEN": "xoxb-entrypoint-secret",
        "MULTI": "line one\nline two = x",
    }
    res = subprocess.run(["sh", str(ENTRYPOINT), "env", "-0"], env=env, capture_output=True)
    assert res.returncode == 0, res.stderr
    seen = handoff.decode(res.stdout)
    assert "entrypoint-secret" not in res.stdout.decode() and "MULTI" not in seen
    assert seen["PATH"] == env["PATH"] and seen["FLARE_STATE_DIR"] == env["FLARE_STATE_DIR"]
    path = tmp_path / "state/supervisor/flared.env"
    assert path.stat().st_mode & 0o777 == 0o600
    got = handoff.read(path)
    assert got["FLARE_CONTROL_TOKEN"] == "tok-entrypoint-secret" and got["MULTI"] == env["MULTI"]
    # The shell's list of inheritable variables is flared's.
    text = ENTRYPOINT.read_text()
    listed = text.split("for name in ", 1)[1].split("; do", 1)[0].replace("\\\n", " ").split()
    assert sorted(listed) == sorted(handoff.BASE_VARS)


@pytest.mark.skipif(os.geteuid() != 0, reason="starts the entrypoint as another uid")
def test_the_entrypoint_refuses_a_volume_its_user_cannot_write_with_the_fix() -> None:
    """Issue 23, item 3: a root-owned store volume made the final snapshot fail (Permission denied).

    Started as uid 10001 (`--user`), the entrypoint cannot hand a root-owned
    volume over: it refuses before anything runs, naming the directory and the fix.
    """
    import shutil
    import tempfile

    tmp_path = Path(tempfile.mkdtemp(prefix="flare-volumes-"))  # pytest's tmp is root-only
    try:
        _refuses_volumes(tmp_path)
    finally:
        shutil.rmtree(tmp_path)


def _refuses_volumes(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("version: 1\n")
    (tmp_path / "c.yaml").chmod(0o644)
    state, store = tmp_path / "state", tmp_path / "store"
    for d in (state, store):
        d.mkdir(mode=0o755)
    tmp_path.chmod(0o755)
    env = {
        "PATH": os.environ["PATH"],
        "HERMES_FLARE_CONFIG": str(tmp_path / "c.yaml"),
        "FLARE_STATE_DIR": str(state),
        "FLARE_STORE__URL": f"file://{store}",
    }

    def start_as_10001() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["setpriv", "--reuid=10001", "--regid=10001", "--clear-groups", "sh", str(ENTRYPOINT), "true"],
            env=env,
            capture_output=True,
            text=True,
            timeout=30,
        )

    res = start_as_10001()
    assert res.returncode == 2
    assert res.stderr.startswith(f"hermes-flare: {state} is not writable by uid 10001, which runs flared")
    assert "start the container as root (no --user / user: in compose)" in res.stderr
    assert "chown -R 10001:10001 <the volume's host directory>" in res.stderr

    os.chown(state, 10001, 10001)  # the state volume fixed; the store still root's
    res = start_as_10001()
    assert res.returncode == 2
    assert res.stderr.startswith(f"hermes-flare: {store} is not writable by uid 10001"), res.stderr
    os.chown(store, 10001, 10001)
    res = start_as_10001()
    assert res.returncode == 0, res.stderr


def test_the_entrypoint_drops_the_last_containers_gateway_programs(tmp_path: Path) -> None:
    """A state volume kept across containers (compose) held gateway-*.conf: supervisord
    started the gateways before flared restored anything ("adopting it (no restore)")."""
    (tmp_path / "c.yaml").write_text("version: 1\n")
    programs = tmp_path / "state" / "supervisor" / "programs"
    programs.mkdir(parents=True)
    (programs / "gateway-hermes.conf").write_text("[program:gateway-hermes]\ncommand=sleep 1\n")
    gateway_log = tmp_path / "state" / "bots" / "hermes" / "logs" / "gateway.log"
    gateway_log.parent.mkdir(parents=True)
    gateway_log.write_text("the last container's line\n")
    env = {
        "PATH": os.environ["PATH"],
        "HERMES_FLARE_CONFIG": str(tmp_path / "c.yaml"),
        "FLARE_STATE_DIR": str(tmp_path / "state"),
    }
    res = subprocess.run(["sh", str(ENTRYPOINT), "true"], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert programs.is_dir() and list(programs.iterdir()) == []
    # ... and notes where each log ends, for the log mirror (`flared logs --mirror`).
    noted = (tmp_path / "state" / "logs" / ".start-offsets").read_text()
    assert noted == f"26 {gateway_log}\n"
