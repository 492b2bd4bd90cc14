"""Issue 13 point 5 (every figure opens) and point 4's display rules, API and report side,
against a real InfluxDB: the members of a figure add up to it (JSON, CSV, the workbook's
members sheets), a site's events carry their corrections, the indicator rows' lineage
reaches the CSV, and n/a reads "无数据 n/a" (empty in CSV), never 0 % or "not met".
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from openpyxl import load_workbook

from devstack.servers import Influxd
from farm_contract.indicators import IndicatorId, IndicatorValue
from farm_contract.registry import Registry
from ingest_service.api.app import create_app
from ingest_service.api.indicators import indicators_csv
from ingest_service.api.members import MEMBER_COLUMNS, event_values, received_at
from ingest_service.indicators.engine import IndicatorEngine
from ingest_service.influxql import InfluxQL
from ingest_service.model import Point
from ingest_service.outputs.influx import make_writer
from ingest_service.outputs.lineprotocol import encode
from ingest_service.report.build import CITY_LABEL, INDICATOR_LABELS, Report
from ingest_service.report.excel import (
    CAPPED_LABEL,
    MEMBER_SHEETS,
    NOT_AVAILABLE,
    PARAMETERS_SHEET,
    SHEETS,
    TOTAL_LABEL,
    workbook_bytes,
)
from ingest_service.settings import Settings
from ingest_service.state import RegistryHolder, ServiceState

pytestmark = pytest.mark.integration
PC, YZ, XR = "平城区", "云州区", "新荣区"
SITES_CSV = f"""site_id,name,county,site_type,lat,lon,large_scale,area_mu
f1,覆膜一号,{PC},drip,40.1,113.3,,300
f2,=覆膜二号,{PC},drip,40.1,113.3,,100
s1,秸秆一号,{PC},straw,40.1,113.3,,
f3,云州覆膜,{YZ},drip,40.0,113.6,,200
m1,一号牛场,{PC},manure,40.1,113.3,true,
m2,二号牛场,{PC},manure,40.1,113.3,true,
m3,云州牛场,{YZ},manure,40.0,113.6,true,
x1,新荣滴灌,{XR},drip,40.2,113.1,,50
"""
DEVICES_CSV = "device_id,site_id,dev_eui,model\n" + "".join(
    f"{s}-dev,{s},,x\n" for s in ("f1", "f2", "s1", "f3", "m1", "m2", "m3", "x1"))
SITE_TYPE = {"f1": "drip", "f2": "drip", "s1": "straw", "f3": "drip", "m1": "manure",
             "m2": "manure", "m3": "manure", "x9": "drip"}
COUNTY = {"f1": PC, "f2": PC, "s1": PC, "f3": YZ, "m1": PC, "m2": PC, "m3": YZ, "x9": "外县"}
CST = ZoneInfo("Asia/Shanghai")
YEAR = 2025
REL = 1e-9
CORRECTED_MS = 1_759_300_000_000
"""When the first version of f1's seq 2 was received (before its correction)."""


def _ns(day: str) -> int:
    return int(datetime.fromisoformat(day).replace(tzinfo=CST).timestamp()) * 1_000_000_000


def _tags(site: str) -> dict[str, str]:
    return {"site_id": site, "device_id": f"{site}-dev", "site_type": SITE_TYPE[site],
            "county": COUNTY[site]}


def _event(site: str, seq: int, kind: str, day: str, **fields: float | int | str) -> Point:
    own = {k: str(v) for k, v in fields.items() if k in ("crop", "use", "facility")}
    numbers = {k: v for k, v in fields.items() if k not in own}
    return Point("event", {**_tags(site), "type": kind, **own}, {**numbers, "seq": seq},
                 _ns(day) + seq)


def _reading(site: str, seq: int, day: str) -> Point:
    return Point("telemetry", _tags(site), {"battery_v": 3.6, "seq": seq}, _ns(day) + seq)


