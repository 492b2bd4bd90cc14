"""Monthly roll-ups of the indicators' event aggregates, kept in InfluxDB.

A year's indicators then read 12 small roll-ups instead of a year of raw events
(InfluxDB 3 refuses a query that touches more than ``--query-file-limit``
files; InfluxDB 1.x pays per series per shard), and raw events only for what no
valid roll-up covers: the current month, a month not built yet, a month that
got late events since it was built.

Measurement ``rollup``; every point sits at its month's first instant in
``settings.tz``; ``build`` (an int, the build's start in ns) ties a month's points
together:

- ``kind=mass``, ``county``, ``type``, ``crop``: ``mass_t``, ``grain_t`` (sums)
- ``kind=ledger``, ``part``: ``site_ids`` (sorted, comma-separated, at most
  :data:`LEDGER_PART` per point), ``sites`` — a set, because a site is counted
  once however many months it kept its ledger in
- ``kind=fault``, ``site_id``, ``facility``, ``type``: ``event_ms``, ``seq`` of the
  month's latest ``facility_fault`` / ``facility_ok``
- ``kind=month``, ``month``: ``marks``, ``events`` — the manifest, written last

A month's roll-up is used only if its manifest exists, the month ended before
"as of", and the month's ``late_event`` marks still number what the manifest
recorded (:mod:`ingest_service.indicators.late_events`). Points of an older build (a group
that vanished) are ignored; a point of a newer build than the manifest means a
rebuild is under way, and the month is read raw instead. Writes that bypass
ingest leave no mark: the maintainer re-counts one month's raw events per cycle
against the manifest's ``events`` and rebuilds on a difference, and
``DROP MEASUREMENT rollup`` rebuilds everything.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

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


@dataclass(slots=True)
class Rolled:
    """Roll-ups read for a computation, and which months they stand for."""

    found: Aggregates = field(default_factory=Aggregates)
    months: set[Month] = field(default_factory=set)
    """Months whose masses and ledger came from roll-ups."""
    facility_months: set[Month] = field(default_factory=set)
    """Months whose facility events came from roll-ups (any year up to "as of")."""


class RollupReader:
    """Finds the valid roll-ups and reads them."""

    def __init__(self, querier: Querier, tz: ZoneInfo) -> None:
        self._query = querier
        self._tz = tz

    def _month(self, time_ms: object) -> Month:
        return Month.of(datetime.fromtimestamp(number(time_ms) / 1000, UTC), self._tz)

    def manifests(self) -> dict[Month, Manifest]:
        q = (
            f"SELECT {quote_ident('build')}, {quote_ident('marks')}, {quote_ident('events')} "
            f"FROM {quote_ident(schema.ROLLUP)} WHERE {_kind('month')}"
        )
        return {
            self._month(row["time"]): Manifest(
                _int(row.get("build")), _int(row.get("marks")), _int(row.get("events"))
            )
            for series in run(self._query, q) for row in series.rows()
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

    def read(self, start: datetime, as_of: datetime, county: str | None) -> Rolled:
        """Valid roll-ups: masses and ledger for ``start`` ≤ month, facilities for all months."""
        valid = self.valid(as_of)
        if not valid:
            return Rolled()
        parts: dict[Month, Aggregates] = {month: Aggregates() for month in valid}
        torn: set[Month] = set()

        def usable(time_ms: object, build: object) -> Aggregates | None:
            month = self._month(time_ms)
            manifest = valid.get(month)
            if manifest is None:
                return None
            if _int(build) > manifest.build:
                torn.add(month)  # rebuilt since its manifest was read
            return parts[month] if _int(build) == manifest.build else None

        def usable_rows(
            fields: tuple[str, ...], where: str, group: tuple[str, ...] = ()
        ) -> Iterator[tuple[dict[str, str], dict[str, Any], Aggregates]]:
            """(tags, row, month's part) of the roll-up rows of the months' current builds."""
            columns = ", ".join(quote_ident(name) for name in ("build", *fields))
            q = f"SELECT {columns} FROM {quote_ident(schema.ROLLUP)} WHERE {where}"
            if group:
                q += " GROUP BY " + ", ".join(quote_ident(tag) for tag in group)
            for series in run(self._query, q):
                for row in series.rows():
                    if (part := usable(row["time"], row.get("build"))) is not None:
                        yield series.tags, row, part

        since = f"time >= {time_literal(start)} AND time < {time_literal(as_of)}"
        where = f"{_kind('mass')} AND {since}"
        if county is not None:
            where += f" AND {quote_ident('county')} = {quote_literal(county)}"
        for tags, row, part in usable_rows(
            ("mass_t", "grain_t"), where, ("county", "type", "crop")
        ):
            key = (tags.get("county", ""), tags.get("type", ""), tags.get("crop", ""))
            part.masses[key] = (number(row.get("mass_t")), number(row.get("grain_t")))
        for _tags, row, part in usable_rows(("site_ids",), f"{_kind('ledger')} AND {since}"):
            part.ledger.update(filter(None, str(row.get("site_ids") or "").split(",")))
        for tags, row, part in usable_rows(
            ("event_ms", "seq"),
            f"{_kind('fault')} AND time < {time_literal(as_of)}",
            ("site_id", "facility", "type"),
        ):
            fkey = (tags.get("site_id", ""), tags.get("facility", ""), tags.get("type", ""))
            part.latest[fkey] = (number(row.get("event_ms")), number(row.get("seq")))
        rolled = Rolled()
        for month in sorted(valid.keys() - torn):
            if month.start(self._tz) >= start:  # earlier months: only facility events
                rolled.months.add(month)
            rolled.facility_months.add(month)
            rolled.found.add(parts[month])
        return rolled


def rollup_points(month: Month, found: Aggregates, build: int, tz: ZoneInfo) -> list[Point]:
    """A month's aggregates as ``rollup`` points (the manifest excluded)."""
    at = _start_ns(month, tz)
    points: list[Point] = []
    for (county, kind, crop), (mass, grain) in sorted(found.masses.items()):
        tags = {"kind": "mass", "county": county, "type": kind, "crop": crop}
        points.append(Point(schema.ROLLUP, tags, {"build": build, "mass_t": mass,
                                                  "grain_t": grain}, at))
    sites = sorted(found.ledger)
    for part, first in enumerate(range(0, len(sites), LEDGER_PART)):
        chunk = sites[first:first + LEDGER_PART]
        fields: dict[str, FieldValue] = {"build": build, "sites": len(chunk),
                                         "site_ids": ",".join(chunk)}
        points.append(Point(schema.ROLLUP, {"kind": "ledger", "part": str(part)}, fields, at))
    for (site_id, facility, kind), (event_ms, seq) in sorted(found.latest.items()):
        tags = {"kind": "fault", "site_id": site_id, "facility": facility, "type": kind}
        points.append(Point(schema.ROLLUP, tags, {"build": build, "event_ms": int(event_ms),
                                                  "seq": int(seq)}, at))
    return points


def manifest_point(month: Month, manifest: Manifest, tz: ZoneInfo) -> Point:
    fields: dict[str, FieldValue] = {
        "build": manifest.build, "marks": manifest.marks, "events": manifest.events,
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
        found = Aggregates()
        if events:
            found.masses = aggregates.mass_sums(self._query, span)
            found.ledger = aggregates.ledger_sites(self._query, span)
            found.latest = aggregates.latest_facility_events(self._query, span)
        points = rollup_points(month, found, build, self._tz)
        if points:
            self._writer.write(encode(points))
        self._writer.write(encode([manifest_point(month, Manifest(build, marks, events),
                                                  self._tz)]))
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
            if aggregates.event_count(self._query, span) != manifests[audit].events:
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
