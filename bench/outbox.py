"""``python -m bench.outbox``: how fast the edge outbox stores and replays readings.

Three figures, each on this machine and a real Mosquitto on loopback:

- **write rate**: readings/s appended one by one, each its own fsync'd
  transaction (``synchronous=FULL``), as the agent does: the durability costs
  included;
- **replay rate**: readings/s moved from the outbox to the broker (batch
  messages, PUBACK, delete) with the replay rate limit off, i.e. the ceiling;
- **replay time** of a 100,000-reading backlog at that ceiling, checked by a
  subscriber that counts every record once.

Results go to ``bench/results/outbox.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from devstack.servers import Mosquitto
from edge.drivers.simulated import SimulatedDriver
from edge.outbox import Outbox
from edge.publisher import DevicePublisher, record_body
from farm_contract import payloads
from farm_contract.payloads import decode_json

RESULTS = Path(__file__).resolve().parent / "results" / "outbox.json"
START = datetime(2025, 6, 1, tzinfo=UTC)


class Counter:
    """Subscribes to a device's telemetry and counts distinct records received."""

    def __init__(self, port: int, topic: str) -> None:
        self.seqs: set[int] = set()
        self.messages = 0
        self._lock = threading.Lock()
        ready = threading.Event()
        client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.on_message = self._on_message
        client.on_subscribe = lambda *args: ready.set()
        client.on_connect = lambda c, *args: c.subscribe(topic, qos=1)
        client.connect("127.0.0.1", port)
        client.loop_start()
        if not ready.wait(10):
            raise RuntimeError("subscription not acknowledged")
        self.client = client

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        body = decode_json(bytes(message.payload))
        records = body.get("batch", [body])
        with self._lock:
            self.messages += 1
            self.seqs.update(record["seq"] for record in records)

    def received(self) -> int:
        with self._lock:
            return len(self.seqs)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def readings(count: int, seed: int = 1) -> list[dict[str, float | bool]]:
    """``count`` realistic drip-field readings, a minute apart (computed before timing)."""
    driver = SimulatedDriver("drip", seed)
    distinct = [dict(driver.read(START + timedelta(minutes=i))) for i in range(min(count, 1440))]
    return [distinct[i % len(distinct)] for i in range(count)]


def fill(outbox: Outbox, rows: list[dict[str, float | bool]]) -> float:
    """Append every reading as the agent would; returns readings/s."""
    def builder(ts: datetime, values: dict[str, float | bool]) -> Callable[[int], bytes]:
        return lambda seq: record_body(payloads.telemetry(seq, ts, values))

    started = time.perf_counter()
    for index, values in enumerate(rows):
        outbox.append("telemetry", builder(START + timedelta(minutes=index), values))
    return len(rows) / (time.perf_counter() - started)


def replay(folder: Path, outbox: Outbox, batch_records: int) -> dict[str, Any]:
    """Send the whole outbox to a real Mosquitto, unthrottled; time until all is PUBACKed."""
    backlog = len(outbox)
    broker = Mosquitto(folder / "mosquitto",
                       extra_config="user root" if os.geteuid() == 0 else "")
    broker.start()
    try:
        counter = Counter(broker.port, "farm/v1/bench-site/bench-dev/telemetry")
        publisher = DevicePublisher("bench-dev", "bench-site", broker.url, outbox=outbox,
                                    replay_records_per_s=0, batch_records=batch_records)
        started = time.perf_counter()
        publisher.start(wait_s=10)
        if not publisher.wait_all_acked(600):
            raise RuntimeError(f"replay incomplete: {len(outbox)} left")
        elapsed = time.perf_counter() - started
        deadline = time.monotonic() + 60
        while counter.received() < backlog and time.monotonic() < deadline:
            time.sleep(0.05)
        publisher.close()
        received, messages = counter.received(), counter.messages
        counter.close()
    finally:
        broker.stop()
    return {
        "backlog_readings": backlog,
        "batch_records": batch_records,
        "replay_s": round(elapsed, 2),
        "replay_readings_per_s": round(backlog / elapsed),
        "received_distinct": received,
        "messages": messages,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.outbox", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backlog", type=int, default=100_000)
    parser.add_argument("--write-sample", type=int, default=5_000,
                        help="readings timed for the write rate (fsync per reading)")
    parser.add_argument("--batch", type=int, default=500, help="records per replay batch")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    rows = readings(args.backlog)
    with tempfile.TemporaryDirectory(prefix="bench-outbox-") as tmp:
        folder = Path(tmp)
        outbox = Outbox(folder / "outbox.sqlite", max_records=args.backlog + 10)
        write_rate = fill(outbox, rows[:args.write_sample])
        print(f"write: {write_rate:,.0f} readings/s (one fsync'd transaction per reading)")
        rest_rate = fill(outbox, rows[args.write_sample:]) if args.backlog > args.write_sample \
            else write_rate
        size_mb = (folder / "outbox.sqlite").stat().st_size / 1e6
        print(f"backlog: {len(outbox):,} readings stored ({rest_rate:,.0f} readings/s)")
        result = replay(folder, outbox, args.batch)
        outbox.close()
    print(f"replay: {result['replay_readings_per_s']:,} readings/s; "
          f"{result['backlog_readings']:,} readings in {result['replay_s']} s "
          f"({result['messages']:,} messages, {result['received_distinct']:,} distinct "
          f"records received)")
    if result["received_distinct"] != result["backlog_readings"]:
        print("error: the subscriber did not receive every record")
        return 1
    report = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "load": os.getloadavg()},
        "write_readings_per_s": round(write_rate),
        "write_readings_per_s_backlog_fill": round(rest_rate),
        "outbox_file_mb": round(size_mb, 1),
        **result,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
