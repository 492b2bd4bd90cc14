"""Grafana for every year (issue 13): the publisher's ``indicator`` and ``indicator_member``
points and every panel that reads them, on a real InfluxDB, for two past years and
the current one, the city and each county (one of them n/a), across Datong's year
boundary, after a registry change and a late event.

The panel queries are run as Grafana would send them (dashboards.panel_queries) and
their rows compared with the engine's figures and with numbers worked out by hand.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from dashboards import shapes
from dashboards.panel_queries import iter_panels, panel_queries, variable_queries
from devstack.servers import Influxd
from farm_contract import schema
from farm_contract.indicators import IndicatorId, IndicatorValue, Member
from farm_contract.registry import Registry
from ingest_service.indicators.engine import IndicatorEngine, year_window
from ingest_service.indicators.late_events import LateEventMarker
from ingest_service.indicators.publisher import (
    INDICATOR_MEMBER,
    IndicatorPublisher,
    YearSchedule,
    indicator_points,
)
from ingest_service.influxql import InfluxQL, quote_literal, time_literal
from ingest_service.model import FieldValue, Point
from ingest_service.outputs.influx import make_writer
from ingest_service.outputs.lineprotocol import encode
from ingest_service.settings import Settings

pytestmark = pytest.mark.integration

SHANGHAI = ZoneInfo("Asia/Shanghai")
PC, YG = "平城区", "阳高县"
ALL = schema.CITY_COUNTY_TAG
JSON_DIR = Path(__file__).resolve().parents[1] / "dashboards" / "json"
BOARDS = {p.name: json.loads(p.read_text(encoding="utf-8")) for p in JSON_DIR.glob("*.json")}
FILM = IndicatorId.FILM_RECOVERY_RATE.value
STRAW = IndicatorId.STRAW_UTILIZATION_RATE.value
MANURE = IndicatorId.MANURE_FACILITY_RATE.value
NOW = datetime(2026, 5, 1, tzinfo=UTC)
"""The publisher's "now": 2026 is the current year, 2024 and 2025 are past."""


def sites_csv(m1_large_scale: bool) -> str:
    return ("site_id,name,county,site_type,lat,lon,large_scale,area_mu\n"
            f"d1,滴灌一号,{PC},drip,40.1,113.3,,300\n"
            f"d2,滴灌二号,{YG},drip,40.4,113.8,,200\n"
            f"s1,秸秆一号,{PC},straw,40.1,113.3,,500\n"
            f"m1,一号牛场,{PC},manure,40.1,113.3,{str(m1_large_scale).lower()},\n")


DEVICES_CSV = "device_id,site_id,dev_eui,model\n" + "".join(
    f"{s}-dev,{s},,sim\n" for s in ("d1", "d2", "s1", "m1"))
REGISTRY = Registry.from_csv(sites_csv(True), DEVICES_CSV)
SITE_TYPE = {s.site_id: str(s.site_type) for s in REGISTRY.sites.values()}
_seq = iter(range(1, 10**6))


def event(site: str, kind: str, ts: str, **extra: float | str) -> Point:
    """An ``event`` point as ingest writes it (contract §9)."""
    seq = next(_seq)
    tags = {"site_id": site, "device_id": f"{site}-dev", "site_type": SITE_TYPE[site],
            "county": REGISTRY.sites[site].county, "type": kind}
    fields: dict[str, FieldValue] = {"seq": seq}
    for key, value in extra.items():
        if isinstance(value, str):
            tags[key] = value
        else:
            fields[key] = float(value)
    moment = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    return Point("event", tags, fields, int(moment.timestamp()) * 10**9 + seq)


BOUNDARY = event("d1", "film_recovered", "2025-12-31T20:00:00Z", mass_t=4.0)
"""2026-01-01 04:00 in Datong: counts for 2026, not for 2025 (as in UTC)."""

