"""Shared by the spool unit tests (test_spool_moves, test_spool_take): the names in a
state folder, a spec written ahead and published (optionally dated), and a take whose
lease the ``leases`` fixture (tests/unit/conftest.py) releases afterwards."""

from __future__ import annotations

import os

from agent.spool.moves import NEW, Lease, Spool


def files(spool: Spool, state: str) -> list[str]:
    return sorted(p.name for p in spool.dir(state).iterdir())


def deliver(spool: Spool, run_id: str, mtime: float | None = None) -> None:
    """Write ahead and publish a spec, optionally dating it."""
    spool.write_ahead(run_id, f'{{"run": "{run_id}"}}'.encode())
    spool.publish(run_id)
    if mtime is not None:
        path = spool.dir(NEW) / f"{run_id}.json"
        os.utime(path, (mtime, mtime))


def take(spool: Spool, leases: list[Lease]) -> Lease | None:
    lease = spool.take()
    if lease is not None:
        leases.append(lease)
    return lease
