"""Results over several seeds: each seed is a whole experiment on its own capture split.

With the capture split each seed tests on other captures, so the spread over seeds is the
spread over which traffic was never seen, the figure a reader needs beside each mean. The
combined document keeps every run (each carries its ``seed``), the reference detectors by
seed, and a summary per detector: mean, min and max of the headline figures.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

FIGURES = ("f1_macro", "accuracy", "capture_mean_accuracy", "distinct_accuracy", "malicious_f1")


def _figures(report: Mapping[str, Any]) -> dict[str, float]:
    return {
        "f1_macro": report["f1_macro"],
        "accuracy": report["accuracy"],
        "capture_mean_accuracy": report["capture_mean_accuracy"],
        "distinct_accuracy": report["distinct"]["accuracy"],
        "malicious_f1": report["malicious"]["f1"],
    }


def detector_reports(
    runs: Sequence[Mapping[str, Any]], references: Mapping[int, Mapping[str, Any]]
) -> dict[str, dict[int, Mapping[str, Any]]]:
    """detector name -> seed -> its detection report (models first, then references)."""
    out: dict[str, dict[int, Mapping[str, Any]]] = {}
    for run in runs:
        if run.get("detection"):
            out.setdefault(run["strategy"], {})[int(run["seed"])] = run["detection"]
        if run.get("detection_selected"):
            name = f"{run['strategy']} (best on validation)"
            out.setdefault(name, {})[int(run["seed"])] = run["detection_selected"]
    for seed, refs in references.items():
        for name, report in refs.items():
            out.setdefault(f"reference: {name}", {})[int(seed)] = report
    return out


def seed_summary(by_detector: Mapping[str, Mapping[int, Mapping[str, Any]]]) -> dict[str, Any]:
    """Per detector and figure: mean, min, max and the per-seed values."""
    summary: dict[str, Any] = {}
    for name, by_seed in by_detector.items():
        figures = {seed: _figures(r) for seed, r in sorted(by_seed.items())}
        summary[name] = {
            key: {
                "mean": statistics.fmean(f[key] for f in figures.values()),
                "min": min(f[key] for f in figures.values()),
                "max": max(f[key] for f in figures.values()),
                "per_seed": {str(seed): f[key] for seed, f in figures.items()},
            }
            for key in FIGURES
        }
    return summary


def summary_lines(summary: Mapping[str, Any], seeds: Sequence[int]) -> list[str]:
    """report.md: mean [min, max] over seeds for each detector."""
    head = " | ".join(f"{k} mean [min, max]" for k in ("f1_macro", "distinct_accuracy"))
    lines = [
        f"## Over {len(seeds)} seeds (capture split; each seed tests other captures)",
        "",
        f"| detector | {head} | capture-mean acc mean |",
        "|---|---|---|---|",
    ]
    for name, figs in summary.items():
        cells = [
            f"{figs[k]['mean']:.4f} [{figs[k]['min']:.3f}, {figs[k]['max']:.3f}]"
            for k in ("f1_macro", "distinct_accuracy")
        ]
        lines.append(
            f"| {name} | {' | '.join(cells)} | {figs['capture_mean_accuracy']['mean']:.4f} |"
        )
    return [*lines, ""]


def plot_seed_spread(summary: Mapping[str, Any], path: Path) -> Path:
    """Macro-F1 per detector: one dot per seed, the mean as a bar; all-benign floor marked."""
    names = list(summary)
    fig, ax = plt.subplots(figsize=(7.0, 0.5 * len(names) + 1.5))
    for row, name in enumerate(names):
        values = list(summary[name]["f1_macro"]["per_seed"].values())
        ax.barh(row, summary[name]["f1_macro"]["mean"], color="#c6dbef")
        ax.scatter(values, [row] * len(values), color="#08519c", zorder=3, s=14)
    floor = summary.get("reference: majority")
    if floor:
        ax.axvline(floor["f1_macro"]["mean"], color="#cb181d", ls="--", label="all-benign floor")
        ax.legend(loc="lower right")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlim(0, 1)
    ax.set_xlabel("macro-F1 on the test captures (dots: seeds, bar: mean)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
