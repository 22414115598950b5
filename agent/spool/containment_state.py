"""What containment this host's workers found (cgroup v2, v1 or none, and why), kept in
the spool root: workers write it at start, `agent status` and the health endpoint read
it. One small JSON file; a failure to write it never stops a worker."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from agent.spool.files import read_json_object, replace_file_durably

log = logging.getLogger(__name__)

STATE_FILE = "containment.json"
FIELDS = ("version", "reason", "mode")


def record(
    spool_root: Path, version: str, reason: str, mode: str, roots: list[Path] | None = None
) -> None:
    """``roots``: where the runs' cgroups are (one per hierarchy), for the poller."""
    body = {
        "version": version,
        "reason": reason,
        "mode": mode,
        "roots": [str(r) for r in roots or []],
    }
    try:
        spool_root.mkdir(mode=0o700, parents=True, exist_ok=True)  # a worker may start first
        replace_file_durably(spool_root / STATE_FILE, json.dumps(body).encode())
    except OSError as exc:
        log.warning("cannot record the host's containment in the spool: %s", exc)


def read(spool_root: Path) -> dict[str, str] | None:
    """{version, reason, mode}; None before any worker has started."""
    body = read_json_object(spool_root / STATE_FILE)
    if not body:
        return None
    return {k: str(body.get(k, "")) for k in FIELDS}


def roots(spool_root: Path) -> list[Path]:
    """Where the workers put the runs' cgroups; empty without containment."""
    body = read_json_object(spool_root / STATE_FILE) or {}
    found = body.get("roots")
    return [Path(r) for r in found if isinstance(r, str)] if isinstance(found, list) else []
