"""``python -m ingest_service``: run the ingest service and its HTTP API.

Subcommands: ``run`` (the default), ``indicators --year YYYY`` (print them once),
``check-registry DIR`` (validate a registry folder without starting anything).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from pydantic import ValidationError

from farm_contract.registry import Registry, RegistryError
from farm_contract.settings import Settings


def _settings() -> Settings:
    try:
        return Settings()
    except ValidationError as exc:
        lines = [
            f"  FARM_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors()
        ]
        sys.exit("invalid settings:\n" + "\n".join(lines))


def run(settings: Settings) -> int:
    import uvicorn

    from ingest_service.api import check_listen_allowed, create_app
    from ingest_service.service import IngestService

    try:
        check_listen_allowed(settings)
        service = IngestService(settings)
    except (ValueError, RegistryError) as exc:
        print(f"ingest_service: {exc}", file=sys.stderr)
        return 2
    app = create_app(service.state, service.engine)
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
        uvicorn.run(app, host=settings.api_host, port=settings.api_port, log_level="warning")
    finally:
        service.stop()
    return 0


def indicators(settings: Settings, year: int, county: str | None) -> int:
    from ingest_service.indicators import IndicatorEngine
    from ingest_service.outputs.influx import InfluxQL
    from ingest_service.state import RegistryHolder

    holder = RegistryHolder.from_settings(settings)
    engine = IndicatorEngine(InfluxQL(settings), holder.get, settings)
    values = engine.compute(year, county)
    print(
        json.dumps(
            [value.model_dump(mode="json") for value in values], ensure_ascii=False, indent=2
        )
    )
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ingest_service", description=__doc__)
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="ingest MQTT into InfluxDB and serve the HTTP API (default)")
    ind = sub.add_parser("indicators", help="compute the indicators once and print them as JSON")
    ind.add_argument("--year", type=int, required=True)
    ind.add_argument("--county")
    chk = sub.add_parser("check-registry", help="validate sites.csv and devices.csv in a folder")
    chk.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if args.command == "check-registry":
        return check_registry(args.folder)
    settings = _settings()
    if args.command == "indicators":
        return indicators(settings, args.year, args.county)
    return run(settings)


if __name__ == "__main__":
    sys.exit(main())
