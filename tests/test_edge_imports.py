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
        "print(sorted(m for m in ('pydantic_settings', 'ingest_service.settings',"
        " 'ingest_service') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_the_settings_still_offer_the_url_parser() -> None:
    """``ingest_service.settings`` keeps the names it had: the move broke no importer."""
    from farm_contract import mqtt_url
    from ingest_service import settings

    assert settings.parse_mqtt_url is mqtt_url.parse_mqtt_url
    assert settings.MqttEndpoint is mqtt_url.MqttEndpoint
    assert settings.Settings(mqtt_url="mqtts://u:p%40ss@h").mqtt == mqtt_url.MqttEndpoint(
        "h", 8883, True, "u", "p@ss")


def _edge_imports() -> dict[str, set[str]]:
    """Every import between edge's modules, at any depth (in functions, under TYPE_CHECKING)."""
    import ast

    modules = {
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): path
        for path in (ROOT / "edge").rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module:
                targets = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            found |= {t for t in targets if t in modules and t != name}
        graph[name] = found
    return graph


def test_edge_modules_import_one_way() -> None:
    """No import cycle among edge's modules: data flows config → drivers, publisher → mqtt."""
    graph = _edge_imports()
    assert "edge.drivers.modbus" in graph["edge.config"]  # the walk sees imports at all
    cycles = []
    done: set[str] = set()

    def visit(name: str, path: list[str]) -> None:
        if name in path:
            cycles.append([*path[path.index(name):], name])
            return
        if name in done:
            return
        for target in sorted(graph[name]):
            visit(target, [*path, name])
        done.add(name)

    for name in sorted(graph):
        visit(name, [])
    assert cycles == []
