"""The poller's /metrics: every agent process's values merged, plus what is read from
disk at scrape time. Only the poller imports this (prometheus_client's exposition is
large; workers write their values through agent/observe/metrics.py alone)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterable

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import REGISTRY, Collector, CollectorRegistry

from agent.observe.metrics import (
    mark_process_dead,
    metric_files,
    multiprocess_dir,
    process_alive,
)


class ScrapeTimeCollector(Collector):
    """Values read from disk at scrape time: spool depth, worker states, outbox size."""

    def __init__(
        self,
        spool_depth: Callable[[], dict[str, int]],
        worker_states: Callable[[], dict[str, int]],
        outbox_size: Callable[[], int] = lambda: 0,
    ) -> None:
        self._spool_depth = spool_depth
        self._worker_states = worker_states
        self._outbox_size = outbox_size

    def collect(self) -> Iterable[GaugeMetricFamily]:
        spool = GaugeMetricFamily(
            "agent_spool_runs", "Flow runs in the spool by state", labels=["state"]
        )
        for state, count in sorted(self._spool_depth().items()):
            spool.add_metric([state], count)
        workers = GaugeMetricFamily("agent_workers", "Worker processes by state", labels=["state"])
        for state, count in sorted(self._worker_states().items()):
            workers.add_metric([state], count)
        outbox = GaugeMetricFamily(
            "agent_outbox_reports", "Reports waiting in the outbox for the API to come back"
        )
        outbox.add_metric([], self._outbox_size())
        return [spool, workers, outbox]


def reset_if_whole_agent_starts(own_pid: int) -> bool:
    """Called by a starting poller: when no other process of the agent is alive, the
    whole agent is starting, so the files of earlier lives go. Never when a worker (or
    the poller alone) restarts: their counter files carry the counts on across pids."""
    directory = multiprocess_dir()
    if not directory:
        return False
    files = metric_files(directory)
    if any(pid != own_pid and process_alive(pid) for _, pid in files):
        return False
    for path, pid in files:
        if pid != own_pid:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
    return True


def sweep_dead() -> None:
    """Drop live gauges of processes that died without saying so (kill -9)."""
    directory = multiprocess_dir()
    if directory:
        for pid in {pid for path, pid in metric_files(directory) if "_live" in path}:
            if not process_alive(pid):
                mark_process_dead(pid)


def render(extra: Collector | None = None) -> bytes:
    """The Prometheus text exposition of all agent processes plus ``extra``."""
    if multiprocess_dir():
        sweep_dead()
        # A fresh registry per scrape, as prometheus_client's multiprocess docs require.
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        if extra is not None:
            registry.register(extra)
        return generate_latest(registry)
    if extra is not None:
        scratch = CollectorRegistry()
        scratch.register(extra)
        return generate_latest(REGISTRY) + generate_latest(scratch)
    return generate_latest(REGISTRY)
