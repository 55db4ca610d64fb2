"""``PUT /config``: replace hermes-flare.yaml through the control API.

The Worker pushes a redeployed config this way. The body is the YAML itself;
:meth:`flared.policy.reload.Reloader.push` validates it, checks it can apply
live, writes it atomically over the config file and applies it. A body that
fails leaves the file and the running system untouched.
"""

from __future__ import annotations

from flared.config.yamlpos import MAX_BYTES
from flared.control.server import HTTPError, Request, Response, Router
from flared.policy.reload import Reloader


def register(router: Router, reloader: Reloader) -> None:
    def put_config(req: Request) -> Response:
        try:
            text = req.body.decode("utf-8")
        except UnicodeDecodeError:
            raise HTTPError(400, "the body must be the YAML file as UTF-8 text") from None
        status, result = reloader.push(text)
        return Response(status, result)

    router.add("PUT", "/config", put_config, max_body=MAX_BYTES)  # a bigger file is refused anyway
