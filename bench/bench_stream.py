"""Streaming the databases (Litestream) against snapshots alone: RPO, upload bytes, cold-boot restore.

Three measures, each interleaved with today's way (squashfs snapshots of the whole home,
databases included: `snapshots.stream.enabled: false`):

- **RPO as the user sees it**: a reply is a transaction committed into a Hermes `state.db`
  (Hermes' own schema); the time until a reader of the store has it. Today: the on-change
  snapshot (the default policy, `debounce: 30s`, the real watcher and scheduler in the
  snapshot service) has moved `latest.json`. Streaming: the real Litestream (the config
  flared renders, 1 s defaults) has put a new LTX file in the bot's stream. File store and
  S3 (moto's server on loopback), rounds interleaved (one today-sample, then several
  streaming samples). Target: p95 <= 2 s.
- **Snapshot upload** of the agent home (bench/homes.py; 500 MB, `BENCH_STREAM_HOME_MB`): the
  bytes the first snapshot puts in the store, with and without the databases. Target:
  streaming <= 1/5 of today's. Then the time of a snapshot after a chat turn (two messages,
  a session line, a log line), with Litestream running for streaming.
- **Cold-boot restore** of the same home from the file store into a wiped state dir (the
  snapshot service's boot path): today unsquashfs of everything; streaming unsquashfs of the
  rest and, beside it, each database from its base (made by the snapshot after Litestream's
  first sync) plus the LTX files after it (the turns'). Each way's store is made once per size pair, then
  the boots alternate between the two (`BENCH_STREAM_BOOTS` per size pair), each after a
  `sync` so one boot's writes do not land on the next. Target <= 1.5x today's.
- **Bytes put in the store per hour** by the default policy (every 15m, on change after 30 s
  of quiet) for an idle bot and a chatty one (a turn every 40 s: two messages in `state.db`,
  lines in a session file and the agent log), on the same home, over a measured window after
  the first snapshot and first sync: new or rewritten objects. Streaming adds its daily costs
  (Litestream's snapshot and the base) / 24; Litestream's level 2 and 3 compactions (every
  5 min, 1 h) fall outside the window and are counted as its level 1 bytes each.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import sqlite3
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import homes
import yaml
from common import Paired, met, pairs_wanted, pct, quick, secs, table

from flared.config.loader import LoadedConfig, load_config
from flared.snapshots.service import SnapshotService
from flared.snapshots.stream import base as stream_base
from flared.snapshots.stream.base import base_key
from flared.snapshots.stream.render import stream_key
from tests.fixtures.flare import bot, config
from tests.fixtures.litestream import replicating
from tests.fixtures.s3server import shared_server

BOT = "b"
ROUNDS = pairs_wanted(4, 1)  # today-samples per store: each waits for the 30 s debounce
STREAM_PER_ROUND = 5
HOME_MB = int(os.environ.get("BENCH_STREAM_HOME_MB", "60" if quick() else "500"))
SIZE_PAIRS = pairs_wanted(2, 1)
SNAP_PAIRS = int(os.environ.get("BENCH_STREAM_SNAPS", "2" if quick() else "4"))  # per size pair
BOOT_PAIRS = int(os.environ.get("BENCH_STREAM_BOOTS", "2" if quick() else "5"))  # cold boots per size pair
BOOT_POLICY: dict[str, Any] = {"every": None, "on_change": {"enabled": False}}
POLL = 0.02


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load(
    where: Path, store: dict[str, Any], *, stream: bool, policy: dict[str, Any], **stream_fields: Any
) -> LoadedConfig:
    data = config(where, [bot(BOT)], store=store)
    data["snapshots"] = {**policy, "stream": {"enabled": stream, **stream_fields}}
    where.mkdir(parents=True, exist_ok=True)
    (where / "hermes-flare.yaml").write_text(yaml.safe_dump(data))
    return load_config(where / "hermes-flare.yaml")


def stores(tmp: Path) -> dict[str, Callable[[], dict[str, Any]]]:
    out: dict[str, Callable[[], dict[str, Any]]] = {}
    counter = iter(range(10**6))
    out["file"] = lambda: {"url": f"file://{tmp / 'stores' / str(next(counter))}"}
    if os.environ.get("BENCH_STREAM_STORES", "file,s3").find("s3") >= 0:
        server = shared_server()
        out["s3"] = lambda: server.section(server.new_bucket())
    return out


def reply(db: Path, n: int) -> float:
    """Commit one 'reply' (a message row); the time it committed."""
    con = sqlite3.connect(db, isolation_level=None, timeout=10)
    con.execute("BEGIN IMMEDIATE")
    con.execute(
        "INSERT INTO messages(session_id, role, content, timestamp) VALUES ('s0', 'assistant', ?, ?)",
        (f"reply {n} " + "x" * 400, time.time()),
    )
    con.execute("COMMIT")
    con.close()
    return time.time()


def wait_for(probe: Callable[[], bool], timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return time.time()
        time.sleep(POLL)
    raise TimeoutError("never reached the store")


def fresh_home(home: Path) -> None:
    home.mkdir(parents=True, exist_ok=True)
    homes.hermes_db(home / "state.db")
    con = sqlite3.connect(home / "state.db")
    con.execute("INSERT INTO sessions(id, source, title, started_at) VALUES ('s0', 'slack', 't', 0)")
    con.commit()
    con.close()
    (home / "memories").mkdir()
    (home / "memories" / "MEMORY.md").write_text("notes\n")


def rpo_today(tmp: Path, store: dict[str, Any]) -> list[float]:
    """One sample: the default on-change policy, the real watcher; reply -> latest.json moved."""
    where = Path(tempfile.mkdtemp(dir=tmp))
    loaded = load(where, store, stream=False, policy={})  # the defaults: every 15m, debounce 30s
    svc = SnapshotService(loaded)
    st = svc.state(BOT)
    svc._boot_once(st)
    fresh_home(svc.home(BOT))
    assert svc.snapshot(BOT)["result"] == "ok"
    svc.start()
    try:
        time.sleep(1.0)
        before = svc.status(BOT)["last_ok"]["id"]
        committed = reply(svc.home(BOT) / "state.db", 1)
        seen = wait_for(lambda: (svc.status(BOT)["last_ok"] or {}).get("id") != before, 180)
        return [seen - committed]
    finally:
        svc.shutdown(final_snapshots=False)
        shutil.rmtree(where, ignore_errors=True)


def rpo_streaming(tmp: Path, store: dict[str, Any], n: int) -> list[float]:
    """`n` samples: reply -> a new LTX file in the bot's stream, as a reader of the store lists it."""
    where = Path(tempfile.mkdtemp(dir=tmp))
    loaded = load(where, store, stream=True, policy={})
    svc = SnapshotService(loaded)
    svc._boot_once(svc.state(BOT))
    fresh_home(svc.home(BOT))
    prefix = stream_key(BOT, "state.db") + "/"

    def ltx() -> set[str]:
        return {o.key for o in svc.store.list(prefix) if o.key.endswith(".ltx")}

    out = []
    with replicating(loaded, [BOT]):
        wait_for(lambda: bool(ltx()), 30)
        time.sleep(1.5)
        for i in range(n):
            known = ltx()
            committed = reply(svc.home(BOT) / "state.db", i)
            seen = wait_for(lambda known=known: bool(ltx() - known), 30)  # type: ignore[misc]
            out.append(seen - committed)
            time.sleep(0.3 + (i % 3) * 0.31)  # land the next reply at another point of the cycle
    shutil.rmtree(where, ignore_errors=True)
    return out


