"""The poller's duties: named jobs with a period and a failure policy, run in one order.

Modelled on dramatiq's middleware: every duty is one entry in one list, and a duty that
fails is logged and tried again after its ``retry`` period; it never stops the others.
A failure that shows the API is away starts the outage (agent/poller/outage.py) and
skips the rest of the round's API duties: they would fail the same way. Only a
configuration error (a missing backend config variable at start) stops the poller.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from agent.core.errors import ApiError, ApiShapeError, ConfigError, SpoolError
from agent.poller.outage import Outage, is_outage

log = logging.getLogger(__name__)

EVERY_ROUND = 0.0


@dataclass
class Duty:
    name: str
    run: Callable[[], None]
    every: float = EVERY_ROUND  # seconds between runs; EVERY_ROUND: each round
    retry: float = EVERY_ROUND  # seconds until the next try after a failure
    needs_api: bool = True
    enabled: Callable[[], bool] = field(default=lambda: True)
    next_at: float = float("-inf")  # monotonic

    def due(self, now: float) -> bool:
        return now >= self.next_at and self.enabled()


@dataclass
class RoundResult:
    failures: list[tuple[str, Exception]] = field(default_factory=list)
    spool_error: str | None = None

    @property
    def failed(self) -> bool:
        return bool(self.failures)


def run_due(duties: Sequence[Duty], now: float, outage: Outage) -> RoundResult:
    """Run every duty that is due, in order; collect what failed."""
    result = RoundResult()
    for duty in duties:
        if not duty.due(now):
            continue
        if duty.needs_api and outage_started_this_round(result):
            continue  # the API is away: this duty would fail the same way
        try:
            duty.run()
        except ConfigError:
            raise
        except Exception as exc:
            duty.next_at = now + duty.retry
            result.failures.append((duty.name, exc))
            _log_failure(duty, exc, outage)
            if isinstance(exc, SpoolError):
                result.spool_error = str(exc)
        else:
            duty.next_at = now + duty.every
    return result


def outage_started_this_round(result: RoundResult) -> bool:
    return any(is_outage(exc) for _, exc in result.failures)


def _log_failure(duty: Duty, exc: Exception, outage: Outage) -> None:
    if isinstance(exc, ApiError) and is_outage(exc):
        outage.failed(exc)
    elif isinstance(exc, ApiShapeError):
        outage.wrong_api(exc)  # not every round: at most once a minute
    elif isinstance(exc, (ApiError, SpoolError)):
        log.error("%s failed, will retry in %.1fs: %s", duty.name, duty.retry, exc)
    else:
        # A bug: say so loudly, with the traceback, and keep serving.
        log.exception("%s failed unexpectedly, will retry in %.1fs", duty.name, duty.retry)
