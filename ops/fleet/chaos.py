"""The fleet's chaos: a thread that, every MIN..MAX seconds, kills a whole host
(``kill -9`` of its supervisord and every process under it, sometimes deleting its spool
too), then after a pause starts it again, or leaves it dead for good. The hosts chosen
to die for good (at least one when there are two hosts or more) die at the first
actions, so that their runs must be reaped by the others while the fleet is busy.

Before each kill it notes the runs the host holds (its spool's tmp/new/cur, and the runs
Prefect shows Pending or Running under its agent name): a run hit by a host kill may end
Crashed (it was Running) and is not counted as lost or ended wrongly.
"""

from __future__ import annotations

import functools
import random
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ops.benchmark.console import log
from ops.fleet.hosts import Host, runs_of

PAUSE = (5.0, 20.0)  # seconds a killed host stays down before it is started again
DROP_SPOOL = 0.3  # share of kills that also delete the host's spool


@dataclass
class Kill:
    at: float  # seconds since the fleet began
    host: str
    processes: int
    dropped_spool: bool
    for_good: bool
    runs: list[str] = field(default_factory=list)  # runs the host held
    restarted_at: float | None = None


@dataclass
class HostKiller:
    hosts: Sequence[Host]
    doomed: set[int]  # indexes of hosts to kill for good
    rng: random.Random
    every: tuple[float, float]
    live_runs: Callable[[], list[dict[str, Any]]]  # Prefect's Pending/Running runs (raw)
    t0: float
    kills: list[Kill] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="host-killer", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """No more kills; a host killed meanwhile is started again (unless doomed)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=300)

    @property
    def hit(self) -> set[str]:
        with self._lock:
            return {run for kill in self.kills for run in kill.runs}

    def report(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(k) for k in self.kills]

    def _loop(self) -> None:
        while not self._stop.wait(self.rng.uniform(*self.every)):
            try:
                self._act()
            except Exception:
                self.errors.append(traceback.format_exc())
                log(f"host killer: {traceback.format_exc()}")

    def _act(self) -> None:
        alive = [h for h in self.hosts if h.alive]
        pending_doom = [h for h in alive if h.index in self.doomed]
        if pending_doom:
            host, for_good = pending_doom[0], True
        else:
            keep = [h for h in alive if h.index not in self.doomed]
            if not keep:
                return
            host, for_good = self.rng.choice(keep), False
        drop = self.rng.random() < DROP_SPOOL
        # Killed first, then asked: a dead host changes nothing, so what its spool and
        # Prefect show now is exactly what it held.
        processes = host.kill()
        held = set(host.in_flight())
        if drop:
            host.drop_spool()
        try:
            held.update(runs_of(self.live_runs(), host))
        except Exception as exc:  # the server may be restarting: the spool must do
            log(f"host killer: could not ask Prefect for {host.name}'s runs: {exc}")
        kill = Kill(
            round(time.time() - self.t0, 1), host.name, processes, drop, for_good, sorted(held)
        )
        with self._lock:
            self.kills.append(kill)
        what = "for good" if for_good else "for now"
        spool = ", spool deleted" if drop else ""
        log(f"killed {host.name} {what} ({processes} processes, {len(held)} runs held{spool})")
        if for_good:
            host.dead_for_good = True
            return
        # Even when told to stop, a host killed for now is started again.
        time.sleep(self.rng.uniform(*PAUSE))
        host.start()
        kill.restarted_at = round(time.time() - self.t0, 1)
        log(f"restarted {host.name}")


def live_runs_reader(client: Any, pool: str) -> Callable[[], list[dict[str, Any]]]:
    """Raw Pending and Running runs of the pool (one quick call; may raise)."""
    body = {
        "flow_runs": {"state": {"type": {"any_": ["PENDING", "RUNNING"]}}},
        "work_pools": {"name": {"any_": [pool]}},
        "limit": 200,
    }
    call = functools.partial(client.request, "fleet_live_runs", "POST", "/flow_runs/filter", body)

    def read() -> list[dict[str, Any]]:
        runs = call()
        return [r for r in runs if isinstance(r, dict)] if isinstance(runs, list) else []

    return read
