"""The retention duty: what finished runs left in done/, failed/ and runs/ is deleted
once it is older than --retention, so that a busy host's spool does not grow for ever.
Needs no API; the deletion itself is the spool's (Spool.prune)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from agent.settings import defaults
from agent.spool.moves import Spool

log = logging.getLogger(__name__)

RETAIN = defaults.RETENTION_CHECK_SECONDS  # how often the duty looks


class Retention:
    def __init__(
        self, spool: Spool, keep_seconds: float, clock: Callable[[], float] = time.time
    ) -> None:
        self.spool = spool
        self.keep_seconds = keep_seconds
        self._clock = clock

    def run(self) -> None:
        try:
            pruned = self.spool.prune(self._clock() - self.keep_seconds)
        except OSError as exc:  # best effort: a spool that cannot be listed is health's
            log.warning("retention: cannot look through spool %s: %s", self.spool.root, exc)
            return
        if pruned:
            log.info(
                "retention: deleted %d finished entries older than %s from spool %s",
                *(pruned, describe_seconds(self.keep_seconds), self.spool.root),
            )


def describe_seconds(seconds: float) -> str:
    """``7d``, ``36h``, ``90m`` or ``45s``: the largest unit that divides it."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:g}s"
