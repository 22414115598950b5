"""agent/api/runlogs.py with fake ``send`` callables: batching, bounds, failures, close."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from prometheus_client import REGISTRY

from agent.api.client import PrefectClient
from agent.api.outbox import Outbox, logs_report
from agent.api.runlogs import NoRunLogs, RunLogs, RunLogShipper, ship_to
from agent.core.errors import ApiError, AuthError, NotFoundError, SpoolError, TransientApiError

RUN = str(uuid.uuid4())
Entry = dict[str, Any]


def dropped(reason: str) -> float:
    return REGISTRY.get_sample_value("agent_run_logs_dropped_total", {"reason": reason}) or 0.0


def sent() -> float:
    return REGISTRY.get_sample_value("agent_run_logs_sent_total") or 0.0


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.005)


class FakeApi:
    """A ``send`` that records batches, raising the scripted errors first; when
    ``gate`` is given, each call waits for it (a hung API)."""

    def __init__(self, errors: list[Exception] | None = None, hang: bool = False) -> None:
        self.errors = list(errors or [])
        self.batches: list[list[Entry]] = []
        self.calls = 0
        self.entered = threading.Event()
        self.gate = threading.Event()
        if not hang:
            self.gate.set()
        self._lock = threading.Lock()

    def __call__(self, batch: list[Entry]) -> None:
        with self._lock:
            self.calls += 1
        self.entered.set()
        self.gate.wait()
        with self._lock:
            if self.errors:
                raise self.errors.pop(0)
            self.batches.append(batch)

    @property
    def messages(self) -> list[str]:
        with self._lock:
            return [e["message"] for b in self.batches for e in b]


@pytest.fixture
def make() -> Iterator[Callable[..., RunLogShipper]]:
    """Shippers with fast timings; each is stopped at teardown."""
    made: list[tuple[RunLogShipper, FakeApi]] = []

    def factory(api: FakeApi, start: bool = True, **kw: Any) -> RunLogShipper:
        options: dict[str, Any] = {"flush_interval": 0.02, "max_backoff": 0.05, **kw}
        shipper = RunLogShipper(api, **options)
        made.append((shipper, api))
        if start:
            shipper.start()
        return shipper

    yield factory
    for shipper, api in made:
        api.gate.set()
        shipper.close(timeout=1.0)


def warnings_and_above(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


def test_entry_has_the_schema_of_prefects_post_logs(make: Callable[..., RunLogShipper]) -> None:
    api = FakeApi()
    shipper = make(api, logger_name="agent-x", clock=lambda: 1_700_000_000.25)
    shipper.emit(RUN.upper(), "Process started: PID 123", logging.WARNING)
    wait_until(lambda: api.messages != [])
    assert api.batches[0] == [
        {
            "name": "agent-x",
            "level": 30,
            "message": "Process started: PID 123",
            "timestamp": "2023-11-14T22:13:20.250000+00:00",
            "flow_run_id": RUN,  # normalised to the server's lower-case form
            "task_run_id": None,
        }
    ]


def test_batches_arrive_in_order_and_never_exceed_batch_size(
    make: Callable[..., RunLogShipper],
) -> None:
    api = FakeApi()
    shipper = make(api, start=False, batch_size=3)
    lines = [f"line {i}" for i in range(10)]
    for line in lines:
        shipper.emit(RUN, line)
    shipper.start()
    wait_until(lambda: len(api.messages) == 10)
    assert api.messages == lines
    assert [len(b) for b in api.batches] == [3, 3, 3, 1]


def test_a_full_batch_goes_at_once_and_a_partial_one_waits_for_the_interval(
    make: Callable[..., RunLogShipper],
) -> None:
    api = FakeApi()
    shipper = make(api, batch_size=4, flush_interval=30.0)
    shipper.emit(RUN, "alone")
    time.sleep(0.2)
    assert api.calls == 0  # a partial batch waits for more lines
    for i in range(3):
        shipper.emit(RUN, f"more {i}")
    wait_until(lambda: len(api.messages) == 4, timeout=2.0)  # far less than the 30 s interval
    assert api.messages == ["alone", "more 0", "more 1", "more 2"]


def test_emit_never_blocks_while_send_hangs(make: Callable[..., RunLogShipper]) -> None:
    api = FakeApi(hang=True)
    shipper = make(api, batch_size=1, max_pending=100)
    shipper.emit(RUN, "first")
    assert api.entered.wait(2.0)
    slowest = 0.0
    for i in range(300):  # overflows the queue too: dropping must not block either
        started = time.monotonic()
        shipper.emit(RUN, f"line {i}")
        slowest = max(slowest, time.monotonic() - started)
    assert slowest < 0.05
    assert api.messages == []  # the send really was still hanging
    api.gate.set()
    wait_until(lambda: len(api.messages) == 101)
    assert api.messages == ["first", *[f"line {i}" for i in range(200, 300)]]


def test_a_full_queue_drops_the_oldest_counts_and_warns_once(
    make: Callable[..., RunLogShipper], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="agent.api.runlogs")
    api = FakeApi()
    shipper = make(api, start=False, max_pending=5)
    before = dropped("queue_full")
    for i in range(8):
        shipper.emit(RUN, f"secret-{i}")
    assert dropped("queue_full") - before == 3
    shipper.start()
    wait_until(lambda: len(api.messages) == 5)
    assert api.messages == [f"secret-{i}" for i in range(3, 8)]
    loud = warnings_and_above(caplog)
    assert len([m for m in loud if "queue full" in m]) == 1
    assert not any("secret" in m for m in loud)
    wait_until(lambda: any("resumed" in r.getMessage() for r in caplog.records))


@pytest.mark.parametrize(
    "error",
    [
        TransientApiError("create_logs", "cannot reach http://x/api"),
        TransientApiError("create_logs", "HTTP 503: busy", 503),
        TransientApiError("create_logs", "HTTP 429: slow down", 429, retry_after=0.01),
        ApiError("create_logs", "HTTP 500: boom", 500),
        ApiError("create_logs", "no status", None),
    ],
    ids=["connection", "503", "429", "500", "no-status"],
)
def test_transient_failures_then_recovery_deliver_everything_exactly_once(
    make: Callable[..., RunLogShipper], caplog: pytest.LogCaptureFixture, error: ApiError
) -> None:
    caplog.set_level(logging.INFO, logger="agent.api.runlogs")
    api = FakeApi(errors=[error, error, error])
    shipper = make(api, start=False, batch_size=3)
    lines = [f"line {i}" for i in range(7)]
    for line in lines:
        shipper.emit(RUN, line)
    before_sent, before_dropped = sent(), dropped("rejected") + dropped("queue_full")
    shipper.start()
    wait_until(lambda: len(api.messages) == 7)
    shipper.close()
    assert api.calls == 3 + 3  # three failures, then three batches
    assert api.messages == lines
    assert sent() - before_sent == 7
    assert dropped("rejected") + dropped("queue_full") == before_dropped
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if "retrying" in m]) == 1
    assert len([m for m in messages if "resumed" in m]) == 1


@pytest.mark.parametrize(
    ("error", "named"),
    [
        (ApiError("create_logs", "HTTP 422: secret-0 is invalid", 422), "HTTP 422"),
        (NotFoundError("create_logs", "HTTP 404: no", 404), "HTTP 404"),
        (AuthError("create_logs", "HTTP 401: bad key", 401), "HTTP 401"),
        (ValueError("secret-0 cannot be encoded"), "ValueError"),
    ],
    ids=["422", "404", "401", "not-an-api-error"],
)
def test_a_rejected_batch_is_dropped_counted_and_logged_by_status(
    make: Callable[..., RunLogShipper],
    caplog: pytest.LogCaptureFixture,
    error: Exception,
    named: str,
) -> None:
    api = FakeApi(errors=[error])
    shipper = make(api, start=False, batch_size=2)
    for i in range(4):
        shipper.emit(RUN, f"secret-{i}")
    before = dropped("rejected")
    shipper.start()
    wait_until(lambda: len(api.messages) == 2)
    shipper.close()
    assert api.messages == ["secret-2", "secret-3"]  # the next batch still goes
    assert dropped("rejected") - before == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and named in errors[0]
    assert not any("secret" in m for m in warnings_and_above(caplog))


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap() -> None:
    shipper = RunLogShipper(FakeApi(), flush_interval=1.0, max_backoff=30.0)
    plain = TransientApiError("create_logs", "down")
    for failures, low in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0)]:
        delays = {shipper._backoff(failures, plain) for _ in range(20)}
        assert all(low <= d < low + 1.0 for d in delays)
        assert len(delays) > 1  # jittered
    assert shipper._backoff(10, plain) == 30.0
    later = TransientApiError("create_logs", "HTTP 429", 429, retry_after=12.0)
    assert shipper._backoff(1, later) == 12.0
    assert shipper._backoff(1, TransientApiError("c", "m", 429, retry_after=99.0)) == 30.0


def test_close_flushes_what_is_pending_at_once(make: Callable[..., RunLogShipper]) -> None:
    api = FakeApi()
    shipper = make(api, batch_size=2, flush_interval=60.0)
    for i in range(5):
        shipper.emit(RUN, f"line {i}")
    started = time.monotonic()
    shipper.close(timeout=2.0)
    assert time.monotonic() - started < 1.0  # not waiting out the 60 s interval
    assert api.messages == [f"line {i}" for i in range(5)]
    assert shipper._thread is not None and not shipper._thread.is_alive()


def test_close_without_start_still_flushes(make: Callable[..., RunLogShipper]) -> None:
    api = FakeApi()
    shipper = make(api, start=False)
    shipper.emit(RUN, "early")
    shipper.close(timeout=1.0)
    assert api.messages == ["early"]


def test_close_returns_within_timeout_when_send_hangs(
    make: Callable[..., RunLogShipper], caplog: pytest.LogCaptureFixture
) -> None:
    api = FakeApi(hang=True)
    shipper = make(api, batch_size=1)
    for i in range(3):
        shipper.emit(RUN, f"line {i}")
    assert api.entered.wait(2.0)
    before = dropped("shutdown")
    started = time.monotonic()
    shipper.close(timeout=0.3)
    assert 0.25 <= time.monotonic() - started < 1.0
    # The hung send finishes after the deadline: what was still queued is given up on.
    api.gate.set()
    assert shipper._thread is not None
    shipper._thread.join(2.0)
    assert not shipper._thread.is_alive()
    assert api.messages == ["line 0"]
    assert dropped("shutdown") - before == 2
    assert any("2 run log lines not sent" in m for m in warnings_and_above(caplog))


def test_close_while_the_api_is_down_gives_up_instead_of_retrying(
    make: Callable[..., RunLogShipper],
) -> None:
    api = FakeApi(errors=[TransientApiError("create_logs", "down")] * 1000)
    shipper = make(api, start=False, flush_interval=60.0, max_backoff=60.0)
    for i in range(3):
        shipper.emit(RUN, f"line {i}")
    before = dropped("shutdown")
    started = time.monotonic()
    shipper.close(timeout=2.0)
    assert time.monotonic() - started < 1.0
    assert api.calls == 1
    assert dropped("shutdown") - before == 3


def test_emit_after_close_and_a_bad_run_id_are_counted_not_raised(
    make: Callable[..., RunLogShipper],
) -> None:
    api = FakeApi()
    shipper = make(api)
    before_invalid, before_shutdown = dropped("invalid"), dropped("shutdown")
    shipper.emit("not-a-uuid", "x")
    shipper.emit(None, "x")  # type: ignore[arg-type]
    shipper.close()
    shipper.emit(RUN, "too late")
    shipper.close()  # twice is harmless
    assert dropped("invalid") - before_invalid == 2
    assert dropped("shutdown") - before_shutdown == 1
    assert api.calls == 0


def test_emit_from_many_threads_loses_and_reorders_nothing(
    make: Callable[..., RunLogShipper],
) -> None:
    api = FakeApi()
    shipper = make(api, batch_size=50, max_pending=10_000, flush_interval=0.005)

    def writer(n: int) -> None:
        for i in range(200):
            shipper.emit(RUN, f"{n}:{i}")

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wait_until(lambda: len(api.messages) == 1600)
    got = api.messages
    for n in range(8):
        assert [m for m in got if m.startswith(f"{n}:")] == [f"{n}:{i}" for i in range(200)]


def test_ship_to_posts_through_the_client_with_one_attempt_per_send() -> None:
    calls: list[tuple[list[Entry], float | None]] = []
    posted = threading.Event()

    class Client:
        def create_logs(self, entries: list[Entry], deadline: float | None = None) -> None:
            calls.append((entries, deadline))
            posted.set()

    shipper = ship_to(cast(PrefectClient, Client()), "agent-y", flush_interval=0.01)
    shipper.emit(RUN, "hello")
    assert posted.wait(2.0)  # started already
    shipper.close()
    [(entries, deadline)] = calls
    assert [(e["name"], e["message"]) for e in entries] == [("agent-y", "hello")]
    assert deadline == 0.0


def test_no_run_logs_does_nothing() -> None:
    logs: RunLogs = NoRunLogs()
    threads = threading.active_count()
    before = (sent(), dropped("queue_full"), dropped("shutdown"), dropped("invalid"))
    logs.emit(RUN, "hello")
    logs.emit("not-a-uuid", "hello", logging.ERROR)
    logs.close(timeout=0)
    assert threading.active_count() == threads
    assert (sent(), dropped("queue_full"), dropped("shutdown"), dropped("invalid")) == before


def test_lines_unsent_at_close_are_spilled_to_the_outbox_not_dropped(
    make: Callable[..., RunLogShipper], tmp_path: Path
) -> None:
    # The API is down: the stopping process keeps its lines in the spool's outbox,
    # which the poller posts (once, oldest first) when the API answers again.
    outbox = Outbox(tmp_path)
    api = FakeApi(errors=[TransientApiError("create_logs", "down")] * 1000)

    def spill(lines: list[Entry]) -> None:
        outbox.put(logs_report(lines, "worker w1"))

    shipper = make(api, start=False, flush_interval=60.0, max_backoff=60.0, spill=spill)
    for i in range(3):
        shipper.emit(RUN, f"line {i}")
    before = dropped("shutdown")
    shipper.close(timeout=2.0)
    assert dropped("shutdown") == before  # kept, not dropped
    [(_, report, _)] = list(outbox.pending())
    assert report is not None and report.kind == "logs" and report.source == "worker w1"
    assert [e["message"] for e in report.entries] == ["line 0", "line 1", "line 2"]
    assert {e["flow_run_id"] for e in report.entries} == {RUN}


def test_a_spill_that_fails_drops_and_counts_the_lines(make: Callable[..., RunLogShipper]) -> None:
    api = FakeApi(errors=[TransientApiError("create_logs", "down")] * 1000)

    def spill(lines: list[Entry]) -> None:
        raise SpoolError("disk full")

    shipper = make(api, start=False, flush_interval=60.0, max_backoff=60.0, spill=spill)
    shipper.emit(RUN, "line")
    before = dropped("shutdown")
    shipper.close(timeout=2.0)
    assert dropped("shutdown") - before == 1
