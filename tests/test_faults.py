"""Faults, end to end: nothing lost, nothing counted twice (issue #4).

Each test runs the real thing: Mosquitto, InfluxDB 1.x, and ingest as its own
process (``python -m ingest_service``), fed by a fleet of MQTT v5 publishers
(fixed client ids, persistent sessions, QoS 1) sending contract telemetry with
distinct ``seq`` — pairs of messages share a ``ts``, so "two distinct messages
are never merged" is tested too. While the fleet publishes, a fault happens.

At-least-once delivery *does* redeliver after a fault, and a redelivered message
lands on the point it was first stored on (same series, same time), which InfluxDB
overwrites: counting stored points cannot see a redelivery, nor a message ingest
took twice. So duplicates are counted three ways:

- **in InfluxDB, per** ``(device, seq)``: every point is listed, so a message stored
  twice at different times (a re-stamped copy) counts 2: ``duplicated`` is the
  points beyond one per ``seq``, also caught by ``sum(flow_lpm)`` having to equal
  the sum sent;
- **by ingest's own counters** (``farm_messages_received_total``,
  ``farm_messages_stored_total``, counted once a batch is written and acknowledged),
  summed over ingest's lifetimes (read just before each kill, while its one writer
  is held, so the figures are final): ``processed_twice`` = received − sent. Where
  nothing can redeliver (ingest neither restarts nor reconnects) it must be 0;
- **at the wire to InfluxDB** (the test proxy, where there is one): ``rewritten`` =
  messages that reached InfluxDB in more than one accepted write (a retry after a
  timeout that had landed, a batch stored just before a kill): the redeliveries
  that happened and were absorbed.

Also counted: **sent** (messages the broker acknowledged to a publisher; all must
be), **stored** (distinct ``seq`` values stored) and **lost** (sent, not stored).
Every test demands lost = duplicated = 0 and no rejections, counted only after a
marker published behind the fleet has been stored (so nothing is merely late).
The figures are printed (``pytest -rA`` shows them) and written to
``run/faults/<test>.json``; docs/reliability.md tabulates them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from devstack.servers import LOOPBACK, Influxd, Mosquitto, free_port
from tests.faulty_proxy import Faults, FaultyProxy
from tests.helpers import count, points_per_seq, wait_behind_marker, wait_for, write_registry

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "run" / "faults"

INFLUX_OUTAGE_S = 120.0
"""How long InfluxDB stays down in the outage test ("minutes", within CI's budget)."""

DEVICES = ("dev-a", "dev-b", "dev-c", "dev-d")
SITES_CSV = """site_id,name,county,site_type,lat,lon,large_scale,area_mu,water_quota_m3_per_mu
drip-1,滴灌一号,平城区,drip,40.1,113.3,,120,300
drip-2,"滴灌, 二号",云州区,drip,40.2,113.4,,80,250
"""
MARKER = "fault-marker"
"""A device of its own whose one message, published last, is the positive control."""
DEVICES_CSV = "device_id,site_id,dev_eui,model\n" + "".join(
    f"{device},drip-{1 + i % 2},,probe\n" for i, device in enumerate(DEVICES)
) + f"{MARKER},drip-1,,probe\n"
BASE_TS_MS = int((time.time() - 2 * 86400) * 1000)
"""Two days ago: recent enough for the timestamp checks, far from the wall clock."""


def site_of(device: str) -> str:
    return f"drip-{1 + DEVICES.index(device) % 2}"


def flow(device: str, seq: int) -> float:
    """A reading that differs per message, so a sum catches any double count."""
    return float(DEVICES.index(device) * 1000 + seq % 997) / 4


def payload(device: str, seq: int) -> bytes:
    body = {
        "v": 1,
        "seq": seq,
        "ts": BASE_TS_MS + (seq // 2) * 1000,  # pairs of messages share a ts
        "readings": {"flow_lpm": flow(device, seq), "pressure_kpa": 200.0},
    }
    return json.dumps(body).encode()


class Fleet:
    """MQTT v5 devices publishing QoS 1 telemetry at a steady rate from one thread.

    Each device has a fixed client id and a persistent session, so paho re-sends
    what the broker has not acknowledged after a reconnect (a broker restart).
    """

    def __init__(self, broker: Mosquitto, rate_per_s: float,
                 passwords: dict[str, str] | None = None) -> None:
        self.rate = rate_per_s
        self.sent: dict[str, int] = dict.fromkeys(DEVICES, 0)
        self.acked = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.clients: dict[str, mqtt.Client] = {}
        for device in DEVICES:
            client = mqtt.Client(
                CallbackAPIVersion.VERSION2, client_id=f"fault-{device}", protocol=mqtt.MQTTv5
            )
            client.max_inflight_messages_set(100)
            client.reconnect_delay_set(1, 2)
            if passwords:  # a broker with accounts: each device logs in as itself
                client.username_pw_set(device, passwords[device])
            client.on_publish = self._on_publish
            properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            properties.SessionExpiryInterval = 3600
            client.connect_async(
                LOOPBACK, broker.port, keepalive=10, clean_start=False, properties=properties
            )
            client.loop_start()
            self.clients[device] = client

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: object,
        mid: int,
        reason: ReasonCode,
        properties: Properties,
    ) -> None:
        assert not reason.is_failure, f"broker refused a publish: {reason}"
        with self._lock:
            self.acked += 1

    @property
    def total_sent(self) -> int:
        return sum(self.sent.values())

    def start(self) -> None:
        wait_for(lambda: all(c.is_connected() for c in self.clients.values()), timeout=20)
        self._thread.start()

    def _run(self) -> None:
        started = time.monotonic()
        n = 0
        while not self._stop.is_set():
            device = DEVICES[n % len(DEVICES)]
            seq = self.sent[device]
            topic = f"farm/v1/{site_of(device)}/{device}/telemetry"
            self.clients[device].publish(topic, payload(device, seq), qos=1)
            self.sent[device] = seq + 1
            n += 1
            ahead = started + n / self.rate - time.monotonic()
            if ahead > 0:
                self._stop.wait(ahead)

    def stop(self, drain_timeout: float = 120) -> None:
        """Stop publishing; wait until the broker has acknowledged every message."""
        self._stop.set()
        self._thread.join()
        wait_for(lambda: self.acked == self.total_sent, timeout=drain_timeout, interval=0.2)

    def close(self) -> None:
        self._stop.set()
        for client in self.clients.values():
            client.disconnect()
            client.loop_stop()


@dataclass(frozen=True)
class Counters:
    """Ingest's own message counters (``/metrics``), per lifetime or summed."""

    received: int
    """Messages whose batch was written and acknowledged."""
    stored: int
    """Of those, messages with at least one point stored."""

    def __add__(self, other: Counters) -> Counters:
        return Counters(self.received + other.received, self.stored + other.stored)


class Ingest:
    """``python -m ingest_service`` as a child process, killable like any other.

    Its counters start at 0 in each process; :meth:`kill_counted` reads them just
    before the kill, and :meth:`counted` sums every lifetime.
    """

    def __init__(self, workdir: Path, broker: Mosquitto, influx_url: str, **env: str) -> None:
        self.workdir = workdir
        self.api_port = free_port()
        self.env = {
            **os.environ,
            "FARM_MQTT_URL": broker.url,
            "FARM_MQTT_CLIENT_ID": "fault-ingest",
            "FARM_INFLUX_URL": influx_url,
            "FARM_INFLUX_API": "v1",
            "FARM_INFLUX_DB": "farm",
            "FARM_REGISTRY_DIR": str(write_registry(workdir / "registry", SITES_CSV, DEVICES_CSV)),
            "FARM_API_PORT": str(self.api_port),
            "FARM_BATCH_INTERVAL_S": "0.1",
            "FARM_INDICATOR_INTERVAL_S": "3600",
            "FARM_LOG_FORMAT": "json",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.ended: list[Counters] = []
        """Counters of the lifetimes that ended, read just before they did."""

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.api_port}"

    def start(self) -> None:
        self.starts += 1
        with (self.workdir / "ingest.log").open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "ingest_service"],
                env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
            )
        wait_for(self._connected, timeout=30)

    def _connected(self) -> bool:
        assert self.process is not None and self.process.poll() is None, self.log_tail()
        try:
            return "farm_mqtt_connected 1.0" in httpx.get(f"{self.url}/metrics", timeout=1).text
        except httpx.HTTPError:
            return False

    def metric(self, name: str) -> float:
        for line in httpx.get(f"{self.url}/metrics", timeout=5).text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"{name} not in /metrics")

    def counters(self) -> Counters:
        return Counters(
            received=int(self.metric("farm_messages_received_total")),
            stored=int(self.metric("farm_messages_stored_total")),
        )

    def counted(self) -> Counters:
        """Counters summed over every lifetime, the running one included."""
        return sum(self.ended, self.counters())

    def rss_kib(self) -> int:
        assert self.process is not None
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        return 0

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def kill_counted(self) -> None:
        """SIGKILL, after reading the counters. Call it only while the writer is held
        (an InfluxDB answer kept back): then no batch completes between read and kill."""
        self.ended.append(self.counters())
        self.kill()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def log_tail(self) -> str:
        path = self.workdir / "ingest.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""


