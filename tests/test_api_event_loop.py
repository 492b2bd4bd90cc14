"""Rendering the annual report must not hold the event loop (issue 11).

A workbook for a big year is seconds of CPU work. The report route renders it in
the thread pool; here a workbook builder that waits for the test's signal is
patched in, and the test sends that signal only after ``/healthz`` has answered.
Were the workbook rendered on the event loop, the loop could not serve ``/healthz``
(nor run the test) until the builder gave up waiting: the test would fail.
"""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest

from devstack.servers import Influxd
from farm_contract.registry import Registry
from ingest_service.api import report
from ingest_service.api.app import create_app
from ingest_service.influxql import InfluxQL
from ingest_service.report.build import Report
from ingest_service.report.excel import workbook_bytes
from ingest_service.settings import Settings
from ingest_service.state import RegistryHolder, ServiceState
from tests.engine_standin import StandInEngine

SITES_CSV = "site_id,name,county,site_type,lat,lon,large_scale,area_mu\n" \
    "d1,滴灌一号,平城区,drip,40.1,113.3,,300\n"
DEVICES_CSV = "device_id,site_id,dev_eui,model\nd1-dev,d1,,x\n"
BUILDER_PATIENCE_S = 10.0
"""How long the slow builder waits for the test's signal before it gives up."""


class SlowWorkbook:
    """``workbook_bytes`` that starts, then waits for :attr:`release` before rendering."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.release = threading.Event()
        self.released_in_time: bool | None = None

    def __call__(self, built: Report) -> bytes:
        self.started.set()
        self.released_in_time = self.release.wait(BUILDER_PATIENCE_S)
        return workbook_bytes(built)


@pytest.mark.integration
def test_health_answers_while_a_workbook_renders(
    influxd: Influxd, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(influx_url=influxd.url, influx_api="v1")
    query = InfluxQL(settings)
    state = ServiceState(settings, RegistryHolder(Registry.from_csv(SITES_CSV, DEVICES_CSV)),
                         broker_connected=lambda: True, influx_reachable=query.ping)
    # the stand-in adds members/events until the issue-13 engine lands (then IndicatorEngine)
    app = create_app(state, StandInEngine(query, state.registry.get, settings))
    slow = SlowWorkbook()
    monkeypatch.setattr(report, "workbook_bytes", slow)

    async def scenario() -> tuple[httpx.Response, bool, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            download = asyncio.create_task(client.get("/api/v1/report", params={"year": 2025}))
            assert await asyncio.to_thread(slow.started.wait, 30), "the workbook never started"
            probe = await client.get("/healthz")
            still_rendering = not download.done()
            slow.release.set()
            return probe, still_rendering, await download

    probe, still_rendering, answer = asyncio.run(scenario())
    assert probe.status_code == 200 and probe.json() == {"status": "ok"}
    assert still_rendering, "the report finished before /healthz answered"
    assert slow.released_in_time, "the builder waited out its patience: it held the event loop"
    assert answer.status_code == 200
    assert answer.headers["content-type"] == report.XLSX_MEDIA_TYPE
    assert answer.content.startswith(b"PK")  # a real workbook (a zip), from the real builder
