"""The compose broker's entrypoint keeps its password file and reloads it by itself.

Issue 14: the entrypoint rebuilt the password file at every start, so devices
provisioned through the API vanished on a restart, and ingest (another
container) could not SIGHUP the broker. Here broker/compose-entrypoint.sh runs a
real Mosquitto outside a container, its password file in a folder standing for
the shared volume.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack.servers import LOOPBACK, find_binary, free_port
from ingest_service.provision import set_broker_password

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[1]


def login_works(port: int, user: str, password: str) -> bool:
    done = subprocess.run(
        [find_binary("mosquitto_pub"), "-h", LOOPBACK, "-p", str(port), "-u", user,
         "-P", password, "-q", "1", "-t", f"farm/v1/s1/{user}/status", "-m", "{}"],
        capture_output=True, timeout=10,
    )
    return done.returncode == 0


def wait_until(check: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():  # type: ignore[operator]
            return True
        time.sleep(0.3)
    return False


class Entrypoint:
    def __init__(self, tmp: Path) -> None:
        self.src = tmp / "broker"
        shutil.copytree(ROOT / "broker", self.src, ignore=shutil.ignore_patterns("certs"))
        self.port = free_port()
        conf = (self.src / "mosquitto.conf").read_text()
        conf = conf.replace("\nlistener 1883\n", f"\nlistener {self.port} {LOOPBACK}\n")
        conf = conf.replace("/mosquitto/config/", f"{tmp / 'config'}/")
        conf = conf.replace("/mosquitto/data/", f"{tmp / 'data'}/")
        if os.geteuid() == 0:  # stay root: the test's folders are root's own
            conf += "user root\n"
        (self.src / "mosquitto.conf").write_text(conf)
        self.passwd = tmp / "volume" / "passwd"
        (tmp / "data").mkdir()
        self.env = {
            **os.environ,
            "BROKER_SRC": str(self.src), "BROKER_CONF": str(tmp / "config"),
            "BROKER_DATA": str(tmp / "data"), "MOSQUITTO": find_binary("mosquitto"),
            "MQTT_INGEST_PASSWORD": "ingest-pw", "MQTT_HEALTHCHECK_PASSWORD": "health-pw",
            "MQTT_PASSWD_FILE": str(self.passwd), "MQTT_RELOAD_INTERVAL_S": "1",
        }
        self.log = tmp / "entrypoint.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                ["sh", str(self.src / "compose-entrypoint.sh")], env=self.env, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )
        assert wait_until(lambda: login_works(self.port, "svc.ingest", "ingest-pw"), 20), (
            self.log.read_text())

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


@pytest.fixture
def entrypoint(tmp_path: Path) -> Iterator[Entrypoint]:
    broker = Entrypoint(tmp_path)
    try:
        yield broker
    finally:
        broker.stop()


def test_provisioned_device_works_at_once_and_after_a_restart(entrypoint: Entrypoint) -> None:
    entrypoint.start()
    assert not login_works(entrypoint.port, "d-new-1", "d-new-1-password")
    # What ingest does for POST /api/v1/devices (FARM_BROKER_PASSWD_FILE, no pid file).
    set_broker_password(entrypoint.passwd, "d-new-1", "d-new-1-password")
    assert wait_until(lambda: login_works(entrypoint.port, "d-new-1", "d-new-1-password"), 10)
    assert "the broker re-reads it" in entrypoint.log.read_text()

    entrypoint.stop()
    assert entrypoint.process is not None and entrypoint.process.returncode == 0
    entrypoint.start()
    assert login_works(entrypoint.port, "d-new-1", "d-new-1-password")  # kept
    assert login_works(entrypoint.port, "svc.ingest", "ingest-pw")
    assert not login_works(entrypoint.port, "d-new-1", "wrong-password")
