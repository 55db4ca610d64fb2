"""Leases: who may run commands where, for how long, and how many at once.

A lease is one sandbox held for a bot: per profile (``shared``), per Hermes
session (``per-session``) or per command (``per-command``, destroyed right
after its command). Leases expire after ``idle_ttl`` without a command or
``max_lifetime`` in all; a reaper thread destroys them. ``max_leases`` caps
the live leases of a profile and ``max_leases_per_bot`` one bot's share
(:mod:`flared.sandboxes.capacity` decides): at a limit the least recently
used idle lease is reclaimed; only when every candidate runs a command does
an acquire wait, saying so at once (``on_wait``, or ``wait=False`` for a
caller that reports it itself), up to ``acquire_timeout``, then fail with a
message the agent can read.

The table (:mod:`flared.sandboxes.leases`) lives in
``<state>/sandboxes/leases.db``, so a restarted flared finds the leases it
handed out and destroys sandboxes that no row claims (orphans of a crash).
Each lease keeps the profile it was made with; a config change applies to
new leases.

Size: acquiring, reclaiming and exec share one lock and one table, so the
capacity rules (:mod:`flared.sandboxes.capacity`, pure) are apart but
their application to live leases is here, in one place.
"""

from __future__ import annotations

import builtins
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flared.config.loader import LoadedConfig
from flared.config.models import HermesFlareConfig, SandboxProfile
from flared.sandboxes import capacity
from flared.sandboxes.leases import SHARED_SESSION, Lease, LeaseTable, take_lock
from flared.sandboxes.providers import make_provider, provider_key
from flared.sandboxes.types import (
    ExecRequest,
    ExecResult,
    Provider,
    SandboxError,
    in_group,
    lease_prefix,
    new_lease_id,
    reconcile_groups,
)

log = logging.getLogger("flared.sandboxes")

REAP_EVERY = 0.5
RECONCILE_RETRY = 30.0
MAX_SESSION_KEY = 256


class LeaseNotFound(SandboxError):
    """No such lease (or not this bot's)."""


class CapacityReached(SandboxError):
    """Every lease the bot may take is running a command and none freed up in time."""


class MustWait(CapacityReached):
    """``wait=False`` and the acquire would have to wait; the message says why."""


class BadLeaseRequest(SandboxError):
    """The request itself is wrong (unknown bot, bad session key...)."""


