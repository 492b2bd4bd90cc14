"""Telemetry, event and status payloads (contract §2, §3 and the status row of §1).

Payloads are parsed with :func:`decode_json` (which refuses NaN and Infinity, as
JSON itself does) and then validated by the pydantic models here. Producers build
the same models and call :func:`encode`, so what a device sends and what ingest
accepts cannot drift apart.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, Self

import orjson
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictBool,
    StrictFloat,
    StrictInt,
    model_validator,
)

from farm_contract.catalog import CATALOG, SiteType

MAX_PAYLOAD_BYTES = 256 * 1024
"""Largest payload ingest accepts; larger ones are rejected (``too_large``)."""

MAX_BATCH = 1000
"""Largest number of records in one ``batch`` message."""


class PayloadError(ValueError):
    """A payload that is not valid JSON of the contract's shape."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} is too large for a double")
    return value


_DIGITS_AS_ZERO = bytes(0x30 if 0x30 <= byte <= 0x39 else byte for byte in range(256))
_LONG_NUMBER = b"0" * 19
"""19 digits in a row may be an integer beyond 64 bits, which orjson turns into a float.
(Found by mapping every digit to ``0``: ten times cheaper than a regular expression.)"""


def decode_json(payload: bytes) -> Any:
    """Decode UTF-8 JSON strictly: no NaN/Infinity, no invalid UTF-8, bounded size.

    orjson decodes the common case (4 × faster). Whatever it refuses, and anything that
    may hold an integer beyond 64 bits (which it would turn into a float), goes
    through the standard library, so the result and every error message are exactly
    what ``json`` gives.
    """
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise PayloadError(
            "too_large", f"payload is {len(payload)} bytes; limit {MAX_PAYLOAD_BYTES}"
        )
    if _LONG_NUMBER not in payload.translate(_DIGITS_AS_ZERO):
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError:
            pass  # the standard library says why (or accepts what orjson won't, e.g. "\ud800")
    return decode_json_stdlib(payload)


def decode_json_stdlib(payload: bytes) -> Any:
    """The reference decoder: the standard library alone (no size check)."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PayloadError("bad_json", f"payload is not UTF-8: {exc}") from None
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except (ValueError, RecursionError) as exc:
        raise PayloadError("bad_json", f"payload is not JSON: {exc}") from None


RFC3339_RE = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?(?:[Zz]|[+-]\d{2}:\d{2})",
    re.ASCII,
)
"""RFC 3339 §5.6 ``date-time`` (a space for ``T`` allowed, as its note permits; at most
nanoseconds). Python's ``fromisoformat`` alone also takes ISO week and ordinal dates,
basic formats, ``,5`` fractions and no offset, which the contract does not."""


def parse_ts(value: object) -> datetime:
    """Contract timestamps: RFC 3339 with an offset, or integer epoch milliseconds."""
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("timestamp has no UTC offset")
        return value.astimezone(UTC)
    if isinstance(value, bool):
        raise ValueError("timestamp must be RFC 3339 text or integer epoch milliseconds")
    if isinstance(value, int):
        try:
            return datetime.fromtimestamp(value / 1000, tz=UTC)
        except (OverflowError, OSError, ValueError):
            raise ValueError(f"epoch milliseconds {value} out of range") from None
    if isinstance(value, str):
        if RFC3339_RE.fullmatch(value) is None:
            if RFC3339_RE.fullmatch(value + "Z") is not None:
                raise ValueError(f"{value[:40]!r} has no UTC offset (RFC 3339 needs Z or ±hh:mm)")
            raise ValueError(f"{value[:40]!r} is not an RFC 3339 timestamp")
        text = value
        if text.endswith(("z", "Z")):
            text = text[:-1] + "+00:00"
        dot = text.find(".")
        if dot > 0:  # fromisoformat takes at most microseconds
            end = dot + 1
            while text[end].isdigit():
                end += 1
            text = text[: min(end, dot + 7)] + text[end:]
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{value!r} is not a valid RFC 3339 timestamp") from None
        return parsed.astimezone(UTC)
    raise ValueError("timestamp must be RFC 3339 text or integer epoch milliseconds")


def format_ts(value: datetime) -> str:
    """RFC 3339 in UTC with millisecond precision, as devices are expected to send."""
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


Timestamp = Annotated[datetime, BeforeValidator(parse_ts), PlainSerializer(format_ts)]
SEQ_MAX = 2**63 - 1
Seq = Annotated[StrictInt, Field(ge=0, le=SEQ_MAX)]
Reading = StrictBool | StrictInt | Annotated[StrictFloat, Field(allow_inf_nan=False)]
"""What a producer may send as a reading."""
Readings = dict[str, Reading | str | list[Any] | dict[str, Any] | None]
"""Readings as received: any JSON value but a non-finite number (which is no JSON).
Each is checked against the catalog on its own (a string, null or object reading is
rejected alone, ``out_of_range``, like a boolean where a number belongs), so one
broken sensor never costs the others."""
Mass = Annotated[StrictFloat | StrictInt, Field(ge=0, allow_inf_nan=False)]


def _exactly_one(value: object) -> object:
    """``v`` is the integer 1: not ``true``, not ``1.0`` (both equal 1 in Python)."""
    if type(value) is not int or value != 1:
        raise ValueError(f"v must be the integer 1, got {str(value)[:20]}")
    return value


Version = Annotated[Literal[1], BeforeValidator(_exactly_one)]


class _Model(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class TelemetryRecord(_Model):
    """One set of readings taken at ``ts``."""

    seq: Seq
    ts: Timestamp
    readings: Readings = Field(min_length=1)


class TelemetryMessage(_Model):
    """A telemetry payload: one record, or a ``batch`` of records from a replay."""

    v: Version
    seq: Seq | None = None
    ts: Timestamp | None = None
    readings: Readings | None = Field(default=None, min_length=1)
    batch: list[TelemetryRecord] | None = Field(default=None, min_length=1, max_length=MAX_BATCH)

    @model_validator(mode="after")
    def _one_shape(self) -> Self:
        single = (self.seq, self.ts, self.readings)
        if self.batch is not None:
            if any(part is not None for part in single):
                raise ValueError("a batch message carries only v and batch")
        elif any(part is None for part in single):
            raise ValueError("telemetry needs seq, ts and readings (or a batch)")
        return self

    def records(self) -> list[TelemetryRecord]:
        """The message's records, whether it was sent singly or as a batch."""
        if self.batch is not None:
            return list(self.batch)
        assert self.seq is not None and self.ts is not None and self.readings is not None
        return [TelemetryRecord(seq=self.seq, ts=self.ts, readings=self.readings)]


