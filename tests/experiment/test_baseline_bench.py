"""`fedllm baseline` and `fedllm bench models` on the experiment's split, with tiny models."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import tomli_w

from fedllm_core.cli import main
from fedllm_core.data import FlowTable, load_eval_data
from fedllm_core.prompts import PROMPT_FIELDS
from fedllm_experiment import gbt
from fedllm_experiment.baseline import experiment_data
from fedllm_experiment.configs import ExperimentSettings
from fedllm_experiment.results import read_results

TINY = {
    "clients": 2,
    "rounds": 2,
    "max_rows": 400,
    "local_steps": 3,
    "latency_requests": 10,
    "model": "bert",
    "shared": {"model": {"random_init": True}},
}


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.toml"
    path.write_text(tomli_w.dumps(TINY))
    return path


def test_baseline_scores_both_references_on_the_experiments_test_split(
    config: Path, tmp_path: Path
) -> None:
    assert main(["baseline", "--config", str(config), "--out", str(tmp_path / "b")]) == 0
    doc = read_results(tmp_path / "b" / "results.json")
    server_test = load_eval_data(experiment_data(ExperimentSettings.model_validate(TINY)))
    runs = {r["strategy"]: r for r in doc["runs"]}
    assert {name: r["test_flows"] for name, r in runs.items()} == {
        "central": server_test.flows,
        "gbt": server_test.flows,
    }


def test_central_baseline_gets_the_federations_total_budget(config: Path, tmp_path: Path) -> None:
    argv = ["baseline", "--which", "central", "--config", str(config), "--out", str(tmp_path)]
    assert main(argv) == 0
    run = read_results(tmp_path / "results.json")["runs"][0]
    assert run["train_steps"] == 2 * 2 * 3  # clients x rounds x local steps


def test_bench_skips_a_model_it_cannot_load_and_says_why(config: Path, tmp_path: Path) -> None:
    models = "random:gpt2,embedded:no-such-model"
    argv = ["bench", "models", "--models", models, "--steps", "3", "--config", str(config)]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    doc = read_results(tmp_path / "results.json")
    assert ([r["strategy"] for r in doc["runs"]], doc["skipped"][0]["model"]) == (
        ["random:gpt2"],
        "embedded:no-such-model",
    )


def test_bench_report_has_the_table_ii_columns(config: Path, tmp_path: Path) -> None:
    argv = ["bench", "models", "--models", "random:opt", "--steps", "2", "--config", str(config)]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    header = (tmp_path / "bench.md").read_text().split("| Model |")[1].splitlines()[0]
    assert all(col in header for col in ("Precision", "Recall", "F1", "Accuracy", "flows/min"))


def _flows(protos: list[str]) -> FlowTable:
    n = len(protos)
    strings = {f: ["-"] * n for f in ("service", "conn_state", "history", "capture")}
    numbers = {f: [1.0] * n for f in gbt.NUMERIC}
    return FlowTable.from_lists({**strings, "proto": protos}, numbers)


def test_gbt_features_are_the_prompt_fields_only() -> None:
    table = _flows(["tcp", "udp"])
    x = gbt.features(table, gbt.fit_codes(table))
    assert x.shape == (2, len(PROMPT_FIELDS))


def test_gbt_maps_an_unseen_category_to_missing() -> None:
    codes = gbt.fit_codes(_flows(["tcp", "udp"]))
    x = gbt.features(_flows(["icmp"]), codes)
    proto_column = len(gbt.NUMERIC) + gbt.CATEGORICAL.index("proto")
    assert math.isnan(x[0, proto_column]) and np.isfinite(x[0, 0])
