"""A small client for the Prefect 3 REST API, on one keep-alive HTTP session
(agent/api/http.py: the standard library's sockets; requests cost a worker ~16 MiB).

Only transient failures (connection errors, timeouts, 429, 502, 503, 504) are
retried, with capped exponential backoff plus jitter, honouring ``Retry-After``, until
the call's deadline; every other 4xx fails fast with the call's name and the
server's reason.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any
from urllib.parse import quote

from agent.api import parse
from agent.api.http import HttpConnectionError, HttpError, HttpSession, HttpTimeout, Response
from agent.core.errors import (
    ApiError,
    ApiShapeError,
    AuthError,
    NotFoundError,
    TransientApiError,
)
from agent.core.reap import Beat
from agent.core.redact import redact_url
from agent.core.states import Deployment, FlowRun, StateAnswer, WorkPool
from agent.observe import metrics
from agent.settings import defaults
from agent.settings.config import ApiSettings

log = logging.getLogger(__name__)

TRANSIENT_STATUS = frozenset({429, 502, 503, 504})


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        import email.utils  # only for the rare HTTP-date form: the module costs ~2 MiB

        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, min(seconds, defaults.API_RETRY_AFTER_CAP))


def server_reason(response: Response) -> str:
    """The most useful words of an error response, kept short."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:300] or response.reason
    if isinstance(body, dict):
        for key in ("detail", "exception_message", "message"):
            if body.get(key):
                return str(body[key])[:300]
    return str(body)[:300]


def auth_header(settings: ApiSettings) -> dict[str, str]:
    if settings.key:
        return {"Authorization": f"Bearer {settings.key}"}
    if settings.auth_string:
        token = base64.b64encode(settings.auth_string.encode()).decode()
        return {"Authorization": f"Basic {token}"}
    return {}


def retry_wait(exc: TransientApiError, attempt: int, left: float) -> float:
    """Retry-After when the server gave one, else exponential backoff from the initial
    wait up to the cap plus up to the initial wait of jitter (so that many agents
    retrying one server do not retry in step); never past the call's deadline."""
    if exc.retry_after is not None:
        wait = exc.retry_after
    else:
        initial = defaults.API_RETRY_INITIAL_WAIT
        wait = min(defaults.API_RETRY_MAX_WAIT, initial * 2 ** (attempt - 1))
        wait += random.uniform(0, initial)
    return max(0.0, min(wait, left))


