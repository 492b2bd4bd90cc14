"""Livestock manure / 畜禽粪污: for farm managers and county livestock officials.

Answers "is any lagoon about to overflow, is every facility working, and is the
ledger kept?": lagoon levels with warning (80 %) and overflow (90 %) lines, each
farm's facility readings, the facilities whose latest event is a fault (what
``manure_facility_rate`` counts against a farm), and the ledger — tonnes treated
and used, by use.
"""

from __future__ import annotations

from dashboards.builders import (
    NO_DATA,
    Box,
    Json,
    bargauge,
    colored_cells,
    dashboard,
    field_override,
    ident,
    keep_rows,
    literal,
    row,
    stat,
    steps,
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
    site_filter,
    site_variable,
)
from dashboards.resolution import metric_targets, scaled
from farm_contract import schema

MANURE = "manure"
LIVE_FRESH = "1h"
"""A ``facility_live`` point older than this before the end of the range is not "now": the
publisher writes them every minute, so older ones are of farms since removed or moved, or
of a publisher that stopped (then the panels are empty rather than stale)."""
LIVE_SHARE_STEPS = steps(("red", None), ("orange", 0.8), ("green", 0.95))
LAGOON_STEPS = steps(("green", None), ("orange", 80), ("red", 90))


def _types(*types: str) -> str:
    return "(" + " OR ".join(f"{ident('type')} = {literal(t)}" for t in types) + ")"


def lagoon_panels() -> list[Json]:
    latest = (
        f"SELECT last({ident('lagoon_level_pct')}) AS {ident('lagoon_level_pct')}"
        f" FROM {ident(schema.TELEMETRY)} WHERE {scope_filter(MANURE)} AND $timeFilter"
        f" GROUP BY {ident('site_id')}"
    )
    return [
        scaled(timeseries("Lagoon level / 储粪池液位", Box(0, 0, 16, 9),
                          metric_targets("lagoon_level_pct", MANURE), unit="percent",
                          threshold_steps=LAGOON_STEPS,
                          description="Mean lagoon_level_pct: one farm chosen, per farm "
                                      "(raw, hourly or daily by range); all farms, per "
                                      "county the mean and the lowest and highest farm. "
                                      "Orange line 80 %: plan an emptying; red line 90 %: "
                                      "overflow risk.")),
        bargauge("Latest lagoon level / 当前液位", Box(16, 0, 8, 9), [table_target(latest)],
                 description="Each farm's latest level in the range; red from 90 % "
                             "(overflow warning / 溢出预警), orange from 80 %.",
                 defaults={"decimals": 0, "max": 100, "min": 0, "unit": "percent",
                           "thresholds": LAGOON_STEPS, "displayName": "${__data.fields.site_id}"}),
    ]


def facility_panels() -> list[Json]:
    readings = (
        f"SELECT last({ident('lagoon_level_pct')}) AS {ident('lagoon_level_pct')},"
        f" last({ident('digester_temp_c')}) AS {ident('digester_temp_c')},"
        f" last({ident('biogas_m3h')}) AS {ident('biogas_m3h')},"
        f" last({ident('separator_on')}) AS {ident('separator_on')},"
        f" last({ident('pump_on')}) AS {ident('pump_on')},"
        f" last({ident('nh3_ppm')}) AS {ident('nh3_ppm')}"
        f" FROM {ident(schema.TELEMETRY)} WHERE {scope_filter(MANURE)} AND $timeFilter"
        f" GROUP BY {ident('site_id')}"
    )
    faults = (
        f"SELECT last({ident('seq')}) AS {ident('seq')}, {ident('type')}"
        f" FROM {ident(schema.EVENT)}"
        f" WHERE {_types('facility_fault', 'facility_ok')} AND {scope_filter(MANURE)}"
        f" AND time <= ${{__to}}ms GROUP BY {ident('site_id')}, {ident('facility')}"
    )
    return [
        table("Facility status / 设施运行状态", Box(0, 9, 14, 9), [table_target(readings)],
              description="Latest readings of each farm's devices in the range.",
              rename={"site_id": "Farm / 养殖场", "lagoon_level_pct": "Lagoon % / 液位",
                      "digester_temp_c": "Digester °C / 沼气池温度",
                      "biogas_m3h": "Biogas m³/h / 沼气产量",
                      "separator_on": "Separator / 固液分离",
                      "pump_on": "Pump / 泵", "nh3_ppm": "NH₃ ppm / 氨气"},
              defaults={"decimals": 1, "thresholds": LAGOON_STEPS},
              overrides=[colored_cells("lagoon_level_pct", "percent", 0)],
              sort=("Lagoon % / 液位", True)),
        table("Open faults / 未修复故障", Box(14, 9, 10, 9), [table_target(faults)],
              description="Facilities whose latest facility event, up to the end of the range, "
                          "is a fault with no facility_ok after it. Such a farm does not "
                          "count as equipped (manure_facility_rate). Empty is good.",
              before=[keep_rows("type", "facility_fault")],
              hide=("seq", "type"),
              rename={"Time": "Since / 故障时间", "site_id": "Farm / 养殖场",
                      "facility": "Facility / 设施"},
              sort=("Since / 故障时间", False)),
    ]