@dataclass
class Figures:
    """What a fault test measured; the docs' table is made of these."""

    fault: str
    sent: int
    stored: int
    duplicated: int
    lost: int
    sum_sent: float
    sum_stored: float
    rejections: int
    seconds: dict[str, float] = field(default_factory=dict)
    notes: dict[str, float | int | str] = field(default_factory=dict)
    received_by_ingest: int | None = None
    """Ingest's ``farm_messages_received_total`` summed over its lifetimes."""
    stored_by_ingest: int | None = None
    """Ingest's ``farm_messages_stored_total`` summed over its lifetimes."""
    processed_twice: int | None = None
    """received_by_ingest − sent: messages ingest wrote and acknowledged twice."""
    rewritten: int | None = None
    """Messages InfluxDB accepted in more than one write (seen by the proxy)."""

    def save(self) -> None:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{self.fault}.json").write_text(json.dumps(asdict(self), indent=2) + "\n")
        print(
            f"\nFAULT {self.fault}: sent={self.sent} stored={self.stored} "
            f"duplicated={self.duplicated} lost={self.lost} rejections={self.rejections} "
            f"received_by_ingest={self.received_by_ingest} "
            f"stored_by_ingest={self.stored_by_ingest} processed_twice={self.processed_twice} "
            f"rewritten={self.rewritten} seconds={self.seconds} notes={self.notes}"
        )


