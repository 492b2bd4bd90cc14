"""Stage 3: check a parsed message against the registry and turn it into InfluxDB points.

Whole-message problems (an unknown device, a device under the wrong site) raise
:class:`~ingest_service.pipeline.parse.Rejected`. A single bad reading or record is
rejected on its own and the rest of the message is stored: a broken soil probe
must not cost the flow meter's data.

Memory: every cache here is keyed by what the registry holds, never by what a
device sends. Telemetry routes are cached only for a registered device's own
topic (one per device, ≤ ~0.5 KB each); targets per registered (device, site);
counter state per registered device and never-decreasing metric. A hostile topic
(60 KB site segments, say) is parsed, rejected and forgotten. Worst case, for
``n`` registered devices: about ``n`` × 1 KB (10,000 devices: ~10 MB).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from time import time_ns as wall_clock_ns

from farm_contract import schema
from farm_contract.catalog import CATALOG, Metric, SiteType, event_field_bound
from farm_contract.payloads import (
    EVENT_NUMERIC_FIELDS,
    SEQ_MAX,
    EventRecord,
    EventType,
    PayloadError,
    decode_json,
    parse_ts,
)
from farm_contract.registry import Device, Registry, Site
from farm_contract.topics import MessageKind, TopicError, parse_device_topic
from ingest_service.model import (
    MAX_DETAIL_CHARS,
    MAX_TOPIC_CHARS,
    FieldValue,
    Inbound,
    Point,
    Rejection,
    printable,
)
from ingest_service.outputs.lineprotocol import escape_tag, series_key
from ingest_service.pipeline.parse import Parsed, Rejected
from ingest_service.settings import Settings

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
SEQ_SLOTS = 1_000_000
MAX_REJECTIONS_PER_MESSAGE = 100
"""Beyond this, a message's further rejections are summed up, one record per reason:
a 256 KiB message of ten thousand bad readings must not become 10 MB of rejections."""

CounterLookup = Callable[[str, str], tuple[int, float] | None]
"""(device_id, metric) → (time_ns, value) of the latest stored reading, or None."""
ResetLookup = Callable[[str, str], int | None]
"""(device_id, metric) → time_ns of the latest stored ``counter_reset`` event, or None."""
_NO_RESET = -1


def point_time_ns(ts: datetime, seq: int) -> int:
    """The stored time: the device's ``ts`` to the millisecond, plus ``seq mod 10⁶`` ns.

    A redelivered or replayed message lands on the very same point (stored once);
    two distinct messages of a device differ in ``seq`` and never merge, even with
    the same ``ts``.
    """
    return (ts - _EPOCH) // _MS * 1_000_000 + seq % SEQ_SLOTS


_BIG = sys.float_info.max


@dataclass(frozen=True, slots=True)
class _Bounds:
    """A numeric metric's range as plain floats, for the common in-range float reading."""

    metric: Metric
    low: float
    high: float
    plain: bool
    """No check beyond the range (not a never-decreasing counter)."""


def _allowed(site_type: SiteType) -> dict[str, _Bounds | Metric]:
    """The catalog for one site type: numeric metrics with their bounds, the rest as is."""
    allowed: dict[str, _Bounds | Metric] = {}
    for name, metric in CATALOG.items():
        if not metric.allowed_at(site_type):
            continue
        if metric.is_bool:
            allowed[name] = metric
        else:
            low = -_BIG if metric.minimum is None else float(metric.minimum)
            high = _BIG if metric.maximum is None else float(metric.maximum)
            allowed[name] = _Bounds(metric, low, high, not metric.never_decreasing)
    return allowed


_ALLOWED = {site_type: _allowed(site_type) for site_type in SiteType}

_PLAIN, _COUNTER, _BOOL = 0, 1, 2
_FastField = tuple[str, float, float, int]
"""A metric for :meth:`Enricher.telemetry_line`: escaped key, low, high, kind."""


