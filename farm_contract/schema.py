"""The InfluxDB schema (contract §9): measurement, tag and field names.

Grafana panels and people's own queries read InfluxDB directly, so these names
are part of the public contract like the topics are.
"""

TELEMETRY = "telemetry"
EVENT = "event"
DEVICE_STATUS = "device_status"
INDICATOR = "indicator"
REJECTION = "rejection"
SITE = "site"
ROLLUP = "rollup"
"""Monthly roll-ups of the indicators' event aggregates (contract §10)."""
LATE_EVENT = "late_event"
"""Marks left by ingest when it stores events for a past month (contract §10)."""

TELEMETRY_TAGS = ("site_id", "device_id", "site_type", "county")
EVENT_TAGS = ("site_id", "device_id", "site_type", "county", "type", "use", "crop", "facility")
DEVICE_STATUS_TAGS = ("site_id", "device_id", "county")
INDICATOR_TAGS = ("indicator", "scope", "county")
REJECTION_TAGS = ("reason",)
SITE_TAGS = ("site_id", "county", "site_type", "name")
ROLLUP_TAGS = ("kind", "month", "county", "type", "crop", "part", "site_id", "facility")
LATE_EVENT_TAGS = ("month", "writer")

CITY_COUNTY_TAG = "all"
"""The ``county`` tag value of city-wide indicator points."""

REJECTION_PAYLOAD_BYTES = 1024
"""How much of a rejected payload is kept."""
