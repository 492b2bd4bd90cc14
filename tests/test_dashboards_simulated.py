"""Every panel of every committed dashboard, on a simulated year in the real InfluxDB.

Grafana cannot be installed here, so this does what Grafana would: fill in each
panel query's variables and time range (dashboards.panel_queries), run it on the
InfluxDB that ingest filled from a simulated fleet (tests.simulated_year), and
demand the result has the shape the panel draws from (dashboards.shapes) and at
most ``shapes.MAX_ROWS`` rows, targets gated off for the range being empty — for
the whole city, for every county, and for one site. Then a few panels are read
for their numbers, which must be the API's and the registry's.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient

from dashboards import shapes
from dashboards.drip import empty_by_design
from dashboards.panel_queries import iter_panels, panel_queries, variable_queries
from farm_contract import schema
from farm_contract.payloads import EventType
from ingest_service.api.app import create_app
from simulators.fleet import build_registry
from simulators.plan import build_plan
from tests.simulated_year import SimulatedYear, simulated_year

pytestmark = [pytest.mark.integration, pytest.mark.slow]

JSON_DIR = Path(__file__).resolve().parents[1] / "dashboards" / "json"
BOARDS = {p.name: json.loads(p.read_text(encoding="utf-8"))
          for p in sorted(JSON_DIR.glob("*.json"))}


@pytest.fixture(scope="module")
def year(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimulatedYear]:
    with simulated_year(tmp_path_factory.mktemp("simulated"), telemetry_rollups=True) as simulated:
        yield simulated


def time_range(simulated: SimulatedYear) -> tuple[int, int]:
    """As Grafana with "from the 1st of January of the scenario's year to now"."""
    start = datetime(simulated.scenario.year, 1, 1, tzinfo=ZoneInfo("Asia/Shanghai"))
    return int(start.timestamp() * 1000), int(time.time() * 1000) + 60_000


def run(simulated: SimulatedYear, query: str) -> dict[str, Any]:
    result: Any = simulated.influxd.query(query)
    first: dict[str, Any] = result["results"][0]
    return first


def results_of(
    simulated: SimulatedYear, name: str, variables: dict[str, str],
) -> dict[str, dict[str, dict[str, Any]]]:
    """Panel title → refId → InfluxDB result, with every query's shape checked."""
    board = BOARDS[name]
    panels = {p["title"]: p for p in iter_panels(board["panels"])}
    start, end = time_range(simulated)
    variables = {"year": str(simulated.scenario.year), **variables}
    # Members are published once the engine lists them (issue 13); until then their
    # panels are empty, and status (the facility rate's) is null for other indicators.
    has_members = getattr(simulated.service.engine, "members", None) is not None
    # The live panels (operational): n/a where the county has no large-scale farm, and
    # the not-live table empty where every farm of the county (and site) is live.
    county, site = variables.get("county"), variables.get("site", ".*")
    live_farms = [f for f in simulated.service.engine.facility_live_state().farms
                  if county in (schema.CITY_COUNTY_TAG, f.county)]
    not_live = [f for f in live_farms if not f.live and site in (".*", "$__all", f.site_id)]
    out: dict[str, dict[str, dict[str, Any]]] = {}
    problems = []
    for title, ref, query in panel_queries(board, variables, start, end):
        panel = panels[title]
        target = next(t for t in panel["targets"] if t["refId"] == ref)
        result = run(simulated, query)
        if shapes.row_count(result) > shapes.MAX_ROWS:
            problems.append(f"{name} {variables} {title!r} {ref}: "
                            f"{shapes.row_count(result)} rows\n    {query}")
        if not shapes.active(query):  # gated off for this range: empty by design
            if "series" in result or "error" in result:
                problems.append(f"{name} {variables} {title!r} {ref}: gated off, yet "
                                f"{result}\n    {query}")
            continue
        out.setdefault(title, {})[ref] = result
        members = '"indicator_member"' in query
        live = f'"{schema.FACILITY_LIVE}"' in query
        for problem in shapes.check(shapes.expectation(panel, target), result, panel,
                                    allow_null=members or (live and not live_farms)):
            if members and not has_members and problem == "no data":
                continue
            if live and problem == "no data" and not not_live:  # "empty is good"
                continue
            problems.append(f"{name} {variables} {title!r} {ref}: {problem}\n    {query}")
    for title, results in out.items():
        for problem in shapes.check_transformations(panels[title], results):
            problems.append(f"{name} {variables} {title!r}: {problem}")
    assert not problems, "\n".join(problems)
    empty = empty_by_design(str(county), site) & set(panels)
    assert not empty & set(out), "gated off by design, yet ran"
    assert set(out) | empty == set(panels), "every panel ran"
    return out


