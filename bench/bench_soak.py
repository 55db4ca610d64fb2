"""A bounded soak: one flared under mixed load for ``--minutes`` (default 10).

One real `flared up` with one bot (real supervisord, real Hermes gateway) and,
at the same time:

- exec: ``--exec-threads`` clients looping `POST /exec` across ``--sessions``
  sessions (per-session leases), releasing a lease now and then so leases
  are made and destroyed all along;
- a WAL writer: a SQLite database in the bot's home in WAL mode, one small
  transaction every 10 ms;
- snapshots: `POST /snapshots` every ``--snapshot-every`` seconds (the WAL
  database changes between each, so each takes the full path);
- reloads: every ``--reload-every`` seconds a live edit (`snapshots.every`
  flips between two values), alternately written to the file (the watcher)
  and pushed with `PUT /config`;
- status: `GET /status` every second.

flared's RSS and open fds are printed every ``--sample-every`` seconds and
every error as it happens. Targets: no error, RSS growth <= 10 MB after the
warm-up (the first fifth of the run, at least a minute), no fd growth (no kind
of fd, by :func:`fd_kinds`, whose floor rises: pipes and connections of work in
flight come and go).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sqlite3
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import proc_sample, table

from flared.control.client import ControlClient, ControlError
from tests.fixtures.flare import FlareUp, bot

BOT = "soak"


class Soak:
    def __init__(self, flare: FlareUp, args: argparse.Namespace) -> None:
        self.flare = flare
        self.args = args
        self.sock = flare.state_dir / "flared.sock"
        self.stop = threading.Event()
        self.counts: Counter[str] = Counter()
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.t0 = time.monotonic()
        self.samples: list[tuple[float, float, int]] = []  # (seconds, RSS MiB, fds)
        self.kinds: list[Counter[str]] = []  # the same samples' fds by kind (fd_kinds)
        self.wal_rows = 0

    def client(self) -> ControlClient:
        return ControlClient(self.sock)

    def error(self, what: str, exc: BaseException | str) -> None:
        line = f"[{time.monotonic() - self.t0:7.1f}s] {what}: {exc}"
        with self.lock:
            self.errors.append(line)
        print("ERROR " + line, file=sys.stderr, flush=True)

    def count(self, what: str) -> None:
        with self.lock:
            self.counts[what] += 1

    # ------------------------------------------------------------------ load

    def exec_loop(self, worker: int) -> None:
        client = self.client()
        mine = [s for s in range(self.args.sessions) if s % self.args.exec_threads == worker]
        i = 0
        while not self.stop.is_set():
            # each client has its own sessions: a release never hits another client's command
            session = f"s{mine[i % len(mine)]}"
            i += 1
            try:
                out = client.request(
                    "POST",
                    "/exec",
                    {"bot": BOT, "session": session, "command": f"echo {worker}-{i}"},
                    timeout=120,
                )
                if out.get("exit_code") != 0 or out.get("stdout", "").strip() != f"{worker}-{i}":
                    self.error("exec", f"unexpected result {out}")
                self.count("exec")
                if i % 200 == 0:  # make and destroy leases all along
                    client.request("DELETE", f"/leases/{out['lease']}", timeout=60)
                    self.count("lease released")
            except Exception as exc:
                self.error("exec", exc)
                self.stop.wait(1)

    def wal_writer(self) -> None:
        home = self.flare.state_dir / "bots" / BOT / "home"
        while not home.is_dir() and not self.stop.is_set():
            self.stop.wait(0.2)
        db = sqlite3.connect(home / "soak.db", timeout=30)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, at REAL, pad TEXT)")
        try:
            while not self.stop.wait(0.01):
                try:
                    with db:
                        db.execute("INSERT INTO t (at, pad) VALUES (?, ?)", (time.time(), "x" * 200))
                    self.wal_rows += 1
                except sqlite3.Error as exc:
                    self.error("wal writer", exc)
        finally:
            db.close()

    def snapshots(self) -> None:
        client = self.client()
        while not self.stop.wait(self.args.snapshot_every):
            try:
                out = client.request("POST", "/snapshots", {"bot": BOT}, timeout=300)
                for r in out["results"]:
                    self.count(f"snapshot {r['result']}")
            except ControlError as exc:
                results = exc.body.get("results") if isinstance(exc.body, dict) else None
                self.error("snapshot", results or exc)
            except Exception as exc:
                self.error("snapshot", exc)

    def reloads(self) -> None:
        client = self.client()
        n = 0
        while not self.stop.wait(self.args.reload_every):
            n += 1
            data = dict(self.flare.data)
            data["snapshots"] = {**data["snapshots"], "every": "1h" if n % 2 else "59m"}
            text = yaml.safe_dump(data, sort_keys=False)
            try:
                if n % 2:
                    self.flare.write_config(data)  # the watcher applies it
                    self.count("reload (file)")
                else:
                    out = client.request("PUT", "/config", raw=text.encode(), timeout=120)
                    if not out.get("applied") and not out.get("unchanged"):
                        self.error("PUT /config", out)
                    self.flare.data = data
                    self.count("reload (PUT /config)")
            except Exception as exc:
                self.error("reload", exc)

    def status(self) -> None:
        client = self.client()
        seen_reload = None
        while not self.stop.wait(1):
            try:
                st = client.request("GET", "/status", timeout=30)
                if st["config"].get("error"):
                    self.error("status", f"config error {st['config']['error']}")
                last = st["config"].get("last_reload") or {}
                if last.get("at") != seen_reload and last.get("failures"):
                    self.error("reload failures", last["failures"])
                seen_reload = last.get("at")
                self.count("status")
            except Exception as exc:
                self.error("status", exc)

    # ------------------------------------------------------------------ watching

    def sample(self, pid: int) -> None:
        rss, _ = proc_sample(pid)
        kinds = fd_kinds(pid)
        fds = sum(kinds.values())
        t = time.monotonic() - self.t0
        self.samples.append((t, rss / 2**20, fds))
        self.kinds.append(kinds)
        with self.lock:
            done = self.counts["exec"]
        print(
            f"[{t:7.1f}s] flared RSS {rss / 2**20:6.1f} MiB, fds {fds:3d}, execs {done}, "
            f"errors {len(self.errors)}, load {os.getloadavg()[0]:.2f}; "
            + ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())),
            file=sys.stderr,
            flush=True,
        )


def kind_growth(first: list[Counter[str]], last: list[Counter[str]]) -> Counter[str]:
    """Per kind of fd, how far its floor rose from the first samples to the last (rises only)."""
    kinds = {k for c in first + last for k in c}
    out: Counter[str] = Counter()
    for k in kinds:
        rise = min(c[k] for c in last) - min(c[k] for c in first)
        if rise > 0:
            out[k] = rise
    return out


def fd_kinds(pid: int) -> Counter[str]:
    """A process's open fds by what they are: socket, pipe, or the file's name (to tell a leak)."""
    out: Counter[str] = Counter()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            kind = (
                target.split(":", 1)[0] if target.startswith(("socket:", "pipe:", "anon_inode:")) else target
            )
            out[Path(kind).name if kind.startswith("/") else kind] += 1
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="how long to run (default 10)")
    p.add_argument("--exec-threads", type=int, default=2, help="concurrent exec clients (default 2)")
    p.add_argument("--sessions", type=int, default=6, help="sessions they spread over (default 6)")
    p.add_argument("--snapshot-every", type=float, default=3.0, help="seconds (default 3)")
    p.add_argument("--reload-every", type=float, default=5.0, help="seconds (default 5)")
    p.add_argument("--sample-every", type=float, default=10.0, help="seconds (default 10)")
    args = p.parse_args()
    seconds = args.minutes * 60
    warmup = min(max(60.0, seconds / 5), seconds / 2)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        sandboxes = {"default": {"mode": "per-session", "max_leases": args.sessions + 2}}
        with FlareUp(tmp, [bot(BOT)], sandboxes=sandboxes) as flare:
            flare.wait_running(BOT, timeout=180)
            pid = int(flare.status()["flared"]["pid"])
            soak = Soak(flare, args)
            threads = [threading.Thread(target=soak.exec_loop, args=(i,)) for i in range(args.exec_threads)]
            threads += [threading.Thread(target=f) for f in (soak.wal_writer, soak.snapshots, soak.reloads)]
            threads.append(threading.Thread(target=soak.status))
            for t in threads:
                t.start()
            try:
                while time.monotonic() - soak.t0 < seconds:
                    soak.sample(pid)
                    time.sleep(min(args.sample_every, max(0.0, seconds - (time.monotonic() - soak.t0))))
                soak.sample(pid)
            finally:
                soak.stop.set()
                for t in threads:
                    t.join(180)
            gateway_ok = flare.bot_status(BOT)["state"] == "RUNNING"
            with contextlib.suppress(Exception):
                flare.stop()
    load_after = os.getloadavg()
    return report(soak, args, warmup, gateway_ok, load_before, load_after)


def report(
    soak: Soak,
    args: argparse.Namespace,
    warmup: float,
    gateway_ok: bool,
    load_before: tuple[float, float, float],
    load_after: tuple[float, float, float],
) -> int:
    start = next((i for i, s in enumerate(soak.samples) if s[0] >= warmup), len(soak.samples) - 1)
    after, after_kinds = soak.samples[start:], soak.kinds[start:]
    quarter = max(1, len(after) // 4)  # medians of the first and last quarter: one sample can catch a spike
    first, last = after[:quarter], after[-quarter:]
    base_rss, end_rss = statistics.median(x[1] for x in first), statistics.median(x[1] for x in last)
    # fds come and go with work in flight (an exec's pipes, connections): a leak shows as a kind of
    # fd (sockets, pipes, one file's name) whose floor rises from the first quarter to the last
    base_fds, end_fds = min(x[2] for x in first), min(x[2] for x in last)
    grown = kind_growth(after_kinds[:quarter], after_kinds[-quarter:])
    fd_growth = sum(grown.values())
    peak_rss = max(x[1] for x in after)
    growth = end_rss - base_rss
    fds_seen = sorted({x[2] for x in after})
    seconds = soak.samples[-1][0]
    print("## Soak (`bench/bench_soak.py`)\n")
    print(
        f"{args.minutes:g} minutes of mixed load on one flared with one bot (real supervisord and Hermes "
        f"gateway): {args.exec_threads} exec clients over {args.sessions} sessions, a WAL writer in the bot's "
        f"home (a transaction every 10 ms), a snapshot every {args.snapshot_every:g} s, a live reload every "
        f"{args.reload_every:g} s (file and `PUT /config` in turn), `GET /status` every second. Load average "
        f"{load_before[0]:.2f} before, {load_after[0]:.2f} after (a shared 2-core machine). Warm-up: the first "
        f"{warmup:.0f} s.\n"
    )
    c = soak.counts
    snaps = {k.removeprefix("snapshot "): v for k, v in c.items() if k.startswith("snapshot ")}
    rows = [
        [
            "exec calls",
            f"{c['exec']} ({c['exec'] / seconds:.0f}/s), {c['lease released']} leases released",
            "-",
        ],
        ["snapshots", ", ".join(f"{v} {k}" for k, v in sorted(snaps.items())) or "0", "-"],
        ["WAL writer transactions", str(soak.wal_rows), "-"],
        ["reloads", f"{c['reload (file)']} by file, {c['reload (PUT /config)']} by `PUT /config`", "-"],
        ["status polls", str(c["status"]), "-"],
        ["errors", str(len(soak.errors)), "0"],
        [
            "flared RSS, first -> last quarter after warm-up (medians; peak)",
            f"{base_rss:.1f} -> {end_rss:.1f} MiB (peak {peak_rss:.1f}); growth {growth:+.1f} MiB",
            "<= 10 MB",
        ],
        [
            "flared open fds, first -> last quarter after warm-up (floor; range)",
            f"{base_fds} -> {end_fds} ({fds_seen[0]}-{fds_seen[-1]} with work in flight)",
            "-",
        ],
        [
            "fds of a kind whose floor rose (sockets, pipes, each file by name)",
            ", ".join(f"{k} +{n}" for k, n in sorted(grown.items())) or "none",
            "none",
        ],
        ["gateway still RUNNING at the end", "yes" if gateway_ok else "NO", "yes"],
    ]
    print(table(["measure", "result", "target"], rows))
    print(f"\n{len(after)} samples after warm-up, {quarter} per quarter.")
    print("\nflared over time:\n")
    step = max(1, len(soak.samples) // 12)
    shown = soak.samples[::step] + ([soak.samples[-1]] if (len(soak.samples) - 1) % step else [])
    print(table(["time", "RSS", "open fds"], [[f"{t:.0f} s", f"{r:.1f} MiB", f] for t, r, f in shown]))
    if soak.errors:
        print("\nErrors:\n")
        for e in soak.errors[:50]:
            print(f"- {e}")
    met = not soak.errors and growth <= 10 * 1.048576 and fd_growth <= 0 and gateway_ok
    print(
        f"\nVerdict: {'meets' if met else 'misses'} the targets (no error, RSS growth <= 10 MB, no fd growth)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
