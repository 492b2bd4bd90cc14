"""Small helpers shared by the integration tests."""

from __future__ import annotations

import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from devstack.servers import Influxd
from ingest_service.model import Inbound
from ingest_service.pipeline.batcher import Pipeline

T = TypeVar("T")

SITES_CSV = """site_id,name,county,site_type,lat,lon,large_scale,area_mu,water_quota_m3_per_mu
drip-1,滴灌一号,平城区,drip,40.1,113.3,,120,300
farm-1,养殖场一号,云州区,manure,40.2,113.5,true,,
straw-1,秸秆站,云州区,straw,40.0,113.6,,300,
"""
DEVICES_CSV = """device_id,site_id,dev_eui,model
dev-1,drip-1,,soil-probe
dev-2,farm-1,0011223344556677,lora-level
dev-3,straw-1,,scale
"""


def write_registry(folder: Path, sites: str = SITES_CSV, devices: str = DEVICES_CSV) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sites.csv").write_text(sites, encoding="utf-8")
    (folder / "devices.csv").write_text(devices, encoding="utf-8")
    return folder


def wait_for(predicate: Callable[[], T], timeout: float = 20.0, interval: float = 0.1) -> T:
    """Poll until ``predicate`` returns something truthy; fail with its last value otherwise."""
    deadline = time.monotonic() + timeout
    value = predicate()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = predicate()
    assert value, f"condition not met within {timeout}s (last value {value!r})"
    return value


def through_pipeline(
    pipeline: Pipeline, messages: list[tuple[str, bytes]], timeout: float = 30.0
) -> Counter[int]:
    """Run ``messages`` through the threaded pipeline as production does; acks per message.

    The pipeline is started, handed the messages in two ``submit_many`` calls (two
    reads from the socket, as the MQTT input hands them over), given until every
    message is acknowledged (or ``timeout``), and stopped.
    """
    acks: Counter[int] = Counter()
    lock = threading.Lock()

    def acker(n: int) -> Callable[[], None]:
        def ack() -> None:
            with lock:
                acks[n] += 1

        return ack

    inbounds = [
        Inbound(topic, payload, time.time_ns(), acker(n))
        for n, (topic, payload) in enumerate(messages)
    ]
    pipeline.start()
    try:
        half = len(inbounds) // 2
        pipeline.submit_many(inbounds[:half])
        pipeline.submit_many(inbounds[half:])
        deadline = time.monotonic() + timeout
        while sum(acks.values()) < len(inbounds) and time.monotonic() < deadline:
            time.sleep(0.001)
    finally:
        pipeline.stop()
    return acks


def mosquitto_pub(port: int, topic: str, payload: str | bytes, *extra: str) -> None:
    """Publish as a user would, with the mosquitto_pub command-line client, at QoS 1."""
    data = payload.encode() if isinstance(payload, str) else payload
    subprocess.run(
        ["mosquitto_pub", "-h", "127.0.0.1", "-p", str(port), "-q", "1", "-t", topic, "-s", *extra],
        input=data,
        check=True,
        timeout=10,
    )


def count(influxd: Influxd, q: str) -> int:
    """The first value of the first row of an InfluxQL count query (0 when no series)."""
    result = influxd.query(q)
    for item in result.get("results", []):  # type: ignore[union-attr]
        for series in item.get("series", []):
            return int(series["values"][0][1])
    return 0


def rows(influxd: Influxd, q: str) -> list[dict[str, object]]:
    """Every row of an InfluxQL result as a dict, tags included."""
    out: list[dict[str, object]] = []
    for item in influxd.query(q).get("results", []):  # type: ignore[union-attr]
        for series in item.get("series", []):
            for values in series["values"]:
                named = dict(zip(series["columns"], values, strict=True))
                out.append({**series.get("tags", {}), **named})
    return out


def points_per_seq(influxd: Influxd, measurement: str = "telemetry") -> Counter[tuple[str, int]]:
    """Stored points per ``(device_id, seq)``.

    Every point is listed (not ``count(distinct(seq))``), so a message stored twice at
    different times counts 2. A redelivery that lands on the same point (same device,
    ``ts`` and ``seq``: the same series and time) is overwritten by InfluxDB and counts 1,
    as it should: it is stored once.
    """
    found: Counter[tuple[str, int]] = Counter()
    for row in rows(influxd, f"SELECT seq FROM {measurement} GROUP BY device_id"):
        found[(str(row["device_id"]), int(str(row["seq"])))] += 1
    return found


def wait_behind_marker(
    port: int, topic: str, payload: str | bytes, arrived: Callable[[], object],
    timeout: float = 30.0,
) -> None:
    """Publish a marker and wait until it has come through: the positive control before
    asserting that something did *not* arrive.

    Call it only once every earlier message has been acknowledged by the broker (the
    publishers' PUBACKs are in). Mosquitto appends each message to a subscriber
    session's queue, a linked list, in the order it handles them (eclipse-mosquitto
    issue #2174; MQTT 5 §4.6 promises this per publishing client and topic), and
    delivers that queue in order, redeliveries first after a reconnect. So when the
    marker has arrived, everything the broker held before it has been delivered, and
    a consumer that handles messages in order (ingest's pipeline: one writer, batches
    in arrival order) has handled them. Whatever is absent then is absent, not late.
    """
    mosquitto_pub(port, topic, payload)
    wait_for(arrived, timeout=timeout, interval=0.1)
