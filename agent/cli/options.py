"""Command-line options shared by the commands, and where each value came from.

Precedence, for every setting: flag > environment variable > config file (``--config``)
> built-in default; the backend config (``--agent-config-id``) sits above all and is
applied by the poller. The config file is loaded by an eager option into click's
``default_map``, which click consults after the command line and the environment.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from agent.cli.option_types import (
    ENV_VARS_ENV,
    FILE_META,
    LABELS_ENV,
    EnvPairType,
    LabelType,
    address,
    duration,
    load_config_file,
    poll_cap,
)
from agent.core.errors import ConfigError
from agent.observe import logs
from agent.settings import defaults

F = TypeVar("F", bound=Callable[..., Any])

AUTH_STRING_ENV = "PREFECT_API_AUTH_STRING"
# Prefect 1's switch for flow run logs to the backend (true/false).
SEND_LOGS_ENV = "PREFECT__CLOUD__SEND_FLOW_RUN_LOGS"

SOURCE_NAMES = {
    ParameterSource.COMMANDLINE: "flag",
    ParameterSource.ENVIRONMENT: "env",
    ParameterSource.DEFAULT_MAP: "file",
    ParameterSource.DEFAULT: "default",
}


def _apply(func: F, options: list[Callable[[F], F]]) -> F:
    for option in reversed(options):
        func = option(func)
    return func


# -- option groups -----------------------------------------------------------------------


def config_option(help: str) -> Callable[[F], F]:
    """--config: eager, so the file's values are click's defaults for every other option."""
    return click.option(
        "--config",
        "config_file",
        envvar="AGENT_CONFIG",
        show_envvar=True,
        is_eager=True,
        type=click.Path(dir_okay=False),
        callback=load_config_file,
        help=help,
    )


def spool_option(help: str) -> Callable[[F], F]:
    return click.option(
        "--spool",
        envvar="AGENT_SPOOL_DIR",
        show_envvar=True,
        required=True,
        type=click.Path(file_okay=False, path_type=Path),
        help=help,
    )


def common_options(func: F) -> F:
    """Options of every command that talks to the API and the spool."""
    return _apply(
        func,
        [
            config_option(
                "TOML file of settings (keys are the long option names, e.g. "
                'pool = "p", labels = ["a"], key = "..."); flags and env vars win over it.'
            ),
            click.option(
                "-a",
                "--api",
                envvar="PREFECT_API_URL",
                show_envvar=True,
                help="Prefect API URL, e.g. http://127.0.0.1:4200/api.",
            ),
            click.option(
                "-k",
                "--key",
                envvar=["PREFECT_API_KEY", "PREFECT__CLOUD__AGENT__AUTH_TOKEN"],
                show_envvar=True,
                help="Prefect Cloud API key (sent as Bearer). Prefer the env var or the "
                "config file: a flag's value shows in `ps`. For a self-hosted server "
                f"with auth set {AUTH_STRING_ENV}=user:pass (or auth-string in the file).",
            ),
            spool_option("Spool directory shared by the poller and its workers."),
            click.option(
                "--api-retry-seconds",
                type=click.FloatRange(min=0),
                envvar="AGENT_API_RETRY_SECONDS",
                show_envvar=True,
                help="How long one API call retries transient failures before giving up "
                "(default 20). The poller's loop then keeps retrying; a report that "
                "still fails waits in the spool's outbox until the API takes it.",
            ),
            click.option(
                "--log-level",
                default="INFO",
                show_default=True,
                envvar="AGENT_LOG_LEVEL",
                show_envvar=True,
                type=click.Choice(logs.LEVELS, case_sensitive=False),
                help="Level of the agent's own logs.",
            ),
            click.option(
                "--log-format",
                default="text",
                show_default=True,
                envvar="AGENT_LOG_FORMAT",
                show_envvar=True,
                type=click.Choice(logs.FORMATS, case_sensitive=False),
                help="text: one line per record; json: one JSON object per line "
                "(keys time, level, role, pid, flow_run_id, logger, message).",
            ),
        ],
    )


def poller_options(func: F) -> F:
    """Options of `agent local start` (and of `agent local install`, which bakes them in)."""
    return _apply(
        func,
        [
            click.option(
                "--pool",
                envvar="AGENT_POOL",
                show_envvar=True,
                required=True,
                help="Work pool to serve; created with this agent's type if missing.",
            ),
            click.option(
                "-q",
                "--work-queue",
                "work_queues",
                multiple=True,
                envvar="AGENT_WORK_QUEUES",
                show_envvar=True,
                help="Only take runs from this work queue (repeatable; the env var is "
                "space-separated). Default: all.",
            ),
            click.option(
                "-n",
                "--name",
                envvar="PREFECT__CLOUD__AGENT__NAME",
                show_envvar=True,
                default="agent",
                show_default=True,
                help="Agent name: the worker name shown under the pool in Prefect's UI.",
            ),
            click.option(
                "-l",
                "--label",
                "labels",
                multiple=True,
                type=LabelType(),
                envvar=LABELS_ENV,
                show_envvar=True,
                help="Agent label (repeatable). A run is taken only if all its labels are "
                'the agent\'s. The env var takes \'["a","b"]\' or a,b.',
            ),
            click.option(
                "-e",
                "--env",
                "env_pairs",
                multiple=True,
                type=EnvPairType(),
                envvar=ENV_VARS_ENV,
                show_envvar=True,
                help="Set in every flow run's environment (repeatable). The env var takes "
                '\'{"K": "V"}\' or K=V,K2=V2. Values are never logged.',
            ),
            click.option(
                "-p",
                "--import-path",
                "import_paths",
                multiple=True,
                type=click.Path(),
                envvar="AGENT_IMPORT_PATHS",
                show_envvar=True,
                help="Appended to every flow run's PYTHONPATH (repeatable; the env var is "
                f"{os.pathsep}-separated).",
            ),
            click.option(
                "-f",
                "--show-flow-logs",
                is_flag=True,
                envvar="AGENT_SHOW_FLOW_LOGS",
                show_envvar=True,
                help="Copy flow run output to the worker's stdout, each line prefixed with "
                "the run's name. It is kept in the spool's per-run log either way.",
            ),
            click.option(
                "--hostname-label/--no-hostname-label",
                default=True,
                show_default=True,
                envvar="AGENT_HOSTNAME_LABEL",
                show_envvar=True,
                help="Add this machine's host name to the agent's labels.",
            ),
            click.option(
                "--no-cloud-logs",
                is_flag=True,
                envvar="AGENT_NO_CLOUD_LOGS",
                show_envvar=True,
                help="Send no logs to the Prefect API: neither the agent's own run log "
                "lines nor the flow runs' (they get PREFECT_LOGGING_TO_API_ENABLED=false). "
                f"{SEND_LOGS_ENV}=false (Prefect 1) means the same.",
            ),
            click.option(
                "--agent-config-id",
                envvar="AGENT_CONFIG_ID",
                show_envvar=True,
                help="Name or id of a Prefect Variable holding a JSON object of settings "
                "(labels, env_vars, import_paths, name, show_flow_logs, hostname_label, "
                "work_queues) that override flags and env vars; re-read periodically.",
            ),
            click.option(
                "--agent-config-refresh",
                type=click.FloatRange(min=1),
                default=30.0,
                show_default=True,
                envvar="AGENT_CONFIG_REFRESH_SECONDS",
                show_envvar=True,
                help="Seconds between reads of the --agent-config-id variable.",
            ),
            click.option(
                "--retention",
                default="7d",
                show_default=True,
                envvar="AGENT_RETENTION",
                show_envvar=True,
                callback=duration,
                help="How long done/, failed/ and runs/ keep a finished run before it is "
                "deleted: 7d, 12h, 30m, 90s or seconds.",
            ),
            click.option(
                "--max-polls",
                type=click.IntRange(min=1),
                envvar="AGENT_MAX_POLLS",
                show_envvar=True,
                help="Exit 0 after this many polls. Default: poll for ever.",
            ),
            click.option(
                "--poll-interval-max-pushed",
                default=f"{defaults.POLL_INTERVAL_MAX_PUSHED:g}s",
                show_default=True,
                envvar="AGENT_POLL_INTERVAL_MAX_PUSHED",
                show_envvar=True,
                callback=poll_cap,
                help="While Prefect's events stream is connected (new runs and "
                "cancellations come by push), idle polls are up to this far apart instead "
                f"of {defaults.POLL_INTERVAL_MAX:g}s; each poll looks as far past the "
                "prefetch window, so scheduled runs still start on time. Above 60s, "
                "Prefect shows the pool's queues and deployments as not ready.",
            ),
            click.option(
                "--agent-address",
                envvar=["AGENT_ADDRESS", "PREFECT__CLOUD__AGENT__AGENT_ADDRESS"],
                show_envvar=True,
                callback=address,
                help="Serve /api/health, /api/poke and /metrics at http://HOST:PORT.",
            ),
        ],
    )


def worker_options(func: F) -> F:
    """Options only workers use (`agent worker`, and `agent local install` for them)."""
    return _apply(
        func,
        [
            click.option(
                "--flow-python",
                envvar="AGENT_FLOW_PYTHON",
                show_envvar=True,
                help="Python that runs `-m prefect.engine` (it must have prefect "
                "installed). Default: this agent's interpreter.",
            ),
            click.option(
                "--flow-log-max-bytes",
                type=click.IntRange(min=1024),
                default=10 * 1024 * 1024,
                show_default=True,
                envvar="AGENT_FLOW_LOG_MAX_BYTES",
                show_envvar=True,
                help="Bound of each run's output log in the spool (one rotated copy is kept).",
            ),
            click.option(
                "--cancel-grace-seconds",
                type=click.FloatRange(min=0),
                default=defaults.CANCEL_GRACE_SECONDS,
                show_default=True,
                envvar="AGENT_CANCEL_GRACE_SECONDS",
                show_envvar=True,
                help="A run cancelled in Prefect gets SIGTERM (its whole process group), "
                "then SIGKILL after this many seconds if it is still running.",
            ),
            click.option(
                "--launch",
                type=click.Choice(defaults.LAUNCH_MODES, case_sensitive=False),
                default=defaults.LAUNCH,
                show_default=True,
                envvar="AGENT_LAUNCH",
                show_envvar=True,
                help="warm: fork each run from a process of the flow's Python with Prefect "
                "already imported (a run that sets `command` or PYTHON*/LD_* variables "
                "starts cold, and its log says why); cold: a new interpreter per run.",
            ),
            click.option(
                "--warm-recycle-runs",
                type=click.IntRange(min=1),
                default=defaults.WARM_RECYCLE_RUNS,
                show_default=True,
                envvar="AGENT_WARM_RECYCLE_RUNS",
                show_envvar=True,
                help="With --launch warm: start the warm process afresh after this many runs.",
            ),
        ],
    )


# -- reading what was resolved -----------------------------------------------------------


def source(ctx: click.Context, name: str) -> str:
    return SOURCE_NAMES.get(ctx.get_parameter_source(name), "default")  # type: ignore[arg-type]


def auth_string(ctx: click.Context, environ: dict[str, str]) -> tuple[str | None, str]:
    """The self-hosted server's ``user:pass``: environment, then config file. Never a flag."""
    if environ.get(AUTH_STRING_ENV):
        return environ[AUTH_STRING_ENV], "env"
    from_file = ctx.meta.get(FILE_META, {}).get("auth_string")
    return (from_file, "file") if from_file else (None, "default")


def cloud_logs(ctx: click.Context, no_cloud_logs: bool, environ: dict[str, str]) -> bool:
    """--no-cloud-logs (or its env/file forms) wins; else Prefect 1's send-logs switch."""
    if no_cloud_logs or source(ctx, "no_cloud_logs") != "default":
        return not no_cloud_logs
    value = environ.get(SEND_LOGS_ENV, "").strip().lower()
    if not value:
        return True
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ConfigError(f"{SEND_LOGS_ENV}: {value!r} is not true or false")
