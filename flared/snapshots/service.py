"""The snapshot service inside the daemon: when to restore and snapshot which bot.

Per bot it keeps the *fence* (what this flared last knew of the store's
`latest.json`). No snapshot is taken while the fence is unknown, i.e. before
a restore succeeded or the store confirmed it holds nothing: empty state must
never overwrite good state. What it knows survives a flared restart in
`<state_dir>/snapshots/<bot>.json`.

Triggers: every `snapshots.every`, after `on_change.debounce` of quiet
following a change in the bot's home (:mod:`.scheduler`), on demand, and
once more at shutdown within `shutdown_budget`.

Boot, snapshot and restore stay in one class on purpose: all three read and
move the same per-bot fence under the same per-bot lock (shared with the
CLI's offline path through a lock file), and splitting them would spread
that invariant over several objects. The steps themselves live in
:mod:`.pipeline`, :mod:`.restore` and :mod:`.catalog`.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import fcntl
import json
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, Protocol

from flared.config.loader import LoadedConfig
from flared.config.models import SnapshotsConfig
from flared.hermes.paths import BotPaths
from flared.snapshots import capture as cap
from flared.snapshots import catalog, claim, pipeline
from flared.snapshots import history as snapshot_history
from flared.snapshots import restore as restoring
from flared.snapshots.catalog import DamagedPointer, Fence
from flared.snapshots.final import NOT_SAVED, Deadline
from flared.snapshots.manifest import Latest, Manifest, now_iso, valid_id
from flared.snapshots.pack import PackError
from flared.snapshots.pipeline import SnapshotJob, SnapshotResult
from flared.snapshots.scheduler import Scheduler
from flared.snapshots.state import BotState
from flared.snapshots.stores import Progress, Store, StoreError, StoreUnreachable
from flared.snapshots.stores.factory import open_store
from flared.snapshots.stream import base as stream_base
from flared.snapshots.stream import restore as stream_restore
from flared.snapshots.stream import status as stream_status
from flared.snapshots.stream.render import StreamLayout, stream_key

log = logging.getLogger("flared.snapshots")

#: Retention also runs this often when nothing changed (max_age expiry).
PRUNE_EVERY = 3600.0


class GatewayControl(Protocol):
    def stop(self, bot: str) -> None: ...
    def start(self, bot: str) -> None: ...


class SnapshotService:
    def __init__(self, loaded: LoadedConfig, gateways: GatewayControl | None = None) -> None:
        self.loaded = loaded
        self.gateways = gateways
        self.store: Store = open_store(loaded.config.store)
        self.dir = loaded.state_dir / "snapshots"
        self.bots: dict[str, BotState] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="snapshot")
        self._guard = threading.Lock()
        self._save_lock = threading.Lock()
        self._marks: dict[str, Callable[[], object]] = {}  # bot -> home.previous marker still to write
        self.scheduler = Scheduler(self, self._pool.submit, self._stop)
        #: A final snapshot was left running at the deadline: the process must exit without joining it.
        self.abandoned = False

    # ------------------------------------------------------------------ state

    @property
    def policy(self) -> SnapshotsConfig:
        return self.loaded.config.snapshots

    def home(self, bot: str) -> Path:
        return BotPaths.of(self.loaded.state_dir, bot).home

    def _work(self, bot: str) -> Path:
        return self.dir / "work" / bot

    def _cache(self, bot: str) -> Path:
        """Content hashes and database copies kept between this bot's snapshots."""
        return self.dir / "cache" / bot

    def _rules(self) -> cap.Rules:
        return cap.rules(
            catalog.left_out(self.policy), encrypted=catalog.encryption_key(self.policy) is not None
        )

    def _saved_as(self, bot: str, known: dict[str, str], fence: Fence | None) -> restoring.SavedAs:
        """How a restore learns whether the home it moves aside is held by a snapshot: the
        fingerprint recorded with the fence still current, else the content digest."""
        st = self.state(bot)
        recorded = (st.fence, st.fingerprint)
        if st.fingerprint is None:
            persisted, fingerprint, _ = self._persisted_fence(bot)
            recorded = (persisted, fingerprint)
        shortcut = None
        if (
            fence is not None
            and recorded[0] is not None
            and recorded[1] is not None
            and recorded[0].etag == fence.etag
            and recorded[0].snapshot_id
        ):
            shortcut = (recorded[1], recorded[0].snapshot_id)
        return lambda home: restoring.home_saved_as(
            home, self._rules(), self._cache(bot), known, self._work(bot) / "digest", shortcut
        )

    def _after_restore(
        self,
        st: BotState,
        res: restoring.RestoreResult,
        fingerprint: concurrent.futures.Future[str | None] | None = None,
    ) -> None:
        """The restored home is the snapshot: record its fingerprint, so an idle bot stays idle
        (when it is the latest and nothing was refused); old homes are deleted in the background.

        `fingerprint` is the staging tree's, walked before the swap (while the gateway stopped):
        the swap renames only the top directory, which a fingerprint leaves out."""
        st.fingerprint = None
        # What the next snapshot is compared with (:mod:`.shrink`): the snapshot restored.
        st.basis = res.id if res.fence is not None and res.id != res.fence.snapshot_id else None
        st.shrunk = None
        if res.fence is not None and res.id == res.fence.snapshot_id and not res.refused:
            with contextlib.suppress(OSError):
                st.fingerprint = (
                    fingerprint.result()
                    if fingerprint is not None
                    else cap.walk(self.home(st.name), self._rules()).fingerprint()
                )
        restoring.empty_trash(self.home(st.name))

    def _staging_fingerprint(self, prepared: restoring.Prepared) -> str | None:
        """Only when :meth:`_after_restore` will keep it (the latest, nothing refused)."""
        latest = prepared.id == prepared.fence.snapshot_id or prepared.damaged_etag is not None
        if prepared.refused or not latest:
            return None
        return cap.walk(prepared.staging, self._rules()).fingerprint()

    def _defer_mark(self, bot: str, moved: tuple[int, int] | None, saved_as: restoring.SavedAs) -> None:
        """Learn whether the home just moved aside is held by a snapshot after answering: a
        stat walk, or a content digest when the gateway changed it, takes up to seconds."""
        if moved is None:
            return
        home, st = self.home(bot), self.state(bot)
        with self._guard:
            self._marks[bot] = lambda: restoring.mark_previous(home, moved, saved_as)

        def run() -> None:
            with self._exclusive(st):
                self._flush_mark(bot)

        with contextlib.suppress(RuntimeError):  # shutting down: the next restore marks it first
            self._pool.submit(run)

    def _flush_mark(self, bot: str) -> None:
        """Write home.previous's marker now if a restore left it to do (the bot's lock is held)."""
        with self._guard:
            mark = self._marks.pop(bot, None)
        if mark is not None:
            try:
                mark()
            except Exception:  # a failure here only keeps home.previous as if unsaved
                log.exception("bot %s: could not tell whether home.previous is in a snapshot", bot)

    def state(self, bot: str) -> BotState:
        with self._guard:
            st = self.bots.get(bot)
            if st is None:
                st = self.bots[bot] = BotState(bot)
                self._load(st)
            return st

    def may_stream(self, bot: str) -> bool:
        """Whether this flared may stream the bot's databases: the same rule as snapshots (its
        restore succeeded or the store confirmed it holds nothing, and it is not fenced), and
        one fence check after a claim, so the writer it took the bot from has stopped."""
        if not self.policy.stream.enabled:
            return False
        with self._guard:
            st = self.bots.get(bot)
        if st is None or st.fence is None or st.fenced or not self._databases_intact(st):
            return False
        return time.time() - st.claimed_at >= self.policy.stream.fence_check + 1.0

    def _database_ids(self, bot: str, known: Iterable[str] = ()) -> dict[str, tuple[int, int]]:
        """(device, inode) of the databases at the home's top level and those already known
        (a stat each: this runs every reconcile tick). A database deleted while Hermes or
        Litestream holds it open keeps its inode, so a new file at its path has another."""
        home = self.home(bot)
        out: dict[str, tuple[int, int]] = {}
        for path in {*home.glob(self.policy.stream.pattern), *(home / rel for rel in known)}:
            with contextlib.suppress(OSError):
                info = path.stat()
                out[path.relative_to(home).as_posix()] = (info.st_dev, info.st_ino)
        return out

    def _record_databases(self, st: BotState) -> None:
        """The home is the bot's now (restored, kept, adopted): remember its databases' identity."""
        st.stream_ids = self._database_ids(st.name, self._known_databases(st.name))

    def _known_databases(self, bot: str) -> list[str]:
        """Databases below the top level too (`cron/executions.db`), from Litestream's own files."""
        meta = StreamLayout(self.loaded.state_dir).meta(bot)
        suffix = "-litestream"
        return [
            p.relative_to(meta).as_posix().removesuffix(suffix)
            for p in meta.glob(f"**/*{suffix}")
            if p.is_dir()
        ]

    def _databases_intact(self, st: BotState) -> bool:
        """False (and why, in `stream_lost`) once a streamed database was deleted or replaced
        outside a restore: Hermes would create an empty one, which Litestream would ship as
        the newest state over the good replica. New databases join the watched set."""
        if st.stream_lost is not None:
            return False
        now = self._database_ids(st.name, st.stream_ids)
        for rel, ident in st.stream_ids.items():
            if now.get(rel) != ident:
                st.stream_lost = (
                    f"{rel} was deleted or replaced outside a restore: its stream is stopped, the store "
                    f"keeps the last good copy; `flared restore --bot {st.name}` puts it back, `flared "
                    f"snapshot --bot {st.name} --accept-shrink` accepts this home as it is"
                )
                log.error("bot %s: %s", st.name, st.stream_lost)
                with contextlib.suppress(OSError):
                    self._save(st)
                return False
        for rel, ident in now.items():
            st.stream_ids.setdefault(rel, ident)
        return True

    def _claim(self, st: BotState) -> None:
        """Restored from the store: take the bot over (see :mod:`.claim`); the lock is held."""
        if not self.policy.stream.enabled or st.fence is None:
            return
        try:
            claimed = claim.claim(self.store, st.name, st.fence)
        except claim.Lost as exc:
            st.fenced = (
                f"another flared {exc} while this one restored; `flared restore --bot {st.name}` takes "
                f"that state, `flared snapshot --bot {st.name} --takeover` claims the bot"
            )
            log.error("bot %s: fenced: %s", st.name, st.fenced)
            return
        except StoreError as exc:  # the claim is retried by nobody: the fence check still guards
            log.warning("bot %s: could not claim latest.json for the stream: %s", st.name, exc)
            return
        if claimed is not None:
            st.fence, st.claimed_at = claimed, time.time()

    def check_fence(self, bot: str) -> str | None:
        """Whether another flared took the bot over since this one last wrote `latest.json`: then
        the bot is fenced (its stream stops at the next reconcile). Returns why, or None."""
        st = self.state(bot)
        if st.fence is None or st.fenced or st.running:  # a running snapshot checks it as it publishes
            return st.fenced
        with self._exclusive(st):
            if st.fence is None or st.fenced:
                return st.fenced
            try:
                who = claim.moved(self.store, bot, st.fence)
            except (StoreError, DamagedPointer) as exc:
                log.debug("bot %s: fence check skipped: %s", bot, exc)
                return None
            if who is None:
                return None
            st.fenced = (
                f"another flared {who}: this one stopped streaming and snapshotting the bot; "
                f"`flared restore --bot {bot}` takes that state, `flared snapshot --bot {bot} --takeover` "
                "claims the bot back"
            )
            st.fingerprint = None
            self._save(st)
        log.error("bot %s: fenced: %s", bot, st.fenced)
        return st.fenced

    def _fence_loop(self) -> None:
        while not self._stop.wait(self.policy.stream.fence_check):
            if not self.policy.stream.enabled:
                continue
            for bot in list(self.bots):
                st = self.bots.get(bot)
                if st is not None and st.phase == "ready":
                    try:
                        self.check_fence(bot)
                    except Exception:  # a bug must not stop the other bots' checks
                        log.exception("bot %s: fence check failed", bot)

    def _stream_position(self, bot: str) -> Callable[[], dict[str, Any] | None]:
        socket = StreamLayout(self.loaded.state_dir).socket
        return lambda: stream_status.position(socket, self.home(bot))

    def _stream_scratch(self, bot: str) -> Path:
        """Beside the work dir, not in it (a restore's unpack empties that): on the state dir's
        filesystem, so restored databases move into the staging dir by a rename."""
        return self.dir / "stream-restore" / bot

    def _stream_into(self, bot: str, staging: Path, manifest: Manifest | None, exact: bool) -> str | None:
        """Restore the bot's streamed databases into `staging` (None, or what went wrong).

        The newest position, or with `exact` (`restore --id`) the one the snapshot recorded;
        a snapshot taken without streaming keeps its own databases then."""
        if not self.policy.stream.enabled:
            return None
        point = None
        if exact:
            point = stream_restore.Point.of_manifest(manifest.stream if manifest else None)
            if point is None:
                return None
        try:
            keys = [o.key for o in self.store.list(stream_key(bot) + "/")]
            dbs = stream_restore.streamed_databases(bot, keys)
            plans = {}
            if point is not None:
                point = dataclasses.replace(point, earliest=stream_restore.earliest_txids(bot, keys))
            elif dbs:
                bases = [o.key for o in self.store.list(stream_base.base_key(bot) + "/")]
                plans = stream_base.boot_plans(bot, keys, bases)
            done = stream_restore.restore_into(
                self.loaded.config,
                bot,
                dbs,
                staging,
                self._stream_scratch(bot),
                point,
                store=self.store,
                plans=plans,
            )
        except stream_restore.StreamRestoreError as exc:
            return f"the streamed databases could not be restored: {exc}"
        except StoreUnreachable as exc:
            return f"the stream could not be listed: {exc}"
        except OSError as exc:
            return f"the streamed databases could not be restored: {pipeline.describe_os_error(exc)}"
        if done["databases"]:
            log.info(
                "bot %s: restored %s from the stream in %.2f s (from a base: %s)",
                bot,
                ", ".join(done["databases"]),
                done["seconds"],
                ", ".join(done["from_base"]) or "none",
            )
        return None

    def _state_file(self, bot: str) -> Path:
        return self.dir / f"{bot}.json"

    def _load(self, st: BotState) -> None:
        try:
            raw = json.loads(self._state_file(st.name).read_text())
        except (OSError, ValueError):
            return
        st.in_flight = list(raw.get("in_flight") or [])
        st.last = raw.get("last")
        st.last_ok = raw.get("last_ok")
        st.basis = raw.get("basis")
        st.stream_lost = raw.get("stream_lost")
        st.elsewhere = dict(raw.get("elsewhere") or {})
        was = raw.get("store")
        if was is not None and was != self.store.description:  # edited while flared was down
            st.elsewhere[was] = {k: raw.get(k) for k in ("fence", "fingerprint", "fenced")}

    def _persisted_fence(self, bot: str) -> tuple[Fence | None, str | None, str | None]:
        """The fence recorded for the store the config names now (the one recorded last when
        no record names it)."""
        try:
            raw = json.loads(self._state_file(bot).read_text())
        except (OSError, ValueError):
            return None, None, None
        here = self.store.description
        if raw.get("store") not in (None, here) and isinstance((raw.get("elsewhere") or {}).get(here), dict):
            raw = raw["elsewhere"][here]
        fence = Fence(**raw["fence"]) if raw.get("fence") else None
        return fence, raw.get("fingerprint"), raw.get("fenced")

    def _recorded_fence(
        self, st: BotState, latest: Latest | None, etag: str | None
    ) -> tuple[Fence | None, str | None, str | None]:
        """The persisted fence, moved on to this machine's own write whose reply was lost
        before flared restarted (then the recorded fingerprint and fence are stale)."""
        fence, fingerprint, fenced = self._persisted_fence(st.name)
        own = catalog.own_unanswered_write(fence, latest, etag, st.in_flight) if fence is not None else None
        if own is None:
            return fence, fingerprint, fenced
        log.warning(
            "bot %s: latest.json names %s, which this machine published without hearing the store's "
            "reply: continuing from it",
            st.name,
            own.snapshot_id,
        )
        return own, None, None

    def _follow_store(self, st: BotState) -> None:
        """The fence is per store: when the config names another store (edited at runtime),
        what this flared knew of the old one is put aside, and of the new one taken up again
        if it wrote there before. A store new to the bot is read: empty, the bot's snapshots
        start there; holding the same pointer (the same bucket through another endpoint),
        nothing changes; holding another writer's snapshot, the bot is fenced there.
        Raises StoreError when the new store cannot say (the next snapshot tries again)."""
        here = self.store.description
        if st.store is None:  # recorded before flared told stores apart: the current one
            st.store = here
        if st.store == here:
            return
        record = st.elsewhere.get(here)
        if record is None:
            latest, etag = catalog.read_latest(self.store, st.name)
            if st.fence is not None and etag == st.fence.etag:
                record = st.pointer()
            elif latest is None:
                record = {"fence": {"etag": None}, "fingerprint": None, "fenced": None}
            else:
                fenced = (
                    f"the store holds snapshot {latest.id}, written by another writer; "
                    f"`flared restore --bot {st.name}` takes it (the current home is kept as "
                    f"home.previous), `flared snapshot --bot {st.name} --takeover` overwrites it"
                )
                record = {
                    "fence": {"etag": etag, "generation": latest.generation, "snapshot_id": latest.id},
                    "fingerprint": None,
                    "fenced": fenced,
                }
        st.elsewhere[st.store] = st.pointer()
        st.elsewhere.pop(here, None)
        st.take_pointer(record)
        st.store = here
        log.info(
            "bot %s: snapshots now go to %s%s", st.name, here, f" (fenced: {st.fenced})" if st.fenced else ""
        )
        self._save(st)

    def _save(self, st: BotState) -> None:
        """Also called from the reconcile thread (a stream stopped): one writer of the file at a time."""
        with self._save_lock:
            self.dir.mkdir(parents=True, exist_ok=True)
            path = self._state_file(st.name)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(st.persisted(), indent=2))
            os.replace(tmp, path)

    @contextlib.contextmanager
    def _exclusive(self, st: BotState) -> Iterator[None]:
        """One snapshot or restore per bot, across threads and across processes (the CLI)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with st.lock:
            fd = os.open(self.dir / f"{st.name}.lock", os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    # ------------------------------------------------------------------ boot

    def boot(self, bot: str, on_ready: Callable[[str], None]) -> None:
        """Restore in the background; call `on_ready(bot)` once the gateway may start."""
        st = self.state(bot)
        st.on_ready = on_ready
        self._spawn(f"restore-{bot}", lambda: self._boot_loop(st, adopt=False))

    def adopt(self, bot: str) -> None:
        """flared restarted under a running gateway: keep the live home, re-confirm the fence."""
        st = self.state(bot)
        st.phase = "ready"
        self._record_databases(st)
        self._spawn(f"adopt-{bot}", lambda: self._boot_loop(st, adopt=True))

    def _spawn(self, name: str, fn: Callable[[], None]) -> None:
        t = threading.Thread(target=fn, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _boot_loop(self, st: BotState, *, adopt: bool) -> None:
        cfg = self.loaded.config.restore
        delay = cfg.retry_initial
        started_fresh = False
        while not self._stop.is_set():
            try:
                with self._exclusive(st):
                    done = (
                        self._confirm(st, fresh=started_fresh)
                        if adopt or started_fresh
                        else self._boot_once(st)
                    )
                if done:
                    return
            except DamagedPointer as exc:
                st.gate = str(exc)
                if not adopt:
                    st.phase = "restore failed"
                log.error("bot %s: %s; retrying in %.0f s", st.name, exc, delay)
            except StoreUnreachable as exc:
                st.gate = f"waiting for store: {exc}"
                if not adopt:
                    st.phase = "waiting for store"
                log.warning("bot %s: %s; retrying in %.0f s", st.name, st.gate, delay)
                if not adopt and cfg.on_unreachable == "start_fresh" and not started_fresh:
                    started_fresh = True
                    self.home(st.name).mkdir(parents=True, exist_ok=True)
                    st.phase = "ready"
                    st.restore = {"result": "started fresh (store unreachable)", "at": now_iso()}
                    log.warning(
                        "bot %s: starting with empty state (restore.on_unreachable: start_fresh)", st.name
                    )
                    self._ready(st)
            except Exception as exc:  # a bug must not kill the loop silently
                st.gate = f"restore error: {exc}"
                st.phase = "restore failed"
                log.exception("bot %s: restore error", st.name)
            self._stop.wait(delay)
            delay = min(delay * 2, cfg.retry_max)

    def _ready(self, st: BotState) -> None:
        self._record_databases(st)
        if st.on_ready is not None:
            st.on_ready(st.name)

    def _confirm(self, st: BotState, *, fresh: bool) -> bool:
        """Learn the fence from the store without restoring: adopted a live gateway, or
        started fresh while the store was unreachable."""
        st.store = self.store.description
        latest, etag = catalog.read_latest(self.store, st.name)
        fence, fingerprint, fenced = self._recorded_fence(st, latest, etag)
        if latest is None:
            st.fence = Fence(None)
        elif not fresh and fence is not None and fence.etag == etag:
            st.fence, st.fingerprint, st.fenced = fence, fingerprint, fenced
        elif not fresh and fence is None:
            st.fence = Fence(etag, latest.generation, latest.id)  # no local record: take the store's
            log.info("bot %s: adopted the store's snapshot %s as this writer's", st.name, latest.id)
        else:
            why = "this bot started fresh while the store was unreachable" if fresh else "flared was down"
            st.fenced = (
                f"the store holds snapshot {latest.id}, written elsewhere while {why}; "
                f"`flared restore --bot {st.name}` takes it (the current home is kept as home.previous), "
                f"`flared snapshot --bot {st.name} --takeover` overwrites it"
            )
            st.fence = Fence(etag, latest.generation, latest.id)
            log.error("bot %s: fenced: %s", st.name, st.fenced)
        st.gate = None
        self._save(st)
        return True

    def _boot_once(self, st: BotState) -> bool:
        home = self.home(st.name)
        st.phase = "restoring"
        st.store = self.store.description
        latest, etag = catalog.read_latest(self.store, st.name)
        fence, _fingerprint, fenced = self._recorded_fence(st, latest, etag)
        has_local = home.is_dir() and any(home.iterdir())
        if has_local and ((fence is not None and fence.etag == etag) or latest is None):
            # This machine's home is the source of `latest` (or the store is new): it is at
            # least as new as anything stored. Keep it and snapshot soon.
            st.fence = fence if (fence is not None and fence.etag == etag) else Fence(None)
            st.fingerprint, st.fenced = None, fenced
            st.restore = {
                "result": "kept local state",
                "at": now_iso(),
                "id": latest.id if latest else None,
            }
            st.due_now = True
            log.info(
                "bot %s: kept the local Hermes home (store generation %s)",
                st.name,
                fence.generation if fence else 0,
            )
        else:
            known = {latest.content_digest: latest.id} if latest is not None and valid_id(latest.id) else {}
            # The databases come from the stream's newest position whichever snapshot is
            # unpacked: restore them while the snapshot downloads and unpacks.
            early = self._stream_scratch(st.name) / "databases"
            shutil.rmtree(early, ignore_errors=True)
            with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="stream-restore") as pool:
                databases = pool.submit(self._stream_into, st.name, early, None, False)

                def complete(p: restoring.Prepared) -> str | None:
                    return databases.result() or stream_restore.move_into(early, p.staging)

                res = restoring.restore(
                    self.store,
                    st.name,
                    home,
                    self._work(st.name),
                    key=catalog.encryption_key(self.policy),
                    on_reading=lambda sid: setattr(st, "reading", sid),
                    saved_as=self._saved_as(st.name, known, Fence(etag)),
                    before_commit=complete,
                )
                error = databases.result()
            st.restore = res.as_dict()
            if res.result == "failed":
                shutil.rmtree(early, ignore_errors=True)
                st.phase = "restore failed"
                st.gate = res.error
                log.error("bot %s: %s", st.name, res.error)
                return False
            if res.result == "empty":
                home.mkdir(parents=True, exist_ok=True)
                # No snapshot yet, maybe a stream (lost before the first snapshot): nothing runs
                # on this home, so its databases go straight in.
                error = error or stream_restore.move_into(early, home)
                if error is not None:
                    st.phase, st.gate = "restore failed", error
                    log.error("bot %s: %s", st.name, error)
                    return False
                log.info("bot %s: the store holds no snapshot: starting fresh", st.name)
            else:
                log.info("bot %s: restored snapshot %s in %.2f s", st.name, res.id, res.seconds)
            st.fence, st.fenced = res.fence, None
            self._after_restore(st, res)
            self._claim(st)
        st.phase, st.gate = "ready", None
        st.last_attempt = time.time()
        self._save(st)
        self._ready(st)
        return True

    # ------------------------------------------------------------------ snapshots

    def snapshot(
        self,
        bot: str,
        reason: str = "manual",
        *,
        takeover: bool = False,
        accept_shrink: bool = False,
        progress: Progress | None = None,
    ) -> dict[str, Any]:
        st = self.state(bot)
        if st.fence is None:
            return SnapshotResult(
                "skipped", bot, reason=st.gate or "the bot's restore has not finished yet"
            ).as_dict()
        if st.fenced and not takeover and st.store in (None, self.store.description):
            return SnapshotResult("fenced", bot, reason=st.fenced).as_dict()
        with self._exclusive(st):
            try:
                self._follow_store(st)
            except StoreError as exc:
                st.last_attempt = time.time()
                return SnapshotResult("failed", bot, reason=str(exc)).as_dict()
            if st.fenced and not takeover:
                return SnapshotResult("fenced", bot, reason=st.fenced).as_dict()
            st.running = True
            try:
                return self._snapshot_locked(st, reason, takeover, progress, accept_shrink)
            finally:
                st.running = False

    def _snapshot_locked(
        self, st: BotState, reason: str, takeover: bool, progress: Progress | None, accept_shrink: bool
    ) -> dict[str, Any]:
        assert st.fence is not None
        if takeover:
            st.store = self.store.description
            latest, etag = catalog.read_latest(self.store, st.name)
            st.fence = Fence(etag, latest.generation if latest else 0, latest.id if latest else None)
            st.fenced, st.fingerprint = None, None
            log.warning(
                "bot %s: taking over the bot's snapshots from whoever wrote %s", st.name, st.fence.snapshot_id
            )
        st.last_attempt = time.time()
        st.due_now = False
        change_seen = st.last_change
        st.last_change = None

        def in_flight(sid: str) -> None:
            st.in_flight.append(sid)
            self._save(st)

        job = SnapshotJob(
            store=self.store,
            bot=st.name,
            home=self.home(st.name),
            work=self._work(st.name),
            policy=self.policy,
            fence=st.fence,
            fingerprint=st.fingerprint,
            progress=progress,
            on_in_flight=in_flight,
            cache=self._cache(st.name),
            unconfirmed=tuple(st.in_flight),
            basis=st.basis,
            accept_shrink=accept_shrink,
            stream_position=self._stream_position(st.name) if self.policy.stream.enabled else None,
        )
        try:
            res = pipeline.take_snapshot(job)
        except Exception as exc:  # a bug: say so in the result and the status, keep the details in the log
            log.exception("bot %s: snapshot failed unexpectedly", st.name)
            res = SnapshotResult(
                "failed", st.name, reason=f"unexpected {type(exc).__name__}; see the flared log"
            )
        out = res.as_dict()
        out["trigger"] = reason
        st.last = out
        snapshot_history.record(snapshot_history.history_path(self.dir, st.name), out)
        st.shrunk = res.reason if res.shrink else None
        if res.result in {"ok", "unchanged"} and accept_shrink and st.stream_lost is not None:
            log.warning("bot %s: its home accepted as it is: streaming its databases again", st.name)
            st.stream_lost = None
            self._record_databases(st)
        if res.result in {"ok", "unchanged"}:
            st.fence = res.fence or st.fence
            st.fingerprint = res.fingerprint
            st.basis = None  # latest holds this home now
            if st.fence.snapshot_id in st.in_flight:  # published (maybe without our hearing it)
                st.in_flight.remove(st.fence.snapshot_id)
            if res.result == "ok":
                st.last_ok = {"id": res.id, "at": res.at}
                log.info(
                    "bot %s: snapshot %s (%s): %d bytes in %.2f s",
                    st.name,
                    res.id,
                    reason,
                    res.bytes_uploaded,
                    res.seconds,
                )
            elif st.last_ok is None and res.id:
                st.last_ok = {"id": res.id, "at": res.at}
        elif res.result == "fenced":
            st.fenced = res.reason
            st.fingerprint = None
            log.error("bot %s: snapshot fenced: %s", st.name, res.reason)
        else:
            if change_seen is not None:
                st.last_change = change_seen  # try again after the next quiet period
            level = logging.ERROR if res.shrink else logging.WARNING
            log.log(level, "bot %s: snapshot %s: %s", st.name, res.result, res.reason)
        if res.result == "ok" or st.in_flight or time.time() - st.last_prune > PRUNE_EVERY:
            self._prune_locked(st)
        if res.result in {"ok", "unchanged"} and self.may_stream(st.name):
            self._make_bases(st.name)
        self._save(st)
        return out

    def _make_bases(self, bot: str) -> None:
        """After a snapshot: a base for each database whose Litestream snapshot has none yet
        (daily), so a cold boot need not rebuild the database from LTX (:mod:`flared.snapshots.stream.base`)."""
        try:
            made = stream_restore.make_bases(
                self.loaded.config, self.store, bot, self._stream_scratch(bot) / "bases"
            )
        except (stream_restore.StreamRestoreError, StoreError, PackError, OSError) as exc:
            log.warning("bot %s: no base made for the streamed databases: %s", bot, exc)
            return
        for rel, size in made.items():
            log.info("bot %s: uploaded a base of %s (%d bytes) for a fast cold boot", bot, rel, size)

    def _prune_locked(self, st: BotState) -> dict[str, Any]:
        try:
            done = catalog.prune(
                self.store,
                st.name,
                self.policy,
                protected=[st.reading] if st.reading else [],
                ours_in_flight=st.in_flight,
            )
        except StoreError as exc:
            log.warning("bot %s: retention skipped: %s", st.name, exc)
            return {"error": str(exc)}
        st.last_prune = time.time()
        st.in_flight = [i for i in st.in_flight if i not in done["orphans"]]
        if done["expired"] or done["orphans"]:
            log.info("bot %s: retention deleted %s, leftovers %s", st.name, done["expired"], done["orphans"])
        return done

    def prune(self, bot: str) -> dict[str, Any]:
        st = self.state(bot)
        with self._exclusive(st):
            out = self._prune_locked(st)
            self._save(st)
            return {"bot": bot, **out}

    def history(self, bot: str, limit: int = 200) -> list[dict[str, Any]]:
        """What this flared's snapshots of the bot did (ok, failed, fenced), oldest first."""
        return snapshot_history.read(snapshot_history.history_path(self.dir, bot), limit)

    def list(self, bot: str) -> list[dict[str, Any]]:
        return catalog.list_snapshots(self.store, bot)

    def pointer_problem(self, bot: str) -> str | None:
        """What is wrong with the bot's latest.json, if anything (said beside a listing)."""
        return catalog.pointer_problem(self.store, bot)

    # ------------------------------------------------------------------ on-demand restore

    def restore(
        self, bot: str, snapshot_id: str | None = None, *, progress: Progress | None = None
    ) -> dict[str, Any]:
        """Restore a bot: unpack and check the snapshot while its gateway still runs, then stop
        the gateway only for the swap and start it again (the old home kept as home.previous).

        A bad id, an empty store or a snapshot that cannot be restored never stops the gateway.
        """
        st = self.state(bot)
        with self._exclusive(st):
            self._flush_mark(bot)  # the last restore's home.previous, before this one moves it
            phase = st.phase
            st.phase = "restoring"
            stopped = False
            try:
                try:
                    prepared = restoring.prepare(
                        self.store,
                        bot,
                        self.home(bot),
                        self._work(bot),
                        key=catalog.encryption_key(self.policy),
                        snapshot_id=snapshot_id,
                        progress=progress,
                        on_reading=lambda sid: setattr(st, "reading", sid),
                    )
                except StoreUnreachable as exc:
                    return {"result": "failed", "bot": bot, "error": str(exc)}
                if isinstance(prepared, restoring.RestoreResult):
                    out = prepared.as_dict()
                    if prepared.result == "empty":
                        out = {
                            "result": "failed",
                            "bot": bot,
                            "error": f"the store holds no snapshot of {bot}",
                        }
                    return out
                known = {prepared.manifest.content_digest: prepared.id}
                latest_id = prepared.fence.snapshot_id
                if latest_id and latest_id != prepared.id and valid_id(latest_id):
                    with contextlib.suppress(StoreError, ValueError):
                        known.setdefault(
                            catalog.read_manifest(self.store, bot, latest_id).content_digest, latest_id
                        )
                saved_as = self._saved_as(bot, known, prepared.fence)
                mark = time.monotonic()
                # The restored tree's fingerprint is walked while the gateway stops (mostly a wait).
                fingerprint: concurrent.futures.Future[str | None] = concurrent.futures.Future()
                walker = threading.Thread(
                    target=_resolve, args=(fingerprint, lambda: self._staging_fingerprint(prepared))
                )
                walker.start()
                try:
                    if self.gateways is not None:
                        self.gateways.stop(bot)
                        stopped = True
                        prepared.steps["stop"] = round(time.monotonic() - mark, 3)
                finally:
                    waited = time.monotonic()
                    walker.join()
                prepared.steps["fingerprint"] = round(time.monotonic() - waited, 3)  # beyond the stop
                # With the gateway stopped (and Litestream no longer watching the home, see
                # Gateways.streamed_bots): the stream's newest position is final.
                mark = time.monotonic()
                error = self._stream_into(bot, prepared.staging, prepared.manifest, snapshot_id is not None)
                prepared.steps["stream"] = round(time.monotonic() - mark, 3)
                if error is not None:
                    restoring.discard(prepared.staging)
                    return {"result": "failed", "bot": bot, "error": f"{error}; the home is as it was"}
                try:
                    res = restoring.commit(prepared, self.home(bot), saved_as=None, store=self.store)
                except OSError as exc:
                    restoring.discard(prepared.staging)
                    return {
                        "result": "failed",
                        "bot": bot,
                        "local": True,
                        "error": f"restore stopped, the home is as it was: {pipeline.describe_os_error(exc)}",
                    }
                self._defer_mark(bot, restoring.tree_id(restoring.rollback_path(self.home(bot))), saved_as)
                out = res.as_dict()
                was_fenced = st.fenced is not None
                st.fence, st.fenced, st.gate, st.stream_lost = res.fence, None, None, None
                st.store = self.store.description
                self._after_restore(st, res, fingerprint)
                if was_fenced:  # another flared wrote the bot: stop its stream before this one starts
                    self._claim(st)
                st.restore = out
                # An older snapshot becomes the new latest with the next snapshot.
                st.due_now = res.fence is not None and res.id != res.fence.snapshot_id
                self._save(st)
                return out
            finally:
                st.phase = "ready" if st.fence is not None else phase
                if st.fence is not None:
                    self._ready(st)
                if stopped and self.gateways is not None:
                    mark = time.monotonic()
                    self.gateways.start(bot)
                    if st.restore is not None and st.restore.get("steps") is not None:
                        st.restore["steps"]["start"] = round(time.monotonic() - mark, 3)

    # ------------------------------------------------------------------ triggers

    def start(self) -> None:
        """Start the periodic and on-change triggers (:mod:`flared.snapshots.scheduler`) and the
        stream's fence check."""
        self.scheduler.start()
        self._spawn("fence-check", self._fence_loop)

    # ------------------------------------------------------------------ reload, retire, shutdown

    def update(self, loaded: LoadedConfig) -> None:
        """New policy applies at once; a new store at the next snapshot."""
        store_changed = loaded.config.store != self.loaded.config.store
        self.loaded = loaded
        self.scheduler.start_watcher()
        if store_changed:
            self.store = open_store(loaded.config.store)
            log.info("snapshot store is now %s", self.store.description)

    def retire(self, bot: str) -> dict[str, Any]:
        """A bot leaves the config: one last snapshot, then forget it (its state stays in the store)."""
        out = self.snapshot(bot, "retire")
        with self._guard:
            self.bots.pop(bot, None)
        return out

    def shutdown(
        self, final_snapshots: bool = True, deadline: Deadline | None = None
    ) -> dict[str, dict[str, Any]]:
        """Stop the triggers, then take each ready bot's final snapshot within ``deadline``.

        Returns what each attempted final snapshot did. One still running at the deadline
        (a store that stopped answering) is left behind as ``timed out``: :attr:`abandoned`
        tells flared to exit under it rather than wait for supervisord's SIGKILL."""
        self._stop.set()
        finals: dict[str, dict[str, Any]] = {}
        if final_snapshots:
            deadline = deadline or Deadline(self.policy.shutdown_budget, "snapshots.shutdown_budget")
            ready = [b for b, st in self.bots.items() if st.fence is not None and not st.fenced]
            doing = {b: _Doing() for b in ready}
            futures = {b: self._pool.submit(self.snapshot, b, "shutdown", progress=doing[b]) for b in ready}
            done, _pending = concurrent.futures.wait(futures.values(), timeout=deadline.seconds)
            for bot, fut in futures.items():
                if fut not in done:
                    self.abandoned = True
                    last_ok = (self.state(bot).last_ok or {}).get("id")
                    kept = f"the store's latest is still {last_ok}" if last_ok else "the store holds none yet"
                    r = {
                        "bot": bot,
                        "result": "timed out",
                        "trigger": "shutdown",
                        "reason": f"still {doing[bot].what} when the deadline of {deadline} was hit; {kept}",
                    }
                elif fut.exception() is not None:
                    r = {
                        "bot": bot,
                        "result": "failed",
                        "trigger": "shutdown",
                        "reason": str(fut.exception()),
                    }
                else:
                    r = dict(fut.result())
                finals[bot] = r
                level = logging.ERROR if r["result"] in NOT_SAVED else logging.INFO
                log.log(
                    level,
                    "bot %s: final snapshot: %s %s",
                    bot,
                    r["result"],
                    r.get("id") or r.get("reason") or "",
                )
        self._pool.shutdown(wait=False, cancel_futures=True)
        return finals

    # ------------------------------------------------------------------ status

    def status(self, bot: str) -> dict[str, Any]:
        st = self.state(bot)
        now = time.time()
        last_ok = dict(st.last_ok) if st.last_ok else None
        if last_ok and last_ok.get("at"):
            with contextlib.suppress(ValueError):
                from datetime import datetime

                last_ok["age_s"] = round(now - datetime.fromisoformat(last_ok["at"]).timestamp(), 1)
        every = self.policy.every
        next_due = None
        if st.phase == "ready" and st.fence is not None and not st.fenced and every is not None:
            next_due = round(max(0.0, st.last_attempt + every - now), 1)
        return {
            "phase": st.phase,
            "store": self.store.description,
            "last": st.last,
            "last_ok": last_ok,
            "next_due_in_s": next_due,
            "fenced": st.fenced,
            "shrunk": st.shrunk,
            "stream_stopped": st.stream_lost,
            "gated": st.fence is None,
            "gate": st.gate,
            "restore": st.restore,
            "running": st.running,
        }


class _Doing:
    """What a final snapshot is doing (the pipeline's named steps), to say where a deadline hit it."""

    def __init__(self) -> None:
        self.what = "waiting for the store or for the bot's lock"

    def __call__(self, n: int) -> None:
        pass

    def step(self, name: str, total: int | None = None) -> None:
        self.what = name if total is None else f"{name} ({total} bytes)"


def _resolve(future: concurrent.futures.Future[str | None], fn: Callable[[], str | None]) -> None:
    try:
        future.set_result(fn())
    except BaseException as exc:  # handed to whoever reads the result
        future.set_exception(exc)
