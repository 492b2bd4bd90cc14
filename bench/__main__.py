"""``python -m bench``: ingest's throughput, latency, memory and losses, against references.

Every run gets its own fresh Mosquitto and InfluxDB on loopback. Throughput runs
are interleaved (ceiling, bare, baseline, ingest; then again) so that a change in
the machine's load during the benchmark hits every subject alike. See
docs/performance.md for what each figure means and how it is measured.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from bench import backlog, dashboards, indicators, latency, machine, profile, report
from bench.throughput import EPOCH_SUBJECTS, SUBJECTS, Workload, run_once
from bench.workload import fleet, write_registry

PARTS = (*SUBJECTS, "latency", "backlog", "indicators", "dashboards")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--messages", "-n", type=int, default=100_000)
    parser.add_argument("--devices", "-m", type=int, default=1000)
    parser.add_argument("--runs", "-r", type=int, default=3)
    parser.add_argument("--json", type=Path, help="where to write results (default bench/results/)")
    parser.add_argument(
        "--only", help=f"comma-separated parts to run, of: {', '.join(PARTS)} "
        "(default: the throughput subjects, ingest with both ts forms, and latency, "
        "plus backlog/indicators if asked)"
    )
    parser.add_argument("--quick", action="store_true",
                        help="small figures for a quick look: 10,000 messages, 100 devices, 1 run")
    parser.add_argument("--latency-rate", type=int, default=5000, help="offered msg/s")
    parser.add_argument("--latency-seconds", type=float, default=20.0)
    parser.add_argument("--backlog", type=int, default=0,
                        help="also measure ingest RSS draining a backlog of this many messages")
    parser.add_argument("--indicators", action="store_true",
                        help="also time the indicators for --sites sites and a year of events")
    parser.add_argument("--sites", type=int, default=10_000)
    parser.add_argument("--no-dashboards", action="store_true",
                        help="skip the dashboard-panel table (raw panels vs roll-ups)")
    parser.add_argument("--drip-devices", type=int, default=2000,
                        help="drip devices of the dashboard-panel table (--quick: 100)")
    parser.add_argument("--drip-days", type=int, default=365,
                        help="days of 15-minute readings they hold (--quick: 60)")
    parser.add_argument("--dashboards-before-ranges",
                        help="comma-separated ranges (2d, 30d, 1y) whose raw 'before' panels "
                             "are timed (default: all; each raw query is given up after "
                             f"{dashboards.QUERY_CAP_S:.0f} s)")
    parser.add_argument("--ingest-workers", type=int, default=1,
                        help="ingest processes sharing one subscription (FARM_MQTT_SHARE_GROUP)")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the first ingest run and break its time down by stage")
    args = parser.parse_args(argv)
    if args.quick:
        args.messages, args.devices, args.runs = 10_000, 100, 1
        args.latency_rate, args.latency_seconds = 2000, 5.0
        args.drip_devices, args.drip_days = 100, 60
    return args


def parts(args: argparse.Namespace) -> list[str]:
    if args.only:
        chosen = [item.strip() for item in args.only.split(",") if item.strip()]
        unknown = set(chosen) - set(PARTS)
        if unknown:
            sys.exit(f"unknown part(s): {', '.join(sorted(unknown))}; choose from {PARTS}")
        return chosen
    chosen = [*SUBJECTS, "latency"]
    if args.backlog:
        chosen.append("backlog")
    if args.indicators:
        chosen.append("indicators")
    if not args.no_dashboards:
        chosen.append("dashboards")
    return chosen


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 150)
    chosen = parts(args)
    result: dict[str, Any] = {
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": machine.describe(),
        "config": {
            "messages": args.messages, "devices": args.devices, "runs": args.runs,
            "parts": chosen, "latency_rate": args.latency_rate,
            "latency_seconds": args.latency_seconds, "backlog": args.backlog,
            "sites": args.sites, "ingest_workers": args.ingest_workers,
        },
    }
    with tempfile.TemporaryDirectory(prefix="farm-bench-registry-") as folder:
        devices = fleet(args.devices)
        registry = write_registry(Path(folder), devices)
        subjects = [name for name in SUBJECTS if name in chosen]
        workload: Workload | None = None
        if subjects:
            console.print(f"preparing {args.messages:,} payloads for {args.devices:,} devices …")
            epoch_ms = bool(EPOCH_SUBJECTS & set(subjects))
            workload = Workload.prepare(devices, registry, args.messages, epoch_ms)
            workload.workers = args.ingest_workers
            runs: dict[str, list[dict[str, Any]]] = {name: [] for name in subjects}
            for number in range(1, args.runs + 1):
                for name in subjects:
                    trace = None
                    if args.profile and name == "ingest" and number == 1:
                        trace = report.RESULTS / f"pyspy-{time.strftime('%Y%m%dT%H%M%S')}.txt"
                        trace.parent.mkdir(parents=True, exist_ok=True)
                    console.print(f"run {number}/{args.runs}: {report.LABELS[name]} …")
                    outcome = run_once(name, workload, profile_to=trace)
                    runs[name].append(outcome)
                    console.print(
                        f"  {outcome['rate']:,.0f} msg/s, lost {outcome['lost']}, "
                        f"publisher {outcome['publisher_rate']:,.0f} msg/s, "
                        f"load {outcome['load_after']}"
                    )
                    if trace is not None:
                        result["profile"] = {"trace": str(trace), **profile.summarize(trace)}
            result["throughput"] = {name: report.summarize(items) for name, items in runs.items()}
            result["ratios"] = report.ratios(result["throughput"])
        if {"latency", "backlog"} & set(chosen) and workload is None:
            workload = Workload(devices, registry, 0, [])
        if "latency" in chosen and workload is not None:
            console.print(f"latency: {args.latency_rate:,} msg/s for {args.latency_seconds:g} s …")
            result["latency"] = latency.run(workload, args.latency_rate, args.latency_seconds)
        if "backlog" in chosen and workload is not None:
            count = args.backlog or 1_000_000
            console.print(f"backlog: {count:,} messages queued for a stopped ingest …")
            result["backlog"] = backlog.run(workload, count)
        if "indicators" in chosen:
            console.print(f"indicators: {args.sites:,} sites, a year of events …")
            result["indicators"] = indicators.run(args.sites)
        if "dashboards" in chosen:
            console.print(f"dashboards: {args.drip_devices:,} drip devices × {args.drip_days} "
                          "days of 15-minute readings …")
            before_ranges = (None if args.dashboards_before_ranges is None else
                             [r.strip() for r in args.dashboards_before_ranges.split(",")])
            result["dashboards"] = dashboards.run(args.drip_devices, args.drip_days,
                                                  before_ranges=before_ranges,
                                                  progress=console.print)
    result["targets"] = report.targets(result)
    result["finished_load_average"] = machine.load()
    report.table(result, console)
    if "profile" in result:
        profile.print_summary(result["profile"], console)
    path = report.write_json(result, args.json)
    console.print(f"results written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
