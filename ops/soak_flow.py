"""The flow that the soak (``python -m ops.soak``) deploys: record one execution, then
sleep a little.

It runs under the agent like any deployment (the deployment's pull step makes this
directory the working directory, and the engine imports ``soak_flow.py:soak``).
"""

from __future__ import annotations

import os
import time

from prefect import flow


@flow
def soak(executions: str, pause: float) -> None:
    """Append ``<flow run id> <pid> <unix time>`` to ``executions``, then sleep ``pause``
    seconds. The line is written first, in one ``write`` to a file opened with O_APPEND,
    so lines of concurrent runs never mix, and a run killed while it sleeps still counts
    as executed: every start of the flow's code leaves exactly one line."""
    line = f"{os.environ['PREFECT__FLOW_RUN_ID']} {os.getpid()} {time.time():.3f}\n"
    fd = os.open(executions, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
    time.sleep(pause)
