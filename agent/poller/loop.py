"""The poller: a short loop over named duties (agent/poller/duty.py).

Each round runs, in order, every duty that is due (agent/poller/duties.py lists them).
Between rounds it sleeps, waking early on /api/poke or an event from Prefect's events
stream, on stop, for a freed worker when runs were left waiting, for the cancellation
duty (every two seconds however idle), when a spool it could not write to takes a
byte again and, in an API outage, when a probe of ``GET /health`` says it is back.
It holds no run in memory that is not also on disk.

Idle, the sleep doubles up to a cap: poll_interval_max, or the longer
poll_interval_max_pushed while the events stream is connected (it brings new runs by
push). Each poll looks that cap past the prefetch window, so a scheduled run is seen
before its window opens, and the sleep ends when the earliest one's window does."""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
import time
from types import FrameType
from typing import Any

from agent import __version__
from agent.api.client import PrefectClient
from agent.api.outbox import Outbox
from agent.api.reporter import Reporter
from agent.api.runlogs import RunLogs
from agent.core.backoff import next_poll_interval, poll_cap
from agent.core.errors import RET_OK
from agent.observe import metrics
from agent.poller import health
from agent.poller.cancellation import Cancellations
from agent.poller.claiming import Claiming, crash_after_claim
from agent.poller.duties import duties
from agent.poller.duty import Duty, outage_started_this_round, run_due
from agent.poller.events import EventStream
from agent.poller.outage import Outage
from agent.poller.shared import Shared
from agent.poller.stranded import Stranded
from agent.poller.upkeep import Upkeep, publish_info, write_state
from agent.settings import defaults
from agent.settings.config import PollerConfig
from agent.spool.moves import Spool
from agent.spool.registry import Registry

log = logging.getLogger(__name__)


