"""What `agent local install` bakes into each program's command line: the flags that
reproduce what the user gave it (flag or environment); values from --config stay in
that file, which is referenced."""

from __future__ import annotations

import os
import shutil
import sys

import click

from agent.cli.containment_options import CONTAINMENT_PARAMS
from agent.cli.options import source
from agent.core.errors import ConfigError

SHARED_PARAMS = ("api", "spool", "api_retry_seconds", "log_level", "log_format")
POLLER_PARAMS = (
    *SHARED_PARAMS,
    *("pool", "work_queues", "name", "labels", "import_paths", "show_flow_logs"),
    *("hostname_label", "no_cloud_logs", "agent_config_id", "agent_config_refresh"),
    *("max_polls", "agent_address", "retention", "reap_after", "events"),
    "poll_interval_max_pushed",
)
WORKER_PARAMS = (
    *SHARED_PARAMS,
    *("pool", "flow_python", "flow_log_max_bytes", "cancel_grace_seconds"),
    *("launch", "warm_recycle_runs"),
    *CONTAINMENT_PARAMS,
)


def to_argv(ctx: click.Context, names: tuple[str, ...]) -> list[str]:
    """The flags that reproduce what the user gave `install` for these parameters."""
    argv: list[str] = []
    options = {p.name: p for p in ctx.command.params if isinstance(p, click.Option)}
    for name in names:
        if source(ctx, name) not in ("flag", "env"):
            continue
        option, value = options[name], ctx.params[name]
        flag = max(option.opts, key=len)
        if name == "agent_address":
            argv += [flag, f"http://{value[0]}:{value[1]}"]
        elif option.secondary_opts:  # --x/--no-x
            argv.append(flag if value else max(option.secondary_opts, key=len))
        elif option.is_flag:
            argv += [flag] if value else []
        elif option.multiple:
            for item in value:
                argv += [flag, str(item)]
        else:
            argv += [flag, str(value)]
    return argv


def agent_executable() -> str:
    """The `agent` script of this installation (the venv's, when run from one)."""
    found = shutil.which("agent", path=os.path.dirname(sys.executable)) or shutil.which("agent")
    if not found:
        raise ConfigError("cannot find the `agent` command on PATH to write into the config")
    return os.path.abspath(found)
