"""The ingest service: MQTT in → validate → enrich from the registry → InfluxDB out.

Each folder is one stage or one concern, and data flows one way through them
(the way Telegraf is built):

- ``inputs/``: bytes in. ``mqtt`` subscribes (MQTT 5, QoS 1, persistent session,
  acks after storage) and hands the messages of each socket read on as a batch of
  :class:`~ingest_service.model.Inbound`; ``mqtt_wire`` is its packet codec.
- ``pipeline/``: ``parse`` and ``chirpstack`` check a message against the wire
  contract, ``enrich`` checks it against the registry and turns it into points,
  ``batcher`` batches, writes, retries, then acknowledges.
- ``outputs/``: bytes out. ``lineprotocol`` encodes points, ``influx`` writes them.
- ``influxql``: the read client (quoting, time literals, ``Series``, ``QueryError``)
  that everything reading InfluxDB uses.
- ``indicators/``: the plan's indicators: the engine, the shared aggregates,
  calendar months, monthly roll-ups and the late-event marks that keep them true.
- ``api/``: the FastAPI app, its security and error answers, and one router per area.
- ``report/``: the annual report's numbers (``build``), its workbook (``excel``) and
  spreadsheet-safe text.
- ``service`` wires the stages; ``settings`` (``FARM_*``), ``state`` (what threads
  and the API share), ``metrics``, ``logs``, ``provision`` and ``site_points`` serve it.
"""