def variable_values(simulated: SimulatedYear, name: str, variables: dict[str, str]
                    ) -> dict[str, list[str]]:
    values = {}
    variables = {"year": str(simulated.scenario.year), **variables}
    for variable, query in variable_queries(BOARDS[name], variables):
        result = run(simulated, query)
        assert "error" not in result, (name, variable, query, result)
        values[variable] = [row[1] for s in result.get("series", []) for row in s["values"]]
    return values


def test_every_dashboard_is_checked() -> None:
    assert sorted(BOARDS) == ["city-overview.json", "devices.json", "drip-irrigation.json",
                              "indicator-members.json", "livestock-manure.json", "straw.json"]


@pytest.mark.parametrize("name", sorted(BOARDS))
def test_every_panel_has_its_shape_for_the_city_each_county_and_a_site(
    year: SimulatedYear, name: str,
) -> None:
    registry = build_registry(year.scenario)
    for county in [schema.CITY_COUNTY_TAG, *year.counties]:
        values = variable_values(year, name, {"county": county})
        assert values["year"] == [str(year.scenario.year)]
        # every county the indicators list (Datong's ten divisions), with sites or not
        assert values["county"] == sorted([schema.CITY_COUNTY_TAG, *year.listed_counties])
        results_of(year, name, {"county": county})
        if "site" not in values:
            continue
        sites = values["site"]
        in_county = {s.site_id for s in registry.sites_in(
            None if county == schema.CITY_COUNTY_TAG else county)}
        assert sites and set(sites) <= in_county, (name, county, sites)
        results_of(year, name, {"county": county, "site": sites[0]})


def _rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [{**(s.get("tags") or {}), **dict(zip(s["columns"], v, strict=True))}
            for s in result.get("series", []) for v in s["values"]]


def test_city_gauges_and_county_table_show_the_apis_numbers(year: SimulatedYear) -> None:
    client = TestClient(
        create_app(year.service.state, year.service.engine), base_url="http://127.0.0.1"
    )
    api = {(r["indicator"], r["county"] or schema.CITY_COUNTY_TAG): r for r in client.get(
        "/api/v1/indicators", params={"year": year.scenario.year}).json()}
    for county in [schema.CITY_COUNTY_TAG, *year.counties]:
        results = results_of(year, "city-overview.json", {"county": county})
        for title, by_ref in results.items():
            panel = next(p for p in BOARDS["city-overview.json"]["panels"] if p["title"] == title)
            if panel["type"] != "gauge":
                continue
            indicator = panel["description"].split(":")[0]
            expected = api[(indicator, county)]["value"]
            (value,) = [row["value"] for row in _rows(by_ref["A"])]
            assert value == pytest.approx(expected), (county, indicator)
    ranking = results_of(year, "city-overview.json", {"county": "all"})[
        "County ranking, worst first / 区县排名（由低到高）"]["A"]
    rows = _rows(ranking)
    assert len(rows) == 4 * len(year.listed_counties) == 40  # n/a counties too
    for row in rows:
        expected = api[(row["indicator"], row["county"])]
        assert (row["numerator"], row["denominator"]) == pytest.approx(
            (expected["numerator"], expected["denominator"]))
        assert row["value"] == (None if expected["value"] is None
                                else pytest.approx(expected["value"]))


def test_map_shows_every_registry_site_where_it_is(year: SimulatedYear) -> None:
    registry = build_registry(year.scenario)
    for county in year.counties:
        results = results_of(year, "city-overview.json", {"county": county})
        facts = _rows(results["Sites and status / 站点分布与状态"]["A"])
        assert {r["site_id"]: (r["lat"], r["lon"]) for r in facts} == {
            s.site_id: (s.lat, s.lon) for s in registry.sites_in(county)}
        status = _rows(results["Sites and status / 站点分布与状态"]["B"])
        assert {r["site_id"] for r in status} <= {r["site_id"] for r in facts}
        assert all(isinstance(r["online"], bool) for r in status)


