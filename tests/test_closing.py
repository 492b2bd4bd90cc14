"""Closed years (issue 12, point 4), tried as an auditor would on a real InfluxDB.

Write 2025's events, close 2025, then let a late 2025 event arrive: the API and the
report still give the frozen figure with ``closed: true`` and say the recomputation
differs; reopening (recorded, with a reason) gives the new figure. The frozen
document's digest is recomputed from what the API returns.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from openpyxl import load_workbook

from devstack.servers import Influxd
from farm_contract.indicator_params import load_divisions
from farm_contract.indicators import IndicatorId, IndicatorValue, Member
from farm_contract.registry import Registry
from ingest_service.api.app import create_app
from ingest_service.indicators.closing import (
    PART_CHARS,
    RECOMPUTED_DIFFERS,
    ClosedYears,
    FrozenDocumentError,
    YearStateError,
    canonical_json,
    compare,
)
from ingest_service.indicators.engine import IndicatorEngine
from ingest_service.indicators.publisher import IndicatorPublisher
from ingest_service.influxql import InfluxQL
from ingest_service.model import Point
from ingest_service.outputs.influx import make_writer
from ingest_service.outputs.lineprotocol import encode
from ingest_service.report.build import build_report
from ingest_service.report.excel import SHEETS
from ingest_service.settings import Settings
from ingest_service.state import RegistryHolder, ServiceState

ROOT = Path(__file__).resolve().parent.parent
PC, YZ = "平城区", "云州区"
SITES_CSV = f"""site_id,name,county,site_type,lat,lon,large_scale,area_mu
m1,一号牛场,{PC},manure,40.1,113.3,true,
d1,滴灌一号,{PC},drip,40.1,113.3,,300
d2,滴灌二号,{YZ},drip,40.0,113.6,,200
"""
DEVICES_CSV = "device_id,site_id,dev_eui,model\nm1-dev,m1,,x\nd1-dev,d1,,x\nd2-dev,d2,,x\n"
TOKEN = "closing-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FILM = IndicatorId.FILM_RECOVERY_RATE
_databases = itertools.count()


def _ms(ts: str) -> int:
    return int(datetime.fromisoformat(ts).timestamp() * 1000) * 1_000_000


def _film(site: str, county: str, kind: str, ts: str, seq: int, mass: float) -> Point:
    tags = {"site_id": site, "device_id": f"{site}-dev", "site_type": "drip",
            "county": county, "type": kind}
    return Point("event", tags, {"mass_t": mass, "seq": seq}, _ms(ts) + seq)


YEAR_2025 = [
    _film("d1", PC, "film_applied", "2025-04-01T10:00:00+08:00", 1, 10.0),
    _film("d1", PC, "film_recovered", "2025-10-01T10:00:00+08:00", 2, 9.0),
    _film("d2", YZ, "film_applied", "2025-04-01T10:00:00+08:00", 1, 5.0),
    _film("d2", YZ, "film_recovered", "2025-10-01T10:00:00+08:00", 2, 1.0),
]
LATE = _film("d2", YZ, "film_recovered", "2025-12-31T20:00:00+08:00", 3, 4.0)
"""A late 2025 recovery, arriving after the year was closed."""


@pytest.fixture(scope="module")
def influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Influxd]:
    server = Influxd(tmp_path_factory.mktemp("influxd-closing"))
    server.start()
    yield server
    server.stop()


@pytest.fixture
def settings(influx: Influxd) -> Settings:
    """A database of its own per test, holding 2025's events."""
    config = Settings(influx_url=influx.url, influx_api="v1",
                      influx_db=f"closing{next(_databases)}")
    make_writer(config).write(encode(YEAR_2025))
    return config


def _engine(settings: Settings) -> IndicatorEngine:
    registry = Registry.from_csv(SITES_CSV, DEVICES_CSV)
    return IndicatorEngine(InfluxQL(settings), lambda: registry, settings)


Factory = Callable[..., TestClient]


@pytest.fixture
def make_client(settings: Settings) -> Iterator[Factory]:
    clients: list[TestClient] = []

    def build(**overrides: Any) -> TestClient:
        config = Settings.model_validate({**settings.model_dump(), **overrides})
        state = ServiceState(config, RegistryHolder(Registry.from_csv(SITES_CSV, DEVICES_CSV)),
                             broker_connected=lambda: True)
        client = TestClient(create_app(state, IndicatorEngine(InfluxQL(config),
                                                              state.registry.get, config)),
                            base_url="http://127.0.0.1")
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.close()


