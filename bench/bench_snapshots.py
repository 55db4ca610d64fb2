"""Snapshot and restore speed, beside the original hermes-flare's method, on one S3 server.

On generated Hermes homes of ~50 MB and ~500 MB (WAL SQLite state.db with
thousands of messages, memories, skills, session logs, gateway logs, cached
images), against moto's S3 server on loopback, all in the same run:

- snapshot: flared (capture, zstd squashfs on all cores, multipart upload,
  verify, manifest, pointer) vs the original (mksquashfs with its default
  gzip, one single PUT, every time) vs `tar | gzip` + one PUT.
  Target: >= 3x faster than the gzip squashfs path, packed size no larger.
- unchanged snapshot: flared with nothing changed. Target <= 0.2 s, 0 bytes
  (the original uploads everything again).
- restore: flared (pointer, manifest, parallel download, sha256, extract,
  swap) vs the floor of the same run (one GET to disk + `unsquashfs` on all
  cores). Target: 50 MB in <= 2 s and <= 1.3x the floor.

`BENCH_SNAPSHOT_SIZES=50` limits the sizes (MB) measured.
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import table

from flared.config.models import SnapshotsConfig, StoreConfig
from flared.snapshots import pipeline
from flared.snapshots import restore as restoring
from flared.snapshots.catalog import Fence
from flared.snapshots.pipeline import SnapshotJob
from flared.snapshots.stores.factory import open_store
from tests.fixtures.s3server import MotoServer

SIZES = [int(s) for s in os.environ.get("BENCH_SNAPSHOT_SIZES", "50,500").split(",")]
REPEAT = int(os.environ.get("BENCH_REPEAT", "3"))


def _corpus() -> list[str]:
    """Real text with real entropy: lines of the standard library's own sources and docs."""
    import sysconfig

    lines: list[str] = []
    for path in sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))[:120]:
        lines += [ln.strip() for ln in path.read_text(errors="replace").splitlines() if len(ln.strip()) > 20]
    return lines


CORPUS = _corpus()


def sentence(rng: random.Random, n: int) -> str:
    """About n words of realistic text."""
    out: list[str] = []
    while len(out) < n:
        out += rng.choice(CORPUS).split()
    return " ".join(out[:n])


def generate_home(home: Path, mb: int) -> None:
    """A Hermes home with the proportions of a used agent."""
    rng = random.Random(mb)
    scale = mb / 35  # these proportions give ~35 MB at scale 1
    home.mkdir(parents=True)
    db = sqlite3.connect(home / "state.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE sessions(id TEXT PRIMARY KEY, title TEXT, started REAL)")
    db.execute(
        "CREATE TABLE messages(id INTEGER PRIMARY KEY, session TEXT, role TEXT, content TEXT, ts REAL)"
    )
    n_messages = int(12_000 * scale)
    for s in range(int(300 * scale)):
        db.execute("INSERT INTO sessions VALUES (?, ?, ?)", (f"s{s}", sentence(rng, 6), time.time()))
    db.executemany(
        "INSERT INTO messages(session, role, content, ts) VALUES (?, ?, ?, ?)",
        (
            (
                f"s{rng.randrange(int(300 * scale))}",
                rng.choice(["user", "assistant", "tool"]),
                " ".join(sentence(rng, rng.randint(8, 40)) for _ in range(rng.randint(1, 12))),
                time.time(),
            )
            for _ in range(n_messages)
        ),
    )
    db.commit()
    db.close()
    (home / "memories").mkdir()
    (home / "memories" / "MEMORY.md").write_text("\n".join(sentence(rng, 12) for _ in range(200)))
    (home / "memories" / "USER.md").write_text("\n".join(sentence(rng, 10) for _ in range(80)))
    for k in range(int(60 * scale)):
        skill = home / "skills" / f"skill-{k}"
        skill.mkdir(parents=True)
        (skill / "SKILL.md").write_text("\n".join(sentence(rng, 14) for _ in range(120)))
        (skill / "helper.py").write_text("\n".join(f"def f{i}():\n    return {i}\n" for i in range(200)))
    sessions = home / "sessions"
    sessions.mkdir()
    for s in range(int(100 * scale)):
        (sessions / f"s{s}.jsonl").write_text(
            "\n".join(f'{{"role": "user", "content": "{sentence(rng, 20)}"}}' for _ in range(60))
        )
    (home / "logs").mkdir()
    with (home / "logs" / "agent.log").open("w") as f:
        for _ in range(int(40_000 * scale)):
            f.write(f"2026-11-24 10:00:00 INFO {sentence(rng, 12)}\n")
    cache = home / "image_cache"
    cache.mkdir()
    for i in range(int(30 * scale)):
        (cache / f"img-{i}.png").write_bytes(os.urandom(500 * 1024))  # already compressed
    (home / "config.yaml").write_text("model:\n  default: test\n")
    (home / "cron").mkdir()
    (home / "cron" / "jobs.json").write_text("[]")
    past = time.time() - 3600  # an agent that has been around: nothing "just written"
    for p in home.rglob("*"):
        os.utime(p, (past, past), follow_symlinks=False)


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def timed(fn: Any) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def best(fn: Any, n: int = REPEAT) -> tuple[float, Any]:
    runs = [timed(fn) for _ in range(n)]
    return min(r[0] for r in runs), runs[-1][1]


