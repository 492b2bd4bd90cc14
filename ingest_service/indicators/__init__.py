"""The plan's indicators: definitions, the engine, aggregates, months, monthly roll-ups and
late-event marks.
"""
