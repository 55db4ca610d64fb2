"""Fault matrix, "Sandboxes and secrets" (docs/reliability.md): a hostile command in a lease.

The first row is the project's first promise: nothing inside a lease can read
a secret of flared or of any bot. A real ``flared up`` runs two bots on the
fake Slack with distinct secrets planted in flared's environment (the Slack
tokens the YAML names, the control token, store credentials, an extra
variable), and :mod:`tests.faults.sandbox_probe` reads everything a command
can reach from inside a lease. The same probe runs against the Cloudflare
provider's contract (the environment an Exec command gets). The other rows
are the escapes that already held (tests/test_sandboxes_local.py, referenced
from the matrix) and the two floods that must not hurt flared: a fork bomb
and 100 MB of output.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flared.config.models import SandboxProfile
from flared.control.tokens import bot_token, derived_secret
from flared.sandboxes.providers.cloudflare import CloudflareProvider
from flared.sandboxes.types import ExecRequest, new_lease_id
from tests.fakes.sandbox_worker import TOKEN as WORKER_TOKEN
from tests.fakes.sandbox_worker import FakeWorker
from tests.fakes.slack_server import FakeSlack
from tests.fixtures.flare import FlareUp, free_port, run_cli

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed"),
]

PROBE = Path(__file__).with_name("sandbox_probe.py")
HOOKS = Path(__file__).with_name("hooks")
BOTS = ("alpha", "beta")


def probe_script(needles: list[str], skip_content: tuple[str, ...] = ()) -> str:
    """The probe's source with the needles XOR-masked, so they appear nowhere but in its memory.

    ``skip_content``: trees walked but not read, for a second probe of the same host ``/usr``
    (6 GB here, read in full once per test run).
    """
    key = secrets.token_bytes(32)
    masked = [bytes(b ^ key[i % len(key)] for i, b in enumerate(n.encode())).hex() for n in needles]
    text = PROBE.read_text()
    text = text.replace("NEEDLES_HEX: list[str] = []  # substituted", f"NEEDLES_HEX: list[str] = {masked!r}")
    text = text.replace('KEY_HEX = ""  # substituted', f"KEY_HEX = {key.hex()!r}")
    return text.replace(
        "SKIP_CONTENT: list[str] = []  # substituted", f"SKIP_CONTENT: list[str] = {list(skip_content)!r}"
    )


def check_report(stdout: str, needles: list[str], names: list[str]) -> dict[str, Any]:
    report: dict[str, Any] = json.loads(stdout)
    # The probe is meaningful: each channel found the marker planted in it...
    assert report["controls"] == {"environ": True, "file": True, "fd": True}, report
    assert report["counts"]["procs"] >= 3 and report["counts"]["files"] > 100, report["counts"]
    # ...and none of the secrets anywhere.
    found = [f"{names[int(h['needle'])]} in {h['where']}" for h in report["hits"]]
    assert not found, "secrets readable from inside a lease:\n" + "\n".join(found)
    return report


def flared_exec(flare: FlareUp, bot: str, command: str, *opts: str, input: str | None = None) -> Any:
    """`flared exec` through the running daemon (options before the `--`)."""
    args = ("exec", "-c", str(flare.config_path), "--bot", bot, *opts, "--", command)
    return run_cli(*args, env=flare.env, input=input, timeout=300)


def environ_of(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


class Planted:
    """Distinct secrets for flared's environment and for each bot."""

    def __init__(self, slack: FakeSlack) -> None:
        tag = secrets.token_hex(4)
        self.apps = {b: slack.add_app(f"{b}-{tag}") for b in BOTS}
        self.env = {
            "FLARE_CONTROL_TOKEN": "ctl-" + secrets.token_hex(24),
            "AWS_ACCESS_KEY_ID": "AKIA" + secrets.token_hex(8).upper(),
            "AWS_SECRET_ACCESS_KEY": "aws-" + secrets.token_hex(20),
            "FLARE_PROBE_UNRELATED_SECRET": "unrelated-" + secrets.token_hex(16),
        }
        self.model_keys = {b: f"sk-{b}-" + secrets.token_hex(16) for b in BOTS}
        for b in BOTS:
            up = b.upper()
            self.env[f"{up}_BOT_TOKEN"] = self.apps[b].bot_token
            self.env[f"{up}_APP_TOKEN"] = self.apps[b].app_token
            self.env[f"{up}_MODEL_KEY"] = self.model_keys[b]

    def of_bot(self, bot: str) -> dict[str, str]:
        up = bot.upper()
        return {k: v for k, v in self.env.items() if k.startswith(f"{up}_")}

    def flared_only(self) -> dict[str, str]:
        return {k: v for k, v in self.env.items() if not k.startswith(tuple(f"{b.upper()}_" for b in BOTS))}


