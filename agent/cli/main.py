"""The ``agent`` command line. Thin: it builds the frozen config once and hands it down."""

from __future__ import annotations

import functools
import json
import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from agent import __version__
from agent.cli.bake import POLLER_PARAMS, WORKER_PARAMS, agent_executable, to_argv
from agent.cli.containment_options import containment_config, containment_options
from agent.cli.fleet_options import fleet_options, hidden_seconds
from agent.cli.options import (
    auth_string,
    cloud_logs,
    common_options,
    config_option,
    poller_options,
    source,
    spool_option,
    worker_options,
)
from agent.core.crashloop import Policy
from agent.core.errors import RET_CONFIG, ConfigError, SpoolError
from agent.core.redact import has_secret, redact_text
from agent.observe import logs
from agent.settings import defaults
from agent.settings.config import (
    ApiSettings,
    PollerConfig,
    WorkerConfig,
    agent_labels,
    default_worker_id,
    parse_api_url,
    parse_pool_name,
)

F = TypeVar("F", bound=Callable[..., Any])
CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def _fail_on_config_error(func: F) -> F:
    """Bad configuration found at start: one clear line and RET_CONFIG, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except (ConfigError, SpoolError) as exc:
            click.echo(f"Error: {redact_text(str(exc))}", err=True)  # a URL may quote a password
            sys.exit(RET_CONFIG)

    return wrapper  # type: ignore[return-value]


def api_settings(
    ctx: click.Context, api: str | None, key: str | None, retry_deadline: float
) -> ApiSettings:
    """The one place credentials are gathered (flag/env/file; the auth string never a flag)."""
    auth, _ = auth_string(ctx, dict(os.environ))
    return ApiSettings(
        url=parse_api_url(api), key=key or None, auth_string=auth, retry_deadline=retry_deadline
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


def poller_config(ctx: click.Context, p: dict[str, Any]) -> PollerConfig:
    """Flags, env and file, resolved by click, into the poller's frozen config."""
    hostname = socket.gethostname()
    labels = tuple(p["labels"])
    return PollerConfig(
        api=api_settings(
            ctx, p["api"], p["key"], _or(p["api_retry_seconds"], defaults.API_RETRY_DEADLINE)
        ),
        pool=parse_pool_name(p["pool"], _pool_source(ctx)),
        spool_dir=p["spool"],
        name=p["name"],
        work_queues=tuple(p["work_queues"]),
        labels=agent_labels(labels, hostname, p["hostname_label"]),
        label_list=labels,
        hostname_label=p["hostname_label"],
        env_vars=dict(p["env_pairs"]),
        import_paths=tuple(os.path.abspath(os.path.expanduser(x)) for x in p["import_paths"]),
        show_flow_logs=p["show_flow_logs"],
        max_polls=p["max_polls"],
        address=p["agent_address"],
        hostname=hostname,
        supervisor_url=os.environ.get("SUPERVISOR_SERVER_URL") or None,
        cloud_logs=cloud_logs(ctx, p["no_cloud_logs"], dict(os.environ)),
        agent_config_id=p["agent_config_id"] or None,
        agent_config_refresh=p["agent_config_refresh"],
        retention=p["retention"],
        stranded_after=_stranded_after(os.environ.get("AGENT_STRANDED_AFTER_SECONDS")),
        crash_after_claim=os.environ.get("AGENT_TEST_CRASH_AFTER_CLAIM") == "1",
        reap_after=p["reap_after"],
        events=p["events"],
        heartbeat_seconds=hidden_seconds(
            "AGENT_HEARTBEAT_SECONDS",
            os.environ.get("AGENT_HEARTBEAT_SECONDS"),
            defaults.HEARTBEAT_SECONDS,
        ),
        poll_interval_max=hidden_seconds(
            "AGENT_POLL_INTERVAL_MAX",
            os.environ.get("AGENT_POLL_INTERVAL_MAX"),
            defaults.POLL_INTERVAL_MAX,
        ),
        poll_interval_max_pushed=p["poll_interval_max_pushed"],
    )


def _pool_source(ctx: click.Context) -> str:
    return {"flag": "--pool", "env": "AGENT_POOL", "file": "pool in the config file"}.get(
        source(ctx, "pool"), "--pool"
    )


