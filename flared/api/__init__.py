"""The control API's routes: the HTTP face of each service, one module per capability.

:func:`build_router` is called once by the daemon, which hands each module
the service it drives. Routes translate requests into the services' public
methods and hold no state; they never reach the daemon itself beyond
:class:`flared.api.core.DaemonView`. The HTTP machinery (server, client,
tokens) is :mod:`flared.control`.
"""

from __future__ import annotations

from flared.api import chat as chat_api
from flared.api import config as config_api
from flared.api import core
from flared.api import leases as lease_api
from flared.api import snapshots as snapshot_api
from flared.api.core import DaemonView
from flared.control.server import Router
from flared.gateways import Gateways
from flared.policy.reload import Reloader
from flared.sandboxes.manager import LeaseManager
from flared.snapshots.service import SnapshotService


def build_router(
    *,
    daemon: DaemonView,
    gateways: Gateways,
    reloader: Reloader,
    snapshots: SnapshotService,
    leases: LeaseManager,
) -> Router:
    router = Router()
    core.register(router, daemon, gateways, reloader)
    snapshot_api.register(router, snapshots, gateways)
    lease_api.register(router, leases)
    config_api.register(router, reloader)
    chat_api.register(router, reloader.live)
    return router
