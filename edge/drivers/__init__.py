"""Drivers: where an edge agent's readings and discrete events come from."""

from edge.drivers.base import Driver, DriverEvent, Readings

__all__ = ["Driver", "DriverEvent", "Readings"]
