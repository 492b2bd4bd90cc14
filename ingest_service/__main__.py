"""``python -m ingest_service``: run the ingest service and its HTTP API.

Subcommands: ``run`` (the default), ``indicators --year YYYY`` (print them once),
``check-registry DIR`` (validate a registry folder without starting anything),
``provision-device`` (a device's broker credentials and registry row, in one step),
``report --year YYYY [--out DIR]`` (the annual report: Excel workbook and CSV).
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import sys
from pathlib import Path
from typing import Literal

from pydantic import ValidationError

from farm_contract.registry import Registry, RegistryError
from ingest_service.logs import setup_logging
from ingest_service.settings import Settings


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        lines = [
            f"  FARM_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors()
        ]
        sys.exit("invalid settings:\n" + "\n".join(lines))


def _api_port_free(settings: Settings) -> None:
    """Refuse to start, naming the setting, when the API's port is taken (before any work)."""
    import socket

    try:
        with socket.create_server((settings.api_host, settings.api_port)):
            pass
    except OSError as exc:
        raise ValueError(
            f"cannot listen on {settings.api_host}:{settings.api_port} ({exc.strerror}): "
            "set FARM_API_PORT (or FARM_API_HOST) to a free one"
        ) from None


def run(settings: Settings) -> int:
    import uvicorn

    from ingest_service.api.app import create_app
    from ingest_service.api.security import check_listen_allowed
    from ingest_service.service import IngestService

    try:
        check_listen_allowed(settings)
        _api_port_free(settings)
        service = IngestService(settings)
    except (ValueError, RegistryError) as exc:
        print(f"ingest_service: {exc}", file=sys.stderr)
        return 2
    app = create_app(service.state, service.engine)
    # Everything loaded so far (FastAPI, pydantic, the registry: some 100 MiB of
    # objects) lives as long as the process. Out of the collector's sight, the full
    # collections that ingest's per-message garbage triggers no longer walk it:
    # ~30 % less CPU per message in the pipeline (docs/performance.md).
    gc.collect()
    gc.freeze()
    service.start()
    logging.getLogger(__name__).info(
        "ingest running: MQTT %s, InfluxDB %s (%s API), HTTP on %s:%d",
        settings.mqtt.host,
        settings.influx_url,
        settings.influx_api,
        settings.api_host,
        settings.api_port,
    )
    try:
        # log_config=None: uvicorn logs through the root handler (text or JSON, as set).
        uvicorn.run(
            app,
            host=settings.api_host,
            port=settings.api_port,
            log_level="warning",
            log_config=None,
        )
    finally:
        service.stop()
    return 0


def _figures_registry(settings: Settings, command: str) -> Registry:
    """The registry a figure needs, or one line saying what to set (no silent empty report)."""
    folder = settings.registry_dir
    if folder is None:
        sys.exit(f"{command}: no registry: set FARM_REGISTRY_DIR to the folder with sites.csv "
                 "and devices.csv (every figure is per registered site; without it all are n/a)")
    try:
        registry = Registry.from_dir(folder)
    except RegistryError as exc:
        sys.exit(f"{command}: registry {folder} has problems: " + "; ".join(exc.problems))
    if not registry.sites:
        sys.exit(f"{command}: registry {folder} has no sites: every figure would be n/a")
    return registry


def _influx_answers(settings: Settings, command: str) -> None:
    """Exit with one line when InfluxDB does not answer, instead of a traceback."""
    from ingest_service.influxql import InfluxQL

    client = InfluxQL(settings)
    try:
        if not client.ping():
            sys.exit(f"{command}: InfluxDB at {settings.influx_url} does not answer "
                     "(is it running? FARM_INFLUX_URL)")
    finally:
        client.close()


def indicators(settings: Settings, year: int, county: str | None) -> int:
    from ingest_service.indicators.engine import IndicatorEngine, UnknownCountyError
    from ingest_service.influxql import InfluxQL, QueryError

    registry = _figures_registry(settings, "indicators")
    _influx_answers(settings, "indicators")
    engine = IndicatorEngine(InfluxQL(settings), lambda: registry, settings)
    try:
        values = engine.compute(year, county)
    except QueryError as exc:
        sys.exit(f"indicators: InfluxDB query failed: {str(exc)[:300]}")
    except UnknownCountyError as exc:
        sys.exit(f"indicators: {exc}")
    print(
        json.dumps(
            [value.model_dump(mode="json") for value in values], ensure_ascii=False, indent=2
        )
    )
    return 0


