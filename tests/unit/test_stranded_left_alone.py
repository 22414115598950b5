"""Stranded runs (the poller's "stranded runs" duty, agent/poller/stranded.py): what is
left alone: runs with a spec in any spool folder, runs of another agent or host, runs
the filter should have excluded, runs whose state is fresh or has no readable time, and
runs a live process (or a run cgroup holding one) on this host still runs. A real Poller
and a real Spool in tmp_path; a fake API client."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agent.settings import defaults
from agent.spool import containment_state
from agent.spool.moves import CUR, DONE, FAILED, NEW, TMP
from tests.unit.stranded_support import World
from tests.unit.stranded_support import proc as proc
from tests.unit.stranded_support import world as world

# -- what is left alone -------------------------------------------------------------------


@pytest.mark.parametrize("folder", [TMP, NEW, CUR, DONE, FAILED])
@pytest.mark.parametrize("state_type", ["PENDING", "RUNNING"])
def test_a_run_with_a_spec_in_any_folder_is_left_to_the_workers(
    world: World, folder: str, state_type: str
) -> None:
    run_id = world.add(state_type=state_type)
    world.spec_in(folder, run_id)
    world.run_folder(run_id)
    world.poller.stranded.run()
    assert world.client.named("set_flow_run_state") == []
    assert world.spool.contains(run_id) == folder
    assert [world.spool.run_ids(f) for f in (TMP, NEW, CUR, DONE, FAILED)].count([run_id]) == 1


@pytest.mark.parametrize(
    "labels",
    [
        {"host": "host-b"},
        {"worker": "another-agent"},
        {"host": None},
        {"worker": None},
        {"worker": None, "host": None},
    ],
    ids=["other-host", "other-name", "no-host-label", "no-name-label", "unlabelled"],
)
@pytest.mark.parametrize("state_type", ["PENDING", "RUNNING"])
def test_a_run_of_another_agent_or_host_is_left_alone(
    world: World, labels: dict[str, Any], state_type: str
) -> None:
    run_id = world.add(state_type=state_type, **labels)
    world.poller.stranded.run()
    assert world.client.named("set_flow_run_state") == []
    assert world.spool.contains(run_id) is None


def test_runs_the_filter_should_have_excluded_are_left_alone(world: World) -> None:
    """A retry waiting its turn (Scheduled) keeps our labels; another pool's run too."""
    world.add(state_type="SCHEDULED")
    world.add(state_type="COMPLETED")
    world.add(pool="other-pool")
    world.poller.stranded.run()
    assert world.client.named("set_flow_run_state") == []
    assert world.spool.run_ids(NEW) == []


@pytest.mark.parametrize("state_type", ["PENDING", "RUNNING"])
@pytest.mark.parametrize("age", [0.0, 30.0, 59.0, -120.0], ids=["now", "30s", "59s", "future"])
def test_a_run_whose_state_is_fresh_is_left_alone(
    world: World, state_type: str, age: float
) -> None:
    assert world.poller.s.config.stranded_after == defaults.STRANDED_AFTER_SECONDS == 60.0
    run_id = world.add(state_type=state_type, age=age)
    world.poller.stranded.run()
    assert world.client.named("set_flow_run_state") == []
    assert world.spool.contains(run_id) is None


def test_a_state_just_past_the_threshold_is_acted_on(world: World) -> None:
    pending = world.add(age=61.0)
    running = world.add(state_type="RUNNING", age=61.0)
    world.poller.stranded.run()
    assert world.spool.run_ids(NEW) == [pending]
    assert list(world.client.states_set()) == [running]


def test_a_run_without_a_readable_state_time_is_left_alone(world: World) -> None:
    world.add()
    world.client.live[0]["state"]["timestamp"] = None
    world.poller.stranded.run()
    assert world.spool.run_ids(NEW) == []


@pytest.mark.parametrize("state_type", ["PENDING", "RUNNING"])
def test_a_run_a_live_process_on_this_host_runs_is_left_alone(
    world: World, proc: Path, state_type: str
) -> None:
    run_id = world.add(state_type=state_type)
    world.run_folder(run_id)
    flow = proc / "4242"
    flow.mkdir()
    (flow / "environ").write_bytes(f"HOME=/x\0PREFECT__FLOW_RUN_ID={run_id}\0PATH=/bin\0".encode())
    (proc / "self").mkdir()  # not a pid: skipped
    unreadable = proc / "4243"
    unreadable.mkdir()  # no environ file: another user's process, or gone
    world.poller.stranded.run()
    assert world.client.named("set_flow_run_state") == []
    assert world.spool.contains(run_id) is None


@pytest.mark.parametrize("held", [True, False])
def test_a_running_run_whose_cgroup_holds_a_process_is_left_alone(
    world: World, tmp_path: Path, held: bool
) -> None:
    """Where runs have cgroups, a process in the run's cgroup (one that changed its
    environment, say) keeps the run alive: it is not reported Crashed."""
    run_id = world.add(state_type="RUNNING", transition_id=None)
    root = tmp_path / "cgroups" / "local-agent"
    run_cgroup = root / f"run-{run_id}-0123abcd"
    run_cgroup.mkdir(parents=True)
    (run_cgroup / "cgroup.procs").write_text("4242\n" if held else "")
    containment_state.record(world.spool.root, "v2", "test", "strict", [root])
    world.poller.stranded.run()
    crashed = world.client.named("set_flow_run_state")
    assert (crashed == []) is held
