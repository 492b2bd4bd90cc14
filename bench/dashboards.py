"""Dashboard panels at city scale: every panel query of the drip and devices dashboards,
timed on raw data as before issue 15 and on the telemetry roll-ups after, in one run.

A fleet of drip devices sends 15-minute readings for ``days`` days, written straight
to InfluxDB in large ``/write`` batches (MQTT is not what is measured). Then each
panel's queries are filled in as Grafana would (``dashboards.panel_queries``: county
= all, site = All, 300 or 1,000 data points) and run one after the other; a panel's
time is the sum of its queries', its rows the rows they return. "Before" runs the
panels committed before the roll-ups (bench/baseline_dashboards/), "after" the current
ones, once :class:`ingest_service.telemetry.rollups.TelemetryRollups` has built the
roll-ups (its build time is reported too, built as the service does: at most
``days_per_cycle`` days per cycle, with the progress printed after each cycle).

A raw query is given up after :data:`QUERY_CAP_S`: the bench's InfluxDB stops it
itself (``[coordinator] query-timeout``, devstack/servers.py), so a given-up query
does not keep loading the machine; the panel's cell says "> N s (gave up)".
``before_ranges`` limits the raw panels to some ranges (at 2,000 devices a year of
raw panels would take an hour or more, mostly spent hitting the cap).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Collection
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

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
QUERY_CAP_S = 60.0
"""A panel query running longer is given up: the bench InfluxDB's ``query-timeout``."""
GAVE_UP = "query-timeout limit exceeded"
"""InfluxDB 1.x's error for a query it stopped at its ``query-timeout``."""


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
    """Panel title → seconds (its queries one after the other), rows returned, and
    whether a query was given up at :data:`QUERY_CAP_S`."""
    board = json.loads(board_path.read_text(encoding="utf-8"))
    out: dict[str, dict[str, Any]] = {p["title"]: {"s": 0.0, "rows": 0, "error": "",
                                                   "gave_up": False}
                                      for p in iter_panels(board["panels"])}
    for title, _ref, query in panel_queries(board, {"county": "all"}, start, end,
                                            max_data_points=max_data_points):
        started = time.perf_counter()
        try:
            response = stack.http.post("/query", data={"q": query, "db": "farm", "epoch": "ms"},
                                       timeout=QUERY_CAP_S + 30)
        except httpx.TimeoutException:
            out[title]["s"] += time.perf_counter() - started
            out[title]["gave_up"] = True
            continue
        out[title]["s"] += time.perf_counter() - started
        result: dict[str, Any] = (response.json()["results"][0] if response.status_code == 200
                                  else {"error": response.text[:200]})
        if "error" in result:
            if GAVE_UP in str(result["error"]):
                out[title]["gave_up"] = True
            else:
                out[title]["error"] = str(result["error"])[:120]
        out[title]["rows"] += sum(len(s.get("values") or []) for s in result.get("series", []))
    return {t: {**v, "s": round(v["s"], 3)} for t, v in out.items()}


def build_rollups(rollups: TelemetryRollups, now: datetime,
                  progress: Callable[[str], None]) -> dict[str, Any]:
    """The roll-ups' first build as the service runs it, cycle after cycle (each at most
    ``days_per_cycle`` days), until no day is pending; the progress after each cycle."""
    started = time.perf_counter()
    built, cycles = 0, 0
    while True:
        cycle = rollups.maintain_once(now + timedelta(seconds=cycles))
        cycles += 1
        built += len(cycle.days_built)
        elapsed = time.perf_counter() - started
        progress(f"  roll-ups: {built} day(s) built in {elapsed:.0f} s "
                 f"({elapsed / max(1, built):.2f} s/day), {cycle.pending_days} to go")
        if not cycle.pending_days or not cycle.days_built:
            return {"s": elapsed, "days": built, "cycles": cycles}


def window(days: int) -> tuple[datetime, datetime]:
    """The fleet's history: ``days`` up to the last whole hour."""
    end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    return end - timedelta(days=days), end


def one_shard_per_year(stack: Stack) -> None:
    """52-week shards, as ingest creates its database (not InfluxDB's default 7 days)."""
    stack.http.post("/query", data={
        "q": 'ALTER RETENTION POLICY "autogen" ON "farm" SHARD DURATION 52w'
    }).raise_for_status()


def run(devices: int = 2000, days: int = 365, max_data_points: int = 1000,
        before_ranges: Collection[str] | None = None,
        progress: Callable[[str], None] = print) -> dict[str, Any]:
    """Write the fleet's history, time the old panels, build the roll-ups, time the new ones.

    ``before_ranges``: the ranges (of :data:`RANGES`) whose raw panels are timed (all).
    """
    start, end = window(days)
    with Stack() as stack:
        one_shard_per_year(stack)
        written, started = 0, time.perf_counter()
        stack.write(site_lines(devices, int(start.timestamp()) * 1_000_000_000).encode())
        per_day = devices * int(timedelta(days=1) / STEP)
        for batch in lines(devices, start, end):
            stack.write("\n".join(batch).encode())
            done = (written + len(batch)) // per_day
            if done != written // per_day and done % 30 == 0:
                progress(f"  written {done} of {days} days "
                         f"({written / (time.perf_counter() - started):,.0f} readings/s)")
            written += len(batch)
        write_s = time.perf_counter() - started
        now = end + timedelta(minutes=1)
        ranges = {label: (now - span, now) for label, span in RANGES.items()
                  if span <= timedelta(days=days)}
        before: dict[str, Any] = {}
        for label, (a, b) in ranges.items():
            if before_ranges is None or label in before_ranges:
                progress(f"  raw panels, {label} …")
                before[label] = {name: time_panels(stack, BASELINE / name, a, b, max_data_points)
                                 for name in BOARDS}
        settings = Settings(influx_url=stack.influxd.url, influx_api="v1", influx_db="farm")
        query, writer = InfluxQL(settings), make_writer(settings)
        rollups = TelemetryRollups(query, writer, settings.tz,
                                   TelemetryRollupSettings(budget_s=1e9))
        build = build_rollups(rollups, now, progress)
        steady_s = time.perf_counter()
        rollups.maintain_once(now + timedelta(minutes=1))
        steady_s = time.perf_counter() - steady_s
        progress("  roll-up panels …")
        after = {label: {name: time_panels(stack, OUT_DIR / name, a, b, max_data_points)
                         for name in BOARDS} for label, (a, b) in ranges.items()}
        query.close()
        writer.close()
    return {
        "devices": devices, "days": days, "points_written": written,
        "write_s": round(write_s, 1), "max_data_points": max_data_points,
        "rollup_build_s": round(build["s"], 1), "rollup_days_built": build["days"],
        "rollup_build_cycles": build["cycles"], "rollup_cycle_s": round(steady_s, 2),
        "query_cap_s": QUERY_CAP_S, "before": before, "after": after,
        "load_after": machine.load(),
    }


def rows(result: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(range, panel, before, after) for the report table."""
    out = []
    for label, boards in result["after"].items():
        for name, panels in boards.items():
            old = result["before"].get(label, {}).get(name)
            for title, new in panels.items():
                was = None if old is None else old.get(title)
                cell = ("(not timed)" if old is None else _cell(was) if was else "(new panel)")
                out.append((label, title, cell, _cell(new)))
    return out


def _cell(item: dict[str, Any]) -> str:
    if item.get("gave_up"):
        return f"> {item['s']:.0f} s (gave up)"
    if item["error"]:
        return f"{item['s']:.2f} s, error: {item['error'][:40]}"
    return f"{item['s']:.2f} s, {item['rows']:,} rows"
