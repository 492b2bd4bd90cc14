"""``python -m bench.bare``: a bare paho-mqtt QoS 1 subscriber that only counts.

The reference for "what paho itself costs" (no decoding, no storage). It prints
``ready`` once subscribed, ``progress N`` every second and ``done EPOCH N``
when it has received ``--count`` messages.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

TOPIC = "farm/v1/+/+/telemetry"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bare")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--client-id", default="bench-bare")
    args = parser.parse_args(argv)
    received = 0
    done = threading.Event()

    def on_connect(client: mqtt.Client, *_: Any) -> None:
        client.subscribe(TOPIC, qos=1)

    def on_subscribe(*_: Any) -> None:
        print("ready", flush=True)

    def on_message(*_: Any) -> None:
        nonlocal received
        received += 1
        if received == args.count:
            print(f"done {time.time():.6f} {received}", flush=True)
            done.set()

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=args.client_id)
    client.max_inflight_messages_set(0)
    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect("127.0.0.1", args.port, keepalive=60)
    client.loop_start()
    while not done.wait(1.0):
        print(f"progress {received}", flush=True)
    client.disconnect()
    client.loop_stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
