"""Retry delays: capped exponential backoff with full jitter.

"Full jitter" (AWS Architecture Blog, "Exponential Backoff And Jitter"): the delay is drawn
uniformly from [0, min(cap, base * 2 ** (attempt - 1))]. Spreading retries over the whole
window is what keeps a fleet of workers from retrying a struggling dependency in lockstep.

On SQS the delay is applied by changing the message's visibility timeout, so it is whole
seconds within [0, 43200] (12 hours, the SQS maximum). The attempt number is the message's
ApproximateReceiveCount, which SQS keeps for us across workers and restarts: no local state.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Final, Protocol

__all__ = ["MAX_VISIBILITY_SECONDS", "Backoff", "RandomSource"]

MAX_VISIBILITY_SECONDS: Final = 43_200


class RandomSource(Protocol):
    """What the backoff needs from a random generator (`random.Random` fits; tests seed one)."""

    def uniform(self, a: float, b: float) -> float: ...


@dataclass(frozen=True, kw_only=True)
class Backoff:
    """Capped exponential backoff with full jitter.

    `base`: the window for the first retry, seconds. `cap`: the largest window. `minimum`:
    a floor under every delay (0 keeps pure full jitter). Defaults: base 1 s, cap 900 s
    (15 minutes): after about ten failed receives the window stops growing, and with the
    usual maxReceiveCount of 3-10 a poison message reaches the DLQ within minutes to hours,
    never days.

    Raises ValueError for a negative value or `cap < base`.
    """

    base: float = 1.0
    cap: float = 900.0
    minimum: float = 0.0

    def __post_init__(self) -> None:
        for name in ("base", "cap", "minimum"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be non-negative, got {getattr(self, name)!r}")
        if self.cap < self.base:
            raise ValueError(f"cap ({self.cap}) must be at least base ({self.base})")

    def window(self, attempt: int) -> float:
        """The upper bound of the delay after failed attempt number `attempt` (1-based).

        Raises ValueError when `attempt` < 1.
        """
        if attempt < 1:
            raise ValueError(f"attempt must be >= 1, got {attempt!r}")
        # 2 ** 64 already exceeds any cap; bounding the exponent avoids float overflow.
        return min(self.cap, self.base * 2.0 ** min(attempt - 1, 64))

    def delay(self, attempt: int, rng: RandomSource) -> float:
        """A delay in seconds, uniform in [minimum, max(minimum, window(attempt))]."""
        upper = max(self.minimum, self.window(attempt))
        return rng.uniform(self.minimum, upper)

    def visibility_timeout(
        self, attempt: int, rng: RandomSource, *, hint: float | None = None
    ) -> int:
        """The delay as an SQS visibility timeout: whole seconds in [0, 43200].

        `hint` (a handler's `RetryLater(delay=...)`) replaces the drawn delay, still capped
        at the SQS maximum. Rounded up so a hint of 0.5 s never becomes an immediate retry.
        """
        seconds = hint if hint is not None else self.delay(attempt, rng)
        return max(0, min(MAX_VISIBILITY_SECONDS, math.ceil(seconds)))


def default_rng() -> random.Random:
    """A fresh, OS-seeded generator (each consumer owns one, so tests can inject theirs)."""
    return random.Random()
