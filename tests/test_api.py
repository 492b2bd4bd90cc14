"""The HTTP API (contract §7) through FastAPI's TestClient, with a real InfluxDB behind it."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from devstack.servers import Influxd, free_port
from farm_contract.indicator_params import load_divisions
from farm_contract.registry import Registry
from ingest_service.api.app import create_app
from ingest_service.api.indicators import wants_csv
from ingest_service.api.security import UnsafeListenError, check_listen_allowed, is_loopback
from ingest_service.api.upload import parse_multipart
from ingest_service.indicators.engine import IndicatorEngine
from ingest_service.influxql import InfluxQL
from ingest_service.model import Point
from ingest_service.outputs.influx import make_writer
from ingest_service.outputs.lineprotocol import encode
from ingest_service.settings import Settings
from ingest_service.state import RegistryHolder, ServiceState

PC, YZ = "平城区", "云州区"
FIELDS = ["indicator", "scope", "county", "year", "value", "numerator", "denominator",
          "target", "met", "computed_at", "formula", "parameters", "source", "coverage", "flags",
          "quality", "closed"]
DIVISIONS = list(load_divisions().counties)
"""Datong's ten county-level divisions, always listed (issue 13, farm_contract/params)."""
SITES_CSV = f"""site_id,name,county,site_type,lat,lon,large_scale,area_mu
m1,一号牛场,{PC},manure,40.1,113.3,true,
d1,滴灌一号,{PC},drip,40.1,113.3,,300
d2,滴灌二号,{YZ},drip,40.0,113.6,,200
"""
DEVICES_CSV = "device_id,site_id,dev_eui,model\nm1-dev,m1,,x\nd1-dev,d1,,x\nd2-dev,d2,,x\n"
TOKEN = "s3cret-token"
BASE_URL = "http://127.0.0.1"
"""TestClient's default host, ``testserver``, is not a trusted host."""
HOSTILE = ["x' OR 1=1 --", '"; DROP DATABASE farm', "平城区' OR county =~ /.*/ --", "\\"]


def _ms(ts: str) -> int:
    return int(datetime.fromisoformat(ts).timestamp() * 1000) * 1_000_000


def _film(site: str, county: str, kind: str, ts: str, seq: int, mass: float) -> Point:
    tags = {"site_id": site, "device_id": f"{site}-dev", "site_type": "drip",
            "county": county, "type": kind}
    return Point("event", tags, {"mass_t": mass, "seq": seq}, _ms(ts) + seq)


def _rejection(reason: str, ts: str, detail: str, topic: str = "farm/v1/x/y/event") -> Point:
    fields: dict[str, float | int | bool | str] = {
        "topic": topic, "payload": '{"v":1,"note":"坏"}', "detail": detail,
    }
    return Point("rejection", {"reason": reason}, fields, _ms(ts))


POINTS = [
    _film("d1", PC, "film_applied", "2025-04-01T10:00:00+08:00", 1, 10.0),
    _film("d1", PC, "film_recovered", "2025-10-01T10:00:00+08:00", 2, 9.0),
    _film("d2", YZ, "film_applied", "2025-04-01T10:00:00+08:00", 1, 5.0),
    _film("d2", YZ, "film_recovered", "2025-10-01T10:00:00+08:00", 2, 1.0),
    _rejection("unknown_device", "2026-05-01T08:00:00+00:00", "device zz is not registered"),
    _rejection("out_of_range", "2026-05-01T09:00:00+00:00", "flow_lpm 9999 > 5000"),
    _rejection("unknown_device", "2026-05-01T10:00:00+00:00", "device qq is not registered"),
]


@pytest.fixture(scope="module")
def influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Influxd]:
    server = Influxd(tmp_path_factory.mktemp("influxd-api"))
    server.start()
    server.query("CREATE DATABASE farm")
    make_writer(Settings(influx_url=server.url, influx_api="v1")).write(encode(POINTS))
    yield server
    server.stop()


Factory = Callable[..., TestClient]


