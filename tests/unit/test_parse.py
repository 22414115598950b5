"""agent/api/parse.py: the API boundary. Every parser with a good body, missing fields,
fields of the wrong type, and a body of another shape (ApiShapeError naming the call);
and the client's answer to a body that is not JSON at all (an HTML page)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from agent.api import parse
from agent.api.client import PrefectClient
from agent.api.http import Headers, HttpSession, Response
from agent.core.errors import ApiShapeError
from agent.core.states import (
    Answer,
    Deployment,
    FlowRun,
    RunState,
    StateAnswer,
    StateType,
    WorkPool,
)
from agent.settings.config import ApiSettings

URL = "http://prefect.invalid/api"
RUN_ID = "3f1c0f9e-0000-4000-8000-000000000001"
DEPLOYMENT = "d0000000-0000-4000-8000-000000000001"
WHEN = "2026-01-02T03:04:05.000006Z"
EPOCH = datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC).timestamp()

STATE = {
    "type": "PENDING",
    "name": "Pending",
    "message": "claimed",
    "timestamp": WHEN,
    "state_details": {"flow_run_id": RUN_ID, "transition_id": "tid-1"},
}
FLOW_RUN = {
    "id": RUN_ID,
    "name": "sleepy-otter",
    "state": STATE,
    "state_type": "PENDING",
    "state_name": "Pending",
    "run_count": 2,
    "deployment_id": DEPLOYMENT,
    "work_pool_name": "pool",
    "labels": {"prefect.worker.name": "agent-7"},
    "job_variables": {"env": {"A": "1"}},
    "next_scheduled_start_time": "2026-01-02T03:04:00Z",
    "expected_start_time": WHEN,
}

# Bodies of another shape than any parser takes: (body, how the error names it).
NOT_AN_OBJECT: list[tuple[object, str]] = [
    (None, "got nothing"),
    ([], "got a list"),
    ("<html>", "got a string"),
    (7, "got int"),
]


def shape_error(call: str, parser: Callable[[str, object], object], body: object) -> str:
    with pytest.raises(ApiShapeError) as info:
        parser(call, body)
    assert info.value.call == call
    assert str(info.value).startswith(f"{call}: ")
    return str(info.value)


# -- parse_api_time --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [WHEN, "2026-01-02T03:04:05.000006+00:00", "2026-01-02T04:04:05.000006+01:00"],
    ids=["Z", "utc-offset", "other-offset"],
)
def test_api_time_with_a_zone_is_seconds_since_the_epoch(value: str) -> None:
    assert parse.parse_api_time(value) == EPOCH


def test_api_time_without_a_zone_is_utc() -> None:
    assert parse.parse_api_time("2026-01-02T03:04:05.000006") == EPOCH


@pytest.mark.parametrize("value", [None, "", "yesterday", 1_700_000_000, ["2026-01-02"]])
def test_api_time_missing_garbage_or_not_text_is_none(value: object) -> None:
    assert parse.parse_api_time(value) is None


# -- state -----------------------------------------------------------------------------------


def test_state_good() -> None:
    assert parse.state("read_flow_run", STATE) == RunState(
        StateType.PENDING, "Pending", "claimed", EPOCH, "tid-1"
    )


def test_state_none_is_no_state() -> None:
    assert parse.state("read_flow_run", None) is None


def test_state_missing_fields_are_empty() -> None:
    assert parse.state("read_flow_run", {"type": "RUNNING"}) == RunState(StateType.RUNNING)
    assert parse.state("read_flow_run", {}) == RunState(None)


def test_state_of_a_type_this_agent_does_not_know_has_no_type() -> None:
    found = parse.state("read_flow_run", {"type": "HIBERNATING", "name": "Zzz"})
    assert found == RunState(None, "Zzz")


def test_state_fields_of_the_wrong_type_are_left_out() -> None:
    body = {
        "type": 3,
        "name": ["Pending"],
        "message": {"x": 1},
        "timestamp": 1_700_000_000,
        "state_details": {"transition_id": 42},
    }
    assert parse.state("read_flow_run", body) == RunState(None)
    assert parse.state("read_flow_run", {"type": "PENDING", "state_details": "tid"}) == RunState(
        StateType.PENDING
    )


@pytest.mark.parametrize(("body", "said"), NOT_AN_OBJECT[1:])
def test_state_not_an_object_is_a_shape_error(body: object, said: str) -> None:
    assert said in shape_error("read_flow_run", parse.state, body)


# -- flow_run --------------------------------------------------------------------------------


def test_flow_run_good() -> None:
    assert parse.flow_run("read_flow_run", FLOW_RUN) == FlowRun(
        id=RUN_ID,
        name="sleepy-otter",
        state=RunState(StateType.PENDING, "Pending", "claimed", EPOCH, "tid-1"),
        run_count=2,
        deployment_id=DEPLOYMENT,
        work_pool_name="pool",
        labels={"prefect.worker.name": "agent-7"},
        job_variables={"env": {"A": "1"}},
        scheduled_start="2026-01-02T03:04:00Z",  # the next scheduled start goes first
    )


def test_flow_run_with_only_an_id_has_defaults() -> None:
    assert parse.flow_run("read_flow_run", {"id": RUN_ID}) == FlowRun(RUN_ID)


def test_flow_run_without_a_next_scheduled_start_takes_the_expected_start() -> None:
    body = {**FLOW_RUN, "next_scheduled_start_time": None}
    assert parse.flow_run("read_flow_run", body).scheduled_start == WHEN


def test_flow_run_without_its_state_object_takes_the_state_type_and_name() -> None:
    """get_scheduled_flow_runs may give only ``state_type`` and ``state_name``."""
    body = {"id": RUN_ID, "state_type": "SCHEDULED", "state_name": "Late"}
    found = parse.flow_run("get_scheduled_flow_runs", body)
    assert found.state == RunState(StateType.SCHEDULED, "Late")
    assert found.state_type is StateType.SCHEDULED


@pytest.mark.parametrize(
    "body",
    [{}, {"id": ""}, {"id": 7}, {"id": None}, {"name": "no-id"}],
    ids=["empty", "empty-id", "int-id", "null-id", "no-id"],
)
def test_flow_run_without_an_id_is_a_shape_error(body: dict[str, Any]) -> None:
    assert "a flow run without an id" in shape_error("read_flow_run", parse.flow_run, body)


def test_flow_run_fields_of_the_wrong_type_get_their_defaults() -> None:
    body = {
        "id": RUN_ID,
        "name": 7,
        "run_count": "2",
        "deployment_id": 5,
        "work_pool_name": "",
        "labels": ["a", "b"],
        "job_variables": "env=1",
        "next_scheduled_start_time": 1_700_000_000,
        "expected_start_time": None,
    }
    assert parse.flow_run("read_flow_run", body) == FlowRun(RUN_ID)


def test_flow_run_a_boolean_run_count_is_no_count() -> None:
    assert parse.flow_run("read_flow_run", {"id": RUN_ID, "run_count": True}).run_count == 0


def test_flow_run_a_state_of_the_wrong_shape_is_a_shape_error() -> None:
    body = {"id": RUN_ID, "state": ["PENDING"]}
    assert "a state" in shape_error("read_flow_run", parse.flow_run, body)


@pytest.mark.parametrize(("body", "said"), NOT_AN_OBJECT)
def test_flow_run_not_an_object_is_a_shape_error(body: object, said: str) -> None:
    message = shape_error("read_flow_run", parse.flow_run, body)
    assert "expected a flow run as a JSON object" in message and said in message


# -- flow_runs and scheduled_runs ------------------------------------------------------------


def test_flow_runs_good_and_empty() -> None:
    other = {**FLOW_RUN, "id": "r2"}
    assert [r.id for r in parse.flow_runs("filter_flow_runs", [FLOW_RUN, other])] == [
        RUN_ID,
        "r2",
    ]
    assert parse.flow_runs("filter_flow_runs", []) == []


@pytest.mark.parametrize(
    ("body", "said"), [(None, "got nothing"), ({"runs": []}, "got an object"), ("x", "a string")]
)
def test_flow_runs_not_a_list_is_a_shape_error(body: object, said: str) -> None:
    message = shape_error("cancelling_flow_runs", parse.flow_runs, body)
    assert "expected a JSON list of flow runs" in message and said in message


def test_flow_runs_one_bad_item_is_a_shape_error() -> None:
    shape_error("filter_flow_runs", parse.flow_runs, [FLOW_RUN, {"name": "no-id"}])


def test_scheduled_runs_good() -> None:
    body = [{"work_pool_id": "wp", "work_queue_id": "wq", "flow_run": FLOW_RUN}]
    [found] = parse.scheduled_runs("get_scheduled_flow_runs", body)
    assert found == parse.flow_run("read_flow_run", FLOW_RUN)


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ({"flow_run": FLOW_RUN}, "expected a JSON list of scheduled runs"),
        ([FLOW_RUN["id"]], "expected a scheduled run as a JSON object"),
        ([{"work_pool_id": "wp"}], "got nothing"),  # no flow_run in it
        ([{"flow_run": {"name": "no-id"}}], "a flow run without an id"),
    ],
    ids=["not-a-list", "item-not-an-object", "item-without-flow-run", "run-without-id"],
)
def test_scheduled_runs_of_another_shape_are_a_shape_error(body: object, said: str) -> None:
    assert said in shape_error("get_scheduled_flow_runs", parse.scheduled_runs, body)


# -- state_answer ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", list(Answer))
def test_state_answer_each_status(status: Answer) -> None:
    found = parse.state_answer("set_flow_run_state", {"status": status.value, "state": STATE})
    assert found.status is status
    assert found.state is not None and found.state.transition_id == "tid-1"


def test_state_answer_details_give_the_reason_and_the_delay() -> None:
    body = {"status": "WAIT", "details": {"reason": "slow down", "delay_seconds": 12}}
    assert parse.state_answer("set_flow_run_state", body) == StateAnswer(
        Answer.WAIT, None, "slow down", 12.0
    )


def test_state_answer_missing_or_wrong_details_are_empty() -> None:
    details: object
    for details in (None, [], "later", {"reason": 5, "delay_seconds": "12"}):
        body: dict[str, object] = {"status": "REJECT", "details": details}
        assert parse.state_answer("set_flow_run_state", body) == StateAnswer(Answer.REJECT)


@pytest.mark.parametrize("body", [{}, {"status": "MAYBE"}, {"status": None}, {"status": 1}])
def test_state_answer_without_a_known_status_is_a_shape_error(body: dict[str, Any]) -> None:
    message = shape_error("set_flow_run_state", parse.state_answer, body)
    assert "unknown answer status" in message


@pytest.mark.parametrize(("body", "said"), NOT_AN_OBJECT)
def test_state_answer_not_an_object_is_a_shape_error(body: object, said: str) -> None:
    message = shape_error("set_flow_run_state", parse.state_answer, body)
    assert "expected an orchestration result as a JSON object" in message and said in message


# -- deployment, work pool, variable -------------------------------------------------------


def test_deployment_good() -> None:
    body = {"id": DEPLOYMENT, "name": "d", "job_variables": {"env": {"B": "2"}}}
    assert parse.deployment("read_deployment", body) == Deployment(DEPLOYMENT, {"env": {"B": "2"}})


def test_deployment_missing_or_wrong_fields_are_empty() -> None:
    assert parse.deployment("read_deployment", {}) == Deployment("")
    body = {"id": 5, "job_variables": ["env"]}
    assert parse.deployment("read_deployment", body) == Deployment("")


@pytest.mark.parametrize(("body", "said"), NOT_AN_OBJECT)
def test_deployment_not_an_object_is_a_shape_error(body: object, said: str) -> None:
    assert said in shape_error("read_deployment", parse.deployment, body)


def test_work_pool_good() -> None:
    template: dict[str, Any] = {"job_configuration": {}, "variables": {"properties": {}}}
    body = {"name": "pool", "type": "local-agent", "base_job_template": template, "id": "x"}
    assert parse.work_pool("read_work_pool", body) == WorkPool("pool", "local-agent", template, "x")


def test_work_pool_missing_or_wrong_fields_are_empty() -> None:
    assert parse.work_pool("read_work_pool", {}) == WorkPool("", "")
    body = {"name": ["pool"], "type": None, "base_job_template": "{}"}
    assert parse.work_pool("read_work_pool", body) == WorkPool("", "")


@pytest.mark.parametrize(("body", "said"), NOT_AN_OBJECT)
def test_work_pool_not_an_object_is_a_shape_error(body: object, said: str) -> None:
    assert said in shape_error("create_work_pool", parse.work_pool, body)


def test_variable_is_its_value_as_is() -> None:
    body = {"id": "v", "name": "agent-config", "value": {"labels": ["gpu"]}}
    assert parse.variable("read_variable", body) == body.get("value")


@pytest.mark.parametrize(("body", "said"), NOT_AN_OBJECT)
def test_variable_not_an_object_is_a_shape_error(body: object, said: str) -> None:
    assert said in shape_error("read_variable", parse.variable, body)


# -- a body that is not JSON at all: the client -----------------------------------------------


class OneAnswer(HttpSession):
    """A session that answers every request with one response, and counts them."""

    def __init__(self, status: int, content_type: str, body: bytes) -> None:
        super().__init__()
        self.answer = (status, content_type, body)
        self.sent = 0

    def request(self, method: str, url: str, **kwargs: Any) -> Response:
        self.sent += 1
        status, content_type, body = self.answer
        return Response(status, "", Headers([("Content-Type", content_type)]), body)


@pytest.mark.parametrize(
    ("content_type", "body", "said"),
    [
        (
            "text/html; charset=utf-8",
            b"<html><body>Sign in to the Wi-Fi</body></html>",
            "text/html",
        ),
        ("text/plain", b"hello", "text/plain"),
        ("", b"\x00\x01 binary", "no JSON"),
    ],
    ids=["html", "text", "no-content-type"],
)
def test_a_body_that_is_not_json_is_a_shape_error_saying_what_the_url_reaches(
    content_type: str, body: bytes, said: str
) -> None:
    session = OneAnswer(200, content_type, body)
    client = PrefectClient(ApiSettings(url=URL), session=session, sleep=lambda s: None)
    with pytest.raises(ApiShapeError) as info:
        client.read_flow_run(RUN_ID)
    assert str(info.value) == f"read_flow_run: {URL} does not look like a Prefect API: got {said}"
    assert info.value.status == 200
    assert session.sent == 1  # not retried


@pytest.mark.parametrize(
    ("call", "body"),
    [
        ("read_flow_run", b'["a", "list"]'),
        ("set_flow_run_state", b'{"status": "MAYBE"}'),
        ("get_scheduled_flow_runs", b'{"not": "a list"}'),
        ("read_deployment", b'"a string"'),
    ],
)
def test_json_of_another_shape_is_a_shape_error_from_the_typed_calls(
    call: str, body: bytes
) -> None:
    client = PrefectClient(
        ApiSettings(url=URL), session=OneAnswer(200, "application/json", body), sleep=lambda s: None
    )
    calls: dict[str, Callable[[], object]] = {
        "read_flow_run": lambda: client.read_flow_run(RUN_ID),
        "set_flow_run_state": lambda: client.set_flow_run_state(RUN_ID, {"type": "CRASHED"}),
        "get_scheduled_flow_runs": lambda: client.get_scheduled_flow_runs(
            "pool", datetime.now(UTC)
        ),
        "read_deployment": lambda: client.read_deployment(DEPLOYMENT),
    }
    with pytest.raises(ApiShapeError) as info:
        calls[call]()
    assert info.value.call == call
