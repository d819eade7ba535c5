"""results.json contract checks, report.md and PNG plots from a results document."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from fedllm_experiment.plots import write_plots
from fedllm_experiment.report import render_report
from fedllm_experiment.results import ResultsError, check_results, read_results, write_results


def test_complete_document_passes_the_contract(results_doc: dict[str, Any]) -> None:
    check_results(results_doc)


@pytest.mark.parametrize("key", ["central", "uploads", "history", "latency_ms_per_flow"])
def test_missing_run_key_is_named(key: str, results_doc: dict[str, Any]) -> None:
    doc = copy.deepcopy(results_doc)
    del doc["runs"][0][key]
    with pytest.raises(ResultsError, match=key):
        check_results(doc)


def test_metric_outside_unit_interval_is_refused(results_doc: dict[str, Any]) -> None:
    doc = copy.deepcopy(results_doc)
    doc["runs"][1]["central"]["accuracy"] = 1.5
    with pytest.raises(ResultsError, match=r"runs\[1\]\.central\.accuracy"):
        check_results(doc)


def test_results_round_trip_through_the_file(tmp_path: Path, results_doc: dict[str, Any]) -> None:
    write_results(tmp_path / "results.json", results_doc)
    assert read_results(tmp_path / "results.json") == results_doc


def test_report_puts_paper_figures_beside_ours(results_doc: dict[str, Any]) -> None:
    text = render_report(results_doc)
    gsfs_row = next(line for line in text.splitlines() if line.startswith("| gsfs | 0.9300"))
    assert "0.9008" in gsfs_row  # the paper's GSFS central accuracy in the same row


def test_report_reading_names_the_best_strategy(results_doc: dict[str, Any]) -> None:
    assert "Highest central accuracy: **gsfs**" in render_report(results_doc)


def test_report_lists_baselines_apart(results_doc: dict[str, Any]) -> None:
    text = render_report(results_doc)
    assert "| gbt | 0.9900" in text.split("## Reference points")[1]


def test_plots_are_written_as_png(tmp_path: Path, results_doc: dict[str, Any]) -> None:
    written = write_plots(results_doc, tmp_path)
    names = sorted(p.name for p in written)
    assert names == [
        "accuracy_per_round.png",
        "accuracy_vs_bytes_up.png",
        "gsfs_uploads_per_client.png",
    ]
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in written)


def test_report_shows_bytes_up_by_encoding_when_an_upload_was_compressed(
    results_doc: dict[str, Any],
) -> None:
    gsfs = next(r for r in results_doc["runs"] if r["strategy"] == "gsfs")
    gsfs["bytes_up_by_encoding"] = {"int8": 1_200_000, "raw": 300_000}
    extra = render_report(results_doc).split("## What the paper does not report")[1]
    row = next(line for line in extra.splitlines() if line.startswith("| gsfs |"))
    assert "(int8 1.20 MB, raw 0.30 MB)" in row
    fedavg = next(line for line in extra.splitlines() if line.startswith("| fedavg |"))
    assert "MB)" not in fedavg  # all raw (or no breakdown): no extra cell text
