"""Writing generated files (dashboards, map layers) into a folder.

Each file's text is rendered deterministically, so the committed copies can be compared
with a fresh generation (tests/test_dashboards.py).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any


def write_files(out_dir: Path, builds: Mapping[str, Callable[[], Any]],
                render: Callable[[Any], str]) -> list[Path]:
    """Write ``render(build())`` for every named build into ``out_dir``; the files written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, build in builds.items():
        path = out_dir / name
        path.write_text(render(build()), encoding="utf-8")
        written.append(path)
    return written