ORIGINAL_PACK: list[float] = []


def original_snapshot(server: MotoServer, bucket: str, home: Path, work: Path) -> int:
    """What the original did: mksquashfs with defaults (gzip), then one PUT of the whole blob."""
    blob = work / "orig.sqsh"
    blob.unlink(missing_ok=True)
    t0 = time.perf_counter()
    subprocess.run(["mksquashfs", str(home), str(blob), "-noappend", "-quiet", "-no-progress"], check=True)
    ORIGINAL_PACK.append(time.perf_counter() - t0)
    with blob.open("rb") as f:
        server.client().put_object(Bucket=bucket, Key="orig/data.sqsh", Body=f)
    return blob.stat().st_size


def tar_gzip_snapshot(server: MotoServer, bucket: str, home: Path, work: Path) -> int:
    blob = work / "home.tar.gz"
    with blob.open("wb") as out:
        tar = subprocess.Popen(["tar", "-C", str(home), "-cf", "-", "."], stdout=subprocess.PIPE)
        subprocess.run(["gzip", "-6"], stdin=tar.stdout, stdout=out, check=True)
        tar.wait()
    with blob.open("rb") as f:
        server.client().put_object(Bucket=bucket, Key="tar/home.tar.gz", Body=f)
    return blob.stat().st_size


def floor_restore(server: MotoServer, bucket: str, key: str, work: Path) -> None:
    """One GET to disk, then unsquashfs on all cores: the least a restore can do."""
    blob = work / "floor.sqsh"
    dest = work / "floor-tree"
    shutil.rmtree(dest, ignore_errors=True)
    body = server.client().get_object(Bucket=bucket, Key=key)["Body"]
    with blob.open("wb") as f:
        shutil.copyfileobj(body, f, 8 * 1024 * 1024)
    subprocess.run(
        [
            "unsquashfs",
            "-no-progress",
            "-quiet",
            "-processors",
            str(os.cpu_count()),
            "-d",
            str(dest),
            str(blob),
        ],
        check=True,
    )


def measure(server: MotoServer, mb: int, tmp: Path) -> dict[str, Any]:
    home = tmp / f"home-{mb}"
    generate_home(home, mb)
    raw = du(home)
    work = tmp / f"work-{mb}"
    work.mkdir()
    bucket = server.new_bucket()
    store = open_store(StoreConfig(**server.section(bucket)))
    out: dict[str, Any] = {"mb": mb, "raw": raw}

    def flared_snapshot(policy: SnapshotsConfig, bot: str) -> pipeline.SnapshotResult:
        # A first snapshot each time: a fresh bot prefix, so nothing can be skipped.
        bot_id = f"{bot}-{time.monotonic_ns()}"
        res = pipeline.take_snapshot(
            SnapshotJob(store=store, bot=bot_id, home=home, work=work / "f", policy=policy, fence=Fence(None))
        )
        assert res.result == "ok", res.reason
        res.bot = bot_id
        return res

    same = SnapshotsConfig(exclude=[])  # exactly what the original packs
    default = SnapshotsConfig()  # flared's defaults leave logs and caches out
    out["flared_same"], r_same = best(lambda: flared_snapshot(same, "same"))
    out["flared_same_size"] = r_same.packed_size
    out["flared_same_steps"] = r_same.steps
    out["flared_default"], r_def = best(lambda: flared_snapshot(default, "def"))
    out["flared_default_size"] = r_def.packed_size
    ORIGINAL_PACK.clear()
    out["original"], out["original_size"] = best(lambda: original_snapshot(server, bucket, home, work))
    out["original_pack"] = min(ORIGINAL_PACK)
    out["tar"], out["tar_size"] = best(lambda: tar_gzip_snapshot(server, bucket, home, work))

    # Unchanged: the steady state of an idle agent (fingerprint known), and the digest path.
    fence = r_def.fence
    first_fp = pipeline.take_snapshot(
        SnapshotJob(store=store, bot=r_def.bot, home=home, work=work / "u", policy=default, fence=fence)  # type: ignore[arg-type]
    )
    assert first_fp.result == "unchanged" and first_fp.fingerprint
    out["unchanged_digest"] = first_fp.seconds
    runs = []
    for _ in range(10):
        res = pipeline.take_snapshot(
            SnapshotJob(
                store=store,
                bot=r_def.bot,
                home=home,
                work=work / "u",
                policy=default,
                fence=fence,
                fingerprint=first_fp.fingerprint,  # type: ignore[arg-type]
            )
        )
        assert res.result == "unchanged" and res.bytes_uploaded == 0
        runs.append(res.seconds)
    out["unchanged"] = statistics.median(runs)
    out["unchanged_bytes"] = 0

    # Restore of the same-content snapshot, vs the floor on the same blob.
    target = tmp / f"restore-{mb}" / "home"

    def flared_restore() -> None:
        res = restoring.restore(store, r_same.bot, target, work / "r", key=None)
        assert res.result == "restored", res.error

    out["restore"], _ = best(flared_restore)
    key = f"snapshots/{r_same.bot}/snapshots/{r_same.id}.sqsh"
    out["floor"], _ = best(lambda: floor_restore(server, bucket, key, work))
    shutil.rmtree(home)
    shutil.rmtree(work)
    shutil.rmtree(target.parent)
    return out


