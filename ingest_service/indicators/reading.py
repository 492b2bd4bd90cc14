"""Reading one indicator year from InfluxDB: per site, attributed at the data's time.

Everything is aggregated per site (``GROUP BY site_id``), never by the stored ``county``
tag; each site's sums are then given to the registry row in effect when the data was made
(issue 12). A site whose registry rows change inside a stretch of time is re-read raw, once
per period, so its data lands in the county of each period. Complete months come from the
monthly roll-ups where valid (:mod:`ingest_service.indicators.rollups`), the rest raw; both
through :mod:`ingest_service.indicators.aggregates`.

Film by season: a ``film_recovered`` event naming its ``season`` counts for that year when it
happened in that year or the next; one without a season counts for the previous year up to
``FARM_FILM_RECOVERY_UNTIL`` (default 05-31), else for its own year. So year Y reads film
recoveries until that day of Y+1 (and season-named ones until the end of Y+1).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from itertools import pairwise
from zoneinfo import ZoneInfo

from farm_contract.payloads import EventType
from farm_contract.registry import REGISTRY_TZ, Registry, Site, day_of
from ingest_service.indicators import aggregates
from ingest_service.indicators.aggregates import (
    MASS_TYPES,
    Aggregates,
    FacilityEvent,
    Mass,
    MassKey,
    Querier,
    add_mass,
)
from ingest_service.indicators.months import Month, Span, gaps
from ingest_service.indicators.rollups import RollupReader


@dataclass(frozen=True, slots=True)
class Window:
    """The events that count for a year: ``start <= time < as_of``."""

    start: datetime
    as_of: datetime

    @property
    def empty(self) -> bool:
        """True for a year that has not begun yet."""
        return self.as_of <= self.start


def year_window(year: int, tz: ZoneInfo, now: datetime) -> Window:
    """Calendar ``year`` in ``tz``, cut at ``now`` for the current (or a future) year."""
    start = datetime(year, 1, 1, tzinfo=tz)
    end = datetime(year + 1, 1, 1, tzinfo=tz)
    return Window(start=start, as_of=min(end, now))


def recovery_cut(year: int, until: str, tz: ZoneInfo) -> datetime:
    """The first instant after ``until`` (``MM-DD``) of ``year``: an unnamed recovery before
    it counts for ``year - 1``."""
    month, day = (int(part) for part in until.split("-"))
    return datetime.combine(date(year, month, day) + timedelta(days=1), datetime.min.time(), tz)


@dataclass(frozen=True, slots=True)
class Piece:
    """A stretch of the reading, with the event types read in it and what they count for."""

    span: Span
    types: tuple[EventType, ...]
    main: bool
    """Inside the year itself (``start <= time < as_of``): every type counts."""
    unnamed_recoveries: bool
    """A recovery without a season in this piece counts for the year."""


def counts(piece: Piece, kind: str, season: str, year: int) -> bool:
    """Whether a mass of ``kind`` (and film ``season``) in ``piece`` counts for ``year``."""
    if kind == EventType.FILM_RECOVERED:
        return season == str(year) if season else piece.unnamed_recoveries
    return piece.main


@dataclass(slots=True)
class Attributed:
    """A site's masses in one stretch of time, and the registry row in effect then."""

    site: Site
    key: MassKey
    mass: Mass
    piece: Piece


@dataclass(slots=True)
class YearData:
    """What one year's figures are made of."""

    window: Window
    set_day: date
    """The day whose registry gives the year's farm set (last day of the year, or today)."""
    masses: list[Attributed] = field(default_factory=list)
    ledger: set[str] = field(default_factory=set)
    days: dict[str, int] = field(default_factory=dict)
    last_day: dict[str, int] = field(default_factory=dict)
    faults: dict[str, float] = field(default_factory=dict)
    """Longest stretch (days) a facility fault of each site stayed open within the year."""
    facility_sites: set[str] = field(default_factory=set)
    """Sites with a facility event in the year."""
    rollup_months: int = 0
    raw_spans: int = 0

    @property
    def source(self) -> str:
        if not self.rollup_months:
            return "raw"
        return "rollup+raw" if self.raw_spans else "rollup"


