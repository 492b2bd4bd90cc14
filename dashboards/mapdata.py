"""The map files Grafana serves for the geomap panel, so the map draws with no internet.

Grafana's default basemap is CARTO's tiles, fetched from the internet by the browser:
on a county office's offline network the map is blank. The city overview's map
therefore draws its own layer from a GeoJSON file Grafana serves itself (under
``/usr/share/grafana/public/maps/``, the folder of Grafana's own ``countries.geojson``),
and the tile basemap is a deployment setting (``GF_GEOMAP_DEFAULT_BASELAYER_CONFIG``,
docker-compose.yml), offline by default: ``OFFLINE_BASEMAP``.

No county outline data with a licence that allows shipping it was found (maps/README.md),
so the layer is the ten county-level divisions as labelled points, written from what the
project already has: the divisions of ``farm_contract/params/counties.toml`` and each one's
approximate centre (its ``seats`` entry there, where the simulators place sites too).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dashboards.files import write_files
from farm_contract.indicator_params import load_divisions

MAPS_DIR = Path(__file__).resolve().parent / "maps"
"""The repository's copy; compose mounts it at ``GRAFANA_MAPS_DIR``."""

GRAFANA_MAPS_DIR = "/usr/share/grafana/public/maps/farm"
"""Where the Grafana image serves static files as ``public/maps/farm/…`` (a folder of its
own, so Grafana's shipped maps beside it stay visible)."""

URL_PREFIX = "public/maps/farm"
"""The files' URL as the geomap panel writes it: relative to Grafana's root URL, like the
panel's own default ``public/maps/countries.geojson``."""

COUNTY_SEATS = "datong-county-seats.geojson"
"""Points: one per county-level division, labelled with its name."""

BLANK = "blank.geojson"
"""No features: the offline basemap draws nothing and fetches no tiles."""

OFFLINE_BASEMAP: dict[str, Any] = {
    "type": "geojson",
    "config": {"src": f"{URL_PREFIX}/{BLANK}"},
}
"""Grafana's default basemap (``[geomap] default_baselayer_config``) when none is set: its
"default" layer creates the layer type the server names, here a GeoJSON layer of a file
with no features, so the panels fetch nothing from the internet."""


def county_seats() -> dict[str, Any]:
    """A GeoJSON FeatureCollection: each listed division at its approximate centre."""
    divisions = load_divisions()
    features = []
    for name in divisions.counties:
        geo = divisions.seats[name]
        features.append({
            "type": "Feature",
            "geometry": {"type": "Point", "coordinates": [geo.lon, geo.lat]},
            "properties": {"name": name, "code": geo.code, "city": divisions.city},
        })
    return {"type": "FeatureCollection", "features": features}


def blank() -> dict[str, Any]:
    """A valid GeoJSON FeatureCollection with no features."""
    return {"type": "FeatureCollection", "features": []}


def render(collection: dict[str, Any]) -> str:
    """Deterministic, compact GeoJSON text (UTF-8, names unescaped)."""
    return json.dumps(collection, ensure_ascii=False, sort_keys=True, indent=1) + "\n"


FILES = {COUNTY_SEATS: county_seats, BLANK: blank}


def write_all(out_dir: Path = MAPS_DIR) -> list[Path]:
    """Write every map file into ``out_dir``; returns the files written."""
    return write_files(out_dir, FILES, render)
