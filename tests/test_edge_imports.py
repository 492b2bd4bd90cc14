"""What the edge agent loads: only what a field device needs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_edge_does_not_load_the_ingest_settings() -> None:
    """The agent parses its broker URL without pydantic-settings and ingest's ~35 settings."""
    code = (
        "import sys, edge.agent, edge.config, edge.publisher;"
        "print(sorted(m for m in ('pydantic_settings', 'farm_contract.settings',"
        " 'ingest_service') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_the_settings_still_offer_the_url_parser() -> None:
    """``farm_contract.settings`` keeps the names it had: the move broke no importer."""
    from farm_contract import mqtt_url, settings

    assert settings.parse_mqtt_url is mqtt_url.parse_mqtt_url
    assert settings.MqttEndpoint is mqtt_url.MqttEndpoint
    assert settings.Settings(mqtt_url="mqtts://u:p%40ss@h").mqtt == mqtt_url.MqttEndpoint(
        "h", 8883, True, "u", "p@ss")
