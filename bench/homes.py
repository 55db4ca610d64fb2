"""Generated Hermes homes for the snapshot benchmarks: three shapes a used agent can have.

- :func:`agent_home`: the proportions of a used agent (Hermes' own `state.db` schema with
  its full-text indexes and thousands of messages, memories, skills, session logs,
  gateway logs, cached images);
- :func:`small_files_home`: 20,000 files of 2 KB (skills and notes), little else;
- :func:`wal_home`: one large `state.db` whose newest transactions sit in its WAL, held
  open by a writer process as a running gateway holds it.

Text is real text with real entropy (lines of the standard library's sources), and every
file is made older than the racy window, as in a home that has been around.
"""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
import sysconfig
import time
from pathlib import Path


def _corpus() -> list[str]:
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


def hermes_db(path: Path) -> None:
    """An empty `state.db` exactly as Hermes creates it (schema, FTS indexes and triggers, WAL)."""
    code = (
        "import sys; from pathlib import Path; import hermes_state; "
        "hermes_state.SessionDB(db_path=Path(sys.argv[1])).close()"
    )
    env = {**os.environ, "HERMES_HOME": str(path.parent)}
    subprocess.run([sys.executable, "-c", code, str(path)], check=True, env=env)


def add_messages(db: sqlite3.Connection, rng: random.Random, sessions: int, messages: int) -> None:
    now = time.time()
    db.executemany(
        "INSERT OR IGNORE INTO sessions(id, source, title, started_at) VALUES (?, 'slack', ?, ?)",
        ((f"s{s}", sentence(rng, 6), now) for s in range(sessions)),
    )
    db.executemany(
        "INSERT INTO messages(session_id, role, content, timestamp) VALUES (?, ?, ?, ?)",
        (
            (
                f"s{rng.randrange(sessions)}",
                rng.choice(["user", "assistant", "tool"]),
                " ".join(sentence(rng, rng.randint(8, 40)) for _ in range(rng.randint(1, 6))),
                now,
            )
            for _ in range(messages)
        ),
    )


def age(home: Path, seconds: float = 3600) -> None:
    past = time.time() - seconds
    for p in [home, *home.rglob("*")]:
        os.utime(p, (past, past), follow_symlinks=False)


def _common(home: Path, rng: random.Random) -> None:
    (home / "memories").mkdir(parents=True, exist_ok=True)
    (home / "memories" / "MEMORY.md").write_text("\n".join(sentence(rng, 12) for _ in range(200)))
    (home / "memories" / "USER.md").write_text("\n".join(sentence(rng, 10) for _ in range(80)))
    (home / "config.yaml").write_text("model:\n  default: test\n")
    (home / "cron").mkdir(exist_ok=True)
    (home / "cron" / "jobs.json").write_text("[]")


def agent_home(home: Path, mb: int) -> None:
    """A Hermes home with the proportions of a used agent, about `mb` MB on disk."""
    rng = random.Random(mb)
    scale = mb / 35  # these proportions give ~35 MB at scale 1
    home.mkdir(parents=True)
    hermes_db(home / "state.db")
    db = sqlite3.connect(home / "state.db")
    add_messages(db, rng, int(300 * scale), int(3_000 * scale))
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    _common(home, rng)
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
        (cache / f"img-{i}.png").write_bytes(rng.randbytes(500 * 1024))  # already compressed
    age(home)


def small_files_home(home: Path, files: int = 20_000, size: int = 2048) -> None:
    """`files` files of exactly `size` bytes in 100 directories, a small state.db, memories."""
    rng = random.Random(files)
    home.mkdir(parents=True)
    hermes_db(home / "state.db")
    db = sqlite3.connect(home / "state.db")
    add_messages(db, rng, 20, 200)
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    _common(home, rng)
    per_dir = max(1, files // 100)
    for i in range(files):
        d = home / "notes" / f"d{i // per_dir:03d}"
        if i % per_dir == 0:
            d.mkdir(parents=True)
        text = sentence(rng, 400).encode()
        (d / f"note-{i:05d}.md").write_bytes((text * (size // len(text) + 1))[:size])
    age(home)


WAL_HOLDER = r"""
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("PRAGMA journal_mode=WAL")
db.execute("PRAGMA wal_autocheckpoint=0")  # the newest transactions stay in the WAL
print("ready", flush=True)
sys.stdin.read()  # hold the database open until the benchmark ends
"""


def wal_home(home: Path, mb: int) -> None:
    """One large state.db (about `mb` MB) and little else; run :func:`hold_wal` to keep a WAL."""
    rng = random.Random(mb + 7)
    home.mkdir(parents=True)
    hermes_db(home / "state.db")
    db = sqlite3.connect(home / "state.db")
    add_messages(db, rng, int(400 * mb / 50), int(10_500 * mb / 50))
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()
    _common(home, rng)
    age(home)


def hold_wal(db_path: Path, rows: int = 400) -> subprocess.Popen[str]:
    """A process that holds `db_path` open with `rows` messages in its WAL (not checkpointed)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WAL_HOLDER, str(db_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    db = sqlite3.connect(db_path, isolation_level=None)
    db.execute("PRAGMA wal_autocheckpoint=0")
    db.execute("BEGIN")
    add_messages(db, random.Random(rows), 10, rows)
    db.execute("COMMIT")
    db.close()  # not the last connection: the WAL stays, as under a running gateway
    return proc


def change(home: Path, n: int) -> None:
    """What an agent does between two snapshots: a message into state.db, a memory edit."""
    db = sqlite3.connect(home / "state.db", isolation_level=None)
    db.execute(
        "INSERT INTO messages(session_id, role, content, timestamp) VALUES ('s0', 'user', ?, ?)",
        (f"message {n}: {sentence(random.Random(n), 30)}", time.time()),
    )
    db.close()
    with (home / "memories" / "MEMORY.md").open("a") as f:
        f.write(f"\nremembered {n}\n")


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
