"""The wire contract (contract v1), defined once.

Edge agents, simulators and the ingest service all import these modules, so a
topic, a payload field, a metric's range or a registry column is spelled in one
place only. The human-readable copy is ``docs/contract.md``.
"""

CONTRACT_VERSION = 1
