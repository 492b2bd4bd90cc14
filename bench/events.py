"""Events per second through the pipeline, with and without event identity (issue 12).

``python -m bench.events [--events N] [--devices D]``: a real InfluxDB on a free
loopback port (the database created by ingest's writer: 52-week shards); the same
events (film events of drip devices, distinct seqs) go through
the production pipeline (parse → enrich → write → ack, :class:`Pipeline` with its two
threads), first placed by the plain time rule, then by identity
(:class:`~ingest_service.pipeline.event_identity.EventIndex`: one InfluxDB look-up per
new event), then once more as resends (known: answered from memory). Each run has a
fresh database. No broker: the input is not what this measures.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from pathlib import Path

from bench.workload import fleet, write_registry
from devstack.servers import Influxd
from ingest_service.influxql import InfluxQL
from ingest_service.model import Inbound
from ingest_service.outputs.influx import make_writer
from ingest_service.pipeline.batcher import Pipeline
from ingest_service.pipeline.enrich import Enricher
from ingest_service.pipeline.event_identity import EventIndex, InfluxEventLookup
from ingest_service.settings import Settings
from ingest_service.state import RegistryHolder, Stats

DAY_MS = 86_400_000


def messages(events: int, devices: int) -> list[tuple[str, bytes]]:
    """``events`` film events spread over the drip devices of a ``devices`` fleet."""
    drip = [d for d in fleet(devices) if d.site_type == "drip"]
    start_ms = int(time.time() * 1000) - 300 * DAY_MS
    out = []
    for n in range(events):
        d = drip[n % len(drip)]
        body = {"v": 1, "seq": n, "ts": start_ms + n * 60_000, "type": "film_recovered",
                "mass_t": 0.5 + n % 7}
        out.append((f"farm/v1/{d.site_id}/{d.device_id}/event", json.dumps(body).encode()))
    return out


def run(settings: Settings, batch: list[tuple[str, bytes]], identity: EventIndex | None) -> float:
    """Seconds from hand-over to the last acknowledgement."""
    holder = RegistryHolder.from_settings(settings)
    enricher = Enricher(holder.get, settings, events=identity)
    writer = make_writer(settings)
    pipeline = Pipeline(settings, enricher, writer, Stats())
    done = threading.Semaphore(0)
    inbounds = [Inbound(t, p, time.time_ns(), done.release) for t, p in batch]
    pipeline.start()
    started = time.perf_counter()
    pipeline.submit_many(inbounds)
    for _ in inbounds:
        done.acquire()
    seconds = time.perf_counter() - started
    pipeline.stop()
    writer.close()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument("--devices", type=int, default=100)
    args = parser.parse_args()
    batch = messages(args.events, args.devices)
    with tempfile.TemporaryDirectory(prefix="farm-bench-events-") as folder:
        root = Path(folder)
        influxd = Influxd(root / "influxd")
        influxd.start()
        try:
            settings = Settings(
                influx_url=influxd.url, influx_api="v1",
                registry_dir=write_registry(root / "registry", fleet(args.devices)),
                batch_interval_s=0.05,
            )
            runs = ("plain time rule", "by identity, new", "by identity, resent",
                    "share group (ask each)")
            for label in runs:
                if label != "by identity, resent":
                    influxd.query("DROP DATABASE farm")  # the writer creates it, as ingest does
                    query = InfluxQL(settings)
                    lookup = InfluxEventLookup(query)
                    index = EventIndex(lookup, load_device=lookup.device,
                                       trust_memory=label != "share group (ask each)")
                seconds = run(settings, batch, None if label == "plain time rule" else index)
                print(f"{label:22} {len(batch) / seconds:8.0f} events/s "
                      f"({seconds * 1e6 / len(batch):.0f} µs/event, {index.lookups} look-ups)")
        finally:
            influxd.stop()


if __name__ == "__main__":
    main()
