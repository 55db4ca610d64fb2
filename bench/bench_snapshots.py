"""Snapshot and restore as the user waits, beside the original's method, on two stores and three homes.

Homes (bench/homes.py): a used agent's proportions at 50 MB (and 500 MB), 20,000 files
of 2 KB, and one large `state.db` with its newest transactions in a WAL held open.
Stores: `file://` and S3 (moto's server on loopback). Three ways to ask:

- in-process: the snapshot service as the daemon runs it;
- `flared snapshot` / `flared restore` with no daemon (the CLI works on the store itself);
- `flared snapshot` / `flared restore` with `flared up` running (a real Hermes gateway).

Measures, each interleaved with its baseline (the median of per-pair ratios, min-max, pairs):

- full snapshot after a change (a message into state.db, a memory edit) vs the original
  (mksquashfs with its defaults, gzip, then one upload: a copy into the store dir or one
  PUT). Targets: <= 1/3 of the original's time at 50 and 500 MB, <= 1/2 on the 20k-files
  home; packed size never larger than the original's;
- unchanged snapshot, idle (stat fingerprint) and after a `touch` (content path, hashes
  from the cache). Target <= 0.2 s as the user waits, 0 bytes uploaded;
- restore vs the floor of the same run (one copy/GET of the blob + unsquashfs). Target
  <= 1.3x the floor.

`flared snapshots` with exactly the original's content: `snapshots.exclude: []`.
The daemon rows run on the file store and the 50 MB-class homes (a daemon reaches the store
exactly as the in-process rows do); the 500 MB home runs 2 rounds on the file store and 1 on S3.
Env: BENCH_PAIRS (pairs per comparison), BENCH_SNAPSHOT_HOMES (e.g. `agent50,small,wal`),
BENCH_SNAPSHOT_STORES (`file,s3`), BENCH_SNAPSHOT_DAEMON=0 (skip the daemon rows),
BENCH_SNAPSHOT_WAYS=daemon (only the daemon rows), BENCH_SNAPSHOT_MEASURES (e.g. `restore`;
default `full,unchanged,restore`: a restore without `full` restores the first snapshot).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import homes
import yaml
from common import Paired, pairs_wanted, quick, rounds, secs, table

from flared.config.loader import load_config
from flared.snapshots.service import SnapshotService
from tests.fixtures.flare import FlareUp, bot, config
from tests.fixtures.s3server import MotoServer

BOT = "b"
#: Pairs per comparison, per home: fewer where one run takes seconds (the 500 MB original
#: ~10 s, 20,000 files written per restore), so `make bench` stays well inside its budget.
PAIRS = {
    "agent50": pairs_wanted(3, 2),
    "wal": pairs_wanted(3, 2),
    "small": pairs_wanted(2, 1),
    "agent500": pairs_wanted(2, 1),
}
DAEMON_PAIRS = pairs_wanted(2, 1)
RACY = 2.2  # seconds: files younger than flared's racy window (2 s) make the fingerprint untrusted
VENV_FLARED = Path(sys.executable).with_name("flared")
FLARED = [str(VENV_FLARED)] if VENV_FLARED.exists() else [sys.executable, "-m", "flared"]
POLICY: dict[str, Any] = {"every": None, "on_change": {"enabled": False}, "exclude": []}

HOMES: dict[str, tuple[str, Callable[[Path], None], float]] = {
    # key: (label, generator, target ratio for a full snapshot)
    "agent50": ("agent, 50 MB", lambda p: homes.agent_home(p, 50), 1 / 3),
    "agent500": ("agent, 500 MB", lambda p: homes.agent_home(p, 500), 1 / 3),
    "small": ("20,000 files of 2 KB", homes.small_files_home, 1 / 2),
    "wal": ("one WAL database, 50 MB", lambda p: homes.wal_home(p, 50), 1 / 3),
}


def chosen(env: str, default: str) -> list[str]:
    return [x for x in os.environ.get(env, default).split(",") if x]


MEASURES = chosen("BENCH_SNAPSHOT_MEASURES", "full,unchanged,restore")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def mib(n: float) -> str:
    return f"{n / 1024 / 1024:.1f} MiB"


# ---------------------------------------------------------------------- the baselines


@dataclass
class Store:
    """Where blobs go, for flared (a store section) and for the baselines (a copy or one PUT)."""

    kind: str  # file | s3
    section: dict[str, Any]
    server: MotoServer | None = None
    bucket: str = ""
    root: Path | None = None

    def upload(self, blob: Path, key: str) -> None:
        if self.server is not None:
            with blob.open("rb") as f:
                self.server.client().put_object(Bucket=self.bucket, Key=key, Body=f)
            return
        assert self.root is not None
        dest = self.root / key
        dest.parent.mkdir(parents=True, exist_ok=True)
        with blob.open("rb") as src, dest.open("wb") as out:
            shutil.copyfileobj(src, out, 8 * 1024 * 1024)
            out.flush()
            os.fsync(out.fileno())

    def download(self, key: str, dest: Path) -> None:
        if self.server is not None:
            body = self.server.client().get_object(Bucket=self.bucket, Key=key)["Body"]
            with dest.open("wb") as f:
                shutil.copyfileobj(body, f, 8 * 1024 * 1024)
            return
        assert self.root is not None
        shutil.copyfile(self.root / key, dest)

    def blob_key(self, snapshot_id: str) -> str:
        key = f"{BOT}/snapshots/{snapshot_id}.sqsh"
        return f"snapshots/{key}" if self.server is not None else key


def make_store(kind: str, server: MotoServer | None, where: Path) -> Store:
    if kind == "s3":
        assert server is not None
        bucket = server.new_bucket()
        return Store(kind, server.section(bucket, "snapshots"), server=server, bucket=bucket)
    return Store(kind, {"url": f"file://{where}"}, root=where)


@dataclass
class Original:
    """The original hermes-flare: mksquashfs with its defaults (gzip), then one upload of the blob."""

    home: Path
    store: Store
    work: Path
    packed: int = 0

    def snapshot(self) -> float:
        blob = self.work / "original.sqsh"
        blob.unlink(missing_ok=True)
        t0 = time.perf_counter()
        subprocess.run(
            ["mksquashfs", str(self.home), str(blob), "-noappend", "-quiet", "-no-progress"], check=True
        )
        self.store.upload(blob, "original/data.sqsh")
        took = time.perf_counter() - t0
        self.packed = blob.stat().st_size
        blob.unlink()
        return took


def floor_restore(store: Store, key: str, work: Path) -> float:
    """One copy/GET of the blob to disk, then unsquashfs on all cores: the least a restore can do."""
    blob, dest = work / "floor.sqsh", work / "floor-tree"
    shutil.rmtree(dest, ignore_errors=True)
    t0 = time.perf_counter()
    store.download(key, blob)
    cores = str(os.cpu_count())
    subprocess.run(
        ["unsquashfs", "-no-progress", "-quiet", "-processors", cores, "-d", str(dest), str(blob)], check=True
    )
    took = time.perf_counter() - t0
    blob.unlink()
    shutil.rmtree(dest, ignore_errors=True)
    os.sync()  # untimed: the next run must not pay for this one's deletes (ext4 with discard)
    return took


def settled(home: Path, took: float) -> float:
    settle(home)
    return took


def settle(home: Path) -> None:
    """Untimed, after a flared restore: wait for the old home's background delete and for the
    marker of home.previous (written after answering), flush the disk."""
    previous = home.with_name(home.name + ".previous")
    marker = previous.with_name(previous.name + ".json")
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and (
        any(home.parent.glob(f".{home.name}.trash-*")) or (previous.exists() and not marker.exists())
    ):
        time.sleep(0.05)
    os.sync()


# ---------------------------------------------------------------------- the three ways to ask


@dataclass
class Runs:
    """Results of one way of asking: seconds as the user waits, and what flared said."""

    results: list[dict[str, Any]] = field(default_factory=list)
    walls: list[float] = field(default_factory=list)

    def add(self, wall: float, result: dict[str, Any]) -> float:
        self.walls.append(wall)
        self.results.append(result)
        return wall

    def inside(self) -> list[float]:
        """flared's own time for each run (the pipeline's timer)."""
        return [float(r.get("seconds") or 0.0) for r in self.results]

    def steps(self) -> dict[str, float]:
        """Median seconds per step over the runs."""
        keys = {k for r in self.results for k in (r.get("steps") or {})}
        return {
            k: statistics.median((r.get("steps") or {}).get(k, 0.0) for r in self.results)
            for k in sorted(keys)
        }


def cli(cfg: Path, *args: str) -> tuple[float, dict[str, Any]]:
    t0 = time.perf_counter()
    out = subprocess.run(
        [*FLARED, *args, "--json", "-c", str(cfg)], capture_output=True, text=True, timeout=900
    )
    wall = time.perf_counter() - t0
    if not out.stdout.strip():
        raise RuntimeError(f"flared {' '.join(args)} printed nothing: {out.stderr[-2000:]}")
    data: dict[str, Any] = json.loads(out.stdout)
    return wall, data


def cli_snapshot(cfg: Path) -> tuple[float, dict[str, Any]]:
    wall, data = cli(cfg, "snapshot", "--bot", BOT)
    res: dict[str, Any] = data["results"][0]
    if res["result"] not in {"ok", "unchanged"}:
        raise RuntimeError(f"snapshot {res['result']}: {res.get('reason')}")
    return wall, res


def cli_restore(cfg: Path) -> tuple[float, dict[str, Any]]:
    wall, data = cli(cfg, "restore", "--bot", BOT)
    if data.get("result") != "restored":
        raise RuntimeError(f"restore failed: {data.get('error')}")
    return wall, data


class InProcess:
    """The snapshot service in this process, re-reading the bot's state before each run (the CLI
    runs in between move the fence)."""

    def __init__(self, cfg: Path) -> None:
        self.svc = SnapshotService(load_config(cfg))

    def _sync(self) -> None:
        self.svc.bots.pop(BOT, None)
        st = self.svc.state(BOT)
        with self.svc._exclusive(st):
            self.svc._confirm(st, fresh=False)
        st.phase = "ready"

    def snapshot(self) -> tuple[float, dict[str, Any]]:
        self._sync()
        t0 = time.perf_counter()
        res = self.svc.snapshot(BOT)
        wall = time.perf_counter() - t0
        if res["result"] not in {"ok", "unchanged"}:
            raise RuntimeError(f"snapshot {res['result']}: {res.get('reason')}")
        return wall, res

    def restore(self) -> tuple[float, dict[str, Any]]:
        self._sync()
        t0 = time.perf_counter()
        res = self.svc.restore(BOT)
        wall = time.perf_counter() - t0
        if res.get("result") != "restored":
            raise RuntimeError(f"restore failed: {res.get('error')}")
        return wall, res


# ---------------------------------------------------------------------- one home on one store


@dataclass
class Way:
    """What one way of asking measured on one home and store."""

    full: Paired | None = None
    full_runs: Runs = field(default_factory=Runs)
    idle: Runs = field(default_factory=Runs)
    touched: Runs = field(default_factory=Runs)
    restore: Paired | None = None
    restore_runs: Runs = field(default_factory=Runs)
    cold: Paired | None = None
    cold_runs: Runs = field(default_factory=Runs)


@dataclass
class Case:
    home: str
    label: str
    store: str
    raw: int
    target: float
    original: list[float] = field(default_factory=list)
    original_packed: int = 0
    packed: int = 0
    ways: dict[str, Way] = field(default_factory=dict)
    floor: list[float] = field(default_factory=list)


class Changes:
    """A new change before each full snapshot; the time of the last one (the racy window)."""

    def __init__(self) -> None:
        self.n = 0
        self.last = 0.0

    def __call__(self, home: Path) -> None:
        self.n += 1
        homes.change(home, self.n)
        self.last = time.monotonic()

    def settle(self) -> None:
        wait = RACY - (time.monotonic() - self.last)
        if wait > 0:
            time.sleep(wait)


def write_config(where: Path, store: Store) -> Path:
    data = config(where, [bot(BOT)], store=store.section, snapshots=POLICY)
    path = where / "hermes-flare.yaml"
    where.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data))
    return path


@contextlib.contextmanager
def held(home: Path, key: str) -> Iterator[None]:
    """The WAL home's database held open with transactions in its WAL, as a gateway holds it."""
    if key != "wal":
        yield
        return
    proc = homes.hold_wal(home / "state.db")
    try:
        yield
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        proc.wait(10)


