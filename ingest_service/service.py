"""The running service: the stages wired together, plus the indicator publisher."""

from __future__ import annotations

import logging
import threading

from ingest_service.indicators.aggregates import run
from ingest_service.indicators.engine import IndicatorEngine
from ingest_service.indicators.late_events import LateEventMarker
from ingest_service.indicators.publisher import IndicatorPublisher
from ingest_service.indicators.rollups import RollupMaintainer
from ingest_service.influxql import InfluxQL, QueryError, quote_ident, quote_literal
from ingest_service.inputs.mqtt import MqttInput
from ingest_service.outputs.influx import Writer, make_writer
from ingest_service.pipeline.batcher import Pipeline
from ingest_service.pipeline.enrich import Enricher
from ingest_service.pipeline.event_identity import EventIndex, InfluxEventLookup
from ingest_service.settings import Settings
from ingest_service.site_points import write_site_points
from ingest_service.state import RegistryHolder, ServiceState
from ingest_service.telemetry.late import LateTelemetryMarker
from ingest_service.telemetry.rollups import TelemetryRollups, TelemetryRollupSettings

log = logging.getLogger(__name__)


class IngestService:
    """MQTT input → pipeline → InfluxDB, and the state the HTTP API reads."""

    def __init__(self, settings: Settings, *, publish_indicators: bool | None = None) -> None:
        self.settings = settings
        self.state = ServiceState(settings, RegistryHolder.from_settings(settings))
        # Every worker marks late events, so that roll-ups built by the publishing one
        # are never read stale (ingest_service/indicators/late_events.py).
        # Likewise late readings, for the telemetry roll-ups (ingest_service/telemetry/late.py):
        # every write, the event marks' too, goes through the telemetry marker.
        self.writer: Writer = LateTelemetryMarker(
            make_writer(settings), settings.tz, settings.mqtt_client_id,
            TelemetryRollupSettings().late_after_s,
        )
        self.late_marks = LateEventMarker(self.writer, settings.tz, settings.mqtt_client_id)
        self.query = InfluxQL(settings)
        # Events are placed by (device, seq); with a share group another worker may
        # store a version meanwhile, so every event asks InfluxDB (docs/contract.md §10).
        lookup = InfluxEventLookup(self.query)
        self.events = EventIndex(
            lookup, load_device=lookup.device, trust_memory=settings.mqtt_share_group is None
        )
        self.enricher = Enricher(
            self.state.registry.get,
            settings,
            self._last_counter,
            self.state.registry.refresh,
            self._last_reset,
            events=self.events,
        )
        self.pipeline = Pipeline(
            settings, self.enricher, self.writer, self.state.stats, self.late_marks.stored
        )
        self.input = MqttInput(
            settings,
            self.pipeline.submit_many,
            self.pipeline.drop_stale,
            held=lambda: self.pipeline.pending,
            held_bytes=lambda: self.pipeline.pending_bytes,
        )
        self.engine = IndicatorEngine(self.query, self.state.registry.get, settings)
        if publish_indicators is None:
            publish_indicators = settings.publish_indicators
        rollups = (
            RollupMaintainer(self.query, self.writer, settings) if settings.rollups else None
        )
        self.publisher = (
            IndicatorPublisher(self.engine, self.writer, settings, rollups=rollups,
                               registry=self.state.registry.get)
            if publish_indicators
            else None
        )
        self.telemetry_rollups = (
            TelemetryRollups(self.query, self.writer, settings.tz, TelemetryRollupSettings(
                horizon_days=settings.telemetry_rollup_horizon_days,
                budget_s=settings.telemetry_rollup_budget_s))
            if publish_indicators and settings.telemetry_rollups
            else None
        )
        self.state.broker_connected = lambda: self.input.connected
        self.state.mqtt_events = self.input.events
        self.state.influx_reachable = self.query.ping
        self._counters_lock = threading.Lock()
        self._stored_counters: dict[str, dict[str, tuple[int, float]]] = {}
        self._stored_resets: dict[str, dict[str, int]] = {}

    def _last_counter(self, device_id: str, metric: str) -> tuple[int, float] | None:
        """The latest stored value of a never-decreasing counter, so a restart keeps checking it.

        The first look-up of a metric reads it for every device in one query
        (``GROUP BY device_id``) rather than one query per device on first sight,
        which after an outage meant a round trip per device before anything was stored.
        What this process stores later is checked against the enricher's own memory, so
        the values read at the first look-up stay right for a single worker (several
        workers: see docs/performance.md, "Scale-out").
        """
        with self._counters_lock:
            known = self._stored_counters.get(metric)
            if known is None:
                known = self._load_counters(metric)
                if known is None:
                    return self._last_counter_of(device_id, metric)
                self._stored_counters[metric] = known
            return known.get(device_id)

    def _last_reset(self, device_id: str, metric: str) -> int | None:
        """The time (ns) of the device's latest stored ``counter_reset`` of ``metric``.

        Read once per metric for every device (a restart keeps a replaced meter's new
        baseline); later resets are the enricher's own memory.
        """
        with self._counters_lock:
            known = self._stored_resets.get(metric)
            if known is None:
                q = (
                    f"SELECT last({quote_ident('seq')}) FROM {quote_ident('event')} "
                    f"WHERE {quote_ident('type')} = {quote_literal('counter_reset')} "
                    f"AND {quote_ident('metric')} = {quote_literal(metric)} "
                    f"GROUP BY {quote_ident('device_id')}"
                )
                try:
                    series = run(self.query, q)
                except QueryError as exc:
                    log.warning("cannot read the counter resets of %s: %s", metric, exc)
                    return None
                known = {
                    item.tags["device_id"]: int(item.values[0][0]) * 1_000_000
                    for item in series
                    if item.tags.get("device_id") and item.values
                }
                self._stored_resets[metric] = known
            return known.get(device_id)

    def _load_counters(self, metric: str) -> dict[str, tuple[int, float]] | None:
        q = f"SELECT last({quote_ident(metric)}) FROM telemetry GROUP BY device_id"
        try:
            series = run(self.query, q)  # no database yet: no counters yet
        except QueryError as exc:
            log.warning("cannot read the last %s of every device: %s", metric, exc)
            return None
        found: dict[str, tuple[int, float]] = {}
        for item in series:
            device_id = item.tags.get("device_id")
            for row in item.values:
                if device_id and row[1] is not None:
                    found[device_id] = (int(row[0]) * 1_000_000, float(row[1]))
        return found

    def _last_counter_of(self, device_id: str, metric: str) -> tuple[int, float] | None:
        q = (
            f"SELECT last({quote_ident(metric)}) FROM telemetry "
            f"WHERE device_id = {quote_literal(device_id)}"
        )
        try:
            series = self.query.query(q)
        except QueryError as exc:
            log.warning("cannot read the last %s of %s: %s", metric, device_id, exc)
            return None
        for item in series:
            for row in item.values:
                if row[1] is not None:
                    return int(row[0]) * 1_000_000, float(row[1])
        return None

    def start(self) -> None:
        # Registry facts for Grafana's map and quota panels, now and whenever it changes.
        write_site_points(self.writer, self.state.registry.get())
        self.state.registry.on_change(lambda registry: write_site_points(self.writer, registry))
        self.state.registry.watch()  # an edited registry folder is seen within seconds
        self.pipeline.start()
        self.input.start()
        if self.publisher is not None:
            self.publisher.start()
        if self.telemetry_rollups is not None:
            self.telemetry_rollups.start()

    def stop(self) -> None:
        """Finish the batch in hand, acknowledge it, then disconnect."""
        self.state.registry.stop()
        if self.telemetry_rollups is not None:
            self.telemetry_rollups.stop()
        if self.publisher is not None:
            self.publisher.stop()
        self.pipeline.stop()
        self.input.stop()
        self.writer.close()
        self.query.close()
