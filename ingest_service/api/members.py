"""Every figure opens (issue 13): the sites behind an indicator, and a site's events.

``GET /api/v1/indicators/{indicator}/members`` lists one row per site and
indicator — ``numerator`` and ``denominator`` add up to the figure's — as JSON or
CSV (the negotiation of ``GET /api/v1/indicators``).
``GET /api/v1/indicators/{indicator}/events`` lists the events of one site that
make up its part: device, ``seq``, time, values, when ingest received them and
the versions a correction replaced (measurement ``event_version``, written by
ingest's event identity; none where nothing was corrected).

The engine decides what a member and its events are
(:meth:`~ingest_service.indicators.engine.IndicatorEngine.members` and
:meth:`~ingest_service.indicators.engine.IndicatorEngine.events`); this module only
shapes and serves them. Plain ``def`` routes: FastAPI runs them in its thread pool.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from farm_contract.indicators import IndicatorId, Member
from farm_contract.topics import ID_PATTERN
from ingest_service.api.deps import EngineDep, Querier, StateDep, reads
from ingest_service.api.errors import ErrorMessage, UnreportableAnswer
from ingest_service.api.indicators import UnknownCounty, unknown_county_answer, wants_csv
from ingest_service.api.params import CSV_MEDIA_TYPE, MAX_YEAR, MIN_YEAR, year_or_current
from ingest_service.indicators.engine import UnknownCountyError
from ingest_service.influxql import quote_ident, quote_literal
from ingest_service.pipeline.event_identity import EVENT_VERSION, RECEIVED_FIELD
from ingest_service.report.spreadsheet import BOM, csv_text, round_mass

MEMBER_COLUMNS = ("indicator", "year", "county", "site_id", "name", "numerator",
                  "denominator", "status")
"""The members CSV's fixed columns; each ``detail`` key follows as a column of its own."""
_IDENTITY = frozenset({"device_id", "seq", "ts", "time", "site_id", RECEIVED_FIELD, "received",
                       "values", "corrections", "event_ns"})
"""Keys of an engine event (or stored version) that are not its values."""

router = APIRouter(tags=["indicators"], dependencies=[reads])

Year = Annotated[int | None, Query(ge=MIN_YEAR, le=MAX_YEAR,
                                   description="calendar year; default: the current one")]


class EventCorrection(BaseModel):
    """A version of the event that a later correction replaced."""

    replaced_at: datetime = Field(description="when ingest stored the correction")
    received: datetime | None = Field(description="when ingest received this version")
    values: dict[str, Any] = Field(description="mass_t, grain_t, … of this version")


class FigureEvent(BaseModel):
    """One stored event behind a site's part of a figure."""

    device_id: str
    seq: int
    ts: datetime = Field(description="the event's time (the device's ts)")
    received: datetime | None = Field(description="when ingest received it (null: not recorded)")
    values: dict[str, Any] = Field(description="type, use/crop/facility and mass_t, grain_t, …")
    corrections: list[EventCorrection] = Field(description="earlier versions, oldest first")


def as_utc(value: object) -> datetime | None:
    """A time as the engine or InfluxDB gives it (epoch ms, ISO text, datetime), in UTC."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return datetime.fromtimestamp(value / 1000, UTC)
    if isinstance(value, str) and value:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


def event_values(event: Mapping[str, Any]) -> dict[str, Any]:
    """An event's values: its keys beyond its identity (e.g. ``type``, ``role``) and those
    of its ``values`` mapping, if it has one (an engine may nest them or not)."""
    nested = event.get("values")
    merged = {**event, **(nested if isinstance(nested, Mapping) else {})}
    return {key: value for key, value in merged.items()
            if key not in _IDENTITY and value is not None and value != ""}


def received_at(event: Mapping[str, Any]) -> datetime | None:
    """When ingest received the event, from its own keys or its ``values``."""
    nested = event.get("values")
    for source in (event, nested if isinstance(nested, Mapping) else {}):
        for key in ("received", RECEIVED_FIELD):
            if source.get(key) is not None:
                return as_utc(source[key])
    return None


def members_csv(members: Iterable[Member]) -> str:
    """Members as CSV: the fixed columns, then every ``detail`` key (sorted) as a column."""
    rows = list(members)
    details = sorted({key for member in rows for key in member.detail})
    return csv_text((*MEMBER_COLUMNS, *details), (
        [str(m.indicator), m.year, m.county, m.site_id, m.name, round_mass(m.numerator),
         round_mass(m.denominator), m.status, *[m.detail.get(key) for key in details]]
        for m in rows))


def ensure_finite_members(members: Iterable[Member]) -> None:
    """A member's numbers are sums of stored masses: refuse to report an infinite one."""
    for member in members:
        for number in (member.numerator, member.denominator):
            if not math.isfinite(number):
                raise UnreportableAnswer(f"{member.indicator} of site {member.site_id} is "
                                         f"{number}: sums of implausible masses in InfluxDB")


