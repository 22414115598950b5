"""Properties of agent/core/jobvars.py: whatever JSON a deployment author or the server
sends as job variables, the agent gets a runnable job or a JobVariableError that names
the variable, never another exception and never an ``env`` value in the message."""

from __future__ import annotations

import copy
import os
from typing import Any

from hypothesis import example, given
from hypothesis import strategies as st

from agent.core.errors import JobVariableError
from agent.core.jobvars import (
    JobVariables,
    merge_job_variables,
    parse_labels,
    validate_job_variables,
)
from tests.unit.strategies import (
    FAST,
    SECRET,
    env_names,
    json_values,
    objects_with,
    secret_values,
    text,
)

VARIABLES = ["command", "env", "working_dir", "labels"]
job_variables = objects_with(
    VARIABLES,
    {
        "command": st.lists(text, max_size=4).map(" ".join),
        "env": st.dictionaries(env_names, secret_values, max_size=4),
        "working_dir": text,
        "labels": st.lists(text, max_size=3),
    },
)


def exec_ok(value: str) -> bool:
    """What subprocess accepts in argv, env and cwd (test_properties_environment runs it)."""
    try:
        os.fsencode(value)
    except UnicodeEncodeError:
        return False
    return "\0" not in value


def assert_runnable(job: JobVariables) -> None:
    assert job.command is None or (job.command and all(exec_ok(x) for x in job.command))
    for name, value in job.env.items():
        assert name and "=" not in name and exec_ok(name)
        assert exec_ok(value)
    assert job.working_dir is None or (job.working_dir and exec_ok(job.working_dir))
    assert all(isinstance(label, str) for label in job.labels)


@FAST
@given(st.one_of(job_variables, json_values()))
@example({"env": {"A=B": "1"}})
@example({"env": {"A": "x\0" + SECRET}})
@example({"command": "python -c 'print(1)'\0"})
@example({"working_dir": "/tmp\0"})
@example({"env": {"K": SECRET + "\ud800"}})
def test_any_job_variables_give_a_runnable_job_or_an_error_naming_the_variable(
    raw: Any,
) -> None:
    try:
        job = validate_job_variables(raw)
    except JobVariableError as exc:
        message = str(exc)
        assert message.startswith("job variable"), message
        assert any(f"`{name}`" in message for name in VARIABLES) or "must be an object" in message
        assert SECRET not in message  # an env value may be a secret
    else:
        assert_runnable(job)


@FAST
@given(st.lists(st.one_of(st.none(), job_variables, json_values()), max_size=4))
def test_merging_any_layers_lets_later_ones_win_and_changes_none_of_them(
    layers: list[Any],
) -> None:
    before = copy.deepcopy(layers)
    try:
        merged = merge_job_variables(*layers)
    except JobVariableError as exc:
        assert any(x is not None and not isinstance(x, dict) for x in layers)
        assert str(exc).startswith("job variables must be an object")
        return
    for key, value in merged.items():
        last = [layer[key] for layer in layers if layer and key in layer][-1]
        if key != "env" or not isinstance(last, dict):
            assert repr(value) == repr(last)  # repr: NaN is not equal to itself
    envs = [layer["env"] for layer in layers if layer and "env" in layer]
    if envs and all(isinstance(e, dict) for e in envs):
        expected: dict[str, Any] = {}
        for env in envs:
            expected.update(env)
        assert merged["env"].keys() == expected.keys()
    # The result shares nothing with the layers: changing it changes none of them.
    for value in merged.values():
        if isinstance(value, dict):
            value["added-by-test"] = 1
        elif isinstance(value, list):
            value.append("added-by-test")
    assert repr(layers) == repr(before)


@FAST
@given(json_values())
@example(["a", 1])
@example("a,b")
def test_labels_of_any_shape_give_a_set_of_strings_or_an_error_naming_labels(
    value: Any,
) -> None:
    try:
        labels = parse_labels(value)
    except JobVariableError as exc:
        assert "`labels`" in str(exc)
    else:
        assert isinstance(labels, frozenset)
        assert all(isinstance(x, str) for x in labels)
        assert labels == frozenset(value or [])
