"""Stages 2–4: check a message against the contract, enrich it from the registry, batch, write,
then acknowledge.
"""
