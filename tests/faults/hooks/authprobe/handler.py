"""Test-only Hermes hook: from inside a real gateway process (and a child of it), use flared's socket.

Installed into a bot's Hermes home by tests/faults/test_sandboxes.py. It tries
what a gateway could: no token, its own token, and a token it mints for another
bot from the state dir's secret (same uid: it can read it). Results go to
``$HERMES_HOME/authprobe.json``.
"""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

REQUEST = r"""
import http.client, json, socket, sys
def request(path, token, route):
    class C(http.client.HTTPConnection):
        def connect(self):
            self.sock = socket.socket(socket.AF_UNIX); self.sock.settimeout(10); self.sock.connect(path)
    c = C("localhost", timeout=10)
    c.request("GET", route, headers={"Authorization": "Bearer " + token} if token else {})
    r = c.getresponse()
    return [r.status, r.read().decode()[:200]]
"""
CLIENT = REQUEST + "print(json.dumps(request(*sys.argv[1:4])))\n"
_here: dict = {}
exec(REQUEST, _here)


def probe() -> None:
    home = Path(os.environ["HERMES_HOME"])
    sock = os.environ["FLARE_CONTROL_SOCKET"]
    own = os.environ["FLARE_BOT_TOKEN"]
    bot = os.environ["FLARE_BOT"]
    other = (home / "authprobe-other").read_text().strip()
    from flared.control.tokens import bot_token  # the gateway's own install of flared

    minted = bot_token(Path(sock).parent, other)

    def ask(token: str, route: str) -> list:
        out = subprocess.run(
            [sys.executable, "-c", CLIENT, sock, token, route], capture_output=True, text=True
        )
        return json.loads(out.stdout) if out.stdout else [0, out.stderr[-300:]]

    here = _here["request"]
    results = {
        "bot": bot,
        "no_token_status": here(sock, "", "/status"),
        "own_token_leases": here(sock, own, "/leases"),
        "minted_token_leases": here(sock, minted, f"/leases?bot={other}"),
        "child_no_token_status": ask("", "/status"),
        "child_no_token_leases": ask("", "/leases"),
        "child_own_token_leases": ask(own, "/leases"),
        "child_minted_token_leases": ask(minted, f"/leases?bot={other}"),
        "child_healthz": ask("", "/healthz"),
    }
    tmp = home / "authprobe.json.tmp"
    tmp.write_text(json.dumps(results))
    os.replace(tmp, home / "authprobe.json")


async def handle(event_type, context):
    threading.Thread(target=probe, daemon=True).start()
