"""The Prometheus kit in ops/prometheus: config and rules are valid, every alert is
unit-tested firing and not firing, complete for on-call, and uses only metrics the agent
exports.

promtool comes from Debian's ``prometheus`` package. When it is not on PATH, the tests
that need it install the package if they run as root on a host with apt-get, and skip
with a message naming the package otherwise.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]  # PyYAML, installed with prefect
from prometheus_client.metrics import MetricWrapperBase

from agent.observe import exposition, metrics

ROOT = Path(__file__).resolve().parents[2]
PROM_DIR = ROOT / "ops" / "prometheus"
SCRAPE = PROM_DIR / "scrape.yml"
RULES = PROM_DIR / "agent-rules.yml"
RULE_TESTS = PROM_DIR / "agent-rules.test.yml"
RUNBOOK = ROOT / "ops" / "runbook.md"

PACKAGE = "prometheus"  # Debian's package that ships promtool
SEVERITIES = {"page", "ticket"}
# Labels Prometheus adds to every scraped series (target labels), besides the metric's.
TARGET_LABELS = {"job", "instance"}
PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule for group in load_yaml(RULES)["groups"] for rule in group["rules"] if "alert" in rule
    ]


ALERTS = alert_rules()
ALERT_IDS = [rule["alert"] for rule in ALERTS]


# --- promtool --------------------------------------------------------------------------


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


@pytest.fixture(scope="session")
def promtool() -> str:
    found = shutil.which("promtool")
    if found:
        return found
    apt_get = shutil.which("apt-get")
    if apt_get is None or os.geteuid() != 0:
        why = "apt-get is not available" if apt_get is None else "not running as root"
        pytest.skip(
            f"promtool is not on PATH and cannot be installed here ({why}): install "
            f"Debian's `{PACKAGE}` package (apt-get install {PACKAGE}) or put promtool on PATH"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = [apt_get, "install", "-y", "--no-install-recommends", PACKAGE]
    print(f"promtool not on PATH; running: {' '.join(install)}")
    result = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    if result.returncode != 0:  # stale or missing package lists: refresh once, retry
        subprocess.run([apt_get, "update"], capture_output=True, env=env, timeout=900)
        result = subprocess.run(install, capture_output=True, text=True, env=env, timeout=900)
    # The package puts it in /usr/bin, which a restricted PATH may lack.
    found = shutil.which("promtool") or shutil.which("promtool", path="/usr/bin")
    if found is None:
        pytest.skip(
            f"promtool is not on PATH and `apt-get install {PACKAGE}` did not provide it "
            f"(exit {result.returncode}): {_tail(result.stdout + result.stderr, 5)}"
        )
    return found


def run_promtool(promtool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([promtool, *args], capture_output=True, text=True, cwd=cwd, timeout=120)
    # Shown by pytest when the test fails.
    print(f"$ promtool {' '.join(args)}  (cwd {cwd})\n{result.stdout}{result.stderr}")
    return result


def test_promtool_check_config_loads_the_rule_file(promtool: str, tmp_path: Path) -> None:
    """scrape.yml is valid and its rule_files entry resolves relative to scrape.yml's
    own directory (from any working directory), so the rules are checked with it."""
    for cwd, path in ((ROOT, "ops/prometheus/scrape.yml"), (tmp_path, str(SCRAPE))):
        result = run_promtool(promtool, "check", "config", path, cwd=cwd)
        output = result.stdout + result.stderr
        assert result.returncode == 0, output
        assert "1 rule files found" in output, output
        assert f"{RULES.relative_to(ROOT)}" in output or str(RULES) in output, output
        assert f"SUCCESS: {len(ALERTS)} rules found" in output, output


def test_promtool_check_rules(promtool: str) -> None:
    result = run_promtool(promtool, "check", "rules", str(RULES), cwd=ROOT)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert f"SUCCESS: {len(ALERTS)} rules found" in output, output


def test_promtool_test_rules(promtool: str, tmp_path: Path) -> None:
    """Every alert_rule_test in agent-rules.test.yml passes (run from elsewhere: its
    rule_files entry resolves relative to the test file)."""
    result = run_promtool(promtool, "test", "rules", str(RULE_TESTS), cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "SUCCESS" in output, output


# --- the rules, read as YAML -----------------------------------------------------------


def test_scrape_config_names_the_job_and_the_rule_file() -> None:
    config = load_yaml(SCRAPE)
    assert [(PROM_DIR / entry).resolve() for entry in config["rule_files"]] == [RULES]
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "local-agent"]
    assert job.get("scrape_interval", config["global"]["scrape_interval"]) == "15s"
    assert job["static_configs"][0]["targets"]


def github_anchor(heading: str) -> str:
    """The anchor GitHub (and most Markdown renderers) give a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def runbook_anchors() -> set[str]:
    text = RUNBOOK.read_text(encoding="utf-8")
    return {github_anchor(m) for m in re.findall(r"^#{1,6}\s+(.+?)\s*$", text, re.MULTILINE)}


def test_runbook_has_first_look_and_its_links_resolve() -> None:
    anchors = runbook_anchors()
    assert "first-look" in anchors
    links = re.findall(r"\]\(#([^)]+)\)", RUNBOOK.read_text(encoding="utf-8"))
    assert links, "the runbook cross-links its sections"
    assert not [link for link in links if link not in anchors]


