"""Hourly and daily telemetry roll-ups, county aggregates, site water use and last-seen state.

A year of 15-minute readings from thousands of devices is tens of millions of
points; a dashboard panel that reads them raw takes seconds to minutes. InfluxDB 3
has neither continuous queries nor tasks, so the service keeps its own roll-ups
(contract §10, "Telemetry roll-ups"), each point stamped with its bucket's start:

- ``telemetry_1h`` / ``telemetry_1d`` (tags of ``telemetry``): per device and metric
  ``<m>_min``, ``<m>_mean``, ``<m>_max``, ``<m>_n`` (readings); for cumulative
  counters ``<c>_first``, ``<c>_last`` and ``<c>_used`` (the rise, never negative);
- ``telemetry_county_1h`` / ``telemetry_county_1d`` (``county``, ``site_type``): over
  the sites' means, ``<m>_mean``, ``<m>_min``, ``<m>_max`` (the spread between sites),
  ``<m>_below`` (sites below the metric's threshold, :data:`BELOW`), ``sites``; daily
  also ``water_m3`` and ``fertilizer_l`` used;
- ``site_use_1d`` (``site_id``, ``site_type``, ``county``): ``water_m3``, ``fertilizer_l``;
- ``device_last_seen`` (tags of ``telemetry``), one point per device and local month:
  ``seen_ms`` (its latest reading), ``seq``, ``battery_v``, ``rssi_dbm``;
- ``telemetry_rollup`` (``day``): a built day's manifest — ``build``, ``marks``.

Days are local days in ``settings.tz``. Each cycle re-reads the trailing
``trailing_hours`` of raw readings (late-arriving data inside it is simply included)
and refreshes the recent days' daily points from the hourly ones; a day that left
the window is built once from raw, and again whenever its ``late_telemetry`` marks
(:mod:`ingest_service.telemetry.late`) no longer number what its manifest recorded.
Closed days are built in groups of consecutive days (:func:`day_groups`), newest
first, only inside ``horizon_days`` and within a time ``budget_s`` per cycle, so a
first start over a long history never holds a cycle up for long.
"""

from __future__ import annotations

import logging
import threading
import time
from bisect import bisect_right
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from farm_contract import schema
from farm_contract.catalog import CATALOG, SiteType
from ingest_service.daemon import DaemonLoop
from ingest_service.indicators.aggregates import Querier, run
from ingest_service.influxql import Series, quote_ident, quote_literal, time_literal
from ingest_service.model import FieldValue, Point
from ingest_service.outputs.influx import Writer
from ingest_service.outputs.lineprotocol import encode, escape_tag, series_key
from ingest_service.telemetry.late import LATE_TELEMETRY, day_of

log = logging.getLogger(__name__)

HOURLY = "telemetry_1h"
DAILY = "telemetry_1d"
COUNTY_HOURLY = "telemetry_county_1h"
COUNTY_DAILY = "telemetry_county_1d"
SITE_USE = "site_use_1d"
LAST_SEEN = "device_last_seen"
MANIFEST = "telemetry_rollup"
MEASUREMENTS = (HOURLY, DAILY, COUNTY_HOURLY, COUNTY_DAILY, SITE_USE, LAST_SEEN, MANIFEST,
                LATE_TELEMETRY)

GAUGES = tuple(m.name for m in CATALOG.values() if not m.is_bool and not m.cumulative)
"""Metrics rolled up as min / mean / max."""
COUNTERS = tuple(m.name for m in CATALOG.values() if m.cumulative)
"""Cumulative counters, rolled up as first / last / used."""
USE_FIELDS = {"volume_m3": "water_m3", "fertilizer_l": "fertilizer_l"}
"""Counters whose daily use is summed per site and county, and the use's field name."""
BELOW: dict[str, float] = {"soil_moisture_vwc": 0.20, "battery_v": 11.8, "rssi_dbm": -110.0}
"""Per metric, the level under which a site counts in ``<m>_below`` (dry soil, weak
battery, weak signal; the dashboards draw the same lines)."""
SITE_METRICS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    site_type.value: (tuple(m for m in GAUGES if CATALOG[m].allowed_at(site_type)),
                      tuple(c for c in COUNTERS if CATALOG[c].allowed_at(site_type)))
    for site_type in SiteType
}
"""Per site type, the gauges and counters its devices may send (contract §4): the only
fields a roll-up reads for it."""
GAUGE_KEYS = {m: (f"{m}_min", f"{m}_mean", f"{m}_max", f"{m}_n") for m in GAUGES}
"""Per gauge, its roll-up field names: min, mean, max, readings."""
COUNTER_KEYS = {c: (f"{c}_first", f"{c}_last", f"{c}_used") for c in COUNTERS}
"""Per counter, its roll-up field names: first, last, used."""
LAST_SEEN_FIELDS = ("battery_v", "rssi_dbm")
TAGS = schema.TELEMETRY_TAGS
HOUR = timedelta(hours=1)
DAY = timedelta(days=1)
WRITE_CHUNK = 5000


