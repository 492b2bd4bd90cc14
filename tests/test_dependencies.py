"""Every runtime dependency pinned in pyproject.toml does a job: the code imports it.

pandas was pinned for years after the code stopped importing it (issue 11); this
fails the day another dependency goes the same way.
"""

from __future__ import annotations

import ast
import re
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

USED_WITHOUT_IMPORT = {
    "pyserial": "pymodbus imports it (as `serial`) for ModbusSerialClient, the edge's RTU link",
}
"""Dependencies imported by a library on our behalf, each with the reason."""


PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def runtime_dependencies() -> list[str]:
    specs = PYPROJECT["project"]["dependencies"]
    return [re.split(r"[=<>!~\[; ]", spec, maxsplit=1)[0].lower() for spec in specs]


def imported_modules() -> set[str]:
    """Top-level modules imported anywhere in the packages mypy checks (all we ship)."""
    modules: set[str] = set()
    for package in PYPROJECT["tool"]["mypy"]["files"]:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    modules |= {alias.name.split(".")[0] for alias in node.names}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules.add(node.module.split(".")[0])
    return modules


def test_every_runtime_dependency_is_imported() -> None:
    provides: dict[str, set[str]] = {}
    for module, dists in packages_distributions().items():
        for dist in dists:
            provides.setdefault(dist.lower().replace("_", "-"), set()).add(module)
    imported = imported_modules()
    unused = [
        name for name in runtime_dependencies()
        if name not in USED_WITHOUT_IMPORT and not provides.get(name, set()) & imported
    ]
    assert unused == [], "pinned in pyproject.toml but imported nowhere"
