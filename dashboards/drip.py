"""Drip irrigation / 膜下滴灌: for agronomists and farm managers of drip fields.

Answers "is the field getting the water it needs, and no more than its quota?":
soil moisture, flow and pressure per site; water used per mu against the site's
quota (the plan prices water progressively above the quota); fertigation volume.

Water and fertiliser are cumulative counters (``volume_m3``, ``fertilizer_l``),
so what was used in a time range is each device's ``spread`` (last − first; the
counter never decreases, ingest rejects a reading that would) added up per site.
Area and quota come from the ``site`` measurement (registry facts).
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
    steps,
    table,
    table_target,
    target,
    timeseries,
)
from dashboards.farm import county_filter, scope_filter, scope_variables, site_filter, site_variable
from farm_contract import schema
from farm_contract.schema import SITE as SITE_MEASUREMENT

DRIP = "drip"


def mean_per_site(metric: str) -> str:
    return (
        f"SELECT mean({ident(metric)}) FROM {ident(schema.TELEMETRY)}"
        f" WHERE {scope_filter(DRIP)} AND $timeFilter"
        f" GROUP BY time($__interval), {ident('site_id')} fill(none)"
    )


def used_per_site(counter: str, alias: str) -> str:
    """What a cumulative counter rose by in the range, per site (devices added up)."""
    return (
        f"SELECT sum({ident(alias)}) AS {ident(alias)} FROM ("
        f"SELECT spread({ident(counter)}) AS {ident(alias)} FROM {ident(schema.TELEMETRY)}"
        f" WHERE {scope_filter(DRIP)} AND $timeFilter"
        f" GROUP BY {ident('site_id')}, {ident('device_id')})"
        f" GROUP BY {ident('site_id')}"
    )


def used_per_interval(counter: str, alias: str) -> str:
    """What a cumulative counter rose by in each ``$__interval``, per site."""
    return (
        f"SELECT sum({ident(alias)}) AS {ident(alias)} FROM ("
        f"SELECT non_negative_difference(last({ident(counter)})) AS {ident(alias)}"
        f" FROM {ident(schema.TELEMETRY)} WHERE {scope_filter(DRIP)} AND $timeFilter"
        f" GROUP BY time($__interval), {ident('site_id')}, {ident('device_id')} fill(none))"
        f" WHERE $timeFilter GROUP BY time($__interval), {ident('site_id')} fill(none)"
    )


def water_vs_quota(box: Box) -> Json:
    facts = (
        f"SELECT last({ident('area_mu')}) AS {ident('area_mu')},"
        f" last({ident('water_quota_m3_per_mu')}) AS {ident('water_quota_m3_per_mu')}"
        f" FROM {ident(SITE_MEASUREMENT)}"
        f" WHERE {ident('site_type')} = 'drip' AND {county_filter()} AND {site_filter()}"
        f" GROUP BY {ident('site_id')}, {ident('name')}"
    )
    return table(
        "Water used per mu vs quota / 亩均用水与定额", box,
        [table_target(used_per_site("volume_m3", "water_m3"), "A"), table_target(facts, "B")],
        description="Water metered in the time range (Σ of each flow meter's rise) ÷ the "
                    "site's area, against its quota (m³/mu, registry). Pick 'This year' for "
                    "the annual quota. Share of quota: orange from 90 %, red above 100 %.",
        before=[join_by("site_id"),
                divide("water_m3", "area_mu", "water_m3_per_mu"),
                divide("water_m3_per_mu", "water_quota_m3_per_mu", "share_of_quota")],
        hide=("Time", "Time 1", "Time 2"),
        rename={"site_id": "Site / 站点", "name": "Name / 名称", "water_m3": "Water m³ / 用水量",
                "area_mu": "Area mu / 面积(亩)", "water_m3_per_mu": "m³ per mu / 亩均用水",
                "water_quota_m3_per_mu": "Quota m³/mu / 用水定额",
                "share_of_quota": "Share of quota / 定额占比"},
        defaults={"decimals": 1, "thresholds": steps(("green", None), ("orange", 0.9),
                                                     ("red", 1.0))},
        overrides=[colored_cells("share_of_quota", "percentunit", 0)],
        sort=("Share of quota / 定额占比", True),
    )


def drip_irrigation() -> Json:
    panels = [
        timeseries("Soil moisture / 土壤含水量", Box(0, 0, 12, 8),
                   [target(mean_per_site("soil_moisture_vwc"), alias="$tag_site_id")],
                   unit="m³/m³ (VWC)",
                   threshold_steps=steps(("orange", None), ("green", 0.2), ("blue", 0.4)),
                   description="Mean soil_moisture_vwc per site. Dashed lines: below 0.20 the "
                               "crop is short of water, above 0.40 the soil is waterlogged "
                               "(typical loam; adjust to the soil)."),
        timeseries("Flow / 流量", Box(12, 0, 12, 8),
                   [target(mean_per_site("flow_lpm"), alias="$tag_site_id")], unit="L/min",
                   description="Mean flow_lpm per site (0 while valves are shut)."),
        timeseries("Pressure / 管网压力", Box(0, 8, 12, 8),
                   [target(mean_per_site("pressure_kpa"), alias="$tag_site_id")], unit="kPa",
                   description="Mean pressure_kpa per site: a drop at constant flow hints at "
                               "a leak, a rise at a clogged emitter or filter."),
        timeseries("Water used / 用水量", Box(12, 8, 12, 8),
                   [target(used_per_interval("volume_m3", "water_m3"), alias="$tag_site_id")],
                   unit="m³", bars=True, stacked=True, interval="1d",
                   description="m³ metered per site and interval (at least a day), from the "
                               "cumulative volume_m3 counters."),
        water_vs_quota(Box(0, 16, 24, 8)),
        timeseries("Fertigation volume / 水肥一体化施肥量", Box(0, 24, 12, 8),
                   [target(used_per_interval("fertilizer_l", "fertilizer_l"),
                           alias="$tag_site_id")],
                   unit="litre", bars=True, stacked=True, interval="1d",
                   description="Litres of fertiliser solution dosed per site and interval, "
                               "from the cumulative fertilizer_l counters."),
        table("Fertigation total / 施肥总量", Box(12, 24, 12, 8),
              [table_target(used_per_site("fertilizer_l", "fertilizer_l"))],
              description="Litres dosed per site in the whole time range.",
              rename={"site_id": "Site / 站点", "fertilizer_l": "Fertiliser L / 施肥量(升)"},
              defaults={"decimals": 0}, sort=("Fertiliser L / 施肥量(升)", True)),
    ]
    return dashboard(
        "farm-drip", "Drip irrigation / 膜下滴灌", panels,
        variables=[*scope_variables(), site_variable(DRIP, "Drip site / 滴灌站点")],
        description="Soil moisture, flow, pressure, water against quota and fertigation of "
                    "the drip-irrigation fields.",
        tags=("farm", "drip"), time_from="now-30d",
    )
