"""Options for run containment (cgroups, limits' host defaults and ceilings), and the
ContainmentConfig built from them. Used by `agent worker`, `agent local start` (which
reports what containment the host has) and `agent local install`."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from agent.core.errors import ConfigError, JobVariableError
from agent.core.limits import LimitPolicy, Limits, check_policy, parse_limits
from agent.settings import defaults
from agent.settings.config import ContainmentConfig

F = TypeVar("F", bound=Callable[..., Any])

# (limit key, what it is) for --default-<key> and --max-<key>.
LIMIT_KEYS = (
    ("memory-limit", "memory, e.g. 512MiB or 2GiB"),
    ("cpu-limit", "CPU cores, e.g. 1.5"),
    ("pids-limit", "processes and threads"),
    ("timeout-seconds", "wall time in seconds from the flow process start"),
)
CONTAINMENT_PARAMS = (
    "containment",
    "cgroup_root",
    "crash_tail_lines",
    *(f"{kind}_{key.replace('-', '_')}" for kind in ("default", "max") for key, _ in LIMIT_KEYS),
)


def containment_options(func: F) -> F:
    options: list[Callable[[F], F]] = [
        click.option(
            "--containment",
            type=click.Choice(defaults.CONTAINMENT_MODES, case_sensitive=False),
            default=defaults.CONTAINMENT,
            show_default=True,
            envvar="AGENT_CONTAINMENT",
            show_envvar=True,
            help="strict: a run asking for a limit this host cannot enforce is Failed "
            "with the reason; best-effort: it runs without that limit and its Prefect "
            "log says so; off: no cgroups at all.",
        ),
        click.option(
            "--cgroup-root",
            type=click.Path(path_type=Path),
            envvar="AGENT_CGROUP_ROOT",
            show_envvar=True,
            help="Directory in a cgroup hierarchy under which each run gets its own "
            "cgroup (the same path is used in every v1 hierarchy). Default: the agent's "
            "own cgroup + /local-agent.",
        ),
        click.option(
            "--crash-tail-lines",
            type=click.IntRange(min=0),
            default=defaults.CRASH_TAIL_LINES,
            show_default=True,
            envvar="AGENT_CRASH_TAIL_LINES",
            show_envvar=True,
            help="Last output lines sent to a run's Prefect log when it crashed, timed "
            "out or was OOM-killed (0: none).",
        ),
    ]
    for kind, what in (("default", "Default for runs that ask none"), ("max", "Ceiling")):
        for key, unit in LIMIT_KEYS:
            options.append(
                click.option(
                    f"--{kind}-{key}",
                    envvar=f"AGENT_{kind.upper()}_{key.replace('-', '_').upper()}",
                    show_envvar=True,
                    help=f"{what}: {unit}.",
                )
            )
    for option in reversed(options):
        func = option(func)
    return func


def _limits(p: dict[str, Any], kind: str) -> Limits:
    raw = {key.replace("-", "_"): p.get(f"{kind}_{key.replace('-', '_')}") for key, _ in LIMIT_KEYS}
    try:
        limits = parse_limits(raw, prefix="setting")
    except JobVariableError as exc:
        # "setting `memory_limit`" -> name the flag the user typed.
        message = str(exc)
        for key, _ in LIMIT_KEYS:
            message = message.replace(f"setting `{key.replace('-', '_')}`", f"--{kind}-{key}")
        raise ConfigError(message) from None
    return limits


def containment_config(p: dict[str, Any]) -> ContainmentConfig:
    """ConfigError names the flag whose value is wrong, or a default above its ceiling."""
    policy = LimitPolicy(defaults=_limits(p, "default"), ceilings=_limits(p, "max"))
    check_policy(policy)
    return ContainmentConfig(
        mode=(p.get("containment") or defaults.CONTAINMENT).lower(),
        cgroup_root=p.get("cgroup_root"),
        policy=policy,
        crash_tail_lines=_or(p.get("crash_tail_lines"), defaults.CRASH_TAIL_LINES),
    )


def _or(value: int | None, default: int) -> int:
    return default if value is None else value
