"""Issue 10, values side: absurd numbers, meter resets, partial acceptance, hostile topics.

Against a real InfluxDB 1.x, through the service's own pipeline (``IngestService``,
not started: its MQTT input stays idle and messages are handed to the pipeline as
the input would).
"""

from __future__ import annotations

import json
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from devstack.servers import Influxd
from farm_contract.registry import Registry
from ingest_service.indicators.engine import IndicatorEngine
from ingest_service.influxql import InfluxQL, QueryError
from ingest_service.model import Inbound
from ingest_service.pipeline.batcher import Pipeline
from ingest_service.service import IngestService
from ingest_service.settings import Settings
from tests.helpers import count, rows, through_pipeline, write_registry

NOW = datetime.now(UTC).replace(microsecond=0)
DRIP = "farm/v1/drip-1/dev-1"
STRAW = "farm/v1/straw-1/dev-3"


def at(seconds: float) -> str:
    """An RFC 3339 time ``seconds`` after an hour ago (inside the current year's window)."""
    moment = NOW - timedelta(hours=1) + timedelta(seconds=seconds)
    return moment.isoformat().replace("+00:00", "Z")


def settings_for(influxd: Influxd, registry: Path) -> Settings:
    return Settings(
        influx_url=influxd.url,
        influx_api="v1",
        registry_dir=registry,
        rollups=False,
    )


@pytest.fixture
def registry_dir(tmp_path: Path) -> Path:
    return write_registry(tmp_path / "registry")


@pytest.fixture
def service(influxd: Influxd, registry_dir: Path) -> Iterator[IngestService]:
    svc = IngestService(settings_for(influxd, registry_dir), publish_indicators=False)
    yield svc
    svc.writer.close()
    svc.query.close()


def send(pipeline: Pipeline, topic: str, body: object) -> int:
    """Store one message through the threaded pipeline; how many times it was acknowledged."""
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return through_pipeline(pipeline, [(topic, payload)])[0]


def reasons(influxd: Influxd) -> list[str]:
    return sorted(str(r["reason"]) for r in rows(influxd, "SELECT * FROM rejection"))


def straw_rate(influxd: Influxd, registry_dir: Path) -> tuple[float | None, bool]:
    settings = settings_for(influxd, registry_dir)
    registry = Registry.from_dir(registry_dir)
    engine = IndicatorEngine(InfluxQL(settings), lambda: registry, settings)
    year = NOW.astimezone(settings.tz).year
    [city] = [
        r
        for r in engine.compute(year, now=NOW)
        if r.scope == "city" and r.indicator == "straw_utilization_rate"
    ]
    return city.value, city.met


# --- finding 2: per-type maxima; no answer becomes anything but QueryError -----------


@pytest.mark.integration
def test_an_absurd_event_mass_is_rejected_and_the_city_rate_stands(
    service: IngestService, influxd: Influxd, registry_dir: Path
) -> None:
    pipeline = service.pipeline
    harvest = {"v": 1, "seq": 1, "ts": at(0), "type": "harvest", "crop": "corn", "grain_t": 100}
    used = {"v": 1, "seq": 2, "ts": at(1), "type": "straw_utilized", "use": "feed", "mass_t": 60}
    assert send(pipeline, f"{STRAW}/event", harvest) == 1
    assert send(pipeline, f"{STRAW}/event", used) == 1
    before = straw_rate(influxd, registry_dir)
    assert before == (pytest.approx(60 / (100 * 0.84 * 0.81)), False)  # collectable straw

    for seq, mass in ((3, 1e308), (4, 1e308), (5, 100_001)):
        absurd = {**used, "seq": seq, "ts": at(seq), "mass_t": mass}
        assert send(pipeline, f"{STRAW}/event", absurd) == 1

    assert straw_rate(influxd, registry_dir) == before
    assert reasons(influxd) == ["out_of_range"] * 3
    assert count(influxd, "SELECT count(mass_t) FROM event") == 1
    [detail, *_] = [str(r["detail"]) for r in rows(influxd, "SELECT detail FROM rejection")]
    assert "above the maximum" in detail


