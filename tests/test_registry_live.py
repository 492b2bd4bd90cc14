"""Registry history as an auditor tries it, on a real Mosquitto and a real InfluxDB.

A device moved (old data sent after the move, on the old and on the new topic), a
registry folder edited while the service runs (the API, the report and the indicators
agree within seconds), an upload correcting a county (the report's manure sheet agrees
with its summary), an upload "from a day" (history kept, both versions listed).
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openpyxl import load_workbook
from pydantic import SecretStr

from devstack.servers import Influxd, Mosquitto
from farm_contract.registry import Registry
from ingest_service.api.app import create_app
from ingest_service.report.excel import SHEETS
from ingest_service.service import IngestService
from ingest_service.settings import Settings
from tests.helpers import DEVICES_CSV, SITES_CSV, mosquitto_pub, rows, wait_for, write_registry

pytestmark = [pytest.mark.integration, pytest.mark.slow]

YEAR = datetime.now(UTC).year - 1
"""A closed past year: its figures do not move with the clock."""
MOVE = date(YEAR, 7, 1)
BEFORE = f"{YEAR}-06-20T10:00:00+08:00"
AFTER = f"{YEAR}-07-10T10:00:00+08:00"
TOKEN = {"Authorization": "Bearer admin"}


@pytest.fixture
def service(tmp_path: Path, mosquitto: Mosquitto, influxd: Influxd) -> Iterator[IngestService]:
    settings = Settings(
        mqtt_url=mosquitto.url, registry_dir=write_registry(tmp_path / "registry"),
        mqtt_client_id="ingest-registry", batch_interval_s=0.05, influx_url=influxd.url,
        influx_api="v1", api_token=SecretStr("admin"),
    )
    svc = IngestService(settings, publish_indicators=False)
    svc.start()
    assert svc.input.wait_connected(10)
    yield svc
    svc.stop()


@pytest.fixture
def client(service: IngestService) -> TestClient:
    return TestClient(create_app(service.state, service.engine), base_url="http://127.0.0.1",
                      headers=TOKEN)


def event(port: int, site: str, device: str, seq: int, ts: str, **fields: object) -> None:
    mosquitto_pub(port, f"farm/v1/{site}/{device}/event",
                  json.dumps({"v": 1, "seq": seq, "ts": ts, **fields}))


def stored_events(influxd: Influxd) -> dict[int, tuple[str, str]]:
    """seq → (site_id, county) of every stored event."""
    return {int(str(r["seq"])): (str(r["site_id"]), str(r["county"]))
            for r in rows(influxd, "SELECT seq FROM event GROUP BY site_id, county")}


def test_a_moved_device_s_old_data_counts_where_it_was_measured(
    service: IngestService, client: TestClient, mosquitto: Mosquitto, influxd: Influxd
) -> None:
    sites = SITES_CSV + "drip-2,滴灌二号,天镇县,drip,40.4,114.1,,80,250\n"
    response = client.post("/api/v1/registry", json={"sites_csv": sites,
                                                     "devices_csv": DEVICES_CSV})
    assert response.status_code == 200, response.text
    moved = DEVICES_CSV.replace("dev-1,drip-1,,soil-probe", "dev-1,drip-2,,soil-probe")
    response = client.post("/api/v1/registry", params={"valid_from": MOVE.isoformat(),
                                                       "reason": "probe moved"},
                           json={"sites_csv": sites, "devices_csv": moved})
    assert response.status_code == 200, response.text
    assert f"device dev-1: before {MOVE}: site_id drip-1, model soil-probe; from {MOVE}: " \
           "site_id drip-1 → drip-2" in response.json()["history"]
    applied = {"type": "film_applied", "mass_t": 4.0, "area_mu": 100, "thickness_mm": 0.01}
    recovered = {"type": "film_recovered", "mass_t": 2.0}
    event(mosquitto.port, "drip-2", "dev-1", 1, BEFORE, **applied)  # new topic, old data
    event(mosquitto.port, "drip-1", "dev-1", 2, BEFORE, **recovered)  # old topic, old data
    event(mosquitto.port, "drip-2", "dev-1", 3, BEFORE, **recovered)  # new topic, old data
    event(mosquitto.port, "drip-2", "dev-1", 4, AFTER, **applied)  # new topic, new data
    event(mosquitto.port, "drip-1", "dev-1", 5, AFTER, **recovered)  # old topic, new data
    wait_for(lambda: (len(stored_events(influxd)), dict(service.state.stats.rejected))
             == (4, {"wrong_site": 1}))
    assert stored_events(influxd) == {
        1: ("drip-1", "平城区"), 2: ("drip-1", "平城区"), 3: ("drip-1", "平城区"),
        4: ("drip-2", "天镇县")}
    rejected = client.get("/api/v1/rejections", params={"reason": "wrong_site"}).json()
    assert "was at site drip-2" in json.dumps(rejected, ensure_ascii=False)
    figures = {(r["county"], r["indicator"]): r for r in
               client.get("/api/v1/indicators", params={"year": YEAR}).json()}
    film = figures[("平城区", "film_recovery_rate")]
    assert (film["numerator"], film["denominator"]) == (4.0, 4.0)  # 100 %, not 61.5 %
    assert figures[("天镇县", "film_recovery_rate")]["numerator"] == 0.0


def report_counts(client: TestClient) -> tuple[dict[str, tuple[float, float]],
                                               dict[str, tuple[int, int]]]:
    """From one downloaded workbook: the summary's ledger coverage (numerator, denominator)
    per county, and the manure sheet's (farms with a ledger, large-scale farms)."""
    response = client.get("/api/v1/report", params={"year": YEAR})
    assert response.status_code == 200, response.text
    book = load_workbook(io.BytesIO(response.content))
    summary: dict[str, tuple[float, float]] = {}
    sheet = book[SHEETS[0]]
    for row in sheet.iter_rows(min_row=5, values_only=True):
        if row[1] is not None and "Manure ledger coverage" in str(row[1]):
            summary[str(row[0])] = (float(row[2]), float(row[3]))  # type: ignore[arg-type]
    manure: dict[str, list[int]] = {}
    sheet = book[SHEETS[3]]
    header = [c.value for c in sheet[4]]
    for values in sheet.iter_rows(min_row=5, values_only=True):
        row: dict[str, Any] = dict(zip(header, values, strict=False))
        if row.get("区县 County") and row.get("规模场 Large-scale") == "是 yes":
            counts = manure.setdefault(str(row["区县 County"]), [0, 0])
            counts[0] += row["有台账 Ledger"] == "是 yes"
            counts[1] += 1
    return summary, {county: (n, d) for county, (n, d) in manure.items()}


