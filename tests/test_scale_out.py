"""Scale-out: several ingest workers share one subscription, and nothing is lost (issue #6).

Two ``python -m ingest_service`` processes subscribe as ``$share/scale/…``
(``FARM_MQTT_SHARE_GROUP``), each with its own account (``svc.ingest``,
``svc.ingest.2``), hence client id and persistent session, against the real
Mosquitto running the project's own broker/mosquitto.conf and broker/acl (client
ids bound to usernames) and InfluxDB; the devices log in as themselves. A fleet
publishes a few thousand distinct messages; one worker is SIGKILLed mid-stream
while its writes are in flight, and restarted later with the same account. Every
message must be stored exactly once (distinct ``seq`` per device == sent,
``sum(flow_lpm)`` == sum sent).

What Mosquitto 2.0 does with a killed member of a shared subscription: the
messages it had sent to that member and not yet had acknowledged stay in the
member's *session* — they are not handed to the surviving member — and with a
persistent session, the broker also keeps queueing part of the new messages for
the absent member. They are delivered when a client with the same id connects
again. So the operating procedure is: **restart a failed worker with the same
account** (a supervisor's restart does exactly that); a worker
removed for good must have its session expire (``FARM_MQTT_SESSION_EXPIRY_S``) —
and whatever it held expires with it. The test measures how many messages wait
for the killed worker while it is down (``waiting_for_killed_worker``).

Only one worker publishes the indicators (``FARM_PUBLISH_INDICATORS=false`` on
the other), so they are computed and written once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from devstack.servers import Influxd, ShippedMosquitto
from tests.faulty_proxy import Faults, FaultyProxy
from tests.helpers import count, mosquitto_pub, wait_for
from tests.test_faults import (
    BASE_TS_MS,
    DEVICES,
    MARKER,
    Fleet,
    Ingest,
    tally,
    total_stored,
    wait_stored,
)

pytestmark = [pytest.mark.slow, pytest.mark.integration]

SHARE_GROUP = "scale"
WORKERS = ("svc.ingest", "svc.ingest.2")
ACCOUNTS = {
    **{worker: f"pw-{worker}" for worker in WORKERS},
    **{device: f"pw-{device}" for device in DEVICES},
    MARKER: f"pw-{MARKER}",
}


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[ShippedMosquitto]:
    """The shipped broker configuration, with the workers' and devices' accounts."""
    server = ShippedMosquitto(tmp_path / "mosquitto", accounts=ACCOUNTS)
    server.start()
    yield server
    server.stop()


def received(worker: Ingest) -> float:
    return worker.metric("farm_messages_received_total")


def markers_stored(influxd: Influxd) -> int:
    return count(influxd, f"SELECT count(seq) FROM telemetry WHERE device_id = '{MARKER}'")


def marker_through_the_survivor(broker: ShippedMosquitto, influxd: Influxd) -> int:
    """The positive control before reading what the survivor stored: markers, published
    once every fleet message is PUBACKed, until one is stored; returns how many were sent.

    A shared subscription hands each message to one member in turn, the killed worker's
    session included, so a marker may wait there (it is stored after the restart). One
    that reaches the survivor is queued behind everything the survivor was given, and
    its pipeline handles its queue in order: once that marker is stored, so is the rest
    (:func:`tests.helpers.wait_behind_marker`, which publishes without an account).
    """
    topic = f"farm/v1/drip-1/{MARKER}/telemetry"
    for sent in range(1, 11):
        body = {"v": 1, "seq": sent - 1, "ts": BASE_TS_MS + sent * 1000,
                "readings": {"flow_lpm": 1.0}}
        mosquitto_pub(broker.port, topic, json.dumps(body), "-u", MARKER, "-P", ACCOUNTS[MARKER])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if markers_stored(influxd):
                return sent
            time.sleep(0.2)
    raise AssertionError("no marker was stored by the surviving worker")


def test_two_workers_share_the_load_and_survive_a_kill(
    tmp_path: Path, broker: ShippedMosquitto, influxd: Influxd
) -> None:
    proxy = FaultyProxy(influxd.url)
    proxy.start()
    proxy.faults = Faults(delay_s=0.2)  # every write takes a while: batches are in flight
    workers = [
        Ingest(
            tmp_path / f"worker-{i}",
            broker,
            proxy.url,
            FARM_MQTT_URL=broker.url_for(WORKERS[i]),
            FARM_MQTT_CLIENT_ID="",  # the username, as the broker binds it
            FARM_MQTT_SHARE_GROUP=SHARE_GROUP,
            FARM_PUBLISH_INDICATORS="true" if i == 0 else "false",
            FARM_SUBSCRIBE_CHIRPSTACK="false",
        )
        for i in range(2)
    ]
    fleet: Fleet | None = None
    try:
        for worker in workers:
            worker.start()
        fleet = Fleet(broker, rate_per_s=300, passwords=ACCOUNTS)
        fleet.start()
        time.sleep(4)
        shares = [received(worker) for worker in workers]
        assert all(share > 0 for share in shares), f"the load is not shared: {shares}"
        wait_for(lambda: proxy.active > 0, timeout=10, interval=0.01)
        workers[1].kill()
        killed_at_sent = fleet.total_sent
        time.sleep(4)
        fleet.stop()
        sent = fleet.total_sent
        # The survivor stores everything it was given; what waits for the killed worker's
        # session (its unacknowledged messages, and what the broker queued for it) does not
        # move to the survivor.
        markers = marker_through_the_survivor(broker, influxd)
        stored_while_down = total_stored(influxd) - markers_stored(influxd)
        workers[1].start()  # same account: its session's messages are delivered now
        proxy.faults = Faults()
        catch_up = wait_stored(influxd, sent + markers, timeout=120)
        assert markers_stored(influxd) == markers
        indicator_rows = count(
            influxd,
            "SELECT count(\"denominator\") FROM indicator "
            "WHERE \"scope\" = 'city' AND \"indicator\" = 'film_recovery_rate'",
        )
        stats = [
            httpx.get(f"{worker.url}/api/v1/stats", timeout=5).json() for worker in workers
        ]
        tally(
            "scale_out_two_workers_one_killed",
            fleet,
            influxd,
            seconds={"catch_up_after_restart": catch_up},
            notes={
                "received_before_kill_worker_0": int(shares[0]),
                "received_before_kill_worker_1": int(shares[1]),
                "sent_when_killed": killed_at_sent,
                "waiting_for_killed_worker": sent - stored_while_down,
                "received_by_restarted_worker": int(stats[1]["received"]),
            },
        )
        assert sent >= 2000
        # The indicator publisher ran on worker 0 only: one write of the city's rows
        # (at its start; the interval is an hour), none from worker 1, before or after
        # its restart.
        assert indicator_rows == 1
    finally:
        if fleet is not None:
            fleet.close()
        for worker in workers:
            worker.stop()
        proxy.stop()
