"""agent/core/environment.py: the flow run's environment and argv."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import pytest

from agent.core.environment import FLOW_DEFAULTS, build_argv, build_env, python_path
from agent.core.errors import JobVariableError

API_URL = "http://prefect.test:4200/api"
RUN_ID = "3f1c0f9e-0000-4000-8000-000000000001"


def env_of(
    environ: Mapping[str, str] | None = None,
    *,
    working_dir: str = "/work/dir",
    import_paths: tuple[str, ...] = (),
    agent_env: Mapping[str, str] | None = None,
    run_env: Mapping[str, str] | None = None,
    secret_env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    return build_env(
        environ or {},
        working_dir=working_dir,
        import_paths=import_paths,
        agent_env=agent_env or {},
        run_env=run_env or {},
        api_url=API_URL,
        secret_env=secret_env or {},
        flow_run_id=RUN_ID,
    )


# -- precedence ------------------------------------------------------------------------


def test_worker_env_is_inherited() -> None:
    env = env_of({"HOME": "/home/agent", "LANG": "C.UTF-8"})
    assert env["HOME"] == "/home/agent"
    assert env["LANG"] == "C.UTF-8"


def test_agent_env_overrides_worker_env() -> None:
    env = env_of({"X": "worker"}, agent_env={"X": "agent"})
    assert env["X"] == "agent"


def test_agent_env_pythonpath_overrides_computed_pythonpath() -> None:
    env = env_of({"PYTHONPATH": "/inherited"}, agent_env={"PYTHONPATH": "/from-agent"})
    assert env["PYTHONPATH"] == "/from-agent"


def test_run_env_overrides_agent_env() -> None:
    env = env_of({"X": "worker"}, agent_env={"X": "agent"}, run_env={"X": "run"})
    assert env["X"] == "run"


def test_run_env_pythonpath_overrides_computed_pythonpath() -> None:
    env = env_of(run_env={"PYTHONPATH": "/from-run"})
    assert env["PYTHONPATH"] == "/from-run"


def test_fixed_values_are_set() -> None:
    env = env_of(secret_env={"PREFECT_API_KEY": "pnu_agent"})
    assert env["PREFECT_API_URL"] == API_URL
    assert env["PREFECT__FLOW_RUN_ID"] == RUN_ID
    assert env["PREFECT_API_KEY"] == "pnu_agent"


@pytest.mark.parametrize("layer", ["environ", "agent_env", "run_env"])
def test_no_layer_overrides_api_url_or_flow_run_id(layer: str) -> None:
    bad = {"PREFECT_API_URL": "http://evil/api", "PREFECT__FLOW_RUN_ID": "other-run"}
    layers: dict[str, Mapping[str, str]] = {"environ": {}, "agent_env": {}, "run_env": {}}
    layers[layer] = bad
    env = env_of(layers["environ"], agent_env=layers["agent_env"], run_env=layers["run_env"])
    assert env["PREFECT_API_URL"] == API_URL
    assert env["PREFECT__FLOW_RUN_ID"] == RUN_ID


def test_run_env_cannot_replace_the_api_key() -> None:
    env = env_of(
        run_env={"PREFECT_API_KEY": "pnu_run"}, secret_env={"PREFECT_API_KEY": "pnu_agent"}
    )
    assert env["PREFECT_API_KEY"] == "pnu_agent"


@pytest.mark.parametrize("key", ["PREFECT_API_KEY", "PREFECT_API_AUTH_STRING"])
def test_run_env_cannot_inject_a_credential_when_agent_has_none(key: str) -> None:
    env = env_of(run_env={key: "injected"})
    assert key not in env


def test_run_env_cannot_add_auth_string_beside_the_agent_key() -> None:
    env = env_of(
        run_env={"PREFECT_API_AUTH_STRING": "user:injected"},
        secret_env={"PREFECT_API_KEY": "pnu_agent"},
    )
    assert "PREFECT_API_AUTH_STRING" not in env
    assert env["PREFECT_API_KEY"] == "pnu_agent"


@pytest.mark.parametrize("key", ["PREFECT_API_KEY", "PREFECT_API_AUTH_STRING"])
def test_agent_env_cannot_inject_a_credential(key: str) -> None:
    env = env_of(agent_env={key: "from-agent-env"})
    assert key not in env


# -- what is dropped from the worker's environment -------------------------------------


def test_worker_plumbing_and_credentials_are_not_inherited() -> None:
    environ = {
        "PROMETHEUS_MULTIPROC_DIR": "/run/agent/metrics",
        "SUPERVISOR_ENABLED": "1",
        "SUPERVISOR_PROCESS_NAME": "agent-worker_00",
        "PREFECT__CLOUD__AGENT__AUTH_TOKEN": "old-token",
        "PREFECT__CLOUD__AGENT__LABELS": '["a"]',
        "PREFECT_API_KEY": "pnu_worker_env",
        "PREFECT_API_AUTH_STRING": "worker:env",
        "KEEP_ME": "yes",
    }
    env = env_of(environ)
    assert env["KEEP_ME"] == "yes"
    for key in environ.keys() - {"KEEP_ME"}:
        assert key not in env, key


def test_worker_credential_is_replaced_by_the_configured_one() -> None:
    env = env_of(
        {"PREFECT_API_AUTH_STRING": "worker:env"},
        secret_env={"PREFECT_API_KEY": "pnu_agent"},
    )
    assert env["PREFECT_API_KEY"] == "pnu_agent"
    assert "PREFECT_API_AUTH_STRING" not in env


def test_build_env_does_not_mutate_its_inputs() -> None:
    environ = {"SUPERVISOR_ENABLED": "1", "PYTHONPATH": "/x"}
    run_env = {"PREFECT_API_KEY": "injected"}
    env_of(environ, run_env=run_env)
    assert environ == {"SUPERVISOR_ENABLED": "1", "PYTHONPATH": "/x"}
    assert run_env == {"PREFECT_API_KEY": "injected"}


# -- PYTHONPATH ------------------------------------------------------------------------


def test_python_path_order_is_working_dir_inherited_then_import_paths() -> None:
    inherited = os.pathsep.join(["/inh1", "/inh2"])
    assert python_path("/wd", inherited, ["/imp1", "/imp2"]) == os.pathsep.join(
        ["/wd", "/inh1", "/inh2", "/imp1", "/imp2"]
    )


def test_python_path_drops_duplicates_keeping_first_place() -> None:
    inherited = os.pathsep.join(["/inh", "/wd"])
    assert python_path("/wd", inherited, ["/imp", "/inh", "/imp"]) == os.pathsep.join(
        ["/wd", "/inh", "/imp"]
    )


def test_python_path_skips_empty_parts_and_missing_inherited() -> None:
    assert python_path("/wd", None, ["", "/imp"]) == os.pathsep.join(["/wd", "/imp"])
    assert python_path("/wd", os.pathsep + "/inh" + os.pathsep, []) == os.pathsep.join(
        ["/wd", "/inh"]
    )


def test_build_env_sets_pythonpath_from_working_dir_inherited_and_import_paths() -> None:
    env = env_of({"PYTHONPATH": "/inh"}, working_dir="/wd", import_paths=("/imp", "/wd"))
    assert env["PYTHONPATH"] == os.pathsep.join(["/wd", "/inh", "/imp"])


# -- argv ------------------------------------------------------------------------------


def test_build_argv_default_runs_the_prefect_engine() -> None:
    assert build_argv(None, "/opt/venv/bin/python") == [
        "/opt/venv/bin/python",
        "-m",
        "prefect.engine",
    ]


def test_build_argv_empty_command_runs_the_prefect_engine() -> None:
    assert build_argv((), "/py") == ["/py", "-m", "prefect.engine"]


def test_build_argv_uses_a_command_verbatim() -> None:
    command = ("bash", "-c", "echo 'hi there'")
    argv = build_argv(command, "/py")
    assert argv == ["bash", "-c", "echo 'hi there'"]
    assert isinstance(argv, list)


# -- defaults for flow runs ------------------------------------------------------------


def test_flow_runs_get_more_client_retries_by_default() -> None:
    assert FLOW_DEFAULTS == {"PREFECT_CLIENT_MAX_RETRIES": "8"}
    assert env_of()["PREFECT_CLIENT_MAX_RETRIES"] == "8"
    assert env_of({"HOME": "/home/agent"})["PREFECT_CLIENT_MAX_RETRIES"] == "8"


def test_the_default_holds_without_cloud_logs_too() -> None:
    env = build_env(
        {},
        working_dir="/wd",
        import_paths=(),
        agent_env={},
        run_env={},
        api_url=API_URL,
        secret_env={},
        flow_run_id=RUN_ID,
        logs_to_api=False,
    )
    assert env["PREFECT_CLIENT_MAX_RETRIES"] == "8"


def test_the_workers_environment_overrides_the_client_retries_default() -> None:
    env = env_of({"PREFECT_CLIENT_MAX_RETRIES": "3"})
    assert env["PREFECT_CLIENT_MAX_RETRIES"] == "3"


def test_the_agents_env_overrides_the_client_retries_default() -> None:
    assert env_of(agent_env={"PREFECT_CLIENT_MAX_RETRIES": "4"})["PREFECT_CLIENT_MAX_RETRIES"] == (
        "4"
    )
    env = env_of({"PREFECT_CLIENT_MAX_RETRIES": "3"}, agent_env={"PREFECT_CLIENT_MAX_RETRIES": "4"})
    assert env["PREFECT_CLIENT_MAX_RETRIES"] == "4"


def test_the_runs_env_overrides_the_client_retries_default() -> None:
    assert env_of(run_env={"PREFECT_CLIENT_MAX_RETRIES": "0"})["PREFECT_CLIENT_MAX_RETRIES"] == "0"
    env = env_of(
        {"PREFECT_CLIENT_MAX_RETRIES": "3"},
        agent_env={"PREFECT_CLIENT_MAX_RETRIES": "4"},
        run_env={"PREFECT_CLIENT_MAX_RETRIES": "5"},
    )
    assert env["PREFECT_CLIENT_MAX_RETRIES"] == "5"


def test_an_override_does_not_change_the_default_for_the_next_run() -> None:
    env_of(run_env={"PREFECT_CLIENT_MAX_RETRIES": "1"})
    env_of({"PREFECT_CLIENT_MAX_RETRIES": "2"})
    assert FLOW_DEFAULTS == {"PREFECT_CLIENT_MAX_RETRIES": "8"}
    assert env_of()["PREFECT_CLIENT_MAX_RETRIES"] == "8"


# -- what exec would refuse fails the run, by name, never showing a value ---------------


@pytest.mark.parametrize(
    ("layers", "said"),
    [
        (
            {"agent_env": {"A=B": "pnu_hunter2"}},
            "agent setting `--env` has a name with '=' in it: 'A=B'",
        ),
        (
            {"agent_env": {"TOKEN": "pnu_hunter2\0"}},
            "agent setting `--env`: the value of 'TOKEN' has a NUL byte in it",
        ),
        ({"run_env": {"": "x"}}, "job variable `env` has a name with nothing in it: ''"),
        ({"import_paths": ("/ok", "/x\0")}, "agent setting `--import-path` has a NUL byte in it"),
        ({"working_dir": "/w\0"}, "job variable `working_dir` has a NUL byte in it"),
        (
            {"environ": {"BAD\udc80\ud800": "1"}},
            "the worker's environment has a name with characters that cannot be encoded: "
            "'BAD\\udc80\\ud800'",
        ),
    ],
)
def test_an_env_exec_would_refuse_fails_the_run_naming_the_variable(
    layers: dict[str, Any], said: str
) -> None:
    environ = layers.pop("environ", {})
    with pytest.raises(JobVariableError) as info:
        env_of(environ, **layers)
    assert str(info.value) == said
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("command", "python", "said"),
    [
        (("python", "-c", "x\0"), "/usr/bin/python3", "job variable `command` has a NUL byte"),
        (None, "/usr/bin/py\0", "agent setting `--flow-python` has a NUL byte"),
        (("\ud800",), "p", "job variable `command` has characters that cannot be encoded"),
    ],
)
def test_an_argv_exec_would_refuse_fails_the_run_naming_the_variable(
    command: tuple[str, ...] | None, python: str, said: str
) -> None:
    with pytest.raises(JobVariableError, match=said):
        build_argv(command, python)
