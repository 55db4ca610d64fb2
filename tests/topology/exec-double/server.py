"""A double of the Sandbox SDK's container (cloudflare/sandbox) for the topology test.

The real image lives only in a registry, so `wrangler dev` runs this in the
Exec containers instead. It speaks the subset of the container's HTTP API
(port 3000) that @cloudflare/sandbox 0.12.10 uses for what the Worker does
(worker/src/sandboxes.ts): a session, exec with env, cwd and timeout, writing
a file, and the probes the SDK makes (ping, version). Commands run with real
bash in this container. Anything else is a JSON 404 the SDK reports as is.
Standard library only.
"""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

VERSION = "0.12.10"
SESSIONS: dict[str, dict[str, Any]] = {}


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def execute(body: dict[str, Any]) -> dict[str, Any]:
    session = SESSIONS.get(str(body.get("sessionId")), {})
    env = {**os.environ, **session.get("env", {}), **(body.get("env") or {})}
    cwd = body.get("cwd") or session.get("cwd") or "/workspace"
    os.makedirs(cwd, exist_ok=True)
    timeout = body.get("timeoutMs")
    started = time.monotonic()
    try:
        done = subprocess.run(
            ["bash", "-c", str(body["command"])],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout / 1000 if timeout else None,
            stdin=subprocess.DEVNULL,
        )
        code, out, err = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as exc:
        code, out, err = 124, str(exc.stdout or ""), str(exc.stderr or "")
    return {
        "success": code == 0,
        "exitCode": code,
        "stdout": out,
        "stderr": err,
        "command": body["command"],
        "duration": int((time.monotonic() - started) * 1000),
        "timestamp": now(),
        "sessionId": body.get("sessionId"),
    }


def write(body: dict[str, Any]) -> dict[str, Any]:
    path = str(body["path"])
    content = str(body.get("content") or "")
    data = base64.b64decode(content) if body.get("encoding") == "base64" else content.encode()
    os.makedirs(os.path.dirname(path) or "/", exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)
    return {"success": True, "path": path, "exitCode": 0, "timestamp": now()}


class Api(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: object) -> None:
        sys.stderr.write("exec-double: " + (fmt % args) + "\n")

    def reply(self, status: int, body: dict[str, Any]) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def not_found(self) -> None:
        self.reply(
            404,
            {
                "code": "NOT_FOUND",
                "message": f"the exec double has no {self.command} {self.path}",
                "context": {},
                "httpStatus": 404,
                "timestamp": now(),
            },
        )

    def do_GET(self) -> None:
        if self.path == "/api/ping":
            self.reply(200, {"success": True, "message": "pong", "timestamp": now()})
        elif self.path == "/api/version":
            self.reply(200, {"success": True, "version": VERSION, "timestamp": now()})
        else:
            self.not_found()

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.loads(raw or b"{}")
        if self.path == "/api/session/create":
            sid = str(body.get("id") or f"session-{len(SESSIONS)}")
            SESSIONS[sid] = {"env": body.get("env") or {}, "cwd": body.get("cwd") or "/workspace"}
            self.reply(200, {"success": True, "id": sid, "message": "created", "timestamp": now()})
        elif self.path == "/api/session/delete":
            SESSIONS.pop(str(body.get("sessionId")), None)
            self.reply(200, {"success": True, "sessionId": body.get("sessionId"), "timestamp": now()})
        elif self.path == "/api/execute":
            self.reply(200, execute(body))
        elif self.path == "/api/write":
            self.reply(200, write(body))
        else:
            self.not_found()


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # PID 1: stop at once
    server = ThreadingHTTPServer(("0.0.0.0", 3000), Api)
    server.daemon_threads = True
    sys.stderr.write("exec-double: listening on 3000\n")
    server.serve_forever()
