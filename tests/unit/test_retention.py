"""Retention: done/, failed/ and runs/ are pruned after --retention, by a poller duty
with an injectable clock, on real files; a finished spec keeps no --env values."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.cli.main import cli
from agent.core.errors import ConfigError
from agent.core.spec import JobSpec, dumps, loads
from agent.poller.retention import Retention, describe_seconds
from agent.settings import configfile, defaults
from agent.settings.config import parse_duration
from agent.spool.moves import CUR, DONE, FAILED, NEW, RUNS, Lease, Spool

DAY = 86400.0
NOW = 1_800_000_000.0


def _spec(run_id: str, env: dict[str, str] | None = None) -> bytes:
    return dumps(
        JobSpec(run_id, "pool", "claim-1", "agent", env_vars=env or {"SECRET_TOKEN": "s3cr3t"})
    )


def _taken(spool: Spool, env: dict[str, str] | None = None) -> Lease:
    run_id = str(uuid.uuid4())
    spool.write_ahead(run_id, _spec(run_id, env))
    spool.publish(run_id)
    lease = spool.take()
    assert lease is not None and lease.run_id == run_id
    return lease


def _age(path: Path, when: float) -> None:
    """Every file and folder under ``path`` last changed at ``when``."""
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        for name in [*filenames, *dirnames]:
            os.utime(Path(dirpath) / name, (when, when), follow_symlinks=False)
    os.utime(path, (when, when), follow_symlinks=False)


def _finished(spool: Spool, when: float) -> str:
    lease = _taken(spool)
    execution = spool.execution_dir(lease.run_id, "claim-1")
    (execution / "output.log").write_text("flow output\n")
    spool.finish(lease, "completed", "claim-1")
    for suffix in (".json", ".outcome"):
        _age(spool.dir(DONE) / f"{lease.run_id}{suffix}", when)
    _age(spool.dir(RUNS) / lease.run_id, when)
    return lease.run_id


def test_finished_runs_older_than_retention_are_deleted_from_done_and_runs(
    spool: Spool,
) -> None:
    old = _finished(spool, NOW - 8 * DAY)
    recent = _finished(spool, NOW - 6 * DAY)
    assert spool.contains(old) == DONE

    Retention(spool, 7 * DAY, clock=lambda: NOW).run()

    assert sorted(os.listdir(spool.dir(DONE))) == [f"{recent}.json", f"{recent}.outcome"]
    assert os.listdir(spool.dir(RUNS)) == [recent]


def test_refused_specs_older_than_retention_are_deleted_from_failed(spool: Spool) -> None:
    old, recent = _taken(spool), _taken(spool)
    spool.refuse(old, "Unusable job spec: test")
    spool.refuse(recent, "Unusable job spec: test")
    for name in os.listdir(spool.dir(FAILED)):
        _age(spool.dir(FAILED) / name, NOW - (8 if name.startswith(old.run_id) else 1) * DAY)

    Retention(spool, 7 * DAY, clock=lambda: NOW).run()

    assert sorted(os.listdir(spool.dir(FAILED))) == [
        f"{recent.run_id}.json",
        f"{recent.run_id}.reason",
    ]


def test_odd_entries_set_aside_in_failed_are_deleted_too_without_following_symlinks(
    spool: Spool, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("not the spool's")
    (spool.dir(FAILED) / "link.json").symlink_to(outside)
    folder = spool.dir(FAILED) / "folder.json"
    folder.mkdir()
    (folder / "inside").write_text("x")
    for name in ("link.json", "folder.json"):
        _age(spool.dir(FAILED) / name, NOW - 30 * DAY)

    Retention(spool, 7 * DAY, clock=lambda: NOW).run()

    assert os.listdir(spool.dir(FAILED)) == []
    assert (outside / "keep.txt").read_text() == "not the spool's"


def test_a_running_runs_folder_is_kept_however_old(spool: Spool, leases: list[Lease]) -> None:
    lease = _taken(spool)
    leases.append(lease)
    spool.execution_dir(lease.run_id, "claim-1")
    _age(spool.dir(RUNS) / lease.run_id, NOW - 30 * DAY)
    _age(spool.dir(CUR) / f"{lease.run_id}.json", NOW - 30 * DAY)

    Retention(spool, 7 * DAY, clock=lambda: NOW).run()

    assert os.listdir(spool.dir(RUNS)) == [lease.run_id]
    assert spool.run_ids(CUR) == [lease.run_id]


def test_a_runs_folder_with_a_recent_file_inside_is_kept(spool: Spool) -> None:
    run_id = _finished(spool, NOW - 30 * DAY)
    execution = spool.dir(RUNS) / run_id / "claim-1"
    os.utime(execution / "output.log", (NOW - DAY, NOW - DAY))

    Retention(spool, 7 * DAY, clock=lambda: NOW).run()

    assert os.listdir(spool.dir(RUNS)) == [run_id]


def test_waiting_specs_are_never_pruned(spool: Spool) -> None:
    run_id = str(uuid.uuid4())
    spool.write_ahead(run_id, _spec(run_id))
    spool.publish(run_id)
    _age(spool.dir(NEW) / f"{run_id}.json", NOW - 30 * DAY)

    Retention(spool, 7 * DAY, clock=lambda: NOW).run()

    assert spool.run_ids(NEW) == [run_id]


def test_the_retention_duty_logs_how_many_entries_it_deleted(
    spool: Spool, caplog: pytest.LogCaptureFixture
) -> None:
    _finished(spool, NOW - 8 * DAY)
    with caplog.at_level("INFO"):
        Retention(spool, 7 * DAY, clock=lambda: NOW).run()
        Retention(spool, 7 * DAY, clock=lambda: NOW).run()  # nothing left: says nothing
    lines = [r.getMessage() for r in caplog.records if "retention" in r.getMessage()]
    assert lines == [f"retention: deleted 3 finished entries older than 7d from spool {spool.root}"]


def test_a_finished_spec_keeps_no_env_values(spool: Spool) -> None:
    lease = _taken(spool, {"SECRET_TOKEN": "s3cr3t-value"})
    spool.finish(lease, "completed")

    data = (spool.dir(DONE) / f"{lease.run_id}.json").read_bytes()
    assert b"s3cr3t-value" not in data
    assert loads(data).env_vars == {}  # still a valid spec
    assert stat_mode(spool.dir(DONE) / f"{lease.run_id}.json") == 0o600


def test_a_refused_spec_keeps_no_env_values(spool: Spool) -> None:
    lease = _taken(spool, {"SECRET_TOKEN": "s3cr3t-value"})
    spool.refuse(lease, "Unusable job spec: test")

    assert b"s3cr3t-value" not in (spool.dir(FAILED) / f"{lease.run_id}.json").read_bytes()


def test_a_cancelled_waiting_spec_keeps_no_env_values(spool: Spool) -> None:
    run_id = str(uuid.uuid4())
    spool.write_ahead(run_id, _spec(run_id, {"SECRET_TOKEN": "s3cr3t-value"}))
    spool.publish(run_id)
    assert spool.cancel_waiting(run_id, "cancelled in Prefect")

    body = json.loads((spool.dir(DONE) / f"{run_id}.json").read_bytes())
    assert body["env_vars"] == {}


def test_an_unparsable_refused_spec_is_moved_as_it_is(spool: Spool) -> None:
    run_id = str(uuid.uuid4())
    spool.write_ahead(run_id, b"{not json")
    spool.publish(run_id)
    lease = spool.take()
    assert lease is not None
    spool.refuse(lease, "Unusable job spec: not JSON")
    assert (spool.dir(FAILED) / f"{run_id}.json").read_bytes() == b"{not json"


def stat_mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("7d", 7 * DAY), ("12h", 43200.0), ("30m", 1800.0), ("90s", 90.0), ("3600", 3600.0)],
)
def test_retention_takes_days_hours_minutes_or_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text, "--retention") == seconds


@pytest.mark.parametrize("text", ["", "0", "-1d", "soon", "nan", "infd", "7w"])
def test_a_bad_retention_is_refused_naming_the_option(text: str) -> None:
    with pytest.raises(ConfigError, match="--retention"):
        parse_duration(text, "--retention")


def test_retention_defaults_to_seven_days_and_is_named_in_help() -> None:
    assert defaults.RETENTION_SECONDS == 7 * DAY
    result = CliRunner().invoke(cli, ["local", "start", "--help"])
    assert "--retention" in result.output and "AGENT_RETENTION" in result.output


def test_retention_comes_from_the_environment_or_the_config_file(tmp_path: Path) -> None:
    env = {"PREFECT_API_URL": "http://127.0.0.1:9/api", "AGENT_POOL": "p"}
    env["AGENT_SPOOL_DIR"] = str(tmp_path / "spool")
    result = CliRunner().invoke(
        cli, ["local", "start", "--print-config"], env={**env, "AGENT_RETENTION": "36h"}
    )
    assert result.exit_code == 0, result.output
    assert "retention" in result.output and "36h" in result.output
    assert configfile.check({"retention": "2d"}, "f.toml") == {"retention": "2d"}
    with pytest.raises(ConfigError, match="retention"):
        configfile.check({"retention": True}, "f.toml")


def test_describe_seconds_uses_the_largest_whole_unit() -> None:
    assert [describe_seconds(s) for s in (7 * DAY, 36 * 3600.0, 5400.0, 45.0)] == [
        "7d",
        "36h",
        "90m",
        "45s",
    ]


def test_the_poller_prunes_as_a_duty_that_needs_no_api_once_an_hour(tmp_path: Path) -> None:
    from agent.poller.loop import Poller
    from agent.settings.config import ApiSettings, PollerConfig
    from tests.unit.test_health import FakeClient, FakeRegistry

    spool = Spool(tmp_path / "spool")
    spool.ensure()
    config = PollerConfig(
        api=ApiSettings(url="http://prefect.invalid/api"),
        pool="pool",
        spool_dir=spool.root,
        retention=3600.0,
    )
    poller = Poller(config, FakeClient(), spool, FakeRegistry())
    duty = poller.duty("retention")
    assert (duty.every, duty.needs_api) == (defaults.RETENTION_CHECK_SECONDS, False)
    assert [d.name for d in poller.duties].index("retention") < [
        d.name for d in poller.duties
    ].index("claim")
    old = _finished(spool, time.time() - 7200)
    poller.tick()
    assert spool.contains(old) is None
