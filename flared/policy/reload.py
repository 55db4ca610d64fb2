"""Hot reload: what changed between two configs, and applying only that.

:func:`diff` is pure (two validated configs -> a list of :class:`Change`), so
every classification is a unit test. :func:`apply` is what
``Daemon.apply_config`` calls once a new file validated: it refuses changes
that cannot apply live, swaps the config, then touches only what changed.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import logging
import os
import re
import stat
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from flared import yamlpos
from flared.config import HermesFlareConfig
from flared.hermes import GATEWAY_PREFIX
from flared.loader import Issue, LoadedConfig
from flared.optional import optional_import
from flared.reconcile import RemoveGroup, WriteProgram

if TYPE_CHECKING:
    from flared.daemon import Daemon

log = logging.getLogger("flared.reload")

Kind = Literal["added", "removed", "changed"]
Effect = Literal[
    "live",  # applied in place, nothing restarted
    "restart-gateway",  # that bot's gateway restarts (a snapshot first)
    "start-bot",  # restore, then start
    "stop-bot",  # final snapshot, stop, program removed (state stays in the store)
    "next-snapshot",  # store settings: used from the next snapshot on
    "deploy",  # Cloudflare-only settings: take effect at the next `wrangler deploy`
    "restart-flared",  # cannot apply live: refused
]

# Bot fields that are rendered into the gateway's Hermes home or environment.
GATEWAY_FIELDS = frozenset({"model", "slack", "api", "toolsets", "env", "hermes"})
# Top-level sections a running flared cannot switch to.
RESTART_SECTIONS = frozenset({"state_dir", "control"})


@dataclass(frozen=True)
class Change:
    """One difference between the running config and the new one."""

    section: str  # top-level key: bots, snapshots, sandboxes, cron...
    target: str | None  # bot, sandbox profile or cron job name
    kind: Kind
    fields: tuple[str, ...]  # dotted paths inside the target that differ (never values: secrets)
    effect: Effect

    @property
    def where(self) -> str:
        return f"{self.section}.{self.target}" if self.target else self.section

    def __str__(self) -> str:
        what = self.kind if self.kind != "changed" or not self.fields else ", ".join(self.fields)
        return f"{self.where}: {what} -> {EFFECT_TEXT[self.effect]}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "section": self.section,
            "target": self.target,
            "kind": self.kind,
            "fields": list(self.fields),
            "effect": self.effect,
            "text": str(self),
        }


EFFECT_TEXT: dict[Effect, str] = {
    "live": "applied live",
    "restart-gateway": "its gateway restarts",
    "start-bot": "restored, then started",
    "stop-bot": "final snapshot, then stopped",
    "next-snapshot": "used from the next snapshot",
    "deploy": "takes effect at the next deploy (flared render wrangler)",
    "restart-flared": "cannot change while flared runs: restart it",
}


# --------------------------------------------------------------------------- pure diff


def changed_paths(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two dumped values differ; lists compare whole.

    Works on ``model_dump()`` output, where secrets are still ``SecretStr``
    and compare by value, so a rotated token counts as a change while the
    paths returned never carry the value.
    """
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            if key not in old or key not in new:
                out.append(path)
            else:
                out.extend(changed_paths(old[key], new[key], path))
        return out
    return [] if old == new else [prefix or "(value)"]


def _bot_effect(fields: list[str]) -> Effect:
    tops = {f.split(".", 1)[0] for f in fields}
    if tops & GATEWAY_FIELDS:
        return "restart-gateway"
    if tops <= {"group"}:
        return "deploy"
    return "live"  # sandbox profile choice: applies to the bot's next lease


def _bots(old: HermesFlareConfig, new: HermesFlareConfig) -> list[Change]:
    out: list[Change] = []
    before = {b.name: b for b in old.bots}
    after = {b.name: b for b in new.bots}
    for name in [b.name for b in new.bots if b.name not in before]:
        bot = after[name]
        out.append(Change("bots", name, "added", (), "start-bot" if bot.enabled else "live"))
    for name in [b.name for b in old.bots if b.name not in after]:
        out.append(Change("bots", name, "removed", (), "stop-bot" if before[name].enabled else "live"))
    for name in [b.name for b in new.bots if b.name in before]:
        a, b = before[name], after[name]
        fields = changed_paths(a.model_dump(), b.model_dump())
        if not fields:
            continue
        if a.enabled != b.enabled:
            effect: Effect = "start-bot" if b.enabled else "stop-bot"
        elif not b.enabled:
            effect = "live"  # a disabled bot's settings: used when it is enabled
        else:
            effect = _bot_effect(fields)
        out.append(Change("bots", name, "changed", tuple(fields), effect))
    return out


