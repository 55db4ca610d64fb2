"""Litestream under a real `flared up`: a lost machine costs at most about a second of transactions.

A writer commits numbered transactions into the bot's `state.db` (beside
Hermes' own tables) while the real gateway and the real Litestream run;
the whole process tree is SIGKILLed at a random moment, the state dir is
wiped (the machine and its disk are gone), and a new `flared up` boots
from the store alone.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.fixtures.flare import FlareUp, bot
from tests.fixtures.s3server import store_config

pytestmark = pytest.mark.integration

#: The most a lost machine may cost: Litestream's 1 s sync interval and its 1 s monitor (measured: median
#: 0.5-0.7 s, max 1.6 s in bench/bench_stream.py); the issue's bound for p95 is 2 s.
RPO_BOUND_S = 2.0


class Writer:
    """Commits one numbered row per transaction, ~20 a second, remembering when each committed."""

    def __init__(self, db: Path, table: str = "probe") -> None:
        self.db = db
        self.table = table
        self.commits: list[tuple[int, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Writer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        con = sqlite3.connect(self.db, timeout=10, isolation_level=None)
        con.execute("PRAGMA busy_timeout = 10000")
        con.execute(f"CREATE TABLE IF NOT EXISTS {self.table} (n INTEGER PRIMARY KEY, body TEXT)")
        n = 0
        while not self._stop.is_set():
            n += 1
            con.execute("BEGIN IMMEDIATE")
            con.execute(f"INSERT INTO {self.table} VALUES (?, ?)", (n, f"turn {n} " + "x" * 200))
            con.execute("COMMIT")
            self.commits.append((n, time.time()))
            time.sleep(0.05)
        con.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def _wait_streaming(flare: FlareUp, name: str, db: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stream = flare.bot_status(name).get("stream") or {}
        if any(d["db"] == db and d["state"] == "ok" for d in stream.get("databases") or []):
            return
        time.sleep(0.3)
    raise AssertionError(f"{db} of {name} never streamed:\n{flare.read_logs()}")


def _kill_under_writer(
    tmp_path: Path, flare: FlareUp, seed: int, table: str = "probe"
) -> tuple[list[tuple[int, float]], float]:
    """Write, SIGKILL the whole tree at a random moment; (commits, when it was killed)."""
    rnd = random.Random(seed)
    home = flare.state_dir / "bots" / "a" / "home"
    with Writer(home / "state.db", table) as writer:
        time.sleep(1.0 + rnd.random() * 3.0)
        killed_at = time.time()
        flare.kill_all()
        writer.stop()
    return writer.commits, killed_at


def _check_restored(
    flare: FlareUp, commits: list[tuple[int, float]], killed_at: float, table: str = "probe"
) -> dict[str, Any]:
    db = flare.state_dir / "bots" / "a" / "home" / "state.db"
    con = sqlite3.connect(db)
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        have = {n for (n,) in con.execute(f"SELECT n FROM {table}")}
    finally:
        con.close()
    before_kill = [(n, t) for n, t in commits if t <= killed_at]
    lost = [(n, t) for n, t in before_kill if n not in have]
    assert before_kill, "the writer committed nothing"
    worst = killed_at - min(t for _, t in lost) if lost else 0.0
    assert worst <= RPO_BOUND_S, f"lost {len(lost)} transactions, the oldest {worst:.2f} s before the kill"
    return {"lost": len(lost), "worst_s": worst}


def _boot_from_store(tmp_path: Path, flare: FlareUp) -> None:
    shutil.rmtree(flare.state_dir)  # the machine and its disk are gone: only the store remains
    flare.start()
    flare.wait_running("a", timeout=120)


@pytest.mark.parametrize("store", ["file", "s3"])
def test_kill_9_of_everything_then_a_wiped_disk_loses_at_most_a_second(tmp_path: Path, store: str) -> None:
    # A short fence check: the new writer streams 3 s after its claim (not 11 s), the test is shorter.
    stream = {"every": "1h", "on_change": {"enabled": False}, "stream": {"fence_check": "2s"}}
    sections: dict[str, Any] = {"snapshots": stream}
    with _store_section(store) as section:
        if section is not None:
            sections["store"] = section
        flare = FlareUp(tmp_path, [bot("a")], **sections)
        try:
            flare.start()
            flare.wait_running("a", timeout=120)
            assert flare.cli("snapshot", "--bot", "a").returncode == 0  # the home, without state.db
            # Twice: the second time the databases were themselves restored from the stream
            # and Litestream went on from them.
            for cycle in range(2):
                _wait_streaming(flare, "a", "state.db")
                table = f"probe{cycle}"
                commits, killed_at = _kill_under_writer(tmp_path, flare, len(store) + cycle, table)
                _boot_from_store(tmp_path, flare)
                _check_restored(flare, commits, killed_at, table)
                restore = flare.bot_status("a")["snapshots"]["restore"]
                assert restore["result"] == "restored", restore
        finally:
            flare.stop()


def _store_section(kind: str) -> Any:
    """The store section for `kind`: None for the default file store, moto's S3 server otherwise."""
    if kind == "file":
        return contextlib.nullcontext(None)
    return store_config()


def _streamed(flare: FlareUp) -> list[str]:
    conf = flare.state_dir / "stream" / "litestream.yml"
    data = yaml.safe_load(conf.read_text()) if conf.exists() else {"dbs": []}
    return sorted(Path(d["dir"]).parent.name for d in data["dbs"])


def test_hot_reload_adds_and_removes_a_bots_stream(tmp_path: Path) -> None:
    with FlareUp(tmp_path, [bot("a")]) as flare:
        flare.wait_running("a", timeout=120)
        _wait_streaming(flare, "a", "state.db")
        assert _streamed(flare) == ["a"]
        flare.write_config({**flare.data, "bots": [*flare.data["bots"], bot("b")]})
        flare.wait_running("b", timeout=120)
        _wait_streaming(flare, "b", "state.db")
        assert _streamed(flare) == ["a", "b"]
        assert (tmp_path / "store" / "b" / "stream" / "state.db").is_dir()
        flare.write_config({**flare.data, "bots": flare.data["bots"][:1]})
        deadline = time.monotonic() + 60
        while _streamed(flare) != ["a"] and time.monotonic() < deadline:
            time.sleep(0.3)
        assert _streamed(flare) == ["a"]
        _wait_streaming(flare, "a", "state.db")  # a's stream goes on
