"""The facilities live now (issue 13): an operational figure, not the plan's indicator.

``GET /api/v1/facilities/live`` gives, as of now, each large-scale manure farm's state —
live when its manure telemetry reported in the last ``stale_hours`` and no facility
fault is open, and why not otherwise — and the live share per county and for the city,
as the dashboards show it (``facility_live`` points, written by the indicator
publisher). The engine reads it (:meth:`IndicatorEngine.facility_live_state`); this
module only shapes it. A plain ``def`` route: FastAPI runs it in its thread pool.
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, Field

from ingest_service.api.deps import EngineDep, StateDep, reads
from ingest_service.api.errors import ErrorMessage
from ingest_service.api.indicators import UnknownCounty, unknown_county_answer
from ingest_service.indicators.engine import UnknownCountyError
from ingest_service.indicators.live import FarmLive, LiveState

router = APIRouter(tags=["operations"], dependencies=[reads])


class OpenFaultRow(BaseModel):
    facility: str
    since: datetime = Field(description="time of the latest fault report of the facility")


class FarmLiveRow(BaseModel):
    """One large-scale farm now."""

    site_id: str
    name: str
    county: str
    live: bool = Field(description="reporting and no open fault")
    reporting: bool = Field(description="manure telemetry in the last stale_hours")
    open_fault: bool
    last_seen: datetime | None = Field(description="its latest manure reading, where known")
    open_faults: list[OpenFaultRow]
    reasons: list[str] = Field(description="why it is not live; empty when it is")


class LiveCountRow(BaseModel):
    """Live farms ÷ large-scale farms of a county or the city; ``share`` null without farms."""

    scope: Literal["city", "county"]
    county: str | None
    live: int
    farms: int
    share: float | None


class FacilitiesLive(BaseModel):
    as_of: datetime
    stale_hours: float
    counts: list[LiveCountRow]
    farms: list[FarmLiveRow]


def _utc(epoch_ms: int) -> datetime:
    return datetime.fromtimestamp(epoch_ms / 1000, UTC)


def farm_row(state: LiveState, farm: FarmLive, tz: tzinfo) -> FarmLiveRow:
    return FarmLiveRow(
        site_id=farm.site_id, name=farm.name, county=farm.county, live=farm.live,
        reporting=farm.reporting, open_fault=farm.open_fault,
        last_seen=_utc(farm.last_seen_ms) if farm.last_seen_ms is not None else None,
        open_faults=[OpenFaultRow(facility=f.facility, since=_utc(f.since_ms))
                     for f in farm.open_faults],
        reasons=state.reasons(farm, tz),
    )


@router.get(
    "/api/v1/facilities/live",
    summary="Large-scale farms live now (operational, not the plan's indicator)",
    description=(
        "As of now, each large-scale manure farm in effect today: `live` when its manure "
        "telemetry reported in the last `FARM_STALE_HOURS` (24) and no facility's latest "
        "fault/ok event is a fault, else `reasons` say why; and `counts`, the live share "
        "for the city and per county (`share` null where a county has no large-scale "
        "farm). Not `manure_facility_rate`, which is a property of the year "
        "(docs/indicators.md). `county` keeps one county's farms and counts."
    ),
    response_model=FacilitiesLive,
    responses={
        404: {"model": UnknownCounty, "description": "no such county"},
        503: {"model": ErrorMessage, "description": "InfluxDB unreachable"},
    },
)
def facilities_live(
    state: StateDep,
    engine: EngineDep,
    county: Annotated[str | None, Query(min_length=1, max_length=200,
                                        description="one county/district")] = None,
) -> Any:
    live = engine.facility_live_state()
    if county is not None and county not in live.counties:
        return unknown_county_answer(UnknownCountyError(county, live.counties))
    tz = state.settings.tz
    counts = [LiveCountRow(scope=c.scope, county=c.county, live=c.live, farms=c.farms,
                           share=c.share)
              for c in live.counts() if county is None or c.county == county]
    farms = [farm_row(live, f, tz) for f in live.farms if county is None or f.county == county]
    return FacilitiesLive(as_of=live.as_of, stale_hours=live.stale_hours, counts=counts,
                          farms=farms)
