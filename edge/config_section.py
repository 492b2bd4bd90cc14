"""The base of every table in the device config file, drivers' included."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigSection(BaseModel):
    """Unknown keys are refused (a typo must not fall back to a default); values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)
