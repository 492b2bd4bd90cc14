"""``python -m bench.baseline``: the plain script ingest is measured against.

What someone would write in an afternoon: a paho subscriber with automatic acks
(a message is acknowledged before it is stored, so a crash loses it), no
validation beyond ``json.loads``, no registry; each message becomes one
line-protocol line, and a writer thread POSTs 5,000 lines per ``/write``
(or whatever has gathered after 0.2 s). Tags come from the topic.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from datetime import datetime
from typing import Any

import httpx
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

TOPIC = "farm/v1/+/+/telemetry"
BATCH = 5000


def line(topic: str, payload: bytes | bytearray) -> str:
    """One telemetry message as a line-protocol line (time: ``ts`` in ns)."""
    _, _, site_id, device_id, _ = topic.split("/")
    data = json.loads(payload)
    fields = []
    for name, value in data["readings"].items():
        if isinstance(value, bool):
            fields.append(f"{name}={'true' if value else 'false'}")
        else:
            fields.append(f"{name}={float(value)}")
    fields.append(f"seq={int(data['seq'])}i")
    ts = datetime.fromisoformat(data["ts"].replace("Z", "+00:00"))
    time_ns = int(ts.timestamp() * 1000) * 1_000_000
    return f"telemetry,site_id={site_id},device_id={device_id} {','.join(fields)} {time_ns}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--influx-url", required=True)
    parser.add_argument("--db", default="farm")
    parser.add_argument("--client-id", default="bench-baseline")
    args = parser.parse_args(argv)
    lines: list[str] = []
    lock = threading.Condition()
    http = httpx.Client(base_url=args.influx_url, timeout=60)

    def writer() -> None:
        nonlocal lines
        while True:
            with lock:
                if len(lines) < BATCH:
                    lock.wait(0.2)
                batch, lines = lines[:BATCH], lines[BATCH:]
            if batch:
                http.post(
                    "/write", params={"db": args.db}, content="\n".join(batch).encode()
                ).raise_for_status()

    def on_connect(client: mqtt.Client, *_: Any) -> None:
        client.subscribe(TOPIC, qos=1)

    def on_subscribe(*_: Any) -> None:
        print("ready", flush=True)

    def on_message(client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            text = line(message.topic, message.payload)
        except (ValueError, KeyError, TypeError):
            return
        with lock:
            lines.append(text)
            if len(lines) >= BATCH:
                lock.notify()

    threading.Thread(target=writer, daemon=True).start()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=args.client_id)
    client.max_inflight_messages_set(0)
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect("127.0.0.1", args.port, keepalive=60)
    client.loop_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