POINTS = [
    # 2024: 平城区 film 6 / 10; straw corn 10 t grain × 1.2 = 12 t, 9 t used; 阳高县 nothing
    event("d1", "film_applied", "2024-05-01T02:00:00Z", mass_t=10.0),
    event("d1", "film_recovered", "2024-10-01T02:00:00Z", mass_t=6.0),
    event("s1", "harvest", "2024-09-20T02:00:00Z", crop="corn", grain_t=10.0),
    event("s1", "straw_utilized", "2024-10-20T02:00:00Z", use="feed", mass_t=9.0),
    # 2025: 平城区 film 8 / 10, straw 12 / 12; 阳高县 film 5 / 5
    event("d1", "film_applied", "2025-05-01T02:00:00Z", mass_t=10.0),
    event("d1", "film_recovered", "2025-10-01T02:00:00Z", mass_t=8.0),
    event("d2", "film_applied", "2025-05-01T02:00:00Z", mass_t=5.0),
    event("d2", "film_recovered", "2025-10-01T02:00:00Z", mass_t=5.0),
    event("s1", "harvest", "2025-09-20T02:00:00Z", crop="corn", grain_t=10.0),
    event("s1", "straw_utilized", "2025-10-20T02:00:00Z", use="feed", mass_t=12.0),
    BOUNDARY,
    # 2026 (to NOW): 平城区 film (5 + 4) / 10, no straw; 阳高县 nothing; m1 reports
    event("d1", "film_applied", "2026-03-01T02:00:00Z", mass_t=10.0),
    event("d1", "film_recovered", "2026-04-01T02:00:00Z", mass_t=5.0),
    Point("telemetry", {"site_id": "m1", "device_id": "m1-dev", "site_type": "manure",
                        "county": PC}, {"lagoon_level_pct": 40.0, "seq": 1},
          int((NOW - timedelta(hours=2)).timestamp()) * 10**9),
]

FILM_BY_HAND: dict[tuple[int, str], float | None] = {
    (2024, PC): 0.6, (2024, YG): None, (2024, ALL): 0.6,
    (2025, PC): 0.8, (2025, YG): 1.0, (2025, ALL): 13 / 15,
    (2026, PC): 0.9, (2026, YG): None, (2026, ALL): 0.9,
}
"""Film recovery worked out by hand from :data:`POINTS`, with Datong's year boundary."""


class MemberEngine(IndicatorEngine):
    """An engine with ``members`` (issue 13) for the film rate, from the stored events.

    ``hidden`` sites are left out, as a correction moving a site's events would.
    """

    def __init__(self, query: InfluxQL, registry: Registry, settings: Settings) -> None:
        super().__init__(query, lambda: self.registry, settings)
        self.registry = registry
        self.settings = settings
        self.hidden: set[str] = set()
        self.computed: list[int] = []

    def compute(self, year: int, county: str | None = None,
                now: datetime | None = None) -> list[IndicatorValue]:
        self.computed.append(year)
        return super().compute(year, county, now)

    def members(self, year: int, now: datetime | None = None) -> list[Member]:
        window = year_window(year, self.settings.tz, now or datetime.now(UTC))
        tonnes: dict[tuple[str, str], list[float]] = {}
        for index, kind in enumerate(("film_recovered", "film_applied")):
            q = (f'SELECT sum("mass_t") FROM "event" WHERE "type" = {quote_literal(kind)}'
                 f" AND time >= {time_literal(window.start)}"
                 f" AND time < {time_literal(window.as_of)} GROUP BY \"site_id\", \"county\"")
            for series in self.query(q):
                key = (series.tags["site_id"], series.tags["county"])
                tonnes.setdefault(key, [0.0, 0.0])[index] = float(series.rows()[0]["sum"])
        return [
            Member(indicator=IndicatorId.FILM_RECOVERY_RATE, year=year, county=county,
                   site_id=site, name=self.registry.sites[site].name,
                   numerator=num, denominator=den)
            for (site, county), (num, den) in sorted(tonnes.items()) if site not in self.hidden
        ]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Influxd]:
    influxd = Influxd(tmp_path / "influxd")
    influxd.start()
    influxd.query("CREATE DATABASE farm")
    yield influxd
    influxd.stop()


def setup(influxd: Influxd, points: list[Point] = POINTS) -> tuple[Settings, MemberEngine]:
    settings = Settings(influx_url=influxd.url, influx_api="v1", rollups=False)
    make_writer(settings).write(encode(points))
    return settings, MemberEngine(InfluxQL(settings), REGISTRY, settings)


