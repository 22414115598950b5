"""ops/grafana/local-agent.json: a valid, importable dashboard that only queries
metrics the agent really exports.

The allowed metric names are never copied here: they come from the collectors that
``agent.metrics`` registers (walked through ``prometheus_client.REGISTRY``) and from
``ScrapeTimeCollector`` itself, so renaming a metric in the agent without updating
the dashboard (or the other way round) fails this test.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from agent.observe import exposition

DASHBOARD_PATH = Path(__file__).resolve().parents[2] / "ops" / "grafana" / "local-agent.json"

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
# A small PromQL scanner: finds the vector selectors (metric names and matchers) of an
# expression. It knows PromQL's functions, aggregations and keywords, skips strings,
# comments, numbers, durations and Grafana variables, and treats the lists after
# by/without/on/ignoring/group_left/group_right as label names. An identifier called
# like a function that PromQL does not have is an error (a typo), not a metric.
# ---------------------------------------------------------------------------------

# fmt: off
FUNCTIONS = frozenset({
    "abs", "absent", "absent_over_time", "acos", "acosh", "asin", "asinh", "atan", "atanh",
    "avg_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min", "cos", "cosh",
    "count_over_time", "day_of_month", "day_of_week", "day_of_year", "days_in_month", "deg",
    "delta", "deriv", "double_exponential_smoothing", "end", "exp", "floor", "histogram_avg",
    "histogram_count", "histogram_fraction", "histogram_quantile", "histogram_stddev",
    "histogram_stdvar", "histogram_sum", "holt_winters", "hour", "idelta", "increase", "info",
    "irate", "label_join", "label_replace", "last_over_time", "ln", "log10", "log2",
    "mad_over_time", "max_over_time", "min_over_time", "minute", "month", "pi",
    "predict_linear", "present_over_time", "quantile_over_time", "rad", "rate", "resets",
    "round", "scalar", "sgn", "sin", "sinh", "sort", "sort_by_label", "sort_by_label_desc",
    "sort_desc", "sqrt", "start", "stddev_over_time", "stdvar_over_time", "sum_over_time",
    "tan", "tanh", "time", "timestamp", "vector", "year",
})
AGGREGATIONS = frozenset({
    "avg", "bottomk", "count", "count_values", "group", "limit_ratio", "limitk", "max", "min",
    "quantile", "stddev", "stdvar", "sum", "topk",
})
# fmt: on
GROUPING = frozenset(["by", "without", "on", "ignoring", "group_left", "group_right"])
KEYWORDS = frozenset(["and", "or", "unless", "bool", "offset", "atan2"]) | GROUPING
LITERALS = frozenset(["inf", "nan"])  # case-insensitive in PromQL

_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_NUMBER_OR_DURATION = re.compile(r"\.?[0-9][0-9A-Za-z_.]*")  # 0.9, 1e-3 (as 1e), 5m, 0x1f
_GRAFANA_VAR = re.compile(r"\$\{[^}]*\}|\$[A-Za-z0-9_]+|\[\[[^\]]*\]\]")
_MATCH_OP = re.compile(r"=~|!~|!=|=")
_BY_OR_WITHOUT = re.compile(r"(?:by|without)\b")


@dataclass(frozen=True)
class Selector:
    name: str
    matchers: tuple[tuple[str, str, str], ...]  # (label, op, value)
    ranged: bool  # followed by a range: x[5m]


class PromQLError(ValueError):
    pass


def _skip_space(expr: str, i: int) -> int:
    while i < len(expr):
        if expr[i].isspace():
            i += 1
        elif expr[i] == "#":  # comment to the end of the line
            while i < len(expr) and expr[i] != "\n":
                i += 1
        else:
            break
    return i


def _read_string(expr: str, i: int) -> tuple[str, int]:
    quote = expr[i]
    j = i + 1
    out = []
    while j < len(expr):
        c = expr[j]
        if c == "\\" and quote != "`":
            if j + 1 >= len(expr):
                break
            out.append(expr[j : j + 2])
            j += 2
            continue
        if c == quote:
            return "".join(out), j + 1
        out.append(c)
        j += 1
    raise PromQLError(f"unterminated string at {i} in {expr!r}")


def _read_matchers(expr: str, i: int) -> tuple[list[tuple[str, str, str]], int]:
    """Parse ``{a="x", b=~"y"}`` starting at the ``{``; returns matchers and the end."""
    assert expr[i] == "{"
    i += 1
    found: list[tuple[str, str, str]] = []
    while True:
        i = _skip_space(expr, i)
        if i >= len(expr):
            raise PromQLError(f"unterminated selector in {expr!r}")
        if expr[i] == "}":
            return found, i + 1
        if expr[i] in "\"'`":  # Prometheus 3: a quoted name alone is the metric name
            label, i = _read_string(expr, i)
            quoted = True
        else:
            m = _IDENT.match(expr, i)
            if not m:
                raise PromQLError(f"bad label name at {i} in {expr!r}")
            label, i, quoted = m.group(), m.end(), False
        i = _skip_space(expr, i)
        op_match = _MATCH_OP.match(expr, i)
        if op_match:
            op = op_match.group()
            i = _skip_space(expr, op_match.end())
            if i >= len(expr) or expr[i] not in "\"'`":
                raise PromQLError(f"matcher value must be a string at {i} in {expr!r}")
            value, i = _read_string(expr, i)
            found.append((label, op, value))
        elif quoted:
            found.append(("__name__", "=", label))
        else:
            raise PromQLError(f"matcher without operator at {i} in {expr!r}")
        i = _skip_space(expr, i)
        if i < len(expr) and expr[i] == ",":
            i += 1


def _skip_label_list(expr: str, i: int) -> int:
    """Skip ``(a, b)`` after a grouping keyword; everything in it is a label name."""
    assert expr[i] == "("
    end = expr.find(")", i)
    if end < 0:
        raise PromQLError(f"unterminated label list in {expr!r}")
    for label in filter(None, (s.strip() for s in expr[i + 1 : end].split(","))):
        if not _IDENT.fullmatch(label):
            raise PromQLError(f"bad label {label!r} in grouping of {expr!r}")
    return end + 1


def _selector(name: str | None, matchers: list[tuple[str, str, str]], ranged: bool) -> Selector:
    names = [v for (label, op, v) in matchers if label == "__name__"]
    if name is None:
        ops = {op for (label, op, _) in matchers if label == "__name__"}
        if ops != {"="} or len(names) != 1:
            raise PromQLError("a selector must name exactly one metric (no regex on __name__)")
        name = names[0]
    elif names:
        raise PromQLError(f"{name} has a __name__ matcher as well")
    rest = tuple(m for m in matchers if m[0] != "__name__")
    return Selector(name, rest, ranged)


def selectors(expr: str) -> list[Selector]:
    """The vector selectors of a PromQL expression, in order."""
    found: list[Selector] = []
    i = 0
    while True:
        i = _skip_space(expr, i)
        if i >= len(expr):
            return found
        c = expr[i]
        if c in "\"'`":
            _, i = _read_string(expr, i)
            continue
        if c == "[":  # a range or subquery: durations and variables only
            end = expr.find("]", i)
            if end < 0:
                raise PromQLError(f"unterminated range in {expr!r}")
            i = end + 1
            continue
        var = _GRAFANA_VAR.match(expr, i)
        if var:
            i = var.end()
            continue
        num = _NUMBER_OR_DURATION.match(expr, i)
        if num:
            i = num.end()
            continue
        ident = _IDENT.match(expr, i)
        name: str | None = None
        if ident:
            word, i = ident.group(), ident.end()
            nxt = _skip_space(expr, i)
            follows = expr[nxt] if nxt < len(expr) else ""
            lowered = word.lower()
            if word in GROUPING and follows == "(":
                i = _skip_label_list(expr, nxt)
                continue
            if word in KEYWORDS or lowered in LITERALS:
                continue
            if follows == "(":
                if word in FUNCTIONS or word in AGGREGATIONS:
                    continue
                raise PromQLError(f"unknown function {word!r} in {expr!r}")
            if word in AGGREGATIONS and _BY_OR_WITHOUT.match(expr, nxt):
                continue  # sum by (le) (...)
            name = word
            i = nxt
        elif c != "{":
            i += 1  # operators and punctuation
            continue
        matchers: list[tuple[str, str, str]] = []
        if i < len(expr) and expr[i] == "{":
            matchers, i = _read_matchers(expr, i)
        after = _skip_space(expr, i)
        ranged = after < len(expr) and expr[after] == "["
        found.append(_selector(name, matchers, ranged))


def metric_names(expr: str) -> set[str]:
    return {s.name for s in selectors(expr)}


_LABEL_VALUES = re.compile(r"label_values\(\s*(?:(?P<match>.*),\s*)?(?P<label>[A-Za-z_]\w*)\s*\)")
_QUERY_RESULT = re.compile(r"query_result\((?P<expr>.*)\)")
_LABEL_NAMES = re.compile(r"label_names\(\s*\)")


def variable_query_metrics(query: str) -> set[str]:
    """Metric names used by a Grafana Prometheus template variable query."""
    query = query.strip()
    if m := _LABEL_VALUES.fullmatch(query):
        return metric_names(m.group("match")) if m.group("match") else set()
    if m := _QUERY_RESULT.fullmatch(query):
        return metric_names(m.group("expr"))
    if _LABEL_NAMES.fullmatch(query):
        return set()
    # metrics(regex) and anything else cannot be checked against exported names.
    raise PromQLError(f"unsupported variable query {query!r}")


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
# The dashboard.
# ---------------------------------------------------------------------------------


@cache
def dashboard() -> dict[str, Any]:
    data = json.loads(DASHBOARD_PATH.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def all_panels() -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for panel in dashboard()["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))  # a collapsed row's panels
    return out


def query_panels() -> list[dict[str, Any]]:
    return [p for p in all_panels() if p["type"] != "row"]


def exprs() -> list[tuple[str, str]]:
    """(panel title, expr) of every target of every panel."""
    return [(p["title"], t["expr"]) for p in query_panels() for t in p["targets"]]


def variables() -> list[dict[str, Any]]:
    out = dashboard()["templating"]["list"]
    assert isinstance(out, list)
    return out


def _variable_query(var: dict[str, Any]) -> str:
    query = var.get("query")
    if isinstance(query, dict):  # Grafana 10+ Prometheus variable editor
        query = query.get("query")
    assert isinstance(query, str), var
    return query


def datasource_refs() -> set[str]:
    """The ways a panel may name the data source chosen at import."""
    refs: set[str] = set()
    for item in dashboard().get("__inputs", []):
        if item.get("type") == "datasource" and item.get("pluginId") == "prometheus":
            refs.add("${" + item["name"] + "}")
    for var in variables():
        if var["type"] == "datasource" and var["query"] == "prometheus":
            refs |= {"${" + var["name"] + "}", "$" + var["name"]}
    return refs


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
# The dashboard model.
# ---------------------------------------------------------------------------------


def test_dashboard_is_a_dashboard_model() -> None:
    d = dashboard()
    assert isinstance(d["title"], str) and d["title"]
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", d["uid"])
    assert 36 <= d["schemaVersion"] <= 41
    assert d.get("id") is None  # importable anywhere: Grafana assigns the id
    assert isinstance(d["panels"], list) and d["panels"]
    assert isinstance(d["time"], dict) and {"from", "to"} <= set(d["time"])
    for panel in all_panels():
        assert isinstance(panel["id"], int), panel.get("title")
        assert panel["type"] in {"row", "timeseries", "stat", "table"}, panel["title"]
        assert panel["title"]


def test_panel_ids_are_unique() -> None:
    ids = [p["id"] for p in all_panels()]
    assert len(ids) == len(set(ids)), sorted(ids)


def test_panels_are_laid_out_on_the_grid_without_overlap() -> None:
    boxes = []
    for panel in all_panels():
        pos = panel["gridPos"]
        x, y, w, h = pos["x"], pos["y"], pos["w"], pos["h"]
        assert all(isinstance(v, int) for v in (x, y, w, h)), panel["title"]
        assert x >= 0 and y >= 0 and w > 0 and h > 0, panel["title"]
        assert x + w <= 24, f"{panel['title']} is wider than the grid"
        if panel["type"] == "row":
            assert (x, w, h) == (0, 24, 1), panel["title"]
        boxes.append((panel["title"], x, y, w, h))
    for i, (ta, xa, ya, wa, ha) in enumerate(boxes):
        for tb, xb, yb, wb, hb in boxes[i + 1 :]:
            apart = xa + wa <= xb or xb + wb <= xa or ya + ha <= yb or yb + hb <= ya
            assert apart, f"{ta!r} overlaps {tb!r}"


def test_every_panel_queries_the_chosen_prometheus() -> None:
    refs = datasource_refs()
    assert refs, "neither a DS_PROMETHEUS input nor a prometheus datasource variable"
    for panel in query_panels():
        assert panel["datasource"]["type"] == "prometheus", panel["title"]
        assert panel["datasource"]["uid"] in refs, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for t in panel["targets"]:
            assert isinstance(t["expr"], str) and t["expr"].strip(), panel["title"]
            ds = t.get("datasource", panel["datasource"])
            assert ds["uid"] in refs, panel["title"]
    for var in variables():
        if var["type"] == "query":
            assert var["datasource"]["uid"] in refs, var["name"]


def test_every_panel_has_a_description_and_a_unit() -> None:
    for panel in query_panels():
        assert len(panel.get("description", "")) >= 20, panel["title"]
        if panel["type"] in {"timeseries", "stat"}:
            assert panel["fieldConfig"]["defaults"].get("unit"), panel["title"]


def test_instance_variable() -> None:
    by_name = {v["name"]: v for v in variables()}
    instance = by_name["instance"]
    assert instance["type"] == "query"
    assert instance["multi"] is True and instance["includeAll"] is True
    # Without allValue, "All" expands to the values known at refresh time only.
    assert instance.get("allValue") == ".*"
    assert _variable_query(instance) == "label_values(agent_info, instance)"
    assert instance.get("definition", _variable_query(instance)) == _variable_query(instance)


def test_every_selector_filters_by_instance() -> None:
    for title, expr in exprs():
        for sel in selectors(expr):
            assert ("instance", "=~", "$instance") in sel.matchers, (title, sel.name)


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
