"""Real Mosquitto and InfluxDB processes on loopback, for the demo, the benchmark and tests.

Nothing here is used in production: it starts the Debian-packaged ``mosquitto``
and ``influxd`` binaries with their own configs and data folders, on free ports.
"""
