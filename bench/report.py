"""Medians, ratios against the same run's references, targets, the table, and the JSON file."""

from __future__ import annotations

import json
import statistics
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench.dashboards import rows
from dashboards.shapes import MAX_ROWS

LABELS = {
    "ceiling": "mosquitto_sub ceiling",
    "bare": "bare paho subscriber",
    "baseline": "plain paho + batched /write",
    "ingest": "ingest, RFC 3339 ts",
    "ingest-epoch": "ingest, epoch-ms ts",
}
RESULTS = Path(__file__).resolve().parent / "results"


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and spread of one subject's runs; losses and memory as worst cases."""
    rates = [r["rate"] for r in runs]
    summary: dict[str, Any] = {
        "runs": runs,
        "rate_median": round(statistics.median(rates), 1),
        "rate_min": min(rates),
        "rate_max": max(rates),
        "publisher_rate_median": round(statistics.median(r["publisher_rate"] for r in runs), 1),
        "lost_max": max(r["lost"] for r in runs),
        "peak_rss_mib_max": max(r["peak_rss_mib"] for r in runs),
        "cpu_percent_median": round(statistics.median(r["cpu_percent"] for r in runs), 1),
    }
    if any("redelivered" in r for r in runs):
        summary["redelivered_max"] = max(r.get("redelivered", 0) for r in runs)
    return summary


PUBLISHER_BOUND = 0.97
"""A ceiling run receiving at ≥ 97 % of its publisher's rate measured the publisher (the
publishing client could not offer more), not what the broker can deliver."""


def ceiling_rate(throughput: dict[str, dict[str, Any]]) -> float | None:
    """The ceiling to judge against: the median of the ceiling runs that were not limited
    by the publisher; None when every run was (then no ratio to it is judged)."""
    runs = throughput.get("ceiling", {}).get("runs", [])
    free = [r["rate"] for r in runs if r["rate"] < PUBLISHER_BOUND * r["publisher_rate"]]
    return round(statistics.median(free), 1) if free else None


def ratios(throughput: dict[str, dict[str, Any]]) -> dict[str, float]:
    """Each subject's median rate against the ceiling (:func:`ceiling_rate`, or the plain
    median when every ceiling run was publisher-bound: shown, not judged) and the plain
    baseline of the same run."""
    out: dict[str, float] = {}
    for reference in ("ceiling", "baseline"):
        ref = throughput.get(reference, {}).get("rate_median")
        if reference == "ceiling":
            ref = ceiling_rate(throughput) or ref
        if not ref:
            continue
        for name, item in throughput.items():
            if name != reference:
                out[f"{name}/{reference}"] = round(item["rate_median"] / ref, 3)
    return out


ISSUE_MESSAGES, ISSUE_DEVICES = 100_000, 1_000
"""The issue's throughput workload. A shorter run (``--quick``: 10,000 messages, well
under a second) is dominated by ingest's batch interval and the 0.2 s count polling, so
its ratios are not judged against the targets."""


ISSUE_DRIP_DEVICES = 2000
"""Issue 15's dashboard scale: ≥ 2,000 drip devices × 1 year of 15-minute readings."""


