"""Settings precedence, generated daemon configs, and the same partition for the same seed."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pytest

from fedllm_client.settings import ClientSettings
from fedllm_core.certs import PkiPaths, make_federation_pki
from fedllm_core.data import load_client_data
from fedllm_core.errors import SettingsError
from fedllm_experiment.configs import ExperimentSettings, load_experiment_settings
from fedllm_experiment.deploy import client_dict, gsfs_trigger, prepare_deployment


def test_flags_beat_the_file_which_beats_quick(tmp_path: Path) -> None:
    config = tmp_path / "e.toml"
    config.write_text("clients = 4\nrounds = 7\n")
    exp = load_experiment_settings(config, quick=True, flags={"rounds": 2, "seed": None})
    assert (exp.clients, exp.rounds, exp.max_rows) == (4, 2, 1500)


def test_unknown_key_in_the_file_is_named(tmp_path: Path) -> None:
    config = tmp_path / "e.toml"
    config.write_text("cliens = 4\n")
    with pytest.raises(SettingsError, match="cliens"):
        load_experiment_settings(config, quick=False, flags={})


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    names = ["client-1", "client-2"]
    return make_federation_pki(tmp_path_factory.mktemp("pki"), "localhost", names)


def _client_data(pki: PkiPaths, seed: int, tmp_path: Path) -> list[str]:
    exp = ExperimentSettings(clients=2, max_rows=400, seed=seed)
    settings = ClientSettings.model_validate(client_dict(exp, "fedavg", pki, tmp_path, 1, 1))
    return load_client_data(settings.data).train_texts


def test_same_seed_gives_a_client_the_same_partition(pki: PkiPaths, tmp_path: Path) -> None:
    first = _client_data(pki, 3, tmp_path)
    assert first and _client_data(pki, 3, tmp_path) == first


def test_another_seed_gives_another_partition(pki: PkiPaths, tmp_path: Path) -> None:
    assert _client_data(pki, 3, tmp_path) != _client_data(pki, 4, tmp_path)


def _fairness_fields(path: Path) -> str:
    s = ClientSettings.model_validate(tomllib.loads(path.read_text()))
    return s.model_dump_json(include={"max_total_steps", "data", "model", "train", "seed"})


def test_every_strategy_gets_the_same_data_model_and_budget(pki: PkiPaths, tmp_path: Path) -> None:
    exp = ExperimentSettings(clients=2)
    for strategy in ("fedavg", "fedopt", "gsfs"):
        prepare_deployment(exp, strategy, pki, tmp_path / strategy)
    fields = {
        _fairness_fields(tmp_path / s / "client-2.toml") for s in ("fedavg", "fedopt", "gsfs")
    }
    assert len(fields) == 1 and f'"max_total_steps":{exp.budget_steps}' in fields.pop()


@pytest.mark.parametrize(("clients", "local_steps"), [(2, 4), (3, 16), (5, 16), (10, 8)])
def test_gsfs_cadence_fits_the_aggregations_in_the_budget(clients: int, local_steps: int) -> None:
    exp = ExperimentSettings(clients=clients, local_steps=local_steps, rounds=10)
    trigger = gsfs_trigger(exp)
    quorum = math.ceil(0.6 * clients)
    # uploads the clients can make under the minimum gap, plus each one's final upload
    uploads = clients * (exp.budget_steps // trigger["min_steps_between_uploads"] + 1)
    assert uploads >= exp.rounds * quorum


def test_a_rerun_into_the_same_directory_starts_from_nothing(pki: PkiPaths, tmp_path: Path) -> None:
    leftover = tmp_path / "fedavg" / "server-state" / "checkpoints" / "checkpoint-00000002.json"
    leftover.parent.mkdir(parents=True)
    leftover.write_text("{}")
    prepare_deployment(ExperimentSettings(clients=2), "fedavg", pki, tmp_path / "fedavg")
    assert not leftover.exists()


def test_references_and_baselines_see_the_daemons_data_overrides() -> None:
    from fedllm_experiment.deploy import daemon_data

    exp = ExperimentSettings(shared={"data": {"split": "random", "min_class_count": 7}})
    data = daemon_data(exp)
    assert (data.split, data.min_class_count) == ("random", 7)


@pytest.mark.parametrize("weighting", [True, False])
def test_gsfs_server_weighs_clients_by_samples_unless_told_not_to(
    pki: PkiPaths, tmp_path: Path, weighting: bool
) -> None:
    exp = ExperimentSettings(clients=2, gsfs_sample_weighting=weighting)
    prepare_deployment(exp, "gsfs", pki, tmp_path)
    server = tomllib.loads((tmp_path / "server.toml").read_text())
    assert server["strategy"]["sample_weighting"] is weighting


def test_gsfs_server_lr_reaches_the_gsfs_server_only(pki: PkiPaths, tmp_path: Path) -> None:
    exp = ExperimentSettings(clients=2, gsfs_server_lr=0.5)
    rates = {}
    for strategy in ("gsfs", "fedopt", "fedavg"):
        prepare_deployment(exp, strategy, pki, tmp_path / strategy)
        server = tomllib.loads((tmp_path / strategy / "server.toml").read_text())
        rates[strategy] = server["strategy"].get("server_lr")
    assert rates == {"gsfs": 0.5, "fedopt": 0.01, "fedavg": None}  # FedOpt keeps its own η_s


def test_the_default_budget_is_short_local_runs() -> None:
    exp = ExperimentSettings()
    assert (exp.rounds, exp.local_steps, exp.budget_steps) == (20, 8, 160)
    assert exp.gsfs_sample_weighting
