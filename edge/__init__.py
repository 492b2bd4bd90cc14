"""The edge device agent: reads a driver, publishes contract messages over MQTT.

``python -m edge --config device.toml`` runs one device. The simulators reuse
the drivers and :class:`edge.publisher.DevicePublisher`, so a simulated fleet
speaks exactly what a real field device speaks.
"""