@pytest.fixture
def make_client(influx: Influxd) -> Iterator[Factory]:
    """Build a client over a fresh state; keyword arguments override settings."""
    clients: list[TestClient] = []

    def build(broker_up: bool = True, **overrides: object) -> TestClient:
        settings = Settings.model_validate(
            {"influx_url": influx.url, "influx_api": "v1", **overrides}
        )
        query = InfluxQL(settings)
        state = ServiceState(
            settings, RegistryHolder(Registry.from_csv(SITES_CSV, DEVICES_CSV)),
            broker_connected=lambda: broker_up, influx_reachable=query.ping,
        )
        engine = IndicatorEngine(query, state.registry.get, settings)
        client = TestClient(create_app(state, engine), base_url=BASE_URL)
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.close()


@pytest.fixture
def client(make_client: Factory) -> TestClient:
    return make_client()


def _closed_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


@pytest.mark.integration
def test_health_and_readiness(make_client: Factory) -> None:
    up = make_client()
    assert up.get("/healthz").json() == {"status": "ok"}
    ready = up.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    no_broker = make_client(broker_up=False).get("/readyz")
    assert no_broker.status_code == 503
    assert no_broker.json()["broker"] is False and "MQTT broker" in no_broker.json()["detail"]
    no_influx = make_client(influx_url=_closed_url()).get("/readyz")
    assert no_influx.status_code == 503
    assert no_influx.json()["influxdb"] is False and "InfluxDB" in no_influx.json()["detail"]


@pytest.mark.integration
def test_indicators_json_has_exactly_the_contract_fields(client: TestClient) -> None:
    response = client.get("/api/v1/indicators", params={"year": 2025})
    assert response.status_code == 200
    rows = response.json()
    assert len(rows) == 4 * (1 + len(DIVISIONS)) == 44  # the city and all ten divisions
    assert [row["county"] for row in rows[4::4]] == DIVISIONS
    assert all(list(row) == FIELDS for row in rows)
    film = {row["county"]: row for row in rows if row["indicator"] == "film_recovery_rate"}
    assert {key: film[None][key] for key in FIELDS[:9]} == {
        "indicator": "film_recovery_rate", "scope": "city", "county": None, "year": 2025,
        "value": pytest.approx(10 / 15), "numerator": 10.0, "denominator": 15.0,
        "target": 0.85, "met": False,
    }
    assert film[PC]["value"] == pytest.approx(0.9) and film[PC]["met"] is True
    manure = {row["county"]: row for row in rows if row["indicator"] == "manure_facility_rate"}
    assert manure[YZ]["value"] is None and manure[YZ]["met"] is None  # n/a, not "not met"
    assert manure["新荣区"]["value"] is None and manure["新荣区"]["denominator"] == 0  # no sites
    assert {row["indicator"] for row in rows} == {
        "manure_facility_rate", "manure_ledger_coverage", "film_recovery_rate",
        "straw_utilization_rate",
    }


@pytest.mark.integration
def test_county_filter(client: TestClient) -> None:
    rows = client.get("/api/v1/indicators", params={"year": 2025, "county": YZ}).json()
    assert [(row["scope"], row["county"]) for row in rows] == [("county", YZ)] * 4


def _parse_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text.removeprefix("\ufeff"))))


def _without_computed_at(text: str) -> list[dict[str, str]]:
    """The CSV's rows without ``computed_at``, which differs between two requests."""
    return [{k: v for k, v in row.items() if k != "computed_at"} for row in _parse_csv(text)]


