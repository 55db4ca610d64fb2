"""A local server implementing the Worker's sandbox contract (tests/contracts/sandbox/).

It runs each sandbox as a real bubblewrap lease (flared's local provider), so
commands really run, files persist per id and ids are isolated, just as in
the Worker's Exec containers. Faults can be injected: ``fail_start`` answers
the next N execs with ``503 {"started": false}`` before running anything;
``fail_after_run`` runs the next N commands and then answers 500.

Every exec that actually ran is counted in ``ran``, so a test can prove a
retry never ran a command twice.
"""

from __future__ import annotations

import json
import re
import threading
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from flared.config.models import SandboxProfile
from flared.sandboxes.providers.local import LocalProvider, sandbox_root
from flared.sandboxes.types import ExecRequest, valid_lease_id

TOKEN = "contract-test-token"
DEFAULT_OUTPUT_LIMIT = 1024 * 1024
_EXEC = re.compile(r"^/internal/sandboxes/([^/]+)/exec$")
_ONE = re.compile(r"^/internal/sandboxes/([^/]+)$")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class FakeWorker:
    def __init__(self, state_dir: Path, token: str = TOKEN) -> None:
        self.token = token
        self.provider = LocalProvider(sandbox_root(state_dir))
        self.profile = SandboxProfile()
        self.sandboxes: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.fail_start = 0
        self.fail_after_run = 0
        self.ran = 0
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.exec_bodies: list[dict[str, Any]] = []
        worker = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _answer(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                worker.requests.append((self.command, self.path, dict(self.headers)))
                status, body, headers = worker.handle(
                    self.command, self.path, self.headers.get("Authorization"), raw
                )
                self._answer(status, body, headers)

            do_GET = do_POST = do_DELETE = do_PUT = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeWorker:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        for sid, entry in list(self.sandboxes.items()):
            self.provider.destroy(sid, entry["data"])

    # ------------------------------------------------------------------ the contract

    def handle(
        self, method: str, target: str, auth: str | None, raw: bytes
    ) -> tuple[int, Any, dict[str, str] | None]:
        if auth != f"Bearer {self.token}":
            return 401, {"error": "missing or wrong bearer token"}, None
        parts = urlsplit(target)
        if method == "GET" and parts.path == "/internal/sandboxes":
            prefix = parse_qs(parts.query).get("prefix", [""])[0]
            with self.lock:
                items = [
                    {"id": sid, "created_at": e["created_at"], "last_used_at": e["last_used_at"]}
                    for sid, e in sorted(self.sandboxes.items())
                    if sid.startswith(prefix)
                ]
            return 200, {"sandboxes": items}, None
        m = _EXEC.match(parts.path)
        if method == "POST" and m:
            return self._exec(m.group(1), raw)
        m = _ONE.match(parts.path)
        if method == "DELETE" and m:
            sid = m.group(1)
            if not valid_lease_id(sid):
                return 400, {"error": f"invalid sandbox id: {sid}"}, None
            with self.lock:
                entry = self.sandboxes.pop(sid, None)
            if entry is not None:
                self.provider.destroy(sid, entry["data"])
            return 200, {"id": sid, "destroyed": entry is not None}, None
        return 404, {"error": f"no such endpoint: {method} {parts.path}"}, None

    def _exec(self, sid: str, raw: bytes) -> tuple[int, Any, dict[str, str] | None]:
        if not valid_lease_id(sid):
            return 400, {"error": f"invalid sandbox id: {sid}"}, None
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            return 400, {"error": "body is not JSON"}, None
        command = body.get("command") if isinstance(body, dict) else None
        if not isinstance(command, str) or not command:
            return 400, {"error": "command must be a non-empty string"}, None
        network = body.get("network", False)
        if not isinstance(network, bool):
            return 400, {"error": "network must be a boolean"}, None
        with self.lock:
            self.exec_bodies.append(body)
            known = self.sandboxes.get(sid)
            if known is not None and known.get("network", False) != network:
                # The contract: a sandbox keeps the network it was created with.
                return (
                    409,
                    {"error": f"sandbox {sid} was created with network {not network}", "started": False},
                    None,
                )
            if self.fail_start > 0:
                self.fail_start -= 1
                return 503, {"error": "sandbox container unavailable", "started": False}, {"Retry-After": "1"}
            entry = self.sandboxes.get(sid)
            if entry is None:
                entry = {
                    "data": self.provider.create(sid, self.profile),
                    "created_at": _now(),
                    "network": network,
                }
                self.sandboxes[sid] = entry
            entry["last_used_at"] = _now()
        req = ExecRequest(
            command=command,
            cwd=str(body.get("cwd") or "/workspace"),
            env={str(k): str(v) for k, v in (body.get("env") or {}).items()},
            stdin=body.get("stdin"),
            timeout=int(body.get("timeout_ms") or 120000) / 1000,
            output_limit=int(body.get("output_limit") or DEFAULT_OUTPUT_LIMIT),
        )
        result = self.provider.exec(sid, entry["data"], self.profile, req)
        with self.lock:
            self.ran += 1
            if self.fail_after_run > 0:
                self.fail_after_run -= 1
                return 500, {"error": "internal error after the command ran"}, None
        out = result.as_dict()
        if result.timed_out:  # the contract's timeout answer carries no flare-local note
            out["stderr"] = out["stderr"].split("\n[flare: command timed out")[0]
        return 200, out, None
