"""Every accepted version of the registry, kept so a figure's registry can be fetched again.

A closed year records the :meth:`~farm_contract.registry.Registry.digest` of the
registry it used; an auditor fetches that version here. Each version is a folder
``<registry_dir>/versions/<UTC time>-<digest12>/`` holding ``sites.csv`` and
``devices.csv`` in canonical form (the text the digest hashes) and ``version.json``
(digest, time, source, who and why when known). Without a registry folder the
versions are kept in memory only (they go with the process).
"""

from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from farm_contract.registry import DEVICES_FILE, SITES_FILE, Registry

log = logging.getLogger(__name__)

VERSIONS_DIR = "versions"
VERSION_FILE = "version.json"
MIN_DIGEST_PREFIX = 12
"""The shortest digest prefix a version can be fetched by (as in its folder name)."""


@dataclass(frozen=True, slots=True)
class RegistryVersion:
    """One accepted registry: what it is and where it came from."""

    digest: str
    saved_at: str
    """UTC, ISO 8601, when this service accepted it."""
    source: str
    """``start`` (the folder at start), ``folder`` (an edit of the folder seen), ``upload``
    (``POST /api/v1/registry``), ``provision`` (a device provisioned)."""
    sites: int
    devices: int
    dated: bool
    who: str | None = None
    reason: str | None = None
    valid_from: str | None = None
    """For an upload from a day: that day."""


@dataclass(frozen=True, slots=True)
class VersionFiles:
    """A version and its two CSV texts."""

    version: RegistryVersion
    sites_csv: str
    devices_csv: str


class RegistryArchive:
    """The versions of the registry, oldest first; a version already last is not repeated."""

    def __init__(self, folder: Path | None) -> None:
        self.folder = None if folder is None else folder / VERSIONS_DIR
        self._lock = threading.Lock()
        self._memory: list[VersionFiles] = []

    def record(self, registry: Registry, source: str, *, who: str | None = None,
               reason: str | None = None, valid_from: str | None = None) -> RegistryVersion:
        """Keep ``registry`` as a version unless it is the latest one already."""
        digest = registry.digest()
        with self._lock:
            latest = self._latest()
            if latest is not None and latest.digest == digest:
                return latest
            now = datetime.now(UTC)
            version = RegistryVersion(
                digest=digest, saved_at=now.isoformat(timespec="microseconds"), source=source,
                sites=len(registry.site_history), devices=len(registry.device_history),
                dated=registry.dated, who=who, reason=reason, valid_from=valid_from)
            files = VersionFiles(version, *registry.csv_text(canonical=True))
            if self.folder is not None:
                try:
                    self._write(now, files)
                    return version
                except OSError as exc:  # a read-only registry folder must not stop ingest
                    log.warning("cannot keep registry versions in %s (%s): keeping them in "
                                "memory from now on", self.folder, exc)
                    self.folder = None
            self._memory.append(files)
            return version

    def _write(self, now: datetime, files: VersionFiles) -> None:
        assert self.folder is not None
        name = f"{now:%Y%m%dT%H%M%S%fZ}-{files.version.digest[:MIN_DIGEST_PREFIX]}"
        staging = self.folder / f".{name}.tmp"
        staging.mkdir(parents=True, exist_ok=True)
        (staging / SITES_FILE).write_text(files.sites_csv, encoding="utf-8")
        (staging / DEVICES_FILE).write_text(files.devices_csv, encoding="utf-8")
        (staging / VERSION_FILE).write_text(
            json.dumps(asdict(files.version), ensure_ascii=False, indent=1), encoding="utf-8")
        os.replace(staging, self.folder / name)  # a version appears whole or not at all

    def _folders(self) -> list[Path]:
        if self.folder is None or not self.folder.is_dir():
            return []
        return sorted(path for path in self.folder.iterdir()
                      if path.is_dir() and not path.name.startswith("."))

    def _read(self, path: Path) -> RegistryVersion | None:
        try:
            data = json.loads((path / VERSION_FILE).read_text(encoding="utf-8"))
            return RegistryVersion(**data)
        except (OSError, ValueError, TypeError) as exc:
            log.warning("registry version %s is unreadable: %s", path, exc)
            return None

    def _latest(self) -> RegistryVersion | None:
        if self.folder is None:
            return self._memory[-1].version if self._memory else None
        folders = self._folders()
        return self._read(folders[-1]) if folders else None

    def versions(self) -> list[RegistryVersion]:
        """Every version kept, oldest first."""
        with self._lock:
            if self.folder is None:
                return [files.version for files in self._memory]
            found = (self._read(path) for path in self._folders())
            return [version for version in found if version is not None]

    def get(self, digest: str) -> VersionFiles | None:
        """The latest version whose digest starts with ``digest`` (at least 12 hex digits)."""
        digest = digest.lower()
        if len(digest) < MIN_DIGEST_PREFIX:
            return None
        with self._lock:
            if self.folder is None:
                matches = [f for f in self._memory if f.version.digest.startswith(digest)]
                return matches[-1] if matches else None
            for path in reversed(self._folders()):
                if not path.name.split("-", 1)[-1].startswith(digest[:MIN_DIGEST_PREFIX]):
                    continue
                version = self._read(path)
                if version is not None and version.digest.startswith(digest):
                    return VersionFiles(version,
                                        (path / SITES_FILE).read_text(encoding="utf-8"),
                                        (path / DEVICES_FILE).read_text(encoding="utf-8"))
            return None