def ledger_panels() -> list[Json]:
    over_time = (
        f"SELECT sum({ident('mass_t')}) FROM {ident(schema.EVENT)}"
        f" WHERE {_types('manure_treated', 'manure_utilized')} AND {scope_filter(MANURE)}"
        f" AND $timeFilter GROUP BY time($__interval), {ident('type')} fill(none)"
    )
    ledger = (
        f"SELECT sum({ident('mass_t')}) AS {ident('mass_t')}, count({ident('mass_t')})"
        f" AS {ident('entries')} FROM {ident(schema.EVENT)}"
        f" WHERE {_types('manure_treated', 'manure_utilized')} AND {scope_filter(MANURE)}"
        f" AND $timeFilter GROUP BY {ident('site_id')}, {ident('type')}, {ident('use')}"
    )
    return [
        timeseries("Manure treated and used / 粪污处理与利用量", Box(0, 18, 12, 9),
                   [target(over_time, alias="$tag_type")], unit="t", bars=True, interval="7d",
                   description="Tonnes recorded in the ledger per week (or longer interval): "
                               "manure_treated and manure_utilized events."),
        table("Ledger / 粪污资源化利用台账", Box(12, 18, 12, 9), [table_target(ledger)],
              description="Tonnes and number of ledger entries per farm, kind and use "
                          "(fertilizer, energy, bedding, other) in the range. A large-scale "
                          "farm missing here has no ledger for the period.",
              rename={"site_id": "Farm / 养殖场", "type": "Entry / 类型", "use": "Use / 用途",
                      "mass_t": "Tonnes / 吨", "entries": "Entries / 条数"},
              defaults={"decimals": 1}),
    ]


def _live_where(scope: str) -> str:
    """The ``facility_live`` points of the last hour before the end of the range."""
    return (f"{ident('scope')} {scope} AND time <= ${{__to}}ms"
            f" AND time > ${{__to}}ms - {LIVE_FRESH}")


def live_panels(top: int) -> list[Json]:
    """Operational, not the plan's indicator: live = reported in the last 24 h and no
    facility fault open (docs/indicators.md, "Facilities live now")."""
    share = latest_published(
        schema.FACILITY_LIVE, {"share": "share", "live_farms": "live_farms", "farms": "farms"},
        f"{_live_where('!= ' + literal('farm'))} AND {ident('county')} =~ /^$county$/",
        always="farms")
    farms = latest_published(
        schema.FACILITY_LIVE, {"live": "live", "name": "name", "reason": "reason"},
        f"{_live_where('= ' + literal('farm'))} AND {county_filter()} AND {site_filter()}",
        ("county", "site_id"), always="live")
    not_live = (f"SELECT {ident('name')}, {ident('reason')} FROM ({farms})"
                f" WHERE {ident('live')} = false"
                f" GROUP BY {ident('county')}, {ident('site_id')} ORDER BY time DESC")
    return [
        row("Facilities live now (operational) / 设施实时运行（运行监测）", top),
        stat("Facilities live now / 设施实时运行", Box(0, top + 1, 8, 8), share,
             description="Operational figure, not the plan's indicator "
                         "(manure_facility_rate, a property of the year): the share of the "
                         "large-scale farms in effect today (of $county; all = the city) that "
                         "are live — their manure telemetry reported in the last 24 h and no "
                         "facility fault is open — with the live and all large-scale farms. "
                         "As last published (every minute) in the hour before the end of the "
                         f"range; a county without large-scale farms shows {NO_DATA}.",
             defaults={"decimals": 0, "thresholds": steps(("text", None))},
             overrides=[
                 field_override("share", unit="percentunit", decimals=1,
                                displayName="Live share / 运行率",
                                thresholds=LIVE_SHARE_STEPS),
                 field_override("live_farms", displayName="Live / 运行中"),
                 field_override("farms", displayName="Large-scale farms / 规模养殖场"),
             ]),
        table("Farms not live / 未实时运行的养殖场", Box(8, top + 1, 16, 8), [target(not_live)],
              description="Each large-scale farm of $county that is not live now, and why: "
                          "no manure reading in the last 24 h (with its last reading), or a "
                          "facility fault open since its report. Operational, not the plan's "
                          "indicator. Empty is good.",
              rename={"county": "County / 区县", "site_id": "Farm / 养殖场",
                      "name": "Name / 名称", "reason": "Why / 原因"},
              sort=("Farm / 养殖场", False)),
    ]


def livestock_manure() -> Json:
    return dashboard(
        "farm-manure", "Livestock manure / 畜禽粪污", [
            *lagoon_panels(), *facility_panels(), *ledger_panels(), *live_panels(27)],
        variables=[*scope_variables(), site_variable(MANURE, "Farm / 养殖场")],
        description="Lagoon levels with overflow warnings, facility status and open faults, "
                    "and the manure ledger of the livestock farms.",
        tags=("farm", "manure"), time_from="now-30d",
    )
