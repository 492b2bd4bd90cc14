"""Send the farm datasource, folder and dashboards to an existing Grafana.

    python -m dashboards.push --url https://grafana.example --token "$GRAFANA_TOKEN" \\
        --influx-url http://influx:8086 --influx-token "$INFLUX_TOKEN"

For a Grafana that is not the compose stack's (which provisions from files).
Idempotent: each object is looked up by its uid and updated, or created when
missing, so running it twice leaves one datasource, one folder and the
dashboards overwritten with the committed JSON (dashboards/json/). The token is
a Grafana service-account token with the Editor role (Admin for datasources);
``GRAFANA_TOKEN`` and ``INFLUX_TOKEN`` are read from the environment when the
flags are not given, so tokens need not appear in the process list.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grafana_client.api import GrafanaApi
from grafana_client.client import GrafanaClientError, GrafanaException

from dashboards.builders import DATASOURCE_UID, Json

JSON_DIR = Path(__file__).resolve().parent / "json"
FOLDER_UID = "farm"
FOLDER_TITLE = "Farm / 农业"
NOT_FOUND = 404


@dataclass
class PushResult:
    """What was created and what updated, for the command's output and the tests."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)


def datasource_body(influx_url: str, influx_token: str, database: str) -> Json:
    """The same datasource as provisioning/datasources/influxdb.yaml: InfluxQL, token header."""
    return {
        "access": "proxy",
        "isDefault": False,
        "jsonData": {"dbName": database, "httpHeaderName1": "Authorization",
                     "httpMode": "GET", "timeInterval": "1m", "version": "InfluxQL"},
        "name": "Farm InfluxDB",
        "secureJsonData": {"httpHeaderValue1": f"Token {influx_token}"},
        "type": "influxdb",
        "uid": DATASOURCE_UID,
        "url": influx_url,
    }


def _untyped(api: GrafanaApi) -> Any:
    """grafana-client's element methods carry no annotations; call them as ``Any``."""
    return api


def _missing(exc: GrafanaClientError) -> bool:
    return int(exc.status_code) == NOT_FOUND


def push_datasource(api: GrafanaApi, body: Json, result: PushResult) -> None:
    g = _untyped(api)
    try:
        g.datasource.get_datasource_by_uid(body["uid"])
    except GrafanaClientError as exc:
        if not _missing(exc):
            raise
        g.datasource.create_datasource(body)
        result.created.append(f"datasource {body['uid']}")
        return
    g.datasource.update_datasource_by_uid(body["uid"], body)
    result.updated.append(f"datasource {body['uid']}")


def push_folder(api: GrafanaApi, uid: str, title: str, result: PushResult) -> None:
    g = _untyped(api)
    try:
        current: Any = g.folder.get_folder(uid)
    except GrafanaClientError as exc:
        if not _missing(exc):
            raise
        g.folder.create_folder(title, uid=uid)
        result.created.append(f"folder {uid}")
        return
    if current.get("title") != title:
        g.folder.update_folder(uid, title=title, overwrite=True)
        result.updated.append(f"folder {uid}")


def push_dashboard(api: GrafanaApi, board: Json, folder_uid: str, result: PushResult) -> None:
    """Create or overwrite one dashboard (Grafana matches it by uid; ``id`` must be null)."""
    uid = board["uid"]
    g = _untyped(api)
    try:
        g.dashboard.get_dashboard(uid)
        existed = True
    except GrafanaClientError as exc:
        if not _missing(exc):
            raise
        existed = False
    g.dashboard.update_dashboard({
        "dashboard": {**board, "id": None},
        "folderUid": folder_uid,
        "message": "farm-iot-collector: python -m dashboards.push",
        "overwrite": True,
    })
    (result.updated if existed else result.created).append(f"dashboard {uid}")


def load_dashboards(folder: Path = JSON_DIR) -> list[Json]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(folder.glob("*.json"))]


def push(
    api: GrafanaApi, *, influx_url: str, influx_token: str, database: str = "farm",
    folder_uid: str = FOLDER_UID, folder_title: str = FOLDER_TITLE,
    dashboards: Sequence[Json] | None = None,
) -> PushResult:
    """Datasource, then folder, then every dashboard."""
    result = PushResult()
    push_datasource(api, datasource_body(influx_url, influx_token, database), result)
    push_folder(api, folder_uid, folder_title, result)
    for board in dashboards if dashboards is not None else load_dashboards():
        push_dashboard(api, board, folder_uid, result)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.push",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--url", required=True, help="Grafana base URL")
    parser.add_argument("--token", default=os.environ.get("GRAFANA_TOKEN"),
                        help="service-account token (default: $GRAFANA_TOKEN)")
    parser.add_argument("--influx-url", default=os.environ.get("INFLUX_URL", "http://influxdb:8086"),
                        help="InfluxDB URL as Grafana's server reaches it")
    parser.add_argument("--influx-token", default=os.environ.get("INFLUX_TOKEN", ""),
                        help="InfluxDB token (default: $INFLUX_TOKEN)")
    parser.add_argument("--database", default="farm", help="InfluxQL database (v2: bucket)")
    parser.add_argument("--folder", default=FOLDER_TITLE, help="folder title")
    parser.add_argument("--folder-uid", default=FOLDER_UID)
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("a token is needed: --token or GRAFANA_TOKEN")
    api = GrafanaApi.from_url(args.url, credential=args.token, timeout=10.0)
    try:
        result = push(api, influx_url=args.influx_url, influx_token=args.influx_token,
                      database=args.database, folder_uid=args.folder_uid,
                      folder_title=args.folder)
    except (GrafanaException, OSError) as exc:  # refused, unreachable: one line, no traceback
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        print(f"dashboards.push: Grafana at {args.url} did not accept the push: {reason}",
              file=sys.stderr)
        return 1
    for name in result.created:
        print(f"created {name}")
    for name in result.updated:
        print(f"updated {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
