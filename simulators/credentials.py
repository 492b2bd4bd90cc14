"""MQTT credentials of simulated devices: each device logs in as itself.

The broker binds a connection's client id to its username
(``use_username_as_clientid``, broker/mosquitto.conf), so a fleet can no longer
share one login: every simulated device has its own account, like a real one.
Their passwords are derived from one secret (HMAC-SHA256 of the device id), so
the simulator and the broker's password file agree without a list of
passwords to hand around: ``python -m simulators broker-users`` writes the
``user:password`` lines the compose broker's entrypoint turns into hashes.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable
from pathlib import Path

SECRET_ENV = "SIMULATOR_DEVICE_SECRET"
"""The environment variable holding the secret (never a command-line argument)."""


def device_password(secret: str, device_id: str) -> str:
    """The simulated device's password: 32 hex characters, fit for an ``mqtt://`` URL."""
    digest = hmac.new(secret.encode(), device_id.encode(), hashlib.sha256).hexdigest()
    return digest[:32]


def write_users_file(path: Path, secret: str, device_ids: Iterable[str]) -> int:
    """Write ``device_id:password`` lines (readable by the owner only); how many."""
    lines = [f"{device_id}:{device_password(secret, device_id)}\n" for device_id in device_ids]
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as out:
        out.writelines(lines)
    return len(lines)
