"""`fedllm experiment` as a user runs it, when things go wrong: a daemon dies, the user hits Ctrl-C.

The command runs as a subprocess; its daemons are found among its child processes by their
config file names. A killed client must be reported (name, signal, last log lines) and the run
must end with every daemon stopped instead of hanging.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import tomli_w

pytestmark = pytest.mark.slow

SETTINGS = {
    "clients": 2,
    "rounds": 50,  # long enough that the run is still going when we interfere
    "max_rows": 400,
    "local_steps": 4,
    "val_samples": 16,
    "model": "bert",
    "strategies": ["fedavg"],
    "run_timeout_s": 240,
    "shared": {"model": {"random_init": True}},
}


def _start(tmp_path: Path) -> subprocess.Popen[str]:
    config = tmp_path / "tiny.toml"
    config.write_text(tomli_w.dumps(SETTINGS))
    argv = [sys.executable, "-m", "fedllm_core.cli", "experiment", "--config", str(config)]
    return subprocess.Popen(
        [*argv, "--out", str(tmp_path / "out")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _stopped(processes: list[psutil.Process]) -> bool:
    return not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in processes)


def _training_daemon(parent: subprocess.Popen[str], out_dir: Path, name: str) -> psutil.Process:
    """The daemon started with ``--config <name>.toml``, once it has uploaded an update."""
    metrics = out_dir / "fedavg" / f"{name}-metrics.jsonl"
    deadline = time.monotonic() + 300  # generous: CI machines may be busy
    while time.monotonic() < deadline:
        if metrics.is_file() and '"upload"' in metrics.read_text():
            return next(p for p in _children(parent) if f"{name}.toml" in p.cmdline())
        if parent.poll() is not None:
            output = parent.stdout.read() if parent.stdout else ""
            raise AssertionError(f"experiment ended before {name} uploaded:\n{output}")
        time.sleep(0.2)
    raise AssertionError(f"{name} never uploaded")


def _children(parent: subprocess.Popen[str]) -> list[psutil.Process]:
    return psutil.Process(parent.pid).children(recursive=True)


def test_a_killed_client_daemon_is_reported_not_waited_for(tmp_path: Path) -> None:
    run = _start(tmp_path)
    victim = _training_daemon(run, tmp_path / "out", "client-1")
    daemons = _children(run)
    victim.send_signal(signal.SIGKILL)
    output, _ = run.communicate(timeout=120)
    assert run.returncode == 1, output
    assert "client-1 died (signal 9)" in output
    assert _stopped(daemons)


def test_the_failure_is_kept_in_results_json(tmp_path: Path) -> None:
    run = _start(tmp_path)
    _training_daemon(run, tmp_path / "out", "client-2").send_signal(signal.SIGKILL)
    run.communicate(timeout=120)
    doc = json.loads((tmp_path / "out" / "results.json").read_text())
    assert (doc["failures"][0]["daemon"], doc["runs"]) == ("client-2", [])


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupt_stops_every_daemon_and_exits_130(tmp_path: Path, sig: int) -> None:
    run = _start(tmp_path)
    _training_daemon(run, tmp_path / "out", "client-1")
    daemons = _children(run)
    run.send_signal(sig)
    run.communicate(timeout=120)
    assert run.returncode == 130
    assert _stopped(daemons)
