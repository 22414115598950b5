"""Per-run resource limits from job variables, and the host's defaults and ceilings. Pure.

The worker enforces them (cgroup memory.max, cpu.max, pids.max; a wall-time timer); this
module only turns what a deployment author wrote into checked numbers.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeGuard

from agent.core.errors import ConfigError, JobVariableError

KIB, MIB, GIB, TIB = 2**10, 2**20, 2**30, 2**40
# Below 4MiB Python cannot even start: the run would die of OOM before its first log line.
MIN_MEMORY, MAX_MEMORY = 4 * MIB, 1024 * TIB  # 1024TiB: more than any host has
MIN_CPU, MAX_CPU = 0.01, 100_000.0  # cpu.max's least quota is 1 ms per 100 ms period
MIN_PIDS, MAX_PIDS = 8, 4_194_304  # pids.max counts threads; at most PID_MAX_LIMIT
MAX_TIMEOUT = 1e9  # about 31 years: longer waits overflow threading's timeouts

_UNITS = {"": 1, "b": 1, "k": KIB, "kib": KIB, "m": MIB, "mib": MIB, "g": GIB, "gib": GIB}
_UNITS |= {"t": TIB, "tib": TIB, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_SIZE = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+) *([a-z]*)", re.ASCII)
_LONGEST = 64  # longer strings are refused before parsing: int() of 5000 digits raises


@dataclass(frozen=True)
class Limits:
    """A run's limits; None is no limit. memory in bytes, cpu in cores, timeout in seconds."""

    memory: int | None = None
    cpu: float | None = None
    pids: int | None = None
    timeout: float | None = None

    def any_cgroup(self) -> bool:
        """Whether the run needs a cgroup of its own (the timeout does not)."""
        return self.memory is not None or self.cpu is not None or self.pids is not None

    def describe(self) -> str:
        """The set limits as job variables, e.g. ``memory_limit=128MiB, cpu_limit=0.5``."""
        return ", ".join(
            f"{key}={show(value)}"
            for key, attr, show in _FIELDS
            if (value := getattr(self, attr)) is not None
        )


@dataclass(frozen=True)
class LimitPolicy:
    """The host's limits, from the agent's flags: a default for runs that ask nothing, and a
    ceiling no run may ask above."""

    defaults: Limits = field(default_factory=Limits)
    ceilings: Limits = field(default_factory=Limits)


