"""The report's ledgers add up to its figures, on a real InfluxDB.

The film, straw and manure sheets list what each figure is made of. They used to be one
calendar-year query grouped by the stored ``county`` tag, so they disagreed with the
figures in two ways: a film recovery of the next spring (which counts for the season it
recovers) was missing from its year and shown in the next, and a county renamed by a
registry correction lost its entries (the stored tag still had the old name). And a
closed year's sheets were read live, so a late event changed them under frozen figures.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from devstack.servers import Influxd
from farm_contract.indicators import IndicatorId
from farm_contract.payloads import EventType
from farm_contract.registry import Registry
from ingest_service.indicators.closing import ClosedYears
from ingest_service.indicators.engine import IndicatorEngine
from ingest_service.influxql import InfluxQL
from ingest_service.model import Point
from ingest_service.outputs.influx import make_writer
from ingest_service.outputs.lineprotocol import encode
from ingest_service.report.build import Report, build_report
from ingest_service.settings import Settings

pytestmark = pytest.mark.integration

PC, YZ, OLD_YZ = "平城区", "云州区", "大同县"
SITES_CSV = f"""site_id,name,county,site_type,lat,lon,large_scale,area_mu
m1,一号牛场,{PC},manure,40.1,113.3,true,
d1,滴灌一号,{PC},drip,40.1,113.3,,300
d2,滴灌二号,{YZ},drip,40.0,113.6,,200
s1,秸秆一号,{YZ},straw,40.0,113.6,,
"""
DEVICES_CSV = ("device_id,site_id,dev_eui,model\n"
               "m1-dev,m1,,x\nd1-dev,d1,,x\nd2-dev,d2,,x\ns1-dev,s1,,x\n")
NOW = datetime(2026, 7, 1, tzinfo=UTC)
_databases = itertools.count()


def _ns(ts: str, seq: int) -> int:
    return int(datetime.fromisoformat(ts).timestamp()) * 1_000_000_000 + seq


def _event(site: str, county: str, site_type: str, kind: EventType, ts: str, seq: int,
           *, extra_tags: dict[str, str] | None = None, **fields: float) -> Point:
    tags = {"site_id": site, "device_id": f"{site}-dev", "site_type": site_type,
            "county": county, "type": str(kind), **(extra_tags or {})}
    return Point("event", tags, {**fields, "seq": seq}, _ns(ts, seq))


EVENTS = [
    _event("d1", PC, "drip", EventType.FILM_APPLIED, "2025-04-01T10:00:00+08:00", 1, mass_t=10.0),
    _event("d1", PC, "drip", EventType.FILM_RECOVERED, "2025-10-01T10:00:00+08:00", 2, mass_t=6.0),
    # next spring, no season: counts for 2025 (FARM_FILM_RECOVERY_UNTIL 05-31)
    _event("d1", PC, "drip", EventType.FILM_RECOVERED, "2026-03-01T10:00:00+08:00", 3, mass_t=3.0),
    # stored under the county's old name; the registry's undated row corrects it to 云州区
    _event("d2", OLD_YZ, "drip", EventType.FILM_APPLIED, "2025-04-02T10:00:00+08:00", 1,
           mass_t=5.0),
    _event("d2", OLD_YZ, "drip", EventType.FILM_RECOVERED, "2025-10-02T10:00:00+08:00", 2,
           mass_t=4.0),
    _event("s1", OLD_YZ, "straw", EventType.HARVEST, "2025-09-20T10:00:00+08:00", 1,
           extra_tags={"crop": "corn"}, grain_t=100.0),
    _event("s1", OLD_YZ, "straw", EventType.STRAW_UTILIZED, "2025-10-20T10:00:00+08:00", 2,
           extra_tags={"use": "feed"}, mass_t=30.0),
    _event("s1", OLD_YZ, "straw", EventType.STRAW_UTILIZED, "2025-11-20T10:00:00+08:00", 3,
           extra_tags={"use": "fertilizer"}, mass_t=20.0),
    _event("m1", PC, "manure", EventType.MANURE_TREATED, "2025-05-01T10:00:00+08:00", 1,
           mass_t=50.0),
    _event("m1", PC, "manure", EventType.MANURE_UTILIZED, "2025-06-01T10:00:00+08:00", 2,
           extra_tags={"use": "fertilizer"}, mass_t=40.0),
]
LATE = _event("d2", YZ, "drip", EventType.FILM_RECOVERED, "2025-12-30T10:00:00+08:00", 3,
              mass_t=1.0)
"""A 2025 recovery arriving after 2025 was closed."""


@pytest.fixture(scope="module")
def influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Influxd]:
    server = Influxd(tmp_path_factory.mktemp("influxd-ledger"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def settings(influx: Influxd) -> Settings:
    config = Settings(influx_url=influx.url, influx_api="v1",
                      influx_db=f"ledger{next(_databases)}", rollups=False)
    make_writer(config).write(encode(EVENTS))
    return config


def _engine(settings: Settings) -> IndicatorEngine:
    registry = Registry.from_csv(SITES_CSV, DEVICES_CSV)
    return IndicatorEngine(InfluxQL(settings), lambda: registry, settings)


def _report(settings: Settings, year: int) -> Report:
    registry = Registry.from_csv(SITES_CSV, DEVICES_CSV)
    return build_report(_engine(settings), lambda: registry, settings, year, now=NOW)


def _figure(report: Report, indicator: IndicatorId, county: str | None) -> tuple[float, float]:
    (row,) = [r for r in report.indicators if r.indicator == indicator and r.county == county]
    return row.numerator, row.denominator


def _sheet(report: Report, county: str | None, kind: EventType, straw: bool = False) -> float:
    return report.total(county, kind, straw=straw)


def test_ledgers_add_up_to_the_figures_by_season_and_corrected_county(
        settings: Settings) -> None:
    report = _report(settings, 2025)
    for county in (None, PC, YZ):
        recovered, applied = _figure(report, IndicatorId.FILM_RECOVERY_RATE, county)
        assert _sheet(report, county, EventType.FILM_RECOVERED) == pytest.approx(recovered)
        assert _sheet(report, county, EventType.FILM_APPLIED) == pytest.approx(applied)
        used, collectable = _figure(report, IndicatorId.STRAW_UTILIZATION_RATE, county)
        assert _sheet(report, county, EventType.STRAW_UTILIZED) == pytest.approx(used)
        assert _sheet(report, county, EventType.HARVEST, straw=True) == pytest.approx(collectable)
    # the spring recovery is 2025's, under the season it recovers
    assert _sheet(report, PC, EventType.FILM_RECOVERED) == pytest.approx(9.0)
    # the corrected county has its entries, none is left under the old name
    assert _sheet(report, YZ, EventType.FILM_APPLIED) == pytest.approx(5.0)
    assert {e.county for e in report.ledger} == {PC, YZ}
    assert {(e.type, e.item): e.mass_t for e in report.ledger if e.site_id == "s1"
            and e.type == EventType.STRAW_UTILIZED} == {
        (EventType.STRAW_UTILIZED, "feed"): 30.0, (EventType.STRAW_UTILIZED, "fertilizer"): 20.0}
    manure = {(e.type, e.item, e.entries) for e in report.ledger if e.site_id == "m1"}
    assert manure == {(EventType.MANURE_TREATED, "", 1),
                      (EventType.MANURE_UTILIZED, "fertilizer", 1)}
    # and 2026 does not count 2025's spring recovery again
    assert _sheet(_report(settings, 2026), PC, EventType.FILM_RECOVERED) == 0.0


def test_a_closed_years_ledgers_stay_as_closed(settings: Settings) -> None:
    engine = _engine(settings)
    registry = Registry.from_csv(SITES_CSV, DEVICES_CSV)
    years = ClosedYears(engine.query, make_writer(settings))
    years.close(2025, engine, registry, settings, reason="annual report", client="test",
                now=NOW)
    before = _report(settings, 2025)
    make_writer(settings).write(encode([LATE]))

    closed = _report(settings, 2025)
    assert closed.closed
    assert closed.ledger == before.ledger
    recovered, _ = _figure(closed, IndicatorId.FILM_RECOVERY_RATE, YZ)
    assert _sheet(closed, YZ, EventType.FILM_RECOVERED) == pytest.approx(recovered) == 4.0
    assert closed.manure_sites == before.manure_sites
    assert closed.manure_sites[PC] == [("m1", "一号牛场", True)]

    years.reopen(2025, reason="late recovery", client="test", now=NOW)
    reopened = _report(settings, 2025)
    assert _sheet(reopened, YZ, EventType.FILM_RECOVERED) == pytest.approx(5.0)
    recovered, _ = _figure(reopened, IndicatorId.FILM_RECOVERY_RATE, YZ)
    assert recovered == pytest.approx(5.0)
