"""The service's counters: what the pipeline records, what readers see, what docs list."""

from __future__ import annotations

import dataclasses
import json
import re
import time
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from farm_contract.registry import Registry
from ingest_service.metrics import metrics_registry, render
from ingest_service.model import Inbound
from ingest_service.outputs.influx import WriteError
from ingest_service.pipeline.batcher import Pipeline
from ingest_service.pipeline.enrich import Enricher
from ingest_service.settings import Settings
from ingest_service.state import BATCH_SECONDS_BUCKETS, RegistryHolder, ServiceState, Stats
from tests.helpers import DEVICES_CSV, SITES_CSV, wait_for

DOCS = Path(__file__).resolve().parent.parent / "docs"


def recorded_stats() -> Stats:
    stats = Stats()
    stats.record_batch(
        received=3, stored_messages=2, stored_points=5,
        rejected=["bad_json", "out_of_range", "out_of_range"], seconds=0.02,
    )
    stats.record_batch(received=1, stored_messages=1, stored_points=1, rejected=[], seconds=400.0)
    stats.record_write_error()
    stats.record_backlog(7)
    return stats


def test_a_snapshot_holds_what_was_recorded() -> None:
    snap = recorded_stats().snapshot()
    assert (snap.received, snap.stored_messages, snap.stored_points) == (4, 3, 6)
    assert dict(snap.rejected) == {"bad_json": 1, "out_of_range": 2}
    assert (snap.batches, snap.write_errors, snap.backlog) == (2, 1, 7)
    assert snap.last_batch_seconds == 400.0
    assert snap.batch_seconds_sum == pytest.approx(400.02)
    expected = [0] * (len(BATCH_SECONDS_BUCKETS) + 1)
    expected[BATCH_SECONDS_BUCKETS.index(0.025)] = 1
    expected[-1] = 1  # above every bound
    assert list(snap.batch_seconds_buckets) == expected


def test_a_snapshot_is_a_copy_no_reader_can_change() -> None:
    stats = recorded_stats()
    snap = stats.snapshot()
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.received = 0  # type: ignore[misc]
    with pytest.raises(TypeError):
        snap.rejected["bad_json"] = 0  # type: ignore[index]
    stats.record_batch(received=1, stored_messages=0, stored_points=0, rejected=["bad_json"],
                       seconds=0.001)
    assert (snap.received, snap.rejected["bad_json"], snap.batches) == (4, 1, 2)
    assert stats.snapshot().rejected["bad_json"] == 2
    assert stats.received == 5 and stats.rejected == {"bad_json": 2, "out_of_range": 2}


def test_the_stats_json_keeps_its_keys() -> None:
    body = recorded_stats().snapshot().as_json()
    assert body == {
        "received": 4, "stored_messages": 3, "stored_points": 6,
        "rejected": {"bad_json": 1, "out_of_range": 2}, "rejected_total": 3,
        "batches": 2, "write_errors": 1, "last_batch_seconds": 400.0,
        "batch_seconds_sum": pytest.approx(400.02), "backlog": 7,
    }


def scraped(stats: Stats) -> str:
    state = ServiceState(Settings(), RegistryHolder(Registry()), stats)
    state.mqtt_events = lambda: {"refused": 2}
    return render(metrics_registry(state)).decode()


def test_metrics_show_the_snapshot() -> None:
    text = scraped(recorded_stats())
    assert "farm_messages_received_total 4.0" in text
    assert 'farm_rejections_total{reason="out_of_range"} 2.0' in text
    assert "farm_batches_total 2.0" in text
    assert 'farm_batch_seconds_bucket{le="0.025"} 1.0' in text
    assert 'farm_batch_seconds_bucket{le="300.0"} 1.0' in text
    assert 'farm_batch_seconds_bucket{le="+Inf"} 2.0' in text
    assert "farm_last_batch_seconds 400.0" in text
    assert "farm_influx_write_errors_total 1.0" in text
    assert "farm_backlog_messages 7.0" in text
    assert 'farm_mqtt_connection_events_total{event="refused"} 2.0' in text


def exposed_names(text: str) -> set[str]:
    """Each family's name as a scraper sees it (counters with ``_total``), labels in braces."""
    names = set()
    for family in text_string_to_metric_families(text):
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = {k for sample in family.samples for k in sample.labels if k != "le"}
        names.add(name + ("{" + ",".join(sorted(labels)) + "}" if labels else ""))
    return names


def documented(text: str) -> set[str]:
    return set(re.findall(r"`(farm_[a-z_]+(?:\{[a-z_,]+\})?)`", text))


