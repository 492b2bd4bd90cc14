"""Monthly roll-ups of the indicators' event aggregates, kept in InfluxDB.

A year's indicators then read 12 small roll-ups instead of a year of raw events
(InfluxDB 3 refuses a query that touches more than ``--query-file-limit``
files; InfluxDB 1.x pays per series per shard), and raw events only for what no
valid roll-up covers: the current month, a month not built yet, a month that
got late events since it was built.

Measurement ``rollup``; every point sits at its month's first instant in
``settings.tz``; ``build`` (an int, the build's start in ns) ties a month's points
together:

- ``kind=mass_rows``, ``part``: ``rows``, JSON columns (an array per column) of
  :data:`MASS_COLUMNS` — ``site_id``, ``type``, ``crop``, ``season``, ``mass_t``,
  ``grain_t``, ``thin_t`` (sums; ``thin_t`` is applied film below 0.01 mm) — at most
  :data:`PART_BYTES` per point. Keyed by site, never by the stored county tag: the engine
  maps sites to counties through the registry history.
- ``kind=ledger``, ``part``: ``site_ids`` (sorted, comma-separated, at most
  :data:`LEDGER_PART` per point), ``sites`` — a set, because a site is counted
  once however many months it kept its ledger in
- ``kind=days_rows``, ``part``: ``rows``, JSON columns of :data:`DAYS_COLUMNS` — ``site_id``,
  ``days`` (days of the month a manure site's telemetry reported on), ``last_day`` (epoch
  ms of its last reading)
- ``kind=month``, ``month``: ``marks``, ``events``, ``readings``, ``value_sum``, ``parts``,
  ``format`` — the manifest, written last; a manifest of another :data:`FORMAT` is not valid

Per-site values are packed into a few points a month (format 3) rather than one point per
site (format 2, tags ``kind=mass``/``kind=days``, ``site_id``): InfluxDB 1.x pays per
series read, so 10,000 sites' points cost ~1 s to read where a few dozen packed points cost
milliseconds (docs/performance.md). Points of format 2 are left where they are and never
read (``DROP SERIES FROM rollup WHERE kind = 'mass' OR kind = 'days'`` removes them).

A month's roll-up is used only if its manifest exists, the month ended before
"as of", and the month's ``late_event`` marks still number what the manifest
recorded (:mod:`ingest_service.indicators.late_events`). Points of an older build (a group
that vanished) are ignored; a point of a newer build than the manifest means a
rebuild is under way, and so does a month missing some of the ``parts`` its manifest
counts: the month is read raw instead. Writes that bypass
ingest, and late telemetry, leave no mark: the maintainer re-counts one month's raw events
and manure readings, and re-sums its events' numbers, per cycle against the manifest's
``events``, ``readings`` and ``value_sum`` and rebuilds on a difference (a value
overwritten in place keeps the count, not the sum), and
``DROP MEASUREMENT rollup`` rebuilds everything.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import orjson

from farm_contract import schema
from ingest_service.indicators import aggregates
from ingest_service.indicators.aggregates import Aggregates, Querier, number, run
from ingest_service.indicators.months import Month, Span, months_between
from ingest_service.influxql import QueryError, quote_ident, quote_literal, time_literal
from ingest_service.model import FieldValue, Point
from ingest_service.outputs.influx import Writer
from ingest_service.outputs.lineprotocol import encode
from ingest_service.settings import Settings

log = logging.getLogger(__name__)

LEDGER_PART = 1000
"""Site ids per ledger point: ~10 KiB, well under InfluxDB's 64 KiB string field."""
SETTLE = timedelta(minutes=15)
"""A month is built this long after it ended: more than any clock skew between workers,
so a worker that still took the month for the current one has finished storing."""
PART_BYTES = 32_000
"""Bytes of packed JSON rows per point: under InfluxDB 1.x's 64 KiB string field."""
FORMAT = 3
"""The roll-up layout: 2 keyed masses by site (issue 12) and kept days reported (issue 13),
a point per site; 3 packs those per-site rows into a few points a month. A manifest of
another format is not valid, so its month is rebuilt."""
MASS_ROWS, DAYS_ROWS, LEDGER = "mass_rows", "days_rows", "ledger"
MONTHS_PER_CYCLE = 24
"""Months built per maintenance cycle in the service, so a first start is spread out."""


def _kind(kind: str) -> str:
    return f"{quote_ident('kind')} = {quote_literal(kind)}"


