"""`fedllm experiment --adaptive`: GSFS servers get the feedback loop, the others do not."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedllm_core.certs import PkiPaths, make_federation_pki
from fedllm_experiment.configs import ExperimentSettings, load_experiment_settings
from fedllm_experiment.deploy import server_dict
from fedllm_server.settings import ServerSettings


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PkiPaths:
    return make_federation_pki(tmp_path_factory.mktemp("pki"), "localhost", ["client-1"])


def _server(exp: ExperimentSettings, strategy: str, pki: PkiPaths, tmp: Path) -> ServerSettings:
    return ServerSettings.model_validate(server_dict(exp, strategy, pki, tmp, 1))


def test_adaptive_turns_the_loop_on_for_gsfs_only(pki: PkiPaths, tmp_path: Path) -> None:
    exp = ExperimentSettings(adaptive=True)
    assert _server(exp, "gsfs", pki, tmp_path).feedback.enabled
    assert not _server(exp, "fedavg", pki, tmp_path).feedback.enabled  # it would refuse to start
    assert not _server(ExperimentSettings(), "gsfs", pki, tmp_path).feedback.enabled


def test_the_flag_reaches_the_settings_and_an_absent_flag_keeps_the_file(tmp_path: Path) -> None:
    config = tmp_path / "exp.toml"
    config.write_text("adaptive = true\n")
    assert load_experiment_settings(None, quick=False, flags={"adaptive": True}).adaptive
    assert load_experiment_settings(config, quick=False, flags={"adaptive": None}).adaptive
