"""``make demo``: the whole system on real servers, with the indicators shown live.

Starts Mosquitto and InfluxDB on loopback (data under ``run/demo``), writes the
demo scenario's registry, starts the ingest service and its API, back-fills last
year from a simulated fleet, then runs the fleet live for this year, and shows
the indicators as they change. Stops by itself after ``--duration`` seconds (0:
until Ctrl-C) and leaves no process behind.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path
from types import FrameType
from zoneinfo import ZoneInfo

import httpx
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from devstack.servers import Influxd, Mosquitto, free_port

ROOT = Path(__file__).resolve().parent.parent
NAMES = {
    "manure_facility_rate": "facilities 设施配套",
    "manure_ledger_coverage": "ledgers 台账",
    "film_recovery_rate": "film 农膜回收",
    "straw_utilization_rate": "straw 秸秆利用",
}


def _port(preferred: int) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", preferred))
        except OSError:
            return free_port()
    return preferred


def _percent(value: float | None) -> str:
    return "—" if value is None else f"{value * 100:.1f} %"


def indicator_table(rows: list[dict[str, object]], year: int, title: str) -> Table:
    """One row per scope (the city, then each county), one column per indicator."""
    table = Table(title=f"{title} {year}", title_justify="left")
    table.add_column("scope 范围")
    for indicator, name in NAMES.items():
        target = next((float(str(r["target"])) for r in rows if r["indicator"] == indicator), 0)
        table.add_column(f"{name}\n≥ {target * 100:.0f} %", justify="right")
    counties = sorted({str(r["county"]) for r in rows if r["scope"] == "county"})
    for county in [None, *counties]:
        cells: list[Text | str] = ["city 全市" if county is None else county]
        for indicator in NAMES:
            row = next(
                (r for r in rows if r["indicator"] == indicator and r["county"] == county), None
            )
            if row is None:
                cells.append("")
                continue
            value = row["value"]
            text = _percent(float(str(value)) if value is not None else None)
            if indicator.startswith("manure"):
                text += f" ({float(str(row['numerator'])):g}/{float(str(row['denominator'])):g})"
            style = "green" if row["met"] else ("red" if value is not None else "dim")
            cells.append(Text(text, style=style))
        table.add_row(*cells)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.demo", description=__doc__)
    parser.add_argument("--duration", type=float, default=0, help="seconds; 0 = until Ctrl-C")
    parser.add_argument("--scenario", default="demo")
    parser.add_argument("--run-dir", type=Path, default=ROOT / "run" / "demo")
    args = parser.parse_args(argv)
    console = Console()
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    from simulators.fleet import build_registry, run_backfill
    from simulators.scenario import load_scenario

    scenario = load_scenario(args.scenario)
    tz = ZoneInfo("Asia/Shanghai")
    this_year = datetime.now(tz).year
    run_dir: Path = args.run_dir
    for old in ("mosquitto", "influxdb", "registry"):
        shutil.rmtree(run_dir / old, ignore_errors=True)  # every demo starts from nothing
    run_dir.mkdir(parents=True, exist_ok=True)
    mosquitto = Mosquitto(run_dir / "mosquitto", port=_port(1883))
    influxd = Influxd(run_dir / "influxdb", port=_port(8086))
    children: list[subprocess.Popen[bytes]] = []
    try:
        console.print(f"[bold]Starting Mosquitto[/] on {mosquitto.url if mosquitto.port else ''}…")
        mosquitto.start()
        influxd.start()
        console.print(f"Mosquitto {mosquitto.url}   InfluxDB {influxd.url} (v1 API, database farm)")
        registry_dir = run_dir / "registry"
        registry = build_registry(scenario)
        registry.write_dir(registry_dir)
        console.print(
            f"Registry: {len(registry.sites)} sites, {len(registry.devices)} devices "
            f"in {', '.join(registry.counties)} → {registry_dir}"
        )
        api_port = _port(8000)
        env = {
            **os.environ,
            "FARM_MQTT_URL": mosquitto.url,
            "FARM_INFLUX_URL": influxd.url,
            "FARM_INFLUX_API": "v1",
            "FARM_INFLUX_DB": "farm",
            "FARM_REGISTRY_DIR": str(registry_dir),
            "FARM_API_PORT": str(api_port),
            "FARM_INDICATOR_INTERVAL_S": "5",
            "FARM_MQTT_CLIENT_ID": "farm-ingest-demo",
        }
        log = (run_dir / "ingest.log").open("ab")
        children.append(
            subprocess.Popen(
                [sys.executable, "-m", "ingest_service"],
                env=env,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        )
        api = f"http://127.0.0.1:{api_port}"
        with httpx.Client(base_url=api, timeout=30) as http:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not stop.is_set():
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if children[0].poll() is not None:
                    raise RuntimeError(f"ingest exited; see {run_dir / 'ingest.log'}")
                time.sleep(0.2)
            console.print(
                f"Ingest service and API up: {api}/docs  ({api}/api/v1/indicators?year={this_year})"
            )
            started = time.monotonic()
            console.print(f"Back-filling {this_year - 1} from the simulated fleet…")
            report = run_backfill(
                scenario, mosquitto.url, year=this_year - 1, telemetry_interval_h=12
            )
            backfill_done = [
                f"{this_year - 1} back-filled: {report.telemetry} telemetry, {report.events} "
                f"events, {report.bad_payloads} bad payloads and {report.duplicates} duplicates "
                f"injected, in {report.elapsed_s:.0f} s"
            ]
            console.print(backfill_done[0])
            remaining = max(args.duration - (time.monotonic() - started), 5) if args.duration else 0
            sim_log = (run_dir / "simulators.log").open("ab")
            sim_args = [
                sys.executable, "-m", "simulators", "run", "--scenario", args.scenario,
                "--mqtt-url", mosquitto.url, "--mode", "live",
                "--duration", f"{remaining:.0f}",
            ]
            children.append(subprocess.Popen(sim_args, stdout=sim_log, stderr=sim_log,
                                             start_new_session=True))
            console.print("Live fleet running for this year. Ctrl-C stops everything.")
            with Live(console=console, refresh_per_second=2, transient=False) as live:
                while not stop.is_set():
                    if args.duration and time.monotonic() - started >= args.duration:
                        break
                    live.update(_screen(http, this_year, backfill_done))
                    stop.wait(2)
                live.update(_screen(http, this_year, backfill_done))
    finally:
        for child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(timeout=20)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        influxd.stop()
        mosquitto.stop()
        console.print(
            f"\nStopped: simulators, ingest, InfluxDB and Mosquitto. Data kept in {run_dir}."
        )
    return 0


def _screen(http: httpx.Client, year: int, notes: list[str]) -> Group:
    parts: list[Table | Text] = [Text(note, style="cyan") for note in notes]
    for shown, title in ((year, "This year (live)"), (year - 1, "Last year (back-filled)")):
        try:
            response = http.get("/api/v1/indicators", params={"year": shown})
            response.raise_for_status()
            parts.append(indicator_table(response.json(), shown, title))
        except httpx.HTTPError as exc:
            parts.append(Text(f"indicators {shown}: {exc}", style="red"))
    try:
        stats = http.get("/api/v1/stats").json()
        parts.append(
            Text(
                f"messages received {stats['received']}, points stored {stats['stored_points']}, "
                f"rejected {stats['rejected_total']} {stats['rejected']}",
                style="cyan",
            )
        )
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        parts.append(Text(f"stats: {exc}", style="red"))
    return Group(*parts)


if __name__ == "__main__":
    sys.exit(main())
