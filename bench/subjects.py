"""The four subscribers a run measures, each started (and subscribed) before publishing.

- ``ceiling``: ``mosquitto_sub`` (C, no storage): what the broker can deliver.
- ``bare``: a bare paho subscriber (no storage): what paho's loop costs.
- ``baseline``: the plain paho + batched ``/write`` script (:mod:`bench.baseline`).
- ``ingest``: ``python -m ingest_service`` with full validation, registry
  enrichment and acknowledgement after storage.

Each one reports how many of the run's messages it has handled so far: received
lines for the first two, distinct points queryable in InfluxDB for the storing
ones (``SELECT count(seq) FROM telemetry``), so "done" means "queryable".
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import IO, Any

import httpx

from bench.mqttraw import Connection, publish_packet
from bench.stack import Stack
from bench.workload import warmup_message
from devstack.servers import free_port

ROOT = Path(__file__).resolve().parent.parent
TOPIC = "farm/v1/+/+/telemetry"


class SubjectError(RuntimeError):
    """A subject did not come up or died."""


def _stop(process: subprocess.Popen[Any] | None, timeout: float = 30) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def _publish_once(stack: Stack, topic: str, payload: bytes) -> None:
    connection = Connection("127.0.0.1", stack.broker.port, f"bench-warmup-{uuid.uuid4().hex[:8]}")
    try:
        connection.send(publish_packet(topic, payload, 1), 1)
        connection.wait_acked(10)
    finally:
        connection.close()


class Subject(ABC):
    """A subscriber under test. ``count()`` → (messages handled, wall time when all were)."""

    name = "subject"
    label = "subject"
    stores = False

    def __init__(self, stack: Stack, expected: int) -> None:
        self.stack = stack
        self.expected = expected
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @abstractmethod
    def start(self) -> None:
        """Start subscribing (before anything is published)."""

    @abstractmethod
    def count(self) -> tuple[int, float | None]:
        """Messages handled so far, and the wall time when the last expected one was."""

    def extra(self) -> dict[str, Any]:
        """Subject-specific figures gathered at the end (before :meth:`stop`)."""
        return {}

    def stop(self) -> None:
        _stop(self.process)

    def _alive(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            raise SubjectError(f"{self.name} exited with {self.process.returncode}")


class _LineCounter(Subject):
    """Counts newline-terminated lines of a child's stdout on a thread, cheaply (in chunks)."""

    def __init__(self, stack: Stack, expected: int) -> None:
        super().__init__(stack, expected)
        self._lines = 0
        self._target: int | None = None
        self._done: float | None = None
        self._lock = threading.Lock()

    def _drain(self, stream: IO[bytes]) -> None:
        while True:
            data = os.read(stream.fileno(), 1 << 20)
            if not data:
                return
            now = time.time()
            with self._lock:
                self._lines += data.count(b"\n")
                if self._target is not None and self._done is None and self._lines >= self._target:
                    self._done = now

    def _warm_up(self) -> None:
        """Publish a warm-up message until one is seen: the subscription is then in place."""
        topic, payload = warmup_message(int(time.time() * 1000))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            self._alive()
            _publish_once(self.stack, topic, payload)
            until = time.monotonic() + 1.0
            while time.monotonic() < until:
                with self._lock:
                    if self._lines:
                        self._target = self._lines + self.expected
                        return
                time.sleep(0.02)
        raise SubjectError(f"{self.name} never received the warm-up message")

    def count(self) -> tuple[int, float | None]:
        self._alive()
        with self._lock:
            base = (self._target or self.expected) - self.expected
            return self._lines - base, self._done


class Ceiling(_LineCounter):
    """``mosquitto_sub`` writing payloads to a pipe we count lines of."""

    name = "ceiling"
    label = "mosquitto_sub ceiling"

    def start(self) -> None:
        self.process = subprocess.Popen(
            ["mosquitto_sub", "-h", "127.0.0.1", "-p", str(self.stack.broker.port), "-q", "1",
             "-t", TOPIC, "-i", f"bench-sub-{uuid.uuid4().hex[:8]}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert self.process.stdout is not None
        threading.Thread(target=self._drain, args=(self.process.stdout,), daemon=True).start()
        self._warm_up()


class Bare(Subject):
    """The bare paho subscriber (:mod:`bench.bare`), which reports its own progress."""

    name = "bare"
    label = "bare paho subscriber"

    def __init__(self, stack: Stack, expected: int) -> None:
        super().__init__(stack, expected)
        self._count = 0
        self._done: float | None = None
        self._ready = threading.Event()

    def _read(self, stream: IO[bytes]) -> None:
        for raw in stream:
            word, *rest = raw.decode().split()
            if word == "ready":
                self._ready.set()
            elif word == "progress":
                self._count = int(rest[0])
            elif word == "done":
                self._done, self._count = float(rest[0]), int(rest[1])

    def start(self) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.bare", "--port", str(self.stack.broker.port),
             "--count", str(self.expected), "--client-id", f"bench-bare-{uuid.uuid4().hex[:8]}"],
            stdout=subprocess.PIPE,
            cwd=ROOT,
        )
        assert self.process.stdout is not None
        threading.Thread(target=self._read, args=(self.process.stdout,), daemon=True).start()
        if not self._ready.wait(30):
            raise SubjectError("bare subscriber did not subscribe")

    def count(self) -> tuple[int, float | None]:
        if self._done is None:
            self._alive()
        return self._count, self._done


