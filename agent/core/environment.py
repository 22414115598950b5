"""The flow run's argv and environment. Pure functions of their arguments."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence

from agent.settings import defaults

# Never passed from the worker's own environment to a flow run: supervisor's and
# prometheus_client's plumbing, the agent's own settings (which may hold its token),
# and credentials, which are set explicitly from the agent's configuration.
_DROP_PREFIXES = ("SUPERVISOR_", "PREFECT__CLOUD__AGENT__")
_DROP_KEYS = frozenset({"PROMETHEUS_MULTIPROC_DIR", "PREFECT_API_KEY", "PREFECT_API_AUTH_STRING"})

# Settings a flow run gets unless anything below sets them (see defaults.py for why).
FLOW_DEFAULTS = {"PREFECT_CLIENT_MAX_RETRIES": defaults.FLOW_CLIENT_MAX_RETRIES}


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
    """
    env = {**FLOW_DEFAULTS, **inherited_env(environ)}
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
    return env


def build_argv(command: Sequence[str] | None, python: str) -> list[str]:
    """The ``command`` job variable when given, else the Prefect engine."""
    if command:
        return list(command)
    return [python, "-m", "prefect.engine"]
