"""Event identity: an event is its device and ``seq``, never its timestamp (contract §10).

Telemetry keeps the plain rule (time = ``ts`` to the ms + ``seq mod 10⁶`` ns): it is
the fast path, and a telemetry point counts nowhere. Events are what the indicators
sum, so for them ingest asks, before it makes the point, what is already stored for
this (device, seq):

- nothing: the event is new. It goes to :func:`~ingest_service.pipeline.enrich.point_time_ns`
  unless another event of the device already holds that nanosecond, then to the next
  free one (``+1 ns``, ``+2 ns`` …): distinct events never merge, however ``seq`` and
  ``ts`` relate.
- the same content: a resend (whatever ``ts`` it carries). The stored point is written
  again exactly as it is (same time, tags and fields): InfluxDB overwrites, nothing adds up.
- other numbers under the same type and tags, ``ts`` within :data:`RESEND_WINDOW_NS`
  of the stored one: a correction. It is written at the stored time (so it replaces
  the stored point) and the replaced version is kept as an ``event_version`` point.
- anything else (another type, use, crop, facility or metric, or a ``ts`` further off):
  the device reused a ``seq`` (a restart that lost its counter): rejected ``seq_reused``;
  the stored event is untouched.

What is stored is learnt from InfluxDB (:class:`InfluxEventLookup`) and kept in an
index bounded in bytes like the input's topic cache
(:class:`~ingest_service.inputs.mqtt_wire.TopicCache`): when full it is emptied and
refilled from InfluxDB. A worker alone reads a device's events once, on its first event
(one request), and answers from memory after; in a share group every event asks
InfluxDB (one request of two statements), since another worker may have stored a
version. The index also remembers what this process placed but has not written yet, so
two events in one batch cannot take the same slot either.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass

from farm_contract import schema
from farm_contract.payloads import EVENT_NUMERIC_FIELDS
from ingest_service.influxql import InfluxQL, QueryError, Series, quote_ident, quote_literal
from ingest_service.model import FieldValue, Point
from ingest_service.pipeline.parse import Rejected

log = logging.getLogger(__name__)

EVENT_VERSION = "event_version"
"""Measurement of the replaced versions of corrected events (contract §9)."""
VERSION_TAGS = ("device_id", "site_id", "type")
RECEIVED_FIELD = "received_ms"
"""Field of an ``event`` (and ``event_version``) point: when ingest received that version."""

RESEND_WINDOW_NS = 24 * 3600 * 1_000_000_000
"""A same-``seq`` message whose ``ts`` is within a day of the stored event's is a resend
or a correction of it; further off, it is another event under a reused ``seq``."""
INDEX_BYTES = 16 << 20
"""What the index may hold (about 40,000 events at ~400 bytes each)."""
ENTRY_OVERHEAD = 240
"""Two dict entries, the key tuples and the version object, beyond its strings."""
_MS = 1_000_000
_OWN_TAGS = schema.EVENT_OWN_TAGS


@dataclass(frozen=True, slots=True)
class StoredVersion:
    """One version of an event as it is (or is about to be) stored."""

    time_ns: int
    tags: dict[str, str]
    fields: dict[str, FieldValue]

    @property
    def received_ms(self) -> int:
        value = self.fields.get(RECEIVED_FIELD)
        return value if type(value) is int else 0

    def point(self) -> Point:
        return Point(schema.EVENT, dict(self.tags), dict(self.fields), self.time_ns)


@dataclass(frozen=True, slots=True)
class Found:
    """What InfluxDB holds for one (device, seq), and which times near a slot are taken."""

    stored: StoredVersion | None
    taken: frozenset[int]
    """Times (ns) of the device's other events in ``[slot, slot + 1 ms)``."""


EventLookup = Callable[[str, int, int], Found]
"""(device_id, seq, slot_ns) → :class:`Found`; raises :class:`QueryError` on trouble."""
DeviceLoad = Callable[[str], dict[int, StoredVersion]]
"""device_id → every stored event of the device by ``seq``; :class:`QueryError` on trouble."""


def _own(tags: dict[str, str]) -> tuple[str, ...]:
    return tuple(tags.get(name, "") for name in _OWN_TAGS)


def _numbers(fields: dict[str, FieldValue]) -> dict[str, float]:
    return {
        name: float(value)
        for name in EVENT_NUMERIC_FIELDS
        if isinstance(value := fields.get(name), int | float) and not isinstance(value, bool)
    }


def _stored_fields(row: dict[str, object]) -> dict[str, FieldValue]:
    """Fields of a queried row with their stored types (InfluxDB's JSON shows 5.0 as 5)."""
    fields: dict[str, FieldValue] = {}
    for name, value in row.items():
        if value is None or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if name in EVENT_NUMERIC_FIELDS:
            fields[name] = float(value)
        elif name in ("seq", RECEIVED_FIELD):
            fields[name] = int(value)
    return fields


def _series_rows(series: list[Series]) -> list[tuple[dict[str, str], dict[str, object]]]:
    out = []
    for one in series:
        tags = {key: value for key, value in one.tags.items() if value}
        for row in one.values:
            out.append((tags, dict(zip(one.columns, row, strict=False))))
    return out


