"""docker-compose.yml, Dockerfile and .dockerignore, checked without a Docker engine.

The compose file is validated against the Compose Specification's JSON schema
(tests/schemas/compose-spec.json, see tests/schemas/README.md); the rest checks
what the schema cannot: that mounted and built paths exist in the repository,
that the ingest service's environment is made of known settings which parse,
and that the services agree with each other on accounts, passwords and tokens.
"""

from __future__ import annotations

import fnmatch
import json
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from dashboards import mapdata
from ingest_service.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "tests" / "schemas" / "compose-spec.json"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


DEMO_ENV_FILE = ROOT / "compose.demo.env"


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines, as ``docker compose --env-file`` reads them (no quoting used)."""
    pairs = [line.split("=", 1) for line in path.read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    return {key.strip(): value.strip() for key, value in pairs}


DEMO_ENV = read_env_file(DEMO_ENV_FILE)


class MissingVariable(ValueError):
    """``${V:?message}`` with V unset: compose refuses to start with ``message``."""


def _closing_brace(text: str) -> int:
    """Where the ``${`` that ``text`` starts with closes, or -1: compose-go's
    getFirstBraceClosingIndex (template/template.go), braces counted, so a default may
    hold JSON; like it, the character after each ``{`` is skipped."""
    depth, i = 0, 0
    while i < len(text):
        if text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
        if text[i] == "{":
            depth += 1
            i += 1
        i += 1
    return -1


def interpolate(value: str, env: dict[str, str] | None = None) -> str:
    """Compose's variable substitution for the forms the file uses:
    ${V}, ${V:-default}, ${V:?message}, $$ (``env`` defaults to compose.demo.env's)."""
    env = DEMO_ENV if env is None else env
    out, i = [], 0
    while i < len(value):
        if value.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        if not value.startswith("${", i):
            out.append(value[i])
            i += 1
            continue
        end = _closing_brace(value[i:])
        assert end > 0, f"unclosed ${{ in {value!r}"
        body = value[i + 2:i + end]
        match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?::([-?])(.*))?", body, re.DOTALL)
        assert match, f"not a substitution compose knows: ${{{body}}}"
        name, form, argument = match.groups()
        if env.get(name):
            out.append(env[name])
        elif form == "?":
            raise MissingVariable(f"{name}: {argument}")
        elif form == "-":
            out.append(interpolate(argument, env))
        i += end + 1
    return "".join(out)


def test_interpolate_counts_braces_like_compose() -> None:
    assert interpolate('${UNSET:-{"a":{"b":1}}}', {}) == '{"a":{"b":1}}'
    assert interpolate('${SET:-{"a":1}}', {"SET": "x"}) == "x"
    assert interpolate("${A:-x}}-$$-${B}", {}) == "x}-$-"
    with pytest.raises(MissingVariable, match="A: say so"):
        interpolate("${A:?say so}", {})


def environment(service: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, str]:
    """A service's environment, interpolated with ``env`` (default: the demo's env file)."""
    values = service.get("environment", {})
    assert isinstance(values, dict), "environment is written as a mapping"
    return {key: interpolate(str(value), env) for key, value in values.items()}


def test_valid_against_compose_spec(compose: dict[str, Any]) -> None:
    schema = json.loads(SCHEMA.read_text())
    # The schema's $schema URI is not one jsonschema knows; its keywords are draft-07's.
    validator = jsonschema.Draft7Validator(schema)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors
    # The validator really is strict: an unknown service key is an error.
    broken = {**compose, "services": {**compose["services"], "x": {"image": "a", "imgae": "b"}}}
    assert not validator.is_valid(broken)


def test_expected_services(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {
        "mosquitto", "influxdb", "grafana", "registry-init", "broker-users", "ingest", "simulator",
    }


def _mounts(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(type, source, target) of each mount, short or long syntax."""
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            mounts.append((volume["type"], volume.get("source", ""), volume["target"]))
            continue
        source, target = volume.split(":")[:2]
        kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        mounts.append((kind, source, target))
    return mounts


def test_bind_mounts_exist(compose: dict[str, Any]) -> None:
    binds = [
        (name, source)
        for name, service in compose["services"].items()
        for kind, source, _ in _mounts(service)
        if kind == "bind"
    ]
    assert binds, "expected bind mounts (broker/, dashboards/)"
    for name, source in binds:
        assert source.startswith("./"), f"{name}: bind mount {source} is not inside the repo"
        assert (ROOT / source).exists(), f"{name}: {source} does not exist"


def test_named_volumes_declared_and_used(compose: dict[str, Any]) -> None:
    used = {
        source
        for service in compose["services"].values()
        for kind, source, _ in _mounts(service)
        if kind == "volume"
    }
    assert used == set(compose.get("volumes", {}))


def test_build_contexts_and_dockerfiles_exist(compose: dict[str, Any]) -> None:
    builds = {name: s["build"] for name, s in compose["services"].items() if "build" in s}
    assert {"ingest", "simulator", "registry-init"} <= set(builds)
    for name, build in builds.items():
        context = ROOT / (build if isinstance(build, str) else build.get("context", "."))
        dockerfile = "Dockerfile"
        if isinstance(build, dict):
            dockerfile = build.get("dockerfile", dockerfile)
        assert context.is_dir(), f"{name}: build context {context} missing"
        assert (context / dockerfile).is_file(), f"{name}: {dockerfile} missing"


def test_depends_on_healthy_services_have_healthchecks(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dependency, spec in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if spec["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"
    ingest = services["ingest"]["depends_on"]
    assert ingest["mosquitto"]["condition"] == "service_healthy"
    assert ingest["influxdb"]["condition"] == "service_healthy"
    assert ingest["registry-init"]["condition"] == "service_completed_successfully"


def test_farm_environment_names_are_settings(compose: dict[str, Any]) -> None:
    known = {f"FARM_{name.upper()}" for name in Settings.model_fields}
    for name, service in compose["services"].items():
        farm = {key for key in environment(service) if key.startswith("FARM_")}
        assert farm <= known, f"{name}: unknown settings {sorted(farm - known)}"
    ingest = environment(compose["services"]["ingest"])
    assert {
        "FARM_MQTT_URL", "FARM_INFLUX_URL", "FARM_INFLUX_API", "FARM_INFLUX_TOKEN",
        "FARM_INFLUX_ORG", "FARM_INFLUX_BUCKET", "FARM_REGISTRY_DIR", "FARM_API_HOST",
        "FARM_API_PORT", "FARM_API_TOKEN",
    } <= set(ingest)


def test_ingest_environment_parses(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    for key, value in environment(compose["services"]["ingest"]).items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.mqtt.host == "mosquitto" and settings.mqtt.port == 1883
    assert settings.mqtt.username == "svc.ingest"
    assert settings.influx_url == "http://influxdb:8086" and settings.influx_api == "v2"
    assert settings.influx_bucket == "farm"
    # Listening beyond loopback needs the API token.
    assert settings.api_host == "0.0.0.0" and settings.api_token is not None
    assert settings.api_token.get_secret_value()
    mounts = {target for _, _, target in _mounts(compose["services"]["ingest"])}
    assert str(settings.registry_dir) in mounts
    registry_init = compose["services"]["registry-init"]
    command = " ".join(registry_init["command"])
    # made once: an existing registry (provisioned devices included) is kept
    assert f"test -e {settings.registry_dir}/devices.csv ||" in command
    assert f"--out {settings.registry_dir}" in command
    assert str(settings.registry_dir) in {t for _, _, t in _mounts(registry_init)}


def test_services_agree_on_secrets(compose: dict[str, Any]) -> None:
    """With only the defaults, every service uses the same passwords and token."""
    services = compose["services"]
    broker = environment(services["mosquitto"])
    influx = environment(services["influxdb"])
    ingest = environment(services["ingest"])
    grafana = environment(services["grafana"])
    ingest_url = Settings.model_validate({"mqtt_url": ingest["FARM_MQTT_URL"]}).mqtt
    assert ingest_url.password == broker["MQTT_INGEST_PASSWORD"]
    simulator = [interpolate(part) for part in services["simulator"]["command"]]
    simulator_url = simulator[simulator.index("--mqtt-url") + 1]
    simulator_mqtt = Settings.model_validate({"mqtt_url": simulator_url}).mqtt
    # Each simulated device logs in as itself, with a password derived from the secret
    # the broker-users service writes the broker's accounts from.
    assert simulator_mqtt.username is None
    secret = environment(services["simulator"])["SIMULATOR_DEVICE_SECRET"]
    assert secret and secret == environment(services["broker-users"])["SIMULATOR_DEVICE_SECRET"]
    users_file = broker["MQTT_USERS_FILE"]
    written = services["broker-users"]["command"]
    assert written[written.index("--out") + 1].endswith(users_file.rsplit("/", 1)[1])
    token = influx["DOCKER_INFLUXDB_INIT_ADMIN_TOKEN"]
    assert ingest["FARM_INFLUX_TOKEN"] == token == grafana["INFLUX_TOKEN"]
    assert ingest["FARM_INFLUX_ORG"] == influx["DOCKER_INFLUXDB_INIT_ORG"]
    assert ingest["FARM_INFLUX_BUCKET"] == influx["DOCKER_INFLUXDB_INIT_BUCKET"] == "farm"
    # InfluxDB refuses an initial password shorter than 8 characters.
    assert len(influx["DOCKER_INFLUXDB_INIT_PASSWORD"]) >= 8
    # The MQTT accounts the services log in with exist in the broker's ACL.
    acl_users = re.findall(r"^user (\S+)$", (ROOT / "broker" / "acl").read_text(), re.MULTILINE)
    assert "svc.ingest" in acl_users


def test_grafana_mounts_provisioning_and_dashboards(compose: dict[str, Any]) -> None:
    mounts = {source: target for _, source, target in _mounts(compose["services"]["grafana"])}
    provider = yaml.safe_load(
        (ROOT / "dashboards/provisioning/dashboards/farm.yaml").read_text())["providers"][0]
    assert mounts["./dashboards/json"] == provider["options"]["path"]
    assert mounts["./dashboards/provisioning/datasources"] == (
        "/etc/grafana/provisioning/datasources")
    assert mounts["./dashboards/provisioning/dashboards"] == "/etc/grafana/provisioning/dashboards"
    assert mounts["./dashboards/maps"] == mapdata.GRAFANA_MAPS_DIR


GRAFANA_STATIC_ROOT = "/usr/share/grafana/"
"""The grafana/grafana-oss image's home: it serves its ``public/`` folder as ``public/``."""


def served_by_grafana(compose: dict[str, Any], url: str) -> Path:
    """The repository file the compose stack's Grafana serves at ``url`` (``public/…``)."""
    in_container = GRAFANA_STATIC_ROOT + url
    for kind, source, target in _mounts(compose["services"]["grafana"]):
        if kind == "bind" and in_container.startswith(target.rstrip("/") + "/"):
            return ROOT / source / in_container[len(target.rstrip("/")) + 1:]
    raise AssertionError(f"{url}: no mount of the grafana service serves it")


def _geomap_layers() -> list[dict[str, Any]]:
    board = json.loads((ROOT / "dashboards/json/city-overview.json").read_text(encoding="utf-8"))
    (geomap,) = [p for p in board["panels"] if p["type"] == "geomap"]
    layers: list[dict[str, Any]] = geomap["options"]["layers"]
    assert geomap["options"]["basemap"]["type"] == "default", "follows the server's basemap"
    return layers


def test_grafana_serves_the_maps_geojson_layers(compose: dict[str, Any]) -> None:
    sources = [layer["config"]["src"] for layer in _geomap_layers() if layer["type"] == "geojson"]
    assert sources == [f"{mapdata.URL_PREFIX}/{mapdata.COUNTY_SEATS}"]
    for src in sources:
        assert served_by_grafana(compose, src).is_file(), src


TILES = '{"type":"xyz","config":{"url":"http://tiles.lan/{z}/{x}/{y}.png","attribution":"ours"}}'


@pytest.mark.parametrize("env", [DEMO_ENV, {}], ids=["demo", "bare"])
def test_grafana_basemap_is_offline_unless_set(
    compose: dict[str, Any], env: dict[str, str],
) -> None:
    """Grafana's "default" basemap is the server's default_baselayer_config when set (else
    CARTO's tiles from the internet): compose sets one that fetches nothing by default."""
    grafana = compose["services"]["grafana"]
    secrets = {k: "x" * 8 for k in ("INFLUX_TOKEN", "GRAFANA_ADMIN_PASSWORD")}
    variable = "GF_GEOMAP_DEFAULT_BASELAYER_CONFIG"
    offline = json.loads(environment(grafana, {**secrets, **env})[variable])
    assert offline == mapdata.OFFLINE_BASEMAP
    assert offline["type"] == "geojson" and "url" not in offline["config"]
    blank = json.loads(served_by_grafana(compose, offline["config"]["src"]).read_text())
    assert blank == {"type": "FeatureCollection", "features": []}
    # An office with internet or a tile server of its own sets GRAFANA_BASEMAP.
    chosen = environment(grafana, {**secrets, **env, "GRAFANA_BASEMAP": TILES})[variable]
    assert chosen == TILES


def test_dockerfile() -> None:
    lines = [
        line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines[0] == "FROM python:3.11-slim"
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    assert lines[-1] == 'CMD ["python", "-m", "ingest_service"]'
    assert any(line.startswith("RUN pip install") for line in lines)


def test_dockerignore_keeps_what_pip_install_needs() -> None:
    patterns = [
        line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    packages = [p.rstrip("*") for p in include]
    needed = ["pyproject.toml", pyproject["project"]["readme"], *packages]
    for path in needed:
        assert (ROOT / path).exists(), path
        excluded = [p for p in patterns if fnmatch.fnmatch(path, p.lstrip("/"))]
        assert not excluded, f".dockerignore drops {path} ({excluded})"
    for path in (".venv", ".git", "tests"):
        assert any(fnmatch.fnmatch(path, p) for p in patterns), f"{path} goes into the image"


# --- issue 14: defaults refused outside the demo, loopback ports, provisioning --------


NOT_DEMO = ("mosquitto", "influxdb", "grafana", "ingest", "registry-init")


def test_no_secret_has_a_default_outside_the_demo(compose: dict[str, Any]) -> None:
    """Without compose.demo.env, compose refuses to start and names what to set."""
    text = (ROOT / "docker-compose.yml").read_text()
    secrets = {k: v for k, v in DEMO_ENV.items() if k != "COMPOSE_PROFILES"}
    for name in secrets:
        default = re.search(rf"\$\{{{name}:-([^}}]+)\}}", text)
        assert default is None, f"{name} has a default in docker-compose.yml: {default}"
    refused = set()
    for name in NOT_DEMO:
        for key, value in compose["services"][name].get("environment", {}).items():
            try:
                interpolate(str(value), {})
            except MissingVariable as exc:
                refused.add(str(exc).split(":")[0])
                assert "set " in str(exc), f"{name}.{key}: the message says what to set"
    assert refused == set(secrets) - {"SIMULATOR_DEVICE_SECRET"}
    # the shell's own value wins
    assert interpolate("${INFLUX_TOKEN:?set it}", {"INFLUX_TOKEN": "mine"}) == "mine"


def test_demo_profile_holds_the_fleet(compose: dict[str, Any]) -> None:
    assert DEMO_ENV["COMPOSE_PROFILES"] == "demo"
    services = compose["services"]
    demo = {name for name, s in services.items() if "demo" in s.get("profiles", [])}
    assert demo == {"simulator", "broker-users"}
    for name in NOT_DEMO:
        assert not set(services[name].get("depends_on", {})) & demo, (
            f"{name} depends on a demo-only service")


def test_only_mqtt_is_published_beyond_loopback(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            if name == "mosquitto":
                assert port in ("1883:1883", "8883:8883")
            else:
                assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"
    assert compose["services"]["ingest"]["ports"] == ["127.0.0.1:8000:8000"]


def test_provisioning_shares_the_broker_password_file(compose: dict[str, Any]) -> None:
    services = compose["services"]
    ingest_file = Path(environment(services["ingest"])["FARM_BROKER_PASSWD_FILE"])
    broker_env = environment(services["mosquitto"])
    broker_file = Path(broker_env["MQTT_PASSWD_FILE"])
    assert ingest_file.name == broker_file.name
    ingest_volume = {t: s for k, s, t in _mounts(services["ingest"]) if k == "volume"}
    broker_volume = {t: s for k, s, t in _mounts(services["mosquitto"]) if k == "volume"}
    assert ingest_volume[str(ingest_file.parent)] == broker_volume[str(broker_file.parent)]
    # ingest (the image's farm group) may write it; the broker re-reads it by itself
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert f"--gid {broker_env['MQTT_PASSWD_GROUP']} farm" in dockerfile
    assert "mosquitto" in re.search(r"apt-get install[^\n]*", dockerfile).group(0)  # type: ignore[union-attr]
    assert float(broker_env["MQTT_RELOAD_INTERVAL_S"]) > 0
    assert "FARM_BROKER_PID_FILE" not in environment(services["ingest"])


def test_dashboards_are_installed_with_the_package() -> None:
    """``dashboards.push`` from an install reads dashboards/json/ next to its module; the
    map files are there too, for a Grafana of one's own (README)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["dashboards"]
    found = [p for g in globs for p in (ROOT / "dashboards").glob(g)]
    from dashboards.push import JSON_DIR

    maps = sorted(mapdata.MAPS_DIR.glob("*.geojson"))
    assert sorted(found) == sorted([*JSON_DIR.glob("*.json"), *maps]) and found and maps
