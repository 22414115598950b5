"""Bad input reaching a worker: spec files that cannot be used, dropped into new/ as a
poller publishes them, and job variables of the wrong type on real flow runs. Each is
refused or failed on its own, says why where a user looks (failed/<id>.reason, the
worker's log, the run's state in Prefect), and the worker process stays up and runs the
next good run. Real server, real worker and poller processes, real files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent.core.jobvars import base_job_template, template_defaults
from agent.core.spec import JobSpec, dumps
from examples import demo
from tests.integration.conftest import Agent, executions
from tests.integration.harness import wait_for

REFUSED = "Unusable job spec: "


def start_worker(agent: Agent) -> tuple[subprocess.Popen[bytes], int]:
    """One worker; returns its process once it has registered, and its pid."""
    agent.start_worker()
    proc = agent.procs.popens[-1]
    registry = agent.spool / "workers" / "worker.json"
    wait_for(registry.exists, 60, "the worker to register")
    pid: int = json.loads(registry.read_text())["pid"]
    assert pid == proc.pid
    return proc, pid


def assert_worker_up(agent: Agent, proc: subprocess.Popen[bytes], pid: int) -> None:
    """The same worker process as before: never exited, never replaced."""
    assert proc.poll() is None, agent.procs.log("worker")
    assert json.loads((agent.spool / "workers" / "worker.json").read_text())["pid"] == pid
    assert "Traceback" not in agent.procs.log("worker")


def claim(agent: Agent, run_id: str) -> str:
    """Claim a run as the poller does (Scheduled -> our Pending); returns the transition id."""
    transition_id = str(uuid.uuid4())
    answer = demo.set_state(agent.client, run_id, demo.pending_state(transition_id))
    assert answer["status"] == "ACCEPT", answer
    return transition_id


def poller_spec(agent: Agent, run_id: str, transition_id: str) -> JobSpec:
    """The spec the poller writes for this claim (as Poller._spec builds it)."""
    flow_run = demo.read_run(agent.client, run_id)
    return JobSpec(
        flow_run_id=run_id,
        pool=agent.pool,
        transition_id=transition_id,
        agent_name="bad-specs-agent",
        flow_run_name=flow_run.get("name") or "",
        deployment_id=flow_run.get("deployment_id"),
        scheduled_start=flow_run.get("next_scheduled_start_time")
        or flow_run.get("expected_start_time"),
        claimed_at=time.time(),
        job_variables=template_defaults(base_job_template()),
    )


def as_body(spec: JobSpec) -> dict[str, Any]:
    """A spec file's JSON object, to be spoiled."""
    body: dict[str, Any] = json.loads(dumps(spec))
    return body


def publish(agent: Agent, run_id: str, data: bytes) -> None:
    """Put ``data`` in new/<run_id>.json as the poller publishes: written in full under a
    name the worker ignores, on the same filesystem, then renamed into place."""
    new = agent.spool / "new"
    tmp = new / f".{run_id}.json.tmp"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.rename(tmp, new / f"{run_id}.json")


def refused(agent: Agent, run_id: str) -> str:
    """The reason note of a refused spec, once the worker has moved it to failed/."""
    note = agent.spool / "failed" / f"{run_id}.reason"
    wait_for(
        lambda: note.exists() and (agent.spool / "failed" / f"{run_id}.json").exists(),
        60,
        f"the spec of {run_id} to be refused",
    )
    return note.read_text()


def spool_files(agent: Agent, state: str) -> list[str]:
    return sorted(p.name for p in (agent.spool / state).iterdir() if not p.name.startswith("."))