class InfluxEventLookup:
    """:data:`EventLookup` by one InfluxQL request of two statements (epoch ns).

    ``seq`` is a field, so finding it reads the device's events (a few a day: some
    thousands over years); the window statement reads one millisecond of them.
    """

    def __init__(self, query: InfluxQL) -> None:
        self._query = query

    def __call__(self, device_id: str, seq: int, slot_ns: int) -> Found:
        event = quote_ident(schema.EVENT)
        device = f"{quote_ident('device_id')} = {quote_literal(device_id)}"
        by_seq = f"SELECT * FROM {event} WHERE {device} AND {quote_ident('seq')} = {int(seq)} "
        q = (
            f"{by_seq} GROUP BY *; SELECT * FROM {event} WHERE {device} "
            f"AND time >= {int(slot_ns)} AND time < {int(slot_ns) + _MS} GROUP BY *"
        )
        try:
            series = self._query.query(q, epoch="ns")
        except QueryError as exc:
            if "not executed" not in str(exc):
                raise
            # InfluxDB 1.x answers a missing database to two statements with only this
            # "not executed"; one statement names the problem.
            try:
                self._query.query(by_seq + "LIMIT 1", epoch="ns")
            except QueryError as again:
                if "database not found" in str(again):  # nothing written yet
                    return Found(None, frozenset())
                raise
            raise
        stored: StoredVersion | None = None
        taken: set[int] = set()
        for tags, row in _series_rows(series):
            time_ns = int(row["time"])  # type: ignore[call-overload]
            if row.get("seq") == seq:
                if stored is None or time_ns < stored.time_ns:  # the original: the earliest
                    stored = StoredVersion(time_ns, tags, _stored_fields(row))
            else:
                taken.add(time_ns)
        return Found(stored, frozenset(taken))

    def device(self, device_id: str) -> dict[int, StoredVersion]:
        """Every stored event of the device (:data:`DeviceLoad`): one request, then memory."""
        q = (
            f"SELECT * FROM {quote_ident(schema.EVENT)} "
            f"WHERE {quote_ident('device_id')} = {quote_literal(device_id)} GROUP BY *"
        )
        try:
            series = self._query.query(q, epoch="ns")
        except QueryError as exc:
            if "database not found" in str(exc):
                return {}
            raise
        found: dict[int, StoredVersion] = {}
        for tags, row in _series_rows(series):
            seq, time_ns = row.get("seq"), int(row["time"])  # type: ignore[call-overload]
            if type(seq) is not int:
                continue
            known = found.get(seq)
            if known is None or time_ns < known.time_ns:  # the original: the earliest
                found[seq] = StoredVersion(time_ns, tags, _stored_fields(row))
        return found


def _cost(device_id: str, version: StoredVersion) -> int:
    """About what one entry takes: its strings (~100 bytes a tag or field) and the rest."""
    return ENTRY_OVERHEAD + sys.getsizeof(device_id) + 100 * (
        len(version.tags) + len(version.fields)
    )


class _RisingClock:
    def __init__(self) -> None:
        self._last = 0

    def at_least(self, ns: int) -> int:
        self._last = max(ns, self._last + 1)
        return self._last