def set_day(window: Window) -> date:
    """The registry day that gives a year's farm set: the year's last day, or "as of"."""
    if window.empty:
        return day_of(window.start)
    return day_of(window.as_of - timedelta(microseconds=1))


def _midnight(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time(), REGISTRY_TZ)


def _split(span: Span, at: Iterable[datetime]) -> list[Span]:
    """``span`` cut at the instants of ``at`` that fall strictly inside it."""
    assert span.start is not None
    cuts = sorted({moment for moment in at if span.start < moment < span.end})
    bounds = [span.start, *cuts, span.end]
    return [Span(a, b) for a, b in pairwise(bounds)]


def site_parts(registry: Registry, site_ids: Iterable[str], span: Span) -> dict[str, list[Span]]:
    """The sites whose registry row changes inside ``span``, each with ``span`` cut at its
    changes (midnight of each row's first day); sites with one row throughout are left out."""
    split: dict[str, list[Span]] = {}
    history = registry.site_history
    for site_id in sorted(site_ids):
        if len(history.get(site_id, ())) < 2:
            continue  # one row (or none): nothing changes, at city scale nearly every site
        changes = [_midnight(p.start) for p in registry.periods(site_id)[1:]
                   if p.start is not None]
        parts = _split(span, changes)
        if len(parts) > 1:
            split[site_id] = parts
    return split


def row_at(registry: Registry, site_id: str, moment: datetime) -> Site | None:
    """The registry row of ``site_id`` in effect at ``moment``; data from before a site's
    first row counts for its first row (ingest accepted it); None for an unknown site."""
    rows = registry.site_history.get(site_id, ())
    if len(rows) < 2:  # its one row whatever the day (what the fallback below gives too)
        return rows[0] if rows else None
    site = registry.site_on(site_id, day_of(moment))
    if site is None:
        periods = registry.periods(site_id)
        site = periods[0].site if periods else None
    return site


