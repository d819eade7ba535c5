"""Central DP-FedAvg through the strategy objects and the engine: hand-computed noised means
(a seeded noise source stands in for the CSPRNG), the accountant per aggregation, the budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fedserver_testkit import small_engine
from pydantic import ValidationError

from fedllm_proto.messages import TriggerReason, Update
from fedllm_server.accepted import AcceptedUpdate
from fedllm_server.engine import Engine, PrivacyBudgetRefused
from fedllm_server.privacy import PrivacySettings, SeededSource, SystemRandom, compose, epsilon
from fedllm_server.settings import ServerSettings
from fedllm_server.strategies import (
    FedAvgSettings,
    FedOptSettings,
    GsfsServerSettings,
    StrategyResult,
    aggregate,
)
from fedllm_server.strategies.base import Strategy
from fedllm_server.strategies.fedavg import FedAvg
from fedllm_server.strategies.fedopt import FedOpt, FedOptState
from fedllm_server.strategies.gsfs import Gsfs
from fedllm_server.tensors import l2_norm
from fedllm_server.validation import Sender

SEED = 7
DP = PrivacySettings(mode="central", clip_norm=1.0, noise_multiplier=0.5, expected_weight=2.0)


def f32(*values: float) -> np.ndarray:
    arr = np.array(values, dtype=np.float32)
    arr.flags.writeable = False  # the mechanism must not write a client's array
    return arr


def upd(cid: str, n: int = 1, **tensors: np.ndarray) -> AcceptedUpdate:
    return AcceptedUpdate(cid, f"{cid}-u", 0, 0, n, "round", 0.0, {}, tensors, l2_norm(tensors))


def seeded(strategy: Any) -> Any:
    strategy.combine.source = SeededSource(SEED)
    return strategy


def noise(n: int) -> np.ndarray:
    """The first n normals the seeded source gives, in the model's tensor order."""
    return SeededSource(SEED).standard_normal(n)


def two(n_b: int = 1) -> list[AcceptedUpdate]:
    return [upd("a", w=f32(3, 4)), upd("b", n_b, w=f32(0.6, 0))]  # norms 5 and 0.6


def fedavg(ups: list[AcceptedUpdate], glob: dict[str, np.ndarray]) -> StrategyResult[None]:
    return aggregate(seeded(FedAvg(FedAvgSettings(), None, DP)), glob, ups, None, 1)


def test_the_noised_mean_by_hand() -> None:
    # clip to C = 1: a -> (0.6, 0.8), b as is; sum (1.2, 0.8); + 0.5·1·z; / W_exp = 2
    result = fedavg(two(), {"w": np.zeros(2, np.float32)})
    expected = (np.array([1.2, 0.8]) + 0.5 * noise(2)) / 2
    np.testing.assert_allclose(result.global_tensors["w"], expected, rtol=1e-6)


def test_sample_counts_do_not_weigh_under_dp() -> None:
    glob = {"w": np.zeros(2, np.float32)}
    same = fedavg(two(n_b=1), glob).global_tensors["w"]
    np.testing.assert_array_equal(fedavg(two(n_b=100), glob).global_tensors["w"], same)


def test_the_record_states_the_noise_on_the_mean() -> None:
    mechanism = fedavg(two(), {"w": np.zeros(2, np.float32)}).metrics.privacy["mechanism"]
    assert (mechanism["noise_std"], mechanism["scales"]) == (0.25, {"a": 0.2, "b": 1.0})


def test_gsfs_noises_a_tensor_nobody_sent() -> None:
    # "b" moves by noise alone: η_s · 0.5·z_b / 2 (the noise is drawn for w first, then b)
    glob = {"w": np.zeros(2, np.float32), "b": np.zeros(1, np.float32)}
    strategy = seeded(Gsfs(GsfsServerSettings(server_lr=0.5), None, DP))
    result = aggregate(strategy, glob, two(), None, 1)
    np.testing.assert_allclose(result.global_tensors["b"], 0.5 * 0.5 * noise(3)[2:] / 2, rtol=1e-6)


