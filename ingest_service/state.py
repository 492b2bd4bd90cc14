"""What the running service shares between its threads and the HTTP API."""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from farm_contract.registry import DEVICES_FILE, SITES_FILE, Registry, RegistryError
from ingest_service.settings import Settings

log = logging.getLogger(__name__)


BATCH_SECONDS_BUCKETS: tuple[float, ...] = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0
)
"""Upper bounds of the batch-latency histogram (parse to ack), in seconds."""


def _buckets() -> list[int]:
    return [0] * (len(BATCH_SECONDS_BUCKETS) + 1)


@dataclass
class Stats:
    """Counters since start. Updated by the pipeline thread, read by the API."""

    received: int = 0
    stored_messages: int = 0
    stored_points: int = 0
    rejected: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    write_errors: int = 0
    last_batch_seconds: float = 0.0
    batch_seconds_sum: float = 0.0
    batch_seconds_buckets: list[int] = field(default_factory=_buckets)
    """Batches per latency bucket (not cumulative; the last one is above every bound)."""
    backlog: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def snapshot(self) -> dict[str, object]:
        with self._lock:
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
