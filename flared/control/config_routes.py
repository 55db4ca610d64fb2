"""``PUT /config``: replace hermes-flare.yaml through the control API.

The Worker pushes a redeployed config this way. The body is the YAML itself;
it is validated (and checked to be applicable live) before anything is
written, then written atomically over the config file and applied. A body
that fails leaves the file and the running system untouched.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flared import reload
from flared.control import HTTPError, Request, Response, Router
from flared.loader import ConfigError, load_config

if TYPE_CHECKING:
    from flared.daemon import Daemon


def register(router: Router, daemon: Daemon) -> None:
    def put_config(req: Request) -> Response:
        try:
            text = req.body.decode("utf-8")
        except UnicodeDecodeError:
            raise HTTPError(400, "the body must be the YAML file as UTF-8 text") from None
        if not text.strip():
            raise HTTPError(400, "empty body: send the whole hermes-flare.yaml")
        path = daemon.loaded.path
        with reload.reload_lock(daemon):
            try:
                new = load_config(path, text=text)
            except ConfigError as exc:
                return Response(400, {"applied": False, "errors": [i.as_dict() for i in exc.issues]})
            if new.digest == daemon.loaded.digest:
                return Response(200, {"applied": False, "unchanged": True, "config_digest": new.digest})
            issues = reload.refusal_issues(new, reload.diff(daemon.loaded.config, new.config))
            if issues:
                return Response(409, {"applied": False, "errors": [i.as_dict() for i in issues]})
            try:
                write_atomically(path, text)
            except OSError as exc:
                raise HTTPError(500, f"cannot write {path}: {exc.strerror or exc}") from None
            result: dict[str, Any] = reload.apply(daemon, new)
        return Response(200, result)

    router.add("PUT", "/config", put_config)


def write_atomically(path: Path, text: str) -> None:
    """Temp file in the same directory, fsync, rename: readers see old or new, never half."""
    mode = 0o600
    with contextlib.suppress(FileNotFoundError):
        mode = path.stat().st_mode & 0o777
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
