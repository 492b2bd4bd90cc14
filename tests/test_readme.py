"""The README is the script: every command of its ```sh blocks runs, as written.

Issue 14: followed literally, the README's commands fought the running demo, missed
its ports and needed settings it never named. Here each block runs in a shell at the
repository's root, against a demo started for the test (``devstack.demo`` in a
folder of its own: ``run/demo/`` in a command means that folder), or, after a
``<!-- readme-test: without-demo -->`` marker, against a plain anonymous Mosquitto
(a broker of the reader's own) with no demo at all; a ``template`` block (placeholder
servers) is not run (:data:`TEMPLATE_REASON`). A command must exit 0;
long-running ones (``make demo``, the edge agent, the Modbus simulator, ``make
bench``) are started, must print what shows they came up, and are stopped. What
is not run is in :data:`NOT_RUN`, each with its reason, and every entry must still
match a command of the README.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from devstack.servers import Mosquitto

pytestmark = [pytest.mark.slow, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKER = re.compile(r"<!-- readme-test: ([a-z-]+) -->")

NOT_RUN: dict[str, str] = {
    r"^make test(\s+#.*)?$": "the whole suite with lint and typecheck: what CI runs, and it "
    "contains this test, which would then run itself",
    r"^make test-fast\b": "pytest -m 'not slow', CI's quick pass: minutes of the suite's own "
    "tests, none of which this file adds to",
}
"""Commands not run, by pattern, each with its reason."""

TEMPLATE_REASON = (
    "a ``<!-- readme-test: template -->`` block: placeholder hosts and secrets for the "
    "reader's own servers (broker.example); the block before it runs the same service "
    "commands against the demo"
)


@dataclass(frozen=True)
class LongRunning:
    """A command that runs until stopped: it must print ``ready`` within ``timeout``."""

    pattern: str
    ready: str
    timeout: float
    keep: bool = False
    """Left running until the block ends (a server the next command uses)."""
    never: str | None = None
    """Output that must not appear while it runs."""


LONG_RUNNING = [
    LongRunning(r"^make demo\b", r"Paste into another shell", 900),
    LongRunning(r"-m edge --config", r": connected$", 60,
                never=r"connected elsewhere|disconnected"),
    LongRunning(r"-m simulators modbus\b", r"modbus simulator on", 60, keep=True),
    LongRunning(r"^make bench\b", r"preparing [\d,]+ payloads", 600),
]


@dataclass
class Block:
    line: int
    mode: str
    commands: list[str] = field(default_factory=list)


def readme_blocks() -> list[Block]:
    """Every ```sh block (indented ones too), its commands with continuations joined."""
    blocks: list[Block] = []
    mode = "demo"
    lines = README.read_text(encoding="utf-8").splitlines()
    index = 0
    while index < len(lines):
        if found := MARKER.search(lines[index]):
            mode = found.group(1)
        if lines[index].strip() == "```sh":
            start, body = index + 1, []
            index += 1
            while lines[index].strip() != "```":
                body.append(lines[index])
                index += 1
            text = textwrap.dedent("\n".join(body)).replace("\\\n", " ")
            commands = [c for c in text.splitlines()
                        if c.strip() and not c.lstrip().startswith("#")]
            blocks.append(Block(start, mode, [re.sub(r"\s+", " ", c).strip() for c in commands]))
            mode = "demo"
        index += 1
    return blocks


def not_run_reason(command: str) -> str | None:
    return next((reason for pattern, reason in NOT_RUN.items() if re.search(pattern, command)),
                None)


def long_running(command: str) -> LongRunning | None:
    return next((spec for spec in LONG_RUNNING if re.search(spec.pattern, command)), None)


