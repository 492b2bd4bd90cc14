"""Unit tests of the contract checks, the registry checks and line protocol (no servers)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from farm_contract.registry import Registry
from farm_contract.topics import is_valid_id
from ingest_service.model import Inbound, Point
from ingest_service.outputs.lineprotocol import encode_point
from ingest_service.pipeline.batcher import rejection_point
from ingest_service.pipeline.chirpstack import parse_uplink
from ingest_service.pipeline.enrich import Enricher, point_time_ns
from ingest_service.pipeline.parse import Rejected, parse_device_message
from ingest_service.settings import Settings

SITES = """site_id,name,county,site_type,lat,lon,large_scale,area_mu,water_quota_m3_per_mu
drip-1,滴灌一号,平城区,drip,40.1,113.3,,120,300
farm-1,养殖场,云州区,manure,40.2,113.5,true,,
"""
DEVICES = """device_id,site_id,dev_eui,model
dev-1,drip-1,,probe
dev-2,farm-1,0011223344556677,lora
"""
NOW = datetime(2026, 5, 1, 12, tzinfo=UTC)


def inbound(topic: str, payload: object) -> Inbound:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return Inbound(topic, body, 1_000)


@pytest.fixture
def enricher() -> Enricher:
    registry = Registry.from_csv(SITES, DEVICES)
    return Enricher(lambda: registry, Settings())


def run(enricher: Enricher, topic: str, payload: object) -> tuple[list[Point], list[str]]:
    message = inbound(topic, payload)
    if topic.startswith("application/"):
        parsed = parse_uplink(topic, message.payload)
    else:
        parsed = parse_device_message(topic, message.payload, "farm")
    points, rejections = enricher.points(parsed, message, now=NOW)
    return points, [r.reason for r in rejections]


def test_contract_example_is_stored_with_tags_from_registry(enricher: Enricher) -> None:
    points, rejected = run(
        enricher,
        "farm/v1/drip-1/dev-1/telemetry",
        {
            "v": 1,
            "seq": 1042,
            "ts": "2026-05-01T08:00:00Z",
            "readings": {"soil_moisture_vwc": 0.31, "flow_lpm": 12.5},
        },
    )
    assert rejected == []
    (point,) = points
    assert point.measurement == "telemetry"
    assert point.tags == {
        "site_id": "drip-1",
        "device_id": "dev-1",
        "site_type": "drip",
        "county": "平城区",
    }
    assert point.fields == {"soil_moisture_vwc": 0.31, "flow_lpm": 12.5, "seq": 1042}
    assert point.time_ns == 1777622400000 * 1_000_000 + 1042


def test_bad_reading_is_rejected_alone(enricher: Enricher) -> None:
    points, rejected = run(
        enricher,
        "farm/v1/drip-1/dev-1/telemetry",
        {
            "v": 1,
            "seq": 1,
            "ts": 1777622400000,
            "readings": {"flow_lpm": 9000, "pressure_kpa": 200, "nh3_ppm": 3, "made_up": 1},
        },
    )
    assert sorted(rejected) == ["metric_not_for_site", "out_of_range", "unknown_metric"]
    assert points[0].fields == {"pressure_kpa": 200.0, "seq": 1}


@pytest.mark.parametrize(
    ("topic", "payload", "reason"),
    [
        ("farm/v1/drip-1/dev-1/telemetry", b"{not json", "bad_json"),
        (
            "farm/v1/drip-1/dev-1/telemetry",
            b'{"v":1,"seq":1,"ts":1,"readings":{"flow_lpm":NaN}}',
            "bad_json",
        ),
        (
            "farm/v1/drip-1/dev-1/telemetry",
            b'{"v":1,"seq":1,"ts":1,"readings":{"flow_lpm":1e999}}',
            "bad_json",
        ),
        (
            "farm/v1/drip-1/dev-1/telemetry",
            {"v": 2, "seq": 1, "ts": 1, "readings": {"a": 1}},
            "invalid_payload",
        ),
        (
            "farm/v1/drip-1/dev-1/telemetry",
            {"v": 1, "seq": -1, "ts": 1, "readings": {"a": 1}},
            "invalid_payload",
        ),
        (
            "farm/v1/drip-1/dev-1/telemetry",
            {"v": 1, "seq": 1, "ts": "2026-05-01 08:00", "readings": {"a": 1}},
            "invalid_payload",
        ),
        ("farm/v1/drip-1/dev-1/telemetry", [1, 2], "invalid_payload"),
        (
            "farm/v1/drip-1/dev-9/telemetry",
            {"v": 1, "seq": 1, "ts": 1, "readings": {"a": 1}},
            "unknown_device",
        ),
        (
            "farm/v1/farm-1/dev-1/telemetry",
            {"v": 1, "seq": 1, "ts": 1, "readings": {"a": 1}},
            "wrong_site",
        ),
        ("farm/v1/Drip-1/dev-1/telemetry", {"v": 1}, "bad_topic"),
        ("farm/v1/drip-1/dev-1/other", {"v": 1}, "bad_topic"),
        (
            "farm/v1/drip-1/dev-1/event",
            {"v": 1, "seq": 1, "ts": 1, "type": "harvest"},
            "invalid_payload",
        ),
        (
            "farm/v1/drip-1/dev-1/event",
            {"v": 1, "seq": 1, "ts": 1, "type": "unknown"},
            "invalid_payload",
        ),
        ("farm/v1/drip-1/dev-1/telemetry", b"x" * 300_000, "too_large"),
    ],
)
def test_whole_message_rejections(
    enricher: Enricher, topic: str, payload: object, reason: str
) -> None:
    with pytest.raises(Rejected) as caught:
        run(enricher, topic, payload)
    assert caught.value.reason == reason
    assert caught.value.detail


def test_timestamps_far_off_are_rejected(enricher: Enricher) -> None:
    future = (NOW + timedelta(hours=2)).isoformat()
    _, rejected = run(
        enricher,
        "farm/v1/drip-1/dev-1/telemetry",
        {"v": 1, "seq": 1, "ts": future, "readings": {"flow_lpm": 1}},
    )
    assert rejected == ["ts_in_future"]
    _, rejected = run(
        enricher,
        "farm/v1/drip-1/dev-1/telemetry",
        {"v": 1, "seq": 2, "ts": 0, "readings": {"flow_lpm": 1}},
    )
    assert rejected == ["ts_too_old"]


def test_volume_never_decreases(enricher: Enricher) -> None:
    topic = "farm/v1/drip-1/dev-1/telemetry"
    base = 1777622400000
    for seq, (offset, volume, expected) in enumerate(
        [
            (0, 10.0, []),
            (60_000, 12.0, []),
            (120_000, 11.0, ["counter_decreased"]),
            (60_000, 12.0, []),  # a redelivery of an earlier reading is fine
            (30_000, 11.0, []),  # an older replayed reading below the later one is fine
            (30_000, 13.0, ["counter_decreased"]),  # but not above a later reading
        ]
    ):
        _, rejected = run(
            enricher,
            topic,
            {"v": 1, "seq": seq, "ts": base + offset, "readings": {"volume_m3": volume}},
        )
        assert rejected == expected, (seq, volume)


def test_events_keep_tags_and_distinct_seq(enricher: Enricher) -> None:
    topic = "farm/v1/farm-1/dev-2/event"
    first, _ = run(
        enricher,
        topic,
        {
            "v": 1,
            "seq": 7,
            "ts": 1777622400000,
            "type": "manure_utilized",
            "mass_t": 2,
            "use": "energy",
        },
    )
    second, _ = run(
        enricher,
        topic,
        {
            "v": 1,
            "seq": 8,
            "ts": 1777622400000,
            "type": "manure_utilized",
            "mass_t": 2,
            "use": "energy",
        },
    )
    assert first[0].tags["use"] == "energy" and first[0].tags["type"] == "manure_utilized"
    assert first[0].fields == {"mass_t": 2.0, "seq": 7}
    assert first[0].time_ns != second[0].time_ns  # same ts, never merged
    _, rejected = run(
        enricher,
        topic,
        {"v": 1, "seq": 9, "ts": 1777622400000, "type": "film_recovered", "mass_t": 1},
    )
    assert rejected == ["event_not_for_site"]


def test_batch_replay_stores_each_record(enricher: Enricher) -> None:
    points, rejected = run(
        enricher,
        "farm/v1/drip-1/dev-1/telemetry",
        {
            "v": 1,
            "batch": [
                {"seq": 1, "ts": 1777622400000, "readings": {"flow_lpm": 1}},
                {"seq": 2, "ts": 1777622460000, "readings": {"flow_lpm": 2}},
            ],
        },
    )
    assert rejected == [] and [p.fields["seq"] for p in points] == [1, 2]


def test_status_is_stored(enricher: Enricher) -> None:
    points, _ = run(
        enricher,
        "farm/v1/drip-1/dev-1/status",
        {"v": 1, "state": "offline", "ts": "2026-05-01T08:00:00+08:00", "fw": "1.0"},
    )
    assert points[0].measurement == "device_status" and points[0].fields == {"online": False}


def test_chirpstack_uplink(enricher: Enricher) -> None:
    uplink = {
        "deduplicationId": "3ac7e3c4-4401-4b8d-9386-a5c902f9202d",
        "time": "2026-05-01T08:00:00.000+00:00",
        "deviceInfo": {
            "tenantId": "t",
            "applicationId": "a",
            "deviceName": "lagoon",
            "devEui": "0011223344556677",
        },
        "fCnt": 10,
        "fPort": 1,
        "data": "AQ==",
        "object": {"lagoon_level_pct": 61.5, "battery_v": 3.6},
    }
    points, rejected = run(enricher, "application/a/device/0011223344556677/event/up", uplink)
    assert rejected == []
    assert points[0].tags["device_id"] == "dev-2" and points[0].tags["county"] == "云州区"
    assert points[0].fields == {"lagoon_level_pct": 61.5, "battery_v": 3.6, "seq": 10}
    with pytest.raises(Rejected, match="unknown_device"):
        run(
            enricher,
            "application/a/device/ffffffffffffffff/event/up",
            {**uplink, "deviceInfo": {"devEui": "ffffffffffffffff"}},
        )
    with pytest.raises(Rejected, match="decoded object"):
        run(
            enricher,
            "application/a/device/0011223344556677/event/up",
            {k: v for k, v in uplink.items() if k != "object"},
        )


def test_point_time_is_unique_per_seq() -> None:
    ts = datetime(2026, 5, 1, 8, 0, 0, 123456, tzinfo=UTC)
    assert point_time_ns(ts, 5) == 1777622400123 * 1_000_000 + 5


def test_line_protocol_escapes_tags_and_strings() -> None:
    point = Point(
        "rejection",
        {"reason": "a b,c=d\ne\\"},
        {"detail": 'say "hi"\\\n', "n": 1.5, "i": 3, "b": True},
        1,
    )
    line = encode_point(point)
    assert "\n" not in line
    assert line == (
        'rejection,reason=a\\ b\\,c\\=d\\ e detail="say \\"hi\\"\\\\\\n",n=1.5,i=3i,b=true 1'
    )


# --- issue 10, finding 9: strict where the contract is strict -------------------------

GOOD = {"v": 1, "seq": 1, "ts": "2026-05-01T08:00:00Z", "readings": {"flow_lpm": 1.5}}


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"v": True}, "v must be the integer 1"),
        ({"v": 1.0}, "v must be the integer 1"),
        ({"ts": "2026-W18-5T08:00:00Z"}, "not an RFC 3339"),  # ISO week date
        ({"ts": "2026-121T08:00:00Z"}, "not an RFC 3339"),  # ordinal date
        ({"ts": "20260501T080000Z"}, "not an RFC 3339"),  # basic format
        ({"ts": "2026-05-01T08:00:00,5Z"}, "not an RFC 3339"),  # comma fraction
        ({"ts": "2026-05-01T08:00:00"}, "has no UTC offset"),
        ({"ts": " 2026-05-01T08:00:00Z"}, "not an RFC 3339"),
        ({"ts": "2026-05-01T08:00:00+0000"}, "not an RFC 3339"),
        ({"ts": "2026-02-30T08:00:00Z"}, "not a valid RFC 3339"),
        ({"ts": 1777622400000.0}, "integer epoch milliseconds"),
    ],
)
def test_strict_version_and_timestamps(
    enricher: Enricher, change: dict[str, object], why: str
) -> None:
    body = {**GOOD, **change}
    topic = "farm/v1/drip-1/dev-1/telemetry"
    with pytest.raises(Rejected) as caught:
        parse_device_message(topic, json.dumps(body).encode(), "farm")
    assert caught.value.reason == "invalid_payload" and why in caught.value.detail
    assert enricher.telemetry_line(topic, json.dumps(body).encode()) is None


def test_rfc3339_forms_the_contract_allows(enricher: Enricher) -> None:
    for ts, ms in [
        ("2026-05-01T08:00:00Z", 1777622400000),
        ("2026-05-01t08:00:00z", 1777622400000),
        ("2026-05-01 16:00:00+08:00", 1777622400000),
        ("2026-05-01T08:00:00.123456789Z", 1777622400123),
        ("2026-05-01T08:00:00.5-00:30", 1777624200500),
    ]:
        points, rejected = run(enricher, "farm/v1/drip-1/dev-1/telemetry", {**GOOD, "ts": ts})
        assert rejected == [] and points[0].time_ns == ms * 1_000_000 + 1, ts


@pytest.mark.parametrize(
    "topic",
    ["farm/v1/drip-1\n/dev-1/telemetry", "farm/v1/drip-1/dev-1\n/telemetry"],
)
def test_ids_with_a_trailing_newline_are_refused(enricher: Enricher, topic: str) -> None:
    assert not is_valid_id("dev-1\n") and is_valid_id("dev-1")
    with pytest.raises(Rejected) as caught:
        parse_device_message(topic, json.dumps(GOOD).encode(), "farm")
    assert caught.value.reason == "bad_topic"
    assert enricher.telemetry_line(topic, json.dumps(GOOD).encode()) is None


def test_rejection_text_is_cut_and_escaped(enricher: Enricher) -> None:
    topic = "farm/v1/" + "s\x1b[2J\n" * 20_000 + "/dev-1/telemetry"  # ~120 KB
    payload = b'{"v": 1,\n "x": "\x1b[31m\xff' + b"y" * 5000 + b'"}'
    rejection = enricher.rejection(Inbound(topic, payload, 1), "bad_topic", "a\nb\r" * 1000)
    assert len(rejection.topic) <= 256 and rejection.topic.endswith("…")
    assert rejection.topic.startswith("farm/v1/s\\x1b[2J\\ns")
    assert len(rejection.detail) <= 1000 and rejection.detail.startswith("a\\nb\\ra")
    stored = rejection_point(rejection).fields["payload"]
    assert isinstance(stored, str)
    assert stored.startswith('{"v": 1,\\n "x": "\\x1b[31m\ufffdyyy')
    assert not any(ord(char) < 0x20 or 0x7F <= ord(char) < 0xA0 for char in stored)
    assert len(stored) <= 4096
