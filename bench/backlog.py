"""Ingest's memory while it drains a large backlog held for it at the broker.

Ingest connects once (creating its persistent session), is stopped, the backlog
is published to the broker (which queues it in that session), and ingest is
started again with the same client id. RSS is sampled while it drains: with
MQTT v5 receive maximum bounding what is in flight, it should stay flat however
big the backlog is.
"""

from __future__ import annotations

import time
from typing import Any

from bench import machine
from bench.mqttraw import flood
from bench.procstat import Sampler
from bench.stack import Stack
from bench.subjects import Ingest
from bench.throughput import STALL_S, Workload, streams

POLL_S = 1.0


def run(workload: Workload, count: int) -> dict[str, Any]:
    """Queue ``count`` messages for a stopped ingest, then time and sample its drain."""
    with Stack() as stack:
        subject = Ingest(stack, count, workload.registry)
        try:
            subject.start()
            subject.stop()
            end_ms = int(time.time() * 1000) - 60_000
            published = flood(
                "127.0.0.1", stack.broker.port, list(streams(workload.devices, count, end_ms))
            )
            broker_rss = Sampler(stack.broker_pid()).start().stop().peak_rss_mib
            load_before = machine.load()
            subject.received_at_start = 0
            subject.launch()
            started = time.time()
            sampler = Sampler(subject.pid, interval_s=0.5).start()
            stored, last_change, curve = 0, time.monotonic(), []
            while stored < count:
                time.sleep(POLL_S)
                now, _ = subject.count()
                curve.append((round(time.time() - started, 1), now))
                if now != stored:
                    stored, last_change = now, time.monotonic()
                elif time.monotonic() - last_change > STALL_S:
                    break
            drained = time.time() - started
            extra = subject.extra()
            sampler.stop()
            ingest_rss = [rss for _, rss in sampler.samples]
        finally:
            subject.stop()

    def at(fraction: float) -> float:
        return ingest_rss[min(len(ingest_rss) - 1, int(fraction * len(ingest_rss)))]

    return {
        "backlog": count,
        "publish_rate": round(published.rate, 1),
        "broker_rss_mib_with_backlog": round(broker_rss, 1),
        "drain_s": round(drained, 1),
        "drain_rate": round(stored / drained, 1) if drained else 0.0,
        "stored": stored,
        "lost": max(0, count - stored),
        "rss_mib_at_10_50_90_pct_of_drain": [at(0.1), at(0.5), at(0.9)] if ingest_rss else [],
        "rss_mib_min": min(ingest_rss) if ingest_rss else None,
        **sampler.summary(),
        "rss_curve": sampler.samples[:: max(1, len(sampler.samples) // 60)],
        "stored_curve": curve[:: max(1, len(curve) // 60)],
        "load_before": load_before,
        "load_after": machine.load(),
        **extra,
    }
