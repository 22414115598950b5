"""agent/core/jobvars.py: the pool's job template, merging and checking job variables."""

from __future__ import annotations

import copy
import json
import re
from typing import Any

import pytest

from agent.core.errors import JobVariableError
from agent.core.jobvars import (
    BASE_JOB_TEMPLATE,
    base_job_template,
    labels_match,
    merge_job_variables,
    template_defaults,
    validate_job_variables,
)

# -- the template ----------------------------------------------------------------------


def test_every_placeholder_of_job_configuration_is_a_variable() -> None:
    text = json.dumps(BASE_JOB_TEMPLATE["job_configuration"])
    placeholders = set(re.findall(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}", text))
    limits = {"memory_limit", "cpu_limit", "pids_limit", "timeout_seconds"}
    assert placeholders == {"command", "env", "working_dir", "labels"} | limits
    assert placeholders <= set(BASE_JOB_TEMPLATE["variables"]["properties"])


def test_template_defaults_of_base_template() -> None:
    assert template_defaults(base_job_template()) == {
        "command": None,
        "env": {},
        "working_dir": None,
        "labels": [],
        "memory_limit": None,
        "cpu_limit": None,
        "pids_limit": None,
        "timeout_seconds": None,
    }


def test_template_defaults_are_copies() -> None:
    template = base_job_template()
    defaults = template_defaults(template)
    defaults["env"]["X"] = "1"
    defaults["labels"].append("gpu")
    assert template_defaults(template)["env"] == {}
    assert template_defaults(template)["labels"] == []


def test_base_job_template_is_a_copy() -> None:
    template = base_job_template()
    template["variables"]["properties"]["env"]["default"]["X"] = "1"
    assert BASE_JOB_TEMPLATE["variables"]["properties"]["env"]["default"] == {}


@pytest.mark.parametrize("template", [None, {}, {"variables": None}, {"variables": {}}])
def test_template_defaults_of_empty_template_is_empty(template: dict[str, Any] | None) -> None:
    assert template_defaults(template) == {}


def test_template_defaults_skips_variables_without_default() -> None:
    template = {"variables": {"properties": {"a": {"type": "string"}, "b": {"default": 3}}}}
    assert template_defaults(template) == {"b": 3}


# -- merging ---------------------------------------------------------------------------


def test_merge_env_is_merged_key_by_key_across_three_layers() -> None:
    merged = merge_job_variables(
        {"env": {"A": "pool", "B": "pool", "C": "pool"}},
        {"env": {"B": "deployment", "C": "deployment"}},
        {"env": {"C": "run"}},
    )
    assert merged["env"] == {"A": "pool", "B": "deployment", "C": "run"}


def test_merge_other_keys_are_replaced_by_later_layers() -> None:
    merged = merge_job_variables(
        {"command": "pool-cmd", "labels": ["a", "b"], "working_dir": "/pool"},
        {"labels": ["c"]},
        {"command": "run-cmd"},
    )
    assert merged == {"command": "run-cmd", "labels": ["c"], "working_dir": "/pool"}


def test_merge_accepts_none_layers() -> None:
    assert merge_job_variables(None, {"command": "x"}, None) == {"command": "x"}
    assert merge_job_variables(None, None, None) == {}


def test_merge_does_not_mutate_its_inputs() -> None:
    pool = {"env": {"A": "1"}, "labels": ["a"]}
    deployment = {"env": {"B": "2"}}
    run = {"env": {"A": "3"}, "labels": ["b"]}
    before = copy.deepcopy((pool, deployment, run))
    merged = merge_job_variables(pool, deployment, run)
    merged["env"]["Z"] = "9"
    merged["labels"].append("z")
    assert (pool, deployment, run) == before


def test_merged_result_does_not_share_lists_with_inputs() -> None:
    pool = {"labels": ["a"]}
    merged = merge_job_variables(pool)
    merged["labels"].append("b")
    assert pool == {"labels": ["a"]}


# -- validation ------------------------------------------------------------------------


def test_validate_command_string_is_shlex_split() -> None:
    job = validate_job_variables({"command": "python -c 'print(1 + 1)'"})
    assert job.command == ("python", "-c", "print(1 + 1)")


@pytest.mark.parametrize("command", [None, "", "   "])
def test_validate_no_command_means_default(command: str | None) -> None:
    assert validate_job_variables({"command": command}).command is None


@pytest.mark.parametrize("command", [["python", "x.py"], 42])
def test_validate_command_not_a_string_names_command(command: object) -> None:
    with pytest.raises(JobVariableError, match="`command`"):
        validate_job_variables({"command": command})


def test_validate_command_with_unclosed_quote_names_command() -> None:
    with pytest.raises(JobVariableError, match="`command`"):
        validate_job_variables({"command": "echo 'unclosed"})


@pytest.mark.parametrize("env", [["A=1"], {"A": 1}, {1: "a"}, "A=1"])
def test_validate_env_not_a_mapping_of_strings_names_env(env: object) -> None:
    with pytest.raises(JobVariableError, match="`env`"):
        validate_job_variables({"env": env})


def test_validate_env_mapping_of_strings_is_kept() -> None:
    assert validate_job_variables({"env": {"A": "1"}}).env == {"A": "1"}


def test_validate_env_none_is_empty() -> None:
    assert validate_job_variables({"env": None}).env == {}


@pytest.mark.parametrize("labels", ["gpu", ["gpu", 1], {"gpu": True}])
def test_validate_labels_not_a_list_of_strings_names_labels(labels: object) -> None:
    with pytest.raises(JobVariableError, match="`labels`"):
        validate_job_variables({"labels": labels})


def test_validate_labels_become_a_frozenset() -> None:
    assert validate_job_variables({"labels": ["a", "b", "a"]}).labels == frozenset({"a", "b"})


@pytest.mark.parametrize("working_dir", [["/tmp"], 3, {"path": "/tmp"}])
def test_validate_working_dir_of_wrong_type_names_working_dir(working_dir: object) -> None:
    with pytest.raises(JobVariableError, match="`working_dir`"):
        validate_job_variables({"working_dir": working_dir})


def test_validate_empty_working_dir_means_none() -> None:
    assert validate_job_variables({"working_dir": ""}).working_dir is None
    assert validate_job_variables({"working_dir": "/srv/flows"}).working_dir == "/srv/flows"


# -- what exec would refuse fails the run, by name ------------------------------------------


@pytest.mark.parametrize(
    ("raw", "said"),
    [
        ({"env": {"A=B": "1"}}, "job variable `env` has a name with '=' in it: 'A=B'"),
        ({"env": {"": "1"}}, "job variable `env` has a name with nothing in it: ''"),
        ({"env": {"A\0": "1"}}, "job variable `env` has a name with a NUL byte in it: 'A\\x00'"),
        (
            {"env": {"TOKEN": "pnu_hunter2\0"}},
            "job variable `env`: the value of 'TOKEN' has a NUL byte in it",
        ),
        (
            {"env": {"TOKEN": "pnu_hunter2\ud800"}},
            "job variable `env`: the value of 'TOKEN' has characters that cannot be encoded",
        ),
        ({"command": "python -c 'x'\0"}, "job variable `command` has a NUL byte in it"),
        ({"working_dir": "/srv/\0flows"}, "job variable `working_dir` has a NUL byte in it"),
        (["not", "an", "object"], "job variables must be an object, got list"),
    ],
)
def test_a_job_variable_exec_would_refuse_fails_the_run_naming_it(raw: Any, said: str) -> None:
    with pytest.raises(JobVariableError) as info:
        validate_job_variables(raw)
    assert str(info.value) == said
    assert "hunter2" not in str(info.value)  # an env value may be a secret


def test_job_variables_of_a_layer_that_is_not_an_object_are_a_job_variable_error() -> None:
    with pytest.raises(JobVariableError, match="job variables must be an object, got list"):
        merge_job_variables({"env": {}}, [1, 2])  # type: ignore[arg-type]


def test_validate_template_defaults_give_an_all_default_job() -> None:
    job = validate_job_variables(template_defaults(base_job_template()))
    assert job.command is None
    assert job.env == {}
    assert job.working_dir is None
    assert job.labels == frozenset()


# -- labels ----------------------------------------------------------------------------


def test_run_without_labels_matches_any_agent() -> None:
    assert labels_match(frozenset(), frozenset())
    assert labels_match(frozenset(), frozenset({"gpu", "host1"}))


def test_run_needing_gpu_does_not_match_agent_without_it() -> None:
    assert not labels_match(frozenset({"gpu"}), frozenset({"cpu", "host1"}))


def test_run_labels_subset_of_agent_labels_match() -> None:
    assert labels_match(frozenset({"gpu"}), frozenset({"gpu", "host1"}))
    assert labels_match(frozenset({"gpu", "host1"}), frozenset({"gpu", "host1"}))


def test_run_needing_more_labels_than_agent_does_not_match() -> None:
    assert not labels_match(frozenset({"gpu", "big"}), frozenset({"gpu"}))
