"""agent/api/outbox.py: reports kept on disk (real files in tmp_path): their kinds and
files, reading them back, files that cannot be used, and where a report cannot be kept."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path

import pytest

from agent.api.outbox import (
    OUTBOX,
    PID,
    STATE,
    VERSION,
    Outbox,
    Report,
    logs_report,
    parse,
    worth_keeping,
)
from agent.core.errors import ApiError, AuthError, NotFoundError, SpoolError, TransientApiError
from tests.unit.outbox_support import (
    CANCELLED,
    CRASHED,
    ENTRIES,
    FakeApi,
    api,
    deliver,
    kept,
    outbox,
)

__all__ = ["api", "outbox"]  # the fixtures, imported for pytest to find


def write_raw(outbox: Outbox, name: str, content: bytes) -> Path:
    outbox.dir.mkdir(parents=True, exist_ok=True)
    path = outbox.dir / name
    path.write_bytes(content)
    return path


# -- kinds, and reading them back -----------------------------------------------------------


def test_worth_keeping_what_a_later_delivery_can_succeed_after() -> None:
    assert worth_keeping(TransientApiError("c", "cannot reach"))
    assert worth_keeping(TransientApiError("c", "HTTP 503", 503))
    assert worth_keeping(AuthError("c", "HTTP 401", 401))
    assert worth_keeping(ApiError("c", "HTTP 500", 500))
    assert worth_keeping(ApiError("c", "no status"))
    assert not worth_keeping(NotFoundError("c", "HTTP 404", 404))
    assert not worth_keeping(ApiError("c", "HTTP 422", 422))
    assert not worth_keeping(ApiError("c", "HTTP 409", 409))


@pytest.mark.parametrize(
    "report",
    [
        Report(STATE, "r1", state=CRASHED, force=False, source="worker w1"),
        Report(STATE, "r1", state=CANCELLED, force=True, source="poller"),
        Report(PID, "r1", infrastructure_pid="host-1:4242", source="worker w2"),
        logs_report(ENTRIES, "worker w1"),
    ],
    ids=["state", "forced-state", "pid", "logs"],
)
def test_put_and_read_back_round_trip(outbox: Outbox, report: Report) -> None:
    assert parse(json.loads(report.to_json())) == report
    path = outbox.put(report)
    assert path.parent == outbox.dir == outbox.dir.parent / OUTBOX
    assert path.suffix == ".json" and f"-{report.kind}-" in path.name
    assert oct(outbox.dir.stat().st_mode & 0o777) == "0o700"
    body = json.loads(path.read_bytes())
    assert body["version"] == VERSION and body["kind"] == report.kind
    [(found_path, found, problem)] = list(outbox.pending())
    assert (found_path, problem) == (path, "")
    assert found is not None and found.created > 0
    assert found == replace(report, created=found.created)


def test_settles_round_trips_and_a_file_of_an_earlier_version_settles() -> None:
    kept = Report(STATE, "r1", state=CANCELLED, force=False, settles=False, source="poller")
    assert parse(json.loads(kept.to_json())).settles is False
    body = json.loads(kept.to_json())
    del body["settles"]  # written before the field existed
    assert parse(body).settles is True


def test_only_the_fields_of_its_kind_are_written() -> None:
    assert set(json.loads(Report(STATE, "r", state=CRASHED, force=True, source="s").to_json())) == {
        "version",
        "kind",
        "source",
        "created",
        "flow_run_id",
        "state",
        "force",
        "settles",
    }
    assert set(json.loads(Report(PID, "r", infrastructure_pid="h:1", source="s").to_json())) == {
        "version",
        "kind",
        "source",
        "created",
        "flow_run_id",
        "infrastructure_pid",
    }
    assert set(json.loads(logs_report(ENTRIES, "s").to_json())) == {
        "version",
        "kind",
        "source",
        "created",
        "entries",
    }


def test_a_dot_named_half_written_file_is_never_listed(outbox: Outbox, api: FakeApi) -> None:
    whole = outbox.put(Report(PID, "r1", infrastructure_pid="h:1", source="worker w1"))
    half = write_raw(outbox, "." + whole.name, b'{"version": 1, "kind": "pi')
    tmp = write_raw(outbox, f".{whole.name}.{os.getpid()}.tmp", b"{")
    other = write_raw(outbox, "notes.txt", b"not a report")
    assert outbox.paths() == [whole]
    assert outbox.count() == 1
    assert deliver(outbox, api) == 1
    assert outbox.count() == 0
    assert half.exists() and tmp.exists() and other.exists()  # never read, never removed


def test_missing_outbox_is_empty(outbox: Outbox, api: FakeApi) -> None:
    assert not outbox.dir.exists()
    assert outbox.paths() == [] and outbox.count() == 0
    assert deliver(outbox, api) == 0
    assert api.calls == []


def test_reports_are_listed_and_delivered_oldest_first(outbox: Outbox, api: FakeApi) -> None:
    first = outbox.put(Report(PID, "r1", infrastructure_pid="h:1", source="worker w1"))
    second = outbox.put(Report(STATE, "r2", state=CRASHED, force=False, source="worker w2"))
    third = outbox.put(logs_report(ENTRIES, "worker w1"))
    assert outbox.paths() == [first, second, third]
    # By the time in the name, not by when the file was written.
    older = write_raw(
        outbox,
        "00000000000000000001-1-pid-r0.json",
        Report(PID, "r0", infrastructure_pid="h:0", source="x").to_json(),
    )
    assert outbox.paths() == [older, first, second, third]
    assert deliver(outbox, api) == 4
    assert [c[0] for c in api.calls] == [
        "update_flow_run",
        "update_flow_run",
        "read_flow_run",
        "set_flow_run_state",
        "create_logs",
    ]
    assert [c[2] for c in api.named("update_flow_run")] == ["/flow_runs/r0", "/flow_runs/r1"]


# -- unusable files ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b'{"version": 1, "kind": "state", "flow_run_', "not a JSON object"),
        (b"[1, 2, 3]", "not a JSON object"),
        (b"", "not a JSON object"),
        (
            b'{"version": 99, "kind": "pid", "flow_run_id": "r", "infrastructure_pid": "h:1"}',
            "unknown version 99",
        ),
        (b'{"version": 1, "kind": "bogus", "flow_run_id": "r"}', "unknown kind 'bogus'"),
        (b'{"version": 1, "kind": "pid", "infrastructure_pid": "h:1"}', "no flow_run_id"),
        (
            b'{"version": 1, "kind": "state", "flow_run_id": "", "state": {"type": "CRASHED"}}',
            "no flow_run_id",
        ),
        (
            b'{"version": 1, "kind": "state", "flow_run_id": "r", "state": {"name": "x"}}',
            "state is not an object with a type",
        ),
        (
            b'{"version": 1, "kind": "pid", "flow_run_id": "r", "infrastructure_pid": 7}',
            "infrastructure_pid is not a string",
        ),
        (b'{"version": 1, "kind": "logs", "entries": ["x"]}', "entries is not a list of objects"),
    ],
)
def test_an_unusable_file_is_removed_with_an_error_and_blocks_nothing(
    outbox: Outbox,
    api: FakeApi,
    caplog: pytest.LogCaptureFixture,
    content: bytes,
    problem: str,
) -> None:
    bad = write_raw(outbox, "00000000000000000001-1-x-r.json", content)
    good = outbox.put(Report(PID, "r2", infrastructure_pid="h:2", source="worker w1"))
    assert outbox.paths() == [bad, good]
    with caplog.at_level(logging.ERROR, logger="agent.api.reporter"):
        assert deliver(outbox, api) == 1  # the good one; the bad one is not counted
    assert not bad.exists() and not good.exists()
    assert api.calls == [
        ("update_flow_run", "PATCH", "/flow_runs/r2", {"infrastructure_pid": "h:2"})
    ]
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert bad.name in record.getMessage()
    assert problem in record.getMessage()
    assert "removed" in record.getMessage()


# -- where a report cannot be kept -------------------------------------------------------------


def test_put_under_a_regular_file_is_a_spool_error(tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_bytes(b"")
    outbox = Outbox(blocker / "spool")
    before = kept(PID)
    with pytest.raises(SpoolError, match="cannot keep a report in") as info:
        outbox.put(Report(PID, "r1", infrastructure_pid="h:1", source="worker w1"))
    assert str(outbox.dir) in str(info.value)
    assert isinstance(info.value.__cause__, NotADirectoryError)
    assert kept(PID) == before
    assert blocker.is_file() and blocker.read_bytes() == b""


def test_put_where_the_outbox_is_a_file_is_a_spool_error(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    outbox.dir.write_bytes(b"")  # something else took the name
    with pytest.raises(SpoolError):
        outbox.put(Report(STATE, "r1", state=CRASHED, force=False, source="worker w1"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores directory permissions")
def test_put_into_a_read_only_outbox_is_a_spool_error(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    outbox.dir.mkdir()
    os.chmod(outbox.dir, 0o500)
    try:
        with pytest.raises(SpoolError):
            outbox.put(Report(STATE, "r1", state=CRASHED, force=False, source="worker w1"))
    finally:
        os.chmod(outbox.dir, 0o700)
    assert list(outbox.dir.iterdir()) == []