def _fast_fields(site_type: SiteType) -> dict[str, _FastField]:
    fields: dict[str, _FastField] = {}
    for name, known in _ALLOWED[site_type].items():
        if isinstance(known, _Bounds):
            kind = _PLAIN if known.plain else _COUNTER
            fields[name] = (escape_tag(name), known.low, known.high, kind)
        else:
            fields[name] = (escape_tag(name), 0.0, 0.0, _BOOL)
    return fields


_FAST_FIELDS = {site_type: _fast_fields(site_type) for site_type in SiteType}


@dataclass(frozen=True, slots=True)
class _Route:
    """Where a known device's telemetry topic leads: what its line starts with."""

    device_id: str
    prefix: str
    """The telemetry series key and the space before the fields."""
    fields: dict[str, _FastField]


@dataclass(frozen=True, slots=True)
class _Target:
    """What every point of one device shares, computed once per registry."""

    tags: dict[str, str]
    series: str
    """The telemetry series key (line protocol), see :class:`~ingest_service.model.Point`."""


class _Clock:
    """Unique, rising nanosecond times for rejection points (they must never overwrite)."""

    def __init__(self) -> None:
        self._last = 0
        self._lock = threading.Lock()

    def now_ns(self, at_least: int) -> int:
        with self._lock:
            self._last = max(at_least, self._last + 1)
            return self._last


