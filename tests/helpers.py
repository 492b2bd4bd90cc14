"""Small helpers shared by the integration tests."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from devstack.servers import Influxd

T = TypeVar("T")

SITES_CSV = """site_id,name,county,site_type,lat,lon,large_scale,area_mu,water_quota_m3_per_mu
drip-1,滴灌一号,平城区,drip,40.1,113.3,,120,300
farm-1,养殖场一号,云州区,manure,40.2,113.5,true,,
straw-1,秸秆站,云州区,straw,40.0,113.6,,300,
"""
DEVICES_CSV = """device_id,site_id,dev_eui,model
dev-1,drip-1,,soil-probe
dev-2,farm-1,0011223344556677,lora-level
dev-3,straw-1,,scale
"""


def write_registry(folder: Path, sites: str = SITES_CSV, devices: str = DEVICES_CSV) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sites.csv").write_text(sites, encoding="utf-8")
    (folder / "devices.csv").write_text(devices, encoding="utf-8")
    return folder


def wait_for(predicate: Callable[[], T], timeout: float = 20.0, interval: float = 0.1) -> T:
    """Poll until ``predicate`` returns something truthy; fail with its last value otherwise."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    assert value, f"condition not met within {timeout}s (last value {value!r})"
    return value


def mosquitto_pub(port: int, topic: str, payload: str | bytes, *extra: str) -> None:
    """Publish as a user would, with the mosquitto_pub command-line client, at QoS 1."""
    data = payload.encode() if isinstance(payload, str) else payload
    subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t", topic, "-s", *extra],
        input=data,
        check=True,
        timeout=10,
    )


def count(influxd: Influxd, q: str) -> int:
    """The first value of the first row of an InfluxQL count query (0 when no series)."""
    result = influxd.query(q)
    for item in result.get("results", []):  # type: ignore[union-attr]
        for series in item.get("series", []):
            return int(series["values"][0][1])
    return 0


def rows(influxd: Influxd, q: str) -> list[dict[str, object]]:
    """Every row of an InfluxQL result as a dict, tags included."""
    out: list[dict[str, object]] = []
    for item in influxd.query(q).get("results", []):  # type: ignore[union-attr]
        for series in item.get("series", []):
            for values in series["values"]:
                named = dict(zip(series["columns"], values, strict=True))
                out.append({**series.get("tags", {}), **named})
    return out
