"""Devices / 设备: for whoever keeps the field devices running.

Answers "which device needs a visit?": when each device was last heard from,
whether its MQTT session is online (birth message) or offline (last will),
battery voltage and radio signal, and which messages ingest refused and why.
Rejections carry no county (they are refused before the registry is consulted),
so those two panels show the whole city whatever ``$county`` says.
"""

from __future__ import annotations

from dashboards.builders import (
    Box,
    Json,
    bool_mappings,
    dashboard,
    field_override,
    ident,
    join_by,
    literal,
    steps,
    table,
    table_target,
    target,
    timeseries,
)
from dashboards.farm import COUNTY, scope_filter, scope_variables, site_variable
from dashboards.resolution import LAST_SEEN, metric_targets, scaled
from farm_contract import schema
from farm_contract.schema import CITY_COUNTY_TAG
from ingest_service.telemetry.rollups import BELOW

RESOLUTIONS = "Raw readings up to 2 days, hourly roll-ups up to 60 days, daily beyond."
ONLINE = bool_mappings("online / 在线", "offline / 离线", "no status / 无状态")


ONE_COUNTY = f"{literal('$' + COUNTY)} != {literal(CITY_COUNTY_TAG)}"
ALL_COUNTIES = f"{literal('$' + COUNTY)} = {literal(CITY_COUNTY_TAG)}"
LOW_BATTERY_V = BELOW["battery_v"]
WEAK_SIGNAL_DBM = BELOW["rssi_dbm"]


def last_seen_per_device(gates: tuple[str, ...], *group: str) -> str:
    """Each device's latest last-seen state in the 400 days before the range's end.

    The gates (dashboards/resolution.py) lead the WHERE, so a gated-off target reads
    nothing."""
    return (
        f"SELECT last({ident('seen_ms')}) AS {ident('seen_ms')},"
        f" last({ident('battery_v')}) AS {ident('battery_v')},"
        f" last({ident('rssi_dbm')}) AS {ident('rssi_dbm')} FROM {ident(LAST_SEEN)}"
        f" WHERE {' AND '.join((*gates, scope_filter()))}"
        f" AND time <= ${{__to}}ms AND time >= ${{__to}}ms - 400d"
        f" GROUP BY {', '.join(ident(tag) for tag in group)}"
    )


CITY_LIST = 500
"""Devices listed for the whole city: those heard from longest ago."""


def device_table(box: Box) -> Json:
    """One row per device of the chosen county; for the whole city the
    :data:`CITY_LIST` heard from longest ago (10,000 rows is no table anyone reads)."""
    columns = f"{ident('seen_ms')}, {ident('battery_v')}, {ident('rssi_dbm')}"
    every = (
        f"SELECT {columns} FROM ({last_seen_per_device((ONE_COUNTY,), 'device_id', 'site_id')})"
        f" GROUP BY {ident('device_id')}, {ident('site_id')}"
    )
    oldest = (
        f"SELECT bottom({ident('seen_ms')}, {ident('device_id')}, {CITY_LIST})"
        f" AS {ident('seen_ms')}, {ident('site_id')}, {ident('battery_v')}, {ident('rssi_dbm')}"
        f" FROM ({last_seen_per_device((ALL_COUNTIES,), 'device_id', 'site_id')})"
    )
    status = (
        f"SELECT last({ident('online')}) AS {ident('online')}"
        f" FROM {ident(schema.DEVICE_STATUS)} WHERE {ONE_COUNTY} AND {scope_filter()}"
        f" AND time <= ${{__to}}ms GROUP BY {ident('device_id')}"
    )
    return table(
        "Devices / 设备清单", box,
        [table_target(every, "A"), table_target(oldest, "B"), table_target(status, "C")],
        description="One county chosen: every device heard from in the 400 days before the "
                    "end of the range, when it was last heard from, its latest battery and "
                    "signal (the device_last_seen state ingest keeps, one point per device "
                    "and month), and whether its MQTT session is online. The whole city: "
                    f"the {CITY_LIST} devices heard from longest ago (no online status); "
                    "the counts per county are in the table beside. Oldest 'last seen' first.",
        before=[join_by("device_id")],
        hide=("Time", "Time 1", "Time 2", "Time 3"),
        rename={"seen_ms": "Last seen / 最后上报", "device_id": "Device / 设备",
                "site_id": "Site / 站点", "battery_v": "Battery V / 电池电压",
                "rssi_dbm": "Signal dBm / 信号", "online": "Online / 在线"},
        overrides=[
            field_override("seen_ms", unit="dateTimeAsIso"),
            field_override("online", mappings=ONLINE,
                           custom__cellOptions={"type": "color-text"}),
            *_battery_and_signal(),
        ],
        sort=("Last seen / 最后上报", False),
    )


