"""Event identity (issue 12 point 3, contract §10): an event counts once per device and seq.

Played as an auditor would, through a real Mosquitto and the running ingest service into
a real InfluxDB: a resend under a new ``ts``, two seqs 1,000,000 apart in one
millisecond, a correction and its trail (read back through the API), an identical
resend, and a device whose ``seq`` restarted. Some steps restart ingest in between, so
the answer comes from InfluxDB and not from the worker's memory.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from devstack.servers import Influxd, Mosquitto
from ingest_service.api.app import create_app
from ingest_service.pipeline.event_identity import (
    EVENT_VERSION,
    EventIndex,
    Found,
    StoredVersion,
)
from ingest_service.pipeline.parse import Rejected
from ingest_service.service import IngestService
from ingest_service.settings import Settings
from tests.helpers import count, mosquitto_pub, rows, wait_behind_marker, write_registry

EVENTS = "farm/v1/drip-1/dev-1/event"
TELEMETRY = "farm/v1/drip-1/dev-1/telemetry"


class Ingest:
    """The ingest service, restartable with the same settings (a fresh memory each time)."""

    def __init__(self, settings: Settings, mosquitto: Mosquitto, influxd: Influxd) -> None:
        self.settings = settings
        self.mosquitto = mosquitto
        self.influxd = influxd
        self.service = self._start()
        self._markers = itertools.count(1)

    def _start(self) -> IngestService:
        service = IngestService(self.settings, publish_indicators=False)
        service.start()
        assert service.input.wait_connected(10)
        return service

    def restart(self) -> None:
        self.service.stop()
        self.service = self._start()

    def send(self, seq: int, ts: datetime, kind: str, **fields: Any) -> None:
        body = {"v": 1, "seq": seq, "ts": ts.isoformat(), "type": kind, **fields}
        mosquitto_pub(self.mosquitto.port, EVENTS, json.dumps(body))

    def settle(self) -> None:
        """Wait until everything sent so far has been handled (a marker reading behind it)."""
        n = next(self._markers)
        marker = json.dumps({"v": 1, "seq": n, "ts": _ago(1).isoformat(),
                             "readings": {"rain_mm": float(n)}})
        wait_behind_marker(
            self.mosquitto.port, TELEMETRY, marker,
            lambda: count(self.influxd, f"SELECT count(rain_mm) FROM telemetry "
                                        f"WHERE rain_mm = {float(n)}") == 1,
        )

    def film(self, kind: str) -> tuple[int, float]:
        """(points, Σ mass_t) of one film event type as stored."""
        got = rows(self.influxd, f"SELECT count(mass_t), sum(mass_t) FROM event "
                                 f"WHERE type = '{kind}'")
        return (int(str(got[0]["count"])), float(str(got[0]["sum"]))) if got else (0, 0.0)

    def recovered_numerator(self) -> float:
        """The city's film-recovery numerator, as the indicator engine computes it."""
        year = datetime.now(self.settings.tz).year
        for row in self.service.engine.compute(year):
            if row.indicator == "film_recovery_rate" and row.scope == "city":
                return row.numerator
        raise AssertionError("no film_recovery_rate row")

    def rejections(self, reason: str) -> list[dict[str, object]]:
        return rows(self.influxd, f"SELECT * FROM rejection WHERE reason = '{reason}'")


def _ago(days: float) -> datetime:
    return (datetime.now(UTC) - timedelta(days=days)).replace(microsecond=0)


@pytest.fixture(params=[None, "workers"], ids=["alone", "share-group"])
def ingest(
    request: pytest.FixtureRequest, tmp_path: Path, mosquitto: Mosquitto, influxd: Influxd
) -> Iterator[Ingest]:
    """Alone, a worker loads a device's events once and trusts its memory; in a share
    group it asks InfluxDB for every event (the other look-up path)."""
    settings = Settings(
        mqtt_url=mosquitto.url, influx_url=influxd.url, influx_api="v1",
        registry_dir=write_registry(tmp_path / "registry"), mqtt_client_id="ingest-identity",
        batch_interval_s=0.05, mqtt_share_group=request.param,
    )
    running = Ingest(settings, mosquitto, influxd)
    yield running
    assert running.service.events.unchecked == 0
    assert running.service.events.lookups > 0
    running.service.stop()


