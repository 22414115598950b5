"""The flow the cancellation part deploys (from this directory). It records the pid of
the process it runs in, so that the benchmark can tell when that process is gone however
the side started it (exec'd, or forked from a warm parent whose /proc environ does not
show the run's id)."""

from __future__ import annotations

import os
import time
from pathlib import Path

from prefect import flow


@flow
def hold(pidfile: str, pause: float = 300.0) -> None:
    """Write this process's pid to ``pidfile`` (atomically), then wait to be cancelled."""
    partial = Path(f"{pidfile}.partial")
    partial.write_text(str(os.getpid()))
    partial.rename(pidfile)
    time.sleep(pause)
