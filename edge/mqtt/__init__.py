"""One device's MQTT publishing, in the pieces :class:`edge.publisher.DevicePublisher` joins.

- :mod:`edge.mqtt.link`: the connection (paho client, TLS, back-off with full
  jitter, birth and last will), counting what is handed over and acknowledged;
- :mod:`edge.mqtt.status`: the retained ``online``/``offline`` status messages;
- :mod:`edge.mqtt.encoding`: outbox records as contract messages (alone or in a ``batch``);
- a sender decides what goes over the link and when (:mod:`edge.mqtt.sender`):
  :mod:`edge.mqtt.outbox_sender` for the field agent (durable, replays a backlog),
  :mod:`edge.mqtt.direct` for the simulators' fleets (straight to the client).
"""