class EventType(StrEnum):
    """Event types (contract §3)."""

    FILM_APPLIED = "film_applied"
    FILM_RECOVERED = "film_recovered"
    HARVEST = "harvest"
    STRAW_UTILIZED = "straw_utilized"
    STRAW_BURNING = "straw_burning"
    MANURE_TREATED = "manure_treated"
    MANURE_UTILIZED = "manure_utilized"
    FACILITY_FAULT = "facility_fault"
    FACILITY_OK = "facility_ok"
    COUNTER_RESET = "counter_reset"


class Crop(StrEnum):
    CORN = "corn"
    SORGHUM = "sorghum"
    MILLET = "millet"
    POTATO = "potato"
    OATS = "oats"
    OTHER = "other"


class StrawUse(StrEnum):
    """The plan's "five uses" of straw."""

    FERTILIZER = "fertilizer"
    FEED = "feed"
    FUEL = "fuel"
    SUBSTRATE = "substrate"
    MATERIAL = "material"


class ManureUse(StrEnum):
    FERTILIZER = "fertilizer"
    ENERGY = "energy"
    BEDDING = "bedding"
    OTHER = "other"


class Facility(StrEnum):
    STORAGE = "storage"
    SEPARATOR = "separator"
    DIGESTER = "digester"
    COMPOSTER = "composter"
    LAGOON = "lagoon"


EVENT_SITE_TYPE: dict[EventType, SiteType] = {
    EventType.FILM_APPLIED: SiteType.DRIP,
    EventType.FILM_RECOVERED: SiteType.DRIP,
    EventType.HARVEST: SiteType.STRAW,
    EventType.STRAW_UTILIZED: SiteType.STRAW,
    EventType.STRAW_BURNING: SiteType.STRAW,
    EventType.MANURE_TREATED: SiteType.MANURE,
    EventType.MANURE_UTILIZED: SiteType.MANURE,
    EventType.FACILITY_FAULT: SiteType.MANURE,
    EventType.FACILITY_OK: SiteType.MANURE,
}
"""The site type each event belongs to."""

EVENT_REQUIRED: dict[EventType, tuple[str, ...]] = {
    EventType.FILM_APPLIED: ("mass_t", "area_mu", "thickness_mm"),
    EventType.FILM_RECOVERED: ("mass_t",),
    EventType.HARVEST: ("crop", "grain_t"),
    EventType.STRAW_UTILIZED: ("mass_t", "use"),
    EventType.STRAW_BURNING: (),
    EventType.MANURE_TREATED: ("mass_t",),
    EventType.MANURE_UTILIZED: ("mass_t", "use"),
    EventType.FACILITY_FAULT: ("facility",),
    EventType.FACILITY_OK: ("facility",),
    EventType.COUNTER_RESET: ("metric",),
}
"""Fields each event type must carry."""

