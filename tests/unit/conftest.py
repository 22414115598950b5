"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.spool.moves import Lease, Spool


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    """A real, empty spool in the test's own temp dir."""
    s = Spool(tmp_path / "spool")
    s.ensure()
    return s


@pytest.fixture
def leases() -> Iterator[list[Lease]]:
    """Leases taken by a test, released afterwards so no fd leaks."""
    taken: list[Lease] = []
    yield taken
    for lease in taken:
        lease.release()
