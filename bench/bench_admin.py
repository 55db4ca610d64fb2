"""The admin page: its weight, and how long until the first bot shows after the page loads.

A real `flared up` with one bot (api_server, no Slack), Debian's headless
Chromium driven by playwright. Each pair: the baseline, `flared status --json`
(the same facts in a terminal, as the user waits for the process), then a new
browser tab opening the page with a signed-in session until the bot's card
shows its state. Prints one markdown section (see bench/run.py).
"""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import ROOT, interleave, machine, pairs_wanted, secs, table

from tests.fixtures.flare import FlareUp, bot

STATIC = ROOT / "flared" / "admin" / "static"


def weight() -> tuple[int, int]:
    """(bytes, gzip -9 bytes) of everything the page loads: its three files."""
    files = [STATIC / n for n in ("index.html", "admin.js", "admin.css")]
    raw = sum(f.stat().st_size for f in files)
    packed = sum(len(gzip.compress(f.read_bytes(), 9)) for f in files)
    return raw, packed


def main() -> int:
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or "/usr/bin/chromium"
    pairs = pairs_wanted(20, 3)
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp, FlareUp(Path(tmp), [bot("hermes")]) as flare:
        flare.wait_running("hermes")
        out = flare.cli("admin", "--json")
        link = json.loads(out.stdout)["link"]
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
            first = browser.new_page()
            first.goto(link)  # signs in; the session is copied into every new tab below
            first.locator('[data-bot="hermes"]').wait_for()
            session = first.evaluate("sessionStorage.getItem('hermes-flare-admin')")
            if not session:
                raise SystemExit("bench_admin: the page kept no session token")
            base = link.split("#", 1)[0]
            context = browser.new_context()
            context.add_init_script(f"sessionStorage.setItem('hermes-flare-admin', {json.dumps(session)})")

            def page_first_bot() -> float:
                page = context.new_page()
                t0 = time.perf_counter()
                page.goto(base)
                page.locator('[data-bot="hermes"] [data-testid="state"]').wait_for()
                elapsed = time.perf_counter() - t0
                page.close()
                return elapsed

            def cli_status() -> float:
                t0 = time.perf_counter()
                subprocess.run(
                    [
                        str(ROOT / ".venv" / "bin" / "flared"),
                        "status",
                        "--json",
                        "-c",
                        str(flare.config_path),
                    ],
                    capture_output=True,
                    check=True,
                )
                return time.perf_counter() - t0

            page_first_bot()  # warm: the browser's first tab of this context
            result = interleave(page_first_bot, cli_status, pairs)
            browser.close()
    raw, packed = weight()
    print("## Admin page (`bench/bench_admin.py`)\n")
    print(f"_Machine: {machine()}; `bench_admin.py` took {time.monotonic() - started:.0f} s_\n")
    print(
        "A real `flared up` with one bot; Debian's headless Chromium. Each pair: `flared status --json` "
        "(the same facts in a terminal), then a new signed-in tab from navigation start until the "
        "bot's card shows its state.\n"
    )
    print(
        table(
            ["measure", "admin page", "baseline", "vs baseline"],
            [
                [
                    "load -> first bot shown",
                    f"{secs(result.a_median)} (min {secs(min(result.a))}, max {secs(max(result.a))})",
                    f"{secs(result.b_median)} (`flared status --json`)",
                    result.spread(),
                ],
                [
                    "page weight (3 files)",
                    f"{raw / 1024:.1f} KiB ({packed / 1024:.1f} KiB gzipped)",
                    "-",
                    "-",
                ],
            ],
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
