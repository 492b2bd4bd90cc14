"""Livestock manure / 畜禽粪污: for farm managers and county livestock officials.

Answers "is any lagoon about to overflow, is every facility working, and is the
ledger kept?": lagoon levels with warning (80 %) and overflow (90 %) lines, each
farm's facility readings, the facilities whose latest event is a fault (what
``manure_facility_rate`` counts against a farm), and the ledger — tonnes treated
and used, by use.
"""

from __future__ import annotations

from dashboards.builders import (
    Box,
    Json,
    bargauge,
    colored_cells,
    dashboard,
    ident,
    keep_rows,
    literal,
    steps,
    table,
    table_target,
    target,
    timeseries,
)
from dashboards.farm import scope_filter, scope_variables, site_variable
from dashboards.resolution import metric_targets, scaled
from farm_contract import schema

MANURE = "manure"
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


def livestock_manure() -> Json:
    return dashboard(
        "farm-manure", "Livestock manure / 畜禽粪污", [
            *lagoon_panels(), *facility_panels(), *ledger_panels()],
        variables=[*scope_variables(), site_variable(MANURE, "Farm / 养殖场")],
        description="Lagoon levels with overflow warnings, facility status and open faults, "
                    "and the manure ledger of the livestock farms.",
        tags=("farm", "manure"), time_from="now-30d",
    )
