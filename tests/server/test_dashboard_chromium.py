"""The dashboard in a real headless Chromium against a real daemon mid-federation.

Chromium (Debian package `chromium`; `.ci/run` installs it) loads GET / of the `[metrics]`
endpoint while two scripted clients run FedAvg rounds: the DOM it dumps after the page's
script fetched /status must show the version, both clients and the accuracy chart, and its
screenshot must be a real rendering (not one flat colour).
"""

from __future__ import annotations

import asyncio
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fedserver_testkit import ScriptedClient, tiny_settings_dict
from PIL import Image

from fedllm_server.daemon import start
from fedllm_server.evaluation import CentralModel
from fedllm_server.observe.metrics import ServerObserver
from fedllm_server.settings import ServerSettings

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CLIENTS = ("client-1", "client-2")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium package")


async def _chromium(url: str, profile: Path, *args: str) -> bytes:
    assert CHROMIUM is not None
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        f"--user-data-dir={profile}",
        "--window-size=1000,900",
        "--virtual-time-budget=8000",  # lets the page's fetch of /status finish and render
        *args,
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0
    return out


async def _view_dashboard(tmp: Path) -> tuple[str, Path, int]:
    cfg = tiny_settings_dict(
        tmp / "state",
        None,
        {"name": "fedavg"},
        rounds={"min_clients": 2, "local_steps": 1, "deadline_s": 10.0},
        metrics={"enabled": True, "port": 0},
    )
    settings = ServerSettings.model_validate(cfg)
    running = await start(settings, CentralModel(settings), install_signals=False)
    assert running.endpoint is not None
    observer = next(
        listener.__self__  # type: ignore[attr-defined]
        for listener in running.state.metrics.listeners
        if isinstance(listener.__self__, ServerObserver)  # type: ignore[attr-defined]
    )
    clients = [
        ScriptedClient(name, "127.0.0.1", running.port, None, running.state.fingerprint, seed=i)
        for i, name in enumerate(CLIENTS)
    ]
    for client in clients:
        await client.connect()
    serving = [asyncio.create_task(c.serve()) for c in clients]
    for _ in range(600):  # bounded: 60 s at most
        if len(observer.evaluations) >= 2:
            break
        await asyncio.sleep(0.1)
    url = f"http://127.0.0.1:{running.endpoint.port}/"
    try:
        dom = (await _chromium(url, tmp / "profile-dom", "--dump-dom")).decode()
        shot = tmp / "dashboard.png"
        await _chromium(url, tmp / "profile-shot", f"--screenshot={shot}")
        served = running.state.engine.version
    finally:
        running.state.request_stop("test over")
        await asyncio.wait_for(running.wait(), 60)
        for task in serving:
            task.cancel()
        await asyncio.gather(*serving, return_exceptions=True)
    return dom, shot, served


@pytest.fixture(scope="module")
def viewed(tmp_path_factory: pytest.TempPathFactory) -> Any:
    dom, shot, served = asyncio.run(_view_dashboard(tmp_path_factory.mktemp("dashboard")))
    return dom, shot, served


def test_the_dom_shows_version_clients_and_accuracy(viewed: Any) -> None:
    dom, _, served = viewed
    version = re.search(r'id="version">(\d+)<', dom)
    assert version is not None and 2 <= int(version.group(1)) <= served
    rows = re.findall(r'<tr class="client"><td>([^<]+)</td><td>connected</td>', dom)
    assert rows == list(CLIENTS)
    assert dom.count('class="acc-point"') >= 2
    assert dom.count('class="upload-mark"') >= 4
    assert re.search(r'id="accuracy">[01]\.\d{4}<', dom)
    assert 'id="error"></span>' in dom  # the fetch of /status worked


def test_the_screenshot_is_a_real_rendering(viewed: Any) -> None:
    pixels = np.asarray(Image.open(viewed[1]).convert("RGB"))
    assert pixels.shape[:2] == (900, 1000)
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 20  # text, cards, chart lines: far more than a blank page's one
    blue = np.all(np.abs(pixels.astype(int) - (0x1A, 0x5F, 0xB4)) < 40, axis=-1)
    assert blue.sum() > 50  # the figures and the accuracy line are drawn in #1a5fb4
