"""Stranded runs (the poller's "stranded runs" duty, agent/poller/stranded.py): what is
done with a run Prefect shows Pending or Running for this agent on this host that the
spool has no spec for: a never-started Pending run is spooled again as a claim would
(or cancelled if its deployment is gone), a Running one is reported Crashed. A real
Poller and a real Spool in tmp_path; a fake API client."""

from __future__ import annotations

import logging
import uuid
from dataclasses import replace
from datetime import datetime

from prometheus_client import REGISTRY

from agent.core.spec import JobSpec, loads
from agent.poller.loop import Poller
from agent.spool.moves import NEW, TMP
from tests.unit.reporter_support import RecordedRunLogs
from tests.unit.stranded_support import DEPLOYMENT, HOST, NAME, POOL, World
from tests.unit.stranded_support import proc as proc  # world uses it
from tests.unit.stranded_support import world as world
from tests.unit.test_health import FakeRegistry


def crash_message(run_id: str) -> str:
    return (
        f"Flow run {run_id} was claimed by agent {NAME} on {HOST}, which has no record of "
        "it running (spec lost); marked Crashed instead of running it again."
    )


def claimed_total() -> float:
    return REGISTRY.get_sample_value("agent_flow_runs_claimed_total") or 0.0


# -- what is done -------------------------------------------------------------------------


def test_a_never_started_pending_run_is_spooled_again_as_claim_would(world: World) -> None:
    run_id = world.add()
    before = claimed_total()
    world.poller.stranded.run()

    assert world.spool.run_ids(NEW) == [run_id]
    assert world.spool.run_ids(TMP) == []
    spec = loads(world.spool.read(NEW, run_id))
    pending_at = world.client.live[0]["state"]["timestamp"]
    assert spec == JobSpec(
        flow_run_id=run_id,
        pool=POOL,
        transition_id="tid-of-our-claim",  # the Pending's own: reconcile_tmp can settle it
        agent_name=NAME,
        flow_run_name="sleepy-otter",
        deployment_id=DEPLOYMENT,
        scheduled_start="2026-01-02T03:04:05.000006Z",  # expected_start_time
        claimed_at=datetime.fromisoformat(pending_at).timestamp(),  # when it was claimed
        # pool defaults < deployment < flow run, env merged key by key
        job_variables={
            "command": None,
            "env": {"DEP": "d", "RUN": "r"},
            "working_dir": "/srv/flows",
            "labels": [],
            "memory_limit": None,
            "cpu_limit": None,
            "pids_limit": None,
            "timeout_seconds": None,
        },
        env_vars={"AGENT_ENV": "a"},
        import_paths=["/opt/libs"],
        show_flow_logs=True,
        cloud_logs=False,
    )
    assert world.client.named("set_flow_run_state") == []  # still our Pending: no new claim
    assert claimed_total() == before  # counted once, when it was claimed


def test_with_cloud_logs_the_run_says_in_prefect_why_it_was_spooled_again(world: World) -> None:
    runlogs = RecordedRunLogs()
    config = replace(world.poller.s.config, cloud_logs=True)
    poller = Poller(config, world.client, world.spool, FakeRegistry(idle=0), runlogs)
    poller.claiming.setup_pool()
    run_id = world.add()
    poller.stranded.run()
    assert loads(world.spool.read(NEW, run_id)).cloud_logs is True
    assert runlogs.lines == [
        (
            run_id,
            f"Claimed by agent {NAME!r} on {HOST} but missing from its spool, and never "
            "started: spooled again",
            logging.WARNING,
        )
    ]


def test_a_pending_run_without_a_transition_id_gets_a_fresh_one(world: World) -> None:
    run_id = world.add(transition_id=None)
    world.poller.stranded.run()
    spec = loads(world.spool.read(NEW, run_id))
    assert uuid.UUID(spec.transition_id)


def test_a_pending_run_whose_deployment_is_gone_is_cancelled_not_spooled(world: World) -> None:
    run_id = world.add()
    world.client.deployments.clear()
    world.poller.stranded.run()
    assert world.spool.contains(run_id) is None
    assert world.client.states_set()[run_id]["type"] == "CANCELLED"


def test_a_pending_run_started_here_is_spooled_again_never_crashed(world: World) -> None:
    """`lifecycle.respool_stranded`: a process that ended while its run was still Pending
    never ran user code (the engine proposes Running before any), so the run is spooled
    again with its Pending's transition id, whether or not a process was started."""
    run_id = world.add()
    world.run_folder(run_id)  # a worker took it and started its process; the spec is lost
    world.poller.stranded.run()
    assert world.client.named("set_flow_run_state") == []  # no Crashed, no new claim
    assert world.spool.run_ids(NEW) == [run_id]
    assert loads(world.spool.read(NEW, run_id)).transition_id == "tid-of-our-claim"


def test_a_running_run_without_a_spec_is_reported_crashed(world: World) -> None:
    run_id = world.add(state_type="RUNNING", transition_id=None)
    world.poller.stranded.run()
    assert world.client.states_set() == {
        run_id: {"type": "CRASHED", "name": "Crashed", "message": crash_message(run_id)}
    }
    assert world.spool.contains(run_id) is None  # never run again
    body = world.client.named("set_flow_run_state")[0][2]
    assert body["force"] is False  # a run that reached a final state meanwhile keeps it


def test_a_crash_report_the_server_aborts_is_fine(world: World) -> None:
    world.add(state_type="RUNNING")
    world.client.state_answer = {
        "status": "ABORT",
        "details": {"reason": "Run is already in terminal state COMPLETED."},
    }
    world.poller.stranded.run()  # no error