def points() -> list[Point]:
    return [
        _event("f1", 1, "film_applied", "2025-04-01T09:00", mass_t=10.0),
        _event("f1", 2, "film_recovered", "2025-10-01T09:00", mass_t=9.0,
               received_ms=CORRECTED_MS + 3_600_000),
        _event("f1", 3, "film_recovered", "2025-10-02T09:00", mass_t=0.5),
        _event("f1", 4, "film_applied", "2024-04-01T09:00", mass_t=50.0),  # another year
        _event("f2", 1, "film_applied", "2025-04-03T09:00", mass_t=2.5),
        _event("f2", 2, "film_recovered", "2025-10-03T09:00", mass_t=1.25),
        _event("s1", 1, "harvest", "2025-09-20T09:00", grain_t=5.0, crop="corn"),
        _event("s1", 2, "harvest", "2025-09-21T09:00", grain_t=4.0, crop="potato"),
        _event("s1", 3, "straw_utilized", "2025-11-01T09:00", mass_t=6.0, use="fertilizer"),
        _event("f3", 1, "film_applied", "2025-04-05T09:00", mass_t=3.0),
        _event("f3", 2, "film_recovered", "2025-10-05T09:00", mass_t=3.3),
        _event("x9", 1, "film_applied", "2025-04-05T09:00", mass_t=100.0),  # not registered
        _event("m1", 1, "manure_treated", "2025-03-01T09:00", mass_t=40.0),
        _event("m1", 2, "facility_fault", "2025-05-01T09:00", facility="lagoon"),
        _event("m1", 3, "facility_ok", "2025-05-03T09:00", facility="lagoon"),
        _event("m2", 1, "facility_fault", "2025-11-01T00:00", facility="separator"),
        # m1 reports on 36 days, the last on 31 December: equipped however "equipped" is
        # read (the last 24 h of the year, or ≥ 30 days of it: issue 13 point 1)
        *[_reading("m1", 100 + day, f"2025-02-{day:02d}T12:00") for day in range(1, 29)],
        *[_reading("m1", 200 + day, f"2025-03-{day:02d}T12:00") for day in range(1, 8)],
        _reading("m1", 300, "2025-12-31T20:00"),
        _reading("m2", 10, "2025-06-10T12:00"),
        _reading("m2", 11, "2025-06-11T12:00"),
        # the version of f1's seq 2 that a correction replaced (ingest's event identity)
        Point("event_version", {"device_id": "f1-dev", "site_id": "f1",
                                "type": "film_recovered"},
              {"mass_t": 8.0, "seq": 2, "received_ms": CORRECTED_MS,
               "event_ns": _ns("2025-10-01T09:00") + 2}, _ns("2025-10-01T11:00")),
    ]


@pytest.fixture(scope="module")
def influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Influxd]:
    server = Influxd(tmp_path_factory.mktemp("influxd-members"))
    server.start()
    server.query("CREATE DATABASE farm")
    make_writer(Settings(influx_url=server.url, influx_api="v1")).write(encode(points()))
    yield server
    server.stop()


def _client(influx: Influxd, **overrides: object) -> TestClient:
    config = Settings.model_validate({"influx_url": influx.url, "influx_api": "v1",
                                      **overrides})
    query = InfluxQL(config)
    state = ServiceState(config, RegistryHolder(Registry.from_csv(SITES_CSV, DEVICES_CSV)),
                         broker_connected=lambda: True, influx_reachable=query.ping)
    engine = IndicatorEngine(query, state.registry.get, config)
    return TestClient(create_app(state, engine), base_url="http://127.0.0.1")


@pytest.fixture(scope="module")
def client(influx: Influxd) -> Iterator[TestClient]:
    with _client(influx) as made:
        yield made


@pytest.fixture(scope="module")
def figures(client: TestClient) -> list[dict[str, Any]]:
    response = client.get("/api/v1/indicators", params={"year": YEAR})
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()
    return rows


def _members(client: TestClient, indicator: str, **params: object) -> list[dict[str, Any]]:
    response = client.get(f"/api/v1/indicators/{indicator}/members",
                          params={"year": YEAR, **params})
    assert response.status_code == 200, response.text
    rows: list[dict[str, Any]] = response.json()
    return rows


def _plain_numerator(figure: dict[str, Any]) -> float:
    """The numerator before the city counts a county above 100 % at 100 % (flag
    ``county_capped``, from the issue-13 engine): what the members add up to."""
    plain: float = figure.get("quality", {}).get("uncapped_numerator", figure["numerator"])
    assert ("county_capped" in figure["flags"]) == (plain != figure["numerator"])
    return plain


def _figure(figures: list[dict[str, Any]], indicator: str, county: str | None
            ) -> dict[str, Any]:
    (row,) = [r for r in figures if r["indicator"] == indicator and r["county"] == county]
    return row


# --- members add up to the figures -------------------------------------------------------


