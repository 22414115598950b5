"""Prometheus metrics of every agent process.

Under supervisord, ``PROMETHEUS_MULTIPROC_DIR`` is set before any import, so each
process writes its own mmap files and the poller's ``/metrics`` merges them. Without
it (a poller run by hand) the default registry of the one process is served.
Labels are of bounded cardinality only: never a flow run id.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os
import sys
from typing import Any


def _lazy_package(name: str) -> None:
    """Register package ``name`` without running its ``__init__`` until an attribute of
    it is asked for: ``import name.sub`` then loads only ``sub`` and what it imports.

    prometheus_client's ``__init__`` imports its HTTP exposition (http.server, wsgiref,
    urllib.request, ssl: about 10 MiB); a worker only writes its counters to the
    multiprocess files (``prometheus_client.metrics``) and must stay small. The poller
    imports ``prometheus_client.exposition`` itself (agent/observe/exposition.py).
    """
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        return  # not a package we can defer: a plain import will say what is wrong
    module = importlib.util.module_from_spec(spec)
    loader = spec.loader

    def complete(attribute: str) -> object:
        # `from . import values` (as the package's own modules do) asks for a submodule:
        # load just that one. Anything else, e.g. someone's `from prometheus_client
        # import Counter`, gets the whole package, as a plain import would.
        if importlib.util.find_spec(f"{name}.{attribute}") is not None:
            return importlib.import_module(f"{name}.{attribute}")
        del module.__dict__["__getattr__"]
        loader.exec_module(module)
        return getattr(module, attribute)

    module.__dict__["__getattr__"] = complete
    sys.modules[name] = module


_lazy_package("prometheus_client")

# Only the modules that write values (no exposition): see _lazy_package. Never
# `from prometheus_client import x`: that asks the package for x and runs its __init__.
from prometheus_client.metrics import Counter, Gauge, Histogram  # noqa: E402
from prometheus_client.multiprocess import mark_process_dead as _mark_dead  # noqa: E402

from agent.core.causes import Cause  # noqa: E402
from agent.core.claim import CONFLICT_REASONS  # noqa: E402
from agent.core.states import Outcome  # noqa: E402


def _private_dirs(path: str) -> None:
    """mkdir -p with every folder it creates 0700 (os.makedirs leaves parents 0777-umask)."""
    parent = os.path.dirname(os.path.abspath(path))
    if parent != path and not os.path.isdir(parent):
        _private_dirs(parent)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)


# prometheus_client writes its mmap files there from the first metric on; a missing
# folder would crash every process at the definitions below, so create it (never empty
# it here).
if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    _private_dirs(os.environ["PROMETHEUS_MULTIPROC_DIR"])


def multiprocess_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def _private_files() -> None:
    """prometheus_client creates this process's files with the umask's mode (0644): make
    them 0600, as every file the agent creates."""
    directory = multiprocess_dir()
    if directory:
        own = os.getpid()
        for path, pid in metric_files(directory):
            if pid == own:
                with contextlib.suppress(OSError):
                    os.chmod(path, 0o600)


class _InfoGauge(Gauge):
    """A Gauge whose series can be replaced in multiprocess mode too.

    prometheus_client cannot delete a series from its files there, and warns (a
    UserWarning at every poller start) on ``clear()``; the series it cannot delete are
    set to 0 instead, so ``agent_info == 1`` is the current one.
    """

    def clear(self) -> None:
        if not multiprocess_dir():
            super().clear()
            return
        with self._lock:
            children = list(self._metrics.values())
        for child in children:
            child.set(0)  # type: ignore[attr-defined]  # children are Gauges

    def labels(self, *labelvalues: Any, **labelkwargs: Any) -> _InfoGauge:
        child = super().labels(*labelvalues, **labelkwargs)
        _private_files()  # the first series opens a file of its own (gauge_livemax_<pid>)
        return child


POLLS = Counter("agent_polls_total", "Polls of the Prefect API for scheduled flow runs")
POLL_ERRORS = Counter("agent_poll_errors_total", "Polls that failed")
CLAIMED = Counter("agent_flow_runs_claimed_total", "Flow runs claimed (set Pending) by this agent")
CLAIM_CONFLICTS = Counter(
    "agent_claim_conflicts_total",
    "Claims the server refused",
    ["reason"],  # taken | concurrency_limit | other
)
STARTED = Counter("agent_flow_runs_started_total", "Flow run processes started")
LAUNCHES = Counter(
    "agent_flow_run_launches_total",
    "Flow run processes started, by how: warm (forked from the warm process) or cold",
    ["how"],
)
FINISHED = Counter(
    "agent_flow_runs_finished_total",
    "Flow runs finished on this host, by outcome and by what ended the process",
    # outcome: completed | failed | crashed | cancelled; cause: agent.core.causes.Cause
    ["outcome", "cause"],
)
_MIB = 1024 * 1024
PEAK_MEMORY = Histogram(
    "agent_flow_run_peak_memory_bytes",
    "Peak memory of each flow run's cgroup (the flow and every process it started)",
    buckets=tuple(_MIB * 2**i for i in range(4, 15)),  # 16 MiB .. 16 GiB
)
CPU_SECONDS = Histogram(
    "agent_flow_run_cpu_seconds",
    "CPU seconds used by each flow run's cgroup",
    buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600),
)
RUN_DURATION = Histogram(
    "agent_flow_run_duration_seconds",
    "Flow run process wall time",
    buckets=(1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600),
)
START_DELAY = Histogram(
    "agent_flow_run_start_delay_seconds",
    "Scheduled start time to process start",
    buckets=(0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600),
)
LAST_POLL = Gauge(
    "agent_last_successful_poll_timestamp_seconds",
    "Unix time of the last successful poll",
    multiprocess_mode="mostrecent",
)
API_LATENCY = Histogram(
    "agent_api_request_duration_seconds",
    "Prefect API request latency by endpoint",
    ["endpoint"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
API_ERRORS = Counter(
    "agent_api_errors_total",
    "Failed Prefect API requests by endpoint and kind",
    ["endpoint", "kind"],  # kind: connection | timeout | http_4xx | http_5xx | auth
)
RUN_LOGS_SENT = Counter(
    "agent_run_logs_sent_total", "Agent log lines delivered to flow runs' logs in Prefect"
)
RUN_LOGS_DROPPED = Counter(
    "agent_run_logs_dropped_total",
    "Agent log lines for flow runs given up on, by reason",
    ["reason"],  # queue_full | rejected | invalid | shutdown
)
OUTBOX_KEPT = Counter(
    "agent_outbox_kept_total",
    "Reports the API could not take, kept in the spool's outbox, by kind",
    ["kind"],  # state | pid | logs
)
OUTBOX_DELIVERED = Counter(
    "agent_outbox_delivered_total",
    "Outbox reports delivered (or found needless) once the API answered, by kind",
    ["kind"],
)
INFO = _InfoGauge(
    "agent_info",
    "Constant 1, labelled with the agent's version, name and pool",
    ["version", "name", "pool"],
    # Live: only the running poller's labels, not a dead or renamed one's.
    multiprocess_mode="livemax",
)
WORKER_CRASHES = Counter(
    "agent_worker_crashes_total",
    "Unexpected exits of worker processes (killed, or died of an error; never a stop by "
    "SIGTERM), counted when the next process with the worker's id starts",
    # The worker id: supervisor's process name (agent-worker_NN), one per process slot.
    # Every worker exports its own at 0 from its start, so increase() sees the first exit.
    ["worker"],
)
EVENTS_CONNECTED = Gauge(
    "agent_events_stream_connected",
    "1 while the poller is subscribed to Prefect's events stream (push wake-ups), else 0",
    multiprocess_mode="livemax",
)
EVENTS_RECEIVED = Counter(
    "agent_events_received_total",
    "Events from Prefect's stream that woke the poller, by what they asked",
    ["kind"],  # wake (poll now) | cancel (look for cancellations now) | schedule
)
# No labels: exported at 0 from every process's start.
REAPED = Counter(
    "agent_flow_runs_reaped_total",
    "Flow runs of another host marked Crashed by this agent because that host's agent "
    "sent no heartbeat for --reap-after (host loss)",
)
# No labels: it is exported at 0 from every process's start.
QUARANTINED = Counter(
    "agent_specs_quarantined_total",
    "Specs moved to failed/ and their runs failed because taking them killed worker "
    "processes before their flow started (poison specs)",
)


# Every known label value starts at 0, so that increase() and rate() see the first event
# (Prometheus practice). The values are those the code counts with (tests check each).
OUTBOX_KINDS = ("state", "pid", "logs")  # agent.api.outbox's report kinds
RUN_LOG_DROP_REASONS = ("queue_full", "rejected", "invalid", "shutdown")
EVENT_KINDS = ("wake", "cancel", "schedule")  # agent.core.events.Kind, but OTHER
_KNOWN_LABELS: tuple[tuple[Counter, tuple[str, ...]], ...] = (
    (CLAIM_CONFLICTS, CONFLICT_REASONS),
    (RUN_LOGS_DROPPED, RUN_LOG_DROP_REASONS),
    (OUTBOX_KEPT, OUTBOX_KINDS),
    (OUTBOX_DELIVERED, OUTBOX_KINDS),
    (EVENTS_RECEIVED, EVENT_KINDS),
)
for _counter, _values in _KNOWN_LABELS:
    for _value in _values:
        _counter.labels(_value)
for _outcome in Outcome:
    for _cause in Cause:
        FINISHED.labels(_outcome.value, _cause.value)


def metric_files(directory: str) -> list[tuple[str, int]]:
    """(path, pid) of every metrics file: prometheus_client names them ``<kind>_<pid>.db``."""
    found = []
    for name in os.listdir(directory):
        stem, _, pid = name.removesuffix(".db").rpartition("_")
        if name.endswith(".db") and stem and pid.isdigit():
            found.append((os.path.join(directory, name), int(pid)))
    return found


def process_alive(pid: int) -> bool:
    """True while process ``pid`` exists, another user's too (kill(pid, 0) gives EPERM)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def mark_process_dead(pid: int) -> None:
    """Drop a finished process's live gauges (counters and histograms keep counting)."""
    if multiprocess_dir():
        _mark_dead(pid)  # type: ignore[no-untyped-call]


_private_files()  # the files opened by the definitions above
