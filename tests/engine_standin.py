"""TO BE REPLACED after the merge with the issue-13 engine: a stand-in for
``IndicatorEngine.members`` and ``IndicatorEngine.events``.

The members route, the events route and the report's members sheets depend only on the
engine's signatures (``members(year, county=None, indicator=None, now=None)``,
``events(indicator, year, site_id)``). Until the rewritten engine lands, tests give
them this subclass: it answers from real InfluxDB data with plain InfluxQL queries
that mirror the current engine's definitions (``compute`` is the engine's own), so the
members add up to the figures. Once the engine implements both methods, delete this
module and use ``IndicatorEngine`` itself in the tests that import it.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from farm_contract import schema
from farm_contract.indicators import IndicatorId, Member
from farm_contract.payloads import EventType
from farm_contract.registry import Registry
from ingest_service.indicators.engine import (
    IndicatorEngine,
    UnknownCountyError,
    Window,
    year_window,
)
from ingest_service.influxql import quote_ident, quote_literal, time_literal

EVENT_TYPES: dict[IndicatorId, tuple[EventType, ...]] = {
    IndicatorId.FILM_RECOVERY_RATE: (EventType.FILM_APPLIED, EventType.FILM_RECOVERED),
    IndicatorId.STRAW_UTILIZATION_RATE: (EventType.HARVEST, EventType.STRAW_UTILIZED),
    IndicatorId.MANURE_LEDGER_COVERAGE: (EventType.MANURE_TREATED, EventType.MANURE_UTILIZED),
    IndicatorId.MANURE_FACILITY_RATE: (EventType.FACILITY_FAULT, EventType.FACILITY_OK),
}
DAY_MS = 86_400_000


def _types(types: tuple[EventType, ...]) -> str:
    return "(" + " OR ".join(f'"type" = {quote_literal(t)}' for t in types) + ")"


def _window(window: Window) -> str:
    return f"time >= {time_literal(window.start)} AND time < {time_literal(window.as_of)}"


class StandInEngine(IndicatorEngine):
    """The current engine plus ``members`` and ``events`` from plain queries (see module)."""

    def members(self, year: int, county: str | None = None,
                indicator: IndicatorId | None = None, now: datetime | None = None
                ) -> list[Member]:
        registry = self._registry()
        if county is not None and county not in registry.counties:
            raise UnknownCountyError(county, registry.counties)
        counties = [county] if county is not None else registry.counties
        moment = now or datetime.now(UTC)
        window = year_window(year, self._settings.tz, moment)
        out: list[Member] = []
        for wanted in [indicator] if indicator is not None else list(IndicatorId):
            if wanted in (IndicatorId.FILM_RECOVERY_RATE, IndicatorId.STRAW_UTILIZATION_RATE):
                out += self._masses(wanted, year, window, registry, counties)
            elif wanted == IndicatorId.MANURE_LEDGER_COVERAGE:
                out += self._ledger(year, window, registry, counties)
            else:
                out += self._facility(year, window, registry, counties)
        return out

    def events(self, indicator: IndicatorId, year: int, site_id: str) -> list[dict[str, Any]]:
        window = year_window(year, self._settings.tz, datetime.now(UTC))
        if window.empty:
            return []
        q = (f"SELECT * FROM {quote_ident(schema.EVENT)} WHERE "
             f"{quote_ident('site_id')} = {quote_literal(site_id)} "
             f"AND {_types(EVENT_TYPES[indicator])} AND {_window(window)}")
        skip = {"time", "seq", "device_id", "site_id", "county", "site_type"}
        return [  # the shape of the issue-13 engine's events: values nested, ts ISO text
            {"device_id": row["device_id"], "seq": row["seq"], "type": row["type"],
             "ts": datetime.fromtimestamp(row["time"] / 1000, UTC).isoformat(),
             "values": {k: v for k, v in row.items() if k not in skip and v is not None}}
            for series in self.query(q) for row in series.rows()
        ]

    def _masses(self, indicator: IndicatorId, year: int, window: Window, registry: Registry,
                counties: list[str]) -> list[Member]:
        """Film: recovered ÷ applied; straw: utilised ÷ Σ grain × ratio(crop), per site."""
        if window.empty:
            return []
        q = (f'SELECT sum("mass_t") AS mass_t, sum("grain_t") AS grain_t FROM "event" '
             f"WHERE {_types(EVENT_TYPES[indicator])} AND {_window(window)} "
             'GROUP BY "county", "site_id", "type", "crop"')
        ratios = self._settings.straw_ratios
        parts: dict[tuple[str, str], list[float]] = defaultdict(lambda: [0.0, 0.0, 0.0])
        for series in self.query(q):
            tags, row = series.tags, series.rows()[0]
            if tags.get("county") not in counties:
                continue
            part = parts[(tags["county"], tags["site_id"])]
            mass, grain = row.get("mass_t") or 0.0, row.get("grain_t") or 0.0
            kind = tags.get("type")
            if kind in (EventType.FILM_RECOVERED, EventType.STRAW_UTILIZED):
                part[0] += mass
            elif kind == EventType.FILM_APPLIED:
                part[1] += mass
            else:
                part[1] += grain * ratios.get(tags.get("crop") or "other", ratios["other"])
                part[2] += grain
        out = []
        for (county, site_id), (num, den, grain) in sorted(parts.items()):
            site = registry.sites.get(site_id)
            detail: dict[str, float | int | str | None] = (
                {"grain_t": grain} if indicator == IndicatorId.STRAW_UTILIZATION_RATE else {})
            out.append(Member(indicator=indicator, year=year, county=county, site_id=site_id,
                              name=site.name if site else "", numerator=num, denominator=den,
                              detail=detail))
        return out

    def _counts(self, measurement: str, where: str) -> dict[str, int]:
        q = (f'SELECT count("seq") FROM {quote_ident(measurement)} WHERE {where} '
             'GROUP BY "site_id"')
        return {s.tags["site_id"]: int(s.rows()[0].get("count") or 0)
                for s in self.query(q) if s.values}

    def _ledger(self, year: int, window: Window, registry: Registry,
                counties: list[str]) -> list[Member]:
        entries = {} if window.empty else self._counts(
            schema.EVENT, f"{_types(EVENT_TYPES[IndicatorId.MANURE_LEDGER_COVERAGE])} "
                          f"AND {_window(window)}")
        return [Member(indicator=IndicatorId.MANURE_LEDGER_COVERAGE, year=year,
                       county=site.county, site_id=site.site_id, name=site.name,
                       numerator=1.0 if entries.get(site.site_id) else 0.0, denominator=1.0,
                       detail={"entries": entries.get(site.site_id, 0)})
                for c in counties for site in registry.large_scale_manure_sites(c)]

    def _facility(self, year: int, window: Window, registry: Registry,
                  counties: list[str]) -> list[Member]:
        """Equipped: telemetry in the last ``stale_hours`` before as-of, no open fault."""
        as_of = window.as_of
        since = as_of - timedelta(hours=self._settings.stale_hours)
        manure = "\"site_type\" = 'manure'"
        reporting = {} if window.empty else self._counts(
            schema.TELEMETRY,
            f"{manure} AND time > {time_literal(since)} AND time <= {time_literal(as_of)}")
        days: dict[str, int] = defaultdict(int)
        last: dict[str, int] = {}
        faults: dict[tuple[str, str, str], int] = {}
        if not window.empty:
            tz = self._settings.tz.key
            for s in self.query(f'SELECT count("seq") FROM "telemetry" WHERE {manure} AND '
                                f'{_window(window)} GROUP BY time(1d), "site_id" tz(\'{tz}\')'):
                days[s.tags["site_id"]] = sum(1 for r in s.rows() if r.get("count"))
            for s in self.query(f'SELECT last("seq") FROM "telemetry" WHERE {manure} AND '
                                f'time <= {time_literal(as_of)} GROUP BY "site_id"'):
                last[s.tags["site_id"]] = int(s.rows()[0]["time"])
            for s in self.query(f'SELECT last("seq") FROM "event" WHERE '
                                f"{_types(EVENT_TYPES[IndicatorId.MANURE_FACILITY_RATE])} AND "
                                f'time <= {time_literal(as_of)} GROUP BY "site_id", "facility", '
                                '"type"'):
                key = (s.tags["site_id"], s.tags.get("facility", ""), s.tags["type"])
                faults[key] = int(s.rows()[0]["time"])
        as_of_ms = int(as_of.timestamp() * 1000)
        out = []
        for c in counties:
            for site in registry.large_scale_manure_sites(c):
                open_since = [t for (sid, facility, kind), t in faults.items()
                              if sid == site.site_id and kind == EventType.FACILITY_FAULT
                              and faults.get((sid, facility, EventType.FACILITY_OK), -1) < t]
                equipped = bool(reporting.get(site.site_id)) and not open_since
                seen = last.get(site.site_id)
                out.append(Member(
                    indicator=IndicatorId.MANURE_FACILITY_RATE, year=year, county=site.county,
                    site_id=site.site_id, name=site.name, numerator=1.0 if equipped else 0.0,
                    denominator=1.0, status="equipped" if equipped else "not_equipped",
                    detail={
                        "days_reported": days.get(site.site_id, 0),
                        "longest_open_fault_days": round((as_of_ms - min(open_since)) / DAY_MS, 1)
                        if open_since else 0,
                        "last_reading": datetime.fromtimestamp(seen / 1000, UTC).isoformat()
                        if seen is not None else None,
                    }))
        return out