@pytest.fixture(scope="module")
def slack() -> Iterator[FakeSlack]:
    with FakeSlack(ack_timeout=10) as server:
        yield server


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory, slack: FakeSlack) -> Iterator[tuple[FlareUp, Planted]]:
    tmp = tmp_path_factory.mktemp("secrets")
    planted = Planted(slack)
    bots = []
    for b in BOTS:
        up = b.upper()
        bots.append(
            {
                "name": b,
                "model": {
                    "provider": "openai",
                    "base_url": "http://127.0.0.1:9/v1",
                    "model": "m",
                    "api_key": "${" + up + "_MODEL_KEY}",
                },
                "api": {"port": free_port()},
                "slack": {
                    "bot_token": "${" + up + "_BOT_TOKEN}",
                    "app_token": "${" + up + "_APP_TOKEN}",
                    "allowed_users": ["U0ABCDEF1"],
                    "api_url": slack.api_url,
                },
                "toolsets": ["terminal"],
            }
        )
    # A Hermes hook in alpha's home tries the control socket from inside the gateway (and a child of it).
    home = tmp / "state" / "bots" / "alpha" / "home"
    shutil.copytree(HOOKS / "authprobe", home / "hooks" / "authprobe")
    (home / "authprobe-other").write_text("beta\n")
    flare = FlareUp(
        tmp,
        bots,
        env=planted.env,
        control={"port": free_port()},
        sandboxes={"default": {"max_leases": 8, "pids": 64}},
    )
    flare.start()
    try:
        for b in BOTS:
            flare.wait_running(b, timeout=90)
            slack.wait_connected(planted.apps[b], timeout=90)
        yield flare, planted
    finally:
        with contextlib.suppress(Exception):
            flare.stop()


def all_secrets(flare: FlareUp, planted: Planted) -> tuple[list[str], list[str]]:
    """(values, names): every secret the test knows of, planted or derived by flared."""
    state = flare.state_dir
    named = dict(planted.env)
    for b in BOTS:
        named[f"flb token of {b}"] = bot_token(state, b)
        named[f"api_server key of {b}"] = derived_secret(state, f"api:{b}", 48)
    named["control.secret"] = (state / "control.secret").read_text().strip()
    return list(named.values()), list(named)


def test_no_secret_is_readable_from_inside_a_lease(world: tuple[FlareUp, Planted]) -> None:
    """Row 1: /proc/*/environ, /proc/*/cmdline, open fds and every visible file hold no secret."""
    flare, planted = world
    needles, names = all_secrets(flare, planted)
    for bot in BOTS:
        skip = () if bot == BOTS[0] else ("/usr",)  # the same read-only host /usr: read in full once
        out = flared_exec(flare, bot, "python3 -", input=probe_script(needles, skip))
        assert out.returncode == 0, out.stderr
        report = check_report(out.stdout, needles, names)
        assert report["uid"] == 1000
        print(f"probe in {bot}'s lease: {report['counts']}")


