"""ops/grafana/local-agent.json only queries metrics the agent really exports, shows the
required ones and every exported one, and reads counters and histograms through a range.

The allowed metric names are never copied here: they come from the collectors that
``agent.metrics`` registers (walked through ``prometheus_client.REGISTRY``) and from
``ScrapeTimeCollector`` itself, so renaming a metric in the agent without updating
the dashboard (or the other way round) fails this test.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from functools import cache

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.observe import exposition
from tests.ops.grafana_dashboard_support import (
    _variable_query,
    exprs,
    metric_names,
    selectors,
    variable_query_metrics,
    variables,
)

# What the issue asks the dashboard to show, at the least.
REQUIRED_ON_DASHBOARD = (
    "agent_flow_runs_finished_total",
    "agent_flow_run_start_delay_seconds_bucket",
    "agent_spool_runs",
    "agent_workers",
    "agent_poll_errors_total",
    "agent_api_request_duration_seconds_bucket",
)


# ---------------------------------------------------------------------------------
# What the agent exports, from its collectors.
# ---------------------------------------------------------------------------------

_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count"),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "summary": ("", "_sum", "_count"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}


def _families() -> Iterator[tuple[str, str]]:
    """(family name, type) of agent.metrics' registered metrics and scrape-time gauges."""
    for family in REGISTRY.collect():
        yield family.name, family.type
    scrape = exposition.ScrapeTimeCollector(
        lambda: {"waiting": 1, "running": 2}, lambda: {"busy": 1, "idle": 1, "dead": 0}
    )
    for family in scrape.collect():
        yield family.name, family.type


@cache
def exported() -> dict[str, tuple[str, str]]:
    """Every series name the agent exports -> (family name, type)."""
    names: dict[str, tuple[str, str]] = {}
    for family, kind in _families():
        if not family.startswith("agent_"):
            continue  # prometheus_client's process/platform collectors: not served
            # under supervisord's multiprocess mode, and not the agent's own
        for suffix in _SUFFIXES[kind]:
            names[family + suffix] = (family, kind)
    return names


# ---------------------------------------------------------------------------------
# The allowed names.
# ---------------------------------------------------------------------------------


def test_exported_names_match_what_metrics_serves() -> None:
    """The names derived from metric types are what the exposition really contains."""
    scrape = exposition.ScrapeTimeCollector(lambda: {"waiting": 0}, lambda: {"busy": 0})
    scratch = CollectorRegistry()
    scratch.register(scrape)
    text = (generate_latest(REGISTRY) + generate_latest(scratch)).decode()
    served = {
        sample.name
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("agent_") and not sample.name.endswith("_created")
    }
    assert served, "no agent_ sample served"
    assert served <= set(exported()), served - set(exported())
    assert {"agent_spool_runs", "agent_workers"} <= set(exported())
    assert all(name.startswith("agent_") for name in exported())


# ---------------------------------------------------------------------------------
# The dashboard's metric names against the agent's.
# ---------------------------------------------------------------------------------


def test_dashboard_only_uses_exported_metrics() -> None:
    unknown: dict[str, str] = {}
    for title, expr in exprs():
        names = metric_names(expr)
        assert names, f"{title}: {expr!r} queries no metric"
        for name in names - set(exported()):
            unknown[name] = title
    assert not unknown, f"not exported by the agent: {unknown}"


def test_variable_queries_only_use_exported_metrics() -> None:
    for var in variables():
        if var["type"] != "query":
            continue
        names = variable_query_metrics(_variable_query(var))
        if "definition" in var:
            names |= variable_query_metrics(var["definition"])
        assert names <= set(exported()), (var["name"], names - set(exported()))


def test_required_metrics_are_on_the_dashboard() -> None:
    used = {name for _, expr in exprs() for name in metric_names(expr)}
    missing = set(REQUIRED_ON_DASHBOARD) - used
    assert not missing, missing
    # The list above must itself name real metrics.
    assert set(REQUIRED_ON_DASHBOARD) <= set(exported())


def test_every_exported_metric_is_on_the_dashboard() -> None:
    """A metric added to the agent gets a panel (or this test says which is missing)."""
    used = {exported()[n][0] for _, expr in exprs() for n in metric_names(expr) if n in exported()}
    missing = {family for family, _ in exported().values()} - used
    assert not missing, f"exported but on no panel: {sorted(missing)}"


def test_counters_are_read_through_a_range() -> None:
    """Raw counters reset on restart; they are only useful under rate()/increase()."""
    for title, expr in exprs():
        for sel in selectors(expr):
            kind = exported().get(sel.name, ("", ""))[1]
            if kind in {"counter", "histogram"}:
                assert sel.ranged, (title, sel.name)
            if kind == "gauge":
                assert not sel.ranged, (title, sel.name)


def test_histogram_quantiles_keep_the_le_label() -> None:
    for title, expr in exprs():
        if "histogram_quantile" not in expr:
            continue
        groupings = re.findall(r"\bby\s*\(([^)]*)\)", expr)
        assert groupings, title
        for labels in groupings:
            assert "le" in {s.strip() for s in labels.split(",")}, title
