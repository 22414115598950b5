"""The optional TOML config file (``--config PATH``), read by the poller and the workers.

One file configures the whole agent on a host, and can hold the credential where only
the agent's user can read it. Keys are the long option names; the file sits below
flags and environment variables and above built-in defaults. Every key is checked here,
so a typo or a wrong type stops the agent with the file and the key named.
"""

from __future__ import annotations

import difflib
import os
import stat
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.core.environment import check_env, check_text
from agent.core.errors import ConfigError, JobVariableError
from agent.observe.logs import FORMATS, LEVELS
from agent.settings.defaults import CONTAINMENT_MODES, LAUNCH_MODES

Check = Callable[[Any], bool]


def _str(v: Any) -> bool:
    return isinstance(v, str)


def _bool(v: Any) -> bool:
    return isinstance(v, bool)


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _count(v: Any) -> bool:
    return _int(v) and v >= 0


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _duration(v: Any) -> bool:  # checked in full by the option's own parser
    return _str(v) or _number(v)


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _str_map(v: Any) -> bool:
    """An env table of string values (its names are checked by :func:`_check_exec`)."""
    return isinstance(v, dict) and all(
        isinstance(k, str) and isinstance(x, str) for k, x in v.items()
    )


def _one_of(*choices: str) -> Check:
    return lambda v: isinstance(v, str) and v.upper() in {c.upper() for c in choices}


@dataclass(frozen=True)
class Key:
    param: str  # the click parameter it feeds
    check: Check
    kind: str  # for the error message


# file key -> click parameter. Both commands accept the whole table and each takes what
# it knows, so one file serves the poller and the workers.
KEYS: dict[str, Key] = {
    "api": Key("api", _str, "a string (URL)"),
    "key": Key("key", _str, "a string"),
    "auth-string": Key("auth_string", _str, "a string (user:password)"),
    "spool": Key("spool", _str, "a string (path)"),
    "pool": Key("pool", _str, "a string"),
    "work-queues": Key("work_queues", _str_list, "a list of strings"),
    "name": Key("name", _str, "a string"),
    "labels": Key("labels", _str_list, "a list of strings"),
    "env": Key("env_pairs", _str_map, 'a table of NAME = "value" strings'),
    "import-paths": Key("import_paths", _str_list, "a list of strings"),
    "show-flow-logs": Key("show_flow_logs", _bool, "true or false"),
    "hostname-label": Key("hostname_label", _bool, "true or false"),
    "max-polls": Key("max_polls", _int, "an integer"),
    "poll-interval-max-pushed": Key(
        "poll_interval_max_pushed", _duration, "a duration (30s, 1m) or seconds"
    ),
    "retention": Key("retention", _duration, "a duration (7d, 12h, 30m, 90s) or seconds"),
    "events": Key("events", _bool, "true or false"),
    "reap-after": Key("reap_after", _duration, "a duration (10m, 90s), seconds, or 0"),
    "agent-address": Key("agent_address", _str, "a string (http://HOST:PORT)"),
    "agent-config-id": Key("agent_config_id", _str, "a string (variable name or id)"),
    "agent-config-refresh": Key("agent_config_refresh", _number, "a number of seconds"),
    "no-cloud-logs": Key("no_cloud_logs", _bool, "true or false"),
    "log-level": Key("log_level", _one_of(*LEVELS), f"one of {', '.join(LEVELS)}"),
    "log-format": Key("log_format", _one_of(*FORMATS), f"one of {', '.join(FORMATS)}"),
    "api-retry-seconds": Key("api_retry_seconds", _number, "a number of seconds"),
    "flow-python": Key("flow_python", _str, "a string (path)"),
    "flow-log-max-bytes": Key("flow_log_max_bytes", _int, "an integer"),
    "cancel-grace-seconds": Key("cancel_grace_seconds", _number, "a number of seconds"),
    "launch": Key("launch", _one_of(*LAUNCH_MODES), "warm or cold"),
    "warm-recycle-runs": Key("warm_recycle_runs", _count, "a whole number >= 1"),
    "containment": Key("containment", _one_of(*CONTAINMENT_MODES), "strict, best-effort or off"),
    "cgroup-root": Key("cgroup_root", _str, "a string (path)"),
    "crash-tail-lines": Key("crash_tail_lines", _count, "a whole number >= 0"),
}
# --default-memory-limit ... --max-timeout-seconds: checked in full by their own parser.
for _kind in ("default", "max"):
    for _key in ("memory-limit", "cpu-limit", "pids-limit", "timeout-seconds"):
        KEYS[f"{_kind}-{_key}"] = Key(
            f"{_kind}_{_key.replace('-', '_')}", _duration, "a number or a string such as 2GiB"
        )
SECRET_KEYS = frozenset({"key", "auth-string"})


def load(path: Path) -> dict[str, Any]:
    """Parse and check the file; returns {click parameter: value}."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:  # tomllib decodes the bytes itself
        raise ConfigError(f"config file {path} is not UTF-8 text: {exc.reason}") from None
    except RecursionError:
        raise ConfigError(f"config file {path} is not valid TOML: nested too deeply") from None
    return check(data, str(path))


def check(data: dict[str, Any], source: str) -> dict[str, Any]:
    unknown = sorted(k for k in data if k not in KEYS)
    if unknown:
        close = difflib.get_close_matches(unknown[0], KEYS, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(KEYS)}"
        raise ConfigError(f"config file {source}: unknown key {unknown[0]!r} ({hint})")
    values: dict[str, Any] = {}
    for name, value in data.items():
        key = KEYS[name]
        if not key.check(value):
            # Name the type, never the value: it may be a secret.
            raise ConfigError(
                f"config file {source}: key {name!r} must be {key.kind}, not {_type_name(value)}"
            )
        _check_exec(f"config file {source}: key {name!r}", value)
        values[key.param] = value
    return values


def _check_exec(what: str, value: Any) -> None:
    """Strings end up in argv, env and paths: what exec would refuse is refused here,
    naming the key (and an env name), never a value."""
    try:
        if isinstance(value, dict):
            check_env(value, what)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, str):
                check_text(item, what)
    except JobVariableError as exc:
        raise ConfigError(str(exc)) from None


def loosely_readable(path: Path) -> bool:
    """True if users other than the owner may read the file."""
    try:
        return bool(os.stat(path).st_mode & (stat.S_IRWXG | stat.S_IRWXO))
    except OSError:
        return False


def holds_secret(data: dict[str, Any]) -> bool:
    return any(KEYS[k].param in data for k in SECRET_KEYS)


def _type_name(value: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    names.update({list: "a list", dict: "a table"})
    return names.get(type(value), type(value).__name__)