def test_members_add_up_to_every_figure(
    client: TestClient, figures: list[dict[str, Any]],
) -> None:
    for indicator in IndicatorId:
        everyone = _members(client, indicator)
        by_county: dict[str | None, list[dict[str, Any]]] = defaultdict(list)
        for member in everyone:
            assert member["indicator"] == indicator and member["year"] == YEAR
            by_county[member["county"]].append(member)
            by_county[None].append(member)
        for county in (None, PC, YZ, XR):
            figure = _figure(figures, indicator, county)
            mine = by_county[county] if county is None else _members(client, indicator,
                                                                      county=county)
            assert mine == by_county[county], (indicator, county)
            assert sum(m["numerator"] for m in mine) == pytest.approx(
                _plain_numerator(figure), rel=REL, abs=1e-12), (indicator, county)
            assert sum(m["denominator"] for m in mine) == pytest.approx(
                figure["denominator"], rel=REL, abs=1e-12), (indicator, county)


def test_the_figures_are_the_hand_computed_ones(figures: list[dict[str, Any]]) -> None:
    """So "members add up to the figure" cannot pass with both wrong the same way."""
    film = _figure(figures, IndicatorId.FILM_RECOVERY_RATE, PC)
    assert (film["numerator"], film["denominator"]) == pytest.approx((10.75, 12.5))
    straw = _figure(figures, IndicatorId.STRAW_UTILIZATION_RATE, PC)
    assert straw["numerator"] == pytest.approx(6.0) and straw["denominator"] > 0
    facility = _figure(figures, IndicatorId.MANURE_FACILITY_RATE, PC)
    assert (facility["numerator"], facility["denominator"]) == (1, 2)
    city_film = _figure(figures, IndicatorId.FILM_RECOVERY_RATE, None)
    assert city_film["denominator"] == pytest.approx(15.5)  # not the 外县 site's 100 t


def test_facility_members_say_why(client: TestClient) -> None:
    farms = {m["site_id"]: m for m in _members(client, IndicatorId.MANURE_FACILITY_RATE)}
    assert set(farms) == {"m1", "m2", "m3"}
    assert farms["m1"]["status"] == "equipped" and farms["m1"]["numerator"] == 1
    assert farms["m2"]["status"] == "not_equipped" and farms["m2"]["numerator"] == 0
    for farm in farms.values():
        assert {"days_reported", "longest_open_fault_days", "last_reading"} <= set(farm["detail"])
    assert farms["m1"]["detail"]["days_reported"] == 36
    assert farms["m2"]["detail"]["longest_open_fault_days"] > 0
    assert farms["m3"]["detail"]["last_reading"] is None
    film = _members(client, IndicatorId.FILM_RECOVERY_RATE)
    assert {m["site_id"] for m in film if m["numerator"] or m["denominator"]} == {
        "f1", "f2", "f3"}
    assert all(m["status"] is None for m in film)


def test_unknown_county_and_indicator(client: TestClient) -> None:
    figures = client.get("/api/v1/indicators", params={"year": YEAR, "county": "无此县"})
    members = client.get("/api/v1/indicators/film_recovery_rate/members",
                         params={"year": YEAR, "county": "无此县"})
    assert members.status_code == figures.status_code == 404
    assert members.json() == figures.json()
    assert set(members.json()["known_counties"]) >= {PC, YZ, XR}
    for path in ("/api/v1/indicators/no_such/members", "/api/v1/indicators/no_such/events"):
        answer = client.get(path, params={"year": YEAR, "site_id": "f1"})
        assert answer.status_code == 422, path
    assert client.get("/api/v1/indicators/film_recovery_rate/events",
                      params={"year": YEAR}).status_code == 422  # site_id is required


# --- CSV ------------------------------------------------------------------------------------


def _csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text.removeprefix("\ufeff"))))


