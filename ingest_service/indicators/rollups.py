"""Monthly roll-ups of the indicators' event aggregates, kept in InfluxDB.

A year's indicators then read 12 small roll-ups instead of a year of raw events
(InfluxDB 3 refuses a query that touches more than ``--query-file-limit``
files; InfluxDB 1.x pays per series per shard), and raw events only for what no
valid roll-up covers: the current month, a month not built yet, a month that
got late events since it was built.

Measurement ``rollup``; every point sits at its month's first instant in
``settings.tz``; ``build`` (an int, the build's start in ns) ties a month's points
together:

- ``kind=mass``, ``site_id``, ``type``, ``crop``, ``season``: ``mass_t``, ``grain_t``,
  ``thin_t`` (sums; ``thin_t`` is applied film below 0.01 mm). Keyed by site, never by
  the stored county tag: the engine maps sites to counties through the registry history.
- ``kind=ledger``, ``part``: ``site_ids`` (sorted, comma-separated, at most
  :data:`LEDGER_PART` per point), ``sites`` — a set, because a site is counted
  once however many months it kept its ledger in
- ``kind=days``, ``site_id``: ``days`` (days of the month a manure site's telemetry
  reported on), ``last_day`` (epoch ms of its last reading)
- ``kind=month``, ``month``: ``marks``, ``events``, ``readings``, ``value_sum``, ``format`` — the
  manifest, written last; a manifest of another :data:`FORMAT` is not valid

A month's roll-up is used only if its manifest exists, the month ended before
"as of", and the month's ``late_event`` marks still number what the manifest
recorded (:mod:`ingest_service.indicators.late_events`). Points of an older build (a group
that vanished) are ignored; a point of a newer build than the manifest means a
rebuild is under way, and the month is read raw instead. Writes that bypass
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
FORMAT = 2
"""The roll-up layout: 2 keys masses by site (issue 12) and keeps days reported (issue 13).
A manifest of another format is not valid, so its month is rebuilt."""
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
            f"{quote_ident('readings')}, {quote_ident('value_sum')}, {quote_ident('format')} "
            f"FROM {quote_ident(schema.ROLLUP)} WHERE {_kind('month')}"
        )
        return {
            self._month(row["time"]): Manifest(
                _int(row.get("build")), _int(row.get("marks")), _int(row.get("events")),
                _int(row.get("readings")), number(row.get("value_sum")),
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
        """The valid roll-ups of the months inside ``start <= time < end``, month by month."""
        valid = {month: manifest for month, manifest in self.valid(as_of).items()
                 if month.start(self._tz) >= start and month.end(self._tz) <= end}
        if not valid:
            return {}
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
            fields: tuple[str, ...], kind: str, group: tuple[str, ...] = ()
        ) -> Iterator[tuple[dict[str, str], dict[str, Any], Aggregates]]:
            """(tags, row, month's part) of the roll-up rows of the months' current builds."""
            columns = ", ".join(quote_ident(name) for name in ("build", *fields))
            q = (f"SELECT {columns} FROM {quote_ident(schema.ROLLUP)} WHERE {_kind(kind)} "
                 f"AND time >= {time_literal(start)} AND time < {time_literal(end)}")
            if group:
                q += " GROUP BY " + ", ".join(quote_ident(tag) for tag in group)
            for series in run(self._query, q):
                for row in series.rows():
                    if (part := usable(row["time"], row.get("build"))) is not None:
                        yield series.tags, row, part

        for tags, row, part in usable_rows(("mass_t", "grain_t", "thin_t"), "mass",
                                           ("site_id", "type", "crop", "season")):
            key = (tags.get("site_id", ""), tags.get("type", ""), tags.get("crop", ""),
                   tags.get("season", ""))
            part.masses[key] = (number(row.get("mass_t")), number(row.get("grain_t")),
                                number(row.get("thin_t")))
        for _tags, row, part in usable_rows(("site_ids",), "ledger"):
            part.ledger.update(filter(None, str(row.get("site_ids") or "").split(",")))
        for tags, row, part in usable_rows(("days", "last_day"), "days", ("site_id",)):
            site_id = tags.get("site_id", "")
            part.days[site_id] = _int(row.get("days"))
            part.last_day[site_id] = _int(row.get("last_day"))
        return {month: parts[month] for month in sorted(valid.keys() - torn)}


def rollup_points(month: Month, found: Aggregates, build: int, tz: ZoneInfo) -> list[Point]:
    """A month's aggregates as ``rollup`` points (the manifest excluded)."""
    at = _start_ns(month, tz)
    points: list[Point] = []
    for (site_id, kind, crop, season), (mass, grain, thin) in sorted(found.masses.items()):
        tags = {"kind": "mass", "site_id": site_id, "type": kind, "crop": crop,
                "season": season}
        points.append(Point(schema.ROLLUP, {k: v for k, v in tags.items() if v},
                            {"build": build, "mass_t": mass, "grain_t": grain, "thin_t": thin},
                            at))
    sites = sorted(found.ledger)
    for part, first in enumerate(range(0, len(sites), LEDGER_PART)):
        chunk = sites[first:first + LEDGER_PART]
        fields: dict[str, FieldValue] = {"build": build, "sites": len(chunk),
                                         "site_ids": ",".join(chunk)}
        points.append(Point(schema.ROLLUP, {"kind": "ledger", "part": str(part)}, fields, at))
    for site_id, days in sorted(found.days.items()):
        points.append(Point(schema.ROLLUP, {"kind": "days", "site_id": site_id},
                            {"build": build, "days": days,
                             "last_day": found.last_day.get(site_id, 0)}, at))
    return points


def manifest_point(month: Month, manifest: Manifest, tz: ZoneInfo) -> Point:
    fields: dict[str, FieldValue] = {
        "build": manifest.build, "marks": manifest.marks, "events": manifest.events,
        "readings": manifest.readings, "value_sum": float(manifest.values), "format": FORMAT,
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
        self._writer.write(encode([manifest_point(month, Manifest(build, marks, events, readings,
                                                                   values),
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
