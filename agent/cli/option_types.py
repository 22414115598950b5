"""Click parameter types and value callbacks of the command-line options: the list and
mapping forms Prefect 1 read from its environment variables, durations, the idle poll
cap, the agent's address, and the config file loaded into click's defaults."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from agent.core.errors import ConfigError
from agent.settings import configfile, defaults
from agent.settings.config import (
    parse_agent_address,
    parse_duration,
    parse_env_pairs,
    parse_env_vars_value,
    parse_labels_value,
)

LABELS_ENV = "PREFECT__CLOUD__AGENT__LABELS"
ENV_VARS_ENV = "PREFECT__CLOUD__AGENT__ENV_VARS"
FILE_META = "agent.config_file"  # ctx.meta key: the config file's values


# -- parameter types whose environment form is Prefect 1's ------------------------------


class LabelType(click.ParamType):  # type: ignore[type-arg]
    """One label per flag; the env var holds a list literal ``'["a","b"]'`` or ``a,b``."""

    name = "LABEL"

    def split_envvar_value(self, rv: str) -> Sequence[str]:
        # ConfigError, not a usage error: the culprit is the environment, not argv.
        return parse_labels_value(rv, LABELS_ENV)


class EnvPairType(click.ParamType):  # type: ignore[type-arg]
    """``KEY=VAL`` per flag; the env var holds ``'{"K": "V"}'`` or ``K=V,K2=V2``."""

    name = "KEY=VAL"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        try:
            ((key, val),) = parse_env_pairs([value]).items()
        except ConfigError as exc:
            self.fail(str(exc), param, ctx)
        return key, val

    def split_envvar_value(self, rv: str) -> Sequence[str]:
        return [f"{k}={v}" for k, v in parse_env_vars_value(rv, ENV_VARS_ENV).items()]


def duration(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    try:
        return parse_duration(value, f"--{param.name}")
    except ConfigError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def parse_poll_cap(value: str | float, source: str) -> float:
    """A poll interval cap: a duration (30s, 1m, seconds) no shorter than the shortest
    poll interval, which the poller starts from after work."""
    seconds = parse_duration(value, source)
    if seconds < defaults.POLL_INTERVAL_MIN:
        raise ConfigError(
            f"{source} {value!r}: expected at least {defaults.POLL_INTERVAL_MIN:g}s "
            "(the shortest poll interval)"
        )
    return seconds


def poll_cap(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    try:
        return parse_poll_cap(value, f"--{param.name}".replace("_", "-"))
    except ConfigError as exc:
        raise click.BadParameter(str(exc), ctx, param) from None


def address(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value is None:
        return None
    try:
        return parse_agent_address(value)
    except ConfigError as exc:
        raise click.BadParameter(str(exc)) from None


def load_config_file(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    """Eager: the file's values become click's defaults before any other option is read."""
    if value is None:
        return None
    values = configfile.load(Path(value))
    if configfile.holds_secret(values) and configfile.loosely_readable(Path(value)):
        click.echo(
            f"Warning: config file {value} holds a credential and is readable by other "
            "users; chmod 600 it.",
            err=True,
        )
    if "env_pairs" in values:
        values["env_pairs"] = [f"{k}={v}" for k, v in values["env_pairs"].items()]
    ctx.meta[FILE_META] = values
    ctx.default_map = {**(ctx.default_map or {}), **values}
    return Path(value)
