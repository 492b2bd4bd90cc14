"""Hostile mixtures through the threaded production pipeline into a real InfluxDB.

Each example is a list of messages, mostly good, some hostile: near-miss and huge
topics, absurd and non-finite numbers, wrong types, nested objects, batches with bad
records inside, a wrong ``v``, week dates. They are handed to a running
:class:`~ingest_service.pipeline.batcher.Pipeline` with ``submit_many`` (as the MQTT input
does, its worker threads parse and write) and, once every message is acknowledged,
InfluxDB must hold exactly every good message and every good record or reading of a
partly bad one, and exactly the expected rejections; the enricher's caches stay
within their bound (registered devices only, whatever the topics).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import count as counter
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devstack.servers import Influxd
from farm_contract.registry import Registry
from ingest_service.outputs.influx import make_writer
from ingest_service.pipeline.batcher import Pipeline
from ingest_service.pipeline.enrich import Enricher
from ingest_service.settings import Settings
from ingest_service.state import Stats
from tests.helpers import DEVICES_CSV, SITES_CSV, rows, through_pipeline

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REGISTRY = Registry.from_csv(SITES_CSV, DEVICES_CSV)
BASE = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
DRIP, MANURE, STRAW = "farm/v1/drip-1/dev-1", "farm/v1/farm-1/dev-2", "farm/v1/straw-1/dev-3"
UPLINK = "application/1/device/0011223344556677/event/up"
CACHE_BOUND = 3 * 1024
"""Three registered devices at ≤ 1 KB each (ingest_service/pipeline/enrich.py, "Memory")."""


@dataclass
class Message:
    """One message and what it must become."""

    topic: str
    body: Any
    stored: dict[tuple[str, str, int], dict[str, Any]] = field(default_factory=dict)
    """(measurement, device_id, seq) → fields expected in InfluxDB."""
    reasons: list[str] = field(default_factory=list)

    def payload(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        return json.dumps(self.body, allow_nan=True).encode()


def ts(seq: int) -> str:
    return (BASE + timedelta(milliseconds=seq)).isoformat().replace("+00:00", "Z")


good_float = st.floats(0, 80, allow_nan=False).map(lambda x: round(x, 3))
BAD_READINGS = [  # value, reason
    ("hot", "out_of_range"), (None, "out_of_range"), ({"a": 1.0}, "out_of_range"),
    ([1.0], "out_of_range"), (1e308, "out_of_range"), (-1e30, "out_of_range"),
]
BAD_RECORDS = [  # a change that spoils one record of a batch
    {"ts": "2026-05-01T08:00:00"}, {"ts": "2026-W18-5T08:00:00Z"}, {"seq": -1},
    {"readings": {}}, {"ts": "2026-121T08:00:00Z"},
]
HOSTILE_TOPICS = [
    "farm/v1/drip-1/dev-1/Telemetry", "farm/v1/drip-1/dev-1/telemetry/",
    "farm/v1/drip-1/dev-1\n/telemetry", "farm/v1/drip-1/dev-1/events",
    "farm/v1/drip-1/dev-1/telemetry/extra", "farm/v1/" + "x" * 60_000 + "/dev-1/telemetry",
]


@st.composite
def message(draw: st.DrawFn, seqs: Iterator[int]) -> Message:
    """Mostly good messages; the rest hostile in one of many ways, with their fate."""
    seq = next(seqs)
    kind = draw(st.sampled_from(["good"] * 10 + ["readings", "batch", "events", "uplink",
                                                   "topic", "version", "json", "unknown"]))
    readings = {"flow_lpm": draw(good_float), "soil_temp_c": draw(good_float)}
    single = {"v": 1, "seq": seq, "ts": ts(seq), "readings": readings}
    if kind == "good":
        if draw(st.booleans()):
            return Message(f"{DRIP}/telemetry", single,
                           {("telemetry", "dev-1", seq): readings})
        mass = draw(st.floats(0, 100_000))
        event = {"v": 1, "seq": seq, "ts": ts(seq), "type": "straw_utilized", "use": "feed",
                 "mass_t": mass}
        return Message(f"{STRAW}/event", event, {("event", "dev-3", seq): {"mass_t": mass}})
    if kind == "readings":
        bad = draw(st.lists(st.sampled_from(BAD_READINGS), min_size=1, max_size=3))
        body = {**single, "readings": {**readings, **{f"rain_mm{i}" if i else "rain_mm": v
                                                       for i, (v, _) in enumerate(bad)}}}
        reasons = ["out_of_range"] + ["unknown_metric"] * (len(bad) - 1)
        return Message(f"{DRIP}/telemetry", body, {("telemetry", "dev-1", seq): readings},
                       reasons)
    if kind == "batch":
        size = draw(st.integers(2, 6))
        bad_at = set(draw(st.lists(st.integers(0, size - 1), min_size=1, max_size=2)))
        records, stored = [], {}
        for index in range(size):
            record_seq = seq * 10 + index + 1_000_000
            values = {"flow_lpm": float(index)}
            record = {"seq": record_seq, "ts": ts(record_seq), "readings": values}
            if index in bad_at:
                record.update(draw(st.sampled_from(BAD_RECORDS)))
            else:
                stored[("telemetry", "dev-1", record_seq)] = values
            records.append(record)
        return Message(f"{DRIP}/telemetry", {"v": 1, "batch": records}, stored,
                       ["invalid_payload"] * len(bad_at))
    if kind == "events":
        masses = draw(st.lists(st.sampled_from([1.5, 2.0, 1e308, 100_001.0, 7.0]),
                               min_size=1, max_size=4))
        events, stored, reasons = [], {}, []
        for index, mass in enumerate(masses):
            event_seq = seq * 10 + index + 2_000_000
            events.append({"seq": event_seq, "ts": ts(event_seq), "type": "harvest",
                           "crop": "corn", "grain_t": mass})
            if mass <= 100_000:
                stored[("event", "dev-3", event_seq)] = {"grain_t": mass}
            else:
                reasons.append("out_of_range")
        return Message(f"{STRAW}/event", {"v": 1, "batch": events}, stored, reasons)
    if kind == "uplink":
        level = draw(good_float)
        uplink = {"deviceInfo": {"devEui": "0011223344556677"}, "time": ts(seq), "fCnt": seq,
                  "object": {"lagoon_level_pct": level, "gas": {"nh3_ppm": 1.0}}}
        return Message(UPLINK, uplink, {("telemetry", "dev-2", seq): {"lagoon_level_pct": level}},
                       ["unknown_metric"])
    if kind == "topic":
        return Message(draw(st.sampled_from(HOSTILE_TOPICS)), single, reasons=["bad_topic"])
    if kind == "version":
        change = draw(st.sampled_from([{"v": True}, {"v": 1.0}, {"ts": "2026-W18-5T08:00:00Z"}]))
        return Message(f"{DRIP}/telemetry", {**single, **change}, reasons=["invalid_payload"])
    if kind == "json":
        body = draw(st.sampled_from([b'{"v":1,"seq":1,"ts":1,"readings":{"flow_lpm":NaN}}',
                                     b'{"v":1,"seq":1,"ts":1,"readings":{"flow_lpm":1e999}}',
                                     b"\xff\xfe", b"x" * 300_000]))
        return Message(f"{DRIP}/telemetry", body,
                       reasons=["too_large" if len(body) > 1000 else "bad_json"])
    return Message("farm/v1/drip-1/nobody/telemetry", single, reasons=["unknown_device"])


@pytest.fixture(scope="module")
def influx(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Influxd]:
    server = Influxd(tmp_path_factory.mktemp("influxd-hostile"))
    server.start()
    yield server
    server.stop()


def test_hostile_mixtures_store_every_good_neighbour(influx: Influxd) -> None:
    databases = counter()
    reached = []

    @settings(max_examples=40, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(st.data())
    def mixture(data: st.DataObject) -> None:
        seqs = counter(1)
        messages = data.draw(st.lists(message(seqs), min_size=1, max_size=12))
        db = f"hostile{next(databases)}"
        config = Settings(influx_url=influx.url, influx_api="v1", influx_db=db,
                          batch_size=5, batch_interval_s=0.01)
        enricher = Enricher(lambda: REGISTRY, config)
        writer = make_writer(config)
        pipeline = Pipeline(config, enricher, writer, Stats())
        try:
            acks = through_pipeline(pipeline, [(m.topic, m.payload()) for m in messages])
        finally:
            writer.close()
        assert acks == Counter(range(len(messages))), "each message acknowledged exactly once"

        want: dict[tuple[str, str, int], dict[str, Any]] = {}
        for m in messages:
            want.update(m.stored)
        got: dict[tuple[str, str, int], dict[str, Any]] = {}
        for measurement in ("telemetry", "event"):
            for row in rows(influx, f'SELECT * FROM "{db}".."{measurement}"'):
                key = (measurement, str(row["device_id"]), int(str(row["seq"])))
                got[key] = {k: v for k, v in row.items() if k in want.get(key, {})}
        assert got == want, "every good message, record and reading is stored, nothing else"
        stored_reasons = Counter(
            str(r["reason"]) for r in rows(influx, f'SELECT * FROM "{db}".."rejection"')
        )
        assert stored_reasons == Counter(r for m in messages for r in m.reasons)
        topics = rows(influx, f'SELECT topic FROM "{db}".."rejection"')
        assert all(len(str(r["topic"])) <= 256 and "\n" not in str(r["topic"]) for r in topics)
        assert enricher.cache_bytes() <= CACHE_BOUND, enricher.cache_bytes()
        reached.append(len(messages))

    mixture()
    assert len(reached) >= 20, "the assertions were reached on most examples"
