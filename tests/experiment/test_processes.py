"""Child daemon supervision: crash reports with log lines, SIGTERM then SIGKILL, CPU seconds."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

import pytest

from fedllm_experiment.processes import Daemon, DaemonCrashed, Fleet


def _daemon(tmp_path: Path, name: str, code: str) -> Daemon:
    return Daemon(name, [sys.executable, "-c", code], tmp_path / f"{name}.log")


SLEEPER = "import time; print('up', flush=True); time.sleep(60)"


def test_a_client_that_dies_is_reported_with_its_last_log_lines(tmp_path: Path) -> None:
    crasher = _daemon(tmp_path, "client-1", "print('loading model'); raise SystemExit(3)")
    fleet = Fleet(_daemon(tmp_path, "server", SLEEPER), [crasher])
    for daemon in fleet.all:
        daemon.start()
    crasher.wait(30)
    with pytest.raises(DaemonCrashed, match="client-1 died \\(exit code 3\\)") as info:
        fleet.check_clients()
    fleet.stop_all(grace_s=5)
    assert "loading model" in info.value.log_tail


def test_a_killed_client_is_reported_by_signal(tmp_path: Path) -> None:
    client = _daemon(tmp_path, "client-1", SLEEPER)
    fleet = Fleet(_daemon(tmp_path, "server", SLEEPER), [client])
    for daemon in fleet.all:
        daemon.start()
    client.signal(signal.SIGKILL)
    client.wait(30)
    with pytest.raises(DaemonCrashed, match="signal 9"):
        fleet.check_clients()
    fleet.stop_all(grace_s=5)


def test_stop_escalates_to_sigkill_when_sigterm_is_ignored(tmp_path: Path) -> None:
    stubborn = _daemon(
        tmp_path,
        "server",
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ready', flush=True); time.sleep(60)",
    )
    stubborn.start()
    while "ready" not in (tmp_path / "server.log").read_text():
        stubborn.wait(0.05)
    assert stubborn.stop(grace_s=0.5) == -signal.SIGKILL


def test_cpu_seconds_of_a_busy_child_are_counted(tmp_path: Path) -> None:
    busy = _daemon(tmp_path, "server", "x = sum(i * i for i in range(3_000_000))")
    busy.start()
    busy.wait(60)
    assert busy.returncode == 0 and busy.cpu_s > 0
