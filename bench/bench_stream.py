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
  streaming <= 1/5 of today's.
- **Cold-boot restore** of the same home from the file store into a wiped state dir (the
  snapshot service's boot path): today unsquashfs of everything; streaming unsquashfs of the
  rest and `litestream restore` of each database. Target <= 1.5x today's.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
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
from flared.stream.program import litestream_env, litestream_executable, write_config
from flared.stream.render import StreamLayout, stream_key
from tests.fixtures.flare import bot, config
from tests.fixtures.s3server import shared_server

BOT = "b"
ROUNDS = pairs_wanted(4, 1)  # today-samples per store: each waits for the 30 s debounce
STREAM_PER_ROUND = 5
HOME_MB = int(os.environ.get("BENCH_STREAM_HOME_MB", "60" if quick() else "500"))
SIZE_PAIRS = pairs_wanted(2, 1)
POLL = 0.02


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def load(where: Path, store: dict[str, Any], *, stream: bool, policy: dict[str, Any]) -> LoadedConfig:
    data = config(where, [bot(BOT)], store=store)
    data["snapshots"] = {**policy, "stream": {"enabled": stream}}
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


@contextlib.contextmanager
def litestream(loaded: LoadedConfig) -> Iterator[None]:
    path = write_config(loaded, [BOT])
    with StreamLayout(loaded.state_dir).log.open("ab") as fh:
        proc = subprocess.Popen(
            [litestream_executable(), "replicate", "-config", str(path), "-no-expand-env"],
            env=litestream_env(loaded.config.store, os.environ),
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    try:
        yield
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


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
    with litestream(loaded):
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


def upload_and_restore(tmp: Path, template: Path) -> tuple[Paired, Paired, dict[str, int]]:
    """(upload bytes streaming/today, cold-boot seconds streaming/today, sizes)."""
    size, boot = Paired(), Paired()
    sizes: dict[str, int] = {}

    def one(stream: bool) -> tuple[int, float]:
        where = Path(tempfile.mkdtemp(dir=tmp))
        store = {"url": f"file://{where / 'store'}"}
        policy = {"every": None, "on_change": {"enabled": False}}
        loaded = load(where, store, stream=stream, policy=policy)
        svc = SnapshotService(loaded)
        svc._boot_once(svc.state(BOT))
        shutil.rmtree(svc.home(BOT))
        shutil.copytree(template, svc.home(BOT), symlinks=True)
        if stream:
            with litestream(loaded):
                prefix = stream_key(BOT, "state.db") + "/"
                wait_for(lambda: any(o.key.endswith(".ltx") for o in svc.store.list(prefix)), 600)
                out = svc.snapshot(BOT)
        else:
            out = svc.snapshot(BOT)
        assert out["result"] == "ok", out
        uploaded = int(out["bytes_uploaded"])
        if stream:
            sizes["stream"] = sum(o.size for o in svc.store.list(stream_key(BOT) + "/"))
        # the machine is lost: a new state dir, the same store
        shutil.rmtree(loaded.state_dir)
        again = SnapshotService(load(where, store, stream=stream, policy=policy))
        t0 = time.perf_counter()
        again._boot_once(again.state(BOT))
        took = time.perf_counter() - t0
        assert (again.home(BOT) / "state.db").is_file()
        shutil.rmtree(where, ignore_errors=True)
        return uploaded, took

    for p in range(SIZE_PAIRS):
        log(f"upload and cold boot: pair {p + 1}/{SIZE_PAIRS}")
        b_size, b_boot = one(False)
        a_size, a_boot = one(True)
        size.add(a_size, b_size)
        boot.add(a_boot, b_boot)
    return size, boot, sizes


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="bench-stream-"))
    try:
        rpo, rpo_ok = rpo_section(tmp)
        with big_home(tmp) as template:
            size, boot, sizes = upload_and_restore(tmp, template)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    size_ok = size.ratio <= 0.2
    boot_ok = boot.ratio <= 1.5
    print("## Streaming the databases (Litestream)\n")
    print(__doc__.split("\n\n", 1)[1].strip() + "\n")
    print(f"RPO, {ROUNDS} rounds per store (target p95 <= 2 s: {met(rpo_ok)}):\n")
    print(rpo + "\n")
    print(f"The {HOME_MB} MB agent home, first snapshot and cold boot, {size.n} pairs:\n")
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
            f"\nThe stream of the databases after its first sync: {sizes['stream'] / 2**20:.1f} MiB in the store."
        )
    return 0


if __name__ == "__main__":
    threading.excepthook = lambda args: log(f"thread error: {args.exc_value}")
    raise SystemExit(main())