def mib(n: float) -> str:
    return f"{n / 1024 / 1024:.1f} MiB"


def main() -> None:
    server = MotoServer().start()
    results = []
    try:
        with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_TMP")) as tmp:
            for mb in SIZES:
                print(f"measuring {mb} MB home...", file=sys.stderr)
                results.append(measure(server, mb, Path(tmp)))
    finally:
        server.stop()
    print("## Snapshots and restore (`bench/bench_snapshots.py`)\n")
    print(
        "Generated Hermes homes (WAL `state.db` with thousands of messages, memories, skills, session "
        "logs, gateway logs, cached images), moto's S3 server on loopback, best of "
        f"{REPEAT} runs. *Same content* packs exactly what the original packs (`exclude: []`); "
        "*defaults* leaves logs and caches out as flared does out of the box.\n"
    )
    rows = []
    for r in results:
        rows += [
            [
                f"{r['mb']} MB ({mib(r['raw'])})",
                "original: mksquashfs gzip + 1 PUT",
                f"{r['original']:.2f} s",
                mib(r["original_size"]),
                "1.0x",
            ],
            [
                "",
                "tar \\| gzip + 1 PUT",
                f"{r['tar']:.2f} s",
                mib(r["tar_size"]),
                f"{r['original'] / r['tar']:.1f}x",
            ],
            [
                "",
                "**flared, same content**",
                f"**{r['flared_same']:.2f} s**",
                mib(r["flared_same_size"]),
                f"**{r['original'] / r['flared_same']:.1f}x**",
            ],
            [
                "",
                "flared, defaults",
                f"{r['flared_default']:.2f} s",
                mib(r["flared_default_size"]),
                f"{r['original'] / r['flared_default']:.1f}x",
            ],
        ]
    print("### Snapshot (first, full upload)\n")
    print(table(["home", "method", "time", "packed", "speed-up vs original"], rows))
    print("\nTarget: >= 3x faster than the original, packed size no larger.\n")
    print(
        "Where flared's time goes (same content, last run): "
        + "; ".join(
            f"{r['mb']} MB: " + ", ".join(f"{k} {v:.2f} s" for k, v in r["flared_same_steps"].items())
            for r in results
        )
        + ". The original's gzip pack alone: "
        + ", ".join(f"{r['mb']} MB {r['original_pack']:.2f} s" for r in results)
        + ". What remains of flared's time is mostly the upload into moto on the same two cores, "
        "which both methods pay. With flared's defaults "
        "(logs and media caches left out) the target is met; with exactly the original's content "
        "it is not, because of that shared upload floor.\n"
    )
    print("### Unchanged snapshot\n")
    print(
        table(
            [
                "home",
                "flared, idle (fingerprint)",
                "flared, digest path",
                "bytes uploaded",
                "original (uploads all)",
            ],
            [
                [
                    f"{r['mb']} MB",
                    f"{r['unchanged'] * 1000:.0f} ms",
                    f"{r['unchanged_digest']:.2f} s",
                    "0",
                    f"{r['original']:.2f} s, {mib(r['original_size'])}",
                ]
                for r in results
            ],
        )
    )
    print(
        "\nTarget: <= 0.2 s and 0 bytes. The digest path runs when a file changed too recently to trust its "
        "stat data (or after a restart); it still uploads nothing.\n"
    )
    print("### Restore\n")
    print(
        table(
            ["home", "flared restore", "floor (1 GET + unsquashfs)", "ratio"],
            [
                [
                    f"{r['mb']} MB",
                    f"{r['restore']:.2f} s",
                    f"{r['floor']:.2f} s",
                    f"{r['restore'] / r['floor']:.2f}x",
                ]
                for r in results
            ],
        )
    )
    print("\nTarget: 50 MB in <= 2 s, and <= 1.3x the floor.")
    print(
        "\nAbove `store.multipart_threshold` (16 MiB) flared downloads with parallel ranged GETs, "
        "one range per worker, which is what pays on R2 over a real network. moto serves each "
        "ranged GET by reading the whole object, so on loopback the parallel path can cost more "
        "than one plain GET; raise `store.multipart_threshold` to prefer single streams."
    )


if __name__ == "__main__":
    main()
