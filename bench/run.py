"""Run the benchmarks and write docs/benchmarks.md (`make bench`, or `bench/run.py snapshots`).

Every `bench/bench_<name>.py` is a benchmark: it prints one markdown section
on stdout (progress goes to stderr) and exits 0. A new script slots in by
existing. With no names, every script runs and the document is written anew
from this run alone (a script that fails gets a section saying so, never an
old figure). With names, only those sections are replaced, between
`<!-- bench:NAME -->` markers.

`--quick` (or BENCH_QUICK=1) asks every script for fewer pairs and smaller
inputs: for development, never for the published figures.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine

DOC = ROOT / "docs" / "benchmarks.md"
HEAD = """# Benchmarks

Measured by `make bench` (`bench/run.py`), which runs every `bench/bench_*.py`
and writes each one's section below, all from the same run on the same
machine. Comparisons are measured interleaved (A B A B …) with
`bench/common.py`; such a figure is the median of the per-pair ratios, with
the smallest and largest ratio and the number of pairs beside it. Commands
are timed as the user waits (the wall clock of the `flared` process) and
in-process, side by side. Each section says how it was measured.
"""
#: A script that runs longer than this is stopped (its section says so).
TIMEOUT = float(os.environ.get("BENCH_TIMEOUT", "1800"))


def available() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in (ROOT / "bench").glob("bench_*.py"))


def block(name: str, body: str) -> str:
    return f"<!-- bench:{name} -->\n{body.strip()}\n<!-- /bench:{name} -->"


def replace_section(doc: str, name: str, body: str) -> str:
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    if pattern.search(doc):
        return pattern.sub(lambda _: block(name, body), doc)
    return doc.rstrip() + "\n\n" + block(name, body) + "\n"


def run_one(name: str) -> tuple[bool, str, float]:
    """(ok, markdown, seconds) of one script; stderr passes through as progress."""
    script = ROOT / "bench" / f"bench_{name}.py"
    started = time.monotonic()
    try:
        out = subprocess.run(
            [sys.executable, str(script)], cwd=ROOT, stdout=subprocess.PIPE, text=True, timeout=TIMEOUT
        )
    except subprocess.TimeoutExpired:
        return False, f"stopped after {TIMEOUT:.0f} s", time.monotonic() - started
    took = time.monotonic() - started
    if out.returncode != 0:
        return False, f"exited with {out.returncode}", took
    return True, out.stdout, took


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default all: {', '.join(available())})")
    parser.add_argument("--quick", action="store_true", help="fewer pairs, smaller inputs (development)")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args()
    if args.list:
        print("\n".join(available()))
        return 0
    if args.quick:
        os.environ["BENCH_QUICK"] = "1"
    unknown = [n for n in args.names if n not in available()]
    if unknown:
        print(f"no benchmark named {', '.join(unknown)}; have: {', '.join(available())}", file=sys.stderr)
        return 2
    everything = not args.names
    names = args.names or available()
    doc = HEAD if everything else (DOC.read_text() if DOC.exists() else HEAD)
    failed = []
    started = time.monotonic()
    for name in names:
        print(f"==> bench {name}", file=sys.stderr, flush=True)
        ok, body, took = run_one(name)
        print(f"<== bench {name}: {'ok' if ok else 'FAILED'} in {took:.0f} s", file=sys.stderr, flush=True)
        stamp = f"_Machine: {machine()}; `bench_{name}.py` took {took:.0f} s"
        stamp += " (quick run: not for publication)_" if args.quick else "_"
        if ok:
            print(body)
            first, _, rest = body.strip().partition("\n")
            text = f"{first}\n\n{stamp}\n{rest}" if first.startswith("#") else f"{stamp}\n\n{body}"
            doc = replace_section(doc, name, text)
        else:
            failed.append(name)
            doc = replace_section(
                doc, name, f"## `bench_{name}.py`\n\n{stamp}\n\nNo figures: the script {body}."
            )
    DOC.write_text(doc.rstrip() + "\n")
    print(
        f"all benchmarks: {time.monotonic() - started:.0f} s; wrote {DOC.relative_to(ROOT)}", file=sys.stderr
    )
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
