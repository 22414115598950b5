"""Reports the API could not take when they were made, kept on disk until it can.

A worker or the poller that cannot send a flow run's final state (Crashed, Cancelled,
Failed), its infrastructure pid, or the agent's run log lines because the API is
unreachable or failing leaves the report here: ``<spool>/outbox/``, one JSON file each,
written under a dot-name and renamed (a half-written report is never read). The poller
delivers them oldest first as soon as the API answers, and deletes each once the server
has it.

Delivered once: a state report reads the run first and is dropped when the run already
has that state type (a report the server took just before a crash, whose file was not
yet deleted) or a final state the report must not replace (the engine's own Completed
or Failed wins over a late Crashed or Cancelled). Only the poller delivers (it holds
the spool's poller lock), so two deliveries never race. Log lines are the exception:
Prefect's log API has no idempotency key, so a crash between posting a batch and
deleting its file would post that batch again.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from agent.api.client import FINAL_STATE_TYPES, PrefectClient
from agent.core.errors import ApiError, AuthError, NotFoundError, SpoolError, TransientApiError
from agent.observe import metrics
from agent.spool.files import read_json_object, replace_file_durably

log = logging.getLogger(__name__)

OUTBOX = "outbox"
VERSION = 1
STATE, PID, LOGS = "state", "pid", "logs"
KINDS = (STATE, PID, LOGS)
# A forced report (Cancelled) replaces what the engine said on its way down (Crashed on
# SIGTERM, Running), never an outcome the flow reached by itself.
KEEP_WHEN_FORCED = ("COMPLETED", "FAILED", "CANCELLED")


def worth_keeping(exc: ApiError) -> bool:
    """A failure a later delivery can succeed after: no answer, 429, 5xx, a credential
    being fixed. A 404 (run deleted) or other 4xx (the server refuses this report) will
    refuse it again."""
    if isinstance(exc, (TransientApiError, AuthError)):
        return True
    if isinstance(exc, NotFoundError):
        return False
    return exc.status is None or exc.status >= 500


@dataclass(frozen=True)
class Report:
    kind: str  # state | pid | logs
    flow_run_id: str | None = None
    state: dict[str, Any] | None = None
    force: bool = False
    infrastructure_pid: str | None = None
    entries: list[dict[str, Any]] = field(default_factory=list)
    source: str = ""  # who made it, for the log: "worker w1", "poller"
    created: float = 0.0

    def describe(self) -> str:
        if self.kind == STATE and self.state is not None:
            return f"{self.state.get('type')} for flow run {self.flow_run_id}"
        if self.kind == PID:
            return f"infrastructure pid for flow run {self.flow_run_id}"
        return f"{len(self.entries)} run log lines"

    def to_json(self) -> bytes:
        body: dict[str, Any] = {"version": VERSION, "kind": self.kind, "source": self.source}
        body["created"] = self.created
        if self.kind == STATE:
            body.update(flow_run_id=self.flow_run_id, state=self.state, force=self.force)
        elif self.kind == PID:
            body.update(flow_run_id=self.flow_run_id, infrastructure_pid=self.infrastructure_pid)
        else:
            body["entries"] = self.entries
        return json.dumps(body).encode()


def state_report(run_id: str, state: dict[str, Any], force: bool, source: str) -> Report:
    return Report(STATE, run_id, state=state, force=force, source=source)


def pid_report(run_id: str, infrastructure_pid: str, source: str) -> Report:
    return Report(PID, run_id, infrastructure_pid=infrastructure_pid, source=source)


def logs_report(entries: list[dict[str, Any]], source: str) -> Report:
    return Report(LOGS, entries=entries, source=source)


def parse(body: dict[str, Any]) -> Report:
    """A report read back; ValueError names what is wrong with a file."""
    if body.get("version") != VERSION:
        raise ValueError(f"unknown version {body.get('version')!r}")
    kind = body.get("kind")
    created = body.get("created")
    source = str(body.get("source") or "")
    stamp = float(created) if isinstance(created, (int, float)) else 0.0
    if kind == LOGS:
        entries = body.get("entries")
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise ValueError("entries is not a list of objects")
        return Report(LOGS, entries=entries, source=source, created=stamp)
    run_id = body.get("flow_run_id")
    if not isinstance(run_id, str) or not run_id:
        raise ValueError("no flow_run_id")
    if kind == STATE:
        state = body.get("state")
        if not isinstance(state, dict) or not isinstance(state.get("type"), str):
            raise ValueError("state is not an object with a type")
        force = body.get("force") is True
        return Report(STATE, run_id, state=state, force=force, source=source, created=stamp)
    if kind == PID:
        pid = body.get("infrastructure_pid")
        if not isinstance(pid, str):
            raise ValueError("infrastructure_pid is not a string")
        return Report(PID, run_id, infrastructure_pid=pid, source=source, created=stamp)
    raise ValueError(f"unknown kind {kind!r}")


class Outbox:
    def __init__(self, spool_root: Path) -> None:
        self.dir = spool_root / OUTBOX

    def put(self, report: Report) -> Path:
        """Keep a report durably; SpoolError when even that fails (the caller logs it)."""
        created = report.created or time.time()
        stamped = replace(report, created=created)
        name = f"{time.time_ns():020d}-{os.getpid()}-{report.kind}-{report.flow_run_id or 'logs'}"
        path = self.dir / f"{name}.json"
        try:
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            replace_file_durably(path, stamped.to_json())
        except OSError as exc:
            raise SpoolError(f"cannot keep a report in {self.dir}: {exc}") from exc
        metrics.OUTBOX_KEPT.labels(report.kind).inc()
        log.warning("%s kept in the outbox until the API takes it", stamped.describe())
        return path

    def paths(self) -> list[Path]:
        """Waiting reports, oldest first (names start with a nanosecond time)."""
        try:
            names = sorted(
                entry.name
                for entry in os.scandir(self.dir)
                if entry.name.endswith(".json") and not entry.name.startswith(".")
            )
        except FileNotFoundError:
            return []
        except OSError as exc:  # delivered when it can be listed again; never a crash
            log.error("cannot list the outbox %s: %s", self.dir, exc)
            return []
        return [self.dir / name for name in names]

    def count(self) -> int:
        return len(self.paths())

    def pending(self) -> Iterator[tuple[Path, Report | None, str]]:
        """Each waiting report, or None and why when its file is unusable."""
        for path in self.paths():
            body = read_json_object(path)
            if body is None:
                yield path, None, "not a JSON object"
                continue
            try:
                yield path, parse(body), ""
            except (ValueError, TypeError) as exc:
                yield path, None, str(exc)

    def deliver(self, client: PrefectClient) -> int:
        """Send what waits, oldest first. Stops (raising) when the API is away or our
        credential is refused: later reports would fail too. A report the server fails
        on its own (a 500 for that one) stays and the rest go on, so that one report
        cannot hold up the others, or the claims after them. Returns how many were done."""
        done = 0
        for path, report, problem in self.pending():
            if report is None:
                log.error("outbox file %s is unusable (%s): removed", path.name, problem)
                _remove(path)
                continue
            try:
                outcome = _deliver(client, report)
            except ApiError as exc:
                if isinstance(exc, (TransientApiError, AuthError)):
                    log.info("outbox: %s still waits: %s", report.describe(), exc)
                    raise
                if worth_keeping(exc):
                    log.error("outbox: %s failed, kept to retry: %s", report.describe(), exc)
                    continue
                outcome = f"dropped, the server refuses it: {exc}"
            log.info("outbox: %s (from %s): %s", report.describe(), report.source, outcome)
            metrics.OUTBOX_DELIVERED.labels(report.kind).inc()
            _remove(path)
            done += 1
        return done


def _deliver(client: PrefectClient, report: Report) -> str:
    if report.kind == LOGS:
        client.create_logs(report.entries)
        return "sent"
    assert report.flow_run_id is not None
    if report.kind == PID:
        assert report.infrastructure_pid is not None
        client.set_infrastructure_pid(report.flow_run_id, report.infrastructure_pid)
        return "sent"
    assert report.state is not None
    wanted = str(report.state["type"])
    current = (client.read_flow_run(report.flow_run_id).get("state") or {}).get("type")
    if current == wanted:
        return f"not sent, the run is {current} already"
    if current in FINAL_STATE_TYPES and (not report.force or current in KEEP_WHEN_FORCED):
        return f"not sent, the run is {current}: kept"
    answer = client.set_flow_run_state(report.flow_run_id, report.state, report.force)
    status = answer.get("status")
    if status == "ACCEPT":
        return "sent"
    now = (answer.get("state") or {}).get("type")
    return f"not accepted ({status}); the run is {now}"


def _remove(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError as exc:  # read-only spool: a state report delivered again is a no-op
        log.warning("cannot remove outbox file %s: %s", path, exc)
