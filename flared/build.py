"""Which build of flared this is: the release plus a digest of its own source.

`__version__` changes only by hand, so two deploys of different code would both say
0.1.0 and the Worker's rollout check (`version_mismatch` in /api/status) would pass.
The build id is the digest of every module of the package as installed: the Worker
rendered from a checkout and the Agent image built from the same checkout agree, and
any edit between the two shows.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from flared import __version__

PACKAGE = Path(__file__).resolve().parent


def source_digest(root: Path = PACKAGE) -> str:
    """sha256 over each module's path (relative to `root`) and bytes, in path order; 12 hex."""
    h = hashlib.sha256()
    for path in sorted(root.rglob("*.py"), key=lambda p: p.relative_to(root).as_posix()):
        if "__pycache__" in path.parts:
            continue
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(path.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:12]


@functools.cache
def release() -> str:
    """`0.1.0+<digest>`: what /healthz, status, snapshots and the Worker's vars name."""
    return f"{__version__}+{source_digest()}"
