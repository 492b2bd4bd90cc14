"""The ledgers behind a year's figures: per site, type and use or crop, as the engine counts.

The annual report's film, straw and manure sheets list what each figure is made of, so
they must add up to it. They are therefore read the way :mod:`ingest_service.indicators.
reading` reads the figures, not with a calendar-year query of their own:

- the same pieces of time (film recoveries of the next spring count for the season they
  recover, ``FARM_FILM_RECOVERY_UNTIL``; see :func:`~ingest_service.indicators.reading.counts`);
- per site, never by the stored ``county`` tag, each site's sums given to the registry row
  in effect when the data was made, split where that row changes (issue 12), so a county
  renamed by a correction shows its film and straw under the new name;
- a manure farm's entries under its county in the year's farm set, as the ledger coverage
  counts it.

One raw InfluxQL aggregation per piece (plus one per split site and period); the ledgers
are read when a report is built or a year is closed, not on every API call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from farm_contract import schema
from farm_contract.payloads import EventType
from farm_contract.registry import Registry
from ingest_service.indicators.aggregates import (
    LEDGER_TYPES as MANURE_TYPES,
)
from ingest_service.indicators.aggregates import (
    Querier,
    number,
    run,
    site_clause,
    types_clause,
)
from ingest_service.indicators.months import Span
from ingest_service.indicators.reading import (
    Piece,
    YearReader,
    counts,
    row_at,
    set_day,
    site_parts,
    year_window,
)
from ingest_service.influxql import quote_ident

LEDGER_TYPES = (EventType.FILM_APPLIED, EventType.FILM_RECOVERED, EventType.HARVEST,
                EventType.STRAW_UTILIZED, *MANURE_TYPES)
GROUP_TAGS = ("site_id", "type", "use", "crop", "season")


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One site's total of one event type (and use or crop) in the year."""

    county: str
    site_id: str
    site_name: str
    type: EventType
    item: str
    """The ``use`` (straw, manure) or ``crop`` (harvest); empty for film and treatment."""
    mass_t: float
    grain_t: float
    entries: int
    straw_ratio: float | None = None
    """For a harvest: collectable straw per tonne of grain, as the indicator used it."""

    @property
    def straw_t(self) -> float:
        """Straw a harvest counts for (grain × factor); 0 for other entries."""
        return self.grain_t * self.straw_ratio if self.straw_ratio is not None else 0.0

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "type": str(self.type)}

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> LedgerEntry:
        ratio = item.get("straw_ratio")
        return cls(county=str(item["county"]), site_id=str(item["site_id"]),
                   site_name=str(item["site_name"]), type=EventType(item["type"]),
                   item=str(item["item"]), mass_t=float(item["mass_t"]),
                   grain_t=float(item["grain_t"]), entries=int(item["entries"]),
                   straw_ratio=float(ratio) if ratio is not None else None)


Key = tuple[str, str, str, str, str]
"""``site_id``, ``type``, ``use``, ``crop``, ``season`` (``""`` where absent)."""
Sums = dict[Key, tuple[float, float, int]]
"""Σ ``mass_t``, Σ ``grain_t`` and the number of events."""


def ledger_sums(querier: Querier, span: Span, types: Iterable[EventType],
                site_id: str | None = None) -> Sums:
    """One aggregation: tonnes, grain and entries per site, type, use, crop and season."""
    group = ", ".join(quote_ident(tag) for tag in GROUP_TAGS)
    q = (
        f"SELECT sum({quote_ident('mass_t')}) AS {quote_ident('mass_t')}, "
        f"sum({quote_ident('grain_t')}) AS {quote_ident('grain_t')}, "
        f"count({quote_ident('seq')}) AS {quote_ident('entries')} "
        f"FROM {quote_ident(schema.EVENT)} WHERE {types_clause(types)} "
        f"AND {span.condition()}{site_clause(site_id)} GROUP BY {group}"
    )
    out: Sums = {}
    for series in run(querier, q):
        if not series.values:
            continue
        key: Key = tuple(series.tags.get(tag, "") for tag in GROUP_TAGS)  # type: ignore[assignment]
        row = series.rows()[0]
        out[key] = (number(row.get("mass_t")), number(row.get("grain_t")),
                    int(number(row.get("entries"))))
    return out


def read_ledger(
    querier: Querier, reader: YearReader, registry: Registry, year: int, now: datetime,
    straw_factor: Callable[[str, str], float],
) -> list[LedgerEntry]:
    """The year's ledgers, attributed as the engine attributes the figures."""
    window = year_window(year, reader.tz, now)
    if window.empty:
        return []
    farm_set = registry.at(set_day(window))
    totals: dict[tuple[str, str, str, EventType, str], list[float]] = {}
    for piece in reader.pieces(year, window, now):
        types = (*piece.types, *MANURE_TYPES) if piece.main else piece.types
        for site_name, county, key, sums in _attributed(querier, registry, farm_set, piece,
                                                        types):
            site_id, kind, use, crop, season = key
            event = EventType(kind)
            if not counts(piece, event, season, year):
                continue
            item = use if event in (EventType.STRAW_UTILIZED, *MANURE_TYPES) else ""
            if event == EventType.HARVEST:
                item = crop or "other"
            total = totals.setdefault((county, site_id, site_name, event, item), [0.0, 0.0, 0])
            total[0] += sums[0]
            total[1] += sums[1]
            total[2] += sums[2]
    out = [
        LedgerEntry(county=county, site_id=site_id, site_name=name, type=event, item=item,
                    mass_t=mass, grain_t=grain, entries=int(entries),
                    straw_ratio=straw_factor(county, item) if event == EventType.HARVEST
                    else None)
        for (county, site_id, name, event, item), (mass, grain, entries) in totals.items()
    ]
    out.sort(key=lambda e: (e.county, e.site_id, e.type, e.item))
    return out


def _attributed(
    querier: Querier, registry: Registry, farm_set: Registry, piece: Piece,
    types: tuple[EventType, ...],
) -> Iterable[tuple[str, str, Key, tuple[float, float, int]]]:
    """(site name, county, key, sums) of a piece: each site's sums under its registry row
    at the time (re-read per period where the row changes); manure under the farm set."""
    span = piece.span
    assert span.start is not None
    found = ledger_sums(querier, span, types)
    split = site_parts(registry, {key[0] for key in found}, span)
    for key, sums in sorted(found.items()):
        if key[0] in split:
            continue
        site = _site(registry, farm_set, key, span.start)
        if site is not None:
            yield site.name, site.county, key, sums
    for site_id, parts in split.items():
        for part in parts:
            assert part.start is not None
            for key, sums in sorted(ledger_sums(querier, part, types, site_id).items()):
                site = _site(registry, farm_set, key, part.start)
                if site is not None:
                    yield site.name, site.county, key, sums


def manure_sites(farm_set: Registry) -> dict[str, list[tuple[str, str, bool]]]:
    """County → its manure sites as (site_id, name, large_scale), so a farm with no ledger
    entry still appears in the manure sheet."""
    return {county: [(s.site_id, s.name, s.large_scale) for s in farm_set.sites_in(county)
                     if s.site_type == "manure"]
            for county in farm_set.counties}


def _site(registry: Registry, farm_set: Registry, key: Key, moment: datetime) -> Any:
    if key[1] in MANURE_TYPES and key[0] in farm_set.sites:
        return farm_set.sites[key[0]]  # the ledger coverage counts a farm in the farm set
    return row_at(registry, key[0], moment)