def test_members_csv_has_the_fixed_and_detail_columns(client: TestClient) -> None:
    path = "/api/v1/indicators/manure_facility_rate/members"
    answer = client.get(path, params={"year": YEAR}, headers={"Accept": "text/csv"})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/csv")
    assert answer.text.startswith("\ufeff")
    header = next(csv.reader(io.StringIO(answer.text.removeprefix("\ufeff"))))
    json_rows = {m["site_id"]: m for m in _members(client, IndicatorId.MANURE_FACILITY_RATE)}
    details = sorted({key for m in json_rows.values() for key in m["detail"]})
    assert header == [*MEMBER_COLUMNS, *details]
    assert {"days_reported", "last_reading", "longest_open_fault_days"} <= set(details)
    rows = {r["site_id"]: r for r in _csv(answer.text)}
    assert rows.keys() == json_rows.keys()
    assert rows["m1"]["status"] == "equipped" and float(rows["m1"]["numerator"]) == 1
    assert rows["m1"]["days_reported"] == str(json_rows["m1"]["detail"]["days_reported"])
    assert rows["m3"]["last_reading"] == ""
    film = client.get("/api/v1/indicators/film_recovery_rate/members",
                      params={"year": YEAR, "format": "csv", "bom": "false"})
    assert not film.text.startswith("\ufeff")
    names = {r["site_id"]: r["name"] for r in _csv(film.text)}
    assert names["f2"] == "'=覆膜二号"  # a registry name is never a live formula
    assert sum(float(r["numerator"]) for r in _csv(film.text)) == pytest.approx(14.05)


LINEAGE = ("computed_at", "formula", "parameters", "source", "coverage", "flags", "closed")


def test_indicators_csv_carries_lineage_and_na_is_empty(
    client: TestClient, figures: list[dict[str, Any]],
) -> None:
    answer = client.get("/api/v1/indicators", params={"year": YEAR, "format": "csv"})
    header = next(csv.reader(io.StringIO(answer.text.removeprefix("\ufeff"))))
    assert set(LINEAGE) <= set(header) and header == list(IndicatorValue.model_fields)
    rows = _csv(answer.text)
    assert len(rows) == len(figures) >= 4 * 4
    for row, figure in zip(rows, figures, strict=True):
        assert json.loads(row["parameters"]) == figure["parameters"]
        assert json.loads(row["flags"]) == figure["flags"]
        assert row["formula"] == figure["formula"] and row["source"] == figure["source"]
        if figure["value"] is None:
            assert row["value"] == "" and row["met"] == "", row
        else:
            assert float(row["value"]) == pytest.approx(figure["value"], abs=1e-4)
            assert row["met"] == ("true" if figure["met"] else "false")
    na = [r for r in rows if r["value"] == ""]
    assert {(r["indicator"], r["county"]) for r in na} >= {
        ("straw_utilization_rate", YZ), ("straw_utilization_rate", XR),
        ("film_recovery_rate", XR), ("manure_facility_rate", XR)}


def test_csv_lineage_cells_are_json_and_a_null_met_is_empty() -> None:
    """As the issue-13 engine fills them in: parameters and flags, and ``met`` null for n/a
    (``model_copy`` sets it as that engine will)."""
    when = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)
    flagged = IndicatorValue.of(IndicatorId.STRAW_UTILIZATION_RATE, "county", PC, YEAR, 5, 4)
    flagged = flagged.model_copy(update={
        "computed_at": when, "formula": "straw_utilization_rate/2", "source": "rollup+raw",
        "parameters": {"ratio.corn": 0.84, "source.ratio.corn": "霍丽丽 2020"},
        "flags": ["above_100_percent"], "coverage": 2 / 3})
    empty = IndicatorValue.of(IndicatorId.FILM_RECOVERY_RATE, "county", XR, YEAR, 0, 0)
    empty = empty.model_copy(update={"met": None})
    first, second = _csv(indicators_csv([flagged, empty]))
    assert json.loads(first["parameters"]) == flagged.parameters
    assert json.loads(first["flags"]) == ["above_100_percent"]
    assert first["computed_at"] == "2026-01-02T03:04:00Z" and first["source"] == "rollup+raw"
    assert first["coverage"] == "0.6667" and first["met"] == "true" and first["closed"] == "false"
    assert second["value"] == second["met"] == second["coverage"] == ""


# --- events -----------------------------------------------------------------------------------


