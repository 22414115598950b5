"""The API-outage state: one object the loop, the duties and health all read.

Once a round's calls have failed through their retry deadline the poller is in an
outage: calls make one attempt each, rounds back off (with jitter, so many hosts do not
retry in step), and ``GET /health`` is probed every second meanwhile. A probe that
succeeds after one failed starts a round at once, and for `RECOVERY_SECONDS` after that
every successful probe does: a server just back may answer /health while its other calls
still fail (a SQLite server answers 503 "database is locked" for a while after a restart),
and the first claim must still come within about two seconds of its return.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from agent.api.client import PrefectClient
from agent.core.errors import ApiError, ApiShapeError, TransientApiError
from agent.core.redact import redact_url
from agent.settings import defaults

log = logging.getLogger(__name__)

RECOVERY_SECONDS = 60.0
# An API URL that reaches something else (a proxy, a captive portal, the wrong port) fails
# every round the same way: said at most this often, and in health meanwhile.
NOT_PREFECT_LOG_SECONDS = 60.0


def is_outage(exc: BaseException) -> bool:
    """The API is away or failing, as opposed to refusing us (auth, 4xx)."""
    if not isinstance(exc, ApiError) or isinstance(exc, ApiShapeError):
        return False  # an answer of the wrong shape is no outage: probing cannot end it
    return isinstance(exc, TransientApiError) or exc.status is None or exc.status >= 500


class Outage:
    def __init__(
        self,
        client: PrefectClient,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self._clock, self._wall = clock, wall
        self.down_since: float | None = None  # wall time, for health and status
        self.last_error: str | None = None
        self._probe_failed = False  # the last probe of this outage failed
        self._next_probe = float("-inf")
        self._recovering_until = float("-inf")
        self.not_prefect: str | None = None  # why the API does not look like Prefect's
        self.not_prefect_since: float | None = None  # wall time
        self._next_not_prefect_log = float("-inf")

    @property
    def active(self) -> bool:
        return self.down_since is not None

    def failed(self, exc: ApiError) -> None:
        """A call failed for want of the API: the outage starts, or goes on."""
        self.last_error = str(exc)
        if self.down_since is None:
            self.down_since = self._wall()
            self._probe_failed = False
            log.error(
                "the Prefect API is unavailable: claiming nothing, probing it every %.0fs: %s",
                defaults.API_PROBE_SECONDS,
                exc,
            )
        else:
            log.debug("the Prefect API is still unavailable: %s", exc)

    def wrong_api(self, exc: ApiShapeError) -> None:
        """A call got an answer that is not the Prefect API's: kept for health, logged
        at most once a minute (it fails the same way every round)."""
        if exc.status is None:  # a JSON body of another shape: the boundary knows no URL
            reason = (
                f"{redact_url(self.client.settings.url)} does not look like a Prefect API: {exc}"
            )
        else:  # not JSON at all: the client's message names the URL and what came back
            reason = str(exc)
        if self.not_prefect is None:
            self.not_prefect_since = self._wall()
        self.not_prefect = reason
        now = self._clock()
        if now < self._next_not_prefect_log:
            log.debug("%s", reason)
            return
        self._next_not_prefect_log = now + NOT_PREFECT_LOG_SECONDS
        log.error(
            "%s; claiming nothing, trying again every round (said at most once a minute)",
            reason,
        )

    def ok(self, failures: Sequence[tuple[str, Exception]] = ()) -> None:
        """A round went through: the outage, if any, is over. ``failures``: the round's
        failed duties; while one got an answer of the wrong shape the API is still not
        known to be Prefect's."""
        if not any(isinstance(exc, ApiShapeError) for _, exc in failures):
            if self.not_prefect is not None:
                log.info(
                    "the API at %s answers as Prefect again", redact_url(self.client.settings.url)
                )
            self.not_prefect = self.not_prefect_since = None
            self._next_not_prefect_log = float("-inf")
        if self.down_since is not None:
            log.info(
                "the Prefect API answers again after %.0fs; polling",
                self._wall() - self.down_since,
            )
        self.down_since = None
        self.last_error = None
        self._recovering_until = float("-inf")

    def returned(self) -> bool:
        """Probe ``GET /health`` (at most every API_PROBE_SECONDS): True when a round
        should start now. A server that answers /health while failing other calls from
        the start of an outage is retried at the loop's backoff instead."""
        now = self._clock()
        if now < self._next_probe:
            return False
        self._next_probe = now + defaults.API_PROBE_SECONDS
        if not self.client.reachable():
            self._probe_failed = True
            return False
        if self._probe_failed:
            self._probe_failed = False
            self._recovering_until = now + RECOVERY_SECONDS
            return True
        return now < self._recovering_until