def api_counts(client: TestClient) -> dict[str, tuple[float, float]]:
    return {r["county"]: (r["numerator"], r["denominator"])
            for r in client.get("/api/v1/indicators", params={"year": YEAR}).json()
            if r["indicator"] == "manure_ledger_coverage" and r["county"]}


def test_a_folder_edit_and_an_upload_are_seen_alike_by_api_and_report(
    service: IngestService, client: TestClient, mosquitto: Mosquitto, influxd: Influxd
) -> None:
    event(mosquitto.port, "farm-1", "dev-2", 1, BEFORE, type="manure_treated", mass_t=3)
    wait_for(lambda: stored_events(influxd))
    counts = api_counts(client)
    assert {county: counts[county] for county in ("云州区", "平城区")} == {
        "云州区": (1.0, 1.0), "平城区": (0.0, 0.0)}
    assert all(counts[county] == (0.0, 0.0) for county in counts
               if county not in ("云州区", "平城区"))  # the other divisions, always listed
    folder = service.settings.registry_dir
    assert folder is not None
    more = SITES_CSV + ("farm-2,养殖场二号,云州区,manure,40.3,113.4,true,,\n"
                        "farm-3,养殖场三号,云州区,manure,40.3,113.5,true,,\n")
    (folder / "sites.csv").write_text(more, encoding="utf-8")
    edited = time.monotonic()
    wait_for(lambda: {s["site_id"] for s in client.get("/api/v1/registry/sites").json()}
             >= {"farm-2", "farm-3"}, timeout=10)
    seen_after = time.monotonic() - edited
    assert seen_after < 6, f"the folder edit was seen after {seen_after:.1f} s"
    summary, manure = report_counts(client)
    assert api_counts(client)["云州区"] == summary["云州区"] == (1.0, 3.0)
    assert manure["云州区"] == (1, 3)

    # A correction without a date: farm-1 was always in 平城区. Its ledger goes with it,
    # in the summary and in the manure sheet alike.
    corrected = more.replace("farm-1,养殖场一号,云州区", "farm-1,养殖场一号,平城区")
    response = client.post("/api/v1/registry", json={"sites_csv": corrected,
                                                     "devices_csv": DEVICES_CSV},
                           params={"author": "auditor", "reason": "typo"})
    assert response.status_code == 200, response.text
    assert response.json()["corrections"] == ["site farm-1: county 云州区 → 平城区 (for all time)"]
    summary, manure = report_counts(client)
    assert api_counts(client)["平城区"] == summary["平城区"] == (1.0, 1.0)
    assert manure["平城区"] == (1, 1) and manure["云州区"] == (0, 2)
    assert summary["云州区"] == (0.0, 2.0)
    versions = client.get("/api/v1/registry/versions").json()
    assert [v["source"] for v in versions] == ["start", "folder", "upload"]
    assert versions[-1]["who"].startswith("auditor") and versions[-1]["reason"] == "typo"


