"""What each operator command does, through flared's control API only.

Slack-free, so it is tested against a real daemon without a Slack server:
:meth:`Operator.handle` yields the replies to post (a progress line first
for long commands), and confirmation-gated commands return a prompt with
buttons whose token :meth:`Operator.decide` resolves.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field

from flared.control.client import ControlClient, ControlError, DaemonNotRunning
from flared.operator import commands as cmds
from flared.operator.audit import AuditLog

log = logging.getLogger("flared.operator")

#: Snapshots and restores of big homes take a while.
LONG = 1800.0
#: Log tails longer than this go up as a file instead of a message.
INLINE_LOG_CHARS = 3500
#: A confirmation button is good for this long.
CONFIRM_TTL = 600.0


@dataclass
class Reply:
    text: str
    confirm_token: str | None = None  # show Confirm / Cancel buttons carrying this token
    file: tuple[str, str] | None = None  # (filename, content) to upload
    final: bool = True
    replaces_prompt: bool = False  # edit the confirmation prompt (its buttons go) instead of posting


@dataclass
class Pending:
    user: str
    command: cmds.Command
    created: float = field(default_factory=time.monotonic)


class Operator:
    def __init__(
        self, client: ControlClient, audit: AuditLog, allowed_users: list[str], confirm: list[str]
    ) -> None:
        self.client = client
        self.audit = audit
        self.allowed = set(allowed_users)
        self.confirm = set(confirm)
        self.pending: dict[str, Pending] = {}
        # Bolt runs listeners in parallel: a double-clicked Confirm must run once.
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ entry points

    def handle(self, user: str, text: str) -> Iterator[Reply]:
        if user not in self.allowed:
            log.warning("refused operator command from %s: %r", user, text[:80])
            self.audit.append(
                user, "refused", text.split()[:8], "refused", "user not in operator.allowed_users"
            )
            yield Reply("Sorry, you are not allowed to operate this agent.")
            return
        try:
            command = cmds.parse(text)
        except cmds.ParseError as exc:
            self.audit.append(user, "invalid", text.split()[:8], "invalid", str(exc))
            yield Reply(str(exc))
            return
        if command.name in self.confirm:
            reply = self._ask(user, command)
            self.audit.append(
                user, command.name, command.args, "asked" if reply.confirm_token else "failed", reply.text
            )
            yield reply
            return
        yield from self._run(user, command)

    def decide(self, user: str, token: str, approve: bool) -> Iterator[Reply]:
        """A Confirm / Cancel button was pressed."""
        with self._lock:
            self._expire()
            pending = self.pending.get(token)
            mine = pending is not None and user == pending.user and user in self.allowed
            if mine:
                del self.pending[token]
        if pending is None:
            yield Reply(
                "That confirmation expired or was already used; send the command again.",
                replaces_prompt=True,
            )
            return
        if not mine:
            self.audit.append(
                user, pending.command.name, pending.command.args, "refused", "not the requester"
            )
            yield Reply("Only the person who asked can confirm this.")
            return
        words = " ".join([pending.command.name, *pending.command.args])
        if not approve:
            self.audit.append(user, pending.command.name, pending.command.args, "cancelled")
            yield Reply(f"Cancelled `{words}`.", replaces_prompt=True)
            return
        yield Reply(f"Confirmed by <@{user}>: `{words}`.", replaces_prompt=True, final=False)
        yield from self._run(user, pending.command)

    # ------------------------------------------------------------------ confirmation

    def _expire(self) -> None:
        now = time.monotonic()
        for token in [t for t, p in self.pending.items() if now - p.created > CONFIRM_TTL]:
            del self.pending[token]

    def _ask(self, user: str, command: cmds.Command) -> Reply:
        try:
            prompt = self._prompt(command)
        except (DaemonNotRunning, ControlError) as exc:
            return Reply(self._failure(exc))
        if prompt.startswith("!"):
            return Reply(prompt[1:])
        token = secrets.token_urlsafe(12)
        with self._lock:
            self.pending[token] = Pending(user, command)
        return Reply(prompt, confirm_token=token)

    def _prompt(self, command: cmds.Command) -> str:
        bot = command.args[0]
        status = self.client.request("GET", "/status", timeout=10)
        bot_status = next((b for b in status.get("bots", []) if b["name"] == bot), None)
        if bot_status is None:
            return f"!There is no bot named `{bot}`."
        if command.name == "restart":
            return (
                f"Restart *{bot}*'s gateway (now {bot_status.get('state')}, pid {bot_status.get('pid')})? "
                "Conversations in flight are interrupted."
            )
        snaps = self.client.request("GET", "/snapshots?" + urllib.parse.urlencode({"bot": bot}), timeout=60)
        items = snaps.get("snapshots", [])
        wanted = command.args[1] if len(command.args) > 1 else None
        target = next((s for s in items if (s["id"] == wanted if wanted else s.get("latest"))), None)
        if target is None:
            return f"!{bot} has no snapshot `{wanted}`." if wanted else f"!{bot} has no snapshots to restore."
        return cmds.restore_preview(bot, target, bot_status)

    # ------------------------------------------------------------------ commands

    def _run(self, user: str, command: cmds.Command) -> Iterator[Reply]:
        name, args = command.name, command.args
        try:
            if name in {"snapshot", "restore", "reload"}:
                what = f"{name} of {args[0]}" if args else f"{name} of every bot"
                if name == "reload":
                    what = "reload of hermes-flare.yaml"
                yield Reply(f":hourglass_flowing_sand: {what} started…", final=False)
            reply = self._do(command)
        except (DaemonNotRunning, ControlError, OSError) as exc:
            reply = Reply(self._failure(exc))
            self.audit.append(user, name, args, "error", reply.text)
            yield reply
            return
        except Exception:  # a bug here must still answer, and be audited, not vanish
            log.exception("operator: %s %s failed", name, args)
            reply = Reply(f":x: `{name}` failed inside the operator; see its log (operator.log).")
            self.audit.append(user, name, args, "error", "internal error")
            yield reply
            return
        failed = reply.text.startswith(":x:")
        self.audit.append(user, name, args, "failed" if failed else "ok", reply.text)
        yield reply

    def _failure(self, exc: Exception) -> str:
        if isinstance(exc, DaemonNotRunning):
            return ":x: flared is not answering (is the Agent container up?)"
        if isinstance(exc, ControlError):
            body = exc.body if isinstance(exc.body, dict) else {}
            return f":x: {body.get('error') or body.get('reason') or exc}"
        return f":x: {exc}"

    def _do(self, command: cmds.Command) -> Reply:
        c, name, args = self.client, command.name, command.args
        if name == "help":
            return Reply(cmds.help_text())
        if name == "status":
            st = c.request("GET", "/status", timeout=10)
            return Reply(cmds.render_status(st))
        if name == "snapshot":
            try:
                data = c.request("POST", "/snapshots", {"bot": args[0] if args else None}, timeout=LONG)
            except ControlError as exc:
                if not isinstance(exc.body, dict) or "results" not in exc.body:
                    raise
                data = exc.body
            text = cmds.render_snapshot_results(data["results"])
            bad = any(r["result"] not in {"ok", "unchanged"} for r in data["results"])
            return Reply((":x: " if bad and not text.startswith(":x:") else "") + text)
        if name == "snapshots":
            data = c.request("GET", "/snapshots?" + urllib.parse.urlencode({"bot": args[0]}), timeout=60)
            return Reply(cmds.render_snapshots(args[0], data.get("snapshots", [])))
        if name == "restore":
            body = {"bot": args[0], "id": args[1] if len(args) > 1 else None}
            try:
                res = c.request("POST", "/restore", body, timeout=LONG)
            except ControlError as exc:
                if not isinstance(exc.body, dict) or "result" not in exc.body:
                    raise
                res = exc.body
            if res.get("result") != "restored":
                return Reply(f":x: restore of {args[0]} failed: {res.get('error')}")
            skipped = "".join(f"\n(skipped `{f['id']}`: {f['reason']})" for f in res.get("fallback") or [])
            return Reply(
                f":white_check_mark: {args[0]} restored from `{res['id']}` in {res.get('seconds')} s; "
                f"its gateway is starting.{skipped}"
            )
        if name == "restart":
            c.request("POST", f"/bots/{urllib.parse.quote(args[0])}/restart", {}, timeout=120)
            return Reply(f":white_check_mark: {args[0]}'s gateway restarted.")
        if name == "logs":
            lines = int(args[1]) if len(args) > 1 else 50
            data = c.request(
                "GET", "/logs?" + urllib.parse.urlencode({"bot": args[0], "lines": lines}), timeout=30
            )
            text = "\n".join(data.get("lines", []))
            if not text:
                return Reply(f"{args[0]}'s gateway log is empty.")
            if len(text) > INLINE_LOG_CHARS:
                return Reply(
                    f"Last {lines} lines of {args[0]}'s gateway log (secrets redacted):",
                    file=(f"{args[0]}-gateway.log", text),
                )
            return Reply(f"Last {lines} lines of {args[0]}'s gateway log:\n```{text}```")
        if name == "leases":
            data = c.request("GET", "/leases", timeout=10)
            leases = data.get("leases", data) if isinstance(data, dict) else data
            return Reply(cmds.render_leases(list(leases)))
        if name == "reload":
            try:
                res = c.request("POST", "/reload", {}, timeout=LONG)
            except ControlError as exc:
                if not isinstance(exc.body, dict) or "errors" not in exc.body:
                    raise
                res = exc.body
            return Reply(cmds.render_reload(res))
        if name == "config":
            return Reply(cmds.render_config(c.request("GET", "/config", timeout=10)))
        raise AssertionError(f"unhandled command {name}")