def test_fedopt_takes_the_noised_mean_as_pseudo_gradient() -> None:
    glob = {"w": np.zeros(2, np.float32)}
    strategy = seeded(FedOpt(FedOptSettings(), None, DP))
    result = aggregate(strategy, glob, two(), FedOptState(), 1)
    delta = (np.array([1.2, 0.8]) + 0.5 * noise(2)) / 2
    step = 0.01 * (0.1 * delta) / (np.sqrt(0.01 * delta**2) + 1e-3)  # adam from zero moments
    np.testing.assert_allclose(result.global_tensors["w"], step, rtol=1e-4)


def test_production_noise_comes_from_the_csprng() -> None:
    assert isinstance(FedAvg(FedAvgSettings(), None, DP).combine.source, SystemRandom)


# --- settings -----------------------------------------------------------------------------


def test_privacy_is_off_by_default() -> None:
    assert ServerSettings.model_validate({"insecure": True}).privacy.mode == "off"


def test_central_mode_needs_a_fixed_denominator() -> None:
    with pytest.raises(ValidationError, match="expected_weight"):
        PrivacySettings(mode="central")


def test_central_mode_refuses_a_robust_rule() -> None:
    with pytest.raises(ValidationError, match=r"robust\.rule"):
        ServerSettings.model_validate(
            {"insecure": True, "privacy": DP.model_dump(), "robust": {"rule": "median"}}
        )


# --- the engine's accountant --------------------------------------------------------------

FP = "fp"
ENROLLED = {"next_round": 1, "enrolled": ["a", "b", "idle"]}


def _engine(tmp_path: Path, privacy: PrivacySettings, strategy: Strategy | None = None) -> Engine:
    chosen = strategy or seeded(FedAvg(FedAvgSettings(), None, privacy))
    return small_engine(tmp_path, chosen, privacy, FP)


def _round(engine: Engine, tag: str) -> Any:
    """a and b each send one update against the current version; one aggregation."""
    uids = {}
    for cid in ("a", "b"):
        w = np.array([0.3, 0.4], np.float32)
        update = Update(f"{cid}-{tag}", engine.version, 0, 1, TriggerReason.ROUND, {}, {"w": w})
        verdict = engine.accept(Sender(cid, FP), update, 0.0, wall=1000.0)
        uids[verdict.update.update_id] = 1
    return engine.aggregate(uids, ENROLLED, 1.0)


def eps(aggregations: int) -> float:
    return epsilon(compose((), 0.5, 1.0, aggregations), 1e-6)


def test_every_enrolled_client_spends_epsilon(tmp_path: Path) -> None:
    report = _round(_engine(tmp_path, DP), "1").result.metrics.privacy["accountant"]
    assert report["clients"] == pytest.approx({"a": eps(1), "b": eps(1), "idle": eps(1)})


def test_the_federation_epsilon_grows_per_aggregation(tmp_path: Path) -> None:
    engine = _engine(tmp_path, DP)
    _round(engine, "1")
    report = _round(engine, "2").result.metrics.privacy["accountant"]
    assert (report["aggregations"], report["federation_epsilon"]) == (2, pytest.approx(eps(2)))


def test_the_ledgers_survive_a_restart(tmp_path: Path) -> None:
    _round(_engine(tmp_path, DP), "1")
    again = _engine(tmp_path, DP)
    assert again.accountant is not None and again.accountant.aggregations == 1


def _budgeted() -> PrivacySettings:
    budget = (eps(1) + eps(2)) / 2  # one aggregation fits, two do not
    return DP.model_copy(update={"epsilon_budget": budget})


def test_an_aggregation_past_the_budget_is_refused(tmp_path: Path) -> None:
    engine = _engine(tmp_path, _budgeted())
    _round(engine, "1")
    with pytest.raises(PrivacyBudgetRefused):
        _round(engine, "2")


def test_a_refused_aggregation_keeps_the_last_version(tmp_path: Path) -> None:
    engine = _engine(tmp_path, _budgeted())
    _round(engine, "1")
    before = engine.global_tensors["w"].copy()
    with pytest.raises(PrivacyBudgetRefused):
        _round(engine, "2")
    assert (engine.version, engine.held, engine.global_tensors["w"].tolist()) == (
        1,
        {},
        before.tolist(),
    )


def test_dp_off_keeps_no_accountant(tmp_path: Path) -> None:
    engine = _engine(tmp_path, PrivacySettings(), FedAvg(FedAvgSettings()))
    assert (engine.accountant, _round(engine, "1").result.metrics.privacy) == (None, {})