class YearReader:
    """Reads a year per site and attributes it through the registry history."""

    def __init__(self, query: Querier, tz: ZoneInfo, rollups: bool, until: str) -> None:
        self._query = query
        self._tz = tz
        self._rollups = RollupReader(query, tz) if rollups else None
        self._until = until

    @property
    def tz(self) -> ZoneInfo:
        return self._tz

    def pieces(self, year: int, window: Window, now: datetime) -> list[Piece]:
        """The year split where what counts changes (see the module docstring)."""
        tz = self._tz
        this_cut = recovery_cut(year, self._until, tz)
        next_cut = recovery_cut(year + 1, self._until, tz)
        end_next = min(datetime(year + 2, 1, 1, tzinfo=tz), now)
        film = (EventType.FILM_RECOVERED,)
        candidates = [
            Piece(Span(window.start, min(this_cut, window.as_of)), MASS_TYPES, True, False),
            Piece(Span(max(this_cut, window.start), window.as_of), MASS_TYPES, True, True),
            Piece(Span(window.as_of, min(next_cut, end_next)), film, False, True),
            Piece(Span(max(next_cut, window.as_of), end_next), film, False, False),
        ]
        if window.as_of < datetime(year + 1, 1, 1, tzinfo=tz):
            candidates = candidates[:2]  # the year runs: nothing after it yet
        return [p for p in candidates if not p.span.empty and p.span.start != p.span.end]

    def read(self, registry: Registry, year: int, now: datetime) -> YearData:
        window = year_window(year, self._tz, now)
        data = YearData(window, set_day(window))
        if window.empty:
            return data
        pieces = self.pieces(year, window, now)
        rolled: dict[Month, Aggregates] = {}
        if self._rollups is not None:
            rolled = self._rollups.read(window.start, pieces[-1].span.end, now)
        for piece in pieces:
            found = self._collect(piece, rolled, data)
            data.masses += self._attribute(registry, piece, found)
        self._read_manure(Span(window.start, window.as_of), rolled, data)
        self._read_faults(window, data)
        return data

    def _within(self, rolled: dict[Month, Aggregates], span: Span) -> list[Month]:
        assert span.start is not None
        return [m for m in rolled
                if m.start(self._tz) >= span.start and m.end(self._tz) <= span.end]

    def _collect(self, piece: Piece, rolled: dict[Month, Aggregates], data: YearData) -> Aggregates:
        """The piece's masses: whole valid months from roll-ups, the rest raw."""
        months = self._within(rolled, piece.span)
        found = Aggregates()
        types = set(piece.types)
        for month in months:
            for key, more in rolled[month].masses.items():
                if key[1] in types:
                    add_mass(found.masses, key, more)
        data.rollup_months += len(months)
        for gap in gaps(piece.span, months, self._tz):
            data.raw_spans += 1
            found.add(Aggregates(masses=aggregates.mass_sums(self._query, gap, piece.types,
                                                             finite=False)))
        return found

    def _read_manure(self, span: Span, rolled: dict[Month, Aggregates], data: YearData) -> None:
        """Ledgers, days reported and last readings over the year itself, once: unlike
        masses they count the same in every piece, and each query over raw events costs
        per site (a union, sums of whole local days and a maximum add up over any cut)."""
        months = self._within(rolled, span)
        found = Aggregates()
        for month in months:
            part = rolled[month]
            found.add(Aggregates(ledger=part.ledger, days=part.days, last_day=part.last_day))
        for gap in gaps(span, months, self._tz):
            found.ledger |= aggregates.ledger_sites(self._query, gap)
            for stretch in self._months(gap):  # a month per query, as roll-ups do
                found.add(Aggregates(days=aggregates.days_reported(
                    self._query, stretch, self._tz)))
            found.add(Aggregates(last_day=aggregates.last_readings(self._query, gap)))
        data.ledger, data.days, data.last_day = found.ledger, found.days, found.last_day

    def _months(self, span: Span) -> list[Span]:
        """``span`` cut at the month boundaries of ``tz`` inside it."""
        assert span.start is not None
        month = Month.of(span.start, self._tz).next()
        bounds = []
        while month.start(self._tz) < span.end:
            bounds.append(month.start(self._tz))
            month = month.next()
        return _split(span, bounds)

    def _attribute(self, registry: Registry, piece: Piece, found: Aggregates) -> list[Attributed]:
        """Each site's masses to its registry row at the time; split where the row changes."""
        span = piece.span
        assert span.start is not None
        out: list[Attributed] = []
        split = site_parts(registry, {key[0] for key in found.masses}, span)
        for key, mass in sorted(found.masses.items()):
            if key[0] in split:
                continue
            site = row_at(registry, key[0], span.start)
            if site is not None:
                out.append(Attributed(site, key, mass, piece))
        for site_id, parts in split.items():
            for part in parts:
                assert part.start is not None
                site = row_at(registry, site_id, part.start)
                if site is None:
                    continue
                sums = aggregates.mass_sums(self._query, part, piece.types, site_id, finite=False)
                out += [Attributed(site, key, mass, piece) for key, mass in sorted(sums.items())]
        return out

    def _read_faults(self, window: Window, data: YearData) -> None:
        """Longest open fault per site within the year, from the state at its start on."""
        before = aggregates.latest_facility_events(self._query, Span(None, window.start))
        during = aggregates.facility_events(
            self._query, Span(window.start, window.as_of, inclusive=True))
        data.facility_sites = {site_id for site_id, _ in during}
        start_ms = window.start.timestamp() * 1000
        end_ms = window.as_of.timestamp() * 1000
        for key in before.keys() | during.keys():
            site_id = key[0]
            longest = longest_open_ms(before.get(key), during.get(key, []), start_ms, end_ms)
            data.faults[site_id] = max(data.faults.get(site_id, 0.0), longest / 86_400_000)


def longest_open_ms(
    before: FacilityEvent | None, events: list[FacilityEvent], start_ms: float, end_ms: float
) -> float:
    """The longest time one facility's fault stayed open within ``[start_ms, end_ms]``: a
    fault open when the year began counts from its start, one still open at "as of" until
    then. Repeated faults while open do not restart the clock."""
    open_since = start_ms if before is not None and before[2] == EventType.FACILITY_FAULT else None
    longest = 0.0
    for moment, _seq, kind in events:
        if kind == EventType.FACILITY_FAULT and open_since is None:
            open_since = moment
        elif kind == EventType.FACILITY_OK and open_since is not None:
            longest = max(longest, moment - open_since)
            open_since = None
    if open_since is not None:
        longest = max(longest, end_ms - open_since)
    return longest
