"""Who a control API request comes from: the admin, one bot, or nobody.

Both transports decide here, so any HTTP server implementation only has to
hand over the bearer token and, on the unix socket, the connected socket.

**TCP** (the Worker): the control token makes a request admin; a bot's
``flb_`` token makes it that bot; anything else is anonymous (401 outside
the public routes).

**Unix socket**: the kernel says who connected (``SO_PEERCRED``: pid and
uid), and flared decides from the process tree, not from what the client
claims:

- only flared's own uid (or root) is served at all;
- a process in a gateway's tree (the gateway, or anything it started) is
  that bot and nothing more: it must present its own bot's ``flb_`` token;
  no token, another bot's token or the admin's rights are refused. This is
  what makes per-bot tokens bind the gateways;
- a process flared itself started (a sandbox's bwrap) is refused, and so is
  any other process under supervisord that is not a known program;
- every other process of flared's user is admin: the operator who ran
  ``flared up`` (``flared status``, ``flared exec`` ...) and the operator
  bot's program. An admin token file would add nothing here, since a
  same-uid gateway could read it; the process tree is what a gateway cannot
  leave without also leaving its bot's token behind.

Limit: a gateway process that runs arbitrary code of its own (a Hermes bug)
has its uid's rights on the host; the boundary against untrusted code is the
sandbox, which has no view of the socket at all.
"""

from __future__ import annotations

import contextlib
import hmac
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from flared.control.tokens import verify_bot_token

GATEWAY_PREFIX = "gateway-"  # supervisord program names (flared.hermes.paths.program_name)
FLARED_PROGRAM = "flared"
UNKNOWN = "?"  # a process under supervisord that belongs to no program flared knows
MAX_DEPTH = 64
REFRESH_EVERY = 0.25  # at most this often, a miss asks supervisord again


@dataclass(frozen=True)
class Peer:
    """The process at the other end of a unix socket (``SO_PEERCRED``)."""

    pid: int
    uid: int
    gid: int


@dataclass(frozen=True)
class Caller:
    """What a request may do. ``reason`` says why an anonymous caller is not more."""

    admin: bool = False
    bot: str | None = None
    anonymous: bool = False
    reason: str | None = None
    status: int = 401  # when refused: 401 (no or wrong credentials) or 403 (known, not allowed)
    reject_all: bool = False  # refused even on public routes (a forged bot token)


def peer_of(sock: socket.socket) -> Peer | None:
    """The connected process, or None where the platform cannot say."""
    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):
        return None
    pid, uid, gid = struct.unpack("3i", raw)
    return Peer(pid, uid, gid)


def bearer(header: str | None) -> str:
    """The token of an ``Authorization: Bearer ...`` header, or ''."""
    value = (header or "").strip()
    return value[7:].strip() if value.lower().startswith("bearer ") else ""


def parent_of(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat[stat.rindex(")") + 2 :].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def ancestors(pid: int) -> list[int]:
    """``pid`` and its parents, up to PID 1 or the edge of this PID namespace."""
    chain: list[int] = []
    while pid >= 1 and pid not in chain and len(chain) < MAX_DEPTH:
        chain.append(pid)
        if pid == 1:
            break
        parent = parent_of(pid)
        if parent is None:
            break
        pid = parent
    return chain


class ProcessTree:
    """Which supervisord program a process belongs to, from its ancestry.

    ``programs`` returns supervisord's own pid (None if unknown) and
    ``{pid: program name}`` of its running programs; it is asked again when
    a process under supervisord matches none of them (a program that just
    started), at most every :data:`REFRESH_EVERY` seconds.
    """

    def __init__(
        self,
        programs: Callable[[], tuple[int | None, dict[int, str]]],
        ttl: float = 5.0,
        supervisord: int | None = None,
    ) -> None:
        """``supervisord``: its pid if already known, so an unknown program under it is refused
        even before supervisord first answers."""
        self._programs = programs
        self._ttl = ttl
        self._lock = threading.Lock()
        self._at = float("-inf")
        self._supervisord: int | None = supervisord
        self._by_pid: dict[int, str] = {}

    def _refresh(self, *, force: bool) -> None:
        now = time.monotonic()
        with self._lock:
            age = now - self._at
            if age < (REFRESH_EVERY if force else self._ttl):
                return
            self._at = now
        try:
            supervisord, by_pid = self._programs()
        except Exception:  # supervisord unreachable: keep what we knew (unknown programs stay refused)
            return
        with self._lock:
            self._supervisord = supervisord if supervisord is not None else self._supervisord
            self._by_pid = dict(by_pid)

    def program_of(self, pid: int) -> str | None:
        """The program ``pid`` runs under, :data:`UNKNOWN`, or None when it is not under supervisord."""
        chain = ancestors(pid)
        self._refresh(force=False)
        for attempt in range(2):
            with self._lock:
                by_pid, supervisord = dict(self._by_pid), self._supervisord
            for p in chain:
                if p in by_pid:
                    return by_pid[p]
                if p == supervisord:
                    break
            else:
                return None
            if attempt == 0:
                self._refresh(force=True)
        return UNKNOWN


def authenticate(
    *,
    token: str,
    state_dir: Path,
    admin_token: str | None,
    unix: bool,
    peer: Peer | None = None,
    tree: ProcessTree | None = None,
) -> Caller:
    """The caller of one request (see the module docstring for the rules)."""
    bot = _bot_of(state_dir, token)
    if token.startswith("flb_") and bot is None:
        return Caller(anonymous=True, reason="invalid bot token", reject_all=True)
    if not unix:
        if token and admin_token and hmac.compare_digest(token.encode(), admin_token.encode()):
            return Caller(admin=True)
        return Caller(bot=bot) if bot else Caller(anonymous=True, reason="missing or wrong bearer token")
    if peer is None:  # no SO_PEERCRED: the socket's 0600 mode is the only check
        return Caller(bot=bot) if bot else Caller(admin=True)
    if peer.uid not in (os.geteuid(), 0):
        return Caller(anonymous=True, status=403, reason="only the user flared runs as may use this socket")
    program = tree.program_of(peer.pid) if tree is not None else None
    if program is not None and program.startswith(GATEWAY_PREFIX):
        own = program[len(GATEWAY_PREFIX) :]
        if bot == own:
            return Caller(bot=own)
        if bot is not None:
            return Caller(
                anonymous=True, status=403, reason=f"the gateway of {own} may use only its own token"
            )
        return Caller(anonymous=True, reason=f"the gateway of {own} must present its bot token")
    if program == UNKNOWN or (program == FLARED_PROGRAM and peer.pid != os.getpid()):
        return Caller(anonymous=True, status=403, reason="this process may not use flared's control API")
    return Caller(bot=bot) if bot else Caller(admin=True)


def _bot_of(state_dir: Path, token: str) -> str | None:
    if not token.startswith("flb_"):
        return None
    with contextlib.suppress(OSError):
        return verify_bot_token(state_dir, token)
    return None


def parent_if_supervisord() -> int | None:
    """This process's parent pid when the parent is supervisord (how `flared run` is started)."""
    ppid = os.getppid()
    try:
        cmdline = Path(f"/proc/{ppid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    return ppid if any(Path(os.fsdecode(a)).name.startswith("supervisord") for a in cmdline[:2]) else None