def format_bytes(n: int) -> str:
    """``n`` in the largest binary unit it is a whole number of ("1536KiB"), else in bytes."""
    for unit, size in (("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if n and n % size == 0:
            return f"{n // size}{unit}"
    return f"{n}B"


def format_number(x: float) -> str:
    """``3`` rather than ``3.0``, as a user writes it."""
    return str(int(x)) if float(x).is_integer() else repr(float(x))


def _show(value: object) -> str:
    # What the user wrote, quoted if a string, short enough for one log line.
    try:
        text = repr(value)
    except ValueError:  # an int of more digits than int->str may convert
        return "a number too long to show"
    return text if len(text) <= 40 else text[:37] + "..."


def _given(value: object, name: str, what: str) -> TypeGuard[int | float | str]:
    # False for no limit: None, or "" as Prefect's form sends for a field left empty.
    if value is None or (isinstance(value, str) and not value.strip()):
        return False
    if isinstance(value, bool) or not isinstance(value, int | float | str):  # true is not 1 core
        raise JobVariableError(f"{name} must be {what}, got {type(value).__name__}")
    return True


def _within(
    x: float, value: object, name: str, least: float, below: str, most: float, above: str
) -> None:
    if x < least:
        raise JobVariableError(f"{name} {_show(value)} is below {below}")
    if x > most:
        raise JobVariableError(f"{name} {_show(value)} is above {above}")


def parse_memory(value: object, name: str) -> int | None:
    """A memory limit in bytes, from an int of bytes or a string like "512MiB" or "1.5G".

    Units, case-insensitive, with an optional space before them: B (or none) is bytes;
    K, M, G, T and KiB, MiB, GiB, TiB are powers of 1024 (as Docker reads "512m");
    KB, MB, GB, TB are powers of 1000. Fractions are rounded down to whole bytes. None or
    "" is no limit. At least 4MiB (a smaller limit cannot even start Python), at most
    1024TiB. JobVariableError names ``name``.
    """
    what = "a size such as 512MiB or 2GiB"
    if not _given(value, name, what):
        return None
    if isinstance(value, str):
        text = value.strip().lower()
        match = _SIZE.fullmatch(text) if len(text) <= _LONGEST else None
        if match is None or match[2] not in _UNITS:
            raise JobVariableError(f"{name} {_show(value)} is not {what}")
        size = int(Decimal(match[1]) * _UNITS[match[2]])
    elif isinstance(value, float) and not (math.isfinite(value) and value.is_integer()):
        raise JobVariableError(f"{name} {_show(value)} is not {what}")
    else:
        size = int(value)
    too_little = "4MiB, too little for Python to even start"
    _within(
        size, value, name, MIN_MEMORY, too_little, MAX_MEMORY, "1024TiB, more than any host has"
    )
    return size


def _number(value: object, name: str, what: str) -> float | None:
    # A finite int, float or numeric string; None for no limit.
    if not _given(value, name, what):
        return None
    try:
        number = float(value) if len(str(value)) <= _LONGEST else math.nan
    except (ValueError, OverflowError):  # garbage; an int too long to show
        number = math.nan
    if not math.isfinite(number):
        raise JobVariableError(f"{name} {_show(value)} is not {what}")
    return number


def parse_cpu(value: object, name: str) -> float | None:
    """Cores (1.5 is one and a half), at least 0.01; None or "" is no limit."""
    cpu = _number(value, name, "a number of cores such as 0.5 or 2")
    if cpu is not None:
        too_little = "0.01 cores, the least cpu.max can give"
        _within(
            cpu, value, name, MIN_CPU, too_little, MAX_CPU, "100000 cores, more than any host has"
        )
    return cpu


def parse_pids(value: object, name: str) -> int | None:
    """The most processes and threads the run may have, at least 8; None or "" is none."""
    what = "a whole number such as 64"
    pids = _number(value, name, what)
    if pids is None:
        return None
    if not pids.is_integer() or (isinstance(value, str) and not value.strip().isdigit()):
        raise JobVariableError(f"{name} {_show(value)} is not {what}")
    too_few = "8; it counts threads too, and Python needs a few"
    _within(pids, value, name, MIN_PIDS, too_few, MAX_PIDS, "4194304, the most Linux allows")
    return int(pids)


def parse_timeout(value: object, name: str) -> float | None:
    """Seconds of wall time, above 0; None or "" is no timeout."""
    timeout = _number(value, name, "a number of seconds such as 3600")
    if timeout is not None and timeout <= 0:
        raise JobVariableError(f"{name} {_show(value)} must be more than 0 seconds")
    if timeout is not None and timeout > MAX_TIMEOUT:
        raise JobVariableError(f"{name} {_show(value)} is above 1000000000 seconds (31 years)")
    return timeout


# (job variable, Limits attribute, how a value is shown), in the order describe() uses.
_FIELDS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("memory_limit", "memory", format_bytes),
    ("cpu_limit", "cpu", format_number),
    ("pids_limit", "pids", format_number),
    ("timeout_seconds", "timeout", format_number),
)


def parse_limits(raw: Mapping[str, Any], prefix: str = "job variable") -> Limits:
    """The limits among ``raw``'s keys memory_limit, cpu_limit, pids_limit, timeout_seconds;
    a bad one raises JobVariableError named f"{prefix} `memory_limit`" and so on."""
    return Limits(
        memory=parse_memory(raw.get("memory_limit"), f"{prefix} `memory_limit`"),
        cpu=parse_cpu(raw.get("cpu_limit"), f"{prefix} `cpu_limit`"),
        pids=parse_pids(raw.get("pids_limit"), f"{prefix} `pids_limit`"),
        timeout=parse_timeout(raw.get("timeout_seconds"), f"{prefix} `timeout_seconds`"),
    )


def _above(limits: Limits, ceilings: Limits) -> list[tuple[str, str, str]]:
    # (key, value, ceiling) of each limit above its ceiling, as the user writes them.
    return [
        (key, show(value), show(ceiling))
        for key, attr, show in _FIELDS
        if (value := getattr(limits, attr)) is not None
        and (ceiling := getattr(ceilings, attr)) is not None
        and value > ceiling
    ]


def _first(attr: str, layers: tuple[Limits, ...]) -> Any:
    return next((v for layer in layers if (v := getattr(layer, attr)) is not None), None)


def resolve(requested: Limits, policy: LimitPolicy) -> Limits:
    """The limits a run gets: what it asked, else the host's default, else the ceiling.

    A ceiling is a promise to the host, so a run that asks nothing (with no default) gets
    the ceiling rather than no limit. Asking above a ceiling raises JobVariableError, e.g.
    "memory_limit=4GiB is above this host's ceiling --max-memory-limit=2GiB".
    """
    layers = (requested, policy.defaults, policy.ceilings)
    chosen = Limits(**{attr: _first(attr, layers) for _, attr, _ in _FIELDS})
    for key, value, ceiling in _above(chosen, policy.ceilings):
        flag = "--max-" + key.replace("_", "-")
        raise JobVariableError(f"{key}={value} is above this host's ceiling {flag}={ceiling}")
    return chosen


def check_policy(policy: LimitPolicy) -> None:
    """ConfigError if a default is above its ceiling: every run would fail."""
    for key, default, ceiling in _above(policy.defaults, policy.ceilings):
        flag = key.replace("_", "-")
        raise ConfigError(f"--default-{flag}={default} is above --max-{flag}={ceiling}")
