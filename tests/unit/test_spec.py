"""agent/core/spec.py: the job spec file format."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.core.errors import SpecError
from agent.core.spec import SPEC_VERSION, JobSpec, dumps, loads

RUN_ID = "3f1c0f9e-0000-4000-8000-000000000001"


def full_spec() -> JobSpec:
    return JobSpec(
        flow_run_id=RUN_ID,
        pool="pool1",
        transition_id="tid-1",
        agent_name="agent",
        flow_run_name="brave-otter",
        deployment_id="dep-1",
        scheduled_start="2024-01-02T03:04:05+00:00",
        claimed_at=1700000000.25,
        job_variables={"command": "python x.py", "env": {"A": "1"}, "labels": ["gpu"]},
        env_vars={"SECRET_KEY": "value"},
        import_paths=["/srv/lib"],
        show_flow_logs=True,
    )


def body_of(spec: JobSpec) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(dumps(spec))
    return body


def test_round_trip_keeps_every_field() -> None:
    spec = full_spec()
    assert loads(dumps(spec)) == spec


def test_round_trip_of_minimal_spec() -> None:
    spec = JobSpec(flow_run_id=RUN_ID, pool="p", transition_id="t", agent_name="a")
    assert loads(dumps(spec)) == spec


def test_dumps_writes_the_version() -> None:
    assert body_of(full_spec())["version"] == SPEC_VERSION


@pytest.mark.parametrize("data", [b"", b"  \n"])
def test_empty_file_is_a_spec_error(data: bytes) -> None:
    with pytest.raises(SpecError, match="empty") as info:
        loads(data)
    assert info.value.flow_run_id is None


def test_truncated_json_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="not valid JSON") as info:
        loads(dumps(full_spec())[:-20])
    assert info.value.flow_run_id is None


def test_binary_garbage_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="not valid JSON"):
        loads(b"\xff\xfe\x00garbage")


def test_json_list_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="JSON object"):
        loads(b'[{"flow_run_id": "x"}]')


def test_unknown_version_is_a_spec_error_with_run_id() -> None:
    body = body_of(full_spec())
    body["version"] = 99
    with pytest.raises(SpecError, match="version 99") as info:
        loads(json.dumps(body).encode())
    assert info.value.flow_run_id == RUN_ID


def test_missing_version_is_a_spec_error() -> None:
    body = body_of(full_spec())
    del body["version"]
    with pytest.raises(SpecError, match="version"):
        loads(json.dumps(body).encode())


def test_missing_flow_run_id_is_a_spec_error_without_run_id() -> None:
    body = body_of(full_spec())
    del body["flow_run_id"]
    with pytest.raises(SpecError, match="missing flow_run_id") as info:
        loads(json.dumps(body).encode())
    assert info.value.flow_run_id is None


def test_empty_required_field_is_named_with_run_id() -> None:
    body = body_of(full_spec())
    body["transition_id"] = ""
    with pytest.raises(SpecError, match="missing transition_id") as info:
        loads(json.dumps(body).encode())
    assert info.value.flow_run_id == RUN_ID


def test_unknown_field_is_a_spec_error_naming_it_with_run_id() -> None:
    body = body_of(full_spec())
    body["api_key"] = "pnu_secret"
    with pytest.raises(SpecError, match="unknown fields api_key") as info:
        loads(json.dumps(body).encode())
    assert info.value.flow_run_id == RUN_ID


def test_non_string_flow_run_id_is_not_reported_as_run_id() -> None:
    body = body_of(full_spec())
    body["flow_run_id"] = 12345
    with pytest.raises(SpecError) as info:
        loads(json.dumps(body).encode())
    assert info.value.flow_run_id is None


@pytest.mark.parametrize(
    "field, value",
    [("job_variables", []), ("env_vars", "A=1"), ("import_paths", "/srv/lib")],
)
def test_field_of_wrong_type_is_a_spec_error(field: str, value: object) -> None:
    body = body_of(full_spec())
    body[field] = value
    with pytest.raises(SpecError, match=field) as info:
        loads(json.dumps(body).encode())
    assert info.value.flow_run_id == RUN_ID


@pytest.mark.parametrize("data", [b"[" * 100_000, b'{"a": ' * 50_000])
def test_a_deeply_nested_spec_file_is_a_spec_error_not_a_crash(data: bytes) -> None:
    with pytest.raises(SpecError, match="nested too deeply"):
        loads(data)


def test_a_spec_whose_version_is_true_is_refused() -> None:
    body = {"version": True, "flow_run_id": "r", "pool": "p", "transition_id": "t"}
    with pytest.raises(SpecError, match="unknown spec version True"):
        loads(json.dumps({**body, "agent_name": "a"}).encode())
