"""The publisher's parts (``edge/mqtt/``) where the end-to-end tests do not reach them."""

from __future__ import annotations

import threading
from datetime import UTC, datetime
from pathlib import Path

import pytest

from devstack.servers import Mosquitto
from edge.mqtt.direct import DirectSender
from edge.mqtt.outbox_sender import OutboxSender
from edge.outbox import Outbox
from edge.publisher import DevicePublisher
from farm_contract.payloads import MAX_BATCH
from tests.helpers import wait_for

NOW = datetime(2025, 6, 1, tzinfo=UTC)


def test_the_mode_is_a_sender_not_a_flag(tmp_path: Path) -> None:
    """Without an outbox, a direct sender numbering from ``first_seq``; with one, the outbox's."""
    direct = DevicePublisher("d-m-1", "site-m", "mqtt://127.0.0.1:1", first_seq=7)
    assert isinstance(direct.sender, DirectSender) and direct.next_seq == 7
    assert direct.take_seq() == 7 and direct.next_seq == 8
    outbox = Outbox(tmp_path / "ob.sqlite", first_seq=3)
    try:
        stored = DevicePublisher("d-m-2", "site-m", "mqtt://127.0.0.1:1", outbox=outbox,
                                 first_seq=99, batch_records=10**6)
        assert isinstance(stored.sender, OutboxSender) and stored.next_seq == 3
        assert stored.sender.batch_records == MAX_BATCH  # clamped to the contract
        sent = stored.telemetry(NOW, {"battery_v": 12.5})
        assert sent.seq == 3 and len(outbox) == 1 and stored.pending == 1
    finally:
        outbox.close()


@pytest.mark.integration
def test_direct_sending_holds_the_caller_at_max_pending(mosquitto: Mosquitto) -> None:
    """Back-pressure: with ``max_pending`` unacknowledged, the next record waits for a PUBACK."""
    publisher = DevicePublisher("d-bp-1", "site-b", mosquitto.url, max_pending=5,
                                reconnect_min_s=0.2, reconnect_max_s=0.5)
    publisher.start(wait_s=10)
    mosquitto.stop()
    wait_for(lambda: not publisher.connected, timeout=10)
    sixth_sent = threading.Event()

    def produce() -> None:
        for index in range(6):
            publisher.telemetry(NOW, {"battery_v": 12.0 + index / 10})
        sixth_sent.set()

    producer = threading.Thread(target=produce, daemon=True)
    producer.start()
    try:
        wait_for(lambda: publisher.pending == 5, timeout=5)  # five went to the client
        assert not sixth_sent.wait(1.0), "the sixth record did not wait"
        assert publisher.pending == 5
        mosquitto.start()  # paho sends the five again; their PUBACKs let the sixth go
        assert sixth_sent.wait(20)
        assert publisher.wait_all_acked(20) and publisher.pending == 0
        assert publisher.sent_by_kind["telemetry"] == 6 and publisher.refused == 0
        assert publisher.close()
    finally:
        producer.join(timeout=10)
