"""Run benchmarks and update docs/benchmarks.md (`make bench`, or `bench/run.py up snapshots`).

Each `bench/bench_<name>.py` prints one markdown section on stdout. This
runner replaces only the sections it ran, between `<!-- bench:NAME -->`
markers, so one area can be re-measured without the others.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, machine

DOC = ROOT / "docs" / "benchmarks.md"
HEAD = (
    "# Benchmarks\n\nMeasured by `make bench` (`bench/run.py`); every figure sits beside a baseline "
    "measured in the same run on the same machine.\n"
)


def available() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in (ROOT / "bench").glob("bench_*.py"))


def replace_section(doc: str, name: str, body: str) -> str:
    block = f"<!-- bench:{name} -->\n{body.strip()}\n<!-- /bench:{name} -->"
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.S)
    if pattern.search(doc):
        return pattern.sub(lambda _: block, doc)
    return doc.rstrip() + "\n\n" + block + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("names", nargs="*", help=f"benchmarks to run (default all: {', '.join(available())})")
    args = parser.parse_args()
    names = args.names or available()
    doc = DOC.read_text() if DOC.exists() else HEAD
    failed = []
    for name in names:
        script = ROOT / "bench" / f"bench_{name}.py"
        if not script.exists():
            print(f"no benchmark named {name!r}; have: {', '.join(available())}", file=sys.stderr)
            return 2
        print(f"==> bench {name}", file=sys.stderr)
        out = subprocess.run([sys.executable, str(script)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        if out.returncode != 0:
            failed.append(name)
            continue
        print(out.stdout)
        doc = replace_section(doc, name, f"_Machine: {machine()}_\n\n" + out.stdout)
    DOC.write_text(doc)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
