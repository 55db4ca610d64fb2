"""Shared bench helpers: machine facts, process sampling, markdown tables, A/B pairs.

Every comparison is measured interleaved (A B A B …) with :func:`interleave` or
:func:`rounds`, and reported with :meth:`Paired.spread`: the median of the
per-pair ratios, their min and max, and the number of pairs. Each
`bench_<name>.py` prints its own markdown section; `run.py` collects them.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kb = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_kb = int(line.split()[1])
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem_kb / 1024 / 1024:.0f} GiB RAM, "
        f"Python {platform.python_version()}, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC"
    )


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    out = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    out += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(out)


def proc_sample(pid: int) -> tuple[int, float]:
    """(RSS bytes, CPU seconds used so far) of one process, from /proc."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    return rss, cpu


def idle_profile(pid: int, seconds: float, interval: float = 1.0) -> tuple[float, float]:
    """(max RSS MiB, CPU %) of a process over a window."""
    start_rss, start_cpu = proc_sample(pid)
    t0 = time.monotonic()
    peak = start_rss
    while time.monotonic() - t0 < seconds:
        time.sleep(interval)
        rss, _ = proc_sample(pid)
        peak = max(peak, rss)
    _, end_cpu = proc_sample(pid)
    elapsed = time.monotonic() - t0
    return peak / 1024 / 1024, 100 * (end_cpu - start_cpu) / elapsed


def pct(values: Sequence[float], p: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


# ---------------------------------------------------------------------- A/B comparisons


def quick() -> bool:
    """`BENCH_QUICK=1` (or `bench/run.py --quick`): fewer pairs and smaller inputs, for development."""
    return os.environ.get("BENCH_QUICK", "") not in {"", "0"}


def pairs_wanted(default: int, quick_default: int = 2) -> int:
    """How many A/B pairs to run: `BENCH_PAIRS` when set, else the script's default."""
    env = os.environ.get("BENCH_PAIRS")
    if env:
        return max(1, int(env))
    return quick_default if quick() else default


def timed(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call."""
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


@dataclass
class Paired:
    """A measure and its baseline taken A B A B …, so load from other processes hits both alike.

    The figure is the median of the per-pair ratios (measure / baseline), with the
    smallest and largest ratio beside it and the number of pairs.
    """

    a: list[float] = field(default_factory=list)  # the measure
    b: list[float] = field(default_factory=list)  # its baseline, same pair index

    def add(self, a: float, b: float) -> None:
        self.a.append(a)
        self.b.append(b)

    @property
    def n(self) -> int:
        return len(self.a)

    @property
    def ratios(self) -> list[float]:
        return [x / y if y > 0 else float("inf") for x, y in zip(self.a, self.b, strict=True)]

    @property
    def ratio(self) -> float:
        return statistics.median(self.ratios)

    @property
    def a_median(self) -> float:
        return statistics.median(self.a)

    @property
    def b_median(self) -> float:
        return statistics.median(self.b)

    def spread(self, digits: int = 2) -> str:
        """`0.31x (0.28-0.35, 5 pairs)`"""
        r = self.ratios
        return f"{self.ratio:.{digits}f}x ({min(r):.{digits}f}-{max(r):.{digits}f}, {self.n} pairs)"


def interleave(measure: Callable[[], float], baseline: Callable[[], float], pairs: int) -> Paired:
    """Run baseline, measure, baseline, measure … `pairs` times; each callable returns seconds."""
    out = Paired()
    for _ in range(pairs):
        b = baseline()
        a = measure()
        out.add(a, b)
    return out


def rounds(
    baseline: Callable[[], float], measures: dict[str, Callable[[], float]], n: int
) -> dict[str, Paired]:
    """Several measures against one baseline: each round runs the baseline, then each measure once,
    and each measure is paired with its round's baseline (still A B A B for every measure)."""
    out = {name: Paired() for name in measures}
    for _ in range(n):
        b = baseline()
        for name, fn in measures.items():
            out[name].add(fn(), b)
    return out


def secs(seconds: float) -> str:
    """Seconds as people read them: ms below one second."""
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def met(ok: bool) -> str:
    return "met" if ok else "**not met**"
