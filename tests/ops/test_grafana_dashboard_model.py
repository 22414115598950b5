"""ops/grafana/local-agent.json: a valid, importable dashboard model: unique panel ids
laid out on the grid without overlap, every panel querying the Prometheus chosen at import
with a description and a unit, and an instance variable that every selector filters by."""

from __future__ import annotations

import re

from tests.ops.grafana_dashboard_support import (
    _variable_query,
    all_panels,
    dashboard,
    datasource_refs,
    exprs,
    query_panels,
    selectors,
    variables,
)

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
