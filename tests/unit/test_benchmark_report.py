"""ops/benchmark/report.py: the report prints every side's column and, for the agent,
each target as met / missed with the value it was judged on (synthetic results, no
processes)."""

from __future__ import annotations

import argparse

import pytest

from ops.benchmark.report import print_report
from ops.benchmark.results import Burst, Cancellation, IdleApi, Json, Pickup, SideResult
from ops.benchmark.sampling import POLLER, WARM_PARENT, WORKER, RoleMemory


def burst(c: int, wall: float) -> Burst:
    runs: list[Json] = [
        {"created": "2026-01-01T00:00:00+00:00", "end_time": f"2026-01-01T00:00:{wall:04.1f}+00:00",
         "state": {"type": "COMPLETED"}}
    ]  # fmt: skip
    return Burst(c, runs, executions=1)


def side(key: str, name: str, walls: tuple[float, float], api: int) -> SideResult:
    r = SideResult(key, name, [f"{name} settings"])
    r.bursts = {2: burst(2, walls[0]), 4: burst(4, walls[1])}
    if key == "floor":
        return r
    r.pickups = [Pickup("a", 0.1, 1.0, "COMPLETED"), Pickup("b", 0.3, 1.2, "COMPLETED")]
    r.lateness = [-0.3, 0.2, 0.4]
    r.cancels = [
        Cancellation("c", False, 0.4, "CANCELLED", was="RUNNING", answered="CANCELLING"),
        Cancellation("d", True, 0.01, "CANCELLED", was="SCHEDULED", answered="CANCELLED"),
    ]
    r.api = IdleApi(60.0)
    r.api.lines["POST /api/work_pools/p/get_scheduled_flow_runs"] = api
    r.api.lines["WS /api/work_pools/p/workers/connect"] = 2  # not an HTTP request
    r.memory = {
        WORKER: RoleMemory({1: 40 * 1024, 2: 20 * 1024}),
        POLLER: RoleMemory({3: 30 * 1024}),
    }
    if key == "warm":
        r.memory[WARM_PARENT] = RoleMemory({4: 80 * 1024, 5: 81 * 1024})
    return r


def test_report_judges_each_agent_side_against_the_floor_and_prefect(
    capsys: pytest.CaptureFixture[str],
) -> None:
    results = {
        "floor": side("floor", "floor", (20.0, 10.0), 0),
        "warm": side("warm", "agent warm", (12.0, 7.0), 6),
        "cold": side("cold", "agent cold", (18.0, 9.0), 12),
        "prefect": side("prefect", "prefect", (40.0, 30.0), 8),
    }
    args = argparse.Namespace(parts=["burst"], concurrency=[2, 4], runs=1)
    print_report(results, args, ["machine: test"], prefect_at_defaults=True)
    out = capsys.readouterr().out
    lines = {line.split("  ")[0]: line for line in out.splitlines()}
    c2 = lines["burst at C=2, wall time as a multiple of the floor's"]
    assert "0.60x met" in c2 and "0.90x missed" in c2
    c4 = lines["burst at C=4, wall time as a multiple of the floor's"]
    assert "0.70x met" in c4 and "0.90x missed" in c4
    api = lines["idle API requests per minute, at most Prefect's worker's"]
    assert "8/min" in api and "6.00/min met" in api and "12.00/min missed" in api
    assert "40.00 MiB missed" in lines["idle RSS of each agent worker process (largest)"]
    assert "30.00 MiB met" in lines["idle RSS of the poller"]
    # |-0.3|, 0.2, 0.4: early counts as off time too; p95 interpolates to 0.39.
    assert "0.39 s met" in lines["scheduled runs, |due -> Running|, p95 (a free worker)"]
    assert "agent warm: warm parent process RSS while idle (no target): 81.0" in out
    assert "agent cold: warm parent process RSS while idle (no target): none" in out
    assert "was scheduled" in out
    messages = next(x for x in out.splitlines() if x.startswith("  and websocket messages"))
    assert messages.split()[-3:] == ["2.0", "2.0", "2.0"]  # the floor's column is "-"


def test_a_missed_burst_target_says_how_long_finished_engines_held_their_slot(
    capsys: pytest.CaptureFixture[str],
) -> None:
    floor = side("floor", "floor", (20.0, 10.0), 0)
    # 4 runs at C=2 in 20 s: 10 s per run and slot; the engines lived on 1, 3, 3, 5 s.
    floor.bursts[2].runs *= 4
    floor.bursts[2].lingers = [1.0, 3.0, 3.0, 5.0]
    results = {"floor": floor, "warm": side("warm", "agent warm", (16.0, 7.0), 6)}
    args = argparse.Namespace(parts=["burst"], concurrency=[2, 4], runs=4)
    print_report(results, args, [], prefect_at_defaults=False)
    out = capsys.readouterr().out
    why = [line for line in out.splitlines() if "why missed" in line]
    assert len(why) == 1  # C=4 was met (0.70x): nothing to explain
    assert why[0].startswith("burst at C=2, why missed: a finished engine lives on 3.00 s")
    assert "0.30x of the floor's time per run and slot" in why[0]


def test_without_prefect_at_its_defaults_the_api_target_is_not_judged(
    capsys: pytest.CaptureFixture[str],
) -> None:
    results = {
        "warm": side("warm", "agent warm", (12.0, 7.0), 6),
        "prefect": side("prefect", "prefect", (40.0, 30.0), 8),
    }
    args = argparse.Namespace(parts=["api"], concurrency=[2], runs=1)
    print_report(results, args, [], prefect_at_defaults=False)
    out = capsys.readouterr().out
    assert "idle API target not judged" in out
    assert "not measured" in out  # no floor: no ratio
