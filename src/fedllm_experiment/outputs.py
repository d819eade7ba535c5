"""What a finished (or interrupted) command leaves in --out: results.json, report.md, plots.

Shared by `fedllm experiment`, `fedllm baseline` and `fedllm bench models` so the three write
the same contract. The config block records the settings and the machine (cores, torch threads,
versions) because every timing in the document depends on them.
"""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from fedllm_experiment.configs import ExperimentSettings
from fedllm_experiment.orchestrator import Outcome
from fedllm_experiment.plots import write_plots
from fedllm_experiment.report import render_report
from fedllm_experiment.results import results_document, write_results
from fedllm_experiment.seeds import (
    detector_reports,
    plot_seed_spread,
    seed_summary,
    summary_lines,
)


def machine() -> dict[str, Any]:
    import torch

    return {
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
    }


def config_block(exp: ExperimentSettings, **extra: Any) -> dict[str, Any]:
    return {
        **exp.model_dump(mode="json"),
        "budget_steps_per_client": exp.budget_steps,
        "machine": machine(),
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
    }


def write_document(doc: Mapping[str, Any], out_dir: Path, *, title: str) -> None:
    write_results(out_dir / "results.json", doc)
    (out_dir / "report.md").write_text(render_report(doc, title=title))
    write_plots(doc, out_dir)


def write_outputs(
    exp: ExperimentSettings, outcome: Outcome, out_dir: Path, *, total_wall_s: float
) -> None:
    config = config_block(exp, total_wall_s=round(total_wall_s, 1))
    doc = results_document(
        config, outcome.runs, failures=outcome.failures, references=outcome.references
    )
    write_document(doc, out_dir, title="fedllm experiment")


def write_seed_outputs(
    exp: ExperimentSettings,
    outcomes: Mapping[int, Outcome],
    out_dir: Path,
    *,
    total_wall_s: float,
) -> None:
    """The summary over seeds in ``out_dir`` (each seed's own outputs are in seed-<n>/)."""
    runs = [run for outcome in outcomes.values() for run in outcome.runs]
    references = {seed: outcome.references for seed, outcome in outcomes.items()}
    summary = seed_summary(detector_reports(runs, references))
    config = config_block(exp, total_wall_s=round(total_wall_s, 1))
    failures = [f for outcome in outcomes.values() for f in outcome.failures]
    doc = results_document(
        config,
        runs,
        failures=failures,
        references_by_seed={str(seed): refs for seed, refs in references.items()},
        seed_summary=summary,
    )
    write_results(out_dir / "results.json", doc)
    seeds = list(outcomes)
    links = [f"- seed {s}: [seed-{s}/report.md](seed-{s}/report.md)" for s in seeds]
    lines = ["# fedllm experiment over seeds", "", *summary_lines(summary, seeds), *links, ""]
    (out_dir / "report.md").write_text("\n".join(lines))
    if summary:
        plot_seed_spread(summary, out_dir / "f1_by_seed.png")


def _row(run: Mapping[str, Any], width: int) -> str:
    c, avg = run["central"], run.get("clients_avg")
    client_acc = f"{avg['accuracy']:.4f}" if avg else "   –  "
    return (
        f"{run['strategy']:<{width}} {c['accuracy']:.4f}   {client_acc}   {c['f1_macro']:.4f}   "
        f"{run['uploads']:>7} {run['bytes_up'] / 1e6:>9.2f} {run['wall_s']:>8.1f} "
        f"{run['latency_ms_per_flow']:>9.2f}"
    )


def print_table(runs: Sequence[Mapping[str, Any]], out: TextIO) -> None:
    if not runs:
        print("no run finished", file=out)
        return
    width = max(10, *(len(r["strategy"]) for r in runs))
    header = "acc(cen) acc(cli) f1(cen)  uploads  MB up    wall s  ms/flow"
    print(f"\n{'run':<{width}} {header}", file=out)
    for run in runs:
        print(_row(run, width), file=out)