def _battery_and_signal() -> list[Json]:
    return [
        field_override("battery_v", unit="volt", decimals=2,
                       # 12 V lead-acid packs: below 11.8 V about a third is left.
                       thresholds=steps(("red", None), ("orange", LOW_BATTERY_V),
                                        ("green", 12.2)),
                       custom__cellOptions={"type": "color-text"}),
        field_override("rssi_dbm", unit="dBm", decimals=0,
                       thresholds=steps(("red", None), ("orange", WEAK_SIGNAL_DBM),
                                        ("green", -95)),
                       custom__cellOptions={"type": "color-text"}),
    ]


def county_summary(box: Box) -> Json:
    """Per county: devices, how many are silent, the oldest, weakest battery and signal."""
    summary = (
        f"SELECT count({ident('seen_ms')}) AS {ident('devices')},"
        f" min({ident('seen_ms')}) AS {ident('oldest_seen_ms')},"
        f" min({ident('battery_v')}) AS {ident('battery_v')},"
        f" min({ident('rssi_dbm')}) AS {ident('rssi_dbm')}"
        f" FROM ({last_seen_per_device((), 'device_id', 'county')}) GROUP BY {ident('county')}"
    )
    return table(
        "Devices by county / 各区县设备", box,
        [table_target(summary, "A")],
        description="Per county (of the chosen scope): devices heard from in the 400 days "
                    "before the end of the range, the oldest 'last seen' among them, the "
                    "lowest battery and the weakest signal.",
        rename={"county": "County / 区县", "devices": "Devices / 设备数",
                "oldest_seen_ms": "Oldest seen / 最早上报",
                "battery_v": "Lowest battery V / 最低电压",
                "rssi_dbm": "Weakest signal dBm / 最弱信号"},
        overrides=[field_override("oldest_seen_ms", unit="dateTimeAsIso"),
                   *_battery_and_signal()],
        sort=("Oldest seen / 最早上报", False),
    )


def rejection_panels(top: int) -> list[Json]:
    over_time = (
        f"SELECT count({ident('detail')}) FROM {ident(schema.REJECTION)}"
        f" WHERE $timeFilter GROUP BY time($__interval), {ident('reason')} fill(none)"
    )
    totals = (
        f"SELECT count({ident('detail')}) AS {ident('messages')} FROM {ident(schema.REJECTION)}"
        f" WHERE $timeFilter GROUP BY {ident('reason')}"
    )
    return [
        timeseries("Rejected messages by reason / 拒收消息", Box(0, top, 16, 8),
                   [target(over_time, alias="$tag_reason")], bars=True, stacked=True,
                   unit="short",
                   description="Messages (or readings, records) the ingest service refused to "
                               "store, by reason (contract §10); the whole city."),
        table("Rejections by reason / 拒收原因", Box(16, top, 8, 8), [table_target(totals)],
              description="How many in the range, per reason. Details: GET /api/v1/rejections.",
              rename={"reason": "Reason / 原因", "messages": "Count / 数量"},
              sort=("Count / 数量", True)),
    ]


def devices() -> Json:
    panels = [
        device_table(Box(0, 0, 16, 10)),
        county_summary(Box(16, 0, 8, 10)),
        scaled(timeseries("Battery / 电池电压", Box(0, 10, 12, 8),
                          metric_targets("battery_v", None, by="device_id"), unit="volt",
                          description="Mean battery_v per device of the chosen site; for all "
                                      "sites, per county the mean of the sites' means and the "
                                      "lowest and highest site. " + RESOLUTIONS)),
        scaled(timeseries("Signal / 信号强度", Box(12, 10, 12, 8),
                          metric_targets("rssi_dbm", None, by="device_id"), unit="dBm",
                          description="Mean rssi_dbm, as for the battery; below about −110 "
                                      "dBm messages start to get lost. " + RESOLUTIONS)),
        *rejection_panels(18),
    ]
    return dashboard(
        "farm-devices", "Devices / 设备运行", panels,
        variables=[*scope_variables(), site_variable(None)],
        description="Last seen, online/offline, battery, signal and rejected messages.",
        tags=("farm", "devices"), time_from="now-7d",
    )
