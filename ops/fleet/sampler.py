"""What the fleet measures while it runs, every few seconds, in a thread:

- each host's /metrics: ``agent_claim_conflicts_total`` and the request count of
  ``agent_api_request_duration_seconds`` (summed over their labels). The counters live
  in the host's processes: a host killed loses what it counted since the last sample,
  and starts again from 0 (a drop is read as such a restart);
- the Prefect server's CPU: utime + stime of its process and its descendants;
- PostgreSQL's client connections (``pg_stat_activity``) and CPU (the postmaster and
  its backends), with that backend.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ops.benchmark.sampling import cpu_seconds, process_table
from ops.fleet.hosts import Host
from tests.integration.harness import PrefectServer

PERIOD = 5.0


def tree(pid: int) -> list[int]:
    """``pid`` and every process under it."""
    table = process_table()
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        if current in table or current == pid:
            out.append(current)
        todo.extend(p.pid for p in table.values() if p.ppid == current)
    return out


@dataclass
class Sampler:
    hosts: Sequence[Host]
    server: PrefectServer
    connections: Callable[[], int] | None  # PostgreSQL's client backends, or None
    db_pid: Callable[[], int | None] | None = None  # PostgreSQL's postmaster, or None
    # host name -> [(time.time(), conflicts, requests)], answered scrapes only
    scrapes: dict[str, list[tuple[float, float, float]]] = field(default_factory=dict)
    cpu: list[tuple[float, float]] = field(default_factory=list)  # (time, cumulative s)
    conns: list[tuple[float, int]] = field(default_factory=list)
    db_cpu: list[tuple[float, float]] = field(default_factory=list)  # (time, cumulative s)
    _seen: dict[tuple[int, int], float] = field(default_factory=dict)  # (server, pid) -> s
    _db_seen: dict[tuple[int, int], float] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="sampler", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def _loop(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(PERIOD):
                self.sample()
                return

    def sample(self) -> None:
        now = time.time()
        proc = self.server.proc
        if proc is not None and proc.poll() is None:
            for pid in tree(proc.pid):
                used = cpu_seconds(pid)
                key = (proc.pid, pid)
                self._seen[key] = max(self._seen.get(key, 0.0), used)
        self.cpu.append((now, sum(self._seen.values())))
        postmaster = self.db_pid() if self.db_pid is not None else None
        if postmaster is not None:
            for pid in tree(postmaster):
                key = (-postmaster, pid)
                self._db_seen[key] = max(self._db_seen.get(key, 0.0), cpu_seconds(pid))
            self.db_cpu.append((now, sum(self._db_seen.values())))
        if self.connections is not None:
            with contextlib.suppress(Exception):  # a missed sample is no reason to stop
                self.conns.append((now, self.connections()))
        for host in self.hosts:
            if not host.alive:
                continue
            figures = host.metrics()
            if figures is not None:
                series = self.scrapes.setdefault(host.name, [])
                series.append((time.time(), figures["conflicts"], figures["requests"]))


def increase(
    series: Sequence[tuple[float, float]], start: float, end: float
) -> tuple[float, float]:
    """(how much a counter grew, seconds covered) between ``start`` and ``end``, from
    consecutive samples both inside the window; a drop is a restart from 0."""
    grown = covered = 0.0
    inside = [(t, v) for t, v in series if start <= t <= end]
    for (t1, v1), (t2, v2) in itertools.pairwise(inside):
        grown += v2 - v1 if v2 >= v1 else v2
        if t2 - t1 <= 3 * PERIOD:  # else a gap: the host was down in between
            covered += t2 - t1
    return grown, covered


def cumulative(
    series: Sequence[tuple[float, float, float]], which: int
) -> list[tuple[float, float]]:
    return [(s[0], s[which]) for s in series]


def conflicts(sampler: Sampler) -> float:
    """Claim conflicts counted by all hosts over the whole run (see the module doc)."""
    return sum(
        increase(cumulative(series, 1), 0.0, float("inf"))[0] + (series[0][1] if series else 0.0)
        for series in sampler.scrapes.values()
    )


def requests_per_host_minute(sampler: Sampler, start: float, end: float) -> float | None:
    """API requests per host per minute in the window: each host's own rate over the
    time its scrapes cover, averaged over the hosts that have any."""
    rates = []
    for series in sampler.scrapes.values():
        grown, covered = increase(cumulative(series, 2), start, end)
        if covered > 0:
            rates.append(grown / covered * 60.0)
    return sum(rates) / len(rates) if rates else None


def cpu_percent(sampler: Sampler, start: float, end: float, database: bool = False) -> float | None:
    """The server's (or PostgreSQL's) CPU in the window, as % of one core."""
    series = sampler.db_cpu if database else sampler.cpu
    inside = [(t, v) for t, v in series if start <= t <= end]
    if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
        return None
    return (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0]) * 100.0


def connection_stats(sampler: Sampler) -> tuple[int, float] | None:
    """(max, mean) of the sampled PostgreSQL client connections."""
    if not sampler.conns:
        return None
    values = [n for _, n in sampler.conns]
    return max(values), sum(values) / len(values)