@pytest.mark.integration
def test_indicators_csv_by_accept_header_and_by_format(client: TestClient) -> None:
    by_accept = client.get(
        "/api/v1/indicators", params={"year": 2025}, headers={"Accept": "text/csv"}
    )
    by_format = client.get("/api/v1/indicators", params={"year": 2025, "format": "csv"})
    for response in (by_accept, by_format):
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/csv; charset=utf-8"
        assert _without_computed_at(response.text) == _without_computed_at(by_format.text)
    text = by_accept.content.decode("utf-8")
    assert text.startswith("\ufeff")  # Excel on Windows reads the Chinese names
    assert text.removeprefix("\ufeff").splitlines()[0] == ",".join(FIELDS)
    rows = _parse_csv(text)
    assert len(rows) == 44
    film_pc = next(r for r in rows if r["county"] == PC and r["indicator"] == "film_recovery_rate")
    assert film_pc["scope"] == "county" and film_pc["met"] == "true"
    assert float(film_pc["value"]) == pytest.approx(0.9)
    city = next(
        r for r in rows if r["scope"] == "city" and r["indicator"] == "manure_ledger_coverage"
    )
    # no manure data at all in 2025: n/a (flag no_data), not 0 % and not "not met"
    assert city["county"] == "" and city["numerator"] == "0.0" and city["met"] == ""
    assert city["value"] == "" and "no_data" in json.loads(city["flags"])
    empty = next(r for r in rows if r["county"] == YZ and r["indicator"] == "manure_facility_rate")
    assert empty["value"] == ""


@pytest.mark.integration
def test_csv_negotiation_details(client: TestClient) -> None:
    prefers_json = client.get(
        "/api/v1/indicators", params={"year": 2025},
        headers={"Accept": "application/json, text/csv;q=0.5"},
    )
    assert prefers_json.headers["content-type"] == "application/json"
    forced_json = client.get(
        "/api/v1/indicators", params={"year": 2025, "format": "json"},
        headers={"Accept": "text/csv"},
    )
    assert forced_json.headers["content-type"] == "application/json"
    default = client.get("/api/v1/indicators", params={"year": 2025, "format": "csv"})
    assert default.content.startswith("\ufeffindicator,".encode())  # Excel reads the names
    plain = client.get("/api/v1/indicators", params={"year": 2025, "format": "csv", "bom": False})
    assert plain.content.startswith(b"indicator,")


@pytest.mark.integration
@pytest.mark.parametrize("year", ["1999", "2101", "abc", "2025.5"])
def test_bad_year_is_422(client: TestClient, year: str) -> None:
    response = client.get("/api/v1/indicators", params={"year": year})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "year"]


@pytest.mark.integration
def test_year_defaults_to_the_current_one(client: TestClient) -> None:
    rows = client.get("/api/v1/indicators").json()
    assert {row["year"] for row in rows} == {datetime.now(UTC).astimezone(
        Settings().tz).year}


@pytest.mark.integration
def test_unknown_county_is_404_listing_the_known_ones(client: TestClient) -> None:
    response = client.get("/api/v1/indicators", params={"year": 2025, "county": "大同县"})
    assert response.status_code == 404
    assert response.json()["known_counties"] == DIVISIONS  # all ten, in official order
    assert "大同县" in response.json()["detail"]


@pytest.mark.integration
@pytest.mark.parametrize("county", HOSTILE)
def test_injection_attempts_are_404_and_harmless(
    client: TestClient, influx: Influxd, county: str
) -> None:
    for fmt in ("json", "csv"):
        response = client.get(
            "/api/v1/indicators", params={"year": 2025, "county": county, "format": fmt}
        )
        assert response.status_code == 404
    rejections = client.get("/api/v1/rejections", params={"reason": county})
    assert rejections.status_code == 200 and rejections.json()["rejections"] == []
    databases = str(influx.query("SHOW DATABASES"))
    assert "'farm'" in databases
    assert client.get("/api/v1/indicators", params={"year": 2025}).json()[2]["numerator"] == 10.0


@pytest.mark.integration
def test_a_database_not_written_yet_has_no_rejections(make_client: Factory) -> None:
    fresh = make_client(influx_db="nothing_written_yet")
    response = fresh.get("/api/v1/rejections")
    assert response.status_code == 200
    assert response.json()["rejections"] == []


@pytest.mark.integration
def test_influx_down_is_503(make_client: Factory) -> None:
    down = make_client(influx_url=_closed_url())
    response = down.get("/api/v1/indicators", params={"year": 2025})
    assert response.status_code == 503
    assert "InfluxDB" in response.json()["detail"]
    assert down.get("/api/v1/rejections").status_code == 503