@pytest.mark.integration
def test_overflowing_stored_events_give_a_query_error_not_a_crash(
    influxd: Influxd, registry_dir: Path
) -> None:
    """Events written before the maxima (or by hand) that overflow InfluxDB's sum."""
    lines = "\n".join(
        f"event,county=云州区,site_id=straw-1,type=straw_utilized,use=feed mass_t=1e308,seq={n}i "
        f"{int((NOW - timedelta(hours=1)).timestamp()) * 10**9 + n}"
        for n in range(2)
    )
    httpx.post(f"{influxd.url}/write", params={"db": "farm"}, content=lines.encode())
    query = InfluxQL(settings_for(influxd, registry_dir))
    with pytest.raises(QueryError, match="malformed JSON"):
        query.query("SELECT sum(mass_t) FROM event")  # InfluxDB answers a Go error as 200
    with pytest.raises(QueryError):
        straw_rate(influxd, registry_dir)


@pytest.mark.integration
def test_a_single_absurd_stored_event_is_a_data_error_not_met(
    influxd: Influxd, registry_dir: Path
) -> None:
    time_ns = int((NOW - timedelta(hours=1)).timestamp()) * 10**9
    httpx.post(
        f"{influxd.url}/write",
        params={"db": "farm"},
        content=(
            "event,county=云州区,site_id=straw-1,type=harvest,crop=corn grain_t=100,seq=1i "
            f"{time_ns}\n"
            "event,county=云州区,site_id=straw-1,type=straw_utilized,use=feed "
            f"mass_t=1e308,seq=2i {time_ns + 1}"
        ).encode(),
    )
    with pytest.raises(QueryError, match="absurd"):
        straw_rate(influxd, registry_dir)


# --- finding 7: counters have a maximum, and a replaced meter is reset explicitly ------


def volume(seq: int, value: float) -> dict[str, object]:
    return {"v": 1, "seq": seq, "ts": at(seq), "readings": {"volume_m3": value}}


def counter_reset(seq: int) -> dict[str, object]:
    return {"v": 1, "seq": seq, "ts": at(seq), "type": "counter_reset", "metric": "volume_m3"}


@pytest.mark.integration
def test_an_absurd_counter_is_no_baseline_and_a_reset_starts_a_new_one(
    service: IngestService, influxd: Influxd, registry_dir: Path
) -> None:
    pipeline = service.pipeline
    topic = f"{DRIP}/telemetry"
    send(pipeline, topic, volume(10, 100.0))
    send(pipeline, topic, volume(11, 1e30))  # out_of_range: no baseline
    send(pipeline, topic, volume(12, 150.0))  # accepted: 1e30 was never the baseline
    send(pipeline, topic, volume(13, 120.0))  # counter_decreased: no reset
    assert reasons(influxd) == ["counter_decreased", "out_of_range"]

    assert send(pipeline, f"{DRIP}/event", counter_reset(14)) == 1
    send(pipeline, topic, volume(15, 3.0))  # the new meter: accepted
    send(pipeline, topic, volume(16, 2.0))  # below the new meter's 3: counter_decreased
    assert reasons(influxd) == ["counter_decreased"] * 2 + ["out_of_range"]
    stored = [r["volume_m3"] for r in rows(influxd, "SELECT volume_m3 FROM telemetry")]
    assert stored == [100.0, 150.0, 3.0]
    assert count(influxd, "SELECT count(seq) FROM event WHERE metric = 'volume_m3'") == 1

    # After a restart the reset is still known, and a decrease is still refused.
    again = IngestService(settings_for(influxd, registry_dir), publish_indicators=False)
    send(again.pipeline, topic, volume(17, 2.5))
    send(again.pipeline, topic, volume(18, 4.0))
    assert reasons(influxd) == ["counter_decreased"] * 3 + ["out_of_range"]
    assert count(influxd, "SELECT count(volume_m3) FROM telemetry") == 4


@pytest.mark.integration
def test_a_reset_before_a_restart_holds_without_any_new_reading(
    service: IngestService, influxd: Influxd, registry_dir: Path
) -> None:
    topic = f"{DRIP}/telemetry"
    send(service.pipeline, topic, volume(20, 5000.0))
    send(service.pipeline, f"{DRIP}/event", counter_reset(21))
    restarted = IngestService(settings_for(influxd, registry_dir), publish_indicators=False)
    send(restarted.pipeline, topic, volume(22, 1.0))
    assert reasons(influxd) == []
    # Without a reset, a restarted ingest still refuses a decrease.
    again = IngestService(settings_for(influxd, registry_dir), publish_indicators=False)
    send(again.pipeline, topic, volume(23, 0.5))
    assert reasons(influxd) == ["counter_decreased"]


