"""Options for running many hosts on one Prefect server: --reap-after (host loss), and
the heartbeat period behind it (a hidden setting tests shorten)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from agent.core.errors import ConfigError
from agent.settings import defaults
from agent.settings.config import parse_duration

F = TypeVar("F", bound=Callable[..., Any])


def parse_reap_after(value: str | float | None, source: str = "--reap-after") -> float:
    """A duration (10m, 90s, seconds); 0 turns reaping off."""
    if value is None:
        return defaults.REAP_AFTER_SECONDS
    if str(value).strip() in ("0", "0.0", "0s", "off"):
        return 0.0
    return parse_duration(value, source)


def _reap_after(_ctx: click.Context, _param: click.Parameter, value: Any) -> float:
    try:
        return parse_reap_after(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


def fleet_options(func: F) -> F:
    return click.option(
        "--reap-after",
        default="10m",
        show_default=True,
        envvar="AGENT_REAP_AFTER",
        show_envvar=True,
        callback=_reap_after,
        help="Mark Crashed the Pending and Running runs of another agent of this pool "
        "whose heartbeat has been silent this long (its host was lost): 10m, 90s or "
        "seconds; 0 turns it off.",
    )(func)


def heartbeat_seconds(value: str | None) -> float:
    """Hidden setting AGENT_HEARTBEAT_SECONDS (tests shorten it so that a lost host is
    seen in seconds): how often the poller sends the pool's worker heartbeat."""
    if value is None or not value.strip():
        return defaults.HEARTBEAT_SECONDS
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise ConfigError(f"AGENT_HEARTBEAT_SECONDS {value!r}: expected seconds > 0")
    return seconds