class Poller:
    def __init__(
        self,
        config: PollerConfig,
        client: PrefectClient,
        spool: Spool,
        registry: Registry,
        runlogs: RunLogs | None = None,
    ) -> None:
        reporter = Reporter(client, Outbox(spool.root), runlogs, source="poller")
        self.s = Shared(config, config, client, spool, registry, reporter, Outage(client))
        self.s.backend_ready = not config.agent_config_id
        if config.crash_after_claim:
            self.s.after_claim = crash_after_claim
        self.claiming = Claiming(self.s)
        self.upkeep = Upkeep(self.s)
        self.stranded = Stranded(self.claiming)
        self.cancellations = Cancellations(self.s)
        self.duties = duties(self.s, self.claiming, self.upkeep, self.stranded, self.cancellations)
        self.polls = 0
        self.started_at = time.time()
        self.interval = config.poll_interval_min
        self._wake = threading.Event()
        self._stop = threading.Event()
        # Deployment events: counted by the events thread only, compared by the loop, so
        # that one arriving at any moment is never lost.
        self._schedule_changes = 0
        self._schedule_changes_seen = 0
        self.events: EventStream | None = None
        if config.events:
            self.events = EventStream(
                config.api,
                lambda: self.s.pool_id,
                self.poke,
                self.cancel_now,
                self._stop,
                schedule=self.schedule_changed,
            )

    def duty(self, name: str) -> Duty:
        return next(d for d in self.duties if d.name == name)

    def install_signal_handlers(self) -> None:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        log.info("%s: no new claims; exiting", signal.Signals(signum).name)
        self.stop()
        # The loop notices at once unless an API call is in flight (up to its read
        # timeout, or retrying). Leaving mid-call is safe: every claim is written ahead
        # and settled by the next poller. So: exit 0 within a second, always.
        timer = threading.Timer(defaults.POLLER_EXIT_DEADLINE, _exit_now)
        timer.daemon = True
        timer.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def poke(self) -> None:  # GET /api/poke, or an event of a new run: poll now
        self._wake.set()

    def cancel_now(self) -> None:  # a Cancelling event: look for cancellations now
        self.duty("cancellations").next_at = float("-inf")
        self._wake.set()

    def schedule_changed(self) -> None:
        """A deployment of the pool was created or updated: Prefect's scheduler makes its
        runs within seconds, with no event. Poll now, then from the shortest interval."""
        self._schedule_changes += 1
        self._wake.set()

    def cap(self) -> float:
        """The idle poll interval's cap in force now."""
        config = self.s.config
        pushed = self.events is not None and self.events.connected
        return poll_cap(pushed, config.poll_interval_max, config.poll_interval_max_pushed)

    # -- the loop ------------------------------------------------------------------------

    def run(self) -> int:
        publish_info(self.s)
        config = self.s.config
        log.info(
            "agent %s %s: pool %r, labels %s, spool %s",
            *(config.name, __version__, config.pool, sorted(config.labels), self.s.spool.root),
        )
        pushed = poll_cap(True, config.poll_interval_max, config.poll_interval_max_pushed)
        log.info(
            "idle polls every %gs at most%s; runs due within %gs are claimed early",
            config.poll_interval_max,
            f", {pushed:g}s while the events stream is connected" if self.events else "",
            config.prefetch_seconds,
        )
        if self.events is not None:
            self.events.start()
        try:
            while not self._stop.is_set():
                self.tick()
                max_polls = self.s.config.max_polls
                if max_polls is not None and self.polls >= max_polls:
                    log.info("reached --max-polls %d; exiting", max_polls)
                    break
                self._sleep(self.interval)
        finally:
            self._stop.set()  # the events stream's thread ends with the loop
        return RET_OK

    def tick(self) -> int:
        """One round of the duties that are due; returns how many runs were claimed."""
        s = self.s
        s.claimed = 0
        # One cap for the round: the poll looks this far ahead, so the sleep after it
        # may be this long (the stream may connect meanwhile).
        cap = s.lookahead = self.cap()
        s.next_due = None  # known only from this round's poll
        # A deployment changed before this round's poll: it polls, then poll often again.
        changes = self._schedule_changes
        rescheduled = changes != self._schedule_changes_seen
        self._schedule_changes_seen = changes
        with s.client.single_attempt(s.outage.active):
            result = run_due(self.duties, time.monotonic(), s.outage)
        if result.spool_error:
            s.spool_error = result.spool_error
        if result.failed:
            metrics.POLL_ERRORS.inc()
            s.last_error = "; ".join(f"{name}: {exc}" for name, exc in result.failures)
        else:
            s.last_error = None
        if not outage_started_this_round(result):
            s.outage.ok(result.failures)  # it answered (a 422 is an answer too)
        self.polls += 1
        found_work = s.claimed > 0 or rescheduled
        minimum = s.config.poll_interval_min
        self.interval = next_poll_interval(
            self.interval, found_work, minimum, cap, self._until_next_window()
        )
        if result.failed and s.outage.active:
            # Agents of many hosts waiting out one outage must not retry in step.
            self.interval *= random.uniform(0.8, 1.2)
        write_state(s, self.started_at)
        return s.claimed

    def _until_next_window(self) -> float | None:
        """Seconds until the prefetch window of the earliest run seen beyond it opens."""
        if self.s.next_due is None:
            return None
        return self.s.next_due - self.s.config.prefetch_seconds - time.time()

    def _sleep(self, seconds: float) -> None:
        """Wait for the next round; wake early on poke, stop, the API's return, a spool
        writable again, or a freed worker with runs waiting. Cancellations are looked for
        meanwhile."""
        started = time.monotonic()
        deadline = started + seconds
        spool_recheck_at = started + defaults.SPOOL_RECHECK_SECONDS
        cancellations = self.duty("cancellations")
        while not self._stop.is_set():
            cap = self.cap()
            if cap < self.s.lookahead:  # the stream dropped: no push, the shorter cap now
                deadline = min(deadline, started + cap)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            look = defaults.LOCAL_CHECK_SECONDS
            if self.s.backlog:
                look = defaults.BACKLOG_CHECK_SECONDS
            if self._wake.wait(min(remaining, look)):
                self._wake.clear()
                return
            if self.upkeep.probe_failed and time.monotonic() >= spool_recheck_at:
                spool_recheck_at = time.monotonic() + defaults.SPOOL_RECHECK_SECONDS
                self.upkeep.probe_spool()  # local: a write of one byte
                if not self.upkeep.probe_failed:
                    return  # space again: claim what waited
            if self.s.outage.active:
                if self.s.outage.returned():
                    return
                continue  # nothing else can reach the API now
            if cancellations.due(time.monotonic()):
                looked = run_due([cancellations], time.monotonic(), self.s.outage)
                if looked.failed:  # health says why until the next round
                    self.s.last_error = "; ".join(f"{n}: {e}" for n, e in looked.failures)
                if self.s.outage.active:
                    return  # seen between rounds: the next round makes single attempts
            if self.s.backlog and self.s.free_slots() > 0:
                return

    def health(self) -> tuple[bool, dict[str, Any]]:
        ok, checks = health.health(self.s, self.started_at)
        checks["poll"]["interval_seconds"] = round(self.interval, 3)
        checks["poll"]["interval_cap_seconds"] = self.cap()
        if self.events is not None:
            checks["events"] = self.events.status()
        return ok, checks


def _exit_now() -> None:
    log.warning("an API call is still in flight; exiting without waiting for it")
    logging.shutdown()
    os._exit(RET_OK)
