"""Warm launches (agent/worker/warm.py) against a real server: a run forked from the warm
process sees what a cold start shows it, runs, ends and is cancelled as a cold one is, and
starts cold, saying why, whenever a fork could not give it a cold start's view."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import sysconfig
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.worker.forkserver import MARKER
from agent.worker.launcher import read_status
from agent.worker.procid import ProcessId
from examples import demo
from tests.integration.conftest import FLOWS_DIR, Agent, executions
from tests.integration.harness import execution, wait_for

STARTED = "Process started by worker "
LAZY_THREADS = ("EventsWorkerThread", "APILogWorkerThread")


# -- what the tests look at -----------------------------------------------------------


def agent_lines(agent: Agent, run_id: str) -> list[str]:
    body = {"logs": {"flow_run_id": {"any_": [run_id]}}, "sort": "TIMESTAMP_ASC"}
    logs: list[dict[str, Any]] = agent.client.request("logs", "POST", "/logs/filter", body)
    return [str(x["message"]) for x in logs if x["name"] == "local-agent"]


def started_line(agent: Agent, run_id: str) -> str:
    """The run's "Process started by worker W on H: PID N (...)" line, once shipped."""
    found: list[str] = []

    def shipped() -> bool:
        found[:] = [x for x in agent_lines(agent, run_id) if x.startswith(STARTED)]
        return bool(found)

    wait_for(shipped, 60, "the run's 'Process started' log line")
    assert len(found) == 1, found
    return found[0]


def settled(agent: Agent, spool: Path, run_id: str) -> dict[str, Any]:
    """The run's state once its worker has finished with it (its spec is in done/)."""
    wait_for((spool / "done" / f"{run_id}.json").exists, 120, "the run to be settled")
    state: dict[str, Any] = demo.read_run(agent.client, run_id)["state"]
    return state


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
    return found


def warm_parents(worker: int) -> list[int]:
    """The worker's warm processes: its children whose command line has the marker."""
    found = []
    for pid in children(worker):
        with contextlib.suppress(OSError):
            if MARKER.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
    return found


def the_warm_parent(worker: int) -> int:
    found: list[int] = []

    def one() -> bool:
        found[:] = warm_parents(worker)
        return len(found) == 1

    wait_for(one, 60, "the worker's one warm process")
    return found[0]


