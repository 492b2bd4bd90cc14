"""Publishes the indicators to InfluxDB as ``indicator`` points for Grafana (contract §9)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from farm_contract import schema
from farm_contract.indicators import IndicatorValue
from ingest_service.indicators.engine import IndicatorEngine
from ingest_service.indicators.rollups import RollupMaintainer
from ingest_service.influxql import QueryError
from ingest_service.model import FieldValue, Point
from ingest_service.outputs.influx import WriteError, Writer
from ingest_service.outputs.lineprotocol import encode
from ingest_service.settings import Settings

log = logging.getLogger(__name__)


def indicator_points(values: Iterable[IndicatorValue], time_ns: int) -> list[Point]:
    """Indicator rows as ``indicator`` points (contract §9); a null value is left out."""
    points = []
    for item in values:
        fields: dict[str, FieldValue] = {}
        if item.value is not None:
            fields["value"] = float(item.value)
        fields["numerator"] = float(item.numerator)
        fields["denominator"] = float(item.denominator)
        fields["target"] = float(item.target)
        fields["year"] = int(item.year)
        tags = {
            "indicator": str(item.indicator),
            "scope": item.scope,
            "county": item.county if item.county is not None else schema.CITY_COUNTY_TAG,
        }
        points.append(Point(schema.INDICATOR, tags, fields, time_ns))
    return points


def _current_year(settings: Settings) -> Callable[[], list[int]]:
    return lambda: [datetime.now(settings.tz).year]


@dataclass
class IndicatorPublisher:
    """Writes the indicators to InfluxDB every ``indicator_interval_s`` for Grafana.

    Runs in a daemon thread; an error is logged and retried after ``retry_s``
    (or the interval, if shorter), so a down InfluxDB never stops it. With a
    :class:`~ingest_service.indicators.rollups.RollupMaintainer`, each cycle then brings the
    roll-ups up to date for the next one (in this thread, never the pipeline's); a
    roll-up failure is logged, and the indicators are computed from raw events
    wherever no valid roll-up exists.
    """

    engine: IndicatorEngine
    writer: Writer
    settings: Settings
    years: Callable[[], list[int]] | None = None
    rollups: RollupMaintainer | None = None
    retry_s: float = 5.0
    published: int = 0
    errors: int = 0
    _failing: str | None = field(default=None, repr=False)
    """The InfluxDB problem logged last: logged once in one line, not every retry."""
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _thread: threading.Thread | None = field(default=None, repr=False)

    def publish_once(self, now: datetime | None = None) -> int:
        """Compute every year's indicators and write them; return how many points."""
        moment = now or datetime.now(UTC)
        years = (self.years or _current_year(self.settings))()
        points: list[Point] = []
        time_ns = int(moment.timestamp() * 1_000_000) * 1000
        for year in years:
            points += indicator_points(self.engine.compute(year, now=moment), time_ns)
        if points:
            self.writer.write(encode(points))
        self.published += len(points)
        return len(points)

    def maintain_rollups(self) -> None:
        """One roll-up maintenance cycle; its failure only means more raw reads."""
        if self.rollups is None:
            return
        try:
            self.rollups.maintain_once()
        except Exception:
            self.errors += 1
            log.exception("maintaining the indicator roll-ups failed; retrying next cycle")

    def _loop(self) -> None:
        interval = self.settings.indicator_interval_s
        while not self._stop.is_set():
            try:
                self.publish_once()
            except (QueryError, WriteError) as exc:  # InfluxDB's trouble: one line, once
                self.errors += 1
                problem = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
                if problem != self._failing:
                    log.warning("publishing indicators: %s; retrying every %gs",
                                problem, min(self.retry_s, interval))
                    self._failing = problem
                self._stop.wait(min(self.retry_s, interval))
                continue
            except Exception:
                self.errors += 1
                log.exception("publishing indicators failed; retrying")
                self._stop.wait(min(self.retry_s, interval))
                continue
            if self._failing is not None:
                log.warning("publishing indicators again (InfluxDB answers)")
                self._failing = None
            self.maintain_rollups()  # after publishing, so a first build never delays it
            self._stop.wait(interval)

    def start(self) -> None:
        """Start the background thread (once)."""
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="indicator-publisher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Ask the thread to stop and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