def test_events_of_a_member_with_received_and_corrections(client: TestClient) -> None:
    answer = client.get("/api/v1/indicators/film_recovery_rate/events",
                        params={"year": YEAR, "site_id": "f1"})
    assert answer.status_code == 200, answer.text
    events = answer.json()
    assert [(e["device_id"], e["seq"]) for e in events] == [("f1-dev", 1), ("f1-dev", 2),
                                                           ("f1-dev", 3)]  # not 2024's
    recovered = sum(e["values"]["mass_t"] for e in events
                    if e["values"]["type"] == "film_recovered")
    (member,) = [m for m in _members(client, IndicatorId.FILM_RECOVERY_RATE)
                 if m["site_id"] == "f1"]
    assert recovered == pytest.approx(member["numerator"])
    second = events[1]
    assert second["ts"].startswith("2025-10-01T01:00:00")
    assert datetime.fromisoformat(second["received"]) == datetime.fromtimestamp(
        (CORRECTED_MS + 3_600_000) / 1000, UTC)
    (old,) = second["corrections"]
    assert old["values"] == {"mass_t": 8.0}
    assert datetime.fromisoformat(old["received"]).timestamp() * 1000 == CORRECTED_MS
    assert events[0]["corrections"] == [] and events[0]["received"] is None
    facility = client.get("/api/v1/indicators/manure_facility_rate/events",
                          params={"year": YEAR, "site_id": "m2"}).json()
    assert [(e["values"]["type"], e["values"]["facility"]) for e in facility] == [
        ("facility_fault", "separator")]
    assert client.get("/api/v1/indicators/film_recovery_rate/events",
                      params={"year": YEAR, "site_id": "nowhere"}).json() == []


def test_event_values_and_received_flat_or_nested() -> None:
    """An engine may give an event's values at its top level or nested under ``values``."""
    flat = {"device_id": "d", "seq": 1, "ts": 5, "type": "harvest", "grain_t": 2.0,
            "received_ms": CORRECTED_MS, "crop": ""}
    nested = {"device_id": "d", "seq": 1, "ts": "2025-01-01T00:00:00Z", "role": "denominator",
              "values": {"type": "harvest", "grain_t": 2.0, "received_ms": CORRECTED_MS}}
    assert event_values(flat) == {"type": "harvest", "grain_t": 2.0}
    assert event_values(nested) == {"type": "harvest", "grain_t": 2.0, "role": "denominator"}
    for event in (flat, nested):
        assert received_at(event) == datetime.fromtimestamp(CORRECTED_MS / 1000, UTC)
    assert received_at({"values": {}}) is None


def test_new_routes_need_the_read_token(influx: Influxd) -> None:
    token = {"Authorization": "Bearer sesame"}
    with _client(influx, api_token="sesame") as guarded:
        for path, params in (
            ("/api/v1/indicators/film_recovery_rate/members", {"year": YEAR}),
            ("/api/v1/indicators/film_recovery_rate/events", {"year": YEAR, "site_id": "f1"}),
        ):
            assert guarded.get(path, params=params).status_code == 401, path
            assert guarded.get(path, params=params, headers=token).status_code == 200, path


# --- the workbook -----------------------------------------------------------------------------


def _sheet_rows(book: Any, title: str) -> list[tuple[Any, ...]]:
    sheet = book[title]
    return [row for row in sheet.iter_rows(min_row=5, values_only=True) if row[0] is not None]


def test_workbook_members_sheets_add_up_to_the_summary(
    client: TestClient, figures: list[dict[str, Any]],
) -> None:
    answer = client.get("/api/v1/report", params={"year": YEAR})
    assert answer.status_code == 200, answer.text
    book = load_workbook(io.BytesIO(answer.content))
    assert book.sheetnames == list(SHEETS)
    summary = {}
    for row in _sheet_rows(book, SHEETS[0]):
        if row[1] is None:
            continue  # the notes under the table
        (indicator,) = [i for i, (zh, en, _) in INDICATOR_LABELS.items()
                        if row[1] == f"{zh} {en}"]
        summary[(indicator, row[0])] = row
    for indicator, title in MEMBER_SHEETS.items():
        totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        shown_totals: dict[str, tuple[float, float]] = {}
        counted: dict[str, tuple[float, float]] = {}
        for county, site, _name, num, den, _status, _detail in _sheet_rows(book, title):
            if site in (TOTAL_LABEL, CAPPED_LABEL):
                (shown_totals if site == TOTAL_LABEL else counted)[county] = (num, den)
                continue
            for key in (county, CITY_LABEL):
                totals[key][0] += num
                totals[key][1] += den
        assert set(shown_totals) == {scope for (i, scope) in summary if i == indicator}, title
        assert {PC, YZ, XR, CITY_LABEL} <= set(shown_totals)
        for scope, (num, den) in shown_totals.items():
            row = summary[(indicator, scope)]
            assert (num, den) == pytest.approx(tuple(totals[scope]), rel=REL, abs=1e-12)
            figure = _figure(figures, indicator, None if scope == CITY_LABEL else scope)
            assert num == pytest.approx(_plain_numerator(figure), rel=REL, abs=1e-12)
            # the summary's figure: the members' total, or the city's counted row if capped
            num, den = counted.get(scope, (num, den))
            assert (num, den) == pytest.approx((row[2], row[3]), rel=REL, abs=1e-12), scope
        assert set(counted) <= {CITY_LABEL}
    facility = {r[1]: r for r in _sheet_rows(book, MEMBER_SHEETS[IndicatorId.MANURE_FACILITY_RATE])}
    assert facility["m1"][5].startswith("✓") and "days_reported=36" in facility["m1"][6]
    assert facility["m2"][5].startswith("✗")


