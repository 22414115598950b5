"""Crash loops: the policy (agent/core/crashloop.py): how many unexpected exits in what
window make a loop, the wait that doubles up to a cap, how it is described, and the
hidden threshold setting."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.cli.main import _crash_loop_threshold
from agent.core.crashloop import Policy, Verdict, assess, delay_for, describe, recent, window_text
from agent.core.errors import ConfigError
from agent.settings import defaults
from agent.settings.config import ApiSettings, WorkerConfig
from tests.unit.crashloop_support import URL

NOW = 1_700_000_000.0


# -- the policy ----------------------------------------------------------------------------


def test_defaults_are_5_exits_in_10_minutes_then_10_s_doubling_to_5_minutes() -> None:
    policy = Policy()
    assert (policy.threshold, policy.window) == (5, 600.0)
    assert (policy.first_delay, policy.max_delay) == (10.0, 300.0)
    assert policy.threshold == defaults.CRASH_LOOP_THRESHOLD


def test_no_wait_below_the_threshold_then_doubling_up_to_the_cap() -> None:
    policy = Policy()
    delays = [delay_for(n, policy) for n in range(12)]
    assert delays == [0, 0, 0, 0, 0, 10, 20, 40, 80, 160, 300, 300]
    assert delay_for(10_000, policy) == 300  # no overflow, however many


def test_a_lower_threshold_starts_waiting_sooner() -> None:
    policy = Policy(threshold=2, first_delay=1.5, max_delay=5)
    assert [delay_for(n, policy) for n in range(6)] == [0, 0, 1.5, 3, 5, 5]


def test_recent_keeps_the_window_oldest_first_and_drops_future_times() -> None:
    exits = [NOW - 601, NOW - 600, NOW - 599, NOW, NOW - 5, NOW + 30]
    assert recent(exits, NOW, 600) == [NOW - 599, NOW - 5, NOW]


def test_assess_counts_the_window_and_waits_only_after_an_unexpected_exit() -> None:
    policy = Policy()
    exits = [NOW - 700, *(NOW - 60 * i for i in range(6))]  # 6 in the window, 1 older
    assert assess(exits, NOW, policy) == Verdict(exits=6, delay=20.0)
    # The previous process exited cleanly (e.g. `supervisorctl restart`): no wait.
    assert assess(exits, NOW, policy, just_exited=False) == Verdict(exits=6, delay=0.0)
    # Ten minutes later they have all left the window.
    assert assess(exits, NOW + 600, policy) == Verdict(exits=0, delay=0.0)


def test_describe() -> None:
    assert describe(6, 600) == "exited unexpectedly 6 times in the last 10 min"
    assert describe(1, 90) == "exited unexpectedly once in the last 90 s"
    assert window_text(60) == "1 min"


def test_the_hidden_threshold_setting() -> None:
    assert _crash_loop_threshold(None) == _crash_loop_threshold(" ") == 5
    assert _crash_loop_threshold("2") == 2
    for bad in ("0", "-1", "two", "1.5"):
        with pytest.raises(ConfigError, match="AGENT_CRASH_LOOP_THRESHOLD"):
            _crash_loop_threshold(bad)
    assert WorkerConfig(ApiSettings(URL), Path("/s"), "w", "python").crash_loop == Policy()
