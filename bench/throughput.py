"""One throughput run: fresh servers, a subject subscribed, N messages flooded in, timed.

End-to-end time runs from the first PUBLISH sent to the moment the subject has
handled the last message (for the storing subjects: the last point is
queryable). Progress is polled every ``POLL_S`` while the flood is still
running, so a subject that keeps up is not charged for the publisher's tail.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import machine
from bench.mqttraw import Published, chunks, flood
from bench.procstat import Sampler
from bench.stack import Stack
from bench.subjects import Bare, Baseline, Ceiling, Ingest, Subject
from bench.workload import BenchDevice, messages

POLL_S = 0.2
STALL_S = 20.0
"""A subject that handles nothing new for this long after the flood is given up on."""
SUBJECTS = ("ceiling", "bare", "baseline", "ingest", "ingest-epoch")
EPOCH_SUBJECTS = frozenset({"ingest-epoch"})
"""Subjects fed the same messages with ``ts`` as integer epoch milliseconds."""
CONNECTIONS = 4
"""Publisher connections (each owns a quarter of the devices)."""


def streams(
    devices: list[BenchDevice],
    count: int,
    end_ms: int,
    connections: int = CONNECTIONS,
    epoch_ms: bool = False,
) -> list[Iterator[tuple[bytes, int]]]:
    """Encoded chunks per connection, devices split between connections (lazily)."""
    connections = max(1, min(connections, len(devices)))
    out = []
    for j in range(connections):
        subset = devices[j::connections]
        share = count // connections + (1 if j < count % connections else 0)
        items = ((d.topic, body) for d, body in messages(subset, share, end_ms, j, epoch_ms))
        out.append(chunks(items))
    return out


@dataclass
class Workload:
    """Payloads encoded before any clock starts; reused by every run."""

    devices: list[BenchDevice]
    registry: Path
    count: int
    encoded: list[list[tuple[bytes, int]]]
    workers: int = 1
    """Ingest processes sharing the subscription."""
    encoded_epoch_ms: list[list[tuple[bytes, int]]] = field(default_factory=list)
    """The same messages with ``ts`` as integer epoch milliseconds."""

    @classmethod
    def prepare(
        cls, devices: list[BenchDevice], registry: Path, count: int, epoch_ms: bool = False
    ) -> Workload:
        """Both ``ts`` forms are encoded only when an epoch subject will run (``epoch_ms``)."""
        end_ms = int(time.time() * 1000) - 60_000
        text = [list(s) for s in streams(devices, count, end_ms)]
        epoch = streams(devices, count, end_ms, epoch_ms=True) if epoch_ms else []
        return cls(devices, registry, count, text, encoded_epoch_ms=[list(s) for s in epoch])

    def replay(self, epoch_ms: bool = False) -> list[Iterable[tuple[bytes, int]]]:
        if epoch_ms and not self.encoded_epoch_ms:
            raise ValueError("this workload was prepared without epoch-ms payloads")
        return list(self.encoded_epoch_ms if epoch_ms else self.encoded)


def combined(samplers: list[Sampler]) -> dict[str, float]:
    """Figures of one process, or of several workers together (RSS and CPU summed)."""
    if len(samplers) == 1:
        return samplers[0].summary()
    cpu = sum(s.cpu_s for s in samplers)
    wall = max(s.wall_s for s in samplers)
    return {
        "peak_rss_mib": round(sum(s.peak_rss_mib for s in samplers), 1),
        "peak_rss_mib_per_worker": round(max(s.peak_rss_mib for s in samplers), 1),
        "cpu_s": round(cpu, 2),
        "cpu_percent": round(100 * cpu / wall, 1) if wall else 0.0,
    }


def make_subject(name: str, stack: Stack, workload: Workload) -> Subject:
    if name == "ceiling":
        return Ceiling(stack, workload.count)
    if name == "bare":
        return Bare(stack, workload.count)
    if name == "baseline":
        return Baseline(stack, workload.count)
    if name in ("ingest", "ingest-epoch"):
        return Ingest(stack, workload.count, workload.registry, workload.workers)
    raise ValueError(f"unknown subject {name!r}; choose from {', '.join(SUBJECTS)}")


class Profiler:
    """``py-spy record`` attached to a pid, raw (collapsed-stack) output, stopped with SIGINT.

    ``--gil`` samples only the thread holding the GIL: ingest's Python work is
    serialised by the GIL, so that is the split of the CPU that limits it (a
    thread waiting for the GIL would otherwise be counted as busy too).
    """

    def __init__(self, pid: int, out: Path, rate: int = 100) -> None:
        self.out = out
        binary = shutil.which("py-spy", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
        if binary is None:
            raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
        self.process = subprocess.Popen(
            [binary, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
             "--threads", "--gil", "--output", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.0)  # let it attach before the flood starts

    def stop(self) -> Path:
        self.process.send_signal(signal.SIGINT)
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        return self.out


def run_once(
    name: str, workload: Workload, profile_to: Path | None = None, keep: bool = False
) -> dict[str, Any]:
    """One run of one subject on its own fresh broker and InfluxDB."""
    with Stack(keep=keep) as stack:
        subject = make_subject(name, stack, workload)
        try:
            subject.start()
            load_before = machine.load()
            pids = subject.pids if isinstance(subject, Ingest) else [subject.pid]
            mine = [Sampler(pid).start() for pid in pids]
            samplers = {
                "broker": Sampler(stack.broker_pid()).start(),
                "influxd": Sampler(stack.influxd_pid()).start(),
            }
            profiler = Profiler(subject.pid, profile_to) if profile_to else None
            replay = workload.replay(epoch_ms=name in EPOCH_SUBJECTS)
            published: list[Published] = []
            errors: list[BaseException] = []

            def publish() -> None:
                try:
                    published.append(flood("127.0.0.1", stack.broker.port, replay))
                except BaseException as exc:  # surfaced below
                    errors.append(exc)

            publisher = threading.Thread(target=publish, name="flood", daemon=True)
            publisher.start()
            handled, done, last_change = 0, None, time.monotonic()
            while done is None:
                time.sleep(POLL_S)
                count, done = subject.count()
                if count != handled:
                    handled, last_change = count, time.monotonic()
                if not publisher.is_alive() and time.monotonic() - last_change > STALL_S:
                    break
            publisher.join()
            if errors:
                raise errors[0]
            extra = subject.extra()
            if profiler is not None:
                profiler.stop()
            for sampler in [*mine, *samplers.values()]:
                sampler.stop()
        finally:
            subject.stop()
    pub = published[0]
    elapsed = (done - pub.first_send) if done is not None else None
    return {
        "subject": name,
        "messages": workload.count,
        "devices": len(workload.devices),
        "handled": handled,
        "lost": max(0, workload.count - handled),
        "elapsed_s": round(elapsed, 3) if elapsed else None,
        "rate": round(workload.count / elapsed, 1) if elapsed else 0.0,
        "publisher_rate": round(pub.rate, 1),
        "publish_s": round(pub.last_ack - pub.first_send, 3),
        **combined(mine),
        "broker_cpu_s": round(samplers["broker"].cpu_s, 2),
        "influxd_cpu_s": round(samplers["influxd"].cpu_s, 2),
        "load_before": load_before,
        "load_after": machine.load(),
        **extra,
    }
