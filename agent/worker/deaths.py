"""How workers that died holding a spec ended, from supervisord's record of them.

The dying process tells nothing (a SIGKILL, a segfault, the OOM killer leave it no
chance); its parent, supervisord, logs each exit ("exited: agent-worker_00 (terminated
by SIGKILL; not expected)"). Read over supervisord's RPC (``readLog``), which every
supervised process can reach through ``SUPERVISOR_SERVER_URL``. Best effort: without
supervisord, or when its log says nothing, the reason says that how is not recorded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from typing import Any

from agent.core.poison import Take, how_died

log = logging.getLogger(__name__)

LOG_TAIL_BYTES = 1 << 20
# supervisord logs an exit when it reaps the process, an instant after the kernel freed
# the lease that let this worker take the spec: wait that long for the last one.
WAIT_FOR_LOG_SECONDS = 3.0


def _supervisor_log(environ: Mapping[str, str]) -> str | None:
    if not environ.get("SUPERVISOR_SERVER_URL"):
        return None
    try:
        # Imported here: it pulls in xmlrpc and http.client, which only a worker that
        # died before needs (the first take after the death).
        from supervisor import childutils

        rpc: Any = childutils.getRPCInterface(dict(environ))
        text = rpc.supervisor.readLog(-LOG_TAIL_BYTES, 0)
    except Exception as exc:  # xmlrpc Fault (no log file), socket errors: best effort
        log.warning("cannot read supervisord's log: %s", exc)
        return None
    return text if isinstance(text, str) else None


def how_they_died(
    environ: Mapping[str, str], died: Sequence[Take], wait: float = WAIT_FOR_LOG_SECONDS
) -> dict[int, str]:
    """pid -> how it ended ("terminated by SIGKILL", "exit status 1"), for those known."""
    names = sorted({t.worker for t in died})
    deadline = time.monotonic() + wait
    while True:
        text = _supervisor_log(environ)
        if text is None:
            return {}
        found = how_died(text, names)
        if all(t.pid in found for t in died) or time.monotonic() >= deadline:
            return found
        time.sleep(0.2)
