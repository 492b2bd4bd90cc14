"""What the running service shares between its threads and the HTTP API."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from farm_contract.registry import Registry
from farm_contract.settings import Settings


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
    """The current registry; replaced whole on import so readers never see half of one."""

    def __init__(self, registry: Registry, folder: Path | None = None) -> None:
        self._registry = registry
        self.folder = folder
        self._lock = threading.Lock()

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
            self._registry = registry


@dataclass
class ServiceState:
    """Handles the API needs: settings, registry, counters and readiness probes."""

    settings: Settings
    registry: RegistryHolder
    stats: Stats = field(default_factory=Stats)
    broker_connected: Callable[[], bool] = lambda: False
    influx_reachable: Callable[[], bool] = lambda: False
