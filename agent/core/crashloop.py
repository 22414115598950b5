"""Crash-loop policy: how long a restarted worker waits before it takes runs. Pure.

Supervisor restarts a worker that dies after its ``startsecs`` at once and for ever. The
registry records the time of each unexpected exit of a worker id (agent/spool/registry.py);
from these times and the clock this module says how many fall within the window and
how long the new process waits: nothing below the threshold, then ``first_delay``
doubling with each further exit, capped at ``max_delay`` (defaults in agent/settings/defaults.py,
with the reasons for their values).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from agent.settings import defaults


@dataclass(frozen=True)
class Policy:
    window: float = defaults.CRASH_LOOP_WINDOW_SECONDS
    threshold: int = defaults.CRASH_LOOP_THRESHOLD
    first_delay: float = defaults.CRASH_LOOP_FIRST_DELAY
    max_delay: float = defaults.CRASH_LOOP_MAX_DELAY


@dataclass(frozen=True)
class Verdict:
    exits: int  # unexpected exits within the window
    delay: float  # seconds to wait before taking runs; 0: take runs now


def recent(exits: Iterable[float], now: float, window: float) -> list[float]:
    """The exit times within ``window`` seconds before ``now``, oldest first. Times after
    ``now`` (the clock was set back) are dropped: counting too few is the safe side."""
    return sorted(t for t in exits if now - window < t <= now)


def delay_for(exits: int, policy: Policy) -> float:
    """Seconds to wait after ``exits`` unexpected exits within the window."""
    if exits < max(1, policy.threshold):
        return 0.0
    doublings = min(exits - max(1, policy.threshold), 64)  # 2**64 * any delay > any cap
    return float(min(policy.max_delay, policy.first_delay * 2.0**doublings))


def assess(exits: Iterable[float], now: float, policy: Policy, just_exited: bool = True) -> Verdict:
    """How a starting worker stands. ``just_exited``: its previous process exited
    unexpectedly (its time is among ``exits``). After a clean exit it never waits, however
    many crashes came before: a restart by the operator ends a backoff."""
    count = len(recent(exits, now, policy.window))
    return Verdict(count, delay_for(count, policy) if just_exited else 0.0)


def window_text(seconds: float) -> str:
    """``600`` -> ``10 min``; ``90`` -> ``90 s``."""
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:.0f} min"
    return f"{seconds:.0f} s"


def describe(exits: int, window: float) -> str:
    """``exited unexpectedly 6 times in the last 10 min``."""
    times = "once" if exits == 1 else f"{exits} times"
    return f"exited unexpectedly {times} in the last {window_text(window)}"
