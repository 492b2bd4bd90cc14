"""``python -m bench.site_use_probe``: the per-site drip panels at 5,000 sites × a year.

A scale probe, **not end to end**: it writes the daily site roll-up (``site_use_1d``,
one point per site and local day, what
:class:`~ingest_service.telemetry.rollups.TelemetryRollups` writes) and the sites'
registry facts straight to a fresh InfluxDB, without any raw readings, with the county
daily use points the same roll-up holds (``telemetry_county_1d``: per county and day
the sum of its sites' points), then times the drip dashboard's use tables — "Water used
per mu vs quota" (per site), "Water per mu by county" and "Fertigation total" — as
Grafana would run them: for the whole city (county = all, site = All) and for one county
(site = All). Building those points from 10,000 devices' readings is what
:mod:`bench.rollup_calibration` measures.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from bench import machine
from bench.dashboards import site_lines
from bench.stack import Stack
from bench.workload import COUNTIES
from dashboards.drip import WATER_BY_COUNTY, WATER_PER_SITE
from dashboards.generate import OUT_DIR
from dashboards.panel_queries import panel_queries
from farm_contract.schema import CITY_COUNTY_TAG
from ingest_service.telemetry.rollups import COUNTY_DAILY, SITE_USE

PANELS = (WATER_PER_SITE, WATER_BY_COUNTY, "Fertigation total / 施肥总量")
BATCH = 50_000


def site_use_lines(sites: int, start: datetime, days: int, seed: int = 15
                   ) -> Iterator[list[str]]:
    """``site_use_1d`` lines for every site and day, and each day's
    ``telemetry_county_1d`` use sums of them, in batches (time-major)."""
    rng = random.Random(seed)
    batch: list[str] = []
    for day in range(days):
        ns = int((start + timedelta(days=day)).timestamp()) * 1_000_000_000
        sums = {county: [0, 0.0, 0.0] for county in COUNTIES}
        for s in range(sites):
            county = COUNTIES[s % len(COUNTIES)]
            water, litres = round(rng.random() * 30, 3), round(rng.random() * 3, 3)
            batch.append(f"{SITE_USE},county={county},site_id=s{s:05d},"
                         f"site_type=drip water_m3={water},fertilizer_l={litres} {ns}")
            total = sums[county]
            total[0], total[1], total[2] = int(total[0]) + 1, total[1] + water, total[2] + litres
            if len(batch) >= BATCH:
                yield batch
                batch = []
        batch += [f"{COUNTY_DAILY},county={county},site_type=drip sites={n}i,water_m3={w},"
                  f"fertilizer_l={f} {ns}" for county, (n, w, f) in sums.items() if n]
    if batch:
        yield batch


def time_titles(stack: Stack, variables: Mapping[str, str], start: datetime,
                end: datetime) -> dict[str, dict[str, Any]]:
    """:data:`PANELS` → seconds (their queries one after the other, gated-off ones
    included, as Grafana sends them), rows returned, the first error."""
    board = json.loads((OUT_DIR / "drip-irrigation.json").read_text(encoding="utf-8"))
    out: dict[str, dict[str, Any]] = {t: {"s": 0.0, "rows": 0, "error": ""} for t in PANELS}
    for title, _ref, query in panel_queries(board, variables, start, end):
        if title not in out:
            continue
        started = time.perf_counter()
        response = stack.http.post("/query", data={"q": query, "db": "farm", "epoch": "ms"},
                                   timeout=120)
        out[title]["s"] += time.perf_counter() - started
        result: dict[str, Any] = (response.json()["results"][0] if response.status_code == 200
                                  else {"error": response.text[:200]})
        out[title]["error"] = out[title]["error"] or str(result.get("error", ""))[:120]
        out[title]["rows"] += sum(len(s.get("values") or []) for s in result.get("series", []))
    return {t: {**v, "s": round(v["s"], 3)} for t, v in out.items()}


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
        scopes = {"city": {"county": CITY_COUNTY_TAG, "site": "$__all"},
                  "one county": {"county": COUNTIES[0], "site": "$__all"}}
        runs = {scope: [time_titles(stack, variables, start, end + timedelta(minutes=1))
                        for _ in range(repeats)] for scope, variables in scopes.items()}
    panels = {scope: {title: {"s": [run[title]["s"] for run in done],
                              "rows": done[-1][title]["rows"],
                              "error": done[-1][title]["error"]} for title in PANELS}
              for scope, done in runs.items()}
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
