"""ops/soak: its accounting cannot let a lost, repeated or unfinished run pass (pure
tests of `account`, `verdict` and `render`), and a short real soak (`python -m ops.soak`:
real supervisord, real kills, real flow runs) against the session's Prefect server (the
`server_url` fixture of tests/conftest.py) ends clean."""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

from ops.soak import accounting
from ops.soak.orchestration import burst_sizes
from tests.conftest import AUTH
from tests.integration.harness import REPO, cmdlines

A, B, C, D = (f"run-{x}" for x in "abcd")


def test_every_run_completed_once_passes() -> None:
    acc = accounting.account(
        [A, B, C], dict.fromkeys([A, B, C], "COMPLETED"), [B, A, C], flows_killed=set()
    )
    assert (acc.lost, acc.twice, acc.not_final, acc.wrong) == ([], {}, {}, {})
    assert acc.failures == 0
    assert (acc.created, acc.executions, acc.executed) == (3, 3, 3)
    assert acc.states == {"COMPLETED": 3}
    assert accounting.verdict(acc, actions=5) == (0, [])


def test_a_run_executed_twice_fails_even_if_the_soak_killed_its_flow() -> None:
    states = {A: "COMPLETED", B: "CRASHED", C: "COMPLETED"}
    acc = accounting.account([A, B, C], states, [A, B, C, A, B], flows_killed={B})
    assert acc.twice == {A: 2, B: 2}
    assert (acc.lost, acc.not_final, acc.wrong) == ([], {}, {})
    code, reasons = accounting.verdict(acc, actions=3)
    assert code == 1
    assert reasons == ["2 run(s) executed twice"]


def test_a_run_never_executed_is_lost_final_or_not() -> None:
    states = {A: "COMPLETED", B: "CRASHED", C: "SCHEDULED", D: "COMPLETED"}
    acc = accounting.account([A, B, C, D], states, [A], flows_killed=set())
    # B ended Crashed without running; C was never run; D "Completed" without running.
    assert acc.lost == [B, C, D]
    assert acc.not_final == {C: "SCHEDULED"}
    assert acc.states == {"COMPLETED": 2, "CRASHED": 1, "NOT FINAL: SCHEDULED": 1}
    assert accounting.verdict(acc, actions=1) == (1, ["3 run(s) lost", "1 run(s) not final"])


def test_a_run_not_final_fails_even_after_executing() -> None:
    acc = accounting.account([A, B], {A: "COMPLETED", B: "RUNNING"}, [A, B], flows_killed=set())
    assert acc.not_final == {B: "RUNNING"}
    assert acc.lost == []
    assert accounting.verdict(acc, actions=1)[0] == 1


def test_a_run_missing_from_the_api_is_not_final() -> None:
    acc = accounting.account([A, B], {A: "COMPLETED"}, [A, B], flows_killed=set())
    assert acc.not_final == {B: "UNKNOWN"}
    assert accounting.verdict(acc, actions=1)[0] == 1


def test_a_run_whose_flow_the_soak_killed_may_end_crashed_with_or_without_its_line() -> None:
    states = {A: "CRASHED", B: "CRASHED", C: "COMPLETED"}
    acc = accounting.account([A, B, C], states, [A, C], flows_killed={A, B, C})
    assert acc.failures == 0
    assert acc.flows_killed == {"CRASHED": 2, "COMPLETED": 1}
    assert accounting.verdict(acc, actions=3) == (0, [])


def test_a_run_that_ran_but_crashed_without_a_kill_ended_wrongly() -> None:
    states = {A: "CRASHED", B: "FAILED", C: "CANCELLED", D: "CRASHED"}
    acc = accounting.account([A, B, C, D], states, [A, B, C, D], flows_killed={D})
    assert acc.wrong == {A: "CRASHED", B: "FAILED", C: "CANCELLED"}
    assert acc.lost == []
    assert accounting.verdict(acc, actions=1) == (1, ["3 run(s) ended wrongly"])


def test_a_soak_without_a_single_action_proved_nothing() -> None:
    acc = accounting.account([A], {A: "COMPLETED"}, [A], flows_killed=set())
    code, reasons = accounting.verdict(acc, actions=0)
    assert code == 1
    assert "nothing was soaked" in reasons[0]


def test_lines_naming_no_run_are_shown_but_not_counted() -> None:
    acc = accounting.account([A], {A: "COMPLETED"}, [A, "someone-else"], flows_killed=set())
    assert acc.strangers == ["someone-else"]
    assert acc.executions == 1
    assert accounting.verdict(acc, actions=1) == (0, [])


