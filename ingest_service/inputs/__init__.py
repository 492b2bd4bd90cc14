"""Where messages come from: the MQTT broker (native devices and ChirpStack)."""