def stored_seqs(influxd: Influxd) -> dict[str, list[int]]:
    """Every stored ``seq`` per fleet device (a seq stored twice appears twice)."""
    seqs: dict[str, list[int]] = {device: [] for device in DEVICES}
    for (device, seq), points in points_per_seq(influxd).items():
        if device != MARKER:
            seqs[device] += [seq] * points
    return seqs


def total_stored(influxd: Influxd) -> int:
    return count(influxd, "SELECT count(seq) FROM telemetry")


def wait_for_marker(broker: Mosquitto, influxd: Influxd) -> None:
    """The positive control before :func:`tally` asserts absence: a marker published once
    every fleet message is PUBACKed, stored only after all of them were handled."""
    topic = f"farm/v1/drip-1/{MARKER}/telemetry"
    body = {"v": 1, "seq": 0, "ts": BASE_TS_MS, "readings": {"flow_lpm": 1.0}}
    wait_behind_marker(
        broker.port, topic, json.dumps(body),
        lambda: count(influxd, f"SELECT count(seq) FROM telemetry WHERE device_id = '{MARKER}'"),
        timeout=60,
    )


def tally(
    fault: str,
    fleet: Fleet,
    influxd: Influxd,
    *,
    counters: Counters | None = None,
    nothing_redelivered: bool = False,
    proxy: FaultyProxy | None = None,
    **extra: object,
) -> Figures:
    """Count sent, stored, duplicated and lost; assert none lost or doubled.

    ``counters``: ingest's own, summed over its lifetimes; every message must be
    among them, and exactly once when ``nothing_redelivered`` (ingest neither
    restarted nor reconnected). ``proxy``: the write proxy, for ``rewritten``.
    """
    seqs = stored_seqs(influxd)
    stored = sum(len(set(values)) for values in seqs.values())
    duplicated = sum(len(values) - len(set(values)) for values in seqs.values())
    lost = sum(
        len(set(range(fleet.sent[device])) - set(seqs[device])) for device in DEVICES
    )
    sum_sent = sum(flow(d, s) for d in DEVICES for s in range(fleet.sent[d]))
    result = influxd.query(f"SELECT sum(flow_lpm) FROM telemetry WHERE device_id != '{MARKER}'")
    series = result["results"][0].get("series", [])  # type: ignore[index]
    sum_stored = float(series[0]["values"][0][1]) if series else 0.0
    figures = Figures(
        fault=fault,
        sent=fleet.total_sent,
        stored=stored,
        duplicated=duplicated,
        lost=lost,
        sum_sent=sum_sent,
        sum_stored=sum_stored,
        rejections=count(influxd, "SELECT count(detail) FROM rejection"),
        **extra,  # type: ignore[arg-type]
    )
    if counters is not None:
        figures.received_by_ingest = counters.received
        figures.stored_by_ingest = counters.stored
        figures.processed_twice = counters.received - fleet.total_sent - 1  # the marker
    if proxy is not None:
        figures.rewritten = proxy.rewritten()
    figures.save()
    assert figures.lost == 0, f"{lost} messages lost: {figures}"
    assert figures.duplicated == 0, f"{duplicated} messages stored twice: {figures}"
    assert figures.stored == figures.sent
    assert abs(figures.sum_stored - figures.sum_sent) < 1e-6 * max(1.0, figures.sum_sent)
    assert figures.rejections == 0
    for device in DEVICES:
        assert sorted(seqs[device]) == list(range(fleet.sent[device])), device
    if counters is not None:
        # Ingest's own account, which InfluxDB's overwriting cannot hide: the marker
        # is counted too (one message more than the fleet sent).
        assert counters.stored >= figures.sent + 1, f"ingest stored fewer than sent: {figures}"
        assert counters.received >= counters.stored
        if nothing_redelivered:
            assert counters.received == counters.stored == figures.sent + 1, (
                f"ingest processed {counters.received - figures.sent - 1} messages more than "
                f"were published, with no restart or reconnect to redeliver them: {figures}"
            )
    return figures


