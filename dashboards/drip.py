"""Drip irrigation / 膜下滴灌: for agronomists and farm managers of drip fields.

Answers "is the field getting the water it needs, and no more than its quota?":
soil moisture, flow and pressure per site; water used per mu against the site's
quota (the plan prices water progressively above the quota); fertigation volume.

Water and fertiliser are cumulative counters (``volume_m3``, ``fertilizer_l``);
the ingest service rolls each device's daily rise up per site (``site_use_1d``) and
county (``telemetry_county_1d``), which the use panels add up. Area and quota come
from the ``site`` measurement (registry facts). Time series pick raw readings or
roll-ups by range, and county aggregates for "All" (dashboards/resolution.py). The
use tables have a row per site for one county (or one site) and a row per county for
the whole city — thousands of sites are no table anyone reads, nor a 1 s query (issue
15) — with the devices dashboard's ``$county`` gates (dashboards/devices.py).
"""

from __future__ import annotations

from dashboards.builders import (
    Box,
    Json,
    colored_cells,
    dashboard,
    divide,
    ident,
    join_by,
    literal,
    steps,
    table,
    table_target,
    target,
    timeseries,
)
from dashboards.devices import ALL_COUNTIES, ONE_COUNTY
from dashboards.farm import (
    county_filter,
    scope_filter,
    scope_variables,
    site_filter,
    site_variable,
)
from dashboards.resolution import (
    ALL_SITES,
    COUNTY_DAILY,
    COUNTY_RESOLUTIONS,
    ONE_SITE,
    SITE_USE,
    below_query,
    metric_targets,
    scaled,
)
from farm_contract.schema import CITY_COUNTY_TAG
from farm_contract.schema import SITE as SITE_MEASUREMENT
from ingest_service.telemetry.rollups import BELOW

DRIP = "drip"
WATER_PER_SITE = "Water used per mu vs quota / 亩均用水与定额"
WATER_BY_COUNTY = "Water per mu by county / 各区县亩均用水"
SITE_GATES = ((ONE_COUNTY,), (ALL_COUNTIES, ONE_SITE))
"""Per-site rows: one county chosen, or one site of the whole city (InfluxQL gates
cannot say OR, so each per-site query comes twice, one per gate set)."""


def empty_by_design(county: str, site: str) -> frozenset[str]:
    """The panels whose every target is gated off for these ``$county``/``$site`` values:
    the per-site quota table for the whole city and all its sites (thousands of rows; the
    per-county table stands in), the per-county one when a site is chosen."""
    if site not in (".*", "$__all"):
        return frozenset({WATER_BY_COUNTY})
    return frozenset({WATER_PER_SITE}) if county == CITY_COUNTY_TAG else frozenset()


def used_per_site(field_name: str, gates: tuple[str, ...]) -> str:
    """What each site used in the range (its devices' daily rises, from ``site_use_1d``)."""
    return (
        f"SELECT sum({ident(field_name)}) AS {ident(field_name)} FROM {ident(SITE_USE)}"
        f" WHERE {' AND '.join(gates)} AND {scope_filter(DRIP)} AND $timeFilter"
        f" GROUP BY {ident('site_id')}"
    )


def used_per_county(field_name: str, *gates: str) -> str:
    """What each county's drip sites used in the range: the county daily roll-up
    (``telemetry_county_1d``), whose daily ``water_m3``/``fertilizer_l`` are the sums of
    the sites' ``site_use_1d`` points of that day — ≤ 10 counties × 365 days read."""
    where = " AND ".join((*gates, f"{ident('site_type')} = {literal(DRIP)}"))
    return (
        f"SELECT sum({ident(field_name)}) AS {ident(field_name)} FROM {ident(COUNTY_DAILY)}"
        f" WHERE {where}"
        f" AND {county_filter()} AND $timeFilter GROUP BY {ident('county')}"
    )


def used_targets(field_name: str) -> list[Json]:
    """Daily use bars: per site when one is chosen, per county for "All"."""
    one = (
        f"SELECT sum({ident(field_name)}) AS {ident(field_name)} FROM {ident(SITE_USE)}"
        f" WHERE {ONE_SITE} AND {scope_filter(DRIP)} AND $timeFilter"
        f" GROUP BY time($__interval), {ident('site_id')} fill(none)"
    )
    every = (
        f"SELECT sum({ident(field_name)}) AS {ident(field_name)} FROM {ident(COUNTY_DAILY)}"
        f" WHERE {ALL_SITES} AND {ident('site_type')} = {literal(DRIP)} AND {county_filter()}"
        f" AND $timeFilter GROUP BY time($__interval), {ident('county')} fill(none)"
    )
    return [target(one, "A", alias="$tag_site_id"), target(every, "B", alias="$tag_county")]