def offline_phase(case: Case, key: str, template: Path, store: Store, tmp: Path) -> None:
    """In-process and `flared` with no daemon, on the same state dir."""
    n = PAIRS[key] if not (key == "agent500" and store.kind == "s3") else 1
    where = tmp / f"off-{key}-{store.kind}"
    cfg = write_config(where, store)
    home = where / "state" / "bots" / BOT / "home"
    home.parent.mkdir(parents=True)
    shutil.copytree(template, home, symlinks=True)
    work = where / "bench-work"
    work.mkdir()
    changes = Changes()
    with held(home, key):
        _, first = cli_snapshot(cfg)  # the store's first snapshot of this bot
        case.packed = int(first.get("packed_size") or 0)
        inproc = InProcess(cfg)
        inproc_way = case.ways["in-process"] = Way()
        offline_way = case.ways["`flared`, no daemon"] = Way()
        original = Original(home, store, work)
        cache = where / "state" / "snapshots" / "cache" / BOT

        def full_inproc() -> float:
            changes(home)
            return inproc_way.full_runs.add(*inproc.snapshot())

        def full_cold() -> float:
            changes(home)
            shutil.rmtree(cache, ignore_errors=True)
            return inproc_way.cold_runs.add(*inproc.snapshot())

        def full_cli() -> float:
            changes(home)
            return offline_way.full_runs.add(*cli_snapshot(cfg))

        if "full" in MEASURES:
            log(f"  full snapshots ({n} rounds)")
            measures = {"in": full_inproc, "cli": full_cli}
            if key != "agent500" and store.kind == "file":
                measures["cold"] = full_cold
            got = rounds(original.snapshot, measures, n)
            inproc_way.full, inproc_way.cold, offline_way.full = got["in"], got.get("cold"), got["cli"]
            case.original += got["in"].b
            case.original_packed = original.packed

        if "unchanged" in MEASURES:
            log("  unchanged snapshots")
            changes.settle()
            inproc.snapshot()  # the content path once: it records the fingerprint
            for _ in range(n):
                inproc_way.idle.add(*inproc.snapshot())
                offline_way.idle.add(*cli_snapshot(cfg))
            for _ in range(n):
                os.utime(home / "memories" / "MEMORY.md")
                inproc_way.touched.add(*inproc.snapshot())
                os.utime(home / "memories" / "MEMORY.md")
                offline_way.touched.add(*cli_snapshot(cfg))

        if "restore" not in MEASURES:
            shutil.rmtree(where, ignore_errors=True)
            return
        log(f"  restores ({n} rounds)")
        newest = offline_way.full_runs.results[-1] if offline_way.full_runs.results else first
        blob_key = store.blob_key(newest["id"])

        def floor() -> float:
            took = floor_restore(store, blob_key, work)
            case.floor.append(took)
            return took

        got = rounds(
            floor,
            {
                "in": lambda: settled(home, inproc_way.restore_runs.add(*inproc.restore())),
                "cli": lambda: settled(home, offline_way.restore_runs.add(*cli_restore(cfg))),
            },
            n,
        )
        inproc_way.restore, offline_way.restore = got["in"], got["cli"]
    shutil.rmtree(where, ignore_errors=True)


