"""Properties of agent/core/environment.py: what build_env and build_argv return passes
the real checks of subprocess (run here: /bin/true with that argv, env and cwd), or
they raise JobVariableError naming the variable, never showing an env value."""

from __future__ import annotations

import os
import subprocess
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from agent.core.environment import build_argv, build_env
from agent.core.errors import JobVariableError
from agent.core.jobvars import validate_job_variables
from tests.unit.strategies import EXEC, FAST, SECRET, env_names, secret_values, text

TRUE = "/bin/true"
RUN_ID = "3f1c0f9e-0000-4000-8000-000000000001"
env_maps = st.dictionaries(env_names, secret_values, max_size=4)
run_inputs = st.fixed_dictionaries(
    {
        "job": st.fixed_dictionaries(
            {},
            optional={
                "command": st.lists(text, max_size=3).map(" ".join),
                "env": env_maps,
                "working_dir": text,
            },
        ),
        "agent_env": env_maps,  # the spec's env_vars: --env values, maybe from an old spec
        "import_paths": st.lists(text, max_size=2),
        "python": st.one_of(st.just("/usr/bin/python3"), text),
    }
)

pytestmark = pytest.mark.skipif(not os.access(TRUE, os.X_OK), reason=f"needs {TRUE}")


def build(inputs: dict[str, Any], cwd: str) -> tuple[list[str], dict[str, str], str]:
    job = validate_job_variables(inputs["job"])
    working_dir = job.working_dir or cwd
    env = build_env(
        {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": "/nonexistent"},
        working_dir=working_dir,
        import_paths=inputs["import_paths"],
        agent_env=inputs["agent_env"],
        run_env=job.env,
        api_url="http://127.0.0.1:9/api",
        secret_env={"PREFECT_API_KEY": "pnu_" + SECRET},
        flow_run_id=RUN_ID,
    )
    return build_argv(job.command, inputs["python"]), env, working_dir


@EXEC
@given(run_inputs)
@example({"job": {"env": {"A=B": "1"}}, "agent_env": {}, "import_paths": [], "python": "p"})
@example({"job": {}, "agent_env": {"K": SECRET + "\0"}, "import_paths": [], "python": "p"})
@example({"job": {"command": "a\0b"}, "agent_env": {}, "import_paths": [], "python": "p"})
@example({"job": {}, "agent_env": {}, "import_paths": ["/x\0"], "python": "p"})
@example({"job": {}, "agent_env": {}, "import_paths": [], "python": "\ud800"})
@example({"job": {"working_dir": "/\udcff"}, "agent_env": {}, "import_paths": [], "python": "p"})
def test_what_the_builders_return_is_accepted_by_subprocess_or_the_run_fails_by_name(
    inputs: dict[str, Any],
) -> None:
    try:
        argv, env, cwd = build(inputs, "/")
    except JobVariableError as exc:
        message = str(exc)
        # The worker's own environment is clean here: the message names the setting or
        # job variable at fault (job variable `env`, agent setting `--env`, ...).
        assert "`" in message, message
        assert SECRET not in message
        return
    # argv after /bin/true: every item goes through exec's checks, and /bin/true runs.
    try:
        subprocess.run([TRUE, *argv], env=env, cwd=cwd, check=False, timeout=10)
    except OSError:
        pass  # the child's own errors (no such working_dir, E2BIG): a run Failed, not a bug
    except (ValueError, TypeError) as exc:  # what used to kill the worker
        pytest.fail(f"subprocess refused what the builders returned: {exc!r}")


@FAST
@given(env_maps, env_maps)
def test_job_env_wins_over_agent_env_and_never_replaces_the_api_or_credential(
    extra: dict[str, str], run_env: dict[str, str]
) -> None:
    # The agent's --env sets every name the run's env sets, to another value.
    agent_env = {**extra, **{name: value + "-agent" for name, value in run_env.items()}}
    try:
        env = build_env(
            {},
            working_dir="/w",
            import_paths=[],
            agent_env=agent_env,
            run_env=run_env,
            api_url="http://api/api",
            secret_env={"PREFECT_API_KEY": "pnu_agent"},
            flow_run_id=RUN_ID,
        )
    except JobVariableError as exc:
        assert SECRET not in str(exc)
        return
    for name, value in run_env.items():
        if not name.startswith(("PREFECT_API_", "PREFECT__FLOW_RUN_ID")):
            assert env[name] == value
    assert env["PREFECT_API_URL"] == "http://api/api"
    assert env["PREFECT_API_KEY"] == "pnu_agent"
    assert env["PREFECT__FLOW_RUN_ID"] == RUN_ID
