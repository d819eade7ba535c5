"""Local DP on the server: the engine accounts one (σ, 1) event per accepted upload, reports ε
in each aggregation record, refuses an upload past the budget, and a restart counts every
accepted upload exactly once (the ones held at the checkpoint are in its ledgers already)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fedserver_testkit import small_engine

from fedllm_proto.messages import RejectCode, TriggerReason, Update
from fedllm_server.engine import Engine
from fedllm_server.privacy import PrivacySettings, compose, epsilon
from fedllm_server.settings import ServerSettings
from fedllm_server.strategies import FedAvgSettings
from fedllm_server.strategies.fedavg import FedAvg
from fedllm_server.validation import Sender

FP = "fp"
SIGMA = 2.0
LOCAL = PrivacySettings(mode="local", clip_norm=1.0, noise_multiplier=SIGMA)
DURABLE = {"next_round": 1, "enrolled": ["a", "b"]}


def _engine(tmp_path: Path, privacy: PrivacySettings = LOCAL) -> Engine:
    return small_engine(tmp_path, FedAvg(FedAvgSettings()), privacy, FP)


def _send(engine: Engine, cid: str, uid: str) -> Any:
    w = np.array([0.3, 0.4], np.float32)
    update = Update(uid, engine.version, 0, 1, TriggerReason.ROUND, {}, {"w": w})
    return engine.accept(Sender(cid, FP), update, 0.0, wall=1000.0)


def eps(uploads: int) -> float:
    return epsilon(compose((), SIGMA, 1.0, uploads), 1e-6)


def _clients(engine: Engine) -> dict[str, float]:
    assert engine.accountant is not None
    return engine.accountant.report()["clients"]


def test_each_accepted_upload_spends_epsilon_for_its_client(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    for uid in ("a1", "a2"):
        _send(engine, "a", uid)
    _send(engine, "b", "b1")
    assert _clients(engine) == pytest.approx({"a": eps(2), "b": eps(1)})


def test_the_aggregation_record_carries_the_local_accountant(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    _send(engine, "a", "a1")
    _send(engine, "b", "b1")
    privacy = engine.aggregate({"a1": 1, "b1": 1}, DURABLE, 1.0).result.metrics.privacy
    assert (privacy["mode"], privacy["accountant"]["federation_epsilon"]) == (
        "local",
        pytest.approx(eps(1)),
    )


def test_local_mode_leaves_the_mean_unnoised(tmp_path: Path) -> None:
    # the clients noised their uploads; the server's FedAvg is plain post-processing
    engine = _engine(tmp_path)
    _send(engine, "a", "a1")
    engine.aggregate({"a1": 1}, DURABLE, 1.0)
    assert engine.global_tensors["w"].tolist() == pytest.approx([0.3, 0.4])


def test_an_upload_past_the_budget_is_refused_and_not_counted(tmp_path: Path) -> None:
    engine = _engine(tmp_path, LOCAL.model_copy(update={"epsilon_budget": (eps(1) + eps(2)) / 2}))
    _send(engine, "a", "a1")
    verdict = _send(engine, "a", "a2")
    assert (verdict.code, verdict.blame, list(engine.held), _clients(engine)) == (
        RejectCode.UNEXPECTED,
        False,
        ["a1"],
        pytest.approx({"a": eps(1)}),
    )


def test_a_restart_counts_uploads_since_the_checkpoint_once(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    _send(engine, "a", "a1")
    engine.aggregate({"a1": 1}, DURABLE, 1.0)  # checkpoint: a has spent one upload
    _send(engine, "a", "a2")  # in the pool log only
    engine.close()
    assert _clients(_engine(tmp_path)) == pytest.approx({"a": eps(2)})


def test_a_restart_counts_an_upload_held_over_the_checkpoint_once(tmp_path: Path) -> None:
    engine = _engine(tmp_path)
    _send(engine, "a", "a1")
    _send(engine, "b", "b1")
    engine.aggregate({"a1": 1}, DURABLE, 1.0)  # b1 stays held: in the ledgers and logged again
    engine.close()
    assert _clients(_engine(tmp_path)) == pytest.approx({"a": eps(1), "b": eps(1)})


def test_local_mode_needs_no_expected_weight() -> None:
    settings = ServerSettings.model_validate({"insecure": True, "privacy": {"mode": "local"}})
    assert settings.privacy.local_dp() is not None
