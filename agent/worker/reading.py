"""Reading a claimed run from Prefect for the worker: waiting while the API is away
(the engine could not report either), and whether its deployment still exists."""

from __future__ import annotations

import logging
import threading
import time

from agent.api.client import PrefectClient
from agent.core.errors import ApiError, NotFoundError
from agent.core.spec import JobSpec
from agent.core.states import FlowRun
from agent.settings import defaults
from agent.spool.moves import Spool

log = logging.getLogger(__name__)


class Unread:
    """The run could not be read because the worker is stopping."""


class CancelAsked:
    """The poller asked for the run to be stopped before it could be read."""


UNREAD, CANCEL = Unread(), CancelAsked()


class RunReader:
    def __init__(self, client: PrefectClient, spool: Spool, stop: threading.Event) -> None:
        self.client, self.spool, self._stop = client, spool, stop

    def read(
        self, spec: JobSpec, when: str, cancellable: bool = False
    ) -> FlowRun | Unread | CancelAsked | None:
        """The run as Prefect shows it (None: deleted), waiting while the API is away
        (probing every second); UNREAD if the worker stops meanwhile. ``cancellable``:
        the poller's cancel request (it saw Cancelling before the outage) ends the wait
        with CANCEL."""
        run_id = spec.flow_run_id
        waiting_since: float | None = None
        while True:
            if cancellable and self.spool.cancel_requested(run_id, spec.transition_id):
                return CANCEL
            try:
                flow_run = self.client.read_flow_run(run_id, deadline=0.0)
                break
            except NotFoundError:
                log.warning("flow run %s no longer exists in Prefect", run_id)
                return None
            except ApiError as exc:
                if waiting_since is None:
                    waiting_since = time.monotonic()
                    log.warning(
                        "flow run %s waits for the Prefect API to %s: %s", run_id, when, exc
                    )
            if self._stop.wait(defaults.API_PROBE_SECONDS):
                return UNREAD
        if waiting_since is not None:
            waited = time.monotonic() - waiting_since
            log.info("the Prefect API answers again after %.0fs: %s %s", waited, when, run_id)
        return flow_run

    def deployment_gone(self, deployment_id: str | None) -> bool:
        if not deployment_id:
            return False
        try:
            self.client.read_deployment(deployment_id)
        except NotFoundError:
            return True
        except ApiError as exc:  # the engine will say what it finds
            log.warning("cannot read deployment %s: %s", deployment_id, exc)
        return False
