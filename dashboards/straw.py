"""Straw / 秸秆: for agronomists and county agricultural officials.

Answers "is the straw being used, how, and is anyone burning it?": tonnes used
by each of the plan's five uses, straw produced against straw used per county
(the indicator's own numerator and denominator, so produced is computed with
the official straw-to-grain ratios), harvests and utilisation per site, and
burning incidents — as a table per site and as red marks on every time series.
"""

from __future__ import annotations

from dashboards.builders import (
    Box,
    Json,
    annotation,
    barchart,
    dashboard,
    ident,
    literal,
    matrix,
    piechart,
    table,
    table_target,
    target,
    timeseries,
)
from dashboards.farm import (
    county_filter,
    latest_published,
    scope_filter,
    scope_variables,
    site_variable,
    year_filter,
)
from farm_contract import schema
from farm_contract.indicators import IndicatorId

STRAW = "straw"
USE_NAMES = {
    "fertilizer": "fertilizer 肥料化", "feed": "feed 饲料化", "fuel": "fuel 燃料化",
    "substrate": "substrate 基料化", "material": "material 原料化",
}


def _type(event_type: str) -> str:
    return f"{ident('type')} = {literal(event_type)}"


def utilisation_panels() -> list[Json]:
    by_use = (
        f"SELECT sum({ident('mass_t')}) AS {ident('mass_t')} FROM {ident(schema.EVENT)}"
        f" WHERE {_type('straw_utilized')} AND {scope_filter(STRAW)} AND $timeFilter"
        f" GROUP BY {ident('use')}"
    )
    over_time = (
        f"SELECT sum({ident('mass_t')}) FROM {ident(schema.EVENT)}"
        f" WHERE {_type('straw_utilized')} AND {scope_filter(STRAW)} AND $timeFilter"
        f" GROUP BY time($__interval), {ident('use')} fill(none)"
    )
    mappings = [{"options": {k: {"index": i, "text": v} for i, (k, v)
                             in enumerate(USE_NAMES.items())}, "type": "value"}]
    return [
        piechart("Utilisation by use / 五化利用构成", Box(0, 0, 9, 9), [table_target(by_use)],
                 description="Tonnes of straw used in the range by the plan's five uses: "
                             "fertilizer (returned to field), feed, fuel, substrate, material.",
                 defaults={"decimals": 1, "unit": "t", "mappings": mappings,
                           "displayName": "${__data.fields.use}"}),
        timeseries("Straw used by use / 秸秆利用量", Box(9, 0, 15, 9),
                   [target(over_time, alias="$tag_use")], unit="t", bars=True, stacked=True,
                   interval="7d",
                   description="Tonnes used per week (or longer interval), stacked by use. "
                               "Red marks: burning incidents."),
    ]


def harvest_panels() -> list[Json]:
    indicator = IndicatorId.STRAW_UTILIZATION_RATE.value
    per_county = latest_published(
        schema.INDICATOR, {"denominator": "produced_t", "numerator": "utilized_t"},
        f"{ident('indicator')} = {literal(indicator)}"
        f" AND {ident('scope')} = {literal('county')} AND {county_filter()}"
        f" AND {year_filter()}",
        ("county",),
    )
    per_site = (
        f"SELECT sum({ident('grain_t')}) AS {ident('grain_t')},"
        f" sum({ident('mass_t')}) AS {ident('utilized_t')} FROM {ident(schema.EVENT)}"
        f" WHERE ({_type('harvest')} OR {_type('straw_utilized')})"
        f" AND {scope_filter(STRAW)} AND $timeFilter GROUP BY {ident('site_id')}"
    )
    return [
        barchart("Straw produced vs used, by county / 秸秆产生量与利用量", Box(0, 9, 12, 9),
                 [table_target(per_county)], x_field="county",
                 description="The straw_utilization_rate indicator's denominator (grain "
                             "harvested × straw-to-grain ratio of the crop) and numerator "
                             "(tonnes used) for $year, as last published by the end of the "
                             "range: the numbers the city report uses.",
                 defaults={"decimals": 1, "unit": "t"}),
        table("Harvest and use per site / 各站点收获与利用", Box(12, 9, 12, 9),
              [table_target(per_site)],
              description="Grain harvested and straw used (tonnes) per straw site in the range.",
              rename={"site_id": "Site / 站点", "grain_t": "Grain t / 粮食产量(吨)",
                      "utilized_t": "Straw used t / 秸秆利用(吨)"},
              defaults={"decimals": 1}, sort=("Straw used t / 秸秆利用(吨)", True)),
    ]


def burning_panel() -> Json:
    """Harvests next to burning incidents per site: a site with a harvest and no burning is
    the good case, so the table always lists every straw site that harvested."""
    query = (
        f"SELECT count({ident('seq')}) AS {ident('events')} FROM {ident(schema.EVENT)}"
        f" WHERE ({_type('harvest')} OR {_type('straw_burning')})"
        f" AND {scope_filter(STRAW)} AND $timeFilter"
        f" GROUP BY {ident('site_id')}, {ident('type')}"
    )
    return table(
        "Burning incidents / 秸秆焚烧事件", Box(0, 18, 24, 7), [table_target(query)],
        description="Per straw site: harvests and burning incidents (straw_burning events, "
                    "e.g. from a smoke or thermal camera) in the range. Any burning is red.",
        before=[matrix("site_id", "type", "events")],
        rename={"site_id\\type": "Site / 站点", "harvest": "Harvests / 收获",
                "straw_burning": "Burning incidents / 焚烧"},
        overrides=[{"matcher": {"id": "byName", "options": "straw_burning"}, "properties": [
            {"id": "custom.cellOptions", "value": {"mode": "basic",
                                                   "type": "color-background"}},
            {"id": "thresholds", "value": {"mode": "absolute", "steps": [
                {"color": "green", "value": None}, {"color": "red", "value": 1}]}}]}],
        hide=(),
    )


def straw() -> Json:
    burning = (
        f"SELECT {ident('seq')}, {ident('site_id')} FROM {ident(schema.EVENT)}"
        f" WHERE {_type('straw_burning')} AND {scope_filter(STRAW)} AND $timeFilter"
    )
    return dashboard(
        "farm-straw", "Straw / 秸秆综合利用",
        [*utilisation_panels(), *harvest_panels(), burning_panel()],
        variables=[*scope_variables(), site_variable(STRAW, "Straw site / 秸秆站点")],
        annotations=[annotation("Straw burning / 秸秆焚烧", burning, "red", "site_id")],
        description="Straw used by the five uses, produced vs used, and burning incidents.",
        tags=("farm", "straw"), time_from="now/y",
    )