EVENT_NUMERIC_FIELDS = ("mass_t", "grain_t", "area_mu", "thickness_mm")


class EventRecord(_Model):
    """One event. Fields not used by its type are ignored if absent, checked if present."""

    seq: Seq
    ts: Timestamp
    type: EventType
    mass_t: Mass | None = None
    grain_t: Mass | None = None
    area_mu: Mass | None = None
    thickness_mm: Mass | None = None
    crop: Crop | None = None
    use: str | None = None
    facility: Facility | None = None
    metric: str | None = None
    """``counter_reset`` only: the never-decreasing metric whose meter was replaced."""
    season: Annotated[StrictInt, Field(ge=2000, le=2100)] | None = None
    """``film_recovered`` only: the year whose film this recovers (issue 13; contract §8)."""

    @model_validator(mode="after")
    def _fields_for_type(self) -> Self:
        missing = [name for name in EVENT_REQUIRED[self.type] if getattr(self, name) is None]
        if missing:
            raise ValueError(f"{self.type.value} event needs {', '.join(missing)}")
        if self.metric is not None:
            if self.type is not EventType.COUNTER_RESET:
                raise ValueError(f"{self.type.value} event takes no metric")
            counters = [name for name, m in CATALOG.items() if m.never_decreasing]
            if self.metric not in counters:
                raise ValueError(
                    f"metric {self.metric[:70]!r} is not one of {', '.join(counters)}"
                )
        if self.season is not None and self.type is not EventType.FILM_RECOVERED:
            raise ValueError(f"{self.type.value} event takes no season")
        if self.use is not None:
            uses: type[StrEnum] | None = {
                EventType.STRAW_UTILIZED: StrawUse,
                EventType.MANURE_UTILIZED: ManureUse,
            }.get(self.type)
            if uses is None:
                raise ValueError(f"{self.type.value} event takes no use")
            allowed = [member.value for member in uses]
            if self.use not in allowed:
                raise ValueError(
                    f"use {self.use!r} is not one of {', '.join(allowed)} for {self.type.value}"
                )
        return self

    @property
    def site_type(self) -> SiteType:
        if self.type is EventType.COUNTER_RESET:
            assert self.metric is not None
            kinds = CATALOG[self.metric].site_types
            assert kinds is not None and len(kinds) == 1, "a counter belongs to one site type"
            return next(iter(kinds))
        return EVENT_SITE_TYPE[self.type]


class EventMessage(_Model):
    """An event payload: one event, or a ``batch`` of events from a replay."""

    v: Version
    batch: list[EventRecord] | None = Field(default=None, min_length=1, max_length=MAX_BATCH)
    event: EventRecord | None = None

    @model_validator(mode="before")
    @classmethod
    def _single_or_batch(cls, data: Any) -> Any:
        if isinstance(data, dict) and "batch" not in data and "event" not in data:
            body = {key: value for key, value in data.items() if key != "v"}
            return {"v": data.get("v"), "event": body}
        return data

    def records(self) -> list[EventRecord]:
        if self.batch is not None:
            return list(self.batch)
        assert self.event is not None
        return [self.event]


class DeviceState(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"


class StatusMessage(BaseModel):
    """Birth (``online``, retained) and last-will (``offline``) status; extra metadata kept."""

    model_config = ConfigDict(extra="allow", frozen=True)

    v: Version
    state: DeviceState
    ts: Timestamp


def encode(message: BaseModel) -> bytes:
    """Serialise a payload model the way the contract's examples look."""
    if isinstance(message, EventMessage) and message.batch is None:
        assert message.event is not None
        body = {"v": 1, **message.event.model_dump(mode="json", exclude_none=True)}
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode()
    return message.model_dump_json(exclude_none=True).encode()


def telemetry(seq: int, ts: datetime, readings: dict[str, bool | int | float]) -> bytes:
    """A single telemetry payload."""
    values: Readings = dict(readings)
    return encode(TelemetryMessage(v=1, seq=seq, ts=ts, readings=values))


def event(seq: int, ts: datetime, type: EventType | str, **fields: Any) -> bytes:
    """A single event payload."""
    record = EventRecord(seq=seq, ts=ts, type=EventType(type), **fields)
    return encode(EventMessage(v=1, event=record))


def status(state: DeviceState | str, ts: datetime, **metadata: Any) -> bytes:
    """A status (birth or last-will) payload."""
    return encode(StatusMessage(v=1, state=DeviceState(state), ts=ts, **metadata))
