"""The v1 database ingest creates has year-long shard groups (issue #6, indicators at scale)."""

from __future__ import annotations

import pytest

from devstack.servers import Influxd
from ingest_service.outputs.influx import InfluxV1Writer
from ingest_service.settings import Settings

pytestmark = [pytest.mark.integration]


def policies(influxd: Influxd, db: str) -> list[list[object]]:
    result = influxd.query(f'SHOW RETENTION POLICIES ON "{db}"', db=db)
    return result["results"][0]["series"][0]["values"]  # type: ignore[index, no-any-return]


def test_created_database_has_52_week_shards(influxd: Influxd) -> None:
    writer = InfluxV1Writer(Settings(influx_url=influxd.url, influx_api="v1", influx_db="fresh"))
    try:
        writer.write(b"telemetry,device_id=d flow_lpm=1.0,seq=1i 1700000000000000000")
    finally:
        writer.close()
    (autogen,) = policies(influxd, "fresh")
    assert autogen[0] == "autogen" and autogen[2] == "8736h0m0s" and autogen[4] is True


def test_existing_database_is_left_alone(influxd: Influxd) -> None:
    """``farm`` exists already (7-day shards): the write goes in, the policy is unchanged."""
    writer = InfluxV1Writer(Settings(influx_url=influxd.url, influx_api="v1", influx_db="farm"))
    try:
        writer.write(b"telemetry,device_id=d flow_lpm=1.0,seq=1i 1700000000000000000")
    finally:
        writer.close()
    (autogen,) = policies(influxd, "farm")
    assert autogen[2] == "168h0m0s"


def test_counter_lookup_reads_every_device_in_one_query(influxd: Influxd) -> None:
    from ingest_service.service import IngestService

    influxd.query("CREATE DATABASE farm")
    lines = "\n".join(
        [
            "telemetry,device_id=d1 volume_m3=5.0,seq=1i 1700000000000000000",
            "telemetry,device_id=d1 volume_m3=7.5,seq=2i 1700000001000000000",
            "telemetry,device_id=d2 volume_m3=3.0,seq=1i 1700000000500000000",
        ]
    ).encode()
    settings = Settings(influx_url=influxd.url, influx_api="v1", influx_db="farm")
    writer = InfluxV1Writer(settings)
    writer.write(lines)
    writer.close()
    service = IngestService(settings, publish_indicators=False)
    queries: list[str] = []
    query = service.query.query

    def counted(q: str) -> list[object]:
        queries.append(q)
        return query(q)  # type: ignore[return-value]

    service.query.query = counted  # type: ignore[method-assign, assignment]
    try:
        assert service._last_counter("d1", "volume_m3") == (1_700_000_001_000_000_000, 7.5)
        assert service._last_counter("d2", "volume_m3") == (1_700_000_000_500_000_000, 3.0)
        assert service._last_counter("d1", "volume_m3") == (1_700_000_001_000_000_000, 7.5)
        assert service._last_counter("d3", "volume_m3") is None
        assert len(queries) == 1 and "GROUP BY device_id" in queries[0]
    finally:
        service.writer.close()
        service.query.close()
