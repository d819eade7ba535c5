"""`fedllm experiment --attack/--malicious/--defense`: which daemons get what, validated as the
daemons' own settings (the poisoned clients are the ordinary client daemon with [attack])."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from fedllm_client.settings import ClientSettings
from fedllm_core.certs import PkiPaths, make_federation_pki
from fedllm_experiment.configs import ExperimentSettings, load_experiment_settings
from fedllm_experiment.deploy import client_dict, server_dict
from fedllm_server.settings import ServerSettings

NAMES = [f"client-{i}" for i in range(1, 6)]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    return make_federation_pki(tmp_path_factory.mktemp("pki"), "localhost", NAMES)


def _clients(exp: ExperimentSettings, strategy: str, pki: PkiPaths, tmp: Path) -> list[Any]:
    return [
        ClientSettings.model_validate(client_dict(exp, strategy, pki, tmp, 1, i))
        for i in range(exp.clients)
    ]


def test_a_fifth_of_five_clients_is_one(pki: PkiPaths, tmp_path: Path) -> None:
    exp = ExperimentSettings(clients=5, attack="signflip", malicious=0.2)
    kinds = [c.attack.kind for c in _clients(exp, "fedavg", pki, tmp_path)]
    assert kinds == ["signflip", "none", "none", "none", "none"]


def test_no_attack_poisons_nobody(pki: PkiPaths, tmp_path: Path) -> None:
    exp = ExperimentSettings(clients=5, malicious=0.6)
    assert {c.attack.kind for c in _clients(exp, "gsfs", pki, tmp_path)} == {"none"}


def test_freq_floods_the_gsfs_pool_from_every_step(pki: PkiPaths, tmp_path: Path) -> None:
    exp = ExperimentSettings(clients=5, attack="freq", malicious=0.4)
    triggers = [c.trigger for c in _clients(exp, "gsfs", pki, tmp_path)]
    flooding = [t.check_every == 1 and t.min_steps_between_uploads == 0 for t in triggers]
    assert flooding == [True, True, False, False, False]


def test_freq_leaves_synchronous_rounds_alone(pki: PkiPaths, tmp_path: Path) -> None:
    exp = ExperimentSettings(clients=5, attack="freq")
    first, honest = _clients(exp, "fedavg", pki, tmp_path)[:2]
    assert (first.trigger, first.attack.kind) == (honest.trigger, "none")


def test_the_defense_is_the_servers_robust_rule(pki: PkiPaths, tmp_path: Path) -> None:
    exp = ExperimentSettings(clients=5, defense="trimmed_mean")
    server = ServerSettings.model_validate(server_dict(exp, "gsfs", pki, tmp_path, 1))
    assert server.robust.rule == "trimmed_mean"


def test_the_clip_defense_clips_to_the_median_norm(pki: PkiPaths, tmp_path: Path) -> None:
    exp = ExperimentSettings(clients=5, defense="clip")
    server = ServerSettings.model_validate(server_dict(exp, "fedavg", pki, tmp_path, 1))
    assert (server.robust.rule, server.robust.clip_multiplier) == ("clip", 1.0)


def test_no_defense_flag_keeps_the_servers_own(pki: PkiPaths, tmp_path: Path) -> None:
    exp = ExperimentSettings(clients=5, server={"robust": {"rule": "median"}})
    server = ServerSettings.model_validate(server_dict(exp, "fedavg", pki, tmp_path, 1))
    assert server.robust.rule == "median"


def test_the_flags_reach_the_settings() -> None:
    flags = {"attack": "scale", "malicious": 0.4, "defense": "krum"}
    exp = load_experiment_settings(None, quick=False, flags=flags)
    assert (exp.attack, exp.malicious_clients, exp.defense) == ("scale", 2, "krum")
