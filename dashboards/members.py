"""Indicator members / 指标构成明细: what one figure is made of (issue 13, drill-down).

Opened from a gauge or a county row of the city overview (a data link carrying the
indicator, ``$county`` and ``$year``), it lists the sites behind the figure — each
site's numerator and denominator and, for the facility rate, whether the farm counts
as equipped — next to the figure itself and the members' sums, which equal the
figure's numerator and denominator. The rows are the ``indicator_member`` points the
ingest service publishes with the indicators (contract §9).
"""

from __future__ import annotations

from dashboards.builders import (
    NO_DATA,
    Box,
    Json,
    bool_mappings,
    custom_variable,
    dashboard,
    ident,
    literal,
    table,
    target,
)
from dashboards.farm import (
    COUNTY,
    YEAR,
    county_filter,
    latest_published,
    scope_variables,
    year_filter,
)
from farm_contract import schema
from farm_contract.indicators import IndicatorId

UID = "farm-indicator-members"
INDICATOR = "indicator"
MEMBER_MEASUREMENT = "indicator_member"
"""Written by ingest_service/indicators/publisher.py (``INDICATOR_MEMBER``)."""


def members_url(indicator: str, county: str = f"${{{COUNTY}}}") -> str:
    """The drill-down of ``indicator`` for a county and ``$year``, keeping the time range."""
    return (f"/d/{UID}/indicator-members?var-{INDICATOR}={indicator}&var-{COUNTY}={county}"
            f"&var-{YEAR}=${{{YEAR}}}&${{__url_time_range}}")


def _member_where() -> str:
    return (f"{ident('indicator')} = {literal('$' + INDICATOR)} AND {county_filter()}"
            f" AND {year_filter()}")


def _latest_members(columns: dict[str, str]) -> str:
    """Each site's latest member point of the year, former members (``member=false``) out."""
    inner = latest_published(
        MEMBER_MEASUREMENT, {"member": "member", **columns}, _member_where(),
        ("county", "site_id"))
    names = ", ".join(ident(name) for name in columns.values())
    return (f"SELECT {names} FROM ({inner}) WHERE {ident('member')} = true"
            f" GROUP BY {ident('county')}, {ident('site_id')} ORDER BY time DESC")


def member_table() -> Json:
    query = _latest_members({"name": "name", "numerator": "numerator",
                             "denominator": "denominator", "status": "status"})
    return table(
        "Members / 构成站点", Box(0, 5, 24, 14), [target(query)],
        description="Every site counted in the figure of $indicator for $county in $year: "
                    "its numerator and denominator (tonnes, or 1 per farm) and, for the "
                    "facility rate, equipped or not. Their sums are the figure's.",
        rename={"county": "County / 区县", "site_id": "Site / 站点", "name": "Name / 名称",
                "numerator": "Numerator / 分子", "denominator": "Denominator / 分母",
                "status": "Status / 状态"},
        defaults={"decimals": 3},
        sort=("Numerator / 分子", False),
    )


def figure_panels() -> list[Json]:
    """The figure itself, and the members' sums beside it: they must agree."""
    figure = latest_published(
        schema.INDICATOR,
        {"value": "value", "numerator": "numerator", "denominator": "denominator",
         "target": "target", "met": "met"},
        f"{ident('indicator')} = {literal('$' + INDICATOR)}"
        f" AND {ident('county')} =~ /^${COUNTY}$/ AND {year_filter()}",
    )
    members = _latest_members({"numerator": "numerator", "denominator": "denominator"})
    sums = (f"SELECT sum({ident('numerator')}) AS {ident('numerator')},"
            f" sum({ident('denominator')}) AS {ident('denominator')},"
            f" count({ident('denominator')}) AS {ident('sites')} FROM ({members})"
            " ORDER BY time DESC")  # InfluxDB orders a query as its subqueries
    return [
        table("Figure / 指标值", Box(0, 0, 14, 5), [target(figure)],
              description="The published figure of $indicator for $county in $year. n/a "
                          f"(denominator 0) shows as {NO_DATA}, never 0 or not met.",
              rename={"value": "Value / 数值", "numerator": "Numerator / 分子",
                      "denominator": "Denominator / 分母", "target": "Target / 目标",
                      "met": "Met / 达标"},
              defaults={"decimals": 3,
                        "mappings": bool_mappings("met / 达标", "not met / 未达标", NO_DATA)}),
        table("Members' sums / 明细合计", Box(14, 0, 10, 5), [target(sums)],
              description="The sums over the members listed below: equal to the figure's "
                          "numerator and denominator.",
              rename={"numerator": "Σ numerator / 分子合计",
                      "denominator": "Σ denominator / 分母合计", "sites": "Sites / 站点数"},
              defaults={"decimals": 3}),
    ]


def indicator_members() -> Json:
    indicators = [i.value for i in IndicatorId]
    return dashboard(
        UID, "Indicator members / 指标构成明细", [*figure_panels(), member_table()],
        variables=[*scope_variables(),
                   custom_variable(INDICATOR, "Indicator / 指标", indicators, indicators[0])],
        description="The sites behind one indicator figure, for a county (or the city) and "
                    "a year: open it from a gauge of the city overview.",
        tags=("farm", "indicators"), time_from="now/y",
    )
