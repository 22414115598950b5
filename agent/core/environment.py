"""The flow run's argv and environment. Pure functions of their arguments."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence

from agent.core.errors import JobVariableError
from agent.settings import defaults

# Never passed from the worker's own environment to a flow run: supervisor's and
# prometheus_client's plumbing, the agent's own settings (which may hold its token),
# and credentials, which are set explicitly from the agent's configuration.
_DROP_PREFIXES = ("SUPERVISOR_", "PREFECT__CLOUD__AGENT__")
_DROP_KEYS = frozenset({"PROMETHEUS_MULTIPROC_DIR", "PREFECT_API_KEY", "PREFECT_API_AUTH_STRING"})

# Settings a flow run gets unless anything below sets them (see defaults.py for why).
FLOW_DEFAULTS = {"PREFECT_CLIENT_MAX_RETRIES": defaults.FLOW_CLIENT_MAX_RETRIES}


# -- what exec accepts: checked here so that a bad value fails its run, not the worker ----


def text_problem(text: object) -> str | None:
    """What keeps ``text`` from being an argv item, env name or value, or path; None if
    nothing. The checks subprocess makes (os.fsencode, then C strings) before it forks."""
    if not isinstance(text, str):
        return f"a {type(text).__name__} instead of a string"
    if "\0" in text:
        return "a NUL byte in it"
    try:
        os.fsencode(text)
    except UnicodeEncodeError:
        return "characters that cannot be encoded"
    return None


def check_text(text: object, what: str) -> None:
    """JobVariableError if ``text`` cannot reach exec. The message names ``what``, never
    the text: it may be a secret."""
    problem = text_problem(text)
    if problem:
        raise JobVariableError(f"{what} has {problem}")


def check_env(env: Mapping[str, str], what: str) -> None:
    """Names non-empty, without ``=``; names and values as :func:`text_problem` wants.
    A bad name is shown; a value never, only its name."""
    for name, value in env.items():
        problem = text_problem(name)
        if problem is None and not name:
            problem = "nothing in it"
        elif problem is None and "=" in name:
            problem = "'=' in it"
        if problem:
            shown = f": {name!r}" if isinstance(name, str) else ""
            raise JobVariableError(f"{what} has a name with {problem}{shown}")
        check_text(value, f"{what}: the value of {name!r}")


def base_env(environ: Mapping[str, str]) -> dict[str, str]:
    """What every run's environment starts from (steps 0 and 1 of ``build_env``)."""
    return {**FLOW_DEFAULTS, **inherited_env(environ)}


def inherited_env(environ: Mapping[str, str]) -> dict[str, str]:
    return {
        k: v for k, v in environ.items() if k not in _DROP_KEYS and not k.startswith(_DROP_PREFIXES)
    }


def python_path(working_dir: str, inherited: str | None, import_paths: Iterable[str]) -> str:
    """Working dir, then the inherited PYTHONPATH, then each --import-path (Prefect 1's order)."""
    parts = [working_dir, *(inherited.split(os.pathsep) if inherited else []), *import_paths]
    seen: list[str] = []
    for part in parts:
        if part and part not in seen:
            seen.append(part)
    return os.pathsep.join(seen)


def build_env(
    environ: Mapping[str, str],
    *,
    working_dir: str,
    import_paths: Sequence[str],
    agent_env: Mapping[str, str],
    run_env: Mapping[str, str],
    api_url: str,
    secret_env: Mapping[str, str],
    flow_run_id: str,
    logs_to_api: bool = True,
) -> dict[str, str]:
    """Later steps override earlier ones:

    0. the agent's defaults for flow runs (FLOW_DEFAULTS);
    1. the worker's environment, less supervisor/metrics plumbing and credentials;
    2. PYTHONPATH = working dir, inherited PYTHONPATH, import paths;
    3. the agent's --env values;
    4. the run's ``env`` job variable;
    5. logging to the API off when the agent runs with --no-cloud-logs;
    6. what nothing may override: the API URL, the credential, the flow run id.

    JobVariableError (naming the variable, never a value) when any of it cannot be
    passed to exec.
    """
    check_text(working_dir, "job variable `working_dir`")
    for path in import_paths:
        check_text(path, "agent setting `--import-path`")
    check_env(agent_env, "agent setting `--env`")
    check_env(run_env, "job variable `env`")
    check_env(secret_env, "agent setting: the API credential")
    check_text(api_url, "agent setting `--api`")
    check_text(flow_run_id, "the flow run id")
    env = base_env(environ)
    env["PYTHONPATH"] = python_path(working_dir, environ.get("PYTHONPATH"), import_paths)
    env.update(agent_env)
    env.update(run_env)
    if not logs_to_api:
        env["PREFECT_LOGGING_TO_API_ENABLED"] = "false"
    for key in _DROP_KEYS - {"PROMETHEUS_MULTIPROC_DIR"}:
        env.pop(key, None)  # a run's env must not swap the credential either
    env.update(secret_env)
    env["PREFECT_API_URL"] = api_url
    env["PREFECT__FLOW_RUN_ID"] = flow_run_id
    check_env(env, "the worker's environment")  # what is left: the inherited variables
    return env


def build_argv(command: Sequence[str] | None, python: str) -> list[str]:
    """The ``command`` job variable when given, else the Prefect engine.

    JobVariableError when an item cannot be passed to exec."""
    if command:
        for item in command:
            check_text(item, "job variable `command`")
        return list(command)
    check_text(python, "agent setting `--flow-python`")
    return [python, "-m", "prefect.engine"]