def test_straw_produced_and_used_are_the_indicators(year: SimulatedYear) -> None:
    client = TestClient(
        create_app(year.service.state, year.service.engine), base_url="http://127.0.0.1"
    )
    api = {r["county"]: r for r in client.get(
        "/api/v1/indicators", params={"year": year.scenario.year}).json()
        if r["indicator"] == "straw_utilization_rate"}
    rows = _rows(results_of(year, "straw.json", {"county": "all"})[
        "Straw produced vs used, by county / 秸秆产生量与利用量"]["A"])
    assert {r["county"]: (r["produced_t"], r["utilized_t"]) for r in rows} == {
        c: pytest.approx((api[c]["denominator"], api[c]["numerator"]))
        for c in year.listed_counties}  # (0, 0) for the divisions without straw sites


def test_burning_and_open_faults_are_the_planned_ones(year: SimulatedYear) -> None:
    plan = build_plan(year.scenario)
    burned: dict[str, int] = {}
    latest: dict[tuple[str, str], tuple[datetime, EventType]] = {}
    for device, event in plan.events():
        site = device.site.site_id
        if event.type == EventType.STRAW_BURNING:
            burned[site] = burned.get(site, 0) + 1
        if event.type in (EventType.FACILITY_FAULT, EventType.FACILITY_OK):
            key = (site, event.fields["facility"])
            if key not in latest or latest[key][0] <= event.ts:
                latest[key] = (event.ts, event.type)
    open_faults = {k for k, (_, kind) in latest.items() if kind == EventType.FACILITY_FAULT}
    assert open_faults, "the scenario has open faults"

    straw = _rows(results_of(year, "straw.json", {"county": "all"})[
        "Burning incidents / 秸秆焚烧事件"]["A"])
    assert {r["site_id"]: r["events"] for r in straw if r["type"] == "straw_burning"} == burned
    manure = _rows(results_of(year, "livestock-manure.json", {"county": "all"})[
        "Open faults / 未修复故障"]["A"])
    assert {(r["site_id"], r["facility"]) for r in manure
            if r["type"] == "facility_fault"} == open_faults


def test_drip_county_rows_are_the_sums_of_their_site_rows(year: SimulatedYear) -> None:
    """For the whole city the drip use tables show a row per county (issue 15: a row per
    site is thousands); each must be what adding up that county's per-site rows gives."""
    water, fertiliser = ("Water used per mu vs quota / 亩均用水与定额",
                         "Fertigation total / 施肥总量")
    by_county = "Water per mu by county / 各区县亩均用水"
    city = results_of(year, "drip-irrigation.json", {"county": schema.CITY_COUNTY_TAG})
    assert water not in city  # per-site rows: one county chosen only
    use = {r["county"]: r["water_m3"] for r in _rows(city[by_county]["A"])}
    areas = {r["county"]: r for r in _rows(city[by_county]["B"])}
    fert = {r["county"]: r["fertilizer_l"] for r in _rows(city[fertiliser]["B"])}
    assert "A" not in city[fertiliser]  # gated off for the city
    assert use and set(fert) == set(use) and set(use) <= set(areas)
    checked = 0
    for county in year.counties:
        one = results_of(year, "drip-irrigation.json", {"county": county})
        assert "B" not in one[fertiliser]
        site_use = {r["site_id"]: r["water_m3"] for r in _rows(one[water]["A"])}
        facts = {r["site_id"]: r for r in _rows(one[water]["B"])}
        site_fert = [r["fertilizer_l"] for r in _rows(one[fertiliser]["A"])]
        if not facts:
            assert county not in areas and county not in use
            continue
        assert use[county] == pytest.approx(sum(site_use.values()), rel=1e-9)
        assert fert.get(county, 0.0) == pytest.approx(sum(site_fert), rel=1e-9)
        county_areas = areas[county]
        assert county_areas["area_mu"] == pytest.approx(sum(f["area_mu"] for f in facts.values()))
        quoted = [f for f in facts.values() if f["water_quota_m3_per_mu"] is not None]
        assert county_areas["quota_area_mu"] == pytest.approx(sum(f["area_mu"] for f in quoted))
        assert county_areas["quota_m3"] == pytest.approx(
            sum(f["area_mu"] * f["water_quota_m3_per_mu"] for f in quoted))
        # the one-county table of that county is the same row
        (row,) = _rows(one[by_county]["A"])
        assert row["water_m3"] == use[county]
        checked += 1
    # The simulated year's roll-ups cover November on, when no drip field is irrigated:
    # the use is 0 on both sides here; tests/test_dashboards.py checks it non-zero.
    assert checked >= 2 and sum(a["area_mu"] for a in areas.values()) > 0
