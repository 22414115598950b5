"""Properties of agent/core/spec.py: whatever bytes sit in a spec file (flows can write
into the spool), loads gives a JobSpec or a SpecError; a spec the poller wrote reads back
the same."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from agent.core.errors import SpecError
from agent.core.spec import SPEC_VERSION, JobSpec, dumps, loads
from tests.unit.strategies import FAST, json_values, objects_with, text

FIELDS = ["version", *JobSpec.__dataclass_fields__]
REQUIRED = ("flow_run_id", "pool", "transition_id", "agent_name")
OPTIONAL_STRINGS = ("deployment_id", "scheduled_start")
ids = st.uuids().map(str)
specs = st.builds(
    JobSpec,
    flow_run_id=ids,
    pool=text.filter(bool),
    transition_id=ids,
    agent_name=text.filter(bool),
    flow_run_name=text,
    deployment_id=st.none() | ids,
    scheduled_start=st.none() | text,
    claimed_at=st.floats(allow_nan=False, allow_infinity=False),
    job_variables=st.dictionaries(text, json_values(), max_size=3),
    env_vars=st.dictionaries(text, text, max_size=3),
    import_paths=st.lists(text, max_size=2),
    show_flow_logs=st.booleans(),
    cloud_logs=st.booleans(),
)
spec_like = objects_with(
    FIELDS,
    {
        "version": st.sampled_from([SPEC_VERSION, True, 1.0, "1"]),
        "flow_run_id": ids,
        "pool": text,
        "transition_id": ids,
        "agent_name": text,
        "env_vars": st.dictionaries(text, text | json_values(), max_size=2),
    },
)
# A spec the poller wrote, with a few fields replaced by anything (or added).
changed_specs = st.builds(
    lambda spec, changes: {**json.loads(dumps(spec)), **changes},
    specs,
    st.dictionaries(st.sampled_from(FIELDS) | text, json_values(), max_size=3),
)


def check(data: bytes) -> None:
    try:
        spec = loads(data)
    except SpecError as exc:
        assert str(exc)
        assert exc.flow_run_id is None or isinstance(exc.flow_run_id, str)
    else:  # a spec the worker can use: every field of its declared type
        assert all(isinstance(getattr(spec, f), str) and getattr(spec, f) for f in REQUIRED)
        assert isinstance(spec.flow_run_name, str)
        assert all(isinstance(getattr(spec, f), str | None) for f in OPTIONAL_STRINGS)
        assert isinstance(spec.claimed_at, int | float)
        assert isinstance(spec.job_variables, dict)
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in spec.env_vars.items())
        assert all(isinstance(p, str) for p in spec.import_paths)
        assert isinstance(spec.show_flow_logs, bool) and isinstance(spec.cloud_logs, bool)


@FAST
@given(st.binary(max_size=200))
@example(b"[" * 100_000)
@example(b'{"a": ' * 50_000)
@example(b"\xff\xfe{}")
@example(b"")
def test_any_bytes_in_a_spec_file_give_a_spec_or_a_spec_error(data: bytes) -> None:
    check(data)


@FAST
@given(st.one_of(changed_specs, spec_like, json_values()))
@example({"version": True, "flow_run_id": "r", "pool": "p", "transition_id": "t", "agent_name": ""})
def test_any_json_in_a_spec_file_gives_a_spec_or_a_spec_error(body: Any) -> None:
    check(json.dumps(body).encode())


@FAST
@given(specs)
def test_a_spec_the_poller_wrote_reads_back_the_same(spec: JobSpec) -> None:
    again = loads(dumps(spec))
    assert replace(again, job_variables={}) == replace(spec, job_variables={})
    # Compared as JSON: a NaN in job_variables is never equal to itself.
    assert json.dumps(again.job_variables, sort_keys=True) == json.dumps(
        spec.job_variables, sort_keys=True
    )