def _named(section: str, old: dict[str, Any], new: dict[str, Any], effect: Effect) -> list[Change]:
    out: list[Change] = []
    for name in new:
        if name not in old:
            out.append(Change(section, name, "added", (), effect))
        else:
            fields = changed_paths(old[name], new[name])
            if fields:
                out.append(Change(section, name, "changed", tuple(fields), effect))
    out.extend(Change(section, name, "removed", (), effect) for name in old if name not in new)
    return out


SECTION_EFFECT: dict[str, Effect] = {
    "log_level": "live",
    "snapshots": "live",
    "restore": "live",
    "store": "next-snapshot",
    "operator": "live",  # the operator program is reconciled like the gateways
    "cloudflare": "deploy",
    "state_dir": "restart-flared",
    "control": "restart-flared",
    "version": "restart-flared",
}


def diff(old: HermesFlareConfig, new: HermesFlareConfig) -> list[Change]:
    """Every difference, classified by what applying it takes."""
    a, b = old.model_dump(), new.model_dump()
    out: list[Change] = []
    for section in HermesFlareConfig.model_fields:
        if section == "bots":
            out.extend(_bots(old, new))
        elif section == "sandboxes":
            out.extend(_named("sandboxes", a["sandboxes"], b["sandboxes"], "live"))
        elif section == "cron":
            jobs_a = {j["name"]: j for j in a["cron"]}
            jobs_b = {j["name"]: j for j in b["cron"]}
            out.extend(_named("cron", jobs_a, jobs_b, "live"))
        else:
            fields = changed_paths(a[section], b[section])
            if fields:
                kind: Kind = "changed"
                if a[section] is None:
                    kind = "added"
                elif b[section] is None:
                    kind = "removed"
                nested = tuple(f for f in fields if f != "(value)")
                out.append(Change(section, None, kind, nested, SECTION_EFFECT.get(section, "live")))
    return out


def refused(changes: list[Change]) -> list[Change]:
    return [c for c in changes if c.effect == "restart-flared"]


@dataclass
class Plan:
    """What :func:`apply` will do, derived from the changes."""

    start: list[str] = field(default_factory=list)  # bots to boot (restore, then start)
    stop: list[str] = field(default_factory=list)  # bots to stop and retire
    restart: list[str] = field(default_factory=list)  # bots whose gateway config changed
    cron: bool = False
    log_level: bool = False


def plan(changes: list[Change]) -> Plan:
    p = Plan()
    for c in changes:
        if c.section == "bots" and c.target:
            {"start-bot": p.start, "stop-bot": p.stop, "restart-gateway": p.restart}.get(c.effect, []).append(
                c.target
            )
        elif c.section == "cron":
            p.cron = True
        elif c.section == "log_level":
            p.log_level = True
    return p


def refusal_issues(new: LoadedConfig, changes: list[Change]) -> list[Issue]:
    """Refused changes as positioned issues, like validation errors."""
    try:
        located: yamlpos.Located | None = yamlpos.load(new.text)
    except yamlpos.YamlSyntaxError:
        located = None
    issues = []
    for c in refused(changes):
        paths = [f"{c.section}.{f}" for f in c.fields] or [c.section]
        for dotted_path in paths:
            parts: yamlpos.Path = tuple(dotted_path.split("."))
            mark = located.mark(parts, prefer_key=True) if located else yamlpos.Mark(0, 0)
            issues.append(
                Issue(
                    str(new.path),
                    mark.line or 1,
                    mark.col or 1,
                    dotted_path,
                    "cannot change while flared runs; restart flared (`flared up` again, "
                    "or restart the container) to apply it",
                )
            )
    return issues


# --------------------------------------------------------------------------- apply

SNAPSHOT_BEFORE_RESTART_BUDGET = 30.0
_locks: weakref.WeakKeyDictionary[Any, threading.RLock] = weakref.WeakKeyDictionary()
_locks_guard = threading.Lock()


def reload_lock(daemon: Daemon) -> threading.RLock:
    """One reload at a time per daemon (watcher, SIGHUP, PUT /config, `flared reload`)."""
    with _locks_guard:
        lock = _locks.get(daemon)
        if lock is None:
            lock = _locks[daemon] = threading.RLock()
        return lock


def apply(daemon: Daemon, new: LoadedConfig) -> dict[str, Any]:
    """Switch the daemon to ``new`` (already validated), touching only what changed.

    Refused changes (state_dir, control) leave everything as it was and are
    reported like validation errors. Otherwise the config is swapped, the
    snapshot and lease services take the new policy, gateways whose rendered
    Hermes config changed get a snapshot and a restart, new bots boot
    (restore, then start), removed bots stop and get a final snapshot, and
    cron is reconciled. A failure for one bot is reported and the rest applies.
    """
    with reload_lock(daemon):
        result = _apply_locked(daemon, new)
    daemon.last_reload = {**result, "at": time.time()}
    return result


