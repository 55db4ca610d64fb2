"""The CLI as the user waits for it: wall clock of `flared ...` processes against a running daemon.

Each command runs as the user types it (the `flared` console script, a new
process every time) against a real `flared up` with one bot, interleaved
with its baseline (A B A B ...), so load from other processes hits both
alike. The figure is the median of the per-pair values, with min and max
and the number of pairs:

- `flared status --json` beside `python -c pass` (the interpreter's own
  start, the floor of any Python CLI). Target: <= 120 ms.
- `flared exec -- true` beside raw bubblewrap: the very bwrap command line
  the local provider builds, run directly. Target: <= 100 ms + raw.
- `flared status` (text) and `flared --help`, for reference.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import table

from flared.config.models import SandboxProfile
from flared.sandboxes.providers.local import LocalProvider, sandbox_root
from flared.sandboxes.types import ExecRequest
from tests.fixtures.flare import FlareUp, bot

PAIRS = int(os.environ.get("BENCH_CLI_PAIRS", "40"))
FLARED = str(Path(sys.executable).parent / "flared")


def wall(argv: list[str], **kw: Any) -> Callable[[], float]:
    def run() -> float:
        t = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
        return time.perf_counter() - t

    return run


def pairs(a: Callable[[], float], b: Callable[[], float], n: int = PAIRS) -> list[tuple[float, float]]:
    """``n`` interleaved (a, b) timings after one warm-up of each."""
    a()
    b()
    return [(a(), b()) for _ in range(n)]


def ms(x: float) -> str:
    return f"{x * 1000:.0f}"


def row_against_floor(what: str, got: list[tuple[float, float]], target: str) -> list[str]:
    a = [p[0] for p in got]
    ratios = [x / y for x, y in got]
    return [
        what,
        f"{ms(statistics.median(a))} ms (min {ms(min(a))}, max {ms(max(a))})",
        f"{ms(statistics.median(p[1] for p in got))} ms",
        f"{statistics.median(ratios):.2f}x (min {min(ratios):.2f}, max {max(ratios):.2f})",
        str(len(got)),
        target,
    ]


def main() -> None:
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        flare = FlareUp(tmp, [bot("bench")])
        flare.start()
        try:
            flare.wait_running("bench")
            cfg = ["-c", str(flare.config_path)]
            floor = wall([sys.executable, "-c", "pass"])

            got = pairs(wall([FLARED, "status", "--json", *cfg]), floor)
            rows.append(row_against_floor("`flared status --json`", got, "<= 120 ms"))

            raw_provider = LocalProvider(sandbox_root(tmp / "raw"))
            raw_id = "fl-default-rawbaseline0"
            raw_data = raw_provider.create(raw_id, SandboxProfile())
            argv = raw_provider.argv(raw_id, SandboxProfile(), ExecRequest(command="true", cwd="/workspace"))
            uid = int(raw_data.get("uid", os.getuid()))
            as_lease: dict[str, Any] = (
                {"user": uid, "group": uid, "extra_groups": []} if os.geteuid() == 0 else {}
            )
            raw = wall(argv, **as_lease)
            got = pairs(wall([FLARED, "exec", *cfg, "--", "true"]), raw)
            extra = [x - y for x, y in got]
            a = [p[0] for p in got]
            rows.append(
                [
                    "`flared exec -- true`",
                    f"{ms(statistics.median(a))} ms (min {ms(min(a))}, max {ms(max(a))})",
                    f"raw bwrap {ms(statistics.median(p[1] for p in got))} ms",
                    f"+{ms(statistics.median(extra))} ms over raw (min +{ms(min(extra))}, max +{ms(max(extra))})",
                    str(len(got)),
                    "<= raw + 100 ms",
                ]
            )
            raw_provider.destroy(raw_id, raw_data)

            got = pairs(wall([FLARED, "status", *cfg]), floor)
            rows.append(row_against_floor("`flared status` (text)", got, "-"))
            got = pairs(wall([FLARED, "--help"]), floor)
            rows.append(row_against_floor("`flared --help`", got, "-"))
            no_pyc = {
                **os.environ,
                "PYTHONPYCACHEPREFIX": str(tmp / "no-pyc"),
                "PYTHONDONTWRITEBYTECODE": "1",
            }
            got = pairs(
                wall([FLARED, "status", "--json", *cfg], env=no_pyc), wall([FLARED, "status", "--json", *cfg])
            )
            rows.append(row_against_floor("`flared status --json`, no compiled bytecode", got, "-"))
        finally:
            flare.stop()

    print("## CLI start-up (`bench/bench_cli.py`)\n")
    print(
        "Wall clock of each `flared` process as the user runs it, against a running daemon with one bot, "
        "interleaved with its baseline; figures are medians of the pairs (min, max).\n"
    )
    print(table(["command", "wall clock", "baseline", "vs baseline", "pairs", "target"], rows))
    print(
        "\nBaselines: `python -c pass` (the interpreter's own start), raw bubblewrap (the provider's "
        "command line run directly)."
    )


if __name__ == "__main__":
    main()