def dry_sites(box: Box) -> Json:
    targets = [target(below_query(r, "soil_moisture_vwc", DRIP), ref, alias="$tag_county")
               for r, ref in zip(COUNTY_RESOLUTIONS, "AB", strict=True)]
    return scaled(timeseries(
        "Dry sites / 缺水站点数", box, targets, unit="short", bars=True, stacked=True,
        description="Per county (whatever site is chosen): the most sites at once whose "
                    f"mean soil moisture was below {BELOW['soil_moisture_vwc']:.2f} in an hour "
                    "(ranges up to 60 days) or a day (longer)."))


SHARE_THRESHOLDS = steps(("green", None), ("orange", 0.9), ("red", 1.0))
WATER_RENAME = {"water_m3": "Water m³ / 用水量", "area_mu": "Area mu / 面积(亩)",
                "water_m3_per_mu": "m³ per mu / 亩均用水",
                "water_quota_m3_per_mu": "Quota m³/mu / 用水定额",
                "share_of_quota": "Share of quota / 定额占比"}


def site_facts(gates: tuple[str, ...]) -> str:
    return (
        f"SELECT last({ident('area_mu')}) AS {ident('area_mu')},"
        f" last({ident('water_quota_m3_per_mu')}) AS {ident('water_quota_m3_per_mu')}"
        f" FROM {ident(SITE_MEASUREMENT)}"
        f" WHERE {' AND '.join(gates)} AND {ident('site_type')} = 'drip' AND {county_filter()}"
        f" AND {site_filter()} GROUP BY {ident('site_id')}, {ident('name')}"
    )


def water_vs_quota(box: Box) -> Json:
    """Per site of the chosen county (or the chosen site); empty for the whole city with
    all its sites (see :func:`water_by_county`)."""
    (one, city), refs = SITE_GATES, iter("ABCD")
    targets = [table_target(q, next(refs)) for gates in (one, city)
               for q in (used_per_site("water_m3", gates), site_facts(gates))]
    return table(
        WATER_PER_SITE, box, targets,
        description="One county (or one site) chosen: per site, water metered in the time "
                    "range (Σ of each flow meter's rise) ÷ the site's area, against its quota "
                    "(m³/mu, registry). The whole city, all sites: empty, see the per-county "
                    "table beside. "
                    "Pick 'This year' for the annual quota. Share of quota: orange from "
                    "90 %, red above 100 %.",
        before=[join_by("site_id"),
                divide("water_m3", "area_mu", "water_m3_per_mu"),
                divide("water_m3_per_mu", "water_quota_m3_per_mu", "share_of_quota")],
        hide=("Time", "Time 1", "Time 2", "Time 3", "Time 4"),
        rename={"site_id": "Site / 站点", "name": "Name / 名称", **WATER_RENAME},
        defaults={"decimals": 1, "thresholds": SHARE_THRESHOLDS},
        overrides=[colored_cells("share_of_quota", "percentunit", 0)],
        sort=("Share of quota / 定额占比", True),
    )


def county_areas(*gates: str) -> str:
    """Per county: the drip sites' area, the area of those with a quota and the quota
    volume Σ area × quota, from each site's latest registry point.

    One aggregate per site (``last`` with the quota as its companion field) and three
    per county: InfluxDB 1.x runs the subquery once per outer aggregate, so each one
    more costs ~0.15 s at 5,000 sites (docs/performance.md)."""
    area, quota = ident("area_mu"), ident("water_quota_m3_per_mu")
    quota_area, quota_m3 = ident("quota_area_mu"), ident("quota_m3")
    where = " AND ".join((*gates, f"{ident('site_type')} = {literal(DRIP)}"))
    latest = (
        f"SELECT last({area}) AS {area}, {quota} FROM {ident(SITE_MEASUREMENT)}"
        f" WHERE {where} AND {county_filter()} GROUP BY {ident('site_id')}, {ident('county')}"
    )
    per_site = (f"SELECT {area}, {area} + 0 * {quota} AS {quota_area},"
                f" {area} * {quota} AS {quota_m3} FROM ({latest})")
    return (
        f"SELECT sum({area}) AS {area}, sum({quota_area}) AS {quota_area},"
        f" sum({quota_m3}) AS {quota_m3} FROM ({per_site}) GROUP BY {ident('county')}"
    )


