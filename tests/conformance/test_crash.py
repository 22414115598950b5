"""A process that exits while its run is not final (and not PAUSED): the agent reports
CRASHED once, with the exit status, even when that status is 0 (Prefect's own process
worker reports nothing then, and leaves the run Running for ever)."""

from __future__ import annotations

import re
import time

import pytest

from tests.conformance.support import CRASHED, PENDING, RUNNING, SCHEDULED, World

pytestmark = pytest.mark.conformance


def test_flow_that_exits_0_without_reporting_is_crashed_exactly_once(world: World) -> None:
    world.start(workers=1)
    run_id = world.run(world.deploy("conformance_exit0"))
    world.poke()
    final = world.api.wait_final([run_id], 120)[run_id]
    world.settled(run_id)
    time.sleep(2)  # nothing more is reported
    assert final["type"] == "CRASHED", final
    assert re.search(r"\b(status|code) 0\b", str(final.get("message"))), final
    assert world.history(run_id) == [SCHEDULED, PENDING, RUNNING, CRASHED]
    assert len(world.starts(run_id)) == 1