class Enricher:
    """Registry checks, metric ranges, counters and timestamps; produces points."""

    def __init__(
        self,
        registry: Callable[[], Registry],
        settings: Settings,
        counter_lookup: CounterLookup | None = None,
        refresh: Callable[[], Registry] | None = None,
        reset_lookup: ResetLookup | None = None,
    ) -> None:
        self._registry = registry
        self._refresh = refresh
        self._future = timedelta(seconds=settings.max_future_skew_s)
        self._earliest = parse_ts(settings.earliest_ts)
        self._future_ms = self._future // _MS
        self._earliest_ms = -(-(self._earliest - _EPOCH) // _MS)
        """The earliest whole millisecond not before ``earliest_ts`` (for epoch-ms ``ts``)."""
        self._counter_lookup = counter_lookup
        self._counters: dict[tuple[str, str], tuple[int, float]] = {}
        self._reset_lookup = reset_lookup
        self._resets: dict[tuple[str, str], int] = {}
        """The latest meter replacement (``counter_reset`` event) per counter, or -1."""
        self._clock = _Clock()
        self._targets: dict[tuple[str, str], _Target] = {}
        self._targets_of: Registry | None = None
        self._prefix = settings.topic_prefix
        self._routes: dict[str, _Route] = {}
        self._routes_of: Registry | None = None

    def _target(self, registry: Registry, device: Device, site: Site) -> _Target:
        """The device's tags and series key, cached until the registry is replaced."""
        if registry is not self._targets_of:
            self._targets = {}
            self._targets_of = registry
        key = (device.device_id, site.site_id)
        target = self._targets.get(key)
        if target is None:
            values = (site.site_id, device.device_id, site.site_type.value, site.county)
            tags = dict(zip(schema.TELEMETRY_TAGS, values, strict=True))
            target = _Target(tags, series_key(schema.TELEMETRY, tags))
            self._targets[key] = target
        return target

    def _route(self, topic: str) -> _Route | None:
        """The route of a registered device's telemetry topic, or None for any other topic.

        Only routes are cached (one per registered device); any other topic is looked
        at anew each time, so a device inventing topics cannot grow the cache.
        """
        registry = self._registry()
        if registry is not self._routes_of:
            self._routes = {}
            self._routes_of = registry
        route = self._routes.get(topic)
        if route is not None:
            return route
        try:
            where = parse_device_topic(topic, self._prefix)
        except TopicError:
            where = None
        if where is not None and where.kind is MessageKind.TELEMETRY:
            device = registry.devices.get(where.device_id)
            site = registry.sites.get(where.site_id)
            if device is not None and site is not None and device.site_id == site.site_id:
                target = self._target(registry, device, site)
                route = _Route(device.device_id, target.series + " ", _FAST_FIELDS[site.site_type])
                self._routes[topic] = route
        return route

    def cache_bytes(self) -> int:
        """About how many bytes the caches hold (keys and entries): at most ~1 KB a device."""
        routes = sum(len(topic) + 200 for topic in self._routes)
        targets = sum(len(t.series) + 300 for t in self._targets.values())
        return routes + targets + 150 * (len(self._counters) + len(self._resets))

    def telemetry_line(self, topic: str, payload: bytes) -> str | None:
        """The line of a plain, valid telemetry message of a registered device, or None.

        This is the common message (one record, every reading a float in range or a
        boolean), taken from bytes to line protocol in one step. The payload models
        (:mod:`farm_contract.payloads`) and :meth:`points` stay the definition: this
        gives exactly the line they would give, and whenever the message is anything else — a
        batch, an int reading, anything out of range, a timestamp ahead or too old, an
        unknown topic (including another prefix: the caller checks it) — it returns
        None and the caller takes the general path, which words the rejections.
        ``ts`` may be RFC 3339 text or integer epoch milliseconds (not a bool or float);
        an epoch is checked in whole milliseconds against the same bounds, rounded so
        the fast path is never the more lenient one.
        """
        route = self._route(topic)
        if route is None:
            return None
        try:
            data = decode_json(payload)
        except PayloadError:
            return None
        if type(data) is not dict or "batch" in data:
            return None
        seq, ts, readings = data.get("seq"), data.get("ts"), data.get("readings")
        v = data.get("v")
        if type(v) is not int or v != 1 or type(seq) is not int or not 0 <= seq <= SEQ_MAX:
            return None
        if type(readings) is not dict or not readings:
            return None
        if type(ts) is int:
            if ts < self._earliest_ms or ts > wall_clock_ns() // 1_000_000 + self._future_ms:
                return None
            time_ns = ts * 1_000_000 + seq % SEQ_SLOTS  # point_time_ns, in integers
        elif type(ts) is str:
            try:
                when = parse_ts(ts)
            except ValueError:
                return None
            if when > datetime.now(UTC) + self._future or when < self._earliest:
                return None
            time_ns = point_time_ns(when, seq)
        else:
            return None
        known = route.fields
        parts = []
        for name, value in readings.items():
            spec = known.get(name)
            if spec is None:
                return None
            key, low, high, kind = spec
            if type(value) is float:
                if kind == _BOOL or not low <= value <= high:
                    return None
                if kind == _COUNTER and self._counter_ok(route.device_id, name, time_ns, value):
                    return None
                parts.append(f"{key}={value!r}")
            elif type(value) is bool and kind == _BOOL:
                parts.append(f"{key}=true" if value else f"{key}=false")
            else:
                return None
        return f"{route.prefix}{','.join(parts)},seq={seq}i {time_ns}"

    def rejection(self, inbound: Inbound, reason: str, detail: str) -> Rejection:
        """A rejection record of ``inbound`` with a unique time.

        Topic and detail are cut (:data:`MAX_TOPIC_CHARS`, :data:`MAX_DETAIL_CHARS`) and
        their control characters escaped; the payload keeps its first 1 KiB (escaped
        when it is turned into a point, :func:`~ingest_service.pipeline.batcher.rejection_point`).
        """
        return Rejection(
            reason=reason,
            detail=printable(detail, MAX_DETAIL_CHARS),
            topic=printable(inbound.topic, MAX_TOPIC_CHARS),
            payload=inbound.payload[: schema.REJECTION_PAYLOAD_BYTES],
            time_ns=self._clock.now_ns(inbound.received_ns),
        )

    def _identify(self, parsed: Parsed, registry: Registry) -> tuple[Device, Site]:
        if parsed.dev_eui is not None:
            device = registry.by_dev_eui.get(parsed.dev_eui)
            if device is None:
                raise Rejected("unknown_device", f"no device with dev_eui {parsed.dev_eui}")
        else:
            assert parsed.device_id is not None
            device = registry.devices.get(parsed.device_id)
            if device is None:
                raise Rejected("unknown_device", f"device {parsed.device_id} is not registered")
            if device.site_id != parsed.site_id:
                raise Rejected(
                    "wrong_site",
                    f"device {device.device_id} belongs to site {device.site_id}, "
                    f"not {parsed.site_id}",
                )
        site = registry.sites.get(device.site_id)
        if site is None:
            raise Rejected("unknown_device", f"site {device.site_id} is not registered")
        return device, site

    def _check_time(self, ts: datetime, now: datetime) -> tuple[str, str] | None:
        if ts > now + self._future:
            return (
                "ts_in_future",
                f"ts {ts.isoformat()} is ahead of the server clock ({now:%FT%TZ})",
            )
        if ts < self._earliest:
            return "ts_too_old", f"ts {ts.isoformat()} is before {self._earliest.isoformat()}"
        return None

    def _counter_ok(self, device_id: str, metric: str, time_ns: int, value: float) -> str | None:
        """A never-decreasing counter may not fall below an earlier value or exceed a later one."""
        key = (device_id, metric)
        last = self._counters.get(key)
        if last is None and self._counter_lookup is not None:
            last = self._counter_lookup(device_id, metric)
        reset = self._resets.get(key)
        if reset is None:
            found = self._reset_lookup(device_id, metric) if self._reset_lookup else None
            reset = self._resets[key] = _NO_RESET if found is None else found
        if last is not None and reset != _NO_RESET:
            if last[0] < reset <= time_ns:
                last = None  # the meter was replaced since: this reading starts afresh
            elif time_ns < reset <= last[0]:
                return None  # the old meter's reading, arriving late: nothing to compare
        if last is not None:
            last_ns, last_value = last
            if time_ns >= last_ns and value < last_value:
                return (
                f"{metric}={value:g} is below the previous reading {last_value:g} "
                "(a replaced meter needs a counter_reset event first)"
            )
            if time_ns < last_ns and value > last_value:
                return f"{metric}={value:g} is above a later reading {last_value:g}"
            if time_ns < last_ns:
                return None
        self._counters[key] = (time_ns, value)
        return None

    def _note_reset(self, device_id: str, metric: str, time_ns: int) -> None:
        """A ``counter_reset`` event: readings from ``time_ns`` on start a new baseline."""
        key = (device_id, metric)
        known = self._resets.get(key)
        if known is None and self._reset_lookup is not None:
            known = self._reset_lookup(device_id, metric)
        self._resets[key] = max(time_ns, _NO_RESET if known is None else known)

    @staticmethod
    def _event_too_big(event: EventRecord) -> str | None:
        """Why a numeric field of ``event`` is above its catalog maximum, or None."""
        for name in EVENT_NUMERIC_FIELDS:
            value = getattr(event, name)
            if value is None:
                continue
            bound = event_field_bound(event.type.value, name)
            if float(value) > bound.maximum:
                return (
                    f"{name}={float(value):g} is above the maximum {bound.maximum:g} "
                    f"{bound.unit} of a {event.type.value} event ({bound.reason})"
                )
        return None

    def points(
        self, parsed: Parsed, inbound: Inbound, now: datetime | None = None
    ) -> tuple[list[Point], list[Rejection]]:
        """Points to store and the parts of the message rejected on their own."""
        registry = self._registry()
        try:
            device, site = self._identify(parsed, registry)
        except Rejected:
            if self._refresh is None:
                raise
            # Perhaps provisioned a moment ago: look at the registry folder once more.
            registry = self._refresh()
            device, site = self._identify(parsed, registry)
        now = now or datetime.now(UTC)
        target = self._target(registry, device, site)
        tags = target.tags
        allowed = _ALLOWED[site.site_type]
        points: list[Point] = []
        rejections: list[Rejection] = []
        overflow: dict[str, int] = {}

        def reject(reason: str, detail: str) -> None:
            if len(rejections) < MAX_REJECTIONS_PER_MESSAGE:
                rejections.append(self.rejection(inbound, reason, detail))
            else:
                overflow[reason] = overflow.get(reason, 0) + 1

        for reason, detail in parsed.problems:
            reject(reason, detail)

        for record in parsed.telemetry:
            problem = self._check_time(record.ts, now)
            if problem:
                reject(problem[0], f"seq {record.seq}: {problem[1]}")
                continue
            time_ns = point_time_ns(record.ts, record.seq)
            fields: dict[str, FieldValue] = {}
            for name, value in record.readings.items():
                known = allowed.get(name)
                if known is None:
                    if name not in CATALOG:
                        reject(
                            "unknown_metric",
                            f"seq {record.seq}: {name} is not in the metric catalog",
                        )
                    else:
                        reject(
                            "metric_not_for_site",
                            f"seq {record.seq}: {name} is not a metric of {site.site_type} sites",
                        )
                    continue
                if type(known) is _Bounds:
                    if known.plain and type(value) is float and known.low <= value <= known.high:
                        fields[name] = value  # the common case: an in-range float reading
                        continue
                    metric = known.metric
                else:
                    assert isinstance(known, Metric)
                    metric = known
                error = metric.check(value)
                if error:
                    reject("out_of_range", f"seq {record.seq}: {error}")
                    continue
                assert isinstance(value, int | float)  # Metric.check saw to it
                if metric.never_decreasing:
                    error = self._counter_ok(device.device_id, name, time_ns, float(value))
                    if error:
                        reject("counter_decreased", f"seq {record.seq}: {error}")
                        continue
                fields[name] = value if isinstance(value, bool) else float(value)
            if fields:
                fields["seq"] = record.seq
                points.append(
                    Point(schema.TELEMETRY, dict(tags), fields, time_ns, target.series)
                )

        for event in parsed.events:
            problem = self._check_time(event.ts, now)
            if problem:
                reject(problem[0], f"seq {event.seq}: {problem[1]}")
                continue
            if event.site_type != site.site_type:
                reject(
                    "event_not_for_site",
                    f"seq {event.seq}: {event.type.value} is a {event.site_type} event; "
                    f"site {site.site_id} is {site.site_type}",
                )
                continue
            too_big = self._event_too_big(event)
            if too_big:
                reject("out_of_range", f"seq {event.seq}: {too_big}")
                continue
            event_tags = dict(tags)
            for name in schema.EVENT_OWN_TAGS:
                value = getattr(event, name)
                if value is not None:
                    event_tags[name] = str(getattr(value, "value", value))
            fields = {
                name: float(getattr(event, name))
                for name in EVENT_NUMERIC_FIELDS
                if getattr(event, name) is not None
            }
            fields["seq"] = event.seq
            time_ns = point_time_ns(event.ts, event.seq)
            points.append(Point(schema.EVENT, event_tags, fields, time_ns))
            if event.type is EventType.COUNTER_RESET and event.metric is not None:
                self._note_reset(device.device_id, event.metric, time_ns)

        if parsed.status is not None:
            status = parsed.status
            problem = self._check_time(status.ts, now)
            if problem:
                reject(*problem)
            else:
                status_tags = {key: tags[key] for key in schema.DEVICE_STATUS_TAGS}
                points.append(
                    Point(
                        schema.DEVICE_STATUS,
                        status_tags,
                        {"online": status.state.value == "online"},
                        point_time_ns(status.ts, 0),
                    )
                )
        for reason, more in sorted(overflow.items()):
            rejections.append(
                self.rejection(inbound, reason, f"{more} more like this in the same message")
            )
        return points, rejections