def clean_env(**extra: str) -> dict[str, str]:
    """This shell's environment without FARM_* settings: only what the README sets."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("FARM_") and k != "SIMULATOR_DEVICE_SECRET"}
    return {**env, **extra}


@dataclass
class Demo:
    run_dir: Path
    output: Path


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    run_dir = tmp_path_factory.mktemp("demo")
    output = run_dir.parent / f"{run_dir.name}.out"
    with output.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "devstack.demo", "--duration", "1800",
             "--run-dir", str(run_dir)],
            cwd=ROOT, env=clean_env(COLUMNS="200"), stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_output(output, r"Ingest service and API up", 180, process)
        assert (run_dir / "env.sh").exists()
        yield Demo(run_dir, output)
    finally:
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=120)
    text = output.read_text(errors="replace")
    assert code == 0, text[-3000:]
    assert "Stopped: simulators, ingest, InfluxDB and Mosquitto" in text
    assert not (run_dir / "env.sh").exists(), "a stopped demo leaves no stale env.sh"


def wait_output(path: Path, pattern: str, timeout: float,
                process: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace") if path.exists() else ""
        if re.search(pattern, text, re.MULTILINE):
            return text
        if process.poll() is not None:
            break
        time.sleep(0.5)
    text = path.read_text(errors="replace") if path.exists() else ""
    raise AssertionError(f"no {pattern!r} within {timeout:g}s "
                         f"(exit {process.poll()}):\n{text[-3000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def run_block(block: Block, env: dict[str, str], run_dir: Path | None, logs: Path) -> None:
    """Run the block's commands in order; sourcing and exports carry to the next ones."""
    prelude: list[str] = []
    kept: list[subprocess.Popen[bytes]] = []
    try:
        for number, written in enumerate(block.commands):
            if not_run_reason(written):
                continue
            command = written.replace("run/demo/", f"{run_dir}/") if run_dir else written
            script = "set -e\n" + "".join(f"{line}\n" for line in prelude)
            if re.match(r"^(\.|export) ", command):
                prelude.append(command)
            spec = long_running(command)
            if spec is None:
                done = subprocess.run(["bash", "-c", script + command], cwd=ROOT, env=env,
                                      capture_output=True, text=True, timeout=900)
                assert done.returncode == 0, (
                    f"README line {block.line}: {written}\nexit {done.returncode}\n"
                    f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
                continue
            log = logs / f"block{block.line}-{number}.log"
            with log.open("wb") as out:
                process = subprocess.Popen(["bash", "-c", script + "exec " + command],
                                           cwd=ROOT, env=env, stdout=out,
                                           stderr=subprocess.STDOUT, start_new_session=True)
            try:
                text = wait_output(log, spec.ready, spec.timeout, process)
                if spec.never:
                    time.sleep(5)  # long enough for a clash to show
                    text = log.read_text(errors="replace")
                    assert not re.search(spec.never, text), f"{written}:\n{text[-3000:]}"
            finally:
                if spec.keep:
                    kept.append(process)
                else:
                    stop(process)
    finally:
        for process in kept:
            stop(process)


DEMO_BLOCKS = [b for b in readme_blocks() if b.mode == "demo"]
OTHER_BLOCKS = [b for b in readme_blocks() if b.mode == "without-demo"]


def test_every_block_has_a_known_mode() -> None:
    assert {b.mode for b in readme_blocks()} <= {"demo", "without-demo", "template"}
    assert DEMO_BLOCKS and OTHER_BLOCKS


def test_every_not_run_entry_still_matches_a_command() -> None:
    commands = [c for b in readme_blocks() for c in b.commands]
    stale = [p for p in NOT_RUN if not any(re.search(p, c) for c in commands)]
    assert not stale, f"NOT_RUN entries that match no README command: {stale}"


def test_no_command_hard_codes_a_demo_port() -> None:
    commands = [c for b in readme_blocks() if b.mode != "template" for c in b.commands
                if not not_run_reason(c)]
    assert not [c for c in commands if re.search(r"(-p |:)(1883|8000|8086)\b", c)]


@pytest.mark.parametrize("block", DEMO_BLOCKS, ids=lambda b: f"line{b.line}")
def test_block_with_the_demo_running(block: Block, demo: Demo, tmp_path: Path) -> None:
    run_block(block, clean_env(), demo.run_dir, tmp_path)


@pytest.mark.parametrize("block", OTHER_BLOCKS, ids=lambda b: f"line{b.line}")
def test_block_without_the_demo(block: Block, tmp_path: Path) -> None:
    with Mosquitto(tmp_path / "broker") as broker:  # a broker of one's own, anonymous
        run_block(block, clean_env(FARM_MQTT_PORT=str(broker.port)), None, tmp_path)
