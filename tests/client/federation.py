"""A real loopback federation for end-to-end tests: the server daemon and client daemons as
processes (``python -m fedllm_server.cli`` / ``python -m fedllm_client.cli``) over mutual TLS.

Configs are written as TOML from dicts, exactly as an operator would; processes log to files in
the run directory, so a failing test can show the daemons' last lines.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from fedllm_client.metrics_log import read_metrics
from fedllm_core.certs import PkiPaths

from .conftest import TINY_DATA, TINY_MODEL

SHARED_DATA = {**TINY_DATA, "num_partitions": 3}

# A GSFS strategy section for the three-client federations of the end-to-end tests.
GSFS_OF_THREE = {
    "name": "gsfs",
    "quorum_fraction": 0.6,
    "federation_size_source": "explicit",
    "federation_size": 3,
    "max_wait_s": 5.0,
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    return env


@dataclass
class Federation:
    root: Path
    pki: PkiPaths
    strategy: dict[str, Any]
    port: int = field(default_factory=free_port)
    server_extra: dict[str, Any] = field(default_factory=dict)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def server_config(self) -> Path:
        fed = self.pki
        cfg: dict[str, Any] = {
            "host": "127.0.0.1",
            "port": self.port,
            "state_dir": str(self.root / "server-state"),
            "strategy": self.strategy,
            "model": TINY_MODEL,
            "data": SHARED_DATA,
            "evaluation": {"every_versions": 1, "max_samples": 40, "batch_size": 40},
            "heartbeat_interval_s": 1.0,
            "idle_timeout_s": 10.0,
            "tls": {
                "ca": str(fed.ca_cert),
                "cert": str(fed.server_cert),
                "key": str(fed.server_key),
            },
            "logging": {"level": "info", "json_lines": True},
            **self.server_extra,
        }
        path = self.root / "server.toml"
        path.write_text(tomli_w.dumps(cfg))
        return path

    def client_config(self, name: str, index: int, extra: dict[str, Any]) -> Path:
        paths = self.pki.clients[name]
        cfg: dict[str, Any] = {
            "client_name": name,
            "state_dir": str(self.root / f"{name}-state"),
            "server": {"port": self.port, "server_name": "localhost"},
            "tls": {"ca": str(self.pki.ca_cert), "cert": str(paths.cert), "key": str(paths.key)},
            "model": TINY_MODEL,
            "data": {**SHARED_DATA, "partition_index": index},
            "train": {"batch_size": 8, "lr": 5e-3},
            "validation_max_samples": 48,
            "final_eval": {"max_samples": 40},
            # a client started before its server joins within 0.2 s of it listening
            "backoff": {"initial_s": 0.1, "max_s": 0.2},
            **extra,
        }
        path = self.root / f"{name}.toml"
        path.write_text(tomli_w.dumps(cfg))
        return path

    def _spawn(self, name: str, module: str, config: Path) -> None:
        log = (self.root / f"{name}.log").open("ab")
        argv = [sys.executable, "-m", module, "--config", str(config)]
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=log, env=_env(), cwd=self.root)

    def start_server(self, timeout: float = 90.0) -> None:
        """Start (or restart, same config and state) and wait until it logs that it listens;
        a probe connection would show up as a refused peer in the server's log."""
        config = self.root / "server.toml"
        seen = self._listening_count()
        self._spawn(
            "server", "fedllm_server.cli", config if config.exists() else self.server_config()
        )
        self.wait_for(lambda: self._listening_count() > seen, timeout, "server")

    def _listening_count(self) -> int:
        return self.tail("server", 100_000).count("server_listening")

    def wait_for(self, condition: Any, timeout: float, name: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if self.procs[name].poll() is not None:
                raise AssertionError(f"{name} exited early:\n{self.tail(name)}")
            if time.monotonic() > deadline:
                raise AssertionError(f"{name}: condition not met in {timeout}s:\n{self.tail(name)}")
            time.sleep(0.1)

    def start_client(self, name: str, index: int, **extra: Any) -> None:
        self._spawn(name, "fedllm_client.cli", self.client_config(name, index, extra))

    def wait_connecting(self, names: Any, timeout: float = 120.0) -> None:
        """Until every client is up and trying to connect: started before the server, a slow
        client (model loading on a loaded machine) cannot miss a short federation."""
        for name in names:
            self.wait_for(lambda n=name: '"connecting"' in self.tail(n, 100_000), timeout, name)

    def wait(self, name: str, timeout: float = 150.0) -> int:
        try:
            return self.procs[name].wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"{name} did not finish:\n{self.tail(name)}") from None

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        self.procs[name].send_signal(sig)
        self.procs[name].wait(timeout=30)

    def metrics(self, name: str) -> list[dict[str, Any]]:
        path = self.root / f"{name}-state" / "metrics.jsonl"
        return read_metrics(path) if path.exists() else []

    def events(self, name: str, event: str) -> list[dict[str, Any]]:
        return [r for r in self.metrics(name) if r["kind"] == event]

    def tail(self, name: str, lines: int = 30) -> str:
        path = self.root / f"{name}.log"
        return (
            "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
            if path.exists()
            else ""
        )

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=30)
