"""A poisoned client daemon in a real federation, with and without a robust defence.

Three real client daemons (the synthetic trainer: every client uploads the same seeded update
Δ) and the real server daemon, in-process on loopback TCP, FedAvg with equal weights, one
round. One client runs with `[attack] kind = "signflip", factor = 10`. Without a defence the
mean is (Δ + Δ − 10Δ)/3 = −8/3·Δ: the attacker reverses the step. With the coordinate median
it is Δ. The wait for version 1 is bounded by a timeout; then every daemon is told to stop.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedllm_client.daemon import ClientDaemon
from fedllm_client.settings import SyntheticSettings
from fedllm_client.synthetic_model import SyntheticModel
from fedllm_server.daemon import start
from fedllm_server.evaluation import CentralModel
from fedllm_server.settings import ServerSettings

from .conftest import TINY_DATA, TINY_MODEL, tiny_settings

DATA = {**TINY_DATA, "num_partitions": 3}


def _server(tmp: Path, rule: str) -> ServerSettings:
    return ServerSettings.model_validate(
        {
            "host": "127.0.0.1",
            "port": 0,
            "insecure": True,
            "insecure_names_per_address": 3,  # the three clients share 127.0.0.1
            "state_dir": str(tmp / "server"),
            "strategy": {"name": "fedavg", "sample_weighting": False},
            "robust": {"rule": rule},
            "rounds": {"min_clients": 3, "local_steps": 1, "deadline_s": 60.0},
            "model": TINY_MODEL,
            "data": DATA,
            "evaluation": {"every_versions": 0},
            "logging": {"json_lines": True},
        }
    )


def _client(tmp: Path, index: int, port: int, **extra: Any) -> ClientDaemon:
    settings = tiny_settings(
        tmp / f"client-{index}",
        client_name=f"client-{index}",
        server={"port": port},
        data={**DATA, "partition_index": index},
        trainer="synthetic",
        max_total_steps=4,
        final_eval={"enabled": False},
        backoff={"initial_s": 0.1, "max_s": 0.2},
        **extra,
    )
    return ClientDaemon(settings)


def _step(tmp: Path, rule: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(θ^1 − θ^0, the honest clients' Δ)."""
    settings = _server(tmp, rule)

    async def run() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        running = await start(settings, CentralModel(settings), install_signals=False)
        initial = {k: v.copy() for k, v in running.state.engine.global_tensors.items()}
        attacker = {"attack": {"kind": "signflip", "factor": 10.0}}
        clients = [_client(tmp, 0, running.port, **attacker)]
        clients += [_client(tmp, i, running.port) for i in (1, 2)]
        tasks = [asyncio.create_task(c.run()) for c in clients]
        try:
            async with asyncio.timeout(120):
                while running.state.engine.version < 1:  # ends at the round or the timeout
                    await asyncio.sleep(0.05)
        finally:
            for client in clients:
                client.stop.set()
            running.state.request_stop("test done")
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 60)
            await asyncio.wait_for(running.wait(), 60)
        final = running.state.engine.global_tensors
        honest = SyntheticModel(SyntheticSettings(), "", 1)
        honest.set_state(initial)  # draws the seeded update with the model's names and shapes
        return {k: final[k] - initial[k] for k in initial}, honest.delta(initial)

    return asyncio.run(run())


def _flat(tensors: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([tensors[k].reshape(-1) for k in sorted(tensors)])


@pytest.mark.parametrize(("rule", "gain"), [("none", -8 / 3), ("median", 1.0)])
def test_a_sign_flipping_client_against_the_defence(tmp_path: Path, rule: str, gain: float) -> None:
    step, honest = _step(tmp_path, rule)
    np.testing.assert_allclose(_flat(step), gain * _flat(honest), rtol=1e-3, atol=1e-7)
