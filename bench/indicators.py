"""Indicators at scale: 10,000 sites and a year of events, computed by InfluxDB aggregates.

The year is written straight to InfluxDB with large ``/write`` batches (MQTT is
not what is measured here), then :class:`ingest_service.indicators.engine.IndicatorEngine`
computes the year for the city and for one county, the way the API and the
indicator publisher do: first from raw events only (``FARM_ROLLUPS=false``), then
after building the monthly roll-ups (:mod:`ingest_service.indicators.rollups`) from them.
The figure to watch is how the time grows with sites and events: the engine asks
InfluxDB for sums and counts grouped by tag, so it should grow with the number
of sites, not of stored points.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from bench import machine
from bench.stack import Stack
from bench.workload import COUNTIES
from farm_contract import schema
from farm_contract.catalog import SiteType
from farm_contract.indicators import IndicatorValue
from farm_contract.registry import Device, Registry, Site
from ingest_service.indicators.engine import IndicatorEngine
from ingest_service.indicators.rollups import RollupMaintainer
from ingest_service.influxql import InfluxQL
from ingest_service.outputs.influx import make_writer
from ingest_service.settings import Settings

WRITE_BATCH = 50_000
REPEATS = 3


def registry(sites: int) -> Registry:
    """``sites`` sites (drip, manure, straw in turn), one device each, over Datong's counties."""
    kinds = (SiteType.DRIP, SiteType.MANURE, SiteType.STRAW)
    site_map: dict[str, Site] = {}
    device_map: dict[str, Device] = {}
    for i in range(sites):
        kind = kinds[i % 3]
        site = Site(
            site_id=f"s{i:05d}", name=f"site {i}", county=COUNTIES[i % len(COUNTIES)],
            site_type=kind, lat=40.0, lon=113.3, large_scale=kind is SiteType.MANURE,
            area_mu=None if kind is SiteType.MANURE else 200.0,
        )
        site_map[site.site_id] = site
        device_map[f"d{i:05d}"] = Device(device_id=f"d{i:05d}", site_id=site.site_id)
    return Registry(sites=site_map, devices=device_map)


def _ns(moment: datetime, seq: int) -> int:
    return int(moment.timestamp() * 1000) * 1_000_000 + seq


class _Events:
    """Event lines of one device, with its own rising ``seq``."""

    def __init__(self, tags: str, start: datetime) -> None:
        self.tags = tags
        self.start = start
        self.seq = 0

    def line(self, day: float, kind: str, fields: str, extra: str = "") -> str:
        self.seq += 1
        moment = self.start + timedelta(days=day)
        values = f"{fields},seq={self.seq}i" if fields else f"seq={self.seq}i"
        return f"event,{self.tags}{extra},type={kind} {values} {_ns(moment, self.seq)}"


def lines(reg: Registry, year: int, tz: ZoneInfo, seed: int = 4) -> Iterator[str]:
    """The year's events for every site, plus a manure reading a day (a fifth of the farms
    on 20 days only, so the facility rate is neither 0 nor 1)."""
    rng = random.Random(seed)
    start = datetime(year, 1, 1, tzinfo=tz)
    for device in reg.devices.values():
        site = reg.sites[device.site_id]
        tags = (f"county={site.county},device_id={device.device_id},site_id={site.site_id},"
                f"site_type={site.site_type}")
        events = _Events(tags, start)
        if site.site_type == "drip":
            yield events.line(95, "film_applied", f"mass_t={1 + rng.random():.3f},area_mu=200.0")
            for day in (290, 310):
                yield events.line(day, "film_recovered", f"mass_t={0.4 + rng.random() * 0.5:.3f}")
        elif site.site_type == "straw":
            yield events.line(260, "harvest", f"grain_t={50 + rng.random() * 50:.2f}", ",crop=corn")
            for day in (270, 290, 320):
                yield events.line(day, "straw_utilized", f"mass_t={15 + rng.random() * 10:.2f}",
                                  ",use=fertilizer")
        else:
            for week in range(52):
                yield events.line(week * 7 + 1, "manure_treated",
                                  f"mass_t={20 + rng.random() * 5:.2f}")
            for month in range(12):
                yield events.line(month * 30 + 15, "manure_utilized",
                                  f"mass_t={60 + rng.random() * 10:.2f}", ",use=fertilizer")
            if rng.random() < 0.1:
                yield events.line(200, "facility_fault", "", ",facility=digester")
                if rng.random() < 0.5:
                    yield events.line(203, "facility_ok", "", ",facility=digester")
            days = 365 if rng.random() < 0.8 else 20  # a fifth report on too few days
            for day in range(days):
                moment = start + timedelta(days=day, hours=12)
                yield (f"telemetry,{tags} lagoon_level_pct={40 + rng.random() * 20:.1f},"
                       f"seq={10_000 + day}i {_ns(moment, day)}")