class _Storing(Subject):
    """A subject whose progress is what InfluxDB can answer (the warm-up point excluded)."""

    stores = True
    log_name = "subject.log"

    def _warm_up(self) -> None:
        """Repeat one warm-up message (always the same point) until it is queryable."""
        topic, payload = warmup_message(int(time.time() * 1000))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            self._alive()
            _publish_once(self.stack, topic, payload)
            until = time.monotonic() + 2.0
            while time.monotonic() < until:
                if self.stack.stored() >= 1:
                    return
                time.sleep(0.1)
        raise SubjectError(f"{self.name} never stored the warm-up message")

    def count(self) -> tuple[int, float | None]:
        self._alive()
        stored = self.stack.stored() - 1
        now = time.time()
        return stored, now if stored >= self.expected else None

    def _log(self) -> IO[bytes]:
        return (self.stack.root / self.log_name).open("ab")


class Baseline(_Storing):
    """The plain batched script (:mod:`bench.baseline`)."""

    name = "baseline"
    label = "plain paho + batched /write"
    log_name = "baseline.log"

    def start(self) -> None:
        with self._log() as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bench.baseline", "--port", str(self.stack.broker.port),
                 "--influx-url", self.stack.influxd.url,
                 "--client-id", f"bench-baseline-{uuid.uuid4().hex[:8]}"],
                stdout=subprocess.PIPE,
                stderr=log,
                cwd=ROOT,
            )
        assert self.process.stdout is not None
        if self.process.stdout.readline().strip() != b"ready":
            raise SubjectError("baseline script did not subscribe")
        self._warm_up()


class Ingest(_Storing):
    """``python -m ingest_service`` (InfluxDB v1 API, a fresh client id, persistent session).

    With ``workers`` > 1, that many processes share one subscription
    (``FARM_MQTT_SHARE_GROUP``), each with its own client id and API port: the
    contract's way to use more than one core.
    """

    name = "ingest"
    label = "ingest_service"
    log_name = "ingest.log"

    def __init__(
        self, stack: Stack, expected: int, registry: Path, workers: int = 1
    ) -> None:
        super().__init__(stack, expected)
        self.registry = registry
        self.workers = max(1, workers)
        tag = uuid.uuid4().hex[:8]
        self.client_ids = [f"bench-ingest-{tag}-{i}" for i in range(self.workers)]
        self.api_ports: list[int] = []
        self.processes: list[subprocess.Popen[bytes]] = []
        self.received_at_start = 0

    @property
    def pids(self) -> list[int]:
        return [process.pid for process in self.processes]

    def env(self, worker: int) -> dict[str, str]:
        while len(self.api_ports) <= worker:
            self.api_ports.append(free_port())
        env = {
            **os.environ,
            "FARM_MQTT_URL": self.stack.broker.url,
            "FARM_INFLUX_URL": self.stack.influxd.url,
            "FARM_INFLUX_API": "v1",
            "FARM_INFLUX_DB": "farm",
            "FARM_REGISTRY_DIR": str(self.registry),
            "FARM_API_PORT": str(self.api_ports[worker]),
            "FARM_MQTT_CLIENT_ID": self.client_ids[worker],
        }
        if self.workers > 1:
            env["FARM_MQTT_SHARE_GROUP"] = "bench"
        if worker > 0:
            env["FARM_PUBLISH_INDICATORS"] = "false"  # as operators run it: one publisher
        return env

    def launch(self) -> None:
        """Start the process(es); wait until /readyz says broker and InfluxDB are reachable."""
        self.processes = []
        with self._log() as log:
            for worker in range(self.workers):
                self.processes.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "ingest_service", "--log-level", "WARNING"],
                        env=self.env(worker),
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        cwd=ROOT,
                    )
                )
        self.process = self.processes[0]
        for port in self.api_ports:
            self._wait_ready(port)

    def _wait_ready(self, port: int) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            self._alive()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise SubjectError("ingest_service did not become ready")

    def _alive(self) -> None:
        for process in self.processes:
            if process.poll() is not None:
                raise SubjectError(f"ingest_service exited with {process.returncode}")

    def start(self) -> None:
        self.launch()
        self._warm_up()
        self.received_at_start = self.received()

    def stop(self) -> None:
        for process in self.processes:
            process.send_signal(signal.SIGTERM)
        for process in self.processes:
            _stop(process)

    def stats(self, port: int) -> dict[str, Any]:
        response = httpx.get(f"http://127.0.0.1:{port}/api/v1/stats", timeout=10)
        response.raise_for_status()
        data: dict[str, Any] = response.json()
        return data

    def received(self) -> int:
        """Messages received by all workers (redeliveries included)."""
        return sum(int(self.stats(port).get("received", 0)) for port in self.api_ports)

    def extra(self) -> dict[str, Any]:
        stats = [self.stats(port) for port in self.api_ports]
        received = sum(int(item.get("received", 0)) for item in stats) - self.received_at_start
        rejected: dict[str, int] = {}
        for item in stats:
            for reason, count in (item.get("rejected") or {}).items():
                rejected[reason] = rejected.get(reason, 0) + int(count)
        return {
            "workers": self.workers,
            "received": received,
            "redelivered": max(0, received - self.expected),
            "rejected": rejected,
            "batches": sum(int(item.get("batches", 0)) for item in stats),
            "write_errors": sum(int(item.get("write_errors", 0)) for item in stats),
        }
