"""The client's `[metrics]` endpoint: a real Learner's records move the counters scraped over
HTTP, and the daemon process serves /metrics while it waits for an absent server."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import tomli_w
from prometheus_client.parser import text_string_to_metric_families

from fedllm_client import observe
from fedllm_client.learner import Learner

from .conftest import tiny_settings
from .federation import free_port

EAGER = {"warmup_steps": 0, "min_steps_between_uploads": 0, "check_every": 5, "perf_delta": 0.0}


def _scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        s.name + "".join(f"{{{k}={v}}}" for k, v in sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_training_and_an_upload_move_the_client_metrics(tmp_path: Path) -> None:
    settings = tiny_settings(
        tmp_path / "state",
        max_total_steps=12,
        metrics_step_every=4,
        trigger=EAGER,
        metrics={"enabled": True, "port": 0},
    )
    learner = Learner.open(settings)
    learner.apply_global(0, learner.model.state(), gsfs=True)

    async def scenario() -> tuple[dict[str, float], dict[str, float]]:
        endpoint = await observe.attach(learner)
        assert endpoint is not None
        try:
            before = await asyncio.to_thread(_scrape, endpoint.port)
            learner.train_chunk(12)
            pending = learner.final_upload()
            assert pending is not None
            learner.uploaded(pending, 1234)
            after = await asyncio.to_thread(_scrape, endpoint.port)
        finally:
            await endpoint.close()
        return before, after

    before, after = asyncio.run(scenario())
    assert before["fedllm_client_training_steps_total"] == 0
    assert after["fedllm_client_training_steps_total"] == 12
    assert after["fedllm_client_step_budget"] == 12
    assert after["fedllm_client_model_version"] == 0
    assert after["fedllm_client_sent_bytes_total"] == 1234
    assert sum(v for k, v in after.items() if k.startswith("fedllm_client_uploads_total")) == 1
    assert after["fedllm_client_training_loss"] > 0


def test_the_daemon_serves_metrics_while_the_server_is_away(tmp_path: Path) -> None:
    port = free_port()
    settings = tiny_settings(
        tmp_path / "state", server={"port": free_port()}, metrics={"enabled": True, "port": port}
    )
    config = tmp_path / "client.toml"
    config.write_text(tomli_w.dumps(settings.model_dump(mode="json", exclude_none=True)))
    argv = [sys.executable, "-m", "fedllm_client.cli", "--config", str(config)]
    proc = subprocess.Popen(argv, stderr=subprocess.DEVNULL)
    scraped: dict[str, float] = {}
    try:
        for _ in range(3000):  # bounded: ~5 min for the model to load on a loaded box
            if proc.poll() is not None:
                break  # exited early: the assertions below say so
            try:
                scraped = _scrape(port)
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    finally:
        proc.kill()
    assert scraped, f"no /metrics answer (client exit code {proc.returncode})"
    assert scraped["fedllm_client_step_budget"] == settings.max_total_steps
    assert scraped["fedllm_client_connections_total"] == 0
    assert code == 0
