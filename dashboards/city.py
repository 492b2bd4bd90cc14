"""City overview / 城市总览: the plan's four indicators, for county officials and the city.

Answers "are we on target?" at a glance: a gauge per indicator for the scope
chosen by ``$county`` (``all`` = the whole city), every county side by side
(worst first), each indicator's trend, and a map of every site with whether its
devices are online. Indicator values come from the ``indicator`` measurement the
ingest service writes back every minute, so they are the API's numbers.
"""

from __future__ import annotations

from dashboards.builders import (
    GRID_WIDTH,
    NO_DATA,
    Box,
    Json,
    barchart,
    bool_mappings,
    colored_cells,
    dashboard,
    data_link,
    field_override,
    gauge,
    geojson_layer,
    geomap,
    ident,
    join_by,
    literal,
    matrix,
    organize,
    table,
    table_target,
    target,
    timeseries,
)
from dashboards.farm import (
    COUNTY,
    DATONG,
    county_filter,
    latest_published,
    scope_variables,
    year_filter,
)
from dashboards.mapdata import COUNTY_SEATS, URL_PREFIX
from dashboards.members import members_url
from farm_contract import schema
from farm_contract.indicators import TARGETS, IndicatorId
from farm_contract.schema import SITE as SITE_MEASUREMENT

INDICATOR_NAMES: dict[IndicatorId, str] = {
    IndicatorId.MANURE_FACILITY_RATE: "Manure facility rate / 粪污处理设施配套率",
    IndicatorId.MANURE_LEDGER_COVERAGE: "Manure ledger coverage / 粪污利用台账覆盖率",
    IndicatorId.FILM_RECOVERY_RATE: "Film recovery rate / 农膜回收率",
    IndicatorId.STRAW_UTILIZATION_RATE: "Straw utilization rate / 秸秆综合利用率",
}


def indicator_filter(indicator: IndicatorId) -> str:
    """WHERE clause of one indicator for ``$county`` (``all`` = the city) and ``$year``."""
    return (
        f"{ident('indicator')} = {literal(indicator.value)}"
        f" AND {ident('county')} =~ /^${COUNTY}$/ AND {year_filter()}"
    )


def _gauges(indicators: list[IndicatorId]) -> list[Json]:
    width = GRID_WIDTH // len(indicators)
    out = []
    for i, indicator in enumerate(indicators):
        query = latest_published(schema.INDICATOR, {"value": "value"},
                                 indicator_filter(indicator))
        out.append(gauge(
            INDICATOR_NAMES[indicator], Box(i * width, 0, width, 7), query, TARGETS[indicator],
            description=(
                f"{indicator.value}: the figure of $year for the scope chosen above "
                f"({schema.CITY_COUNTY_TAG} = the whole city), as last published by the end "
                f"of the time range. Target {TARGETS[indicator]:g}; red more than 10 points "
                f"below it; {NO_DATA} where nothing counts (denominator 0). Click for the "
                "sites behind it."
            ),
            links=[data_link("Members / 构成明细", members_url(indicator.value))],
        ))
    return out


def _county_rows(columns: dict[str, str]) -> str:
    """Every county's latest published row of ``$year``, one per indicator."""
    return latest_published(
        schema.INDICATOR, columns,
        f"{ident('scope')} = {literal('county')} AND {year_filter()}",
        ("indicator", "county"),
    )


def _by_county() -> list[Json]:
    """The counties side by side: a bar chart and a sorted table with numerators."""
    bars = barchart(
        "Indicators by county / 各区县指标对比", Box(0, 7, 12, 10),
        [table_target(_county_rows({"value": "value"}))],
        x_field="county",
        description="Every indicator of $year in each county (targets 98 %, 100 %, 85 %, "
                    "90 %); no bar where the figure is n/a.",
        defaults={"decimals": 1, "max": 1, "min": 0, "unit": "percentunit"},
        transformations=[matrix("county", "indicator", "value"),
                         organize(rename={"county\\indicator": "county"})],
    )
    table_query = _county_rows({"value": "value", "numerator": "numerator",
                                "denominator": "denominator", "target": "target", "met": "met"})
    link = members_url("${__data.fields.indicator}", "${__data.fields.county}")
    ranked = table(
        "County ranking, worst first / 区县排名（由低到高）", Box(12, 7, 12, 10),
        [target(table_query)],
        description="Every county's figure of $year with its numerator and denominator "
                    "(tonnes or farms), sorted by value so the counties furthest from "
                    "target come first. Red below target − 10 points, orange below target; "
                    f"n/a (denominator 0) is {NO_DATA}, not 0 and not “not met”. Click a row "
                    "for its sites.",
        rename={"indicator": "Indicator / 指标", "county": "County / 区县",
                "value": "Value / 数值", "numerator": "Numerator / 分子",
                "denominator": "Denominator / 分母", "target": "Target / 目标",
                "met": "Met / 达标"},
        defaults={"decimals": 1, "thresholds": thresholds_by_value(), "noValue": NO_DATA,
                  "links": [data_link("Members / 构成明细", link)]},
        overrides=[colored_cells("value", "percentunit", 1),
                   colored_cells("target", "percentunit", 0),
                   field_override("met", mappings=bool_mappings(
                       "met / 达标", "not met / 未达标", NO_DATA))],
        sort=("Value / 数值", False),
    )
    return [bars, ranked]


