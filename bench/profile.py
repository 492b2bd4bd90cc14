"""Where ingest's time goes: py-spy's collapsed stacks, bucketed by pipeline stage.

py-spy samples every thread; with ``--threads`` each stack starts with its
thread, and idle samples (waiting on a lock, socket or queue) are left out, so
the shares are shares of *busy* samples. Recorded with ``--gil``, only the
thread holding the GIL is sampled, so the shares split the one core's worth of
Python work that bounds ingest. A stack is assigned to the first stage
whose marker appears in it, checking the most specific stages first.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

STAGES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("counter look-up (InfluxDB query)", ("_last_counter",)),
    ("HTTP write to InfluxDB", ("V1Writer.write", "V2Writer.write")),
    ("line protocol encode", ("lineprotocol.py",)),
    ("acks (PUBACKs queued and sent)", ("Connection.ack", "MqttInput._flush")),
    ("JSON decode", ("decode_json", "json/decoder.py", "json/__init__.py")),
    ("pydantic validation", ("pydantic", "model_validate", "farm_contract/payloads.py")),
    ("topic parse", ("farm_contract/topics.py",)),
    ("telemetry fast path (bytes → line)", ("Enricher.telemetry_line",)),
    ("enrich (registry, ranges, points)",
     ("ingest_service/pipeline/enrich.py", "farm_contract/catalog.py")),
    ("hand-over to the pipeline", ("Pipeline.submit",)),
    ("pipeline glue (batching, outcomes, stats)", ("ingest_service/pipeline/batcher.py",)),
    ("MQTT input (socket reads, splitting packets)", ("ingest_service/inputs/",)),
    ("HTTP API / uvicorn", ("uvicorn", "fastapi", "starlette", "anyio", "asyncio")),
    ("indicator publisher", ("ingest_service/indicators/engine.py",)),
)
"""Stages in priority order: a stage claims every stack its markers appear in, callees
included (an ack's socket write counts as ack, not as paho's loop)."""


def classify(stack: str) -> str:
    for stage, markers in STAGES:
        if any(marker in stack for marker in markers):
            return stage
    return "other"


def summarize(trace: Path) -> dict[str, Any]:
    """Share of busy samples per stage and per thread."""
    stages: Counter[str] = Counter()
    threads: Counter[str] = Counter()
    total = 0
    if not trace.exists():
        return {"samples": 0, "stages": {}, "threads": {}}
    for raw in trace.read_text(errors="replace").splitlines():
        stack, _, count_text = raw.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        total += count
        stages[classify(stack)] += count
        thread = stack.split(";", 1)[0]
        threads[thread.split(" ")[0] + " " + thread.split('"')[1] if '"' in thread else thread] += (
            count
        )

    def shares(counter: Counter[str]) -> dict[str, float]:
        return {k: round(100 * v / total, 1) for k, v in counter.most_common()} if total else {}

    return {"samples": total, "stages": shares(stages), "threads": shares(threads)}


def print_summary(summary: dict[str, Any], console: Console) -> None:
    grid = Table(title=f"ingest profile: share of {summary['samples']:,} busy py-spy samples")
    grid.add_column("stage")
    grid.add_column("%", justify="right")
    for stage, share in summary["stages"].items():
        grid.add_row(stage, f"{share:.1f}")
    console.print(grid)
