"""Flows the conformance tests (tests/conformance/) deploy.

Each appends one line per event to the file ``marker`` names: ``<flow run id> <event>
<pid> <unix time>``. A test counts executions from the ``start`` lines (one per time
the flow's code began), tells processes apart by pid, and measures overlap by time.

Setting CONFORMANCE_IMPORT_DELAY (seconds) in a run's environment (job variable ``env``)
makes importing this module slow: Prefect's engine imports the flow before it proposes
Running, so the run stays Pending with its process alive for that long.
"""

from __future__ import annotations

import os
import time

from prefect import flow
from prefect.flow_runs import pause_flow_run, suspend_flow_run

_IMPORT_DELAY = float(os.environ.get("CONFORMANCE_IMPORT_DELAY") or 0)
if _IMPORT_DELAY:
    time.sleep(_IMPORT_DELAY)


def note(marker: str, event: str) -> None:
    run_id = os.environ.get("PREFECT__FLOW_RUN_ID", "?")
    with open(marker, "a") as f:
        f.write(f"{run_id} {event} {os.getpid()} {time.time():.6f}\n")


@flow
def conformance_record(marker: str) -> None:
    note(marker, "start")


@flow
def conformance_flaky(marker: str, fail_times: int = 1) -> None:
    """Fails on its first ``fail_times`` executions (of this flow run), then completes."""
    note(marker, "start")
    run_id = os.environ.get("PREFECT__FLOW_RUN_ID", "?")
    with open(marker) as f:
        starts = sum(1 for line in f if line.split()[:2] == [run_id, "start"])
    if starts <= fail_times:
        raise RuntimeError(f"conformance_flaky fails on purpose (execution {starts})")


@flow
def conformance_sleep(marker: str, pause: float) -> None:
    note(marker, "start")
    time.sleep(pause)
    note(marker, "end")


@flow
def conformance_suspend(marker: str, timeout: int) -> None:
    """Suspends itself (the process exits); once resumed, runs again from the top, the
    suspend returns at once (the same pause key has fired), and the flow completes."""
    note(marker, "start")
    suspend_flow_run(timeout=timeout)
    note(marker, "end")


@flow
def conformance_pause(marker: str, timeout: int) -> None:
    """Blocks in a pause (the process keeps running, polling every second) until resumed."""
    note(marker, "start")
    pause_flow_run(timeout=timeout, poll_interval=1)
    note(marker, "end")


@flow
def conformance_exit0(marker: str) -> None:
    """Leaves without a word: no final state is reported, the exit status is 0."""
    note(marker, "start")
    os._exit(0)