def daemon_phase(case: Case, key: str, template: Path, store: Store, tmp: Path) -> None:
    """`flared snapshot` and `flared restore` with `flared up` running one bot (a real gateway)."""
    where = tmp / f"up-{key}-{store.kind}"
    where.mkdir()
    home = where / "state" / "bots" / BOT / "home"
    home.parent.mkdir(parents=True)
    shutil.copytree(template, home, symlinks=True)
    work = where / "bench-work"
    work.mkdir()
    way = case.ways["`flared`, daemon running"] = Way()
    changes = Changes()
    with held(home, key), FlareUp(where, [bot(BOT)], store=store.section, snapshots=POLICY) as flare:
        cfg = flare.config_path
        flare.wait_running(BOT, timeout=120)
        # The boot snapshot (the home was there first) and whatever the gateway wrote at start.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            _, res = cli_snapshot(cfg)
            if res["result"] == "unchanged":
                break
            time.sleep(RACY)
        original = Original(home, store, work)

        def full() -> float:
            changes(home)
            return way.full_runs.add(*cli_snapshot(cfg))

        if "full" in MEASURES:
            log(f"  daemon: full snapshots ({DAEMON_PAIRS} rounds)")
            way.full = rounds(original.snapshot, {"cli": full}, DAEMON_PAIRS)["cli"]
        if "unchanged" in MEASURES:
            log("  daemon: unchanged snapshots")
            changes.settle()
            cli_snapshot(cfg)
            for _ in range(DAEMON_PAIRS):
                way.idle.add(*cli_snapshot(cfg))
            for _ in range(DAEMON_PAIRS):
                os.utime(home / "memories" / "MEMORY.md")
                way.touched.add(*cli_snapshot(cfg))
        if "restore" not in MEASURES:
            return
        log(f"  daemon: restores ({DAEMON_PAIRS} rounds)")
        sid = way.full_runs.results[-1]["id"] if way.full_runs.results else res["id"]
        blob_key = store.blob_key(sid)

        def restore() -> float:
            took = way.restore_runs.add(*cli_restore(cfg))
            flare.wait_running(BOT, timeout=120)
            return settled(home, took)

        way.restore = rounds(lambda: floor_restore(store, blob_key, work), {"cli": restore}, DAEMON_PAIRS)[
            "cli"
        ]
    shutil.rmtree(where, ignore_errors=True)


