"""How many runs the poller may claim: live workers minus runs waiting or running."""

from __future__ import annotations

from pathlib import Path

from agent.poller.loop import Poller
from agent.settings.config import ApiSettings, PollerConfig
from agent.spool.moves import Spool
from tests.unit.test_health import FakeClient, FakeRegistry


def test_a_taken_spec_counts_before_its_worker_flags_itself_busy(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.ensure()
    registry = FakeRegistry(idle=2)
    config = PollerConfig(api=ApiSettings(url="http://x/api"), pool="p", spool_dir=spool.root)
    poller = Poller(config, FakeClient(), spool, registry)
    assert poller.s.free_slots() == 2

    spool.write_ahead("r1", b"{}")
    spool.publish("r1")
    assert poller.s.free_slots() == 1  # waiting in new/
    lease = spool.take()
    assert lease is not None
    # Taken (cur/) but both workers still say idle: still one slot, not two.
    assert poller.s.free_slots() == 1
    registry.set(idle=1, busy=1)
    assert poller.s.free_slots() == 1
    spool.write_ahead("r2", b"{}")
    spool.publish("r2")
    assert poller.s.free_slots() == 0
    lease.release()