def threads(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/task"))


def idle(pid: int) -> bool:
    """Whether ``pid`` sleeps in select(): the warm process waiting for a request (done
    importing Prefect)."""
    with contextlib.suppress(OSError):
        if Path(f"/proc/{pid}/wchan").read_text().startswith(("poll_schedule", "do_select")):
            return True
        return Path(f"/proc/{pid}/syscall").read_text().split()[0] in ("23", "270")
    return False


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def start_agent(
    agent: Agent,
    mode: str,
    *worker_args: str,
    env: dict[str, str] | None = None,
    poller_args: tuple[str, ...] = (),
) -> tuple[Path, int]:
    """A poller taking only runs labelled ``mode``, and its one worker launching with
    ``--launch mode``: its spool and the worker's pid."""
    spool = agent.tmp / f"{mode}-spool"
    agent.start_poller(
        "--name", mode, "--label", mode, *poller_args, name=f"{mode}-poller", spool=spool
    )
    agent.start_worker("--launch", mode, *worker_args, name=mode, spool=spool, env=env)
    return spool, agent.procs.popens[-1].pid


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


def flow_venv(tmp: Path) -> tuple[str, Path]:
    """A venv of the test's own whose site-packages leads to this one's (a .pth line): a
    flow interpreter with Prefect whose package directory the test may change. Its python
    and that directory."""
    venv = tmp / "flow-venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(sysconfig.get_paths(vars={"base": str(venv), "platbase": str(venv)})["purelib"])
    ours = sysconfig.get_paths()["purelib"]
    (site / "agent_test_prefect.pth").write_text(f"import site; site.addsitedir({ours!r})\n")
    return str(venv / "bin" / "python"), site


def run_note(
    agent: Agent,
    spool: Path,
    deployment: str,
    parameters: Mapping[str, object],
    job_variables: Mapping[str, object] | None = None,
) -> str:
    """Run to its end, Completed: the note of its "Process started" line ("warm", "cold
    start: <why>"; "" without one)."""
    run_id = agent.run(deployment, dict(parameters), dict(job_variables or {}))
    assert settled(agent, spool, run_id)["type"] == "COMPLETED"
    line = started_line(agent, run_id)
    found = re.search(r" \((warm|cold start: .*)\)$", line)
    return found.group(1) if found else ""


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


def test_runs_start_cold_saying_why_and_the_warm_process_is_recycled(
    agent: Agent, marker: Path
) -> None:
    python, site = flow_venv(agent.tmp)
    spool, worker = start_agent(agent, "warm", "--warm-recycle-runs", "2", "--flow-python", python)
    deployment = agent.deploy("record", job_variables={"labels": ["warm"]})

    def run(job_variables: dict[str, object] | None = None) -> str:
        return run_note(agent, spool, deployment, {"marker": str(marker)}, job_variables)

    assert run() == "warm"
    first = the_warm_parent(worker)
    assert threads(first) == 1
    # What a fork cannot give: another command; variables read at interpreter start.
    assert run({"command": f"{python} -B -m prefect.engine"}) == (
        "cold start: the run sets `command`"
    )
    secret = "s3cret-value-never-shown"
    assert run({"env": {"PYTHONHASHSEED": "1", "LD_BIND_NOW": secret}}) == (
        "cold start: the run sets LD_BIND_NOW, PYTHONHASHSEED, read at interpreter start"
    )
    assert warm_parents(worker) == [first]  # cold starts do not count towards recycling
    # The second warm run is the last of this warm process: the next one is ready.
    assert run() == "warm"
    second = the_warm_parent(worker)
    assert second != first
    wait_for(lambda: not alive(first), 20, "the recycled warm process to exit")
    wait_for(lambda: idle(second), 60, "the new warm process to be ready")
    assert threads(second) == 1

    # A package installed or removed since the warm process started: cold, and the warm
    # process is not used again.
    (site / "agent_test_installed").mkdir()
    (site / "agent_test_installed").rmdir()
    assert run() == (
        f"cold start: the flow interpreter's packages in {site} changed since it started; "
        "a new warm process is starting"
    )
    wait_for(lambda: not alive(second), 20, "the outdated warm process to exit")
    assert secret not in agent.procs.log("warm") + agent.procs.log("warm-poller")
    assert len(executions(marker)) == 5


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


# -- known differences from a cold start: agent bugs, see each reason ----------------------


def test_after_a_package_change_the_next_run_is_warm_again(agent: Agent, marker: Path) -> None:
    python, site = flow_venv(agent.tmp)
    spool, worker = start_agent(agent, "warm", "--flow-python", python)
    deployment = agent.deploy("record", job_variables={"labels": ["warm"]})
    first = the_warm_parent(worker)
    wait_for(lambda: idle(first), 60, "the warm process to be ready")
    (site / "agent_test_installed").mkdir()
    (site / "agent_test_installed").rmdir()
    parameters = {"marker": str(marker)}
    assert run_note(agent, spool, deployment, parameters).startswith(
        f"cold start: the flow interpreter's packages in {site} changed"
    )
    assert run_note(agent, spool, deployment, parameters) == "warm"


PLUGIN = """from prefect.plugins import SetupResult, register_hook


@register_hook
def setup_environment(*, ctx):
    return SetupResult(env={"AGENT_TEST_PLUGIN_VAR": "set by the plugin"})
"""


def test_prefect_plugins_set_up_a_warm_runs_environment_as_a_cold_ones(agent: Agent) -> None:
    python, site = flow_venv(agent.tmp)
    (site / "agent_test_plugin.py").write_text(PLUGIN)
    info = site / "agent_test_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: agent-test-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[prefect.plugins]\nagent_test = agent_test_plugin\n")
    spool, _ = start_agent(
        agent, "warm", "--flow-python", python, env={"PREFECT_PLUGINS_ENABLED": "true"}
    )
    deployment = agent.deploy("show_env", job_variables={"labels": ["warm"]})
    seen = {}
    for how, job_variables in (
        ("cold", {"command": f"{python} -B -m prefect.engine"}),
        ("warm", {}),
    ):
        out = agent.tmp / f"{how}.json"
        parameters = {"out": str(out), "keys": ["AGENT_TEST_PLUGIN_VAR"]}
        note = run_note(agent, spool, deployment, parameters, job_variables)
        assert note.startswith(how), note
        seen[how] = json.loads(out.read_text())["env"]
    assert seen["cold"] == {"AGENT_TEST_PLUGIN_VAR": "set by the plugin"}
    assert seen["warm"] == seen["cold"]
