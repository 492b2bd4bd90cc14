"""Provisioning a device: its MQTT credentials into the broker, its row into the registry.

One step, used by ``python -m ingest_service provision-device`` and by
``POST /api/v1/devices``. Everything is checked before anything is written: the
device row must be valid and fit the registry (known site, unused ``dev_eui``).
Then the password goes into Mosquitto's password file (``mosquitto_passwd -b``,
so only a salted hash is stored), the registry is saved, and the broker gets
SIGHUP so the new password works without a restart. Running it again for a
device that exists is refused (:class:`AlreadyProvisioned`) unless ``rotate`` is
asked for: then the device gets a new password and the old one stops working.

A password file it creates is readable by the broker: mode 0640 (Mosquitto 2.0.17+
warns about world-readable ones) and, when we are root and a ``mosquitto`` user
exists (Debian's package), owned by ``mosquitto``, the user the broker runs as.
"""

from __future__ import annotations

import fcntl
import os
import pwd
import secrets
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from farm_contract.registry import Device, Registry, RegistryError

PASSWORD_BYTES = 24
"""``secrets.token_urlsafe(24)``: 32 URL-safe characters, 192 bits."""


class ProvisionError(ValueError):
    """The device cannot be provisioned; ``problems`` says why (nothing was changed)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


class AlreadyProvisioned(ProvisionError):
    """The device exists and rotating its password was not asked for (HTTP: 409)."""

    def __init__(self, device_id: str) -> None:
        super().__init__([
            f"device {device_id} is already provisioned; its password was kept "
            "(ask for a new one explicitly: provision-device --rotate)"
        ])
        self.device_id = device_id


BROKER_USER = "mosquitto"
"""The user Debian's (and the eclipse-mosquitto image's) broker runs as."""
PASSWORD_FILE_MODE = 0o640
"""Owner read-write, the broker's group read, nobody else (no world-readable warning)."""


@dataclass(frozen=True, slots=True)
class Provisioned:
    """What the operator hands to the device. The password is shown once, never stored."""

    device: Device
    password: str
    created: bool
    broker_reloaded: bool


def generate_password() -> str:
    """A strong password made of URL-safe characters (it fits in an ``mqtt://`` URL as is)."""
    return secrets.token_urlsafe(PASSWORD_BYTES)


def with_device(registry: Registry, device: Device) -> Registry:
    """``registry`` with ``device`` added or replaced, or :class:`ProvisionError`."""
    problems = []
    if device.site_id not in registry.sites:
        problems.append(f"unknown site_id {device.site_id}")
    if device.dev_eui:
        owner = registry.by_dev_eui.get(device.dev_eui)
        if owner is not None and owner.device_id != device.device_id:
            problems.append(f"dev_eui {device.dev_eui} already used by {owner.device_id}")
    if problems:
        raise ProvisionError(problems)
    kept = [row for row in registry.all_devices
            if (row.device_id, row.valid_from) != (device.device_id, device.valid_from)]
    return Registry.from_rows(registry.all_sites, [*kept, device], registry.as_of)


def make_device(device_id: str, site_id: str, dev_eui: str | None, model: str) -> Device:
    """The registry row, validated as an import would (contract §5)."""
    try:
        return Device.model_validate(
            {"device_id": device_id, "site_id": site_id, "dev_eui": dev_eui, "model": model}
        )
    except ValidationError as exc:
        raise ProvisionError(
            [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        ) from None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise writers of one password file (mosquitto_passwd rewrites it whole)."""
    with open(path.with_name(path.name + ".lock"), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def create_password_file(passwd_file: Path) -> None:
    """An empty password file the broker can read (see the module's docstring)."""
    descriptor = os.open(passwd_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PASSWORD_FILE_MODE)
    os.close(descriptor)
    os.chmod(passwd_file, PASSWORD_FILE_MODE)  # whatever the umask
    if os.geteuid() == 0:
        try:
            broker = pwd.getpwnam(BROKER_USER)
        except KeyError:
            return  # no such user: the broker runs as root or as whoever created the file
        os.chown(passwd_file, broker.pw_uid, broker.pw_gid)


def set_broker_password(passwd_file: Path, username: str, password: str) -> None:
    """Add or update ``username`` in a Mosquitto password file (created if missing)."""
    binary = shutil.which("mosquitto_passwd", path=f"{os.environ.get('PATH', '')}:/usr/bin")
    if binary is None:
        raise ProvisionError(["mosquitto_passwd is missing (Debian: apt-get install mosquitto)"])
    passwd_file.parent.mkdir(parents=True, exist_ok=True)
    with _locked(passwd_file):
        if not passwd_file.exists():
            create_password_file(passwd_file)
        result = subprocess.run(
            [binary, "-b", str(passwd_file), username, password],
            capture_output=True,
            text=True,
            timeout=30,
        )
    if result.returncode != 0:
        raise ProvisionError(
            [f"mosquitto_passwd failed ({result.returncode}): {result.stderr.strip()}"]
        )


def reload_broker(pid: int | None = None, pid_file: Path | None = None) -> bool:
    """SIGHUP Mosquitto so it re-reads its password file; False when no pid is known."""
    if pid is None and pid_file is not None:
        try:
            pid = int(pid_file.read_text().split()[0])
        except (OSError, ValueError, IndexError) as exc:
            raise ProvisionError([f"cannot read the broker pid from {pid_file}: {exc}"]) from None
    if pid is None:
        return False
    try:
        os.kill(pid, signal.SIGHUP)
    except OSError as exc:
        raise ProvisionError([f"cannot signal the broker (pid {pid}): {exc}"]) from None
    return True


def provision(
    registry: Registry,
    save: Callable[[Registry], None],
    passwd_file: Path,
    device: Device,
    *,
    password: str | None = None,
    broker_pid: int | None = None,
    broker_pid_file: Path | None = None,
    rotate: bool = False,
) -> Provisioned:
    """Check, set the broker password, save the registry, reload the broker.

    A device already in the registry is refused unless ``rotate``: a repeated request
    must not silently change a password a device in the field is using."""
    if device.device_id in registry.devices and not rotate:
        raise AlreadyProvisioned(device.device_id)
    updated = with_device(registry, device)
    if password is not None and len(password) < 12:
        raise ProvisionError(["a chosen password needs at least 12 characters"])
    secret = password if password is not None else generate_password()
    set_broker_password(passwd_file, device.device_id, secret)
    try:
        save(updated)
    except (OSError, RegistryError) as exc:
        raise ProvisionError([f"password set, but the registry was not saved: {exc}"]) from None
    reloaded = reload_broker(broker_pid, broker_pid_file)
    return Provisioned(
        device=device,
        password=secret,
        created=device.device_id not in registry.devices,
        broker_reloaded=reloaded,
    )
