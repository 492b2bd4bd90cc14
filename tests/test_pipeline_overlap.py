"""The pipeline writes batch N while it parses batch N+1, and still acks only after the write."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta

from farm_contract.registry import Registry
from ingest_service.model import Inbound
from ingest_service.pipeline.batcher import Pipeline
from ingest_service.pipeline.enrich import Enricher
from ingest_service.settings import Settings
from ingest_service.state import Stats
from tests.helpers import DEVICES_CSV, SITES_CSV, wait_for

BATCH = 10


class SlowWriter:
    """Takes 30 ms per write; records which seqs each finished write held."""

    def __init__(self, pipeline: list[Pipeline]) -> None:
        self.pipeline = pipeline
        self.stored: set[int] = set()
        self.max_in_hand = 0
        self.concurrent = 0
        self.max_concurrent = 0
        self._lock = threading.Lock()

    def write(self, body: bytes) -> None:
        with self._lock:
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
        self.max_in_hand = max(self.max_in_hand, self.pipeline[0]._in_hand)
        time.sleep(0.03)
        # by now the pipeline thread has built the next batch, and waits for us
        self.max_in_hand = max(self.max_in_hand, self.pipeline[0]._in_hand)
        seqs = {int(part.split("=")[1][:-1]) for part in body.decode().replace(" ", ",").split(",")
                if part.startswith("seq=")}
        with self._lock:
            self.stored |= seqs
            self.concurrent -= 1

    def ping(self) -> bool:
        return True

    def close(self) -> None:
        pass


def test_acks_follow_their_write_in_order_with_two_batches_at_most() -> None:
    settings = Settings(batch_size=BATCH, batch_interval_s=0.01)
    registry = Registry.from_csv(SITES_CSV, DEVICES_CSV)
    holder: list[Pipeline] = []
    writer = SlowWriter(holder)
    pipeline = Pipeline(settings, Enricher(lambda: registry, settings), writer, Stats())
    holder.append(pipeline)
    acked: list[int] = []
    early: list[int] = []
    start = datetime.now(UTC) - timedelta(hours=1)

    def ack_of(seq: int) -> None:
        if seq not in writer.stored:
            early.append(seq)
        acked.append(seq)

    pipeline.start()
    try:
        for seq in range(200):
            body = {"v": 1, "seq": seq, "ts": (start + timedelta(seconds=seq)).isoformat(),
                    "readings": {"soil_moisture_vwc": 0.3}}
            pipeline.submit(Inbound("farm/v1/drip-1/dev-1/telemetry", json.dumps(body).encode(),
                                    time.time_ns(), ack=lambda seq=seq: ack_of(seq)))
        wait_for(lambda: len(acked) == 200, timeout=30)
    finally:
        pipeline.stop()
    assert early == []
    assert acked == list(range(200))
    assert writer.max_concurrent == 1
    assert BATCH < writer.max_in_hand <= 2 * BATCH  # the next batch was built meanwhile
    assert pipeline.pending == 0
