"""Panels that read raw readings, hourly or daily roll-ups depending on the time range.

Grafana cannot switch a query's measurement by range, so a panel carries one target
per resolution, each starting with *gates*: comparisons of literals that Grafana's
variables turn into constants (``$__range_ms``, ``'$site'``) and that InfluxQL reduces
before it reads any data. Exactly one target's gates hold; the others return nothing
in a few milliseconds (a false condition opens no shard). The roll-ups are the
ingest service's (ingest_service/telemetry/rollups.py, contract §10):

- one site chosen: raw readings for ranges up to :data:`RAW_MAX`, the device hourly
  roll-up up to :data:`HOURLY_MAX`, the daily one beyond;
- every site ("All"): county aggregates (mean of the sites' means, min and max
  across sites), hourly up to :data:`HOURLY_MAX`, daily beyond — a line per county,
  never one per site.
"""

from __future__ import annotations

from dataclasses import dataclass

from dashboards.builders import Json, ident, literal, target
from dashboards.farm import SITE, county_filter, scope_filter

RAW_MAX = 2 * 86_400_000
"""Longest range (ms) drawn from raw 15-minute readings: ~200 points per series."""
HOURLY_MAX = 60 * 86_400_000
"""Longest range (ms) drawn from hourly roll-ups: ~1,440 points per series at most."""
MAX_DATA_POINTS = 300
"""Points per series Grafana asks for (the panels' maxDataPoints), so that a line per
county over a year stays a few thousand rows."""

HOURLY = "telemetry_1h"
DAILY = "telemetry_1d"
COUNTY_HOURLY = "telemetry_county_1h"
COUNTY_DAILY = "telemetry_county_1d"
SITE_USE = "site_use_1d"
LAST_SEEN = "device_last_seen"

ONE_SITE = f"'${SITE}' != '.*'"
ALL_SITES = f"'${SITE}' = '.*'"
UP_TO_RAW = f"$__range_ms <= {RAW_MAX}"
ABOVE_RAW = f"$__range_ms > {RAW_MAX}"
UP_TO_HOURLY = f"$__range_ms <= {HOURLY_MAX}"
ABOVE_HOURLY = f"$__range_ms > {HOURLY_MAX}"


def gated(*gates: str) -> str:
    return " AND ".join(gates)


@dataclass(frozen=True)
class Resolution:
    """One target of a multi-resolution panel: its gates and the measurement it reads."""

    gates: tuple[str, ...]
    measurement: str


SITE_RESOLUTIONS = (
    Resolution((ONE_SITE, UP_TO_RAW), "telemetry"),
    Resolution((ONE_SITE, ABOVE_RAW, UP_TO_HOURLY), HOURLY),
    Resolution((ONE_SITE, ABOVE_HOURLY), DAILY),
)
COUNTY_RESOLUTIONS = (
    Resolution((ALL_SITES, UP_TO_HOURLY), COUNTY_HOURLY),
    Resolution((ALL_SITES, ABOVE_HOURLY), COUNTY_DAILY),
)


def site_query(resolution: Resolution, metric: str, site_type: str | None, by: str) -> str:
    """Mean of ``metric`` per ``by`` tag, for the chosen site, at one resolution."""
    column = metric if resolution.measurement == "telemetry" else f"{metric}_mean"
    return (
        f"SELECT mean({ident(column)}) AS {ident('mean')} FROM {ident(resolution.measurement)}"
        f" WHERE {gated(*resolution.gates)} AND {scope_filter(site_type)} AND $timeFilter"
        f" GROUP BY time($__interval), {ident(by)} fill(none)"
    )


def county_query(resolution: Resolution, metric: str, site_type: str | None) -> str:
    """Per county: the mean of the sites' means, and the lowest and highest site."""
    where = county_filter()
    if site_type is not None:
        where = f"{ident('site_type')} = {literal(site_type)} AND {where}"
    return (
        f"SELECT mean({ident(metric + '_mean')}) AS {ident('mean')},"
        f" min({ident(metric + '_min')}) AS {ident('lowest site')},"
        f" max({ident(metric + '_max')}) AS {ident('highest site')}"
        f" FROM {ident(resolution.measurement)}"
        f" WHERE {gated(*resolution.gates)} AND {where} AND $timeFilter"
        f" GROUP BY time($__interval), {ident('county')} fill(none)"
    )


def below_query(resolution: Resolution, metric: str, site_type: str) -> str:
    """Per county, the most sites below the metric's threshold at once in each interval."""
    return (
        f"SELECT max({ident(metric + '_below')}) AS {ident('sites below')}"
        f" FROM {ident(resolution.measurement)}"
        f" WHERE {gated(*resolution.gates[1:])} AND {ident('site_type')} = {literal(site_type)}"
        f" AND {county_filter()} AND $timeFilter"
        f" GROUP BY time($__interval), {ident('county')} fill(none)"
    )


def metric_targets(metric: str, site_type: str | None, by: str = "site_id") -> list[Json]:
    """A panel's targets for ``metric``: one per site resolution, one per county one."""
    targets = [target(site_query(r, metric, site_type, by), ref, alias=f"$tag_{by}")
               for r, ref in zip(SITE_RESOLUTIONS, "ABC", strict=True)]
    targets += [target(county_query(r, metric, site_type), ref, alias="$tag_county $col")
                for r, ref in zip(COUNTY_RESOLUTIONS, "DE", strict=True)]
    return targets


def scaled(panel: Json) -> Json:
    """A panel with Grafana's max data points set, so row counts stay bounded."""
    return {**panel, "maxDataPoints": MAX_DATA_POINTS}
