"""Configuration: built once per process, frozen, and passed down.

Parsing is pure: every function here takes strings and returns values or raises
ConfigError with a message that names the culprit. Nothing else in the agent reads
the environment for settings.
"""

from __future__ import annotations

import ast
import json
import os
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from agent.core.crashloop import Policy
from agent.core.errors import ConfigError
from agent.settings import defaults


@dataclass(frozen=True)
class ApiSettings:
    """Where the Prefect API is and how to authenticate. Secrets stay out of repr."""

    url: str
    key: str | None = field(default=None, repr=False)
    auth_string: str | None = field(default=None, repr=False)
    connect_timeout: float = defaults.API_CONNECT_TIMEOUT
    read_timeout: float = defaults.API_READ_TIMEOUT
    retry_deadline: float = defaults.API_RETRY_DEADLINE

    def secret_env(self) -> dict[str, str]:
        """The credential as the flow run's engine expects it in its environment."""
        if self.key:
            return {"PREFECT_API_KEY": self.key}
        if self.auth_string:
            return {"PREFECT_API_AUTH_STRING": self.auth_string}
        return {}


@dataclass(frozen=True)
class PollerConfig:
    api: ApiSettings
    pool: str
    spool_dir: Path
    name: str = defaults.AGENT_NAME
    work_queues: tuple[str, ...] = ()
    labels: frozenset[str] = frozenset()  # the effective set: label_list (+ host name)
    label_list: tuple[str, ...] = ()
    hostname_label: bool = False
    # --env values may be secrets (the seed's own example is one): never in repr/logs.
    env_vars: Mapping[str, str] = field(default_factory=dict, repr=False)
    import_paths: tuple[str, ...] = ()
    show_flow_logs: bool = False
    max_polls: int | None = None
    address: tuple[str, int] | None = None
    hostname: str = field(default_factory=socket.gethostname)
    poll_interval_min: float = defaults.POLL_INTERVAL_MIN
    poll_interval_max: float = defaults.POLL_INTERVAL_MAX
    prefetch_seconds: float = defaults.PREFETCH_SECONDS
    heartbeat_seconds: float = defaults.HEARTBEAT_SECONDS
    supervisor_url: str | None = None  # set by supervisord; lets the poller start workers
    worker_group: str = defaults.WORKER_GROUP
    cloud_logs: bool = True  # agent run logs to the API, and flows' own logging to the API
    agent_config_id: str | None = None  # a Prefect Variable (name or id) with settings
    agent_config_refresh: float = defaults.AGENT_CONFIG_REFRESH
    # A Pending/Running run of ours without a spec is acted on only once its state is
    # this old (hidden env var AGENT_STRANDED_AFTER_SECONDS; tests set 0).
    stranded_after: float = defaults.STRANDED_AFTER_SECONDS


@dataclass(frozen=True)
class WorkerConfig:
    api: ApiSettings
    spool_dir: Path
    worker_id: str
    flow_python: str
    pool: str | None = None  # when set, specs for another pool are refused
    hostname: str = field(default_factory=socket.gethostname)
    flow_log_max_bytes: int = defaults.FLOW_LOG_MAX_BYTES
    idle_sleep: float = defaults.WORKER_IDLE_SLEEP
    # A cancelled run's process group gets SIGTERM, then SIGKILL this much later.
    cancel_grace: float = defaults.CANCEL_GRACE_SECONDS
    cancel_watch: float = defaults.CANCEL_WATCH_SECONDS
    # When a worker restarted after unexpected exits waits before taking runs (its
    # threshold: hidden env var AGENT_CRASH_LOOP_THRESHOLD; tests lower it).
    crash_loop: Policy = field(default_factory=Policy)


def parse_api_url(value: str | None) -> str:
    if not value:
        raise ConfigError("no Prefect API URL: pass -a/--api or set PREFECT_API_URL")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"API URL {value!r} must look like http://HOST:PORT/api")
    return value.rstrip("/")


def parse_agent_address(value: str) -> tuple[str, int]:
    """``http://HOST:PORT`` -> (host, port). Prefect 1 required the port; so do we."""
    parts = urlsplit(value if "://" in value else f"http://{value}")
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError(f"agent address {value!r} must look like http://HOST:PORT")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"agent address {value!r} has an invalid port") from None
    if port is None:
        raise ConfigError(f"Must specify port in agent address {value!r} (http://HOST:PORT)")
    return parts.hostname, port


def parse_env_pairs(pairs: Sequence[str], source: str = "--env") -> dict[str, str]:
    """``["K=V", ...]`` -> dict. The error names the key, never the value (it may be secret)."""
    result: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            shown = key if not sep else "(empty)"
            raise ConfigError(f"{source} {shown!r}: expected KEY=VALUE")
        result[key.strip()] = value
    return result


def _literal(value: str) -> object:
    """JSON first, then a Python literal (Prefect 1 wrote ``'["a","b"]'``), else None."""
    try:
        return json.loads(value)
    except (ValueError, RecursionError):
        pass
    try:
        return ast.literal_eval(value)
    # TypeError: an unhashable key or set member; the others: malformed or too deep.
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return None


def parse_labels_value(value: str, source: str) -> list[str]:
    """A list literal (``'["a","b"]'``) or a comma list (``a,b``)."""
    text = value.strip()
    if not text:
        return []
    if text.startswith("["):
        parsed = _literal(text)
        if not isinstance(parsed, list) or not all(isinstance(x, str) for x in parsed):
            raise ConfigError(f"{source}: {value!r} is not a list of strings")
        return [x.strip() for x in parsed if x.strip()]
    return [x.strip() for x in text.split(",") if x.strip()]


def parse_env_vars_value(value: str, source: str) -> dict[str, str]:
    """A dict literal (``'{"K": "V"}'``) or a comma list (``K=V,K2=V2``)."""
    text = value.strip()
    if not text:
        return {}
    if text.startswith("{"):
        parsed = _literal(text)
        if not isinstance(parsed, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in parsed.items()
        ):
            # Do not echo the value: it may hold secrets.
            raise ConfigError(f"{source}: not a mapping of strings to strings")
        return dict(parsed)
    # A piece without "=" continues the previous value: "K=a,b" keeps its comma.
    pairs: list[str] = []
    for piece in text.split(","):
        if "=" in piece or not pairs:
            pairs.append(piece)
        else:
            pairs[-1] += "," + piece
    return parse_env_pairs([p for p in pairs if p.strip()], source)


def agent_labels(labels: Sequence[str], hostname: str, hostname_label: bool) -> frozenset[str]:
    return frozenset([*labels, hostname] if hostname_label else labels)


def default_worker_id(environ: Mapping[str, str]) -> str:
    return environ.get("SUPERVISOR_PROCESS_NAME") or f"{socket.gethostname()}-{os.getpid()}"