def thresholds_by_value() -> Json:
    """Cell colours for a table mixing indicators: red below 75 %, orange below 90 %."""
    return {"mode": "absolute", "steps": [
        {"color": "red", "value": None}, {"color": "orange", "value": 0.75},
        {"color": "green", "value": 0.9}]}


def _trends(indicators: list[IndicatorId], top: int) -> list[Json]:
    out = []
    for i, indicator in enumerate(indicators):
        query = (
            f"SELECT last({ident('value')}) FROM {ident(schema.INDICATOR)}"
            f" WHERE {indicator_filter(indicator)} AND $timeFilter"
            f" GROUP BY time($__interval) fill(none)"
        )  # fill(none): an n/a stretch is a gap, never 0
        out.append(timeseries(
            f"{INDICATOR_NAMES[indicator]} (trend / 趋势)",
            Box((i % 2) * 12, top + (i // 2) * 8, 12, 8),
            [target(query, alias=indicator.value)],
            target_line=TARGETS[indicator], ratio=True,
            description=f"{indicator.value} of $year as published over the time range (how "
                        "the year's figure moved); the dashed line is the target; gaps "
                        "are n/a.",
        ))
    return out


def site_map(box: Box) -> Json:
    """Every site of ``$county`` on a map, green when its devices' last status is online."""
    facts = (
        f"SELECT last({ident('lat')}) AS {ident('lat')}, last({ident('lon')}) AS {ident('lon')}"
        f" FROM {ident(SITE_MEASUREMENT)} WHERE {county_filter()}"
        f" GROUP BY {ident('site_id')}, {ident('name')}, {ident('site_type')}, {ident('county')}"
    )
    online = (
        f"SELECT last({ident('online')}) AS {ident('online')}"
        f" FROM {ident(schema.DEVICE_STATUS)} WHERE {county_filter()} AND time <= ${{__to}}ms"
        f" GROUP BY {ident('site_id')}"
    )
    return geomap(
        "Sites and status / 站点分布与状态", box,
        [table_target(facts, "A"), table_target(online, "B")],
        color_field="online", center=DATONG, zoom=8,
        below=[geojson_layer("Counties / 区县", f"{URL_PREFIX}/{COUNTY_SEATS}")],
        description="Each registry site (lat/lon from the registry). Green: the latest "
                    "status message of the site's devices says online; red: offline (MQTT "
                    "last will); grey: no status yet. Status as of the end of the range. "
                    "Blue squares: the county-level divisions (a file Grafana serves, so "
                    "the map draws offline); map tiles only where the server sets them.",
        defaults={"mappings": bool_mappings("online / 在线", "offline / 离线",
                                            "no status / 无状态")},
        transformations=[join_by("site_id"), organize(hide=("Time", "Time 1", "Time 2"))],
    )


def site_status_table(box: Box) -> Json:
    """The map's data as a list, for reading names and finding the red ones."""
    online = (
        f"SELECT last({ident('online')}) AS {ident('online')}"
        f" FROM {ident(schema.DEVICE_STATUS)} WHERE {county_filter()} AND time <= ${{__to}}ms"
        f" GROUP BY {ident('site_id')}, {ident('county')}"
    )
    return table(
        "Site status / 站点状态", box, [target(online)],
        description="Latest status message per site, as on the map.",
        rename={"site_id": "Site / 站点", "county": "County / 区县", "online": "Online / 在线"},
        defaults={"mappings": bool_mappings("online / 在线", "offline / 离线",
                                            "no status / 无状态")},
        overrides=[{"matcher": {"id": "byName", "options": "online"}, "properties": [
            {"id": "custom.cellOptions", "value": {"type": "color-text"}}]}],
        sort=("Online / 在线", False),
    )


def city_overview() -> Json:
    indicators = list(IndicatorId)
    panels = [*_gauges(indicators), *_by_county(), *_trends(indicators, 17)]
    panels.append(site_map(Box(0, 33, 16, 12)))
    panels.append(site_status_table(Box(16, 33, 8, 12)))
    return dashboard(
        "farm-city-overview", "City overview / 城市总览", panels, variables=scope_variables(),
        description="Datong's green-agriculture indicators against the plan's targets, per "
                    "county, over time, and every site on a map.",
        tags=("farm", "indicators"), time_from="now/y",
    )