def wait_stored(influxd: Influxd, expected: int, timeout: float) -> float:
    """Seconds until ``expected`` points are stored."""
    started = time.monotonic()
    wait_for(lambda: total_stored(influxd) >= expected, timeout=timeout, interval=0.5)
    return round(time.monotonic() - started, 1)


@pytest.fixture
def fleet_factory() -> Iterator[list[Fleet]]:
    made: list[Fleet] = []
    yield made
    for fleet in made:
        fleet.close()


@pytest.fixture
def ingest_factory() -> Iterator[list[Ingest]]:
    made: list[Ingest] = []
    yield made
    for ingest in made:
        ingest.stop()


def test_influxdb_stopped_for_minutes_mid_stream(
    tmp_path: Path,
    mosquitto: Mosquitto,
    influxd: Influxd,
    fleet_factory: list[Fleet],
    ingest_factory: list[Ingest],
) -> None:
    """InfluxDB down for INFLUX_OUTAGE_S: the backlog waits at the broker, then catches up.

    The receive maximum is set low (500) so that almost all of the backlog has to
    wait in the broker's queue for ingest's session, not in ingest's memory.
    """
    receive_maximum = 500
    ingest = Ingest(tmp_path, mosquitto, influxd.url, FARM_RECEIVE_MAXIMUM=str(receive_maximum))
    ingest_factory.append(ingest)
    ingest.start()
    fleet = Fleet(mosquitto, rate_per_s=40)
    fleet_factory.append(fleet)
    fleet.start()
    time.sleep(10)
    influxd.stop()
    down_at = time.monotonic()
    peak_backlog, peak_rss = 0.0, 0
    while time.monotonic() - down_at < INFLUX_OUTAGE_S:
        peak_backlog = max(peak_backlog, ingest.metric("farm_backlog_messages"))
        peak_rss = max(peak_rss, ingest.rss_kib())
        time.sleep(2)
    sent_during_outage = fleet.total_sent
    assert peak_backlog <= receive_maximum
    assert ingest.metric("farm_influx_write_errors_total") > 0
    influxd.start()
    catch_up = wait_stored(influxd, sent_during_outage, timeout=120)
    time.sleep(5)
    fleet.stop()
    wait_stored(influxd, fleet.total_sent, timeout=60)
    wait_for_marker(mosquitto, influxd)
    tally(
        "influxdb_outage",
        fleet,
        influxd,
        counters=ingest.counted(),
        nothing_redelivered=True,
        seconds={"outage": INFLUX_OUTAGE_S, "catch_up_after_restart": catch_up},
        notes={
            "receive_maximum": receive_maximum,
            "queued_at_outage_end": sent_during_outage - receive_maximum,
            "peak_ingest_backlog": int(peak_backlog),
            "peak_ingest_rss_kib": peak_rss,
            "write_errors": int(ingest.metric("farm_influx_write_errors_total")),
        },
    )