def rpo_section(tmp: Path) -> tuple[str, bool]:
    rows, ok = [], True
    for kind, make in stores(tmp).items():
        today: list[float] = []
        streaming: list[float] = []
        for r in range(ROUNDS):
            log(f"rpo {kind}: round {r + 1}/{ROUNDS}")
            today += rpo_today(tmp, make())
            streaming += rpo_streaming(tmp, make(), STREAM_PER_ROUND)
        for label, xs in (("snapshots on change (today)", today), ("Litestream, 1 s", streaming)):
            rows.append([kind, label, len(xs), secs(pct(xs, 50)), secs(pct(xs, 95)), secs(max(xs))])
        ok = ok and pct(streaming, 95) <= 2.0
    text = table(["store", "way", "samples", "median", "p95", "max"], rows)
    return text, ok


@contextlib.contextmanager
def big_home(tmp: Path) -> Iterator[Path]:
    template = tmp / "template"
    if not template.exists():
        log(f"building a {HOME_MB} MB agent home")
        homes.agent_home(template, HOME_MB)
    yield template


def snapshot_txids(svc: SnapshotService) -> dict[str, int]:
    keys = [o.key for o in svc.store.list(stream_key(BOT) + "/")]
    return stream_base.snapshot_txids(stream_base.stream_files(BOT, keys))


