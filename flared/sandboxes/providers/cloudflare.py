"""The cloudflare provider: the Worker runs each lease in a Sandbox SDK Exec container.

It speaks the contract in ``tests/contracts/sandbox/`` (README there): ``POST
/internal/sandboxes/{id}/exec``, ``DELETE /internal/sandboxes/{id}``, ``GET
/internal/sandboxes?prefix=``, bearer auth. A sandbox comes to exist on its
first exec, so :meth:`create` only checks the id.

Failures reach the agent as command results it can read, never as
tracebacks. Retries happen only where a retry cannot run a command twice:
an exec is retried when the connection could not be opened or the Worker
said ``503 {"started": false}``; DELETE and GET are idempotent and retried
on any transport error or 5xx. The bearer token never appears in a message.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

from flared.config.models import SandboxProfile
from flared.sandboxes.types import ExecRequest, ExecResult, SandboxError, valid_lease_id

NOT_RUN = 126  # exit status of a command that certainly did not run
UNKNOWN = 1  # the command may or may not have run
EXEC_RETRIES = 2
IDEMPOTENT_RETRIES = 3
MAX_RETRY_AFTER = 5.0
MARGIN = 30.0  # seconds the HTTP read may take beyond the command's own timeout
CONNECT_TIMEOUT = 10.0


class _NotSent(Exception):
    """The connection failed before any byte of the request left: safe to retry."""


@dataclass
class _Answer:
    status: int
    body: Any
    headers: dict[str, str]


class CloudflareProvider:
    name = "cloudflare"
    lazy = True

    def __init__(self, endpoint: str, token: str, *, connect_timeout: float = CONNECT_TIMEOUT) -> None:
        parts = urlsplit(endpoint)
        if parts.scheme not in {"http", "https"} or not parts.hostname:
            raise SandboxError(f"sandbox endpoint must be an http(s) URL, got {endpoint!r}")
        if not token:
            raise SandboxError(
                "the cloudflare sandbox provider needs a token (sandboxes.<name>.token or $FLARE_CONTROL_TOKEN)"
            )
        self.endpoint = endpoint.rstrip("/")
        self._scheme = parts.scheme
        self._host = parts.hostname
        self._port = parts.port
        self._base = parts.path.rstrip("/")
        self._token = token
        self.connect_timeout = connect_timeout

    @classmethod
    def from_profile(cls, profile: SandboxProfile) -> CloudflareProvider:
        token = (
            profile.token.get_secret_value() if profile.token else os.environ.get("FLARE_CONTROL_TOKEN", "")
        )
        return cls(profile.endpoint, token)

    # ------------------------------------------------------------------ provider API

    def create(self, lease_id: str, profile: SandboxProfile) -> dict[str, Any]:
        _check_id(lease_id)
        return {}

    def exec(
        self, lease_id: str, data: dict[str, Any], profile: SandboxProfile, req: ExecRequest
    ) -> ExecResult:
        _check_id(lease_id)
        body = {
            "command": req.command,
            "cwd": req.cwd or profile.workdir,
            "env": {**profile.env, **req.env},
            "timeout_ms": max(1, int(req.timeout * 1000)),
            "stdin": req.stdin,
            "output_limit": int(req.output_limit),
            # The Worker applies these to the lease's Exec container: Internet
            # only when the profile allows it, no sleep while the lease may idle.
            "network": profile.network,
            "idle_ttl_ms": max(1, int(profile.idle_ttl * 1000)),
        }
        path = f"/internal/sandboxes/{quote(lease_id)}/exec"
        started = time.monotonic()
        deadline = started + req.timeout
        attempt = 0
        while True:
            attempt += 1
            try:
                answer = self._request("POST", path, body, timeout=req.timeout + MARGIN)
            except _NotSent as exc:
                if attempt <= EXEC_RETRIES and time.monotonic() + 1 < deadline:
                    time.sleep(min(0.5 * attempt, max(0.0, deadline - time.monotonic())))
                    continue
                return _failure(
                    NOT_RUN, f"cannot reach the sandbox service ({exc}); the command did not run", started
                )
            except TimeoutError:
                return _failure(
                    124,
                    f"no answer from the sandbox service within {req.timeout + MARGIN:g}s; "
                    "the command may still be running",
                    started,
                    timed_out=True,
                )
            except (OSError, http.client.HTTPException) as exc:
                return _failure(
                    UNKNOWN,
                    f"lost the sandbox service mid-request ({exc}); the command's outcome is unknown",
                    started,
                )
            if answer.status == 503 and isinstance(answer.body, dict) and answer.body.get("started") is False:
                wait = _retry_after(answer.headers)
                if attempt <= EXEC_RETRIES and time.monotonic() + wait < deadline:
                    time.sleep(wait)
                    continue
                return _failure(
                    NOT_RUN, f"sandbox unavailable: {_error(answer)}; the command did not run", started
                )
            if answer.status == 200:
                return _result(answer.body, started)
            if answer.status in {400, 401, 403, 404, 409, 413, 429}:
                return _failure(
                    NOT_RUN,
                    f"sandbox service refused the command ({answer.status}: {_error(answer)})",
                    started,
                )
            return _failure(
                UNKNOWN,
                f"sandbox service failed ({answer.status}: {_error(answer)}); the command's outcome is unknown",
                started,
            )

    def destroy(self, lease_id: str, data: dict[str, Any]) -> None:
        _check_id(lease_id)
        self._idempotent("DELETE", f"/internal/sandboxes/{quote(lease_id)}")

    def existing(self, prefix: str) -> set[str]:
        body = self._idempotent("GET", f"/internal/sandboxes?prefix={quote(prefix)}")
        items = body.get("sandboxes") if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise SandboxError("sandbox service answered GET /internal/sandboxes without a sandboxes list")
        return {
            str(x["id"]) for x in items if isinstance(x, dict) and str(x.get("id", "")).startswith(prefix)
        }

    # ------------------------------------------------------------------ HTTP

    def _idempotent(self, method: str, path: str) -> Any:
        last = ""
        for attempt in range(1, IDEMPOTENT_RETRIES + 1):
            try:
                answer = self._request(method, path, None, timeout=60)
            except (_NotSent, OSError, http.client.HTTPException) as exc:
                last = str(exc) or type(exc).__name__
            else:
                if answer.status < 300:
                    return answer.body
                if answer.status < 500:
                    raise SandboxError(
                        f"sandbox service refused {method} ({answer.status}: {_error(answer)})"
                    )
                last = f"{answer.status}: {_error(answer)}"
            if attempt < IDEMPOTENT_RETRIES:
                time.sleep(0.2 * 2**attempt)
        raise SandboxError(f"sandbox service {method} failed after {IDEMPOTENT_RETRIES} tries ({last})")

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self._scheme == "https":
            return http.client.HTTPSConnection(
                self._host, self._port, timeout=timeout, context=ssl.create_default_context()
            )
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def _request(self, method: str, path: str, body: Any, *, timeout: float) -> _Answer:
        conn = self._connection(self.connect_timeout)
        try:
            try:
                conn.connect()
            except (OSError, http.client.HTTPException) as exc:
                raise _NotSent(_describe(exc)) from None
            assert conn.sock is not None
            conn.sock.settimeout(timeout)
            payload = json.dumps(body).encode() if body is not None else None
            headers = {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}
            if payload is not None:
                headers["Content-Type"] = "application/json"
            conn.request(method, self._base + path, body=payload, headers=headers)
            resp = conn.getresponse()  # TimeoutError when the answer takes too long
            raw = resp.read()
            try:
                parsed = json.loads(raw) if raw else None
            except ValueError:
                parsed = {"error": raw[:200].decode(errors="replace")}
            return _Answer(resp.status, parsed, {k.lower(): v for k, v in resp.getheaders()})
        finally:
            conn.close()


def _check_id(lease_id: str) -> None:
    if not valid_lease_id(lease_id):
        raise SandboxError(f"invalid sandbox id {lease_id!r}")


def _describe(exc: BaseException) -> str:
    return str(exc) or type(exc).__name__


def _error(answer: _Answer) -> str:
    if isinstance(answer.body, dict) and isinstance(answer.body.get("error"), str):
        return str(answer.body["error"])[:500]
    return "no error message"


def _retry_after(headers: dict[str, str]) -> float:
    try:
        return min(MAX_RETRY_AFTER, max(0.0, float(headers.get("retry-after", "1"))))
    except ValueError:
        return 1.0


def _failure(code: int, message: str, started: float, *, timed_out: bool = False) -> ExecResult:
    return ExecResult(
        exit_code=code,
        stdout="",
        stderr=f"[flare] {message}\n",
        duration_ms=int((time.monotonic() - started) * 1000),
        truncated=False,
        timed_out=timed_out,
    )


def _result(body: Any, started: float) -> ExecResult:
    """A 200 answer as an ExecResult; a malformed one is a failure, not a traceback."""
    try:
        return ExecResult(
            exit_code=int(body["exit_code"]),
            stdout=str(body["stdout"]),
            stderr=str(body["stderr"]),
            duration_ms=int(body.get("duration_ms", (time.monotonic() - started) * 1000)),
            truncated=bool(body.get("truncated", False)),
            timed_out=bool(body.get("timed_out", False)),
        )
    except (KeyError, TypeError, ValueError):
        return _failure(
            UNKNOWN, "sandbox service sent a malformed result; the command's outcome is unknown", started
        )
