"""Per-step timings of one snapshot or restore (``steps`` in results, status and the bench)."""

from __future__ import annotations

import time


class StepTimer:
    """``timer("pack")`` adds the time since the previous call (or since creation) to that step.

    A step named twice adds up, so work split around another step is still one figure.
    """

    def __init__(self, steps: dict[str, float]) -> None:
        self.steps = steps
        self._mark = time.monotonic()

    def __call__(self, name: str) -> None:
        now = time.monotonic()
        self.steps[name] = round(self.steps.get(name, 0.0) + now - self._mark, 3)
        self._mark = now
