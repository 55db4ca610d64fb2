"""A transcript of the README's local quick start, run as a new user would (issue 15).

`make up` in the background from the repository root, with the README's own
`hermes-flare.yaml` and a local OpenAI-compatible model (tests/fakes); then
every command of the quick start's "In another terminal" block, parsed from
README.md, in order; then Ctrl-C. Each step asserts on what the user sees.
Only the state dir, the store, the API port and the model come from the
environment (as the README's "Models" table and `FLARE_*` overrides allow),
so the run is fresh and leaves the checkout alone.

When the README's commands change, this test changes with them: a command it
has no expectation for fails it.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.fakes import llm_server as llm
from tests.fakes.llm_server import FakeLLM
from tests.fixtures.flare import ROOT, free_port, session_pids

pytestmark = pytest.mark.e2e

REPLY = "Hello! I am the bot from the README."


def quick_start(readme: str) -> tuple[list[str], list[list[str]]]:
    """(the first block's commands, the "In another terminal" block's argv lists)."""
    section = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert len(blocks) >= 2, "the quick start lost a code block"

    def commands(block: str) -> list[str]:
        return [ln.split("#", 1)[0].strip() for ln in block.splitlines() if ln.split("#", 1)[0].strip()]

    assert "In another terminal" in section.split(blocks[1])[0].rsplit("```", 1)[0][-200:]
    return commands(blocks[0]), [shlex.split(c) for c in commands(blocks[1])]


def check_status(out: subprocess.CompletedProcess[str], port: int) -> None:
    row = next(ln for ln in out.stdout.splitlines() if ln.startswith("hermes "))
    assert row.split()[1] == "ready", out.stdout
    assert f"http://127.0.0.1:{port}/v1" in row
    assert "started fresh: the store held no snapshot" in out.stdout


def check_chat(out: subprocess.CompletedProcess[str], port: int) -> None:
    assert out.stdout == REPLY + "\n"
    assert re.search(r"\(continue with --session cli-\S+\)", out.stderr)


def check_snapshot(out: subprocess.CompletedProcess[str], port: int) -> None:
    assert re.fullmatch(
        r"hermes: snapshot \S+: [\d.]+ (B|KiB|MiB) uploaded \(\d+ files, [\d.]+ \w+ raw\) in [\d.]+ s\n",
        out.stdout,
    ), out.stdout


def check_exec(out: subprocess.CompletedProcess[str], port: int) -> None:
    assert re.fullmatch(r"\w[\w-]*\n", out.stdout), out.stdout  # whoami: the sandbox's user


def check_logs(out: subprocess.CompletedProcess[str], port: int) -> None:
    assert "==> flared: " in out.stdout and "==> gateway-hermes: " in out.stdout
    assert "bot hermes: state ready, starting its gateway" in out.stdout


def check_admin(out: subprocess.CompletedProcess[str], port: int) -> None:
    assert re.search(r"^admin page: http://127\.0\.0\.1:\d+/admin/#token=[\w-]{20,}$", out.stdout, re.M), (
        out.stdout
    )


EXPECT: dict[str, Any] = {
    "status": check_status,
    "chat": check_chat,
    "snapshot": check_snapshot,
    "exec": check_exec,
    "logs": check_logs,
    "admin": check_admin,
}


def test_the_readme_quick_start(tmp_path: Path) -> None:
    first, later = quick_start((ROOT / "README.md").read_text())
    assert first[0] == "make up"
    for argv in later:
        assert argv[0] == ".venv/bin/flared", argv
        assert argv[1] in EXPECT, (
            f"the README shows `{' '.join(argv)}`: add what the user should see to EXPECT"
        )

    port = free_port()
    with FakeLLM(models=("fake-model",), default=llm.text(REPLY)) as fake:
        env = {
            **os.environ,
            "FLARE_STATE_DIR": str(tmp_path / "state"),
            "FLARE_STORE__URL": f"file://{tmp_path / 'store'}",
            "XDG_RUNTIME_DIR": str(tmp_path / "run"),  # the daemon's pointer: not the user's
            "HERMES_FLARE_PROVIDER": "custom",
            "HERMES_FLARE_BASE_URL": fake.base_url,
            "HERMES_FLARE_MODEL": "fake-model",
            "HERMES_FLARE_API_PORT": str(port),
            "FLARE_ADMIN__PORT": "0",  # the page's default port may be taken on a shared machine
            "NO_COLOR": "1",
            # as after a clone: no `flared` on PATH, so hints must say `.venv/bin/flared`
            "PATH": os.pathsep.join(
                p
                for p in os.environ["PATH"].split(os.pathsep)
                if p.rstrip("/") != str(ROOT / ".venv" / "bin")
            ),
        }
        env.pop("HERMES_FLARE_CONFIG", None)
        log = tmp_path / "make-up.log"
        with log.open("wb") as fh:
            make = subprocess.Popen(
                shlex.split(first[0]),
                cwd=ROOT,
                env=env,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            deadline = time.monotonic() + 180
            while "hermes: ready" not in log.read_text() and time.monotonic() < deadline:
                assert make.poll() is None, log.read_text()
                time.sleep(0.3)
            boot = log.read_text()
            assert "hermes-flare starting 1 bot(s) from" in boot, boot
            assert (
                f"hermes: ready: chat API on http://127.0.0.1:{port}/v1 (try: `.venv/bin/flared chat hello`)"
                in boot
            ), boot
            assert re.search(r"admin page: http://127\.0\.0\.1:\d+/admin/#token=", boot), boot

            for argv in later:
                out = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
                assert out.returncode == 0, (
                    f"{' '.join(argv)}: rc {out.returncode}\n{out.stdout}\n{out.stderr}"
                )
                assert "Traceback" not in out.stderr
                EXPECT[argv[1]](out, port)

            # Ctrl-C in the terminal of `make up`: the whole foreground group gets SIGINT.
            mark = len(log.read_text())
            os.killpg(make.pid, signal.SIGINT)
            make.wait(120)
            tail = log.read_text()[mark:]
            assert "stopping hermes-flare: gateways first, then a final snapshot of each bot" in tail, tail
            assert re.search(
                r"hermes: final snapshot( \S+: [\d.]+ \w+ uploaded|: unchanged since \S+)", tail
            ), tail
            assert "hermes-flare stopped" in tail, tail
            assert "Traceback" not in log.read_text()
        finally:
            for pid in session_pids(make.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