def test_gateways_get_only_their_own_secrets(world: tuple[FlareUp, Planted]) -> None:
    """Issue 13 item 6: a gateway's environment has no store credential, control token or other bot's secret.

    Each gateway still works (it connected to Slack with the tokens of its own
    ``.env``); supervisord and flared started from an environment without the
    secrets, so no program inherits them, and flared got them from its 0600
    handoff file.
    """
    flare, planted = world
    status = flare.status()
    pids = {b["name"]: b["pid"] for b in status["bots"]}
    flared_pid = status["flared"]["pid"]
    supervisord_pid = int((flare.state_dir / "supervisor" / "supervisord.pid").read_text())
    everything = set(planted.env.values())
    for bot in BOTS:
        env = environ_of(pids[bot])
        leaked = {k for k, v in env.items() if v in everything or any(s in v for s in everything)}
        assert not leaked, f"gateway {bot} environment holds {sorted(leaked)}"
        dotenv = (flare.state_dir / "bots" / bot / "home" / ".env").read_text()
        assert all(v in dotenv for v in planted.of_bot(bot).values())
        others = [v for b in BOTS if b != bot for v in planted.of_bot(b).values()]
        assert not any(v in dotenv for v in others + list(planted.flared_only().values()))
    for name, pid in (("supervisord", supervisord_pid), ("flared", flared_pid)):
        env = environ_of(pid)
        leaked = {k for k, v in env.items() if any(s in v for s in everything)}
        assert not leaked, f"{name}'s environment (inherited by its children) holds {sorted(leaked)}"
    handoff = flare.state_dir / "supervisor" / "flared.env"
    assert handoff.stat().st_mode & 0o777 == 0o600
    # flared still has its secrets: the TCP listener takes the control token from the handoff.
    import urllib.request

    req = urllib.request.Request(
        f"http://127.0.0.1:{flare.data['control']['port']}/status",
        headers={"Authorization": f"Bearer {planted.env['FLARE_CONTROL_TOKEN']}"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert json.loads(resp.read())["bots"]


def test_a_gateway_is_only_its_own_bot_on_the_control_socket(world: tuple[FlareUp, Planted]) -> None:
    """Issue 13 item 6: per-bot tokens bind the gateways; the operator's own CLI stays admin.

    A hook inside alpha's real gateway process (and a child it starts) tries
    the unix socket with no token, with its own token, and with a token it
    minted for beta from the state dir's secret (same uid, so it can).
    """
    flare, _ = world
    path = flare.state_dir / "bots" / "alpha" / "home" / "authprobe.json"
    deadline = time.monotonic() + 60
    while not path.exists():
        assert time.monotonic() < deadline, "the gateway's hook never reported\n" + flare.read_logs()
        time.sleep(0.2)
    r = json.loads(path.read_text())
    assert r["bot"] == "alpha"
    for who in ("", "child_"):
        assert r[f"{who}own_token_leases"][0] == 200, r
        assert r[f"{who}minted_token_leases"][0] == 403, r
    assert r["no_token_status"][0] == 401 and "must present its bot token" in r["no_token_status"][1], r
    assert r["child_no_token_status"][0] == 401 and r["child_no_token_leases"][0] == 401, r
    assert r["child_healthz"][0] == 200, r
    # The user who ran `flared up` is still admin, with no token.
    assert flare.status()["bots"]
    assert flared_exec(flare, "beta", "echo admin").stdout == "admin\n"


def test_fork_bomb_and_output_flood_leave_flared_serving(world: tuple[FlareUp, Planted]) -> None:
    """Rows: a fork bomb and 100 MB of output in a lease; flared keeps serving and its memory stays put."""
    flare, _ = world
    flared_pid = flare.status()["flared"]["pid"]
    first = flared_exec(flare, "alpha", "echo kept > /workspace/kept", "--session", "keep")
    assert first.returncode == 0, first.stderr
    before = rss_kb(flared_pid)
    started = time.monotonic()
    flood = flared_exec(flare, "alpha", "head -c 100000000 /dev/zero | tr '\\0' x", "--json")
    flood_s = time.monotonic() - started
    result = json.loads(flood.stdout)
    assert result["truncated"] is True and len(result["stdout"]) < 1_100_000
    if os.geteuid() == 0:  # per-lease process limits need a per-lease uid
        bomb = flared_exec(flare, "alpha", ":(){ :|:& };:; sleep 2", "--timeout", "5")
        assert bomb.returncode != 0 or "Resource temporarily unavailable" in bomb.stderr
    grown_mb = (rss_kb(flared_pid) - before) / 1024
    assert grown_mb < 50, f"flared grew by {grown_mb:.0f} MB serving the floods"
    # Kept working, nothing lost: the same session's file is there, the other bot is untouched.
    again = flared_exec(flare, "alpha", "cat /workspace/kept", "--session", "keep")
    assert again.stdout == "kept\n", again.stderr
    assert flared_exec(flare, "beta", "echo ok").stdout == "ok\n"
    assert flare.bot_status("beta")["state"] == "RUNNING"
    print(f"100 MB flood: {flood_s:.1f}s, flared RSS {before / 1024:.0f} MB -> +{grown_mb:.1f} MB")


def test_cloudflare_contract_commands_get_no_secret(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Row 1 against the Cloudflare provider's contract: what an Exec command's environment holds.

    The contract Worker (tests/fakes/sandbox_worker.py) runs commands the way
    the Worker's Exec containers do; its process holds the Worker's bearer
    token and other secrets, and none of them reach the command. The Worker's
    own replay of tests/contracts/sandbox/exec-env-clean.json checks the same
    on its side.
    """
    planted = {
        "FLARE_CONTROL_TOKEN": WORKER_TOKEN,
        "R2_SECRET_ACCESS_KEY": "r2-" + secrets.token_hex(20),
        "SLACK_BOT_TOKEN": "xoxb-1-" + secrets.token_hex(12),
    }
    for k, v in planted.items():
        monkeypatch.setenv(k, v)
    with FakeWorker(tmp_path / "worker") as worker:
        profile = SandboxProfile()
        provider = CloudflareProvider(worker.url, WORKER_TOKEN)
        lease = new_lease_id("default")
        provider.create(lease, profile)
        needles = list(planted.values())
        script = probe_script(needles, ("/usr",))  # /usr: read in full by the row above
        r = provider.exec(
            lease, {}, profile, ExecRequest(command="python3 -", cwd="/workspace", stdin=script, timeout=300)
        )
        assert r.exit_code == 0, r.stderr
        check_report(r.stdout, needles, list(planted))
        provider.destroy(lease, {})


# ---------------------------------------------------------------------------- links planted for clean-up

#: How each lease ends (bot name = profile name = the way), and the profile that makes it end so.
ENDINGS: dict[str, dict[str, Any]] = {
    "released": {"mode": "per-session"},
    "idle": {"mode": "per-session", "idle_ttl": "1s"},
    "lifetime": {"mode": "per-session", "max_lifetime": "2s"},
    "reclaimed": {"mode": "per-session", "max_leases": 1},
    "command": {"mode": "per-command"},
    "orphan": {"mode": "per-session"},
}


def plant_links(targets: list[str]) -> str:
    """A command that leaves links to ``targets`` all over its lease, some in dirs it then locks (000)."""
    lines = ["set -e", "mkdir -p /workspace/deep/a/b /tmp/t"]
    for i, target in enumerate(targets):
        for where in ("/workspace", "/workspace/deep/a/b", "/tmp/t", "/tmp"):
            lines.append(f"ln -s {target!r} {where}/v{i}")
    lines += [
        "ln -s ../.. /workspace/up",  # on the host: <root>/leases, whatever its path
        "ln -s ../../../.. /tmp/t/up",
        "echo data > /workspace/deep/a/b/f",
        "chmod 000 /workspace/deep/a/b /tmp/t",
        "chmod 500 /workspace/deep/a /workspace/deep",
    ]
    return "\n".join(lines)


def modes_of(paths: list[Path]) -> dict[str, tuple[int, int, int]]:
    return {str(p): (st.st_mode, st.st_uid, st.st_gid) for p in paths for st in [os.stat(p)]}


def end_leases_every_way(tmp: Path, targets: list[str], caplog: pytest.LogCaptureFixture) -> list[Path]:
    """Plant ``targets`` in one lease per way a lease ends, end each; returns the lease dirs."""
    from flared.sandboxes.manager import LeaseManager
    from tests.test_sandboxes_manager import MODEL, make_config

    bots = [{"name": way, "model": MODEL, "sandbox": way} for way in ENDINGS]
    loaded = make_config(tmp, ENDINGS, bots)
    command = plant_links(targets)
    m = LeaseManager(loaded, reap_every=0.1)
    m.start()
    dirs: list[Path] = []
    try:
        provider = m._provider(loaded.config.sandboxes["released"])
        lease_dir = provider.lease_dir  # type: ignore[attr-defined]
        for way in ENDINGS:
            if way == "command":
                lease, r = m.run(way, "s", command)
            else:
                lease = m.acquire(way, "s")
                r = m.exec(lease["id"], command)
            assert r.exit_code == 0, (way, r.stderr)
            dirs.append(lease_dir(lease["id"]))
        m.release(next(x["id"] for x in m.list() if x["bot"] == "released"))
        m.acquire("reclaimed", "another")  # max_leases 1: the planted lease makes room
        deadline = time.monotonic() + 10
        while {x["bot"] for x in m.list()} & {"idle", "lifetime"} and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        m.stop()
    (tmp / "state" / "sandboxes" / "leases.db").unlink()  # the orphan's row is lost: a crash
    m = LeaseManager(loaded, reap_every=0.1)
    m.start()  # destroys the sandboxes no row claims
    for lease in m.list():
        m.release(lease["id"])
    m.stop()
    logged = caplog.text
    for reason in ("released", "idle_ttl", "max_lifetime", "reclaimed for bot reclaimed", "destroyed orphan"):
        assert reason in logged, f"no lease ended by {reason}:\n{logged}"
    return dirs


def test_lease_clean_up_never_follows_a_link(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Issue 20 item 0: links a sandbox planted (to a dir outside, the state dir, ``/``) are removed, never followed.

    Clean-up used to ``chmod 0700`` every directory entry of the lease, links
    included: the link's target (as flared's user, root here) changed mode.
    The first round aims only at this test's own directories, so a regression
    fails there and never reaches ``/`` or the shared sandbox root.
    """
    caplog.set_level("INFO", logger="flared.sandboxes")
    outside = tmp_path / "outside"
    (outside / "inner").mkdir(parents=True)
    (outside / "inner" / "keep").write_text("keep\n")
    outside.chmod(0o755)
    (outside / "inner").chmod(0o751)
    from flared.sandboxes.providers.local import sandbox_root

    state = tmp_path / "state"
    (state / "sandboxes").mkdir(parents=True)
    root = sandbox_root(state)
    private = [outside, outside / "inner", state, state / "sandboxes"]
    before = modes_of(private)
    dirs = end_leases_every_way(
        tmp_path, [str(p) for p in private] + [str(root), str(root / "leases")], caplog
    )
    assert not [d for d in dirs if os.path.lexists(d)], "lease directories left behind"
    assert modes_of(private) == before
    assert (outside / "inner" / "keep").read_text() == "keep\n"
    assert oct(root.stat().st_mode & 0o777) == oct(0o711) and oct(
        (root / "leases").stat().st_mode & 0o777
    ) == oct(0o711)

    # The same with links to / and to every parent of the leases (shared with other state dirs).
    shared = [Path("/"), *[p for p in root.parents if p != Path("/")]]
    before = modes_of(private + shared)
    caplog.clear()
    dirs = end_leases_every_way(tmp_path, [str(p) for p in private + shared], caplog)
    assert not [d for d in dirs if os.path.lexists(d)], "lease directories left behind"
    assert modes_of(private + shared) == before
    assert (outside / "inner" / "keep").read_text() == "keep\n"


# ---------------------------------------------------------------------------- host paths in /proc


def test_a_lease_sees_no_host_path_of_the_state_dir_in_its_mount_table() -> None:
    """Issue 20 item 2: /proc/self/mountinfo names each bind's source by its path on the host.

    Leases under the state dir showed that path (a home dir, a user name) on
    every line of the sandbox's mount table. The state dir here sits where
    anyone may search it (so leases used to live inside it), under a name the
    check can find.
    """
    from flared.sandboxes.providers.local import LocalProvider, sandbox_root

    parent = Path(tempfile.mkdtemp(prefix="i20-alice-projects-", dir="/var/tmp"))
    parent.chmod(0o755)
    state = parent / "state"
    provider = LocalProvider(sandbox_root(state), hidden=[state])
    lease = new_lease_id("default")
    data = provider.create(lease, SandboxProfile())
    try:
        r = provider.exec(
            lease,
            data,
            SandboxProfile(),
            ExecRequest(
                command="cat /proc/self/mountinfo /proc/self/mounts /proc/1/mountinfo; id -un; ls /workspace /tmp",
                cwd="/workspace",
            ),
        )
        assert r.exit_code == 0, r.stderr
        assert "/workspace" in r.stdout and "/etc/passwd" in r.stdout  # the mount table was read
        assert "sandbox\n" in r.stdout  # the generated /etc/passwd is the one bound
        assert parent.name not in r.stdout, r.stdout
        assert str(state) not in r.stdout
    finally:
        provider.destroy(lease, data)
        shutil.rmtree(parent)
