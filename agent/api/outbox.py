"""Reports the API could not take when they were made, kept on disk until it can.

A worker or the poller that cannot send a flow run's final state (Crashed, Cancelled,
Failed), its infrastructure pid, or the agent's run log lines because the API is
unreachable or failing leaves the report here: ``<spool>/outbox/``, one JSON file each,
written under a dot-name and renamed (a half-written report is never read). The poller
delivers them oldest first as soon as the API answers, and deletes each once the server
has it.

Delivered once: a state report reads the run first and is dropped when the run already
has that state type (a report the server took just before a crash, whose file was not
yet deleted) or a state `lifecycle.supersedes` says it must not replace (the engine's own
Completed or Failed wins over a late Crashed or Cancelled). Delivery is the reporter's
(agent/api/reporter.py): this module is the store. Log lines are the exception:
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

from agent.core.errors import (
    ApiError,
    ApiShapeError,
    AuthError,
    NotFoundError,
    SpoolError,
    TransientApiError,
)
from agent.observe import metrics
from agent.spool.files import read_json_object, replace_file_durably

log = logging.getLogger(__name__)

OUTBOX = "outbox"
VERSION = 1
STATE, PID, LOGS = "state", "pid", "logs"
KINDS = (STATE, PID, LOGS)


def worth_keeping(exc: ApiError) -> bool:
    """A failure a later delivery can succeed after: no answer, 429, 5xx, a credential
    being fixed. A 404 (run deleted) or other 4xx (the server refuses this report) will
    refuse it again."""
    if isinstance(exc, (TransientApiError, AuthError, ApiShapeError)):
        return True  # ApiShapeError: the URL reaches something else, until it is fixed
    if isinstance(exc, NotFoundError):
        return False
    return exc.status is None or exc.status >= 500


@dataclass(frozen=True)
class Report:
    kind: str  # state | pid | logs
    flow_run_id: str | None = None
    state: dict[str, Any] | None = None
    force: bool = False
    settles: bool = True  # counted in agent_flow_runs_finished_total once delivered
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
            body["settles"] = self.settles
        elif self.kind == PID:
            body.update(flow_run_id=self.flow_run_id, infrastructure_pid=self.infrastructure_pid)
        else:
            body["entries"] = self.entries
        return json.dumps(body).encode()


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
        settles = body.get("settles") is not False  # absent in files of earlier versions
        return Report(
            STATE, run_id, state=state, force=force, settles=settles, source=source, created=stamp
        )
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

    def remove(self, path: Path) -> None:
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:  # read-only spool: a state report delivered again is a no-op
            log.warning("cannot remove outbox file %s: %s", path, exc)
