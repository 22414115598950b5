"""The delivery of the reports kept in agent/api/outbox.py (`Reporter.deliver`,
agent/api/reporter.py) when the fake API client fails: what is kept for a later try and
stops delivery, and what the server refuses and is dropped."""

from __future__ import annotations

import logging

import pytest

from agent.api.outbox import PID, STATE, Outbox, Report
from agent.core.errors import ApiError, AuthError, NotFoundError, TransientApiError
from tests.unit.outbox_support import CRASHED, URL, FakeApi, api, deliver, delivered, outbox, run_id

__all__ = ["api", "outbox"]  # the fixtures, imported for pytest to find

# -- failures while delivering ------------------------------------------------------------------


def test_a_transient_failure_keeps_the_report_and_stops_delivery(
    outbox: Outbox, api: FakeApi
) -> None:
    rid = run_id()
    first = outbox.put(Report(STATE, rid, state=CRASHED, force=False, source="worker w1"))
    second = outbox.put(Report(PID, rid, infrastructure_pid="h:7", source="worker w1"))
    api.errors["read_flow_run"] = TransientApiError("read_flow_run", f"cannot reach {URL}")
    before = delivered(STATE), delivered(PID)
    with pytest.raises(TransientApiError):
        deliver(outbox, api)
    assert first.exists() and second.exists()
    assert [c[0] for c in api.calls] == ["read_flow_run"]  # the pid report was not tried
    assert (delivered(STATE), delivered(PID)) == before

    del api.errors["read_flow_run"]
    assert deliver(outbox, api) == 2
    assert [c[0] for c in api.calls] == [
        "read_flow_run",
        "read_flow_run",
        "set_flow_run_state",
        "update_flow_run",
    ]
    assert outbox.count() == 0
    assert (delivered(STATE), delivered(PID)) == (before[0] + 1, before[1] + 1)


@pytest.mark.parametrize(
    "error",
    [
        TransientApiError("set_flow_run_state", "HTTP 503: Service Unavailable", 503),
        AuthError("set_flow_run_state", "HTTP 401, the API key or auth string is wrong", 401),
    ],
    ids=["503", "401"],
)
def test_the_api_away_or_refusing_us_keeps_the_report_and_stops_delivery(
    outbox: Outbox, api: FakeApi, error: ApiError
) -> None:
    path = outbox.put(Report(STATE, run_id(), state=CRASHED, force=False, source="worker w1"))
    later = outbox.put(Report(PID, run_id(), infrastructure_pid="h:1", source="worker w1"))
    api.errors["set_flow_run_state"] = error
    with pytest.raises(type(error)):
        deliver(outbox, api)
    assert path.exists() and later.exists()
    assert api.named("update_flow_run") == []


def test_an_http_500_keeps_the_report(outbox: Outbox, api: FakeApi) -> None:
    """Kept for a later try (whether the reports after it wait too is the poller's
    concern: see test_outage_outbox.py, one report failing for good must not stop claims)."""
    path = outbox.put(Report(STATE, run_id(), state=CRASHED, force=False, source="worker w1"))
    api.errors["set_flow_run_state"] = ApiError("set_flow_run_state", "HTTP 500: Oops", 500)
    try:
        deliver(outbox, api)
    except ApiError as exc:
        assert exc.status == 500
    assert path.exists()


@pytest.mark.parametrize(
    "error",
    [
        NotFoundError("read_flow_run", "HTTP 404: Flow run not found", 404),
        ApiError("read_flow_run", "HTTP 422: Unprocessable Entity", 422),
    ],
    ids=["404", "422"],
)
def test_a_report_the_server_refuses_is_dropped_and_the_rest_go_on(
    outbox: Outbox, api: FakeApi, error: ApiError, caplog: pytest.LogCaptureFixture
) -> None:
    refused = outbox.put(Report(STATE, run_id(), state=CRASHED, force=False, source="worker w1"))
    after = outbox.put(Report(PID, run_id(), infrastructure_pid="h:1", source="worker w1"))
    api.errors["read_flow_run"] = error
    before = delivered(STATE)
    with caplog.at_level(logging.INFO, logger="agent.api.reporter"):
        assert deliver(outbox, api) == 2
    assert not refused.exists() and not after.exists()
    assert api.named("set_flow_run_state") == []
    assert len(api.named("update_flow_run")) == 1
    assert delivered(STATE) == before + 1
    assert "dropped, the server refuses it" in caplog.text
    assert str(error.status) in caplog.text


def test_a_refused_pid_report_is_dropped(outbox: Outbox, api: FakeApi) -> None:
    path = outbox.put(Report(PID, run_id(), infrastructure_pid="h:1", source="worker w1"))
    api.errors["update_flow_run"] = NotFoundError("update_flow_run", "HTTP 404", 404)
    assert deliver(outbox, api) == 1
    assert not path.exists()