def _int(value: object) -> int:
    """An integer field exactly (a build id in ns does not survive a float)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    if isinstance(value, float) and not math.isfinite(value):
        raise QueryError(f"a roll-up field is {value}")  # a data error, not a crash
    return int(value)


def _start_ns(month: Month, tz: ZoneInfo) -> int:
    return int(month.start(tz).timestamp()) * 1_000_000_000


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a month's roll-up was built from."""

    build: int
    marks: int
    events: int
    readings: int = 0
    """Manure telemetry points: late telemetry leaves no mark, so the audit re-counts them."""
    values: float = 0.0
    """Σ of the events' audited fields (:func:`aggregates.event_value_sum`): the audit
    catches a value overwritten around ingest, which leaves the count as it was."""
    parts: int = 0
    """Points written for the month besides the manifest: fewer read means a torn build."""

    def matches(self, events: int, readings: int, values: float) -> bool:
        """True if a month's raw events still are what this roll-up was built from."""
        return (events, readings) == (self.events, self.readings) and math.isclose(
            values, self.values, rel_tol=1e-12, abs_tol=1e-6)


class RollupReader:
    """Finds the valid roll-ups and reads them."""

    def __init__(self, querier: Querier, tz: ZoneInfo) -> None:
        self._query = querier
        self._tz = tz

    def _month(self, time_ms: object) -> Month:
        return Month.of(datetime.fromtimestamp(number(time_ms) / 1000, UTC), self._tz)

    def manifests(self) -> dict[Month, Manifest]:
        """Manifests of this :data:`FORMAT` (others are rebuilt)."""
        q = (
            f"SELECT {quote_ident('build')}, {quote_ident('marks')}, {quote_ident('events')}, "
            f"{quote_ident('readings')}, {quote_ident('value_sum')}, {quote_ident('parts')}, "
            f"{quote_ident('format')} FROM {quote_ident(schema.ROLLUP)} WHERE {_kind('month')}"
        )
        return {
            self._month(row["time"]): Manifest(
                _int(row.get("build")), _int(row.get("marks")), _int(row.get("events")),
                _int(row.get("readings")), number(row.get("value_sum")), _int(row.get("parts")),
            )
            for series in run(self._query, q) for row in series.rows()
            if _int(row.get("format")) == FORMAT
        }

    def marks(self) -> dict[Month, int]:
        """How many late-event marks each month has."""
        q = (
            f"SELECT count({quote_ident('events')}) FROM {quote_ident(schema.LATE_EVENT)} "
            f"GROUP BY {quote_ident('month')}"
        )
        found: dict[Month, int] = {}
        for series in run(self._query, q):
            key = series.tags.get("month", "")
            try:
                month = Month.parse(key)
            except ValueError:
                continue
            found[month] = sum(_int(row.get("count")) for row in series.rows())
        return found

    def valid(self, as_of: datetime) -> dict[Month, Manifest]:
        """Manifests of months that ended by ``as_of`` and got no late event since."""
        marks = self.marks()
        return {
            month: manifest
            for month, manifest in self.manifests().items()
            if month.end(self._tz) <= as_of and manifest.marks == marks.get(month, 0)
        }

    def read(self, start: datetime, end: datetime, as_of: datetime) -> dict[Month, Aggregates]:
        """The valid roll-ups of the months inside ``start <= time < end``, month by month.

        One query reads every month's packed points (a few dozen series, whatever the
        number of sites)."""
        valid = {month: manifest for month, manifest in self.valid(as_of).items()
                 if month.start(self._tz) >= start and month.end(self._tz) <= end}
        if not valid:
            return {}
        parts: dict[Month, Aggregates] = {month: Aggregates() for month in valid}
        seen: dict[Month, int] = dict.fromkeys(valid, 0)
        torn: set[Month] = set()
        months: dict[object, Month] = {}
        columns = ", ".join(quote_ident(name) for name in ("build", "rows", "site_ids"))
        kinds = " OR ".join(_kind(kind) for kind in (MASS_ROWS, DAYS_ROWS, LEDGER))
        q = (f"SELECT {columns} FROM {quote_ident(schema.ROLLUP)} WHERE ({kinds}) "
             f"AND time >= {time_literal(start)} AND time < {time_literal(end)} "
             f"GROUP BY {quote_ident('kind')}")
        for series in run(self._query, q):
            kind = series.tags.get("kind", "")
            at = {name: index for index, name in enumerate(series.columns)}
            for row in series.values:
                moment = row[at["time"]]
                month = months.get(moment)
                if month is None:
                    month = months[moment] = self._month(moment)
                manifest = valid.get(month)
                if manifest is None:
                    continue
                build = _int(row[at["build"]])
                if build > manifest.build:
                    torn.add(month)  # rebuilt since its manifest was read
                if build != manifest.build:
                    continue
                seen[month] += 1
                if kind == LEDGER:
                    text = row[at["site_ids"]] if "site_ids" in at else None
                    parts[month].ledger.update(filter(None, str(text or "").split(",")))
                else:
                    unpack_rows(kind, row[at["rows"]] if "rows" in at else None, parts[month])
        torn |= {month for month, manifest in valid.items() if seen[month] != manifest.parts}
        return {month: parts[month] for month in sorted(valid.keys() - torn)}


