"""Where a figure was measured: the machine, its load, and the versions involved.

Benchmark numbers on a 2-core box mean little without the load they were taken
under (other jobs share the cores), so every result carries this record.
"""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (empty when unreadable)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def load() -> list[float]:
    """1, 5 and 15 minute load averages, rounded."""
    return [round(value, 2) for value in os.getloadavg()]


def _first_line(command: list[str], containing: str = "") -> str:
    """The first output line of ``command`` that contains ``containing``."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unavailable"
    lines = [line for line in (done.stdout + done.stderr).splitlines() if containing in line]
    return lines[0].strip() if lines else "unavailable"


def _package(name: str) -> str:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def source_state() -> dict[str, str]:
    """The commit under test and a digest of ingest's working-tree sources (edits show)."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted((root / "ingest_service").rglob("*.py")):
        digest.update(path.read_bytes())
    return {
        "commit": _first_line(["git", "-C", str(root), "describe", "--always", "--dirty"]),
        "ingest_service_sha256": digest.hexdigest()[:16],
    }


def describe() -> dict[str, Any]:
    """A JSON-ready description of this machine and the software under test."""
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu_model(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average": load(),
        "mosquitto": _first_line(["mosquitto_sub", "--help"], "version"),
        "influxd": _first_line(["influxd", "version"]),
        "source": source_state(),
        "packages": {
            name: _package(name) for name in ("paho-mqtt", "httpx", "pydantic", "fastapi")
        },
    }
