"""The gateway's canary split: a share of requests to a candidate version, the rest to stable.

The model server serves both versions side by side (TF Serving's version labels, or pizzactl's
model server with the same model config: modelserver/versions.py); the gateway picks per
request which one it asks, through TF Serving's own URLs (`/labels/<label>` or `/versions/<n>`),
so this works in front of `tensorflow/serving` too. The split is counted, not drawn: of every
100 / percent requests one goes to the candidate (10% is exactly 1 in 10), so the share is
what was asked over any stretch of traffic, not only on average. What the candidate cannot
answer (an error, a timeout, a dead server, an unloaded version) is asked of stable: a canary
never costs a user a request.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from pizzactl.errors import ConfigError


def route(target: str) -> str:
    """TF Serving's URL part for a version number (`/versions/2`) or a label (`/labels/canary`)."""
    target = target.strip()
    return f"/versions/{target}" if target.isdigit() else f"/labels/{target}"


@dataclass(frozen=True)
class Routes:
    """Where one request goes first, and where it goes if that fails (None: nowhere else)."""

    first: str | None
    fallback: str | None = None
    role: str = "stable"


class CanarySplit:
    """`percent` of the calls to `candidate`, the rest to `stable` (labels or version numbers)."""

    def __init__(self, percent: float, candidate: str = "canary", stable: str = "stable"):
        if not 0 <= percent <= 100:
            raise ConfigError(
                f"canary_percent is {percent:g}.",
                hint="Set PIZZACTL_CANARY_PERCENT between 0 (off) and 100.",
            )
        if not candidate.strip() or not stable.strip():
            raise ConfigError("The canary needs a candidate and a stable version.", hint="Name a label or a number.")
        self.percent = float(percent)
        self.candidate = route(candidate)
        self.stable = route(stable)
        self._credit = 0.0
        self._lock = threading.Lock()

    @property
    def on(self) -> bool:
        return self.percent > 0

    def pick(self) -> Routes:
        """The next call's routes: the candidate's share by a running count (exact, not random)."""
        if not self.on:
            return Routes(None)
        with self._lock:
            self._credit += self.percent
            to_candidate = self._credit >= 100
            if to_candidate:
                self._credit -= 100
        return Routes(self.candidate, self.stable, "candidate") if to_candidate else Routes(self.stable)