class PrefectClient:
    def __init__(
        self,
        settings: ApiSettings,
        session: HttpSession | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.session = session or HttpSession()
        self.session.headers.update(auth_header(settings))
        self.session.headers["X-PREFECT-API-VERSION"] = "0.8.4"
        self._sleep = sleep
        self._single_attempt = False
        # What messages and logs show of the URL: never its password.
        self._shown_url = redact_url(settings.url)

    @contextlib.contextmanager
    def single_attempt(self, enabled: bool = True) -> Iterator[None]:
        """Calls inside make one attempt each: during an outage the caller's own loop
        does the backoff, and notices the API's return by `reachable`."""
        previous, self._single_attempt = self._single_attempt, enabled
        try:
            yield
        finally:
            self._single_attempt = previous

    def reachable(self) -> bool:
        """One cheap ``GET /health``, short timeouts, no retries, never raises."""
        try:
            response = self.session.get(
                f"{self.settings.url}/health",
                timeout=(defaults.API_PROBE_TIMEOUT, defaults.API_PROBE_TIMEOUT),
            )
        except HttpError:
            return False
        return response.status_code == 200

    # -- transport -----------------------------------------------------------------

    def request(
        self,
        call: str,
        method: str,
        path: str,
        json: Any = None,
        deadline: float | None = None,
    ) -> Any:
        """One API call with retries of transient failures; returns the decoded body."""
        limit = self.settings.retry_deadline if deadline is None else deadline
        if self._single_attempt:
            limit = 0.0
        started = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                return self._once(call, method, path, json)
            except TransientApiError as exc:
                # One last attempt happens at the deadline; none after it.
                left = limit - (time.monotonic() - started)
                if left <= 0:
                    raise
                wait = retry_wait(exc, attempt, left)
                log.warning("Retrying %s in %.1f seconds: %s", call, wait, exc)
                self._sleep(wait)

    def _once(self, call: str, method: str, path: str, json: Any) -> Any:
        url = f"{self.settings.url}{path}"
        started = time.monotonic()
        try:
            timeout = (self.settings.connect_timeout, self.settings.read_timeout)
            if json is None:  # no body at all (as requests did), not a JSON null
                response = self.session.request(method, url, timeout=timeout)
            else:
                response = self.session.request(method, url, json=json, timeout=timeout)
        except HttpTimeout as exc:
            metrics.API_ERRORS.labels(call, "timeout").inc()
            raise TransientApiError(call, f"timed out talking to {self._shown_url}") from exc
        except HttpConnectionError as exc:
            metrics.API_ERRORS.labels(call, "connection").inc()
            raise TransientApiError(call, f"cannot reach {self._shown_url}: {exc}") from exc
        except HttpError as exc:
            # Not a failure that waiting cures (a proxy setting this client cannot use,
            # a request it refuses to send): said at once.
            metrics.API_ERRORS.labels(call, "connection").inc()
            raise ApiError(call, f"cannot talk to {self._shown_url}: {exc}") from exc
        finally:
            metrics.API_LATENCY.labels(call).observe(time.monotonic() - started)
        return self._decode(call, response)

    def _decode(self, call: str, response: Response) -> Any:
        status = response.status_code
        if status in TRANSIENT_STATUS:
            metrics.API_ERRORS.labels(call, "http_5xx" if status >= 500 else "http_4xx").inc()
            raise TransientApiError(
                call,
                f"HTTP {status}: {server_reason(response)}",
                status,
                parse_retry_after(response.headers.get("Retry-After")),
            )
        if status in (401, 403):
            metrics.API_ERRORS.labels(call, "auth").inc()
            what = "the API key or auth string is wrong" if status == 401 else "access denied"
            raise AuthError(call, f"HTTP {status}, {what}: {server_reason(response)}", status)
        if status == 404:
            metrics.API_ERRORS.labels(call, "http_4xx").inc()
            raise NotFoundError(call, f"HTTP 404: {server_reason(response)}", status)
        if status >= 400:
            metrics.API_ERRORS.labels(call, "http_5xx" if status >= 500 else "http_4xx").inc()
            raise ApiError(call, f"HTTP {status}: {server_reason(response)}", status)
        if status == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            # A proxy, captive portal or wrong port answering 200: not a crash, an error
            # that says what the URL reaches.
            metrics.API_ERRORS.labels(call, "not_prefect").inc()
            kind = response.headers.get("Content-Type", "").split(";")[0].strip() or "no JSON"
            raise ApiShapeError(
                call, f"{self._shown_url} does not look like a Prefect API: got {kind}", status
            ) from None

    # -- calls -----------------------------------------------------------------------

    def health(self) -> bool:
        return bool(self.request("health", "GET", "/health"))

    def read_work_pool(self, name: str) -> WorkPool:
        return parse.work_pool(
            "read_work_pool",
            self.request("read_work_pool", "GET", f"/work_pools/{quote(name, safe='')}"),
        )

    def create_work_pool(self, name: str, pool_type: str, template: dict[str, Any]) -> WorkPool:
        body = {"name": name, "type": pool_type, "base_job_template": template}
        return parse.work_pool(
            "create_work_pool", self.request("create_work_pool", "POST", "/work_pools/", body)
        )

    def ensure_work_pool(self, name: str, pool_type: str, template: dict[str, Any]) -> WorkPool:
        """Read the pool, creating it when missing (a 409 means another agent won)."""
        try:
            return self.read_work_pool(name)
        except NotFoundError:
            pass
        try:
            pool = self.create_work_pool(name, pool_type, template)
            log.info("created work pool %r of type %r", name, pool_type)
            return pool
        except ApiError as exc:
            if exc.status != 409:
                raise
        return self.read_work_pool(name)

    def heartbeat(self, pool: str, worker_name: str, interval: float) -> None:
        body = {"name": worker_name, "heartbeat_interval_seconds": int(interval)}
        self.request(
            "heartbeat", "POST", f"/work_pools/{quote(pool, safe='')}/workers/heartbeat", body
        )

    def read_workers(self, pool: str) -> list[Beat]:
        """The pool's workers: each agent's name and last heartbeat."""
        path = f"/work_pools/{quote(pool, safe='')}/workers/filter"
        return parse.workers("read_workers", self.request("read_workers", "POST", path, {}))

    def get_scheduled_flow_runs(
        self,
        pool: str,
        scheduled_before: datetime,
        work_queues: Iterable[str] = (),
        limit: int | None = None,
    ) -> list[FlowRun]:
        body: dict[str, Any] = {"scheduled_before": scheduled_before.isoformat()}
        queues = list(work_queues)
        if queues:
            body["work_queue_names"] = queues
        if limit is not None:
            body["limit"] = limit
        call = "get_scheduled_flow_runs"
        path = f"/work_pools/{quote(pool, safe='')}/get_scheduled_flow_runs"
        return parse.scheduled_runs(call, self.request(call, "POST", path, body))

    def read_deployment(self, deployment_id: str) -> Deployment:
        call = "read_deployment"
        return parse.deployment(call, self.request(call, "GET", f"/deployments/{deployment_id}"))

    def read_flow_run(self, flow_run_id: str, deadline: float | None = None) -> FlowRun:
        call, path = "read_flow_run", f"/flow_runs/{flow_run_id}"
        return parse.flow_run(call, self.request(call, "GET", path, deadline=deadline))

    def set_flow_run_state(
        self, flow_run_id: str, state: dict[str, Any], force: bool = False
    ) -> StateAnswer:
        """Propose a state. Only the reporter (agent/api/reporter.py) calls this."""
        body = {"state": state, "force": force}
        call, path = "set_flow_run_state", f"/flow_runs/{flow_run_id}/set_state"
        return parse.state_answer(call, self.request(call, "POST", path, body))

    def update_flow_run_labels(self, flow_run_id: str, labels: dict[str, str]) -> None:
        self.request("update_flow_run_labels", "PATCH", f"/flow_runs/{flow_run_id}/labels", labels)

    def set_infrastructure_pid(self, flow_run_id: str, infrastructure_pid: str) -> None:
        body = {"infrastructure_pid": infrastructure_pid}
        self.request("update_flow_run", "PATCH", f"/flow_runs/{flow_run_id}", body)

    def create_logs(self, entries: list[dict[str, Any]], deadline: float | None = None) -> None:
        """POST /logs/: a batch of run log entries (name, level, message, timestamp,
        flow_run_id, task_run_id)."""
        self.request("create_logs", "POST", "/logs/", entries, deadline)

    def read_variable(self, name_or_id: str) -> object:
        """A Prefect Variable's value, by UUID or by name; NotFoundError if neither exists."""
        if _is_uuid(name_or_id):
            try:
                found = self.request("read_variable", "GET", f"/variables/{name_or_id}")
                return parse.variable("read_variable", found)
            except NotFoundError:
                pass  # a variable may also be *named* like a UUID
        path = f"/variables/name/{quote(name_or_id, safe='')}"
        return parse.variable("read_variable", self.request("read_variable", "GET", path))

    def filter_flow_runs(
        self, body: dict[str, Any], call: str = "filter_flow_runs"
    ) -> list[FlowRun]:
        """``call`` names the look in metrics and fakes (stranded runs, cancellations)."""
        return parse.flow_runs(call, self.request(call, "POST", "/flow_runs/filter", body))


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True
