"""Issue 12's targets for the agent, and the arithmetic behind them. Pure: figures in,
verdicts out."""

from __future__ import annotations

import math
from dataclasses import dataclass

MET, MISSED, NOT_MEASURED = "met", "missed", "not measured"


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default); NaN when empty."""
    ordered = sorted(values)
    if not ordered:
        return math.nan
    pos = (len(ordered) - 1) * q
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def ratio(value: float | None, floor: float | None) -> float | None:
    """``value`` as a multiple of ``floor``; None if either is missing or the floor is 0."""
    if value is None or floor is None or math.isnan(value) or math.isnan(floor) or floor <= 0:
        return None
    return value / floor


def finite(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else value


@dataclass(frozen=True)
class Target:
    what: str  # "burst at C=2, x the floor"
    limit: float  # the value must be at most this
    unit: str  # "x", " s", "/min", " MiB"

    def verdict(self, value: float | None) -> str:
        if value is None or math.isnan(value):
            return NOT_MEASURED
        return MET if value <= self.limit else MISSED

    def cell(self, value: float | None) -> str:
        """``0.61x met``, ``1.20 s missed``, ``not measured``."""
        verdict = self.verdict(value)
        if verdict == NOT_MEASURED or value is None:
            return verdict
        return f"{value:.2f}{self.unit} {verdict}"


# The figures each target is read from are named in report.py; the limits are the issue's.
BURST_C2 = Target("burst at C=2, wall time as a multiple of the floor's", 0.65, "x")
BURST_C4 = Target("burst at C=4, wall time as a multiple of the floor's", 0.75, "x")
PICKUP_P50 = Target("idle ad-hoc pickup, created -> Pending, p50", 0.5, " s")
PICKUP_P95 = Target("idle ad-hoc pickup, created -> Pending, p95", 1.0, " s")
CANCEL_RUNNING_P50 = Target("cancel a running run, Cancelling -> process gone, p50", 1.0, " s")
# Early counts as off time too: Prefect rounds its wait for the due time to the second,
# so an engine ready early may enter Running up to 0.5 s before it.
SCHEDULED_P95 = Target("scheduled runs, |due -> Running|, p95 (a free worker)", 1.0, " s")
WORKER_RSS = Target("idle RSS of each agent worker process (largest)", 25.0, " MiB")
POLLER_RSS = Target("idle RSS of the poller", 40.0, " MiB")


def api_target(prefect_per_minute: float | None) -> Target | None:
    """Idle API requests per minute: no more than Prefect's worker at its defaults, as
    measured in the same run; None when that was not measured."""
    if prefect_per_minute is None or math.isnan(prefect_per_minute):
        return None
    limit = round(prefect_per_minute, 1)
    return Target("idle API requests per minute, at most Prefect's worker's", limit, "/min")
