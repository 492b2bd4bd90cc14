"""Moves the durable outbox to the broker: live records at once, a backlog replayed in batches.

Records taken since the link came up go out at once ("live"); older ones (the
backlog of an outage, or of a restart) are replayed oldest first in contract
``batch`` messages at a bounded rate (token bucket). A record is deleted from
the outbox only when its PUBACK arrives. Each connection starts from the outbox
again, so nothing depends on the MQTT client's in-memory queue surviving.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque

from edge.mqtt.encoding import Sent, batch_payloads, record_body, single_payload
from edge.mqtt.link import DeviceLink
from edge.mqtt.sender import BuildPayload
from edge.outbox import Outbox, Record
from farm_contract.topics import MessageKind

log = logging.getLogger(__name__)


class OutboxSender:
    """Stores records in the outbox; a thread sends them, at most ``max_inflight`` unacknowledged.

    ``seq`` is the outbox's durable counter. Listens to the link for its
    connections (a new generation: send the outbox again) and its PUBACKs.
    """

    def __init__(self, link: DeviceLink, outbox: Outbox, *, replay_records_per_s: float = 500.0,
                 batch_records: int = 500, max_inflight: int = 16) -> None:
        self.link = link
        self.outbox = outbox
        self.replay_records_per_s = replay_records_per_s
        self.batch_records = batch_records
        self.max_inflight = max_inflight
        self.replayed = 0
        """Outbox records sent as part of a backlog replay."""
        self._acks: deque[tuple[int, int, bool]] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        link.listen(self)

    @property
    def next_seq(self) -> int:
        return self.outbox.next_seq

    @property
    def pending(self) -> int:
        return len(self.outbox)

    def take_seq(self) -> int:
        return self.outbox.take_seq()

    def record(self, kind: MessageKind, build: BuildPayload) -> Sent:
        """Store one record (on disk when this returns); the sender thread sends it."""
        stored = self.outbox.append(kind.value, lambda seq: record_body(build(seq)))
        if stored is None:
            log.warning("%s: outbox full (%d records); new %s refused, %d lost so far",
                        self.link.device_id, len(self.outbox), kind.value, self.outbox.dropped)
            return Sent(kind, None, b"")
        self._wake.set()
        return Sent(kind, stored.seq, single_payload(stored.body))

    def raw(self, kind: MessageKind, payload: bytes) -> None:
        self.link.publish(kind, payload)

    def wait_all_acked(self, timeout: float | None) -> bool:
        """Until the broker has acknowledged everything published and the outbox is empty."""
        return self.link.wait_acked(timeout, held=lambda: len(self.outbox) > 0)

    def start(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"outbox-{self.link.device_id}",
                                        daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the thread; what is left stays in the outbox for the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    # -- told by the link (network thread) ------------------------------------------------------

    def link_up(self) -> None:
        self._wake.set()

    def acknowledged(self, generation: int, mid: int, ok: bool) -> None:
        self._acks.append((generation, mid, ok))
        self._wake.set()

    # -- the sender thread ------------------------------------------------------------------------

    def _run(self) -> None:
        """Move outbox records to the broker: live ones at once, the backlog rate-limited."""
        outbox, link = self.outbox, self.link
        generation = -1
        inflight: dict[int, list[int]] = {}
        backlog_mark = backlog_cursor = live_cursor = 0
        tokens, refilled = float(self.batch_records), time.monotonic()
        rate = self.replay_records_per_s
        while not self._stop.is_set():
            self._wake.wait(0.05)
            self._wake.clear()
            acked_ids: list[int] = []
            while self._acks:
                gen, mid, ok = self._acks.popleft()
                ids = inflight.pop(mid, None) if gen == generation else None
                if ids is None:
                    continue
                if not ok:
                    log.error("%s: broker refused %d record(s); dropping them", link.device_id,
                              len(ids))
                acked_ids += ids
            if acked_ids:
                outbox.ack(acked_ids)
                link.wake_waiters()
            if not link.connected:
                continue
            if generation != link.generation:
                generation = link.generation
                inflight.clear()
                backlog_mark = live_cursor = outbox.last_id()
                backlog_cursor = 0
                if len(outbox):
                    log.info("%s: replaying a backlog of %d record(s)", link.device_id,
                             len(outbox))
            now = time.monotonic()
            if rate > 0:
                tokens = min(float(self.batch_records), tokens + (now - refilled) * rate)
            refilled = now
            try:
                live = outbox.oldest(self.batch_records, after_id=live_cursor)
                if live and len(inflight) < self.max_inflight:
                    self._publish_records(live, inflight, generation)
                    live_cursor = live[-1].id
                while (backlog_cursor < backlog_mark and len(inflight) < self.max_inflight
                       and (rate <= 0 or tokens >= 1)):
                    want = self.batch_records if rate <= 0 else max(1, int(tokens))
                    records = outbox.oldest(want, after_id=backlog_cursor, upto_id=backlog_mark)
                    if not records:
                        backlog_cursor = backlog_mark
                        break
                    self._publish_records(records, inflight, generation)
                    backlog_cursor = records[-1].id
                    tokens -= len(records)
                    self.replayed += len(records)
                    if rate > 0 and tokens < 1:
                        break
            except RuntimeError:
                log.exception("%s: sending from the outbox failed", link.device_id)

    def _publish_records(self, records: list[Record], inflight: dict[int, list[int]],
                         generation: int) -> None:
        for kind in (MessageKind.TELEMETRY, MessageKind.EVENT):
            group = [r for r in records if r.kind == kind.value]
            start = 0
            for payload, count in batch_payloads([r.body for r in group], self.batch_records):
                ids = [r.id for r in group[start:start + count]]
                start += count
                if generation != self.link.generation:
                    return  # the link went down and up meanwhile: the new connection resends
                inflight[self.link.publish(kind, payload)] = ids
