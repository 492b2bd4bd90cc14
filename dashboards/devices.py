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
    steps,
    table,
    table_target,
    target,
    timeseries,
)
from dashboards.farm import scope_filter, scope_variables, site_variable
from dashboards.resolution import LAST_SEEN, metric_targets, scaled
from farm_contract import schema

RESOLUTIONS = "Raw readings up to 2 days, hourly roll-ups up to 60 days, daily beyond."
ONLINE = bool_mappings("online / 在线", "offline / 离线", "no status / 无状态")


def device_table(box: Box) -> Json:
    last_seen = (
        f"SELECT last({ident('seen_ms')}) AS {ident('seen_ms')},"
        f" last({ident('battery_v')}) AS {ident('battery_v')},"
        f" last({ident('rssi_dbm')}) AS {ident('rssi_dbm')} FROM {ident(LAST_SEEN)}"
        f" WHERE {scope_filter()} AND time <= ${{__to}}ms AND time >= ${{__to}}ms - 400d"
        f" GROUP BY {ident('device_id')}, {ident('site_id')}"
    )
    status = (
        f"SELECT last({ident('online')}) AS {ident('online')}"
        f" FROM {ident(schema.DEVICE_STATUS)} WHERE {scope_filter()} AND time <= ${{__to}}ms"
        f" GROUP BY {ident('device_id')}"
    )
    return table(
        "Devices / 设备清单", box,
        [table_target(last_seen, "A"), table_target(status, "B")],
        description="Every device heard from in the 400 days before the end of the range: "
                    "when it was last heard from, its latest battery and signal (the "
                    "device_last_seen state ingest keeps, one point per device and month), "
                    "and whether its MQTT session is online. Oldest 'last seen' first.",
        before=[join_by("device_id")],
        hide=("Time", "Time 1", "Time 2"),
        rename={"seen_ms": "Last seen / 最后上报", "device_id": "Device / 设备",
                "site_id": "Site / 站点", "battery_v": "Battery V / 电池电压",
                "rssi_dbm": "Signal dBm / 信号", "online": "Online / 在线"},
        overrides=[
            field_override("seen_ms", unit="dateTimeAsIso"),
            field_override("online", mappings=ONLINE,
                           custom__cellOptions={"type": "color-text"}),
            field_override("battery_v", unit="volt", decimals=2,
                           # 12 V lead-acid packs: below 11.8 V about a third is left.
                           thresholds=steps(("red", None), ("orange", 11.8), ("green", 12.2)),
                           custom__cellOptions={"type": "color-text"}),
            field_override("rssi_dbm", unit="dBm", decimals=0,
                           thresholds=steps(("red", None), ("orange", -110), ("green", -95)),
                           custom__cellOptions={"type": "color-text"}),
        ],
        sort=("Last seen / 最后上报", False),
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
        device_table(Box(0, 0, 24, 10)),
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
