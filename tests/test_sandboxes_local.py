"""The bubblewrap provider: each test is an escape attempt from inside a real lease that must fail.

Every "must fail" check has a twin that shows the same probe succeeds where
it should (on the host, or with the limit lifted), so no test passes just
because the probe itself is broken.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flared.config.models import SandboxProfile
from flared.sandboxes.providers.local import LocalProvider, sandbox_root
from flared.sandboxes.types import TRUNCATION_MARKER, ExecRequest, ExecResult, new_lease_id

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap is not installed")


class Box:
    """A provider over a throwaway state dir that looks like a real one."""

    def __init__(self, state: Path) -> None:
        self.state = state
        self.provider = LocalProvider(sandbox_root(state))
        self.leases: list[tuple[str, dict[str, object]]] = []

    def lease(self) -> str:
        lease_id = new_lease_id("default")
        self.leases.append((lease_id, self.provider.create(lease_id, SandboxProfile())))
        return lease_id

    def run(
        self, lease_id: str, command: str, profile: SandboxProfile | None = None, **kw: object
    ) -> ExecResult:
        data = dict(self.leases)[lease_id]
        req = ExecRequest(command=command, cwd=kw.pop("cwd", "/workspace"), **kw)  # type: ignore[arg-type]
        return self.provider.exec(lease_id, data, profile or SandboxProfile(), req)

    def uid(self, lease_id: str) -> int:
        return int(dict(self.leases)[lease_id]["uid"])  # type: ignore[call-overload]

    def close(self) -> None:
        for lease_id, data in self.leases:
            self.provider.destroy(lease_id, data)


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    state = tmp_path_factory.mktemp("flare") / "state"
    home = state / "bots" / "hermes" / "home"
    home.mkdir(parents=True)
    (home / ".env").write_text("SLACK_BOT_TOKEN=xoxb-secret-in-env\n")
    (home / "config.yaml").write_text("model: {}\n")
    (state / "control.secret").write_text("s3cret")
    b = Box(state)
    yield b
    b.close()


@pytest.fixture(scope="module")
def lease(box: Box) -> str:
    return box.lease()


def hermes_install() -> Path:
    import hermes_cli

    return Path(hermes_cli.__file__).resolve().parent


def lease_procs(uid: int) -> list[int]:
    """Host pids running (not zombies waiting for this container's init to reap them) as a lease's uid."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if d.stat().st_uid == uid and (d / "stat").read_text().rpartition(")")[2].split()[0] != "Z":
                    out.append(int(d.name))
            except (FileNotFoundError, ProcessLookupError):
                pass
    return out


