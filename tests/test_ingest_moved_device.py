"""Attribution at the data's time (contract §5): a moved device, a site whose county changed.

Pure logic (the enricher on a registry with history); the same scenario on real
Mosquitto and InfluxDB is in tests/test_registry_live.py.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from farm_contract.registry import Registry
from ingest_service.model import Inbound, Point
from ingest_service.pipeline.enrich import Enricher
from ingest_service.pipeline.parse import parse_device_message
from ingest_service.settings import Settings

SITES = """site_id,name,county,site_type,lat,lon,valid_from
drip-1,滴灌一号,平城区,drip,40.1,113.3,
drip-2,滴灌二号,云州区,drip,40.2,113.5,
drip-3,滴灌三号,天镇县,drip,40.3,113.6,
drip-9,滴灌九号,阳高县,drip,40.3,113.6,
farm-1,养殖场,大同县,manure,40.2,113.5,
farm-1,养殖场,云州区,manure,40.2,113.5,2026-03-01
"""
DEVICES = """device_id,site_id,valid_from
dev-1,drip-1,
dev-1,drip-2,2026-03-01
dev-2,farm-1,
dev-3,drip-3,
dev-4,drip-9,2026-03-01
"""
NOW = datetime(2026, 5, 1, 12, tzinfo=UTC)
BEFORE = "2026-02-20T10:00:00+08:00"
AFTER = "2026-03-10T10:00:00+08:00"


@pytest.fixture
def enricher() -> Enricher:
    registry = Registry.from_csv(SITES, DEVICES, as_of=NOW.date())
    return Enricher(lambda: registry, Settings())


def run(enricher: Enricher, topic: str, payload: object) -> tuple[list[Point], list[str]]:
    body = json.dumps(payload).encode()
    parsed = parse_device_message(topic, body, "farm")
    points, rejections = enricher.points(parsed, Inbound(topic, body, 1_000), now=NOW)
    return points, [r.reason for r in rejections]


def recovered(seq: int, ts: str) -> dict[str, object]:
    return {"v": 1, "seq": seq, "ts": ts, "type": "film_recovered", "mass_t": 1.5}


@pytest.mark.parametrize("topic_site", ["drip-1", "drip-2"])
def test_data_measured_before_the_move_counts_for_the_old_site(
    enricher: Enricher, topic_site: str
) -> None:
    points, rejected = run(enricher, f"farm/v1/{topic_site}/dev-1/event", recovered(1, BEFORE))
    assert rejected == []
    assert points[0].tags["site_id"] == "drip-1" and points[0].tags["county"] == "平城区"


def test_data_after_the_move_counts_for_the_new_site_and_not_on_the_old_topic(
    enricher: Enricher,
) -> None:
    points, rejected = run(enricher, "farm/v1/drip-2/dev-1/event", recovered(2, AFTER))
    assert rejected == [] and points[0].tags["site_id"] == "drip-2"
    assert points[0].tags["county"] == "云州区"
    points, rejected = run(enricher, "farm/v1/drip-1/dev-1/event", recovered(3, AFTER))
    assert points == [] and rejected == ["wrong_site"]
    points, rejected = run(enricher, "farm/v1/drip-3/dev-1/event", recovered(4, BEFORE))
    assert points == [] and rejected == ["wrong_site"]


def test_a_batch_straddling_the_move_is_split_by_each_record_s_time(enricher: Enricher) -> None:
    points, rejected = run(enricher, "farm/v1/drip-2/dev-1/telemetry", {"v": 1, "batch": [
        {"seq": 5, "ts": BEFORE, "readings": {"flow_lpm": 1.0}},
        {"seq": 6, "ts": AFTER, "readings": {"flow_lpm": 2.0}},
    ]})
    assert rejected == []
    assert [(p.tags["site_id"], p.tags["county"]) for p in points] == [
        ("drip-1", "平城区"), ("drip-2", "云州区")]
    assert points[0].series != points[1].series  # the stored series key follows the tags
    assert "site_id=drip-1" in (points[0].series or "")


def test_a_site_s_county_is_the_one_in_effect_at_the_data_s_time(enricher: Enricher) -> None:
    event = {"v": 1, "type": "manure_treated", "mass_t": 3}
    points, _ = run(enricher, "farm/v1/farm-1/dev-2/event", {**event, "seq": 1, "ts": BEFORE})
    later, _ = run(enricher, "farm/v1/farm-1/dev-2/event", {**event, "seq": 2, "ts": AFTER})
    assert points[0].tags["county"] == "大同县" and later[0].tags["county"] == "云州区"


def test_a_device_not_registered_yet_is_refused_for_that_time(enricher: Enricher) -> None:
    points, rejected = run(enricher, "farm/v1/drip-9/dev-4/event", recovered(1, BEFORE))
    assert points == [] and rejected == ["unknown_device"]
    points, rejected = run(enricher, "farm/v1/drip-9/dev-4/event", recovered(2, AFTER))
    assert rejected == [] and points[0].tags["site_id"] == "drip-9"


def test_status_follows_the_device_s_site_then(enricher: Enricher) -> None:
    points, _ = run(enricher, "farm/v1/drip-2/dev-1/status",
                    {"v": 1, "state": "online", "ts": BEFORE})
    assert points[0].tags["site_id"] == "drip-1"


def test_only_timed_devices_leave_the_fast_path(enricher: Enricher) -> None:
    payload = json.dumps({"v": 1, "seq": 1, "ts": AFTER, "readings": {"flow_lpm": 1.0}}).encode()
    assert enricher.telemetry_line("farm/v1/drip-3/dev-3/telemetry", payload) is not None
    assert enricher.telemetry_line("farm/v1/drip-2/dev-1/telemetry", payload) is None