def _row(rows: list[dict[str, Any]], indicator: IndicatorId, county: str | None = None
         ) -> dict[str, Any]:
    (row,) = [r for r in rows if r["indicator"] == indicator and r["county"] == county]
    return row


def _verify(answer: dict[str, Any]) -> None:
    """What an auditor does with ``GET /api/v1/years/{year}``: hash the document."""
    document = answer["document"]
    assert hashlib.sha256(canonical_json(document)).hexdigest() == answer["digest"]
    assert hashlib.sha256(
        json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        .encode()).hexdigest() == answer["digest"]  # as the contract spells it out


# --- the auditor's scenario ----------------------------------------------------------------


@pytest.mark.integration
def test_close_add_a_late_event_and_reopen(make_client: Factory, settings: Settings) -> None:
    api = make_client(api_token=TOKEN)

    never = api.get("/api/v1/years/2025", headers=AUTH)
    assert never.status_code == 200
    assert never.json()["state"] == "open" and never.json()["document"] is None
    assert never.json()["history"] == []
    open_rows = api.get("/api/v1/indicators", params={"year": 2025}, headers=AUTH)
    assert "x-farm-year-closed" not in open_rows.headers
    assert _row(open_rows.json(), FILM)["value"] == pytest.approx(10 / 15)
    assert not any(row["closed"] for row in open_rows.json())

    # closing needs the token, and is refused when no token is configured at all
    assert api.post("/api/v1/years/2025/close", json={"reason": "x"}).status_code == 401
    assert api.post("/api/v1/years/2025/close", json={"reason": "x"},
                    headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert make_client().post("/api/v1/years/2025/close", json={}).status_code == 403
    assert api.get("/api/v1/years/2025", headers=AUTH).json()["state"] == "open"

    closed = api.post("/api/v1/years/2025/close", json={"reason": "签字 signed by the bureau"},
                      headers=AUTH)
    assert closed.status_code == 201, closed.text
    action = closed.json()
    assert action["action"] == "close" and len(action["digest"]) == 64
    assert action["reason"] == "签字 signed by the bureau" and action["client"] == "api testclient"

    again = api.post("/api/v1/years/2025/close", json={"reason": "twice"}, headers=AUTH)
    assert again.status_code == 409 and "closed already" in again.json()["detail"]
    assert len(api.get("/api/v1/years/2025", headers=AUTH).json()["history"]) == 1

    frozen = api.get("/api/v1/indicators", params={"year": 2025}, headers=AUTH)
    assert frozen.headers["x-farm-recomputed-differs"] == "false"
    assert frozen.headers["x-farm-year-digest"] == action["digest"]
    assert all(row["closed"] and row["source"] == "closed" for row in frozen.json())

    # a late 2025 recovery arrives after the close
    make_writer(settings).write(encode([LATE]))
    recomputed = {(r.indicator, r.county): r for r in _engine(settings).compute(2025)}
    assert recomputed[(FILM, None)].value == pytest.approx(14 / 15)

    late = api.get("/api/v1/indicators", params={"year": 2025}, headers=AUTH)
    assert late.status_code == 200
    assert late.headers["x-farm-recomputed-differs"] == "true"
    assert late.headers["x-farm-year-closed"] == action["at"]
    city_film = _row(late.json(), FILM)
    assert city_film["value"] == pytest.approx(10 / 15) and city_film["closed"] is True
    assert city_film["numerator"] == 10.0 and RECOMPUTED_DIFFERS in city_film["flags"]
    assert RECOMPUTED_DIFFERS in _row(late.json(), FILM, YZ)["flags"]
    assert RECOMPUTED_DIFFERS not in _row(late.json(), FILM, PC)["flags"]  # unchanged there
    assert RECOMPUTED_DIFFERS not in _row(late.json(), IndicatorId.MANURE_FACILITY_RATE)["flags"]
    one_county = api.get("/api/v1/indicators", params={"year": 2025, "county": YZ}, headers=AUTH)
    assert [r["county"] for r in one_county.json()] == [YZ] * 4
    assert _row(one_county.json(), FILM, YZ)["numerator"] == 1.0
    assert one_county.headers["x-farm-recomputed-differs"] == "true"
    unknown = api.get("/api/v1/indicators", params={"year": 2025, "county": "无此县"},
                      headers=AUTH)
    assert unknown.status_code == 404
    assert set(unknown.json()["known_counties"]) == set(load_divisions().counties)
    as_csv = api.get("/api/v1/indicators", params={"year": 2025, "format": "csv"}, headers=AUTH)
    assert as_csv.headers["x-farm-recomputed-differs"] == "true"
    assert RECOMPUTED_DIFFERS in as_csv.text

    # the report: the frozen figures, and it says closed on …, digest …
    built = build_report(_engine(settings), lambda: Registry.from_csv(SITES_CSV, DEVICES_CSV),
                         settings, 2025)
    report_film = next(i for i in built.indicators if i.indicator == FILM and i.county is None)
    assert report_film.value == pytest.approx(10 / 15) and report_film.closed
    assert action["digest"] in built.closed and "closed on" in built.closed
    assert "recomputation now differs" in built.closed
    workbook = api.get("/api/v1/report", params={"year": 2025}, headers=AUTH)
    sheet = load_workbook(io.BytesIO(workbook.content))[SHEETS[0]]
    assert action["digest"] in str(sheet["A3"].value)
    film_row = next(r for r in sheet.iter_rows(min_row=5, values_only=True)
                    if r[1] and "Film recovery" in str(r[1]))
    assert film_row[2] == 10.0 and film_row[5] == pytest.approx(10 / 15)  # the frozen one

    # the digest verifies from what the API returns
    year = api.get("/api/v1/years/2025", headers=AUTH).json()
    assert year["state"] == "closed" and year["digest"] == action["digest"]
    _verify(year)
    assert _row(year["document"]["figures"], FILM)["numerator"] == 10.0
    registry_sha = Registry.from_csv(SITES_CSV, DEVICES_CSV).digest()
    assert year["document"]["registry"]["sha256"] == registry_sha
    # the registry version it names can be fetched (GET /api/v1/registry/versions/{digest})
    assert year["document"]["parameters"]["straw_ratios"]["corn"] == 0.84  # 霍丽丽 et al. 2020
    members = year["document"]["members"]  # the figures' members, frozen with them
    film = [m for m in members if m["indicator"] == FILM]
    assert {m["site_id"] for m in film} == {"d1", "d2"}
    assert sum(m["numerator"] for m in film) == 10.0  # the frozen figure, not 14

    # reopening: token, and a reason, are required
    assert api.post("/api/v1/years/2025/reopen", json={"reason": "late data"}).status_code == 401
    for body in (None, {}, {"reason": ""}, {"reason": "  \n "}):
        refused = api.post("/api/v1/years/2025/reopen", json=body, headers=AUTH)
        assert refused.status_code == 422, (body, refused.text)
    reopened = api.post("/api/v1/years/2025/reopen",
                        json={"reason": "county 云州区 sent a late recovery"}, headers=AUTH)
    assert reopened.status_code == 201, reopened.text
    assert reopened.json()["digest"] == action["digest"]
    assert api.post("/api/v1/years/2025/reopen", json={"reason": "again"},
                    headers=AUTH).status_code == 409

    now_open = api.get("/api/v1/indicators", params={"year": 2025}, headers=AUTH)
    assert "x-farm-year-closed" not in now_open.headers
    assert _row(now_open.json(), FILM)["value"] == pytest.approx(14 / 15)
    assert not _row(now_open.json(), FILM)["closed"]

    history = api.get("/api/v1/years", headers=AUTH).json()
    assert [item["year"] for item in history] == [2025]
    assert history[0]["state"] == "open"
    assert [(a["action"], a["reason"], a["client"]) for a in history[0]["history"]] == [
        ("close", "签字 signed by the bureau", "api testclient"),
        ("reopen", "county 云州区 sent a late recovery", "api testclient")]

    # closed again: a new document with the new figure, and the history keeps all three
    second = api.post("/api/v1/years/2025/close", headers=AUTH)
    assert second.status_code == 201 and second.json()["digest"] != action["digest"]
    final = api.get("/api/v1/years/2025", headers=AUTH).json()
    _verify(final)
    assert len(final["history"]) == 3
    assert _row(final["document"]["figures"], FILM)["numerator"] == 14.0


@pytest.mark.integration
def test_a_recomputation_that_fails_leaves_the_frozen_figures_standing(
    settings: Settings, make_client: Factory,
) -> None:
    """Absurd masses written around ingest after the close: recomputing 2025 is refused
    (503 while open), but the closed year still serves what was signed, and says it
    cannot tell whether a recomputation differs."""
    client = make_client(api_token=TOKEN)
    assert client.post("/api/v1/years/2025/close", headers=AUTH).status_code == 201
    make_writer(settings).write(encode([
        _film("d1", PC, "film_applied", "2025-06-01T10:00:00+08:00", 7, 1e308),
        _film("d2", YZ, "film_applied", "2025-06-01T10:00:00+08:00", 7, 1e308)]))
    answer = client.get("/api/v1/indicators", params={"year": 2025}, headers=AUTH)
    assert answer.status_code == 200, answer.text
    assert answer.headers["x-farm-recomputed-differs"] == "unknown"
    assert _row(answer.json(), FILM)["value"] == pytest.approx(10 / 15)
    document = client.get("/api/v1/years/2025", headers=AUTH).json()["document"]
    assert document["as_of"] == "2025-12-31T16:00:00+00:00"  # 2026-01-01 in Asia/Shanghai
    assert client.post("/api/v1/years/2025/reopen", json={"reason": "bad data"},
                       headers=AUTH).status_code == 201
    refused = client.get("/api/v1/indicators", params={"year": 2025}, headers=AUTH)
    assert refused.status_code == 503 and "absurd values" in refused.json()["detail"]


# --- the frozen document -------------------------------------------------------------------


def _members(year: int) -> list[Member]:
    """Enough members, with quotes, backslashes and Chinese, for several 15,000-char parts."""
    return [Member(indicator=FILM, year=year, county=YZ if i % 2 else PC, site_id=f"d{i}",
                   name=f'滴灌 "{i}" \\ 站\\', numerator=i * 0.1, denominator=i * 0.3,
                   detail={"grain_t": 1.5, "crop": "corn", "note": None})
            for i in range(400)]


@pytest.mark.integration
def test_members_are_frozen_in_parts_and_verify(settings: Settings) -> None:
    engine = _engine(settings)
    book = ClosedYears(engine.query, make_writer(settings))
    registry = Registry.from_csv(SITES_CSV, DEVICES_CSV)
    action = book.close(2025, engine, registry, settings, reason='a "quoted" \\ reason\nline 2',
                        client="test", members=_members)
    assert action.reason == 'a "quoted" \\ reason line 2'  # one line as recorded
    parts = engine.query('SELECT count("json") FROM "year_frozen" GROUP BY "part"')
    document = book.document(2025, action.digest)
    assert len(parts) == -(-len(canonical_json(document).decode()) // PART_CHARS) > 2
    stored = engine.query('SELECT "json" FROM "year_frozen"')[0].values
    assert max(len(row[1].encode()) for row in stored) <= 64 * 1024  # InfluxDB 1.x's limit
    assert document["members"] == [m.model_dump(mode="json") for m in _members(2025)]
    assert [Member.model_validate(m) for m in document["members"]] == _members(2025)
    assert document["closed_at"] == action.at.isoformat()
    frozen = book.frozen(2025)
    assert frozen is not None and all(row.closed for row in frozen)
    assert [r.model_dump(exclude={"closed", "source"}) for r in frozen] == [
        IndicatorValue.model_validate(r).model_dump(exclude={"closed", "source"})
        for r in document["figures"]]
    with pytest.raises(YearStateError, match="closed already"):
        book.close(2025, engine, registry, settings, reason="", client="test")
    with pytest.raises(YearStateError, match="needs a reason"):  # e.g. --reason "  "
        book.reopen(2025, reason=" \n\t", client="test")
    assert book.state(2025).closed and len(book.state(2025).history) == 1


@pytest.mark.integration
def test_an_altered_document_is_refused_not_served(
    settings: Settings, make_client: Factory,
) -> None:
    engine = _engine(settings)
    book = ClosedYears(engine.query, make_writer(settings))
    action = book.close(2025, engine, Registry.from_csv(SITES_CSV, DEVICES_CSV), settings,
                        reason="", client="test")
    text = canonical_json(book.document(2025, action.digest)).decode()
    forged = text.replace('"numerator":10.0', '"numerator":15.0', 1)
    assert forged != text
    make_writer(settings).write(encode([Point(
        "year_frozen", {"year": "2025", "digest": action.digest, "part": "00000"},
        {"json": forged, "parts": 1}, int(action.at.timestamp() * 1000) * 1_000_000)]))
    with pytest.raises(FrozenDocumentError, match="do not match their digest"):
        book.document(2025, action.digest)
    answer = make_client().get("/api/v1/indicators", params={"year": 2025})
    assert answer.status_code == 503 and "digest" in answer.json()["detail"]


@pytest.mark.integration
def test_a_year_never_closed(settings: Settings, make_client: Factory) -> None:
    engine = _engine(settings)
    book = ClosedYears(engine.query, make_writer(settings))
    assert book.frozen(2024) is None and not book.state(2024).closed
    with pytest.raises(YearStateError, match="not closed"):
        book.reopen(2024, reason="why not", client="test")
    client = make_client(api_token=TOKEN)
    assert client.post("/api/v1/years/2024/reopen", json={"reason": "x"},
                       headers=AUTH).status_code == 409
    assert client.get("/api/v1/years", headers=AUTH).json() == []
    state = client.get("/api/v1/years/2024", headers=AUTH).json()
    assert state == {"year": 2024, "state": "open", "digest": None, "last_action": None,
                     "history": [], "document": None}


def test_compare_flags_changed_missing_and_added_figures() -> None:
    def row(county: str | None, numerator: float) -> IndicatorValue:
        return IndicatorValue.of(FILM, "city" if county is None else "county", county, 2025,
                                 numerator, 10.0)

    frozen = [row(None, 5.0), row(PC, 2.0), row(YZ, 3.0)]
    assert not compare(frozen, [row(None, 5.0), row(PC, 2.0), row(YZ, 3.0)]).differs
    stamped = [r.model_copy(update={"computed_at": datetime.now(UTC), "source": "raw"})
               for r in frozen]
    assert not compare(frozen, stamped).differs  # when and how it was made: not the figure
    changed = compare(frozen, [row(None, 6.0), row(PC, 2.0), row(YZ, 4.0)])
    assert changed.differs and changed.changed == {("film_recovery_rate", "city", ""),
                                                   ("film_recovery_rate", "county", YZ)}
    gone = compare(frozen, [row(None, 5.0), row(PC, 2.0)])
    assert gone.changed == {("film_recovery_rate", "county", YZ)}
    added = compare(frozen, [*frozen, row("阳高县", 0.0)])
    assert added.differs and not added.changed
    assert compare(frozen, None).changed == {("film_recovery_rate", "city", ""),
                                             ("film_recovery_rate", "county", PC),
                                             ("film_recovery_rate", "county", YZ)}


# --- the command line -----------------------------------------------------------------------


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    return subprocess.run([sys.executable, "-m", "ingest_service", *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT, env={**clean, **env}, check=False)


@pytest.mark.integration
@pytest.mark.slow
def test_close_year_on_the_command_line(
    tmp_path: Path, settings: Settings, make_client: Factory,
) -> None:
    folder = tmp_path / "registry"
    Registry.from_csv(SITES_CSV, DEVICES_CSV).write_dir(folder)
    env = {"FARM_REGISTRY_DIR": str(folder), "FARM_INFLUX_URL": settings.influx_url,
           "FARM_INFLUX_API": "v1", "FARM_INFLUX_DB": settings.influx_db}
    done = _cli("close-year", "2025", "--reason", "annual report", **env)
    assert done.returncode == 0, done.stderr
    action = json.loads(done.stdout)
    assert action["action"] == "close" and action["client"].startswith("cli ")
    # another worker (a separate app over the same InfluxDB) sees the closed year
    rows = make_client().get("/api/v1/indicators", params={"year": 2025})
    assert rows.headers["x-farm-year-digest"] == action["digest"]
    twice = _cli("close-year", "2025", **env)
    assert twice.returncode != 0 and twice.stderr.strip().count("\n") == 0
    assert "closed already" in twice.stderr and "Traceback" not in twice.stderr
    no_reason = _cli("reopen-year", "2025", **env)
    assert no_reason.returncode == 2 and "--reason" in no_reason.stderr
    reopened = _cli("reopen-year", "2025", "--reason", "late data", **env)
    assert reopened.returncode == 0 and json.loads(reopened.stdout)["action"] == "reopen"
    no_registry = _cli("close-year", "2025", FARM_INFLUX_URL=settings.influx_url)
    assert no_registry.returncode != 0 and "set FARM_REGISTRY_DIR" in no_registry.stderr
    assert no_registry.stderr.strip().count("\n") == 0


@pytest.mark.integration
def test_grafana_points_of_a_closed_year_are_the_frozen_figures(settings: Settings) -> None:
    """Issue 12: the API, the report and the Grafana ``indicator`` points agree for a closed
    year, also after a late event: the publisher writes what was signed."""
    engine = _engine(settings)
    writer = make_writer(settings)
    book = ClosedYears(engine.query, writer)
    book.close(2025, engine, Registry.from_csv(SITES_CSV, DEVICES_CSV), settings,
               reason="signed", client="test")
    writer.write(encode([LATE]))
    assert _row([r.model_dump(mode="json") for r in engine.compute(2025)], FILM)[
        "numerator"] == 14.0  # positive control: a recomputation sees the late event
    publisher = IndicatorPublisher(engine, writer, settings, years=lambda: [2025])
    publisher.publish_once(now=datetime(2026, 3, 1, tzinfo=UTC))
    published = engine.query(
        'SELECT last("numerator") AS numerator FROM "indicator" '
        f"WHERE \"indicator\" = '{FILM}' AND \"scope\" = 'city'")
    assert published[0].values[0][1] == 10.0  # the frozen figure, not 14