@dataclasses.dataclass
class Prepared:
    """One way's store after its first snapshot, and the service that wrote it."""

    uploaded: int
    where: Path
    store: dict[str, Any]
    loaded: LoadedConfig
    svc: SnapshotService


def upload_and_restore(tmp: Path, template: Path) -> tuple[Paired, Paired, Paired, dict[str, int]]:
    """(upload bytes, snapshot seconds after a turn, cold-boot seconds: each streaming/today; sizes).

    Each way's store is made once per size pair (its first snapshot, and for streaming the
    first sync and the base). Then, alternating between the two ways: SNAP_PAIRS snapshots,
    each after a chat turn (Litestream running for streaming), and BOOT_PAIRS cold boots, each
    into a wiped state dir, so a streaming boot follows the turns' LTX files after its base."""
    size, snap, boot = Paired(), Paired(), Paired()
    sizes: dict[str, int] = {}

    def prepare(stream: bool) -> Prepared:
        where = Path(tempfile.mkdtemp(dir=tmp))
        store = {"url": f"file://{where / 'store'}"}
        loaded = load(where, store, stream=stream, policy=BOOT_POLICY, fence_check=1)
        svc = SnapshotService(loaded)
        svc._boot_once(svc.state(BOT))
        shutil.rmtree(svc.home(BOT))
        shutil.copytree(template, svc.home(BOT), symlinks=True)
        if stream:
            with replicating(loaded, [BOT]):
                # the first sync ends with Litestream's own snapshot (level 9) of each database
                wait_for(lambda: bool(snapshot_txids(svc)), 600)
                # once streaming is allowed (a fence check after the claim), a snapshot also
                # makes the base of each database at that Litestream snapshot
                wait_for(lambda: svc.may_stream(BOT), 60)
                out = svc.snapshot(BOT)
        else:
            out = svc.snapshot(BOT)
        assert out["result"] == "ok", out
        if stream:
            sizes["stream"] = sum(o.size for o in svc.store.list(stream_key(BOT) + "/"))
            sizes["base"] = sum(o.size for o in svc.store.list(base_key(BOT) + "/"))
            sizes["snapshot9"] = sum(
                o.size
                for o in svc.store.list(stream_key(BOT) + "/")
                if o.key.split("/")[-2] in {"9", "0009"}  # Litestream's own snapshots (level 9)
            )
            assert sizes["base"], "no base was made"
        return Prepared(int(out["bytes_uploaded"]), where, store, loaded, svc)

    def snapshot_after_turn(way: Prepared, n: int) -> float:
        turn(way.svc.home(BOT), n)
        t0 = time.perf_counter()
        out = way.svc.snapshot(BOT)
        took = time.perf_counter() - t0
        assert out["result"] == "ok", out
        return took

    def cold_boot(way: Prepared, stream: bool) -> float:
        """The machine is lost: a new state dir, the same store; the seconds to a restored home."""
        shutil.rmtree(way.where / "state", ignore_errors=True)
        again = SnapshotService(load(way.where, way.store, stream=stream, policy=BOOT_POLICY, fence_check=1))
        os.sync()  # the last boot's writes go to disk before, not during, this one
        t0 = time.perf_counter()
        again._boot_once(again.state(BOT))
        took = time.perf_counter() - t0
        assert (again.home(BOT) / "state.db").is_file()
        return took

    for p in range(SIZE_PAIRS):
        log(f"upload: pair {p + 1}/{SIZE_PAIRS}")
        today, streaming = prepare(False), prepare(True)
        size.add(streaming.uploaded, today.uploaded)
        with replicating(streaming.loaded, [BOT]):
            for q in range(SNAP_PAIRS):
                log(f"snapshot after a turn: pair {p * SNAP_PAIRS + q + 1}/{SIZE_PAIRS * SNAP_PAIRS}")
                b = snapshot_after_turn(today, q)
                a = snapshot_after_turn(streaming, q)
                snap.add(a, b)
        for q in range(BOOT_PAIRS):
            log(f"cold boot: pair {p * BOOT_PAIRS + q + 1}/{SIZE_PAIRS * BOOT_PAIRS}")
            b = cold_boot(today, False)
            a = cold_boot(streaming, True)
            boot.add(a, b)
        shutil.rmtree(streaming.where, ignore_errors=True)
        shutil.rmtree(today.where, ignore_errors=True)
    return size, snap, boot, sizes


