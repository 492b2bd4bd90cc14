"""Store-and-forward end to end: agents → Mosquitto → ingest → InfluxDB, through faults.

Every reading a device took must be in InfluxDB exactly once, in ``seq`` order,
after the broker was down for a while (several agents) and after an agent was
killed with SIGKILL in the middle of replaying its backlog.

"Exactly once" is asserted only after a marker, published once the agents have
stopped with everything acknowledged, has been stored: a duplicate still on its
way would have been stored before it (:func:`tests.helpers.wait_behind_marker`).
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from devstack.servers import Influxd, Mosquitto
from edge.outbox import Outbox, read_stats
from edge.publisher import DevicePublisher
from farm_contract.payloads import EventMessage, TelemetryMessage, decode_json
from ingest_service.service import IngestService
from ingest_service.settings import Settings
from tests.helpers import SITES_CSV, rows, wait_behind_marker, wait_for, write_registry
from tests.test_edge_publisher import Recorder

ROOT = Path(__file__).resolve().parents[1]
DEVICES = ["d-sf-1", "d-sf-2", "d-sf-3"]
MARKER = "d-sf-marker"
"""A device of its own whose message, published last, is the positive control."""
DEVICES_CSV = "device_id,site_id,dev_eui,model\n" + "".join(
    f"{device},drip-1,,probe\n" for device in [*DEVICES, MARKER]
)


@pytest.fixture
def ingest(tmp_path: Path, mosquitto: Mosquitto, influxd: Influxd) -> Iterator[IngestService]:
    settings = Settings(
        mqtt_url=mosquitto.url, influx_url=influxd.url, influx_api="v1",
        registry_dir=write_registry(tmp_path / "registry", SITES_CSV, DEVICES_CSV),
        mqtt_client_id="ingest-edge-tests", batch_interval_s=0.05,
    )
    service = IngestService(settings, publish_indicators=False)
    service.start()
    assert service.input.wait_connected(10)
    yield service
    service.stop()


class AgentProcess:
    """``python -m edge`` for one device, with its config and state in ``folder``."""

    def __init__(self, folder: Path, device_id: str, url: str, *, interval: float = 0.1,
                 replay_rate: float = 500, batch: int = 500) -> None:
        self.device_id = device_id
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "device.toml"
        self.config.write_text(
            f"""device_id = "{device_id}"
site_id = "drip-1"
mqtt_url = "{url}"
sample_interval_s = {interval}
state_dir = "{folder / 'state'}"
reconnect_min_s = 0.2
reconnect_max_s = 1.0

[outbox]
replay_records_per_s = {replay_rate}
batch_records = {batch}