def _apply_locked(daemon: Daemon, new: LoadedConfig) -> dict[str, Any]:
    started = time.monotonic()
    old = daemon.loaded
    if new.digest == old.digest:
        daemon.config_error = None
        return {"applied": False, "unchanged": True, "config_digest": new.digest}
    changes = diff(old.config, new.config)
    issues = refusal_issues(new, changes)
    if issues:
        daemon.config_error = issues
        for issue in issues:
            log.error("config not applied: %s", issue)
        return {
            "applied": False,
            "errors": [i.as_dict() for i in issues],
            "config_digest": old.digest,
            "changes": [str(c) for c in changes],
        }
    p = plan(changes)
    failures: dict[str, str] = {}
    with daemon.lock:
        daemon.loaded = new
        daemon.config_error = None
        _update_logging(new, level_changed=p.log_level)
        for name, service in (("snapshots", daemon.snapshots), ("leases", daemon.leases)):
            update = getattr(service, "update", None)
            if update is not None:
                try:
                    update(new)
                except Exception as exc:
                    log.exception("%s: cannot apply the new config", name)
                    failures[name] = f"cannot apply the new policy: {exc}"
        for name in p.stop:
            daemon.ready.discard(name)
            daemon.held.discard(name)
            daemon.boot_errors.pop(name, None)
        restarting: list[str] = []
        try:
            restarting = restarting_bots(daemon.plan())
            for bot, error in _snapshot_first(daemon, restarting).items():
                failures[bot] = error
            daemon.reconcile()
        except Exception as exc:  # supervisord trouble: the main loop retries
            log.warning("reconcile after reload failed, will retry: %s", exc)
            failures["reconcile"] = str(exc)
        for name in p.start:
            try:
                daemon._boot_bot(name)
            except Exception as exc:
                log.exception("bot %s: cannot start", name)
                failures[name] = f"cannot start: {exc}"
    retired, retire_failures = _retire(daemon, p.stop)
    failures.update(retire_failures)
    cron = optional_import("flared.cron")
    if cron is not None:
        try:
            cron.update(daemon, new)
        except Exception as exc:
            log.exception("cron: cannot apply the new jobs")
            failures["cron"] = str(exc)
    for c in changes:
        log.info("config: %s", c)
    for where, error in failures.items():
        log.error("config applied, but %s: %s", where, error)
    log.info("config %s applied in %.2f s", new.digest[:12], time.monotonic() - started)
    return {
        "applied": True,
        "config_digest": new.digest,
        "previous_digest": old.digest,
        "changes": [str(c) for c in changes],
        "details": [c.as_dict() for c in changes],
        "restarted": restarting,
        "started": p.start,
        "stopped": p.stop,
        "retired": retired,
        "failures": failures,
        "seconds": round(time.monotonic() - started, 3),
    }


def restarting_bots(actions: list[Any]) -> list[str]:
    """Bots whose loaded gateway program gets a new conf: the plan restarts them."""
    written = {a.name for a in actions if isinstance(a, WriteProgram)}
    removed = {a.name for a in actions if isinstance(a, RemoveGroup)}
    return sorted(n.removeprefix(GATEWAY_PREFIX) for n in written & removed if n.startswith(GATEWAY_PREFIX))


def _snapshot_first(daemon: Daemon, bots: list[str]) -> dict[str, str]:
    """Snapshot bots about to restart, in parallel; a failure is reported, the restart goes on."""
    snap = getattr(daemon.snapshots, "snapshot", None)
    if snap is None or not bots:
        return {}
    failures: dict[str, str] = {}
    # No `with`: its exit would wait for a snapshot past the budget (say one queued behind a
    # restore that needs the daemon lock held here) instead of letting it finish on its own.
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="reload-snap")
    try:
        futures = {bot: pool.submit(snap, bot, "reload") for bot in bots}
        done, _ = concurrent.futures.wait(futures.values(), timeout=SNAPSHOT_BEFORE_RESTART_BUDGET)
        for bot, fut in futures.items():
            if fut not in done:
                failures[bot] = "snapshot before restart did not finish in time; restarted anyway"
            elif fut.exception() is not None:
                failures[bot] = f"snapshot before restart failed: {fut.exception()}"
            else:
                r = fut.result()
                if isinstance(r, dict) and r.get("result") in {"failed", "fenced"}:
                    failures[bot] = (
                        f"snapshot before restart {r['result']}: {r.get('error') or r.get('reason')}"
                    )
    finally:
        pool.shutdown(wait=False)
    return failures