WINDOW = float(os.environ.get("BENCH_STREAM_WINDOW", "40" if quick() else "120"))
TURN_EVERY = 40.0  # a chatty bot: a turn every 40 s, each followed by more than the 30 s debounce


def turn(home: Path, n: int) -> None:
    """What one chat turn writes in a Hermes home: two messages, the session's log, the agent log."""
    reply(home / "state.db", n)
    reply(home / "state.db", n)
    with (home / "sessions" / "s0.jsonl").open("a") as fh:
        fh.write(f'{{"role": "user", "content": "turn {n}"}}\n{{"role": "assistant", "content": "ok {n}"}}\n')
    with (home / "logs" / "agent.log").open("a") as fh:
        fh.write(f"2026-12-06 10:00:00 INFO turn {n} answered\n")


def written(before: dict[str, tuple[int, str]], after: list[Any]) -> int:
    """Bytes of the objects a listing shows as new or rewritten since `before` (key -> size, etag).

    Litestream's compactions of the first sync (files from TXID 1: the whole database, once)
    are left out: what is measured is a steady hour. Its level 2 and 3 compactions (every
    5 min and 1 h) fall outside the window: each merges the pages level 1 holds, so each
    is counted as the level 1 bytes again (an upper bound)."""
    total = 0
    for o in after:
        if before.get(o.key) == (o.size, o.etag):
            continue
        ltx = stream_base.stream_files(BOT, [o.key])
        if ltx and ltx[0].level >= 1 and ltx[0].min_txid == 1:
            continue
        total += o.size * (3 if ltx and ltx[0].level == 1 else 1)
    return total


