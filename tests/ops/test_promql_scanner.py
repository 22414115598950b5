"""The PromQL scanner of grafana_dashboard_support: it finds exactly the metric names,
matchers and ranges of an expression and the metrics of a Grafana variable query, and
refuses what it cannot check (a typo'd function, a regex on __name__, no metric name)."""

from __future__ import annotations

import pytest

from tests.ops.grafana_dashboard_support import (
    PromQLError,
    Selector,
    metric_names,
    selectors,
    variable_query_metrics,
)

# ---------------------------------------------------------------------------------
# The scanner itself.
# ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        (
            'sum by (outcome) (rate(agent_flow_runs_finished_total{instance=~"$instance"}'
            "[$__rate_interval]))",
            {"agent_flow_runs_finished_total"},
        ),
        (
            "histogram_quantile(0.99, sum by (le, endpoint) "
            '(rate(agent_x_bucket{instance=~"$instance", endpoint!="a,b}"}[5m])))',
            {"agent_x_bucket"},
        ),
        (
            "time() - max by (instance) (agent_last_successful_poll_timestamp_seconds)",
            {"agent_last_successful_poll_timestamp_seconds"},
        ),
        ("a / on (instance) group_left (version, pool) b", {"a", "b"}),
        ("sum(rate(foo[1m])) without (pod) > bool 0 and on() bar", {"foo", "bar"}),
        ('label_replace(up, "dst", "$1", "src_label", "(.*)")', {"up"}),
        (
            "rate(foo[5m] offset 1h) # comment naming baz\n+ rate(qux[5m:1m] @ end())",
            {"foo", "qux"},
        ),
        ("-1e-3 * Inf + NaN - .5 + 0x1f + foo:recorded_rate5m", {"foo:recorded_rate5m"}),
        ('{__name__="agent_polls_total", job="agent"}', {"agent_polls_total"}),
        ('{"agent.dotted", instance="a"}', {"agent.dotted"}),
        ("sum(foo) by (le) / count without (x) (bar) unless sum(baz)", {"foo", "bar", "baz"}),
        (
            'count_values("version", agent_info) or topk(3, agent_workers)',
            {"agent_info", "agent_workers"},
        ),
        ("max(${ds_metric_var}) + sum(rate(x_total[$__range]))", {"x_total"}),
        ("sum(a_total)  # sum(by_the_way)", {"a_total"}),
    ],
)
def test_scanner_finds_exactly_the_metric_names(expr: str, expected: set[str]) -> None:
    assert metric_names(expr) == expected


def test_scanner_reports_matchers_and_ranges() -> None:
    found = selectors('rate(a{instance=~"$instance",x!="1"}[5m]) + b{y="2"} + c [1m]')
    assert found == [
        Selector("a", (("instance", "=~", "$instance"), ("x", "!=", "1")), True),
        Selector("b", (("y", "=", "2"),), False),
        Selector("c", (), True),
    ]


@pytest.mark.parametrize(
    "expr",
    [
        "histogram_quantil(0.9, sum by (le) (rate(x_bucket[5m])))",  # typo'd function
        'sum({__name__=~"agent_.*"})',  # names nothing checkable
        '{job="agent"}',  # no metric name at all
        'rate(x{instance=~"$instance}[5m])',  # unterminated string
        'x{instance~"a"}',  # not a matcher
    ],
)
def test_scanner_refuses_what_it_cannot_check(expr: str) -> None:
    with pytest.raises(PromQLError):
        selectors(expr)


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("label_values(agent_info, instance)", {"agent_info"}),
        ('label_values(agent_info{pool="a,b"}, instance)', {"agent_info"}),
        ("label_values(instance)", set()),
        ("query_result(topk(5, agent_workers))", {"agent_workers"}),
        ("label_names()", set()),
    ],
)
def test_variable_query_metrics(query: str, expected: set[str]) -> None:
    assert variable_query_metrics(query) == expected


def test_variable_query_refuses_metrics_regex() -> None:
    with pytest.raises(PromQLError):
        variable_query_metrics("metrics(agent_.*)")
