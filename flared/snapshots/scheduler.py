"""When a bot is snapshotted without being asked: every `snapshots.every`, and after
`on_change.debounce` of quiet following a change in its Hermes home (watchfiles).

:func:`due` decides from a bot's state and the policy alone; :class:`Scheduler`
runs the two loops and hands due snapshots to the service's worker pool.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

from flared.config.loader import LoadedConfig
from flared.config.models import SnapshotsConfig
from flared.snapshots import capture as cap
from flared.snapshots import catalog
from flared.snapshots.state import BotState
from flared.snapshots.stores import Store

log = logging.getLogger("flared.snapshots")

TICK = 1.0

Submit = Callable[..., Future[Any]]


class Snapshotter(Protocol):
    """What the scheduler needs of the snapshot service."""

    loaded: LoadedConfig
    bots: dict[str, BotState]
    store: Store

    @property
    def policy(self) -> SnapshotsConfig: ...

    def state(self, bot: str) -> BotState: ...

    def snapshot(self, bot: str, reason: str = ...) -> dict[str, Any]: ...


#: A bot whose store was edited follows it at its next snapshot, tried this often until the
#: new store answers (a fenced bot too: the fence was about the other store).
FOLLOW_STORE_EVERY = 10.0


def due(st: BotState, policy: SnapshotsConfig, now: float, store: str | None = None) -> str | None:
    """Why this bot should be snapshotted now, or None. `store`: the store the config names."""
    if st.phase != "ready" or st.fence is None or st.running:
        return None
    moved = store is not None and st.store is not None and st.store != store
    if moved and now - st.last_attempt >= FOLLOW_STORE_EVERY:
        return "store changed"
    if st.fenced:
        return None
    if st.due_now:
        return "restore"
    every = policy.every
    if every is not None and now - st.last_attempt >= every:
        return "periodic"
    oc = policy.on_change
    if oc.enabled and st.last_change is not None and now - st.last_change >= oc.debounce:
        return "change"
    return None


class Scheduler:
    def __init__(self, service: Snapshotter, submit: Submit, stop: threading.Event) -> None:
        self.service = service
        self.submit = submit
        self._stop = stop
        self._started = False
        self._watching = False

    def start(self) -> None:
        self._started = True
        self._spawn("snapshot-scheduler", self._schedule_loop)
        self.start_watcher()

    def start_watcher(self) -> None:
        """Watch homes only while on-change snapshots are on; a reload may turn them on."""
        if self._started and self.service.policy.on_change.enabled and not self._watching:
            self._watching = True
            self._spawn("snapshot-watch", self._watch_loop)

    def _spawn(self, name: str, fn: Callable[[], None]) -> None:
        threading.Thread(target=fn, name=name, daemon=True).start()

    def _schedule_loop(self) -> None:
        while not self._stop.wait(TICK):
            now = time.time()
            for st in list(self.service.bots.values()):
                reason = due(st, self.service.policy, now, self.service.store.description)
                if reason is None:
                    continue
                st.running = True
                self.submit(self._background_snapshot, st.name, reason)

    def _background_snapshot(self, bot: str, reason: str) -> None:
        try:
            self.service.snapshot(bot, reason)
        except Exception:
            log.exception("bot %s: snapshot error", bot)
        finally:
            self.service.state(bot).running = False

    def _watch_loop(self) -> None:
        import watchfiles

        bots_dir = self.service.loaded.state_dir / "bots"
        bots_dir.mkdir(parents=True, exist_ok=True)

        def relevant(_change: Any, path: str) -> bool:
            return self._bot_of(bots_dir, path) is not None

        while not self._stop.is_set():
            try:
                for changes in watchfiles.watch(
                    bots_dir,
                    watch_filter=relevant,
                    stop_event=self._stop,
                    debounce=200,
                    rust_timeout=1000,
                    yield_on_timeout=True,
                    raise_interrupt=False,
                ):
                    now = time.time()
                    for _change, path in changes:
                        bot = self._bot_of(bots_dir, path)
                        st = self.service.bots.get(bot) if bot else None
                        if st is not None and st.phase == "ready":
                            st.last_change = now
            except Exception as exc:  # the directory vanished, inotify limits...
                log.warning("watching Hermes homes failed (%s); periodic snapshots continue", exc)
                self._stop.wait(5)

    def _bot_of(self, bots_dir: Path, path: str) -> str | None:
        try:
            parts = Path(path).relative_to(bots_dir).parts
        except ValueError:
            return None
        if len(parts) < 3 or parts[1] != "home":
            return None
        policy = self.service.policy
        key = catalog.encryption_key(policy)
        patterns = cap.exclusions(catalog.left_out(policy), encrypted=key is not None)
        return None if cap.matches("/".join(parts[2:]), patterns) else parts[0]
