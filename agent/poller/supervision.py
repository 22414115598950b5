"""Talking to supervisord from inside it: the poller starts the worker group.

``supervisorctl start agent`` can only name one process; starting the workers from
the poller makes that one command start the whole agent, while ``stop agent`` stops
only the poller, so runs already claimed still finish in the workers.
"""

from __future__ import annotations

import logging
from typing import Any

from supervisor import childutils

log = logging.getLogger(__name__)


def start_group(server_url: str, group: str) -> None:
    """Start every process of ``group`` that is not running; failures are only logged."""
    try:
        rpc: Any = childutils.getRPCInterface({"SUPERVISOR_SERVER_URL": server_url})
        results = rpc.supervisor.startProcessGroup(group, False)
    except Exception as exc:  # xmlrpc Fault, socket errors: the poller works without it
        log.warning("could not start supervisor group %r: %s", group, exc)
        return
    started = [r["name"] for r in results if r.get("status") == 80]  # SupervisorFaults.SUCCESS
    if started:
        log.info("started worker processes: %s", ", ".join(started))
