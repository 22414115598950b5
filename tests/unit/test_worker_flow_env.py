"""The worker and the Prefect API: what the flow is started with (the Prefect client's
retries, unless its run sets them). A real Worker and spool, a scripted fake API client,
and real child processes for the flows."""

from __future__ import annotations

import pytest

from agent.core.spec import JobSpec, dumps
from agent.spool.moves import Spool
from tests.unit.worker_api_support import (
    POOL,
    CountingLauncher,
    ScriptedClient,
    fast_probes,
    make_worker,
)

__all__ = ["fast_probes"]  # the autouse fixture, imported for pytest to find

# -- what the flow is started with ---------------------------------------------------------------


def spool_with_env(spool: Spool, run_env: dict[str, str]) -> str:
    run_id = "3f1c0f9e-0000-4000-8000-00000000000a"
    spec = JobSpec(
        flow_run_id=run_id,
        pool=POOL,
        transition_id="claim-1",
        agent_name="agent",
        job_variables={"env": run_env},
    )
    spool.write_ahead(run_id, dumps(spec))
    spool.publish(run_id)
    return run_id


@pytest.mark.parametrize(
    ("run_env", "expected"), [({}, "8"), ({"PREFECT_CLIENT_MAX_RETRIES": "2"}, "2")]
)
def test_the_flow_gets_the_client_retries_default_unless_its_run_sets_it(
    spool: Spool, run_env: dict[str, str], expected: str
) -> None:
    client = ScriptedClient(["PENDING"], after="COMPLETED")
    run_id = spool_with_env(spool, run_env)
    launcher = CountingLauncher(spool, client)
    lease = spool.take()
    assert lease is not None
    try:
        make_worker(spool, client, launcher).handle(lease)
    finally:
        lease.release()
    [env] = launcher.envs
    assert env["PREFECT_CLIENT_MAX_RETRIES"] == expected
    assert env["PREFECT__FLOW_RUN_ID"] == run_id
