"""Stage 4: batch messages, write their points, and only then acknowledge them.

A message is acknowledged to the broker after every point and rejection it
produced is stored in InfluxDB, so a crash or an InfluxDB outage never loses
one: the broker redelivers whatever was not acknowledged, and redeliveries land
on the same points (see :func:`~ingest_service.pipeline.enrich.point_time_ns`).

Write failures are of two kinds. Transient ones (InfluxDB down, 5xx, timeouts)
are retried with back-off for as long as it takes, holding the batch. A 4xx
means some point is unacceptable (a field type conflict, say): the batch is
split in halves until the offending message is found, which is then stored as
a ``db_rejected`` rejection so that its neighbours are not held hostage.

Two threads share the work so that the next batch is parsed while the previous
one is written: the pipeline thread collects and parses a batch and hands it
to the writer thread, which writes it, then acknowledges its messages. The
hand-over waits until the writer is free, so at most two batches are in hand
(one being written, one being built) and acknowledgements keep batch order.

Memory stays bounded while InfluxDB is down: the broker sends at most the
receive maximum of unacknowledged messages, and when the connection is lost the
messages of the old connection are dropped here (the broker redelivers them), so
reconnects cannot pile up copies. A batch whose messages all came on a lost
connection stops retrying for the same reason.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    stop_when_event_set,
    wait_exponential_jitter,
)
from tenacity.stop import stop_base

from farm_contract import schema
from ingest_service.model import MAX_TOPIC_CHARS, Inbound, Point, Rejection, printable
from ingest_service.outputs.influx import WriteError, Writer
from ingest_service.outputs.lineprotocol import encode
from ingest_service.pipeline.chirpstack import parse_uplink
from ingest_service.pipeline.enrich import Enricher
from ingest_service.pipeline.parse import Parsed, Rejected, parse_device_message
from ingest_service.settings import Settings
from ingest_service.state import Stats

log = logging.getLogger(__name__)

RETRY_MAX_WAIT_S = 10.0
"""Longest pause between write attempts: how late, at worst, ingest notices InfluxDB is back."""


class StopWhen(stop_base):
    """Stop retrying once ``predicate()`` holds."""

    def __init__(self, predicate: Callable[[], bool]) -> None:
        self._predicate = predicate

    def __call__(self, retry_state: RetryCallState) -> bool:
        return self._predicate()


class BatchAbandoned(Exception):
    """Every message of the batch came on a lost connection; the broker redelivers them."""


@dataclass(slots=True)
class _Job:
    """A parsed batch on its way to the writer thread."""

    outcomes: list[Outcome]
    started: float
    body: bytes


StoredEvents = Callable[[list[int]], None]
"""Told the times (ns) of the event points each write just stored, before their
messages are acknowledged; a transient :class:`WriteError` from it retries the write
(which is idempotent). The late-event marker is one
(:class:`~ingest_service.indicators.late_events.LateEventMarker`)."""


@dataclass(slots=True)
class Outcome:
    """What one message turned into.

    ``line`` is the message's one point already in line protocol, when the
    enricher's fast path took it (:meth:`~ingest_service.pipeline.enrich.Enricher.telemetry_line`);
    then ``points`` and ``rejections`` are empty.
    """

    inbound: Inbound
    points: list[Point] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    line: str | None = None

    @property
    def point_count(self) -> int:
        return len(self.points) + (self.line is not None)

    @property
    def event_times_ns(self) -> list[int]:
        """The times of the event points enrich made (the fast path makes none)."""
        return [p.time_ns for p in self.points if p.measurement == schema.EVENT]


def rejection_point(rejection: Rejection) -> Point:
    """A rejection as a point of the ``rejection`` measurement (contract §9).

    The payload excerpt (first 1 KiB) is stored as text: invalid UTF-8 becomes U+FFFD
    and control characters are escaped (``\\n``, ``\\x1b``), as in topic and detail.
    """
    excerpt = rejection.payload.decode("utf-8", errors="replace")
    return Point(
        schema.REJECTION,
        {"reason": rejection.reason},
        {
            "topic": rejection.topic,
            "payload": printable(excerpt, 4 * schema.REJECTION_PAYLOAD_BYTES),
            "detail": rejection.detail,
        },
        rejection.time_ns,
    )


def _encode_outcomes(outcomes: list[Outcome]) -> bytes:
    """The line-protocol body of a batch: its ready lines, its points, then its rejections."""
    lines = [item.line for item in outcomes if item.line is not None]
    points = [p for item in outcomes for p in item.points]
    points += [rejection_point(r) for item in outcomes for r in item.rejections]
    if not points:
        return "\n".join(lines).encode("utf-8", errors="replace")
    body = encode(points)
    if not lines:
        return body
    return "\n".join(lines).encode("utf-8", errors="replace") + b"\n" + body


def _transient(error: BaseException) -> bool:
    return isinstance(error, WriteError) and error.transient


class Pipeline:
    """Parse → enrich → write → ack, on one thread fed by the inputs."""

    def __init__(
        self,
        settings: Settings,
        enricher: Enricher,
        writer: Writer,
        stats: Stats,
        stored_events: StoredEvents | None = None,
    ) -> None:
        self._settings = settings
        self._stored_events = stored_events
        self._prefix = settings.topic_prefix
        self._enricher = enricher
        self._writer = writer
        self._stats = stats
        self._queue: deque[Inbound] = deque()
        self._ready = threading.Condition()
        self._in_hand = 0
        self._bytes = 0  # payload bytes of the queue and the batches in hand
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._writer_thread: threading.Thread | None = None
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._writer_free = threading.Semaphore(1)

    def submit(self, inbound: Inbound) -> None:
        """Hand a message over (called on the input's thread; never blocks).

        The pipeline thread is woken only when it can have something to do: when
        the queue stops being empty, or fills a batch. Waking it per message cost
        ~11 µs of CPU per message in thread switches.
        """
        with self._ready:
            self._queue.append(inbound)
            self._bytes += len(inbound.payload)
            waiting = len(self._queue)
            self._stats.record_backlog(waiting + self._in_hand)
            if waiting == 1 or waiting == self._settings.batch_size:
                self._ready.notify()

    def submit_many(self, inbounds: list[Inbound]) -> None:
        """Hand over the messages of one read from the socket (never blocks)."""
        if not inbounds:
            return
        size_of = sum([len(inbound.payload) for inbound in inbounds])
        with self._ready:
            before = len(self._queue)
            self._queue.extend(inbounds)
            self._bytes += size_of
            waiting = len(self._queue)
            self._stats.record_backlog(waiting + self._in_hand)
            size = self._settings.batch_size
            if before == 0 or before < size <= waiting:
                self._ready.notify()

    def drop_stale(self) -> None:
        """Forget queued messages of a lost connection: the broker redelivers them."""
        with self._ready:
            kept = [inbound for inbound in self._queue if not inbound.stale()]
            dropped = len(self._queue) - len(kept)
            self._bytes -= sum(len(i.payload) for i in self._queue) - sum(
                len(i.payload) for i in kept
            )
            self._queue = deque(kept)
            self._stats.record_backlog(len(self._queue) + self._in_hand)
        if dropped:
            log.info("dropped %d queued messages of a lost connection (redelivered)", dropped)

    @property
    def pending(self) -> int:
        """Messages received and not yet acknowledged or dropped (queue and batch in hand)."""
        with self._ready:
            return len(self._queue) + self._in_hand

    @property
    def pending_bytes(self) -> int:
        """Payload bytes of the pending messages: what the input's pause bounds by size."""
        with self._ready:
            return self._bytes

    def start(self) -> None:
        self._stop.clear()
        self._writer_thread = threading.Thread(
            target=self._write_loop, name="ingest-writer", daemon=True
        )
        self._writer_thread.start()
        self._thread = threading.Thread(target=self._run, name="ingest-pipeline", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Finish the batches in hand (if InfluxDB lets us) and stop; the rest stays queued."""
        self._stop.set()
        with self._ready:
            self._ready.notify()  # not left waiting for a first message or a full batch
        deadline = time.monotonic() + timeout
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._writer_thread is not None:
            self._jobs.put(None)
            self._writer_thread.join(max(0.0, deadline - time.monotonic()))
            self._writer_thread = None

    def _collect(self) -> list[Inbound]:
        """Up to ``batch_size`` messages, waiting at most ``batch_interval_s`` after the first."""
        size = self._settings.batch_size
        with self._ready:
            if not self._queue and not self._ready.wait(timeout=0.2):
                return []
            deadline = time.monotonic() + self._settings.batch_interval_s
            while len(self._queue) < size:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stop.is_set():
                    break
                self._ready.wait(timeout=remaining)
            batch = [self._queue.popleft() for _ in range(min(size, len(self._queue)))]
            self._in_hand += len(batch)
            self._stats.record_backlog(len(self._queue) + self._in_hand)
        return batch

    def _release(self, inbounds: list[Inbound]) -> None:
        size_of = sum([len(inbound.payload) for inbound in inbounds])
        with self._ready:
            self._in_hand -= len(inbounds)
            self._bytes -= size_of
            self._stats.record_backlog(len(self._queue) + self._in_hand)

    def _run(self) -> None:
        """Collect and parse batches; hand each to the writer once it is free."""
        while not self._stop.is_set():
            batch = self._collect()
            if not batch:
                continue
            try:
                started = time.monotonic()
                outcomes = [self.outcome(inbound) for inbound in batch]
                job = _Job(outcomes, started, _encode_outcomes(outcomes))
            except Exception:  # a bug must not stop ingest; the batch is redelivered later
                log.exception("batch of %d messages failed; left unacknowledged", len(batch))
                self._release(batch)
                continue
            self._writer_free.acquire()  # at most one batch written while the next is built
            self._jobs.put(job)

    def _write_loop(self) -> None:
        """Write each handed-over batch, then acknowledge it (in hand-over order)."""
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                self._finish(job)
            except BatchAbandoned:
                log.info("gave up a batch of %d messages of a lost connection", len(job.outcomes))
            except WriteError as exc:
                log.warning("stopped with a batch of %d unwritten: %s", len(job.outcomes), exc)
            except Exception:  # a bug must not stop ingest; the batch is redelivered later
                log.exception(
                    "batch of %d messages failed; left unacknowledged", len(job.outcomes)
                )
            finally:
                self._release([outcome.inbound for outcome in job.outcomes])
                self._writer_free.release()

    def parse(self, inbound: Inbound) -> Parsed:
        if inbound.topic.startswith("application/"):
            return parse_uplink(inbound.topic, inbound.payload)
        return parse_device_message(inbound.topic, inbound.payload, self._prefix)

    def outcome(self, inbound: Inbound) -> Outcome:
        """Turn one message into points and rejections; never raises."""
        try:
            line = self._enricher.telemetry_line(inbound.topic, inbound.payload)
        except Exception:
            log.exception(
                "fast path failed on %s; taking the general path",
                printable(inbound.topic, MAX_TOPIC_CHARS),
            )
            line = None
        if line is not None:
            return Outcome(inbound, line=line)
        return self.general_outcome(inbound)

    def general_outcome(self, inbound: Inbound) -> Outcome:
        """:meth:`outcome` without the fast path: every message through parse and enrich."""
        result = Outcome(inbound)
        try:
            parsed = self.parse(inbound)
            result.points, result.rejections = self._enricher.points(parsed, inbound)
        except Rejected as exc:
            result.rejections = [self._enricher.rejection(inbound, exc.reason, exc.detail)]
        except Exception as exc:
            log.exception(
                "could not process message on %s", printable(inbound.topic, MAX_TOPIC_CHARS)
            )
            result.rejections = [
                self._enricher.rejection(inbound, "internal_error", f"{type(exc).__name__}: {exc}")
            ]
        return result

    def _finish(self, job: _Job) -> None:
        """Write a parsed batch, acknowledge its messages, count them."""
        outcomes = job.outcomes
        self._store(outcomes, job.body)
        for item in outcomes:
            item.inbound.ack()
        seconds = time.monotonic() - job.started
        counts = [item.point_count for item in outcomes]
        self._stats.record_batch(
            received=len(outcomes),
            stored_messages=len(counts) - counts.count(0),
            stored_points=sum(counts),
            rejected=[r.reason for item in outcomes for r in item.rejections],
            seconds=seconds,
        )

    def _write(self, outcomes: list[Outcome], body: bytes | None = None) -> None:
        if body is None:
            body = _encode_outcomes(outcomes)
        if not body:
            return
        inbounds = [item.inbound for item in outcomes]
        events = [time_ns for item in outcomes for time_ns in item.event_times_ns]

        def abandoned() -> bool:
            return all(inbound.stale() for inbound in inbounds)

        try:
            for attempt in Retrying(
                retry=retry_if_exception(_transient),
                wait=wait_exponential_jitter(multiplier=0.2, max=RETRY_MAX_WAIT_S),
                stop=stop_when_event_set(self._stop) | StopWhen(abandoned),
                reraise=True,
                before_sleep=self._log_retry,
            ):
                with attempt:
                    self._writer.write(body)
                    if self._stored_events is not None and events:
                        self._stored_events(events)
        except WriteError as exc:
            if exc.transient and not self._stop.is_set() and abandoned():
                raise BatchAbandoned() from exc
            raise

    def _log_retry(self, state: object) -> None:
        self._stats.record_write_error()
        outcome = getattr(state, "outcome", None)
        error = outcome.exception() if outcome is not None else None
        log.warning("InfluxDB write failed, retrying: %s", error)

    def _store(self, outcomes: list[Outcome], body: bytes | None = None) -> None:
        """Write, splitting the batch to isolate messages InfluxDB refuses.

        ``body`` is the batch already encoded, if it is.
        """
        try:
            self._write(outcomes, body)
            return
        except WriteError as exc:
            if exc.transient:
                raise
            error = exc
        if len(outcomes) > 1:
            middle = len(outcomes) // 2
            self._store(outcomes[:middle])
            self._store(outcomes[middle:])
            return
        item = outcomes[0]
        log.warning(
            "InfluxDB refused a message on %s: %s",
            printable(item.inbound.topic, MAX_TOPIC_CHARS),
            printable(str(error), 1000),
        )
        item.points = []
        item.line = None
        item.rejections.append(self._enricher.rejection(item.inbound, "db_rejected", str(error)))
        try:
            self._write([item])
        except WriteError as again:
            if again.transient:
                raise
            log.error("InfluxDB refused even the rejection record: %s", again)