def targets(result: dict[str, Any]) -> dict[str, bool | None]:
    """Issue #6's targets, and #15's (epoch-ms ``ts``, dashboards at city scale); None
    where not measured."""
    config = result.get("config", {})
    issue_workload = (
        config.get("messages", 0) >= ISSUE_MESSAGES and config.get("devices", 0) >= ISSUE_DEVICES
    )
    r = result.get("ratios", {}) if issue_workload else {}
    throughput = result.get("throughput", {})
    if "ceiling" in throughput and ceiling_rate(throughput) is None:
        r = {k: v for k, v in r.items() if not k.endswith("/ceiling")}  # measured the publisher
    ingest = throughput.get("ingest")
    epoch = throughput.get("ingest-epoch")
    latency = result.get("latency")
    backlog = result.get("backlog")
    panels = [panel for boards in (result.get("dashboards") or {}).get("after", {}).values()
              for board in boards.values() for panel in board.values()]
    city_scale = bool(panels) and (result["dashboards"]["devices"] >= ISSUE_DRIP_DEVICES
                                   and result["dashboards"]["days"] >= 365)
    return {
        "end_to_end >= 1.5x baseline": r["ingest/baseline"] >= 1.5
        if "ingest/baseline" in r else None,
        "end_to_end >= 60% of ceiling": r["ingest/ceiling"] >= 0.6
        if "ingest/ceiling" in r else None,
        "epoch-ms ts: end_to_end >= 60% of ceiling": r["ingest-epoch/ceiling"] >= 0.6
        if "ingest-epoch/ceiling" in r else None,
        "zero lost": ingest["lost_max"] == 0 if ingest else None,
        "epoch-ms ts: zero lost": epoch["lost_max"] == 0 if epoch else None,
        "zero duplicated (redelivered)": ingest.get("redelivered_max", 0) == 0 if ingest else None,
        "rss <= 150 MB flat on 1M backlog": backlog["peak_rss_mib"] <= 150
        if backlog and backlog["backlog"] >= 1_000_000 else None,
        "p99 <= 2 s at 5,000 msg/s": latency["p99_s"] <= 2.0
        if latency and latency["offered_rate"] >= 5000 else None,
        "dashboards: every panel <= 1 s at >= 2,000 devices x 1 year": all(
            p["s"] <= 1.0 and not p["error"] for p in panels) if city_scale else None,
        f"dashboards: every panel <= {MAX_ROWS:,} rows": all(p["rows"] <= MAX_ROWS for p in panels)
        if panels else None,
    }