def _stranded_after(value: str | None) -> float:
    """Hidden setting (tests use 0): how old a Pending/Running state must be before the
    poller treats a run of ours with no spec as stranded."""
    if value is None or not value.strip():
        return defaults.STRANDED_AFTER_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:  # also refuses nan
        raise ConfigError(f"AGENT_STRANDED_AFTER_SECONDS {value!r}: expected seconds >= 0")
    return seconds


@local.command()
@common_options
@poller_options
@fleet_options
@click.option(
    "--print-config",
    is_flag=True,
    help="Print the settings this agent would run with, and where each came from "
    "(flag, env, file, backend, default), then exit. Secrets are not printed.",
)
@click.pass_context
@_fail_on_config_error
def start(ctx: click.Context, /, print_config: bool, **params: Any) -> None:
    """Poll the pool, claim due flow runs and hand them to the workers."""
    from agent.cli.wiring import (  # late: --help needs no prometheus
        resolve_backend_config,
        run_poller,
    )

    logs.setup(params["log_level"], "agent", params["log_format"])
    config = poller_config(ctx, params)
    if print_config:
        from agent.cli.describe import describe_config

        config, overridden = resolve_backend_config(config)
        click.echo(describe_config(ctx, config, overridden))
        return
    sys.exit(run_poller(config))


@cli.command()
@common_options
@click.option(
    "--pool", envvar="AGENT_POOL", show_envvar=True, help="Refuse specs of any other work pool."
)
@worker_options
@containment_options
@click.option(
    "--worker-id",
    envvar="AGENT_WORKER_ID",
    show_envvar=True,
    help="Unique name of this worker on the spool. Default: supervisor's process "
    "name, else host-pid.",
)
@click.pass_context
@_fail_on_config_error
def worker(ctx: click.Context, /, **p: Any) -> None:
    """Take claimed runs from the spool, one at a time, and run each as a subprocess."""
    from agent.cli.worker_wiring import run_worker

    logs.setup(
        p["log_level"], os.environ.get("SUPERVISOR_PROCESS_NAME") or "worker", p["log_format"]
    )
    config = WorkerConfig(
        # Reporting an outcome keeps retrying longer than a poll: losing it strands a run.
        api=api_settings(
            ctx, p["api"], p["key"], _or(p["api_retry_seconds"], defaults.API_RETRY_DEADLINE)
        ),
        spool_dir=p["spool"],
        worker_id=p["worker_id"] or default_worker_id(os.environ),
        flow_python=p["flow_python"] or sys.executable,
        # Empty: no filter, as before; a name is checked as the poller checks it.
        pool=parse_pool_name(p["pool"], _pool_source(ctx)) if p["pool"] else None,
        flow_log_max_bytes=p["flow_log_max_bytes"],
        cancel_grace=p["cancel_grace_seconds"],
        launch=(p["launch"] or defaults.LAUNCH).lower(),
        warm_recycle_runs=p["warm_recycle_runs"] or defaults.WARM_RECYCLE_RUNS,
        crash_loop=Policy(
            threshold=_crash_loop_threshold(os.environ.get("AGENT_CRASH_LOOP_THRESHOLD"))
        ),
        kill_on_spec=os.environ.get("AGENT_TEST_KILL_ON_SPEC") or None,
        containment=containment_config(p),
    )
    sys.exit(run_worker(config))


def _crash_loop_threshold(value: str | None) -> int:
    """Hidden setting (tests lower it): unexpected exits of a worker id within the
    crash-loop window from which its next process waits before taking runs."""
    if value is None or not value.strip():
        return defaults.CRASH_LOOP_THRESHOLD
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise ConfigError(f"AGENT_CRASH_LOOP_THRESHOLD {value!r}: expected a whole number >= 1")
    return count


