"""The control API's cost: flared's idle RSS and CPU, and a warm `POST /exec`, beside the old server.

The baseline is the http.server-based control server of ``--baseline-ref``
(the commit before the move to h11). ``--baseline server`` (default)
runs this tree with only ``flared/control/server.py`` taken from that
commit, so the pair differs in the server alone; ``--baseline tree`` runs
that commit's whole ``flared/`` (before/after of everything since).

- idle: pairs of `flared up` with one bot, run side by side in the same
  window (which one starts first alternates), each sampled for ``--seconds``
  once its gateway answers /health. Figure: median of the per-pair RSS
  ratios (new/old) with min/max, and both CPU figures. Targets: RSS <= 50 MiB,
  CPU <= 0.5 %.
- exec: a warm `POST /exec` over the unix socket through the new server,
  through the old one, and the raw bubblewrap command, run in turn (new,
  old, raw, new, old, raw...). Figure: median of per-round ratios. Target:
  new <= 1.5x raw.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import ROOT, idle_profile, table

BASELINE_REF = "7fe3643"  # main with the http.server control API (and control/auth.py), before h11
PY = sys.executable


def ratio_stats(values: list[float]) -> str:
    return f"{statistics.median(values):.2f}x (min {min(values):.2f}, max {max(values):.2f}, {len(values)} pairs)"


# --------------------------------------------------------------------------- the baseline tree


def baseline_tree(ref: str, kind: str, dest: Path) -> Path:
    """A source root whose ``flared/`` is the baseline; returns the PYTHONPATH entry."""
    data = subprocess.run(["git", "archive", ref, "flared"], cwd=ROOT, check=True, capture_output=True).stdout
    old = dest / "old"
    old.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(old, filter="data")
    if kind == "tree":
        return old
    mixed = dest / "mixed"
    shutil.copytree(ROOT / "flared", mixed / "flared", ignore=shutil.ignore_patterns("__pycache__"))
    server = (old / "flared/control/server.py").read_text()
    # Routes now pass options the old Router did not know (max_body): it ignores them.
    server = server.replace(
        "public: bool = False\n    ) -> None:", "public: bool = False, **_: Any\n    ) -> None:", 1
    )
    # Later additions the daemon uses: options it passes (audit) are ignored, and the admin
    # page's listener cannot be bound (the daemon then runs without it and says so).
    server = server.replace(
        "tree: ProcessTree | None = None,\n    ) -> None:",
        "tree: ProcessTree | None = None,\n        **_: Any,\n    ) -> None:",
        1,
    )
    server += (
        "\n\ndef bind_tcp(address: tuple[str, int]) -> socket.socket:\n"
        '    raise OSError("the baseline serves no admin page")\n'
    )
    (mixed / "flared/control/server.py").write_text(server)
    return mixed


# --------------------------------------------------------------------------- idle


class Up:
    """One `flared up` with one bot; ``pythonpath`` selects the code it runs."""

    def __init__(self, root: Path, pythonpath: str | None) -> None:
        from tests.fixtures.flare import bot, config, free_port

        self.root = root
        root.mkdir(parents=True)
        self.port = free_port()
        import yaml

        data = config(root, [bot("hermes", self.port)])
        self.cfg = root / "hermes-flare.yaml"
        self.cfg.write_text(yaml.safe_dump(data, sort_keys=False))
        env = dict(os.environ)
        if pythonpath:
            env["PYTHONPATH"] = pythonpath
        self.proc = subprocess.Popen(
            [PY, "-m", "flared", "up", "-c", str(self.cfg)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env=env,
            cwd=root,
        )

    def wait_healthy(self, timeout: float = 180) -> int:
        """Wait for the gateway's /health; return flared's pid."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.2)
        else:
            raise SystemExit(f"gateway of {self.root} never answered /health")
        out = subprocess.check_output(["pgrep", "-f", f"flared run -c {self.cfg}"], text=True)
        return int(out.split()[0])

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGINT)
        try:
            self.proc.wait(90)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def _sample(out: dict[str, tuple[float, float]], name: str, pid: int, seconds: float) -> None:
    out[name] = idle_profile(pid, seconds)


