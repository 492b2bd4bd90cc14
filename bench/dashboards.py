"""Dashboard panels at city scale: every panel query of the drip and devices dashboards,
timed on raw data as before issue 15 and on the telemetry roll-ups after, in one run.

A fleet of drip devices sends 15-minute readings for ``days`` days, written straight
to InfluxDB in large ``/write`` batches (MQTT is not what is measured). Then each
panel's queries are filled in as Grafana would (``dashboards.panel_queries``: county
= all, site = All, 300 or 1,000 data points) and run one after the other; a panel's
time is the sum of its queries', its rows the rows they return. "Before" runs the
panels committed before the roll-ups (bench/baseline_dashboards/), "after" the current
ones, once :class:`ingest_service.telemetry.rollups.TelemetryRollups` has built the
roll-ups (its build time is reported too).
"""

from __future__ import annotations

import json
import math
import random
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench import machine
from bench.stack import Stack
from bench.workload import COUNTIES
from dashboards.generate import OUT_DIR
from dashboards.panel_queries import iter_panels, panel_queries
from ingest_service.influxql import InfluxQL
from ingest_service.outputs.influx import make_writer
from ingest_service.settings import Settings
from ingest_service.telemetry.rollups import TelemetryRollups, TelemetryRollupSettings

BASELINE = Path(__file__).resolve().parent / "baseline_dashboards"
BOARDS = ("drip-irrigation.json", "devices.json")
WRITE_BATCH = 50_000
STEP = timedelta(minutes=15)
DEVICES_PER_SITE = 2
RANGES = {"2d": timedelta(days=2), "30d": timedelta(days=30), "1y": timedelta(days=365)}


def lines(devices: int, start: datetime, end: datetime, seed: int = 15) -> Any:
    """Readings of every device every 15 minutes, time-major (as they arrive), batched."""
    rng = random.Random(seed)
    tags = [f"telemetry,county={COUNTIES[(i // DEVICES_PER_SITE) % len(COUNTIES)]},"
            f"device_id=d{i:05d},site_id=s{i // DEVICES_PER_SITE:05d},site_type=drip"
            for i in range(devices)]
    volume = [rng.random() * 1000 for _ in range(devices)]
    fert = [rng.random() * 100 for _ in range(devices)]
    batch: list[str] = []
    moment, seq = start, 0
    while moment < end:
        seq += 1
        ns = int(moment.timestamp()) * 1_000_000_000
        hour = moment.hour + moment.minute / 60
        irrigating = 6 <= hour < 9
        for i, tag in enumerate(tags):
            flow = 40 + rng.random() * 5 if irrigating else 0.0
            volume[i] += flow * 15 / 1000
            fert[i] += flow * 0.01
            soil = 0.25 + 0.08 * math.sin(seq / 96 + i) + rng.random() * 0.02
            batch.append(
                f"{tag} soil_moisture_vwc={soil:.3f},flow_lpm={flow:.1f},"
                f"pressure_kpa={180 + rng.random() * 10:.1f},volume_m3={volume[i]:.3f},"
                f"fertilizer_l={fert[i]:.2f},battery_v={12.4 + rng.random() * 0.3:.2f},"
                f"rssi_dbm={-80 - rng.random() * 20:.0f},valve_open={str(irrigating).lower()},"
                f"seq={seq}i {ns}")
            if len(batch) >= WRITE_BATCH:
                yield batch
                batch = []
        moment += STEP
    if batch:
        yield batch


def site_lines(devices: int, at_ns: int) -> str:
    sites = (devices + DEVICES_PER_SITE - 1) // DEVICES_PER_SITE
    return "\n".join(
        f"site,county={COUNTIES[s % len(COUNTIES)]},name=site{s},site_id=s{s:05d},site_type=drip"
        f" lat=40.0,lon=113.3,large_scale=false,area_mu=200.0,water_quota_m3_per_mu=300.0 {at_ns}"
        for s in range(sites))