@pytest.mark.integration
def test_rejections_newest_first_with_counts(client: TestClient) -> None:
    body = client.get("/api/v1/rejections").json()
    assert body["counts"] == {"unknown_device": 2, "out_of_range": 1}
    assert body["total"] == 3
    assert [r["detail"] for r in body["rejections"]] == [
        "device qq is not registered", "flow_lpm 9999 > 5000", "device zz is not registered",
    ]
    first = body["rejections"][0]
    assert first["reason"] == "unknown_device" and first["topic"] == "farm/v1/x/y/event"
    assert first["payload"] == '{"v":1,"note":"坏"}'
    assert datetime.fromisoformat(first["time"]) == datetime(2026, 5, 1, 10, tzinfo=UTC)
    only = client.get("/api/v1/rejections", params={"reason": "unknown_device", "limit": 1})
    assert [r["detail"] for r in only.json()["rejections"]] == ["device qq is not registered"]
    since = client.get("/api/v1/rejections", params={"since": "2026-05-01T17:30:00+08:00"})
    assert since.json()["counts"] == {"unknown_device": 1}
    assert client.get("/api/v1/rejections", params={"since": "2026-05-01T00:00"}).status_code == 422
    assert client.get("/api/v1/rejections", params={"limit": 0}).status_code == 422


@pytest.mark.integration
def test_rejections_before_any_database(make_client: Factory) -> None:
    response = make_client(influx_db="nothing_written_yet").get("/api/v1/rejections")
    assert response.json() == {"counts": {}, "total": 0, "rejections": []}


@pytest.mark.integration
def test_stats_and_registry_listing(client: TestClient) -> None:
    stats = client.get("/api/v1/stats").json()
    assert stats["received"] == 0 and "rejected" in stats
    sites = client.get("/api/v1/registry/sites").json()
    assert {site["site_id"]: site["county"] for site in sites} == {"m1": PC, "d1": PC, "d2": YZ}
    assert len(client.get("/api/v1/registry/devices").json()) == 3


NEW_SITES = (
    f"site_id,name,county,site_type,lat,lon,large_scale\nm9,九号牛场,{YZ},manure,40,113,是\n"
)
NEW_DEVICES = "device_id,site_id\nm9-dev,m9\n"


@pytest.mark.integration
def test_registry_import_refused_without_configured_token(client: TestClient) -> None:
    payload = {"sites_csv": NEW_SITES, "devices_csv": NEW_DEVICES}
    for headers in ({}, {"Authorization": "Bearer anything"}):
        response = client.post("/api/v1/registry", json=payload, headers=headers)
        assert response.status_code == 403
        assert "FARM_API_TOKEN" in response.json()["detail"]