def _timed(call: Any) -> tuple[float, Any]:
    started = time.perf_counter()
    result = call()
    return time.perf_counter() - started, result


def _measure(reg: Registry, year: int, shard_duration: str | None) -> dict[str, Any]:
    """Write the year on a fresh InfluxDB, then time the engine for the city and one county."""
    with Stack() as stack:
        if shard_duration:
            stack.http.post("/query", data={
                "q": f'ALTER RETENTION POLICY "autogen" ON "farm" SHARD DURATION {shard_duration}'
            }).raise_for_status()
        settings = Settings(influx_url=stack.influxd.url, influx_api="v1", influx_db="farm")
        written, batch, started = 0, [], time.perf_counter()
        for item in lines(reg, year, settings.tz):
            batch.append(item)
            if len(batch) == WRITE_BATCH:
                stack.write("\n".join(batch).encode())
                written, batch = written + len(batch), []
        if batch:
            stack.write("\n".join(batch).encode())
            written += len(batch)
        write_s = time.perf_counter() - started
        shards = stack.shards()
        raw_settings = settings.model_copy(update={"rollups": False})
        engine = IndicatorEngine(InfluxQL(settings), lambda: reg, raw_settings)
        county = COUNTIES[0]
        load_before = machine.load()
        city = [_timed(lambda: engine.compute(year))[0] for _ in range(REPEATS)]
        one = [_timed(lambda: engine.compute(year, county))[0] for _ in range(REPEATS)]
        _, values = _timed(lambda: engine.compute(year))
        rollups = _rollups(stack, reg, settings, year, county, values)
    return {
        "shard_duration": shard_duration or "default (7d)",
        "shards": shards,
        "points_written": written,
        "write_s": round(write_s, 2),
        "write_rate": round(written / write_s, 1) if write_s else 0.0,
        "city_first_s": round(city[0], 3),
        "city_median_s": round(statistics.median(city), 3),
        "county_median_s": round(statistics.median(one), 3),
        "county": county,
        "city_values": {f"{v.indicator}": v.value for v in values if v.scope == "city"},
        "rollups": rollups,
        "load_before": load_before,
        "load_after": machine.load(),
    }


def _plain(rows: list[IndicatorValue]) -> list[dict[str, Any]]:
    """Rows without what two computations of the same figures differ in."""
    return [row.model_dump(exclude={"computed_at", "source"}) for row in rows]


def _rollups(
    stack: Stack, reg: Registry, settings: Settings, year: int, county: str,
    raw_values: list[IndicatorValue],
) -> dict[str, Any]:
    """Build the monthly roll-ups, then time the engine reading them.

    ``partial`` is the year as of 15 December: January to November from roll-ups,
    December from raw events, the shape of a current year.
    """
    query = InfluxQL(settings)
    maintainer = RollupMaintainer(query, make_writer(settings), settings, months_per_cycle=None)
    build_s, done = _timed(maintainer.maintain_once)
    engine = IndicatorEngine(query, lambda: reg, settings)
    city = [_timed(lambda: engine.compute(year))[0] for _ in range(REPEATS)]
    one = [_timed(lambda: engine.compute(year, county))[0] for _ in range(REPEATS)]
    mid_december = datetime(year, 12, 15, tzinfo=settings.tz)
    partial = [_timed(lambda: engine.compute(year, now=mid_december))[0] for _ in range(REPEATS)]
    points = stack.query(f'SELECT count("build") FROM "{schema.ROLLUP}"')
    return {
        "build_s": round(build_s, 2),
        "months_built": len(done.built),
        "points": int(str(points[0][1])) if points else 0,
        "city_first_s": round(city[0], 3),
        "city_median_s": round(statistics.median(city), 3),
        "county_median_s": round(statistics.median(one), 3),
        "partial_city_median_s": round(statistics.median(partial), 3),
        "same_values": _plain(engine.compute(year)) == _plain(raw_values),
    }


def run(sites: int = 10_000, year: int | None = None) -> dict[str, Any]:
    """The year with InfluxDB's default 7-day shards, then with 52-week shards.

    7-day shards are what ``CREATE DATABASE`` gives, and what ingest created before
    issue #6; ingest now creates its v1 database with 52-week shards.

    InfluxDB 1.x's default retention policy cuts a year into ~53 shards, and a
    query grouped by ``site_id`` opens an iterator per series per shard; the
    second measurement shows what a longer shard duration changes.
    """
    year = year or datetime.now(UTC).year - 1
    reg = registry(sites)
    default = _measure(reg, year, None)
    long_shards = _measure(reg, year, "52w")
    return {
        "sites": sites,
        "year": year,
        **default,
        "with_52w_shards": long_shards,
    }