def test_workbook_shows_na_as_no_data(
    client: TestClient, figures: list[dict[str, Any]],
) -> None:
    book = load_workbook(io.BytesIO(client.get("/api/v1/report", params={"year": YEAR}).content))
    rows = {(r[0], r[1]): r for r in _sheet_rows(book, SHEETS[0]) if r[1] is not None}
    straw = "秸秆综合利用率 Straw utilization rate"
    for county in (YZ, XR):
        row = rows[(county, straw)]
        assert row[5] == NOT_AVAILABLE and row[7] == NOT_AVAILABLE, row
    measured, figure = rows[(PC, straw)], _figure(figures, "straw_utilization_rate", PC)
    assert measured[5] == pytest.approx(figure["value"], rel=REL)
    assert measured[7].startswith("✓" if figure["met"] else "✗")
    assert not any(r[7].startswith(("✗", "✓")) for r in rows.values() if r[5] == NOT_AVAILABLE)
    params = {r[0]: r[4] for r in _sheet_rows(book, PARAMETERS_SHEET)}
    registry = Registry.from_csv(SITES_CSV, DEVICES_CSV)
    assert params["登记册摘要 Registry digest (SHA-256)"] == registry.digest()


def test_workbook_shows_flags_parameters_and_formulas() -> None:
    """Lineage as the issue-13 engine fills it in: shown on the summary and parameters."""
    when = datetime(2026, 1, 2, 3, 4, tzinfo=UTC)

    def figure(county: str | None, num: float, den: float, ratio: float) -> IndicatorValue:
        item = IndicatorValue.of(IndicatorId.STRAW_UTILIZATION_RATE,
                                 "city" if county is None else "county", county, YEAR, num, den)
        return item.model_copy(update={
            "computed_at": when, "formula": "straw_utilization_rate/2", "source": "rollup",
            "parameters": {"ratio.corn": ratio, "collectable.corn": 0.8},
            "flags": ["above_100_percent"] if num > den else []})

    no_data = figure(XR, 0, 0, 1.2).model_copy(update={"met": None})  # as the engine will
    city = figure(None, 12.5, 12, 1.2)  # PC counted at 100 % in the city: 10 + 0.5 + 0
    city = city.model_copy(update={"flags": [*city.flags, "county_capped"]})
    report = Report(year=YEAR, as_of=when, generated=when, counties=[PC, YZ, XR],
                    indicators=[city, figure(PC, 12.5, 10, 1.2),
                                figure(YZ, 0.5, 2, 0.84), no_data],
                    ledger=[], registry_digest="abc123")
    book = load_workbook(io.BytesIO(workbook_bytes(report)))
    summary = {r[0]: r for r in _sheet_rows(book, SHEETS[0]) if r[1] is not None}
    assert summary[PC][8] == "⚠ >100 %"
    assert summary[CITY_LABEL][8] == "⚠ >100 % ⚠ 区县按 100 % 计 counties capped at 100 %"
    counted = [r for r in _sheet_rows(book, MEMBER_SHEETS[IndicatorId.STRAW_UTILIZATION_RATE])
               if r[1] == CAPPED_LABEL]
    assert [(r[0], r[3], r[4]) for r in counted] == [(CITY_LABEL, 12.5, 12)]
    assert summary[YZ][8] in (None, "")
    assert summary[XR][5] == summary[XR][7] == NOT_AVAILABLE
    params = _sheet_rows(book, PARAMETERS_SHEET)
    by_name = defaultdict(list)
    for row in params[2:]:
        assert row[1] == "straw_utilization_rate/2" and row[2] == "rollup"
        by_name[row[3]].append((row[4], row[5]))
    assert by_name["collectable.corn"] == [(0.8, "全部 all")]
    assert sorted(by_name["ratio.corn"]) == [(0.84, YZ), (1.2, f"{CITY_LABEL}, {PC}, {XR}")]
    assert params[0][4] == "abc123" and "2026-01-02" in params[1][4]
