"""Warm launches (agent/worker/warm.py) against a real server: a run starts cold, saying
why, whenever a fork could not give it a cold start's view; the warm process is recycled
after its runs and replaced once the flow interpreter's packages change; Prefect's plugins
set up a warm run's environment as a cold one's. Each test has a flow venv of its own."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import sysconfig
from collections.abc import Mapping
from pathlib import Path

from tests.integration.conftest import Agent, executions
from tests.integration.harness import wait_for
from tests.integration.warm_support import (
    alive,
    idle,
    settled,
    start_agent,
    started_line,
    the_warm_parent,
    threads,
    warm_parents,
)

# -- what the tests look at -----------------------------------------------------------


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