def test_ingest_sigkilled_mid_batch_and_restarted(
    tmp_path: Path,
    mosquitto: Mosquitto,
    influxd: Influxd,
    fleet_factory: list[Fleet],
    ingest_factory: list[Ingest],
) -> None:
    """SIGKILL while a write is in progress, three times: redeliveries land on the same points.

    Each kill comes after InfluxDB stored a batch and before ingest heard so (the
    proxy holds the answer): the batch was never acknowledged, so the broker
    redelivers it to the restarted ingest, which writes it again: ``rewritten`` > 0.
    """
    proxy = FaultyProxy(influxd.url)
    proxy.start()
    ingest = Ingest(tmp_path, mosquitto, proxy.url)
    ingest_factory.append(ingest)
    ingest.start()
    fleet = Fleet(mosquitto, rate_per_s=200)
    fleet_factory.append(fleet)
    fleet.start()
    kills = 0
    try:
        for _ in range(3):
            time.sleep(4)
            proxy.hold_answers()  # the next batch is stored, and ingest is not told
            wait_for(lambda: proxy.held > 0, timeout=10, interval=0.01)
            ingest.kill_counted()  # its one writer is held: the counters are final
            proxy.release_answers()
            kills += 1
            time.sleep(2)
            ingest.start()
        time.sleep(4)
        fleet.stop()
        catch_up = wait_stored(influxd, fleet.total_sent, timeout=120)
        wait_for_marker(mosquitto, influxd)
    finally:
        proxy.release_answers()
        proxy.stop()
    figures = tally(
        "ingest_sigkill",
        fleet,
        influxd,
        counters=ingest.counted(),
        proxy=proxy,
        seconds={"catch_up_after_last_publish": catch_up},
        notes={"kills": kills, "writes_seen_by_proxy": proxy.writes},
    )
    assert figures.rewritten, "no batch stored before a kill came again: the test did not bite"


