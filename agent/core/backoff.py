"""Poll interval policy. Pure."""

from __future__ import annotations


def poll_cap(pushed: bool, cap: float, cap_pushed: float) -> float:
    """The idle cap in force. While the events stream is connected, new runs, retries,
    resumes and cancellations arrive by push, so polls may be further apart (never
    closer than without the stream); without it, the cap is what it always was."""
    return max(cap, cap_pushed) if pushed else cap


def next_poll_interval(
    current: float,
    found_work: bool,
    minimum: float,
    maximum: float,
    until_next: float | None = None,
) -> float:
    """Back to the minimum as soon as work is found; doubling up to the cap while idle.

    A failed poll counts as idle, so an unreachable API is retried at the capped pace.
    ``until_next``: seconds until the prefetch window of the earliest run the last poll
    saw but could not claim yet opens; the next poll is no later than that (nor sooner
    than the minimum), so that run is claimed as early as prefetch allows.
    """
    interval = minimum if found_work else min(maximum, max(minimum, current * 2))
    if until_next is not None:
        interval = min(interval, max(minimum, until_next))
    return interval