@pytest.mark.integration
@pytest.mark.slow
def test_a_resend_under_a_new_ts_counts_once(ingest: Ingest) -> None:
    when = _ago(3)
    ingest.send(1, when, "film_applied", mass_t=10.0, area_mu=2000.0, thickness_mm=0.01)
    ingest.send(2, when, "film_recovered", mass_t=4.0)
    ingest.settle()
    assert ingest.film("film_recovered") == (1, 4.0)
    numerator = ingest.recovered_numerator()
    assert numerator == 4.0
    # the device re-stamps its resend: an hour later, then (after a restart, so only
    # InfluxDB can tell) ten hours later, in epoch ms this time
    ingest.send(2, when + timedelta(hours=1), "film_recovered", mass_t=4.0)
    ingest.settle()
    ingest.restart()
    body = {"v": 1, "seq": 2, "ts": int((when + timedelta(hours=10)).timestamp() * 1000),
            "type": "film_recovered", "mass_t": 4.0}
    mosquitto_pub(ingest.mosquitto.port, EVENTS, json.dumps(body))
    ingest.settle()
    assert ingest.film("film_recovered") == (1, 4.0)
    assert ingest.recovered_numerator() == numerator
    stored = rows(ingest.influxd, "SELECT * FROM event WHERE type = 'film_recovered'")
    assert stored[0]["time"] == when.strftime("%Y-%m-%dT%H:%M:%S.000000002Z")
    assert count(ingest.influxd, f"SELECT count(seq) FROM {EVENT_VERSION}") == 0


@pytest.mark.integration
@pytest.mark.slow
def test_seqs_a_million_apart_in_one_millisecond_are_two_events(ingest: Ingest) -> None:
    when = _ago(2)
    ingest.send(7, when, "film_recovered", mass_t=1.0)
    ingest.send(1_000_007, when, "film_recovered", mass_t=2.0)  # same ms, same slot, same batch
    ingest.settle()
    assert ingest.film("film_recovered") == (2, 3.0)
    ingest.restart()  # the third one's slot is taken in InfluxDB, not in memory
    ingest.send(2_000_007, when, "film_recovered", mass_t=4.0)
    ingest.settle()
    assert ingest.film("film_recovered") == (3, 7.0)
    times = [r["time"] for r in rows(ingest.influxd, "SELECT seq FROM event")]
    assert len(set(times)) == 3


@pytest.mark.integration
@pytest.mark.slow
def test_a_correction_counts_and_keeps_its_trail(ingest: Ingest) -> None:
    when = _ago(4)
    ingest.send(9, when, "film_recovered", mass_t=5.0)
    ingest.settle()
    ingest.send(9, when + timedelta(minutes=10), "film_recovered", mass_t=6.0)  # a correction
    ingest.settle()
    assert ingest.film("film_recovered") == (1, 6.0)
    ingest.restart()
    ingest.send(9, when, "film_recovered", mass_t=6.5)  # corrected again, known from InfluxDB
    ingest.settle()
    assert ingest.film("film_recovered") == (1, 6.5)
    assert ingest.recovered_numerator() == 6.5

    client = TestClient(create_app(ingest.service.state, ingest.service.engine),
                        base_url="http://127.0.0.1")
    answer = client.get("/api/v1/devices/dev-1/events/9")
    assert answer.status_code == 200, answer.text
    history = answer.json()
    assert [v["fields"]["mass_t"] for v in history["current"]] == [6.5]
    assert [v["fields"]["mass_t"] for v in history["versions"]] == [5.0, 6.0]
    stamp = when.isoformat().replace("+00:00", "Z")
    assert {v["ts"][:19] for v in history["current"] + history["versions"]} == {stamp[:19]}
    first, second = history["versions"]
    assert first["received_at"] and second["received_at"] and history["current"][0]["received_at"]
    # each version was received, then replaced when its successor arrived
    assert first["received_at"] <= first["replaced_at"] <= second["received_at"]
    assert second["received_at"] <= second["replaced_at"] <= history["current"][0]["received_at"]
    nothing = client.get("/api/v1/devices/dev-1/events/10")
    assert nothing.status_code == 200
    assert nothing.json()["current"] == nothing.json()["versions"] == []

    # the same values once more: idempotent, no new version, nothing added
    ingest.send(9, when + timedelta(hours=2), "film_recovered", mass_t=6.5)
    ingest.settle()
    assert ingest.film("film_recovered") == (1, 6.5)
    assert count(ingest.influxd, f"SELECT count(seq) FROM {EVENT_VERSION}") == 2