def publisher(settings: Settings, engine: MemberEngine, **kwargs: Any) -> IndicatorPublisher:
    return IndicatorPublisher(engine, make_writer(settings), settings,
                              registry=lambda: engine.registry, **kwargs)


# --- reading the panels -------------------------------------------------------------


def reads_indicators(query: str) -> bool:
    return f'FROM "{schema.INDICATOR}"' in query or f'FROM "{INDICATOR_MEMBER}"' in query


def tag_values(server: Influxd, query: str) -> list[str]:
    """What a ``SHOW TAG VALUES`` variable lists, as Grafana reads it (second column)."""
    result: Any = server.query(query)
    return [row[1] for s in result["results"][0].get("series", []) for row in s["values"]]


def rows_of(result: dict[str, Any]) -> list[dict[str, Any]]:
    return [{**(s.get("tags") or {}), **dict(zip(s["columns"], v, strict=True))}
            for s in result.get("series", []) for v in s["values"]]


def year_range(year: int) -> tuple[int, int]:
    """As Grafana with the year's first day (in Datong) to just after the publication."""
    start = datetime(year, 1, 1, tzinfo=SHANGHAI)
    return int(start.timestamp() * 1000), int(NOW.timestamp() * 1000) + 120_000


def own_range(year: int) -> tuple[int, int]:
    """The year itself in Datong, as a viewer picks it to read the year's events."""
    start, end = (datetime(y, 1, 1, tzinfo=SHANGHAI) for y in (year, year + 1))
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000) - 1


def panels_of(
    influxd: Influxd, name: str, variables: dict[str, str], year: int,
    allow_null: bool = False, time_range: tuple[int, int] | None = None,
) -> dict[str, dict[str, Any]]:
    """Title → result of every panel of ``name`` that reads published indicators."""
    board = BOARDS[name]
    panels = {p["title"]: p for p in iter_panels(board["panels"])}
    start, end = time_range or year_range(year)
    out: dict[str, dict[str, Any]] = {}
    for title, ref, query in panel_queries(board, variables, start, end):
        if not reads_indicators(query):
            continue
        answer: Any = influxd.query(query)
        result = answer["results"][0]
        panel = panels[title]
        target = next(t for t in panel["targets"] if t["refId"] == ref)
        problems = shapes.check(shapes.expectation(panel, target), result, panel,
                                allow_null=allow_null)
        if allow_null:  # an n/a figure: its trend has no point, its drill-down no member
            problems = [p for p in problems if p != "no data"]
        assert not problems, (name, variables, title, query, problems)
        out[title] = result
    return out


def expected_rows(engine: MemberEngine, year: int) -> dict[tuple[str, str], IndicatorValue]:
    return {(str(r.indicator), r.county or ALL): r for r in engine.compute(year, now=NOW)}


