"""Retry backoff: exponential with full jitter (AWS architecture blog's "Full Jitter")."""

from __future__ import annotations

import random


def backoff_seconds(
    failures: int, base: float, cap: float, rng: random.Random | None = None
) -> float:
    """Delay before the next try after ``failures`` failed attempts (1 for the first failure).

    Uniform in ``[0, min(cap, base * 2 ** (failures - 1))]``: full jitter spreads retries of a
    burst of failures instead of synchronising them.
    """
    if failures < 1:
        return 0.0
    ceiling = min(cap, base * (2.0 ** min(failures - 1, 62)))
    return (rng or random).uniform(0.0, ceiling)


__all__ = ["backoff_seconds"]