@pytest.mark.integration
@pytest.mark.slow
def test_a_restarted_seq_is_refused_not_merged(ingest: Ingest) -> None:
    when = _ago(5)
    ingest.send(3, when, "film_recovered", mass_t=2.0)
    ingest.settle()
    ingest.restart()
    # a device that lost its counter: seq 3 again, days later, other values
    ingest.send(3, when + timedelta(days=3), "film_recovered", mass_t=8.0)
    # and seq 3 again within the day, but another type of event
    ingest.send(3, when + timedelta(hours=1), "film_applied", mass_t=8.0, area_mu=10.0,
                thickness_mm=0.01)
    ingest.settle()
    assert ingest.film("film_recovered") == (1, 2.0)
    assert ingest.film("film_applied") == (0, 0.0)
    refused = ingest.rejections("seq_reused")
    assert len(refused) == 2
    far, other_type = sorted((str(r["detail"]) for r in refused), key=lambda d: "apart" not in d)
    assert "72.0 h apart" in far and "never restart its seq" in far
    assert "never its type" in other_type
    assert count(ingest.influxd, f"SELECT count(seq) FROM {EVENT_VERSION}") == 0


def test_the_index_is_bounded_in_bytes_and_asks_influxdb_again_after() -> None:
    asked: list[tuple[str, int, int]] = []

    def lookup(device_id: str, seq: int, slot_ns: int) -> Found:
        asked.append((device_id, seq, slot_ns))
        return Found(None, frozenset())

    index = EventIndex(lookup, max_bytes=20_000)
    tags = {"device_id": "d", "type": "film_recovered"}
    for seq in range(200):
        index.place("d", seq, 10**18 + seq, tags, {"mass_t": 1.0, "seq": seq}, 10**18)
    assert index.size <= 20_000 and 0 < len(index) < 200
    before = len(asked)
    index.place("d", 0, 10**18, tags, {"mass_t": 1.0, "seq": 0}, 10**18)  # forgotten: asked
    assert len(asked) == before + 1
    index.place("d", 0, 10**18, tags, {"mass_t": 1.0, "seq": 0}, 10**18)  # now known again
    assert len(asked) == before + 1


def test_with_a_share_group_every_event_asks_influxdb() -> None:
    """Another worker may have stored a correction: memory alone would undo it."""
    stored = StoredVersion(10**18, {"device_id": "d", "type": "film_recovered"},
                           {"mass_t": 7.0, "seq": 1, "received_ms": 2 * 10**12})

    def lookup(device_id: str, seq: int, slot_ns: int) -> Found:
        return Found(stored, frozenset())

    tags = {"device_id": "d", "type": "film_recovered"}
    shared = EventIndex(lookup, trust_memory=False)
    alone = EventIndex(lookup, trust_memory=True)
    for index in (shared, alone):
        first = index.place("d", 1, 10**18, tags, {"mass_t": 7.0, "seq": 1}, 10**18)
        assert first == [stored.point()]  # the stored point again, exactly
    # meanwhile another worker stored mass_t 9: the shared index sees it and keeps a trail
    stored = StoredVersion(10**18, stored.tags, {"mass_t": 9.0, "seq": 1,
                                                 "received_ms": 3 * 10**12})
    again = shared.place("d", 1, 10**18, tags, {"mass_t": 7.0, "seq": 1}, 4 * 10**18)
    assert [p.measurement for p in again] == [EVENT_VERSION, "event"]
    assert again[0].fields["mass_t"] == 9.0 and again[1].fields["mass_t"] == 7.0
    with pytest.raises(Rejected):
        shared.place("d", 1, 10**18 + 2 * 86_400 * 10**9, tags, {"mass_t": 1.0, "seq": 1}, 0)

