"""The daemon as systemd sees it (READY, WATCHDOG, STOPPING over a real notify socket; SIGTERM
exits 0 even while the server is unreachable) and its start-up exit codes."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import tomli_w

from fedllm_client.cli import main

from .conftest import tiny_settings
from .federation import free_port


def _write_config(tmp_path: Path, **extra: object) -> Path:
    settings = tiny_settings(tmp_path / "state", server={"port": free_port()}, **extra)
    path = tmp_path / "client.toml"
    path.write_text(tomli_w.dumps(settings.model_dump(mode="json", exclude_none=True)))
    return path


class Listener:
    """A notify socket drained by a thread, as systemd does (a full socket would block)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.seen: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                self.seen.append(self.sock.recv(4096).decode())

    def wait_for(self, text: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(text in s for s in list(self.seen)):
                return True
            time.sleep(0.05)
        return False

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def test_systemd_ready_watchdog_and_clean_stop_while_server_is_away(tmp_path: Path) -> None:
    config = _write_config(tmp_path)  # nothing listens on its port: the client keeps retrying
    listener = Listener(tmp_path / "notify.sock")
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock"), "WATCHDOG_USEC": "200000"}
    argv = [sys.executable, "-m", "fedllm_client.cli", "--config", str(config)]
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.DEVNULL)
    try:
        watchdog = listener.wait_for("WATCHDOG=1", 90)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
        stopping = listener.wait_for("STOPPING=1", 5)
    finally:
        proc.kill()
        listener.close()
    assert any(s.startswith("READY=1") for s in listener.seen)
    assert (code, watchdog, stopping) == (0, True, True)


def test_missing_certificate_exits_77(tmp_path: Path) -> None:
    missing = tmp_path / "absent"
    tls = {"ca": missing / "ca.crt", "cert": missing / "c.crt", "key": missing / "c.key"}
    config = _write_config(tmp_path, insecure=False, tls=tls)
    assert main(["--config", str(config)]) == 77
