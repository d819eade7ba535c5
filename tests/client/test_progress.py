"""The client's STATUS= and training_progress events, through a real Learner and a real
unix datagram NOTIFY_SOCKET bound by the test (as systemd binds it)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from fedllm_client.learner import Learner

from .conftest import tiny_settings

EAGER = {"warmup_steps": 0, "min_steps_between_uploads": 0, "check_every": 5, "perf_delta": 0.0}


def _statuses(sock: socket.socket) -> list[str]:
    seen = []
    for _ in range(10_000):  # bounded: far fewer were sent
        try:
            seen.append(sock.recv(4096).decode())
        except BlockingIOError:
            break
    return [s for s in seen if s.startswith("STATUS=")]


def test_status_follows_training_then_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    learner = Learner.open(tiny_settings(tmp_path / "state", max_total_steps=12, trigger=EAGER))
    learner.apply_global(0, learner.model.state(), gsfs=True)
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(tmp_path / "notify"))
        sock.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "notify"))
        with capture_logs() as events:
            learner.train_chunk(12)
        training = _statuses(sock)
        pending = learner.final_upload()
        assert pending is not None
        learner.uploaded(pending, 100)
        waiting = _statuses(sock)
    assert training[0] == "STATUS=training step 1/12"
    assert training[-1] == "STATUS=training step 12/12"  # the budget's end is always shown
    assert waiting == ["STATUS=waiting for version 1"]
    progress = [e for e in events if e["event"] == "training_progress"]
    assert progress[-1]["step"] == 12  # the budget's end is always logged
    assert progress[0]["step"] == 1 and progress[0]["budget"] == 12
    assert all(isinstance(e["loss_avg"], float) for e in progress)
