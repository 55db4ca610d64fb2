"""Snapshots of each bot's Hermes home: capture, pack, store, restore.

Modules, one concept each: :mod:`.stores` (where objects live),
:mod:`.capture` (a consistent copy of a live home and its digest),
:mod:`.pack` (squashfs), :mod:`.crypto` (optional client-side AEAD),
:mod:`.manifest` (what the store says about a snapshot), :mod:`.retention`
(which to keep), :mod:`.engine` (one snapshot or restore, start to end),
:mod:`.service` (when, for which bot, inside the daemon), :mod:`.api`
(control routes).
"""