@local.command()
@common_options
@poller_options
@fleet_options
@worker_options
@containment_options
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=os.cpu_count() or 2,
    show_default="number of CPUs",
    envvar="AGENT_WORKERS",
    show_envvar=True,
    help="Worker processes: how many flow runs run at once on this host.",
)
@click.option(
    "--run-dir",
    required=True,
    envvar="AGENT_RUN_DIR",
    show_envvar=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for supervisord's socket, pid file and logs, and the metrics files. "
    "Must exist before supervisord starts.",
)
@click.option(
    "--include-only",
    is_flag=True,
    envvar="AGENT_INCLUDE_ONLY",
    show_envvar=True,
    help="Print only the two [program:...] sections, for the host's own supervisord "
    "(e.g. /etc/supervisor/conf.d/local-agent.conf).",
)
@click.option(
    "--user",
    envvar="AGENT_USER",
    show_envvar=True,
    help="Run the programs as this user (when supervisord runs as root).",
)
@click.pass_context
@_fail_on_config_error
def install(ctx: click.Context, /, **p: Any) -> None:
    """Print a supervisord configuration that runs this agent on this host.

    Takes the options of `agent local start` (baked into the poller's command), the
    workers' options, and where to put things. Secrets are never written: the API key
    or auth string belong in the --config file or supervisord's environment.
    """
    from agent.cli.install import InstallPlan, render, render_notice

    parse_pool_name(p["pool"], _pool_source(ctx))  # what `start` would refuse
    omitted = []
    if p["key"] and source(ctx, "key") in ("flag", "env"):
        omitted.append("PREFECT_API_KEY")
    if auth_string(ctx, dict(os.environ))[1] == "env":
        omitted.append("PREFECT_API_AUTH_STRING")
    secret: tuple[str, ...] = ()
    if p["api"] and has_secret(p["api"]) and source(ctx, "api") in ("flag", "env"):
        omitted.append("PREFECT_API_URL")  # its password is a secret: not in `ps` either
        secret = ("api",)
    poller_args = to_argv(ctx, tuple(n for n in POLLER_PARAMS if n not in secret))
    if "--no-cloud-logs" not in poller_args and not cloud_logs(
        ctx, p["no_cloud_logs"], dict(os.environ)
    ):
        poller_args.append("--no-cloud-logs")  # from Prefect 1's switch in the environment
    poller_env: dict[str, str] = {}
    if source(ctx, "env_pairs") in ("flag", "env"):
        # --env values may be secrets (the seed's own example is one): never printed.
        omitted.append("PREFECT__CLOUD__AGENT__ENV_VARS")
    config_file = Path(p["config_file"]).resolve() if p["config_file"] else None
    tail = ["--config", str(config_file)] if config_file else []
    run_dir = p["run_dir"].resolve()
    plan = InstallPlan(
        agent_exe=agent_executable(),
        poller_args=(*poller_args, *tail),
        worker_args=(*to_argv(ctx, tuple(n for n in WORKER_PARAMS if n not in secret)), *tail),
        poller_env=poller_env,
        workers=p["workers"],
        run_dir=run_dir,
        include_only=p["include_only"],
        user=p["user"],
        omitted=tuple(omitted),
        config_file=config_file,
    )
    try:
        text = render(plan)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    click.echo(text, nl=False)
    notice = render_notice(plan)
    if notice:
        click.echo(notice, err=True)
    if not run_dir.is_dir():
        click.echo(f"agent local install: create {run_dir} before starting supervisord", err=True)


@cli.command()
@config_option("TOML settings file; only its `spool` is used here.")
@spool_option("Spool directory of the agent to look at.")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    envvar="AGENT_STATUS_JSON",
    show_envvar=True,
    help="Print one JSON object (schema in docs/status.md) instead of tables.",
)
@_fail_on_config_error
def status(config_file: Path | None, spool: Path, as_json: bool) -> None:
    """What this host's agent is doing now: poller, workers, runs waiting, running and
    finished in the last hour. Exit 0 if the poller and every worker are alive, 3 if not."""
    from agent.cli import status as status_
    from agent.cli.status_table import render_table

    snapshot = status_.collect(spool)
    if as_json:
        click.echo(json.dumps(snapshot, indent=2, sort_keys=True))
    else:
        click.echo(render_table(snapshot))
    sys.exit(status_.exit_code(snapshot))


def main() -> None:
    """Entry point: a ConfigError raised while click reads the environment (a malformed
    PREFECT__CLOUD__AGENT__LABELS, say) is bad configuration too: exit 78, no traceback."""
    try:
        cli(prog_name="agent")
    except ConfigError as exc:
        click.echo(f"Error: {redact_text(str(exc))}", err=True)
        sys.exit(RET_CONFIG)