@dataclass(frozen=True)
class TelemetryRollupSettings:
    """Defaults until the service's settings carry them (``FARM_TELEMETRY_ROLLUP_*``)."""

    interval_s: float = 60.0
    trailing_hours: int = 3
    """Raw hours re-read every cycle; readings later than this are marked instead."""
    days_per_cycle: int = 31
    """At most this many closed days are built per cycle, newest first."""
    horizon_days: int = 400
    """Closed days older than this are never built (``FARM_TELEMETRY_ROLLUP_HORIZON_DAYS``):
    a first start over years of history stays bounded; the dashboards' 1-year range fits."""
    budget_s: float = 20.0
    """A cycle starts no new group of closed days after this many seconds
    (``FARM_TELEMETRY_ROLLUP_BUDGET_S``): the first build is spread over cycles."""
    points_per_query: int = 200_000
    """Consecutive closed days are read from raw in one query up to about this many readings."""
    read_ahead: bool = True
    """Read the next group's raw rows while this one is aggregated and written."""
    last_seen_lookback: timedelta = timedelta(days=2)
    """How far back the first cycle looks for last-seen state in raw readings."""

    @property
    def late_after_s(self) -> float:
        """The marker's threshold: an hour inside the trailing window, so nothing slips."""
        return (self.trailing_hours - 1) * 3600.0


Key = tuple[str, ...]
"""A device's telemetry tags, in :data:`TAGS` order."""


@dataclass(slots=True)
class Bucket:
    """One device's roll-up for one hour or day."""

    start_ns: int
    tags: Key
    fields: dict[str, float] = field(default_factory=dict)


def _ns(moment: datetime) -> int:
    return int(moment.timestamp()) * 1_000_000_000


def _floor_hour(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def day_start(day: date, tz: ZoneInfo) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=tz)


def _raw_select(site_type: str) -> str:
    gauges, counters = SITE_METRICS[site_type]
    names = dict.fromkeys(("seq", *gauges, *counters, *LAST_SEEN_FIELDS))
    return ", ".join(quote_ident(name) for name in names)


