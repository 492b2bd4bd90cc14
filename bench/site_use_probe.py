"""``python -m bench.site_use_probe``: the per-site drip panels at 5,000 sites × a year.

A scale probe, **not end to end**: it writes the daily site roll-up (``site_use_1d``,
one point per site and local day, what
:class:`~ingest_service.telemetry.rollups.TelemetryRollups` writes) and the sites'
registry facts straight to a fresh InfluxDB, without any raw readings, then times the
two panels that read one point per site and day — "Water used per mu vs quota" and
"Fertigation total" of the drip dashboard — as Grafana would run them (county = all,
site = All). Building those points from 10,000 devices' readings is what
:mod:`bench.rollup_calibration` measures.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from bench import machine
from bench.dashboards import site_lines, time_panels
from bench.stack import Stack
from bench.workload import COUNTIES
from dashboards.generate import OUT_DIR
from ingest_service.telemetry.rollups import SITE_USE

PANELS = ("Water used per mu vs quota / 亩均用水与定额", "Fertigation total / 施肥总量")
BATCH = 50_000


def site_use_lines(sites: int, start: datetime, days: int, seed: int = 15) -> Any:
    """``site_use_1d`` lines for every site and day, in batches (time-major)."""
    rng = random.Random(seed)
    batch: list[str] = []
    for day in range(days):
        ns = int((start + timedelta(days=day)).timestamp()) * 1_000_000_000
        for s in range(sites):
            batch.append(f"{SITE_USE},county={COUNTIES[s % len(COUNTIES)]},site_id=s{s:05d},"
                         f"site_type=drip water_m3={rng.random() * 30:.3f},"
                         f"fertilizer_l={rng.random() * 3:.3f} {ns}")
            if len(batch) >= BATCH:
                yield batch
                batch = []
    if batch:
        yield batch


def probe(sites: int = 5000, days: int = 365, repeats: int = 3) -> dict[str, Any]:
    """Write the points, then time the two panels ``repeats`` times (the best and all)."""
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = end - timedelta(days=days)
    with Stack() as stack:
        stack.http.post("/query", data={
            "q": 'ALTER RETENTION POLICY "autogen" ON "farm" SHARD DURATION 52w'
        }).raise_for_status()
        stack.write(site_lines(2 * sites, int(start.timestamp()) * 1_000_000_000).encode())
        written, started = 0, time.perf_counter()
        for batch in site_use_lines(sites, start, days):
            stack.write("\n".join(batch).encode())
            written += len(batch)
        write_s = time.perf_counter() - started
        runs = [time_panels(stack, OUT_DIR / "drip-irrigation.json", start,
                            end + timedelta(minutes=1), 1000) for _ in range(repeats)]
    panels = {title: {"s": [run[title]["s"] for run in runs], "rows": runs[-1][title]["rows"],
                      "error": runs[-1][title]["error"]} for title in PANELS}
    return {"sites": sites, "days": days, "points": written, "write_s": round(write_s, 1),
            "panels": panels, "load_after": machine.load()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.site_use_probe", description=__doc__)
    parser.add_argument("--sites", type=int, default=5000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(json.dumps(probe(args.sites, args.days, args.repeats), indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
