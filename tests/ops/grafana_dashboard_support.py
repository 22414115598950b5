"""Shared by the Grafana dashboard tests (test_promql_scanner,
test_grafana_dashboard_model, test_grafana_dashboard_metrics): a small PromQL scanner
that finds the metric names and matchers of an expression, and ops/grafana/local-agent.json
read as its panels, their target expressions and its template variables.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

DASHBOARD_PATH = Path(__file__).resolve().parents[2] / "ops" / "grafana" / "local-agent.json"

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
