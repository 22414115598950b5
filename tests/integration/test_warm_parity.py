"""Warm launches (agent/worker/warm.py) against a real server: a run forked from the warm
process sees what a cold start shows it, runs, ends and is cancelled as a cold one is; a
warm process killed between runs does not stop the next run."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
from pathlib import Path
from typing import Any

from agent.worker.launcher import read_status
from agent.worker.procid import ProcessId
from examples import demo
from tests.integration.conftest import FLOWS_DIR, Agent, executions
from tests.integration.harness import execution, wait_for
from tests.integration.warm_support import (
    alive,
    children,
    idle,
    settled,
    start_agent,
    started_line,
    the_warm_parent,
    threads,
    warm_parents,
)

LAZY_THREADS = ("EventsWorkerThread", "APILogWorkerThread")


# -- what the tests look at -----------------------------------------------------------


def dump(path: Path) -> dict[str, Any]:
    seen: dict[str, Any] = json.loads(path.read_text())
    return seen


def comparable(seen: dict[str, Any]) -> dict[str, Any]:
    """What must be the same for the same run, cold or warm: all but the run's own pids and
    id, and what the interpreter fixed when it started, before any run: its command line
    (sys.orig_argv, as /proc/<pid>/cmdline) and its string hash seed (known differences:
    every run forked from one warm process hashes strings alike)."""
    same = {k: v for k, v in seen.items() if k not in ("pid", "ppid", "orig_argv", "str_hash")}
    same["environ"] = {k: v for k, v in seen["environ"].items() if k != "PREFECT__FLOW_RUN_ID"}
    # Prefect starts these on its first event or API log line: there by then, or not yet.
    same["threads"] = [t for t in seen["threads"] if t not in LAZY_THREADS]
    del same["tasks"]
    return same


# -- the tests ------------------------------------------------------------------------------


def test_a_warm_run_sees_runs_and_ends_exactly_as_a_cold_run(agent: Agent) -> None:
    """The same runs on a --launch cold and a --launch warm worker; variables set at each
    level (worker environment < agent --env < deployment env < run env) including
    Prefect's settings, PREFECT_HOME (its profile and logging.yml), TZ and PYTHONPATH."""
    home = agent.tmp / "run-home"  # a run's own PREFECT_HOME: profile and logging config
    home.mkdir()
    (home / "profiles.toml").write_text(
        'active = "t"\n[profiles.t]\nPREFECT_TASKS_DEFAULT_RETRY_DELAY_SECONDS = "7"\n'
    )
    prefect = importlib.util.find_spec("prefect")  # not imported: only its files are read
    assert prefect is not None and prefect.origin is not None
    default_logging = Path(prefect.origin).parent / "logging" / "logging.yml"
    (home / "logging.yml").write_text(
        default_logging.read_text().replace(
            "\nloggers:\n", "\nloggers:\n  agent_test_marker:\n    level: ERROR\n", 1
        )
    )
    work, extra, libs = agent.tmp / "work", agent.tmp / "extra", agent.tmp / "libs"
    for directory in (work, extra, libs):
        directory.mkdir()
    (work / "prefect.toml").write_text("[flows]\ndefault_retries = 5\n")  # read from the cwd
    imports = agent.tmp / "imports.txt"  # pids that imported the flow's module
    # What the warm process itself starts with: each run must see its own values instead.
    worker_env = {
        "PREFECT_LOGGING_LEVEL": "ERROR",
        "TZ": "Europe/Paris",
        "MY_VAR": "worker",
        "PREFECT_TASKS_DEFAULT_RETRIES": "2",
        "AGENT_TEST_IMPORT_MARKER": str(imports),
    }
    poller_args = (
        *("--show-flow-logs", "-e", "PREFECT_LOGGING_LEVEL=INFO", "-e", "TZ=Asia/Tokyo"),
        *("-e", "AGENT_VAR=agent", "--import-path", str(libs)),
    )
    run_env = {
        "PREFECT_HOME": str(home),
        "PREFECT_LOGGING_LEVEL": "CRITICAL",
        "TZ": "America/New_York",
        "PYTHONPATH": f"{extra}:{libs}",
        "RUN_VAR": "run",
    }
    modes = ("cold", "warm")
    spools, workers, runs = {}, {}, {}
    for mode in modes:
        spools[mode], workers[mode] = start_agent(
            agent, mode, env=worker_env, poller_args=poller_args
        )
    for mode in modes:
        dep_env = {"MY_VAR": "deployment", "PREFECT_RESULTS_PERSIST_BY_DEFAULT": "true"}
        introspect = agent.deploy(
            "introspect", job_variables={"labels": [mode], "env": dep_env}, name=mode
        )
        hard_exit = agent.deploy("hard_exit", job_variables={"labels": [mode]}, name=mode)
        runs[mode] = {
            "own": agent.run(
                introspect,
                {"out": str(agent.tmp / f"{mode}-own.json")},
                job_variables={"working_dir": str(work), "env": run_env},
            ),
            "plain": agent.run(introspect, {"out": str(agent.tmp / f"{mode}-plain.json")}),
            "exit3": agent.run(hard_exit, {"code": 3}),
        }
    every = [run_id for mode in modes for run_id in runs[mode].values()]
    states = agent.wait(every, timeout=180)
    for mode in modes:
        for what in ("own", "plain"):
            assert states[runs[mode][what]]["type"] == "COMPLETED", (mode, what)
            assert settled(agent, spools[mode], runs[mode][what])["type"] == "COMPLETED"

    # Cold and warm saw the same, run by run, apart from their pids and run ids.
    seen = {(m, w): dump(agent.tmp / f"{m}-{w}.json") for m in modes for w in ("own", "plain")}
    for what in ("own", "plain"):
        cold, warm = comparable(seen["cold", what]), comparable(seen["warm", what])
        for key in cold:
            assert warm[key] == cold[key], (what, key)
        assert warm == cold
    # ... and what they saw is the run's own, not the warm process's.
    own, plain = seen["warm", "own"], seen["warm", "plain"]
    assert {k: own["environ"].get(k) for k in ("MY_VAR", "AGENT_VAR", "RUN_VAR", "TZ")} == {
        "MY_VAR": "deployment",
        "AGENT_VAR": "agent",
        "RUN_VAR": "run",
        "TZ": "America/New_York",
    }
    settings = own["settings"]
    assert settings["home"] == str(home)
    assert settings["logging"]["level"] == "CRITICAL"
    assert settings["results"]["persist_by_default"] is True
    assert settings["tasks"]["default_retries"] == 2  # the worker's environment
    assert settings["tasks"]["default_retry_delay_seconds"] == 7  # the run's profile
    assert settings["flows"]["default_retries"] == 5  # the run's working_dir/prefect.toml
    assert own["marker_log_level"] == 40  # the run's PREFECT_HOME/logging.yml
    assert own["tzname"] == ["EST", "EDT"]
    assert own["local_new_year"] == ["2023-12-31 19:00:00-05:00"] * 2
    assert own["prefect_log_level"] == 50
    start = own["sys_path"].index(str(work))  # the run's cwd, then its PYTHONPATH
    assert own["sys_path"][start : start + 3] == [str(work), str(extra), str(libs)]
    assert plain["settings"]["home"] == agent.env["PREFECT_HOME"]
    assert plain["settings"]["logging"]["level"] == "INFO"
    assert plain["settings"]["tasks"]["default_retry_delay_seconds"] == 0
    assert plain["settings"]["flows"]["default_retries"] == 0
    assert plain["marker_log_level"] == 0
    assert plain["tzname"] == ["JST", "JST"]
    assert plain["prefect_log_level"] == 20
    assert str(libs) in plain["sys_path"]
    for mine in (own, plain):
        assert mine["agent_modules"] == []
        assert mine["main"][0] == "__main__"
        assert mine["main"][1].endswith("/prefect/engine.py")
        assert mine["cwd"] == str(FLOWS_DIR)  # the deployment's pull step went there

    # The warm runs were forked, the cold ones not; the warm process never imported the
    # flow's module and has no thread but its own.
    for mode in modes:
        for what, run_id in runs[mode].items():
            line = started_line(agent, run_id)
            assert line.endswith(" (warm)") == (mode == "warm"), (what, line)
            assert "cold start" not in line
    parent = the_warm_parent(workers["warm"])
    assert warm_parents(workers["cold"]) == []
    wait_for(lambda: idle(parent), 60, "the warm process to wait for requests")
    assert threads(parent) == 1
    # Each run's flow process imported the module once; no other process did.
    flows = [read_status(execution(spools[m], r))["pid"] for m in modes for r in runs[m].values()]
    assert sorted(int(x) for x in imports.read_text().split()) == sorted(flows)
    assert {own["pid"], plain["pid"]} <= set(flows)

    # Output capture and --show-flow-logs, as cold.
    for mode in modes:
        for what in ("own", "plain"):
            run_id = runs[mode][what]
            output = (execution(spools[mode], run_id) / "output.log").read_text()
            assert output.count("introspect ran") == 1, (mode, what)
            name = demo.read_run(agent.client, run_id)["name"]
            assert f"[{name}] introspect ran" in agent.procs.log(mode)

    # The same exit status, the same end.
    ends = {}
    for mode in modes:
        state = states[runs[mode]["exit3"]]
        ends[mode] = (state["type"], str(state["message"]).replace(f"worker {mode}", "worker W"))
    assert ends["warm"] == ends["cold"]
    assert ends["warm"][0] == "CRASHED"
    assert "status code 3" in ends["warm"][1]


