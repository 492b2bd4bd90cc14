"""Telemetry roll-ups and per-device last-seen state, so dashboards stay fast at city scale."""