def water_by_county(box: Box) -> Json:
    """Per county (≤ 10 rows whatever the number of sites): the city's quota table."""
    return table(
        WATER_BY_COUNTY, box,
        [table_target(used_per_county("water_m3", ALL_SITES), "A"),
         table_target(county_areas(ALL_SITES), "B")],
        description="Per county (of the chosen scope; empty when one site is chosen): water "
                    "metered in the time range by its drip sites (county daily roll-up, the "
                    "sum of the sites' rows) ÷ the sites' area, against the area-weighted "
                    "quota (Σ area × quota ÷ the area of the sites that have one). Share of "
                    "quota: orange from 90 %, red above 100 %.",
        before=[join_by("county"),
                divide("water_m3", "area_mu", "water_m3_per_mu"),
                divide("quota_m3", "quota_area_mu", "water_quota_m3_per_mu"),
                divide("water_m3_per_mu", "water_quota_m3_per_mu", "share_of_quota")],
        hide=("Time", "Time 1", "Time 2", "quota_area_mu", "quota_m3"),
        rename={"county": "County / 区县", **WATER_RENAME},
        defaults={"decimals": 1, "thresholds": SHARE_THRESHOLDS},
        overrides=[colored_cells("share_of_quota", "percentunit", 0)],
        sort=("Share of quota / 定额占比", True),
    )


def fertigation_total(box: Box) -> Json:
    """Per site of the chosen county (or the chosen site); per county for the whole city."""
    one, city = SITE_GATES
    return table(
        "Fertigation total / 施肥总量", box,
        [table_target(used_per_site("fertilizer_l", one), "A"),
         table_target(used_per_county("fertilizer_l", ALL_COUNTIES, ALL_SITES), "B"),
         table_target(used_per_site("fertilizer_l", city), "C")],
        description="Litres dosed in the whole time range (daily roll-ups): per site when "
                    "one county or one site is chosen, per county for the whole city.",
        rename={"site_id": "Site / 站点", "county": "County / 区县",
                "fertilizer_l": "Fertiliser L / 施肥量(升)"},
        defaults={"decimals": 0}, sort=("Fertiliser L / 施肥量(升)", True))


def drip_irrigation() -> Json:
    spread = ("One site: its mean. All sites: per county, the mean of the sites' means "
              "and the lowest and highest site (the spread). Raw readings up to 2 days, "
              "hourly roll-ups up to 60 days, daily beyond.")
    panels = [
        scaled(timeseries("Soil moisture / 土壤含水量", Box(0, 0, 12, 8),
                          metric_targets("soil_moisture_vwc", DRIP), unit="m³/m³ (VWC)",
                          threshold_steps=steps(("orange", None), ("green", 0.2), ("blue", 0.4)),
                          description="soil_moisture_vwc. " + spread + " Dashed lines: below "
                                      "0.20 the crop is short of water, above 0.40 the soil is "
                                      "waterlogged (typical loam; adjust to the soil).")),
        scaled(timeseries("Flow / 流量", Box(12, 0, 12, 8), metric_targets("flow_lpm", DRIP),
                          unit="L/min",
                          description="flow_lpm (0 while valves are shut). " + spread)),
        scaled(timeseries("Pressure / 管网压力", Box(0, 8, 12, 8),
                          metric_targets("pressure_kpa", DRIP), unit="kPa",
                          description="pressure_kpa: a drop at constant flow hints at a leak, "
                                      "a rise at a clogged emitter or filter. " + spread)),
        scaled(timeseries("Water used / 用水量", Box(12, 8, 12, 8), used_targets("water_m3"),
                          unit="m³", bars=True, stacked=True, interval="1d",
                          description="m³ metered per interval (at least a day), from the "
                                      "cumulative volume_m3 counters' daily rises "
                                      "(site_use_1d): per site when one is chosen, per county "
                                      "for all sites.")),
        water_vs_quota(Box(0, 16, 14, 8)),
        water_by_county(Box(14, 16, 10, 8)),
        scaled(timeseries("Fertigation volume / 水肥一体化施肥量", Box(0, 24, 12, 8),
                          used_targets("fertilizer_l"), unit="litre", bars=True, stacked=True,
                          interval="1d",
                          description="Litres of fertiliser solution dosed per interval, from "
                                      "the cumulative fertilizer_l counters' daily rises: per "
                                      "site when one is chosen, per county for all sites.")),
        fertigation_total(Box(12, 24, 12, 8)),
        dry_sites(Box(0, 32, 24, 8)),
    ]
    return dashboard(
        "farm-drip", "Drip irrigation / 膜下滴灌", panels,
        variables=[*scope_variables(), site_variable(DRIP, "Drip site / 滴灌站点")],
        description="Soil moisture, flow, pressure, water against quota and fertigation of "
                    "the drip-irrigation fields.",
        tags=("farm", "drip"), time_from="now-30d",
    )
