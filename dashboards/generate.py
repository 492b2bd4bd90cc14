"""Grafana dashboards as plain Python data, written to dashboards/json/*.json.

    python -m dashboards.generate            # or: python dashboards/generate.py
    python -m dashboards.generate --out DIR  # somewhere else (the tests compare)

Without ``--out`` it also writes the map files Grafana serves (dashboards/maps/,
mapdata.py).

The output is deterministic (sorted keys, fixed ids and layout), and the
generated JSON is committed: Grafana's file provider reads dashboards/json/,
and ``python -m dashboards.push`` sends the same files to an existing Grafana.
Every query is raw InfluxQL against the datasource ``farm-influx`` and reads the
InfluxDB schema of contract §9. The panel builders live in builders.py, one
module per dashboard (city.py, drip.py, manure.py, straw.py, devices.py, members.py).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from pathlib import Path

from dashboards import mapdata
from dashboards.builders import (
    DATASOURCE,
    DATASOURCE_UID,
    GRID_WIDTH,
    SCHEMA_VERSION,
    Box,
    Json,
    dashboard,
    gauge,
    ident,
    literal,
    panel,
    query_variable,
    ratio_defaults,
    ref_ids,
    table,
    target,
    thresholds,
    timeseries,
)
from dashboards.city import INDICATOR_NAMES, city_overview
from dashboards.devices import devices
from dashboards.drip import drip_irrigation
from dashboards.files import write_files
from dashboards.manure import livestock_manure
from dashboards.members import indicator_members
from dashboards.straw import straw

OUT_DIR = Path(__file__).resolve().parent / "json"

DASHBOARDS: dict[str, Callable[[], Json]] = {
    "city-overview.json": city_overview,
    "drip-irrigation.json": drip_irrigation,
    "livestock-manure.json": livestock_manure,
    "straw.json": straw,
    "devices.json": devices,
    "indicator-members.json": indicator_members,
}

__all__ = [
    "DASHBOARDS", "DATASOURCE", "DATASOURCE_UID", "GRID_WIDTH", "INDICATOR_NAMES", "OUT_DIR",
    "SCHEMA_VERSION", "Box", "Json", "dashboard", "gauge", "ident", "literal", "main", "panel",
    "query_variable", "ratio_defaults", "ref_ids", "render", "table", "target", "thresholds",
    "timeseries", "write_all",
]


def render(board: Json) -> str:
    """Deterministic JSON text of a dashboard."""
    return json.dumps(board, ensure_ascii=False, indent=2, sort_keys=True) + "\n"


def write_all(out_dir: Path = OUT_DIR) -> list[Path]:
    """Write every dashboard into ``out_dir``; returns the files written."""
    return write_files(out_dir, DASHBOARDS, render)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="folder to write to")
    args = parser.parse_args(argv)
    for path in write_all(args.out):
        print(path)
    if args.out.resolve() == OUT_DIR:
        for path in mapdata.write_all():
            print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
