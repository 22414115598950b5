"""The agent's own lines on a flow run's page in Prefect (``POST /logs/``).

Shipping never blocks or fails a run: ``emit`` only appends to a bounded queue; one
daemon thread sends batches, keeps a batch through transient API failures with capped
exponential backoff, and drops (counted in ``agent_run_logs_dropped_total``) the oldest
lines when the queue is full, and any batch the API rejects outright. Lines still
unsent when the process stops go to ``spill`` (the spool's outbox, which the poller
delivers once the API answers) when one is given, else they are dropped too.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, Protocol

from agent.api.client import PrefectClient
from agent.core.errors import ApiError, TransientApiError
from agent.observe import metrics

log = logging.getLogger(__name__)

Entry = dict[str, Any]

# Bounds the queue's memory (max_pending lines of at most this); our lines are short.
MAX_MESSAGE_CHARS = 10_000
# The shipper's backoff is the retry loop: the client makes one attempt per send, so a
# dead API neither holds close() in the client's own retries nor logs a warning per retry.
SEND_DEADLINE = 0.0


class RunLogs(Protocol):
    def emit(self, flow_run_id: str, message: str, level: int = logging.INFO) -> None: ...

    def close(self, timeout: float = 2.0) -> None: ...


class NoRunLogs:
    """``--no-cloud-logs``: run log lines go nowhere."""

    def emit(self, flow_run_id: str, message: str, level: int = logging.INFO) -> None:
        pass

    def close(self, timeout: float = 2.0) -> None:
        pass


def is_transient(exc: BaseException) -> bool:
    """Worth sending again later: no answer, 429, or a 5xx."""
    if isinstance(exc, TransientApiError):
        return True
    return isinstance(exc, ApiError) and (exc.status is None or exc.status >= 500)


def _drop(count: int, reason: str) -> None:
    if count:
        metrics.RUN_LOGS_DROPPED.labels(reason).inc(count)


class RunLogShipper:
    def __init__(
        self,
        send: Callable[[list[Entry]], None],
        *,
        logger_name: str = "local-agent",
        max_pending: int = 1000,
        batch_size: int = 100,
        flush_interval: float = 1.0,
        max_backoff: float = 30.0,
        clock: Callable[[], float] = time.time,
        spill: Callable[[list[Entry]], None] | None = None,
    ) -> None:
        if max_pending < 1 or batch_size < 1:
            raise ValueError("max_pending and batch_size must be at least 1")
        self._send = send
        self._name = logger_name
        self._max_pending = max_pending
        self._batch_size = batch_size
        # A batch is "full" (send now) at batch_size, or when the queue itself is full.
        self._full = min(batch_size, max_pending)
        self._flush_interval = flush_interval
        self._max_backoff = max_backoff
        self._clock = clock
        self._spill = spill
        self._pending: deque[Entry] = deque()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closing = False
        self._close_by = 0.0  # monotonic; meaningful once closing
        # Trouble is logged once when it starts and once when delivery resumes.
        self._dropping = False
        self._retrying = False
        self._warned_invalid = False

    def start(self) -> None:
        with self._cond:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="run-log-shipper", daemon=True)
        self._thread.start()

    def emit(self, flow_run_id: str, message: str, level: int = logging.INFO) -> None:
        """Queue one line for a flow run; never blocks on the API, never raises."""
        try:
            self._emit(flow_run_id, message, level)
        except Exception:  # a log line must never break the run it describes
            log.debug("could not queue a run log line", exc_info=True)

    def _emit(self, flow_run_id: str, message: str, level: int) -> None:
        try:
            # The server takes only UUIDs; a bad id would get the whole batch rejected.
            run_id = str(uuid.UUID(str(flow_run_id)))
        except ValueError:
            _drop(1, "invalid")
            if not self._warned_invalid:
                self._warned_invalid = True
                log.warning("dropping run log lines for %r: not a flow run id", flow_run_id)
            return
        entry: Entry = {
            "name": self._name,
            "level": int(level),
            "message": str(message)[:MAX_MESSAGE_CHARS],
            "timestamp": datetime.fromtimestamp(self._clock(), UTC).isoformat(),
            "flow_run_id": run_id,
            "task_run_id": None,
        }
        oldest: Entry | None = None
        first_drop = False
        with self._cond:
            if self._closing:
                oldest = entry
            else:
                if len(self._pending) >= self._max_pending:
                    oldest = self._pending.popleft()
                    first_drop = not self._dropping
                    self._dropping = True
                self._pending.append(entry)
                # Wake the thread to start a flush period, or to send a full batch now.
                if len(self._pending) in (1, self._full):
                    self._cond.notify()
        # Counted and logged outside the lock: a logging handler may itself call emit.
        if oldest is not None:
            _drop(1, "shutdown" if oldest is entry else "queue_full")
            log.debug("dropped run log line for %s: %s", oldest["flow_run_id"], oldest["message"])
        if first_drop:
            log.warning(
                "run log queue full (%d lines): dropping the oldest until delivery resumes",
                self._max_pending,
            )

    def close(self, timeout: float = 2.0) -> None:
        """Send what is pending for at most ``timeout`` seconds, then stop."""
        self.start()  # so that lines emitted before a missed start() still get their flush
        with self._cond:
            if not self._closing:
                self._closing = True
                self._close_by = time.monotonic() + timeout
                self._cond.notify_all()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(max(0.0, self._close_by - time.monotonic()))

    # -- the shipping thread -----------------------------------------------------------

    def _run(self) -> None:
        try:
            self._ship()
        except Exception:  # a bug here must not take the process down; lines then drop
            log.exception("the run log shipper stopped")

    def _ship(self) -> None:
        failures = 0
        while (batch := self._take(fill=failures == 0)) is not None:
            try:
                self._send(batch)
            except Exception as exc:
                if not is_transient(exc):
                    self._rejected(batch, exc)
                    continue
                failures += 1
                if not self._requeue(batch, exc):
                    return
                self._pause(self._backoff(failures, exc))
                continue
            failures = 0
            self._delivered(batch)

    def _take(self, fill: bool) -> list[Entry] | None:
        """The next batch, or None when closing is done."""
        with self._cond:
            while not self._pending and not self._closing:
                self._cond.wait()
            # Give a fresh batch one flush interval to fill, so lines go out together.
            flush_at = time.monotonic() + (self._flush_interval if fill else 0.0)
            while not self._closing and len(self._pending) < self._full:
                left = flush_at - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            if self._closing and (not self._pending or time.monotonic() >= self._close_by):
                left_over = list(self._pending)
                self._pending.clear()
            else:
                count = min(self._batch_size, len(self._pending))
                return [self._pending.popleft() for _ in range(count)]
        self._unsent(left_over, "not sent before shutdown")
        return None

    def _unsent(self, lines: list[Entry], why: str) -> None:
        """Lines a stopping process could not send: kept by ``spill``, else dropped."""
        if not lines:
            return
        if self._spill is not None:
            try:
                self._spill(lines)
                log.info("%d run log lines %s: kept in the outbox", len(lines), why)
                return
            except Exception as exc:  # a full disk: nothing more can be done
                log.warning("cannot keep %d run log lines: %s", len(lines), exc)
        _drop(len(lines), "shutdown")
        log.warning("%d run log lines %s", len(lines), why)

    def _requeue(self, batch: list[Entry], exc: Exception) -> bool:
        """Put a batch back in front to retry it; False when closing (no time to retry)."""
        log.debug("sending %d run log lines failed: %s", len(batch), exc)
        first_drop = False
        with self._cond:
            closing = self._closing
            unsent: list[Entry] = []
            if closing:
                unsent = [*batch, *self._pending]
                self._pending.clear()
                lost = 0
            else:
                self._pending.extendleft(reversed(batch))
                # Lines that arrived meanwhile may overflow: the oldest go, as in emit.
                lost = max(0, len(self._pending) - self._max_pending)
                for _ in range(lost):
                    self._pending.popleft()
                first_drop = lost > 0 and not self._dropping
                self._dropping = self._dropping or lost > 0
            first_retry = not self._retrying
            self._retrying = True
        if closing:
            self._unsent(unsent, f"not sent before shutdown ({_kind(exc)})")
            return False
        _drop(lost, "queue_full")
        if first_retry:
            log.warning("cannot send run logs (%s): retrying with backoff", _kind(exc))
        if first_drop:
            log.warning(
                "run log queue full (%d lines): dropping the oldest until delivery resumes",
                self._max_pending,
            )
        return True

    def _backoff(self, failures: int, exc: Exception) -> float:
        # Jitter keeps many agents from retrying one recovering server in step.
        unit = max(self._flush_interval, 0.01)  # never a tight loop, even with interval 0
        delay = unit * 2.0 ** min(failures - 1, 30) + random.uniform(0, unit)
        if isinstance(exc, TransientApiError) and exc.retry_after is not None:
            delay = max(delay, exc.retry_after)
        return min(delay, self._max_backoff)

    def _pause(self, delay: float) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._closing, delay)

    def _rejected(self, batch: list[Entry], exc: Exception) -> None:
        _drop(len(batch), "rejected")
        # The status only: a 422's reason can echo the lines themselves.
        log.error("the API rejected %d run log lines (%s): dropped", len(batch), _kind(exc))
        log.debug("rejected run log lines: %s", exc)

    def _delivered(self, batch: list[Entry]) -> None:
        metrics.RUN_LOGS_SENT.inc(len(batch))
        with self._cond:
            troubled = self._dropping or self._retrying
            self._dropping = self._retrying = False
        if troubled:
            log.info("run log delivery resumed")


def _kind(exc: Exception) -> str:
    status = getattr(exc, "status", None)
    return f"HTTP {status}" if status is not None else type(exc).__name__


def ship_to(client: PrefectClient, logger_name: str, **kw: Any) -> RunLogShipper:
    """A started shipper that posts to ``client``'s API (``start()`` again is harmless)."""
    shipper = RunLogShipper(
        lambda batch: client.create_logs(batch, deadline=SEND_DEADLINE),
        logger_name=logger_name,
        **kw,
    )
    shipper.start()
    return shipper
