"""dashboards/: generated Grafana JSON, provisioning files and the panel queries.

Grafana itself does not run here; what can be checked without it is: the
committed JSON is what the generator makes, every panel reads the provisioned
InfluxQL datasource with raw queries, the provisioning files have the keys
Grafana needs, panel_queries fills in variables as Grafana does, and every
panel query runs on a real InfluxDB holding contract-shaped points (§9).
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from dashboards import generate
from dashboards.panel_queries import (
    auto_interval_ms,
    format_interval,
    iter_panels,
    panel_queries,
    variable_queries,
)
from devstack.servers import Influxd
from farm_contract import schema
from farm_contract.indicators import TARGETS, IndicatorId

ROOT = Path(__file__).resolve().parents[1]
JSON_DIR = ROOT / "dashboards" / "json"
PROVISIONING = ROOT / "dashboards" / "provisioning"
START = datetime(2026, 5, 1, tzinfo=UTC)
END = START + timedelta(hours=1)


def committed() -> dict[str, dict[str, Any]]:
    return {p.name: json.loads(p.read_text(encoding="utf-8")) for p in JSON_DIR.glob("*.json")}


def test_committed_json_is_generated(tmp_path: Path) -> None:
    written = generate.write_all(tmp_path)
    assert sorted(p.name for p in written) == sorted(p.name for p in JSON_DIR.glob("*.json"))
    for path in written:
        assert path.read_bytes() == (JSON_DIR / path.name).read_bytes(), (
            f"{path.name} is stale: run python -m dashboards.generate")
    # Deterministic: a second run writes the same bytes.
    again = generate.write_all(tmp_path / "again")
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in written]


def test_generate_cli_writes_to_out(tmp_path: Path) -> None:
    assert generate.main(["--out", str(tmp_path)]) == 0
    assert (tmp_path / "city-overview.json").is_file()


@pytest.mark.parametrize("name", sorted(committed()))
def test_panels_use_the_datasource_and_raw_influxql(name: str) -> None:
    board = committed()[name]
    panels = list(iter_panels(board["panels"]))
    assert panels
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    assert board["uid"] and board["title"]
    for panel in panels:
        assert panel["datasource"] == {"type": "influxdb", "uid": "farm-influx"}, panel["title"]
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "farm-influx"
            assert target["rawQuery"] is True
            assert target["query"].startswith("SELECT ")
            assert "$timeFilter" in target["query"], "every panel query is bounded in time"
    for variable in board["templating"]["list"]:
        assert variable["datasource"]["uid"] == "farm-influx"


def test_city_overview_content() -> None:
    board = committed()["city-overview.json"]
    assert board["title"] == "City overview / 城市总览"
    panels = list(iter_panels(board["panels"]))
    gauges = [p for p in panels if p["type"] == "gauge"]
    seen = set()
    for gauge in gauges:
        query = gauge["targets"][0]["query"]
        (indicator,) = re.findall(r"\"indicator\" = '(\w+)'", query)
        steps = gauge["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert steps[-1] == {"color": "green", "value": TARGETS[IndicatorId(indicator)]}
        assert f'FROM "{schema.INDICATOR}"' in query and "/^$county$/" in query
        seen.add(indicator)
    assert seen == {i.value for i in IndicatorId}
    trends = [p for p in panels if p["type"] == "timeseries" and "indicator" in str(p)]
    assert len(trends) == 4
    assert all("GROUP BY time($__interval)" in p["targets"][0]["query"] for p in trends)
    table = next(p for p in panels if p["type"] == "table")
    assert 'GROUP BY "county"' in table["targets"][0]["query"]
    queries = " ".join(t["query"] for p in panels for t in p["targets"])
    assert f'FROM "{schema.TELEMETRY}"' in queries and 'mean("soil_moisture_vwc")' in queries
    assert f'FROM "{schema.REJECTION}"' in queries and 'GROUP BY time($__interval), "reason"' in (
        queries)
    (county,) = board["templating"]["list"]
    assert county["name"] == "county"
    assert county["query"] == 'SHOW TAG VALUES FROM "indicator" WITH KEY = "county"'
    assert county["current"]["value"] == schema.CITY_COUNTY_TAG


def test_datasource_provisioning() -> None:
    data = yaml.safe_load((PROVISIONING / "datasources" / "influxdb.yaml").read_text())
    assert data["apiVersion"] == 1
    (source,) = data["datasources"]
    for key in ("name", "type", "access", "url", "uid"):
        assert source.get(key), key
    assert source["uid"] == "farm-influx" and source["type"] == "influxdb"
    assert source["access"] == "proxy"
    assert source["jsonData"]["dbName"] == "farm"
    assert source["jsonData"].get("version", "InfluxQL") == "InfluxQL"
    header = source["jsonData"]["httpHeaderName1"]
    assert header == "Authorization"
    assert source["secureJsonData"]["httpHeaderValue1"].startswith("Token $")


def test_dashboard_provider_provisioning() -> None:
    data = yaml.safe_load((PROVISIONING / "dashboards" / "farm.yaml").read_text())
    assert data["apiVersion"] == 1
    (provider,) = data["providers"]
    for key in ("name", "type"):
        assert provider.get(key), key
    assert provider["type"] == "file"
    assert provider["folder"] == "Farm / 农业"
    assert provider["options"]["path"].startswith("/")


# --- panel_queries ----------------------------------------------------------------


def synthetic_board() -> dict[str, Any]:
    """Every variable syntax, a hidden target and a collapsed row."""
    q = generate.target
    box = generate.Box(0, 0, 12, 8)
    panels = [
        generate.panel("timeseries", "plain", box, [
            q('SELECT mean("x") FROM "m" WHERE "county" = \'$county\' AND $timeFilter '
              "GROUP BY time($__interval)"),
            q('SELECT mean("x") FROM "m" WHERE "county" =~ /^${county}$/ AND $timeFilter '
              "GROUP BY time($interval)", "B"),
            {**q('SELECT "x" FROM "m" WHERE $unknown', "C"), "hide": True},
        ]),
        {"type": "row", "title": "row", "collapsed": True, "panels": [
            generate.panel("table", "in row", box, [
                q('SELECT last("x") FROM "m" WHERE "site_id" =~ /[[site]]/ AND $timeFilter '
                  "AND $__interval_ms > 0 AND $__from < $__to"),
            ]),
        ]},
    ]
    variables = [
        generate.query_variable("county", "County", 'SHOW TAG VALUES WITH KEY = "county"', "all"),
        generate.query_variable("site", "Site", 'SHOW TAG VALUES WITH KEY = "site_id"', "s1"),
    ]
    return generate.dashboard("t", "t", panels, variables=variables)


def test_panel_queries_substitutes_like_grafana() -> None:
    start_ms = int(START.timestamp() * 1000)
    queries = panel_queries(synthetic_board(), {"county": "云州区"}, START, END)
    assert [(title, ref) for title, ref, _ in queries] == [
        ("plain", "A"), ("plain", "B"), ("in row", "A")]
    time_filter = f"time >= {start_ms}ms and time <= {start_ms + 3_600_000}ms"
    # 1 h over 1000 points = 3.6 s, which Grafana rounds to 5 s.
    assert queries[0][2] == (
        f'SELECT mean("x") FROM "m" WHERE "county" = \'云州区\' AND {time_filter} '
        "GROUP BY time(5s)")
    assert queries[1][2] == (
        f'SELECT mean("x") FROM "m" WHERE "county" =~ /^云州区$/ AND {time_filter} '
        "GROUP BY time(5s)")
    # The dashboard's current value when no value is given.
    assert queries[2][2] == (
        f'SELECT last("x") FROM "m" WHERE "site_id" =~ /s1/ AND {time_filter} '
        f"AND 5000 > 0 AND {start_ms} < {start_ms + 3_600_000}")


def test_panel_queries_escapes_regex_values_only_in_regexes() -> None:
    queries = panel_queries(synthetic_board(), {"county": "a.b/c"}, START, END)
    assert "\"county\" = 'a.b/c'" in queries[0][2]
    assert r'"county" =~ /^a\.b\/c$/' in queries[1][2]
    multi = panel_queries(synthetic_board(), {"county": ["x", "y+"]}, START, END)
    assert r'"county" =~ /^(x|y\+)$/' in multi[1][2]


def test_panel_queries_intervals() -> None:
    assert format_interval(3_600_000) == "1h" and format_interval(500) == "500ms"
    assert auto_interval_ms(0, 7 * 86_400_000, 1000) == 600_000
    assert auto_interval_ms(0, 3_600_000, 1000, "1m") == 60_000
    fixed = panel_queries(synthetic_board(), {}, START, END, interval="1h")
    assert "GROUP BY time(1h)" in fixed[0][2]
    floor = panel_queries(synthetic_board(), {}, 0, 3_600_000, min_interval="1m")
    assert "GROUP BY time(1m)" in floor[0][2]


def test_panel_queries_refuses_unknown_variables() -> None:
    board = generate.dashboard("t", "t", [generate.panel(
        "timeseries", "p", generate.Box(0, 0, 1, 1),
        [generate.target('SELECT "x" FROM "m" WHERE "a" = \'$nope\' AND $timeFilter')])])
    with pytest.raises(KeyError, match="nope"):
        panel_queries(board, {}, START, END)


@pytest.mark.parametrize("name", sorted(committed()))
def test_panel_queries_leave_no_variables(name: str) -> None:
    board = committed()[name]
    queries = panel_queries(board, {}, START, END)
    assert len(queries) == sum(len(p["targets"]) for p in iter_panels(board["panels"]))
    for title, ref, query in queries:
        assert "$" not in query.replace("$/", ""), (title, ref, query)
        assert "[[" not in query, (title, ref, query)
    for _, query in variable_queries(board):
        assert "$" not in query


# --- every panel query on a real InfluxDB ---------------------------------------

COUNTY = "平城区"


def contract_points(now_ms: int) -> str:
    """A few points of each measurement the dashboards read, as the ingest service writes them."""
    lines = []
    for minutes_ago in (30, 10):
        ts = now_ms - minutes_ago * 60_000
        for indicator in IndicatorId:
            for scope, county in (("city", schema.CITY_COUNTY_TAG), ("county", COUNTY)):
                lines.append(
                    f"{schema.INDICATOR},indicator={indicator.value},scope={scope},county={county}"
                    f" value=0.9,numerator=9,denominator=10,target={TARGETS[indicator]},year=2026i"
                    f" {ts}"
                )
        lines.append(
            f"{schema.TELEMETRY},site_id=drip-1,device_id=dev-1,site_type=drip,county={COUNTY}"
            f" soil_moisture_vwc=0.31,flow_lpm=12.5,valve_open=true,seq={minutes_ago}i {ts}"
        )
        lines.append(
            f"{schema.REJECTION},reason=unknown_device"
            f' topic="farm/v1/s1/nobody/telemetry",payload="{{\\"v\\":1}}",'
            f'detail="device nobody is not in the registry" {ts}'
        )
    return "\n".join(lines) + "\n"


@pytest.mark.integration
def test_every_panel_query_returns_data(influxd: Influxd) -> None:
    now_ms = int(time.time() * 1000)
    response = httpx.post(
        f"{influxd.url}/write", params={"db": "farm", "precision": "ms"},
        content=contract_points(now_ms).encode(), timeout=10,
    )
    assert response.status_code == 204, response.text
    start, end = now_ms - 3_600_000, now_ms + 60_000
    for name, board in committed().items():
        for _, query in variable_queries(board):
            result: Any = influxd.query(query)["results"]
            values = {row[1] for row in result[0]["series"][0]["values"]}
            assert {schema.CITY_COUNTY_TAG, COUNTY} <= values
        for county in (schema.CITY_COUNTY_TAG, COUNTY):
            for title, ref, query in panel_queries(board, {"county": county}, start, end):
                result = influxd.query(query)["results"]
                result = result[0]
                assert "error" not in result, (name, title, ref, query, result)
                assert result.get("series"), (name, county, title, ref, query)
