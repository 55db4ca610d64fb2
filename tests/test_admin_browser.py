"""The admin page in headless Chromium (Debian's) against a real `flared up`.

What a user does from a browser: open the URL `flared up` printed, see the
bot running, take a snapshot and see it in the history, open a restore and
cancel it (nothing changes), reload a broken file and read FILE:LINE, and
that without the sign-in link the page gets nothing. Screenshots of the
main view (desktop and phone width) are written to ``build/screenshots/``;
``docs/admin.png`` is one of them.
"""

from __future__ import annotations

import json
import re
import shutil
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.flare import ROOT, FlareUp, bot

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
SHOTS = ROOT / "build" / "screenshots"

sync_api = pytest.importorskip("playwright.sync_api")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        pytest.fail("chromium is missing: `scripts/setup --test` installs it (apt-get install chromium)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        try:
            yield b
        finally:
            b.close()


def link_of(flare: FlareUp) -> str:
    out = flare.cli("admin", "--json")
    assert out.returncode == 0, out.stderr
    link: str = json.loads(out.stdout)["link"]
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/admin/#token=[\w-]+", link), link
    return link


def test_the_admin_page_shows_and_steers_a_running_flared(tmp_path: Path, browser: Any) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    agent_job = {  # one the agent made itself in chat (Hermes' cronjob tool)
        "id": "a1b2c3",
        "name": "morning digest",
        "prompt": "summarise",
        "schedule": {"kind": "interval", "minutes": 1440, "display": "every 1440m"},
        "schedule_display": "every 1440m",
        "enabled": True,
        "state": "scheduled",
        "next_run_at": "2099-01-01T09:00:00+00:00",
        "enabled_toolsets": ["browser"],
    }
    prune = {"name": "nightly-prune", "schedule": "0 3 * * *", "action": "prune"}
    with FlareUp(tmp_path, [bot("hermes")], cron=[prune]) as flare:
        flare.wait_running("hermes")
        # A snapshot this state dir has no history of (taken before it, or on another
        # machine): the page's history must still list it after one more (issue 23).
        home = flare.state_dir / "bots" / "hermes" / "home"
        (home / "before.txt").write_text("taken elsewhere\n")
        earlier = flare.cli("snapshot", "--bot", "hermes", "--json")
        assert earlier.returncode == 0, earlier.stderr
        for local in flare.state_dir.rglob("history/hermes.jsonl"):
            local.unlink()
        (home / "after.txt").write_text("a change for Snapshot now\n")
        jobs_file = flare.state_dir / "bots" / "hermes" / "home" / "cron" / "jobs.json"
        jobs_file.parent.mkdir(parents=True, exist_ok=True)
        jobs_file.write_text(json.dumps({"jobs": [agent_job]}))
        link = link_of(flare)
        base = link.split("#", 1)[0]

        # `flared up` printed a link of its own in the terminal.
        assert re.search(r"admin page: http://127\.0\.0\.1:\d+/admin/#token=", flare.log.read_text())

        # Without the link: the files load, the API gives nothing.
        page = browser.new_page()
        answers: list[int] = []
        page.on("response", lambda r: answers.append(r.status) if "/api/" in r.url else None)
        page.goto(base)
        page.wait_for_selector("#login:not([hidden])")
        assert page.locator("#app").is_hidden()
        assert page.locator("[data-bot]").count() == 0
        assert answers and set(answers) == {401}
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base.replace("/admin/", "/api/status"), timeout=10)
        assert refused.value.code == 401
        page.close()

        # With it: the bot, running and ready, in the words of `flared status`.
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on(
            "console",
            # the reload of a broken file below is answered 400 on purpose
            lambda m: errors.append(m.text) if m.type == "error" and "status of 400" not in m.text else None,
        )
        page.goto(link)
        card = page.locator('[data-bot="hermes"]')
        card.locator('[data-testid="state"]', has_text="RUNNING").wait_for(timeout=30_000)
        card.locator('[data-testid="readiness"]', has_text="ready").wait_for(timeout=60_000)
        assert "#token=" not in page.url  # the one-time token left the address bar
        assert page.evaluate("sessionStorage.length") == 1

        # Cron: the YAML's jobs and the one the agent made itself (issue 20 item 1).
        cron = page.locator("#cron tbody")
        cron.locator("tr", has_text="nightly-prune").wait_for(timeout=10_000)
        own = cron.locator("tr", has_text="morning digest")
        assert "agent's own" in own.inner_text() and "every 1440m" in own.inner_text()
        assert "browser" in own.inner_text()  # the toolsets it asked for and does not get
        assert "prune (YAML)" in cron.locator("tr", has_text="nightly-prune").inner_text()

        # The link is spent: a second browser cannot use it.
        other = browser.new_page()
        other.goto(link)
        other.wait_for_selector("#login:not([hidden])")
        assert "already used" in other.locator("#login-error").inner_text()
        other.close()

        # Snapshot now -> a new row in the history, and the action in the audit log.
        card.get_by_role("button", name="Snapshot now").click()
        page.locator(".toast.ok", has_text="hermes: snapshot").wait_for(timeout=60_000)
        rows = card.locator('[data-testid="history"] tbody tr')
        row = rows.first
        listed = flare.cli("snapshots", "--json", "--bot", "hermes")
        assert listed.returncode == 0, listed.stderr
        ids = [s["id"] for s in json.loads(listed.stdout)["snapshots"]]
        assert len(ids) == 2 and json.loads(earlier.stdout)["results"][0]["id"] in ids, (ids, earlier.stdout)
        page.wait_for_function(
            "n => document.querySelectorAll('[data-testid=history] tbody tr').length === n", arg=2
        )
        # One merged history, newest first: the new snapshot on top, the store's older one below.
        texts = [rows.nth(i).inner_text() for i in range(2)]
        assert ids[0] in texts[0] and ids[1] in texts[1], (ids, texts)
        audit = (flare.state_dir / "operator" / "audit.jsonl").read_text()
        assert '"user": "admin page (local)"' in audit and '"command": "POST /snapshots"' in audit

        # A restore asks first, naming id, time and size; cancelled, nothing happens.
        before = flare.bot_status("hermes")
        row.get_by_role("button", name=re.compile(r"^Restore ")).click()
        dialog = page.locator("dialog#confirm")
        dialog.wait_for(state="visible")
        shown_id = dialog.locator('[data-testid="confirm-id"]').inner_text()
        assert shown_id in ids and "packed" in dialog.inner_text() and "home.previous" in dialog.inner_text()
        dialog.get_by_role("button", name="Cancel").click()
        page.locator(".toast", has_text="cancelled; nothing changed").wait_for()
        after = flare.bot_status("hermes")
        assert after["pid"] == before["pid"]
        assert '"command": "POST /restore"' not in (flare.state_dir / "operator" / "audit.jsonl").read_text()

        page.screenshot(path=str(SHOTS / "admin.png"), full_page=True)

        # A broken file: Reload answers with FILE:LINE; the running config stays.
        good = flare.config_path.read_text()
        flare.config_path.write_text(good.replace("version: 1", "version: 1\nsnapshots: {every: soon}"))
        page.get_by_role("button", name="Reload config").click()
        failed = page.locator(".toast.error", has_text="Config reload failed")
        failed.wait_for(timeout=30_000)
        assert re.search(rf"{re.escape(str(flare.config_path))}:\d+", failed.inner_text()), (
            failed.inner_text()
        )
        problem = page.locator("#config-problem")
        problem.wait_for(state="visible", timeout=15_000)
        assert re.search(rf"{re.escape(str(flare.config_path))}:\d+", problem.inner_text())
        assert flare.bot_status("hermes")["state"] == "RUNNING"
        flare.config_path.write_text(good)

        # Phone width: nothing wider than the screen, every action reachable by keyboard.
        page.set_viewport_size({"width": 390, "height": 844})
        page.wait_for_timeout(300)
        assert page.evaluate("document.documentElement.scrollWidth") <= 390
        # The history table is not cut off: nothing to scroll sideways, its buttons on screen.
        history = card.locator('[data-testid="history"]')
        assert history.evaluate("t => t.parentElement.scrollWidth <= t.parentElement.clientWidth")
        for i in range(2):
            button = rows.nth(i).get_by_role("button", name=re.compile(r"^Restore "))
            box = button.bounding_box()
            assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= 390, box
        label = rows.first.locator('td[data-label="size"]').evaluate(
            "td => getComputedStyle(td, '::before').content"
        )
        assert label == '"size: "', label  # each cell says what it is
        page.screenshot(path=str(SHOTS / "admin-phone.png"), full_page=False)
        page.keyboard.press("Tab")
        focused = [
            page.evaluate("document.activeElement.textContent")
            for _ in range(12)
            if not page.keyboard.press("Tab")
        ]
        assert "Snapshot now" in focused and "Reload config" in focused
        assert not errors, errors
        page.close()