# ---------------------------------------------------------------------- report


WAYS = ["in-process", "`flared`, no daemon", "`flared`, daemon running"]


def cell(p: Paired | None, target: float | None = None) -> str:
    if p is None or not p.n:
        return "-"
    mark = "" if target is None else (" ✓" if p.ratio <= target else " ✗")
    return f"{secs(p.a_median)}: {p.spread()}{mark}"


def idle_ok(r: Runs) -> bool:
    uploaded = sum(int(x.get("bytes_uploaded") or 0) for x in r.results)
    unchanged = all(x.get("result") == "unchanged" for x in r.results)
    return bool(r.walls) and statistics.median(r.walls) <= 0.2 and uploaded == 0 and unchanged


def idle_cell(r: Runs) -> str:
    if not r.walls:
        return "-"
    uploaded = sum(int(x.get("bytes_uploaded") or 0) for x in r.results)
    spread = f"{secs(min(r.walls))}-{secs(max(r.walls))}, {len(r.walls)} runs"
    read = max(int(x.get("hashed_bytes") or 0) for x in r.results)
    copied = sorted({c for x in r.results for c in x.get("copied") or []})
    seen = f"; read up to {read / 1024:.0f} KiB" if read else ""
    seen += f", copied {', '.join(copied)}" if copied else ""
    return f"{secs(statistics.median(r.walls))} ({spread}), {uploaded} B uploaded{seen}{' ✓' if idle_ok(r) else ' ✗'}"


