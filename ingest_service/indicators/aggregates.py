"""The indicators' raw aggregates over one time span, computed by InfluxDB, per site.

The indicator engine runs them over the spans no valid roll-up covers, and the roll-up
builder runs the very same functions over one month: each aggregate is defined once, so a
roll-up holds exactly what the raw computation would read. Everything is keyed by
``site_id``, never by the stored ``county`` tag: the engine maps sites to counties through
the registry history at the data's time (issue 12), so a corrected or moved site carries its
data with it. Every piece is additive over disjoint spans: sums add up, "has a ledger event"
is a union, days reported (counted in whole days of ``tz``) add up.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol
from zoneinfo import ZoneInfo

from farm_contract import schema
from farm_contract.payloads import EventType
from ingest_service.indicators.months import Span
from ingest_service.influxql import QueryError, Series, quote_ident, quote_literal

MASS_TYPES = (
    EventType.FILM_APPLIED,
    EventType.FILM_RECOVERED,
    EventType.HARVEST,
    EventType.STRAW_UTILIZED,
)
LEDGER_TYPES = (EventType.MANURE_TREATED, EventType.MANURE_UTILIZED)
FACILITY_TYPES = (EventType.FACILITY_FAULT, EventType.FACILITY_OK)
THIN_FILM_MM = 0.01
"""The plan's standard: film thinner than this is counted and shown (农膜 ≥ 0.01 mm)."""

MassKey = tuple[str, str, str, str]
"""``site_id``, ``type``, ``crop``, ``season`` tags (``""`` where absent)."""
Mass = tuple[float, float, float]
"""Σ ``mass_t``, Σ ``grain_t`` and Σ ``mass_t`` of film below :data:`THIN_FILM_MM`."""


class Querier(Protocol):
    """What the aggregates need from :class:`~ingest_service.influxql.InfluxQL`."""

    def query(self, q: str) -> list[Series]: ...


def run(querier: Querier, q: str) -> list[Series]:
    """Run a query; a database nothing was written to yet simply has no data."""
    try:
        return querier.query(q)
    except QueryError as exc:
        if "database not found" in str(exc):
            return []
        raise


def number(value: object) -> float:
    """An aggregate's value; InfluxDB answers null for a sum over nothing.

    A non-finite value (events stored before the catalog had maxima, summed to
    ±Inf) is a data error, raised as :class:`QueryError` (never a crash).
    """
    if not isinstance(value, int | float) or isinstance(value, bool):
        return 0.0
    result = float(value)
    if not math.isfinite(result):
        raise QueryError(f"an aggregate is {result}: stored events hold absurd values")
    return result


def types_clause(types: Iterable[EventType]) -> str:
    return "(" + " OR ".join(f"{quote_ident('type')} = {quote_literal(t)}" for t in types) + ")"


def site_clause(site_id: str | None) -> str:
    return "" if site_id is None else f" AND {quote_ident('site_id')} = {quote_literal(site_id)}"


def add_mass(into: dict[MassKey, Mass], key: MassKey, more: Mass) -> None:
    old = into.get(key, (0.0, 0.0, 0.0))
    into[key] = (old[0] + more[0], old[1] + more[1], old[2] + more[2])


@dataclass(slots=True)
class Aggregates:
    """What the indicators need from InfluxDB for some stretch of time, per site."""

    masses: dict[MassKey, Mass] = field(default_factory=dict)
    ledger: set[str] = field(default_factory=set)
    """Sites with a ``manure_treated`` or ``manure_utilized`` event."""
    days: dict[str, int] = field(default_factory=dict)
    """Days (in ``tz``) on which a manure site's telemetry reported."""
    last_day: dict[str, int] = field(default_factory=dict)
    """The time (epoch ms) of a manure site's last reading."""

    def add(self, other: Aggregates) -> None:
        """Combine with the aggregates of a disjoint stretch of time."""
        for key, more in other.masses.items():
            add_mass(self.masses, key, more)
        self.ledger |= other.ledger
        for site_id, days in other.days.items():
            self.days[site_id] = self.days.get(site_id, 0) + days
        for site_id, day in other.last_day.items():
            self.last_day[site_id] = max(day, self.last_day.get(site_id, day))

    def without_site(self, site_id: str) -> None:
        """Drop a site's masses (re-read split at its registry changes)."""
        for key in [key for key in self.masses if key[0] == site_id]:
            del self.masses[key]


MASS_GROUP = ", ".join(quote_ident(tag) for tag in ("site_id", "type", "crop", "season"))


def _key(series: Series) -> MassKey:
    tags = series.tags
    return (tags.get("site_id", ""), tags.get("type", ""), tags.get("crop", ""),
            tags.get("season", ""))


