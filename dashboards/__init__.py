"""Grafana provisioning and dashboards; ``python -m dashboards.generate`` writes json/."""
