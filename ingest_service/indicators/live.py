"""The facilities' live state: an operational figure for the dashboards, not the plan's
indicator (issue 13, docs/indicators.md).

A large-scale manure farm in effect today is *live* when its manure telemetry reported
in the last ``stale_hours`` (24 h) and none of its facilities' latest ``facility_fault`` /
``facility_ok`` event is a fault. The plan's facility rate (``manure_facility_rate``) is a
property of the year; this is the state now, and says why a farm is not live.

The engine reads the state (:meth:`IndicatorEngine.facility_live_state`, a fixed handful
of InfluxQL queries whatever the number of farms); this module holds it, counts it per
county and for the city, and turns it into ``facility_live`` points (contract §9), which
the indicator publisher writes every cycle.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from typing import Literal

from farm_contract import schema
from ingest_service.model import FieldValue, Point

FACILITY_LIVE = schema.FACILITY_LIVE
LiveScope = Literal["farm", "county", "city"]


@dataclass(frozen=True, slots=True)
class OpenFault:
    """A facility whose latest facility event is a fault."""

    facility: str
    since_ms: int
    """Time of that fault report (epoch ms): the latest report of the still-open fault."""


@dataclass(frozen=True, slots=True)
class FarmLive:
    """One large-scale farm's state now, and why it is not live."""

    site_id: str
    name: str
    county: str
    reporting: bool
    """Its manure telemetry reported in the last ``stale_hours``."""
    last_seen_ms: int | None
    """Its latest manure reading (epoch ms) where known: in the window, or from the
    ``device_last_seen`` roll-up for a silent farm; None when never seen (or unknown)."""
    open_faults: tuple[OpenFault, ...] = ()

    @property
    def live(self) -> bool:
        return self.reporting and not self.open_faults

    @property
    def open_fault(self) -> bool:
        return bool(self.open_faults)


@dataclass(frozen=True, slots=True)
class LiveCount:
    """Live farms ÷ large-scale farms of a county or of the city; n/a without farms."""

    scope: Literal["county", "city"]
    county: str | None
    live: int
    farms: int

    @property
    def share(self) -> float | None:
        return self.live / self.farms if self.farms else None


@dataclass(frozen=True, slots=True)
class LiveState:
    """Every large-scale farm's state at ``as_of``, and the counties listed (Datong's ten,
    then any other the registry names), so a county without farms is listed as n/a."""

    as_of: datetime
    stale_hours: float
    farms: list[FarmLive]
    counties: list[str] = field(default_factory=list)

    def live(self) -> dict[str, bool]:
        return {farm.site_id: farm.live for farm in self.farms}

    def counts(self) -> list[LiveCount]:
        """The city, then each listed county (and any county a farm is in), in order."""
        counties = [*self.counties, *sorted({f.county for f in self.farms} - set(self.counties))]
        out = [LiveCount("city", None, sum(f.live for f in self.farms), len(self.farms))]
        for county in counties:
            own = [f for f in self.farms if f.county == county]
            out.append(LiveCount("county", county, sum(f.live for f in own), len(own)))
        return out

    def reasons(self, farm: FarmLive, tz: tzinfo = UTC) -> list[str]:
        """Why ``farm`` is not live, in words (bilingual); empty when it is live."""
        out = []
        if not farm.reporting:
            last = (f"last reading / 最后读数 {_local(farm.last_seen_ms, tz)}"
                    if farm.last_seen_ms is not None else "no reading known / 无读数记录")
            out.append(f"no reading in {self.stale_hours:g} h / {self.stale_hours:g} 小时无读数"
                       f" ({last})")
        for fault in farm.open_faults:
            out.append(f"{fault.facility} fault open since {_local(fault.since_ms, tz)}"
                       f" / {fault.facility} 故障未修复")
        return out


def _local(epoch_ms: int, tz: tzinfo) -> str:
    return datetime.fromtimestamp(epoch_ms / 1000, tz).strftime("%Y-%m-%d %H:%M")


def live_points(state: LiveState, time_ns: int, tz: tzinfo = UTC) -> list[Point]:
    """``facility_live`` points: one per farm (``scope=farm``), then per county and the
    city (``county=all``). A count without farms leaves out ``share`` (n/a, never 0);
    ``live_farms`` is not ``live``, which is a farm point's bool (one type per field)."""
    points = []
    for farm in state.farms:
        fields: dict[str, FieldValue] = {
            "live": farm.live, "reporting": farm.reporting, "open_fault": farm.open_fault,
            "name": farm.name,
        }
        if farm.last_seen_ms is not None:
            fields["last_seen_ms"] = int(farm.last_seen_ms)
        if farm.open_faults:
            fields["fault_since_ms"] = min(f.since_ms for f in farm.open_faults)
        reasons = state.reasons(farm, tz)
        if reasons:
            fields["reason"] = "; ".join(reasons)
        tags = {"scope": "farm", "county": farm.county, "site_id": farm.site_id}
        points.append(Point(FACILITY_LIVE, tags, fields, time_ns))
    points += count_points(state.counts(), time_ns)
    return points


def count_points(counts: Iterable[LiveCount], time_ns: int) -> list[Point]:
    points = []
    for count in counts:
        fields: dict[str, FieldValue] = {"live_farms": count.live, "farms": count.farms}
        if count.share is not None:
            fields["share"] = float(count.share)
        tags = {"scope": count.scope,
                "county": count.county if count.county is not None else schema.CITY_COUNTY_TAG}
        points.append(Point(FACILITY_LIVE, tags, fields, time_ns))
    return points
