"""Snapshots of each bot's Hermes home: capture, pack, store, restore.

Modules, one concept each: :mod:`.stores` (where objects live),
:mod:`.capture` (what a snapshot holds of a live home, and its digest) with
:mod:`.hashcache` (hashes and database copies kept between snapshots),
:mod:`.pack` (squashfs straight from the home), :mod:`.crypto` (optional client-side AEAD),
:mod:`.manifest` (what the store says about a snapshot), :mod:`.retention`
(which to keep), :mod:`.catalog` (reading the store: `latest`, listings,
pruning), :mod:`.pipeline` (one snapshot, start to end), :mod:`.restore`
(one restore), :mod:`.service` (when, for which bot, inside the daemon) with
:mod:`.scheduler` (periodic and on-change triggers).

Must not start or stop gateways itself: the service asks through
:class:`.service.GatewayControl`.
"""
