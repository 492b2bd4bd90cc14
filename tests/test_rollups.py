"""Monthly roll-ups (ingest_service/indicators/rollups.py): the same indicators as the raw
events, always.

A small simulated fleet (bench's year generator) for 2024 and 2025, plus hand-made
events on the Asia/Shanghai year boundary and facility faults that span years,
in a real InfluxDB; every computation is compared with the raw one.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from bench.indicators import lines, registry
from devstack.servers import Influxd, Mosquitto
from farm_contract.indicators import IndicatorValue
from farm_contract.registry import Registry
from ingest_service.indicators import aggregates
from ingest_service.indicators.aggregates import Aggregates
from ingest_service.indicators.engine import IndicatorEngine
from ingest_service.indicators.late_events import LateEventMarker, late_months
from ingest_service.indicators.months import Month, Span, gaps
from ingest_service.indicators.publisher import IndicatorPublisher
from ingest_service.indicators.rollups import (
    DAYS_ROWS,
    MASS_ROWS,
    PART_BYTES,
    RollupMaintainer,
    RollupReader,
    rollup_points,
    unpack_rows,
)
from ingest_service.influxql import InfluxQL, QueryError, Series
from ingest_service.model import FieldValue, Inbound, Point
from ingest_service.outputs.influx import WriteError, make_writer
from ingest_service.outputs.lineprotocol import encode
from ingest_service.pipeline.batcher import Pipeline
from ingest_service.pipeline.enrich import Enricher
from ingest_service.service import IngestService
from ingest_service.settings import Settings
from ingest_service.state import Stats
from tests.helpers import (
    DEVICES_CSV,
    SITES_CSV,
    mosquitto_pub,
    rows,
    wait_for,
    write_registry,
)

SHANGHAI = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 3, 1, tzinfo=SHANGHAI)
"""The clock of these tests: everything up to January 2026 can be rolled up."""
REGISTRY = registry(60)


def _site(site_id: str) -> tuple[str, str]:
    site = REGISTRY.sites[site_id]
    return site.county, str(site.site_type)


def event(site_id: str, kind: str, at: datetime, seq: int, **extra: float | str) -> Point:
    """An ``event`` point as ingest stores it, for a site of :data:`REGISTRY`."""
    county, site_type = _site(site_id)
    tags = {"site_id": site_id, "device_id": "d" + site_id[1:], "site_type": site_type,
            "county": county, "type": kind}
    fields: dict[str, FieldValue] = {"seq": seq}
    for key, value in extra.items():
        if isinstance(value, str):
            tags[key] = value
        else:
            fields[key] = float(value)
    return Point("event", tags, fields, int(at.timestamp() * 1000) * 1_000_000 + seq)


DRIP, MANURE_A, MANURE_B, MANURE_C = "s00000", "s00001", "s00004", "s00007"
EDGES = [
    # the year boundary in Datong: 15:59:59Z is still 2024, 16:00:00Z is 1 January 2025
    event(DRIP, "film_applied", datetime(2024, 12, 31, 15, 59, 59, tzinfo=UTC), 900_001,
          mass_t=50.0),
    event(DRIP, "film_applied", datetime(2024, 12, 31, 16, tzinfo=UTC), 900_002, mass_t=7.0),
    # a lagoon fault open from November 2024 until February 2025 ...
    event(MANURE_A, "facility_fault", datetime(2024, 11, 20, 2, tzinfo=UTC), 900_003,
          facility="lagoon"),
    event(MANURE_A, "facility_ok", datetime(2025, 2, 3, 2, tzinfo=UTC), 900_004,
          facility="lagoon"),
    # ... and open again from August 2025: the latest fault is not the first one
    event(MANURE_A, "facility_fault", datetime(2025, 8, 10, 2, tzinfo=UTC), 900_008,
          facility="lagoon"),
    # a storage fault from June 2024 that nobody fixes
    event(MANURE_B, "facility_fault", datetime(2024, 6, 1, 2, tzinfo=UTC), 900_005,
          facility="storage"),
    # fault and ok in the same millisecond: seq decides (fixed)
    event(MANURE_C, "facility_fault", datetime(2025, 3, 10, 2, tzinfo=UTC), 900_006,
          facility="digester"),
    event(MANURE_C, "facility_ok", datetime(2025, 3, 10, 2, tzinfo=UTC), 900_007,
          facility="digester"),
]


def _settings(influxd: Influxd, **overrides: object) -> Settings:
    return Settings.model_validate(
        {"influx_url": influxd.url, "influx_api": "v1", **overrides}
    )


def _load(influxd: Influxd) -> None:
    """Two simulated years, then the hand-made edge cases."""
    writer = make_writer(_settings(influxd))
    for year, seed in ((2024, 1), (2025, 2)):
        writer.write("\n".join(lines(REGISTRY, year, SHANGHAI, seed=seed)).encode())
    writer.write(encode(EDGES))


class Rig:
    """The raw engine, the roll-up engine and the maintainer over one InfluxDB."""

    def __init__(self, influxd: Influxd, reg: Registry = REGISTRY) -> None:
        self.settings = _settings(influxd)
        self.query = InfluxQL(self.settings)
        self.writer = make_writer(self.settings)
        self.raw = IndicatorEngine(self.query, lambda: reg, _settings(influxd, rollups=False))
        self.rolled = IndicatorEngine(self.query, lambda: reg, self.settings)
        self.maintainer = RollupMaintainer(self.query, self.writer, self.settings,
                                           months_per_cycle=None)
        self.reader = RollupReader(self.query, SHANGHAI)
        self.counties = reg.counties

    def same(self, year: int, now: datetime) -> list[IndicatorValue]:
        """Roll-up and raw rows for the city and every county (one computation gives them
        all; a county's alone is filtered from it): must be identical."""
        rows = self.rolled.compute(year, now=now)
        assert _plain(rows) == _plain(self.raw.compute(year, now=now)), (year, now)
        return rows

    def covered(self, year: int, now: datetime) -> set[Month]:
        """The months of ``year`` the roll-up engine would read from roll-ups."""
        start = datetime(year, 1, 1, tzinfo=SHANGHAI)
        as_of = min(datetime(year + 1, 1, 1, tzinfo=SHANGHAI), now)
        return set(self.reader.read(start, as_of, now))


def _plain(rows: list[IndicatorValue]) -> list[dict[str, object]]:
    """The rows without what differs between two computations of the same figures."""
    return [row.model_dump(exclude={"computed_at", "source"}) for row in rows]


def _months(year: int, first: int, last: int) -> set[Month]:
    return {Month(year, m) for m in range(first, last + 1)}


def _by_name(rows: list[IndicatorValue]) -> dict[tuple[str, str | None], IndicatorValue]:
    return {(str(r.indicator), r.county): r for r in rows}


@pytest.mark.slow
@pytest.mark.integration
def test_rollups_give_exactly_the_raw_indicators(influxd: Influxd) -> None:
    _load(influxd)
    rig = Rig(influxd)
    before = rig.same(2025, NOW)  # nothing rolled up yet: all raw
    done = rig.maintainer.maintain_once(NOW)
    assert Month(2025, 6) in done.built and Month(2026, 2) not in done.built
    assert done.built[0] == Month(2026, 1) and done.pending == 0
    assert rig.covered(2025, NOW) == _months(2025, 1, 12)
    assert _plain(rig.same(2025, NOW)) == _plain(before)
    assert {row.source for row in rig.rolled.compute(2024, now=NOW)} == {"rollup"}
    # 2025's film recoveries run to 31 May 2026: February 2026 is read raw
    assert {row.source for row in rig.rolled.compute(2025, now=NOW)} == {"rollup+raw"}
    rows = _by_name(before)
    city = rows["manure_facility_rate", None]
    assert city.denominator == 20 and 0 < city.numerator < 20  # MANURE_B's fault stays open
    assert rows["manure_ledger_coverage", None].numerator == 20
    cases = {
        datetime(2025, 6, 15, 12, tzinfo=SHANGHAI): _months(2025, 1, 5),  # June read raw
        datetime(2025, 7, 1, tzinfo=SHANGHAI): _months(2025, 1, 6),  # a month's first instant
        datetime(2025, 1, 15, tzinfo=SHANGHAI): set(),  # MANURE_A's fault still open
        NOW: _months(2025, 1, 12),
    }
    for now, months in cases.items():
        assert rig.covered(2025, now) == months, now
        rig.same(2025, now)
    assert rig.covered(2024, NOW) == _months(2024, 1, 12)
    rig.same(2024, NOW)
    rig.same(2026, NOW)  # January rolled up, February raw
    empty = rig.same(2023, NOW)
    assert all(row.numerator == 0 and row.value is None for row in empty)
    assert all(row.numerator == 0 for row in rig.same(2027, NOW))  # not begun


@pytest.mark.slow
@pytest.mark.integration
def test_year_boundary_in_shanghai(influxd: Influxd) -> None:
    _load(influxd)
    rig = Rig(influxd)
    rig.maintainer.maintain_once(NOW)
    county, _ = _site(DRIP)
    january = rig.reader.read(datetime(2025, 1, 1, tzinfo=SHANGHAI),
                              datetime(2025, 2, 1, tzinfo=SHANGHAI), NOW)
    assert set(january) == {Month(2025, 1)}
    assert january[Month(2025, 1)].masses[DRIP, "film_applied", "", ""] == (7.0, 0.0, 0.0)
    december = rig.reader.read(datetime(2024, 12, 1, tzinfo=SHANGHAI),
                               datetime(2025, 1, 1, tzinfo=SHANGHAI), NOW)
    assert december[Month(2024, 12)].masses[DRIP, "film_applied", "", ""] == (50.0, 0.0, 0.0)
    film_2025 = next(m for m in rig.rolled.members(2025, county, now=NOW)
                     if m.site_id == DRIP and m.indicator == "film_recovery_rate")
    raw_april = aggregates.mass_sums(rig.query, Span(datetime(2025, 4, 1, tzinfo=SHANGHAI),
                                                     datetime(2025, 5, 1, tzinfo=SHANGHAI)))
    assert film_2025.denominator == pytest.approx(
        7.0 + raw_april[DRIP, "film_applied", "", ""][0])


@pytest.mark.slow
@pytest.mark.integration
def test_late_event_through_ingest_is_reflected_at_once(influxd: Influxd) -> None:
    _load(influxd)
    rig = Rig(influxd)
    rig.maintainer.maintain_once(NOW)
    county, _ = _site(DRIP)
    before = _by_name(rig.same(2025, NOW))["film_recovery_rate", county]
    clock = int(NOW.timestamp()) * 1_000_000_000
    ingest = LateEventMarker(rig.writer, SHANGHAI, "worker-2", clock=lambda: clock)
    late = event(DRIP, "film_recovered", datetime(2025, 9, 3, tzinfo=UTC), 900_100,
                 mass_t=1000.0)
    rig.writer.write(encode([late]))  # as the pipeline does: the write, then the mark
    ingest.stored([late.time_ns])
    assert ingest.marks == 1
    assert rig.covered(2025, NOW) == _months(2025, 1, 12) - {Month(2025, 9)}
    after = _by_name(rig.same(2025, NOW))["film_recovery_rate", county]
    assert after.numerator == pytest.approx(before.numerator + 1000.0)
    done = rig.maintainer.maintain_once(NOW)
    assert done.built == [Month(2025, 9)]
    assert rig.covered(2025, NOW) == _months(2025, 1, 12)
    assert _plain([_by_name(rig.same(2025, NOW))["film_recovery_rate", county]]) == _plain(
        [after])
    assert rig.maintainer.maintain_once(NOW).built == []  # nothing left to do


@pytest.mark.slow
@pytest.mark.integration
def test_write_around_ingest_is_caught_by_the_audit(influxd: Influxd) -> None:
    _load(influxd)
    rig = Rig(influxd)
    rig.maintainer.maintain_once(NOW)
    rig.writer.write(encode([event(MANURE_A, "manure_treated",
                                   datetime(2025, 12, 5, tzinfo=UTC), 900_200, mass_t=1.0),
                             event(DRIP, "film_applied", datetime(2025, 12, 6, tzinfo=UTC),
                                   900_201, mass_t=3.0)]))
    # no mark: until audited, December's roll-up is stale (the documented limit) ...
    assert _plain(rig.rolled.compute(2025, now=NOW)) != _plain(rig.raw.compute(2025, now=NOW))
    audited = []
    for _ in range(3):  # newest month first: January 2026, then December 2025
        done = rig.maintainer.maintain_once(NOW)
        audited.append(done.audited)
        if Month(2025, 12) in done.built:
            break
    assert audited == [Month(2026, 1), Month(2025, 12)]
    rig.same(2025, NOW)  # ... and right again once rebuilt


@pytest.mark.slow
@pytest.mark.integration
def test_roll_ups_are_what_is_read(influxd: Influxd) -> None:
    """A tampered roll-up shows in the result (so the equality tests are not vacuous);
    a point newer than its month's manifest (a rebuild under way) sends the month raw."""
    _load(influxd)
    rig = Rig(influxd)
    rig.maintainer.maintain_once(NOW)
    manifest = rig.reader.manifests()[Month(2025, 4)]
    at = int(Month(2025, 4).start(SHANGHAI).timestamp()) * 1_000_000_000
    tags = {"kind": "mass_rows", "part": "0"}  # the month's packed per-site masses
    rows = json.dumps([[DRIP], ["film_applied"], [""], [""], [1e6], [0.0], [0.0]])  # columns
    rig.writer.write(encode([Point("rollup", tags, {"build": manifest.build, "rows": rows},
                                   at)]))
    assert _plain(rig.rolled.compute(2025, now=NOW)) != _plain(rig.raw.compute(2025, now=NOW))
    rig.writer.write(encode([Point("rollup", tags, {"build": manifest.build + 1,
                                                    "rows": rows}, at)]))
    assert rig.covered(2025, NOW) == _months(2025, 1, 12) - {Month(2025, 4)}
    rig.same(2025, NOW)


@pytest.mark.integration
def test_no_database_yet(influxd: Influxd) -> None:
    settings = _settings(influxd, influx_db="nothing")
    engine = IndicatorEngine(InfluxQL(settings), lambda: REGISTRY, settings)
    assert all(row.numerator == 0 for row in engine.compute(2025, now=NOW))
    maintainer = RollupMaintainer(InfluxQL(settings), make_writer(settings), settings,
                                  months_per_cycle=3)
    done = maintainer.maintain_once(NOW)
    assert done.built == [Month(2026, 1), Month(2025, 12), Month(2025, 11)]
    assert done.pending > 300  # every month since FARM_EARLIEST_TS, a few per cycle
    assert all(row.numerator == 0 for row in engine.compute(2025, now=NOW))


@pytest.mark.integration
def test_every_worker_marks_late_events(
    tmp_path: Path, mosquitto: Mosquitto, influxd: Influxd
) -> None:
    settings = Settings(mqtt_url=mosquitto.url, registry_dir=write_registry(tmp_path / "r"),
                        influx_url=influxd.url, influx_api="v1", batch_interval_s=0.05,
                        mqtt_client_id="worker-7")
    publishing = IngestService(settings)
    assert publishing.publisher is not None and publishing.publisher.rollups is not None
    publishing.writer.close()
    publishing.query.close()
    service = IngestService(settings, publish_indicators=False)
    assert service.publisher is None and isinstance(service.late_marks, LateEventMarker)
    service.start()
    try:
        assert service.input.wait_connected(10)
        last_month = datetime.now(SHANGHAI).replace(day=1) - timedelta(days=3)
        payload = {"v": 1, "seq": 5, "ts": last_month.isoformat(), "type": "harvest",
                   "crop": "corn", "grain_t": 2.0}
        mosquitto_pub(mosquitto.port, "farm/v1/straw-1/dev-3/event", json.dumps(payload))
        marks = wait_for(lambda: rows(influxd, "SELECT * FROM late_event GROUP BY *"))
    finally:
        service.stop()
    assert marks[0]["month"] == Month.of(last_month, SHANGHAI).key
    assert marks[0]["writer"] == "worker-7" and marks[0]["events"] == 1


# --- without InfluxDB ---------------------------------------------------------


def test_months_in_the_zone() -> None:
    assert Month(2024, 12).next() == Month(2025, 1) and Month(2025, 1).prev() == Month(2024, 12)
    assert Month(2025, 1).start(SHANGHAI) == datetime(2024, 12, 31, 16, tzinfo=UTC)
    assert Month.of(datetime(2024, 12, 31, 16, tzinfo=UTC), SHANGHAI) == Month(2025, 1)
    assert Month.of(datetime(2024, 12, 31, 15, 59, 59, tzinfo=UTC), SHANGHAI) == Month(2024, 12)
    assert Month.parse("2025-03").key == "2025-03"


def test_gaps_are_what_roll_ups_do_not_cover() -> None:
    start, end = Month(2025, 1).start(SHANGHAI), datetime(2025, 6, 15, tzinfo=SHANGHAI)
    covered = [Month(2025, 1), Month(2025, 2), Month(2025, 4)]
    assert gaps(Span(start, end), covered, SHANGHAI) == [
        Span(Month(2025, 3).start(SHANGHAI), Month(2025, 4).start(SHANGHAI)),
        Span(Month(2025, 5).start(SHANGHAI), end),
    ]
    whole = Span(None, Month(2025, 3).start(SHANGHAI), inclusive=True)
    assert gaps(whole, [Month(2025, 1), Month(2025, 2)], SHANGHAI) == [
        Span(None, Month(2025, 1).start(SHANGHAI)),
        Span(Month(2025, 3).start(SHANGHAI), Month(2025, 3).start(SHANGHAI), inclusive=True),
    ]
    assert gaps(Span(start, Month(2025, 2).start(SHANGHAI)), [Month(2025, 1)], SHANGHAI) == []


def test_late_months_count_the_events_before_the_current_month() -> None:
    march = int(datetime(2025, 3, 5, tzinfo=UTC).timestamp()) * 10**9
    april = int(datetime(2025, 4, 5, tzinfo=UTC).timestamp()) * 10**9
    # 2025-02-28T16:00Z is already March in Datong
    february_utc = int(datetime(2025, 2, 28, 16, tzinfo=UTC).timestamp()) * 10**9
    late = late_months([march, april, march + 1, february_utc], april, SHANGHAI)
    assert late == {"2025-03": 3}
    assert late_months([april], april, SHANGHAI) == {}


class _Writer:
    def __init__(self, fail_marks: int = 0) -> None:
        self.bodies: list[bytes] = []
        self.fail_marks = fail_marks

    def write(self, body: bytes) -> None:
        if self.fail_marks and body.startswith(b"late_event"):
            self.fail_marks -= 1
            raise WriteError("InfluxDB answered 500", transient=False, status=500)
        self.bodies.append(body)

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        pass


def test_marks_follow_the_write_and_a_failed_mark_is_retried() -> None:
    clock = int(NOW.timestamp()) * 1_000_000_000
    inner = _Writer()
    marker = LateEventMarker(inner, SHANGHAI, "w1", clock=lambda: clock)
    current = event(DRIP, "film_applied", NOW + timedelta(hours=1), 1, mass_t=1.0)
    marker.stored([current.time_ns])
    assert inner.bodies == []  # this month's events need no mark
    late = [event(DRIP, "film_applied", NOW - timedelta(days=40), 2, mass_t=1.0),
            event(DRIP, "film_applied", NOW - timedelta(days=41), 3, mass_t=1.0)]
    marker.stored([point.time_ns for point in late])
    [mark] = inner.bodies
    assert mark.startswith(b"late_event,month=2026-01,writer=w1 events=2i ")
    failing = LateEventMarker(_Writer(fail_marks=1), SHANGHAI, "w1", clock=lambda: clock)
    with pytest.raises(WriteError) as info:
        failing.stored([point.time_ns for point in late])
    assert info.value.transient  # the pipeline writes the batch again, and marks it


def test_the_pipeline_marks_the_events_enrich_made_and_retries_a_failed_mark() -> None:
    """Through the threaded pipeline: the event's body, a failed mark, the body again, the mark."""
    config = Settings(batch_interval_s=0.01)
    writer = _Writer(fail_marks=1)
    marker = LateEventMarker(writer, config.tz, "w1")
    registry = Registry.from_csv(SITES_CSV, DEVICES_CSV)
    pipeline = Pipeline(config, Enricher(lambda: registry, config), writer, Stats(),
                        marker.stored)
    last_month = datetime.now(config.tz).replace(day=1) - timedelta(days=3)
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    acks: list[int] = []
    messages = [
        ("farm/v1/straw-1/dev-3/event", {"v": 1, "seq": 5, "ts": last_month.isoformat(),
                                         "type": "harvest", "crop": "corn", "grain_t": 2.0}),
        ("farm/v1/drip-1/dev-1/telemetry", {"v": 1, "seq": 6, "ts": now_ms,
                                            "readings": {"flow_lpm": 1.0}}),
    ]
    pipeline.start()
    try:
        pipeline.submit_many([Inbound(topic, json.dumps(body).encode(), 1, partial(acks.append, n))
                              for n, (topic, body) in enumerate(messages)])
        wait_for(lambda: len(acks) == 2)
    finally:
        pipeline.stop()
    data, again, mark = writer.bodies
    assert data == again and data.count(b"\nevent,") + data.startswith(b"event,") == 1
    assert mark.startswith(f"late_event,month={Month.of(last_month, config.tz).key},"
                           "writer=w1 events=1i ".encode())
    assert marker.marks == 1 and sorted(acks) == [0, 1]


class _Boom:
    def maintain_once(self, now: datetime | None = None) -> None:
        raise RuntimeError("InfluxDB went away")


class _NoData:
    def query(self, q: str) -> list[Series]:
        return []


def test_a_failing_roll_up_cycle_does_not_stop_the_indicators() -> None:
    settings = Settings()
    writer = _Writer()
    engine = IndicatorEngine(_NoData(), lambda: REGISTRY, settings)
    publisher = IndicatorPublisher(
        engine, writer, settings,
        years=lambda: [2025], rollups=_Boom(),  # type: ignore[arg-type]
    )
    publisher.maintain_rollups()
    assert publisher.errors == 1
    figures = 4 * (1 + len(settings.divisions.listed(REGISTRY.counties)))  # and ten divisions
    assert publisher.publish_once(now=NOW) == figures + len(engine.members(2025, now=NOW))


class _Counting:
    def __init__(self) -> None:
        self.cycles = 0

    def maintain_once(self, now: datetime | None = None) -> None:
        self.cycles += 1


def test_the_publisher_thread_maintains_the_roll_ups() -> None:
    settings = Settings(indicator_interval_s=0.02)
    writer, maintainer = _Writer(), _Counting()
    publisher = IndicatorPublisher(
        IndicatorEngine(_NoData(), lambda: REGISTRY, settings), writer, settings,
        years=lambda: [2025], rollups=maintainer,  # type: ignore[arg-type]
    )
    publisher.start()
    try:
        wait_for(lambda: maintainer.cycles >= 2, timeout=5)
    finally:
        publisher.stop()
    assert len(writer.bodies) >= 2 and publisher.errors == 0


@pytest.mark.slow
@pytest.mark.integration
def test_a_value_overwritten_around_ingest_is_caught_by_the_audit(influxd: Influxd) -> None:
    """Issue 12 point 5: a write around ingest that overwrites a stored event's number (same
    series and time, so the count is unchanged) is caught by the audit's value sum."""
    _load(influxd)
    rig = Rig(influxd)
    when = datetime(2025, 12, 10, tzinfo=UTC)
    rig.writer.write(encode([event(DRIP, "film_applied", when, 900_300, mass_t=2.0)]))
    rig.maintainer.maintain_once(NOW)
    rig.same(2025, NOW)
    rig.writer.write(encode([event(DRIP, "film_applied", when, 900_300, mass_t=9.0)]))
    assert _plain(rig.rolled.compute(2025, now=NOW)) != _plain(rig.raw.compute(2025, now=NOW))
    rebuilt = False
    for _ in range(3):  # newest month first: January 2026, then December 2025
        done = rig.maintainer.maintain_once(NOW)
        rebuilt = rebuilt or Month(2025, 12) in done.built
    assert rebuilt
    rig.same(2025, NOW)


@pytest.mark.integration
def test_a_month_missing_one_of_its_parts_is_read_raw(influxd: Influxd) -> None:
    """The manifest counts the month's points (format 3): a part lost (a torn write, a
    deletion) sends the month raw instead of reading a month with sites missing."""
    _load(influxd)
    rig = Rig(influxd)
    rig.maintainer.maintain_once(NOW)
    at = Month(2025, 6).start(SHANGHAI).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    rig.query.query(f"DELETE FROM \"rollup\" WHERE \"kind\" = 'days_rows' AND time = '{at}'")
    assert rig.covered(2025, NOW) == _months(2025, 1, 12) - {Month(2025, 6)}
    rig.same(2025, NOW)


def test_packed_rows_round_trip_in_parts_under_the_string_limit() -> None:
    """10,000 sites' masses and days: several points per kind, each under the limit, read
    back to exactly the same floats and integers."""
    rng = random.Random(7)
    found = Aggregates(
        masses={(f"s{i:05d}", "harvest", "corn" if i % 2 else "", "2025" if i % 3 else ""):
                (rng.random() * 1e5, rng.random() / 3, 0.1 + 0.2) for i in range(10_000)},
        days={f"s{i:05d}": i % 31 for i in range(10_000)},
        last_day={f"s{i:05d}": 1_700_000_000_000 + i for i in range(10_000)},
    )
    points = rollup_points(Month(2025, 3), found, 1, SHANGHAI)
    packed = [p for p in points if p.tags["kind"] in (MASS_ROWS, DAYS_ROWS)]
    assert len({p.tags["kind"] for p in packed}) == 2 and len(packed) > 10
    assert all(len(str(p.fields["rows"]).encode()) <= PART_BYTES for p in packed)
    read = Aggregates()
    for point in packed:
        unpack_rows(point.tags["kind"], point.fields["rows"], read)
    assert read.masses == found.masses
    assert (read.days, read.last_day) == (found.days, found.last_day)
    with pytest.raises(QueryError, match="malformed"):
        unpack_rows(MASS_ROWS, '[["s1", "harvest", "", ""]]', Aggregates())