def report(settings: Settings, year: int, out: Path) -> int:
    """Write the annual report (workbook and CSV) for ``year`` into ``out``."""
    from ingest_service.indicators.engine import IndicatorEngine
    from ingest_service.influxql import InfluxQL, QueryError
    from ingest_service.report.build import build_report
    from ingest_service.report.excel import write_report

    registry = _figures_registry(settings, "report")
    _influx_answers(settings, "report")
    engine = IndicatorEngine(InfluxQL(settings), lambda: registry, settings)
    try:
        built = build_report(engine, lambda: registry, settings, year)
    except QueryError as exc:
        sys.exit(f"report: InfluxDB query failed: {str(exc)[:300]}")
    for path in write_report(built, out):
        print(path)
    return 0


def check_registry(folder: Path) -> int:
    try:
        registry = Registry.from_dir(folder)
    except RegistryError as exc:
        print("registry has problems:", *exc.problems, sep="\n  ", file=sys.stderr)
        return 1
    print(
        f"ok: {len(registry.sites)} sites, {len(registry.devices)} devices, "
        f"counties: {', '.join(registry.counties)}"
    )
    return 0


def provision_device(args: argparse.Namespace) -> int:
    """Provision one device and print its credentials (the only time they are shown)."""
    from ingest_service.provision import ProvisionError, make_device, provision

    folder: Path | None = args.registry_dir
    if folder is None:
        folder = _settings().registry_dir
    if folder is None:
        print("provision-device: give --registry-dir or set FARM_REGISTRY_DIR", file=sys.stderr)
        return 2
    password = sys.stdin.readline().rstrip("\n") if args.password_stdin else None
    try:
        registry = Registry.from_dir(folder)
        device = make_device(args.device_id, args.site_id, args.dev_eui, args.model)
        done = provision(
            registry,
            lambda updated: updated.write_dir(folder),
            args.passwd_file,
            device,
            password=password,
            broker_pid=args.broker_pid,
            broker_pid_file=args.broker_pid_file,
            rotate=args.rotate,
        )
    except RegistryError as exc:
        print("registry has problems:", *exc.problems, sep="\n  ", file=sys.stderr)
        return 1
    except ProvisionError as exc:
        print("not provisioned:", *exc.problems, sep="\n  ", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "device_id": done.device.device_id,
                "site_id": done.device.site_id,
                "dev_eui": done.device.dev_eui,
                "model": done.device.model,
                "mqtt_username": done.device.device_id,
                "mqtt_password": done.password,
                "created": done.created,
                "broker_reloaded": done.broker_reloaded,
            },
            indent=2,
        )
    )
    if not done.broker_reloaded:
        print(
            "note: the broker was not signalled; run `kill -HUP <mosquitto pid>` "
            "(or pass --broker-pid / --broker-pid-file) so the password takes effect",
            file=sys.stderr,
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ingest_service", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="ingest MQTT into InfluxDB and serve the HTTP API (default)")
    ind = sub.add_parser("indicators", help="compute the indicators once and print them as JSON")
    ind.add_argument("--year", type=int, required=True)
    ind.add_argument("--county")
    rep = sub.add_parser("report", help="write the annual report: Excel workbook and CSV")
    rep.add_argument("--year", type=int, required=True)
    rep.add_argument("--out", type=Path, default=Path("."), help="folder (default: here)")
    chk = sub.add_parser("check-registry", help="validate sites.csv and devices.csv in a folder")
    chk.add_argument("folder", type=Path)
    prov = sub.add_parser(
        "provision-device",
        help="give a device broker credentials and a registry row; prints its password once",
    )
    prov.add_argument("--device-id", required=True, help="also its MQTT username")
    prov.add_argument("--site-id", required=True)
    prov.add_argument("--dev-eui", help="16 hex digits, for LoRaWAN devices")
    prov.add_argument("--model", default="")
    prov.add_argument("--passwd-file", type=Path, required=True, help="Mosquitto password file")
    prov.add_argument("--registry-dir", type=Path, help="default: FARM_REGISTRY_DIR")
    prov.add_argument(
        "--password-stdin",
        action="store_true",
        help="read the password from stdin instead of generating one",
    )
    prov.add_argument("--rotate", action="store_true",
                      help="the device exists: give it a new password (the old one stops working)")
    hup = prov.add_mutually_exclusive_group()
    hup.add_argument("--broker-pid", type=int, help="send this Mosquitto SIGHUP afterwards")
    hup.add_argument("--broker-pid-file", type=Path, help="... or the one in this pid file")
    args = parser.parse_args(argv)
    json_logs = os.environ.get("FARM_LOG_FORMAT", "").strip().lower() == "json"
    log_format: Literal["text", "json"] = "json" if json_logs else "text"
    setup_logging(args.log_level, log_format)
    if args.command == "check-registry":
        return check_registry(args.folder)
    if args.command == "provision-device":
        return provision_device(args)
    settings = _settings()
    if args.command == "report":
        return report(settings, args.year, args.out)
    if args.command == "indicators":
        return indicators(settings, args.year, args.county)
    return run(settings)


if __name__ == "__main__":
    sys.exit(main())