def assert_no_lease_procs(uid: int) -> None:
    """Nothing of the lease runs any more. The kernel kills a PID namespace's processes when its
    init goes, asynchronously: under a loaded machine that took longer than a fixed 0.2 s (seen
    in full-suite runs), so wait up to 5 s for it."""
    deadline = time.monotonic() + 5
    while lease_procs(uid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert lease_procs(uid) == []


# ---------------------------------------------------------------- the original's demo


def test_whoami_is_the_sandbox_user(box: Box, lease: str) -> None:
    r = box.run(lease, "whoami; id -u; pwd")
    assert r.exit_code == 0, r.stderr
    assert r.stdout.splitlines() == ["sandbox", "1000", "/workspace"]
    if os.geteuid() == 0:  # the host sees a dedicated unprivileged uid, not root
        assert box.uid(lease) >= 200_000


def test_hermes_install_is_not_there(box: Box, lease: str) -> None:
    path = hermes_install()
    assert path.is_dir()  # the probe is meaningful: it exists on the host
    r = box.run(lease, f"ls {path}")
    assert r.exit_code != 0
    assert "No such file" in r.stderr


# ---------------------------------------------------------------- secrets and state


def test_cannot_read_bot_env_or_hermes_home(box: Box, lease: str) -> None:
    home = box.state / "bots" / "hermes" / "home"
    for path in (home / ".env", home / "config.yaml", box.state / "control.secret"):
        assert path.exists()
        r = box.run(lease, f"cat {path}")
        assert r.exit_code != 0 and "No such file" in r.stderr, r
    r = box.run(
        lease,
        "grep -rls xoxb-secret-in-env / --exclude-dir=proc --exclude-dir=sys --exclude-dir=usr; ls -A /",
    )
    assert "xoxb" not in r.stdout
    assert set(r.stdout.split()) <= {
        "bin",
        "dev",
        "etc",
        "lib",
        "lib32",
        "lib64",
        "libx32",
        "proc",
        "sbin",
        "tmp",
        "usr",
        "workspace",
    }


def test_environment_is_cleared(box: Box, lease: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLARE_TEST_SECRET", "do-not-leak")
    profile = SandboxProfile(env={"GREETING": "hello"})
    r = box.run(lease, "env", profile=profile, env={"PER_COMMAND": "1"})
    assert "do-not-leak" not in r.stdout and "FLARE_TEST_SECRET" not in r.stdout
    assert "GREETING=hello" in r.stdout and "PER_COMMAND=1" in r.stdout
    assert "HOME=/workspace" in r.stdout


def test_cannot_reach_control_socket(box: Box, lease: str, tmp_path: Path) -> None:
    path = box.state / "flared.sock"
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(str(path))
    srv.listen(1)
    try:
        probe = f"python3 -c \"import socket; s=socket.socket(socket.AF_UNIX); s.connect('{path}'); print('CONNECTED')\""
        host = subprocess.run(["bash", "-c", probe], capture_output=True, text=True)
        assert "CONNECTED" in host.stdout  # the probe works on the host
        r = box.run(lease, probe)
        assert "CONNECTED" not in r.stdout
        assert r.exit_code != 0
    finally:
        srv.close()
        path.unlink()


def test_system_is_read_only(box: Box, lease: str) -> None:
    r = box.run(lease, "touch /usr/flare-probe")
    assert r.exit_code != 0 and "Read-only" in r.stderr
    assert not Path("/usr/flare-probe").exists()


def test_hidden_install_under_usr_is_masked(tmp_path: Path) -> None:
    target = next(p for p in sorted(Path("/usr/share").iterdir()) if p.is_dir() and any(p.iterdir()))
    provider = LocalProvider(sandbox_root(tmp_path / "state"), hidden=[target])
    lease_id = new_lease_id("default")
    data = provider.create(lease_id, SandboxProfile())
    try:
        r = provider.exec(
            lease_id, data, SandboxProfile(), ExecRequest(command=f"ls -A {target}", cwd="/workspace")
        )
        assert r.exit_code == 0 and r.stdout == ""  # an empty read-only tmpfs over it
        plain = LocalProvider(sandbox_root(tmp_path / "state"))
        r = plain.exec(
            lease_id, data, SandboxProfile(), ExecRequest(command=f"ls -A {target}", cwd="/workspace")
        )
        assert r.stdout != ""
    finally:
        provider.destroy(lease_id, data)


# ---------------------------------------------------------------- network


@pytest.fixture
def tcp_server() -> Iterator[int]:
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            conn.sendall(b"HELLO\n")
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    yield port
    srv.close()


def _connect_probe(port: int) -> str:
    return (
        "python3 -c \"import socket; s=socket.create_connection(('127.0.0.1', "
        f'{port}), timeout=3); print(s.recv(10).decode().strip())"'
    )


def test_no_network_when_disabled(box: Box, lease: str, tcp_server: int) -> None:
    r = box.run(lease, _connect_probe(tcp_server))
    assert "HELLO" not in r.stdout and r.exit_code != 0
    r = box.run(
        lease, "cat /sys/class/net/*/operstate 2>/dev/null; ls /sys/class/net 2>&1; ip -o link 2>/dev/null"
    )
    assert "eth" not in r.stdout


def test_network_when_enabled(box: Box, lease: str, tcp_server: int) -> None:
    r = box.run(lease, _connect_probe(tcp_server), profile=SandboxProfile(network=True))
    assert r.stdout.strip() == "HELLO", r.stderr


# ---------------------------------------------------------------- other leases


def test_cannot_see_another_leases_files(box: Box) -> None:
    a, b = box.lease(), box.lease()
    assert box.run(a, "echo secret-of-a > note.txt && echo tmp-of-a > /tmp/t.txt").exit_code == 0
    assert box.run(a, "cat note.txt /tmp/t.txt").stdout == "secret-of-a\ntmp-of-a\n"  # persists within a
    r = box.run(b, "cat note.txt /tmp/t.txt")
    assert r.exit_code != 0 and "secret-of-a" not in r.stdout
    host_path = box.provider.lease_dir(a) / "work" / "note.txt"
    assert host_path.exists()
    r = box.run(b, f"cat {host_path}; ls {box.provider.root}")
    assert "secret-of-a" not in r.stdout and "No such file" in r.stderr
    if os.geteuid() == 0:
        assert box.uid(a) != box.uid(b)


def test_cannot_see_other_processes(box: Box, lease: str) -> None:
    r = box.run(lease, "ls /proc | grep -c '^[0-9]'")
    assert int(r.stdout.strip()) <= 4  # bwrap's init, bash, ls, grep: nothing of the host


# ---------------------------------------------------------------- limits


def test_memory_limit(box: Box, lease: str) -> None:
    probe = "python3 -c 'x = bytearray(512 * 1024 * 1024); print(\"ALLOCATED\")'"
    r = box.run(lease, probe, profile=SandboxProfile(memory=256 * 1024**2))
    assert "ALLOCATED" not in r.stdout and "MemoryError" in r.stderr
    r = box.run(lease, probe, profile=SandboxProfile(memory=2 * 1024**3))
    assert "ALLOCATED" in r.stdout


@pytest.mark.skipif(os.geteuid() != 0, reason="per-lease process limits need a per-lease uid (root)")
def test_fork_bomb_is_contained(box: Box) -> None:
    lease_id = box.lease()
    profile = SandboxProfile(pids=32)
    started = time.monotonic()
    r = box.run(lease_id, ":(){ :|:& };:; sleep 2", profile=profile, timeout=3.0)
    assert time.monotonic() - started < 10
    # the bomb's first shell returns at once; its children hit the cap, then die with the namespace
    assert "Resource temporarily unavailable" in r.stderr or r.timed_out
    deadline = time.monotonic() + 5
    while lease_procs(box.uid(lease_id)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert lease_procs(box.uid(lease_id)) == []  # nothing survives the command
    # the cap is per lease: after the bomb, the same lease runs commands again
    assert box.run(lease_id, "echo alive").stdout == "alive\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="per-lease process limits need a per-lease uid (root)")
def test_process_limit(box: Box, lease: str) -> None:
    probe = """python3 -c '
import os, time
n = 0
for _ in range(60):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        time.sleep(5)
        os._exit(0)
    n += 1
print(n)
'"""
    r = box.run(lease, probe, profile=SandboxProfile(pids=16))
    assert int(r.stdout) < 16, r
    r = box.run(lease, probe, profile=SandboxProfile(pids=256))
    assert int(r.stdout) == 60, r


def test_wall_clock_timeout_kills_the_tree(box: Box) -> None:
    lease_id = box.lease()
    started = time.monotonic()
    r = box.run(lease_id, "(setsid sleep 300 &); sleep 300 & echo started; wait", timeout=1.0)
    assert 0.9 < time.monotonic() - started < 5
    assert r.timed_out and r.exit_code == 124 and r.stdout == "started\n"
    assert "timed out" in r.stderr
    if os.geteuid() == 0:
        assert_no_lease_procs(box.uid(lease_id))


def test_background_processes_end_with_the_command(box: Box) -> None:
    lease_id = box.lease()
    started = time.monotonic()
    r = box.run(lease_id, "sleep 300 & echo started", timeout=30)
    assert r.exit_code == 0 and time.monotonic() - started < 5
    if os.geteuid() == 0:
        assert_no_lease_procs(box.uid(lease_id))


def test_cpu_time_limit(box: Box, lease: str) -> None:
    started = time.monotonic()
    r = box.run(lease, "while :; do :; done", profile=SandboxProfile(cpu_time=1), timeout=30)
    assert time.monotonic() - started < 10
    assert not r.timed_out and r.exit_code == 128 + 24  # SIGXCPU


def test_stdout_flood_is_capped(box: Box, lease: str) -> None:
    started = time.monotonic()
    r = box.run(lease, "yes flood; echo unreachable", output_limit=4096, timeout=30)
    assert time.monotonic() - started < 10
    assert r.truncated and r.stdout.endswith(TRUNCATION_MARKER)
    assert len(r.stdout) == 4096 + len(TRUNCATION_MARKER)
    r = box.run(lease, "head -c 3000 /dev/zero | tr '\\0' a", output_limit=4096)
    assert not r.truncated and r.stdout == "a" * 3000


def test_stderr_is_capped_too(box: Box, lease: str) -> None:
    r = box.run(lease, "head -c 10000 /dev/zero | tr '\\0' e >&2; echo ok", output_limit=100)
    assert r.truncated and r.stderr == "e" * 100 + TRUNCATION_MARKER and r.stdout == "ok\n"


# ---------------------------------------------------------------- plumbing


def test_stdin_cwd_and_exit_code(box: Box, lease: str) -> None:
    r = box.run(lease, "tr a-z A-Z; pwd; exit 7", cwd="/workspace/sub/dir", stdin="hello\n")
    assert r.exit_code == 7 and r.stdout == "HELLO\n/workspace/sub/dir\n"


def test_destroy_removes_files_even_if_locked_down(box: Box) -> None:
    lease_id = box.lease()
    box.run(lease_id, "mkdir -p a/b && echo x > a/b/f && chmod 000 a/b a")
    base = box.provider.lease_dir(lease_id)
    assert base.exists()
    box.provider.destroy(lease_id, {})
    assert not base.exists()
    assert lease_id not in box.provider.existing("fl-")


# ---------------------------------------------------------------- where leases live


def test_leases_live_outside_the_state_dir_and_old_ones_there_go(tmp_path: Path) -> None:
    """Issue 20 item 2: under /var/tmp, named by a hash; an older flared's lease dirs in the state dir are removed."""
    from flared.sandboxes.providers import make_provider

    state = tmp_path / "state"
    old = state / "sandboxes" / "local" / "leases" / "fl-default-old"
    (old / "work").mkdir(parents=True)
    (old / "work" / "f").write_text("scratch")
    provider = make_provider(SandboxProfile(), state)
    root = sandbox_root(state)
    assert provider.root == root  # type: ignore[attr-defined]
    assert root.parent.parent == Path("/var/tmp") and str(tmp_path) not in str(root)
    assert not (state / "sandboxes" / "local").exists()
    assert (root / "etc" / "passwd").is_file()


@pytest.mark.parametrize("squat", ["other owner", "writable by all", "link"])
def test_a_shared_dir_made_by_someone_else_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, squat: str
) -> None:
    """/var/tmp is everyone's: a flared-sandboxes dir (or link) put there first is not used."""
    from flared.sandboxes.providers import local
    from flared.sandboxes.types import SandboxError

    monkeypatch.setattr(local, "SANDBOXES_HOME", tmp_path)
    state = tmp_path / "state"
    shared = sandbox_root(state).parent
    target = tmp_path / "elsewhere"
    target.mkdir()
    if squat == "link":
        shared.symlink_to(target)
    else:
        shared.mkdir(mode=0o755)
        if squat == "writable by all":
            shared.chmod(0o777)
        elif os.geteuid() == 0:
            os.chown(shared, 65534, 65534)
        else:
            pytest.skip("needs root to make a directory of another owner")
    with pytest.raises(SandboxError, match="is not flared's own") as err:
        LocalProvider(sandbox_root(state))
    assert "remove it" in str(err.value)
    assert list(target.iterdir()) == [] and not any(shared.iterdir())


@pytest.mark.skipif(os.geteuid() != 0, reason="per-lease uids are given only as root")
def test_leases_of_two_flareds_on_one_machine_get_different_uids(tmp_path: Path) -> None:
    """Two state dirs (two flareds as root) share the machine's uid range: their leases must not
    share a uid, whose process limit and processes the kernel counts machine-wide."""
    first = Box(tmp_path / "one" / "state")
    second = Box(tmp_path / "two" / "state")
    try:
        uids = [box.uid(box.lease()) for box in (first, second, first, second)]
        assert len(set(uids)) == 4, uids
        assert all(uid >= 200_000 for uid in uids)
    finally:
        first.close()
        second.close()
