"""Options for how the poller keeps up with the server and the other hosts:
--events/--no-events (push wake-ups), --reap-after (host loss) and the heartbeat period
behind it (a hidden setting tests shorten)."""

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
    func = click.option(
        "--events/--no-events",
        default=True,
        show_default=True,
        envvar="AGENT_EVENTS",
        show_envvar=True,
        help="Subscribe to Prefect's events stream, so that a new run or a cancellation "
        "wakes the poller at once; polling goes on either way.",
    )(func)
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


def hidden_seconds(name: str, value: str | None, default: float) -> float:
    """A hidden setting in seconds (> 0): AGENT_HEARTBEAT_SECONDS (tests shorten it so a
    lost host is seen in seconds), AGENT_POLL_INTERVAL_MAX (tests lengthen it to show a
    push wake-up is not a poll)."""
    if value is None or not value.strip():
        return default
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < float("inf"):
        raise ConfigError(f"{name} {value!r}: expected seconds > 0")
    return seconds
