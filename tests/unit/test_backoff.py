"""agent/core/backoff.py: the poll interval policy."""

from __future__ import annotations

from agent.core.backoff import next_poll_interval

MIN, MAX = 0.5, 10.0


def test_work_found_resets_to_minimum() -> None:
    assert next_poll_interval(8.0, True, MIN, MAX) == MIN


def test_idle_doubles_the_interval() -> None:
    assert next_poll_interval(1.0, False, MIN, MAX) == 2.0
    assert next_poll_interval(2.0, False, MIN, MAX) == 4.0


def test_idle_is_capped_at_maximum() -> None:
    assert next_poll_interval(8.0, False, MIN, MAX) == MAX
    assert next_poll_interval(MAX, False, MIN, MAX) == MAX


def test_idle_never_goes_below_minimum() -> None:
    assert next_poll_interval(0.0, False, MIN, MAX) == MIN
    assert next_poll_interval(0.1, False, MIN, MAX) == MIN


def test_repeated_idle_polls_reach_the_cap_and_stay() -> None:
    interval = MIN
    seen = []
    for _ in range(10):
        interval = next_poll_interval(interval, False, MIN, MAX)
        seen.append(interval)
    assert seen[:5] == [1.0, 2.0, 4.0, 8.0, 10.0]
    assert all(value == MAX for value in seen[4:])