def idle_pairs(tmp: Path, old_path: Path, pairs: int, seconds: float) -> list[list[str]]:
    rss_ratios: list[float] = []
    new_rss: list[float] = []
    old_rss: list[float] = []
    new_cpu: list[float] = []
    old_cpu: list[float] = []
    for i in range(pairs):
        order = [("new", None), ("old", str(old_path))]
        if i % 2:
            order.reverse()
        ups = {name: Up(tmp / f"idle{i}-{name}", path) for name, path in order}
        try:
            pids = {name: up.wait_healthy() for name, up in ups.items()}
            time.sleep(5)  # let start-up work settle
            res: dict[str, tuple[float, float]] = {}
            threads = [
                threading.Thread(target=_sample, args=(res, n, pid, seconds)) for n, pid in pids.items()
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
        finally:
            for up in ups.values():
                up.stop()
        new_rss.append(res["new"][0])
        old_rss.append(res["old"][0])
        new_cpu.append(res["new"][1])
        old_cpu.append(res["old"][1])
        rss_ratios.append(res["new"][0] / res["old"][0])
        print(
            f"pair {i + 1}: new {res['new'][0]:.1f} MiB {res['new'][1]:.2f} %, "
            f"old {res['old'][0]:.1f} MiB {res['old'][1]:.2f} %",
            file=sys.stderr,
        )
    med = statistics.median
    return [
        [
            f"flared idle RSS, one bot, peak over {seconds:.0f} s",
            f"{med(new_rss):.1f} MiB",
            f"{med(old_rss):.1f} MiB",
            ratio_stats(rss_ratios),
            "<= 50 MiB",
        ],
        [
            f"flared idle CPU over {seconds:.0f} s",
            f"{med(new_cpu):.2f} %",
            f"{med(old_cpu):.2f} %",
            f"{med(n - o for n, o in zip(new_cpu, old_cpu, strict=True)):+.2f} points",
            "<= 0.5 %",
        ],
    ]


# --------------------------------------------------------------------------- exec


def load_old_server(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location("flared_old_control_server", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def exec_rounds(tmp: Path, old_server: Path, rounds: int) -> list[list[str]]:
    from bench_sandboxes import manager

    from flared.api import leases as lease_routes
    from flared.config.models import SandboxProfile
    from flared.control import server as new_server
    from flared.control.client import ControlClient
    from flared.sandboxes.providers.local import LocalProvider, sandbox_root
    from flared.sandboxes.types import ExecRequest

    old = load_old_server(old_server)
    mgr = manager(tmp, "per-session")
    mgr.acquire("bench", "warm")
    servers: list[Any] = []
    clients: dict[str, Callable[[], Any]] = {}
    body = {"bot": "bench", "session": "warm", "command": "true"}
    for name, module in (("new", new_server), ("old", old)):
        router = module.Router()
        lease_routes.register(router, mgr)
        sock = tmp / f"{name}.sock"
        srv = module.ControlServer(router, state_dir=mgr.loaded.state_dir, socket_path=sock)
        srv.start()
        servers.append(srv)
        client = ControlClient(sock)
        clients[name] = lambda c=client: c.request("POST", "/exec", body)

    raw_provider = LocalProvider(sandbox_root(tmp / "raw"))
    raw_id = "fl-default-rawbaseline0"
    raw_data = raw_provider.create(raw_id, SandboxProfile())
    argv = raw_provider.argv(raw_id, SandboxProfile(), ExecRequest(command="true", cwd="/workspace"))
    argv = [*argv[: argv.index("--")], "--", "/bin/true"]
    uid = int(raw_data.get("uid", os.getuid()))
    as_lease: dict[str, Any] = {"user": uid, "group": uid, "extra_groups": []} if os.geteuid() == 0 else {}
    clients["raw"] = lambda: subprocess.run(argv, check=True, **as_lease)
    lease_id = mgr.list()[0]["id"]
    clients["manager"] = lambda: mgr.exec(lease_id, "true")  # the same work without HTTP

    times: dict[str, list[float]] = {k: [] for k in clients}
    try:
        for fn in clients.values():
            fn()  # warm up
        names = list(clients)
        for i in range(rounds):
            for name in (
                names[i % len(names) :] + names[: i % len(names)]
            ):  # rotate: each follows each as often
                t = time.perf_counter()
                clients[name]()
                times[name].append(time.perf_counter() - t)
    finally:
        for srv in servers:
            srv.stop()
        raw_provider.destroy(raw_id, raw_data)
        mgr.stop()

    def ratios(a: str, b: str) -> list[float]:
        return [x / y for x, y in zip(times[a], times[b], strict=True)]

    med = statistics.median
    ms = {k: med(v) * 1000 for k, v in times.items()}
    return [
        [
            "warm `POST /exec` (`true`), new server vs raw bwrap",
            f"{ms['new']:.1f} ms",
            f"{ms['raw']:.1f} ms",
            ratio_stats(ratios("new", "raw")).replace("pairs", "rounds"),
            "<= 1.5x",
        ],
        [
            "warm `POST /exec`, old http.server vs raw bwrap",
            f"{ms['old']:.1f} ms",
            f"{ms['raw']:.1f} ms",
            ratio_stats(ratios("old", "raw")).replace("pairs", "rounds"),
            "-",
        ],
        [
            "warm command without HTTP (`LeaseManager.exec`) vs raw bwrap",
            f"{ms['manager']:.1f} ms",
            f"{ms['raw']:.1f} ms",
            ratio_stats(ratios("manager", "raw")).replace("pairs", "rounds"),
            "-",
        ],
        [
            "warm `POST /exec`, new vs old server",
            f"{ms['new']:.1f} ms",
            f"{ms['old']:.1f} ms",
            ratio_stats(ratios("new", "old")).replace("pairs", "rounds"),
            "-",
        ],
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=3, help="idle pairs (default 3)")
    p.add_argument("--seconds", type=float, default=60, help="idle window per pair (default 60)")
    p.add_argument("--rounds", type=int, default=60, help="exec rounds (default 60)")
    p.add_argument("--baseline-ref", default=BASELINE_REF, help=f"git ref of the old server ({BASELINE_REF})")
    p.add_argument(
        "--baseline",
        choices=["server", "tree"],
        default="server",
        help="server: this tree with the old server.py (default); tree: the baseline ref's whole flared/",
    )
    p.add_argument("--skip-idle", action="store_true")
    p.add_argument("--skip-exec", action="store_true")
    args = p.parse_args()
    rows: list[list[str]] = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        old_root = baseline_tree(args.baseline_ref, args.baseline, tmp / "baseline")
        if not args.skip_idle:
            rows += idle_pairs(tmp, old_root, args.pairs, args.seconds)
        if not args.skip_exec:
            rows += exec_rounds(tmp, old_root / "flared/control/server.py", args.rounds)
    what = "only its control server" if args.baseline == "server" else "its whole `flared/`"
    print("## Control API (`bench/bench_control.py`)\n")
    print(
        f"New: this tree (h11, a worker thread per connection). Old: `{args.baseline_ref}`, {what} (http.server). "
        "Idle pairs run side by side; exec rounds run new, old, raw and the lease manager alone in turn, the order rotating each round.\n"
    )
    print(table(["measure", "new", "baseline", "ratio (median of pairs)", "target"], rows))


if __name__ == "__main__":
    main()