class LeaseManager:
    """Hands out leases for bots' commands; ``daemon.leases`` in ``flared run``."""

    def __init__(self, loaded: LoadedConfig, *, reap_every: float = REAP_EVERY) -> None:
        self.loaded = loaded
        self.state_dir = Path(loaded.state_dir)
        self.db_path = self.state_dir / "sandboxes" / "leases.db"
        self.reap_every = reap_every
        self._cond = threading.Condition(threading.RLock())
        self._leases: dict[str, Lease] = {}
        self._providers: dict[str, Provider] = {}
        self.table = LeaseTable(self.db_path)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pending_reconcile: set[str] = set()
        self._next_reconcile = 0.0  # a failed reconcile (provider down) is retried after RECONCILE_RETRY
        self._lock_fd: int | None = None

    @property
    def cfg(self) -> HermesFlareConfig:
        return self.loaded.config

    # ------------------------------------------------------------------ lifecycle

    def start(self, *, lock_wait: float = 30.0) -> None:
        """Load the table, reconcile it with the providers, start the reaper.

        One manager per state dir: ``flared exec`` without a daemon runs one
        in-process, so both take ``sandboxes/manager.lock`` first.
        """
        self._lock_fd = take_lock(self.db_path.parent / "manager.lock", lock_wait)
        self.table.open()
        self._load()
        self._pending_reconcile = self._reconcile_targets()
        self._reconcile_pending()
        self._stop.clear()
        self._thread = threading.Thread(target=self._reaper, name="lease-reaper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the reaper; leases stay in the table for the next start (per-command ones go)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._cond:
            doomed = [lease for lease in self._leases.values() if lease.mode == "per-command"]
        for lease in doomed:
            self._destroy(lease, "shutdown")
        with self._cond:
            self.table.flush(self._leases.values())
            self.table.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    @classmethod
    def offline_list(cls, loaded: LoadedConfig, bot: str | None = None) -> builtins.list[dict[str, Any]]:
        """The lease table as ``list`` shows it, read without starting anything."""
        m = cls(loaded)
        if not m.db_path.exists():
            return []
        m.table.open()
        try:
            m._load()
            return m.list(bot=bot)
        finally:
            m.table.close()

    def update(self, loaded: LoadedConfig) -> None:
        """A new config: new profiles apply to new leases; live leases keep theirs until they expire."""
        with self._cond:
            self.loaded = loaded
            self._pending_reconcile |= self._reconcile_targets()
            self._cond.notify_all()

    # ------------------------------------------------------------------ public API

    def list(self, bot: str | None = None) -> list[dict[str, Any]]:
        with self._cond:
            leases = [x for x in self._leases.values() if not x.gone and (bot is None or x.bot == bot)]
            return [lease.as_dict() for lease in sorted(leases, key=lambda x: x.created_at)]

    def get(self, lease_id: str, bot: str | None = None) -> Lease:
        with self._cond:
            lease = self._leases.get(lease_id)
        if lease is None or lease.gone or (bot is not None and lease.bot != bot):
            raise LeaseNotFound(f"no lease {lease_id} (it expired, was released, or is not this bot's)")
        return lease

    def acquire(
        self,
        bot: str,
        session_key: str | None = None,
        *,
        wait: bool = True,
        on_wait: Callable[[str], None] | None = None,
    ) -> dict[str, Any]:
        """The lease this bot's session should use, made if needed.

        At capacity an idle lease is reclaimed; if none can be, this waits
        (calling ``on_wait`` with the reason at once) or, with ``wait=False``,
        raises :class:`MustWait` at once.
        """
        lease, created = self._acquire(bot, session_key, wait=wait, on_wait=on_wait)
        out = lease.as_dict()
        out["created"] = created
        return out

    def exec(
        self,
        lease_id: str,
        command: str,
        *,
        cwd: str | None = None,
        stdin: str | None = None,
        timeout: float | None = None,
        env: dict[str, str] | None = None,
        bot: str | None = None,
    ) -> ExecResult:
        """Run one command in a lease; a per-command lease is destroyed after it."""
        _check_command(command)
        with self._cond:
            lease = self.get(lease_id, bot)
            if lease.mode == "per-command" and lease.done.is_set():
                raise LeaseNotFound(f"lease {lease_id} was for one command and has been used")
            lease.busy += 1
            lease.last_used = time.time()
            lease.dirty = True
        return self._run_held(lease, command, cwd=cwd, stdin=stdin, timeout=timeout, env=env)

    def _run_held(
        self,
        lease: Lease,
        command: str,
        *,
        cwd: str | None = None,
        stdin: str | None = None,
        timeout: float | None = None,
        env: dict[str, str] | None = None,
    ) -> ExecResult:
        """Run a command in a lease whose ``busy`` count already includes it."""
        try:
            provider = self._lease_provider(lease)
        except Exception:
            self._release_hold(lease)
            raise
        profile = lease.profile
        wanted = profile.command_timeout if timeout is None else float(timeout)
        req = ExecRequest(
            command=command,
            cwd=cwd or profile.workdir,
            env=dict(env or {}),
            stdin=stdin,
            timeout=min(max(0.1, wanted), profile.max_lifetime),
            output_limit=int(profile.output_limit),
        )
        try:
            return provider.exec(lease.id, lease.data, profile, req)
        finally:
            self._release_hold(lease)

    def _release_hold(self, lease: Lease) -> None:
        with self._cond:
            lease.busy -= 1
            lease.last_used = time.time()
            lease.dirty = True
            if lease.mode == "per-command":
                lease.done.set()
            self._cond.notify_all()  # an idle lease may now be reclaimed by a waiter
        if lease.mode == "per-command":
            self._destroy(lease, "per-command")

    def run(
        self,
        bot: str,
        session_key: str | None,
        command: str,
        *,
        wait: bool = True,
        on_wait: Callable[[str], None] | None = None,
        **kw: Any,
    ) -> tuple[dict[str, Any], ExecResult]:
        """acquire + exec, the way the terminal backend uses it.

        The lease is held from the moment it is chosen, so no other acquire
        can reclaim it before the command starts.
        """
        _check_command(command)
        lease, created = self._acquire(bot, session_key, wait=wait, on_wait=on_wait, hold=True)
        out = lease.as_dict()
        out["created"] = created
        return out, self._run_held(lease, command, **kw)

    def release(self, lease_id: str, bot: str | None = None) -> dict[str, Any]:
        lease = self.get(lease_id, bot)
        self._destroy(lease, "released")
        return {"id": lease_id, "released": True}

    # ------------------------------------------------------------------ acquire

    def _profile_of(self, bot: str) -> tuple[str, SandboxProfile]:
        try:
            bot_cfg = self.cfg.bot(bot)
        except KeyError:
            raise BadLeaseRequest(f"no bot named {bot!r}") from None
        name = bot_cfg.sandbox
        profile = self.cfg.sandboxes.get(name)
        if profile is None:
            raise BadLeaseRequest(f"bot {bot!r} names sandbox profile {name!r}, which does not exist")
        return name, profile

    def _session(self, profile: SandboxProfile, session_key: str | None) -> str:
        if profile.mode == "shared":
            return SHARED_SESSION
        key = (session_key or "").strip() or "default"
        if len(key) > MAX_SESSION_KEY or any(ord(c) < 32 for c in key):
            raise BadLeaseRequest("session key must be printable and at most 256 characters")
        return key

    def _limits(self, name: str, profile: SandboxProfile) -> capacity.Limits:
        users = sum(1 for b in self.cfg.bots if b.enabled and b.sandbox == name)
        return capacity.limits(name, profile.max_leases, profile.max_leases_per_bot, users)

    def _acquire(
        self,
        bot: str,
        session_key: str | None,
        *,
        wait: bool = True,
        on_wait: Callable[[str], None] | None = None,
        hold: bool = False,
    ) -> tuple[Lease, bool]:
        name, profile = self._profile_of(bot)
        session = self._session(profile, session_key)
        started = time.monotonic()
        deadline = started + profile.acquire_timeout
        told = False
        while True:
            victim: Lease | None = None
            notice: str | None = None
            with self._cond:
                if profile.mode != "per-command":
                    for lease in self._leases.values():
                        if (lease.bot, lease.profile_name, lease.session) == (bot, name, session) and not (
                            lease.gone or lease.expired(time.time())
                        ):
                            lease.last_used = time.time()
                            lease.dirty = True
                            lease.busy += int(hold)
                            return lease, False
                live = [x for x in self._leases.values() if x.profile_name == name and not x.gone]
                decision = capacity.decide(live, bot, self._limits(name, profile))
                if isinstance(decision, capacity.Create):
                    lease = self._placeholder(bot, session, name, profile, busy=int(hold))
                    provider = self._provider(profile)
                    break
                if isinstance(decision, capacity.Reclaim):
                    victim = self._leases[decision.lease_id]
                    victim.gone = True  # claimed: nobody else can use or pick it now
                elif not wait:
                    raise MustWait(f"{decision.message} (up to {profile.acquire_timeout:g}s)")
                elif not told:
                    notice = decision.message
                else:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        waited = time.monotonic() - started
                        raise CapacityReached(
                            f"sandbox capacity reached: {decision.detail}; waited {waited:.0f}s "
                            "for one to be free; try again later"
                        )
                    self._cond.wait(min(left, self.reap_every))
            if victim is not None:
                self._finish_destroy(
                    victim, f"reclaimed for bot {bot} (least recently used; {name!r} at its limit)"
                )
            elif notice is not None:
                told = True
                log.info("bot %s session %s: %s", bot, session, notice)
                if on_wait is not None:
                    on_wait(notice)
        try:
            lease.data = provider.create(lease.id, profile)
        except Exception:
            with self._cond:
                self._leases.pop(lease.id, None)
                self._cond.notify_all()
            raise
        with self._cond:
            self.table.insert(lease)
        log.info("lease %s: %s for bot %s session %s (%s)", lease.id, profile.mode, bot, session, name)
        return lease, True

    def _placeholder(self, bot: str, session: str, name: str, profile: SandboxProfile, busy: int) -> Lease:
        """A new lease that holds its slot while the sandbox is made (call with the lock held)."""
        lease_id = new_lease_id(self.cfg.bot(bot).group)
        now = time.time()
        lease = Lease(
            id=lease_id,
            bot=bot,
            session=session,
            profile_name=name,
            profile=profile,
            provider_key=provider_key(profile),
            data={},
            created_at=now,
            last_used=now,
            busy=busy,
        )
        self._leases[lease_id] = lease
        return lease

    # ------------------------------------------------------------------ destroy and reap

    def _destroy(self, lease: Lease, reason: str) -> None:
        with self._cond:
            if lease.gone:
                return
            lease.gone = True
        self._finish_destroy(lease, reason)

    def _finish_destroy(self, lease: Lease, reason: str) -> None:
        """Destroy the sandbox of a lease already marked gone; drop its row."""
        with self._cond:
            provider = self._lease_provider(lease)
        try:
            provider.destroy(lease.id, lease.data)
        except Exception as exc:  # keep the row: the next start's reconcile tries again
            log.warning("lease %s: destroy failed (%s); will retry on the next start", lease.id, exc)
            with self._cond:
                self._leases.pop(lease.id, None)
                self._cond.notify_all()
            return
        with self._cond:
            self._leases.pop(lease.id, None)
            self.table.delete(lease.id)
            self._cond.notify_all()
        if reason != "per-command":
            log.info("lease %s: destroyed (%s)", lease.id, reason)

    def reap(self) -> builtins.list[str]:
        """Destroy expired leases now; returns their ids."""
        now = time.time()
        with self._cond:
            doomed = [(x, why) for x in self._leases.values() if not x.gone and (why := x.expired(now))]
        for lease, why in doomed:
            self._destroy(lease, str(why))
        with self._cond:
            self.table.flush(self._leases.values())
        for provider in list(self._providers.values()):
            reap = getattr(provider, "reap_orphans", None)
            if reap is not None:
                with contextlib.suppress(Exception):
                    reap()
        return [lease.id for lease, _ in doomed]

    def _reaper(self) -> None:
        while not self._stop.wait(self.reap_every):
            try:
                self.reap()
                if self._pending_reconcile and time.monotonic() >= self._next_reconcile:
                    self._reconcile_pending()
            except Exception:
                log.exception("lease reaper failed; will retry")

    # ------------------------------------------------------------------ providers and reconcile

    def _provider(self, profile: SandboxProfile) -> Provider:
        key = provider_key(profile)
        with self._cond:
            provider = self._providers.get(key)
            if provider is None:
                provider = make_provider(profile, self.state_dir)
                self._providers[key] = provider
            return provider

    def _lease_provider(self, lease: Lease) -> Provider:
        """A lease's provider; rows loaded from the table have no token, so prefer the config's profile."""
        with self._cond:
            provider = self._providers.get(lease.provider_key)
            if provider is not None:
                return provider
            profile = self._profiles_by_key().get(lease.provider_key, lease.profile)
            provider = make_provider(profile, self.state_dir)
            self._providers[lease.provider_key] = provider
            return provider

    def _reconcile_targets(self) -> set[str]:
        keys = {provider_key(p) for name, p in self.cfg.sandboxes.items() if self._profile_used(name)}
        return keys | {lease.provider_key for lease in self._leases.values()}

    def _profile_used(self, name: str) -> bool:
        return any(b.sandbox == name and b.enabled for b in self.cfg.bots)

    def _profiles_by_key(self) -> dict[str, SandboxProfile]:
        out = {provider_key(p): p for p in self.cfg.sandboxes.values()}
        for lease in self._leases.values():
            out.setdefault(lease.provider_key, lease.profile)
        return out

    def _reconcile_pending(self) -> None:
        profiles = self._profiles_by_key()
        for key in sorted(self._pending_reconcile):
            profile = profiles.get(key)
            if profile is None:
                self._pending_reconcile.discard(key)
                continue
            try:
                self.reconcile(key, profile)
            except Exception as exc:
                log.warning(
                    "sandbox reconcile (%s) failed, retrying in %gs: %s",
                    profile.provider,
                    RECONCILE_RETRY,
                    exc,
                )
                self._next_reconcile = time.monotonic() + RECONCILE_RETRY
                continue
            self._pending_reconcile.discard(key)

    def reconcile(self, key: str, profile: SandboxProfile) -> dict[str, builtins.list[str]]:
        """Make the table and one provider agree: destroy orphans, forget vanished sandboxes."""
        with self._cond:
            provider = self._providers.get(key) or self._provider(profile)
        existing: set[str] = set()
        for group in reconcile_groups({b.group for b in self.cfg.bots}, os.environ.get("FLARE_GROUP")):
            existing |= {i for i in provider.existing(lease_prefix(group)) if in_group(i, group)}
        with self._cond:
            known = {x.id for x in self._leases.values() if x.provider_key == key}
            vanished = [] if provider.lazy else sorted(known - existing)
            for lease_id in vanished:
                self._leases.pop(lease_id, None)
                self.table.delete(lease_id)
        orphans = sorted(existing - known)
        for lease_id in orphans:
            try:
                provider.destroy(lease_id, {})
                log.info("sandbox %s: destroyed orphan (no lease claims it)", lease_id)
            except Exception as exc:
                log.warning("sandbox %s: could not destroy orphan: %s", lease_id, exc)
        return {"orphans": orphans, "vanished": vanished}

    def _load(self) -> None:
        leases = self.table.load()
        with self._cond:
            self._leases.update((lease.id, lease) for lease in leases)


def _check_command(command: Any) -> None:
    if not isinstance(command, str) or not command.strip():
        raise BadLeaseRequest("command must be a non-empty string")
