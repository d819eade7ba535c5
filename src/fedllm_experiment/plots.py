"""PNG plots from a results document (matplotlib, Agg backend: no display needed).

Three figures: central accuracy per global version for each strategy; central accuracy against
cumulative bytes uploaded (the communication cost of accuracy); and, for GSFS, each client's
cumulative uploads over time (who talks, how often, and on which trigger). The accuracy plots
mark the all-benign floor (the majority reference) when the document has it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # headless: the experiment runs on servers and in CI

import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

Run = Mapping[str, Any]


def _evaluated(history: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [h for h in history if h.get("central")]


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _mark_floor(ax: Any, floor: float | None) -> None:
    """The all-benign floor: the accuracy of calling every flow the training majority class."""
    if floor is not None:
        ax.axhline(floor, color="#cb181d", linestyle="--", linewidth=1, label="all-benign floor")


def plot_accuracy_per_round(runs: Sequence[Run], path: Path, floor: float | None = None) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for run in runs:
        points = _evaluated(run["history"])
        ax.plot(
            [h["version"] for h in points],
            [h["central"]["accuracy"] for h in points],
            marker="o",
            label=run["strategy"],
        )
    _mark_floor(ax, floor)
    ax.set_xlabel("global model version (round / aggregation)")
    ax.set_ylabel("central accuracy (test split)")
    ax.set_title("Central accuracy per round")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_accuracy_vs_bytes(runs: Sequence[Run], path: Path, floor: float | None = None) -> Path:
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for run in runs:
        points = _evaluated(run["history"])
        ax.plot(
            [h["bytes_up"] / 1e6 for h in points],
            [h["central"]["accuracy"] for h in points],
            marker="o",
            label=run["strategy"],
        )
    _mark_floor(ax, floor)
    ax.set_xlabel("cumulative bytes uploaded by clients (MB)")
    ax.set_ylabel("central accuracy (test split)")
    ax.set_title("Accuracy against upstream traffic")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def plot_uploads_per_client(run: Run, path: Path) -> Path:
    """Step curve of cumulative uploads per client; markers show which trigger fired."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    events = run.get("upload_events") or []
    for client in sorted({e["client_id"] for e in events}):
        mine = [e for e in events if e["client_id"] == client]
        times = [0.0, *(e["t_s"] for e in mine)]  # every client starts at zero uploads
        ax.step(times, range(len(times)), where="post", label=client)
    for h in run["history"]:  # when the server published each version
        ax.axvline(h["t_s"], color="0.8", linestyle=":", linewidth=1)
    markers = {"performance": "o", "gradient_norm": "^", "max_silence": "s", "round": "."}
    for trigger, marker in markers.items():
        hits = [e for e in events if e.get("trigger") == trigger]
        if hits:
            ys = [_count_before(events, e) for e in hits]
            ax.scatter([e["t_s"] for e in hits], ys, marker=marker, s=18, c="k", label=trigger)
    ax.set_xlabel("time since server start (s)")
    ax.set_ylabel("uploads so far (dotted: new global version)")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"Uploads per client over time ({run['strategy']})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", ncol=2)
    return _save(fig, path)


def _count_before(events: Sequence[Mapping[str, Any]], event: Mapping[str, Any]) -> int:
    """How many uploads the event's client had made up to and including this one."""
    same = [e for e in events if e["client_id"] == event["client_id"]]
    return next(i for i, e in enumerate(same, start=1) if e is event)


def write_plots(doc: Mapping[str, Any], out_dir: Path) -> list[Path]:
    """Every plot that the document has data for; returns the files written."""
    runs = [r for r in doc["runs"] if r.get("history")]
    majority = (doc.get("references") or {}).get("majority")
    floor = majority["accuracy"] if majority else None
    written: list[Path] = []
    if runs:
        written.append(plot_accuracy_per_round(runs, out_dir / "accuracy_per_round.png", floor))
        written.append(plot_accuracy_vs_bytes(runs, out_dir / "accuracy_vs_bytes_up.png", floor))
    for run in runs:
        if run["strategy"] == "gsfs" and run.get("upload_events"):
            written.append(plot_uploads_per_client(run, out_dir / "gsfs_uploads_per_client.png"))
    return written
