"""With InfluxDB unreachable the indicator publisher says so once, in one line.

It used to log a ~25-line traceback every retry (every 5 s): noise that hides
everything else in an operator's log (issue 14, item 11).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest

from devstack.servers import free_port
from farm_contract.registry import Registry
from ingest_service.indicators.engine import IndicatorEngine
from ingest_service.indicators.publisher import IndicatorPublisher
from ingest_service.influxql import InfluxQL
from ingest_service.outputs.influx import make_writer
from ingest_service.settings import Settings
from tests.helpers import write_registry


def test_an_unreachable_influxdb_is_one_line_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(influx_url=f"http://127.0.0.1:{free_port()}", influx_api="v1",
                        indicator_interval_s=60)
    registry = Registry.from_dir(write_registry(tmp_path / "registry"))
    engine = IndicatorEngine(InfluxQL(settings), lambda: registry, settings)
    publisher = IndicatorPublisher(engine, make_writer(settings), settings, retry_s=0.05)
    with caplog.at_level(logging.WARNING, logger="ingest_service.indicators.publisher"):
        publisher.start()
        deadline = time.monotonic() + 10
        while publisher.errors < 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        publisher.stop()
    assert publisher.errors >= 5  # positive control: it did retry, and fail, again and again
    records = [r for r in caplog.records if r.name == "ingest_service.indicators.publisher"]
    assert len(records) == 1, [r.getMessage() for r in records]
    assert records[0].exc_info is None and "\n" not in records[0].getMessage()
    assert "unreachable" in records[0].getMessage()