def test_bad_spec_files_are_refused_and_the_worker_keeps_going(agent: Agent, marker: Path) -> None:
    ours = agent.deploy("record")
    other_pool = f"other-{uuid.uuid4().hex[:10]}"
    agent.client.ensure_work_pool(other_pool, "local-agent", base_job_template())
    theirs = replace(agent, pool=other_pool).deploy("record", name="other")  # no agent polls it
    proc, pid = start_worker(agent)

    def claimed_run() -> tuple[str, JobSpec]:
        run_id = agent.run(ours, {"marker": str(marker)})
        return run_id, poller_spec(agent, run_id, claim(agent, run_id))

    # Files no worker can read: the run id is only their name.
    empty, _ = claimed_run()
    truncated, spec = claimed_run()
    whole = dumps(spec)
    garbage, _ = claimed_run()
    not_an_object, _ = claimed_run()
    unreadable = {
        empty: (b"", "spec file is empty"),
        truncated: (whole[: len(whole) // 2], "spec file is not valid JSON (truncated?): "),
        garbage: (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "spec file is not valid JSON (truncated?): "),
        not_an_object: (b'["not", "a", "spec"]', "spec file does not hold a JSON object"),
    }
    # Files that name their run: that run is failed, with the reason.
    version, spec = claimed_run()
    version_spec = {**as_body(spec), "version": 2}
    missing, spec = claimed_run()
    missing_spec = {k: v for k, v in as_body(spec).items() if k not in ("pool", "transition_id")}
    wrong_type, spec = claimed_run()
    wrong_type_spec = {**as_body(spec), "job_variables": ["not", "a", "mapping"]}
    misfiled, _ = claimed_run()
    elsewhere = agent.run(theirs, {"marker": str(marker)})  # the run the misfiled spec is for
    misfiled_spec = as_body(poller_spec(agent, elsewhere, str(uuid.uuid4())))
    named = {
        version: (version_spec, "unknown spec version 2 (expected 1)"),
        missing: (missing_spec, "spec is missing pool, transition_id"),
        wrong_type: (wrong_type_spec, "spec field job_variables has the wrong type"),
        misfiled: (misfiled_spec, f"spec is for flow run {elsewhere}, file is {misfiled}"),
    }
    # A well-formed spec of another work pool: refused, but its run is not ours to fail.
    foreign = agent.run(theirs, {"marker": str(marker)})
    foreign_spec = replace(poller_spec(agent, foreign, str(uuid.uuid4())), pool=other_pool)
    foreign_reason = f"spec is for work pool {other_pool!r}, this agent serves {agent.pool!r}"

    files: dict[str, bytes] = {run_id: data for run_id, (data, _) in unreadable.items()}
    files.update({run_id: json.dumps(spec).encode() for run_id, (spec, _) in named.items()})
    files[foreign] = dumps(foreign_spec)
    for run_id, data in files.items():
        publish(agent, run_id, data)

    expected = {run_id: why for run_id, (_, why) in (unreadable | named).items()}
    expected[foreign] = foreign_reason
    for run_id, why in expected.items():
        reason = refused(agent, run_id)
        assert reason.startswith(REFUSED + why), (run_id, reason)
        assert (agent.spool / "failed" / f"{run_id}.json").read_bytes() == files[run_id]
        log = agent.procs.log("worker")
        assert f"flow run {run_id}: {reason}; moved to failed/" in log, log
        assert f"flow run {run_id} started" not in log
        assert not (agent.spool / "runs" / run_id).exists()  # nothing was started
    assert spool_files(agent, "new") == []
    assert spool_files(agent, "cur") == []
    assert spool_files(agent, "done") == []

    # The worker reports Failed before it moves the spec, so the state is there now; an
    # unreadable spec fails the run its file is named after (the id it was claimed under).
    for run_id, (_, why) in (unreadable | named).items():
        state = demo.read_run(agent.client, run_id)["state"]
        assert state["type"] == "FAILED", (run_id, state)
        assert state["message"].startswith(REFUSED + why), (run_id, state["message"])
        assert agent.states(run_id) == ["SCHEDULED", "PENDING", "FAILED"]
    # Not ours: the other pool's runs, the one named inside the misfiled spec included,
    # are untouched.
    for run_id in (foreign, elsewhere):
        assert agent.states(run_id) == ["SCHEDULED"], run_id

    assert_worker_up(agent, proc, pid)
    agent.start_poller()
    good = agent.run(ours, {"marker": str(marker)})
    assert agent.wait([good], timeout=90)[good]["type"] == "COMPLETED"
    assert executions(marker) == [good]
    wait_for((agent.spool / "done" / f"{good}.json").exists, 30, "the good run to be settled")
    assert_worker_up(agent, proc, pid)


def test_truncated_spec_of_a_claimed_run_fails_that_run(agent: Agent, marker: Path) -> None:
    deployment = agent.deploy("record")
    proc, pid = start_worker(agent)
    agent.start_poller()
    # A worker alive (it holds its registry lock) but taking nothing: the poller claims
    # a run for it, and its spec waits in new/ to be damaged.
    os.kill(pid, signal.SIGSTOP)
    try:
        run_id = agent.run(deployment, {"marker": str(marker)})
        waiting = agent.spool / "new" / f"{run_id}.json"
        wait_for(waiting.exists, 60, "the run to be claimed and wait in new/")
        whole = waiting.read_bytes()
        json.loads(whole)  # the poller's own spec, complete
        publish(agent, run_id, whole[: len(whole) // 2])  # e.g. a disk that filled up
    finally:
        os.kill(pid, signal.SIGCONT)
    reason = refused(agent, run_id)
    assert reason.startswith(REFUSED + "spec file is not valid JSON (truncated?): ")
    assert f"flow run {run_id}: {reason}; moved to failed/" in agent.procs.log("worker")
    assert executions(marker) == []
    assert_worker_up(agent, proc, pid)
    # What a user of Prefect should see: the run Failed, saying why. The worker reports
    # before it moves the spec, so a few seconds are plenty.
    wait_for(
        lambda: demo.read_run(agent.client, run_id)["state"]["type"] == "FAILED",
        5,
        f"flow run {run_id} to be marked Failed (it was "
        f"{demo.read_run(agent.client, run_id)['state']['type']} when its spec was refused)",
    )
    assert demo.read_run(agent.client, run_id)["state"]["message"] == reason


# Job variables. The server checks them against the pool's base job template, so wrong
# types reach the agent only from a pool whose template does not declare them (an
# operator's edit, or a pool made by another tool): like this one.
LOOSE = ("env", "command", "labels")
BAD_JOB_VARIABLES: list[tuple[dict[str, object], str]] = [
    ({"env": {"A": 1}}, "job variable `env` must be a mapping of strings to strings"),
    ({"env": ["x"]}, "job variable `env` must be a mapping of strings to strings"),
    ({"command": ["python", "-m", "x"]}, "job variable `command` must be a string, got list"),
    ({"labels": "gpu"}, "job variable `labels` must be a list of strings, got str"),
    ({"labels": [1]}, "job variable `labels` must be a list of strings, got list"),
]


def test_wrong_typed_job_variables_fail_only_their_run(agent: Agent, marker: Path) -> None:
    template = base_job_template()
    for name in LOOSE:
        template["variables"]["properties"][name] = {"title": name}
    body = {"base_job_template": template}
    agent.client.request("update_work_pool", "PATCH", f"/work_pools/{agent.pool}", body)
    deployment = agent.deploy("record")
    proc, pid = start_worker(agent)
    agent.start_poller()

    good = [agent.run(deployment, {"marker": str(marker)})]
    bad: dict[str, str] = {}
    for job_variables, why in BAD_JOB_VARIABLES:
        run_id = agent.run(deployment, {"marker": str(marker)}, job_variables=job_variables)
        assert demo.read_run(agent.client, run_id)["job_variables"] == job_variables
        bad[run_id] = why
    good.append(agent.run(deployment, {"marker": str(marker)}))
    states = agent.wait([*good, *bad], timeout=180)

    log = agent.procs.log("worker")
    for run_id, why in bad.items():
        state = states[run_id]
        assert state["type"] == "FAILED", (run_id, state)
        assert state["message"] == f"Flow run {run_id} cannot start: {why}", state
        assert f"Flow run {run_id} cannot start: {why}" in log
        assert f"flow run {run_id} started" not in log
        assert agent.states(run_id) == ["SCHEDULED", "PENDING", "FAILED"]
        wait_for((agent.spool / "done" / f"{run_id}.outcome").exists, 30, "the run settled")
        outcome = json.loads((agent.spool / "done" / f"{run_id}.outcome").read_text())
        assert outcome["outcome"] == "failed"  # a good spec: settled, not refused
    for run_id in good:
        assert states[run_id]["type"] == "COMPLETED", (run_id, states[run_id])
    assert sorted(executions(marker)) == sorted(good)  # no bad run ever started
    assert spool_files(agent, "failed") == []
    assert_worker_up(agent, proc, pid)
