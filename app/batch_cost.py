"""What a batch costs: a model of batch time against batch size, learned online, for admission.

Admission must refuse work only when it would not finish within the bound. A rate of recent
batches cannot say that: on a search-bound index (exact search over millions of vectors) a batch of
64 costs little more than a batch of 1, so a rate learned from a quiet phase of single queries
refuses a burst it could answer in one batch. Here the time of a batch is modelled as
`fixed + per_query * size`, fitted by weighted least squares over recent batches (older ones
fade), and the wait of queued work is the sum of the modelled times of the batches it will form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Each new observation keeps this share of the weight of those before it (about 50 batches of memory).
DECAY = 0.98
# Sizes must spread by this much (weighted standard deviation, in queries) before a slope is trusted.
MIN_SIZE_SPREAD = 2.0


@dataclass(frozen=True)
class BatchCost:
    fixed_s: float
    per_query_s: float
    slope_known: bool


class BatchCostModel:
    def __init__(self, decay: float = DECAY) -> None:
        self.decay = decay
        self._w = self._x = self._y = self._xx = self._xy = 0.0
        self.observations = 0
        # Fitted once per batch, read by every admission (the event loop asks per request).
        self._cost: BatchCost | None = None

    def observe(self, size: int, seconds: float) -> None:
        if size <= 0 or seconds <= 0 or not math.isfinite(seconds):
            return
        d = self.decay
        self._w = self._w * d + 1.0
        self._x = self._x * d + size
        self._y = self._y * d + seconds
        self._xx = self._xx * d + size * size
        self._xy = self._xy * d + size * seconds
        self.observations += 1
        self._cost = self._fit()

    def cost(self) -> BatchCost | None:
        """The fitted line, or None before any batch has run."""
        return self._cost

    def _fit(self) -> BatchCost:
        mean_x, mean_y = self._x / self._w, self._y / self._w
        variance = self._xx / self._w - mean_x * mean_x
        if variance >= MIN_SIZE_SPREAD**2:
            slope = (self._xy / self._w - mean_x * mean_y) / variance
            # Noise can tilt the line: time never falls with size, and a batch never costs less than nothing.
            slope = max(slope, 0.0)
            fixed = max(mean_y - slope * mean_x, 0.0)
            return BatchCost(fixed, slope, slope_known=True)
        # All recent batches had about one size: their time is known, not how it grows with size.
        return BatchCost(mean_y, mean_y / max(mean_x, 1.0), slope_known=False)

    def batch_seconds(self, size: int) -> float:
        cost = self.cost()
        if cost is None or size <= 0:
            return 0.0
        if cost.slope_known:
            return cost.fixed_s + cost.per_query_s * size
        # Slope unknown: time in proportion to size (the cautious guess, as for an encoder-bound lane).
        return cost.per_query_s * size

    def estimated_wait_s(
        self, queued: int, incoming: int, max_batch: int, running: int = 0, running_for_s: float = 0.0
    ) -> float:
        """Seconds until `incoming` queries behind `queued` ones would be answered.

        `running` queries are in the batch being computed now, started `running_for_s` ago: what
        is left of its modelled time counts. Before the slope is known, the first queued batch costs
        at most the observed batch time: one full batch after a quiet phase is how the model learns
        the slope.
        """
        cost = self.cost()
        if cost is None:
            return 0.0
        total = queued + incoming
        wait = max(self.batch_seconds(running) - running_for_s, 0.0) if running else 0.0
        full, rest = divmod(total, max_batch)
        sizes = [max_batch] * full + ([rest] if rest else [])
        for position, size in enumerate(sizes):
            if position == 0 and not cost.slope_known:
                # Proportional below the observed size, capped at the observed time above it.
                wait += min(self.batch_seconds(size), cost.fixed_s)
            else:
                wait += self.batch_seconds(size)
        return wait