def steps_text(r: Runs) -> str:
    st = r.steps()
    return ", ".join(f"{k} {secs(v)}" for k, v in st.items() if v >= 0.0005) or "-"


def step_rows(cases: list[Case], pick: Callable[[Way], Runs]) -> list[list[str]]:
    rows = []
    for c in cases:
        for w in WAYS:
            if w in c.ways and pick(c.ways[w]).results:
                runs = pick(c.ways[w])
                inside = statistics.median(runs.inside())
                wall = statistics.median(runs.walls)
                rows.append(
                    [
                        c.label,
                        c.store,
                        w,
                        secs(wall),
                        secs(inside),
                        secs(max(0.0, wall - inside)),
                        steps_text(runs),
                    ]
                )
    return rows


def summary(cases: list[Case]) -> list[list[str]]:
    """One row per target and way: met or not, with the figure."""
    rows: list[list[str]] = []

    def add(target: str, figures: list[tuple[str, bool]]) -> None:
        met = [f for f, ok in figures if ok]
        missed = [f for f, ok in figures if not ok]
        rows.append([target, "; ".join(met) or "-", "; ".join(missed) or "-"])

    for w in WAYS:
        add(
            f"full snapshot <= 1/3 of the original (1/2 on 20k files), {w}",
            [
                (f"{c.label}, {c.store} {c.ways[w].full.ratio:.2f}x", c.ways[w].full.ratio <= c.target)  # type: ignore[union-attr]
                for c in cases
                if w in c.ways and c.ways[w].full is not None
            ],
        )
    add(
        "packed size never larger than the original's",
        [(f"{c.label}, {c.store}", c.packed <= c.original_packed) for c in cases],
    )
    for w in WAYS:
        for path, pick in (("idle", lambda x: x.idle), ("after a touch", lambda x: x.touched)):
            add(
                f"unchanged <= 0.2 s and 0 bytes, {path}, {w}",
                [
                    (
                        f"{c.label}, {c.store} {secs(statistics.median(pick(c.ways[w]).walls))}",
                        idle_ok(pick(c.ways[w])),
                    )
                    for c in cases
                    if w in c.ways and pick(c.ways[w]).walls
                ],
            )
    for w in WAYS:
        add(
            f"restore <= 1.3x the floor, {w}",
            [
                (f"{c.label}, {c.store} {c.ways[w].restore.ratio:.2f}x", c.ways[w].restore.ratio <= 1.3)  # type: ignore[union-attr]
                for c in cases
                if w in c.ways and c.ways[w].restore is not None
            ],
        )
    return rows


