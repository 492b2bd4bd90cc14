"""``python -m bench.rollup_calibration``: the telemetry roll-ups' first build, measured.

The pieces of :func:`bench.dashboards.run` that decide how long ``make bench``'s
dashboards part takes at 2,000 devices × 365 days, on a few days of the same fleet
(``bench.dashboards.lines``): the raw write rate, the roll-ups' first build in seconds
per day of data, and (``--profile``) where the build's time goes, by stage. Its
figures extrapolate the full run (docs/performance.md, "Dashboards at city scale").
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import sys
import time
from datetime import timedelta
from typing import Any

from bench import dashboards, machine
from bench.stack import Stack
from ingest_service.influxql import InfluxQL
from ingest_service.outputs.influx import make_writer
from ingest_service.settings import Settings
from ingest_service.telemetry.rollups import TelemetryRollups, TelemetryRollupSettings

STAGES: dict[str, tuple[str, ...]] = {
    "InfluxDB query (HTTP, waiting for the answer)": ("InfluxQL.query:httpx",),
    "JSON decode": ("orjson.loads",),
    "answer checks (_series_of)": ("_series_of",),
    "hourly buckets (hour_buckets)": ("hour_buckets",),
    "daily buckets (combine)": ("combine",),
    "county and site aggregates": ("county_points", "site_use_points"),
    "line protocol encode": ("bucket_points", "encode"),
    "InfluxDB write (HTTP)": ("Writer.write",),
}
"""Stages of the build and the functions whose cumulative time is theirs."""


def stage_seconds(stats: pstats.Stats) -> dict[str, float]:
    """Cumulative seconds of the functions that make up each stage (cProfile)."""
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    by_name: dict[str, float] = {}
    for (filename, _line, name), (_cc, _nc, _tt, cumulative, _callers) in table.items():
        key = name
        if name == "post" and "httpx" in filename:
            key = "httpx.post"
        by_name[key] = by_name.get(key, 0.0) + cumulative
    query_http = 0.0
    for (filename, _line, name), (_cc, _nc, _tt, _cum, callers) in table.items():
        if name == "post" and "httpx" in filename:
            for (caller_file, _l, caller), timing in callers.items():
                if caller == "query" and caller_file.endswith("influxql.py"):
                    query_http += timing[3]
    out: dict[str, float] = {}
    for stage, names in STAGES.items():
        if names == ("InfluxQL.query:httpx",):
            out[stage] = query_http
            continue
        total = 0.0
        for name in names:
            if name == "Writer.write":
                total += sum(v[3] for (f, _l, n), v in table.items()
                             if n == "write" and f.endswith("outputs/influx.py"))
            elif name == "orjson.loads":
                total += sum(v[3] for (f, _l, n), v in table.items()
                             if "orjson" in n or (n == "loads" and "orjson" in f))
            else:
                total += by_name.get(name, 0.0)
        out[stage] = total
    return {k: round(v, 2) for k, v in out.items()}


def calibrate(devices: int, days: int, profile: bool, read_ahead: bool = True) -> dict[str, Any]:
    """Write ``days`` of the fleet, then build its roll-ups once (optionally profiled)."""
    start, end = dashboards.window(days)
    with Stack() as stack:
        dashboards.one_shard_per_year(stack)
        written, started = 0, time.perf_counter()
        for batch in dashboards.lines(devices, start, end):
            stack.write("\n".join(batch).encode())
            written += len(batch)
        write_s = time.perf_counter() - started
        settings = Settings(influx_url=stack.influxd.url, influx_api="v1", influx_db="farm")
        query, writer = InfluxQL(settings), make_writer(settings)
        rollups = TelemetryRollups(query, writer, settings.tz,
                                   TelemetryRollupSettings(days_per_cycle=days + 2, budget_s=1e9,
                                                           **_read_ahead(read_ahead)))
        profiler = cProfile.Profile() if profile else None
        now = end + timedelta(minutes=1)
        build_s = time.perf_counter()
        if profiler is not None:
            profiler.enable()
        cycle = rollups.maintain_once(now)
        if profiler is not None:
            profiler.disable()
        build_s = time.perf_counter() - build_s
        steady_s = time.perf_counter()
        rollups.maintain_once(now + timedelta(minutes=1))
        steady_s = time.perf_counter() - steady_s
        query.close()
        writer.close()
    result: dict[str, Any] = {
        "devices": devices, "days": days, "lines": written, "write_s": round(write_s, 1),
        "lines_per_s": round(written / write_s), "build_s": round(build_s, 1),
        "days_built": len(cycle.days_built), "points_written": cycle.points,
        "build_s_per_day": round(build_s / max(1, days), 2),
        "next_cycle_s": round(steady_s, 2), "load_after": machine.load(),
    }
    if profiler is not None:
        stats = pstats.Stats(profiler)
        result["stages_s"] = stage_seconds(stats)
        stats.sort_stats("tottime").print_stats(15)
    return result


def _read_ahead(read_ahead: bool) -> dict[str, Any]:
    """The setting, where the roll-ups have it (the code before issue 15's third round not)."""
    names = TelemetryRollupSettings.__dataclass_fields__
    return {"read_ahead": read_ahead} if "read_ahead" in names else {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.rollup_calibration",
                                     description=__doc__)
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--days", type=int, default=3)
    parser.add_argument("--profile", action="store_true", help="cProfile the first build")
    parser.add_argument("--no-read-ahead", action="store_true",
                        help="read each group's raw rows only when it is built")
    args = parser.parse_args(argv)
    print(json.dumps(calibrate(args.devices, args.days, args.profile, not args.no_read_ahead),
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