def test_an_upload_from_a_day_keeps_history_and_both_versions(
    service: IngestService, client: TestClient
) -> None:
    first = Registry.from_csv(SITES_CSV, DEVICES_CSV).digest()
    moved = SITES_CSV.replace("farm-1,养殖场一号,云州区", "farm-1,养殖场一号,平城区")
    response = client.post("/api/v1/registry", params={"valid_from": MOVE.isoformat()},
                           json={"sites_csv": moved, "devices_csv": DEVICES_CSV})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["corrections"] == []  # a change from a day rewrites nothing before it
    versions = client.get("/api/v1/registry/versions").json()
    assert [(v["digest"], v["valid_from"]) for v in versions] == [
        (first, None), (body["digest"], MOVE.isoformat())]
    old = client.get(f"/api/v1/registry/versions/{first[:12]}").json()
    assert Registry.from_csv(old["sites_csv"], old["devices_csv"]).digest() == first
    new = client.get(f"/api/v1/registry/versions/{body['digest']}").json()
    history = Registry.from_csv(new["sites_csv"], new["devices_csv"])
    assert [(s.county, s.valid_from) for s in history.site_history["farm-1"]] == [
        ("云州区", None), ("平城区", MOVE)]
    before = client.get("/api/v1/registry/sites", params={"on": "2020-01-01"}).json()
    assert {s["site_id"]: s["county"] for s in before}["farm-1"] == "云州区"
    now = {s["site_id"]: s["county"] for s in client.get("/api/v1/registry/sites").json()}
    assert now["farm-1"] == "平城区"
    folder = service.settings.registry_dir
    assert folder is not None and Registry.from_dir(folder).digest() == body["digest"]
    assert client.get("/api/v1/registry/versions/" + "0" * 12).status_code == 404
    # an upload from a day that leaves a site out is refused: a site cannot end
    response = client.post("/api/v1/registry", params={"valid_from": MOVE.isoformat()},
                           json={"sites_csv": moved.replace(
                               "straw-1,秸秆站,云州区,straw,40.0,113.6,,300,\n", ""),
                               "devices_csv": DEVICES_CSV.replace("dev-3,straw-1,,scale\n", "")})
    assert response.status_code == 422
    assert any("site straw-1 is missing" in p for p in response.json()["problems"])
    assert len(client.get("/api/v1/registry/versions").json()) == 2