def hour_buckets(series: Series, site_type: str) -> tuple[list[Bucket], Bucket | None]:
    """One device's raw rows (time order, epoch ms) as hourly buckets, and its latest reading.

    Aggregated here rather than by InfluxDB: with 1.x a ``min/mean/max/count`` call per
    metric costs about as much per series and bucket as reading the rows themselves, so
    36 calls took ~10× longer than one plain ``SELECT`` of the same rows (docs/performance.md).
    The rows are turned into columns once and each hour is a slice of them, so the
    per-value work is done by ``min``/``max``/``sum`` in C (docs/performance.md).
    """
    key = tuple(series.tags.get(t, "") for t in TAGS)
    column = {name: i for i, name in enumerate(series.columns)}
    gauges, counters = SITE_METRICS[site_type]
    if not series.values:
        return [], None
    columns = list(zip(*series.values, strict=True))
    gauge_columns = [(GAUGE_KEYS[m], columns[column[m]]) for m in gauges if m in column]
    counter_columns = [(COUNTER_KEYS[c], columns[column[c]]) for c in counters if c in column]
    hours = [int(t) // 3_600_000 for t in columns[0]]
    out: list[Bucket] = []
    first, rows = 0, len(hours)
    while first < rows:
        hour = hours[first]
        last = bisect_right(hours, hour, first)
        fields: dict[str, float] = {}
        for (k_min, k_mean, k_max, k_n), values in gauge_columns:
            part = values[first:last]
            if None in part:
                part = tuple(v for v in part if v is not None)
            if part:
                n = len(part)
                fields[k_min] = float(min(part))
                fields[k_mean] = sum(part) / n
                fields[k_max] = float(max(part))
                fields[k_n] = float(n)
        for (k_first, k_last, _used), values in counter_columns:
            part = values[first:last]
            if None in part:
                part = tuple(v for v in part if v is not None)
            if part:
                fields[k_first] = float(part[0])
                fields[k_last] = float(part[-1])
        if fields:
            out.append(Bucket(hour * 3_600_000_000_000, key, fields))
        first = last
    return out, _latest(series, key, column)


RawRows = list[tuple[str, list[Series]]]
"""Raw readings per site type, one series per device (:meth:`TelemetryRollups._raw_rows`)."""


def raw_buckets(rows: RawRows) -> tuple[list[Bucket], list[Bucket]]:
    """Hourly buckets of raw rows, and each device's latest reading."""
    hourly: list[Bucket] = []
    latest: list[Bucket] = []
    for site_type, found in rows:
        for series in found:
            buckets, newest = hour_buckets(series, site_type)
            hourly += buckets
            if newest is not None:
                latest.append(newest)
    return hourly, latest


def _latest(series: Series, key: Key, column: dict[str, int]) -> Bucket | None:
    """The device's newest reading that has a ``seq``, as a last-seen bucket."""
    seq = column.get("seq")
    for row in reversed(series.values):
        if seq is not None and row[seq] is not None:
            fields = {"seq": float(row[seq])}
            fields |= {m: float(row[column[m]]) for m in LAST_SEEN_FIELDS
                       if m in column and row[column[m]] is not None}
            return Bucket(int(row[0]) * 1_000_000, key, fields)
    return None


def _group_tags() -> str:
    return ", ".join(quote_ident(t) for t in TAGS)


def _window(start: datetime, end: datetime) -> str:
    return f"time >= {time_literal(start)} AND time < {time_literal(end)}"


def _series_buckets(series: Iterable[Series]) -> list[Bucket]:
    """Stored roll-up rows as buckets: every numeric column but time (bools left out)."""
    out = []
    for one in series:
        key = tuple(one.tags.get(t, "") for t in TAGS)
        numeric = [(i, name) for i, name in enumerate(one.columns)
                   if name != "time" and name not in TAGS]
        time_i = one.columns.index("time")
        for row in one.values:
            fields = {name: float(v) for i, name in numeric
                      if (v := row[i]) is not None and type(v) in (int, float)}
            if fields:
                out.append(Bucket(int(row[time_i]) * 1_000_000, key, fields))
    return out


def combine(start_ns: int, key: Key, parts: Sequence[Bucket], before: dict[str, float]) -> Bucket:
    """Hourly buckets of one device (in time order) as one daily bucket.

    ``before`` holds each counter's last value before the first part, where known;
    a counter's rise is summed hour by hour, a fall (a replaced meter) counting 0.
    """
    out = Bucket(start_ns, key)
    fields = out.fields
    for k_min, k_mean, k_max, k_n in GAUGE_KEYS.values():
        found = [p.fields for p in parts if p.fields.get(k_n)]
        if found:
            n = sum(f[k_n] for f in found)
            fields[k_min] = min(f[k_min] for f in found)
            fields[k_mean] = sum(f[k_mean] * f[k_n] for f in found) / n
            fields[k_max] = max(f[k_max] for f in found)
            fields[k_n] = n
    for c, (k_first, k_last, _used) in COUNTER_KEYS.items():
        lasts = [(p.fields.get(k_first), p.fields[k_last]) for p in parts if k_last in p.fields]
        if lasts:
            fields |= used_fields(c, lasts, before.get(c))
    return out


def used_fields(counter: str, firsts_lasts: Sequence[tuple[float | None, float]],
                before: float | None) -> dict[str, float]:
    """``first``, ``last`` and ``used`` of a counter from its hourly (first, last) pairs."""
    used, previous = 0.0, before
    for first, last in firsts_lasts:
        base = previous if previous is not None else (first if first is not None else last)
        used += max(0.0, last - base)
        previous = last
    first0 = firsts_lasts[0][0]
    return {f"{counter}_first": first0 if first0 is not None else firsts_lasts[0][1],
            f"{counter}_last": firsts_lasts[-1][1], f"{counter}_used": used}


def _gauges_of(site_type: str) -> tuple[str, ...]:
    """The gauges a site type's buckets can hold (their roll-ups read no others)."""
    known = SITE_METRICS.get(site_type)
    return GAUGES if known is None else known[0]


def county_points(measurement: str, buckets: Iterable[Bucket], daily: bool) -> list[Point]:
    """County aggregates over the sites' means (each site's devices weighted by readings)."""
    sites: dict[tuple[int, str, str, str], list[Bucket]] = defaultdict(list)
    site_i, type_i, county_i = TAGS.index("site_id"), TAGS.index("site_type"), TAGS.index("county")
    for b in buckets:
        sites[(b.start_ns, b.tags[county_i], b.tags[type_i], b.tags[site_i])].append(b)
    counties: dict[tuple[int, str, str], list[dict[str, float]]] = defaultdict(list)
    for (start_ns, county, site_type, _site), devices in sites.items():
        means: dict[str, float] = {}
        for m in _gauges_of(site_type):
            _min, k_mean, _max, k_n = GAUGE_KEYS[m]
            found = [d.fields for d in devices if d.fields.get(k_n)]
            if found:
                means[m] = sum(f[k_mean] * f[k_n] for f in found) / sum(f[k_n] for f in found)
        for counter, name in USE_FIELDS.items():
            uses = [d.fields[f"{counter}_used"] for d in devices
                    if f"{counter}_used" in d.fields]
            if uses:
                means[name] = sum(uses)
        counties[(start_ns, county, site_type)].append(means)
    points = []
    for (start_ns, county, site_type), site_means in sorted(counties.items()):
        fields: dict[str, FieldValue] = {"sites": len(site_means)}
        for m in _gauges_of(site_type):
            values = [s[m] for s in site_means if m in s]
            if not values:
                continue
            fields |= {f"{m}_mean": sum(values) / len(values), f"{m}_min": min(values),
                       f"{m}_max": max(values)}
            if m in BELOW:
                fields[f"{m}_below"] = sum(v < BELOW[m] for v in values)
        if daily:
            for name in USE_FIELDS.values():
                uses = [s[name] for s in site_means if name in s]
                if uses:
                    fields[name] = sum(uses)
        points.append(Point(measurement, {"county": county, "site_type": site_type}, fields,
                            start_ns))
    return points


def site_use_points(buckets: Iterable[Bucket]) -> list[Point]:
    """Each site's daily water and fertiliser use (its devices added up)."""
    sums: dict[tuple[int, str, str, str], dict[str, float]] = defaultdict(dict)
    for b in buckets:
        tags = dict(zip(TAGS, b.tags, strict=True))
        key = (b.start_ns, tags["site_id"], tags["site_type"], tags["county"])
        for counter, name in USE_FIELDS.items():
            if f"{counter}_used" in b.fields:
                sums[key][name] = sums[key].get(name, 0.0) + b.fields[f"{counter}_used"]
    return [Point(SITE_USE, {"site_id": s, "site_type": t, "county": c}, dict(fields),
                  start_ns)
            for (start_ns, s, t, c), fields in sorted(sums.items()) if fields]


def bucket_lines(measurement: str, buckets: Iterable[Bucket]) -> list[str]:
    """Buckets as line-protocol lines (``<m>_n`` as integers, every other field a float).

    Encoded here, not through :class:`~ingest_service.model.Point`: a day at 2,000
    devices is ~50,000 hourly buckets of ~30 fields. A device's series key is escaped
    once, and buckets with the same field names (nearly all) share one ``%`` template,
    so a line is one C-level format.
    """
    series: dict[Key, str] = {}
    templates: dict[tuple[str, ...], str] = {}
    out = []
    for b in buckets:
        head = series.get(b.tags)
        if head is None:
            head = series[b.tags] = series_key(measurement, dict(zip(TAGS, b.tags, strict=True)))
        names = tuple(b.fields)
        template = templates.get(names)
        if template is None:
            template = templates[names] = _fields_template(names)
        out.append(f"{head} {template % tuple(b.fields.values())} {b.start_ns}")
    return out


def _fields_template(names: Sequence[str]) -> str:
    """``a=%r,b_n=%di``: floats as ``repr`` (exact), readings counts as integers."""
    return ",".join(escape_tag(name).replace("%", "%%") + ("=%di" if name.endswith("_n") else "=%r")
                    for name in names)


def day_groups(todo: Sequence[date], counts: dict[date, int],
               points_per_query: int) -> Iterator[list[date]]:
    """``todo`` (newest first) as runs of consecutive days (each oldest first) inside one
    month, each of at most ``points_per_query`` readings by ``counts`` (or a single day)."""
    group: list[date] = []
    size = 0
    for day in todo:
        n = counts.get(day, 0)
        if group and (group[0] - DAY != day or group[0].month != day.month
                      or size + n > points_per_query):
            yield group
            group, size = [], 0
        group.insert(0, day)
        size += n
    if group:
        yield group


class OrderedWrites:
    """Line-protocol bodies written by one background thread, in the order given.

    The closed-day build hands its writes over so that InfluxDB stores one group while
    the next is aggregated (on 2 cores the two overlap). Once a write fails every later
    one is dropped, so a day's manifest, written after its data, never lands without
    it; :meth:`drain` waits for what was handed over and raises the first failure.
    """

    def __init__(self, writer: Writer) -> None:
        self._writer = writer
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollup-write")
        self._pending: list[Future[None]] = []
        self._failed: BaseException | None = None

    def write(self, body: bytes) -> None:
        self._pending.append(self._pool.submit(self._send, body))

    def _send(self, body: bytes) -> None:
        if self._failed is not None:
            raise RuntimeError("an earlier roll-up write failed") from self._failed
        try:
            self._writer.write(body)
        except BaseException as exc:
            self._failed = exc
            raise

    def drain(self) -> None:
        """Wait for every write handed over; raise the first failure."""
        pending, self._pending = self._pending, []
        for future in pending:
            future.result()

    def __enter__(self) -> OrderedWrites:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        try:
            if kind is None:
                self.drain()
        finally:
            self._pool.shutdown(wait=True)


@dataclass(slots=True)
class Cycle:
    """What one maintenance cycle did."""

    hours: int = 0
    days_built: list[date] = field(default_factory=list)
    pending_days: int = 0
    last_seen: int = 0
    points: int = 0


class TelemetryRollups(DaemonLoop):
    """Keeps the telemetry roll-ups and last-seen state; run by one worker.

    ``maintain_once`` is one cycle; ``start``/``stop`` run it every ``interval_s`` in a
    daemon thread, where a failure is logged and retried next cycle (the dashboards
    then show the roll-ups up to the last good cycle).
    """

    thread_name = "telemetry-rollups"

    def __init__(self, querier: Querier, writer: Writer, tz: ZoneInfo,
                 settings: TelemetryRollupSettings | None = None) -> None:
        self._query = querier
        self._writer = writer
        self._ordered: OrderedWrites | None = None
        self._newer_first: tuple[date, dict[Key, list[Bucket]]] | None = None
        """During a cycle's closed-day build: the last group's first day and its hourly
        buckets (see :meth:`build_days`)."""
        self._tz = tz
        self.settings = settings or TelemetryRollupSettings()
        self._today_marks: tuple[date, int] | None = None
        self._seen_since: datetime | None = None
        self._first_day: date | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.errors = 0

    # --- writing -------------------------------------------------------------------

    def _send(self, body: bytes) -> None:
        """Write now, or hand over to the closed-day build's :class:`OrderedWrites`."""
        (self._ordered or self._writer).write(body)

    def _write(self, points: Sequence[Point]) -> int:
        for first in range(0, len(points), WRITE_CHUNK):
            self._send(encode(list(points[first:first + WRITE_CHUNK])))
        return len(points)

    def _write_lines(self, lines: Sequence[str]) -> int:
        for first in range(0, len(lines), WRITE_CHUNK):
            body = "\n".join(lines[first:first + WRITE_CHUNK])
            self._send(body.encode("utf-8", errors="replace"))
        return len(lines)

    # --- reading -------------------------------------------------------------------

    def hourly_from_raw(self, start: datetime, end: datetime) -> list[Bucket]:
        return self._raw(start, end)[0]

    def _raw(self, start: datetime, end: datetime) -> tuple[list[Bucket], list[Bucket]]:
        """Hourly buckets of [start, end) from raw readings, and each device's latest reading."""
        return raw_buckets(self._raw_rows(start, end))

    def _raw_rows(self, start: datetime, end: datetime) -> RawRows:
        """The raw rows of [start, end): one query per site type, reading only the fields
        that type's devices may send."""
        found: RawRows = []
        for site_type in SITE_METRICS:
            q = (f"SELECT {_raw_select(site_type)} FROM {quote_ident(schema.TELEMETRY)}"
                 f" WHERE {quote_ident('site_type')} = {quote_literal(site_type)}"
                 f" AND {_window(start, end)} GROUP BY {_group_tags()}")
            found.append((site_type, run(self._query, q)))
        return found

    def _hourly_rollups(self, start: datetime, end: datetime) -> list[Bucket]:
        """Stored hourly buckets, per site type with only its fields (``SELECT *`` costs
        every site type's fields for every series)."""
        out: list[Bucket] = []
        for site_type, (gauges, counters) in SITE_METRICS.items():
            names = [f"{m}_{part}" for m in gauges for part in ("min", "mean", "max", "n")]
            names += [f"{c}_{part}" for c in counters for part in ("first", "last")]
            q = (f"SELECT {', '.join(quote_ident(n) for n in names)} FROM {quote_ident(HOURLY)}"
                 f" WHERE {quote_ident('site_type')} = {quote_literal(site_type)}"
                 f" AND {_window(start, end)} GROUP BY {_group_tags()}")
            out += _series_buckets(run(self._query, q))
        return out

    def _counters_before(self, moment: datetime) -> dict[Key, dict[str, float]]:
        """Each device's last counter values in the 35 days before ``moment`` (hourly roll-up)."""
        fields = ", ".join(f"last({quote_ident(c + '_last')}) AS {quote_ident(c)}"
                           for c in COUNTERS)
        q = (f"SELECT {fields} FROM {quote_ident(HOURLY)}"
             f" WHERE {_window(moment - timedelta(days=35), moment)} GROUP BY {_group_tags()}")
        return {b.tags: b.fields for b in _series_buckets(run(self._query, q))}

    def marks(self) -> dict[date, int]:
        q = (f"SELECT count({quote_ident('points')}) FROM {quote_ident(LATE_TELEMETRY)}"
             f" GROUP BY {quote_ident('day')}")
        return {day: sum(int(r.get("count") or 0) for r in rows)
                for day, rows in self._per_day(q)}

    def manifests(self) -> dict[date, int]:
        """Built days and the mark count each was built with."""
        q = (f"SELECT {quote_ident('marks')} FROM {quote_ident(MANIFEST)}"
             f" GROUP BY {quote_ident('day')}")
        return {day: int(rows[-1].get("marks") or 0) for day, rows in self._per_day(q) if rows}

    def _per_day(self, q: str) -> list[tuple[date, list[dict[str, Any]]]]:
        """The rows of a query grouped by the ``day`` tag; a malformed day is skipped."""
        found = []
        for series in run(self._query, q):
            try:
                day = date.fromisoformat(series.tags.get("day", ""))
            except ValueError:
                continue
            found.append((day, series.rows()))
        return found

    def first_day(self, horizon: date) -> date | None:
        """The local day of the oldest stored reading from ``horizon`` on (read once)."""
        if self._first_day is None:
            q = (f"SELECT first({quote_ident('seq')}) FROM {quote_ident(schema.TELEMETRY)}"
                 f" WHERE time >= {time_literal(day_start(horizon, self._tz))}")
            times = [int(r["time"]) for s in run(self._query, q) for r in s.rows()]
            if times:
                self._first_day = day_of(min(times) * 1_000_000, self._tz)
        return self._first_day

    # --- building ------------------------------------------------------------------

    def build_hours(self, start: datetime, end: datetime) -> list[Bucket]:
        """Hourly device points and county aggregates of [start, end) from raw readings."""
        buckets = self.hourly_from_raw(start, end)
        self._write_hours(buckets)
        return buckets

    def _write_hours(self, buckets: list[Bucket]) -> int:
        return (self._write_lines(bucket_lines(HOURLY, buckets))
                + self._write(county_points(COUNTY_HOURLY, buckets, daily=False)))

    def _write_days(self, daily: list[Bucket]) -> int:
        return (self._write_lines(bucket_lines(DAILY, daily))
                + self._write(county_points(COUNTY_DAILY, daily, daily=True))
                + self._write(site_use_points(daily)))

    def build_daily(self, day: date) -> int:
        """The day's daily points from its hourly ones (which must be written)."""
        start = day_start(day, self._tz)
        hours = self._hourly_rollups(start, start + DAY)
        before = self._counters_before(start)
        by_device: dict[Key, list[Bucket]] = defaultdict(list)
        for b in sorted(hours, key=lambda b: b.start_ns):
            by_device[b.tags].append(b)
        daily = [combine(_ns(start), key, parts, before.get(key, {}))
                 for key, parts in sorted(by_device.items())]
        return self._write_days(daily)

    def build_days(self, days: Sequence[date], marks: dict[date, int],
                   empty: bool = False, rows: RawRows | None = None) -> int:
        """Consecutive closed days (oldest first) from raw in one read: hourly, daily and
        last-seen points, then each day's manifest last. ``empty``: known to hold no
        readings, so only the manifests are written; ``rows``: their raw rows, already
        read (:meth:`_raw_rows`)."""
        build = time.time_ns()
        start, end = day_start(days[0], self._tz), day_start(days[-1], self._tz) + DAY
        hourly: list[Bucket] = []
        latest: list[Bucket] = []
        if not empty:
            hourly, latest = raw_buckets(self._raw_rows(start, end) if rows is None else rows)
        del rows
        if self._ordered is not None:
            # The previous group's writes land first: its last-seen points are read back
            # below (a newer month point must never be overwritten by an older reading).
            self._ordered.drain()
        points = self._write_hours(hourly)
        by_day: dict[date, dict[Key, list[Bucket]]] = defaultdict(lambda: defaultdict(list))
        day_of_hour: dict[int, date] = {}
        for b in sorted(hourly, key=lambda b: b.start_ns):
            day = day_of_hour.get(b.start_ns)
            if day is None:
                day = day_of_hour[b.start_ns] = day_of(b.start_ns, self._tz)
            by_day[day][b.tags].append(b)
        # Each day's counter use starts from the day before's last value: read once, then
        # carried forward through the group.
        before = self._counters_before(start) if hourly else {}
        daily: list[Bucket] = []
        for day in days:
            for key, parts in sorted(by_day.get(day, {}).items()):
                one = combine(_ns(day_start(day, self._tz)), key, parts, before.get(key, {}))
                daily.append(one)
                before[key] = before.get(key, {}) | {
                    c: one.fields[f"{c}_last"] for c in COUNTERS if f"{c}_last" in one.fields}
        points += self._write_days(daily) + self.write_last_seen(latest)
        # Groups go newest first: the newer group built just before this one took its
        # first day's counter use from roll-ups that did not hold this group yet (the
        # rise from this group's last reading to that day's first was lost). That day
        # is combined again from its hourly buckets, now with this group's last values.
        newer, self._newer_first = self._newer_first, None
        if self._ordered is not None:  # a cycle's closed-day build
            self._newer_first = (days[0], by_day.get(days[0], {}))
        if newer is not None and newer[0] == days[-1] + DAY and hourly:
            points += self._write_days([
                combine(_ns(day_start(newer[0], self._tz)), key, parts, before.get(key, {}))
                for key, parts in sorted(newer[1].items())])
        manifests = [Point(MANIFEST, {"day": day.isoformat()},
                           {"build": build, "marks": marks.get(day, 0)},
                           _ns(day_start(day, self._tz))) for day in days]
        return points + self._write(manifests)

    def _read_ahead(self, reader: ThreadPoolExecutor, groups: Sequence[list[date]],
                    counts: dict[date, int], i: int) -> Future[RawRows] | None:
        """Start reading group ``i``'s raw rows (none for a missing or empty group)."""
        if (not self.settings.read_ahead or i >= len(groups)
                or not any(counts.get(day) for day in groups[i])):
            return None
        days = groups[i]
        return reader.submit(self._raw_rows, day_start(days[0], self._tz),
                             day_start(days[-1], self._tz) + DAY)

    def build_day(self, day: date, marks: int) -> int:
        """A closed day from raw: hourly, daily, last seen; its manifest last."""
        return self.build_days([day], {day: marks})

    def update_last_seen(self, start: datetime, end: datetime) -> int:
        """Raise each device's month point to its latest reading in [start, end)."""
        # One selector, so each row's time is its reading's (several selectors in one
        # InfluxQL query answer the window's start instead); the other fields are the
        # same reading's.
        fields = ", ".join([f"last({quote_ident('seq')}) AS {quote_ident('seq')}"] + [
            quote_ident(m) for m in LAST_SEEN_FIELDS])
        q = (f"SELECT {fields} FROM {quote_ident(schema.TELEMETRY)} WHERE {_window(start, end)}"
             f" GROUP BY {_group_tags()}")
        return self.write_last_seen(_series_buckets(run(self._query, q)))

    def write_last_seen(self, latest: Sequence[Bucket]) -> int:
        """Raise each device's month point to its reading in ``latest`` (never lower it)."""
        if not latest:
            return 0
        months: dict[int, list[Bucket]] = defaultdict(list)
        for b in latest:
            seen = datetime.fromtimestamp(b.start_ns / 1e9, UTC).astimezone(self._tz)
            months[_ns(datetime(seen.year, seen.month, 1, tzinfo=self._tz))].append(b)
        points = []
        for month_ns, found in months.items():
            q = (f"SELECT {quote_ident('seen_ms')} FROM {quote_ident(LAST_SEEN)}"
                 f" WHERE time = {month_ns} GROUP BY {quote_ident('device_id')}")
            stored = {s.tags.get("device_id", ""): int(r.get("seen_ms") or 0)
                      for s in run(self._query, q) for r in s.rows()}
            for b in found:
                tags = dict(zip(TAGS, b.tags, strict=True))
                seen_ms = b.start_ns // 1_000_000
                if stored.get(tags["device_id"], -1) >= seen_ms:
                    continue
                values: dict[str, FieldValue] = {"seen_ms": seen_ms}
                if "seq" in b.fields:
                    values["seq"] = int(b.fields["seq"])
                values |= {m: b.fields[m] for m in LAST_SEEN_FIELDS if m in b.fields}
                points.append(Point(LAST_SEEN, tags, values, month_ns))
        return self._write(points)

    def day_counts(self, first: date, last: date) -> dict[date, int]:
        """Readings stored per local day in [first, last], from one hourly ``count``."""
        start, end = day_start(first, self._tz), day_start(last, self._tz) + DAY
        q = (f"SELECT count({quote_ident('seq')}) FROM {quote_ident(schema.TELEMETRY)}"
             f" WHERE {_window(start, end)} GROUP BY time(1h) fill(none)")
        counts: dict[date, int] = defaultdict(int)
        for series in run(self._query, q):
            for row in series.values:
                counts[day_of(int(row[0]) * 1_000_000, self._tz)] += int(row[1] or 0)
        return counts

    def maintain_once(self, now: datetime | None = None) -> Cycle:
        """Refresh the trailing window and recent days, build missing or stale closed days."""
        started = time.monotonic()
        moment = (now or datetime.now(UTC)).astimezone(UTC)
        cycle = Cycle()
        trailing = timedelta(hours=self.settings.trailing_hours)
        end = _floor_hour(moment)
        today = moment.astimezone(self._tz).date()
        marks = self.marks()
        # Today's hours are re-read in full on the first cycle and after a late mark.
        today_marks = (today, marks.get(today, 0))
        start = end - trailing
        if self._today_marks != today_marks:
            start = min(start, day_start(today, self._tz))
        cycle.hours = len(self.build_hours(start, end))
        self._today_marks = today_marks
        # Days the window touched are still open: their daily points follow the hours.
        recent = sorted({(end - trailing - HOUR).astimezone(self._tz).date(), today})
        for day in recent:
            cycle.points += self.build_daily(day)
        # Closed days inside the horizon: every day from the first reading on, and any
        # day with marks.
        closed_before = recent[0]
        horizon = today - timedelta(days=self.settings.horizon_days)
        manifests = self.manifests()
        first = self.first_day(horizon)
        if first is not None:
            first = max(first, horizon)  # read once; the horizon moves on
        wanted = {d for d in marks if horizon <= d < closed_before}
        if first is not None:
            wanted |= {first + timedelta(days=i) for i in range((closed_before - first).days)}
        todo = sorted((d for d in wanted if manifests.get(d) != marks.get(d, 0)),
                      reverse=True)
        batch = todo[:self.settings.days_per_cycle]
        counts = self.day_counts(batch[-1], batch[0]) if batch else {}
        groups = list(day_groups(batch, counts, self.settings.points_per_query))
        # The next group's raw rows are read, and the last group's points written, while
        # this one is aggregated: InfluxDB works on the other core (docs/performance.md).
        self._newer_first = None
        try:
            with (ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollup-read") as reader,
                  OrderedWrites(self._writer) as self._ordered):
                ahead = self._read_ahead(reader, groups, counts, 0)
                for i, group in enumerate(groups):
                    if cycle.days_built and time.monotonic() - started > self.settings.budget_s:
                        break
                    rows = None if ahead is None else ahead.result()
                    ahead = (self._read_ahead(reader, groups, counts, i + 1)
                             if time.monotonic() - started <= self.settings.budget_s else None)
                    empty = not any(counts.get(day) for day in group)
                    cycle.points += self.build_days(group, marks, empty, rows)
                    cycle.days_built += group
                if ahead is not None:
                    ahead.cancel()
        finally:
            self._ordered = None
            self._newer_first = None
        cycle.pending_days = len(todo) - len(cycle.days_built)
        # A day's counter use starts from the previous day's last value: the day after
        # each (re)built group is refreshed, as groups are built newest first and late
        # readings can change a day's last value.
        built = set(cycle.days_built)
        for day in sorted({d + DAY for d in built} - built - set(recent)):
            cycle.points += self.build_daily(day)
        since = self._seen_since or moment - self.settings.last_seen_lookback
        cycle.last_seen = self.update_last_seen(since, moment + timedelta(minutes=10))
        self._seen_since = moment - timedelta(minutes=5)
        if cycle.days_built:
            log.info("telemetry roll-ups: built %d day(s) in %.1f s, %d to go",
                     len(cycle.days_built), time.monotonic() - started, cycle.pending_days)
        return cycle

    # --- the thread ----------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.maintain_once()
            except Exception:
                self.errors += 1
                log.exception("maintaining the telemetry roll-ups failed; retrying next cycle")
            self._stop.wait(self.settings.interval_s)
