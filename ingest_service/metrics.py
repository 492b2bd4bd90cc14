"""``GET /metrics``: the service's counters in Prometheus text format.

The pipeline records what happened in :class:`~ingest_service.state.Stats`; a
collector reads a snapshot of it at scrape time, so the hot path never touches
prometheus_client and each service instance has its own registry.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from ingest_service.state import BATCH_SECONDS_BUCKETS, ServiceState

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class StatsCollector(Collector):
    """Exposes :class:`Stats` and readiness as Prometheus metrics."""

    def __init__(self, state: ServiceState) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        stats = self._state.stats.snapshot()
        yield CounterMetricFamily(
            "farm_messages_received", "MQTT messages taken in by the pipeline",
            value=stats.received,
        )
        yield CounterMetricFamily(
            "farm_messages_stored", "Messages with at least one point stored",
            value=stats.stored_messages,
        )
        yield CounterMetricFamily(
            "farm_points_stored", "Points written to InfluxDB", value=stats.stored_points
        )
        family = CounterMetricFamily(
            "farm_rejections", "Rejected messages, readings or records", labels=["reason"]
        )
        for reason, count in sorted(stats.rejected.items()):
            family.add_metric([reason], count)
        yield family
        yield CounterMetricFamily(
            "farm_batches", "Batches written and acknowledged", value=stats.batches
        )
        yield batch_histogram(stats.batch_seconds_buckets, stats.batch_seconds_sum)
        yield GaugeMetricFamily(
            "farm_last_batch_seconds", "Time the last batch took, parse to ack",
            value=stats.last_batch_seconds,
        )
        yield CounterMetricFamily(
            "farm_influx_write_errors", "Failed InfluxDB writes (each retried)",
            value=stats.write_errors,
        )
        yield GaugeMetricFamily(
            "farm_backlog_messages", "Messages received and waiting for the pipeline",
            value=stats.backlog,
        )
        yield GaugeMetricFamily(
            "farm_mqtt_connected", "1 while connected to the broker",
            value=1.0 if self._state.broker_connected() else 0.0,
        )
        events = CounterMetricFamily(
            "farm_mqtt_connection_events",
            "MQTT connections refused or ended: refused, session_taken_over (another "
            "connection took our client id, MQTT v5 reason 0x8E), closed_by_broker (no "
            "DISCONNECT: how Mosquitto 2.0.11 ends a taken-over session), disconnected, "
            "connection_lost, protocol_error, packet_too_large",
            labels=["event"],
        )
        for event, count in sorted(self._state.mqtt_events().items()):
            events.add_metric([event], count)
        yield events


def batch_histogram(per_bucket: Sequence[int], total_seconds: float) -> HistogramMetricFamily:
    """``farm_batch_seconds``: how long batches take from parse to ack, as a histogram.

    Its ``_sum`` and ``_count`` replace the former counter of the same name; the buckets
    show the tail (a batch held by an InfluxDB outage lands in the top ones).
    """
    buckets: list[tuple[str, float]] = []
    running = 0
    for bound, count in zip(BATCH_SECONDS_BUCKETS, per_bucket, strict=False):
        running += count
        buckets.append((repr(bound), running))
    buckets.append(("+Inf", running + per_bucket[-1]))
    return HistogramMetricFamily(
        "farm_batch_seconds",
        "Time a batch takes, parse to ack (includes write retries)",
        buckets=buckets,
        sum_value=total_seconds,
    )


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)


def metrics_registry(state: ServiceState) -> CollectorRegistry:
    """A registry holding only this service's metrics."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(StatsCollector(state))
    return registry
