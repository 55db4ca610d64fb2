"""Hand flared its secrets outside every environment a child process could inherit.

supervisord passes its whole environment to every program it starts, and a
process's environment at exec time stays readable in ``/proc/<pid>/environ``
for as long as it runs. So whatever starts supervisord (`flared up`, the
Agent image's entrypoint) writes its environment to a 0600 *handoff file*
and starts supervisord with only :data:`BASE_VARS`. supervisord gives
``flared run`` (and the operator program) the file's path as
``FLARE_ENV_FILE``; :func:`adopt` reads it into ``os.environ`` for flared's
Python code (``${VAR}`` in the YAML, ``FLARE_*`` overrides, boto3's
credential chain) and at once removes each variable from the process's C
environment (``os.unsetenv``, which leaves the mapping alone), so no child
of flared inherits them either. Gateways get their secrets only from their
own rendered ``.env``.

The file holds NUL-terminated ``KEY=VALUE`` entries, the format of
``/proc/<pid>/environ`` and ``env -0``, so any value survives.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

ENV_FILE_VAR = "FLARE_ENV_FILE"

#: What supervisord and every program it starts may inherit: nothing secret, what processes need to run.
BASE_VARS = (
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "LANG",
    "LANGUAGE",
    "LC_ALL",
    "LC_CTYPE",
    "LC_MESSAGES",
    "TZ",
    "TMPDIR",
    "TERM",
    "XDG_RUNTIME_DIR",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "REQUESTS_CA_BUNDLE",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "no_proxy",
    "PYTHONPATH",
    "PYTHONUNBUFFERED",
    "PYTHONDONTWRITEBYTECODE",
    "VIRTUAL_ENV",
    "HERMES_FLARE_CONFIG",
    "FLARE_STATE_DIR",
)


class HandoffError(Exception):
    """The handoff file named by ``FLARE_ENV_FILE`` cannot be used."""


def base_env(environ: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The inheritable part of ``environ`` (default: this process's), plus ``extra``."""
    env = os.environ if environ is None else environ
    out = {k: env[k] for k in BASE_VARS if k in env}
    out.update(extra)
    return out


def secret_part(environ: Mapping[str, str]) -> dict[str, str]:
    """Everything of ``environ`` that is not in :data:`BASE_VARS`: what the handoff file carries."""
    return {k: v for k, v in environ.items() if k not in BASE_VARS and k != ENV_FILE_VAR}


def encode(values: Mapping[str, str]) -> bytes:
    out = bytearray()
    for k, v in sorted(values.items()):
        if not k or "=" in k or "\0" in k or "\0" in v:
            raise ValueError(f"cannot hand over environment variable {k!r}")
        out += f"{k}={v}".encode() + b"\0"
    return bytes(out)


def decode(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in data.split(b"\0"):
        if not item:
            continue
        key, sep, value = item.decode("utf-8", errors="surrogateescape").partition("=")
        if sep and key:
            out[key] = value
    return out


def write(path: Path, values: Mapping[str, str]) -> None:
    """Write the handoff file atomically, mode 0600 from the first byte."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(encode(values))
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def read(path: Path) -> dict[str, str]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise HandoffError(f"{path} does not exist (start flared with `flared up`)") from None
    except OSError as exc:
        raise HandoffError(f"cannot read {path}: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as fh:
        if os.fstat(fh.fileno()).st_mode & 0o077:
            raise HandoffError(f"{path} is readable by others; it must be mode 0600")
        return decode(fh.read())


def adopt(environ: Mapping[str, str] | None = None) -> list[str]:
    """Take the handoff named by ``$FLARE_ENV_FILE`` into ``os.environ``, out of the C environment.

    Variables already in the environment keep their value (a program's own
    ``environment=`` wins). Returns the names taken. Nothing happens without
    ``FLARE_ENV_FILE`` or when its file does not exist (supervisord started
    by hand from ``flared render supervisord``, with the environment it
    had: then flared runs on what it inherited, as before).
    """
    env = os.environ if environ is None else environ
    path = env.get(ENV_FILE_VAR)
    if not path or not Path(path).exists():
        return []
    values = read(Path(path))
    taken = [k for k in values if k not in os.environ]
    for key in taken:
        os.environ[key] = values[key]
    hide(taken)
    return taken


def hide(names: Iterable[str]) -> None:
    """Remove variables from the C environment children inherit; ``os.environ`` keeps them."""
    for key in names:
        if key not in BASE_VARS:
            with contextlib.suppress(OSError):
                os.unsetenv(key)
