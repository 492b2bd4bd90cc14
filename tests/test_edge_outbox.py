"""The durable outbox: bounded, ordered, seq-keeping, and intact after SIGKILL."""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edge.outbox import Outbox, OutboxLocked, read_stats
from edge.publisher import backoff_delay, batch_payloads, record_body
from farm_contract import payloads
from farm_contract.payloads import MAX_BATCH, MAX_PAYLOAD_BYTES, TelemetryMessage, decode_json

ROOT = Path(__file__).resolve().parents[1]
TS = datetime(2025, 6, 1, 8, tzinfo=UTC)


def body(seq: int) -> bytes:
    return record_body(payloads.telemetry(seq, TS, {"battery_v": 12.5}))


def test_append_oldest_ack_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "ob.sqlite"
    outbox = Outbox(path, first_seq=7)
    records = [outbox.append("telemetry", body) for _ in range(5)]
    assert [r.seq for r in records if r] == [7, 8, 9, 10, 11]
    assert len(outbox) == 5 and outbox.next_seq == 12
    assert [r.seq for r in outbox.oldest(3)] == [7, 8, 9]
    first, second, third = (r for r in records[:3] if r is not None)
    assert [r.seq for r in outbox.oldest(10, after_id=second.id)] == [9, 10, 11]
    assert outbox.ack([first.id, third.id, 10**9]) == 2
    outbox.close()

    again = Outbox(path, first_seq=0)  # first_seq only seeds a new file
    assert again.next_seq == 12
    assert [r.seq for r in again.oldest(10)] == [8, 10, 11]
    assert json.loads(again.oldest(1)[0].body)["seq"] == 8
    assert read_stats(path) == (3, 0, 12)
    again.close()


def test_wal_mode_and_one_writer(tmp_path: Path) -> None:
    path = tmp_path / "ob.sqlite"
    outbox = Outbox(path)
    with pytest.raises(OutboxLocked):
        Outbox(path)
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()
    outbox.close()
    Outbox(path).close()  # the lock goes with the process that held it


def test_drop_oldest_counts_and_persists_the_loss(tmp_path: Path) -> None:
    path = tmp_path / "ob.sqlite"
    outbox = Outbox(path, max_records=10, policy="drop_oldest")
    for _ in range(15):
        assert outbox.append("telemetry", body) is not None
    assert len(outbox) == 10 and outbox.dropped == 5
    assert [r.seq for r in outbox.oldest(100)] == list(range(5, 15))
    outbox.close()
    again = Outbox(path, max_records=10, policy="drop_oldest")
    assert again.dropped == 5 and again.next_seq == 15
    again.close()


def test_reject_new_keeps_history_and_counts(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "ob.sqlite", max_records=10, policy="reject_new")
    results = [outbox.append("telemetry", body) for _ in range(15)]
    assert results[10:] == [None] * 5
    assert [r.seq for r in outbox.oldest(100)] == list(range(10))
    assert outbox.dropped == 5 and outbox.next_seq == 10  # refused records take no seq
    outbox.ack([r.id for r in outbox.oldest(3)])
    assert outbox.append("telemetry", body) is not None  # room again
    outbox.close()


def test_a_record_that_cannot_be_built_takes_no_seq(tmp_path: Path) -> None:
    outbox = Outbox(tmp_path / "ob.sqlite")

    def bad(seq: int) -> bytes:
        return record_body(payloads.telemetry(seq, TS, {"battery_v": float("nan")}))

    with pytest.raises(ValueError):
        outbox.append("telemetry", bad)
    assert outbox.append("telemetry", body).seq == 0  # type: ignore[union-attr]
    outbox.close()


WRITER = """
import sys
from datetime import UTC, datetime
from edge.outbox import Outbox
from edge.publisher import record_body
from farm_contract import payloads
ts = datetime(2025, 6, 1, tzinfo=UTC)
outbox = Outbox(sys.argv[1])
while True:
    record = outbox.append("telemetry", lambda seq: record_body(
        payloads.telemetry(seq, ts, {"battery_v": 12.0})))
    print(record.seq, flush=True)
"""


def test_sigkill_loses_nothing_that_was_accepted(tmp_path: Path) -> None:
    """Every append that returned before ``kill -9`` is in the file afterwards."""
    path = tmp_path / "ob.sqlite"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    assert writer.stdout is not None
    accepted = [int(writer.stdout.readline()) for _ in range(300)]
    writer.send_signal(signal.SIGKILL)
    writer.wait(10)
    accepted += [int(line) for line in writer.stdout.read().split()]
    outbox = Outbox(path)
    stored = [r.seq for r in outbox.oldest(10**6)]
    assert set(accepted) <= set(stored)
    assert stored == list(range(outbox.next_seq))  # contiguous: no seq reused or skipped
    outbox.close()


def test_batches_respect_the_contract_limits() -> None:
    big = {f"metric_{i}": i + 0.123456789 for i in range(16)}  # ~500 bytes a record
    bodies = [record_body(payloads.telemetry(seq, TS, big)) for seq in range(2500)]
    packed = batch_payloads(bodies)
    assert sum(count for _, count in packed) == 2500
    seqs: list[int] = []
    for payload, count in packed:
        assert len(payload) <= MAX_PAYLOAD_BYTES and count <= MAX_BATCH
        message = TelemetryMessage.model_validate(decode_json(payload))
        seqs += [record.seq for record in message.records()]
    assert seqs == list(range(2500))
    first_payload, first_count = packed[0]
    assert first_count < MAX_BATCH and len(first_payload) > MAX_PAYLOAD_BYTES - 600  # bytes bind
    assert batch_payloads(bodies[:1]) == [(payloads.telemetry(0, TS, big), 1)]
    assert [count for _, count in batch_payloads(bodies[:25], max_records=10)] == [10, 10, 5]


def test_backoff_has_full_jitter_within_bounds() -> None:
    rng = random.Random(1)
    first = [backoff_delay(0, 1.0, 60.0, rng) for _ in range(1000)]
    assert all(0 <= d <= 1.0 for d in first)
    assert max(first) - min(first) > 0.9  # spread over the window, not one instant
    late = [backoff_delay(20, 1.0, 60.0, rng) for _ in range(1000)]
    assert all(0 <= d <= 60.0 for d in late) and max(late) > 50
    assert sum(late) / len(late) == pytest.approx(30, rel=0.1)
