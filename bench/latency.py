"""Publish→stored latency of ingest at a fixed offered load.

Method (FIFO count matching). One publisher connection sends message k at a
scheduled time and records when it actually sent it; the ``ts`` in each payload
is that scheduled time. Every ``POLL_S`` the harness asks InfluxDB how many of
the run's points are queryable (``SELECT count(seq) FROM telemetry``). With one
connection the broker delivers in send order, and ingest stores in arrival
order (a batch becomes visible at once, with its single ``/write``), so when a
poll answered at time t sees c points, messages c_prev+1 … c became queryable
in (t_prev, t]. Their latency is taken as t − sent_k: an upper bound, at most
one poll interval (plus the query's own time) above the truth.
"""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime
from itertools import accumulate
from typing import Any

from bench import machine
from bench.mqttraw import paced, publish_packet
from bench.procstat import Sampler
from bench.stack import Stack
from bench.subjects import Ingest
from bench.throughput import STALL_S, Workload
from bench.workload import messages
from farm_contract.payloads import format_ts

POLL_S = 0.1
TICK_S = 0.01


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of sorted ``values`` (q in 0..100)."""
    if not values:
        return float("nan")
    rank = max(0, min(len(values) - 1, round(q / 100 * len(values) + 0.5) - 1))
    return values[rank]


def schedule(
    workload: Workload, rate: int, seconds: float, t0: float
) -> list[tuple[float, bytes, int]]:
    """(due time, chunk, count) every ``TICK_S`` from ``t0``, each payload's ``ts`` its due time."""
    total = int(rate * seconds)
    per_tick = max(1, round(rate * TICK_S))
    plan: list[tuple[float, bytes, int]] = []
    batch: list[bytes] = []
    due = t0
    source = messages(workload.devices, total, int(t0 * 1000))
    for k, (device, generated) in enumerate(source):
        due = t0 + k / rate
        body = _with_ts(generated, int(due * 1000))
        batch.append(publish_packet(device.topic, body, k % 65535 + 1))
        if len(batch) == per_tick:
            plan.append((t0 + (k + 1 - per_tick) / rate, b"".join(batch), len(batch)))
            batch = []
    if batch:
        plan.append((due, b"".join(batch), len(batch)))
    return plan


def _with_ts(body: bytes, ts_ms: int) -> bytes:
    """The payload with its ``ts`` replaced (the generator's ts is only a default)."""
    start = body.index(b'"ts":"') + 6
    end = body.index(b'"', start)
    ts = format_ts(datetime.fromtimestamp(ts_ms / 1000, tz=UTC)).encode()
    return body[:start] + ts + body[end:]


def latencies(sent: list[tuple[float, int]], polls: list[tuple[float, int]]) -> list[float]:
    """Per-message latency (s) from send times and (poll time, visible count) pairs."""
    send_times = [t for t, n in sent for _ in range(n)]
    out: list[float] = []
    previous = 0
    for when, visible in polls:
        visible = min(visible, len(send_times))
        out.extend(when - send_times[k] for k in range(previous, visible))
        previous = max(previous, visible)
    return out


def run(workload: Workload, rate: int, seconds: float) -> dict[str, Any]:
    """Offer ``rate`` msg/s for ``seconds`` to a fresh ingest and measure publish→stored."""
    total = int(rate * seconds)
    with Stack() as stack:
        subject = Ingest(stack, total, workload.registry)
        try:
            subject.start()
            # Built once ingest is up, so the first message is not already late; the lead
            # covers encoding (about a second per 100,000 messages).
            plan = schedule(workload, rate, seconds, time.time() + 1.0 + total / 100_000)
            load_before = machine.load()
            sampler = Sampler(subject.pid).start()
            sent: list[tuple[float, int]] = []

            def publish() -> None:
                sent.extend(paced("127.0.0.1", stack.broker.port, plan))

            publisher = threading.Thread(target=publish, daemon=True)
            publisher.start()
            polls: list[tuple[float, int]] = []
            last_change = time.monotonic()
            while True:
                time.sleep(POLL_S)
                visible, _ = subject.count()
                polls.append((time.time(), visible))
                if len(polls) < 2 or visible != polls[-2][1]:
                    last_change = time.monotonic()
                if visible >= total:
                    break
                if not publisher.is_alive() and time.monotonic() - last_change > STALL_S:
                    break
            publisher.join()
            extra = subject.extra()
            sampler.stop()
        finally:
            subject.stop()
    values = sorted(latencies(sent, polls))
    lag = [t - due for (t, _), (due, _, _) in zip(sent, plan, strict=True)]
    span = sent[-1][0] - sent[0][0] if len(sent) > 1 else 0.0
    offered = (total - sent[-1][1]) / span if span else 0.0
    return {
        "offered_rate": rate,
        "achieved_offer_rate": round(offered, 1),
        "seconds": seconds,
        "messages": total,
        "stored": polls[-1][1] if polls else 0,
        "lost": max(0, total - (polls[-1][1] if polls else 0)),
        "p50_s": round(percentile(values, 50), 3),
        "p90_s": round(percentile(values, 90), 3),
        "p99_s": round(percentile(values, 99), 3),
        "max_s": round(values[-1], 3) if values else None,
        "poll_interval_s": POLL_S,
        "publisher_max_lag_s": round(max(lag), 3) if lag else None,
        "visible_curve_points": len(polls),
        "sent_cumulative_last": list(accumulate(n for _, n in sent))[-1] if sent else 0,
        **sampler.summary(),
        "load_before": load_before,
        "load_after": machine.load(),
        **extra,
    }

