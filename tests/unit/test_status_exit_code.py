"""agent/cli/status.py: the exit code of `agent status`: 0 while the poller and every
worker live, 3 (degraded) without a poller or with a dead worker.

Spools are built with the real Spool and Registry code; live and dead workers and
pollers are child processes holding (or having held) the real flocks.
"""

from __future__ import annotations

import subprocess

from agent.cli.status import EXIT_DEGRADED, EXIT_OK, collect, exit_code
from agent.spool.moves import Spool
from agent.spool.registry import Registry
from tests.unit.status_support import NOW, kill, start_child

# A pytest fixture, found by its name in this module: imported as itself.
from tests.unit.status_support import children as children

# -- exit code -----------------------------------------------------------------------


def test_exit_code_is_0_when_poller_and_workers_live(
    spool: Spool, children: list[subprocess.Popen[str]]
) -> None:
    start_child(children, spool, "poller", "idle:w0")
    assert exit_code(collect(spool.root, now=NOW)) == EXIT_OK == 0


def test_exit_code_is_3_without_a_poller(
    spool: Spool, children: list[subprocess.Popen[str]]
) -> None:
    start_child(children, spool, "idle:w0")
    assert exit_code(collect(spool.root, now=NOW)) == EXIT_DEGRADED == 3


def test_exit_code_is_3_with_a_dead_worker(
    spool: Spool, children: list[subprocess.Popen[str]]
) -> None:
    start_child(children, spool, "poller", "idle:w0")
    kill(start_child(children, spool, "idle:w1"))
    assert exit_code(collect(spool.root, now=NOW)) == EXIT_DEGRADED


def test_a_worker_that_exited_cleanly_is_gone_not_dead(
    spool: Spool, children: list[subprocess.Popen[str]]
) -> None:
    start_child(children, spool, "poller")
    registry = Registry(spool.root)
    registry.register("w0")
    registry.unregister()
    snapshot = collect(spool.root, now=NOW)
    assert snapshot["workers"] == []
    assert exit_code(snapshot) == EXIT_OK
