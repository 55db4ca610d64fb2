"""Is a gateway alive? Hermes' own signals, read from its home.

`hermes status` exits 0 even when the gateway is down, so flared reads the
heartbeat file and `gateway_state.json` that the gateway writes itself.
"""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any


def gateway_liveness(home: Path) -> dict[str, Any]:
    """Hermes' own view: heartbeat age and gateway_state.json, since `hermes status` always exits 0."""
    out: dict[str, Any] = {
        "heartbeat_age_s": None,
        "heartbeat_pid": None,
        "gateway_state": None,
        "pid": None,
        "platforms": {},
    }
    try:
        hb = json.loads((home / "state" / "gateway.heartbeat").read_text())
        updated = datetime.fromisoformat(hb["updated_at"])
        out["heartbeat_age_s"] = round((datetime.now(UTC) - updated).total_seconds(), 1)
        out["heartbeat_pid"] = hb.get("pid")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    try:
        st = json.loads((home / "gateway_state.json").read_text())
        out["pid"] = st.get("pid")  # which run wrote it: a previous run's file says nothing now
        out["gateway_state"] = st.get("gateway_state")
        out["platforms"] = {k: v.get("state") for k, v in (st.get("platforms") or {}).items()}
    except (OSError, ValueError, AttributeError):
        pass
    with contextlib.suppress(OSError, ValueError):
        out["plugin"] = json.loads((home / "state" / "flare-plugin.json").read_text())
    return out


def startup_failed_at(home: Path) -> float | None:
    """When Hermes last wrote ``gateway_state: startup_failed`` (epoch seconds), if it did."""
    try:
        st = json.loads((home / "gateway_state.json").read_text())
        if st.get("gateway_state") != "startup_failed":
            return None
        return datetime.fromisoformat(str(st["updated_at"])).timestamp()
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def plugin_failed(home: Path) -> tuple[float, str] | None:
    """When the flare plugin last ended a gateway because a feature did not install (epoch s), and why.

    The plugin records it in ``state/flare-plugin.json`` before it exits 78:
    Hermes loads plugins before it writes ``gateway_state.json``, and a run
    that short loses its exit status in supervisord.
    """
    try:
        reg = json.loads((home / "state" / "flare-plugin.json").read_text())["registered"]
        if reg.get("ok", True) is not False:
            return None
        return float(reg["at"]), str(reg.get("error") or "the flare plugin did not install")
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def health_error(host: str, port: int, timeout: float) -> str | None:
    """None when the gateway's api_server answers ``GET /health`` within ``timeout``; else what went wrong.

    Any HTTP answer below 500 counts: it proves the gateway's event loop runs.
    """
    import http.client  # ~30 ms of import (ssl, email): only where a probe is made

    deadline = f"{timeout:g} s"
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/health")
        resp = conn.getresponse()
        resp.read()
    except TimeoutError:
        return f"GET /health got no answer within {deadline}"
    except ConnectionRefusedError:
        return f"GET /health: nothing listens on {host}:{port}"
    except (OSError, http.client.HTTPException) as exc:
        return f"GET /health failed: {exc}"
    finally:
        conn.close()
    if resp.status >= 500:
        return f"GET /health answered {resp.status}"
    return None
