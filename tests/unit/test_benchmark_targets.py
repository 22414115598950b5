"""ops/benchmark/targets.py and the figures behind the verdicts: percentiles, ratios to
the floor, met / missed, burst wall time and state-to-state times from the server's
timestamps."""

from __future__ import annotations

import math

import pytest

from ops.benchmark import targets
from ops.benchmark.phases import endpoint
from ops.benchmark.results import Burst, Cancellation, SideResult, entered
from ops.benchmark.targets import MET, MISSED, NOT_MEASURED, Target, percentile, ratio


def test_percentile_interpolates_between_closest_ranks() -> None:
    values = [4.0, 1.0, 3.0, 2.0, 5.0]
    assert percentile(values, 0.5) == 3.0
    assert percentile(values, 0.95) == pytest.approx(4.8)
    assert percentile(values, 0.0) == 1.0
    assert percentile(values, 1.0) == 5.0
    assert percentile([7.0], 0.95) == 7.0
    assert math.isnan(percentile([], 0.5))


def test_ratio_to_the_floor_needs_both_figures() -> None:
    assert ratio(13.0, 20.0) == pytest.approx(0.65)
    assert ratio(None, 20.0) is None
    assert ratio(13.0, None) is None
    assert ratio(13.0, 0.0) is None
    assert ratio(math.nan, 20.0) is None


def test_a_value_at_the_limit_meets_it_and_above_misses_it() -> None:
    target = Target("burst", 0.65, "x")
    assert target.verdict(0.65) == MET
    assert target.verdict(0.66) == MISSED
    assert target.verdict(None) == NOT_MEASURED
    assert target.verdict(math.nan) == NOT_MEASURED
    assert target.cell(0.612) == "0.61x met"
    assert Target("pickup", 1.0, " s").cell(1.5) == "1.50 s missed"
    assert target.cell(None) == NOT_MEASURED


def test_the_idle_api_target_is_prefects_measured_rate() -> None:
    target = targets.api_target(12.0)
    assert target is not None and target.limit == 12.0
    assert target.verdict(11.9) == MET and target.verdict(12.1) == MISSED
    assert targets.api_target(None) is None


def history(*states: tuple[str, str]) -> list[dict[str, object]]:
    return [{"type": t, "timestamp": f"2026-01-01T00:00:{s}+00:00"} for t, s in states]


def test_entered_keeps_the_first_time_of_each_state_type() -> None:
    when = entered(history(("SCHEDULED", "00"), ("PENDING", "01"), ("SCHEDULED", "02")))
    base = entered(history(("SCHEDULED", "00")))["SCHEDULED"]
    assert when["SCHEDULED"] == base and when["PENDING"] == base + 1


def test_burst_wall_is_first_created_to_last_end_and_nan_if_one_never_ended() -> None:
    runs = [
        {"created": "2026-01-01T00:00:00+00:00", "end_time": "2026-01-01T00:00:05+00:00",
         "state": {"type": "COMPLETED"}},
        {"created": "2026-01-01T00:00:01+00:00", "end_time": "2026-01-01T00:00:09.5+00:00",
         "state": {"type": "COMPLETED"}},
    ]  # fmt: skip
    burst = Burst(2, runs, executions=2)
    assert burst.wall() == pytest.approx(9.5)
    assert burst.completed == 2
    unfinished = Burst(2, [*runs, {"created": "2026-01-01T00:00:02+00:00", "state": {}}])
    assert math.isnan(unfinished.wall())


def test_burst_between_states_per_run() -> None:
    burst = Burst(2)
    burst.histories = {
        "a": history(("SCHEDULED", "00"), ("PENDING", "01"), ("RUNNING", "04")),
        "b": history(("SCHEDULED", "00"), ("PENDING", "02")),
    }
    assert sorted(burst.between("SCHEDULED", "PENDING")) == [1.0, 2.0]
    assert burst.between("PENDING", "RUNNING") == [3.0]


def test_a_side_is_ok_only_if_every_run_completed_exactly_once() -> None:
    done = {"created": "2026-01-01T00:00:00+00:00", "state": {"type": "COMPLETED"}}
    side = SideResult("warm", "agent warm")
    side.bursts[2] = Burst(2, [done, done], executions=2)
    assert side.ok()
    side.bursts[2].executions = 3  # one ran twice
    assert not side.ok()


def test_cancel_seconds_leave_out_cancellations_that_did_not_happen() -> None:
    side = SideResult("prefect", "prefect")
    side.cancels = [
        Cancellation("a", False, 0.4, "CANCELLED"),
        Cancellation("b", True, None, "CANCELLING"),
        Cancellation("c", True, 0.2, "CANCELLED"),
    ]
    assert side.cancel_seconds(waiting=False) == [0.4]
    assert side.cancel_seconds(waiting=True) == [0.2]


def test_endpoints_group_requests_by_path_without_ids_or_query() -> None:
    line = "POST /api/flow_runs/0b6d5a4e-93c5-4c38-9d2e-0a3f5b1c2d4e/set_state?x=1"
    assert endpoint(line) == "POST /api/flow_runs/{id}/set_state"
