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
from agent.core.environment import check_env
from agent.core.errors import ConfigError, JobVariableError
from agent.core.limits import LimitPolicy
from agent.core.redact import redact_url
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

    def __repr__(self) -> str:
        # The URL's userinfo may hold a password; the key and auth string are never shown.
        return (
            f"ApiSettings(url={redact_url(self.url)!r}, connect_timeout={self.connect_timeout!r},"
            f" read_timeout={self.read_timeout!r}, retry_deadline={self.retry_deadline!r})"
        )

    def secret_env(self) -> dict[str, str]:
        """The credential as the flow run's engine expects it in its environment."""
        if self.key:
            return {"PREFECT_API_KEY": self.key}
        if self.auth_string:
            return {"PREFECT_API_AUTH_STRING": self.auth_string}
        return {}


@dataclass(frozen=True)
class ContainmentConfig:
    """Run containment: cgroups, and the host's defaults and ceilings for runs' limits."""

    mode: str = defaults.CONTAINMENT  # strict | best-effort | off
    cgroup_root: Path | None = None  # None: found from the agent's own cgroup
    policy: LimitPolicy = field(default_factory=LimitPolicy)
    # Output lines sent to a run's Prefect log when it crashed, timed out or was OOM-killed.
    crash_tail_lines: int = defaults.CRASH_TAIL_LINES


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
    # The cap while the events stream is connected (the larger of the two is used).
    poll_interval_max_pushed: float = defaults.POLL_INTERVAL_MAX_PUSHED
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
    # done/, failed/ and runs/ keep a finished run this long (--retention).
    retention: float = defaults.RETENTION_SECONDS
    # A fault seam for tests only (hidden env var AGENT_TEST_CRASH_AFTER_CLAIM=1): exit
    # right after a claim is accepted, before its spec is published.
    crash_after_claim: bool = False
    containment: ContainmentConfig = field(default_factory=ContainmentConfig)
    reap_after: float = defaults.REAP_AFTER_SECONDS  # 0: off
    events: bool = True  # subscribe to Prefect's events stream for push wake-ups


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
    launch: str = defaults.LAUNCH  # "warm" | "cold": agent/worker/warm.py
    warm_recycle_runs: int = defaults.WARM_RECYCLE_RUNS
    # When a worker restarted after unexpected exits waits before taking runs (its
    # threshold: hidden env var AGENT_CRASH_LOOP_THRESHOLD; tests lower it).
    crash_loop: Policy = field(default_factory=Policy)
    # A fault seam for tests only (hidden env var AGENT_TEST_KILL_ON_SPEC=<flow run id>):
    # the worker kills itself (SIGKILL) on taking that run's spec, before its flow starts.
    kill_on_spec: str | None = None
    containment: ContainmentConfig = field(default_factory=ContainmentConfig)


def parse_api_url(value: str | None) -> str:
    if not value:
        raise ConfigError("no Prefect API URL: pass -a/--api or set PREFECT_API_URL")
    shown = redact_url(value)  # a password in the URL is never echoed
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise ConfigError(f"API URL {shown!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"API URL {shown!r} must look like http://HOST:PORT/api")
    if any(c.isspace() or not c.isprintable() for c in value):
        raise ConfigError(f"API URL {shown!r} has spaces or control characters in it")
    return value.rstrip("/")


def parse_agent_address(value: str) -> tuple[str, int]:
    """``http://HOST:PORT`` -> (host, port). Prefect 1 required the port; so do we."""
    shown = redact_url(value)
    try:
        parts = urlsplit(value if "://" in value else f"http://{value}")
    except ValueError:  # an unclosed IPv6 bracket, say
        raise ConfigError(f"agent address {shown!r} must look like http://HOST:PORT") from None
    if parts.scheme != "http" or not parts.hostname:
        raise ConfigError(f"agent address {shown!r} must look like http://HOST:PORT")
    try:
        port = parts.port
    except ValueError:
        raise ConfigError(f"agent address {shown!r} has an invalid port") from None
    if port is None:
        raise ConfigError(f"Must specify port in agent address {shown!r} (http://HOST:PORT)")
    return parts.hostname, port


# Prefect 3's rule for work pool names (prefect.types.names.NonEmptyishName): not empty
# once quotes and spaces are stripped, and none of these (the server answers 422, or 405
# for a "/" that splits the URL path).
POOL_NAME_BANNED = "/%&><"


_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: str | float, source: str) -> float:
    """``7d``, ``12h``, ``30m``, ``90s`` or a number of seconds; > 0 and finite."""
    text = str(value).strip().lower()
    unit = _DURATION_UNITS.get(text[-1:], 0.0) if text else 0.0
    try:
        seconds = float(text[:-1] if unit else text) * (unit or 1.0)
    except ValueError:
        seconds = -1.0
    if not 0 < seconds < float("inf"):  # also refuses nan
        raise ConfigError(f"{source} {value!r}: expected a duration such as 7d, 12h, 30m or 90s")
    return seconds


def parse_pool_name(value: str | None, source: str = "--pool") -> str:
    """The work pool name, or ConfigError naming it and what is wrong with it."""
    name = value or ""
    if not name.strip("' \""):
        raise ConfigError(f"work pool name {name!r} ({source}) is empty: give the pool's name")
    banned = sorted({c for c in name if c in POOL_NAME_BANNED})
    if banned:
        listed = " ".join(banned)
        raise ConfigError(
            f"work pool name {name!r} ({source}) has {listed} in it, which Prefect refuses in "
            f"a name ({' '.join(POOL_NAME_BANNED)})"
        )
    if not name.isprintable():
        raise ConfigError(f"work pool name {name!r} ({source}) has control characters in it")
    if name in (".", ".."):
        # A URL path cannot address it: /work_pools/.. is /work_pools/ to every HTTP stack.
        raise ConfigError(f"work pool name {name!r} ({source}) cannot be used in the API's URLs")
    return name


def _check_env(env: Mapping[str, str], source: str) -> None:
    """What exec refuses (a name with '=', a NUL byte) is refused at start, by name."""
    try:
        check_env(env, source)
    except JobVariableError as exc:
        raise ConfigError(str(exc)) from None


def parse_env_pairs(pairs: Sequence[str], source: str = "--env") -> dict[str, str]:
    """``["K=V", ...]`` -> dict. The error names the setting and the key, never the value
    or a piece without a key: either may be a secret."""
    result: dict[str, str] = {}
    for number, pair in enumerate(pairs, 1):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            which = f" (value {number} of {len(pairs)})" if len(pairs) > 1 else ""
            why = "no '=' in it" if not sep else "nothing before the '='"
            raise ConfigError(f"{source}{which}: expected KEY=VALUE, found {why}")
        result[key.strip()] = value
    _check_env(result, source)
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
        _check_env(parsed, source)
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