MASS_COLUMNS = ("site_id", "type", "crop", "season", "mass_t", "grain_t", "thin_t")
DAYS_COLUMNS = ("site_id", "days", "last_day")


def _strings(column: list[object]) -> bool:
    return set(map(type, column)) <= {str}


def unpack_rows(kind: str, text: object, into: Aggregates) -> None:
    """A packed point's columns into ``into``; anything malformed is a :class:`QueryError`."""
    try:
        columns = orjson.loads(str(text or "[]"))
        if kind not in (MASS_ROWS, DAYS_ROWS):
            return
        width = len(MASS_COLUMNS if kind == MASS_ROWS else DAYS_COLUMNS)
        if (type(columns) is not list or len(columns) != width
                or any(type(c) is not list or len(c) != len(columns[0]) for c in columns)):
            raise ValueError(f"not {width} columns of one length")
        if kind == MASS_ROWS:
            sites, types, crops, seasons, mass, grain, thin = columns
            if not all(map(_strings, (sites, types, crops, seasons))):
                raise TypeError("a site, type, crop or season that is not a string")
            into.masses.update(zip(zip(sites, types, crops, seasons, strict=True),
                                   zip(map(float, mass), map(float, grain), map(float, thin),
                                       strict=True), strict=True))
        else:
            sites, days, last = columns
            if not _strings(sites):
                raise TypeError("a site that is not a string")
            into.days.update(zip(sites, map(int, days), strict=True))
            into.last_day.update(zip(sites, map(int, last), strict=True))
    except (orjson.JSONDecodeError, TypeError, ValueError) as exc:
        raise QueryError(f"a {kind} roll-up point is malformed: {exc}") from None


def _packed(rows: Iterable[tuple[object, ...]]) -> Iterator[str]:
    """``rows`` as JSON columns (one array per column), each point's at most
    :data:`PART_BYTES`: sized as JSON rows, which columns never exceed."""
    chunk: list[tuple[object, ...]] = []
    size = 1  # the brackets, less the comma the first row does not need
    for row in rows:
        length = len(orjson.dumps(row)) + 1
        if chunk and size + length > PART_BYTES:
            yield orjson.dumps([list(column) for column in zip(*chunk, strict=True)]).decode()
            chunk, size = [], 1
        chunk.append(row)
        size += length
    if chunk:
        yield orjson.dumps([list(column) for column in zip(*chunk, strict=True)]).decode()


def rollup_points(month: Month, found: Aggregates, build: int, tz: ZoneInfo) -> list[Point]:
    """A month's aggregates as ``rollup`` points (the manifest excluded)."""
    at = _start_ns(month, tz)
    points: list[Point] = []
    masses = (key + value for key, value in sorted(found.masses.items()))
    for part, rows in enumerate(_packed(masses)):
        points.append(Point(schema.ROLLUP, {"kind": MASS_ROWS, "part": str(part)},
                            {"build": build, "rows": rows}, at))
    sites = sorted(found.ledger)
    for part, first in enumerate(range(0, len(sites), LEDGER_PART)):
        chunk = sites[first:first + LEDGER_PART]
        fields: dict[str, FieldValue] = {"build": build, "sites": len(chunk),
                                         "site_ids": ",".join(chunk)}
        points.append(Point(schema.ROLLUP, {"kind": LEDGER, "part": str(part)}, fields, at))
    days = ((site_id, count, found.last_day.get(site_id, 0))
            for site_id, count in sorted(found.days.items()))
    for part, rows in enumerate(_packed(days)):
        points.append(Point(schema.ROLLUP, {"kind": DAYS_ROWS, "part": str(part)},
                            {"build": build, "rows": rows}, at))
    return points


