"""`agent local start --print-config`: the settings the poller would run with."""

from __future__ import annotations

import os

import click

from agent.cli.options import auth_string, source
from agent.core.redact import redact_url
from agent.poller.retention import describe_seconds
from agent.settings.config import PollerConfig


def describe_config(ctx: click.Context, config: PollerConfig, backend: set[str]) -> str:
    """One aligned line per setting: name, value, source. Secrets are hidden: env var
    values, the key and auth string, and a password in the API URL."""
    auth, auth_source = auth_string(ctx, dict(os.environ))
    addr = config.address
    env_keys = ", ".join(f"{k}=..." for k in sorted(config.env_vars))
    rows: list[tuple[str, str, str]] = [
        ("api", redact_url(config.api.url), source(ctx, "api")),
        ("key", "(set)" if config.api.key else "(none)", source(ctx, "key")),
        ("auth-string", "(set)" if auth else "(none)", auth_source),
        ("pool", config.pool, source(ctx, "pool")),
        ("spool", str(config.spool_dir), source(ctx, "spool")),
        ("name", config.name, _src(ctx, "name", backend)),
        ("labels", ", ".join(sorted(config.labels)) or "(none)", _src(ctx, "labels", backend)),
        ("hostname-label", _bool(config.hostname_label), _src(ctx, "hostname_label", backend)),
        ("env", env_keys or "(none)", _src(ctx, "env_pairs", backend, "env_vars")),
        (
            "import-paths",
            ", ".join(config.import_paths) or "(none)",
            _src(ctx, "import_paths", backend),
        ),
        (
            "work-queues",
            ", ".join(config.work_queues) or "(all)",
            _src(ctx, "work_queues", backend),
        ),
        ("show-flow-logs", _bool(config.show_flow_logs), _src(ctx, "show_flow_logs", backend)),
        ("cloud-logs", _bool(config.cloud_logs), source(ctx, "no_cloud_logs")),
        ("agent-config-id", config.agent_config_id or "(none)", source(ctx, "agent_config_id")),
        (
            "agent-address",
            f"http://{addr[0]}:{addr[1]}" if addr else "(none)",
            source(ctx, "agent_address"),
        ),
        ("max-polls", str(config.max_polls or "(for ever)"), source(ctx, "max_polls")),
        (
            "poll-interval-max-pushed",
            describe_seconds(config.poll_interval_max_pushed),
            source(ctx, "poll_interval_max_pushed"),
        ),
        ("retention", describe_seconds(config.retention), source(ctx, "retention")),
        ("log-level", str(ctx.params["log_level"]), source(ctx, "log_level")),
        ("log-format", str(ctx.params["log_format"]), source(ctx, "log_format")),
    ]
    width = max(len(r[0]) for r in rows)
    vwidth = min(60, max(len(r[1]) for r in rows))
    return "\n".join(f"{n:<{width}}  {v:<{vwidth}}  ({s})" for n, v, s in rows)


def _bool(value: bool) -> str:
    return "true" if value else "false"


def _src(ctx: click.Context, param: str, backend: set[str], key: str | None = None) -> str:
    return "backend" if (key or param) in backend else source(ctx, param)
