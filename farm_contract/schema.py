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
YEAR_CLOSE = "year_close"
"""The append-only history of closing and reopening years (contract §8, §10)."""
YEAR_FROZEN = "year_frozen"
"""A closed year's frozen document, in parts (contract §10, "Closed years")."""
FACILITY_LIVE = "facility_live"
"""The large-scale farms' live state now, an operational figure, not the plan's
indicator (contract §10, "Facilities live now")."""

TELEMETRY_TAGS = ("site_id", "device_id", "site_type", "county")
"""The tags of a device's points: its site, itself, the site's type and county."""
EVENT_OWN_TAGS = ("type", "use", "crop", "facility", "metric", "season")
"""An event point's tags beyond :data:`TELEMETRY_TAGS`: its payload fields of these
names, when present (``type`` always)."""
DEVICE_STATUS_TAGS = ("site_id", "device_id", "county")
SITE_TAGS = ("site_id", "county", "site_type", "name")
LATE_EVENT_TAGS = ("month", "writer")
FACILITY_LIVE_TAGS = ("scope", "county", "site_id")
"""``scope`` is ``farm`` (with ``site_id``), ``county`` or ``city`` (``county`` = ``all``)."""

CITY_COUNTY_TAG = "all"
"""The ``county`` tag value of city-wide indicator points."""

REJECTION_PAYLOAD_BYTES = 1024
"""How much of a rejected payload is kept."""
