"""``GET /api/v1/devices/{device_id}/latest``: did it arrive? A device's newest data.

The question after a first ``mosquitto_pub`` or a new sensor in the field: what of
this device is stored, and what was refused and why. Readings and events come from
the ``telemetry`` and ``event`` measurements by the ``device_id`` tag; rejections
carry no device tag (a refused message may name no valid device), so they are found
by their topic, which names the device (``…/{site_id}/{device_id}/…``) — an
unregistered device's rejections show up too. The device id is checked against the
contract's id pattern before it reaches a query, so it is safe in a regex.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query
from pydantic import AfterValidator, AwareDatetime, BaseModel, Field

from farm_contract import schema
from farm_contract.topics import ID_PATTERN
from ingest_service.api.deps import QueryDep, StateDep, reads
from ingest_service.api.errors import ErrorMessage, influx_time
from ingest_service.influxql import Series, quote_ident, quote_literal, time_literal

router = APIRouter(tags=["devices"], dependencies=[reads])

Since = Annotated[AwareDatetime, AfterValidator(influx_time)]

_NOT_VALUES = frozenset({"time", "seq", *schema.TELEMETRY_TAGS, *schema.EVENT_OWN_TAGS})


class StoredReading(BaseModel):
    ts: datetime
    seq: int | None
    readings: dict[str, Any] = Field(description="metric → value, as stored")


class StoredEvent(BaseModel):
    ts: datetime
    seq: int | None
    type: str | None
    tags: dict[str, str] = Field(description="use, crop, facility or metric, where present")
    fields: dict[str, Any] = Field(description="mass_t, grain_t, area_mu, … as stored")


class DeviceRejection(BaseModel):
    at: datetime = Field(description="when ingest refused it")
    reason: str
    topic: str | None
    detail: str | None


class DeviceLatest(BaseModel):
    device_id: str
    registered: bool
    site_id: str | None = Field(description="the registry's site of the device, if registered")
    last_seen: datetime | None = Field(description="the newest reading or event since `since`")
    telemetry: list[StoredReading] = Field(description="newest first")
    events: list[StoredEvent] = Field(description="newest first")
    rejections: list[DeviceRejection] = Field(description="newest first")


@dataclass(frozen=True)
class LatestQuery:
    """The three InfluxQL statements of one answer (a pure function builds them)."""

    telemetry: str
    events: str
    rejections: str


def latest_query(device_id: str, since: datetime | None, limit: int) -> LatestQuery:
    """InfluxQL for a device's newest readings, events and rejections (since ``since``).

    With no ``since`` there is no lower bound: a device that back-fills last month is
    still seen. One device's series and a ``LIMIT`` keep that cheap.
    """
    window = f"time >= {time_literal(since)}" if since is not None else "time > 0"
    by_device = f"{quote_ident('device_id')} = {quote_literal(device_id)}"
    tail = f"ORDER BY time DESC LIMIT {limit}"
    topic = quote_ident("topic")
    return LatestQuery(
        telemetry=f"SELECT * FROM {quote_ident(schema.TELEMETRY)} "
        f"WHERE {by_device} AND {window} {tail}",
        events=f"SELECT * FROM {quote_ident(schema.EVENT)} WHERE {by_device} AND {window} {tail}",
        rejections=f"SELECT {quote_ident('reason')}, {topic}, {quote_ident('detail')} "
        f"FROM {quote_ident(schema.REJECTION)} "
        f"WHERE {topic} =~ /\\/{device_id}(\\/|$)/ AND {window} {tail}",
    )


def _rows(series: list[Series]) -> list[dict[str, Any]]:
    rows = [row for one in series for row in one.rows()]
    rows.sort(key=lambda row: row["time"], reverse=True)
    return rows


def _when(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, UTC)


def _seq(row: dict[str, Any]) -> int | None:
    value = row.get("seq")
    return int(value) if isinstance(value, int | float) else None


@router.get(
    "/api/v1/devices/{device_id}/latest",
    summary="Did it arrive? A device's newest readings and events, and its rejections",
    response_model=DeviceLatest,
    responses={503: {"model": ErrorMessage, "description": "InfluxDB failed"}},
)
def device_latest(
    state: StateDep,
    query: QueryDep,
    device_id: Annotated[str, Path(pattern=ID_PATTERN)],
    since: Annotated[
        Since | None, Query(description="RFC 3339 with offset; default: no lower bound")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 10,
) -> DeviceLatest:
    q = latest_query(device_id, since, limit)
    telemetry = _rows(query(q.telemetry))
    events = _rows(query(q.events))
    rejections = _rows(query(q.rejections))
    device = state.registry.get().devices.get(device_id)
    newest = [rows[0]["time"] for rows in (telemetry, events) if rows]
    return DeviceLatest(
        device_id=device_id,
        registered=device is not None,
        site_id=device.site_id if device is not None else None,
        last_seen=_when(max(newest)) if newest else None,
        telemetry=[
            StoredReading(
                ts=_when(row["time"]), seq=_seq(row),
                readings={k: v for k, v in row.items() if k not in _NOT_VALUES and v is not None},
            )
            for row in telemetry
        ],
        events=[
            StoredEvent(
                ts=_when(row["time"]), seq=_seq(row), type=row.get("type"),
                tags={k: row[k] for k in schema.EVENT_OWN_TAGS if k != "type" and row.get(k)},
                fields={k: v for k, v in row.items() if k not in _NOT_VALUES and v is not None},
            )
            for row in events
        ],
        rejections=[
            DeviceRejection(
                at=_when(row["time"]), reason=row["reason"], topic=row.get("topic"),
                detail=row.get("detail"),
            )
            for row in rejections
        ],
    )