[driver]
kind = "simulated"
site_type = "drip"
seed = {DEVICES.index(device_id) if device_id in DEVICES else 0}
metrics = ["soil_moisture_vwc", "volume_m3", "battery_v"]
""",
            encoding="utf-8",
        )
        self.outbox = folder / "state" / f"{device_id}.outbox.sqlite"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.folder / "agent.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "edge", "--config", str(self.config), "--log-level", "DEBUG"],
            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def stats(self) -> tuple[int, int, int]:
        """(pending, dropped, next_seq) from the outbox file, read while the agent runs."""
        try:
            return read_stats(self.outbox)
        except sqlite3.OperationalError:  # not created yet: the agent is starting
            return (0, 0, 0)

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        code = self.process.wait(timeout=30)
        self.process = None
        return code

    def log(self) -> str:
        path = self.folder / "agent.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""


def stored_seqs(influxd: Influxd, device_id: str) -> list[int]:
    """Every stored seq of a device (telemetry and events), in time order."""
    found: list[tuple[str, int]] = []
    for measurement in ("telemetry", "event"):
        found += [(str(row["time"]), int(row["seq"]))  # type: ignore[call-overload]
                  for row in rows(influxd, f"SELECT seq FROM {measurement} "
                                           f"WHERE device_id = '{device_id}'")]
    return [seq for _, seq in sorted(found)]


def wait_for_marker(mosquitto: Mosquitto, influxd: Influxd) -> None:
    """Store a marker behind everything the (stopped) agents sent."""
    wait_behind_marker(
        mosquitto.port, f"farm/v1/drip-1/{MARKER}/telemetry",
        '{"v": 1, "seq": 0, "ts": "2025-06-01T00:00:00Z", "readings": {"battery_v": 12.0}}',
        lambda: stored_seqs(influxd, MARKER),
    )


def assert_exactly_once_in_order(influxd: Influxd, agent: AgentProcess) -> int:
    """Every seq the agent took is stored once, in order. Call after :func:`wait_for_marker`."""
    pending, dropped, next_seq = agent.stats()
    assert pending == 0 and dropped == 0, (agent.stats(), agent.log())
    assert next_seq > 0
    seqs = stored_seqs(influxd, agent.device_id)
    missing = sorted(set(range(next_seq)) - set(seqs))
    rejected = rows(influxd, "SELECT reason, detail FROM rejection LIMIT 5")
    assert seqs == list(range(next_seq)), (
        f"{agent.device_id}: {len(seqs)} stored of {next_seq}; missing {missing[:20]}; "
        f"rejections {rejected}"
    )
    return next_seq


@pytest.mark.slow
@pytest.mark.integration
def test_broker_outage_with_several_agents_loses_nothing(
    tmp_path: Path, mosquitto: Mosquitto, influxd: Influxd, ingest: IngestService
) -> None:
    agents = [AgentProcess(tmp_path / d, d, mosquitto.url) for d in DEVICES]
    for agent in agents:
        agent.start()
    try:
        for agent in agents:
            wait_for(lambda a=agent: len(stored_seqs(influxd, a.device_id)) >= 5, timeout=30)
        mosquitto.stop()
        before = [agent.stats()[2] for agent in agents]
        time.sleep(4)  # the agents keep sampling into their outboxes
        backlog = [agent.stats()[0] for agent in agents]
        assert all(b >= 20 for b in backlog), backlog
        mosquitto.start()
        wait_for(lambda: all(a.stats()[0] == 0 for a in agents), timeout=60)
        time.sleep(1)  # live readings after the replay
    finally:
        codes = [agent.stop() for agent in agents if agent.process is not None]
    assert codes == [0] * len(agents), [a.log() for a in agents]
    wait_for_marker(mosquitto, influxd)
    totals = [assert_exactly_once_in_order(influxd, agent) for agent in agents]
    assert all(total > b + 20 for total, b in zip(totals, before, strict=True))


@pytest.mark.slow
@pytest.mark.integration
def test_sigkill_mid_replay_loses_nothing_and_stores_nothing_twice(
    tmp_path: Path, mosquitto: Mosquitto, influxd: Influxd, ingest: IngestService
) -> None:
    agent = AgentProcess(tmp_path / DEVICES[0], DEVICES[0], mosquitto.url, interval=0.02,
                         replay_rate=60, batch=10)
    mosquitto.stop()
    agent.start()
    try:
        wait_for(lambda: agent.stats()[0] >= 200, timeout=30)  # a backlog, broker down
        backlog = agent.stats()[0]
        mosquitto.start()
        # mid-replay: some of the backlog acknowledged, most still in the outbox
        wait_for(lambda: agent.stats()[0] < backlog - 20, timeout=30, interval=0.02)
        assert agent.stop(signal.SIGKILL) == -signal.SIGKILL
        pending_at_kill = agent.stats()[0]
        assert pending_at_kill >= 100, (pending_at_kill, agent.log())
        agent.start()
        wait_for(lambda: agent.stats()[0] == 0, timeout=60)
    finally:
        if agent.process is not None:
            assert agent.stop() == 0, agent.log()
    wait_for_marker(mosquitto, influxd)
    total = assert_exactly_once_in_order(influxd, agent)
    assert total > 200


@pytest.mark.integration
def test_live_readings_flow_while_the_backlog_replays_in_batches(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    """The backlog goes oldest first in batches at the set rate; a new reading does not wait."""
    outbox = Outbox(tmp_path / "ob.sqlite")
    publisher = DevicePublisher("d-live-1", "site-l", mosquitto.url, outbox=outbox,
                                replay_records_per_s=100, batch_records=20)
    ts = datetime(2025, 6, 1, tzinfo=UTC)
    for _ in range(300):  # an outage's worth, taken before the link came up
        publisher.telemetry(ts, {"battery_v": 12.0})
    recorder = Recorder(mosquitto.port)
    started = time.monotonic()
    publisher.start(wait_s=10)
    wait_for(lambda: len(recorder.kind("telemetry")) >= 2, timeout=10)
    live = publisher.telemetry(datetime(2025, 6, 2, tzinfo=UTC), {"battery_v": 12.9})
    wait_for(lambda: any(decode_json(m.payload).get("seq") == live.seq
                         for m in recorder.kind("telemetry")), timeout=5)
    assert len(outbox) > 100, "the live reading waited for the backlog"
    assert publisher.wait_all_acked(20)
    elapsed = time.monotonic() - started
    # Everything is at the broker; the recorder has it all once a later marker arrived.
    wait_behind_marker(mosquitto.port, "farm/v1/site-l/d-live-marker/marker", "marker",
                       lambda: recorder.kind("marker"), timeout=10)
    publisher.close()
    outbox.close()
    recorder.close()

    messages = [TelemetryMessage.model_validate(decode_json(m.payload))
                for m in recorder.kind("telemetry")]
    batches = [m for m in messages if m.batch is not None]
    assert all(len(m.records()) <= 20 for m in batches) and len(batches) >= 15
    replayed = [r.seq for m in messages for r in m.records() if r.seq != live.seq]
    assert replayed == list(range(300))  # oldest first, each once
    assert elapsed >= 300 / 100 - 0.5  # the replay rate held (first batch is free)
    assert not [m for m in recorder.kind("event")
                if EventMessage.model_validate(decode_json(m.payload)).batch]
