"""The agent loop: poll the driver every sample interval and publish what it says.

Kept apart from ``__main__`` so tests can run an agent in a thread with their
own stop event. With an outbox (the default) every sample is on disk before the
loop moves on, whether or not the broker is reachable.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import datetime
from pathlib import Path

from edge.config import DeviceConfig
from edge.drivers.base import Driver
from edge.outbox import Outbox
from edge.publisher import DevicePublisher, utc_now
from farm_contract.payloads import EventType

log = logging.getLogger(__name__)


class SeqStore:
    """The device's ``seq`` counter on disk, so a restart does not reuse numbers.

    Ingest treats a repeated (device, seq) as a redelivery, so a device that
    restarted at 0 would have fresh data dropped as duplicates. With an outbox
    the counter lives in the outbox (moved atomically with each record); this
    file then only seeds a new outbox and is kept in step for a later downgrade.
    """

    def __init__(self, folder: Path | None, device_id: str) -> None:
        self.path = folder / f"{device_id}.seq" if folder is not None else None

    def load(self) -> int:
        if self.path is None or not self.path.exists():
            return 0
        try:
            return int(self.path.read_text().strip())
        except ValueError:
            log.warning("%s is not a number; starting seq at 0", self.path)
            return 0

    def save(self, next_seq: int) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(f"{next_seq}\n")
        os.replace(temporary, self.path)


class Agent:
    """One device: a driver and a publisher, polled every ``sample_interval_s``."""

    def __init__(self, config: DeviceConfig, driver: Driver | None = None) -> None:
        self.config = config
        self.driver = driver if driver is not None else config.driver.build()
        self.seq_store = SeqStore(config.state_dir, config.device_id)
        path = config.outbox_path
        self.outbox = None if path is None else Outbox(
            path, max_records=config.outbox.max_records, policy=config.outbox.when_full,
            first_seq=self.seq_store.load(),
        )
        self.publisher = DevicePublisher(
            config.device_id,
            config.site_id,
            config.mqtt_url,
            prefix=config.topic_prefix,
            username=config.mqtt_username,
            password=config.password.get_secret_value() if config.password else None,
            first_seq=self.seq_store.load(),
            metadata={"driver": config.driver.kind, "interval_s": config.sample_interval_s},
            ca_file=config.ca_file,
            cert_file=config.cert_file,
            key_file=config.key_file,
            keepalive=config.keepalive_s,
            reconnect_min_s=config.reconnect_min_s,
            reconnect_max_s=config.reconnect_max_s,
            outbox=self.outbox,
            replay_records_per_s=config.outbox.replay_records_per_s,
            batch_records=config.outbox.batch_records,
        )

    def sample(self, now: datetime) -> int:
        """Publish the driver's events and one telemetry record; return messages sent."""
        sent = 0
        for event in self.driver.events(now):
            fields = {key: value for key, value in event.items() if key not in ("type", "ts")}
            self.publisher.event(event.get("ts", now), EventType(event["type"]), **fields)
            sent += 1
        readings = self.driver.read(now)
        if readings:
            self.publisher.telemetry(now, dict(readings))
            sent += 1
        if self.outbox is None:
            self.seq_store.save(self.publisher.next_seq)
        return sent

    def run(self, stop: threading.Event) -> None:
        """Sample until ``stop`` is set, then shut down cleanly (offline status, disconnect)."""
        self.publisher.start()
        interval = self.config.sample_interval_s
        due = time.monotonic()
        try:
            while not stop.is_set():
                try:
                    self.sample(utc_now())
                except Exception:
                    log.exception("%s: sampling failed", self.config.device_id)
                due += interval  # a fixed cadence: a slow sample does not shift the next ones
                due = max(due, time.monotonic() - interval)
                stop.wait(max(0.0, due - time.monotonic()))
        finally:
            self.publisher.close(timeout=5)
            self.driver.close()
            self.seq_store.save(self.publisher.next_seq)
            if self.outbox is not None:
                stats = self.outbox.stats()
                log.info("%s: stopped; %d record(s) left in the outbox, %d dropped in total",
                         self.config.device_id, stats.pending, stats.dropped)
                self.outbox.close()
