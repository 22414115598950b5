"""Poll interval policy. Pure."""

from __future__ import annotations


def next_poll_interval(current: float, found_work: bool, minimum: float, maximum: float) -> float:
    """Back to the minimum as soon as work is found; doubling up to the cap while idle.

    A failed poll counts as idle, so an unreachable API is retried at the capped pace.
    """
    if found_work:
        return minimum
    return min(maximum, max(minimum, current * 2))