def time_panels(stack: Stack, board_path: Path, start: datetime, end: datetime,
                max_data_points: int) -> dict[str, dict[str, Any]]:
    """Panel title → seconds (its queries one after the other) and rows returned."""
    board = json.loads(board_path.read_text(encoding="utf-8"))
    out: dict[str, dict[str, Any]] = {p["title"]: {"s": 0.0, "rows": 0, "error": ""}
                                      for p in iter_panels(board["panels"])}
    for title, _ref, query in panel_queries(board, {"county": "all"}, start, end,
                                            max_data_points=max_data_points):
        started = time.perf_counter()
        response = stack.http.post("/query", data={"q": query, "db": "farm", "epoch": "ms"},
                                   timeout=600)
        out[title]["s"] += time.perf_counter() - started
        result: dict[str, Any] = (response.json()["results"][0] if response.status_code == 200
                                  else {"error": response.text[:200]})
        if "error" in result:
            out[title]["error"] = str(result["error"])[:120]
        out[title]["rows"] += sum(len(s.get("values") or []) for s in result.get("series", []))
    return {t: {**v, "s": round(v["s"], 3)} for t, v in out.items()}


def run(devices: int = 2000, days: int = 365, max_data_points: int = 1000) -> dict[str, Any]:
    """Write the fleet's history, time the old panels, build the roll-ups, time the new ones."""
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    start = end - timedelta(days=days)
    with Stack() as stack:
        stack.http.post("/query", data={
            "q": 'ALTER RETENTION POLICY "autogen" ON "farm" SHARD DURATION 52w'
        }).raise_for_status()
        written, started = 0, time.perf_counter()
        stack.write(site_lines(devices, int(start.timestamp()) * 1_000_000_000).encode())
        for batch in lines(devices, start, end):
            stack.write("\n".join(batch).encode())
            written += len(batch)
        write_s = time.perf_counter() - started
        now = end + timedelta(minutes=1)
        ranges = {label: (now - span, now) for label, span in RANGES.items()
                  if span <= timedelta(days=days)}
        before = {label: {name: time_panels(stack, BASELINE / name, a, b, max_data_points)
                          for name in BOARDS} for label, (a, b) in ranges.items()}
        settings = Settings(influx_url=stack.influxd.url, influx_api="v1", influx_db="farm")
        query, writer = InfluxQL(settings), make_writer(settings)
        rollups = TelemetryRollups(query, writer, settings.tz,
                                   TelemetryRollupSettings(days_per_cycle=days + 2, budget_s=1e9))
        build_s = time.perf_counter()
        cycle = rollups.maintain_once(now)
        build_s = time.perf_counter() - build_s
        steady_s = time.perf_counter()
        rollups.maintain_once(now + timedelta(minutes=1))
        steady_s = time.perf_counter() - steady_s
        after = {label: {name: time_panels(stack, OUT_DIR / name, a, b, max_data_points)
                         for name in BOARDS} for label, (a, b) in ranges.items()}
        query.close()
        writer.close()
    return {
        "devices": devices, "days": days, "points_written": written,
        "write_s": round(write_s, 1), "max_data_points": max_data_points,
        "rollup_build_s": round(build_s, 1), "rollup_days_built": len(cycle.days_built),
        "rollup_cycle_s": round(steady_s, 2),
        "before": before, "after": after, "load_after": machine.load(),
    }


def rows(result: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(range, panel, before, after) for the report table."""
    out = []
    for label, boards in result["after"].items():
        for name, panels in boards.items():
            old = result["before"][label][name]
            for title, new in panels.items():
                was = old.get(title)
                out.append((label, title, _cell(was) if was else "(new panel)", _cell(new)))
    return out


def _cell(item: dict[str, Any]) -> str:
    if item["error"]:
        return f"{item['s']:.2f} s, error: {item['error'][:40]}"
    return f"{item['s']:.2f} s, {item['rows']:,} rows"