def test_a_counter_reset_names_a_never_decreasing_metric_of_the_site(
    service: IngestService,
) -> None:
    pipeline = service.pipeline
    bad = {**counter_reset(1), "metric": "flow_lpm"}
    refused = pipeline.outcome(Inbound(f"{DRIP}/event", json.dumps(bad).encode(), 1))
    assert [r.reason for r in refused.rejections] == ["invalid_payload"]
    reset = json.dumps(counter_reset(1)).encode()
    elsewhere = pipeline.outcome(Inbound("farm/v1/farm-1/dev-2/event", reset, 1))
    assert [r.reason for r in elsewhere.rejections] == ["event_not_for_site"]


# --- finding 4: partial acceptance -----------------------------------------------------


@pytest.mark.integration
def test_a_batch_of_five_with_one_bad_record_stores_four(
    service: IngestService, influxd: Influxd
) -> None:
    batch = [
        {"seq": 30 + i, "ts": at(30 + i), "readings": {"flow_lpm": float(i)}} for i in range(5)
    ]
    batch[2]["ts"] = at(32).removesuffix("Z")  # no offset
    acks = send(service.pipeline, f"{DRIP}/telemetry", {"v": 1, "batch": batch})
    assert acks == 1, "acknowledged once, after storing: the edge outbox drops the message"
    assert [r["flow_lpm"] for r in rows(influxd, "SELECT flow_lpm FROM telemetry")] == [
        0.0, 1.0, 3.0, 4.0,
    ]
    [rejection] = rows(influxd, "SELECT * FROM rejection")
    assert rejection["reason"] == "invalid_payload"
    assert str(rejection["detail"]).startswith("batch[2]: ts: ")

    events = [
        {"seq": 40 + i, "ts": at(40 + i), "type": "harvest", "crop": "corn", "grain_t": 1.0}
        for i in range(5)
    ]
    events[1]["grain_t"] = "lots"
    events[3]["grain_t"] = 1e300
    assert send(service.pipeline, f"{STRAW}/event", {"v": 1, "batch": events}) == 1
    assert count(influxd, "SELECT count(grain_t) FROM event") == 3
    assert reasons(influxd) == ["invalid_payload", "invalid_payload", "out_of_range"]


@pytest.mark.integration
def test_a_bad_reading_of_any_type_rejects_only_itself(
    service: IngestService, influxd: Influxd
) -> None:
    readings = {"flow_lpm": 2.5, "soil_temp_c": "hot", "rain_mm": None,
                "pressure_kpa": {"a": 1}, "valve_open": [True]}
    body = {"v": 1, "seq": 50, "ts": at(50), "readings": readings}
    assert send(service.pipeline, f"{DRIP}/telemetry", body) == 1
    assert [r["flow_lpm"] for r in rows(influxd, "SELECT flow_lpm FROM telemetry")] == [2.5]
    assert reasons(influxd) == ["out_of_range"] * 4


@pytest.mark.integration
def test_a_nested_chirpstack_object_loses_only_its_nested_part(
    service: IngestService, influxd: Influxd
) -> None:
    uplink = {
        "deviceInfo": {"devEui": "0011223344556677"},
        "time": at(60),
        "fCnt": 60,
        "object": {"lagoon_level_pct": 40.0, "gas": {"nh3_ppm": 3.0, "deep": {"x": 1}}},
    }
    topic = "application/1/device/0011223344556677/event/up"
    assert send(service.pipeline, topic, uplink) == 1
    assert [r["lagoon_level_pct"] for r in rows(influxd, "SELECT * FROM telemetry")] == [40.0]
    details = sorted(str(r["detail"]) for r in rows(influxd, "SELECT detail FROM rejection"))
    assert reasons(influxd) == ["unknown_metric"] * 2
    assert "gas.deep.x is not in the metric catalog" in details[0]
    assert "gas.nh3_ppm is not in the metric catalog" in details[1]


# --- finding 3: a hostile topic cannot grow ingest's memory -----------------------------


def test_a_thousand_huge_site_segments_leave_no_trace_in_memory(service: IngestService) -> None:
    """1,000 distinct 60 KB site segments (60 MB of topics) keep < 2 MiB once handled."""
    pipeline = service.pipeline
    body = json.dumps(volume(1, 1.0)).encode()
    pipeline.outcome(Inbound(f"{DRIP}/telemetry", body, 1))  # warm the caches
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for n in range(1000):
            site = f"{n:04d}" + "s" * 60_000
            outcome = pipeline.outcome(Inbound(f"farm/v1/{site}/dev-1/telemetry", body, 1))
            [rejection] = outcome.rejections
            assert rejection.reason == "bad_topic" and len(rejection.topic) <= 256
            del outcome, rejection
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert after - before < 2 * 2**20, f"{(after - before) / 2**20:.1f} MiB kept"