def hourly(tmp: Path, template: Path, *, stream: bool, chatty: bool) -> float:
    """Bytes put in the store per hour by the default policy (every 15m, on change after 30 s of
    quiet), with or without streaming, over WINDOW seconds of an idle or chatty bot."""
    where = Path(tempfile.mkdtemp(dir=tmp))
    store = {"url": f"file://{where / 'store'}"}
    loaded = load(where, store, stream=stream, policy={})
    svc = SnapshotService(loaded)
    svc._boot_once(svc.state(BOT))
    shutil.rmtree(svc.home(BOT))
    shutil.copytree(template, svc.home(BOT), symlinks=True)
    assert svc.snapshot(BOT)["result"] == "ok"  # the first snapshot is not what an hour costs
    with contextlib.ExitStack() as stack:
        if stream:
            stack.enter_context(replicating(loaded, [BOT]))
            wait_for(lambda: bool(snapshot_txids(svc)), 600)  # the first sync is not either,
            wait_for(lambda: svc.may_stream(BOT), 60)
            assert svc.snapshot(BOT)["result"] in {"ok", "unchanged"}  # nor the day's base
        svc.start()
        stack.callback(svc.shutdown, final_snapshots=False)
        time.sleep(2)
        before = {o.key: (o.size, o.etag) for o in svc.store.list(f"{BOT}/")}
        started = time.monotonic()
        n = 0
        while time.monotonic() - started < WINDOW:
            if chatty:
                n += 1
                turn(svc.home(BOT), n)
            time.sleep(min(TURN_EVERY, WINDOW - (time.monotonic() - started)) if chatty else WINDOW)
        after = svc.store.list(f"{BOT}/")
    shutil.rmtree(where, ignore_errors=True)
    return written(before, after) * 3600 / WINDOW


def hourly_section(tmp: Path, template: Path, sizes: dict[str, int]) -> str:
    rows = []
    daily = sizes.get("snapshot9", 0) + sizes.get("base", 0)  # Litestream's own snapshot and its base, daily
    for chatty in (False, True):
        log(f"bytes per hour: {'chatty' if chatty else 'idle'} bot")
        today = hourly(tmp, template, stream=False, chatty=chatty)
        streaming = hourly(tmp, template, stream=True, chatty=chatty) + daily / 24
        rows.append(
            [
                f"chatty (a turn every {TURN_EVERY:.0f} s)" if chatty else "idle",
                f"{today / 2**20:.1f} MiB",
                f"{streaming / 2**20:.1f} MiB",
            ]
        )
    return table(["bot", "today (snapshots on change)", "streaming (+ daily snapshot and base / 24)"], rows)


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    try:
        rpo, rpo_ok = rpo_section(tmp)
        with big_home(tmp) as template:
            size, snap, boot, sizes = upload_and_restore(tmp, template)
            hours = hourly_section(tmp, template, sizes)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size_ok = size.ratio <= 0.2
    boot_ok = boot.ratio <= 1.5
    print("## Streaming the databases (Litestream)\n")
    print(__doc__.split("\n\n", 1)[1].strip() + "\n")
    print(f"RPO, {ROUNDS} rounds per store (target p95 <= 2 s: {met(rpo_ok)}):\n")
    print(rpo + "\n")
    print(f"The {HOME_MB} MB agent home: first snapshot, a snapshot after a chat turn, cold boot:\n")
    print(
        table(
            ["measure", "today", "streaming", "streaming / today", "target"],
            [
                [
                    "snapshot upload",
                    f"{size.b_median / 2**20:.1f} MiB",
                    f"{size.a_median / 2**20:.1f} MiB",
                    size.spread(),
                    f"<= 0.2x: {met(size_ok)}",
                ],
                [
                    "snapshot after a chat turn",
                    secs(snap.b_median),
                    secs(snap.a_median),
                    snap.spread(),
                    "",
                ],
                [
                    "cold-boot restore",
                    secs(boot.b_median),
                    secs(boot.a_median),
                    boot.spread(),
                    f"<= 1.5x: {met(boot_ok)}",
                ],
            ],
        )
    )
    if sizes.get("stream"):
        print(
            f"\nThe stream of the databases after its first sync: {sizes['stream'] / 2**20:.1f} MiB in the store;"
            f" the base of state.db (at Litestream's snapshot, remade when Litestream makes a new one,"
            f" daily): {sizes['base'] / 2**20:.1f} MiB."
        )
    print(
        f"\nBytes put in the store per hour, the {HOME_MB} MB agent home, default policy, {WINDOW:.0f} s measured:\n"
    )
    print(hours)
    return 0


if __name__ == "__main__":
    threading.excepthook = lambda args: log(f"thread error: {args.exc_value}")
    raise SystemExit(main())
