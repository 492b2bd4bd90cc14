"""Provisioning a device, one command or one API call, against the real broker and ingest.

The broker runs with a password file, the project's ACL (broker/acl) and a pid
file; ingest logs in as ``svc.ingest``. A device provisioned while both run can
publish its own telemetry at once (the broker got SIGHUP, ingest re-reads the
registry folder), and still cannot publish as another device.
"""

from __future__ import annotations

import json
import os
import pwd
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from fastapi.testclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from devstack.servers import LOOPBACK, Influxd, Mosquitto, find_binary
from ingest_service.api.app import create_app
from ingest_service.provision import (
    ProvisionError,
    make_device,
    set_broker_password,
    with_device,
)
from ingest_service.service import IngestService
from ingest_service.settings import Settings
from tests.helpers import DEVICES_CSV, SITES_CSV, count, wait_for, write_registry

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
INGEST_PASSWORD = "ingest-test-password"
TOKEN = "admin-token-for-tests"


@dataclass
class Stack:
    broker: Mosquitto
    influxd: Influxd
    service: IngestService
    passwd: Path
    pid_file: Path
    registry: Path


@pytest.fixture
def stack(tmp_path: Path, influxd: Influxd) -> Iterator[Stack]:
    passwd = tmp_path / "passwd"
    subprocess.run(
        [find_binary("mosquitto_passwd"), "-c", "-b", str(passwd), "svc.ingest", INGEST_PASSWORD],
        check=True, capture_output=True,
    )
    pid_file = tmp_path / "mosquitto.pid"
    broker = Mosquitto(
        tmp_path / "mosquitto",
        password_file=passwd,
        acl_file=ROOT / "broker" / "acl",
        extra_config=f"pid_file {pid_file}",
    )
    broker.start()
    wait_for(pid_file.exists, timeout=10)
    registry = write_registry(tmp_path / "registry")
    settings = Settings(
        mqtt_url=f"mqtt://svc.ingest:{INGEST_PASSWORD}@{LOOPBACK}:{broker.port}",
        influx_url=influxd.url,
        influx_api="v1",
        registry_dir=registry,
        batch_interval_s=0.05,
        api_token=TOKEN,
        broker_passwd_file=passwd,
        broker_pid_file=pid_file,
    )
    service = IngestService(settings, publish_indicators=False)
    service.start()
    assert service.input.wait_connected(10)
    yield Stack(broker, influxd, service, passwd, pid_file, registry)
    service.stop()
    broker.stop()