def _retire(daemon: Daemon, bots: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    """Final snapshot of bots that left (their gateways are already stopped)."""
    retire = getattr(daemon.snapshots, "retire", None)
    results: dict[str, Any] = {}
    failures: dict[str, str] = {}
    for bot in bots:
        if retire is None:
            continue
        try:
            r = retire(bot)
        except Exception as exc:
            failures[bot] = f"final snapshot failed: {exc}"
            continue
        if isinstance(r, dict):
            results[bot] = {k: r.get(k) for k in ("result", "id", "reason", "error") if r.get(k) is not None}
            if r.get("result") in {"failed", "fenced"}:
                failures[bot] = f"final snapshot {r['result']}: {r.get('error') or r.get('reason')}"
    return results, failures


def _update_logging(new: LoadedConfig, *, level_changed: bool) -> None:
    """New log level, and new secrets for the redacting log formatter."""
    root = logging.getLogger()
    if level_changed:
        root.setLevel(new.config.log_level.upper())
    for handler in root.handlers:
        fmt = handler.formatter
        if fmt is not None and hasattr(fmt, "config"):
            fmt.config = new.config


def reload_from_disk(daemon: Daemon) -> dict[str, Any]:
    """Load the file and apply it, holding the reload lock across both.

    Reading inside the lock means a reload that started earlier can never
    apply an older file after a later one.
    """
    with reload_lock(daemon):
        return daemon.reload_from_disk()


# --------------------------------------------------------------------------- `flared status` with a broken file

_TOP_STATE_DIR = re.compile(r"^state_dir\s*:\s*['\"]?([^'\"#\n]+?)['\"]?\s*(?:#.*)?$", re.MULTILINE)
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-(.*?))?\}")


def pointer_dir() -> Path | None:
    """A directory only this user can write: ``$XDG_RUNTIME_DIR/hermes-flare`` or ``/tmp/hermes-flare-UID``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    d = Path(runtime) / "hermes-flare" if runtime else Path(f"/tmp/hermes-flare-{os.getuid()}")
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = d.lstat()
    except OSError:
        return None
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o022:
        return None  # someone else's directory: do not trust or write it
    return d


def pointer_path(config_path: Path) -> Path | None:
    d = pointer_dir()
    if d is None:
        return None
    key = hashlib.sha256(str(config_path.resolve()).encode()).hexdigest()[:24]
    return d / f"{key}.sock"


def publish_socket(config_path: Path, socket: Path) -> None:
    """Symlink ``socket`` under a name derived from the config path.

    Lets `flared status` and `flared reload` find the daemon that runs a
    config file even when an edit broke the file (and with it `state_dir`).
    """
    link = pointer_path(config_path)
    if link is None:
        return
    tmp = link.with_name(f".{link.name}.{os.getpid()}")
    with contextlib.suppress(OSError):
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(socket.resolve())
        os.replace(tmp, link)


def guess_socket(path: Path) -> Path:
    """The running daemon's socket when the config file no longer validates.

    `flared status` must still reach the daemon (which keeps the last good
    config) after a bad edit, so read only ``state_dir`` and
    ``control.socket`` as leniently as possible: parsed YAML if it parses,
    else the top-level ``state_dir:`` line, else the default.
    """
    link = pointer_path(path)
    if link is not None and link.is_symlink() and link.exists():
        return link.resolve()
    text = ""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        text = path.read_text(encoding="utf-8")
    state_dir: str | None = None
    socket: str | None = None
    data: Any = None
    with contextlib.suppress(yaml.YAMLError):
        data = yaml.safe_load(text)
    if isinstance(data, dict):
        if isinstance(data.get("state_dir"), str):
            state_dir = data["state_dir"]
        control = data.get("control")
        if isinstance(control, dict) and isinstance(control.get("socket"), str):
            socket = control["socket"]
    else:
        m = _TOP_STATE_DIR.search(text)
        state_dir = m.group(1) if m else None
    state_dir = (
        os.environ.get("FLARE_STATE_DIR") or state_dir or HermesFlareConfig.model_fields["state_dir"].default
    )
    socket = os.environ.get("FLARE_CONTROL__SOCKET") or socket
    base = path.resolve().parent
    if socket:
        return base / os.path.expanduser(_expand(socket))
    return base / os.path.expanduser(_expand(str(state_dir))) / "flared.sock"


def _expand(value: str) -> str:
    return _VAR.sub(lambda m: os.environ.get(m.group(1)) or (m.group(2) or ""), value)