def test_every_metric_is_documented_and_every_documented_one_exists() -> None:
    names = exposed_names(scraped(recorded_stats()))
    assert len(names) == 11, names
    reliability = (DOCS / "reliability.md").read_text(encoding="utf-8")
    observability = reliability.split("## Observability", 1)[1].split("\n## ", 1)[0]
    [metrics_row] = [
        line for line in (DOCS / "contract.md").read_text(encoding="utf-8").splitlines()
        if line.startswith("| `GET /metrics` |")
    ]
    for where, text in (("reliability.md Observability", observability),
                        ("contract.md /metrics row", metrics_row)):
        listed = documented(text)
        assert names - listed == set(), f"emitted but not listed in {where}"
        assert listed - names == set(), f"listed in {where} but not emitted"


class FailingOnceWriter:
    """Refuses the first write as InfluxDB down would (transient), then takes every body."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    def write(self, body: bytes) -> None:
        if not self.bodies:
            self.bodies.append(b"")
            raise WriteError("InfluxDB unreachable", transient=True)
        self.bodies.append(body)

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        return


def test_the_threaded_pipeline_records_each_batch() -> None:
    settings = Settings(batch_size=100, batch_interval_s=0.05)
    registry = Registry.from_csv(SITES_CSV, DEVICES_CSV)
    stats = Stats()
    pipeline = Pipeline(settings, Enricher(lambda: registry, settings), FailingOnceWriter(), stats)
    ts = (datetime.now(UTC) - timedelta(hours=1)).isoformat()

    def telemetry(seq: int, readings: dict[str, float]) -> bytes:
        return json.dumps({"v": 1, "seq": seq, "ts": ts, "readings": readings}).encode()

    messages = [
        ("dev-1", telemetry(1, {"soil_moisture_vwc": 0.3})),  # stored: 1 point
        ("dev-1", telemetry(2, {"soil_moisture_vwc": 0.3, "flow_lpm": 1.0})),  # 1 point, 2 fields
        ("dev-1", telemetry(3, {"soil_moisture_vwc": 0.3, "flow_lpm": -5.0})),  # 1 + out_of_range
        ("dev-1", b"{not json"),  # bad_json
        ("dev-9", telemetry(4, {"soil_moisture_vwc": 0.3})),  # unknown_device
    ]
    acked: list[int] = []
    pipeline.start()
    try:
        pipeline.submit_many([
            Inbound(f"farm/v1/drip-1/{device}/telemetry", payload, time.time_ns(),
                    ack=partial(acked.append, i))
            for i, (device, payload) in enumerate(messages)
        ])
        wait_for(lambda: len(acked) == len(messages), timeout=30)
    finally:
        pipeline.stop()
    snap = stats.snapshot()
    assert (snap.received, snap.stored_messages, snap.stored_points) == (5, 3, 3)
    assert dict(snap.rejected) == {"out_of_range": 1, "bad_json": 1, "unknown_device": 1}
    assert (snap.batches, snap.write_errors, snap.backlog) == (1, 1, 0)
    assert snap.last_batch_seconds == snap.batch_seconds_sum > 0
    assert sum(snap.batch_seconds_buckets) == 1


def test_pending_bytes_follow_the_messages_until_they_are_acknowledged() -> None:
    """What the input's size pause reads: payload bytes held, back to 0 once all is acked."""
    settings = Settings(batch_size=100, batch_interval_s=0.05)
    registry = Registry.from_csv(SITES_CSV, DEVICES_CSV)
    writer = FailingOnceWriter()
    pipeline = Pipeline(settings, Enricher(lambda: registry, settings), writer, Stats())
    payloads = [b"{not json" * n for n in (1, 10, 100)]
    stale = Inbound("farm/v1/drip-1/dev-1/telemetry", b"x" * 1000, 0, stale=lambda: True)
    pipeline.submit_many([
        Inbound("farm/v1/drip-1/dev-1/telemetry", payload, time.time_ns()) for payload in payloads
    ])
    pipeline.submit(stale)
    assert pipeline.pending_bytes == sum(map(len, payloads)) + 1000
    pipeline.drop_stale()
    assert pipeline.pending_bytes == sum(map(len, payloads))
    pipeline.start()
    try:
        wait_for(lambda: pipeline.pending == 0, timeout=30)
    finally:
        pipeline.stop()
    assert pipeline.pending_bytes == 0
    assert len(writer.bodies) == 2  # the refused write, then the batch: held, then let go