@pytest.mark.integration
def test_registry_import_needs_the_right_token(make_client: Factory) -> None:
    client = make_client(api_token=TOKEN)
    payload = {"sites_csv": NEW_SITES, "devices_csv": NEW_DEVICES}
    missing = client.post("/api/v1/registry", json=payload)
    assert missing.status_code == 401 and missing.headers["www-authenticate"].startswith("Bearer")
    wrong = client.post("/api/v1/registry", json=payload, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    ok = client.post("/api/v1/registry", json=payload, headers=auth)
    assert ok.status_code == 200
    assert ok.json() == {"sites": 1, "devices": 1, "counties": [YZ], "history": [],
                         "digest": ok.json()["digest"], "corrections": ok.json()["corrections"]}
    assert len(ok.json()["digest"]) == 64
    assert client.get("/api/v1/registry/sites").status_code == 401  # a token closes reads
    sites = client.get("/api/v1/registry/sites", headers=auth).json()
    assert [s["name"] for s in sites] == ["九号牛场"]
    rows = client.get("/api/v1/indicators", params={"year": 2025}, headers=auth).json()
    assert {row["county"] for row in rows} == {None, *DIVISIONS}
    assert next(r for r in rows if r["county"] == PC and r["indicator"] == "manure_facility_rate"
                )["denominator"] == 0  # the imported registry has no farm in 平城区


@pytest.mark.integration
def test_registry_import_reports_every_problem(make_client: Factory) -> None:
    client = make_client(api_token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    bad_sites = (
        "site_id,name,county,site_type,lat,lon\nBAD ID,x,y,drip,40,113\nok,x,y,pond,40,113\n"
    )
    bad_devices = "device_id,site_id\nd1,nowhere\n"
    response = client.post(
        "/api/v1/registry", json={"sites_csv": bad_sites, "devices_csv": bad_devices}, headers=auth
    )
    assert response.status_code == 422
    problems = response.json()["problems"]
    assert len(problems) == 3 and any("nowhere" in p for p in problems)
    assert len(client.get("/api/v1/registry/sites", headers=auth).json()) == 3  # unchanged
    not_json = client.post("/api/v1/registry", content=b"sites", headers=auth)
    assert not_json.status_code == 422 and "sites_csv" in not_json.json()["detail"]


@pytest.mark.integration
def test_registry_import_as_multipart_files(make_client: Factory) -> None:
    client = make_client(api_token=TOKEN)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    files = {
        "sites": ("sites.csv", ("\ufeff" + NEW_SITES).encode("utf-8"), "text/csv"),
        "devices": ("devices.csv", NEW_DEVICES.encode("utf-8"), "text/csv"),
    }
    response = client.post("/api/v1/registry", files=files, headers=auth)
    assert response.status_code == 200, response.text
    assert client.get("/api/v1/registry/sites", headers=auth).json()[0]["name"] == "九号牛场"
    one_file = client.post("/api/v1/registry", files={"sites": files["sites"]}, headers=auth)
    assert one_file.status_code == 422 and "devices" in one_file.json()["detail"]
    gbk = {**files, "sites": ("sites.csv", NEW_SITES.encode("gbk"), "text/csv")}
    not_utf8 = client.post("/api/v1/registry", files=gbk, headers=auth)
    assert not_utf8.status_code == 422 and "UTF-8" in not_utf8.json()["detail"]


@pytest.mark.integration
def test_openapi_documents_the_endpoints(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert {"/api/v1/indicators", "/api/v1/rejections", "/api/v1/registry", "/readyz"} <= set(
        spec["paths"]
    )
    body = spec["paths"]["/api/v1/registry"]["post"]["requestBody"]["content"]
    assert {"application/json", "multipart/form-data"} == set(body)
    assert client.get("/docs").status_code == 200


# --- without InfluxDB ---------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.0.1", "::1", "[::1]", "localhost"])
def test_loopback_hosts_need_no_token(host: str) -> None:
    assert is_loopback(host)
    check_listen_allowed(Settings(api_host=host))


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "farm.example", ""])
def test_beyond_loopback_needs_a_token(host: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(UnsafeListenError, match="FARM_API_TOKEN"):
        check_listen_allowed(Settings(api_host=host))
    with pytest.raises(UnsafeListenError):
        check_listen_allowed(Settings(api_host=host, api_token=SecretStr("  ")))
    check_listen_allowed(Settings(api_host=host, api_token=SecretStr(TOKEN)))


@pytest.mark.parametrize(
    ("accept", "csv_wanted"),
    [
        (None, False), ("*/*", False), ("text/csv", True), ("application/json", False),
        ("text/csv;q=0.9, application/json", False), ("text/csv, application/json;q=0.5", True),
        ("TEXT/CSV; charset=utf-8", True), ("text/csv;q=0", False),
    ],
)
def test_wants_csv(accept: str | None, csv_wanted: bool) -> None:
    assert wants_csv(accept) is csv_wanted


def test_parse_multipart_keeps_utf8() -> None:
    body = (
        b"--XyZ\r\nContent-Disposition: form-data; name=\"sites\"; filename=\"s.csv\"\r\n"
        b"Content-Type: text/csv\r\n\r\n" + "a,平城区\r\nb,c\r\n".encode() + b"\r\n--XyZ--\r\n"
    )
    assert parse_multipart(body, "multipart/form-data; boundary=XyZ") == {
        "sites": "a,平城区\r\nb,c\r\n".encode()
    }
    with pytest.raises(ValueError):
        parse_multipart(b"plain", "text/plain")
