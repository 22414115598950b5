"""Each take of a spec, recorded beside its lease: ``cur/<id>.takes``.

A worker records "taking <run> (pid, time)" durably before it works on a spec, and marks
the take when it lets go of the spec without retiring it (stopping, a spool error) and
when the flow is about to start. So whoever takes the spec next knows, without any help
from a worker that died, how many workers died holding it before its flow started
(agent/core/poison.py decides). The record is for one spec's bytes (a later claim of the
run writes a new spec: its record starts afresh) and goes when the spec is retired.
"""

from __future__ import annotations

import importlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from agent.core.poison import Take
from agent.spool.files import read_json_object, replace_file_durably

SUFFIX = ".takes"


def _sha256() -> Callable[[bytes], Any]:
    """CPython's own SHA-256 (the same digests): hashlib's loads OpenSSL's libcrypto,
    ~3.7 MiB in every worker, for one digest per take."""
    for name in ("_sha2", "_sha256"):  # 3.12+, 3.11
        try:
            return cast(Callable[[bytes], Any], importlib.import_module(name).sha256)
        except (ImportError, AttributeError):
            continue
    import hashlib  # a build without them

    return hashlib.sha256


_SHA256 = _sha256()


def _digest(data: bytes) -> str:
    return str(_SHA256(data).hexdigest())


def _take(raw: object) -> Take | None:
    if not isinstance(raw, dict):
        return None
    worker, pid, at = raw.get("worker"), raw.get("pid"), raw.get("at")
    if not isinstance(worker, str) or not isinstance(pid, int) or isinstance(pid, bool):
        return None
    if isinstance(at, bool) or not isinstance(at, int | float):
        return None
    return Take(worker, pid, float(at), raw.get("let_go") is True)


class Takes:
    """The take records of specs in ``cur/``."""

    def __init__(self, cur_dir: Path) -> None:
        self.dir = cur_dir

    def path(self, run_id: str) -> Path:
        return self.dir / f"{run_id}{SUFFIX}"

    def _read(self, run_id: str, data: bytes) -> dict[str, Any]:
        """This spec's record; a record of other bytes (a leftover) does not count."""
        body = read_json_object(self.path(run_id)) or {}
        if body.get("digest") != _digest(data):
            return {"digest": _digest(data), "started": False, "takes": []}
        return body

    def record(self, run_id: str, data: bytes, worker: str) -> tuple[list[Take], bool]:
        """Record this process's take, durably; returns the earlier takes and whether the
        flow had been started. OSError when it cannot be written (then nothing is run)."""
        body = self._read(run_id, data)
        raw = body.get("takes")
        earlier = [t for t in (_take(r) for r in raw) if t] if isinstance(raw, list) else []
        started = body.get("started") is True
        mine = {"worker": worker, "pid": os.getpid(), "at": time.time()}
        record = {**body, "takes": [*(raw if isinstance(raw, list) else []), mine][-20:]}
        replace_file_durably(self.path(run_id), json.dumps(record).encode())
        return earlier, started

    def _update(self, run_id: str, data: bytes, **changes: object) -> None:
        body = read_json_object(self.path(run_id))
        if body is None or body.get("digest") != _digest(data):
            return  # retired meanwhile, or never recorded
        body.update(changes)
        replace_file_durably(self.path(run_id), json.dumps(body).encode())

    def starting(self, run_id: str, data: bytes) -> None:
        """The flow is about to start: from now on a death is no longer the spec's."""
        self._update(run_id, data, started=True)

    def let_go(self, run_id: str, data: bytes) -> None:
        """This process leaves the spec in cur/ alive: its take is no death."""
        body = read_json_object(self.path(run_id))
        if body is None or body.get("digest") != _digest(data):
            return
        raw = body.get("takes")
        takes = raw if isinstance(raw, list) else []
        for entry in reversed(takes):
            if isinstance(entry, dict) and entry.get("pid") == os.getpid():
                entry["let_go"] = True
                break
        self._update(run_id, data, takes=takes)

    def forget(self, run_id: str) -> None:
        self.path(run_id).unlink(missing_ok=True)