def test_a_warm_run_is_cancelled_as_a_cold_one_and_a_dead_warm_process_is_survived(
    agent: Agent, marker: Path
) -> None:
    spool, worker = start_agent(agent, "warm")
    slow = agent.deploy("slow_record", job_variables={"labels": ["warm"]})
    run_id = agent.run(slow, {"marker": str(marker), "pause": 60})
    wait_for(lambda: read_status(execution(spool, run_id)).get("phase") == "running", 90, "run")
    flow = ProcessId.from_json(read_status(execution(spool, run_id)).get("flow"))
    shim = ProcessId.from_json(read_status(execution(spool, run_id)).get("shim"))
    assert flow is not None and shim is not None and flow.alive() and shim.alive()
    parent = the_warm_parent(worker)
    assert shim.pid in children(parent) and flow.pid in children(shim.pid)
    assert started_line(agent, run_id).endswith(f"PID {shim.pid} (warm)")
    wait_for(
        lambda: demo.read_run(agent.client, run_id)["state"]["type"] == "RUNNING", 60, "Running"
    )
    body = {"state": {"type": "CANCELLING", "name": "Cancelling"}, "force": True}
    agent.client.request("set_state", "POST", f"/flow_runs/{run_id}/set_state", body)
    wait_for(lambda: not flow.alive() and not shim.alive(), 30, "the run's processes to end")
    state = settled(agent, spool, run_id)
    assert state["type"] == "CANCELLED"
    assert "stopped by agent worker warm (SIGTERM)" in str(state.get("message")), state
    # As tests/integration/test_cancel.py has it for a cold start.
    assert agent.states(run_id) == [
        *("SCHEDULED", "PENDING", "RUNNING", "CANCELLING", "CRASHED", "CANCELLED")
    ]
    assert executions(marker) == []
    assert alive(parent) and threads(parent) == 1

    # kill -9 of the warm process between runs: the next run still runs, and says how.
    os.kill(parent, signal.SIGKILL)
    wait_for(lambda: not alive(parent), 10, "the warm process to die")
    quick = agent.deploy("record", job_variables={"labels": ["warm"]})
    after = agent.run(quick, {"marker": str(marker)})
    assert settled(agent, spool, after)["type"] == "COMPLETED"
    assert executions(marker) == [after]
    line = started_line(agent, after)
    assert line.endswith(" (warm)") or re.search(r" \(cold start: .*warm process.*\)$", line), line
