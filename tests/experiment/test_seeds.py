"""The summary over seeds: every detector's figures per seed, their mean and range."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fedllm_core.detection import detection_report
from fedllm_experiment.configs import ExperimentSettings
from fedllm_experiment.orchestrator import Outcome
from fedllm_experiment.outputs import write_seed_outputs
from fedllm_experiment.results import run_record

NAMES = ("Benign", "Malicious")


def _report(correct: int) -> dict:
    """4 flows of 2 captures, the first ``correct`` predicted right."""
    truth = np.array([0, 1, 0, 1])
    pred = np.where(np.arange(4) < correct, truth, 1 - truth)
    caps = np.array(["a", "a", "b", "b"])
    return detection_report(
        truth, pred, NAMES, captures=caps, texts=["w", "x", "y", "z"], bootstrap_rounds=5
    )


def _outcome(seed: int, correct: int) -> Outcome:
    metrics = {k: 0.5 for k in ("accuracy", "f1_macro", "f1_weighted", "precision", "recall")}
    run = run_record("gsfs", metrics, {}, {}, wall_s=1.0, seed=seed, detection=_report(correct))
    return Outcome(runs=[run], references={"majority": _report(2)})


def test_seed_summary_gives_mean_min_max_per_detector(tmp_path: Path) -> None:
    outcomes = {0: _outcome(0, 4), 1: _outcome(1, 2)}
    write_seed_outputs(ExperimentSettings(seeds=(0, 1)), outcomes, tmp_path, total_wall_s=1.0)
    summary = json.loads((tmp_path / "results.json").read_text())["seed_summary"]
    accuracy = summary["gsfs"]["accuracy"]
    assert (accuracy["mean"], accuracy["min"], accuracy["max"]) == pytest.approx((0.75, 0.5, 1.0))


def test_seed_outputs_keep_every_run_and_the_references_by_seed(tmp_path: Path) -> None:
    outcomes = {3: _outcome(3, 4), 5: _outcome(5, 3)}
    write_seed_outputs(ExperimentSettings(seeds=(3, 5)), outcomes, tmp_path, total_wall_s=1.0)
    doc = json.loads((tmp_path / "results.json").read_text())
    assert ([r["seed"] for r in doc["runs"]], sorted(doc["references_by_seed"])) == (
        [3, 5],
        ["3", "5"],
    )


def test_seed_report_and_spread_plot_are_written(tmp_path: Path) -> None:
    outcomes = {0: _outcome(0, 4), 1: _outcome(1, 2)}
    write_seed_outputs(ExperimentSettings(seeds=(0, 1)), outcomes, tmp_path, total_wall_s=1.0)
    report = (tmp_path / "report.md").read_text()
    assert "Over 2 seeds" in report and (tmp_path / "f1_by_seed.png").stat().st_size > 0