def report(cases: list[Case]) -> None:
    print("## Snapshots and restore (`bench/bench_snapshots.py`)\n")
    print(
        "Generated Hermes homes (`bench/homes.py`: Hermes' own `state.db` schema with its full-text "
        "indexes): a used agent at 50 and 500 MB, 20,000 files of 2 KB, one 50 MB database with its "
        "newest transactions in a WAL held open. flared packs exactly the original's content "
        "(`snapshots.exclude: []`). Three ways to ask: in-process (the snapshot service as the daemon "
        "runs it), `flared` with no daemon, `flared` with `flared up` running a real gateway; `flared` "
        "rows are the wall clock of the process as the user waits. Each cell: flared's median time, "
        "then the median of the per-pair ratios to the baseline of the same rounds (min-max, pairs), "
        "✓/✗ against the target. Each round runs the baseline, then every way once.\n"
    )
    print("### Targets\n")
    print(table(["target", "met", "not met"], summary(cases)))
    print("\n### Full snapshot after a change, vs the original (mksquashfs gzip + one upload)\n")
    rows = []
    for c in cases:
        packed = f"{mib(c.packed)} vs {mib(c.original_packed)}" + (
            " ✓" if c.packed <= c.original_packed else " ✗"
        )
        original = secs(statistics.median(c.original)) if c.original else "-"
        ways = [cell(c.ways[w].full if w in c.ways else None, c.target) for w in WAYS]
        rows.append([f"{c.label} ({mib(c.raw)})", c.store, original, *ways, packed, f"<= {c.target:.2f}x"])
    print(table(["home", "store", "original", *WAYS, "packed: flared vs original", "target"], rows))
    colds = [
        f"{c.label}, {c.store}: {cell(c.ways['in-process'].cold, c.target)}"
        for c in cases
        if "in-process" in c.ways and c.ways["in-process"].cold
    ]
    if colds:
        print(
            "\nThe same with nothing cached (a first snapshot, or a lost cache: every file hashed, every "
            "database copied), in-process: " + "; ".join(colds) + ".\n"
        )
    print(
        "Where the time goes (median per step; `outside` is the wall clock minus flared's own timer: "
        "for `flared` rows the CLI's start-up and imports, loading the config and, with a daemon, the "
        "socket, i.e. the part spent before the request reaches the daemon):\n"
    )
    head = ["home", "store", "way", "as the user waits", "flared's pipeline", "outside it", "steps"]
    print(table(head, step_rows(cases, lambda w: w.full_runs)))

    print("\n### Unchanged snapshot (nothing uploaded)\n")
    rows = []
    for c in cases:
        for w in WAYS:
            if w in c.ways:
                rows.append([c.label, c.store, w, idle_cell(c.ways[w].idle), idle_cell(c.ways[w].touched)])
    print(
        table(
            [
                "home",
                "store",
                "way",
                "idle (stat fingerprint)",
                "after a touch (content path, cached hashes)",
            ],
            rows,
        )
    )
    print(
        "\nTarget: <= 0.2 s as the user waits and 0 bytes, on both paths (the original uploads everything every time).\n"
    )

    print("### Restore vs the floor (one copy/GET of the blob + unsquashfs, same rounds)\n")
    rows = []
    for c in cases:
        floor = secs(statistics.median(c.floor)) if c.floor else "-"
        rows.append(
            [c.label, c.store, floor, *[cell(c.ways[w].restore if w in c.ways else None, 1.3) for w in WAYS]]
        )
    print(table(["home", "store", "floor", *WAYS], rows))
    print(
        "\nTarget: <= 1.3x the floor. Where the time goes (median per step; with a daemon `stop` is the gateway's):\n"
    )
    print(table(head, step_rows(cases, lambda w: w.restore_runs)))


