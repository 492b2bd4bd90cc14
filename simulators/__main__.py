"""``python -m simulators``: a scenario's registry, its fleet, its expected indicators.

    python -m simulators registry --scenario demo --out run/registry
    python -m simulators run --scenario demo --mqtt-url mqtt://127.0.0.1:1883 \
        --mode live --duration 60
    python -m simulators run --scenario test-small --mode backfill --year 2025
    python -m simulators expected --scenario demo --year 2025
    python -m simulators modbus --config edge/device.modbus.example.toml --port 5020
    SIMULATOR_DEVICE_SECRET=… python -m simulators broker-users --scenario demo --out users.txt

With ``SIMULATOR_DEVICE_SECRET`` set, ``run`` logs every device in as itself with a
password derived from the secret (simulators/credentials.py), and ``broker-users``
writes those ``device_id:password`` lines for the broker's password file.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import threading
from datetime import datetime
from pathlib import Path
from types import FrameType

from simulators.credentials import SECRET_ENV, write_users_file
from simulators.expected import expected_indicators
from simulators.fleet import (
    MAX_RECONNECTS,
    build_registry,
    report_json,
    run_backfill,
    run_live,
)
from simulators.scenario import Scenario, ScenarioError, load_scenario


def _scenario(args: argparse.Namespace) -> Scenario:
    scenario = load_scenario(args.scenario)
    if getattr(args, "seed", None) is not None:
        scenario = scenario.model_copy(update={"seed": args.seed})
    return scenario


def _registry(args: argparse.Namespace) -> int:
    registry = build_registry(_scenario(args))
    registry.write_dir(args.out)
    print(f"wrote {len(registry.sites)} sites and {len(registry.devices)} devices to {args.out}")
    return 0


def _broker_users(args: argparse.Namespace) -> int:
    secret = os.environ.get(SECRET_ENV)
    if not secret:
        print(f"error: set {SECRET_ENV}", file=sys.stderr)
        return 2
    written = write_users_file(Path(args.out), secret, build_registry(_scenario(args)).devices)
    print(f"wrote {written} simulated device accounts to {args.out}")
    return 0


def _run(args: argparse.Namespace) -> int:
    scenario = _scenario(args)
    secret = os.environ.get(SECRET_ENV) or None
    if args.mode == "backfill":
        report = run_backfill(scenario, args.mqtt_url, args.prefix, args.year,
                              telemetry_interval_h=args.interval_h, device_secret=secret)
    else:
        if args.duration <= 0:
            # the year is squeezed into the run: there is no "for ever"
            print("error: --duration: live runs need a number of seconds > 0", file=sys.stderr)
            return 2
        stop = threading.Event()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            stop.set()

        signal.signal(signal.SIGINT, on_signal)
        signal.signal(signal.SIGTERM, on_signal)
        report = run_live(scenario, args.mqtt_url, args.prefix, args.duration, stop,
                          interval_s=args.interval_s, device_secret=secret)
    print(report_json(report))
    if report.most_reconnects > MAX_RECONNECTS:
        print(f"error: the broker disconnected the fleet's clients {report.reconnects} times "
              f"(one device {report.most_reconnects} times): client ids connected elsewhere: "
              "another process uses these devices' credentials (a running demo's fleet?); "
              "the run is not complete", file=sys.stderr)
        return 1
    return 0


def _expected(args: argparse.Namespace) -> int:
    scenario = _scenario(args)
    values = expected_indicators(scenario, args.year or scenario.year)
    if args.json:
        print(json.dumps([v.model_dump(mode="json") for v in values], ensure_ascii=False,
                         indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{scenario.name}: expected indicators {args.year or scenario.year}")
    for column in ("indicator", "scope", "value", "numerator", "denominator", "target", "met"):
        table.add_column(column)
    for v in values:
        table.add_row(v.indicator.value, v.county or "全市", "—" if v.value is None
                      else f"{v.value:.4f}", f"{v.numerator:g}", f"{v.denominator:g}",
                      f"{v.target:g}", "✓" if v.met else "✗")
    Console().print(table)
    return 0


MODBUS_EXAMPLE = Path(__file__).resolve().parents[1] / "edge" / "device.modbus.example.toml"


def _modbus(args: argparse.Namespace) -> int:
    from edge.config import ConfigError, ModbusDriverConfig, load_config
    from simulators.modbus import RegisterSimulator, SimulatedClock, SimulatorError, serve

    try:
        config = load_config(args.config, check_files=False)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not isinstance(config.driver, ModbusDriverConfig):
        print(f"error: {args.config}: driver.kind: the simulator needs \"modbus\"",
              file=sys.stderr)
        return 2
    try:
        simulator = RegisterSimulator(config.driver, seed=args.seed,
                                      clock=SimulatedClock(args.at))
    except SimulatorError as exc:
        print(f"error: {args.config}: {exc}", file=sys.stderr)
        return 2
    port = args.port if args.port is not None else config.driver.port
    if logging.getLogger().getEffectiveLevel() >= logging.WARNING:
        # pymodbus warns about a busy port before we say it in one line; its errors
        # (e.g. a request for a unit the config does not have) still show
        logging.getLogger("pymodbus.logging").setLevel(logging.ERROR)

    def started() -> None:
        print(f"modbus simulator on {args.host}:{port} ({config.driver.site_type.value} site, "
              f"registers of {args.config}): {simulator.describe()}; Ctrl-C stops it",
              flush=True)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await serve(simulator, args.host, port, stop, started)

    try:
        asyncio.run(run())
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print("modbus simulator stopped", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulators", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--log-level", default="WARNING")
    commands = parser.add_subparsers(dest="command", required=True)

    def scenario_args(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--scenario", required=True, help="scenario name or TOML path")
        sub.add_argument("--seed", type=int, help="override the scenario's seed")

    registry = commands.add_parser("registry", help="write sites.csv and devices.csv")
    scenario_args(registry)
    registry.add_argument("--out", required=True, help="folder to write into")
    registry.set_defaults(handler=_registry)

    run = commands.add_parser("run", help="run the fleet against a broker")
    scenario_args(run)
    run.add_argument("--mqtt-url", default="mqtt://127.0.0.1:1883")
    run.add_argument("--prefix", default="farm")
    run.add_argument("--mode", choices=("live", "backfill"), default="live")
    run.add_argument("--duration", type=float, default=60.0, help="live: seconds to run")
    run.add_argument("--interval-s", type=float, help="live: telemetry interval per device")
    run.add_argument("--year", type=int, help="backfill: the year to simulate")
    run.add_argument("--interval-h", type=float, help="backfill: telemetry interval (hours)")
    run.set_defaults(handler=_run)

    users = commands.add_parser(
        "broker-users", help=f"write device_id:password lines derived from ${SECRET_ENV}")
    scenario_args(users)
    users.add_argument("--out", required=True, help="file to write (mode 0600)")
    users.set_defaults(handler=_broker_users)

    expected = commands.add_parser("expected", help="print the indicators ingest should compute")
    scenario_args(expected)
    expected.add_argument("--year", type=int)
    expected.add_argument("--json", action="store_true")
    expected.set_defaults(handler=_expected)

    modbus = commands.add_parser(
        "modbus", help="serve a Modbus config's registers with simulated values (Modbus TCP)")
    modbus.add_argument("--config", default=str(MODBUS_EXAMPLE),
                        help="device config whose [driver] register map to serve "
                             "(default: the shipped Modbus example)")
    modbus.add_argument("--host", default="127.0.0.1")
    modbus.add_argument("--port", type=int, help="default: the config's driver.port")
    modbus.add_argument("--seed", type=int, default=0, help="the simulated site's seed")
    modbus.add_argument("--at", type=datetime.fromisoformat,
                        help="simulated start instant, e.g. 2025-07-01T06:00+08:00 for an "
                             "irrigation morning (default: now)")
    modbus.set_defaults(handler=_modbus)

    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        code: int = args.handler(args)
    except ScenarioError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (ConnectionError, TimeoutError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
