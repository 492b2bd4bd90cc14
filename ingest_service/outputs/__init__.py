"""Where points go: InfluxDB, through its v1 or v2 write API."""
