"""The local provider: each command runs under bubblewrap in the lease's own directory.

A lease is a directory ``<root>/leases/<id>/`` (``work`` bound read-write at
the profile's ``workdir``, ``tmp`` bound at ``/tmp``) and, when flared runs as
root, its own unprivileged host uid, so the kernel's per-user process limit
is a per-lease limit and leases cannot read each other's files even if a
bind went wrong. Nothing else of the host is writable, and only ``/usr``,
the ``/bin``/``/lib*`` links and a few files of ``/etc`` are visible: bots'
homes, the state dir, sockets, ``.env`` files and the hermes-agent install
are simply not there. Installs that live under ``/usr`` (a system-wide
hermes-agent, flared itself) are hidden behind an empty read-only tmpfs.

Every command is a fresh ``bwrap`` with all namespaces unshared (network too
unless ``network: true``), ``--die-with-parent`` and a new session. No
process of the sandbox inherits anything of flared's environment: bwrap
itself is started with an empty one (its init stays PID 1 inside, and
``/proc/1/environ`` is readable there), and the command gets only what
:func:`sandbox_env` builds from the profile and the request; memory, CPU time and process count are rlimits. The wall-clock
timeout kills bwrap, which takes the sandbox's whole PID namespace with it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import logging
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from flared.config.models import SandboxProfile
from flared.sandboxes.providers import process
from flared.sandboxes.providers.removal import remove_tree
from flared.sandboxes.types import (
    TIMEOUT_EXIT,
    ExecRequest,
    ExecResult,
    SandboxError,
    cap_output,
)

log = logging.getLogger("flared.sandboxes")

KILLED_EXIT = 137  # 128 + SIGKILL
#: Lease directories live in a directory of flared's here (see :func:`sandbox_root`).
SANDBOXES_HOME = Path("/var/tmp")
SANDBOX_USER = "sandbox"
SANDBOX_UID = 1000  # the uid commands see inside
UID_BASE = 200_000  # host uids for leases when flared runs as root
UID_SPAN = 50_000
SYSTEM_ROOTS = ("/usr",)
LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
ETC_FILES = (
    "/etc/alternatives",
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/localtime",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
    "/etc/mime.types",
    "/etc/os-release",
)
NETWORK_ETC = ("/etc/resolv.conf", "/etc/gai.conf")
#: The whole environment of bwrap itself (its init is PID 1 inside, whose environ the sandbox reads).
BWRAP_ENV: dict[str, str] = {}
# For a cwd other than the workdir: cd into it (creating it), then run the command as `bash -c` would.
WRAPPER = '[ -d "$0" ] || mkdir -p -- "$0" 2>/dev/null; cd -- "$0" || exit 1; exec /bin/bash -c "$1"'


def sandbox_root(state_dir: Path) -> Path:
    """Where lease directories live: ``/var/tmp/flared-sandboxes[-<uid>]/<hash of the state dir>``.

    Not under the state dir. A sandbox reads its own ``/proc/self/mountinfo``,
    which names the source of each bind mount by its path on the host
    filesystem (a bind of another path does not change that, and bubblewrap
    0.8 has no overlay to put in between): leases inside the state dir showed
    its path, a home directory and a user name, on every line. Under
    ``/var/tmp`` they show only a hash. As root, each lease's unprivileged uid
    must also be able to look up its directory, which a 0700 home or temp
    dir above the state dir would forbid; ``/var/tmp`` is always searchable.
    A system without ``/var/tmp`` keeps them in ``<state>/sandboxes/local``.
    """
    legacy = legacy_root(state_dir)
    if not SANDBOXES_HOME.is_dir():
        return legacy
    digest = hashlib.sha256(str(legacy).encode()).hexdigest()[:16]
    euid = os.geteuid()
    return SANDBOXES_HOME / ("flared-sandboxes" if euid == 0 else f"flared-sandboxes-{euid}") / digest


def legacy_root(state_dir: Path) -> Path:
    """Where leases lived before (flared up to issue 20), and still do without ``/var/tmp``."""
    return Path(state_dir).resolve() / "sandboxes" / "local"


def drop_legacy_leases(state_dir: Path, root: Path) -> None:
    """Remove lease directories an older flared left in the state dir (scratch; their rows are forgotten)."""
    old = legacy_root(state_dir)
    if old == root or not old.is_dir():
        return
    try:
        remove_tree(old)
    except OSError as exc:
        log.warning("could not remove the old sandbox directory %s: %s", old, exc)
        return
    log.info("removed the sandbox directory of an older flared (%s); leases now live in %s", old, root)


def claim_shared_dir(path: Path) -> None:
    """Make ``path`` (a directory right under ``/var/tmp``) ours, or refuse one someone else made.

    ``/var/tmp`` is writable by every local user: a directory or link put
    there first by another user would let them swap a lease directory for a
    link under flared's feet. It must be a real directory, ours, writable by
    no one else.
    """
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o711)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
        kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a directory"
        raise SandboxError(
            f"{path} is not flared's own: {kind}, owner uid {st.st_uid}, mode {stat.S_IMODE(st.st_mode):o} "
            f"(it must be a directory of uid {os.geteuid()} that only it may write). Another user may have "
            "made it to tamper with sandboxes: check it, remove it, and start flared again."
        )
    if stat.S_IMODE(st.st_mode) != 0o711:
        os.chmod(path, 0o711)  # lease uids must search it (as root); nobody may list it


def find_bwrap() -> str:
    path = shutil.which("bwrap")
    if path is None:
        raise SandboxError("bubblewrap (bwrap) is not installed; install it (apt-get install bubblewrap)")
    return path


#: Where the fix for a sandbox that cannot start in a container is written down.
CONTAINER_FIX = (
    "in a container, start it with `--security-opt systempaths=unconfined` (podman; Docker also "
    "needs `seccomp=unconfined` and, with AppArmor, `apparmor=unconfined`): docs/vps.md, "
    '"The terminal sandbox"'
)


def probe_bwrap(bwrap: str) -> bool:
    """Start one empty sandbox with the namespaces and fresh /proc every command gets.

    Where the kernel or the container refuses them (no user namespaces, a
    masked /proc), every command would fail with bwrap's own words as if they
    were its output. Refusing here instead fails closed with the fix; nothing
    ever runs outside a sandbox. Returns whether the sandbox may also set its
    own host name: a container engine's default seccomp profile refuses
    ``sethostname`` (the UTS namespace stays private; it keeps the container's name).
    """
    argv = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--uid", str(SANDBOX_UID)]
    argv += [*system_binds(), "--proc", "/proc", "--dev", "/dev"]
    said = ""
    for hostname in (["--hostname", "sandbox"], []):
        try:
            res = subprocess.run(
                [*argv, *hostname, "--", "/bin/sh", "-c", "exit 0"],
                env=BWRAP_ENV,
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SandboxError(f"the sandbox cannot start here: {exc}") from None
        if res.returncode == 0:
            return bool(hostname)
        said = (res.stderr.strip().splitlines() or [f"bwrap exited {res.returncode}"])[-1]
        if "hostname" not in said:
            break
    raise SandboxError(
        f"the sandbox cannot start here ({said}); commands are not run outside it. "
        f"bubblewrap needs user namespaces and a fresh /proc: {CONTAINER_FIX}"
    )


def default_hidden() -> list[Path]:
    """Install locations that must not be visible in a sandbox even if they sit under /usr."""
    paths = {Path(sys.prefix), Path(sys.base_prefix) / "lib" / "python3" / "dist-packages"}
    for mod in ("tools", "hermes_cli", "gateway", "agent", "flared"):
        with contextlib.suppress(ImportError, ValueError):
            spec = importlib.util.find_spec(mod)
            if spec is not None and spec.origin:
                origin = Path(spec.origin).resolve()
                # the package dir's parent: the site-packages holding it
                paths.add(origin.parent.parent if origin.name == "__init__.py" else origin.parent)
    return sorted(paths)


class LocalProvider:
    """bubblewrap sandboxes under ``root`` (:func:`sandbox_root`)."""

    name = "local"
    lazy = False

    def __init__(self, root: Path, *, hidden: Iterable[Path] = ()) -> None:
        self.root = Path(root)
        self.leases_dir = self.root / "leases"
        self.bwrap = find_bwrap()
        self.own_hostname = probe_bwrap(self.bwrap)
        self.as_root = os.geteuid() == 0
        self.hidden = sorted({*default_hidden(), *(Path(p) for p in hidden)})
        self._lock = threading.Lock()
        self._running: dict[str, set[subprocess.Popen[bytes]]] = {}
        self._killed: set[subprocess.Popen[bytes]] = set()  # running commands whose lease was destroyed
        self._etc = self.root / "etc"
        self._write_etc()
        process.become_subreaper()

    # ------------------------------------------------------------------ lifecycle

    def _write_etc(self) -> None:
        if self.root.parent.parent == SANDBOXES_HOME:
            claim_shared_dir(self.root.parent)
        self._etc.mkdir(parents=True, exist_ok=True)
        files = {
            "passwd": f"root:x:0:0:root:/root:/usr/sbin/nologin\n"
            f"{SANDBOX_USER}:x:{SANDBOX_UID}:{SANDBOX_UID}:sandbox:/workspace:/bin/bash\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
            "group": f"root:x:0:\n{SANDBOX_USER}:x:{SANDBOX_UID}:\nnogroup:x:65534:\n",
            "hosts": "127.0.0.1 localhost sandbox\n::1 localhost\n",
            "nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\n",
        }
        for name, text in files.items():
            path = self._etc / name
            if not path.exists() or path.read_text() != text:
                path.write_text(text)
                path.chmod(0o644)
        self._etc.chmod(0o755)
        self.root.chmod(0o711)

    def lease_dir(self, lease_id: str) -> Path:
        return self.leases_dir / lease_id

    @property
    def _shared(self) -> bool:
        """Whether this root sits in the machine's shared dir, beside other flareds' roots."""
        return self.root.parent.parent == SANDBOXES_HOME

    @contextlib.contextmanager
    def _allocating(self) -> Iterator[None]:
        """Hold this provider's lock and, in the shared dir, the machine's lease-uid lock.

        Every flared running as root on a machine (one per state dir) draws lease uids from
        the same range: the file lock makes "find a free uid, then chown the lease to it"
        atomic across them, so two never hand out the same uid at once.
        """
        with self._lock:
            if not (self.as_root and self._shared):
                yield
                return
            fd = os.open(self.root.parent / ".uid.lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def _allocate_uid(self) -> int:
        """A host uid no lease on this machine holds: of this flared, nor of another one.

        The kernel's process limit counts a uid's processes machine-wide, so a uid shared
        with another flared's lease (another state dir) would share its limit: one lease's
        fork bomb would starve the other, and each would count the other's processes.
        """
        if not self.as_root:
            return os.getuid()
        used = set()
        leases = self.root.parent.glob("*/leases/*") if self._shared else self.leases_dir.glob("*")
        for d in leases:
            with contextlib.suppress(OSError):
                used.add((d / "work").stat().st_uid)
        for uid in range(UID_BASE, UID_BASE + UID_SPAN):
            if uid not in used:
                return uid
        raise SandboxError("no free sandbox uid left")

    def create(self, lease_id: str, profile: SandboxProfile) -> dict[str, Any]:
        with self._allocating():
            self.leases_dir.mkdir(parents=True, exist_ok=True)
            self.leases_dir.chmod(0o711)
            uid = self._allocate_uid()
            base = self.lease_dir(lease_id)
            base.mkdir(mode=0o700)
            for sub in ("work", "tmp"):
                (base / sub).mkdir(mode=0o700)
                if self.as_root:
                    os.chown(base / sub, uid, uid)
            if self.as_root:
                os.chown(base, uid, uid)  # the sandbox user must traverse it; nobody else can
        return {"uid": uid}

    def destroy(self, lease_id: str, data: dict[str, Any]) -> None:
        # The killed commands stay in _running until their exec has reaped them: were they
        # taken off first, reap_orphans could reap the dead bwrap, and Popen.wait() would then
        # get ECHILD, which Python reports as exit status 0 (a killed command "succeeding").
        with self._lock:
            procs = list(self._running.get(lease_id, ()))
            self._killed.update(procs)
        for proc in procs:
            process.kill_tree(proc)
        base = self.lease_dir(lease_id)
        try:
            remove_tree(base)
        except OSError as exc:
            raise SandboxError(f"could not remove sandbox directory {base}: {exc}") from exc
        if os.path.lexists(base):
            raise SandboxError(f"could not remove sandbox directory {base}")

    def reap_orphans(self) -> int:
        """Reap bwrap's namespace init processes, which bwrap leaves behind as zombies.

        bwrap's outer process exits as soon as it learns the exit status,
        without waiting for its child, the sandbox's init. That child is
        re-parented to the nearest subreaper; flared makes itself one so the
        zombies do not pile up (they would count against the lease uid's
        process limit) on systems whose PID 1 does not reap. Only bwrap
        zombies that are not our own running commands are reaped, by pid, so
        other modules' subprocess exit codes are never stolen.
        """
        reaped = 0
        with self._lock:
            mine = {p.pid for procs in self._running.values() for p in procs}
            for pid in process.children() - mine:
                try:
                    comm = Path(f"/proc/{pid}/comm").read_text().strip()
                    state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
                except (OSError, IndexError):
                    continue
                if comm == "bwrap" and state == "Z":
                    with contextlib.suppress(ChildProcessError):
                        if os.waitpid(pid, os.WNOHANG)[0]:
                            reaped += 1
        return reaped

    def existing(self, prefix: str) -> set[str]:
        if not self.leases_dir.exists():
            return set()
        return {d.name for d in self.leases_dir.iterdir() if d.name.startswith(prefix)}

    # ------------------------------------------------------------------ exec

    def argv(self, lease_id: str, profile: SandboxProfile, req: ExecRequest) -> list[str]:
        """The bwrap command line of one command (public for tests and the benchmark)."""
        base = self.lease_dir(lease_id)
        args = [self.bwrap, "--unshare-all"]
        if profile.network:
            args.append("--share-net")
        args += [
            "--die-with-parent",
            "--new-session",
            "--uid",
            str(SANDBOX_UID),
            "--gid",
            str(SANDBOX_UID),
        ]
        if self.own_hostname:
            args += ["--hostname", "sandbox"]
        args += system_binds()
        for path in self.hidden:
            if any(_within(path, Path(r)) for r in SYSTEM_ROOTS) and path.is_dir():
                args += ["--tmpfs", str(path), "--remount-ro", str(path)]
        args += ["--proc", "/proc", "--dev", "/dev"]
        args += ["--bind", str(base / "tmp"), "/tmp", "--bind", str(base / "work"), profile.workdir]
        for name in ("passwd", "group", "hosts", "nsswitch.conf"):
            args += ["--ro-bind", str(self._etc / name), f"/etc/{name}"]
        for etc_path in ETC_FILES + (NETWORK_ETC if profile.network else ()):
            args += ["--ro-bind-try", etc_path, etc_path]
        args += ["--chdir", profile.workdir, "--clearenv"]
        for key, value in sandbox_env(profile, req).items():
            args += ["--setenv", key, value]
        cwd = req.cwd or profile.workdir
        if cwd.rstrip("/") == profile.workdir.rstrip("/"):
            args += ["--", "/bin/bash", "-c", req.command]  # bwrap's --chdir already put us there
        else:
            args += ["--", "/bin/bash", "-c", WRAPPER, cwd, req.command]
        return args

    def exec(
        self, lease_id: str, data: dict[str, Any], profile: SandboxProfile, req: ExecRequest
    ) -> ExecResult:
        if not self.lease_dir(lease_id).is_dir():
            raise SandboxError(f"sandbox {lease_id} does not exist (destroyed or expired)")
        uid = int(data.get("uid", os.getuid()))
        argv = self.argv(lease_id, profile, req)
        split = argv.index("--")
        args_fd = process.args_memfd(argv[1:split])
        self.reap_orphans()
        started = time.monotonic()
        with self._lock:  # so reap_orphans never sees this child before it is registered
            try:
                proc = subprocess.Popen(
                    [self.bwrap, "--args", str(args_fd), *argv[split:]],
                    stdin=subprocess.PIPE if req.stdin else subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    start_new_session=True,
                    pass_fds=(args_fd,),
                    preexec_fn=process.limits(profile, uid if self.as_root else None),
                    # bwrap's own environment stays in /proc/1/environ, readable inside the
                    # sandbox (--clearenv only clears the command's): it gets none of flared's.
                    env=BWRAP_ENV,
                )
            except OSError as exc:
                raise SandboxError(f"cannot start bubblewrap: {exc}") from exc
            finally:
                os.close(args_fd)
            self._running.setdefault(lease_id, set()).add(proc)
        try:
            out, err, timed_out = process.collect(proc, req.stdin, req.timeout, req.output_limit)
        finally:
            with self._lock:
                running = self._running.get(lease_id, set())
                running.discard(proc)
                if not running:
                    self._running.pop(lease_id, None)
                destroyed = proc in self._killed
                self._killed.discard(proc)
        code = proc.returncode
        if timed_out:
            code = TIMEOUT_EXIT
        elif code < 0:
            code = 128 - code
        elif destroyed and code == 0:
            code = KILLED_EXIT  # never report a killed command as a success
        stdout, t1 = cap_output(*out)
        stderr, t2 = cap_output(*err)
        if timed_out:
            stderr += f"\n[flare: command timed out after {req.timeout:g}s and was killed]\n"
        elif destroyed:
            stderr += "\n[flare: the sandbox was destroyed while the command ran (lease expired or released); the command was killed]\n"
        return ExecResult(
            exit_code=code,
            stdout=stdout,
            stderr=stderr,
            duration_ms=int((time.monotonic() - started) * 1000),
            truncated=t1 or t2,
            timed_out=timed_out,
        )


def system_binds() -> list[str]:
    """Read-only /usr and the merged-usr links (or real dirs on older systems)."""
    args: list[str] = []
    for root in SYSTEM_ROOTS:
        args += ["--ro-bind", root, root]
    for path in LINKS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return args


def sandbox_env(profile: SandboxProfile, req: ExecRequest) -> dict[str, str]:
    env = {
        "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": profile.workdir,
        "USER": SANDBOX_USER,
        "LOGNAME": SANDBOX_USER,
        "SHELL": "/bin/bash",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "TMPDIR": "/tmp",
    }
    env.update(profile.env)
    env.update(req.env)
    return env


def _within(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True