def manifest_point(month: Month, manifest: Manifest, tz: ZoneInfo) -> Point:
    fields: dict[str, FieldValue] = {
        "build": manifest.build, "marks": manifest.marks, "events": manifest.events,
        "readings": manifest.readings, "value_sum": float(manifest.values),
        "parts": manifest.parts, "format": FORMAT,
    }
    return Point(schema.ROLLUP, {"kind": "month", "month": month.key}, fields,
                 _start_ns(month, tz))


@dataclass(slots=True)
class Maintenance:
    """What one maintenance cycle did."""

    built: list[Month] = field(default_factory=list)
    audited: Month | None = None
    points: int = 0
    pending: int = 0
    """Months still to build, left for the next cycle."""


class RollupMaintainer:
    """Builds and refreshes the roll-ups; run by the worker that publishes indicators.

    Each cycle: every complete month from ``FARM_EARLIEST_TS`` on (and any month
    with late-event marks) without a valid manifest is built, newest first, at
    most ``months_per_cycle``; then one built month is audited (its raw events
    re-counted), newest to oldest and round again.
    """

    def __init__(
        self, querier: Querier, writer: Writer, settings: Settings,
        months_per_cycle: int | None = MONTHS_PER_CYCLE,
    ) -> None:
        self._query = querier
        self._writer = writer
        self._tz = settings.tz
        self._first = Month.of(datetime.fromisoformat(settings.earliest_ts), self._tz)
        self._reader = RollupReader(querier, self._tz)
        self._months_per_cycle = months_per_cycle
        self._audit_after: Month | None = None

    def build(self, month: Month, marks: int) -> int:
        """Aggregate one month in InfluxDB and write its roll-up; return the points written.

        ``marks`` is the month's late-event mark count read *before* any raw event is.
        """
        build = time.time_ns()
        span = Span(month.start(self._tz), month.end(self._tz))
        events = aggregates.event_count(self._query, span)  # counted first: never over-counts
        readings = aggregates.manure_reading_count(self._query, span)
        values = aggregates.event_value_sum(self._query, span) if events else 0.0
        found = Aggregates()
        if events:
            found.masses = aggregates.mass_sums(self._query, span)
            found.ledger = aggregates.ledger_sites(self._query, span)
        if readings:
            found.days = aggregates.days_reported(self._query, span, self._tz)
            found.last_day = aggregates.last_readings(self._query, span)
        points = rollup_points(month, found, build, self._tz)
        if points:
            self._writer.write(encode(points))
        manifest = Manifest(build, marks, events, readings, values, len(points))
        self._writer.write(encode([manifest_point(month, manifest, self._tz)]))
        return len(points) + 1

    def maintain_once(self, now: datetime | None = None) -> Maintenance:
        """Build what is missing or stale, newest month first, then audit one month."""
        moment = now or datetime.now(UTC)
        marks = self._reader.marks()
        manifests = self._reader.manifests()
        last = Month.of(moment - SETTLE, self._tz).prev()
        wanted = set(months_between(self._first, last)) | {m for m in marks if m <= last}
        todo = sorted(
            (m for m in wanted
             if m not in manifests or manifests[m].marks != marks.get(m, 0)),
            reverse=True,
        )
        budget = len(todo) if self._months_per_cycle is None else self._months_per_cycle
        done = Maintenance(pending=max(0, len(todo) - budget))
        for month in todo[:budget]:
            done.points += self.build(month, marks.get(month, 0))
            done.built.append(month)
        audit = self._next_audit(sorted(m for m in manifests if m not in done.built))
        if audit is not None:
            done.audited = audit
            span = Span(audit.start(self._tz), audit.end(self._tz))
            events = aggregates.event_count(self._query, span)
            if not manifests[audit].matches(
                    events, aggregates.manure_reading_count(self._query, span),
                    aggregates.event_value_sum(self._query, span) if events else 0.0):
                log.info("roll-up of %s no longer matches its events; rebuilding", audit.key)
                done.points += self.build(audit, marks.get(audit, 0))
                done.built.append(audit)
        if done.built:
            log.info("built roll-ups of %d month(s), %d to go", len(done.built), done.pending)
        return done

    def _next_audit(self, months: list[Month]) -> Month | None:
        """Newest to oldest, then round again: recent months are where late writes land."""
        if not months:
            return None
        before = [m for m in months if self._audit_after is None or m < self._audit_after]
        self._audit_after = (before or months)[-1]
        return self._audit_after