def main() -> None:
    keys = chosen("BENCH_SNAPSHOT_HOMES", "agent50,small,wal" if quick() else "agent50,agent500,small,wal")
    stores = chosen("BENCH_SNAPSHOT_STORES", "file,s3")
    daemon = os.environ.get("BENCH_SNAPSHOT_DAEMON", "1") != "0"
    ways = chosen("BENCH_SNAPSHOT_WAYS", "offline,daemon")
    server = MotoServer().start() if "s3" in stores else None
    cases: list[Case] = []
    try:
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmpdir:
            tmp = Path(tmpdir)
            for key in keys:
                label, generate, target = HOMES[key]
                template = tmp / f"template-{key}"
                log(f"generating {label}...")
                generate(template)
                raw = homes.du(template)
                for kind in stores:
                    log(f"{label} on {kind}:")
                    case = Case(key, label, kind, raw, target)
                    if "offline" in ways:
                        offline_phase(
                            case,
                            key,
                            template,
                            make_store(kind, server, tmp / f"store-off-{key}-{kind}"),
                            tmp,
                        )
                    # With a daemon the store is reached as in-process: its rows are on the file store.
                    if daemon and "daemon" in ways and kind == "file" and key != "agent500":
                        daemon_phase(
                            case, key, template, make_store(kind, server, tmp / f"store-up-{key}-{kind}"), tmp
                        )
                    cases.append(case)
                shutil.rmtree(template)
    finally:
        if server is not None:
            server.stop()
    report(cases)


if __name__ == "__main__":
    main()