class EventIndex:
    """Places events by identity: (device_id, seq) → the stored version, bounded in bytes.

    ``trust_memory`` false (several workers share the subscription) asks InfluxDB on
    every event, not only on a miss: another worker may have stored a version since.
    """

    def __init__(
        self,
        lookup: EventLookup,
        *,
        load_device: DeviceLoad | None = None,
        trust_memory: bool = True,
        max_bytes: int = INDEX_BYTES,
    ) -> None:
        self._lookup = lookup
        self._load_device = load_device
        self._complete: set[str] = set()
        """Devices whose every stored event is in memory: a miss there means "not stored"."""
        self._trust_memory = trust_memory
        self.max_bytes = max_bytes
        self.size = 0
        self._by_seq: dict[tuple[str, int], StoredVersion] = {}
        self._by_time: dict[tuple[str, int], int] = {}
        self._lock = threading.Lock()
        self._clock = _RisingClock()
        self.lookups = 0
        self.emptied = 0
        """How many times the index was emptied to stay within ``max_bytes``."""
        self.unchecked = 0
        """Events placed without InfluxDB's answer (it failed): stored by the plain rule."""

    def __len__(self) -> int:
        return len(self._by_seq)

    def _remember(self, device_id: str, seq: int, version: StoredVersion) -> None:
        key = (device_id, seq)
        old = self._by_seq.get(key)
        if old is not None:
            self._by_time.pop((device_id, old.time_ns), None)
            self.size -= _cost(device_id, old)
        cost = _cost(device_id, version)
        if self.size + cost > self.max_bytes:
            self._by_seq.clear()
            self._by_time.clear()
            self._complete.clear()
            self.size = 0
            self.emptied += 1
        self._by_seq[key] = version
        self._by_time[(device_id, version.time_ns)] = seq
        self.size += cost

    def _complete_device(self, device_id: str) -> bool:
        """Whether all the device's events are in memory, loading them on first sight.

        One request per device instead of one per event (a back-fill of a year's events
        would otherwise ask InfluxDB for each). A device too big for a quarter of the
        index, or an InfluxDB failure, leaves the per-event look-up to answer.
        """
        if device_id in self._complete:
            return True
        if self._load_device is None or not self._trust_memory:
            return False
        self.lookups += 1
        try:
            stored = self._load_device(device_id)
        except QueryError as exc:
            log.warning("cannot read the events of %s from InfluxDB: %s", device_id, exc)
            return False
        if sum(_cost(device_id, v) for v in stored.values()) > self.max_bytes // 4:
            return False
        emptied = self.emptied
        for seq, version in stored.items():
            mine = self._by_seq.get((device_id, seq))
            if mine is None or version.received_ms >= mine.received_ms:
                self._remember(device_id, seq, version)
        if self.emptied != emptied:  # emptied to make room meanwhile: part of it is gone
            return False
        self._complete.add(device_id)
        return True

    def _found(self, device_id: str, seq: int, slot_ns: int) -> Found | None:
        self.lookups += 1
        try:
            return self._lookup(device_id, seq, slot_ns)
        except QueryError as exc:
            self.unchecked += 1
            log.warning(
                "cannot read event %s/%d from InfluxDB (%s); stored by its ts, unchecked",
                device_id, seq, exc,
            )
            return None

    def place(
        self,
        device_id: str,
        seq: int,
        slot_ns: int,
        tags: dict[str, str],
        fields: dict[str, FieldValue],
        received_ns: int,
    ) -> list[Point]:
        """The points to write for this event: itself (and the version it replaces).

        Raises :class:`~ingest_service.pipeline.parse.Rejected` (``seq_reused``) when the
        (device, seq) is stored as another event.
        """
        with self._lock:
            key = (device_id, seq)
            stored = self._by_seq.get(key)
            found = None
            if stored is None and self._complete_device(device_id):
                stored = self._by_seq.get(key)  # all of the device is in memory now
            elif stored is None or not self._trust_memory:
                found = self._found(device_id, seq, slot_ns)
                theirs = found.stored if found is not None else None
                if theirs is not None and (
                    stored is None or theirs.received_ms >= stored.received_ms
                ):
                    stored = theirs  # InfluxDB is the truth, unless ours is newer (in flight)
            received_ms = received_ns // _MS
            if stored is None:
                taken = found.taken if found is not None else frozenset()
                time_ns = slot_ns
                while time_ns in taken or (device_id, time_ns) in self._by_time:
                    time_ns += 1  # the next free nanosecond: distinct events never merge
                version = StoredVersion(time_ns, tags, {**fields, RECEIVED_FIELD: received_ms})
                self._remember(device_id, seq, version)
                return [version.point()]
            self._remember(device_id, seq, stored)
            self._check_same_event(device_id, seq, slot_ns, tags, stored)
            if _numbers(fields) == _numbers(stored.fields):
                return [stored.point()]  # a resend: the stored point, exactly, again
            current = StoredVersion(
                stored.time_ns, stored.tags, {**fields, RECEIVED_FIELD: received_ms}
            )
            self._remember(device_id, seq, current)
            replaced = self._clock.at_least(received_ns)
            return [self._version_point(stored, replaced), current.point()]

    @staticmethod
    def _check_same_event(
        device_id: str, seq: int, slot_ns: int, tags: dict[str, str], stored: StoredVersion
    ) -> None:
        """A same-``seq`` message is this event again only under its type and tags, near its ts."""
        apart_ms = abs(slot_ns // _MS - stored.time_ns // _MS)
        said = f"seq {seq} of {device_id} is stored as {stored.tags.get('type')}"
        if apart_ms * _MS > RESEND_WINDOW_NS:
            raise Rejected(
                "seq_reused",
                f"{said} dated {apart_ms / 3_600_000:.1f} h apart from this one (more than "
                "24 h): another event under a reused seq; a device must never restart its seq",
            )
        if _own(tags) != _own(stored.tags):
            theirs = ", ".join(f"{k}={v}" for k, v in zip(_OWN_TAGS, _own(stored.tags), strict=True)
                               if v)
            raise Rejected(
                "seq_reused",
                f"{said} ({theirs}); a correction may change only its numbers "
                "(mass_t, grain_t, area_mu, thickness_mm), never its type or tags",
            )

    @staticmethod
    def _version_point(replaced: StoredVersion, replaced_ns: int) -> Point:
        """The replaced version as an ``event_version`` point, stamped when it was replaced."""
        tags = {name: replaced.tags[name] for name in VERSION_TAGS if replaced.tags.get(name)}
        fields: dict[str, FieldValue] = dict(_numbers(replaced.fields))
        fields["seq"] = replaced.fields.get("seq", 0)
        fields["event_ns"] = replaced.time_ns
        if replaced.received_ms:
            fields[RECEIVED_FIELD] = replaced.received_ms
        return Point(EVENT_VERSION, tags, fields, replaced_ns)
