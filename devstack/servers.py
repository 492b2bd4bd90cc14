"""Start and stop real ``mosquitto`` and ``influxd`` processes on free loopback ports."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import httpx

LOOPBACK = "127.0.0.1"


class ServerError(RuntimeError):
    """A server binary is missing or did not come up."""


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return int(sock.getsockname()[1])


def find_binary(name: str, *extra_dirs: str) -> str:
    """Locate a server binary on PATH or in the sbin folders Debian installs to."""
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", *extra_dirs])
    found = shutil.which(name, path=search)
    if not found:
        raise ServerError(
            f"{name} is not installed. On Debian/Ubuntu: "
            "sudo apt-get install mosquitto mosquitto-clients influxdb "
            "(or run the whole stack with: docker compose up)"
        )
    return found


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex((LOOPBACK, port)) == 0


@dataclass
class _Process(ABC):
    """A child server process with a config file and data folder of its own."""

    workdir: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    name = "server"

    @abstractmethod
    def command(self) -> list[str]:
        """The server's command line."""

    @abstractmethod
    def write_config(self) -> None:
        """Write the config file into ``workdir`` (ports and folders filled in)."""

    @abstractmethod
    def ready(self) -> bool:
        """Whether the server answers yet."""

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self, timeout: float = 30.0) -> None:
        """Start the server (again, on the same port and data, after :meth:`stop`)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        self.write_config()
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(
                    f"{self.name} exited with {self.process.returncode}; "
                    f"log:\n{self.log_path.read_text(errors='replace')[-3000:]}"
                )
            if self.ready():
                return
            time.sleep(0.05)
        self.stop()
        raise ServerError(f"{self.name} did not become ready on port {self.port} in {timeout}s")

    def stop(self, kill: bool = False) -> None:
        """Stop the server: SIGTERM (or SIGKILL with ``kill``), then wait for it."""
        if self.process is None or self.process.poll() is not None:
            self.process = None
            return
        self.process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)
        self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> _Process:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


@dataclass
class Mosquitto(_Process):
    """A Mosquitto broker. Anonymous unless ``password_file`` is given; persistence on."""

    password_file: Path | None = None
    acl_file: Path | None = None
    extra_config: str = ""

    name = "mosquitto"

    @property
    def url(self) -> str:
        return f"mqtt://{LOOPBACK}:{self.port}"

    def command(self) -> list[str]:
        return [find_binary("mosquitto"), "-c", str(self.workdir / "mosquitto.conf")]

    def write_config(self) -> None:
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        lines = [
            f"listener {self.port} {LOOPBACK}",
            "persistence true",
            f"persistence_location {data}/",
            "autosave_interval 5",
            # The ingest session must be able to hold a real backlog (default 1000).
            "max_queued_messages 2000000",
            "max_queued_bytes 0",
            # MQTT v5 clients set their own receive maximum; don't cap it at 20.
            "max_inflight_messages 0",
            "max_keepalive 300",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "connection_messages false",
        ]
        if self.password_file is not None:
            lines += ["allow_anonymous false", f"password_file {self.password_file}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl_file is not None:
            lines.append(f"acl_file {self.acl_file}")
        if os.geteuid() == 0 and not re.search(r"^\s*user\s", self.extra_config, re.MULTILINE):
            # Started as root, Mosquitto drops to the "mosquitto" user, which cannot write
            # the persistence file in root's private temp folders: every restart would
            # silently lose the sessions and their queues. Stay root instead.
            lines.append("user root")
        if self.extra_config:
            lines.append(self.extra_config)
        (self.workdir / "mosquitto.conf").write_text("\n".join(lines) + "\n")

    def ready(self) -> bool:
        return _port_open(self.port)


BROKER_DIR = Path(__file__).resolve().parents[1] / "broker"
"""The shipped broker configuration (broker/mosquitto.conf, broker/acl)."""


def shipped_broker_config(
    work: Path, port: int, tls_port: int | None = None, acl: Path = BROKER_DIR / "acl"
) -> str:
    """broker/mosquitto.conf with its paths under ``work`` (``passwd``, ``data/``,
    ``certs/``) and its listeners on loopback ports; without ``tls_port`` the TLS
    listener is left out, as the compose entrypoint does without certificates."""
    conf = (BROKER_DIR / "mosquitto.conf").read_text()
    if tls_port is None:
        conf = re.sub(r"^# BEGIN TLS LISTENER.*?^# END TLS LISTENER$\n?", "", conf,
                      flags=re.MULTILINE | re.DOTALL)
    replacements = [
        (r"^listener 1883$", f"listener {port} {LOOPBACK}"),
        (r"^password_file /mosquitto/config/passwd$", f"password_file {work / 'passwd'}"),
        (r"^acl_file /mosquitto/config/acl$", f"acl_file {acl}"),
        (r"^persistence_location /mosquitto/data/$", f"persistence_location {work / 'data'}/"),
    ]
    if tls_port is not None:
        replacements += [
            (r"^listener 8883$", f"listener {tls_port} {LOOPBACK}"),
            (r" /mosquitto/config/certs/", f" {work / 'certs'}/"),
        ]
    for pattern, replacement in replacements:
        conf, count = re.subn(pattern, replacement, conf, flags=re.MULTILINE)
        if not count:
            raise ServerError(f"broker/mosquitto.conf no longer has {pattern!r}")
    settings = [line for line in conf.splitlines() if not line.startswith("#")]
    if [line for line in settings if " /mosquitto/" in line]:  # an image path, not ``work``
        raise ServerError("broker/mosquitto.conf has an image path left")
    if os.geteuid() == 0:  # as in Mosquitto.write_config: keep the root-owned files writable
        conf += "user root\n"
    return conf


def write_password_file(path: Path, accounts: dict[str, str]) -> None:
    """A Mosquitto password file (salted hashes, by ``mosquitto_passwd``) of ``accounts``."""
    passwd = find_binary("mosquitto_passwd")
    path.unlink(missing_ok=True)
    path.touch(mode=0o600)
    for user, password in accounts.items():
        subprocess.run([passwd, "-b", str(path), user, password], check=True,
                       capture_output=True)


@dataclass
class ShippedMosquitto(Mosquitto):
    """Mosquitto running the project's own broker/mosquitto.conf and broker/acl (plain
    listener only), with ``accounts`` (username → password) in its password file."""

    accounts: dict[str, str] = field(default_factory=dict)

    def url_for(self, user: str) -> str:
        return f"mqtt://{user}:{self.accounts[user]}@{LOOPBACK}:{self.port}"

    def write_config(self) -> None:
        (self.workdir / "data").mkdir(exist_ok=True)
        write_password_file(self.workdir / "passwd", self.accounts)
        (self.workdir / "mosquitto.conf").write_text(
            shipped_broker_config(self.workdir, self.port)
        )


@dataclass
class Influxd(_Process):
    """An InfluxDB 1.x server (Debian's ``influxdb``), HTTP API on loopback, no auth."""

    rpc_port: int = 0

    name = "influxd"

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def command(self) -> list[str]:
        return [find_binary("influxd"), "-config", str(self.workdir / "influxdb.conf")]

    def write_config(self) -> None:
        if not self.rpc_port:
            self.rpc_port = free_port()
        root = self.workdir
        (root / "influxdb.conf").write_text(
            f"""reporting-disabled = true
bind-address = "{LOOPBACK}:{self.rpc_port}"

[meta]
  dir = "{root}/meta"

[data]
  dir = "{root}/data"
  wal-dir = "{root}/wal"
  query-log-enabled = false
  trace-logging-enabled = false

[coordinator]
  query-timeout = "60s"

[retention]
  enabled = false

[monitor]
  store-enabled = false

[http]
  enabled = true
  bind-address = "{LOOPBACK}:{self.port}"
  auth-enabled = false
  log-enabled = false
  max-body-size = 0
  max-row-limit = 0

[logging]
  level = "warn"

[subscriber]
  enabled = false

[continuous_queries]
  enabled = false
"""
        )

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/ping", timeout=0.5).status_code == 204
        except httpx.HTTPError:
            return False

    def query(self, q: str, db: str = "farm") -> dict[str, object]:
        """Run InfluxQL and return the decoded JSON (for tests and the demo)."""
        response = httpx.post(f"{self.url}/query", params={"db": db, "q": q}, timeout=30)
        response.raise_for_status()
        result: dict[str, object] = response.json()
        return result