def overflowing_keys(querier: Querier, where: str) -> list[MassKey]:
    """The keys of every site whose sums could overflow (more than ``count × max |value|``
    can reach the float range): ``max``, ``min`` and ``count`` never overflow, so InfluxDB
    answers this where the sums broke its answer off."""
    fields = ("mass_t", "grain_t")
    q = (
        "SELECT " + ", ".join(f"{agg}({quote_ident(name)}) AS {agg}_{name}"
                              for name in fields for agg in ("max", "min", "count"))
        + f" FROM {quote_ident(schema.EVENT)} WHERE {where} GROUP BY {MASS_GROUP}"
    )
    found = [(_key(series), row) for series in run(querier, q) for row in series.rows()]
    sites = {key[0] for key, row in found for name in fields
             if max(abs(number(row.get(f"max_{name}"))), abs(number(row.get(f"min_{name}"))))
             * number(row.get(f"count_{name}")) > sys.float_info.max}
    return sorted({key for key, _ in found if key[0] in sites})


def mass_sums(
    querier: Querier, span: Span, types: Iterable[EventType] = MASS_TYPES,
    site_id: str | None = None, finite: bool = True,
) -> dict[MassKey, Mass]:
    """Film and straw tonnes per site, type, crop and season: one query, plus one for thin
    applied film when ``film_applied`` is among ``types``.

    ``finite=False`` gives a sum that overflowed (±Inf) as ``inf`` instead of raising, so the
    engine refuses only the figures that site is part of: when InfluxDB's answer breaks off
    on such a sum (1.x cannot write ±Inf in JSON), the sites that can overflow are found
    (:func:`overflowing_keys`), read as ``inf`` and left out of the query asked again."""
    types = tuple(types)
    where = f"{types_clause(types)} AND {span.condition()}{site_clause(site_id)}"
    thin_where = (
        f"{quote_ident('type')} = {quote_literal(EventType.FILM_APPLIED)} "
        f"AND {quote_ident('thickness_mm')} < {THIN_FILM_MM} AND {span.condition()}"
        f"{site_clause(site_id)}"
    )
    excluded: list[MassKey] | None = None

    def value(raw: object) -> float:
        if not finite and isinstance(raw, float) and math.isinf(raw):
            return raw
        return number(raw)

    def ask(select: str, condition: str) -> list[Series]:
        nonlocal excluded
        q = f"SELECT {select} FROM {quote_ident(schema.EVENT)} WHERE {condition}"
        if excluded is None:
            try:
                return run(querier, f"{q} GROUP BY {MASS_GROUP}")
            except QueryError:
                if finite:
                    raise
                excluded = overflowing_keys(querier, where)
                if not excluded:
                    raise
        skip = "".join(f" AND {quote_ident('site_id')} != {quote_literal(site)}"
                       for site in sorted({key[0] for key in excluded}))
        return run(querier, f"{q}{skip} GROUP BY {MASS_GROUP}")

    sums: dict[MassKey, Mass] = {}
    select = (f"sum({quote_ident('mass_t')}) AS mass_t, "
              f"sum({quote_ident('grain_t')}) AS grain_t")
    for series in ask(select, where):
        for row in series.rows():
            add_mass(sums, _key(series), (value(row.get("mass_t")), value(row.get("grain_t")),
                                          0.0))
    if EventType.FILM_APPLIED in types:
        for series in ask(f"sum({quote_ident('mass_t')}) AS thin_t", thin_where):
            for row in series.rows():
                add_mass(sums, _key(series), (0.0, 0.0, value(row.get("thin_t"))))
    for key in excluded or ():
        sums[key] = (math.inf, math.inf, 0.0)
    return sums


def ledger_sites(querier: Querier, span: Span) -> set[str]:
    """Sites with a ledger event in the span."""
    q = (
        f"SELECT count({quote_ident('seq')}) FROM {quote_ident(schema.EVENT)} "
        f"WHERE {types_clause(LEDGER_TYPES)} AND {span.condition()} "
        f"GROUP BY {quote_ident('site_id')}"
    )
    return {s.tags["site_id"] for s in run(querier, q) if s.tags.get("site_id") and s.values}


def days_reported(querier: Querier, span: Span, tz: ZoneInfo) -> dict[str, int]:
    """Per manure site: on how many days of ``tz`` its telemetry reported in the span.

    InfluxDB counts per site and local day (``GROUP BY time(1d) tz(…)``: days aligned on
    local midnight, InfluxDB 1.6 included) in a subquery, and the outer query counts those
    days: one row per site comes back, never one per site and day. Read a month at a time
    (the roll-ups do). ``span`` must have a start (``GROUP BY time`` needs a lower bound).
    """
    if span.start is None:
        raise ValueError("days_reported needs a span with a start")
    per_day = (
        f"SELECT count({quote_ident('seq')}) AS n FROM {quote_ident(schema.TELEMETRY)} "
        f"WHERE {quote_ident('site_type')} = {quote_literal('manure')} AND {span.condition()} "
        f"GROUP BY {quote_ident('site_id')}, time(1d) fill(none) tz({quote_literal(tz.key)})"
    )
    days: dict[str, int] = {}
    q = f"SELECT count(n) AS days FROM ({per_day}) GROUP BY {quote_ident('site_id')}"
    for series in run(querier, q):
        site_id = series.tags.get("site_id", "")
        for row in series.rows():
            if site_id and number(row.get("days")) > 0:
                days[site_id] = days.get(site_id, 0) + int(number(row.get("days")))
    return days