def test_a_spec_in_the_spool_twice_fails_one_merely_left_does_not() -> None:
    spool = {"tmp": [], "new": [], "cur": [A, B], "done": [A, C], "failed": []}
    acc = accounting.account(
        [A, B, C], dict.fromkeys([A, B, C], "COMPLETED"), [A, B, C], set(), spool
    )
    assert acc.spool_twice == [f"cur/{A}"]  # in cur/ and done/ at once
    assert acc.spool_leftovers == [f"cur/{A}", f"cur/{B}"]
    assert accounting.verdict(acc, actions=1) == (1, ["1 spec(s) in the spool twice"])
    spool["cur"] = [B]
    acc = accounting.account(
        [A, B, C], dict.fromkeys([A, B, C], "COMPLETED"), [A, B, C], set(), spool
    )
    assert (acc.spool_twice, acc.spool_leftovers) == ([], [f"cur/{B}"])
    assert accounting.verdict(acc, actions=1) == (0, [])


def test_the_report_shows_each_figure_and_each_offending_run() -> None:
    states = {A: "COMPLETED", B: "CRASHED", C: "PENDING", D: "COMPLETED"}
    lines = accounting.parse_executions(f"{A} 11 1.0\n{D} 12 2.0\n\n{D} 13 3.0\n")
    acc = accounting.account([A, B, C, D], states, lines, flows_killed=set())
    kills = {"poller-kill9": 2, "worker-kill9": 1}
    text = accounting.render(acc, kills, [("soak", "4 runs")])
    figures = dict(re.findall(r"^(runs [a-z ]+):\s+(\d+)$", text, re.M))
    assert figures == {
        "runs created": "4",
        "runs lost": "2",
        "runs executed twice": "1",
        "runs not final": "1",
        "runs ended wrongly": "0",
    }
    assert re.search(r"^kills and restarts:\s+3 \(poller-kill9 2, worker-kill9 1\)$", text, re.M)
    assert re.search(r"^result:\s+FAIL: 2 run\(s\) lost; 1 run\(s\) executed twice; ", text, re.M)
    assert f"  executed twice: {D} 2 executions" in text
    assert f"  lost: {B}" in text
    assert f"  not final: {C} PENDING" in text


def test_state_paths_leave_scheduled_and_late_out() -> None:
    ran = ["PENDING:Pending", "RUNNING:Running", "COMPLETED:Completed"]
    histories = [
        ["SCHEDULED:Scheduled", *ran],
        ["SCHEDULED:Scheduled", "SCHEDULED:Late", *ran],
        ["SCHEDULED:Scheduled", "PENDING:Pending", "CRASHED:Crashed"],
    ]
    assert accounting.state_paths(histories) == {
        "PENDING>RUNNING>COMPLETED": 2,
        "PENDING>CRASHED": 1,
    }


def test_bursts_split_every_run_into_non_empty_parts() -> None:
    rng = random.Random(3)
    for runs, bursts in [(300, 4), (20, 3), (5, 5), (3, 10), (1, 1)]:
        sizes = burst_sizes(rng, runs, bursts)
        assert sum(sizes) == runs
        assert len(sizes) == min(runs, bursts)
        assert all(size > 0 for size in sizes)


def figure(report: str, label: str) -> int:
    found = re.search(rf"^{label}:\s+(\d+)", report, re.M)
    assert found, f"no {label!r} in the report:\n{report}"
    return int(found.group(1))


def test_a_short_real_soak_loses_and_repeats_nothing(server_url: str, tmp_path: Path) -> None:
    """20 runs on 2 workers, something killed every 2-5 s: about two minutes here."""
    out_json = tmp_path / "report.json"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("PREFECT", "AGENT_"))},
        "PREFECT_API_AUTH_STRING": AUTH,
    }
    argv = [sys.executable, "-m", "ops.soak", "--api-url", server_url]
    argv += ["--runs", "20", "--workers", "2", "--kill-every", "2", "5", "--bursts", "3"]
    argv += ["--burst-gap", "2", "8", "--flow-seconds", "0", "1.5", "--seed", "20240611"]
    argv += ["--timeout", "240", "--json", str(out_json)]
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    report = result.stdout
    print(report)  # shown with -s or -rP
    assert result.returncode == 0, report + result.stderr[-5000:]
    assert figure(report, "runs created") == 20
    assert figure(report, "runs lost") == 0
    assert figure(report, "runs executed twice") == 0
    assert figure(report, "runs not final") == 0
    assert figure(report, "runs ended wrongly") == 0
    assert figure(report, "kills and restarts") > 0
    assert re.search(r"^result:\s+PASS$", report, re.M), report

    data = json.loads(out_json.read_text())
    acc = data["accounting"]
    assert (acc["lost"], acc["twice"], acc["not_final"], acc["wrong"]) == ([], {}, {}, {})
    assert acc["spool_twice"] == []
    assert len(data["run_ids"]) == 20
    assert all(data["states"][run] in ("COMPLETED", "CRASHED") for run in data["run_ids"])
    # Only runs whose flow the soak killed may be Crashed.
    killed = {run for kill in data["kills"] for run in kill["runs"]}
    assert {run for run, state in data["states"].items() if state == "CRASHED"} <= killed
    assert data["kills"], "no action was made"
    assert data["anomalies"] == [], "the spool did not drain"
    # A clean soak leaves no process and no temp dir behind.
    tmp = data["tmp"]
    assert not Path(tmp).exists()
    assert not [line for line in cmdlines() if tmp in line]