def _fmt(value: object, digits: int = 0) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def table(result: dict[str, Any], console: Console) -> None:
    """The throughput table, then latency, backlog, indicators and targets."""
    throughput = result.get("throughput", {})
    ceiling = ceiling_rate(throughput) or throughput.get("ceiling", {}).get("rate_median")
    baseline = throughput.get("baseline", {}).get("rate_median")
    config = result["config"]
    grid = Table(title=f"{config['messages']:,} QoS 1 messages from {config['devices']:,} devices, "
                 f"median of {config['runs']} run(s); load {result['machine']['load_average']}")
    for column in ("subject", "msg/s (median)", "min – max", "× ceiling", "× baseline",
                   "publisher msg/s", "lost", "redelivered", "peak RSS MiB", "CPU %"):
        grid.add_column(column, justify="left" if column == "subject" else "right")
    for name, item in throughput.items():
        rate = item["rate_median"]
        grid.add_row(
            LABELS.get(name, name),
            _fmt(rate),
            f"{_fmt(item['rate_min'])} – {_fmt(item['rate_max'])}",
            f"{rate / ceiling:.2f}" if ceiling else "–",
            f"{rate / baseline:.2f}" if baseline else "–",
            _fmt(item["publisher_rate_median"]),
            _fmt(item["lost_max"]),
            _fmt(item.get("redelivered_max")),
            _fmt(item["peak_rss_mib_max"], 1),
            _fmt(item["cpu_percent_median"]),
        )
    if throughput:
        console.print(grid)
        bound = [r for r in throughput.get("ceiling", {}).get("runs", [])
                 if r["rate"] >= PUBLISHER_BOUND * r["publisher_rate"]]
        if bound:
            console.print(f"{len(bound)} ceiling run(s) were limited by the publisher, not the "
                          "broker, and are left out of × ceiling"
                          + ("" if ceiling_rate(throughput) else ": all were, so no ceiling "
                             "was measured and the ratios to it are shown, not judged"))
    if latency := result.get("latency"):
        console.print(
            f"latency at {latency['offered_rate']:,} msg/s offered for {latency['seconds']:g} s "
            f"(achieved offer {latency['achieved_offer_rate']:,.0f}/s): publish→stored "
            f"p50 {latency['p50_s']} s, p99 {latency['p99_s']} s, max {latency['max_s']} s; "
            f"lost {latency['lost']}; ingest peak RSS {latency['peak_rss_mib']} MiB, "
            f"CPU {latency['cpu_percent']} %"
        )
    if backlog := result.get("backlog"):
        console.print(
            f"backlog {backlog['backlog']:,}: drained in {backlog['drain_s']} s "
            f"({backlog['drain_rate']:,.0f} msg/s), ingest peak RSS {backlog['peak_rss_mib']} MiB "
            f"(10/50/90 % of drain: {backlog['rss_mib_at_10_50_90_pct_of_drain']}), "
            f"lost {backlog['lost']}, broker RSS {backlog['broker_rss_mib_with_backlog']} MiB"
        )
    if ind := result.get("indicators"):
        console.print(
            f"indicators, {ind['sites']:,} sites, {ind['points_written']:,} points for "
            f"{ind['year']}: city {ind['city_median_s']} s (first {ind['city_first_s']} s), "
            f"one county {ind['county_median_s']} s; with 52-week shards: city "
            f"{ind['with_52w_shards']['city_median_s']} s, county "
            f"{ind['with_52w_shards']['county_median_s']} s"
        )
        for label, item in (("", ind), ("52-week shards, ", ind["with_52w_shards"])):
            if rolled := item.get("rollups"):
                console.print(
                    f"  {label}with monthly roll-ups: city {rolled['city_median_s']} s "
                    f"(first {rolled['city_first_s']} s), one county "
                    f"{rolled['county_median_s']} s, as of 15 December "
                    f"{rolled['partial_city_median_s']} s; built {rolled['months_built']} "
                    f"months in {rolled['build_s']} s, {rolled['points']:,} roll-up points; "
                    f"same values as raw: {rolled['same_values']}"
                )
    if dash := result.get("dashboards"):
        dashboard_table(dash, console)
    if result.get("ratios"):
        console.print("ratios: " + ", ".join(f"{k} {v}" for k, v in result["ratios"].items()))
    config = result.get("config", {})
    if result.get("ratios") and (
        config.get("messages", 0) < ISSUE_MESSAGES or config.get("devices", 0) < ISSUE_DEVICES
    ):
        console.print(
            f"  (throughput targets are judged on the issue's workload, ≥ {ISSUE_MESSAGES:,} "
            f"messages from ≥ {ISSUE_DEVICES:,} devices; this run is shorter)"
        )
    for name, met in result.get("targets", {}).items():
        mark = "–" if met is None else ("[green]met[/]" if met else "[red]NOT met[/]")
        console.print(f"  target {name}: {mark}")


def write_json(result: dict[str, Any], path: Path | None) -> Path:
    """Write the result to ``path`` or ``bench/results/<UTC timestamp>.json``."""
    if path is None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return path


def dashboard_table(dash: dict[str, Any], console: Console) -> None:
    """Each panel of the drip and devices dashboards, raw (before) and rolled up (after)."""
    table_ = Table(title=(
        f"dashboard panels, {dash['devices']:,} drip devices × {dash['days']} days "
        f"({dash['points_written']:,} readings), county = all, site = All"))
    for column in ("range", "panel", "before (raw)", "after (roll-ups)"):
        table_.add_column(column)
    for item in rows(dash):
        table_.add_row(*item)
    console.print(table_)
    console.print(
        f"  roll-ups built in {dash['rollup_build_s']} s ({dash['rollup_days_built']} days, "
        f"{dash['rollup_build_s'] / max(1, dash['rollup_days_built']):.2f} s/day, "
        f"{dash.get('rollup_build_cycles', 1)} cycles); "
        f"a steady maintenance cycle takes {dash['rollup_cycle_s']} s; raw queries given up "
        f"after {dash.get('query_cap_s', '–')} s"
    )