def _client(broker: Mosquitto, user: str, password: str) -> tuple[mqtt.Client, bool]:
    """A connected client and whether the broker accepted the login."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"p-{uuid.uuid4().hex[:8]}")
    client.username_pw_set(user, password)
    codes: list[ReasonCode] = []
    client.on_connect = lambda _c, _u, _f, code, _p: codes.append(code)
    client.connect(LOOPBACK, broker.port)
    client.loop_start()
    wait_for(lambda: codes, timeout=5)
    return client, not codes[0].is_failure


def _close(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


def login_accepted(broker: Mosquitto, user: str, password: str) -> bool:
    client, accepted = _client(broker, user, password)
    _close(client)
    return accepted


def publish_as(
    broker: Mosquitto, user: str, password: str, messages: list[tuple[str, bytes]]
) -> None:
    """Log in as ``user`` (waiting for the broker's reload) and publish at QoS 1, with PUBACKs."""
    wait_for(lambda: login_accepted(broker, user, password), timeout=10, interval=0.2)
    client, accepted = _client(broker, user, password)
    try:
        assert accepted
        for topic, body in messages:
            info = client.publish(topic, body, qos=1)
            info.wait_for_publish(timeout=5)
            assert info.is_published()
    finally:
        _close(client)


def reading(seq: int) -> bytes:
    ts = int(time.time() * 1000) - 60_000
    return json.dumps({"v": 1, "seq": seq, "ts": ts, "readings": {"flow_lpm": 7.0}}).encode()


def telemetry_of(influxd: Influxd, device: str) -> int:
    return count(influxd, f"SELECT count(flow_lpm) FROM telemetry WHERE device_id = '{device}'")


def check_new_device_can_publish_only_as_itself(stack: Stack, device: str, password: str) -> None:
    publish_as(
        stack.broker,
        device,
        password,
        [
            (f"farm/v1/drip-1/{device}/telemetry", reading(1)),
            ("farm/v1/drip-1/dev-1/telemetry", reading(2)),  # as another device: dropped
            (f"farm/v1/drip-1/{device}/telemetry", reading(3)),  # marker, after the spoof
        ],
    )
    wait_for(lambda: telemetry_of(stack.influxd, device) == 2, timeout=20)
    assert telemetry_of(stack.influxd, "dev-1") == 0
    assert count(stack.influxd, "SELECT count(detail) FROM rejection") == 0


def test_provision_device_command(stack: Stack) -> None:
    result = subprocess.run(
        [
            sys.executable, "-m", "ingest_service", "provision-device",
            "--device-id", "new-1", "--site-id", "drip-1", "--model", "flow-meter",
            "--passwd-file", str(stack.passwd), "--registry-dir", str(stack.registry),
            "--broker-pid-file", str(stack.pid_file),
        ],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )
    assert result.returncode == 0, result.stderr
    credentials = json.loads(result.stdout)
    assert credentials["mqtt_username"] == "new-1" and credentials["created"] is True
    assert credentials["broker_reloaded"] is True
    password = credentials["mqtt_password"]
    assert len(password) >= 32 and password not in stack.passwd.read_text()
    assert "new-1,drip-1,,flow-meter" in (stack.registry / "devices.csv").read_text()
    check_new_device_can_publish_only_as_itself(stack, "new-1", password)
    assert not login_accepted(stack.broker, "new-1", "wrong-password")


def test_provision_device_command_refuses_a_bad_device(stack: Stack) -> None:
    before = (stack.registry / "devices.csv").read_text(), stack.passwd.read_text()
    result = subprocess.run(
        [
            sys.executable, "-m", "ingest_service", "provision-device",
            "--device-id", "new-2", "--site-id", "no-such-site",
            "--passwd-file", str(stack.passwd), "--registry-dir", str(stack.registry),
        ],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )
    assert result.returncode == 1 and "unknown site_id no-such-site" in result.stderr
    assert ((stack.registry / "devices.csv").read_text(), stack.passwd.read_text()) == before


def test_provision_device_api_call(stack: Stack) -> None:
    client = TestClient(
        create_app(stack.service.state, stack.service.engine), base_url="http://127.0.0.1"
    )
    body = {"device_id": "new-3", "site_id": "drip-1", "model": "probe"}
    assert client.post("/api/v1/devices", json=body).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert client.post("/api/v1/devices", json=body, headers=wrong).status_code == 401
    auth = {"Authorization": f"Bearer {TOKEN}"}
    bad = client.post("/api/v1/devices", json={**body, "site_id": "nowhere"}, headers=auth)
    assert bad.status_code == 422 and "unknown site_id nowhere" in bad.json()["problems"]
    response = client.post("/api/v1/devices", json=body, headers=auth)
    assert response.status_code == 201, response.text
    assert response.headers["cache-control"] == "no-store"
    credentials = response.json()
    assert credentials["broker_reloaded"] is True
    assert stack.service.state.registry.get().devices["new-3"].model == "probe"
    check_new_device_can_publish_only_as_itself(stack, "new-3", credentials["mqtt_password"])
    # A repeated request keeps the password the device is using (issue 14: it used to
    # rotate it silently); asking with rotate gives a new one.
    again = client.post("/api/v1/devices", json=body, headers=auth)
    assert again.status_code == 409, again.text
    assert "already provisioned" in again.json()["problems"][0]
    assert login_accepted(stack.broker, "new-3", credentials["mqtt_password"])
    rotated = client.post("/api/v1/devices", json={**body, "rotate": True}, headers=auth)
    assert rotated.status_code == 200, rotated.text
    new_password = rotated.json()["mqtt_password"]
    assert new_password != credentials["mqtt_password"]
    assert login_accepted(stack.broker, "new-3", new_password)
    client.close()


def provision_command(
    stack: Stack, device_id: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable, "-m", "ingest_service", "provision-device",
            "--device-id", device_id, "--site-id", "drip-1",
            "--passwd-file", str(stack.passwd), "--registry-dir", str(stack.registry),
            "--broker-pid-file", str(stack.pid_file), *extra,
        ],
        capture_output=True, text=True, timeout=60, cwd=ROOT, check=False,
    )


def test_provisioning_again_needs_rotate(stack: Stack) -> None:
    first = provision_command(stack, "new-4")
    assert first.returncode == 0, first.stderr
    old = json.loads(first.stdout)["mqtt_password"]
    passwd_before = stack.passwd.read_text()
    again = provision_command(stack, "new-4")
    assert again.returncode == 1 and "already provisioned" in again.stderr
    assert "--rotate" in again.stderr and stack.passwd.read_text() == passwd_before
    rotated = provision_command(stack, "new-4", "--rotate")
    assert rotated.returncode == 0, rotated.stderr
    new = json.loads(rotated.stdout)
    assert new["created"] is False and new["mqtt_password"] != old
    wait_for(lambda: not login_accepted(stack.broker, "new-4", old), timeout=10, interval=0.2)
    assert login_accepted(stack.broker, "new-4", new["mqtt_password"])


def test_a_new_password_file_is_readable_by_debians_broker(tmp_path: Path) -> None:
    """Not root:root 0600 (issue 14: Debian's Mosquitto, user mosquitto, could not read
    it and stopped); no world-readable bits either (Mosquitto 2.0.17+ warns)."""
    passwd = tmp_path / "etc" / "passwd"
    set_broker_password(passwd, "d-1", "a-password-of-some-length")
    set_broker_password(passwd, "d-2", "another-password-of-length")  # rewritten in place
    info = passwd.stat()
    assert stat.S_IMODE(info.st_mode) == 0o640
    if os.geteuid() == 0 and _user_exists("mosquitto"):
        broker = pwd.getpwnam("mosquitto")
        assert (info.st_uid, info.st_gid) == (broker.pw_uid, broker.pw_gid)
    else:
        assert info.st_uid == os.geteuid()
    assert passwd.read_text().count("\n") == 2


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def test_registry_checks_before_anything_is_written() -> None:
    from farm_contract.registry import Registry

    registry = Registry.from_csv(SITES_CSV, DEVICES_CSV)
    with pytest.raises(ProvisionError, match="already used by dev-2"):
        with_device(registry, make_device("x-1", "drip-1", "0011223344556677", ""))
    with pytest.raises(ProvisionError, match="device_id"):
        make_device("Bad Id", "drip-1", None, "")
    updated = with_device(registry, make_device("dev-2", "farm-1", "0011223344556677", "v2"))
    assert updated.devices["dev-2"].model == "v2" and registry.devices["dev-2"].model != "v2"
