"""Shared bench helpers: machine facts, process sampling, markdown tables."""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Sequence
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
