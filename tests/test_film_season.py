"""Film by season through the real path (issue 13 point 3): a ``film_recovered`` naming its
``season`` is stored with a ``season`` tag by ingest and counts for that season."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from pydantic import ValidationError

from devstack.servers import Influxd, Mosquitto
from farm_contract.indicators import IndicatorId
from farm_contract.payloads import EventRecord
from ingest_service.service import IngestService
from ingest_service.settings import Settings
from tests.helpers import mosquitto_pub, rows, wait_for, write_registry

SHANGHAI = ZoneInfo("Asia/Shanghai")


def _ts(*parts: int) -> str:
    return datetime(*parts, tzinfo=SHANGHAI).isoformat()  # type: ignore[misc]


@pytest.mark.slow
@pytest.mark.integration
def test_a_named_season_is_stored_and_counted(
    tmp_path: Path, mosquitto: Mosquitto, influxd: Influxd
) -> None:
    settings = Settings(mqtt_url=mosquitto.url, registry_dir=write_registry(tmp_path / "r"),
                        influx_url=influxd.url, influx_api="v1", batch_interval_s=0.05)
    service = IngestService(settings, publish_indicators=False)
    service.start()
    topic = "farm/v1/drip-1/dev-1/event"
    events = [
        {"seq": 1, "ts": _ts(2024, 4, 1, 9), "type": "film_applied", "mass_t": 10.0,
         "area_mu": 100.0, "thickness_mm": 0.008},
        # March 2025, named 2024: for 2024 (as it would be without a name, too)
        {"seq": 2, "ts": _ts(2025, 3, 1, 9), "type": "film_recovered", "mass_t": 4.0,
         "season": 2024},
        # July 2025, named 2024: a late recovery of 2024's film still counts for 2024
        {"seq": 3, "ts": _ts(2025, 7, 1, 9), "type": "film_recovered", "mass_t": 3.0,
         "season": 2024},
        # July 2025 without a name: 2025
        {"seq": 4, "ts": _ts(2025, 7, 2, 9), "type": "film_recovered", "mass_t": 1.0},
    ]
    try:
        assert service.input.wait_connected(10)
        for body in events:
            mosquitto_pub(mosquitto.port, topic, json.dumps({"v": 1, **body}))
        query = "SELECT mass_t, season FROM event WHERE type = 'film_recovered'"
        stored = wait_for(lambda: (lambda found: found if len(found) == 3 else None)(
            rows(influxd, query)))
        assert sorted(str(row.get("season")) for row in stored) == ["2024", "2024", "None"]
        now = datetime(2026, 7, 1, tzinfo=SHANGHAI)
        film = {row.year: row for year in (2024, 2025) for row in service.engine.compute(
            year, "平城区", now=now) if row.indicator == IndicatorId.FILM_RECOVERY_RATE}
        assert (film[2024].numerator, film[2024].denominator) == (7.0, 10.0)
        assert (film[2024].quality["thin_film_share"]) == 1.0
        assert (film[2025].numerator, film[2025].denominator, film[2025].value) == (1.0, 0, None)
        events_2024 = service.engine.events(IndicatorId.FILM_RECOVERY_RATE, 2024, "drip-1",
                                            now=now)
        assert [e["seq"] for e in events_2024] == [1, 2, 3]
    finally:
        service.stop()


def test_season_belongs_to_film_recovered_only() -> None:
    base = {"seq": 1, "ts": "2025-01-01T00:00:00Z"}
    assert EventRecord.model_validate(
        {**base, "type": "film_recovered", "mass_t": 1.0, "season": 2025}).season == 2025
    for wrong in ({"type": "harvest", "crop": "corn", "grain_t": 1.0, "season": 2025},
                  {"type": "film_recovered", "mass_t": 1.0, "season": 1999},
                  {"type": "film_recovered", "mass_t": 1.0, "season": "2025"}):
        with pytest.raises(ValidationError):
            EventRecord.model_validate({**base, **wrong})
