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
- egress, HTTP only: every name the app looks up resolves to FAKE_IP. The
  resolvers of /etc/resolv.conf (workerd sets 1.1.1.1) and FAKE_IP are
  addresses of this namespace's loopback, so the app's lookups reach the
  DNS server here and its connections to FAKE_IP:80 the listener here. Each
  connection's Host header goes to workerd's egress listener (the host, port
  from ``PUT /egress``) as ``CONNECT`` with ``X-Hostname``, and the bytes
  follow: workerd hands a host the Worker intercepts
  (``sandboxes.flare.internal``) to Worker code. Traffic to an address (the
  test's S3 server and model on the bridge) is not touched, which is also
  why a local run proves nothing about ``enableInternet``. podman 4.3
  writes ``host-gateway`` literally into /etc/hosts, so the host is the
  default route's gateway, not ``host.docker.internal``.

Standard library only; started as ``sidecar.py --http-egress-port N
--http-ingress-address 0.0.0.0:39001 ...`` (unknown flags are ignored).
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CA_PATH = "/etc/sidecar/ca.crt"
CONFIG: dict[str, int] = {}
FAKE_IP = "198.18.0.1"
MAX_HEAD = 64 * 1024


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
            body = json.loads(raw or b"{}")
            if isinstance(body.get("port"), int):
                CONFIG["port"] = body["port"]
        except (ValueError, AttributeError):
            self.reply(400, b"body is not JSON")
            return
        self.reply(200, b"{}", "application/json")


def default_gateway() -> str:
    """The host as this network namespace reaches it: the default route's gateway."""
    with open("/proc/net/route") as fh:
        for line in fh.readlines()[1:]:
            fields = line.split()
            if fields[1] == "00000000":
                return socket.inet_ntoa(struct.pack("<L", int(fields[2], 16)))
    raise RuntimeError("no default route")


def dns_answer(query: bytes) -> bytes:
    """FAKE_IP for an A question, no answer for anything else (one question, as resolvers ask)."""
    qid, _flags, qdcount = struct.unpack("!HHH", query[:6])
    i = 12
    while query[i] != 0:
        i += 1 + query[i]
    qtype = struct.unpack("!H", query[i + 1 : i + 3])[0]
    question = query[12 : i + 5]
    header = struct.pack("!HHHHHH", qid, 0x8180, qdcount, 1 if qtype == 1 else 0, 0, 0)
    if qtype != 1:
        return header + question
    answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 5, 4) + socket.inet_aton(FAKE_IP)
    return header + question + answer


def serve_dns() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", 53))
    while True:
        query, peer = sock.recvfrom(4096)
        try:
            sock.sendto(dns_answer(query), peer)
        except (IndexError, struct.error):
            continue


def read_head(conn: socket.socket) -> bytes:
    head = b""
    while b"\r\n\r\n" not in head and len(head) < MAX_HEAD:
        chunk = conn.recv(65536)
        if not chunk:
            break
        head += chunk
    return head


def host_of(head: bytes) -> str | None:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"host":
            return value.strip().decode("latin-1").rsplit(":", 1)[0] if b"]" not in value else None
    return None


def egress(conn: socket.socket, gateway: str) -> None:
    """One intercepted connection: CONNECT to workerd with its Host, then the bytes as they come."""
    try:
        head = read_head(conn)
        host = host_of(head)
        port = CONFIG.get("port")
        if not host or not port:
            conn.close()
            return
        upstream = socket.create_connection((gateway, port), timeout=10)
        upstream.sendall(
            f"CONNECT {FAKE_IP}:80 HTTP/1.1\r\nHost: {FAKE_IP}:80\r\nX-Hostname: {host}\r\n\r\n".encode()
        )
        reply = read_head(upstream)
        status = reply.split(b" ", 2)[1] if b" " in reply else b""
        if status not in (b"200", b"202"):
            sys.stderr.write(f"sidecar: egress to {host} refused: {reply[:200]!r}\n")
            conn.close()
            upstream.close()
            return
        rest = reply.split(b"\r\n\r\n", 1)[1]
        if rest:
            conn.sendall(rest)
        upstream.settimeout(None)
        upstream.sendall(head)
        pump(conn, upstream)
    except OSError as exc:
        sys.stderr.write(f"sidecar: egress failed: {exc}\n")
        conn.close()


def resolvers() -> list[str]:
    with open("/etc/resolv.conf") as fh:
        return [line.split()[1] for line in fh if line.startswith("nameserver") and "." in line]


def serve_egress() -> None:
    gateway = default_gateway()
    for address in [*resolvers(), FAKE_IP]:
        subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", "lo"], check=True)
    threading.Thread(target=serve_dns, daemon=True).start()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((FAKE_IP, 80))
    listener.listen(128)
    sys.stderr.write(f"sidecar: egress through {gateway}\n")
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=egress, args=(conn, gateway), daemon=True).start()


def main(args: list[str]) -> None:
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))  # PID 1: stop at once
    host, _, port = option(args, "--http-ingress-address", "0.0.0.0:39001").rpartition(":")
    CONFIG["port"] = int(option(args, "--http-egress-port", "0"))
    server = ThreadingHTTPServer((host or "0.0.0.0", int(port)), Ingress)
    server.daemon_threads = True
    sys.stderr.write(f"sidecar: ingress on {host}:{port}\n")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    serve_egress()


if __name__ == "__main__":
    main(sys.argv[1:])
