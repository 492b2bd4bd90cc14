"""The indicators' raw-event aggregates over one time span, computed by InfluxDB.

The indicator engine runs them over the spans no valid roll-up covers, and the
roll-up builder runs the very same functions over one month: each aggregate is
defined once, so a roll-up holds exactly what the raw computation would read.
Every piece is monthly-additive: sums add up, "has a ledger event" is a union,
and the latest facility event of a union of months is the latest of each
month's latest.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

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

MassKey = tuple[str, str, str]
"""``county``, ``type``, ``crop`` tags (``""`` where absent)."""
FacilityKey = tuple[str, str, str]
"""``site_id``, ``facility``, ``type`` tags."""
Latest = tuple[float, float]
"""A facility event's time (epoch ms) and ``seq``: later is greater."""


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


@dataclass(slots=True)
class Aggregates:
    """What the indicators need from events, for some stretch of time."""

    masses: dict[MassKey, tuple[float, float]] = field(default_factory=dict)
    """Σ ``mass_t`` and Σ ``grain_t`` per county, type and crop."""
    ledger: set[str] = field(default_factory=set)
    """Sites with a ``manure_treated`` or ``manure_utilized`` event."""
    latest: dict[FacilityKey, Latest] = field(default_factory=dict)
    """The latest ``facility_fault`` / ``facility_ok`` per site, facility and type."""

    def add(self, other: Aggregates) -> None:
        """Combine with the aggregates of a disjoint stretch of time."""
        for key, (mass, grain) in other.masses.items():
            old_mass, old_grain = self.masses.get(key, (0.0, 0.0))
            self.masses[key] = (old_mass + mass, old_grain + grain)
        self.ledger |= other.ledger
        for fkey, when in other.latest.items():
            if fkey not in self.latest or self.latest[fkey] < when:
                self.latest[fkey] = when


def mass_sums(
    querier: Querier, span: Span, county: str | None = None
) -> dict[MassKey, tuple[float, float]]:
    """Film and straw tonnes per county tag, type and crop: one query for the four types."""
    where = f"{types_clause(MASS_TYPES)} AND {span.condition()}"
    if county is not None:
        where += f" AND {quote_ident('county')} = {quote_literal(county)}"
    q = (
        f"SELECT sum({quote_ident('mass_t')}) AS mass_t, "
        f"sum({quote_ident('grain_t')}) AS grain_t "
        f"FROM {quote_ident(schema.EVENT)} WHERE {where} "
        f"GROUP BY {quote_ident('county')}, {quote_ident('type')}, {quote_ident('crop')}"
    )
    sums: dict[MassKey, tuple[float, float]] = {}
    for series in run(querier, q):
        key = (series.tags.get("county", ""), series.tags.get("type", ""),
               series.tags.get("crop", ""))
        for row in series.rows():
            mass, grain = sums.get(key, (0.0, 0.0))
            sums[key] = (mass + number(row.get("mass_t")), grain + number(row.get("grain_t")))
    return sums


def ledger_sites(querier: Querier, span: Span) -> set[str]:
    """Sites with a ledger event in the span."""
    q = (
        f"SELECT count({quote_ident('seq')}) FROM {quote_ident(schema.EVENT)} "
        f"WHERE {types_clause(LEDGER_TYPES)} AND {span.condition()} "
        f"GROUP BY {quote_ident('site_id')}"
    )
    return {s.tags["site_id"] for s in run(querier, q) if s.tags.get("site_id") and s.values}


def latest_facility_events(querier: Querier, span: Span) -> dict[FacilityKey, Latest]:
    """The latest ``facility_fault`` and ``facility_ok`` per site and facility in the span."""
    q = (
        f"SELECT last({quote_ident('seq')}) FROM {quote_ident(schema.EVENT)} "
        f"WHERE {types_clause(FACILITY_TYPES)} AND {span.condition()} "
        f"GROUP BY {quote_ident('site_id')}, {quote_ident('facility')}, {quote_ident('type')}"
    )
    latest: dict[FacilityKey, Latest] = {}
    for series in run(querier, q):
        if not series.values:
            continue
        row = series.rows()[0]
        key = (series.tags.get("site_id", ""), series.tags.get("facility", ""),
               series.tags.get("type", ""))
        latest[key] = (number(row.get("time")), number(row.get("last")))
    return latest


def open_fault_sites(latest: dict[FacilityKey, Latest]) -> set[str]:
    """Sites where some facility's latest fault has no later ``facility_ok``.

    Ties within a millisecond (the query's time resolution) are broken by
    ``seq``, the device's rising counter.
    """
    open_sites: set[str] = set()
    for (site_id, facility, kind), fault in latest.items():
        if kind != EventType.FACILITY_FAULT:
            continue
        ok = latest.get((site_id, facility, EventType.FACILITY_OK))
        if ok is None or ok < fault:
            open_sites.add(site_id)
    return open_sites


def event_count(querier: Querier, span: Span) -> int:
    """How many event points the span holds (a roll-up's audit figure)."""
    q = (
        f"SELECT count({quote_ident('seq')}) FROM {quote_ident(schema.EVENT)} "
        f"WHERE {span.condition()}"
    )
    return sum(int(number(row.get("count"))) for s in run(querier, q) for row in s.rows())

