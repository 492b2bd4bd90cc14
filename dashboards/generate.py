"""Grafana dashboards as plain Python data, written to dashboards/json/*.json.

    python -m dashboards.generate            # or: python dashboards/generate.py
    python -m dashboards.generate --out DIR  # somewhere else (the tests compare)

The output is deterministic (sorted keys, fixed ids and layout), and the
generated JSON is committed: Grafana's file provider reads dashboards/json/.
Every query is raw InfluxQL against the datasource ``farm-influx`` and reads the
InfluxDB schema of contract §9; later dashboards reuse the panel builders here.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from farm_contract import schema
from farm_contract.indicators import TARGETS, IndicatorId

Json = dict[str, Any]

DATASOURCE_UID = "farm-influx"
DATASOURCE: Json = {"type": "influxdb", "uid": DATASOURCE_UID}
OUT_DIR = Path(__file__).resolve().parent / "json"
SCHEMA_VERSION = 39
GRID_WIDTH = 24

INDICATOR_NAMES: dict[IndicatorId, str] = {
    IndicatorId.MANURE_FACILITY_RATE: "Manure facility rate / 粪污处理设施配套率",
    IndicatorId.MANURE_LEDGER_COVERAGE: "Manure ledger coverage / 粪污利用台账覆盖率",
    IndicatorId.FILM_RECOVERY_RATE: "Film recovery rate / 农膜回收率",
    IndicatorId.STRAW_UTILIZATION_RATE: "Straw utilization rate / 秸秆综合利用率",
}


# --- queries and targets --------------------------------------------------------


def ident(name: str) -> str:
    """An InfluxQL identifier (measurement, tag or field name), double-quoted."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def literal(value: str) -> str:
    """An InfluxQL string literal, single-quoted."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def target(
    query: str, ref_id: str = "A", alias: str = "", result_format: str = "time_series",
) -> Json:
    """A raw InfluxQL query of a panel."""
    out: Json = {
        "datasource": DATASOURCE,
        "query": query,
        "rawQuery": True,
        "refId": ref_id,
        "resultFormat": result_format,
    }
    if alias:
        out["alias"] = alias
    return out


def ref_ids(count: int) -> list[str]:
    return [chr(ord("A") + i) for i in range(count)]


# --- panels -----------------------------------------------------------------------


@dataclass(frozen=True)
class Box:
    """A panel's place on Grafana's 24-column grid."""

    x: int
    y: int
    w: int
    h: int

    def grid_pos(self) -> Json:
        return {"h": self.h, "w": self.w, "x": self.x, "y": self.y}


def thresholds(target_value: float | None, warn_below: float = 0.1) -> Json:
    """Red below target − warn_below, orange up to the target, green from it on."""
    if target_value is None:
        return {"mode": "absolute", "steps": [{"color": "green", "value": None}]}
    return {
        "mode": "absolute",
        "steps": [
            {"color": "red", "value": None},
            {"color": "orange", "value": round(max(0.0, target_value - warn_below), 6)},
            {"color": "green", "value": target_value},
        ],
    }


def panel(
    kind: str, title: str, box: Box, targets: Sequence[Json], *,
    description: str = "", defaults: Json | None = None, options: Json | None = None,
    overrides: Sequence[Json] = (), transformations: Sequence[Json] = (),
) -> Json:
    """Any panel; ``id`` is set when the dashboard is put together."""
    out: Json = {
        "datasource": DATASOURCE,
        "fieldConfig": {"defaults": defaults or {}, "overrides": list(overrides)},
        "gridPos": box.grid_pos(),
        "options": options or {},
        "targets": list(targets),
        "title": title,
        "type": kind,
    }
    if description:
        out["description"] = description
    if transformations:
        out["transformations"] = list(transformations)
    return out


def ratio_defaults(target_value: float | None) -> Json:
    return {
        "decimals": 1,
        "max": 1,
        "min": 0,
        "thresholds": thresholds(target_value),
        "unit": "percentunit",
    }


def gauge(title: str, box: Box, query: str, target_value: float, description: str = "") -> Json:
    """A 0–1 ratio as a gauge, green from ``target_value`` on."""
    return panel(
        "gauge", title, box, [target(query)], description=description,
        defaults=ratio_defaults(target_value),
        options={
            "minVizHeight": 75,
            "minVizWidth": 75,
            "orientation": "auto",
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "showThresholdLabels": False,
            "showThresholdMarkers": True,
        },
    )


def timeseries(
    title: str, box: Box, targets: Sequence[Json], *, unit: str = "", description: str = "",
    target_line: float | None = None, bars: bool = False, stacked: bool = False,
    ratio: bool = False,
) -> Json:
    """A time series panel; ``target_line`` draws the target as a dashed threshold line."""
    custom: Json = {
        "drawStyle": "bars" if bars else "line",
        "fillOpacity": 80 if bars else 10,
        "lineWidth": 1 if bars else 2,
        "pointSize": 4,
        "showPoints": "auto",
        "spanNulls": True,
        "stacking": {"group": "A", "mode": "normal" if stacked else "none"},
        "thresholdsStyle": {"mode": "dashed" if target_line is not None else "off"},
    }
    defaults: Json = ratio_defaults(target_line) if ratio else {
        "thresholds": thresholds(target_line)}
    defaults = {**defaults, "custom": custom}
    if unit:
        defaults["unit"] = unit
    return panel(
        "timeseries", title, box, targets, description=description, defaults=defaults,
        options={
            "legend": {"calcs": [], "displayMode": "list", "placement": "bottom",
                       "showLegend": True},
            "tooltip": {"mode": "multi", "sort": "desc"},
        },
    )


def table(
    title: str, box: Box, targets: Sequence[Json], *, description: str = "",
    hide: Iterable[str] = ("Time",), rename: dict[str, str] | None = None,
    defaults: Json | None = None,
) -> Json:
    """A table of ``resultFormat: table`` targets; ``hide`` drops columns."""
    return panel(
        "table", title, box, [{**t, "resultFormat": "table"} for t in targets],
        description=description, defaults=defaults,
        options={"cellHeight": "sm", "showHeader": True},
        transformations=[{
            "id": "organize",
            "options": {
                "excludeByName": {name: True for name in hide},
                "indexByName": {},
                "renameByName": rename or {},
            },
        }],
    )


def query_variable(name: str, label: str, query: str, default: str) -> Json:
    """A single-valued template variable filled by an InfluxQL query when the dashboard loads."""
    return {
        "current": {"selected": True, "text": default, "value": default},
        "datasource": DATASOURCE,
        "definition": query,
        "includeAll": False,
        "label": label,
        "multi": False,
        "name": name,
        "options": [],
        "query": query,
        "refresh": 1,
        "regex": "",
        "skipUrlSync": False,
        "sort": 1,
        "type": "query",
    }


def dashboard(
    uid: str, title: str, panels: Sequence[Json], *, variables: Sequence[Json] = (),
    description: str = "", tags: Sequence[str] = ("farm",), time_from: str = "now-7d",
    refresh: str = "1m",
) -> Json:
    """A whole dashboard; panels get ids 1, 2, … in order."""
    numbered = [{**p, "id": i} for i, p in enumerate(panels, start=1)]
    return {
        "annotations": {"list": []},
        "description": description,
        "editable": True,
        "graphTooltip": 1,
        "id": None,
        "links": [],
        "panels": numbered,
        "refresh": refresh,
        "schemaVersion": SCHEMA_VERSION,
        "tags": list(tags),
        "templating": {"list": list(variables)},
        "time": {"from": time_from, "to": "now"},
        "timepicker": {},
        "timezone": "browser",
        "title": title,
        "uid": uid,
        "version": 1,
    }


# --- the city overview ------------------------------------------------------------

COUNTY_VARIABLE = "county"


def indicator_filter(indicator: IndicatorId) -> str:
    """WHERE clause of one indicator for the scope chosen by $county (``all`` = the city)."""
    return (
        f"{ident('indicator')} = {literal(indicator.value)}"
        f" AND {ident('county')} =~ /^${COUNTY_VARIABLE}$/"
    )


def city_overview() -> Json:
    m_indicator, m_telemetry, m_rejection = schema.INDICATOR, schema.TELEMETRY, schema.REJECTION
    indicators = list(IndicatorId)
    panels: list[Json] = []
    width = GRID_WIDTH // len(indicators)

    for i, indicator in enumerate(indicators):
        query = (
            f"SELECT last({ident('value')}) FROM {ident(m_indicator)}"
            f" WHERE {indicator_filter(indicator)} AND $timeFilter"
        )
        panels.append(gauge(
            INDICATOR_NAMES[indicator], Box(i * width, 0, width, 7), query, TARGETS[indicator],
            description=(
                f"{indicator.value}: latest value in the time range for the scope chosen "
                f"above ({schema.CITY_COUNTY_TAG} = the whole city). "
                f"Target {TARGETS[indicator]:g}."
            ),
        ))

    county_query = (
        f"SELECT last({ident('value')}) AS {ident('value')} FROM {ident(m_indicator)}"
        f" WHERE {ident('scope')} = {literal('county')} AND $timeFilter"
        f" GROUP BY {ident('county')}, {ident('indicator')}"
    )
    panels.append(table(
        "Indicators by county / 各区县指标", Box(0, 7, GRID_WIDTH, 9), [target(county_query)],
        description="Latest value of every indicator in each county, in the time range.",
        rename={"county": "County / 区县", "indicator": "Indicator / 指标",
                "value": "Value / 数值"},
        defaults={"decimals": 1, "unit": "percentunit"},
    ))

    for i, indicator in enumerate(indicators):
        query = (
            f"SELECT last({ident('value')}) FROM {ident(m_indicator)}"
            f" WHERE {indicator_filter(indicator)} AND $timeFilter"
            f" GROUP BY time($__interval) fill(none)"
        )
        panels.append(timeseries(
            f"{INDICATOR_NAMES[indicator]} (trend / 趋势)",
            Box((i % 2) * 12, 16 + (i // 2) * 8, 12, 8),
            [target(query, alias=indicator.value)],
            target_line=TARGETS[indicator], ratio=True,
            description=f"{indicator.value} over time; the dashed line is the target.",
        ))

    moisture_query = (
        f"SELECT mean({ident('soil_moisture_vwc')}) FROM {ident(m_telemetry)}"
        f" WHERE $timeFilter GROUP BY time($__interval), {ident('site_id')} fill(none)"
    )
    panels.append(timeseries(
        "Soil moisture by site / 各站点土壤含水量", Box(0, 32, 12, 9),
        [target(moisture_query, alias="$tag_site_id")], unit="m³/m³",
        description="Mean soil_moisture_vwc (m³/m³) of each drip site, all counties.",
    ))

    rejection_query = (
        f"SELECT count({ident('detail')}) FROM {ident(m_rejection)}"
        f" WHERE $timeFilter GROUP BY time($__interval), {ident('reason')} fill(none)"
    )
    panels.append(timeseries(
        "Rejected messages by reason / 拒收消息", Box(12, 32, 12, 9),
        [target(rejection_query, alias="$tag_reason")], bars=True, stacked=True,
        unit="short",
        description="Messages the ingest service refused to store, by reason.",
    ))

    county = query_variable(
        COUNTY_VARIABLE, "County / 区县 (all = city)",
        f"SHOW TAG VALUES FROM {ident(m_indicator)} WITH KEY = {ident('county')}",
        schema.CITY_COUNTY_TAG,
    )
    return dashboard(
        "farm-city-overview", "City overview / 城市总览", panels, variables=[county],
        description="Datong's green-agriculture indicators, field telemetry and rejections.",
        tags=("farm", "indicators"),
    )


DASHBOARDS: dict[str, Callable[[], Json]] = {
    "city-overview.json": city_overview,
}


def render(board: Json) -> str:
    """Deterministic JSON text of a dashboard."""
    return json.dumps(board, ensure_ascii=False, indent=2, sort_keys=True) + "\n"


def write_all(out_dir: Path = OUT_DIR) -> list[Path]:
    """Write every dashboard into ``out_dir``; returns the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, build in DASHBOARDS.items():
        path = out_dir / name
        path.write_text(render(build()), encoding="utf-8")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="folder to write to")
    args = parser.parse_args(argv)
    for path in write_all(args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