def test_broker_restarted_mid_stream(
    tmp_path: Path,
    mosquitto: Mosquitto,
    influxd: Influxd,
    fleet_factory: list[Fleet],
    ingest_factory: list[Ingest],
) -> None:
    """Mosquitto restarted (persistence on) with messages queued and in flight to ingest.

    Writes are slowed so that, at the restart, ingest holds unacknowledged
    messages: they must come back from the broker's persistent store.
    """
    proxy = FaultyProxy(influxd.url)
    proxy.start()
    proxy.faults = Faults(delay_s=0.5)
    ingest = Ingest(tmp_path, mosquitto, proxy.url)
    ingest_factory.append(ingest)
    ingest.start()
    fleet = Fleet(mosquitto, rate_per_s=150)
    fleet_factory.append(fleet)
    fleet.start()
    try:
        time.sleep(8)
        in_flight = ingest.metric("farm_backlog_messages")
        mosquitto.stop()
        time.sleep(3)
        mosquitto.start()
        wait_for(ingest._connected, timeout=60)
        # The broker kept ingest's session (and its queue) across the restart.
        assert "session present: True" in ingest.log_tail()
        time.sleep(8)
        fleet.stop()
        proxy.faults = Faults()
        catch_up = wait_stored(influxd, fleet.total_sent, timeout=120)
        wait_for_marker(mosquitto, influxd)
    finally:
        proxy.stop()
    tally(
        "broker_restart",
        fleet,
        influxd,
        counters=ingest.counted(),
        proxy=proxy,
        seconds={"broker_down": 3.0, "catch_up_after_last_publish": catch_up},
        notes={"ingest_backlog_at_restart": int(in_flight)},
    )


def test_influxdb_errors_and_timeouts(
    tmp_path: Path,
    mosquitto: Mosquitto,
    influxd: Influxd,
    fleet_factory: list[Fleet],
    ingest_factory: list[Ingest],
) -> None:
    """500/503 answers, then writes that time out before and after InfluxDB stored them."""
    proxy = FaultyProxy(influxd.url)
    proxy.start()
    ingest = Ingest(tmp_path, mosquitto, proxy.url, FARM_INFLUX_TIMEOUT_S="2")
    ingest_factory.append(ingest)
    ingest.start()
    fleet = Fleet(mosquitto, rate_per_s=150)
    fleet_factory.append(fleet)
    fleet.start()
    try:
        time.sleep(3)
        proxy.faults = Faults(error_rate=0.5)
        time.sleep(20)
        proxy.faults = Faults(stall_before_rate=0.25, stall_after_rate=0.25, stall_s=3.0)
        time.sleep(25)
        deadline = time.monotonic() + 60  # a loaded machine writes less often: until both hit
        while not (proxy.stalled_before and proxy.stalled_after) and time.monotonic() < deadline:
            time.sleep(1)
        proxy.faults = Faults()
        time.sleep(3)
        fleet.stop()
        catch_up = wait_stored(influxd, fleet.total_sent, timeout=120)
        wait_for_marker(mosquitto, influxd)
    finally:
        proxy.stop()
    assert proxy.errors > 0 and proxy.stalled_before > 0 and proxy.stalled_after > 0
    figures = tally(
        "influxdb_errors_timeouts",
        fleet,
        influxd,
        counters=ingest.counted(),
        nothing_redelivered=True,
        proxy=proxy,
        seconds={"errors_phase": 20.0, "timeouts_phase": 25.0, "catch_up": catch_up},
        notes={
            "writes": proxy.writes,
            "answered_500_503": proxy.errors,
            "timed_out_not_stored": proxy.stalled_before,
            "timed_out_but_stored": proxy.stalled_after,
            "write_errors_seen_by_ingest": int(ingest.metric("farm_influx_write_errors_total")),
        },
    )
    # Writes that timed out after landing were written again, onto the same points.
    assert figures.rewritten, "no stored write came again: the test did not bite"