def gauge_values(results: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    board = {p["title"]: p for p in BOARDS["city-overview.json"]["panels"]}
    out = {}
    for title, result in results.items():
        if board.get(title, {}).get("type") == "gauge":
            rows = rows_of(result)
            assert len(rows) <= 1, (title, rows)
            # no row and a null value both show the gauge's noValue (无数据 n/a)
            out[board[title]["description"].split(":")[0]] = rows[0]["value"] if rows else None
    return out


def approx(value: float | None) -> object:
    return None if value is None else pytest.approx(value)


# --- every year, every county ---------------------------------------------------------


def test_every_indicator_panel_for_two_past_years_and_the_current_one(server: Influxd) -> None:
    settings, engine = setup(server)
    pub = publisher(settings, engine)
    assert pub.publish_once(now=NOW) > 0
    assert engine.computed == [2026, 2025, 2024], "the current year, then the past, newest first"

    board = BOARDS["city-overview.json"]
    years = tag_values(server, dict(variable_queries(board))["year"])
    assert sorted(years) == ["2024", "2025", "2026"]
    for year in (2024, 2025, 2026):
        expected = expected_rows(engine, year)
        counties = dict(variable_queries(board, {"year": str(year)}))["county"]
        assert sorted(tag_values(server, counties)) == sorted([ALL, PC, YG])
        for county in (ALL, PC, YG):
            variables = {"county": county, "year": str(year)}
            na = any(expected[i.value, county].value is None for i in IndicatorId)
            city = panels_of(server, "city-overview.json", variables, year, allow_null=na)
            gauges = gauge_values(city)
            assert set(gauges) == {i.value for i in IndicatorId}
            for indicator, value in gauges.items():
                assert value == approx(expected[indicator, county].value), (year, county)
            assert gauges[FILM] == approx(FILM_BY_HAND[year, county]), (year, county)
            # The year, not the time range, picks the figure: the year's own range
            # (published later, after a back-fill) shows the same gauges.
            alone = panels_of(server, "city-overview.json", variables, year, allow_null=True,
                              time_range=own_range(year))
            assert gauge_values(alone) == gauges

            ranking = rows_of(city["County ranking, worst first / 区县排名（由低到高）"])
            assert {(r["indicator"], r["county"]) for r in ranking} == {
                (i.value, c) for i in IndicatorId for c in (PC, YG)}
            for row in ranking:
                want = expected[row["indicator"], row["county"]]
                assert (row["value"], row["numerator"], row["denominator"]) == (
                    approx(want.value), approx(want.numerator), approx(want.denominator))
                assert row["met"] == (None if want.value is None else want.met), row
            bars = rows_of(city["Indicators by county / 各区县指标对比"])
            assert {(r["indicator"], r["county"]): r["value"] for r in bars} == {
                (r["indicator"], r["county"]): approx(expected[r["indicator"], r["county"]].value)
                for r in bars}

            straw = panels_of(server, "straw.json", variables, year, allow_null=True)
            produced = rows_of(straw["Straw produced vs used, by county / 秸秆产生量与利用量"])
            assert {r["county"]: (r["produced_t"], r["utilized_t"]) for r in produced} == {
                c: (approx(expected[STRAW, c].denominator), approx(expected[STRAW, c].numerator))
                for c in ((PC, YG) if county == ALL else (county,))}

            check_members(server, engine, year, county)


def check_members(server: Influxd, engine: MemberEngine, year: int, county: str) -> None:
    """The drill-down of the film rate: the engine's members, summing to the figure."""
    variables = {"county": county, "year": str(year), "indicator": FILM}
    figure = engine.compute(year, None if county == ALL else county, now=NOW)
    (row,) = [r for r in figure if r.indicator == FILM and (r.county or ALL) == county]
    members = [m for m in engine.members(year, now=NOW) if county in (ALL, m.county)]
    # status is only the facility rate's: null for film members (their rows are checked)
    results = panels_of(server, "indicator-members.json", variables, year, allow_null=True)
    listed = rows_of(results["Members / 构成站点"])
    assert sorted((r["site_id"], r["county"], r["name"], r["numerator"], r["denominator"])
                  for r in listed) == sorted(
        (m.site_id, m.county, m.name, approx(m.numerator), approx(m.denominator))
        for m in members)
    (shown,) = rows_of(results["Figure / 指标值"])
    assert (shown["value"], shown["numerator"], shown["denominator"]) == (
        approx(row.value), approx(row.numerator), approx(row.denominator))
    sums = rows_of(results["Members' sums / 明细合计"])
    if members:
        (total,) = sums
        assert (total["numerator"], total["denominator"], total["sites"]) == (
            approx(row.numerator), approx(row.denominator), len(members))
    else:
        assert sums == [] or sums[0]["sites"] in (None, 0)


def test_the_gauges_open_the_drill_down_with_county_and_year() -> None:
    members = BOARDS["indicator-members.json"]
    names = [v["name"] for v in members["templating"]["list"]]
    assert names == ["year", "county", "indicator"]
    indicator_options = {o["value"] for o in members["templating"]["list"][2]["options"]}
    assert indicator_options == {i.value for i in IndicatorId}
    gauges = [p for p in BOARDS["city-overview.json"]["panels"] if p["type"] == "gauge"]
    assert len(gauges) == 4
    for gauge in gauges:
        indicator = gauge["description"].split(":")[0]
        (link,) = gauge["fieldConfig"]["defaults"]["links"]
        assert link["url"].startswith(f"/d/{members['uid']}/")
        for part in (f"var-indicator={indicator}", "var-county=${county}", "var-year=${year}"):
            assert part in link["url"], (indicator, link)
        assert gauge["fieldConfig"]["defaults"]["noValue"] == "无数据 n/a"


# --- n/a after a figure: a registry change, a restart, a site leaving -----------------


def test_a_figure_that_became_na_shows_empty_not_its_old_value(server: Influxd) -> None:
    settings, engine = setup(server)
    publisher(settings, engine).publish_once(now=NOW)
    before = gauge_values(panels_of(server, "city-overview.json",  # 2026 straw is n/a
                                    {"county": PC, "year": "2026"}, 2026, allow_null=True))
    assert before[MANURE] == 1.0, "m1 is large-scale and reports"

    # m1 is no longer large-scale: no farm counts, every year. A fresh publisher (a
    # restart) must also retire d2 from the film members it no longer lists.
    engine.registry = Registry.from_csv(sites_csv(False), DEVICES_CSV)
    engine.hidden = {"d2"}
    later = NOW + timedelta(minutes=1)
    publisher(settings, engine).publish_once(now=later)
    for year in (2024, 2025, 2026):
        for county in (PC, ALL):
            variables = {"county": county, "year": str(year)}
            city = panels_of(server, "city-overview.json", variables, year, allow_null=True)
            assert gauge_values(city)[MANURE] is None, (year, county)
            ranking = {(r["indicator"], r["county"]): r for r in rows_of(
                city["County ranking, worst first / 区县排名（由低到高）"])}
            assert ranking[MANURE, PC]["value"] is None and ranking[MANURE, PC]["met"] is None
            assert ranking[MANURE, PC]["denominator"] == 0
        members = panels_of(server, "indicator-members.json",
                            {"county": ALL, "year": str(year), "indicator": FILM}, year,
                            allow_null=True)
        assert "d2" not in {r["site_id"] for r in rows_of(members["Members / 构成站点"])}


def test_the_county_list_is_the_chosen_years_published_counties(server: Influxd) -> None:
    """A county the registry had in 2020 but no longer has is not offered for 2026."""
    settings, engine = setup(server)
    publisher(settings, engine).publish_once(now=NOW)
    old = [IndicatorValue.of(IndicatorId.FILM_RECOVERY_RATE, "county", "旧县", 2020, 1, 2)]
    make_writer(settings).write(encode(indicator_points(old, 10**18)))
    board = BOARDS["straw.json"]
    for year, counties in ((2020, ["旧县"]), (2026, [ALL, PC, YG])):
        query = dict(variable_queries(board, {"year": str(year)}))["county"]
        assert sorted(tag_values(server, query)) == sorted(counties), year


# --- which years a cycle computes ---------------------------------------------------------


def test_late_events_and_the_periodic_refresh_update_a_past_year(server: Influxd) -> None:
    settings, engine = setup(server)
    pub = publisher(settings, engine, schedule=YearSchedule(refresh_every=3))
    pub.publish_once(now=NOW)
    engine.computed.clear()
    assert pub.publish_once(now=NOW + timedelta(minutes=1)) == 12, "2026's rows, no member news"
    assert engine.computed == [2026], "nothing changed in the past: not recomputed"

    # A late 2024 recovery through ingest: its mark makes 2024 due at the next cycle.
    writer = make_writer(settings)
    late = event("d1", "film_recovered", "2024-11-01T02:00:00Z", mass_t=1.0)
    writer.write(encode([late]))
    LateEventMarker(writer, settings.tz, "test", clock=time.time_ns).stored([late.time_ns])
    pub.publish_once(now=NOW + timedelta(minutes=2))
    assert engine.computed[-2:] == [2026, 2024]
    gauges = gauge_values(panels_of(server, "city-overview.json",
                                    {"county": PC, "year": "2024"}, 2024))
    assert gauges[FILM] == pytest.approx(0.7)

    # A write that bypasses ingest leaves no mark: the periodic refresh finds it.
    writer.write(encode([event("d1", "film_recovered", "2025-11-01T02:00:00Z", mass_t=1.0)]))
    engine.computed.clear()
    written = pub.publish_once(now=NOW + timedelta(minutes=3))  # 4th cycle: refresh_every=3
    assert engine.computed == [2026, 2025, 2024]
    # 2026's 12 rows, 2025's 12 rows and its 2 members (d1 changed); 2024 is unchanged
    assert written == 12 + 12 + 2
    gauges = gauge_values(panels_of(server, "city-overview.json",
                                    {"county": PC, "year": "2025"}, 2025))
    assert gauges[FILM] == pytest.approx(0.9)


def test_a_cycle_is_bounded_however_many_years(server: Influxd) -> None:
    old = [event("d1", kind, f"{year}-06-01T02:00:00Z", mass_t=1.0)
           for year in (2021, 2022, 2023) for kind in ("film_applied", "film_recovered")]
    settings, engine = setup(server, POINTS + old)
    pub = publisher(settings, engine, schedule=YearSchedule(past_per_cycle=2))
    for cycle in range(4):
        started = time.perf_counter()
        pub.publish_once(now=NOW + timedelta(minutes=cycle))
        print(f"cycle {cycle}: years {engine.computed}, {time.perf_counter() - started:.3f} s")
        assert len(engine.computed) <= 3
        engine.computed.clear()
    years = tag_values(server, 'SHOW TAG VALUES FROM "indicator" WITH KEY = "period"')
    assert set(years) == {str(y) for y in range(2021, 2027)}
    for year in (2021, 2022, 2023):
        assert gauge_values(panels_of(server, "city-overview.json",  # film only: allow n/a
                                      {"county": PC, "year": str(year)}, year,
                                      allow_null=True))[FILM] == 1.0


def test_the_current_year_is_datongs(server: Influxd) -> None:
    """At 2025-12-31T17:00Z it is already 2026 in Datong: 2026 is the current year."""
    settings, engine = setup(server)
    pub = publisher(settings, engine)
    pub.publish_once(now=datetime(2025, 12, 31, 17, tzinfo=UTC))
    assert engine.computed[0] == 2026 and 2025 in engine.computed


def _run(schedule: YearSchedule, current: int, marks: dict[str, int],
         registry: object | None) -> list[int]:
    """One cycle's plan, then every planned past year computed (first year: 2023)."""
    due = schedule.plan(current, 2023 if schedule.needs_first_year() else None, marks, registry)
    for year in due[1:]:
        schedule.computed(year)
    return due


def test_year_schedule_rules() -> None:
    schedule = YearSchedule(refresh_every=100, past_per_cycle=1)
    registry, marks, later = object(), {"2024-03": 1}, {"2024-03": 2}
    assert _run(schedule, 2026, marks, registry) == [2026, 2025], "none done: newest first"
    assert _run(schedule, 2026, marks, registry) == [2026, 2024]
    assert _run(schedule, 2026, marks, registry) == [2026, 2023]
    assert _run(schedule, 2026, marks, registry) == [2026], "all done: the current year only"
    assert _run(schedule, 2026, later, registry) == [2026, 2024], "a late event in 2024"
    assert _run(schedule, 2026, later, object()) == [2026, 2025], "a new registry: all"
    assert schedule.dirty == {2023, 2024}
    _run(schedule, 2026, later, None)
    _run(schedule, 2026, later, None)
    assert _run(schedule, 2026, later, None) == [2026]
    assert _run(schedule, 2027, later, None) == [2027, 2026], "2026 just ended"
    assert _run(schedule, 2027, later, None) == [2027]

    periodic = YearSchedule(refresh_every=3, past_per_cycle=5)
    assert _run(periodic, 2026, {}, None) == [2026, 2025, 2024, 2023]
    assert _run(periodic, 2026, {}, None) == [2026]
    assert _run(periodic, 2026, {}, None) == [2026]
    assert _run(periodic, 2026, {}, None) == [2026, 2025, 2024, 2023], "every 3rd cycle"
