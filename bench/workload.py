"""The bench's fleet: a registry of M devices and N contract-shaped telemetry payloads.

Everything is built before the clock starts ("publish as fast as the broker takes
them" must not measure payload building). Readings are realistic for the site
type (drip fields and manure farms alternate) and valid, so ingest stores every
message: the cumulative ``volume_m3`` rises with ``seq``, which also exercises
ingest's never-decreasing counter check. The same messages can carry ``ts`` in
either of the contract's forms, RFC 3339 text or integer epoch milliseconds
(many embedded devices send the latter), so both are measured alike.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from farm_contract.payloads import format_ts

COUNTIES = (
    "平城区", "云冈区", "新荣区", "云州区", "阳高县",
    "天镇县", "广灵县", "灵丘县", "浑源县", "左云县",
)
WARMUP_DEVICE = "bench-warmup"
WARMUP_SITE = "bench-warmup-site"
PREFIX = "farm"


@dataclass(frozen=True, slots=True)
class BenchDevice:
    """One simulated device on a site of its own."""

    index: int
    device_id: str
    site_id: str
    site_type: str
    county: str

    @property
    def topic(self) -> str:
        return f"{PREFIX}/v1/{self.site_id}/{self.device_id}/telemetry"


def fleet(devices: int) -> list[BenchDevice]:
    """``devices`` devices, drip and manure alternating, spread over Datong's counties."""
    return [
        BenchDevice(
            index=i,
            device_id=f"bench-d{i:05d}",
            site_id=f"bench-s{i:05d}",
            site_type="drip" if i % 2 == 0 else "manure",
            county=COUNTIES[i % len(COUNTIES)],
        )
        for i in range(devices)
    ]


def write_registry(folder: Path, devices: list[BenchDevice]) -> Path:
    """``sites.csv`` and ``devices.csv`` for ``devices`` plus the warm-up device."""
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "sites.csv").open("w", encoding="utf-8", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(
            ["site_id", "name", "county", "site_type", "lat", "lon", "large_scale", "area_mu",
             "water_quota_m3_per_mu"]
        )
        out.writerow([WARMUP_SITE, "预热", COUNTIES[0], "drip", 40.0, 113.3, "", 10, 300])
        for d in devices:
            lat, lon = 39.6 + (d.index % 97) / 100, 112.8 + (d.index % 89) / 50
            if d.site_type == "drip":
                out.writerow(
                    [d.site_id, f"滴灌{d.index}", d.county, "drip", lat, lon, "", 150, 300]
                )
            else:
                out.writerow([d.site_id, f"养殖场{d.index}", d.county, "manure", lat, lon, "true",
                              "", ""])
    with (folder / "devices.csv").open("w", encoding="utf-8", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["device_id", "site_id", "dev_eui", "model"])
        out.writerow([WARMUP_DEVICE, WARMUP_SITE, "", "bench"])
        for d in devices:
            out.writerow([d.device_id, d.site_id, "", "bench-" + d.site_type])
    return folder


def _json_value(value: float | bool) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(round(value, 3))


def readings(device: BenchDevice, seq: int, rng: random.Random) -> dict[str, float | bool]:
    """A plausible set of readings for ``device``'s ``seq``-th message."""
    common = {"battery_v": 3.3 + rng.random() * 0.9, "rssi_dbm": -60.0 - rng.random() * 50}
    if device.site_type == "drip":
        return {
            "flow_lpm": 20 + rng.random() * 80,
            "volume_m3": 1000.0 + seq * 0.25,
            "pressure_kpa": 150 + rng.random() * 100,
            "soil_moisture_vwc": 0.15 + rng.random() * 0.25,
            "soil_ec_ds_m": 0.5 + rng.random() * 2,
            "soil_temp_c": 8 + rng.random() * 20,
            "valve_open": rng.random() < 0.7,
            **common,
        }
    return {
        "lagoon_level_pct": 30 + rng.random() * 50,
        "digester_temp_c": 30 + rng.random() * 8,
        "biogas_m3h": 10 + rng.random() * 90,
        "pump_on": rng.random() < 0.4,
        "nh3_ppm": rng.random() * 25,
        "h2s_ppm": rng.random() * 5,
        **common,
    }


def payload(
    seq: int, ts_ms: int, values: dict[str, float | bool], epoch_ms: bool = False
) -> bytes:
    """Contract §2 telemetry JSON, compact as devices send it; ``ts`` as text or epoch ms."""
    body = ",".join(f'"{name}":{_json_value(value)}' for name, value in values.items())
    ts = str(ts_ms) if epoch_ms else f'"{format_ts(datetime.fromtimestamp(ts_ms / 1000, tz=UTC))}"'
    return f'{{"v":1,"seq":{seq},"ts":{ts},"readings":{{{body}}}}}'.encode()


def warmup_message(ts_ms: int) -> tuple[str, bytes]:
    """The warm-up message: always the same point, so repeating it stores it once."""
    return (
        f"{PREFIX}/v1/{WARMUP_SITE}/{WARMUP_DEVICE}/telemetry",
        payload(0, ts_ms, {"battery_v": 3.7}),
    )


def messages(
    devices: list[BenchDevice], count: int, end_ms: int, seed: int = 6, epoch_ms: bool = False
) -> Iterator[tuple[BenchDevice, bytes]]:
    """``count`` messages, round-robin over devices; each device's ``ts`` one second apart.

    The last round ends at ``end_ms`` (kept in the past, so no ``ts_in_future``),
    and ``seq`` starts at 1 per device and rises by one per message. With ``epoch_ms``
    the very same messages carry ``ts`` as integer epoch milliseconds.
    """
    rng = random.Random(seed)
    rounds = -(-count // len(devices))
    for n in range(count):
        device = devices[n % len(devices)]
        seq = n // len(devices) + 1
        ts_ms = end_ms - (rounds - seq) * 1000
        yield device, payload(seq, ts_ms, readings(device, seq, rng), epoch_ms)
