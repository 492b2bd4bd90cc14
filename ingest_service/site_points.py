"""Registry facts as InfluxDB points (measurement ``site``), for Grafana.

Grafana's panels speak only InfluxQL, and InfluxQL cannot read the registry
CSVs. The map needs each site's coordinates and the irrigation panels its area
and water quota, so ingest writes one ``site`` point per site whenever it loads
a registry. Dashboards read them with ``last()`` per ``site_id`` and no time
bound: they are facts about the site, not measurements in time.

    site,site_id=…,county=…,site_type=…,name=… lat=…,lon=…,large_scale=…,area_mu=…,
         water_quota_m3_per_mu=… <time of loading>

A field the registry leaves blank (``area_mu`` of a manure site) is left out.
"""

from __future__ import annotations

import logging
import time

from farm_contract import schema
from farm_contract.registry import Registry
from ingest_service.model import FieldValue, Point
from ingest_service.outputs.influx import WriteError, Writer
from ingest_service.outputs.lineprotocol import encode

log = logging.getLogger(__name__)

SITE_MEASUREMENT = schema.SITE
SITE_TAGS = schema.SITE_TAGS


def site_points(registry: Registry, time_ns: int) -> list[Point]:
    """One ``site`` point per registry site, stamped ``time_ns``, in site_id order."""
    points = []
    for site_id in sorted(registry.sites):
        site = registry.sites[site_id]
        fields: dict[str, FieldValue] = {
            "lat": float(site.lat),
            "lon": float(site.lon),
            "large_scale": bool(site.large_scale),
        }
        if site.area_mu is not None:
            fields["area_mu"] = float(site.area_mu)
        if site.water_quota_m3_per_mu is not None:
            fields["water_quota_m3_per_mu"] = float(site.water_quota_m3_per_mu)
        tags = {"site_id": site.site_id, "county": site.county,
                "site_type": str(site.site_type), "name": site.name}
        points.append(Point(SITE_MEASUREMENT, tags, fields, time_ns))
    return points


def write_site_points(writer: Writer, registry: Registry, time_ns: int | None = None) -> int:
    """Write the registry's ``site`` points; returns how many, 0 when InfluxDB refused.

    A failure is logged, not raised: the map missing a site must never stop ingest,
    and the next load writes them again.
    """
    points = site_points(registry, time.time_ns() if time_ns is None else time_ns)
    if not points:
        return 0
    try:
        writer.write(encode(points))
    except WriteError as exc:
        log.warning("could not write the registry's site points: %s", exc)
        return 0
    return len(points)
