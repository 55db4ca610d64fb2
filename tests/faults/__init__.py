"""The fault matrix: one test per row of docs/reliability.md.

Each test injects one fault (a kill, a full disk, a bad request, a hostile
sandbox...) and asserts both that the system kept working and that nothing
was lost (row counts, digests, a restorable `latest`). Files by area:
test_sandboxes.py, test_server.py, test_snapshots.py, test_gateways.py.
"""
