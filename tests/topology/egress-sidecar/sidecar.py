"""A network sidecar for `wrangler dev` containers: our stand-in for cloudflare/proxy-everything.

workerd (the runtime under `wrangler dev`) starts this beside every container
(MINIFLARE_CONTAINER_EGRESS_IMAGE); the app container joins its network
namespace, so 127.0.0.1 here is the app's loopback. Cloudflare's own image has
no licence file, so this one is written from the protocol its README and
workerd's container client document, only the part the tests need:

- ingress, on --http-ingress-address (0.0.0.0:39001, published on the host):
  ``CONNECT 127.0.0.1:PORT`` (with ``X-Dst-Addr``) is tunnelled to that port
  of the app (``400`` when nothing listens: workerd reads it as "not
  listening yet"); ``GET /ca`` gives the CA certificate workerd copies into
  the app; ``PUT /egress`` takes the egress listener's port and settings.
- egress: not intercepted. The app's traffic leaves over the bridge as is
  (which is also why a local run proves nothing about ``enableInternet``).

Standard library only; started as ``sidecar.py --http-egress-port N
--http-ingress-address 0.0.0.0:39001 ...`` (unknown flags are ignored).
"""

from __future__ import annotations

import json
import select
import socket
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CA_PATH = "/etc/sidecar/ca.crt"
CONFIG: dict[str, object] = {}


def option(args: list[str], name: str, default: str) -> str:
    return args[args.index(name) + 1] if name in args[:-1] else default


def pump(a: socket.socket, b: socket.socket) -> None:
    """Copy both ways until either side closes."""
    socks = [a, b]
    try:
        while True:
            readable, _, _ = select.select(socks, [], [], 3600)
            if not readable:
                return
            for s in readable:
                data = s.recv(65536)
                if not data:
                    return
                (b if s is a else a).sendall(data)
    except OSError:
        return
    finally:
        a.close()
        b.close()


class Ingress(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt: str, *args: object) -> None:
        sys.stderr.write("sidecar: " + (fmt % args) + "\n")

    def reply(self, status: int, body: bytes, content_type: str = "text/plain") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_CONNECT(self) -> None:
        target = self.headers.get("X-Dst-Addr") or self.path
        host, _, port = target.rpartition(":")
        try:
            upstream = socket.create_connection((host or "127.0.0.1", int(port)), timeout=5)
        except (OSError, ValueError) as exc:
            self.reply(400, f"cannot connect to {target}: {exc}".encode())
            return
        upstream.settimeout(None)
        self.send_response(200)
        self.end_headers()
        self.wfile.flush()
        self.close_connection = True
        pump(self.connection, upstream)

    def do_GET(self) -> None:
        if self.path != "/ca":
            self.reply(404, b"not found")
            return
        try:
            with open(CA_PATH, "rb") as fh:
                self.reply(200, fh.read(), "application/x-pem-file")
        except OSError as exc:
            self.reply(500, f"no CA: {exc}".encode())

    def do_PUT(self) -> None:
        if self.path != "/egress":
            self.reply(404, b"not found")
            return
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            CONFIG.update(json.loads(raw or b"{}"))
        except ValueError:
            self.reply(400, b"body is not JSON")
            return
        self.reply(200, b"{}", "application/json")


def main(args: list[str]) -> None:
    host, _, port = option(args, "--http-ingress-address", "0.0.0.0:39001").rpartition(":")
    CONFIG["port"] = int(option(args, "--http-egress-port", "0"))
    server = ThreadingHTTPServer((host or "0.0.0.0", int(port)), Ingress)
    server.daemon_threads = True
    sys.stderr.write(f"sidecar: ingress on {host}:{port}\n")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1:])