def test_alert_names_are_unique() -> None:
    assert len(ALERT_IDS) == len(set(ALERT_IDS)), ALERT_IDS
    assert len(ALERTS) >= 10


@pytest.mark.parametrize("rule", ALERTS, ids=ALERT_IDS)
def test_alert_is_complete_for_on_call(rule: dict[str, Any]) -> None:
    """for:, a page/ticket severity, a summary, a description and a runbook_url whose
    anchor is a heading of ops/runbook.md."""
    assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), "needs `for:` (no flapping)"
    assert rule.get("labels", {}).get("severity") in SEVERITIES
    annotations = rule.get("annotations", {})
    assert annotations.get("summary", "").strip()
    assert "{{ $labels.instance }}" in annotations["summary"] or "absent(" in rule["expr"]
    assert annotations.get("description", "").strip()
    url = annotations.get("runbook_url", "")
    path, _, anchor = url.partition("#")
    assert path.endswith("ops/runbook.md"), url
    assert anchor == github_anchor(rule["alert"]), url
    assert anchor in runbook_anchors(), f"no heading for #{anchor} in {RUNBOOK}"


def rule_test_cases() -> Iterator[dict[str, Any]]:
    for test in load_yaml(RULE_TESTS)["tests"]:
        yield from test.get("alert_rule_test", [])


@pytest.mark.parametrize("rule", ALERTS, ids=ALERT_IDS)
def test_alert_is_unit_tested_firing_and_not_firing(rule: dict[str, Any]) -> None:
    """agent-rules.test.yml checks the alert where it must fire (with the rule's
    severity) and where it must not (empty exp_alerts)."""
    assert load_yaml(RULE_TESTS)["rule_files"] == [RULES.name]
    cases = [case for case in rule_test_cases() if case["alertname"] == rule["alert"]]
    firing = [case for case in cases if case.get("exp_alerts")]
    silent = [case for case in cases if not case.get("exp_alerts")]
    assert firing, f"no test where {rule['alert']} fires"
    assert silent, f"no test where {rule['alert']} must not fire"
    for case in firing:
        for alert in case["exp_alerts"]:
            assert alert["exp_labels"]["severity"] == rule["labels"]["severity"]
            assert alert["exp_annotations"]["summary"]


# --- metric names ----------------------------------------------------------------------


def exported_metrics() -> dict[str, set[str]]:
    """Every series name the agent exports, with its label names (target labels added)."""
    names: dict[str, set[str]] = {"up": set(TARGET_LABELS)}
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        labels = set(value._labelnames) | TARGET_LABELS
        for family in value.describe():
            if family.type == "counter":
                names[f"{family.name}_total"] = labels
            elif family.type == "histogram":
                names[f"{family.name}_bucket"] = labels | {"le"}
                names[f"{family.name}_sum"] = labels
                names[f"{family.name}_count"] = labels
            else:
                names[family.name] = labels
    scrape_time = exposition.ScrapeTimeCollector(lambda: {"x": 1}, lambda: {"x": 1})
    for family in scrape_time.collect():
        names[family.name] = {k for s in family.samples for k in s.labels} | TARGET_LABELS
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (identifiers that are not functions,
    keywords, label names or durations)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    grouping = r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)"
    text = re.sub(grouping, "", text)  # `sum without (a) (x)` -> `sum (x)`
    found = re.findall(r"(?<![\w:.])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()", text)
    return {name for name in found if name.lower() not in PROMQL_KEYWORDS}


def selectors(expr: str) -> list[tuple[str, list[str]]]:
    """(metric name, label names matched) of every `name{...}` in the expression."""
    return [
        (name, re.findall(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"", matchers))
        for name, matchers in re.findall(r"([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}", expr)
    ]


def test_metric_name_parser() -> None:
    expr = (
        'sum without (state) (rate(agent_workers{state=~"a|b"}[5m])) / ignoring (kind) '
        "group_left histogram_quantile(0.9, x_bucket) > 0.5 and on (instance) time() - up"
    )
    assert metric_names(expr) == {"agent_workers", "x_bucket", "up"}
    assert selectors(expr) == [("agent_workers", ["state"])]


def test_exported_metrics_are_read_from_the_agent() -> None:
    exported = exported_metrics()
    assert exported["agent_polls_total"] == TARGET_LABELS
    assert "le" in exported["agent_flow_run_start_delay_seconds_bucket"]
    assert "outcome" in exported["agent_flow_runs_finished_total"]
    assert exported["agent_workers"] == {"state"} | TARGET_LABELS
    assert "agent_spool_runs" in exported


@pytest.mark.parametrize("rule", ALERTS, ids=ALERT_IDS)
def test_alert_uses_only_exported_metrics(rule: dict[str, Any]) -> None:
    """Every metric in the expression exists in agent/observe/metrics.py (or is `up`), and every
    label it matches on is one that metric has."""
    exported = exported_metrics()
    used = metric_names(rule["expr"])
    assert used, rule["expr"]
    assert not used - exported.keys(), f"not exported by the agent: {used - exported.keys()}"
    for name, labels in selectors(rule["expr"]):
        assert not set(labels) - exported[name], f"{name} has no label {set(labels)}"
