"""``make demo``: the whole system on real servers, with the indicators shown live.

Starts Mosquitto with the project's own configuration (broker/mosquitto.conf and
broker/acl: every simulated device logs in as itself) and InfluxDB on loopback
(data under ``run/demo``), writes the demo scenario's registry plus spare devices
the fleet does not run (the edge examples' and one to publish by hand), starts
the ingest service and its API with a token and the broker's password file (so
provisioning works), and prints the settings a second shell needs, also written
to ``run/demo/env.sh``. Then it back-fills last year from a simulated fleet, runs
the fleet live for this year, and shows the indicators as they change. Stops by
itself after ``--duration`` seconds (0: until Ctrl-C) and leaves no process behind.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shlex
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

from devstack.servers import Influxd, ShippedMosquitto, free_port
from farm_contract.registry import Registry

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


EXAMPLES = {
    "edge.toml": ROOT / "edge" / "device.example.toml",
    "edge-modbus.toml": ROOT / "edge" / "device.modbus.example.toml",
}
"""The README's edge examples; the demo provisions their devices and writes a copy of
each with its broker port and password (``run/demo/edge.toml``, ``edge-modbus.toml``)."""

INGEST_ACCOUNT = "svc.ingest"


class DemoError(RuntimeError):
    """The demo cannot start as configured (said in one line)."""


def example_device(path: Path) -> tuple[str, str]:
    """The ``device_id`` and ``site_id`` of an edge example config."""
    text = path.read_text(encoding="utf-8")
    found = {key: re.search(rf'^{key}\s*=\s*"([^"]+)"', text, re.MULTILINE)
             for key in ("device_id", "site_id")}
    missing = [key for key, match in found.items() if match is None]
    if missing:
        raise DemoError(f"{path}: no {', '.join(missing)} line")
    return found["device_id"].group(1), found["site_id"].group(1)  # type: ignore[union-attr]


def spare_devices(registry: Registry) -> dict[str, tuple[str, str]]:
    """The devices the demo provisions but its fleet does not run: one per edge example
    (keyed by the copy's file name) and ``hand`` for publishing by hand."""
    spares = {name: example_device(path) for name, path in EXAMPLES.items()}
    site = spares["edge.toml"][1]
    spares["hand"] = (f"d-{site}-hand"[:64], site)
    for name, (device_id, site_id) in spares.items():
        if device_id in registry.devices:
            raise DemoError(f"{name}: {device_id} is one of the fleet's devices; the example "
                            "would fight it for its client id (pick an id the fleet lacks)")
        if site_id not in registry.sites:
            raise DemoError(f"{name}: site {site_id} is not in the demo registry")
    return spares


def with_spares(registry: Registry, spares: dict[str, tuple[str, str]]) -> Registry:
    """The fleet's registry plus the spare devices (model ``spare``)."""
    from ingest_service.provision import make_device, with_device

    for device_id, site_id in spares.values():
        registry = with_device(registry, make_device(device_id, site_id, None, "spare"))
    return registry


def example_copy(example: Path, port: int, password: str, state_dir: Path) -> str:
    """An edge example with the demo's broker port, the device's password and an outbox
    folder under the demo's own."""
    text = example.read_text(encoding="utf-8")
    text, count = re.subn(r'^mqtt_url\s*=.*$',
                          f'mqtt_url = "mqtt://127.0.0.1:{port}"\npassword = "{password}"',
                          text, count=1, flags=re.MULTILINE)
    if not count:
        raise DemoError(f"{example}: no mqtt_url line")
    text = re.sub(r'^state_dir\s*=.*$', f'state_dir = "{state_dir}"',
                  text, count=1, flags=re.MULTILINE)
    return f"# Written by the demo from {example.relative_to(ROOT)}: its port and password.\n{text}"


def env_block(values: dict[str, str]) -> str:
    """``export`` lines for a shell (``. run/demo/env.sh``), one variable a line."""
    return "".join(f"export {key}={shlex.quote(value)}\n" for key, value in values.items())


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
    try:
        return _run(args, console, stop)
    except DemoError as exc:
        console.print(f"[red]demo: {exc}[/]")
        return 2


def _run(args: argparse.Namespace, console: Console, stop: threading.Event) -> int:
    from simulators.credentials import SECRET_ENV, device_password
    from simulators.fleet import build_registry, run_backfill
    from simulators.scenario import load_scenario

    scenario = load_scenario(args.scenario)
    tz = ZoneInfo("Asia/Shanghai")
    this_year = datetime.now(tz).year
    run_dir: Path = args.run_dir.resolve()
    for old in ("mosquitto", "influxdb", "registry", "edge-state"):
        shutil.rmtree(run_dir / old, ignore_errors=True)  # every demo starts from nothing
    run_dir.mkdir(parents=True, exist_ok=True)
    fleet = build_registry(scenario)
    spares = spare_devices(fleet)
    registry = with_spares(fleet, spares)
    # Every account the real broker configuration needs: ingest's, each simulated
    # device's (derived from the fleet secret) and the spare devices'.
    device_secret = secrets.token_hex(16)
    accounts = {INGEST_ACCOUNT: secrets.token_urlsafe(18)}
    accounts |= {device_id: device_password(device_secret, device_id)
                 for device_id in fleet.devices}
    from ingest_service.provision import generate_password

    accounts |= {device_id: generate_password() for device_id, _ in spares.values()}
    api_token = os.environ.get("FARM_API_TOKEN") or secrets.token_urlsafe(24)
    mosquitto = ShippedMosquitto(run_dir / "mosquitto", port=_port(1883), accounts=accounts)
    influxd = Influxd(run_dir / "influxdb", port=_port(8086))
    children: list[subprocess.Popen[bytes]] = []
    try:
        console.print("[bold]Starting Mosquitto[/] (broker/mosquitto.conf and broker/acl)…")
        mosquitto.start()
        assert mosquitto.process is not None
        pid_file = mosquitto.workdir / "mosquitto.pid"
        pid_file.write_text(f"{mosquitto.process.pid}\n")
        influxd.start()
        console.print(f"Mosquitto {mosquitto.url}   InfluxDB {influxd.url} (v1 API, database farm)")
        registry_dir = run_dir / "registry"
        registry.write_dir(registry_dir)
        console.print(
            f"Registry: {len(registry.sites)} sites, {len(fleet.devices)} fleet devices and "
            f"{len(spares)} spare ones in {', '.join(registry.counties)} → {registry_dir}"
        )
        for name, example in EXAMPLES.items():
            device_id = spares[name][0]
            (run_dir / name).write_text(example_copy(
                example, mosquitto.port, accounts[device_id],
                run_dir / "edge-state" / example.stem))
        api_port = _port(8000)
        api = f"http://127.0.0.1:{api_port}"
        hand_device, hand_site = spares["hand"]
        shared = {
            "FARM_MQTT_HOST": "127.0.0.1",
            "FARM_MQTT_PORT": str(mosquitto.port),
            "FARM_API_PORT": str(api_port),
            "FARM_API_URL": api,
            "FARM_API_TOKEN": api_token,
            "FARM_INFLUX_URL": influxd.url,
            "FARM_INFLUX_API": "v1",
            "FARM_INFLUX_DB": "farm",
            "FARM_REGISTRY_DIR": str(registry_dir),
            "FARM_BROKER_PASSWD_FILE": str(mosquitto.workdir / "passwd"),
            "FARM_BROKER_PID_FILE": str(pid_file),
            "FARM_DEVICE_ID": hand_device,
            "FARM_SITE_ID": hand_site,
            "FARM_DEVICE_PASSWORD": accounts[hand_device],
        }
        env_file = run_dir / "env.sh"
        descriptor = os.open(env_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as out:
            out.write("# The running demo, for a shell: . run/demo/env.sh\n" + env_block(shared))
        console.print(f"\n[bold]Paste into another shell[/] (or: . {_shown(env_file)}):")
        console.print(
            env_block(shared)
            + f"# edge examples with these devices' passwords: {_shown(run_dir / 'edge.toml')}, "
            f"{_shown(run_dir / 'edge-modbus.toml')} (their devices are not in the fleet)\n",
            markup=False, highlight=False, soft_wrap=True,
        )
        env = {
            **os.environ,
            **shared,
            "FARM_MQTT_URL": mosquitto.url_for(INGEST_ACCOUNT),
            "FARM_API_OPEN_READS": "true",  # reads without the token, on loopback only
            "FARM_INDICATOR_INTERVAL_S": "5",
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
        headers = {"Authorization": f"Bearer {api_token}"}
        with httpx.Client(base_url=api, timeout=30, headers=headers) as http:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not stop.is_set():
                try:
                    if http.get("/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if children[0].poll() is not None:
                    raise DemoError(f"ingest exited; see {run_dir / 'ingest.log'}")
                time.sleep(0.2)
            console.print(
                f"Ingest service and API up: {api}/docs  ({api}/api/v1/indicators?year={this_year})"
            )
            started = time.monotonic()
            console.print(f"Back-filling {this_year - 1} from the simulated fleet…")
            report = run_backfill(
                scenario, mosquitto.url, year=this_year - 1, telemetry_interval_h=12,
                device_secret=device_secret,
            )
            console.print(
                f"{this_year - 1} back-filled: {report.telemetry} telemetry, {report.events} "
                f"events, {report.bad_payloads} bad payloads and {report.duplicates} duplicates "
                f"injected, in {report.elapsed_s:.0f} s"
            )
            # The live fleet plays this year squeezed into its run: what is left of
            # --duration, or LIVE_YEAR_S when the demo runs until Ctrl-C.
            remaining = (max(args.duration - (time.monotonic() - started), 5) if args.duration
                         else LIVE_YEAR_S)
            sim_log = (run_dir / "simulators.log").open("ab")
            sim_args = [
                sys.executable, "-m", "simulators", "run", "--scenario", args.scenario,
                "--mqtt-url", mosquitto.url, "--mode", "live",
                "--duration", f"{remaining:.0f}",
            ]
            children.append(subprocess.Popen(
                sim_args, stdout=sim_log, stderr=sim_log, start_new_session=True,
                env={**os.environ, SECRET_ENV: device_secret}))
            console.print("Live fleet running for this year. Ctrl-C stops everything.")
            notes = [LIVE_NOTE.format(seconds=remaining)]
            with Live(console=console, refresh_per_second=2, transient=False) as live:
                while not stop.is_set():
                    if args.duration and time.monotonic() - started >= args.duration:
                        break
                    live.update(_screen(http, this_year, notes))
                    stop.wait(2)
                live.update(_screen(http, this_year, notes))
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
        (run_dir / "env.sh").unlink(missing_ok=True)
        console.print(
            f"\nStopped: simulators, ingest, InfluxDB and Mosquitto. Data kept in {run_dir}."
        )
    return 0


LIVE_YEAR_S = 600
"""Seconds the live fleet takes for this year when the demo runs until Ctrl-C."""

LIVE_NOTE = (
    "This year (live) replays last year's scenario with the whole year squeezed into "
    "{seconds:.0f} s: it fills in as the run goes and ends on last year's figures, by design."
)


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it is inside it (what a README shows)."""
    try:
        return str(path.relative_to(ROOT))
    except ValueError:
        return str(path)


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
