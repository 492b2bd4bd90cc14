"""What the running service shares between its threads and the HTTP API."""

from __future__ import annotations

import bisect
import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from farm_contract.registry import DEVICES_FILE, SITES_FILE, Registry, RegistryError
from ingest_service.settings import Settings

log = logging.getLogger(__name__)


BATCH_SECONDS_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0
)
"""Upper bounds of the batch-latency histogram (parse to ack), in seconds."""


@dataclass(frozen=True)
class StatsSnapshot:
    """The counters at one instant, for readers (``/metrics``, ``/api/v1/stats``, tests)."""

    received: int
    stored_messages: int
    stored_points: int
    rejected: Mapping[str, int]
    """Rejected messages, readings or records by reason (a read-only copy)."""
    batches: int
    write_errors: int
    last_batch_seconds: float
    batch_seconds_sum: float
    batch_seconds_buckets: tuple[int, ...]
    """Batches per latency bucket (not cumulative; the last one is above every bound)."""
    backlog: int

    def as_json(self) -> dict[str, object]:
        """The body of ``GET /api/v1/stats`` (contract §7)."""
        return {
            "received": self.received,
            "stored_messages": self.stored_messages,
            "stored_points": self.stored_points,
            "rejected": dict(self.rejected),
            "rejected_total": sum(self.rejected.values()),
            "batches": self.batches,
            "write_errors": self.write_errors,
            "last_batch_seconds": self.last_batch_seconds,
            "batch_seconds_sum": self.batch_seconds_sum,
            "backlog": self.backlog,
        }


class Stats:
    """Counters since start: the pipeline says what happened, readers take a snapshot.

    One lock acquisition per batch (:meth:`record_batch`), as the hot path can afford;
    the backlog is a gauge written whole, so it takes none.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._received = 0
        self._stored_messages = 0
        self._stored_points = 0
        self._rejected: Counter[str] = Counter()
        self._batches = 0
        self._write_errors = 0
        self._last_batch_seconds = 0.0
        self._batch_seconds_sum = 0.0
        self._batch_seconds_buckets = [0] * (len(BATCH_SECONDS_BUCKETS) + 1)
        self._backlog = 0

    def record_batch(
        self,
        *,
        received: int,
        stored_messages: int,
        stored_points: int,
        rejected: Iterable[str],
        seconds: float,
    ) -> None:
        """A batch was written and acknowledged: ``rejected`` holds one reason per rejection."""
        bucket = bisect.bisect_left(BATCH_SECONDS_BUCKETS, seconds)
        with self._lock:
            self._received += received
            self._stored_messages += stored_messages
            self._stored_points += stored_points
            self._rejected.update(rejected)
            self._batches += 1
            self._last_batch_seconds = seconds
            self._batch_seconds_sum += seconds
            self._batch_seconds_buckets[bucket] += 1

    def record_write_error(self) -> None:
        """An InfluxDB write failed (it is retried)."""
        with self._lock:
            self._write_errors += 1

    def record_backlog(self, messages: int) -> None:
        """Messages received and not yet acknowledged (queued or in the batch in hand)."""
        self._backlog = messages

    def snapshot(self) -> StatsSnapshot:
        with self._lock:
            return StatsSnapshot(
                received=self._received,
                stored_messages=self._stored_messages,
                stored_points=self._stored_points,
                rejected=MappingProxyType(dict(self._rejected)),
                batches=self._batches,
                write_errors=self._write_errors,
                last_batch_seconds=self._last_batch_seconds,
                batch_seconds_sum=self._batch_seconds_sum,
                batch_seconds_buckets=tuple(self._batch_seconds_buckets),
                backlog=self._backlog,
            )

    # Single counters, for a reader that waits on one (tests, benchmarks).

    @property
    def received(self) -> int:
        return self._received

    @property
    def stored_messages(self) -> int:
        return self._stored_messages

    @property
    def stored_points(self) -> int:
        return self._stored_points

    @property
    def write_errors(self) -> int:
        return self._write_errors

    @property
    def rejected(self) -> Mapping[str, int]:
        return self.snapshot().rejected


class RegistryHolder:
    """The current registry; replaced whole on import so readers never see half of one.

    When it comes from a folder, :meth:`refresh` picks up edits made there by someone
    else (``provision-device``, an operator's spreadsheet export) without a restart.
    """

    def __init__(self, registry: Registry, folder: Path | None = None) -> None:
        self._registry = registry
        self.folder = folder
        self._lock = threading.Lock()
        self._stamp = self._files_stamp()
        self._listeners: list[Callable[[Registry], object]] = []

    def on_change(self, listener: Callable[[Registry], object]) -> None:
        """Call ``listener`` with every registry that replaces the current one."""
        self._listeners.append(listener)

    def _changed(self, registry: Registry) -> None:
        for listener in self._listeners:
            try:
                listener(registry)
            except Exception:
                log.exception("registry listener failed")

    def _files_stamp(self) -> tuple[tuple[int, int], ...]:
        if self.folder is None:
            return ()
        stamp = []
        for name in (SITES_FILE, DEVICES_FILE):
            try:
                info = (self.folder / name).stat()
            except OSError:
                return ()
            stamp.append((info.st_mtime_ns, info.st_size))
        return tuple(stamp)

    def refresh(self) -> Registry:
        """Re-import the folder if its files changed; keep the current registry if invalid."""
        stamp = self._files_stamp()
        if self.folder is None or not stamp or stamp == self._stamp:
            return self._registry
        with self._lock:
            if stamp == self._stamp:
                return self._registry
            self._stamp = stamp
            try:
                self._registry = Registry.from_dir(self.folder)
            except RegistryError as exc:
                log.error("registry folder changed but is invalid; keeping the old one: %s", exc)
                return self._registry
            log.info("registry re-imported from %s", self.folder)
        self._changed(self._registry)
        return self._registry

    @classmethod
    def from_settings(cls, settings: Settings) -> RegistryHolder:
        """Import ``FARM_REGISTRY_DIR`` if set, else start empty (every device is unknown)."""
        if settings.registry_dir is None:
            return cls(Registry())
        return cls(Registry.from_dir(settings.registry_dir), settings.registry_dir)

    def get(self) -> Registry:
        return self._registry

    def replace(self, registry: Registry, persist: bool = True) -> None:
        """Swap in a new registry, and write it to the registry folder so a restart keeps it."""
        with self._lock:
            if persist and self.folder is not None:
                registry.write_dir(self.folder)
                self._stamp = self._files_stamp()
            self._registry = registry
        self._changed(registry)


@dataclass
class ServiceState:
    """Handles the API needs: settings, registry, counters and readiness probes."""

    settings: Settings
    registry: RegistryHolder
    stats: Stats = field(default_factory=Stats)
    broker_connected: Callable[[], bool] = lambda: False
    influx_reachable: Callable[[], bool] = lambda: False
    mqtt_events: Callable[[], dict[str, int]] = lambda: {}
    """The MQTT input's connection events (refused, session taken over, …) by name."""
