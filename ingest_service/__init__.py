"""The ingest service: MQTT in → validate → enrich from the registry → InfluxDB out.

Stages, each a small module with a plain interface (the way Telegraf is built):

- ``inputs.mqtt``: subscribes (MQTT 5, QoS 1, persistent session, acks after
  storage) and hands the messages of each socket read on as a batch of
  :class:`~ingest_service.model.Inbound`; ``inputs.mqtt_wire`` is its packet codec.
- ``parse`` and ``chirpstack``: check a message against the wire contract.
- ``enrich``: checks it against the registry and turns it into points.
- ``outputs.lineprotocol`` and ``outputs.influx``: write points to InfluxDB.
- ``pipeline``: batches, writes, retries, then acknowledges.
- ``indicators`` and ``api``: the plan's indicators over HTTP.
"""