@router.get(
    "/api/v1/indicators/{indicator}/members",
    summary="The sites behind a figure",
    description=(
        "One row per site that counts toward the indicator in the year (in one county "
        "with `county`): `site_id`, `name`, `county`, `numerator`, `denominator` — their "
        "sums are the figure's numerator and denominator in `GET /api/v1/indicators` — "
        "and for the facility rate each farm's `status` (`equipped`, `not_equipped`) and "
        "`detail` (days reported, longest open fault, last reading).\n\nCSV with "
        "`format=csv` or `Accept: text/csv` (numbers rounded for display, each `detail` "
        "key a column; UTF-8 byte-order mark unless `bom=false`)."
    ),
    response_model=list[Member],
    responses={
        200: {"content": {"text/csv": {"schema": {"type": "string"}}}},
        404: {"model": UnknownCounty, "description": "no such county in the registry"},
        503: {"model": ErrorMessage, "description": "InfluxDB unreachable"},
    },
)
def indicator_members(
    request: Request,
    state: StateDep,
    engine: EngineDep,
    indicator: Annotated[IndicatorId, Path(description="the indicator's id")],
    year: Year = None,
    county: Annotated[str | None, Query(min_length=1, max_length=200,
                                        description="one county/district")] = None,
    output_format: Annotated[Literal["json", "csv"] | None, Query(
        alias="format", description="json or csv; overrides the Accept header")] = None,
    bom: Annotated[bool, Query(description="CSV only: start with a UTF-8 BOM (for Excel)")] = True,
) -> Any:
    chosen = year_or_current(year, state.settings.tz)
    try:
        rows = engine.members(chosen, county=county, indicator=indicator)
    except UnknownCountyError as exc:
        return unknown_county_answer(exc)
    ensure_finite_members(rows)
    as_csv = output_format == "csv" or (
        output_format is None and wants_csv(request.headers.get("accept")))
    if not as_csv:
        return rows
    text = (BOM if bom else "") + members_csv(rows)
    name = f"members-{indicator}-{chosen}.csv"
    return Response(text.encode("utf-8"), media_type=CSV_MEDIA_TYPE,
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})


@router.get(
    "/api/v1/indicators/{indicator}/events",
    summary="The events behind one site's part of a figure",
    description=(
        "The stored events of `site_id` that the indicator counts in the year, oldest "
        "first: `device_id`, `seq`, `ts`, `values` (type, use or crop, masses), `received` "
        "(when ingest received it, where recorded) and `corrections` (versions a later "
        "correction of the same device and seq replaced). An unknown site has no events."
    ),
    response_model=list[FigureEvent],
    responses={503: {"model": ErrorMessage, "description": "InfluxDB unreachable"}},
)
def indicator_events(
    state: StateDep,
    engine: EngineDep,
    indicator: Annotated[IndicatorId, Path(description="the indicator's id")],
    site_id: Annotated[str, Query(pattern=ID_PATTERN, description="the site, e.g. m1")],
    year: Year = None,
) -> list[FigureEvent]:
    chosen = year_or_current(year, state.settings.tz)
    found = engine.events(indicator, chosen, site_id)
    corrections = stored_corrections(engine.query, site_id) if found else {}
    out = []
    for event in found:
        seq, ts = event.get("seq"), as_utc(event.get("ts", event.get("time")))
        if ts is None or not isinstance(seq, int | float) or isinstance(seq, bool):
            continue  # not an event a reader could find again
        device_id, seq = str(event.get("device_id", "")), int(seq)
        out.append(FigureEvent(
            device_id=device_id, seq=seq, ts=ts,
            received=received_at(event),
            values=event_values(event), corrections=corrections.get((device_id, seq), []),
        ))
    return sorted(out, key=lambda e: (e.ts, e.device_id, e.seq))


def stored_corrections(
    query: Querier, site_id: str
) -> dict[tuple[str, int], list[EventCorrection]]:
    """The site's replaced event versions by (device, seq), oldest first; none if the
    ``event_version`` measurement does not exist (nothing was ever corrected)."""
    q = (f"SELECT * FROM {quote_ident(EVENT_VERSION)} "
         f"WHERE {quote_ident('site_id')} = {quote_literal(site_id)} "
         f"GROUP BY {quote_ident('device_id')}")
    found: dict[tuple[str, int], list[EventCorrection]] = defaultdict(list)
    for series in query(q):
        for row in sorted(series.rows(), key=lambda r: r.get("time") or 0):
            replaced = as_utc(row.get("time"))
            seq = row.get("seq")
            if replaced is None or not isinstance(seq, int | float):
                continue
            found[(str(row.get("device_id", "")), int(seq))].append(EventCorrection(
                replaced_at=replaced, received=as_utc(row.get(RECEIVED_FIELD)),
                values={k: v for k, v in event_values(row).items() if k != "type"},
            ))
    return dict(found)