def last_readings(querier: Querier, span: Span) -> dict[str, int]:
    """Per manure site: the time (epoch ms) of its last telemetry in the span."""
    q = (
        f"SELECT last({quote_ident('seq')}) FROM {quote_ident(schema.TELEMETRY)} "
        f"WHERE {quote_ident('site_type')} = {quote_literal('manure')} AND {span.condition()} "
        f"GROUP BY {quote_ident('site_id')}"
    )
    return {s.tags["site_id"]: int(number(row.get("time")))
            for s in run(querier, q) if s.tags.get("site_id") for row in s.rows()}


FacilityEvent = tuple[float, float, str]
"""A facility event's time (epoch ms), ``seq`` and type: sorts in the order it happened."""


def facility_events(
    querier: Querier, span: Span, site_id: str | None = None
) -> dict[tuple[str, str], list[FacilityEvent]]:
    """Every ``facility_fault`` / ``facility_ok`` in the span per site and facility, in order.

    Facility events are rare (a fault, its repair), so they are read raw.
    """
    q = (
        f"SELECT {quote_ident('seq')} FROM {quote_ident(schema.EVENT)} "
        f"WHERE {types_clause(FACILITY_TYPES)} AND {span.condition()}{site_clause(site_id)} "
        f"GROUP BY {quote_ident('site_id')}, {quote_ident('facility')}, {quote_ident('type')}"
    )
    found: dict[tuple[str, str], list[FacilityEvent]] = {}
    for series in run(querier, q):
        key = (series.tags.get("site_id", ""), series.tags.get("facility", ""))
        kind = series.tags.get("type", "")
        found.setdefault(key, []).extend(
            (number(row.get("time")), number(row.get("seq")), kind) for row in series.rows())
    for events in found.values():
        events.sort()
    return found


def latest_facility_events(
    querier: Querier, span: Span
) -> dict[tuple[str, str], FacilityEvent]:
    """The latest ``facility_fault`` or ``facility_ok`` per site and facility in the span:
    the state a facility is in when the span ends."""
    q = (
        f"SELECT last({quote_ident('seq')}) FROM {quote_ident(schema.EVENT)} "
        f"WHERE {types_clause(FACILITY_TYPES)} AND {span.condition()} "
        f"GROUP BY {quote_ident('site_id')}, {quote_ident('facility')}, {quote_ident('type')}"
    )
    latest: dict[tuple[str, str], FacilityEvent] = {}
    for series in run(querier, q):
        if not series.values:
            continue
        row = series.rows()[0]
        key = (series.tags.get("site_id", ""), series.tags.get("facility", ""))
        found = (number(row.get("time")), number(row.get("last")), series.tags.get("type", ""))
        if key not in latest or latest[key] < found:
            latest[key] = found
    return latest


def open_fault_sites(latest: dict[tuple[str, str], FacilityEvent]) -> set[str]:
    """Sites where some facility's latest event is a fault (ties in a millisecond: ``seq``)."""
    return {site_id for (site_id, _), (_, _, kind) in latest.items()
            if kind == EventType.FACILITY_FAULT}


def event_count(querier: Querier, span: Span) -> int:
    """How many event points the span holds (a roll-up's audit figure)."""
    q = (
        f"SELECT count({quote_ident('seq')}) FROM {quote_ident(schema.EVENT)} "
        f"WHERE {span.condition()}"
    )
    return sum(int(number(row.get("count"))) for s in run(querier, q) for row in s.rows())


AUDITED_FIELDS = ("mass_t", "grain_t", "thickness_mm", "area_mu", "seq")
"""The event fields the figures read (and ``seq``): their sums are a month's value audit."""


def event_value_sum(querier: Querier, span: Span) -> float:
    """Σ of the audited fields of the span's events, to the gram: a value overwritten
    around ingest (same series and time, other number) changes it, a count would not."""
    q = (
        "SELECT " + ", ".join(f"sum({quote_ident(name)}) AS {quote_ident(name)}"
                              for name in AUDITED_FIELDS)
        + f" FROM {quote_ident(schema.EVENT)} WHERE {span.condition()}"
    )
    total = math.fsum(number(row.get(name)) for s in run(querier, q) for row in s.rows()
                      for name in AUDITED_FIELDS)
    return round(total, 6)


def manure_reading_count(querier: Querier, span: Span) -> int:
    """How many manure telemetry points the span holds (the audit of a month's days)."""
    q = (
        f"SELECT count({quote_ident('seq')}) FROM {quote_ident(schema.TELEMETRY)} "
        f"WHERE {quote_ident('site_type')} = {quote_literal('manure')} AND {span.condition()}"
    )
    return sum(int(number(row.get("count"))) for s in run(querier, q) for row in s.rows())
