"""The ``agent`` command line. Thin: it builds the frozen config once and hands it down."""

from __future__ import annotations

import functools
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from agent import __version__, defaults, logs
from agent.config import (
    ApiSettings,
    PollerConfig,
    WorkerConfig,
    agent_labels,
    default_worker_id,
    parse_agent_address,
    parse_api_url,
    parse_env_pairs,
    parse_env_vars_value,
    parse_labels_value,
)
from agent.errors import RET_CONFIG, ConfigError, SpoolError

F = TypeVar("F", bound=Callable[..., Any])
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _fail_on_config_error(func: F) -> F:
    """Bad configuration found at start: one clear line and RET_CONFIG, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (ConfigError, SpoolError) as exc:
            click.echo(f"Error: {exc}", err=True)
            sys.exit(RET_CONFIG)

    return wrapper  # type: ignore[return-value]


def _usage(parse: Callable[[str], Any]) -> Callable[[click.Context, click.Parameter, Any], Any]:
    """Turn a ConfigError from parsing one option into a click usage error (exit 2)."""

    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is None:
            return None
        try:
            return parse(value)
        except ConfigError as exc:
            raise click.BadParameter(str(exc)) from None

    return callback


def api_options(func: F) -> F:
    options = [
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
            help="Prefect Cloud API key (sent as Bearer). Prefer the environment "
            "variable: a flag's value shows in `ps`. For a self-hosted server "
            "with auth, set PREFECT_API_AUTH_STRING=user:pass instead.",
        ),
        click.option(
            "--spool",
            envvar="AGENT_SPOOL_DIR",
            show_envvar=True,
            required=True,
            type=click.Path(file_okay=False, path_type=Path),
            help="Spool directory shared by the poller and its workers.",
        ),
        click.option(
            "--api-retry-seconds",
            type=click.FloatRange(min=0),
            envvar="AGENT_API_RETRY_SECONDS",
            show_envvar=True,
            help="How long one API call retries transient failures before giving up. "
            "Default: 20 for the poller (its loop retries anyway), 100 for workers "
            "(an unreported outcome strands a run).",
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
    ]
    for option in reversed(options):
        func = option(func)
    return func


def api_settings(api: str | None, key: str | None, retry_deadline: float) -> ApiSettings:
    """The one place the credential is read from the environment (never from argv)."""
    return ApiSettings(
        url=parse_api_url(api),
        key=key or None,
        auth_string=os.environ.get("PREFECT_API_AUTH_STRING") or None,
        retry_deadline=retry_deadline,
    )


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


@click.group(context_settings=CONTEXT)
@click.version_option(__version__, "-V", "--version", prog_name="agent")
def cli() -> None:
    """local-agent: run Prefect 3 flow runs as local subprocesses under supervisor."""


@cli.group()
def local() -> None:
    """The local agent (Prefect 1's `prefect agent local`)."""


@local.command()
@api_options
@click.option(
    "--pool",
    envvar="AGENT_POOL",
    show_envvar=True,
    required=True,
    help="Work pool to serve; created with this agent's type if missing.",
)
@click.option(
    "-q",
    "--work-queue",
    "work_queues",
    multiple=True,
    help="Only take runs from this work queue (repeatable). Default: all.",
)
@click.option(
    "-n",
    "--name",
    envvar="PREFECT__CLOUD__AGENT__NAME",
    show_envvar=True,
    default=defaults.AGENT_NAME,
    show_default=True,
    help="Agent name: the worker name shown under the pool in Prefect's UI.",
)
@click.option(
    "-l",
    "--label",
    "labels",
    multiple=True,
    help="Agent label (repeatable). A run is taken only if all its labels are the "
    'agent\'s. Env: PREFECT__CLOUD__AGENT__LABELS (\'["a","b"]\' or a,b).',
)
@click.option(
    "-e",
    "--env",
    "env_pairs",
    multiple=True,
    callback=_usage(lambda v: parse_env_pairs(v)),
    help="KEY=VAL set in every flow run's environment (repeatable). "
    'Env: PREFECT__CLOUD__AGENT__ENV_VARS (\'{"K": "V"}\' or K=V,K2=V2).',
)
@click.option(
    "-p",
    "--import-path",
    "import_paths",
    multiple=True,
    help="Appended to every flow run's PYTHONPATH (repeatable).",
)
@click.option(
    "-f",
    "--show-flow-logs",
    is_flag=True,
    envvar="AGENT_SHOW_FLOW_LOGS",
    show_envvar=True,
    help="Copy flow run output to the worker's stdout, each line prefixed with the "
    "run's name. It is kept in the spool's per-run log either way.",
)
@click.option(
    "--hostname-label/--no-hostname-label",
    default=True,
    show_default=True,
    help="Add this machine's host name to the agent's labels.",
)
@click.option(
    "--max-polls",
    type=click.IntRange(min=1),
    help="Exit 0 after this many polls. Default: poll for ever.",
)
@click.option(
    "--agent-address",
    envvar=["AGENT_ADDRESS", "PREFECT__CLOUD__AGENT__AGENT_ADDRESS"],
    show_envvar=True,
    callback=_usage(parse_agent_address),
    help="Serve /api/health, /api/poke and /metrics at http://HOST:PORT.",
)
@_fail_on_config_error
def start(
    api: str | None,
    key: str | None,
    spool: Path,
    api_retry_seconds: float | None,
    log_level: str,
    pool: str,
    work_queues: tuple[str, ...],
    name: str,
    labels: tuple[str, ...],
    env_pairs: dict[str, str],
    import_paths: tuple[str, ...],
    show_flow_logs: bool,
    hostname_label: bool,
    max_polls: int | None,
    agent_address: tuple[str, int] | None,
) -> None:
    """Poll the pool, claim due flow runs and hand them to the workers."""
    from agent.run import run_poller  # imported late: --help must not need prometheus

    logs.setup(log_level, "agent")
    environ = os.environ
    label_list = list(labels) or parse_labels_value(
        environ.get("PREFECT__CLOUD__AGENT__LABELS", ""), "PREFECT__CLOUD__AGENT__LABELS"
    )
    env_vars = env_pairs or parse_env_vars_value(
        environ.get("PREFECT__CLOUD__AGENT__ENV_VARS", ""), "PREFECT__CLOUD__AGENT__ENV_VARS"
    )
    hostname = socket.gethostname()
    config = PollerConfig(
        api=api_settings(api, key, _or(api_retry_seconds, defaults.API_RETRY_DEADLINE)),
        pool=pool,
        spool_dir=spool,
        name=name,
        work_queues=work_queues,
        labels=agent_labels(label_list, hostname, hostname_label),
        env_vars=env_vars,
        import_paths=tuple(os.path.abspath(os.path.expanduser(p)) for p in import_paths),
        show_flow_logs=show_flow_logs,
        max_polls=max_polls,
        address=agent_address,
        hostname=hostname,
        supervisor_url=environ.get("SUPERVISOR_SERVER_URL") or None,
    )
    sys.exit(run_poller(config))


@cli.command()
@api_options
@click.option(
    "--pool", envvar="AGENT_POOL", show_envvar=True, help="Refuse specs of any other work pool."
)
@click.option(
    "--flow-python",
    envvar="AGENT_FLOW_PYTHON",
    show_envvar=True,
    default=sys.executable,
    show_default="this agent's interpreter",
    help="Python that runs `-m prefect.engine` (it must have prefect installed).",
)
@click.option(
    "--worker-id",
    envvar="AGENT_WORKER_ID",
    show_envvar=True,
    help="Unique name of this worker on the spool. Default: supervisor's process "
    "name, else host-pid.",
)
@click.option(
    "--flow-log-max-bytes",
    type=click.IntRange(min=1024),
    default=defaults.FLOW_LOG_MAX_BYTES,
    show_default=True,
    help="Bound of each run's output log in the spool (one rotated copy is kept).",
)
@_fail_on_config_error
def worker(
    api: str | None,
    key: str | None,
    spool: Path,
    api_retry_seconds: float | None,
    log_level: str,
    pool: str | None,
    flow_python: str,
    worker_id: str | None,
    flow_log_max_bytes: int,
) -> None:
    """Take claimed runs from the spool, one at a time, and run each as a subprocess."""
    from agent.run import run_worker

    logs.setup(log_level, os.environ.get("SUPERVISOR_PROCESS_NAME") or "worker")
    config = WorkerConfig(
        # Reporting an outcome keeps retrying longer than a poll: losing it strands a run.
        api=api_settings(api, key, _or(api_retry_seconds, 5 * defaults.API_RETRY_DEADLINE)),
        spool_dir=spool,
        worker_id=worker_id or default_worker_id(os.environ),
        flow_python=flow_python,
        pool=pool,
        flow_log_max_bytes=flow_log_max_bytes,
    )
    sys.exit(run_worker(config))


def main() -> None:
    cli(prog_name="agent")
