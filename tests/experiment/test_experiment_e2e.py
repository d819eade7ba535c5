"""`fedllm experiment` end to end through the real daemons, with a tiny random model.

Every test here starts real server and client processes on 127.0.0.1 over mutual TLS; nothing
is simulated. Settings are --quick-sized and smaller (tiny random BERT, few rows and steps).
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest

from fedllm_experiment.configs import ExperimentSettings
from fedllm_experiment.orchestrator import Outcome, run_experiment
from fedllm_experiment.outputs import write_outputs
from fedllm_experiment.progress import read_json_lines
from fedllm_experiment.results import read_results

pytestmark = pytest.mark.slow

TINY: dict[str, Any] = {
    "clients": 2,
    "rounds": 2,
    "max_rows": 400,
    "local_steps": 4,
    "val_samples": 16,
    "latency_requests": 10,
    "model": "bert",
    "run_timeout_s": 240,
    "shared": {"model": {"random_init": True}},
}


def tiny(**changes: Any) -> ExperimentSettings:
    return ExperimentSettings.model_validate({**TINY, **changes})


def _run(exp: ExperimentSettings, out_dir: Path) -> Outcome:
    outcome = run_experiment(exp, out_dir, out=io.StringIO())
    write_outputs(exp, outcome, out_dir.resolve(), total_wall_s=0.0)
    return outcome


@pytest.fixture(scope="module")
def three_strategies(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out_dir = tmp_path_factory.mktemp("experiment")
    _run(tiny(), out_dir)
    return out_dir


def test_results_follow_the_contract_for_every_strategy(three_strategies: Path) -> None:
    doc = read_results(three_strategies / "results.json")  # raises on any contract breach
    assert [r["strategy"] for r in doc["runs"]] == ["fedavg", "fedopt", "gsfs"]


@pytest.mark.parametrize("strategy", ["fedavg", "fedopt", "gsfs"])
def test_strategy_ran_through_the_real_server_daemon(three_strategies: Path, strategy: str) -> None:
    server = read_json_lines(three_strategies / strategy / "server-metrics.jsonl")
    kinds = [r["kind"] for r in server]
    start = server[kinds.index("start")]
    assert (start["strategy"], kinds.count("aggregation")) == (strategy, 2)


@pytest.mark.parametrize("strategy", ["fedavg", "fedopt", "gsfs"])
def test_server_counted_every_upload_the_clients_sent(
    three_strategies: Path, strategy: str
) -> None:
    run_dir = three_strategies / strategy
    sent = sum(
        1
        for name in ("client-1", "client-2")
        for r in read_json_lines(run_dir / f"{name}-metrics.jsonl")
        if r.get("kind") == "upload"
    )
    run = next(
        r
        for r in json.loads((three_strategies / "results.json").read_text())["runs"]
        if r["strategy"] == strategy
    )
    assert run["uploads"] == sent > 0


def test_every_daemon_exited_cleanly(three_strategies: Path) -> None:
    doc = json.loads((three_strategies / "results.json").read_text())
    codes = {
        (r["strategy"], name): code for r in doc["runs"] for name, code in r["exit_codes"].items()
    }
    assert set(codes.values()) == {0}, codes


def test_every_client_reported_its_final_local_model(three_strategies: Path) -> None:
    doc = json.loads((three_strategies / "results.json").read_text())
    assert [r["clients_reporting_final"] for r in doc["runs"]] == [2, 2, 2]


def test_report_and_plots_are_written(three_strategies: Path) -> None:
    names = {p.name for p in three_strategies.iterdir()}
    expected = {
        "report.md",
        "accuracy_per_round.png",
        "accuracy_vs_bytes_up.png",
        "gsfs_uploads_per_client.png",
    }
    assert expected <= names


def test_fedavg_on_cpu_gives_the_same_metrics_again(three_strategies: Path, tmp_path: Path) -> None:
    again = _run(tiny(strategies=("fedavg",)), tmp_path)
    first = json.loads((three_strategies / "results.json").read_text())["runs"][0]
    second = again.runs[0]

    def trace(run: dict[str, Any]) -> list[Any]:  # the loss makes a degenerate model visible
        return [(h["central"], h["loss"]) for h in run["history"]]

    assert trace(second) == trace(first)


def test_final_models_are_timed_again_interleaved(three_strategies: Path) -> None:
    doc = json.loads((three_strategies / "results.json").read_text())
    methods = {r["latency"]["method"] for r in doc["runs"]}
    assert methods == {"interleaved"}
    assert all(r["latency_ms_per_flow"] == r["latency"]["batch1_median_ms"] for r in doc["runs"])
